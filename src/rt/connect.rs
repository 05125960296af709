//! Outgoing TCP connections on whichever backend the worker runs: tokio's connect on epoll, a
//! non-blocking connect waited for with a ring poll on an io_uring worker (so a backend connect
//! wakes no other thread). The future may be dropped at any point. This module must not know
//! about sessions.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};

use super::ReadyStream;

/// Connects to the first of `addrs` that accepts; the error is the last address's.
pub async fn connect(addrs: &[SocketAddr]) -> io::Result<ReadyStream> {
    if !super::ring::is_current() {
        return tokio::net::TcpStream::connect(addrs)
            .await
            .map(ReadyStream::Tokio);
    }
    let mut last = None;
    for &addr in addrs {
        match connect_on_ring(addr).await {
            Ok(s) => return Ok(ReadyStream::Ring(s, Default::default())),
            Err(e) => last = Some(e),
        }
    }
    Err(last
        .unwrap_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address to connect to")))
}

async fn connect_on_ring(addr: SocketAddr) -> io::Result<std::net::TcpStream> {
    // Non-blocking from its creation: no fcntl calls per backend connection.
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
            let seen = super::ring::poll(socket.as_raw_fd(), libc::POLLOUT).await?;
            // A failed connect (refused, timed out, reset) raises POLLERR with its error set;
            // writable without it is connected, and needs no SO_ERROR read.
            if seen & (libc::POLLERR | libc::POLLHUP) as u32 != 0 {
                return Err(socket.take_error()?.unwrap_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the connection closed while it was being made",
                    )
                }));
            }
        }
        Err(e) => return Err(e),
    }
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_ring<T>(f: impl std::future::Future<Output = T>) -> T {
        super::super::ring::Runtime::new(64)
            .expect("io_uring is needed for the ring connect tests")
            .block_on(f)
    }

    #[test]
    fn a_ring_connect_reports_a_refusal_and_connects_a_listener() {
        // A port nothing listens on any more: bound, then closed.
        let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let refused = gone.local_addr().unwrap();
        drop(gone);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap();
        let (refusal, connected) = on_ring(async {
            (
                connect_on_ring(refused).await.err(),
                connect_on_ring(open).await.map(|s| s.peer_addr().unwrap()),
            )
        });
        assert_eq!(
            refusal.map(|e| e.kind()),
            Some(io::ErrorKind::ConnectionRefused)
        );
        assert_eq!(connected.unwrap(), open);
    }
}
