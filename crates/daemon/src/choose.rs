//! Which way the busy connections beyond one per CPU are served: each on a thread of its own,
//! or by the few pollers (busy.rs). Neither wins everywhere, and which one wins depends on the
//! clients, which the daemon cannot see:
//! - A client that blocks in read until its reply (QEMU's pr-manager does) sleeps on every
//!   request anyway. Its write wakes the connection's own thread on the same CPU, and that
//!   thread's reply wakes the client back: two context switches that pair up. Two pollers, shared
//!   by many such clients, get only two of the many runnable threads' shares of the CPUs.
//! - A client that drives many connections from one thread (an event loop) never sleeps between
//!   them. A thread per connection then adds a wake-up and a sleep to every request, where a
//!   poller goes from one ready connection to the next without sleeping.
//!
//! On a 2-CPU host each way was 1.4-1.6x faster than the other under one of the two kinds of
//! client (docs/performance.md). So the daemon measures: while more connections are busy than
//! there are pollers, it serves them one way for 30 ms, the other way for 30 ms (after 80 ms
//! for the change to settle, 200 ms for a change to the pollers), and keeps the faster by
//! 10 %, each rate the median of 5 ms ticks. It asks again 1 s after a change, and less often
//! (down to once in 10 s) while the answer stays the same. The holds count busy time only,
//! and a quiet spell keeps the answer: the kind of client changes rarely, and a change of mode
//! is dear. A trial costs 110 ms in the slower mode (230 ms when it tries the pollers) and
//! more than that in all (measured: a daemon that tried once in a 2 s load served 13-32 %
//! fewer requests than one that never tried, docs/performance.md), so a load that stops and
//! starts again pays for no new trial.
//!
//! The logic here is pure (ticks and counts in, a mode out), so its tests run without threads.

use std::time::{Duration, Instant};

/// How often the monitor counts the requests served, while it has a choice to make.
pub(crate) const TICK: Duration = Duration::from_millis(5);

/// How busy connections beyond the first few are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Each on a thread of its own, up to `--connection-threads`.
    Threads,
    /// By the pollers.
    Pollers,
}

impl Mode {
    fn other(self) -> Mode {
        match self {
            Mode::Threads => Mode::Pollers,
            Mode::Pollers => Mode::Threads,
        }
    }

    /// Ticks a change to this mode settles before it is measured.
    fn settle(self) -> u32 {
        match self {
            Mode::Threads => SETTLE,
            Mode::Pollers => SETTLE_POLLERS,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::Threads => "a thread per connection",
            Mode::Pollers => "the pollers",
        }
    }
}

/// Ticks each rate is measured over (30 ms).
const MEASURE: u32 = 6;
/// Ticks left after a change before measuring (80 ms). The connections move within a
/// millisecond, but the new way's threads reach their pace only over tens of milliseconds
/// (the scheduler learns their load): measured 5 or 20 ms after the change, the pollers lost
/// trials they win in the long run.
const SETTLE: u32 = 16;
/// The same for a trial of the pollers (200 ms): their 5 ms rates kept rising for longer than
/// 80 ms after a change (on `file` with the event-driven generator, the pollers lost every
/// trial at 80 ms and, once kept, served 145 k requests/s against the threads' 116 k).
const SETTLE_POLLERS: u32 = 40;
/// Ticks to keep a mode once connections become busy before any trial (50 ms): clients that
/// have just connected are still reaching their pace, and a rate measured then is too low.
const FIRST_HOLD: u32 = 10;
/// Ticks to keep a mode after a trial changed it (1 s); each trial that keeps it holds it four
/// times as long, up to 10 s. A trial costs 110 ms in the other mode (measured: trials every
/// 0.2-2 s lost a fifth of the pollers' throughput), so the holds are long: the kind of
/// client changes rarely.
const MIN_HOLD: u32 = 200;
const MAX_HOLD: u32 = 2000;
const HOLD_GROWTH: u32 = 4;
/// How much faster the other mode must be to be kept: on a shared 2-CPU host, windows of
/// the same mode differed by more than 5 %, and a trial won on noise holds a mode 200 ms.
const MARGIN: f64 = 0.10;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Keeping the mode for this many more ticks.
    Hold(u32),
    /// Measuring the current mode's rate.
    Baseline(u32),
    /// Trying the other mode: letting connections move.
    Settle(u32),
    /// Trying the other mode: measuring it.
    Trial(u32),
}

