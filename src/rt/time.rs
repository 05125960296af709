//! Timers for code that runs on a worker thread, on either backend: sleeps, deadlines and
//! intervals.
//!
//! Code above the runtime seam takes its timers from here, never from `tokio::time` directly:
//! on an epoll worker they are tokio's timers, on an io_uring worker the ring runtime's own
//! (`rt::ring`), whose nearest deadline bounds the ring's wait. Which one is decided when the
//! timer is made, by the thread it is made on.
//! This module must not know about sessions or sockets.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

pub use tokio::time::Instant;

/// A sleep on the current worker's timers.
pub enum Sleep {
    Tokio(tokio::time::Sleep),
    Ring(super::ring::Sleep),
}

impl Sleep {
    /// Waits until `deadline` instead (call on a pinned sleep).
    pub fn reset(self: Pin<&mut Self>, deadline: Instant) {
        // SAFETY: the variant is never moved out of the pinned enum.
        match unsafe { self.get_unchecked_mut() } {
            // SAFETY: as above.
            Sleep::Tokio(s) => unsafe { Pin::new_unchecked(s) }.reset(deadline),
            Sleep::Ring(s) => s.reset(deadline.into_std()),
        }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // SAFETY: the variant is never moved out of the pinned enum.
        match unsafe { self.get_unchecked_mut() } {
            // SAFETY: as above.
            Sleep::Tokio(s) => unsafe { Pin::new_unchecked(s) }.poll(cx),
            Sleep::Ring(s) => Pin::new(s).poll(cx),
        }
    }
}

/// Waits for `duration`.
pub fn sleep(duration: Duration) -> Sleep {
    sleep_until(Instant::now() + duration)
}

/// Waits until `deadline`.
pub fn sleep_until(deadline: Instant) -> Sleep {
    if super::ring::is_current() {
        Sleep::Ring(super::ring::Sleep::until(deadline.into_std()))
    } else {
        Sleep::Tokio(tokio::time::sleep_until(deadline))
    }
}

/// The deadline passed before the future completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("deadline has elapsed")]
pub struct Elapsed;

/// A future with a deadline: its output, or [`Elapsed`].
pub struct Timeout<F> {
    future: F,
    sleep: Sleep,
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: neither field is moved out of the pinned struct.
        let this = unsafe { self.get_unchecked_mut() };
        // SAFETY: as above.
        if let Poll::Ready(out) = unsafe { Pin::new_unchecked(&mut this.future) }.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        // SAFETY: as above.
        match unsafe { Pin::new_unchecked(&mut this.sleep) }.poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// `future`, or `Elapsed` once `duration` has passed first (the future is dropped then).
pub fn timeout<F: Future>(duration: Duration, future: F) -> Timeout<F> {
    timeout_at(Instant::now() + duration, future)
}

/// `future`, or `Elapsed` once `deadline` has passed first (the future is dropped then).
pub fn timeout_at<F: Future>(deadline: Instant, future: F) -> Timeout<F> {
    Timeout {
        future,
        sleep: sleep_until(deadline),
    }
}

/// A tick this late restarts an interval's schedule from now.
const LATE_TICK: Duration = Duration::from_millis(5);

/// Ticks every `period`, the first at once; a late tick delays the ones after it (the next is
/// a whole period after the late one), so ticks never burst to catch up.
pub struct Interval {
    period: Duration,
    next: Instant,
    sleep: Pin<Box<Sleep>>,
}

impl Interval {
    /// Waits for the next tick; returns when it was due.
    pub async fn tick(&mut self) -> Instant {
        let due = self.next;
        self.sleep.as_mut().reset(due);
        self.sleep.as_mut().await;
        let now = Instant::now();
        // On time (within the timer's own lateness): the schedule holds; late: it restarts.
        self.next = if now.saturating_duration_since(due) > LATE_TICK {
            now + self.period
        } else {
            due + self.period
        };
        due
    }
}

/// Ticks every `period`, the first at once.
pub fn interval(period: Duration) -> Interval {
    let now = Instant::now();
    Interval {
        period,
        next: now,
        sleep: Box::pin(sleep_until(now)),
    }
}
