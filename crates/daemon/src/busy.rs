//! Busy connections: the first few with a thread of their own, the rest served by pollers.
//!
//! A connection with a request to serve leaves its task (server.rs) for a turn. While fewer
//! than `--connection-threads` (one per CPU by default) connections have one, it gets a
//! thread of its own (`dedicated`): the thread reads, runs and answers the request with blocking calls, then sleeps in recvmsg on
//! that socket, so the kernel wakes exactly that thread, on the CPU of the client that wrote (a
//! synchronous wake-up), and no request is handed from one thread to another. Beyond the bound
//! a connection joins one epoll set (one-shot registrations) watched by a few poller threads,
//! one per CPU. The poller that is woken for a connection reads its request, runs it and writes
//! the reply itself, then re-arms the registration: no hand-off between threads per request,
//! and under load a poller goes from one connection to the next without sleeping. A poller
//! stuck in a command (a hung device) holds only that connection; a monitor task sees when no
//! poller has been free and none has finished a request for a tick, and starts as many again,
//! so the other connections go on being served; a stuck dedicated thread holds only its own.
//! Connections quiet for `LINGER` go back to their tasks, where an idle connection costs a few
//! hundred bytes.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pr_backend::Dispatcher;
use rustix::buffer::spare_capacity;
use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::event::Timespec;
use tokio::sync::{oneshot, Notify};
use tracing::warn;

use pr_proto::{Reply, RequestHeader};
use rustix::net::SendFlags;

use crate::active::{self, ConnectionError, Incoming, Routing, Served, Turn, LINGER};

/// Stack of each poller thread: only the pages a request touches become resident.
const STACK_SIZE: usize = 128 * 1024;
/// How often the monitor looks for quiet connections and stuck pollers.
const TICK: Duration = Duration::from_millis(20);
/// Most pollers started for commands that wait for company (group commit): as many commands
/// can meet in one commit.
const MAX_POLLERS: usize = 128;
/// A poller beyond the wanted number ends after this long without an event.
const EXTRA_IDLE: Timespec = Timespec {
    tv_sec: 1,
    tv_nsec: 0,
};

pub(crate) struct Busy {
    epoll: OwnedFd,
    slots: Mutex<Slots>,
    dispatcher: Arc<Dispatcher>,
    io_timeout: Duration,
    shutdown: AtomicBool,
    /// Pollers wanted when none is stuck (one per CPU).
    wanted: usize,
    /// Pollers running, and how many of them wait in epoll_wait.
    pollers: AtomicUsize,
    waiting: AtomicUsize,
    /// Requests served, for the monitor to see progress.
    served: AtomicU64,
    /// Connections in a turn on a thread of their own, and the most there may be. Such a
    /// thread costs the stack pages its requests touch (a few KiB of the 128 KiB reserved) and
    /// ends after `LINGER` without a request.
    dedicated: AtomicUsize,
    max_dedicated: usize,
    joined: Notify,
}

#[derive(Default)]
struct Slots {
    entries: Vec<Entry>,
    free: Vec<u32>,
    used: usize,
}

#[derive(Default)]
struct Entry {
    /// Distinguishes this use of the slot from earlier ones: an event for a connection that
    /// has left is ignored.
    generation: u32,
    slot: Option<Slot>,
}

struct Slot {
    /// Absent while a poller serves the connection.
    stream: Option<UnixStream>,
    done: oneshot::Sender<Turn>,
    last: Instant,
    /// The listening socket the connection came through.
    socket: usize,
}

fn key(index: u32, generation: u32) -> u64 {
    (u64::from(generation) << 32) | u64::from(index)
}

impl Busy {
    pub(crate) fn new(
        dispatcher: Arc<Dispatcher>,
        io_timeout: Duration,
        max_dedicated: usize,
    ) -> io::Result<Arc<Busy>> {
        Ok(Arc::new(Busy {
            epoll: epoll::create(epoll::CreateFlags::CLOEXEC)?,
            slots: Mutex::new(Slots::default()),
            dispatcher,
            io_timeout,
            shutdown: AtomicBool::new(false),
            wanted: std::thread::available_parallelism().map_or(2, |n| n.get().min(4)),
            pollers: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            dedicated: AtomicUsize::new(0),
            max_dedicated,
            joined: Notify::new(),
        }))
    }

