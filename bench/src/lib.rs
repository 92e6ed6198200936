//! pr-bench: load generator, idle-connection probe and side-by-side runner for helpers that
//! speak QEMU's pr-manager-helper protocol.
#![forbid(unsafe_code)]

pub mod cli;
pub mod compare;
pub mod device;
pub mod emulate;
pub mod events;
pub mod idle;
pub mod load;
pub mod mix;
pub mod procinfo;
pub mod report;
pub mod stats;
pub mod svg;
