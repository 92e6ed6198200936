//! The vring type of the vhost-user device: rust-vmm's `VringRwLock`, except that a ring
//! becoming usable re-signals its kick eventfd, and a new call eventfd is signalled once.
//!
//! QEMU sends the ring setup messages (SET_VRING_KICK, SET_VRING_CALL, SET_VRING_ENABLE)
//! without waiting for replies and lets the guest run on, so the driver's first kick can reach
//! the worker thread while the ring is not usable yet — not enabled, or enabled but not ready
//! (vhost-user-backend registers the kick with the worker's epoll before it marks the queue
//! ready). The worker reads the kick and then finds nothing it may serve: the kick is gone.
//! SeaBIOS submits its first request and then polls without kicking again, so the guest hangs
//! in the BIOS; Linux waits for its command timeout. Signalling the kick again each time the
//! ring becomes enabled or ready makes the worker look at the ring once it is usable; a
//! spurious kick only finds an empty ring.
//!
//! The same holds for interrupts: a request served before SET_VRING_CALL arrived was
//! completed with no call eventfd to signal, or with the one of before.
//!
//! The call side has the mirror problem after a reconnection (QEMU's `reconnect-ms=`, a new
//! pr-target process under a running guest): QEMU enables the rings and only then sends
//! SET_VRING_CALL with the guest notifier it will watch from then on. A request the guest
//! queued while no target ran is served as soon as the ring is enabled, and its completion is
//! signalled on the call eventfd of before — which QEMU no longer reads. The guest never
//! hears of it, submits nothing more on that queue and waits forever (seen in
//! lab/target-reconnect.sh: the first 4 KiB of a write landed, the next never came). So every
//! new call eventfd is signalled once when it arrives: the guest then looks at the used ring;
//! an interrupt with nothing new in it costs one look.

use std::fs::File;
use std::io;

use vhost_user_backend::{VringRwLock, VringStateGuard, VringStateMutGuard, VringT};
use virtio_queue::Error as QueueError;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

type Memory = GuestMemoryAtomic<GuestMemoryMmap>;

/// A [`VringRwLock`] whose [`VringT::set_enabled`] re-signals the kick (see the module comment).
#[derive(Clone)]
pub struct Vring(VringRwLock);

impl std::fmt::Debug for Vring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vring")
            .field("next_avail", &self.0.queue_next_avail())
            .finish_non_exhaustive()
    }
}

impl Vring {
    /// Makes the worker look at the ring (see the module comment).
    fn kick_again(&self) {
        if let Some(kick) = self.0.get_ref().get_kick() {
            // An eventfd write fails only when the counter would overflow, and then a wake-up
            // is pending anyway.
            let _ = kick.write(1);
        }
    }
}

impl<'a> VringStateGuard<'a, Memory> for Vring {
    type G = <VringRwLock as VringStateGuard<'a, Memory>>::G;
}

impl<'a> VringStateMutGuard<'a, Memory> for Vring {
    type G = <VringRwLock as VringStateMutGuard<'a, Memory>>::G;
}

impl VringT<Memory> for Vring {
    fn new(mem: Memory, max_queue_size: u16) -> Result<Self, QueueError> {
        VringRwLock::new(mem, max_queue_size).map(Vring)
    }
    fn get_ref(&self) -> <Self as VringStateGuard<'_, Memory>>::G {
        self.0.get_ref()
    }
    fn get_mut(&self) -> <Self as VringStateMutGuard<'_, Memory>>::G {
        self.0.get_mut()
    }
    fn add_used(&self, desc_index: u16, len: u32) -> Result<(), QueueError> {
        self.0.add_used(desc_index, len)
    }
    fn signal_used_queue(&self) -> io::Result<()> {
        self.0.signal_used_queue()
    }
    fn enable_notification(&self) -> Result<bool, QueueError> {
        self.0.enable_notification()
    }
    fn disable_notification(&self) -> Result<(), QueueError> {
        self.0.disable_notification()
    }
    fn needs_notification(&self) -> Result<bool, QueueError> {
        self.0.needs_notification()
    }
    fn set_enabled(&self, enabled: bool) {
        self.0.set_enabled(enabled);
        if enabled {
            self.kick_again();
        }
    }
    fn set_queue_info(&self, desc: u64, avail: u64, used: u64) -> Result<(), QueueError> {
        self.0.set_queue_info(desc, avail, used)
    }
    fn queue_next_avail(&self) -> u16 {
        self.0.queue_next_avail()
    }
    fn set_queue_next_avail(&self, base: u16) {
        self.0.set_queue_next_avail(base)
    }
    fn set_queue_next_used(&self, idx: u16) {
        self.0.set_queue_next_used(idx)
    }
    fn queue_used_idx(&self) -> Result<u16, QueueError> {
        self.0.queue_used_idx()
    }
    fn set_queue_size(&self, num: u16) {
        self.0.set_queue_size(num)
    }
    fn set_queue_event_idx(&self, enabled: bool) {
        self.0.set_queue_event_idx(enabled)
    }
    fn set_queue_ready(&self, ready: bool) {
        self.0.set_queue_ready(ready);
        if ready {
            self.kick_again();
        }
    }
    fn set_kick(&self, file: Option<File>) {
        self.0.set_kick(file)
    }
    fn read_kick(&self) -> io::Result<bool> {
        self.0.read_kick()
    }
    fn set_call(&self, file: Option<File>) {
        let new = file.is_some();
        self.0.set_call(file);
        if new {
            // As for the kick: a write fails only when a wake-up is pending anyway.
            let _ = self.0.signal_used_queue();
        }
    }
    fn set_err(&self, file: Option<File>) {
        self.0.set_err(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::event::{eventfd, EventfdFlags};
    use std::io::Read;

    fn counter(f: &mut File) -> u64 {
        let mut b = [0u8; 8];
        match f.read(&mut b) {
            Ok(8) => u64::from_ne_bytes(b),
            _ => 0,
        }
    }

    #[test]
    fn a_new_call_eventfd_is_signalled_once_and_an_enabled_or_ready_ring_re_kicks() {
        let v = Vring::new(GuestMemoryAtomic::new(GuestMemoryMmap::new()), 256).unwrap();
        let call = File::from(eventfd(0, EventfdFlags::NONBLOCK).unwrap());
        let mut seen = call.try_clone().unwrap();
        v.set_call(Some(call));
        assert_eq!(
            counter(&mut seen),
            1,
            "the new call eventfd was not signalled"
        );
        v.set_call(None);
        assert_eq!(
            counter(&mut seen),
            0,
            "removing the call eventfd signalled it"
        );

        let kick = File::from(eventfd(0, EventfdFlags::NONBLOCK).unwrap());
        let mut kicked = kick.try_clone().unwrap();
        v.set_kick(Some(kick));
        v.set_enabled(false);
        assert_eq!(counter(&mut kicked), 0, "disabling the ring kicked it");
        v.set_enabled(true);
        assert_eq!(
            counter(&mut kicked),
            1,
            "enabling the ring did not re-kick it"
        );
        v.set_queue_ready(false);
        assert_eq!(
            counter(&mut kicked),
            0,
            "marking the queue not ready kicked it"
        );
        v.set_queue_ready(true);
        assert_eq!(
            counter(&mut kicked),
            1,
            "marking the queue ready did not re-kick it"
        );
    }
}
