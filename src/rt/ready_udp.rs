//! A UDP socket waiting for readiness the way its thread waits on sockets: on an io_uring worker
//! by a multishot poll on the worker's own ring (`ring::PollSlot`), elsewhere by tokio. So a
//! datagram for a ring worker wakes that worker alone, not the background reactor first.
//!
//! The calls are the non-blocking socket calls; a wait happens only when one would block, and
//! every future here is cancel-safe (a datagram is taken by one synchronous call or not at all),
//! so it may be raced against other branches of a `select!`. This module must not know what the
//! socket carries (a frontend's clients, a flow's backend).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

/// A UDP socket on this thread's readiness source.
#[derive(Debug)]
pub enum ReadyUdp {
    Tokio(tokio::net::UdpSocket),
    Ring(std::net::UdpSocket, super::ring::PollSlot),
}

impl ReadyUdp {
    /// A bound std socket as this thread waits on sockets (put in non-blocking mode).
    pub fn from_std(socket: std::net::UdpSocket) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        if super::ring::is_current() {
            Ok(ReadyUdp::Ring(socket, Default::default()))
        } else {
            Ok(ReadyUdp::Tokio(tokio::net::UdpSocket::from_std(socket)?))
        }
    }

    /// A socket bound to `addr`.
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        Self::from_std(std::net::UdpSocket::bind(addr)?)
    }

    /// Sets the one peer `send` and `recv` talk to.
    pub fn connect(&self, peer: SocketAddr) -> io::Result<()> {
        // A UDP connect only records the peer (and picks a route): it never blocks.
        match self {
            ReadyUdp::Tokio(s) => socket2::SockRef::from(s).connect(&peer.into()),
            ReadyUdp::Ring(s, _) => s.connect(peer),
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            ReadyUdp::Tokio(s) => s.local_addr(),
            ReadyUdp::Ring(s, _) => s.local_addr(),
        }
    }

    /// Receives one datagram and its sender.
    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        match self {
            ReadyUdp::Tokio(s) => s.recv_from(buf).await,
            ReadyUdp::Ring(s, slot) => loop {
                readable(s, slot).await?;
                match s.recv_from(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => slot.drained(),
                    done => return done,
                }
            },
        }
    }

    /// Receives one datagram from the connected peer.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ReadyUdp::Tokio(s) => s.recv(buf).await,
            ReadyUdp::Ring(s, slot) => loop {
                readable(s, slot).await?;
                match s.recv(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => slot.drained(),
                    done => return done,
                }
            },
        }
    }

    /// Receives one datagram from the connected peer if one is waiting (`WouldBlock` if not).
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ReadyUdp::Tokio(s) => s.try_recv(buf),
            ReadyUdp::Ring(s, slot) => {
                let got = s.recv(buf);
                if matches!(&got, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
                    slot.drained();
                }
                got
            }
        }
    }

    /// Sends one datagram to `to`.
    pub async fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        match self {
            ReadyUdp::Tokio(s) => s.send_to(buf, to).await,
            ReadyUdp::Ring(s, _) => loop {
                match s.send_to(buf, to) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => writable(s).await?,
                    done => return done,
                }
            },
        }
    }

    /// Sends one datagram to the connected peer.
    pub async fn send(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            ReadyUdp::Tokio(s) => s.send(buf).await,
            ReadyUdp::Ring(s, _) => loop {
                match s.send(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => writable(s).await?,
                    done => return done,
                }
            },
        }
    }
}

/// Ready at once while readiness seen before is not used up (a datagram may be waiting), else
/// once the socket is readable.
async fn readable(s: &std::net::UdpSocket, slot: &super::ring::PollSlot) -> io::Result<()> {
    let fd = s.as_raw_fd();
    std::future::poll_fn(|cx| slot.poll_ready(fd, libc::POLLIN, cx))
        .await
        .map(|_| ())
}

/// Once a send would take a datagram again (its buffer had no room).
async fn writable(s: &std::net::UdpSocket) -> io::Result<()> {
    // A one-shot poll sees the socket as it is when armed: nothing stale to clear.
    super::ring::poll(s.as_raw_fd(), libc::POLLOUT)
        .await
        .map(|_| ())
}

impl AsRawFd for ReadyUdp {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            ReadyUdp::Tokio(s) => s.as_raw_fd(),
            ReadyUdp::Ring(s, _) => s.as_raw_fd(),
        }
    }
}

impl AsFd for ReadyUdp {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            ReadyUdp::Tokio(s) => s.as_fd(),
            ReadyUdp::Ring(s, _) => s.as_fd(),
        }
    }
}
