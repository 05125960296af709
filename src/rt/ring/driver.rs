//! The ring of one worker thread: submissions queued during a turn, one `io_uring_enter` per
//! turn, completions handed to the operations that wait for them.
//!
//! Every operation has a slot (its `user_data`); the slot owns what the kernel may still touch
//! (a buffer, an address) once the operation's future is dropped: such an orphan is cancelled
//! and its resources are freed only when its completion arrives, so dropping an operation future
//! is always safe. An orphaned accept that completes anyway closes the descriptor it got. This
//! module must not know about tasks, timers or sockets' meaning.

use std::any::Any;
use std::cell::RefCell;
use std::io;
use std::os::fd::AsRawFd;
use std::task::Waker;
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::provided::{register_provided, ProvidedBuffers};

/// `user_data` of the eventfd read that wakes a parked thread.
const WAKE_TOKEN: u64 = u64::MAX;
/// `user_data` of cancellations (their completions carry nothing to deliver).
const CANCEL_TOKEN: u64 = u64::MAX - 1;
/// `IORING_ENTER_GETEVENTS`: collect completions (needed on every enter with DEFER_TASKRUN).
const ENTER_GETEVENTS: u32 = 1;

enum OpState {
    Waiting(Option<Waker>),
    Done {
        result: i32,
        flags: u32,
    },
    /// A multishot operation: its completions queue up until taken; `armed` until one arrives
    /// without `IORING_CQE_F_MORE`.
    Multi {
        queued: Completions,
        waker: Option<Waker>,
        armed: bool,
    },
    /// Its future was dropped: `keep` is freed when the completion comes; `close_result`
    /// closes a descriptor the operation returns (an accept).
    Orphaned {
        _keep: Option<Box<dyn Any>>,
        close_result: bool,
    },
}

/// A multishot operation's completions not yet taken, oldest first. The oldest is kept inline
/// and the rest boxed: a poll taken before its next event (an idle connection's) allocates
/// nothing, and every operation slot stays small (the slab holds one per operation in flight).
#[derive(Default)]
struct Completions {
    first: Option<(i32, u32)>,
    // Boxed on purpose: the slot holds 8 bytes for a queue that is almost always absent.
    #[allow(clippy::box_collection)]
    rest: Option<Box<std::collections::VecDeque<(i32, u32)>>>,
}

impl Completions {
    fn push_back(&mut self, completion: (i32, u32)) {
        if self.first.is_none() {
            self.first = Some(completion);
        } else {
            self.rest.get_or_insert_default().push_back(completion);
        }
    }

    fn pop_front(&mut self) -> Option<(i32, u32)> {
        let oldest = self.first.take()?;
        self.first = self.rest.as_mut().and_then(|rest| rest.pop_front());
        Some(oldest)
    }

    fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    fn drain(self) -> impl Iterator<Item = (i32, u32)> {
        self.first
            .into_iter()
            .chain(self.rest.into_iter().flat_map(|rest| *rest))
    }
}

/// How the ring was set up, for the worker's start log line.
#[derive(Clone, Copy, Debug)]
pub struct RingSetup {
    pub entries: u32,
    /// SINGLE_ISSUER, DEFER_TASKRUN and COOP_TASKRUN were accepted by the kernel.
    pub deferred_taskrun: bool,
    /// Bytes of provided buffers registered (0: the kernel has no buffer rings, quiet sockets
    /// park a small read instead).
    pub provided_buffer_bytes: usize,
}

pub(super) struct Driver {
    pub(super) ring: RefCell<IoUring>,
    ops: RefCell<Vec<Option<OpState>>>,
    free: RefCell<Vec<usize>>,
    pub(super) in_flight: std::cell::Cell<usize>,
    /// The eventfd read's target (the kernel writes 8 bytes here). Leaked: a read in flight
    /// at exit may complete after the ring is gone.
    wake_buf: *mut u64,
    wake_fd: i32,
    completions: RefCell<Vec<(u64, i32, u32)>>,
    /// Reused each turn: the wakers of the operations that completed.
    wakers: RefCell<Vec<Waker>>,
    setup: RingSetup,
    /// The buffers quiet receives take from, where the kernel has buffer rings.
    pub(super) provided: Option<ProvidedBuffers>,
    /// Unique per driver: an operation made on one ring is never completed or cancelled on
    /// another's slots.
    id: u64,
}

