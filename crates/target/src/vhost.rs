//! The vhost-user-scsi device: rust-vmm's vhost-user-backend serves the socket protocol and
//! the virtqueues; this module turns each descriptor chain into a [`Target::execute`] call.
//!
//! Queues: 0 is the control queue, 1 the event queue (never used: no hot-plug), 2… the
//! request queues. Worker thread 0 serves control and event queues; each request queue has
//! a worker thread of its own.
//!
//! Every descriptor chain is hostile: its readable part must hold a whole request header,
//! data-out is read only up to what the checked CDB needs, data-in is written only into the
//! writable room there is, and a chain that cannot hold a response header is returned unused.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_bindings::virtio_scsi::{
    VIRTIO_SCSI_F_CHANGE, VIRTIO_SCSI_F_HOTPLUG, VIRTIO_SCSI_S_BAD_TARGET, VIRTIO_SCSI_S_FAILURE,
    VIRTIO_SCSI_S_INCORRECT_LUN, VIRTIO_SCSI_S_OK,
};
use virtio_queue::{DescriptorChain, QueueT, Reader, Writer};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryLoadGuard, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use tracing::error;

use crate::scsi::BlockDevice;
use crate::target::Target;
use crate::virtio::{self, Address, Control, Request, Response, REQUEST_HEADER_SIZE};
use crate::vring::Vring;

type Memory = GuestMemoryAtomic<GuestMemoryMmap>;
type Chain = DescriptorChain<GuestMemoryLoadGuard<GuestMemoryMmap>>;

const CONTROL_QUEUE: u16 = 0;
/// Largest virtqueue we accept.
const MAX_QUEUE_SIZE: usize = 1024;
/// Fixed sense length of the fixed-format sense data we send (SPC-4 §4.5.3: 8 + 10).
const SENSE_LEN: u32 = 18;

/// The vhost-user backend of one socket.
pub struct ScsiBackend<D> {
    target: Arc<Target<D>>,
    request_queues: usize,
    memory: RwLock<Option<Memory>>,
    event_idx: std::sync::atomic::AtomicBool,
    exit_events: Mutex<Vec<EventFd>>,
}

impl<D> std::fmt::Debug for ScsiBackend<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScsiBackend")
            .field("request_queues", &self.request_queues)
            .finish_non_exhaustive()
    }
}

impl<D: BlockDevice> ScsiBackend<D> {
    /// A backend for `target` with `request_queues` request queues (each on its own thread).
    pub fn new(target: Arc<Target<D>>, request_queues: usize) -> Self {
        ScsiBackend {
            target,
            request_queues: request_queues.clamp(1, 62),
            memory: RwLock::new(None),
            event_idx: false.into(),
            exit_events: Mutex::new(Vec::new()),
        }
    }

    /// Wakes every worker thread of the current connection so that it exits.
    pub fn stop_workers(&self) {
        for e in self
            .exit_events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            let _ = e.write(1);
        }
    }

    fn memory(&self) -> Option<GuestMemoryLoadGuard<GuestMemoryMmap>> {
        self.memory
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|m| m.memory())
    }

    /// Drains a queue: every available chain is answered, then notification is re-enabled
    /// (with EVENT_IDX, looping until no chain arrived in between).
    fn serve_queue(&self, vring: &Vring, control: bool) -> std::io::Result<()> {
        let Some(mem) = self.memory() else {
            return Ok(());
        };
        let event_idx = self.event_idx.load(std::sync::atomic::Ordering::Relaxed);
        loop {
            if event_idx {
                vring.disable_notification().map_err(other)?;
            }
            loop {
                let chain = vring
                    .get_mut()
                    .get_queue_mut()
                    .pop_descriptor_chain(mem.clone());
                let Some(chain) = chain else { break };
                let head = chain.head_index();
                let used = if control {
                    self.control(&mem, chain)
                } else {
                    self.command(&mem, chain)
                };
                vring.add_used(head, used).map_err(other)?;
                if !event_idx || vring.needs_notification().map_err(other)? {
                    vring.signal_used_queue()?;
                }
            }
            if !event_idx || !vring.enable_notification().map_err(other)? {
                return Ok(());
            }
        }
    }

    /// One command request; returns the bytes written into the chain.
    fn command(&self, mem: &GuestMemoryMmap, chain: Chain) -> u32 {
        let (Ok(mut reader), Ok(mut writer)) =
            (Reader::new(mem, chain.clone()), Writer::new(mem, chain))
        else {
            return 0;
        };
        if writer.available_bytes() < virtio::RESPONSE_HEADER_SIZE {
            return 0;
        }
        let Ok(mut data_in) = writer.split_at(virtio::RESPONSE_HEADER_SIZE) else {
            return 0;
        };
        let mut header = [0u8; REQUEST_HEADER_SIZE];
        let request = match reader.read_exact(&mut header) {
            Ok(()) => Request::parse(&header),
            Err(_) => None,
        };
        let Some(request) = request else {
            return respond(&mut writer, &Response::transport(VIRTIO_SCSI_S_FAILURE), 0);
        };
        let Address::Lun(lun) = virtio::address(&request.lun) else {
            return respond(
                &mut writer,
                &Response::transport(VIRTIO_SCSI_S_BAD_TARGET),
                0,
            );
        };
        let out_available = reader.available_bytes();
        let mut consumed = 0usize;
        let reply = SCRATCH.with_borrow_mut(|scratch| {
            self.target
                .execute(lun, &request.cdb, scratch, &mut |n, buf| {
                    let n = n.min(out_available);
                    // Grows only: the bytes of earlier commands are overwritten, not zeroed.
                    if buf.len() < n {
                        buf.resize(n, 0);
                    }
                    match reader.read_exact(&mut buf[..n]) {
                        Ok(()) => {
                            consumed = n;
                            n
                        }
                        Err(_) => 0,
                    }
                })
        });
        let in_available = data_in.available_bytes();
        let n = reply.data.len().min(in_available);
        let written = match data_in.write_all(&reply.data[..n]) {
            Ok(()) => n,
            Err(_) => 0,
        };
        let residual = (in_available - written) + (out_available - consumed);
        let mut response = Response::transport(VIRTIO_SCSI_S_OK);
        response.status = reply.status.0;
        response.residual = u32::try_from(residual).unwrap_or(u32::MAX);
        if let Some(sense) = reply.sense {
            response.sense = sense.to_fixed();
            response.sense_len = SENSE_LEN;
        }
        respond(&mut writer, &response, written)
    }

    /// One control-queue request. Commands run to completion on their queue's thread, so a
    /// task management function finds nothing to abort: FUNCTION COMPLETE.
    fn control(&self, mem: &GuestMemoryMmap, chain: Chain) -> u32 {
        let (Ok(mut reader), Ok(mut writer)) =
            (Reader::new(mem, chain.clone()), Writer::new(mem, chain))
        else {
            return 0;
        };
        let mut buf = [0u8; virtio::TMF_REQUEST_SIZE];
        let n = reader.available_bytes().min(buf.len());
        if reader.read_exact(&mut buf[..n]).is_err() {
            return 0;
        }
        let reply: Vec<u8> = match Control::parse(&buf[..n]) {
            Control::Tmf { lun, .. } => match virtio::address(&lun) {
                Address::Lun(l) if self.target.has_lun(l) => vec![VIRTIO_SCSI_S_OK as u8],
                Address::Lun(_) => vec![VIRTIO_SCSI_S_INCORRECT_LUN as u8],
                Address::BadTarget => vec![VIRTIO_SCSI_S_BAD_TARGET as u8],
            },
            Control::AsyncNotification => vec![0, 0, 0, 0, VIRTIO_SCSI_S_OK as u8],
            Control::Unknown => vec![VIRTIO_SCSI_S_FAILURE as u8],
        };
        let n = reply.len().min(writer.available_bytes());
        match writer.write_all(&reply[..n]) {
            Ok(()) => n as u32,
            Err(_) => 0,
        }
    }
}