    /// Takes a connection that has a request waiting; the answer says how its turn ended.
    pub(crate) fn join(
        self: &Arc<Self>,
        stream: UnixStream,
        first: bool,
        socket: usize,
    ) -> Result<oneshot::Receiver<Turn>, ConnectionError> {
        active::begin_turn(&stream, first, self.io_timeout)?;
        if self.dedicated.fetch_add(1, Ordering::AcqRel) < self.max_dedicated {
            return self.dedicate(stream, socket);
        }
        self.dedicated.fetch_sub(1, Ordering::AcqRel);
        if self.pollers.load(Ordering::Acquire) == 0 {
            self.start_pollers(self.wanted)?;
        }
        let (done, turn) = oneshot::channel();
        let mut slots = self.lock();
        let index = match slots.free.pop() {
            Some(i) => i,
            None => {
                slots.entries.push(Entry::default());
                u32::try_from(slots.entries.len() - 1).map_err(|_| io::Error::other("too many"))?
            }
        };
        let entry = &mut slots.entries[index as usize];
        entry.generation = entry.generation.wrapping_add(1);
        let k = key(index, entry.generation);
        // Registered under the lock: a poller woken at once waits for it, then finds the
        // connection in its slot.
        if let Err(e) = epoll::add(
            &self.epoll,
            &stream,
            EventData::new_u64(k),
            EventFlags::IN | EventFlags::ONESHOT,
        ) {
            slots.free.push(index);
            return Err(io::Error::from(e).into());
        }
        entry.slot = Some(Slot {
            stream: Some(stream),
            done,
            last: Instant::now(),
            socket,
        });
        slots.used += 1;
        drop(slots);
        self.joined.notify_one();
        Ok(turn)
    }

    /// A turn on a thread of its own: serves requests until the connection is quiet for
    /// `LINGER`, closes, fails, or a shutdown began (a request under way is answered first).
    /// A command that waits for company (group commit) needs nothing here: this thread is the
    /// connection's own, and the others' requests are read by their own threads or pollers.
    fn dedicate(
        self: &Arc<Self>,
        stream: UnixStream,
        socket: usize,
    ) -> Result<oneshot::Receiver<Turn>, ConnectionError> {
        let (done, turn) = oneshot::channel();
        let busy = self.clone();
        let spawned = std::thread::Builder::new()
            .name("pr-helper-conn".into())
            .stack_size(STACK_SIZE)
            .spawn(move || {
                let end = loop {
                    let shutdown = || busy.shutdown.load(Ordering::Acquire);
                    let served = active::serve_one(
                        &stream,
                        &busy.dispatcher,
                        busy.io_timeout,
                        true,
                        socket,
                        &|| {},
                    );
                    match served {
                        Ok(Served::Reply) if !shutdown() => continue,
                        Ok(Served::Reply | Served::Closed) => break Turn::Closed(Ok(())),
                        Ok(Served::Nothing) if shutdown() => break Turn::Closed(Ok(())),
                        Ok(Served::Nothing) => break active::end_turn(stream),
                        Err(e) => break Turn::Closed(Err(e)),
                    }
                };
                busy.dedicated.fetch_sub(1, Ordering::AcqRel);
                // The task is gone only when the runtime is shutting down; the socket closes.
                let _ = done.send(end);
            });
        match spawned {
            Ok(_) => Ok(turn),
            Err(e) => {
                self.dedicated.fetch_sub(1, Ordering::AcqRel);
                warn!("cannot start a thread for a connection: {e}");
                Err(e.into())
            }
        }
    }

    /// From now on every connection ends once its request in flight is answered.
    pub(crate) fn begin_shutdown(&self) {
        self.shutdown.store(true, Ordering::Release);
        self.joined.notify_one();
    }

    /// Hands quiet connections back and starts a poller when all are stuck. Runs until the
    /// runtime ends; sleeps while no connection is busy.
    pub(crate) async fn monitor(self: Arc<Self>) {
        let mut last_served = u64::MAX;
        loop {
            if self.lock().used == 0 {
                self.joined.notified().await;
            }
            tokio::time::sleep(TICK).await;
            self.hand_back_quiet();
            let served = self.served.load(Ordering::Acquire);
            if served == last_served
                && self.waiting.load(Ordering::Acquire) == 0
                && self.lock().used > 0
            {
                // Every poller has been inside one request for a whole tick: as many again.
                if let Err(e) = self.start_pollers(self.wanted) {
                    warn!("cannot start a poller thread: {e}");
                }
            }
            last_served = served;
        }
    }

