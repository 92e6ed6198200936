//! The seccomp allow-list of a serving pr-target: installed on every thread (TSYNC) once the
//! logical units, stores and sockets are open, so threads started later (the vring workers of
//! each new connection) inherit it.
//!
//! What serving needs: vhost-user messages with descriptors (recvmsg/sendmsg), mapping the
//! guest's memory, epoll and eventfds, threads for each connection, listening again on the
//! socket after a disconnect (socket, bind, listen, accept4, unlink), the medium (pread/pwrite,
//! fdatasync, fallocate) and SQLite's WAL (pread/pwrite, fcntl locks, ftruncate, fsync). No
//! ioctl, no exec, no ptrace. Opening files is never needed after start-up; opens answer EACCES
//! (a second filter, whose error wins over the allow) so a probe by libc or std fails
//! gracefully instead of killing the process.
//!
//! With an etcd store ([`network_extra`]) the etcd client's threads, started when the store
//! was opened, get the same list (TSYNC) plus what its gRPC connections need: connect and
//! setsockopt. Its endpoints are IP addresses (config.rs), so no name is ever looked up.

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};

/// What the filter does with a system call that is not on the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SeccompMode {
    /// Kill the process (the default).
    Kill,
    /// Allow it and let the kernel log it (to find a missing call).
    Log,
    /// Install no filter.
    None,
}

/// The filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
#[error("seccomp: {0}")]
pub struct SeccompError(String);

fn allowed() -> Vec<i64> {
    // The runtime's calls, mmap of the guest's memory among them.
    let mut v = pr_sys::syscalls::runtime();
    v.extend_from_slice(&[
        // The media and SQLite's files.
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        libc::SYS_preadv,
        libc::SYS_pwritev,
        libc::SYS_preadv2,
        libc::SYS_pwritev2,
        libc::SYS_lseek,
        libc::SYS_dup,
        libc::SYS_dup3,
        libc::SYS_fsync,
        libc::SYS_fdatasync,
        libc::SYS_fallocate,
        libc::SYS_ftruncate,
        libc::SYS_flock,
        libc::SYS_geteuid,
        libc::SYS_fchown,
        libc::SYS_readlinkat,
        libc::SYS_unlinkat,
        // The vhost-user socket.
        libc::SYS_recvmsg,
        libc::SYS_sendmsg,
        libc::SYS_recvfrom,
        libc::SYS_sendto,
        libc::SYS_socket,
        libc::SYS_bind,
        libc::SYS_listen,
        libc::SYS_accept4,
        libc::SYS_shutdown,
        libc::SYS_getsockname,
        libc::SYS_getsockopt,
        // Event loops and wake-ups.
        libc::SYS_ppoll,
        // Refused with EACCES by the second filter.
        libc::SYS_openat,
    ]);
    #[cfg(target_arch = "x86_64")]
    v.extend_from_slice(&[
        libc::SYS_dup2,
        libc::SYS_unlink,
        libc::SYS_readlink,
        libc::SYS_accept,
        libc::SYS_open,
    ]);
    v
}

/// What the etcd client's connections need beyond [`allowed`] (found with `strace -f` on a
/// pr-target serving from an etcd store, the cluster killed and back): connect, and
/// setsockopt for TCP_NODELAY and keep-alive. The rest (socket, epoll, eventfd, futex,
/// read/write, writev, sendto/recvfrom, getrandom) is in the list already.
fn network_extra() -> Vec<i64> {
    vec![libc::SYS_connect, libc::SYS_setsockopt]
}

fn compile(
    rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, SeccompError> {
    let err = |e: &dyn std::fmt::Display| SeccompError(e.to_string());
    let arch = std::env::consts::ARCH.try_into().map_err(|e| err(&e))?;
    let filter = SeccompFilter::new(rules, mismatch, matched, arch).map_err(|e| err(&e))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| err(&e))
}

/// Installs both filters on every thread of the process; `network`: a store is an etcd
/// cluster ([`network_extra`]).
pub fn install(mode: SeccompMode, network: bool) -> Result<(), SeccompError> {
    let mismatch = match mode {
        SeccompMode::None => {
            tracing::warn!("seccomp filter disabled (--seccomp=none)");
            return Ok(());
        }
        SeccompMode::Kill => SeccompAction::KillProcess,
        SeccompMode::Log => SeccompAction::Log,
    };
    let mut opens = BTreeMap::new();
    opens.insert(libc::SYS_openat, vec![]);
    #[cfg(target_arch = "x86_64")]
    opens.insert(libc::SYS_open, vec![]);
    let opens = compile(
        opens,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EACCES as u32),
    )?;
    let extra = if network { network_extra() } else { Vec::new() };
    let list = compile(
        allowed()
            .into_iter()
            .chain(extra)
            .map(|s| (s, vec![]))
            .collect(),
        mismatch,
        SeccompAction::Allow,
    )?;
    // The open filter first: once the allow-list is in, seccomp(2) itself is refused.
    for prog in [&opens, &list] {
        seccompiler::apply_filter_all_threads(prog).map_err(|e| SeccompError(e.to_string()))?;
    }
    tracing::info!("seccomp filter installed on every thread ({mode:?} on other calls)");
    Ok(())
}
