//! A UDP socket waiting for readiness the way its thread waits on sockets: on an io_uring worker
//! by a multishot poll on the worker's own ring (`ring::PollSlot`), elsewhere by tokio. So a
//! datagram for a ring worker wakes that worker alone, not the background reactor first.
//!
//! The calls are the non-blocking socket calls; a wait happens only when one would block, and
//! every future here is cancel-safe (datagrams are taken by synchronous calls or not at all),
//! so it may be raced against other branches of a `select!`. Receiving takes two datagrams per
//! `recvmmsg`, so a receive that gets one knows the socket is drained and no call is spent
//! finding it empty. This module must not know what the
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

    /// Waits until a datagram may be waiting (then `recv_now`).
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            ReadyUdp::Tokio(s) => s.readable().await,
            ReadyUdp::Ring(s, slot) => readable(s, slot).await,
        }
    }

    /// Receives what is queued now, without waiting: up to two datagrams per call (the second
    /// into a per-thread buffer as long as `buf`), each handed to `each` with its sender, until
    /// a call receives fewer than two (the socket is drained, told without one more call that
    /// finds nothing) or `each` says stop. Returns how many were handed over, and the error
    /// that ended the receiving, if any (a readiness that found nothing is not one). `each`
    /// must not receive on a `ReadyUdp` itself.
    pub fn recv_now(
        &self,
        buf: &mut [u8],
        mut each: impl FnMut(&[u8], SocketAddr) -> bool,
    ) -> (usize, Option<io::Error>) {
        SECOND.with(|second| {
            let mut second = second.borrow_mut();
            if second.len() < buf.len() {
                second.resize(buf.len(), 0);
            }
            let second = &mut second[..buf.len()];
            let mut handed = 0;
            loop {
                let two = match self.recv_two_now(buf, second) {
                    Ok(two) => two,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (handed, None),
                    Err(e) => return (handed, Some(e)),
                };
                let mut more = true;
                if let Some((n, from)) = two[0] {
                    handed += 1;
                    more &= each(&buf[..n], from);
                }
                match two[1] {
                    Some((n, from)) => {
                        handed += 1;
                        more &= each(&second[..n], from);
                    }
                    None => return (handed, None),
                }
                if !more {
                    return (handed, None);
                }
            }
        })
    }

    /// One two-datagram receive; readiness is cleared when it got fewer than two (as of before
    /// the call on tokio, see `rt::io_clearing`).
    fn recv_two_now(&self, a: &mut [u8], b: &mut [u8]) -> io::Result<[Datagram; 2]> {
        match self {
            ReadyUdp::Tokio(s) => {
                let mut got = None;
                let ran = s.try_io(tokio::io::Interest::READABLE, || {
                    let two = recv_two(s.as_raw_fd(), a, b)?;
                    let drained = two[1].is_none();
                    got = Some(two);
                    if drained {
                        Err(io::ErrorKind::WouldBlock.into())
                    } else {
                        Ok(())
                    }
                });
                match (got, ran) {
                    (Some(two), _) => Ok(two),
                    (None, Err(e)) => Err(e),
                    (None, Ok(())) => Err(io::ErrorKind::WouldBlock.into()),
                }
            }
            ReadyUdp::Ring(s, slot) => {
                let got = recv_two(s.as_raw_fd(), a, b);
                let drained = match &got {
                    Ok(two) => two[1].is_none(),
                    Err(e) => e.kind() == io::ErrorKind::WouldBlock,
                };
                if drained {
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

thread_local! {
    /// The second buffer of a two-datagram receive (`ReadyUdp::recv_now`): one per thread, used
    /// only inside one synchronous call.
    static SECOND: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A received datagram's length and sender.
type Datagram = Option<(usize, SocketAddr)>;

/// One `recvmmsg` of at most two datagrams, into `a` then `b`, without waiting. A datagram
/// longer than its buffer is cut to the buffer's length (so a buffer one byte over the largest
/// datagram allowed tells an oversized one).
fn recv_two(fd: RawFd, a: &mut [u8], b: &mut [u8]) -> io::Result<[Datagram; 2]> {
    // SAFETY: all-zero `sockaddr_storage` and `mmsghdr` are valid values.
    let mut names: [libc::sockaddr_storage; 2] = unsafe { std::mem::zeroed() };
    let mut iov = [
        libc::iovec {
            iov_base: a.as_mut_ptr().cast(),
            iov_len: a.len(),
        },
        libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        },
    ];
    // SAFETY: as above.
    let mut msgs: [libc::mmsghdr; 2] = unsafe { std::mem::zeroed() };
    for ((m, name), iov) in msgs.iter_mut().zip(names.iter_mut()).zip(iov.iter_mut()) {
        m.msg_hdr.msg_name = (name as *mut libc::sockaddr_storage).cast();
        m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: every pointer in `msgs` points into `names`, `iov` and the caller's buffers,
    // which outlive the call; the kernel writes at most the lengths given.
    let n = unsafe {
        libc::recvmmsg(
            fd,
            msgs.as_mut_ptr(),
            2,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = [None, None];
    for (i, slot) in out.iter_mut().enumerate().take(n as usize) {
        // SAFETY: the kernel wrote a socket address of `msg_namelen` bytes into `names[i]`.
        let from = unsafe { socket2::SockAddr::new(names[i], msgs[i].msg_hdr.msg_namelen) }
            .as_socket()
            .ok_or_else(|| io::Error::other("a datagram from a non-IP address"))?;
        *slot = Some((msgs[i].msg_len as usize, from));
    }
    Ok(out)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Three datagrams queued (one over the 8-byte buffer), then one more after a wait: each is
    /// handed over once, in order, the long one cut to the buffer; the socket then waits again.
    async fn receives_in_pairs_until_drained() {
        let socket = ReadyUdp::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let to = socket.local_addr().unwrap();
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for d in [&b"one"[..], b"", b"much too long"] {
            peer.send_to(d, to).unwrap();
        }
        let mut buf = [0u8; 8];
        let mut got: Vec<Vec<u8>> = Vec::new();
        while got.len() < 3 {
            socket.readable().await.unwrap();
            let (n, failed) = socket.recv_now(&mut buf, |d, from| {
                assert_eq!(from, peer.local_addr().unwrap());
                got.push(d.to_vec());
                true
            });
            assert!(failed.is_none());
            assert!(n <= 3);
        }
        assert_eq!(got, [&b"one"[..], b"", b"much too"]);
        // Drained: nothing more is taken until the next datagram.
        assert_eq!(socket.recv_now(&mut buf, |_, _| true).0, 0);
        peer.send_to(b"four", to).unwrap();
        socket.readable().await.unwrap();
        let mut last = Vec::new();
        let (n, _) = socket.recv_now(&mut buf, |d, _| {
            last = d.to_vec();
            true
        });
        assert_eq!((n, &last[..]), (1, &b"four"[..]));
    }

    #[tokio::test]
    async fn tokio_sockets_receive_in_pairs_until_drained() {
        receives_in_pairs_until_drained().await;
    }

    #[test]
    fn ring_sockets_receive_in_pairs_until_drained() {
        if !crate::rt::uring_gate::available_for_test() {
            return;
        }
        super::super::ring::Runtime::new(64)
            .unwrap()
            .block_on(receives_in_pairs_until_drained());
    }
}
