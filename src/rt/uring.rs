//! The io_uring backend: the only module that names tokio-uring.
//!
//! It probes whether io_uring can be used, runs a worker's runtime, accepts on io_uring, and pumps
//! session bytes with owned buffers. tokio-uring's rules are kept here: an in-flight read or
//! accept is never dropped to cancel it (a timeout would lose its bytes or leak the accepted fd);
//! to end a session early the sockets are shut down, which completes every read in flight, and
//! every socket is shut down before it is dropped.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;

use io_uring::opcode;
use tokio_uring::buf::BoundedBuf;

/// Opcodes ringtun's use of tokio-uring submits (cancel is used when ops are dropped at exit).
const OPCODES_USED: [(&str, u8); 5] = [
    ("accept", opcode::Accept::CODE),
    ("read", opcode::Read::CODE),
    ("write", opcode::Write::CODE),
    ("close", opcode::Close::CODE),
    ("async_cancel", opcode::AsyncCancel::CODE),
];

/// Checks that io_uring can be used here: the sysctl, ring creation, and every opcode used.
/// The error says why not.
///
/// The probe ring is created and torn down on a short-lived thread: the kernel finishes a ring's
/// teardown with task work on the creating thread, which would interrupt (EINTR) that thread's
/// next blocking system call.
pub fn probe() -> Result<(), String> {
    std::thread::Builder::new()
        .name("ringtun-uring-probe".into())
        .spawn(probe_here)
        .map_err(|e| format!("cannot start the io_uring probe thread: {e}"))?
        .join()
        .unwrap_or_else(|_| Err("the io_uring probe panicked".into()))
}

fn probe_here() -> Result<(), String> {
    if let Ok(value) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        if value.trim() == "2" {
            return Err("io_uring is disabled by sysctl kernel.io_uring_disabled=2".into());
        }
    }
    let ring = io_uring::IoUring::new(8).map_err(|e| match e.raw_os_error() {
        Some(libc::EPERM) => format!(
            "io_uring_setup is not permitted ({e}); a seccomp profile (Docker's default) or kernel.io_uring_disabled blocks it"
        ),
        Some(libc::ENOSYS) => format!("this kernel has no io_uring ({e})"),
        _ => format!("cannot create an io_uring instance: {e}"),
    })?;
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

/// Builds an io_uring runtime with `entries` submission queue entries.
pub fn runtime(entries: u32) -> io::Result<tokio_uring::Runtime> {
    tokio_uring::Runtime::new(tokio_uring::builder().entries(entries))
}

/// Runs `future` on `runtime`; spawned local tasks run on the same ring.
pub fn block_on<F: Future>(runtime: &tokio_uring::Runtime, future: F) -> F::Output {
    runtime.block_on(future)
}

/// A listener accepting on io_uring.
pub struct Listener(tokio_uring::net::TcpListener);

impl Listener {
    /// Adopts a bound listener. io_uring waits for connections itself, so the socket is put
    /// back in blocking mode.
    pub fn from_std(listener: std::net::TcpListener) -> io::Result<Self> {
        listener.set_nonblocking(false)?;
        Ok(Self(tokio_uring::net::TcpListener::from_std(listener)))
    }

    /// Accepts one connection. Never race this future: dropping it in flight leaks the fd.
    pub async fn accept(&self) -> io::Result<(Stream, SocketAddr)> {
        let (stream, peer) = self.0.accept().await?;
        Ok((Stream(stream), peer))
    }
}

/// A TCP stream doing its I/O on io_uring.
pub struct Stream(tokio_uring::net::TcpStream);

impl Stream {
    /// Adopts a connected socket (put in blocking mode: io_uring does the waiting).
    pub fn from_std(stream: std::net::TcpStream) -> io::Result<Self> {
        stream.set_nonblocking(false)?;
        Ok(Self(tokio_uring::net::TcpStream::from_std(stream)))
    }

    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.0.set_nodelay(on)
    }

    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.0.shutdown(how)
    }

    /// Writes all of `data` (owned buffer, returned).
    pub async fn write_all(&self, data: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        self.0.write_all(data).await
    }
}

