//! A connected socket adopted on whichever backend the worker runs.
//!
//! Adoption (`from_std`, `from_tokio`) and the shutdown that must precede a drop where an
//! io_uring operation may be in flight live here, so code above the seam never matches on the
//! backend for them. This module must not know about sessions.

use std::io;
use std::net::Shutdown;

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

    /// Moves a tokio (epoll) socket to `backend`.
    pub fn from_tokio(backend: super::Backend, stream: TcpStream) -> io::Result<Self> {
        match backend {
            super::Backend::Epoll => Ok(Conn::Epoll(stream)),
            super::Backend::Uring { .. } => Self::from_std(backend, stream.into_std()?),
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
