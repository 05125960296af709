//! TCP liveness of sockets: keepalive on session sockets, keepalive and `TCP_USER_TIMEOUT` on
//! tunnel connections, and how long a socket has carried no data (from the kernel's `TCP_INFO`,
//! so no pump has to count anything for a session's idle timeout).
//!
//! Setting an option is best effort (a socket that refuses one still works). This module must
//! not know about sessions or clusters: callers decide what a socket is.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use crate::config::defaults as d;

fn sock(fd: RawFd) -> BorrowedFd<'static> {
    // SAFETY: only used for the duration of one setsockopt by callers that own `fd` and keep it
    // open across the call; the 'static lifetime never escapes the functions below.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// TCP keepalive of a frontend or backend socket (`SESSION_KEEPALIVE_*`): a peer that vanished
/// without FIN or RST is found.
pub fn set_session_keepalive(fd: &impl AsRawFd) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(d::SESSION_KEEPALIVE_IDLE_SECS))
        .with_interval(Duration::from_secs(d::SESSION_KEEPALIVE_INTERVAL_SECS))
        .with_retries(d::SESSION_KEEPALIVE_RETRIES);
    let _ = socket2::SockRef::from(&sock(fd.as_raw_fd())).set_tcp_keepalive(&ka);
}

/// TCP keepalive (`TUNNEL_KEEPALIVE_*`) and `TCP_USER_TIMEOUT` (`TUNNEL_USER_TIMEOUT_MS`) of a
/// tunnel connection, on either end: a black-holed peer's connections, idle or carrying a
/// session, are closed by the kernel within about a minute.
pub fn set_tunnel_liveness(fd: &impl AsRawFd) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(d::TUNNEL_KEEPALIVE_IDLE_SECS))
        .with_interval(Duration::from_secs(d::TUNNEL_KEEPALIVE_INTERVAL_SECS))
        .with_retries(d::TUNNEL_KEEPALIVE_RETRIES);
    let fd = sock(fd.as_raw_fd());
    let s = socket2::SockRef::from(&fd);
    let _ = s.set_tcp_keepalive(&ka);
    let _ = s.set_tcp_user_timeout(Some(Duration::from_millis(d::TUNNEL_USER_TIMEOUT_MS)));
}

/// How long ago the socket last sent or received data, in milliseconds (`TCP_INFO`'s
/// `last_data_sent` / `last_data_recv`; keepalive probes and bare ACKs do not count).
pub fn data_idle_ms(fd: &impl AsRawFd) -> io::Result<u64> {
    // SAFETY: tcp_info is plain old data; all-zero is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is valid for writes of `len` bytes; the kernel writes at most that.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from(
        info.tcpi_last_data_recv.min(info.tcpi_last_data_sent),
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn options_are_set_and_idle_time_restarts_with_data() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        set_tunnel_liveness(&s);
        let r = socket2::SockRef::from(&s);
        assert!(r.keepalive().unwrap());
        assert_eq!(r.keepalive_time().unwrap(), Duration::from_secs(30));
        assert_eq!(
            r.tcp_user_timeout().unwrap(),
            Some(Duration::from_millis(60_000))
        );
        set_session_keepalive(&c);
        let r = socket2::SockRef::from(&c);
        assert!(r.keepalive().unwrap());
        assert_eq!(r.keepalive_time().unwrap(), Duration::from_secs(60));
        assert_eq!(r.keepalive_retries().unwrap(), 6);
        // Time passing is what is measured here (no server is waited for).
        std::thread::sleep(Duration::from_millis(50));
        let before = data_idle_ms(&s).unwrap();
        assert!(before >= 40, "{before} ms");
        c.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        assert!(data_idle_ms(&s).unwrap() < before);
    }

    #[tokio::test]
    async fn accepted_frontends_inherit_session_keepalive_and_nodelay() {
        let std = crate::rt::bind_reuseport("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = std.local_addr().unwrap();
        let (listener, _stop) =
            crate::rt::Listener::from_std(crate::rt::Backend::Epoll, std).unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (conn, _) = listener.accept().await.unwrap();
        let fd = sock(conn.as_raw_fd());
        let r = socket2::SockRef::from(&fd);
        assert!(r.keepalive().unwrap());
        assert_eq!(r.keepalive_time().unwrap(), Duration::from_secs(60));
        assert_eq!(r.keepalive_retries().unwrap(), 6);
        assert!(r.nodelay().unwrap());
    }
}