/// A change of mode, for the log.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Decision {
    pub(crate) mode: Mode,
    /// Requests per second of the mode kept and of the one left.
    pub(crate) rate: f64,
    pub(crate) other: f64,
}

#[derive(Debug)]
pub(crate) struct Chooser {
    mode: Mode,
    phase: Phase,
    hold: u32,
    /// The last tick: when, and the requests served by then.
    last: (Instant, u64),
    /// The rates of the ticks measured so far in the current window: a window's rate is their
    /// median, so a few milliseconds in which the host took the CPUs away do not decide.
    samples: Vec<f64>,
    baseline: f64,
}

impl Chooser {
    pub(crate) fn new(now: Instant) -> Chooser {
        Chooser {
            mode: Mode::Threads,
            phase: Phase::Hold(FIRST_HOLD),
            hold: MIN_HOLD,
            last: (now, 0),
            samples: Vec::with_capacity(MEASURE as usize),
            baseline: 0.0,
        }
    }

    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }

    /// No more connections busy than there are pollers: both modes serve them alike. The choice
    /// made so far stands for the next busy spell, which starts with at least FIRST_HOLD ticks
    /// held; a trial under way is dropped, back to the mode it was trying against. (The first
    /// tick of that spell, a held one, measures nothing and restarts the count from itself.)
    pub(crate) fn idle(&mut self) {
        let left = match self.phase {
            Phase::Hold(n) => n,
            Phase::Baseline(_) => 0,
            Phase::Settle(_) | Phase::Trial(_) => {
                self.mode = self.mode.other();
                0
            }
        };
        self.phase = Phase::Hold(left.max(FIRST_HOLD));
        self.samples.clear();
    }

    /// One tick while more connections are busy than there are pollers; `served` counts every
    /// request served so far. Returns the outcome of a trial that ended at this tick.
    pub(crate) fn tick(&mut self, now: Instant, served: u64) -> Option<Decision> {
        let (since, before) = std::mem::replace(&mut self.last, (now, served));
        if matches!(self.phase, Phase::Baseline(_) | Phase::Trial(_)) {
            let secs = now.duration_since(since).as_secs_f64();
            // A clock that did not move (or counts that went back) measures nothing.
            if secs > 0.0 {
                self.samples
                    .push(served.saturating_sub(before) as f64 / secs);
            }
        }
        let (next, decision) = match self.phase {
            Phase::Hold(n) if n > 1 => (Phase::Hold(n - 1), None),
            Phase::Hold(_) => {
                self.samples.clear();
                (Phase::Baseline(MEASURE), None)
            }
            Phase::Baseline(n) if n > 1 => (Phase::Baseline(n - 1), None),
            Phase::Baseline(_) => match median(&mut self.samples) {
                Some(r) => {
                    self.baseline = r;
                    self.mode = self.mode.other();
                    (Phase::Settle(self.mode.settle()), None)
                }
                None => (Phase::Hold(MIN_HOLD), None),
            },
            Phase::Settle(n) if n > 1 => (Phase::Settle(n - 1), None),
            Phase::Settle(_) => {
                self.samples.clear();
                (Phase::Trial(MEASURE), None)
            }
            Phase::Trial(n) if n > 1 => (Phase::Trial(n - 1), None),
            Phase::Trial(_) => {
                let trial = median(&mut self.samples).unwrap_or(0.0);
                if trial > self.baseline * (1.0 + MARGIN) {
                    self.hold = MIN_HOLD;
                    let decision = Decision {
                        mode: self.mode,
                        rate: trial,
                        other: self.baseline,
                    };
                    (Phase::Hold(self.hold), Some(decision))
                } else {
                    self.mode = self.mode.other();
                    self.hold = (self.hold * HOLD_GROWTH).min(MAX_HOLD);
                    (Phase::Hold(self.hold), None)
                }
            }
        };
        self.phase = next;
        decision
    }
}

