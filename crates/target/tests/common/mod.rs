//! Helpers shared by pr-target's integration tests.

use std::time::{Duration, Instant};

use pr_target::backing::BackingError;

/// How long a dropped backing's lock may stay held by another test's child (see
/// [`open_after_drop`]); children exec within milliseconds.
const RELEASE_BOUND: Duration = Duration::from_secs(10);

/// Opens (with `open`) a backing whose previous holder in this test was just dropped.
///
/// A flock belongs to the open file description, and a child that another test thread is
/// spawning (losetup, etcd) holds a copy of every descriptor of this process from its fork until
/// its exec. For that moment the dropped backing's lock is still held, and an exclusive open is
/// refused as locked. This retries while the open is refused as locked, for at most
/// [`RELEASE_BOUND`]; a lock that the drop never released still fails the test, naming `what`.
pub fn open_after_drop<T>(what: &str, mut open: impl FnMut() -> Result<T, BackingError>) -> T {
    let start = Instant::now();
    loop {
        match open() {
            Ok(b) => return b,
            Err(BackingError::Locked { .. } | BackingError::LockedExclusive { .. })
                if start.elapsed() < RELEASE_BOUND =>
            {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!(
                "{what}: still refused {:?} after the previous holder was dropped: {e}",
                start.elapsed()
            ),
        }
    }
}
