//! Socket operations on the ring thread's ring: receive into and send from owned buffers,
//! receive into the ring's provided buffers, accept, and readiness polls.
//!
//! Each operation's future owns what the kernel reads or writes; dropped before it completes,
//! it hands them to the driver (cancelled, freed at completion), so every future here may be
//! dropped at any point. A dropped receive may still have taken bytes from the socket (they are
//! lost with it): a socket that must stay usable waits by [`poll`] instead. This module must not
//! know about sessions.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use io_uring::{opcode, squeue, types};

/// One operation in flight on this thread's ring, owning `T` until its completion. It completes
/// and is cancelled only on the ring it was made on (its `driver`): moved to another thread it
/// never completes, and dropped there it leaks `T` rather than free memory the kernel may use.
struct Op<T: 'static> {
    index: usize,
    driver: u64,
    keep: Option<T>,
    /// Whether a completion's result is a descriptor to close if nobody takes it.
    returns_fd: bool,
}

impl<T: 'static> Op<T> {
    fn start(sqe: squeue::Entry, keep: T, returns_fd: bool) -> io::Result<Self> {
        let (index, driver) =
            super::with_driver(|d| (d.start(sqe), d.id())).ok_or_else(not_ring_thread)?;
        Ok(Self {
            index,
            driver,
            keep: Some(keep),
            returns_fd,
        })
    }
}

impl<T: Unpin + 'static> Future for Op<T> {
    /// The kernel's result, the completion's flags and the resources back.
    type Output = (i32, u32, T);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let index = self.index;
        match super::with_driver_of(self.driver, |d| d.poll_op(index, cx.waker())).flatten() {
            Some((result, flags)) => match self.keep.take() {
                Some(keep) => Poll::Ready((result, flags, keep)),
                None => Poll::Pending,
            },
            None => Poll::Pending,
        }
    }
}

impl<T: 'static> Drop for Op<T> {
    fn drop(&mut self) {
        if let Some(keep) = self.keep.take() {
            let returns_fd = self.returns_fd;
            let index = self.index;
            let kept: Box<dyn std::any::Any> = Box::new(keep);
            let mut kept = Some(kept);
            let orphaned =
                super::with_driver_of(self.driver, |d| d.orphan(index, kept.take(), returns_fd));
            if orphaned.is_none() {
                // Not on its ring's thread (or the ring is gone): the kernel may still use the
                // memory, so it is leaked rather than freed.
                std::mem::forget(kept);
            }
        }
    }
}

fn not_ring_thread() -> io::Error {
    io::Error::other("an io_uring operation was started outside a ring worker thread")
}

fn result(res: i32) -> io::Result<usize> {
    if res < 0 {
        Err(io::Error::from_raw_os_error(-res))
    } else {
        Ok(res as usize)
    }
}

/// Receives into `buf`'s capacity (its contents are replaced); 0 means EOF (or a buffer with no
/// capacity).
pub async fn recv(fd: RawFd, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
    buf.clear();
    let len = u32::try_from(buf.capacity()).unwrap_or(u32::MAX);
    let sqe = opcode::Recv::new(types::Fd(fd), buf.as_mut_ptr(), len).build();
    let op = match Op::start(sqe, buf, false) {
        Ok(op) => op,
        Err(e) => return (Err(e), Vec::new()),
    };
    let (res, _, mut buf) = op.await;
    match result(res) {
        Ok(n) => {
            // SAFETY: the kernel initialised the first `n` bytes of the capacity it was given.
            unsafe { buf.set_len(n.min(buf.capacity())) };
            (Ok(n), buf)
        }
        Err(e) => (Err(e), buf),
    }
}

/// Bytes a receive took into one of the ring's provided buffers; dropped, the buffer goes back
/// to the ring. Lives on its ring's thread (not `Send`).
pub struct Provided {
    bid: u16,
    len: usize,
    driver: u64,
    /// The buffer's size: a receive that filled it may have left more in the socket.
    capacity: usize,
    _not_send: std::marker::PhantomData<*const u8>,
}

