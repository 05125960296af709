//! splice(2) for busy plaintext directions on the io_uring backend, and the ring it waits on.
//!
//! Both halves are plain non-blocking calls that never wait in the kernel: socket → pipe moves
//! the bytes `FIONREAD` says are queued (so it cannot wait), pipe → socket
//! ([`SpliceRing::splice_to_socket`]) runs with the socket in non-blocking mode and, when the
//! socket's send buffer is full, waits for writability with an `IORING_OP_POLL_ADD` on a second,
//! small ring of the worker's own (tokio-uring has no poll or splice operation), watched from the
//! same runtime the way tokio-uring watches its ring (the ring's descriptor is readable while
//! completions wait). Nothing here waits for a quiet socket: that stays a ring read in the pump.
//!
//! Why not `IORING_OP_SPLICE` (what this did before): the kernel never tries a ring splice inline
//! (`io_splice` returns `-EAGAIN` to any non-blocking issue, so every one goes to an io-wq worker
//! thread), and whether a splice into a socket waits is decided by the socket's own `O_NONBLOCK`
//! (`splice_to_socket` adds `MSG_DONTWAIT` only for it; `SPLICE_F_NONBLOCK` covers the pipe
//! alone). tokio-uring's sockets are in blocking mode, so a receiver that stopped reading held
//! one io-wq thread per session direction: measured on Linux 6.18, 200 stalled sessions took the
//! process from 4 threads to 203 (`tests/slow_receivers.rs`). Capping io-wq
//! (`IORING_REGISTER_IOWQ_MAX_WORKERS`) does not help on its own: with the cap reached, a splice
//! to a socket that has room queues behind the blocked ones and stalls too (measured: it did not
//! complete within 2 s behind 10 blocked splices with the cap at 2). A poll op never uses io-wq.
//!
//! `O_NONBLOCK` is set on the destination socket only around each splice call and restored
//! before anything can await, so tokio-uring, which owns the socket and sets up its ops on it
//! (the other direction's reads) only from this thread's runtime outside that window, always sets
//! them up on the blocking socket it adopted. An op already in flight that the kernel retries
//! inside the window is a nowait retry through io_uring's poll machinery either way. That design
//! does not depend on how io_uring treats `O_NONBLOCK` sockets (old kernels fail such reads with
//! `-EAGAIN` instead of waiting; current ones mark sockets nowait-capable, and on 6.18 a ring read
//! and a ring write on an `O_NONBLOCK` socket were measured to wait).
//!
//! An op's future may be dropped while the kernel still runs it (the slot is then freed when its
//! completion arrives); the kernel holds its own reference to the descriptor meanwhile. A socket
//! shut down completes a poll waiting on it.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use io_uring::{opcode, types, IoUring};
use tokio::io::unix::AsyncFd;

/// Submission entries of a worker's splice ring: each op is submitted as it is pushed, so the
/// queue holds one at a time (completions of ops in flight beyond the completion queue's size
/// wait in the kernel's overflow list).
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
    /// without IORING_OP_POLL_ADD), so the pump copies instead without asking again.
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
        if !probe.is_supported(opcode::PollAdd::CODE) {
            return Err("this kernel's io_uring has no poll".into());
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
        crate::rt::spawn_local(drive(watched));
        Ok(ring)
    }

    /// Moves `len` bytes from `pipe` (its read end, holding at least `len`) into `socket`,
    /// waiting on this ring whenever the socket's send buffer is full. No call here blocks the
    /// thread or parks a kernel thread.
    pub async fn splice_to_socket(
        self: &Rc<Self>,
        pipe: RawFd,
        socket: RawFd,
        mut len: usize,
    ) -> io::Result<()> {
        while len > 0 {
            let spliced = {
                // Cleared again at the end of this block, before the await below.
                let _nonblocking = NonBlocking::set(socket)?;
                super::splice_nonblocking(pipe, socket, len)
            };
            match spliced {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => len -= n.min(len),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Error and hang-up events complete the poll too; the next splice reports them.
                    self.writable(socket).await?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Waits until `socket` is writable (or has an error or hung up): a one-shot ring poll.
    fn writable(self: &Rc<Self>, socket: RawFd) -> RingOp {
        RingOp {
            ring: self.clone(),
            state: OpState::Unsubmitted {
                fd: socket,
                events: libc::POLLOUT as u32,
            },
        }
    }

    /// Takes every completion off the ring and wakes its op, including those the completion
    /// queue had no room for: the kernel keeps them on its overflow list (and raises
    /// `IORING_SQ_CQ_OVERFLOW`) until an `io_uring_enter` with `GETEVENTS` moves them in, which
    /// `submit` does while that flag is up. Without that, ops beyond the queue's size that
    /// complete together (many sessions' receivers leaving at once) would never be woken.
    fn reap(&self) {
        let mut ring = self.ring.borrow_mut();
        let mut slots = self.slots.borrow_mut();
        loop {
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
            if !ring.submission().cq_overflow() {
                return;
            }
            match ring.submit() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    crate::log_limited!(
                        warn!(error = %e, "cannot flush the splice ring's overflowed completions")
                    );
                    return;
                }
            }
        }
    }

    fn submit(&self, fd: RawFd, events: u32) -> io::Result<usize> {
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
        let sqe = opcode::PollAdd::new(types::Fd(fd), events)
            .build()
            .user_data(index as u64);
        let mut ring = self.ring.borrow_mut();
        // SAFETY: the entry names only a descriptor and no memory; the kernel takes its own
        // reference to the file when it reads the entry, so a descriptor closed before the
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
    Unsubmitted { fd: RawFd, events: u32 },
    Submitted(usize),
    Finished,
}

/// One poll on the ring; resolves to the events that occurred.
struct RingOp {
    ring: Rc<SpliceRing>,
    state: OpState,
}

impl Future for RingOp {
    type Output = io::Result<usize>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let index = match this.state {
            OpState::Unsubmitted { fd, events } => match this.ring.submit(fd, events) {
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
                return Poll::Ready(Err(io::Error::other("ring op polled after it finished")))
            }
        };
        let mut slots = this.ring.slots.borrow_mut();
        let Some(slot) = slots.get_mut(index) else {
            return Poll::Ready(Err(io::Error::other("ring slot lost")));
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
            Slot::Free | Slot::Abandoned => Poll::Ready(Err(io::Error::other("ring slot lost"))),
        }
    }
}

impl Drop for RingOp {
    fn drop(&mut self) {
        if let OpState::Submitted(index) = self.state {
            if let Some(slot) = self.ring.slots.borrow_mut().get_mut(index) {
                let done = matches!(slot, Slot::Done(_));
                *slot = if done { Slot::Free } else { Slot::Abandoned };
            }
        }
    }
}

/// A socket in non-blocking mode for as long as this lives; its flags as they were when dropped.
struct NonBlocking {
    fd: RawFd,
    flags: libc::c_int,
}

impl NonBlocking {
    fn set(fd: RawFd) -> io::Result<Self> {
        // SAFETY: fcntl on a descriptor the caller keeps open for the guard's life; it reads and
        // writes only the file's status flags.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd, flags })
    }
}

impl Drop for NonBlocking {
    fn drop(&mut self) {
        // SAFETY: as in `set`. It cannot fail on a descriptor `set` just changed; were it to, the
        // socket would stay non-blocking, which tokio-uring's ring reads and writes also handle
        // on current kernels.
        unsafe { libc::fcntl(self.fd, libc::F_SETFL, self.flags) };
    }
}
