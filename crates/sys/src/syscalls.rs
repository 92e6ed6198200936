//! The system calls every one of our long-running processes makes once it serves (pr-helper and
//! pr-target): std, tokio and glibc on Linux, threads included. Each seccomp allow-list (the
//! daemon's seccomp.rs, pr-target's) starts from [`runtime`] and adds what its own work needs.

/// Descriptor I/O and status, event loops, time, memory, threads, signals and exit.
pub fn runtime() -> Vec<i64> {
    let mut v = vec![
        // Descriptors: reads, writes, closing, flags and status.
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_readv,
        libc::SYS_writev,
        libc::SYS_close,
        libc::SYS_fcntl,
        libc::SYS_newfstatat,
        libc::SYS_statx,
        // Event loops, wake-ups and time.
        libc::SYS_epoll_create1,
        libc::SYS_epoll_ctl,
        libc::SYS_epoll_pwait,
        libc::SYS_epoll_pwait2,
        libc::SYS_eventfd2,
        libc::SYS_futex,
        libc::SYS_sched_yield,
        libc::SYS_nanosleep,
        libc::SYS_clock_nanosleep,
        libc::SYS_clock_gettime,
        // Memory.
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
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend_from_slice(&[libc::SYS_fstat, libc::SYS_epoll_wait, libc::SYS_poll]);
    v
}
