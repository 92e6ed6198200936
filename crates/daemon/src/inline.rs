//! Where a command runs: on the runtime worker that read the request, or handed off.
//!
//! Handing every command to another thread (tokio's `block_in_place`) costs a thread wake-up and
//! two context switches per request, which for a fast device is most of the request's cost.
//! Running the command on the worker itself is cheap but would let a hung device stall the
//! other connections that worker serves. The compromise: a command runs inline only while it
//! holds one of `workers − 1` slots, and at most one slot per device. So at least one worker is
//! always free to accept connections, serve other clients and take over (steal) the tasks queued
//! behind a worker stuck in a command; a hung device holds at most one slot (its next commands
//! are handed off like every command that finds no free slot).

use std::sync::Mutex;

use pr_sys::device::DevNum;

/// The inline slots of one server.
#[derive(Debug)]
pub(crate) struct InlineSlots {
    limit: usize,
    /// The device each taken slot is running a command on.
    busy: Mutex<Vec<DevNum>>,
}

/// A taken slot; freed when dropped.
#[derive(Debug)]
pub(crate) struct Slot<'a> {
    slots: &'a InlineSlots,
    dev: DevNum,
}

impl InlineSlots {
    /// Slots for a runtime with `workers` worker threads (none with a single worker).
    pub(crate) fn for_workers(workers: usize) -> InlineSlots {
        let limit = workers.saturating_sub(1);
        InlineSlots {
            limit,
            busy: Mutex::new(Vec::with_capacity(limit)),
        }
    }

    /// A slot for a command on `dev`, if one is free and no other inline command is running on
    /// that device.
    pub(crate) fn try_take(&self, dev: DevNum) -> Option<Slot<'_>> {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        if busy.len() >= self.limit || busy.contains(&dev) {
            return None;
        }
        busy.push(dev);
        Some(Slot { slots: self, dev })
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut busy = self.slots.busy.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = busy.iter().position(|d| *d == self.dev) {
            busy.swap_remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(major: u32, minor: u32) -> DevNum {
        DevNum { major, minor }
    }

    #[test]
    fn one_worker_always_stays_free() {
        let slots = InlineSlots::for_workers(3);
        let a = slots.try_take(dev(8, 0)).expect("first slot");
        let b = slots.try_take(dev(8, 16)).expect("second slot");
        assert!(
            slots.try_take(dev(8, 32)).is_none(),
            "2 of 3 workers in use"
        );
        drop(a);
        let c = slots
            .try_take(dev(8, 32))
            .expect("a freed slot is taken again");
        drop((b, c));
    }

    #[test]
    fn a_single_worker_runs_nothing_inline() {
        assert!(InlineSlots::for_workers(1).try_take(dev(8, 0)).is_none());
        assert!(InlineSlots::for_workers(0).try_take(dev(8, 0)).is_none());
    }

    #[test]
    fn one_inline_command_per_device() {
        let slots = InlineSlots::for_workers(4);
        let a = slots.try_take(dev(8, 0)).expect("free");
        assert!(
            slots.try_take(dev(8, 0)).is_none(),
            "a second command on a device that may be hung is handed off"
        );
        let other = slots
            .try_take(dev(8, 1))
            .expect("another device still runs inline");
        drop(a);
        assert!(
            slots.try_take(dev(8, 0)).is_some(),
            "free again once it returned"
        );
        drop(other);
    }
}
