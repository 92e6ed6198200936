//! Support for the tests of the `emulate` backend (tests/emulate.rs, tests/emulate_etcd.rs):
//! the daemon started as nobody on a configuration, and PR commands through pr-client.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, Stdio};

use pr_client::Client;
use pr_proto::Reply;

use super::{our_helper, params, raise_nofile, Helper};

/// Our daemon on `socket` (which may be in a directory laid out like libvirt's), as nobody,
/// with `config`, its log (-v) in `log`, and `extra` arguments.
pub fn start_emulating(socket: &Path, config: &Path, log: &Path, extra: &[&str]) -> Helper {
    raise_nofile();
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    let child = Command::new(our_helper())
        .arg("-k")
        .arg(socket)
        .arg("--config")
        .arg(config)
        .args(["-u", "nobody", "-g", "nogroup", "-v"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(log).unwrap())
        .spawn()
        .unwrap();
    let h = Helper {
        child,
        socket: socket.to_path_buf(),
        dir: tempfile::tempdir().unwrap(),
    };
    h.wait_for_socket();
    h
}

/// A 16-byte CDB buffer starting with `bytes`.
pub fn cdb(bytes: &[u8]) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[..bytes.len()].copy_from_slice(bytes);
    c
}

/// PR OUT with service action `sa`, type `ty` (LU_SCOPE) and a basic parameter list.
pub fn prout(c: &mut Client, dev: &File, sa: u8, ty: u8, key: u64, sa_key: u64) -> Reply {
    c.execute(
        dev.as_fd(),
        &cdb(&[0x5f, sa, ty, 0, 0, 0, 0, 0, 24, 0]),
        &params(key, sa_key),
    )
    .unwrap()
}

/// PR IN READ KEYS, allocation length 256.
pub fn read_keys(c: &mut Client, dev: &File) -> Reply {
    c.execute(
        dev.as_fd(),
        &cdb(&[0x5e, 0x00, 0, 0, 0, 0, 0, 0x01, 0x00, 0]),
        &[],
    )
    .unwrap()
}

/// PR IN READ RESERVATION, allocation length 256.
pub fn read_reservation(c: &mut Client, dev: &File) -> Reply {
    c.execute(
        dev.as_fd(),
        &cdb(&[0x5e, 0x01, 0, 0, 0, 0, 0, 0x01, 0x00, 0]),
        &[],
    )
    .unwrap()
}

/// Sense key, ASC, ASCQ of a fixed-format sense.
pub fn sense(r: &Reply) -> (u8, u8, u8) {
    (r.sense[2] & 0x0f, r.sense[12], r.sense[13])
}

/// PR OUT service actions and types (SPC-4 tables 209 and 169).
pub const REGISTER: u8 = 0x00;
pub const RESERVE: u8 = 0x01;
pub const PREEMPT: u8 = 0x04;
pub const REGISTER_AND_IGNORE: u8 = 0x06;
pub const WRITE_EXCLUSIVE: u8 = 0x01;
pub const WE_REGISTRANTS_ONLY: u8 = 0x05;

/// Two I_T nexuses on one LU (clients `a` and `b`, keys 0x1111 and 0x2222) fence each other,
/// byte for byte as SPC-4 words it: both register, A reserves WRITE EXCLUSIVE, B sees both
/// keys and its RESERVE conflicts, then (after `between`, e.g. a fault) B preempts A; A gets
/// REGISTRATIONS PREEMPTED once, then sees only B's key, and its old key conflicts. `log`
/// gives A's daemon log for a failure message.
pub fn fence_each_other(
    a: &mut Client,
    b: &mut Client,
    dev: &File,
    between: impl FnOnce(),
    log: impl Fn() -> String,
) {
    use pr_scsi::Status;
    assert_eq!(prout(a, dev, REGISTER, 0, 0, 0x1111).status, Status::GOOD);
    assert_eq!(prout(b, dev, REGISTER, 0, 0, 0x2222).status, Status::GOOD);
    assert_eq!(
        prout(a, dev, RESERVE, WRITE_EXCLUSIVE, 0x1111, 0).status,
        Status::GOOD
    );
    // B sees A's key: PRGENERATION 2 (two registrations), ADDITIONAL LENGTH 16, both keys.
    let r = read_keys(b, dev);
    assert_eq!(
        r.data,
        [0, 0, 0, 2, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0x11, 0x11, 0, 0, 0, 0, 0, 0, 0x22, 0x22]
    );
    // B is another I_T nexus: its RESERVE conflicts with A's reservation.
    assert_eq!(
        prout(b, dev, RESERVE, WRITE_EXCLUSIVE, 0x2222, 0).status,
        Status::RESERVATION_CONFLICT
    );
    between();
    // B fences A: PREEMPT A's key, B holds WRITE EXCLUSIVE (generation 3).
    assert_eq!(
        prout(b, dev, PREEMPT, WRITE_EXCLUSIVE, 0x2222, 0x1111).status,
        Status::GOOD
    );
    // READ RESERVATION: generation 3, ADDITIONAL LENGTH 16, key 0x2222, type 1 (WE), LU_SCOPE.
    let r = read_reservation(b, dev);
    assert_eq!(
        r.data,
        [0, 0, 0, 3, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0x22, 0x22, 0, 0, 0, 0, 0, 0x01, 0, 0]
    );
    // A's next command reports UNIT ATTENTION, REGISTRATIONS PREEMPTED (06h/2Ah/05h) once...
    let r = read_keys(a, dev);
    assert_eq!(
        (r.status, sense(&r)),
        (Status::CHECK_CONDITION, (0x06, 0x2a, 0x05)),
        "{}",
        log()
    );
    // ...then A sees only B's key, and its old key no longer works.
    let r = read_keys(a, dev);
    assert_eq!(
        r.data,
        [0, 0, 0, 3, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x22, 0x22]
    );
    assert_eq!(
        prout(a, dev, RESERVE, WRITE_EXCLUSIVE, 0x1111, 0).status,
        Status::RESERVATION_CONFLICT
    );
}