impl Driver {
    /// A ring of `entries` entries (the deferred task-run flags where the kernel has them), with
    /// its wake read on `wake_fd` (an eventfd that outlives the driver).
    pub(super) fn new(entries: u32, wake_fd: i32) -> io::Result<Self> {
        let entries = entries.max(8);
        let (ring, deferred_taskrun) = match IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_coop_taskrun()
            .build(entries)
        {
            Ok(ring) => (ring, true),
            Err(_) => (IoUring::new(entries)?, false),
        };
        if !ring.params().is_feature_ext_arg() {
            return Err(io::Error::other(
                "this kernel's io_uring has no IORING_FEAT_EXT_ARG (Linux 5.11 or later is needed)",
            ));
        }
        let provided = register_provided(&ring);
        let driver = Self {
            ring: RefCell::new(ring),
            ops: RefCell::default(),
            free: RefCell::default(),
            in_flight: std::cell::Cell::new(0),
            wake_buf: Box::into_raw(Box::new(0)),
            wake_fd,
            completions: RefCell::default(),
            wakers: RefCell::default(),
            setup: RingSetup {
                entries,
                deferred_taskrun,
                provided_buffer_bytes: provided
                    .as_ref()
                    .map_or(0, |g| usize::from(g.count()) * g.size() as usize),
            },
            provided,
            id: {
                static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            },
        };
        driver.arm_wake();
        Ok(driver)
    }

    pub(super) fn setup(&self) -> RingSetup {
        self.setup
    }

    pub(super) fn id(&self) -> u64 {
        self.id
    }

    fn arm_wake(&self) {
        let sqe = opcode::Read::new(types::Fd(self.wake_fd), self.wake_buf.cast(), 8)
            .build()
            .user_data(WAKE_TOKEN);
        self.push(sqe);
    }

    /// Queues `sqe` for this turn's enter (submitting early only when the queue is full).
    fn push(&self, sqe: squeue::Entry) {
        let mut ring = self.ring.borrow_mut();
        loop {
            // SAFETY: every pointer in the entries ringtun builds stays valid until the
            // operation's completion (its slot owns the memory, see `Orphaned`).
            if unsafe { ring.submission().push(&sqe) }.is_ok() {
                return;
            }
            if let Err(e) = ring.submit() {
                if e.raw_os_error() != Some(libc::EBUSY) {
                    tracing::warn!("io_uring submit failed: {e}");
                }
                // EBUSY: the completion queue is full (older kernels refuse to submit then).
                // Move its entries aside for the next reap, making room.
                self.completions.borrow_mut().extend(
                    ring.completion()
                        .map(|c: cqueue::Entry| (c.user_data(), c.result(), c.flags())),
                );
            }
        }
    }

    /// Starts `sqe` as a new operation; returns its slot.
    pub(super) fn start(&self, sqe: squeue::Entry) -> usize {
        let index = {
            let mut ops = self.ops.borrow_mut();
            let index = match self.free.borrow_mut().pop() {
                Some(i) => i,
                None => {
                    ops.push(None);
                    ops.len() - 1
                }
            };
            ops[index] = Some(OpState::Waiting(None));
            index
        };
        self.in_flight.set(self.in_flight.get() + 1);
        self.push(sqe.user_data(index as u64));
        index
    }

    /// Starts `sqe` as a multishot operation; returns its slot.
    pub(super) fn start_multi(&self, sqe: squeue::Entry) -> usize {
        let index = self.start(sqe);
        if let Some(slot) = self.ops.borrow_mut().get_mut(index) {
            *slot = Some(OpState::Multi {
                queued: Default::default(),
                waker: None,
                armed: true,
            });
        }
        index
    }

