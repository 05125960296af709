//! Latency histograms and their summaries. Samples are recorded in nanoseconds into HdrHistograms
//! (3 significant digits) and reported in microseconds. Histograms are sharded behind mutexes so
//! thousands of connections do not each carry one; a shard lock is held only to record one value.
//! This module does no I/O.

use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// A new empty histogram of nanoseconds (auto-resizing, 3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    // `new` auto-resizes, so memory follows the largest value recorded.
    Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits are valid"))
}

/// Nanoseconds of a duration, saturating.
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Histograms shared by many tasks: task `i` records into shard `i % shards`.
#[derive(Debug)]
pub struct Shards {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Shards {
    pub fn new(count: usize) -> Self {
        Self {
            shards: (0..count.max(1))
                .map(|_| Mutex::new(new_histogram()))
                .collect(),
        }
    }

    /// Records `ns` into the shard of task `task`.
    pub fn record(&self, task: usize, ns: u64) {
        let mut h = self.shards[task % self.shards.len()]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let ns = ns.max(1);
        // `record` grows the histogram; `saturating_record` would clamp instead.
        if h.record(ns).is_err() {
            h.saturating_record(ns);
        }
    }

    /// All shards added together.
    pub fn merged(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for s in &self.shards {
            let h = s.lock().unwrap_or_else(|e| e.into_inner());
            // Both auto-resize, so adding cannot fail for range reasons.
            let _ = all.add(&*h);
        }
        all
    }
}

/// Percentiles of a latency distribution, in microseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub min: f64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub p99_99: f64,
    pub max: f64,
}

impl Percentiles {
    /// Summary of a histogram of nanoseconds. All zero when it is empty.
    pub fn of(h: &Histogram<u64>) -> Self {
        let us = |ns: u64| ns as f64 / 1_000.0;
        if h.is_empty() {
            return Self {
                count: 0,
                min: 0.0,
                mean: 0.0,
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p99_9: 0.0,
                p99_99: 0.0,
                max: 0.0,
            };
        }
        Self {
            count: h.len(),
            min: us(h.min()),
            mean: h.mean() / 1_000.0,
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p99_9: us(h.value_at_quantile(0.999)),
            p99_99: us(h.value_at_quantile(0.9999)),
            max: us(h.max()),
        }
    }

    /// Row labels of [`Percentiles::values`].
    pub const LABELS: [&'static str; 8] =
        ["min", "p50", "p90", "p99", "p99.9", "p99.99", "max", "mean"];

    /// Values in the order of [`Percentiles::LABELS`], in microseconds.
    pub fn values(&self) -> [f64; 8] {
        [
            self.min,
            self.p50,
            self.p90,
            self.p99,
            self.p99_9,
            self.p99_99,
            self.max,
            self.mean,
        ]
    }
}

/// Appends a percentile table with one column per named distribution.
pub fn percentile_table(out: &mut String, columns: &[(&str, &Percentiles)]) {
    use std::fmt::Write;
    let _ = write!(out, "  {:<8}", "µs");
    for (name, _) in columns {
        let _ = write!(out, " {name:>14}");
    }
    out.push('\n');
    for (i, label) in Percentiles::LABELS.iter().enumerate() {
        let _ = write!(out, "  {label:<8}");
        for (_, p) in columns {
            let _ = write!(out, " {:>14.1}", p.values()[i]);
        }
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_merge_and_percentiles_are_ordered() {
        let s = Shards::new(4);
        for i in 1..=10_000u64 {
            s.record(i as usize, i * 1_000);
        }
        let p = Percentiles::of(&s.merged());
        assert_eq!(p.count, 10_000);
        let order = [p.min, p.p50, p.p90, p.p99, p.p99_9, p.p99_99, p.max];
        assert!(order.windows(2).all(|w| w[0] <= w[1]), "{order:?}");
        assert!((p.p50 - 5_000.0).abs() < 10.0, "{}", p.p50);
    }
}
