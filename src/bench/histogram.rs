//! A latency histogram shared by thousands of connection tasks.
//!
//! Every subscriber records every delivery's latency, so recording must be
//! cheap and must not need a histogram per connection (19,000 HdrHistograms
//! would cost more memory than the server under test). This is one shared,
//! lock-free log-linear histogram: values below 64 µs are exact, above that
//! every power of two is split into 64 buckets, so any percentile is within
//! 1/64 (1.6 %) of the true value. Recording is one relaxed atomic add.

use std::sync::atomic::{AtomicU64, Ordering};

/// Sub-buckets per power of two (as a shift).
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Buckets for every `u64`.
const BUCKETS: usize = ((64 - SUB_BITS as usize) << SUB_BITS) + SUB as usize;

/// Counts of values (microseconds, by convention of its users).
#[derive(Debug)]
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    max: AtomicU64,
}

/// Percentiles of a histogram, in the unit recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Summary {
    /// Values recorded.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 95th percentile.
    pub p95: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest value recorded (exact).
    pub max: u64,
}

fn index(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let e = 63 - v.leading_zeros();
    ((((e + 1 - SUB_BITS) as u64) << SUB_BITS) + ((v >> (e - SUB_BITS)) & (SUB - 1))) as usize
}

/// The largest value that falls in bucket `i`.
fn highest(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let e = (i >> SUB_BITS) as u32 + SUB_BITS - 1;
    let low = (SUB + (i & (SUB - 1))) << (e - SUB_BITS);
    low + ((1u64 << (e - SUB_BITS)) - 1)
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
        }
    }

    /// Record one value.
    pub fn record(&self, v: u64) {
        self.buckets[index(v)].fetch_add(1, Ordering::Relaxed);
    }

    /// Note the largest of the values recorded (callers keep their own
    /// maximum and publish it now and then). Without it the summary's
    /// maximum is the top of the highest bucket used.
    pub fn note_max(&self, v: u64) {
        self.max.fetch_max(v, Ordering::Relaxed);
    }

    /// Forget everything recorded.
    pub fn reset(&self) {
        for b in self.buckets.iter() {
            b.store(0, Ordering::Relaxed);
        }
        self.max.store(0, Ordering::Relaxed);
    }

    /// Percentiles of what was recorded so far. A percentile is the
    /// highest value of its bucket (never under-reported), capped at the
    /// exact maximum.
    pub fn summary(&self) -> Summary {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let count: u64 = counts.iter().sum();
        if count == 0 {
            return Summary::default();
        }
        let max_bucket = counts.iter().rposition(|&c| c > 0).expect("count > 0");
        let max = match self.max.load(Ordering::Relaxed) {
            0 => highest(max_bucket),
            m => m,
        };
        let at = |q: f64| -> u64 {
            let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
            let mut seen = 0;
            for (i, &c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return highest(i).min(max);
                }
            }
            max
        };
        Summary {
            count,
            p50: at(0.50),
            p90: at(0.90),
            p95: at(0.95),
            p99: at(0.99),
            p999: at(0.999),
            max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn small_values_are_exact() {
        for v in 0..SUB {
            assert_eq!(highest(index(v)), v);
        }
        assert_eq!(index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn percentiles_of_a_uniform_range() {
        let h = Histogram::new();
        for v in 1..=1000 {
            h.record(v);
        }
        h.note_max(1000);
        let s = h.summary();
        assert_eq!(s.count, 1000);
        assert!((500..=508).contains(&s.p50), "{s:?}");
        assert!((990..=1000).contains(&s.p99), "{s:?}");
        assert_eq!(s.max, 1000);
        h.reset();
        assert_eq!(h.summary(), Summary::default());
    }

    proptest! {
        #[test]
        fn buckets_are_ordered_and_tight(v in any::<u64>()) {
            let i = index(v);
            prop_assert!(highest(i) >= v);
            // Within 1/64 of the value.
            prop_assert!(highest(i) - v <= v / SUB);
            if i > 0 {
                prop_assert!(highest(i - 1) < v);
            }
        }
    }
}
