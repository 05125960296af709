//! A listener accepting by readiness into plain non-blocking std sockets (the tunnel listener,
//! on the control path).
//!
//! It accepts with `accept4(SOCK_NONBLOCK | SOCK_CLOEXEC)`, so no `fcntl` per connection, and
//! after each connection asks the listener with a zero-timeout `poll(2)` whether another waits:
//! when none does, the readiness is cleared without the `accept4` that would fail with EAGAIN
//! (on Linux that failed call still allocates and frees a socket, an inode and a file). The
//! sockets it returns are registered with no reactor, so a caller that finds its bytes already
//! there never pays an `epoll_ctl` for them.
//!
//! Must not: read from accepted sockets or know about frames and agents.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A bound TCP listener waited on by tokio's readiness.
pub struct ReadyListener {
    fd: AsyncFd<TcpListener>,
}

impl ReadyListener {
    /// Adopts a bound, listening socket (made non-blocking here).
    pub fn from_std(listener: TcpListener) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        // SAFETY: the `AsyncFd` owns the listener, so its fd stays open and the same for the
        // registration's whole life.
        let fd = unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) }?;
        Ok(Self { fd })
    }

    /// The listener's own address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.fd.get_ref().local_addr()
    }

    /// Waits for a connection and accepts it: a non-blocking, close-on-exec socket that
    /// inherits the listener's options, and its peer's address.
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        loop {
            let mut ready = self.fd.readable().await?;
            match accept_nonblocking(ready.get_inner()) {
                Ok(accepted) => {
                    // Cleared only as of the readiness this guard saw: a connection that
                    // arrives after the poll raises a new edge, so none is ever stranded.
                    if !connection_waiting(ready.get_inner()) {
                        ready.clear_ready();
                    }
                    return Ok(accepted);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready.clear_ready(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// One `accept4` that does not wait.
fn accept_nonblocking(listener: &TcpListener) -> io::Result<(TcpStream, SocketAddr)> {
    // SAFETY: `accept4` writes at most `len` bytes of address into the zeroed storage that
    // `try_init` provides, and the listener's fd stays open for the call.
    let (fd, addr) = unsafe {
        socket2::SockAddr::try_init(|storage, len| {
            let fd = libc::accept4(
                listener.as_raw_fd(),
                storage.cast(),
                len,
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            );
            if fd < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(fd)
            }
        })
    }?;
    // SAFETY: `fd` is a connected socket just returned by `accept4`, owned by nobody else.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let peer = addr.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "accepted a connection with a non-IP address",
        )
    })?;
    Ok((stream, peer))
}

/// Whether the listener's accept queue holds another connection now.
fn connection_waiting(listener: &TcpListener) -> bool {
    let mut pollfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, a zero timeout (the call never waits).
    let n = unsafe { libc::poll(&mut pollfd, 1, 0) };
    // On an error, say yes: the next accept then finds out (and clears the readiness).
    n != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn listener() -> (ReadyListener, SocketAddr) {
        let std = crate::rt::bind_tunnel_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = ReadyListener::from_std(std).unwrap();
        let addr = listener.local_addr().unwrap();
        (listener, addr)
    }

    #[tokio::test]
    async fn accepts_every_connection_of_a_burst_then_waits_for_the_next() {
        let (listener, addr) = listener();
        // Each sends a byte: the tunnel listener defers accept until a connection's first bytes.
        let clients: Vec<_> = (0..5)
            .map(|_| {
                let mut c = std::net::TcpStream::connect(addr).unwrap();
                c.write_all(b"x").unwrap();
                c
            })
            .collect();
        let mut peers = Vec::new();
        for _ in 0..5 {
            let (stream, peer) = listener.accept().await.unwrap();
            assert!(crate::rt::io::is_nonblocking(&stream));
            peers.push(peer);
        }
        let mut ours: Vec<_> = clients.iter().map(|c| c.local_addr().unwrap()).collect();
        ours.sort();
        peers.sort();
        assert_eq!(ours, peers);
        // The queue is empty; a later connection still wakes the accept.
        let accept = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.set_nonblocking(false).unwrap();
            let mut b = [0u8; 5];
            s.read_exact(&mut b).unwrap();
            b
        });
        tokio::task::yield_now().await;
        let mut late = std::net::TcpStream::connect(addr).unwrap();
        late.write_all(b"hello").unwrap();
        // A stranded connection fails here instead of hanging the test.
        let accepted = tokio::time::timeout(std::time::Duration::from_secs(10), accept)
            .await
            .expect("the later connection woke the accept");
        assert_eq!(&accepted.unwrap(), b"hello");
    }
}
