//! Threads for busy connections. A connection that has a request to serve is given a thread of
//! its own: an idle one if there is one, else a new one. Their number is not capped (only
//! `max_connections` bounds it), so a thread stuck on a hung device never makes another
//! connection wait for a thread. A few idle threads are kept for a while so that a connection
//! waking up seldom needs a new one; the rest end.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Work for one thread: serving one connection until it goes quiet or closes.
pub(crate) type Job = Box<dyn FnOnce() + Send>;

/// Stack of each connection thread. Only the pages a request touches become resident (a few
/// KiB); the rest is address space.
const STACK_SIZE: usize = 128 * 1024;
/// Idle threads kept, and for how long.
const KEEP_IDLE: usize = 8;
const IDLE_FOR: Duration = Duration::from_secs(10);

pub(crate) struct Pool {
    state: Mutex<State>,
    work: Condvar,
}

struct State {
    /// Jobs handed to idle threads and not yet taken; never more than `idle`.
    queue: VecDeque<Job>,
    /// Threads waiting for a job.
    idle: usize,
}

impl Pool {
    pub(crate) fn new() -> Arc<Pool> {
        Arc::new(Pool {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                idle: 0,
            }),
            work: Condvar::new(),
        })
    }

    /// Runs `job` on an idle thread or, when every thread is busy, on a new one. The error is
    /// the thread's failure to start (the job is dropped with it).
    pub(crate) fn run(self: &Arc<Self>, job: Job) -> io::Result<()> {
        let mut state = self.lock();
        if state.idle > state.queue.len() {
            state.queue.push_back(job);
            drop(state);
            self.work.notify_one();
            return Ok(());
        }
        drop(state);
        let pool = self.clone();
        std::thread::Builder::new()
            .name("pr-helper-conn".into())
            .stack_size(STACK_SIZE)
            .spawn(move || {
                job();
                pool.idle_loop();
            })
            .map(drop)
    }

    /// Waits for jobs while fewer than `KEEP_IDLE` threads wait, each wait at most `IDLE_FOR`.
    fn idle_loop(&self) {
        let mut state = self.lock();
        loop {
            if state.idle >= KEEP_IDLE {
                return;
            }
            state.idle += 1;
            let until = Instant::now() + IDLE_FOR;
            let job = loop {
                if let Some(job) = state.queue.pop_front() {
                    break Some(job);
                }
                let now = Instant::now();
                if now >= until {
                    break None;
                }
                state = self
                    .work
                    .wait_timeout(state, until - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            };
            state.idle -= 1;
            let Some(job) = job else { return };
            drop(state);
            job();
            state = self.lock();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A job never runs under the lock, so a poisoned lock still holds consistent counts.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn every_job_runs_even_while_others_block() {
        let pool = Pool::new();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        let (done_tx, done_rx) = mpsc::channel();
        // Four jobs that block until released, like commands on a hung device...
        for _ in 0..4 {
            let (rx, done) = (release_rx.clone(), done_tx.clone());
            pool.run(Box::new(move || {
                rx.lock().unwrap().recv().unwrap();
                done.send("blocked").unwrap();
            }))
            .unwrap();
        }
        // ...do not keep later jobs from running.
        for _ in 0..20 {
            let done = done_tx.clone();
            pool.run(Box::new(move || done.send("free").unwrap()))
                .unwrap();
        }
        for _ in 0..20 {
            assert_eq!(done_rx.recv_timeout(Duration::from_secs(30)), Ok("free"));
        }
        for _ in 0..4 {
            release_tx.send(()).unwrap();
        }
        for _ in 0..4 {
            assert_eq!(done_rx.recv_timeout(Duration::from_secs(30)), Ok("blocked"));
        }
        let state = pool.lock();
        assert!(state.queue.is_empty());
        assert!(state.idle <= KEEP_IDLE);
    }
}