impl Provided {
    /// The bytes received (none at EOF).
    pub fn bytes(&self) -> &[u8] {
        let (bid, len) = (self.bid, self.len);
        // SAFETY: `bid` came with this receive's completion and is recycled only on drop.
        // The slice borrows the driver's memory, which outlives every operation of its thread.
        super::with_driver_of(self.driver, |d| unsafe {
            let bytes = d.provided_bytes(bid, len);
            std::slice::from_raw_parts(bytes.as_ptr(), bytes.len())
        })
        .unwrap_or(&[])
    }

    /// The receive filled the buffer: more may be queued.
    pub fn filled(&self) -> bool {
        self.len >= self.capacity
    }
}

impl Drop for Provided {
    fn drop(&mut self) {
        let bid = self.bid;
        // Elsewhere than its ring's thread the buffer stays out of the ring (the ring has one
        // fewer), never handed back from the wrong thread.
        let _ = super::with_driver_of(self.driver, |d| d.recycle(bid));
    }
}

/// Receives into a buffer the kernel picks from the ring's provided buffers when bytes arrive,
/// so the wait holds none. `None` where the ring has no provided buffers, or all are out
/// (`ENOBUFS`): wait another way. `Ok` with no bytes is EOF.
pub async fn recv_provided(fd: RawFd) -> Option<io::Result<Provided>> {
    let (group, size) = super::with_driver(|d| d.provided_group()).flatten()?;
    let sqe = opcode::Recv::new(types::Fd(fd), std::ptr::null_mut(), size)
        .buf_group(group)
        .build()
        .flags(squeue::Flags::BUFFER_SELECT);
    let op = match Op::start(sqe, (), false) {
        Ok(op) => op,
        Err(e) => return Some(Err(e)),
    };
    let driver = op.driver;
    let (res, flags, ()) = op.await;
    // Whatever the result, a buffer the completion names is this receive's to give back.
    let taken = io_uring::cqueue::buffer_select(flags).map(|bid| Provided {
        bid,
        len: usize::try_from(res).unwrap_or(0),
        driver,
        capacity: size as usize,
        _not_send: std::marker::PhantomData,
    });
    match result(res) {
        Ok(0) => Some(Ok(taken.unwrap_or(Provided {
            // EOF without a buffer: an empty one that recycles nothing.
            bid: u16::MAX,
            len: 0,
            driver,
            capacity: size as usize,
            _not_send: std::marker::PhantomData,
        }))),
        Ok(_) => match taken {
            Some(p) => Some(Ok(p)),
            None => Some(Err(io::Error::other(
                "io_uring receive completed with bytes but no provided buffer",
            ))),
        },
        Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => None,
        Err(e) => Some(Err(e)),
    }
}

/// Sends `buf[from..]` once (it may send less); returns how many bytes.
pub async fn send(fd: RawFd, buf: Vec<u8>, from: usize) -> (io::Result<usize>, Vec<u8>) {
    let from = from.min(buf.len());
    let rest = &buf[from..];
    let len = u32::try_from(rest.len()).unwrap_or(u32::MAX);
    let sqe = opcode::Send::new(types::Fd(fd), rest.as_ptr(), len)
        .flags(libc::MSG_NOSIGNAL)
        .build();
    let op = match Op::start(sqe, buf, false) {
        Ok(op) => op,
        Err(e) => return (Err(e), Vec::new()),
    };
    let (res, _, buf) = op.await;
    (result(res), buf)
}

/// Sends all of `buf[from..]`.
pub async fn send_all(fd: RawFd, mut buf: Vec<u8>, mut from: usize) -> (io::Result<()>, Vec<u8>) {
    while from < buf.len() {
        let (sent, b) = send(fd, buf, from).await;
        buf = b;
        match sent {
            Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
            Ok(n) => from += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (Err(e), buf),
        }
    }
    (Ok(()), buf)
}

/// An accept's peer address, owned by the operation.
struct PeerAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

