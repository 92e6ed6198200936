//! The seccomp allow-list: the system calls the serving daemon makes, and nothing else.
//! Installed on the main thread before the runtime starts, so every thread started later
//! inherits it. ioctl is allowed only with the SG_IO, SG_GET_VERSION_NUM, block-layer PR
//! (IOC_PR_*), NVME_IOCTL_ID and DM_TABLE_STATUS request numbers; setsockopt only for a
//! socket's receive and send timeouts.
//!
//! The multipath thread, which runs libmpathpersist, is started before that and installs its
//! own, wider list: the library opens path devices, sysfs files and multipathd's socket and
//! issues device-mapper and SCSI ioctls, so files may be opened and ioctl is unrestricted there.
//!
//! The store thread (`pr-store`, with `backend = "emulate"`) is started after the privilege
//! drop and before the server's filter, and installs its own list before it opens the SQLite
//! database: the server's, plus exactly what SQLite needs for its files (see [`store_extra`]),
//! without the EACCES filter on opens. `SqliteStore::open` starts the store's writer thread at
//! once, from that thread, so the writer inherits the store list; the main thread installs the
//! server's list afterwards without TSYNC, so neither store thread gets it, and no other thread
//! gets theirs. The store thread then waits for the end of the daemon and drops the store last
//! (closing SQLite checkpoints the WAL), under its own list. With an etcd store the store
//! thread's list is the server's plus the etcd client's network calls ([`etcd_extra`]), and the
//! client's runtime threads, started by `EtcdStore::open` on that thread, inherit it.
//! With emulated devices the server's list also has pread64: the store answers PR IN on the
//! serving thread from its reader connection (see [`store_reader_extra`]).
//!
//! Opening files is never needed after start-up, but libc and std probe CPU and cgroup files
//! from new threads (to size malloc arenas or thread pools). Those opens fail with EACCES — the
//! callers fall back gracefully — instead of killing the daemon: a second, stacked filter
//! answers open/openat with EACCES, and since the kernel applies the most restrictive result of
//! all filters, that error wins over the first filter's allow.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

use crate::cli::SeccompMode;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SeccompError(String);

const SG_IO: u64 = 0x2285;
const SG_GET_VERSION_NUM: u64 = 0x2282;

/// System calls allowed without conditions.
fn allowed() -> Vec<i64> {
    let mut v = pr_sys::syscalls::runtime();
    v.extend_from_slice(&[
        // Socket and descriptor I/O.
        libc::SYS_recvmsg,
        libc::SYS_recvfrom,
        libc::SYS_sendmsg,
        libc::SYS_sendto,
        libc::SYS_accept4,
        libc::SYS_shutdown,
        libc::SYS_getsockname,
        libc::SYS_getsockopt,
        libc::SYS_fsync,
        libc::SYS_memfd_create,
        libc::SYS_socket,
        libc::SYS_connect,
        // The runtime's signal driver (created while the runtime starts).
        libc::SYS_socketpair,
        // Removing the socket and pidfile at exit.
        libc::SYS_unlinkat,
        // Refused with EACCES by the second filter (see the module comment).
        libc::SYS_openat,
    ]);
    #[cfg(target_arch = "x86_64")]
    v.extend_from_slice(&[libc::SYS_unlink, libc::SYS_open]);
    v
}

/// The second filter: every file open fails with EACCES.
fn deny_opens() -> Result<BpfProgram, SeccompError> {
    let err = |e: &dyn std::fmt::Display| SeccompError(e.to_string());
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    rules.insert(libc::SYS_openat, vec![]);
    #[cfg(target_arch = "x86_64")]
    rules.insert(libc::SYS_open, vec![]);
    let arch = std::env::consts::ARCH.try_into().map_err(|e| err(&e))?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EACCES as u32),
        arch,
    )
    .map_err(|e| err(&e))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| err(&e))
}

