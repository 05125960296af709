//! Prometheus text exposition (format 0.0.4) and the fixed-bucket latency histogram the workers
//! record into.
//!
//! [`Exposition`] renders metric families (`# HELP`, `# TYPE`, samples with escaped labels);
//! [`LatencyHistogram`] is a set of `AtomicU64` buckets with a single writer (one worker) that
//! readers merge. This module renders and counts; it must not do I/O, hold locks, or read any
//! secret: callers pass only names, numbers and label values that are safe to publish.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// The `Content-Type` of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Kind of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A text exposition being written.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a family: its `# HELP` and `# TYPE` lines. Counter names must end in `_total`.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        debug_assert!(
            kind != Kind::Counter || name.ends_with("_total"),
            "counter {name} must end in _total"
        );
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.name());
        self
    }

    /// One sample line.
    pub fn sample(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        value: impl Into<f64>,
    ) -> &mut Self {
        self.out.push_str(name);
        write_labels(&mut self.out, labels, None);
        let _ = writeln!(self.out, " {}", format_value(value.into()));
        self
    }

    /// An integer sample line (counters and gauges that are counts).
    pub fn sample_u64(&mut self, name: &str, labels: &[(&str, &str)], value: u64) -> &mut Self {
        self.out.push_str(name);
        write_labels(&mut self.out, labels, None);
        let _ = writeln!(self.out, " {value}");
        self
    }

    /// The sample lines of one histogram series (`_bucket`, `_sum`, `_count`); `snapshot` holds
    /// microseconds, rendered in seconds.
    pub fn histogram_seconds(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        snapshot: &HistogramSnapshot,
    ) -> &mut Self {
        let mut cumulative = 0u64;
        for (i, bound_us) in LATENCY_BUCKETS_US.iter().enumerate() {
            cumulative += snapshot.buckets[i];
            let le = format_value(*bound_us as f64 / 1e6);
            let _ = write!(self.out, "{name}_bucket");
            write_labels(&mut self.out, labels, Some(&le));
            let _ = writeln!(self.out, " {cumulative}");
        }
        let _ = write!(self.out, "{name}_bucket");
        write_labels(&mut self.out, labels, Some("+Inf"));
        let _ = writeln!(self.out, " {}", snapshot.count);
        let _ = write!(self.out, "{name}_sum");
        write_labels(&mut self.out, labels, None);
        let _ = writeln!(self.out, " {}", format_value(snapshot.sum_us as f64 / 1e6));
        let _ = write!(self.out, "{name}_count");
        write_labels(&mut self.out, labels, None);
        let _ = writeln!(self.out, " {}", snapshot.count);
        self
    }

    /// The finished text.
    pub fn finish(self) -> String {
        self.out
    }
}

fn write_labels(out: &mut String, labels: &[(&str, &str)], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (k, v) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
}

fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// Upper bounds of the session setup latency buckets, in microseconds (100 µs to 10 s).
pub const LATENCY_BUCKETS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// A latency histogram with fixed buckets. One thread records (relaxed atomics, no contention);
/// any thread may read and merge.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Non-cumulative counts per bucket of [`LATENCY_BUCKETS_US`]; values above the last bound
    /// are counted only in `count`.
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len()],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl LatencyHistogram {
    /// Records one observation.
    #[inline]
    pub fn record_us(&self, us: u64) {
        if let Some(i) = LATENCY_BUCKETS_US.iter().position(|b| us <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds this histogram's counts into `into`.
    pub fn merge_into(&self, into: &mut HistogramSnapshot) {
        for (i, b) in self.buckets.iter().enumerate() {
            into.buckets[i] += b.load(Ordering::Relaxed);
        }
        into.sum_us += self.sum_us.load(Ordering::Relaxed);
        into.count += self.count.load(Ordering::Relaxed);
    }
}

/// Plain counts of one or more merged histograms.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Non-cumulative counts per bucket of [`LATENCY_BUCKETS_US`].
    pub buckets: [u64; LATENCY_BUCKETS_US.len()],
    pub sum_us: u64,
    pub count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_records_merges_and_renders_cumulative_buckets() {
        let (a, b) = (LatencyHistogram::default(), LatencyHistogram::default());
        a.record_us(50);
        a.record_us(100);
        b.record_us(300);
        b.record_us(20_000_000);
        let mut snap = HistogramSnapshot::default();
        a.merge_into(&mut snap);
        b.merge_into(&mut snap);
        assert_eq!(snap.count, 4);
        assert_eq!(snap.buckets[0], 2);
        assert_eq!(snap.buckets[2], 1);
        let mut e = Exposition::new();
        e.family("x_seconds", Kind::Histogram, "help")
            .histogram_seconds("x_seconds", &[("cluster", "c")], &snap);
        let text = e.finish();
        assert!(
            text.contains("x_seconds_bucket{cluster=\"c\",le=\"0.0001\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_bucket{cluster=\"c\",le=\"0.0005\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_bucket{cluster=\"c\",le=\"10\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_bucket{cluster=\"c\",le=\"+Inf\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_count{cluster=\"c\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_sum{cluster=\"c\"} 20.00045\n"),
            "{text}"
        );
    }

    #[test]
    fn labels_are_escaped() {
        let mut e = Exposition::new();
        e.family("a_total", Kind::Counter, "line\nbreak")
            .sample_u64("a_total", &[("host", "x\"y\\z\n")], 3);
        assert_eq!(
            e.finish(),
            "# HELP a_total line\\nbreak\n# TYPE a_total counter\na_total{host=\"x\\\"y\\\\z\\n\"} 3\n"
        );
    }
}
