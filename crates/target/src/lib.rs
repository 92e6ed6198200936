//! pr-target: a vhost-user-scsi target whose every command obeys the SPC-4
//! persistent-reservation engine (pr-engine) on a durable store (pr-store).
//!
//! - [`scsi`]: the device server of a disk (CDB + data → status, sense, data), pure;
//! - [`lu`]: a logical unit fenced by its reservations (the access check, atomic with
//!   submission, and PR IN/OUT through the store);
//! - [`target`]: one socket's I_T nexus and LUN map;
//! - [`virtio`]: virtio-scsi headers as bytes, pure;
//! - [`vhost`]: the vhost-user device on rust-vmm's crates ([`vring`]: its ring type);
//! - [`backing`]: files and block devices on the host;
//! - [`config`]: the TOML configuration;
//! - [`server`]: opening everything, serving every socket, shutting down;
//! - [`seccomp`]: the system-call allow-list of a serving target.
#![forbid(unsafe_code)]

pub mod backing;
pub mod config;
pub mod lu;
pub mod scsi;
pub mod seccomp;
pub mod server;
pub mod target;
pub mod vhost;
pub mod virtio;
pub mod vring;
