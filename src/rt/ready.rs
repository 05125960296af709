//! A socket waited on by readiness, on whichever backend the worker runs: tokio's reactor on an
//! epoll worker, polls on the worker's own ring on an io_uring worker (so the worker still blocks
//! only in `io_uring_enter`, and no other thread is woken for its bytes).
//!
//! Readiness never holds a buffer or bytes, so every wait here may be dropped at any point and
//! the socket stays usable: this is what a data connection between sessions, which goes back
//! to its pool, is read with. On the ring, reads wait on a multishot poll armed once
//! (`ring::PollSlot`) and readiness is kept until a read comes back short or `EAGAIN`, as tokio
//! keeps it over epoll's edges; so every read goes through [`ReadyStream::io`], which sees how
//! the read ended. This module must not know about sessions.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use tokio::io::Interest;
use tokio::net::TcpStream;

/// A socket read and written by readiness.
#[derive(Debug)]
pub enum ReadyStream {
    Tokio(TcpStream),
    /// A non-blocking socket on an io_uring worker, and its read poll while one is armed.
    Ring(std::net::TcpStream, super::ring::PollSlot),
}

impl ReadyStream {
    /// `stream` as this thread waits on sockets: moved off tokio's reactor on a ring worker.
    pub fn adopt(stream: TcpStream) -> io::Result<Self> {
        ReadyStream::Tokio(stream).localize()
    }

    /// A std socket as this thread waits on sockets. It must already be non-blocking, as every
    /// parked or handed connection is (`into_std` leaves it so): a lease costs no system call
    /// for it.
    pub fn from_std(stream: std::net::TcpStream) -> io::Result<Self> {
        debug_assert!(
            super::io::is_nonblocking(&stream),
            "ReadyStream::from_std needs a non-blocking socket"
        );
        if super::ring::is_current() {
            Ok(ReadyStream::Ring(stream, Default::default()))
        } else {
            Ok(ReadyStream::Tokio(TcpStream::from_std(stream)?))
        }
    }

    /// This socket as this thread waits on sockets: a tokio socket on a ring worker moves to
    /// the ring (off the background reactor); anything else stays as it is.
    pub fn localize(self) -> io::Result<Self> {
        match self {
            // Stays non-blocking (tokio set it so).
            ReadyStream::Tokio(s) if super::ring::is_current() => {
                Ok(ReadyStream::Ring(s.into_std()?, Default::default()))
            }
            other => Ok(other),
        }
    }

    /// The socket as a tokio socket (for code that runs on a tokio runtime).
    pub fn into_tokio(self) -> io::Result<TcpStream> {
        match self {
            ReadyStream::Tokio(s) => Ok(s),
            ReadyStream::Ring(s, _) => TcpStream::from_std(s),
        }
    }

    /// The plain socket (to park it in an idle pool, or hand it to another thread).
    pub fn into_std(self) -> io::Result<std::net::TcpStream> {
        match self {
            ReadyStream::Tokio(s) => s.into_std(),
            ReadyStream::Ring(s, _) => Ok(s),
        }
    }

    /// Shuts both directions down.
    pub fn shutdown_std(&self) -> io::Result<()> {
        socket2::SockRef::from(self).shutdown(std::net::Shutdown::Both)
    }

    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        socket2::SockRef::from(self).set_nodelay(on)
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            ReadyStream::Tokio(s) => s.local_addr(),
            ReadyStream::Ring(s, _) => s.local_addr(),
        }
    }

    /// Waits until a read would find bytes, EOF or an error. On the ring this is edge-like
    /// (`ring::PollSlot`): read until a short read before waiting again.
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            ReadyStream::Tokio(s) => s.readable().await,
            ReadyStream::Ring(..) => std::future::poll_fn(|cx| self.poll_read_ready(cx)).await,
        }
    }

    /// Polls for read readiness with no future of its own (a channel read by one task).
    pub fn poll_read_ready(
        &self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self {
            ReadyStream::Tokio(s) => s.poll_read_ready(cx),
            ReadyStream::Ring(s, slot) => slot
                .poll_ready(s.as_raw_fd(), libc::POLLIN, cx)
                .map(|r| r.map(|_| ())),
        }
    }

    /// Waits until a write would take bytes (or fail).
    pub async fn writable(&self) -> io::Result<()> {
        match self {
            ReadyStream::Tokio(s) => s.writable().await,
            ReadyStream::Ring(s, _) => super::ring::poll(s.as_raw_fd(), libc::POLLOUT)
                .await
                .map(|_| ()),
        }
    }

    /// Runs the non-blocking call `op`; on tokio under its readiness for `interest`, cleared
    /// when `drained` says the call emptied or filled the socket (`rt::io_clearing`).
    pub fn io<R>(
        &self,
        interest: Interest,
        op: impl FnOnce() -> io::Result<R>,
        drained: impl FnOnce(&R) -> bool,
    ) -> io::Result<R> {
        match self {
            ReadyStream::Tokio(s) => super::io_clearing(s, interest, op, drained),
            ReadyStream::Ring(_, slot) => {
                let done = op();
                if interest == Interest::READABLE {
                    let empty = match &done {
                        Ok(value) => drained(value),
                        Err(e) => e.kind() == io::ErrorKind::WouldBlock,
                    };
                    if empty {
                        slot.drained();
                    }
                }
                done
            }
        }
    }

    /// One read into `buf`'s spare capacity (appended), after readiness.
    pub fn read_spare(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
        let room = buf.capacity() - buf.len();
        let fd = self.as_raw_fd();
        self.io(
            Interest::READABLE,
            || super::io::read_spare(&Fd(fd), buf),
            |&n| n > 0 && n < room,
        )
    }

    /// Writes all of `data`, waiting for room as needed (the first send without waiting).
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        let socket = match self {
            ReadyStream::Tokio(s) => return super::write_all(s, data).await,
            ReadyStream::Ring(s, _) => s,
        };
        let sent = super::send_nonblocking(socket, data)?;
        data = &data[sent..];
        while !data.is_empty() {
            // A ring poll sees the socket as it is when armed: nothing stale to clear.
            super::ring::poll(socket.as_raw_fd(), libc::POLLOUT).await?;
            data = &data[super::send_nonblocking(socket, data)?..];
        }
        Ok(())
    }
}

impl AsRawFd for ReadyStream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            ReadyStream::Tokio(s) => s.as_raw_fd(),
            ReadyStream::Ring(s, _) => s.as_raw_fd(),
        }
    }
}

impl AsFd for ReadyStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            ReadyStream::Tokio(s) => s.as_fd(),
            ReadyStream::Ring(s, _) => s.as_fd(),
        }
    }
}

/// A borrowed descriptor for the raw calls.
struct Fd(RawFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}
