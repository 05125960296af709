//! The ring worker's tasks: a thread's `!Send` futures, polled when woken.
//!
//! Wakers are `Send + Sync` (tokio's channels wake a worker from the control thread): a wake
//! queues the task's index on the thread's [`Remote`] list, and when the thread is parked in
//! `io_uring_enter` it also writes the eventfd whose read is always pending on the ring. A task
//! is polled with no borrow of the executor held, so it may spawn, wake and drop freely. This
//! module must not know about the ring's operations or timers.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// A task's place: its slot and the slot's generation (a stale wake of a reused slot is
/// ignored).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct TaskRef {
    index: u32,
    generation: u32,
}

/// The block_on future's own place (it lives on the stack, not in a slot).
pub(super) const MAIN: TaskRef = TaskRef {
    index: u32::MAX,
    generation: 0,
};

/// What other threads (and this one) reach a thread's executor by.
pub(super) struct Remote {
    woken: Mutex<Vec<TaskRef>>,
    /// The thread is (about to be) blocked in the ring: a wake must write `eventfd`.
    parked: AtomicBool,
    eventfd: OwnedFd,
}

impl Remote {
    pub(super) fn new(eventfd: OwnedFd) -> Self {
        Self {
            woken: Mutex::new(Vec::new()),
            parked: AtomicBool::new(false),
            eventfd,
        }
    }

    fn push(&self, task: TaskRef) {
        match self.woken.lock() {
            Ok(mut woken) => woken.push(task),
            Err(poisoned) => poisoned.into_inner().push(task),
        }
        if self.parked.swap(false, Ordering::SeqCst) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a valid u64 to the eventfd this Remote owns.
            unsafe {
                libc::write(
                    self.eventfd.as_raw_fd(),
                    (&one as *const u64).cast(),
                    std::mem::size_of::<u64>(),
                );
            }
        }
    }

    /// Takes every task woken since the last call, into `into`.
    pub(super) fn take_woken(&self, into: &mut Vec<TaskRef>) {
        let mut woken = match self.woken.lock() {
            Ok(w) => w,
            Err(poisoned) => poisoned.into_inner(),
        };
        std::mem::swap(&mut *woken, into);
    }

    /// Marks the thread parked; false (and not parked) when a wake is already queued, so the
    /// caller must not block.
    pub(super) fn park(&self) -> bool {
        self.parked.store(true, Ordering::SeqCst);
        let idle = match self.woken.lock() {
            Ok(w) => w.is_empty(),
            Err(poisoned) => poisoned.into_inner().is_empty(),
        };
        if !idle {
            self.parked.store(false, Ordering::SeqCst);
        }
        idle
    }

    pub(super) fn unpark(&self) {
        self.parked.store(false, Ordering::SeqCst);
    }
}

/// The block_on future's waker, and whether it was woken since its last poll.
pub(super) struct MainWaker(Arc<TaskWaker>);

impl MainWaker {
    /// True (once) when the future was woken: poll it. Cleared before the poll, so a wake
    /// during it counts for the next turn.
    pub(super) fn take_woken(&self) -> bool {
        self.0.queued.swap(false, Ordering::AcqRel)
    }

    pub(super) fn waker(&self) -> Waker {
        Waker::from(self.0.clone())
    }
}

struct TaskWaker {
    task: TaskRef,
    /// Queued and not polled since: later wakes are absorbed.
    queued: AtomicBool,
    remote: Arc<Remote>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.remote.push(self.task);
        }
    }
}

type BoxedTask = Pin<Box<dyn Future<Output = ()>>>;

struct Slot {
    generation: u32,
    /// `None` while free, or while the task is being polled.
    future: Option<BoxedTask>,
    waker: Option<Arc<TaskWaker>>,
}

/// A thread's tasks.
pub(super) struct Executor {
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<u32>>,
    remote: Arc<Remote>,
    live: Cell<usize>,
}

impl Executor {
    pub(super) fn new(remote: Arc<Remote>) -> Self {
        Self {
            slots: RefCell::default(),
            free: RefCell::default(),
            remote,
            live: Cell::new(0),
        }
    }

    /// The block_on future's waker.
    pub(super) fn main_waker(&self) -> MainWaker {
        MainWaker(Arc::new(TaskWaker {
            task: MAIN,
            queued: AtomicBool::new(true),
            remote: self.remote.clone(),
        }))
    }

    /// Spawns `future`; returns its place and its waker (for aborts).
    fn insert(&self, future: BoxedTask) -> Arc<TaskWaker> {
        let mut slots = self.slots.borrow_mut();
        let index = match self.free.borrow_mut().pop() {
            Some(i) => i,
            None => {
                slots.push(Slot {
                    generation: 0,
                    future: None,
                    waker: None,
                });
                (slots.len() - 1) as u32
            }
        };
        let slot = &mut slots[index as usize];
        let waker = Arc::new(TaskWaker {
            task: TaskRef {
                index,
                generation: slot.generation,
            },
            queued: AtomicBool::new(false),
            remote: self.remote.clone(),
        });
        slot.future = Some(future);
        slot.waker = Some(waker.clone());
        self.live.set(self.live.get() + 1);
        waker
    }

