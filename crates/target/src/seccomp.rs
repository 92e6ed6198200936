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
    let mut v = vec![
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_readv,
        libc::SYS_writev,
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        libc::SYS_preadv,
        libc::SYS_pwritev,
        libc::SYS_preadv2,
        libc::SYS_pwritev2,
        libc::SYS_lseek,
        libc::SYS_close,
        libc::SYS_fcntl,
        libc::SYS_dup,
        libc::SYS_dup3,
        libc::SYS_newfstatat,
        libc::SYS_statx,
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
        libc::SYS_epoll_create1,
        libc::SYS_epoll_ctl,
        libc::SYS_epoll_pwait,
        libc::SYS_epoll_pwait2,
        libc::SYS_eventfd2,
        libc::SYS_ppoll,
        libc::SYS_futex,
        libc::SYS_sched_yield,
        libc::SYS_nanosleep,
        libc::SYS_clock_nanosleep,
        libc::SYS_clock_gettime,
        // Memory, the guest's included.
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_madvise,
        libc::SYS_mprotect,
        libc::SYS_brk,
        // Threads.
        libc::SYS_clone,
        libc::SYS_clone3,
        libc::SYS_set_robust_list,
        libc::SYS_rseq,
        libc::SYS_sigaltstack,
        libc::SYS_prctl,
        libc::SYS_sched_getaffinity,
        libc::SYS_gettid,
        libc::SYS_getpid,
        libc::SYS_getrandom,
        // Signals and exit.
        libc::SYS_rt_sigaction,
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigreturn,
        libc::SYS_restart_syscall,
        libc::SYS_tgkill,
        libc::SYS_exit,
        libc::SYS_exit_group,
        // Refused with EACCES by the second filter.
        libc::SYS_openat,
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend_from_slice(&[
        libc::SYS_fstat,
        libc::SYS_dup2,
        libc::SYS_epoll_wait,
        libc::SYS_poll,
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
