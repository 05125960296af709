//! splice(2) for busy plaintext directions on the io_uring backend.
//!
//! tokio-uring has no splice operation, so a worker that splices keeps a second, small ring of
//! its own for it, watched from the same runtime the way tokio-uring watches its ring (the ring's
//! descriptor is readable while completions wait). The kernel runs every io_uring splice on an
//! io-wq worker thread that may block, so only the half that can wait goes through the ring:
//! socket → pipe is a plain non-blocking call for the bytes `FIONREAD` says are there (it cannot
//! wait), pipe → socket is a ring op (it waits for send-buffer space without blocking the worker).
//! Nothing here ever waits for a quiet socket: that stays a ring read in the pump.
//!
//! An op's future may be dropped while the kernel still runs it (the slot is then freed when its
//! completion arrives); the kernel holds its own references to both descriptors meanwhile.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use io_uring::{opcode, types, IoUring};
use tokio::io::unix::AsyncFd;

/// Submission entries of a worker's splice ring (two per busy direction at most are in flight).
const RING_ENTRIES: u32 = 64;

enum Slot {
    Free,
    Waiting(Option<Waker>),
    Done(i32),
    /// Its future was dropped; freed when the completion comes.
    Abandoned,
}

/// A worker's splice ring.
pub struct SpliceRing {
    ring: RefCell<IoUring>,
    slots: RefCell<Vec<Slot>>,
    /// Its driver task is alive (it dies with the runtime that spawned it).
    driven: std::cell::Cell<bool>,
}

thread_local! {
    /// This worker's ring, made on first use; `Err` remembers why it cannot be (e.g. a kernel
    /// without IORING_OP_SPLICE), so the pump copies instead without asking again.
    static RING: RefCell<Option<Result<Rc<SpliceRing>, String>>> = const { RefCell::new(None) };
}

/// The ring, as the runtime watches it: holding it keeps its descriptor open while watched.
struct Watched(Rc<SpliceRing>);

impl AsRawFd for Watched {
    fn as_raw_fd(&self) -> RawFd {
        self.0.ring.borrow().as_raw_fd()
    }
}

impl SpliceRing {
    /// This worker's ring (made, with its driver task, on first use), or why there is none.
    /// Must be called on a worker runtime (it spawns a local task).
    pub fn get() -> Result<Rc<SpliceRing>, String> {
        RING.with(|cell| {
            let mut cell = cell.borrow_mut();
            match cell.as_ref() {
                // A ring whose runtime has ended (its driver task with it) is replaced.
                Some(Ok(ring)) if !ring.driven.get() => {}
                Some(made) => return made.clone(),
                None => {}
            }
            let made = Self::make();
            if let Err(why) = &made {
                // Once per worker: its busy sessions copy from now on.
                tracing::warn!(reason = %why, "io_uring splice unavailable; busy sessions copy instead");
            }
            *cell = Some(made.clone());
            made
        })
    }

    fn make() -> Result<Rc<SpliceRing>, String> {
        let ring =
            IoUring::new(RING_ENTRIES).map_err(|e| format!("cannot create a splice ring: {e}"))?;
        let mut probe = io_uring::Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(|e| format!("cannot probe io_uring opcodes: {e}"))?;
        if !probe.is_supported(opcode::Splice::CODE) {
            return Err("this kernel's io_uring has no splice".into());
        }
        let ring = Rc::new(SpliceRing {
            ring: RefCell::new(ring),
            slots: RefCell::new(Vec::new()),
            driven: std::cell::Cell::new(true),
        });
        // SAFETY: `Watched` owns a reference to the ring, so the descriptor it returns stays open
        // and the same for as long as the `AsyncFd` lives.
        let watched = unsafe {
            AsyncFd::register_with_interest(Watched(ring.clone()), tokio::io::Interest::READABLE)
        }
        .map_err(|e| format!("cannot watch the splice ring: {e}"))?;
        tokio::task::spawn_local(drive(watched));
        Ok(ring)
    }

    /// Moves up to `len` bytes from `from` to `to` (one of them a pipe) on the ring.
    pub fn splice(self: &Rc<Self>, from: RawFd, to: RawFd, len: u32) -> SpliceOp {
        SpliceOp {
            ring: self.clone(),
            state: OpState::Unsubmitted { from, to, len },
        }
    }

