//! Busy connections: each with a thread of its own, or served by pollers.
//!
//! A connection with a request to serve leaves its task (server.rs) for a turn. It gets a
//! thread of its own (`own`) while fewer connections than the current bound have one: the
//! thread reads, runs and answers the request with blocking calls, then sleeps in recvmsg on
//! that socket, so the kernel wakes exactly that thread, on the CPU of the client that wrote (a
//! synchronous wake-up), and no request is handed from one thread to another. While a CPU is
//! left for the client, the thread first polls its socket for a few microseconds after each
//! reply, so a client that answers at once finds it awake. Beyond the bound a connection joins
//! one epoll set (one-shot registrations) watched by a few poller threads, one per CPU. The
//! poller that is woken for a connection reads its request, runs it and writes the reply
//! itself, then re-arms the registration: no hand-off between threads per request, and under
//! load a poller goes from one connection to the next without sleeping.
//!
//! The bound is one per CPU or `--connection-threads`, whichever of the two serves the current
//! clients faster (choose.rs); connections move between the two ways after a reply when it
//! changes. A poller stuck in a command (a hung device) holds only that connection; a monitor
//! task sees when no poller has been free and none has finished a request for a tick, and
//! starts as many again, so the other connections go on being served; a stuck connection
//! thread holds only its own. Connections quiet for `LINGER` go back to their tasks, where an
//! idle connection costs a few hundred bytes.

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
use tracing::{info, warn};

use pr_proto::{Reply, RequestHeader};
use rustix::net::SendFlags;

use crate::active::{self, ConnectionError, Incoming, Routing, Served, Turn, LINGER};
use crate::choose::{self, Chooser, Mode};

/// Stack of each poller thread: only the pages a request touches become resident.
const STACK_SIZE: usize = 128 * 1024;
/// How often the monitor looks for quiet connections and stuck pollers.
const TICK: Duration = Duration::from_millis(20);
/// Most pollers started for commands that wait for company (group commit): as many commands
/// can meet in one commit.
const MAX_POLLERS: usize = 128;
/// How long a connection's own thread polls its socket after a reply before it sleeps, while
/// a CPU is left for the client: a client that sends its next request at once is served
/// without a wake-up (on an idle VM, waking a sleeping CPU costs more than the request).
const SPIN: Duration = Duration::from_micros(50);
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
    /// Requests served by connections' own threads (apart from `served`, which shows the
    /// pollers' progress to the monitor).
    served_own: AtomicU64,
    /// Connections in a turn on a thread of their own, and the most there may be now: `narrow`
    /// (one per CPU, as many as pollers) or `wide` (`--connection-threads`), as the monitor
    /// chooses. Such a thread costs the stack pages its requests touch (a few KiB of the
    /// 128 KiB reserved) and ends after `LINGER` without a request.
    dedicated: AtomicUsize,
    bound: AtomicUsize,
    narrow: usize,
    wide: usize,
    /// Connections in the pollers' set: changed under the slots' lock, read without it.
    in_set: AtomicUsize,
    cpus: usize,
    joined: Notify,
}

#[derive(Default)]
struct Slots {
    entries: Vec<Entry>,
    free: Vec<u32>,
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

/// A busy connection between two requests, and what its task waits for.
struct Conn {
    stream: UnixStream,
    done: oneshot::Sender<Turn>,
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
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let wanted = cpus.min(4);
        let narrow = wanted.min(max_dedicated);
        Ok(Arc::new(Busy {
            epoll: epoll::create(epoll::CreateFlags::CLOEXEC)?,
            slots: Mutex::new(Slots::default()),
            dispatcher,
            io_timeout,
            shutdown: AtomicBool::new(false),
            wanted,
            pollers: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            served_own: AtomicU64::new(0),
            dedicated: AtomicUsize::new(0),
            bound: AtomicUsize::new(max_dedicated),
            narrow,
            wide: max_dedicated,
            in_set: AtomicUsize::new(0),
            cpus,
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
        let (done, turn) = oneshot::channel();
        let conn = Conn {
            stream,
            done,
            socket,
        };
        let placed = if self.claim_thread() {
            self.own(conn)
        } else {
            self.enter_set(conn)
        };
        // On failure the connection is dropped here, and the task closes it.
        placed.map(|()| turn).map_err(|(_, e)| e)
    }

    /// Counts one more connection with a thread of its own, if the bound allows.
    fn claim_thread(&self) -> bool {
        let bound = self.bound.load(Ordering::Acquire);
        let claimed = self
            .dedicated
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < bound).then_some(n + 1)
            });
        if let Ok(before) = claimed {
            if before + 1 > self.narrow {
                // More busy connections than pollers: the monitor has a choice to make.
                self.joined.notify_one();
            }
        }
        claimed.is_ok()
    }

