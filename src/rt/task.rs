//! Tasks on a worker thread, on either backend.
//!
//! Code above the runtime seam spawns its thread-local tasks here, never with
//! `tokio::task::spawn_local` directly: on an epoll worker they are tokio local tasks, on an
//! io_uring worker they run on the ring runtime's own executor (`rt::ring`).
//! This module must not know about sessions or sockets.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A spawned task's handle: await it for its output, or abort it. Dropping it detaches.
pub enum JoinHandle<T> {
    Tokio(tokio::task::JoinHandle<T>),
    Ring(super::ring::JoinHandle<T>),
}

/// Why a task gave no output.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Tokio(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Ring(#[from] super::ring::JoinError),
}

impl JoinError {
    /// The task was aborted (rather than panicking).
    pub fn is_cancelled(&self) -> bool {
        match self {
            JoinError::Tokio(e) => e.is_cancelled(),
            JoinError::Ring(e) => e.is_cancelled(),
        }
    }

    /// The task panicked.
    pub fn is_panic(&self) -> bool {
        match self {
            JoinError::Tokio(e) => e.is_panic(),
            JoinError::Ring(e) => e.is_panic(),
        }
    }
}

impl<T> JoinHandle<T> {
    /// Ends the task at its next poll (its future is dropped).
    pub fn abort(&self) {
        match self {
            JoinHandle::Tokio(h) => h.abort(),
            JoinHandle::Ring(h) => h.abort(),
        }
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            JoinHandle::Tokio(h) => Pin::new(h).poll(cx).map_err(JoinError::from),
            JoinHandle::Ring(h) => Pin::new(h).poll(cx).map_err(JoinError::from),
        }
    }
}

/// Spawns `future` on this worker thread (it may hold `Rc`s); the handle can abort it.
pub fn spawn_local<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    if super::ring::is_current() {
        JoinHandle::Ring(super::ring::spawn_local(future))
    } else {
        JoinHandle::Tokio(tokio::task::spawn_local(future))
    }
}

/// Gives the other tasks of this thread their turn once (on either executor: the task wakes
/// itself and is polled again after those already woken).
pub async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}