/// Accepts one connection on listener `fd` (close-on-exec); the future may be dropped (a
/// connection it accepted meanwhile is closed).
pub async fn accept(fd: RawFd) -> io::Result<(OwnedFd, SocketAddr)> {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut addr = Box::new(PeerAddr {
        storage: unsafe { std::mem::zeroed() },
        len: std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t,
    });
    let sqe = opcode::Accept::new(
        types::Fd(fd),
        (&mut addr.storage as *mut libc::sockaddr_storage).cast(),
        &mut addr.len,
    )
    .flags(libc::SOCK_CLOEXEC)
    .build();
    let (res, _, addr) = Op::start(sqe, addr, true)?.await;
    let accepted = result(res)? as RawFd;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(accepted) };
    let peer = peer_addr(&addr).ok_or_else(|| io::Error::other("accepted a non-IP socket"))?;
    Ok((owned, peer))
}

fn peer_addr(addr: &PeerAddr) -> Option<SocketAddr> {
    // SAFETY: the kernel wrote a socket address of `len` bytes into the storage.
    let sock = unsafe { socket2::SockAddr::new(addr.storage, addr.len) };
    sock.as_socket()
}

/// Waits until `fd` is ready for `events` (`libc::POLLIN`, `libc::POLLOUT`); returns the
/// events seen (errors and hang-ups included). Safe to drop: a poll takes nothing.
pub async fn poll(fd: RawFd, events: i16) -> io::Result<u32> {
    let sqe = opcode::PollAdd::new(types::Fd(fd), events as u16 as u32).build();
    let (res, _, ()) = Op::start(sqe, (), false)?.await;
    result(res).map(|e| e as u32)
}

/// A listener's multishot accept (`IORING_ACCEPT_MULTISHOT`): armed on the first
/// [`MultiAccept::next`], armed again when the kernel ends it; dropped, it is cancelled and the
/// connections it accepted that nobody took are closed. One caller at a time (an accept loop):
/// it keeps one waker.
pub struct MultiAccept {
    fd: RawFd,
    /// The multishot op's slot and the driver it runs on.
    slot: std::cell::Cell<Option<(usize, u64)>>,
    /// The kernel refused multishot (before Linux 5.19, `EINVAL`): one accept at a time.
    single: std::cell::Cell<bool>,
}

impl MultiAccept {
    /// Accepts on listener `fd`, which must outlive this.
    pub fn new(fd: RawFd) -> Self {
        Self {
            fd,
            slot: std::cell::Cell::new(None),
            single: std::cell::Cell::new(false),
        }
    }

    /// The next accepted connection (close-on-exec). The future may be dropped.
    pub async fn next(&self) -> io::Result<OwnedFd> {
        if self.single.get() {
            return accept(self.fd).await.map(|(fd, _)| fd);
        }
        let (slot, driver) = match self.slot.get() {
            Some(slot) => slot,
            None => {
                let sqe = opcode::AcceptMulti::new(types::Fd(self.fd))
                    .flags(libc::SOCK_CLOEXEC)
                    .build();
                let slot = super::with_driver(|d| (d.start_multi(sqe), d.id()))
                    .ok_or_else(not_ring_thread)?;
                self.slot.set(Some(slot));
                slot
            }
        };
        let (res, _, armed) = std::future::poll_fn(|cx| {
            match super::with_driver_of(driver, |d| d.poll_multi(slot, cx.waker())) {
                Some(Some(done)) => Poll::Ready(Ok(done)),
                Some(None) => Poll::Pending,
                None => Poll::Ready(Err(not_ring_thread())),
            }
        })
        .await?;
        if !armed {
            // The kernel ended it (an error, or it stopped multishot): armed again next time.
            super::with_driver_of(driver, |d| d.end_multi(slot, true));
            self.slot.set(None);
        }
        if res == -libc::EINVAL {
            // Also what a listener that was shut down gives; one accept at a time is right for
            // both (it fails the same way on a shut-down listener).
            self.single.set(true);
        }
        let accepted = result(res)? as RawFd;
        // SAFETY: the kernel returned a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(accepted) })
    }
}

