//! The kernel interfaces pr-helper needs beyond std, wrapped once.
//!
//! This is the only crate of the workspace with `unsafe` code, and all of it is in [`ioctl`]:
//! each block carries a SAFETY comment naming the invariant it relies on. Everything exported is
//! safe to call, and file descriptors are `OwnedFd`/`BorrowedFd` in every signature.

pub mod activation;
pub mod blkpr;
pub mod device;
pub mod dm;
mod ioctl;
pub mod mpath;
pub mod process;
pub mod scm;
pub mod sgio;
pub mod syscalls;
