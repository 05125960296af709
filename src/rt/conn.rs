//! A connected socket adopted on whichever backend the worker runs.
//!
//! Adoption (`from_std`, `from_tokio`) and the shutdown that must precede a drop where an
//! io_uring operation may be in flight live here, so code above the seam never matches on the
//! backend for them; so does `ready_view`, a readiness-driven view for reading what precedes a
//! session without any io_uring operation (so that read may be dropped, e.g. by a timeout).
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

    /// A tokio view of this socket for non-blocking reads on readiness (`readable`,
    /// `try_read`): no io_uring operation is involved, so its futures may be dropped at any
    /// point. On io_uring it is a duplicate descriptor, in non-blocking mode while the view
    /// lives; the socket is back in blocking mode when it is dropped. Use it only while no ring
    /// operation is in flight on this socket.
    pub fn ready_view(&self) -> io::Result<ReadyView<'_>> {
        match self {
            Conn::Epoll(s) => Ok(ReadyView::Borrowed(s)),
            Conn::Uring(s) => {
                let fd = s.as_raw_fd();
                // Built first, so that its drop restores blocking mode on every path below.
                let mut view = ReadyView::Dup { stream: None, fd };
                // SAFETY: the fd belongs to `s`, which outlives this borrow.
                let dup = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()?;
                let std = std::net::TcpStream::from(dup);
                // The file status flags are shared with `s`'s descriptor.
                std.set_nonblocking(true)?;
                if let ReadyView::Dup { stream, .. } = &mut view {
                    *stream = Some(TcpStream::from_std(std)?);
                }
                Ok(view)
            }
        }
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

/// See [`Conn::ready_view`].
pub enum ReadyView<'a> {
    Borrowed(&'a TcpStream),
    Dup {
        stream: Option<TcpStream>,
        /// The io_uring socket's own descriptor, put back in blocking mode on drop.
        fd: RawFd,
    },
}

impl ReadyView<'_> {
    /// The tokio socket to read from.
    pub fn stream(&self) -> io::Result<&TcpStream> {
        match self {
            ReadyView::Borrowed(s) => Ok(s),
            ReadyView::Dup { stream, .. } => stream
                .as_ref()
                .ok_or_else(|| io::Error::other("socket view not set up")),
        }
    }
}

impl Drop for ReadyView<'_> {
    fn drop(&mut self) {
        if let ReadyView::Dup { stream, fd } = self {
            // Deregisters and closes the duplicate; the socket itself stays open.
            drop(stream.take());
            // SAFETY: `fd` belongs to the io_uring socket this view borrows, still open.
            let fd = unsafe { BorrowedFd::borrow_raw(*fd) };
            let _ = socket2::SockRef::from(&fd).set_nonblocking(false);
        }
    }
}