impl Drop for MultiAccept {
    fn drop(&mut self) {
        if let Some((slot, driver)) = self.slot.take() {
            super::with_driver_of(driver, |d| d.end_multi(slot, true));
        }
    }
}

/// A readiness poll kept across polls of its owner's own future, so a wait needs no future of
/// its own (an idle connection's waiting future stays small). Dropped while armed, the poll is
/// cancelled. (Atomic only so that its owner stays `Sync`; it is used by one ring thread.)
#[derive(Debug)]
pub struct PollSlot(
    std::sync::atomic::AtomicUsize,
    std::sync::atomic::AtomicU64,
    /// Readiness seen and not yet used up: set by an event, kept while reads fill their
    /// buffer, cleared by a short read or `EAGAIN` (`PollSlot::drained`), as tokio keeps
    /// readiness over epoll's edges.
    std::sync::atomic::AtomicBool,
);

/// No poll armed.
const NO_POLL: usize = usize::MAX;

impl Default for PollSlot {
    fn default() -> Self {
        Self(
            std::sync::atomic::AtomicUsize::new(NO_POLL),
            std::sync::atomic::AtomicU64::new(0),
            std::sync::atomic::AtomicBool::new(false),
        )
    }
}

impl PollSlot {
    fn armed(&self) -> Option<usize> {
        Some(self.0.load(std::sync::atomic::Ordering::Relaxed)).filter(|&i| i != NO_POLL)
    }

    fn set(&self, index: usize) {
        self.0.store(index, std::sync::atomic::Ordering::Relaxed);
    }

    /// The last read emptied the socket (a short read, or `EAGAIN`): the next wait sleeps
    /// until a new event.
    pub fn drained(&self) {
        self.2.store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// Ready once `fd` is ready for `events`, or at once while readiness seen before is not
    /// used up (see [`PollSlot::drained`]). The poll is multishot (armed on the first call,
    /// again only when the kernel ends it), so a wait costs no new arming, as with epoll's edge
    /// triggering. Events that came since the last call are taken together.
    pub fn poll_ready(
        &self,
        fd: RawFd,
        events: i16,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<u32>> {
        if self.2.load(std::sync::atomic::Ordering::Relaxed) {
            return Poll::Ready(Ok(events as u16 as u32));
        }
        let index = match self.armed() {
            Some(index) => index,
            None => {
                let sqe = opcode::PollAdd::new(types::Fd(fd), events as u16 as u32)
                    .multi(true)
                    .build();
                match super::with_driver(|d| (d.start_multi(sqe), d.id())) {
                    Some((index, driver)) => {
                        self.set(index);
                        self.1.store(driver, std::sync::atomic::Ordering::Relaxed);
                        index
                    }
                    None => return Poll::Ready(Err(not_ring_thread())),
                }
            }
        };
        let driver = self.1.load(std::sync::atomic::Ordering::Relaxed);
        let mut seen: Option<io::Result<u32>> = None;
        while let Some((res, _, armed)) =
            super::with_driver_of(driver, |d| d.poll_multi(index, cx.waker())).flatten()
        {
            let events = result(res).map(|e| e as u32);
            seen = Some(match (seen, events) {
                (Some(Ok(a)), Ok(b)) => Ok(a | b),
                (_, Err(e)) | (Some(Err(e)), _) => Err(e),
                (None, ok) => ok,
            });
            if !armed {
                // Ended by the kernel (or an error): armed again at the next wait.
                super::with_driver_of(driver, |d| d.end_multi(index, false));
                self.set(NO_POLL);
                break;
            }
        }
        match seen {
            Some(ready) => {
                if ready.is_ok() {
                    self.2.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                Poll::Ready(ready)
            }
            None => Poll::Pending,
        }
    }
}

impl Drop for PollSlot {
    fn drop(&mut self) {
        if let Some(index) = self.armed() {
            let driver = self.1.load(std::sync::atomic::Ordering::Relaxed);
            super::with_driver_of(driver, |d| d.end_multi(index, false));
        }
    }
}
