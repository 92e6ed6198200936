//! Latency statistics: nearest-rank percentiles over every recorded sample.
//!
//! A run is bounded in time and count, so keeping every sample (8 bytes each) is cheap and
//! gives exact percentiles without a histogram library.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The nearest-rank `p`-th percentile (0 < p ≤ 100) of `sorted`, which must be sorted
/// ascending. `None` for an empty slice.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let p = p.clamp(0.0, 100.0);
    // Nearest rank: the smallest value with at least p% of the samples at or below it. The
    // small epsilon keeps 99.9% of 2000 at rank 1998 despite 0.999 not being exact in binary.
    let rank = ((p / 100.0) * sorted.len() as f64 - 1e-9).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Latency summary of a run, in microseconds (fractional).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub samples: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Latency {
    /// Summarises latencies given in nanoseconds; sorts `samples` in place.
    pub fn from_nanos(samples: &mut [u64]) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort_unstable();
        let us = |ns: u64| ns as f64 / 1000.0;
        let sum: u128 = samples.iter().map(|&s| u128::from(s)).sum();
        let pick = |p| us(percentile(samples, p).unwrap_or(0));
        Latency {
            samples: samples.len() as u64,
            mean_us: sum as f64 / samples.len() as f64 / 1000.0,
            p50_us: pick(50.0),
            p99_us: pick(99.0),
            p999_us: pick(99.9),
            max_us: us(*samples.last().unwrap_or(&0)),
        }
    }
}

/// Requests per second for `count` requests in `elapsed`.
pub fn rate(count: u64, elapsed: Duration) -> f64 {
    let s = elapsed.as_secs_f64();
    if s > 0.0 {
        count as f64 / s
    } else {
        0.0
    }
}

/// The median of a few values (mean of the middle two for an even count); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_on_one_to_hundred() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 99.9), Some(100));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&v, 1.0), Some(1));
        assert_eq!(percentile(&v, 1.5), Some(2));
    }

    #[test]
    fn small_and_empty_inputs() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[7], 0.1), Some(7));
        assert_eq!(percentile(&[7], 99.9), Some(7));
        // Two samples: the median by nearest rank is the lower one.
        assert_eq!(percentile(&[3, 9], 50.0), Some(3));
        assert_eq!(percentile(&[3, 9], 50.1), Some(9));
    }

    #[test]
    fn p999_needs_a_thousand_samples_to_differ_from_max() {
        let v: Vec<u64> = (1..=2000).collect();
        assert_eq!(percentile(&v, 99.9), Some(1998));
        assert_eq!(percentile(&v, 99.0), Some(1980));
    }

    #[test]
    fn summary_sorts_and_converts_to_microseconds() {
        let mut ns = vec![5_000, 1_000, 3_000, 2_000, 4_000];
        let l = Latency::from_nanos(&mut ns);
        assert_eq!(ns, vec![1_000, 2_000, 3_000, 4_000, 5_000]);
        assert_eq!(l.samples, 5);
        assert_eq!(l.p50_us, 3.0);
        assert_eq!(l.p99_us, 5.0);
        assert_eq!(l.max_us, 5.0);
        assert_eq!(l.mean_us, 3.0);
        assert_eq!(Latency::from_nanos(&mut []), Latency::default());
    }

    #[test]
    fn median_and_rate() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(rate(500, Duration::from_millis(250)), 2000.0);
        assert_eq!(rate(5, Duration::ZERO), 0.0);
    }
}