    /// Polls the task at `task` once, if it is still there.
    pub(super) fn poll(&self, task: TaskRef) {
        let (mut future, waker) = {
            let mut slots = self.slots.borrow_mut();
            let Some(slot) = slots.get_mut(task.index as usize) else {
                return;
            };
            if slot.generation != task.generation {
                return;
            }
            let (Some(future), Some(waker)) = (slot.future.take(), slot.waker.clone()) else {
                return;
            };
            (future, waker)
        };
        waker.queued.store(false, Ordering::Release);
        let as_waker = Waker::from(waker);
        let mut cx = Context::from_waker(&as_waker);
        match future.as_mut().poll(&mut cx) {
            Poll::Pending => {
                if let Some(slot) = self.slots.borrow_mut().get_mut(task.index as usize) {
                    slot.future = Some(future);
                }
            }
            Poll::Ready(()) => {
                {
                    let mut slots = self.slots.borrow_mut();
                    if let Some(slot) = slots.get_mut(task.index as usize) {
                        slot.generation = slot.generation.wrapping_add(1);
                        slot.waker = None;
                    }
                    self.free.borrow_mut().push(task.index);
                    self.live.set(self.live.get().saturating_sub(1));
                }
                // Dropped with no borrow held: its drop may spawn, wake or cancel.
                drop(future);
            }
        }
    }

    /// Drops every task (the worker's future has ended).
    pub(super) fn drop_all(&self) {
        loop {
            let futures: Vec<BoxedTask> = {
                let mut slots = self.slots.borrow_mut();
                slots
                    .iter_mut()
                    .filter_map(|s| {
                        s.waker = None;
                        s.generation = s.generation.wrapping_add(1);
                        s.future.take()
                    })
                    .collect()
            };
            if futures.is_empty() {
                break;
            }
            // A dropped task may spawn another: loop until none is left.
            drop(futures);
        }
        self.live.set(0);
    }

    /// Tasks alive (spawned and not finished).
    #[cfg(test)]
    pub(super) fn live(&self) -> usize {
        self.live.get()
    }
}

/// Why a task gave no output: it was aborted, or it panicked (the panic is reported by the
/// panic hook; the worker and its other tasks go on, as with tokio's local tasks).
#[derive(Debug, thiserror::Error)]
#[error("{}", if self.panicked { "the task panicked" } else { "the task was aborted" })]
pub struct JoinError {
    panicked: bool,
}

impl JoinError {
    pub fn is_cancelled(&self) -> bool {
        !self.panicked
    }

    pub fn is_panic(&self) -> bool {
        self.panicked
    }
}

struct JoinState<T> {
    output: RefCell<Option<Result<T, JoinError>>>,
    waiter: RefCell<Option<Waker>>,
    aborted: Cell<bool>,
    task: Arc<TaskWaker>,
}

impl<T> JoinState<T> {
    fn finish(&self, output: Result<T, JoinError>) {
        *self.output.borrow_mut() = Some(output);
        if let Some(w) = self.waiter.borrow_mut().take() {
            w.wake();
        }
    }
}

/// A spawned ring task's handle: await it for its output, or abort it. Dropping it detaches.
pub struct JoinHandle<T> {
    state: Rc<JoinState<T>>,
}

impl<T> JoinHandle<T> {
    /// Ends the task at its next poll (its future is dropped).
    pub fn abort(&self) {
        self.state.aborted.set(true);
        self.state.task.wake_by_ref();
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(out) = self.state.output.borrow_mut().take() {
            return Poll::Ready(out);
        }
        *self.state.waiter.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// The future a slot holds: the task's own, ended early by an abort.
struct Spawned<F: Future> {
    future: F,
    state: Rc<JoinState<F::Output>>,
}

impl<F: Future> Future for Spawned<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // SAFETY: `future` is never moved out of the pinned `Spawned`; `state` is not pinned.
        let this = unsafe { self.get_unchecked_mut() };
        if this.state.aborted.get() {
            this.state.finish(Err(JoinError { panicked: false }));
            return Poll::Ready(());
        }
        // SAFETY: see above.
        let future = unsafe { Pin::new_unchecked(&mut this.future) };
        // A panicking task ends alone (its future is dropped with its slot).
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| future.poll(cx))) {
            Ok(Poll::Ready(out)) => {
                this.state.finish(Ok(out));
                Poll::Ready(())
            }
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => {
                this.state.finish(Err(JoinError { panicked: true }));
                Poll::Ready(())
            }
        }
    }
}

/// Spawns `future` on `executor` and queues its first poll.
pub(super) fn spawn<F>(executor: &Executor, future: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    // The slot is made first (its waker is the handle's abort path), then filled.
    let placeholder: BoxedTask = Box::pin(std::future::pending());
    let task = executor.insert(placeholder);
    let state = Rc::new(JoinState {
        output: RefCell::new(None),
        waiter: RefCell::new(None),
        aborted: Cell::new(false),
        task: task.clone(),
    });
    let spawned: BoxedTask = Box::pin(Spawned {
        future,
        state: state.clone(),
    });
    if let Some(slot) = executor
        .slots
        .borrow_mut()
        .get_mut(task.task.index as usize)
    {
        slot.future = Some(spawned);
    }
    task.wake_by_ref();
    JoinHandle { state }
}