/// What libmpathpersist and libmultipath need beyond the server's list (path discovery through
/// sysfs and udev, device nodes, multipathd's socket, their own worker threads).
fn multipath_extra() -> Vec<i64> {
    let mut v = vec![
        libc::SYS_readlinkat,
        libc::SYS_getdents64,
        libc::SYS_lseek,
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        libc::SYS_faccessat,
        libc::SYS_faccessat2,
        libc::SYS_uname,
        libc::SYS_getuid,
        libc::SYS_geteuid,
        libc::SYS_getgid,
        libc::SYS_getegid,
        libc::SYS_getppid,
        libc::SYS_ppoll,
        libc::SYS_pselect6,
        libc::SYS_prlimit64,
        libc::SYS_setrlimit,
        libc::SYS_getrlimit,
        libc::SYS_sysinfo,
        libc::SYS_fstatfs,
        libc::SYS_statfs,
        libc::SYS_dup,
        libc::SYS_dup3,
        libc::SYS_setsockopt,
        libc::SYS_getpeername,
        libc::SYS_bind,
        libc::SYS_flock,
        libc::SYS_getcwd,
        libc::SYS_pipe2,
        libc::SYS_timerfd_create,
        libc::SYS_timerfd_settime,
        libc::SYS_close_range,
        libc::SYS_ioctl,
        // libdevmapper's udev synchronisation (SysV semaphores), libmultipath's timeouts and
        // its run-time directory.
        libc::SYS_semget,
        libc::SYS_semop,
        libc::SYS_semctl,
        libc::SYS_semtimedop,
        libc::SYS_mkdirat,
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend_from_slice(&[
        libc::SYS_readlink,
        libc::SYS_access,
        libc::SYS_stat,
        libc::SYS_lstat,
        libc::SYS_select,
        libc::SYS_dup2,
        libc::SYS_pipe,
        libc::SYS_getdents,
        libc::SYS_alarm,
        libc::SYS_mkdir,
    ]);
    v
}

/// What SQLite needs beyond the server's list, for the store thread and its writer. Found by
/// running the daemon with emulated devices under `strace -f` (as nobody and as root, two
/// daemons on one database, more than a thousand PR OUTs so the WAL is checkpointed and reset,
/// a symlinked database path, a clean exit that checkpoints and removes the WAL):
/// - pread64 / pwrite64: pages of the database and the WAL;
/// - ftruncate: WAL reset and checkpoint;
/// - geteuid, fchown: run as root, SQLite gives the -wal and -shm files the owner of the
///   database;
/// - readlink (readlinkat where there is no readlink): the path is resolved when it is a
///   symbolic link.
///
/// The rest it uses is in the server's list already: openat (not refused on this thread: the
/// EACCES filter is the server's only), fcntl (POSIX locks), fsync, newfstatat, unlink,
/// getpid, mmap/munmap/mprotect (the -shm WAL index), futex, getrandom, close, read.
fn store_extra() -> Vec<i64> {
    vec![
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        libc::SYS_ftruncate,
        libc::SYS_geteuid,
        libc::SYS_fchown,
        #[cfg(target_arch = "x86_64")]
        libc::SYS_readlink,
        #[cfg(not(target_arch = "x86_64"))]
        libc::SYS_readlinkat,
    ]
}

/// What the etcd store needs beyond the server's list, for the store thread and the etcd
/// client's runtime threads, which it starts and which inherit the list. Found by running the
/// daemon with an etcd store under `strace -f` (open, PR IN and OUT, the cluster killed and
/// back, an endpoint given by a host name found in /etc/hosts and one that only DNS can
/// answer, a clean exit):
/// - setsockopt: TCP_NODELAY and keep-alive on the gRPC connections;
/// - sendmmsg, ppoll (poll on x86_64, in the server's list), lseek, uname: the C library's
///   resolver, when an endpoint is a host name (it also opens /etc/hosts and /etc/resolv.conf,
///   which this thread may, and asks FIONREAD: see [`etcd_program`]).
///
/// Everything else the gRPC client does (socket, connect, epoll, eventfd, futex, read/write,
/// writev, sendto/recvfrom, getrandom) is in the server's list already. The TLS files were
/// read with the configuration, as root; nothing here writes a file.
fn etcd_extra() -> Vec<i64> {
    vec![
        libc::SYS_setsockopt,
        libc::SYS_sendmmsg,
        libc::SYS_ppoll,
        libc::SYS_lseek,
        libc::SYS_uname,
    ]
}

/// A dedicated thread's filter: the server's list and the `extra` calls that thread needs
/// (the multipath thread's files and ioctls, the store thread's SQLite file calls).
fn thread_program(mode: SeccompMode, extra: Vec<i64>) -> Result<BpfProgram, SeccompError> {
    let err = |e: &dyn std::fmt::Display| SeccompError(e.to_string());
    let rules: BTreeMap<i64, Vec<SeccompRule>> = allowed()
        .into_iter()
        .chain(extra)
        .map(|s| (s, vec![]))
        .collect();
    let arch = std::env::consts::ARCH.try_into().map_err(|e| err(&e))?;
    let filter = SeccompFilter::new(rules, mismatch_action(mode), SeccompAction::Allow, arch)
        .map_err(|e| err(&e))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| err(&e))
}

