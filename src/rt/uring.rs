//! The io_uring backend: the probe, a worker's ring runtime (`rt::ring`), and accept and
//! owned-buffer stream operations on it; the session pump over them is `dataplane::pump::uring`.
//!
//! Every operation here may be dropped in flight (the ring runtime cancels it and keeps its
//! buffer until the kernel is done), but a dropped read may have taken bytes with it: to end a
//! session early its sockets are shut down, which completes every read in flight, and a socket
//! that must stay usable (a data connection going back to its pool) waits by readiness instead.

use std::future::Future;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;

use io_uring::opcode;

use super::ring;

/// Opcodes the ring runtime submits.
const OPCODES_USED: [(&str, u8); 6] = [
    ("accept", opcode::Accept::CODE),
    ("recv", opcode::Recv::CODE),
    ("send", opcode::Send::CODE),
    ("read", opcode::Read::CODE),
    ("poll_add", opcode::PollAdd::CODE),
    ("async_cancel", opcode::AsyncCancel::CODE),
];

/// Checks that io_uring can be used here: the sysctl, ring creation, and every opcode used.
/// The error says why not.
pub fn probe() -> Result<(), String> {
    probe_with(8)
}

/// [`probe`] with a ring of `entries` submission entries, the size a worker's ring will have
/// (where the kernel charges rings to `RLIMIT_MEMLOCK`, before 5.12, a worker-sized ring may
/// fail where a small one does not).
///
/// The probe ring is created and torn down on a short-lived thread: the kernel finishes a ring's
/// teardown with task work on the creating thread, which would interrupt (EINTR) that thread's
/// next blocking system call.
pub fn probe_with(entries: u32) -> Result<(), String> {
    std::thread::Builder::new()
        .name("ringtun-uring-probe".into())
        .spawn(move || probe_here(entries))
        .map_err(|e| format!("cannot start the io_uring probe thread: {e}"))?
        .join()
        .unwrap_or_else(|_| Err("the io_uring probe panicked".into()))
}

fn probe_here(entries: u32) -> Result<(), String> {
    if let Ok(value) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        if value.trim() == "2" {
            return Err("io_uring is disabled by sysctl kernel.io_uring_disabled=2".into());
        }
    }
    let ring = io_uring::IoUring::new(entries).map_err(|e| match e.raw_os_error() {
        Some(libc::EPERM) => format!(
            "io_uring_setup is not permitted ({e}); a seccomp profile (Docker's default) or kernel.io_uring_disabled blocks it"
        ),
        Some(libc::ENOSYS) => format!("this kernel has no io_uring ({e})"),
        _ => format!("cannot create an io_uring instance: {e}"),
    })?;
    if !ring.params().is_feature_ext_arg() {
        return Err(
            "this kernel's io_uring cannot wait with a timeout (IORING_FEAT_EXT_ARG, Linux 5.11)"
                .into(),
        );
    }
    let mut probe = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("cannot probe io_uring opcodes: {e}"))?;
    for (name, code) in OPCODES_USED {
        if !probe.is_supported(code) {
            return Err(format!(
                "io_uring opcode {name} is not supported by this kernel"
            ));
        }
    }
    Ok(())
}

/// Builds this thread's ring runtime with `entries` submission queue entries.
pub fn runtime(entries: u32) -> io::Result<ring::Runtime> {
    ring::Runtime::new(entries)
}

/// Runs `future` on `runtime`; spawned local tasks run on the same ring.
pub fn block_on<F: Future>(runtime: ring::Runtime, future: F) -> F::Output {
    runtime.block_on(future)
}

/// A listener accepting on io_uring with one multishot accept.
pub struct Listener {
    /// Declared first: cancelled before the listener closes.
    accepts: ring::MultiAccept,
    _socket: std::net::TcpListener,
}

impl Listener {
    /// Adopts a bound listener. io_uring waits for connections itself, so the socket is put
    /// back in blocking mode.
    pub fn from_std(listener: std::net::TcpListener) -> io::Result<Self> {
        listener.set_nonblocking(false)?;
        Ok(Self {
            accepts: ring::MultiAccept::new(listener.as_raw_fd()),
            _socket: listener,
        })
    }

    /// Accepts one connection (connections accepted for a dropped listener are closed).
    pub async fn accept(&self) -> io::Result<(Stream, SocketAddr)> {
        loop {
            let stream = std::net::TcpStream::from(self.accepts.next().await?);
            // A multishot accept returns no address. A client already gone has none either: it
            // is closed here, not counted as an accept failure.
            if let Ok(peer) = stream.peer_addr() {
                return Ok((Stream(stream), peer));
            }
        }
    }
}

/// A TCP stream doing its I/O on io_uring.
pub struct Stream(std::net::TcpStream);

impl Stream {
    /// Adopts a connected socket (put in blocking mode: io_uring does the waiting, and
    /// `rt::uring_splice` relies on it).
    pub fn from_std(stream: std::net::TcpStream) -> io::Result<Self> {
        stream.set_nonblocking(false)?;
        Ok(Self(stream))
    }

    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.0.set_nodelay(on)
    }

    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.0.shutdown(how)
    }

    /// Writes all of `data` (owned buffer, returned).
    pub async fn write_all(&self, data: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        ring::send_all(self.0.as_raw_fd(), data, 0).await
    }

    /// Reads into `buf`'s capacity (its contents are replaced); 0 means EOF. A dropped read may
    /// have taken bytes with it.
    pub async fn read(&self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        ring::recv(self.0.as_raw_fd(), buf).await
    }

    /// Writes `buf[from..]` through the ring (the part a non-blocking send could not take);
    /// gives the whole buffer back.
    pub async fn write_rest(&self, buf: Vec<u8>, from: usize) -> (io::Result<()>, Vec<u8>) {
        ring::send_all(self.0.as_raw_fd(), buf, from).await
    }

    /// Writes what the socket takes now without waiting; returns how many bytes. Callers
    /// serialise writes to one socket, so no ring write is in flight on it meanwhile.
    pub fn send_now(&self, data: &[u8]) -> io::Result<usize> {
        super::send_nonblocking(&self.0, data)
    }

    /// The socket itself (to move it to another owner once no operation is in flight).
    pub fn into_std(self) -> std::net::TcpStream {
        self.0
    }
}

impl std::os::fd::AsRawFd for Stream {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

impl super::OwnedIo for Stream {
    async fn read_owned(&self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        self.read(buf).await
    }

    async fn wait_readable(&self) -> io::Result<bool> {
        Ok(false)
    }

    async fn write_owned(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        // Callers serialise writes to one socket, so no ring write is in flight on it here.
        let sent = match self.send_now(&buf) {
            Ok(sent) => sent,
            Err(e) => return (Err(e), buf),
        };
        if sent == buf.len() {
            return (Ok(()), buf);
        }
        self.write_rest(buf, sent).await
    }

    fn read_now(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
        super::io::read_spare(&self.0, buf)
    }

    async fn read_provided(&self) -> Option<io::Result<ring::Provided>> {
        ring::recv_provided(self.0.as_raw_fd()).await
    }

    fn shutdown_how(&self, how: Shutdown) -> io::Result<()> {
        self.0.shutdown(how)
    }
}