    /// The next completion of multishot operation `index` and whether more may follow; else
    /// records `waker`. The slot stays until [`Driver::end_multi`].
    pub(super) fn poll_multi(&self, index: usize, waker: &Waker) -> Option<(i32, u32, bool)> {
        let mut ops = self.ops.borrow_mut();
        let Some(Some(OpState::Multi {
            queued,
            waker: w,
            armed,
        })) = ops.get_mut(index)
        else {
            return None;
        };
        match queued.pop_front() {
            Some((result, flags)) => Some((result, flags, *armed || !queued.is_empty())),
            None => {
                if !w.as_ref().is_some_and(|w| w.will_wake(waker)) {
                    *w = Some(waker.clone());
                }
                None
            }
        }
    }

    /// Ends multishot operation `index`: cancelled if still armed (descriptors it still
    /// returns are closed), queued descriptors closed when `close_results`, slot freed once done.
    pub(super) fn end_multi(&self, index: usize, close_results: bool) {
        let mut ops = self.ops.borrow_mut();
        let Some(slot) = ops.get_mut(index) else {
            return;
        };
        let Some(OpState::Multi { queued, armed, .. }) = slot.take() else {
            return;
        };
        if close_results {
            for (result, _) in queued.drain() {
                if result >= 0 {
                    // SAFETY: an accepted descriptor never handed to anyone.
                    unsafe { libc::close(result) };
                }
            }
        }
        if armed {
            *slot = Some(OpState::Orphaned {
                _keep: None,
                close_result: close_results,
            });
            drop(ops);
            self.push(
                opcode::AsyncCancel::new(index as u64)
                    .build()
                    .user_data(CANCEL_TOKEN),
            );
        } else {
            self.free.borrow_mut().push(index);
        }
    }

    /// The result of operation `index` if it completed (its slot is then free), else records
    /// `waker`.
    pub(super) fn poll_op(&self, index: usize, waker: &Waker) -> Option<(i32, u32)> {
        let mut ops = self.ops.borrow_mut();
        let slot = ops.get_mut(index)?;
        match slot {
            Some(OpState::Done { result, flags }) => {
                let done = (*result, *flags);
                *slot = None;
                self.free.borrow_mut().push(index);
                Some(done)
            }
            Some(OpState::Waiting(w)) => {
                if !w.as_ref().is_some_and(|w| w.will_wake(waker)) {
                    *w = Some(waker.clone());
                }
                None
            }
            _ => None,
        }
    }

    /// Operation `index`'s future was dropped before its completion was taken: cancel it and
    /// keep `keep` alive until the kernel is done with it.
    pub(super) fn orphan(&self, index: usize, keep: Option<Box<dyn Any>>, close_result: bool) {
        let mut ops = self.ops.borrow_mut();
        let Some(slot) = ops.get_mut(index) else {
            return;
        };
        match slot {
            Some(OpState::Waiting(_)) => {
                *slot = Some(OpState::Orphaned {
                    _keep: keep,
                    close_result,
                });
                drop(ops);
                self.push(
                    opcode::AsyncCancel::new(index as u64)
                        .build()
                        .user_data(CANCEL_TOKEN),
                );
            }
            Some(OpState::Done { result, flags }) => {
                // Completed but never taken.
                self.recycle_of(*flags);
                if close_result && *result >= 0 {
                    // SAFETY: the accepted descriptor was never handed to anyone.
                    unsafe { libc::close(*result) };
                }
                *slot = None;
                self.free.borrow_mut().push(index);
            }
            _ => {}
        }
    }

