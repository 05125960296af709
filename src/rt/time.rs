//! Timers for code that runs on a worker thread, on either backend: sleeps, deadlines and
//! intervals.
//!
//! Code above the runtime seam takes its timers from here, never from `tokio::time` directly, so
//! that a worker runtime which is not tokio's (the raw io_uring worker of docs/architecture.md,
//! "io_uring worker") can serve them from its own timer without touching the code that waits.
//! Today both backends run on a tokio runtime (tokio-uring is one), so these are tokio's timers.
//! This module must not know about sessions or sockets.

use std::future::Future;
use std::time::Duration;

pub use tokio::time::error::Elapsed;
pub use tokio::time::{Instant, Interval, MissedTickBehavior, Sleep, Timeout};

/// Waits for `duration`.
pub fn sleep(duration: Duration) -> Sleep {
    tokio::time::sleep(duration)
}

/// Waits until `deadline`.
pub fn sleep_until(deadline: Instant) -> Sleep {
    tokio::time::sleep_until(deadline)
}

/// `future`, or `Elapsed` once `duration` has passed first (the future is dropped then).
pub fn timeout<F: Future>(duration: Duration, future: F) -> Timeout<F> {
    tokio::time::timeout(duration, future)
}

/// `future`, or `Elapsed` once `deadline` has passed first (the future is dropped then).
pub fn timeout_at<F: Future>(deadline: Instant, future: F) -> Timeout<F> {
    tokio::time::timeout_at(deadline, future)
}

/// Ticks every `period`, the first at once.
pub fn interval(period: Duration) -> Interval {
    tokio::time::interval(period)
}