/// A read that fills a small buffer moves the direction to a large one; a read that returns
/// less than a small buffer moves it back. Idle directions thus park only a small read.
pub const SMALL_BUFFER_BYTES: usize = 512;
/// Buffers kept for reuse per worker and size.
const POOL_KEEP: usize = 32;

/// A worker's recycled owned buffers, and its pipes when busy directions splice.
#[derive(Clone)]
pub struct Buffers {
    large_bytes: usize,
    small: Rc<RefCell<Vec<Vec<u8>>>>,
    large: Rc<RefCell<Vec<Vec<u8>>>>,
    pipes: Option<crate::dataplane::splice::PipePool>,
}

impl Buffers {
    /// Pools with large buffers of `large_bytes`.
    pub fn new(large_bytes: usize) -> Self {
        Self {
            large_bytes: large_bytes.max(SMALL_BUFFER_BYTES * 2),
            small: Rc::default(),
            large: Rc::default(),
            pipes: None,
        }
    }

    /// These buffers, with busy plaintext directions splicing through pipes of `pipe_bytes`
    /// (0: never).
    pub fn with_splice(mut self, pipe_bytes: usize) -> Self {
        self.pipes = (pipe_bytes > 0).then(|| crate::dataplane::splice::PipePool::new(pipe_bytes));
        self
    }

    fn take(&self, large: bool) -> Vec<u8> {
        let (pool, size) = if large {
            (&self.large, self.large_bytes)
        } else {
            (&self.small, SMALL_BUFFER_BYTES)
        };
        pool.borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(size))
    }

    /// Large buffers waiting in the pool.
    #[cfg(test)]
    pub(crate) fn large_free(&self) -> usize {
        self.large.borrow().len()
    }

    fn give(&self, mut buf: Vec<u8>) {
        buf.clear();
        let pool = if buf.capacity() >= self.large_bytes {
            &self.large
        } else {
            &self.small
        };
        let mut pool = pool.borrow_mut();
        if pool.len() < POOL_KEEP {
            pool.push(buf);
        }
    }
}

/// Writes what the socket takes now without waiting; returns how many bytes. Each direction
/// writes only after its previous write completed, so no ring write is in flight on `to`.
fn send_now(to: &Stream, data: &[u8]) -> io::Result<usize> {
    crate::rt::send_nonblocking(&to.0, data)
}

/// Pumps both ways until both directions saw EOF or either failed; returns bytes moved
/// (a→b, b→a). On an error both sockets are shut down so the other direction's read completes.
pub async fn pump(
    a: &Stream,
    b: &Stream,
    prefix_to_a: Vec<u8>,
    prefix_to_b: Vec<u8>,
    buffers: &Buffers,
) -> io::Result<(u64, u64)> {
    let (x, y) = tokio::join!(
        one_way(a, b, prefix_to_b, buffers),
        one_way(b, a, prefix_to_a, buffers)
    );
    Ok((x?, y?))
}

