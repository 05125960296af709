//! Per-worker counters. Each worker is the only writer of its own set (relaxed atomics, no
//! contention); readers sum the sets of all workers.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// One worker's counters.
        #[derive(Debug, Default)]
        pub struct WorkerCounters { $($(#[$doc])* pub $name: AtomicU64,)* }

        /// Counters summed over workers.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct CounterTotals { $($(#[$doc])* pub $name: u64,)* }

        impl CounterTotals {
            /// Sums the counters of every worker.
            pub fn sum<'a>(workers: impl IntoIterator<Item = &'a WorkerCounters>) -> Self {
                let mut total = Self::default();
                for w in workers {
                    $(total.$name += w.$name.load(Ordering::Relaxed);)*
                }
                total
            }
        }
    };
}

counters! {
    /// Frontend connections accepted.
    frontends_accepted_total,
    /// Sessions that got a data connection and started.
    sessions_started_total,
    /// Sessions that ended (cleanly or by error).
    sessions_ended_total,
    /// Sessions that ended with an I/O error.
    session_errors_total,
    /// Frontends closed because no idle data connection came within `pool_wait_ms`.
    pool_exhausted_total,
    /// Frontends that had to wait for a data connection.
    pool_waits_total,
    /// Bytes from frontends towards agents.
    bytes_to_agent_total,
    /// Bytes from agents towards frontends.
    bytes_from_agent_total,
    /// Idle data connections closed after missed heartbeats.
    heartbeat_closes_total,
    /// Idle data connections that closed or failed while idle.
    idle_closes_total,
    /// Sessions in progress (incremented and decremented by the owning worker).
    active_sessions,
}

/// Adds one.
#[inline]
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Adds `n`.
#[inline]
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Subtracts one (gauges).
#[inline]
pub fn drop_one(counter: &AtomicU64) {
    counter.fetch_sub(1, Ordering::Relaxed);
}