    /// Submits this turn's operations and collects completions; waits for one when `wait` is
    /// `Some` (at most that long, `Duration::MAX` for no bound), then calls `returned` (before
    /// any waker runs). Returns the number handled.
    pub(super) fn turn(
        &self,
        wait: Option<Duration>,
        returned: impl FnOnce(),
    ) -> io::Result<usize> {
        {
            let mut ring = self.ring.borrow_mut();
            let entered = match wait {
                None => {
                    let pending = ring.submission().len() as u32;
                    // SAFETY: plain enter with no argument.
                    unsafe {
                        ring.submitter()
                            .enter::<libc::sigset_t>(pending, 0, ENTER_GETEVENTS, None)
                    }
                }
                Some(d) if d == Duration::MAX => ring.submitter().submit_and_wait(1),
                Some(d) => {
                    let ts = types::Timespec::new()
                        .sec(d.as_secs())
                        .nsec(d.subsec_nanos());
                    let args = types::SubmitArgs::new().timespec(&ts);
                    ring.submitter().submit_with_args(1, &args)
                }
            };
            returned();
            match entered {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(self.reap())
    }

    /// Hands out every completion in the queue.
    fn reap(&self) -> usize {
        let mut total = 0;
        loop {
            let n = self.reap_once();
            total += n;
            // Completions set aside by a `push` during the pass are handled now, not after the
            // next (possibly blocking) enter.
            if self.completions.borrow().is_empty() {
                return total;
            }
        }
    }

    fn reap_once(&self) -> usize {
        let mut done = std::mem::take(&mut *self.completions.borrow_mut());
        {
            let mut ring = self.ring.borrow_mut();
            done.extend(
                ring.completion()
                    .map(|c: cqueue::Entry| (c.user_data(), c.result(), c.flags())),
            );
        }
        let n = done.len();
        let mut wakers = std::mem::take(&mut *self.wakers.borrow_mut());
        for &(token, result, flags) in &done {
            match token {
                WAKE_TOKEN => self.arm_wake(),
                CANCEL_TOKEN => {}
                index => {
                    if let Some(w) = self.complete(index as usize, result, flags) {
                        wakers.push(w);
                    }
                }
            }
        }
        done.clear();
        {
            // Keep what was set aside during the pass; else reuse the allocation.
            let mut aside = self.completions.borrow_mut();
            if aside.is_empty() {
                *aside = done;
            }
        }
        for w in wakers.drain(..) {
            w.wake();
        }
        *self.wakers.borrow_mut() = wakers;
        n
    }

    fn complete(&self, index: usize, result: i32, flags: u32) -> Option<Waker> {
        let mut ops = self.ops.borrow_mut();
        let slot = ops.get_mut(index)?;
        match slot.take() {
            Some(OpState::Waiting(waker)) => {
                self.in_flight.set(self.in_flight.get().saturating_sub(1));
                *slot = Some(OpState::Done { result, flags });
                waker
            }
            Some(OpState::Multi {
                mut queued, waker, ..
            }) => {
                let more = cqueue::more(flags);
                if !more {
                    self.in_flight.set(self.in_flight.get().saturating_sub(1));
                }
                queued.push_back((result, flags));
                *slot = Some(OpState::Multi {
                    queued,
                    waker: None,
                    armed: more,
                });
                waker
            }
            Some(OpState::Orphaned {
                _keep,
                close_result,
            }) => {
                self.recycle_of(flags);
                if close_result && result >= 0 {
                    // SAFETY: the accepted descriptor was never handed to anyone.
                    unsafe { libc::close(result) };
                }
                if cqueue::more(flags) {
                    // A multishot operation its cancellation has not ended yet.
                    *slot = Some(OpState::Orphaned {
                        _keep,
                        close_result,
                    });
                    return None;
                }
                self.in_flight.set(self.in_flight.get().saturating_sub(1));
                // The kept resources drop with the slot's old state, here.
                self.free.borrow_mut().push(index);
                None
            }
            other => {
                *slot = other;
                None
            }
        }
    }

    /// Operations the kernel still holds.
    pub(super) fn in_flight(&self) -> usize {
        self.in_flight.get()
    }

    /// At exit: waits (up to `bound`) for orphaned operations to complete so their memory can be
    /// freed; what is still held then is leaked rather than freed under the kernel.
    pub(super) fn finish(&self, bound: Duration) {
        let deadline = std::time::Instant::now() + bound;
        while self.in_flight() > 0 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || self.turn(Some(left), || {}).is_err() {
                break;
            }
        }
        if self.in_flight() > 0 {
            let ops = std::mem::take(&mut *self.ops.borrow_mut());
            std::mem::forget(ops);
        }
    }

    /// The ring's descriptor (registered as the thread's wake target).
    #[allow(dead_code)]
    pub(super) fn fd(&self) -> i32 {
        self.ring.borrow().as_raw_fd()
    }
}