    /// Gives up one connection's thread if more have one than the bound now allows.
    fn release_thread_over_bound(&self) -> bool {
        let bound = self.bound.load(Ordering::Acquire);
        self.dedicated
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n > bound).then(|| n - 1)
            })
            .is_ok()
    }

    /// Puts a connection into the pollers' set, starting them if none runs.
    fn enter_set(self: &Arc<Self>, conn: Conn) -> Result<(), (Conn, ConnectionError)> {
        if self.pollers.load(Ordering::Acquire) == 0 {
            if let Err(e) = self.start_pollers(self.wanted) {
                return Err((conn, e.into()));
            }
        }
        let mut slots = self.lock();
        let index = match slots.free.pop() {
            Some(i) => i,
            None => match u32::try_from(slots.entries.len()) {
                Ok(i) => {
                    slots.entries.push(Entry::default());
                    i
                }
                Err(_) => return Err((conn, io::Error::other("too many connections").into())),
            },
        };
        let entry = &mut slots.entries[index as usize];
        entry.generation = entry.generation.wrapping_add(1);
        let k = key(index, entry.generation);
        // Registered under the lock: a poller woken at once waits for it, then finds the
        // connection in its slot.
        if let Err(e) = epoll::add(
            &self.epoll,
            &conn.stream,
            EventData::new_u64(k),
            EventFlags::IN | EventFlags::ONESHOT,
        ) {
            slots.free.push(index);
            return Err((conn, io::Error::from(e).into()));
        }
        let Conn {
            stream,
            done,
            socket,
        } = conn;
        entry.slot = Some(Slot {
            stream: Some(stream),
            done,
            last: Instant::now(),
            socket,
        });
        self.in_set.fetch_add(1, Ordering::AcqRel);
        drop(slots);
        self.joined.notify_one();
        Ok(())
    }

    /// A turn on a thread of its own (claimed with `claim_thread`): serves requests until the
    /// connection is quiet for `LINGER`, closes, fails, or a shutdown began (a request under
    /// way is answered first), or until the bound falls below the connections with a thread,
    /// when it moves to the pollers. A command that waits for company (group commit) needs
    /// nothing here: this thread is the connection's own, and the others' requests are read by
    /// their own threads or pollers. Fails, giving the connection back, if no thread starts.
    fn own(self: &Arc<Self>, conn: Conn) -> Result<(), (Conn, ConnectionError)> {
        // The connection goes to the thread once it runs, so a failed start leaves it here.
        let (give, take) = std::sync::mpsc::sync_channel::<Conn>(1);
        let busy = self.clone();
        let spawned = std::thread::Builder::new()
            .name("pr-helper-conn".into())
            .stack_size(STACK_SIZE)
            .spawn(move || {
                if let Ok(conn) = take.recv() {
                    busy.serve_own(conn);
                }
            });
        match spawned {
            Ok(_) => {
                // The thread waits in recv for it: the send cannot fail.
                let _ = give.send(conn);
                Ok(())
            }
            Err(e) => {
                self.dedicated.fetch_sub(1, Ordering::AcqRel);
                warn!("cannot start a thread for a connection: {e}");
                Err((conn, e.into()))
            }
        }
    }

    fn serve_own(self: &Arc<Self>, conn: Conn) {
        let Conn {
            stream,
            done,
            socket,
        } = conn;
        let shutdown = || self.shutdown.load(Ordering::Acquire);
        let end = loop {
            let served = match self.spin(&stream, socket) {
                Some(r) => r,
                None => active::serve_one(
                    &stream,
                    &self.dispatcher,
                    self.io_timeout,
                    true,
                    socket,
                    &|| {},
                ),
            };
            match served {
                Ok(Served::Reply) if !shutdown() => {
                    self.served_own.fetch_add(1, Ordering::AcqRel);
                    if self.release_thread_over_bound() {
                        let conn = Conn {
                            stream,
                            done,
                            socket,
                        };
                        if let Err((conn, e)) = self.enter_set(conn) {
                            warn!("cannot move a connection to the pollers: {e}");
                            let _ = conn.done.send(Turn::Closed(Err(e)));
                        }
                        return;
                    }
                    continue;
                }
                Ok(Served::Reply | Served::Closed) => break Turn::Closed(Ok(())),
                Ok(Served::Nothing) if shutdown() => break Turn::Closed(Ok(())),
                Ok(Served::Nothing) => break active::end_turn(stream),
                Err(e) => break Turn::Closed(Err(e)),
            }
        };
        self.dedicated.fetch_sub(1, Ordering::AcqRel);
        // The task is gone only when the runtime is shutting down; the socket closes.
        let _ = done.send(end);
    }

    /// Polls for the next request for up to `SPIN`, serving it if it comes, while every busy
    /// connection's thread and its client can have a CPU each. `None`: nothing came, or no
    /// CPU is to spare.
    fn spin(&self, stream: &UnixStream, socket: usize) -> Option<Result<Served, ConnectionError>> {
        let busy = self.dedicated.load(Ordering::Acquire) + self.in_set.load(Ordering::Acquire);
        if busy * 2 > self.cpus {
            return None;
        }
        let until = Instant::now() + SPIN;
        loop {
            match active::serve_one(
                stream,
                &self.dispatcher,
                self.io_timeout,
                false,
                socket,
                &|| {},
            ) {
                Ok(Served::Nothing) => {}
                r => return Some(r),
            }
            if Instant::now() >= until || self.shutdown.load(Ordering::Acquire) {
                return None;
            }
            std::hint::spin_loop();
        }
    }

    /// From now on every connection ends once its request in flight is answered.
    pub(crate) fn begin_shutdown(&self) {
        self.shutdown.store(true, Ordering::Release);
        self.joined.notify_one();
    }

    /// Hands quiet connections back, starts pollers when all are stuck, and chooses how the
    /// busy connections beyond one per CPU are served. Runs until the runtime ends; sleeps
    /// while no more connections are busy than there are pollers and none is with them.
    pub(crate) async fn monitor(self: Arc<Self>) {
        let mut last_served = u64::MAX;
        let mut chooser = Chooser::new(Instant::now());
        let mut last_look = Instant::now();
        loop {
            if self.in_set.load(Ordering::Acquire) == 0
                && self.dedicated.load(Ordering::Acquire) <= self.narrow
            {
                chooser.idle();
                self.set_mode(chooser.mode());
                self.joined.notified().await;
            }
            tokio::time::sleep(choose::TICK).await;
            let served = self.served.load(Ordering::Acquire);
            self.choose(&mut chooser, served);
            if last_look.elapsed() < TICK {
                continue;
            }
            last_look = Instant::now();
            self.hand_back_quiet();
            if served == last_served
                && self.waiting.load(Ordering::Acquire) == 0
                && self.in_set.load(Ordering::Acquire) > 0
            {
                // Every poller has been inside one request for a whole tick: as many again.
                if let Err(e) = self.start_pollers(self.wanted) {
                    warn!("cannot start a poller thread: {e}");
                }
            }
            last_served = served;
        }
    }

    /// One tick of the choice between a thread per busy connection and the pollers.
    fn choose(&self, chooser: &mut Chooser, served_by_pollers: u64) {
        if self.wide <= self.narrow {
            return;
        }
        let before = chooser.mode();
        let busy = self.in_set.load(Ordering::Acquire) + self.dedicated.load(Ordering::Acquire);
        let decision = if busy <= self.narrow {
            chooser.idle();
            None
        } else {
            let served = served_by_pollers + self.served_own.load(Ordering::Acquire);
            chooser.tick(Instant::now(), served)
        };
        let mode = chooser.mode();
        if mode != before {
            match decision {
                Some(d) => info!(
                    "{busy} busy connections: served by {} ({:.0} requests/s, against {:.0})",
                    mode.name(),
                    d.rate,
                    d.other
                ),
                None => info!("{busy} busy connections: served by {}", mode.name()),
            }
        }
        self.set_mode(mode);
    }

    fn set_mode(&self, mode: Mode) {
        let bound = match mode {
            Mode::Threads => self.wide,
            Mode::Pollers => self.narrow,
        };
        self.bound.store(bound, Ordering::Release);
    }

    fn hand_back_quiet(&self) {
        let shutdown = self.shutdown.load(Ordering::Acquire);
        let mut quiet = Vec::new();
        let mut slots = self.lock();
        let Slots { entries, free } = &mut *slots;
        for (i, entry) in entries.iter_mut().enumerate() {
            let due = entry
                .slot
                .as_ref()
                .is_some_and(|s| s.stream.is_some() && (shutdown || s.last.elapsed() >= LINGER));
            if due {
                let slot = entry.slot.take().expect("checked above");
                free.push(i as u32);
                self.in_set.fetch_sub(1, Ordering::AcqRel);
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
        self: &Arc<Self>,
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
            Ok(Served::Reply) if self.claim_thread() => {
                self.promote(index, generation, stream);
            }
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

    /// Moves a connection from the set to a thread of its own (claimed by the caller), after
    /// a reply, when the bound has grown.
    fn promote(self: &Arc<Self>, index: usize, generation: u32, stream: UnixStream) {
        let slot = {
            let mut slots = self.lock();
            let slot = match slots.entries.get_mut(index) {
                Some(e) if e.generation == generation => e.slot.take(),
                _ => None,
            };
            if slot.is_some() {
                slots.free.push(index as u32);
                self.in_set.fetch_sub(1, Ordering::AcqRel);
            }
            slot
        };
        let Some(slot) = slot else {
            // Handed back meanwhile: cannot happen while a poller holds the stream, but then
            // the claim is given back and the socket closes.
            self.dedicated.fetch_sub(1, Ordering::AcqRel);
            return;
        };
        let _ = epoll::delete(&self.epoll, &stream);
        let conn = Conn {
            stream,
            done: slot.done,
            socket: slot.socket,
        };
        if let Err((conn, _)) = self.own(conn) {
            // No thread: it stays with the pollers.
            if let Err((conn, e)) = self.enter_set(conn) {
                let _ = conn.done.send(Turn::Closed(Err(e)));
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
            self.in_set.fetch_sub(1, Ordering::AcqRel);
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
