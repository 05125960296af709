//! Tasks on a worker thread, on either backend.
//!
//! Code above the runtime seam spawns its thread-local tasks here, never with
//! `tokio::task::spawn_local` directly, so that a worker runtime which is not tokio's (the raw
//! io_uring worker of docs/architecture.md, "io_uring worker") can run them on its own executor.
//! Today both backends run a tokio runtime with a local task set (tokio-uring is one).
//! This module must not know about sessions or sockets.

use std::future::Future;

pub use tokio::task::JoinHandle;

/// Spawns `future` on this worker thread (it may hold `Rc`s); the handle can abort it.
pub fn spawn_local<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    tokio::task::spawn_local(future)
}
