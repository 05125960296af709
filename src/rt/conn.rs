//! A connected socket adopted on whichever backend the worker runs.
//!
//! Adoption (`from_std`, `from_tokio`) and the shutdown that must precede a drop where an
//! io_uring operation may be in flight live here, so code above the seam never matches on the
//! backend for them; so do `readable` and `try_read`, readiness and non-blocking reads of what
//! precedes a session without any io_uring operation in flight (so that read may be dropped,
//! e.g. by a timeout).
//! This module must not know about sessions.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use tokio::net::TcpStream;

/// A session socket on whichever backend the worker runs.
pub enum Conn {
    Epoll(TcpStream),
    Uring(super::uring::Stream),
}

impl Conn {
    /// Adopts a std socket on `backend`.
    pub fn from_std(backend: super::Backend, stream: std::net::TcpStream) -> io::Result<Self> {
        match backend {
            super::Backend::Epoll => {
                stream.set_nonblocking(true)?;
                Ok(Conn::Epoll(TcpStream::from_std(stream)?))
            }
            super::Backend::Uring { .. } => {
                Ok(Conn::Uring(super::uring::Stream::from_std(stream)?))
            }
        }
    }

    /// Moves a readiness socket to `backend`.
    pub fn from_ready(backend: super::Backend, stream: super::ReadyStream) -> io::Result<Self> {
        match (backend, stream) {
            (super::Backend::Epoll, super::ReadyStream::Tokio(s)) => Ok(Conn::Epoll(s)),
            (backend, stream) => Self::from_std(backend, stream.into_std()?),
        }
    }

    /// Moves a tokio (epoll) socket to `backend`.
    pub fn from_tokio(backend: super::Backend, stream: TcpStream) -> io::Result<Self> {
        match backend {
            super::Backend::Epoll => Ok(Conn::Epoll(stream)),
            super::Backend::Uring { .. } => Self::from_std(backend, stream.into_std()?),
        }
    }

    /// The socket's own (local) address: where its peer connected to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Conn::Epoll(s) => s.local_addr(),
            Conn::Uring(s) => {
                // SAFETY: the fd belongs to `s`, which outlives this borrow.
                let fd = unsafe { BorrowedFd::borrow_raw(s.as_raw_fd()) };
                socket2::SockRef::from(&fd)
                    .local_addr()?
                    .as_socket()
                    .ok_or_else(|| io::Error::other("not an IP socket"))
            }
        }
    }

    /// Waits until a read would find bytes, EOF or an error, with no read in flight: tokio's
    /// readiness on epoll, a one-shot poll on the worker's ring on io_uring. Dropping the wait
    /// leaves nothing behind (e.g. a timeout), so it suits what precedes a session; use it
    /// only while no ring operation is in flight on this socket.
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            Conn::Epoll(s) => s.readable().await,
            Conn::Uring(s) => super::ring::poll(s.as_raw_fd(), libc::POLLIN)
                .await
                .map(|_| ()),
        }
    }

    /// One read without waiting (`WouldBlock` when nothing is there), on either backend: a
    /// plain non-blocking call, no ring operation (the io_uring socket stays in blocking mode;
    /// the call alone does not wait).
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Epoll(s) => s.try_read(buf),
            Conn::Uring(s) => super::read_into_slice(s, buf),
        }
    }

    /// `try_read`, and after a short read (the socket is drained) tokio's cached readiness is
    /// cleared too, as its own `poll_read` does: otherwise the next readiness wait would return
    /// at once and a pump would hold a read buffer on an idle socket.
    pub fn try_read_drained(&self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.try_read(buf)?;
        if let (Conn::Epoll(s), true) = (self, n > 0 && n < buf.len()) {
            // Safe on the worker's current-thread runtime: the reactor cannot record newer
            // readiness before this line, and bytes arriving later raise a new edge.
            let _ = s.try_io(tokio::io::Interest::READABLE, || {
                Err::<(), io::Error>(io::ErrorKind::WouldBlock.into())
            });
        }
        Ok(n)
    }

    /// Shuts both directions down (before a drop that might leave an operation in flight).
    pub fn shutdown(&self) {
        let _ = match self {
            Conn::Epoll(s) => socket2::SockRef::from(s).shutdown(Shutdown::Both),
            Conn::Uring(s) => s.shutdown(Shutdown::Both),
        };
    }
}

impl AsRawFd for Conn {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Conn::Epoll(s) => s.as_raw_fd(),
            Conn::Uring(s) => s.as_raw_fd(),
        }
    }
}
