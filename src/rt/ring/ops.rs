//! Socket operations on the ring thread's ring: receive into and send from owned buffers,
//! accept, and readiness polls.
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

/// One operation in flight, owning `T` until its completion.
struct Op<T: 'static> {
    index: usize,
    keep: Option<T>,
    /// Whether a completion's result is a descriptor to close if nobody takes it.
    returns_fd: bool,
}

impl<T: 'static> Op<T> {
    fn start(sqe: squeue::Entry, keep: T, returns_fd: bool) -> io::Result<Self> {
        let index = super::with_driver(|d| d.start(sqe)).ok_or_else(not_ring_thread)?;
        Ok(Self {
            index,
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
        match super::with_driver(|d| d.poll_op(index, cx.waker())).flatten() {
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
            if super::with_driver(|d| d.orphan(index, Some(kept), returns_fd)).is_none() {
                // The runtime is gone (thread exit): its ring was closed, nothing to cancel.
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