/// The median of `v` (the mean of the middle two for an even count); `None` when empty.
fn median(v: &mut [f64]) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a chooser for `ticks` ticks against a load that serves `rate(mode)`
    /// requests per second, and returns the ticks spent in each mode and the decisions logged.
    fn simulate(ticks: u32, rate: impl Fn(Mode) -> f64) -> (u32, u32, Vec<Decision>) {
        let start = Instant::now();
        let mut c = Chooser::new(start);
        let (mut served, mut threads, mut pollers, mut log) = (0f64, 0, 0, Vec::new());
        for t in 1..=ticks {
            // The mode in force during this tick is the one chosen at the end of the last.
            served += rate(c.mode()) * TICK.as_secs_f64();
            match c.mode() {
                Mode::Threads => threads += 1,
                Mode::Pollers => pollers += 1,
            }
            let now = start + TICK * t;
            log.extend(c.tick(now, served as u64));
        }
        (threads, pollers, log)
    }

    #[test]
    fn keeps_the_pollers_when_they_serve_faster() {
        let (threads, pollers, log) = simulate(4000, |m| match m {
            Mode::Threads => 60_000.0,
            Mode::Pollers => 100_000.0,
        });
        assert!(pollers >= 3800, "{pollers} of 4000 ticks with the pollers");
        assert!(threads > 0, "never tried a thread per connection again");
        assert_eq!(log.first().map(|d| d.mode), Some(Mode::Pollers));
        let d = log[0];
        assert!((d.rate - 100_000.0).abs() < 1_000.0 && (d.other - 60_000.0).abs() < 1_000.0);
    }

    #[test]
    fn keeps_a_thread_per_connection_when_it_serves_faster() {
        let (threads, pollers, log) = simulate(4000, |m| match m {
            Mode::Threads => 130_000.0,
            Mode::Pollers => 90_000.0,
        });
        assert!(
            threads >= 3800,
            "{threads} of 4000 ticks with a thread per connection"
        );
        assert!(pollers > 0, "never tried the pollers");
        assert!(log.is_empty(), "changed mode: {log:?}");
    }

    #[test]
    fn a_first_choice_is_made_within_a_few_ticks() {
        let start = Instant::now();
        let mut c = Chooser::new(start);
        let mut served = 0u64;
        let mut decided = None;
        for t in 1..=100u32 {
            served += if c.mode() == Mode::Pollers {
                2000
            } else {
                1000
            };
            if c.tick(start + TICK * t, served).is_some() {
                decided = Some(t);
                break;
            }
        }
        // FIRST_HOLD + MEASURE + SETTLE_POLLERS + MEASURE ticks: 310 ms.
        assert_eq!(
            decided,
            Some(FIRST_HOLD + MEASURE + SETTLE_POLLERS + MEASURE)
        );
        assert_eq!(c.mode(), Mode::Pollers);
    }

    #[test]
    fn follows_a_load_that_changes_its_kind() {
        // Pollers faster for the first 10 s, then a thread per connection.
        let start = Instant::now();
        let mut c = Chooser::new(start);
        let mut served = 0f64;
        let mut late_threads = 0;
        for t in 1..=8000u32 {
            let pollers_faster = t <= 2000;
            let rate = match (c.mode(), pollers_faster) {
                (Mode::Pollers, true) | (Mode::Threads, false) => 100_000.0,
                _ => 60_000.0,
            };
            served += rate * TICK.as_secs_f64();
            // From the longest hold (10 s) and a trial after the change on.
            if t > 2000 + MAX_HOLD + 100 && c.mode() == Mode::Threads {
                late_threads += 1;
            }
            c.tick(start + TICK * t, served as u64);
        }
        let late = 8000 - (2000 + MAX_HOLD + 100);
        assert!(
            late_threads * 100 >= late * 95,
            "{late_threads} of the last {late} ticks with threads"
        );
    }

    #[test]
    fn equal_rates_keep_the_first_mode_and_back_off() {
        let (threads, _, log) = simulate(4000, |_| 80_000.0);
        assert!(log.is_empty(), "changed mode on noise: {log:?}");
        // After the first trials the hold grows up to MAX_HOLD: few ticks are spent trying.
        assert!(threads >= 3800, "{threads} of 4000 ticks in the first mode");
    }

    #[test]
    fn a_stall_of_a_few_milliseconds_does_not_decide_a_trial() {
        // Threads faster, but one tick of each threads window is a stall (the host took the
        // CPUs): the window's mean would fall below the pollers', its median does not.
        let start = Instant::now();
        let mut c = Chooser::new(start);
        let mut served = 0u64;
        for t in 1..=4000u32 {
            let per_tick = match c.mode() {
                Mode::Threads if t % 6 == 0 => 0,
                Mode::Threads => 700,
                Mode::Pollers => 650,
            };
            served += per_tick;
            assert_eq!(c.tick(start + TICK * t, served), None, "tick {t}: {c:?}");
        }
    }

    #[test]
    fn medians() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    /// Ticks `c` through `ticks` (tick numbers from `start`), the pollers serving `pollers` and
    /// a thread per connection `threads` requests per tick; returns the decisions logged.
    fn run(
        c: &mut Chooser,
        start: Instant,
        served: &mut u64,
        ticks: std::ops::RangeInclusive<u32>,
        threads: u64,
        pollers: u64,
    ) -> Vec<Decision> {
        let mut log = Vec::new();
        for t in ticks {
            *served += match c.mode() {
                Mode::Pollers => pollers,
                Mode::Threads => threads,
            };
            log.extend(c.tick(start + TICK * t, *served));
        }
        log
    }

    #[test]
    fn a_quiet_spell_keeps_the_choice() {
        let start = Instant::now();
        let mut c = Chooser::new(start);
        let mut served = 0u64;
        let log = run(&mut c, start, &mut served, 1..=100, 1000, 2000);
        assert_eq!(log.len(), 1, "{log:?}");
        assert_eq!(c.mode(), Mode::Pollers);
        c.idle();
        assert_eq!(c.mode(), Mode::Pollers, "a quiet spell undid the choice");
        // The next busy spell goes on with the pollers and, its hold not over, tries nothing:
        // a trial would go back to a thread per connection for a while.
        for t in 301..=400u32 {
            served += 2000;
            assert_eq!(c.tick(start + TICK * t, served), None, "tick {t}: {c:?}");
            assert_eq!(c.mode(), Mode::Pollers, "tick {t}: {c:?}");
        }
    }

    #[test]
    fn a_quiet_spell_drops_a_trial_under_way() {
        let start = Instant::now();
        let mut c = Chooser::new(start);
        let mut served = 0u64;
        // Into the trial of the pollers (FIRST_HOLD + MEASURE ticks, then settling), equal rates.
        let first = FIRST_HOLD + MEASURE + 2;
        assert!(run(&mut c, start, &mut served, 1..=first, 1000, 1000).is_empty());
        assert_eq!(c.mode(), Mode::Pollers, "not trying the pollers: {c:?}");
        c.idle();
        assert_eq!(c.mode(), Mode::Threads, "the trial outlived the busy spell");
        // The next spell holds for FIRST_HOLD ticks before it measures anything.
        let resume = first + 100;
        assert!(run(
            &mut c,
            start,
            &mut served,
            resume..=resume + FIRST_HOLD - 1,
            1000,
            1000
        )
        .is_empty());
        assert_eq!(c.phase, Phase::Baseline(MEASURE), "{c:?}");
    }

    #[test]
    fn a_clock_that_does_not_move_changes_nothing() {
        let now = Instant::now();
        let mut c = Chooser::new(now);
        for served in 0..100 {
            assert_eq!(c.tick(now, served * 1000), None);
        }
        assert_eq!(c.mode(), Mode::Threads);
    }
}
