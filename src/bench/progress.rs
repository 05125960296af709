//! Live counters shared by load tasks, and the once-a-second progress line on stderr. The
//! counters are relaxed atomics: they feed the progress line only, never the final result.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

/// Running totals, updated by load tasks.
#[derive(Debug, Default)]
pub struct Counters {
    pub ops: AtomicU64,
    pub bytes: AtomicU64,
    pub errors: AtomicU64,
}

impl Counters {
    pub fn add_ops(&self, n: u64) {
        self.ops.fetch_add(n, Ordering::Relaxed);
    }
    pub fn add_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }
    pub fn add_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// Prints a progress line to stderr every second until the returned task is aborted.
/// `ops_label` names what an op is ("req", "conn", "check"); `None` shows bytes only.
pub fn spawn(
    counters: Arc<Counters>,
    ops_label: Option<&'static str>,
    enabled: bool,
) -> Option<JoinHandle<()>> {
    if !enabled {
        return None;
    }
    Some(tokio::spawn(async move {
        let start = Instant::now();
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_secs(1),
            Duration::from_secs(1),
        );
        let (mut last_ops, mut last_bytes, mut last_t) = (0u64, 0u64, start);
        loop {
            tick.tick().await;
            let now = Instant::now();
            let dt = now.duration_since(last_t).as_secs_f64().max(1e-9);
            let ops = counters.ops.load(Ordering::Relaxed);
            let bytes = counters.bytes.load(Ordering::Relaxed);
            let errors = counters.errors.load(Ordering::Relaxed);
            let mut line = format!("[{:>5.1}s]", now.duration_since(start).as_secs_f64());
            if let Some(label) = ops_label {
                line += &format!(" {:>10.0} {label}/s", (ops - last_ops) as f64 / dt);
            }
            if bytes > 0 || ops_label.is_none() {
                line += &format!(
                    " {:>8.3} Gbit/s",
                    (bytes - last_bytes) as f64 * 8.0 / dt / 1e9
                );
            }
            line += &format!("  errors {errors}");
            eprintln!("{line}");
            (last_ops, last_bytes, last_t) = (ops, bytes, now);
        }
    }))
}