    fn hand_back_quiet(&self) {
        let shutdown = self.shutdown.load(Ordering::Acquire);
        let mut quiet = Vec::new();
        let mut slots = self.lock();
        let Slots {
            entries,
            free,
            used,
        } = &mut *slots;
        for (i, entry) in entries.iter_mut().enumerate() {
            let due = entry
                .slot
                .as_ref()
                .is_some_and(|s| s.stream.is_some() && (shutdown || s.last.elapsed() >= LINGER));
            if due {
                let slot = entry.slot.take().expect("checked above");
                free.push(i as u32);
                *used -= 1;
                quiet.push(slot);
            }
        }
        drop(slots);
        for slot in quiet {
            let stream = slot.stream.expect("checked above");
            let _ = epoll::delete(&self.epoll, &stream);
            let _ = slot.done.send(active::end_turn(stream));
        }
    }

    fn start_pollers(self: &Arc<Self>, n: usize) -> io::Result<()> {
        for _ in 0..n {
            let busy = self.clone();
            self.pollers.fetch_add(1, Ordering::AcqRel);
            if let Err(e) = std::thread::Builder::new()
                .name("pr-helper-poll".into())
                .stack_size(STACK_SIZE)
                .spawn(move || busy.poll())
            {
                self.pollers.fetch_sub(1, Ordering::AcqRel);
                return Err(e);
            }
        }
        Ok(())
    }

