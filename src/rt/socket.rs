//! Listener sockets (socket2) and the non-blocking probe used on idle connections.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};

use socket2::{Domain, Protocol, Socket, Type};

const LISTEN_BACKLOG: i32 = 1024;

/// A listener with SO_REUSEPORT so every worker can hold its own socket on the same port; the
/// kernel spreads new connections across them.
pub fn bind_reuseport(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// A UDP frontend socket of one worker: SO_REUSEPORT (the kernel spreads clients over the
/// workers' sockets by address, so one client's datagrams always reach the same worker),
/// non-blocking, with larger buffers than the default so a burst of datagrams waits in the
/// kernel rather than being lost while the worker is busy.
pub fn bind_udp_reuseport(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    // Best effort: capped by net.core.{r,w}mem_max.
    let _ = socket.set_recv_buffer_size(UDP_SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(UDP_SOCKET_BUFFER_BYTES);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Requested kernel buffer of a UDP socket each way (frontends and the agent's flow sockets).
pub const UDP_SOCKET_BUFFER_BYTES: usize = 1024 * 1024;

/// The tunnel listener: SO_REUSEADDR (a restarted server rebinds at once), no SO_REUSEPORT (two
/// servers must not share agents' port by accident). Nagle off and the tunnel liveness options
/// are set here, on the listener: every accepted tunnel connection inherits them, so a joining
/// agent costs the control thread no system call for them.
pub fn bind_tunnel_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    // Best effort, as on any socket (see `rt::liveness`).
    let _ = socket.set_nodelay(true);
    super::set_tunnel_liveness(&socket);
    // Best effort: without it a connection is accepted before its first bytes, and the join
    // takes the task path (`control::path::join_now`) instead of one read at accept.
    let _ = set_defer_accept(&socket, TUNNEL_DEFER_ACCEPT_SECS);
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// How long the kernel holds a tunnel connection that has sent nothing before queueing it for
/// accept anyway (TCP_DEFER_ACCEPT, whole seconds). Agents and MOSN agents speak first (TLS
/// ClientHello or the init), so a connection is queued when its first bytes arrive and the
/// control thread wakes once per join; a silent one (a port scan, MOSN's aside before it writes)
/// reaches accept about this much later and then gets `handshake_timeout_ms` as before, and
/// holds no handshake slot while it waits in the kernel.
const TUNNEL_DEFER_ACCEPT_SECS: i32 = 1;

fn set_defer_accept(socket: &Socket, secs: i32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: `secs` is a valid c_int for the duration of the call, and the fd is owned by
    // `socket`, which outlives it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&secs as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// What a non-blocking read of an idle connection found.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadPoll {
    /// `n` bytes were read into the buffer.
    Data(usize),
    /// Nothing to read now.
    Empty,
    /// The peer closed its side.
    Closed,
}

/// Reads what is available without waiting (recv with MSG_DONTWAIT), whatever the socket's mode.
/// Idle connections are watched this way so no read is ever left in flight on them.
pub fn poll_readable_nonblocking(stream: &TcpStream, buf: &mut [u8]) -> io::Result<ReadPoll> {
    loop {
        // SAFETY: `buf` is a valid writable region of `buf.len()` bytes for the duration of the
        // call, and the fd is owned by `stream`, which outlives it.
        let n = unsafe {
            libc::recv(
                stream.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n > 0 {
            return Ok(ReadPoll::Data(n as usize));
        }
        if n == 0 {
            return Ok(if buf.is_empty() {
                ReadPoll::Empty
            } else {
                ReadPoll::Closed
            });
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::WouldBlock => return Ok(ReadPoll::Empty),
            io::ErrorKind::Interrupted => continue,
            _ => return Err(err),
        }
    }
}

/// Writes what the socket takes now without waiting (send with MSG_DONTWAIT | MSG_NOSIGNAL),
/// whatever the socket's mode; returns how many bytes, fewer than `data.len()` when its send
/// buffer filled up.
///
/// The pumps write this way first: a write to an open window needs no readiness (tokio's
/// `try_write` refuses without a syscall until its reactor has seen the socket writable once) and
/// no ring submission.
pub fn send_nonblocking(fd: &impl AsRawFd, data: &[u8]) -> io::Result<usize> {
    let mut sent = 0;
    while sent < data.len() {
        let rest = &data[sent..];
        // SAFETY: `rest` is valid for reads of `rest.len()` bytes for the duration of the call,
        // and the fd is owned by `fd`, which outlives it.
        let n = unsafe {
            libc::send(
                fd.as_raw_fd(),
                rest.as_ptr().cast(),
                rest.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n > 0 {
            sent += n as usize;
            continue;
        }
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::WouldBlock => break,
            io::ErrorKind::Interrupted => {}
            _ => return Err(err),
        }
    }
    Ok(sent)
}

/// One splice(2) of up to `len` bytes from `from` to `to` (one of them a pipe) that does not wait
/// on the pipe (SPLICE_F_NONBLOCK). A socket end waits unless it is in non-blocking mode or, when
/// read, holds the bytes asked for (`readable_bytes`).
pub fn splice_nonblocking(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: a system call on descriptors the caller keeps open for its duration, with null
    // offsets (neither end is seekable).
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Bytes waiting in a socket's receive queue (`FIONREAD`).
pub fn readable_bytes(fd: RawFd) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the valid pointer.
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}