    /// Takes every completion off the ring and wakes its op.
    fn reap(&self) {
        let mut ring = self.ring.borrow_mut();
        let mut slots = self.slots.borrow_mut();
        for cqe in ring.completion() {
            let Some(slot) = slots.get_mut(cqe.user_data() as usize) else {
                continue;
            };
            match std::mem::replace(slot, Slot::Done(cqe.result())) {
                Slot::Waiting(Some(waker)) => waker.wake(),
                Slot::Abandoned => *slot = Slot::Free,
                _ => {}
            }
        }
    }

    fn submit(&self, from: RawFd, to: RawFd, len: u32) -> io::Result<usize> {
        let index = {
            let mut slots = self.slots.borrow_mut();
            match slots.iter().position(|s| matches!(s, Slot::Free)) {
                Some(i) => {
                    slots[i] = Slot::Waiting(None);
                    i
                }
                None => {
                    slots.push(Slot::Waiting(None));
                    slots.len() - 1
                }
            }
        };
        let sqe = opcode::Splice::new(types::Fd(from), -1, types::Fd(to), -1, len)
            .flags(libc::SPLICE_F_MOVE)
            .build()
            .user_data(index as u64);
        let mut ring = self.ring.borrow_mut();
        // SAFETY: the entry names only descriptors and no memory; the kernel takes its own
        // references to both files when it reads the entry, so a descriptor closed before the
        // completion cannot be reused under it.
        let pushed = unsafe { ring.submission().push(&sqe) };
        let submitted = match pushed {
            Ok(()) => ring.submit().map(|_| ()),
            Err(_) => Err(io::Error::other("splice ring is full")),
        };
        if let Err(e) = submitted {
            self.slots.borrow_mut()[index] = Slot::Free;
            return Err(e);
        }
        Ok(index)
    }
}

/// Reaps completions whenever the ring's descriptor turns readable, until the ring is gone.
async fn drive(watched: AsyncFd<Watched>) {
    /// Marks the ring undriven when this task ends or is dropped with its runtime.
    struct Driving(Rc<SpliceRing>);
    impl Drop for Driving {
        fn drop(&mut self) {
            self.0.driven.set(false);
        }
    }
    let _driving = Driving(watched.get_ref().0.clone());
    loop {
        let Ok(mut ready) = watched.readable().await else {
            return;
        };
        // Clear first, then reap: a completion posted after the clear raises new readiness,
        // one posted before it is reaped now.
        ready.clear_ready();
        watched.get_ref().0.reap();
    }
}

enum OpState {
    Unsubmitted { from: RawFd, to: RawFd, len: u32 },
    Submitted(usize),
    Finished,
}

/// One splice on the ring; resolves to the bytes moved.
pub struct SpliceOp {
    ring: Rc<SpliceRing>,
    state: OpState,
}

impl Future for SpliceOp {
    type Output = io::Result<usize>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let index = match this.state {
            OpState::Unsubmitted { from, to, len } => match this.ring.submit(from, to, len) {
                Ok(i) => {
                    this.state = OpState::Submitted(i);
                    i
                }
                Err(e) => {
                    this.state = OpState::Finished;
                    return Poll::Ready(Err(e));
                }
            },
            OpState::Submitted(i) => i,
            OpState::Finished => {
                return Poll::Ready(Err(io::Error::other("splice op polled after it finished")))
            }
        };
        let mut slots = this.ring.slots.borrow_mut();
        let Some(slot) = slots.get_mut(index) else {
            return Poll::Ready(Err(io::Error::other("splice slot lost")));
        };
        match slot {
            Slot::Done(result) => {
                let result = *result;
                *slot = Slot::Free;
                this.state = OpState::Finished;
                Poll::Ready(if result < 0 {
                    Err(io::Error::from_raw_os_error(-result))
                } else {
                    Ok(result as usize)
                })
            }
            Slot::Waiting(waker) => {
                *waker = Some(cx.waker().clone());
                Poll::Pending
            }
            Slot::Free | Slot::Abandoned => Poll::Ready(Err(io::Error::other("splice slot lost"))),
        }
    }
}

impl Drop for SpliceOp {
    fn drop(&mut self) {
        if let OpState::Submitted(index) = self.state {
            if let Some(slot) = self.ring.slots.borrow_mut().get_mut(index) {
                let done = matches!(slot, Slot::Done(_));
                *slot = if done { Slot::Free } else { Slot::Abandoned };
            }
        }
    }
}