thread_local! {
    /// A worker thread's data-out buffer, reused from command to command; it grows to the
    /// largest data-out the device server accepted (1 MiB of WRITE, 64 KiB of parameters).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn respond(writer: &mut Writer<'_>, response: &Response, data: usize) -> u32 {
    match writer.write_all(&response.encode()) {
        Ok(()) => (virtio::RESPONSE_HEADER_SIZE + data)
            .try_into()
            .unwrap_or(u32::MAX),
        Err(_) => 0,
    }
}

fn other<E: std::fmt::Debug>(e: E) -> std::io::Error {
    std::io::Error::other(format!("{e:?}"))
}

impl<D: BlockDevice + 'static> VhostUserBackend for ScsiBackend<D> {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        2 + self.request_queues
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    /// VERSION_1, indirect descriptors, EVENT_IDX, and virtio-scsi's HOTPLUG and CHANGE
    /// (QEMU passes the guest's acknowledgement of these through; the target never changes
    /// its LUNs or parameters while serving, so it never has an event to send).
    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_SCSI_F_HOTPLUG)
            | (1 << VIRTIO_SCSI_F_CHANGE)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx
            .store(enabled, std::sync::atomic::Ordering::Relaxed);
    }

    fn update_memory(&self, mem: Memory) -> std::io::Result<()> {
        *self.memory.write().unwrap_or_else(PoisonError::into_inner) = Some(mem);
        Ok(())
    }

    /// Thread 0: control and event queues; thread k: request queue k - 1.
    fn queues_per_thread(&self) -> Vec<u64> {
        let mut v = vec![0b11u64];
        v.extend((0..self.request_queues).map(|q| 1u64 << (2 + q)));
        v
    }

    fn exit_event(&self, _thread_index: usize) -> Option<EventFd> {
        let e = EventFd::new(EFD_NONBLOCK).ok()?;
        let copy = e.try_clone().ok()?;
        self.exit_events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(copy);
        Some(e)
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> std::io::Result<()> {
        if evset != EventSet::IN {
            // An eventfd is only ever readable; anything else is logged, and the ring is still
            // looked at (returning an error would end the worker, see below).
            error!("queue event {device_event} on worker {thread_id}: event set {evset:?}");
        }
        let Some(vring) = vrings.get(usize::from(device_event)) else {
            return Ok(());
        };
        let served = match (thread_id, device_event) {
            (0, CONTROL_QUEUE) => self.serve_queue(vring, true),
            // The event queue: buffers stay with us until an event (none is ever sent).
            (0, _) => Ok(()),
            _ => self.serve_queue(vring, false),
        };
        // An error returned here ends the worker thread, silently (vhost-user-backend drops
        // it), and its queues are never served again on this connection: the guest hangs. A
        // ring that cannot be served now (memory or ring addresses being replaced, a guest
        // writing garbage) is logged and looked at again on the next kick instead.
        if let Err(e) = served {
            error!("queue event {device_event} on worker {thread_id}: {e}; serving on");
        }
        Ok(())
    }
}