    fn poll(self: &Arc<Self>) {
        let mut events = Vec::with_capacity(1);
        loop {
            let extra = self.pollers.load(Ordering::Acquire) > self.wanted;
            self.waiting.fetch_add(1, Ordering::AcqRel);
            let r = epoll::wait(
                &self.epoll,
                spare_capacity(&mut events),
                extra.then_some(&EXTRA_IDLE),
            );
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            match r {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    warn!("epoll_wait failed: {e}");
                    self.pollers.fetch_sub(1, Ordering::AcqRel);
                    return;
                }
            }
            let Some(event) = events.pop() else {
                if self.retire() {
                    return;
                }
                continue;
            };
            self.serve(event.data.u64());
        }
    }

    /// Before a command that waits for others to be committed with it (the store's group
    /// commit): when no other poller waits for events, one more is started (up to
    /// [`MAX_POLLERS`]), so the next request is read while this one waits and can join its
    /// commit. Extra pollers end as usual once enough are free again.
    fn keep_one_waiting(self: &Arc<Self>) {
        if self.waiting.load(Ordering::Acquire) == 0
            && self.pollers.load(Ordering::Acquire) < MAX_POLLERS
        {
            if let Err(e) = self.start_pollers(1) {
                warn!("cannot start a poller thread: {e}");
            }
        }
    }

    /// Ends this poller if there are more than wanted.
    fn retire(&self) -> bool {
        self.pollers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n > self.wanted).then(|| n - 1)
            })
            .is_ok()
    }

    fn serve(self: &Arc<Self>, k: u64) {
        let (index, generation) = ((k & 0xffff_ffff) as usize, (k >> 32) as u32);
        let taken = {
            let mut slots = self.lock();
            match slots.entries.get_mut(index) {
                Some(e) if e.generation == generation => e
                    .slot
                    .as_mut()
                    .and_then(|s| Some((s.stream.take()?, s.socket))),
                _ => None,
            }
        };
        // Handed back or closed since the event was queued.
        let Some((stream, socket)) = taken else {
            return;
        };
        let request = match active::read_request(&stream, self.io_timeout, false) {
            Ok(Incoming::Request(r)) => r,
            Ok(Incoming::Nothing) => {
                return self.served(index, generation, stream, Ok(Served::Nothing))
            }
            Ok(Incoming::Closed) => {
                return self.served(index, generation, stream, Ok(Served::Closed))
            }
            Err(e) => return self.served(index, generation, stream, Err(e)),
        };
        let header = *request.header();
        let reply = match active::route(&self.dispatcher, &request) {
            // The store commits it in the background: its writer sends the reply, and this
            // poller goes on to the next request, which may join the same commit.
            Routing::Run(routed) if routed.answers_later(&request, socket) => {
                let busy = Arc::clone(self);
                active::run_later(routed, request, socket, move |reply| {
                    busy.answer_later(index, generation, stream, &header, reply)
                });
                return;
            }
            Routing::Run(routed) => {
                active::run(routed, request, socket, &|| self.keep_one_waiting())
            }
            Routing::Refused(reply) => reply,
        };
        let bytes = active::encode_reply(&header, reply);
        let result = active::write_all(&stream, &bytes, self.io_timeout).map(|()| Served::Reply);
        self.served(index, generation, stream, result);
    }

    /// Sends a reply that came later, on the store's writer thread, which must not wait: at
    /// once when the socket takes it (it does unless the client stopped reading its replies),
    /// else from a thread of its own under the send timeout.
    fn answer_later(
        self: Arc<Self>,
        index: usize,
        generation: u32,
        stream: UnixStream,
        header: &RequestHeader,
        reply: Reply,
    ) {
        let bytes = active::encode_reply(header, reply);
        let sent =
            match rustix::net::send(&stream, &bytes, SendFlags::DONTWAIT | SendFlags::NOSIGNAL) {
                Ok(n) => n,
                Err(rustix::io::Errno::AGAIN) => 0,
                Err(e) => {
                    return self.served(index, generation, stream, Err(io::Error::from(e).into()))
                }
            };
        if sent == bytes.len() {
            return self.served(index, generation, stream, Ok(Served::Reply));
        }
        let busy = Arc::clone(&self);
        let spawned = std::thread::Builder::new()
            .name("pr-helper-reply".into())
            .stack_size(STACK_SIZE)
            .spawn(move || {
                let result = active::write_all(&stream, &bytes[sent..], busy.io_timeout)
                    .map(|()| Served::Reply);
                busy.served(index, generation, stream, result);
            });
        if let Err(e) = spawned {
            warn!("cannot start a thread to write a reply: {e}");
            // The closure, and with it the stream, is gone: the connection is closed.
            self.leave(key(index as u32, generation), Err(e.into()));
        }
    }

    /// After a readiness event was served: the connection goes back into the set, or leaves it.
    fn served(
        &self,
        index: usize,
        generation: u32,
        stream: UnixStream,
        result: Result<Served, ConnectionError>,
    ) {
        self.served.fetch_add(1, Ordering::AcqRel);
        let k = key(index as u32, generation);
        let result = match result {
            Ok(Served::Reply) if self.shutdown.load(Ordering::Acquire) => Ok(Served::Closed),
            r => r,
        };
        match result {
            Ok(served @ (Served::Reply | Served::Nothing)) => {
                if let Err(e) = self.rearm(index, generation, stream, served) {
                    self.leave(k, Err(e.into()));
                }
            }
            Ok(Served::Closed) => {
                drop(stream);
                self.leave(k, Ok(()));
            }
            Err(e) => {
                drop(stream);
                self.leave(k, Err(e));
            }
        }
    }

    /// Puts the connection back and arms its one-shot registration again (which reports a
    /// request already waiting at once).
    fn rearm(
        &self,
        index: usize,
        generation: u32,
        stream: UnixStream,
        served: Served,
    ) -> io::Result<()> {
        let mut slots = self.lock();
        let Some(slot) = slots.entries[index].slot.as_mut() else {
            return Ok(());
        };
        epoll::modify(
            &self.epoll,
            &stream,
            EventData::new_u64(key(index as u32, generation)),
            EventFlags::IN | EventFlags::ONESHOT,
        )?;
        if matches!(served, Served::Reply) {
            slot.last = Instant::now();
        }
        slot.stream = Some(stream);
        Ok(())
    }

    /// Removes a connection from the set and tells its task how it ended.
    fn leave(&self, k: u64, result: Result<(), ConnectionError>) {
        let (index, generation) = ((k & 0xffff_ffff) as usize, (k >> 32) as u32);
        let mut slots = self.lock();
        let slot = match slots.entries.get_mut(index) {
            Some(e) if e.generation == generation => e.slot.take(),
            _ => None,
        };
        if let Some(slot) = slot {
            slots.free.push(index as u32);
            slots.used -= 1;
            drop(slots);
            // Dropping the stream (if still there) closes it, which also removes it from epoll.
            drop(slot.stream);
            let _ = slot.done.send(Turn::Closed(result));
        }
    }

    fn lock(&self) -> MutexGuard<'_, Slots> {
        // No code that can panic runs under the lock, so a poisoned lock still holds
        // consistent slots.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }
}