/// Installs a dedicated thread's filter ([`thread_program`]) on the calling thread.
fn install_thread(mode: SeccompMode, extra: Vec<i64>) -> Result<(), SeccompError> {
    if mode == SeccompMode::None {
        return Ok(());
    }
    let prog = thread_program(mode, extra)?;
    seccompiler::apply_filter(&prog).map_err(|e| SeccompError(e.to_string()))
}

/// The etcd store thread's filter: the server's list, [`etcd_extra`], and ioctl with FIONREAD
/// only (the C library's DNS resolver asks how many bytes an answer has).
fn etcd_program(mode: SeccompMode) -> Result<BpfProgram, SeccompError> {
    let err = |e: &dyn std::fmt::Display| SeccompError(e.to_string());
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = allowed()
        .into_iter()
        .chain(etcd_extra())
        .map(|s| (s, vec![]))
        .collect();
    // FIONREAD's type in libc differs by architecture (c_ulong on x86_64, c_int elsewhere).
    #[allow(clippy::unnecessary_cast)]
    let fionread = SeccompCondition::new(
        1,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        libc::FIONREAD as u64,
    )
    .map_err(|e| err(&e))?;
    rules.insert(
        libc::SYS_ioctl,
        vec![SeccompRule::new(vec![fionread]).map_err(|e| err(&e))?],
    );
    let arch = std::env::consts::ARCH.try_into().map_err(|e| err(&e))?;
    let filter = SeccompFilter::new(rules, mismatch_action(mode), SeccompAction::Allow, arch)
        .map_err(|e| err(&e))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| err(&e))
}

/// Installs the store thread's filter on the calling thread (before it opens the store):
/// SQLite's file calls, or the etcd client's network calls when the store is `networked`.
pub fn install_store_thread(mode: SeccompMode, networked: bool) -> Result<(), SeccompError> {
    if !networked {
        return install_thread(mode, store_extra());
    }
    if mode == SeccompMode::None {
        return Ok(());
    }
    let prog = etcd_program(mode)?;
    seccompiler::apply_filter(&prog).map_err(|e| SeccompError(e.to_string()))
}

fn mismatch_action(mode: SeccompMode) -> SeccompAction {
    match mode {
        SeccompMode::Kill => SeccompAction::KillProcess,
        SeccompMode::Log => SeccompAction::Log,
        SeccompMode::None => unreachable!("no program is built without seccomp"),
    }
}

/// What the threads serving requests need beyond [`allowed`] when devices are emulated: the
/// store answers PR IN on the thread that received it (pr-store's fast path, on its reader
/// connection), and reading a committed state reads database and WAL pages with pread64. The
/// reader never writes (it never extends the -shm file either: only a writer does), and the
/// rest it does (fcntl locks on the -shm file, fstat, mmap of the WAL index) is in
/// [`allowed`]. pread64 lets these threads read at any offset of any descriptor they hold, as
/// `read` already lets them at the current offset.
fn store_reader_extra() -> Vec<i64> {
    vec![libc::SYS_pread64]
}