async fn one_way(
    from: &Stream,
    to: &Stream,
    prefix: Vec<u8>,
    buffers: &Buffers,
) -> io::Result<u64> {
    let fail = |e: io::Error| {
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
        e
    };
    let mut total = 0u64;
    if !prefix.is_empty() {
        let len = prefix.len() as u64;
        let (written, _) = to.write_all(prefix).await;
        written.map_err(fail)?;
        total += len;
    }
    let mut buf = buffers.take(false);
    loop {
        buf.clear();
        let (read, b) = from.0.read(buf).await;
        buf = b;
        let n = match read {
            Ok(n) => n,
            Err(e) => {
                buffers.give(buf);
                return Err(fail(e));
            }
        };
        if n == 0 {
            buffers.give(buf);
            return match to.shutdown(Shutdown::Write) {
                Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(fail(e)),
                _ => Ok(total),
            };
        }
        let capacity = buf.capacity();
        // Most writes complete at once (the peer's receive window is open): one non-blocking
        // send(2) saves a ring submission and completion per hop. What it cannot write goes
        // through the ring.
        let sent = match send_now(to, &buf) {
            Ok(sent) => sent,
            Err(e) => {
                buffers.give(buf);
                return Err(fail(e));
            }
        };
        if sent < n {
            let (written, slice) = to.0.write_all(buf.slice(sent..n)).await;
            buf = slice.into_inner();
            if let Err(e) = written {
                buffers.give(buf);
                return Err(fail(e));
            }
        }
        total += n as u64;
        if n == capacity && capacity >= buffers.large_bytes {
            // A full large read: the direction is busy. Splice what is already queued, then go
            // back to a ring read (which also sees EOF).
            if let Some(pipes) = &buffers.pipes {
                match splice_queued(from, to, pipes).await {
                    Ok(Some(moved)) => {
                        total += moved;
                        // The socket is empty now, so the next read waits: park a small buffer
                        // (a burst fills it and moves the direction back to a large one), so a
                        // session that goes quiet after bulk pins no large buffer.
                        buffers.give(std::mem::replace(&mut buf, buffers.take(false)));
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        buffers.give(buf);
                        return Err(fail(e));
                    }
                }
            }
        }
        if n == capacity && capacity < buffers.large_bytes {
            buffers.give(std::mem::replace(&mut buf, buffers.take(true)));
        } else if capacity >= buffers.large_bytes
            && (n < SMALL_BUFFER_BYTES || buffers.pipes.is_some())
        {
            // Back to a small buffer for the wait. With splice on, any short read does it: the
            // socket is empty, and a burst's bulk goes through the pipe, not this buffer.
            buffers.give(std::mem::replace(&mut buf, buffers.take(false)));
        }
    }
}

/// Splices `from` → `to` while `from` has bytes queued, through a pooled pipe; returns the bytes
/// moved, with `from` empty. Nothing here waits for `from` (see `uring_splice`). Without a pipe or
/// a splice ring it moves nothing and returns `None`: the pump copies on.
async fn splice_queued(
    from: &Stream,
    to: &Stream,
    pipes: &crate::dataplane::splice::PipePool,
) -> io::Result<Option<u64>> {
    use super::uring_splice::SpliceRing;
    use super::{readable_bytes, splice_nonblocking};
    use std::os::fd::AsRawFd;
    // Without a splice ring (logged once per worker when it could not be made) it copies.
    let Ok(ring) = SpliceRing::get() else {
        return Ok(None);
    };
    let pipe = match pipes.take() {
        Ok(p) => p,
        Err(e) => {
            crate::log_limited!(
                warn!(error = %e, "cannot open a pipe for splice (out of descriptors?); this session direction copies instead")
            );
            return Ok(None);
        }
    };
    let (from_fd, to_fd) = (from.0.as_raw_fd(), to.0.as_raw_fd());
    let mut moved = 0u64;
    loop {
        let queued = readable_bytes(from_fd)?.min(pipe.capacity_bytes());
        if queued == 0 {
            break;
        }
        // The socket holds `queued` bytes, so this cannot wait even in blocking mode.
        let n = splice_nonblocking(from_fd, pipe.write_fd(), queued)?;
        if n == 0 {
            break;
        }
        let mut left = n;
        while left > 0 {
            let len = u32::try_from(left).unwrap_or(u32::MAX);
            match ring.splice(pipe.read_fd(), to_fd, len).await? {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                m => left -= m,
            }
        }
        moved += n as u64;
    }
    // Reached only with the pipe empty (errors return above and drop it).
    pipes.give(pipe);
    Ok(Some(moved))
}

impl crate::dataplane::pump::OwnedIo for Stream {
    async fn read_owned(&self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        buf.clear();
        self.0.read(buf).await
    }

    async fn write_owned(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let n = buf.len();
        // Callers serialise writes to one socket, so no ring write is in flight on it here.
        let sent = match send_now(self, &buf) {
            Ok(sent) => sent,
            Err(e) => return (Err(e), buf),
        };
        if sent == n {
            return (Ok(()), buf);
        }
        let (written, slice) = self.0.write_all(buf.slice(sent..n)).await;
        (written, slice.into_inner())
    }

    fn shutdown_how(&self, how: Shutdown) -> io::Result<()> {
        self.0.shutdown(how)
    }
}
