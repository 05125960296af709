//! The ring worker's timers: deadlines in an ordered map, the nearest one bounding the ring's
//! wait, expired ones woken after each turn.
//!
//! A [`Sleep`] registers on its first pending poll and deregisters when dropped, reset or fired,
//! so the map holds exactly the sleeps that wait (no lazy garbage under session churn). This
//! module must not know about the ring or tasks.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

type Key = (Instant, u64);

/// A thread's waiting sleeps.
#[derive(Default)]
pub(super) struct Timers {
    waiting: RefCell<BTreeMap<Key, Waker>>,
    next_seq: std::cell::Cell<u64>,
}

impl Timers {
    fn insert(&self, deadline: Instant, waker: Waker) -> Key {
        let seq = self.next_seq.get();
        self.next_seq.set(seq.wrapping_add(1));
        let key = (deadline, seq);
        self.waiting.borrow_mut().insert(key, waker);
        key
    }

    fn update(&self, key: Key, waker: &Waker) -> bool {
        match self.waiting.borrow_mut().get_mut(&key) {
            Some(w) => {
                if !w.will_wake(waker) {
                    *w = waker.clone();
                }
                true
            }
            None => false,
        }
    }

    fn remove(&self, key: Key) -> Option<Waker> {
        self.waiting.borrow_mut().remove(&key)
    }

    /// How long the ring may wait: until the nearest deadline (`None`: no sleep waits).
    pub(super) fn until_next(&self, now: Instant) -> Option<Duration> {
        self.waiting
            .borrow()
            .first_key_value()
            .map(|((deadline, _), _)| deadline.saturating_duration_since(now))
    }

    /// Wakes every sleep whose deadline is at or before `now`.
    pub(super) fn fire(&self, now: Instant) {
        let mut expired = Vec::new();
        {
            let mut waiting = self.waiting.borrow_mut();
            while let Some(entry) = waiting.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                expired.push(entry.remove());
            }
        }
        for w in expired {
            w.wake();
        }
    }
}

/// Waits until a deadline on the ring thread's timers.
#[derive(Debug)]
pub struct Sleep {
    deadline: Instant,
    key: Option<Key>,
}

impl Sleep {
    pub(crate) fn until(deadline: Instant) -> Self {
        Self {
            deadline,
            key: None,
        }
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    pub fn is_elapsed(&self) -> bool {
        Instant::now() >= self.deadline
    }

    /// Waits until `deadline` instead; a registered sleep stays registered (its task is woken
    /// at the new deadline even if it does not poll the sleep again first, as with tokio).
    pub fn reset(&mut self, deadline: Instant) {
        self.deadline = deadline;
        if let Some(key) = self.key.take() {
            self.key =
                super::with_timers(|t| t.remove(key).map(|w| t.insert(deadline, w))).flatten();
        }
    }

    fn deregister(&mut self) {
        if let Some(key) = self.key.take() {
            super::with_timers(|t| t.remove(key));
        }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            self.deregister();
            return Poll::Ready(());
        }
        let deadline = self.deadline;
        let key = self.key;
        let registered = super::with_timers(|t| match key {
            Some(k) if t.update(k, cx.waker()) => k,
            _ => t.insert(deadline, cx.waker().clone()),
        });
        match registered {
            Some(k) => self.key = Some(k),
            // No ring runtime on this thread: the sleep can never fire.
            None => tracing::error!("a ring sleep was polled outside its ring thread"),
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.deregister();
    }
}