fn program(mode: SeccompMode, store_reads: bool) -> Result<BpfProgram, SeccompError> {
    let err = |e: &dyn std::fmt::Display| SeccompError(e.to_string());
    let extra = if store_reads {
        store_reader_extra()
    } else {
        Vec::new()
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = allowed()
        .into_iter()
        .chain(extra)
        .map(|s| (s, vec![]))
        .collect();
    let ioctl_rule = |req: u64| -> Result<SeccompRule, SeccompError> {
        let cond = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, req)
            .map_err(|e| err(&e))?;
        SeccompRule::new(vec![cond]).map_err(|e| err(&e))
    };
    let mut ioctls = vec![
        ioctl_rule(SG_IO)?,
        ioctl_rule(SG_GET_VERSION_NUM)?,
        ioctl_rule(pr_sys::blkpr::NVME_IOCTL_ID)?,
        ioctl_rule(pr_sys::dm::DM_TABLE_STATUS)?,
    ];
    for req in pr_sys::blkpr::ALL_REQUESTS {
        ioctls.push(ioctl_rule(req)?);
    }
    rules.insert(libc::SYS_ioctl, ioctls);
    // A connection's receive and send timeouts (active.rs), nothing else.
    let sockopt_rule = |name: libc::c_int| -> Result<SeccompRule, SeccompError> {
        let cond = |arg: u8, value: libc::c_int| {
            SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value as u64)
                .map_err(|e| err(&e))
        };
        SeccompRule::new(vec![cond(1, libc::SOL_SOCKET)?, cond(2, name)?]).map_err(|e| err(&e))
    };
    rules.insert(
        libc::SYS_setsockopt,
        vec![
            sockopt_rule(libc::SO_RCVTIMEO)?,
            sockopt_rule(libc::SO_SNDTIMEO)?,
        ],
    );
    let mismatch = mismatch_action(mode);
    let arch = std::env::consts::ARCH.try_into().map_err(|e| err(&e))?;
    let filter =
        SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch).map_err(|e| err(&e))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| err(&e))
}

/// Installs the server's filters on the calling thread (the main thread, before the runtime
/// starts its threads, which inherit them). `store_reads`: devices are emulated, so serving
/// threads read the store's files ([`store_reader_extra`]).
pub fn install(mode: SeccompMode, store_reads: bool) -> Result<(), SeccompError> {
    if mode == SeccompMode::None {
        tracing::warn!("seccomp filter disabled (--seccomp=none)");
        return Ok(());
    }
    let prog = program(mode, store_reads)?;
    let opens = deny_opens()?;
    // The open filter goes first: once the allow-list is in, seccomp(2) itself is forbidden.
    seccompiler::apply_filter(&opens).map_err(|e| SeccompError(e.to_string()))?;
    seccompiler::apply_filter(&prog).map_err(|e| SeccompError(e.to_string()))?;
    tracing::debug!("seccomp filter installed ({mode:?} on other syscalls)");
    Ok(())
}

/// Installs the multipath thread's filter on the calling thread.
pub fn install_multipath_thread(mode: SeccompMode) -> Result<(), SeccompError> {
    install_thread(mode, multipath_extra())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_build() {
        assert!(!program(SeccompMode::Kill, false).unwrap().is_empty());
        assert!(!program(SeccompMode::Log, true).unwrap().is_empty());
        assert!(!deny_opens().unwrap().is_empty());
        assert!(!thread_program(SeccompMode::Kill, multipath_extra())
            .unwrap()
            .is_empty());
        assert!(!thread_program(SeccompMode::Kill, store_extra())
            .unwrap()
            .is_empty());
        assert!(!etcd_program(SeccompMode::Kill).unwrap().is_empty());
    }
}
