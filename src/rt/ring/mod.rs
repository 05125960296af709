//! The raw io_uring worker runtime: one ring per worker thread, driven by that thread alone.
//!
//! [`block_on`] runs a worker's future, the tasks it spawns (`executor`), its timers (`timer`)
//! and its ring operations (`driver`, `ops`) on one thread that blocks in exactly one place:
//! `io_uring_enter`, which submits the turn's operations and waits for a completion or the
//! nearest timer. Wakes from other threads (the control path's channels) arrive through an
//! eventfd whose read is always pending on the ring. What still uses tokio's reactor on a worker
//! (dialling, DNS) registers with one shared background
//! tokio runtime that every ring thread enters. This module must not know about sessions, frames
//! or clusters.

mod driver;
mod executor;
mod ops;
mod provided;
mod timer;

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::task::Context;
use std::time::{Duration, Instant};

pub use driver::RingSetup;
pub use executor::{JoinError, JoinHandle};
pub use ops::{accept, poll, recv, recv_provided, send, send_all, MultiAccept, PollSlot, Provided};
pub use timer::Sleep;

use driver::Driver;
use executor::{Executor, Remote, TaskRef, MAIN};
use timer::Timers;

/// Task polls per turn before the ring is entered again (completions are not starved by a
/// storm of wakes).
const POLLS_PER_TURN: usize = 256;

/// How long a worker's exit waits for cancelled operations to complete.
const EXIT_WAIT: Duration = Duration::from_secs(1);

struct Core {
    driver: Driver,
    executor: Executor,
    timers: Timers,
    remote: Arc<Remote>,
}

thread_local! {
    static CORE: RefCell<Option<Rc<Core>>> = const { RefCell::new(None) };
}

fn core() -> Option<Rc<Core>> {
    CORE.try_with(|c| c.borrow().clone()).ok().flatten()
}

/// True on a thread running [`block_on`].
pub fn is_current() -> bool {
    CORE.try_with(|c| c.borrow().is_some()).unwrap_or(false)
}

fn with_driver<R>(f: impl FnOnce(&Driver) -> R) -> Option<R> {
    core().map(|c| f(&c.driver))
}

/// `f` on driver `id` when it is this thread's (`None` elsewhere: an operation is only ever
/// completed or cancelled on the ring it was made on).
fn with_driver_of<R>(id: u64, f: impl FnOnce(&Driver) -> R) -> Option<R> {
    core().filter(|c| c.driver.id() == id).map(|c| f(&c.driver))
}

fn with_timers<R>(f: impl FnOnce(&Timers) -> R) -> Option<R> {
    core().map(|c| f(&c.timers))
}

/// Spawns `future` on this ring thread. Panics outside one (callers check [`is_current`]).
pub fn spawn_local<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    let Some(core) = core() else {
        panic!("rt::ring::spawn_local called outside a ring worker thread");
    };
    executor::spawn(&core.executor, future)
}

/// The shared background tokio runtime (one thread, made on first use) whose reactor serves
/// the tokio sockets of ring threads.
fn background() -> io::Result<&'static tokio::runtime::Runtime> {
    static BACKGROUND: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    BACKGROUND
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("ringtun-reactor")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| io::Error::other(format!("cannot start the background reactor: {e}")))
}

/// A ring runtime for this thread, made before [`Runtime::block_on`] so a failure is reported
/// before the worker counts as started.
pub struct Runtime {
    core: Rc<Core>,
}

impl Runtime {
    /// A ring of `entries` submission entries on this thread.
    pub fn new(entries: u32) -> io::Result<Self> {
        background()?;
        // SAFETY: eventfd returns a new descriptor or -1.
        // Blocking: before Linux 5.16 io_uring completes a read on a non-blocking file at once
        // with EAGAIN instead of waiting (a parked worker would spin). A write never blocks.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new descriptor owned by nothing else.
        let eventfd = unsafe { OwnedFd::from_raw_fd(raw) };
        let wake_fd = eventfd.as_raw_fd();
        let remote = Arc::new(Remote::new(eventfd));
        let driver = Driver::new(entries, wake_fd)?;
        Ok(Self {
            core: Rc::new(Core {
                driver,
                executor: Executor::new(remote.clone()),
                timers: Timers::default(),
                remote,
            }),
        })
    }

    pub fn setup(&self) -> RingSetup {
        self.core.driver.setup()
    }

    /// Runs `future` (and the tasks it spawns) to completion on this thread; tasks still alive
    /// then are dropped.
    pub fn block_on<F: Future>(self, future: F) -> F::Output {
        let _reactor = background().ok().map(|rt| rt.enter());
        CORE.with(|c| *c.borrow_mut() = Some(self.core.clone()));
        // Also on a panic of the worker's own future: tasks are dropped (their operations
        // cancelled) while the ring is still there.
        struct Exit<'a>(&'a Core);
        impl Drop for Exit<'_> {
            fn drop(&mut self) {
                self.0.executor.drop_all();
                self.0.driver.finish(EXIT_WAIT);
                let _ = CORE.try_with(|c| c.borrow_mut().take());
            }
        }
        let _exit = Exit(&self.core);
        run(&self.core, future)
    }
}

fn run<F: Future>(core: &Core, future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let main = core.executor.main_waker();
    let main_waker = main.waker();
    let mut woken: Vec<TaskRef> = Vec::new();
    loop {
        let mut polls = 0;
        loop {
            if main.take_woken() {
                let mut cx = Context::from_waker(&main_waker);
                if let std::task::Poll::Ready(out) = future.as_mut().poll(&mut cx) {
                    return out;
                }
                polls += 1;
            }
            core.remote.take_woken(&mut woken);
            if woken.is_empty() {
                break;
            }
            for task in woken.drain(..) {
                if task != MAIN {
                    core.executor.poll(task);
                    polls += 1;
                }
            }
            if polls >= POLLS_PER_TURN {
                break;
            }
        }
        // Wait only when nothing is runnable; a wake queued since the check above is seen by
        // `park` (or writes the eventfd).
        let wait = if polls >= POLLS_PER_TURN || !core.remote.park() {
            None
        } else {
            Some(
                core.timers
                    .until_next(Instant::now())
                    .unwrap_or(Duration::MAX),
            )
        };
        // Unparked as soon as the enter returns: the completions' wakes are this thread's own and
        // must not write the eventfd.
        let unpark = || core.remote.unpark();
        let entered = match wait {
            Some(d) if d.is_zero() => core.driver.turn(None, unpark),
            other => core.driver.turn(other, unpark),
        };
        if let Err(e) = entered {
            tracing::error!("io_uring_enter failed on a ring worker: {e}");
        }
        core.timers.fire(Instant::now());
    }
}

#[cfg(test)]
mod tests;
