//! A listener accepting on whichever backend the worker runs, and the rule for stopping it.
//!
//! An epoll accept is cancelled by aborting its task; an io_uring loop is ended by shutting the
//! listener down, which completes its multishot accept with an error (the loop then sees its stop
//! flag and ends, dropping the listener, whose accept closes any connection it still held).
//! `AcceptStop` owns that rule, so callers never match on the backend. This module must not know
//! about clusters or sessions.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use super::{uring, Backend, Conn};

/// A listener adopted on a backend.
pub enum Listener {
    Epoll(tokio::net::TcpListener),
    Uring(uring::Listener),
}

impl Listener {
    /// Adopts a bound listener on `backend`; `stop` is how to end the loop accepting on it.
    /// Nagle off and session keepalive are set on the listener, where every accepted socket
    /// inherits them (Linux copies a listener's options into each connection it accepts): no
    /// system call per session for them.
    pub fn from_std(
        backend: Backend,
        listener: std::net::TcpListener,
    ) -> io::Result<(Self, AcceptStop)> {
        let _ = socket2::SockRef::from(&listener).set_nodelay(true);
        super::set_session_keepalive(&listener);
        let fd = listener.as_raw_fd();
        let adopted = match backend {
            Backend::Epoll => Listener::Epoll(tokio::net::TcpListener::from_std(listener)?),
            Backend::Uring { .. } => Listener::Uring(uring::Listener::from_std(listener)?),
        };
        let stop = AcceptStop {
            fd,
            uring: matches!(backend, Backend::Uring { .. }),
        };
        Ok((adopted, stop))
    }

    /// Accepts one connection, with Nagle off and session keepalive on (from the listener).
    pub async fn accept(&self) -> io::Result<(Conn, SocketAddr)> {
        match self {
            Listener::Epoll(l) => {
                let (stream, peer) = l.accept().await?;
                Ok((Conn::Epoll(stream), peer))
            }
            Listener::Uring(l) => {
                let (stream, peer) = l.accept().await?;
                Ok((Conn::Uring(stream), peer))
            }
        }
    }
}

/// How to end the task accepting on one listener.
#[derive(Debug)]
pub struct AcceptStop {
    fd: RawFd,
    uring: bool,
}

impl AcceptStop {
    /// The stop of a loop that waits by readiness on either backend (a UDP frontend's tokio
    /// socket): aborting its task drops no operation in flight.
    pub fn abort() -> Self {
        Self {
            fd: -1,
            uring: false,
        }
    }

    /// Ends `task`, the loop accepting on this listener. The loop must check its own stop flag
    /// after every accept error, and be set to stop before this is called.
    pub fn stop(self, task: crate::rt::JoinHandle<()>) {
        if self.uring {
            // Shutting the listener down completes the accept in flight with an error.
            // SAFETY: the fd belongs to a listener owned by `task`, which is still alive: it
            // exits only after its accept completes and it sees its stop flag.
            unsafe {
                libc::shutdown(self.fd, libc::SHUT_RDWR);
            }
        } else {
            task.abort();
        }
    }
}
