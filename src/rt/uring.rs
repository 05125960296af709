//! The io_uring backend: the only module that names tokio-uring.
//!
//! It probes whether io_uring can be used, runs a worker's runtime, and offers accept and
//! owned-buffer stream operations on io_uring; the session pump over them is
//! `dataplane::pump::uring`. tokio-uring's rules are kept here: an in-flight read or
//! accept is never dropped to cancel it (a timeout would lose its bytes or leak the accepted fd);
//! to end a session early the sockets are shut down, which completes every read in flight, and
//! every socket is shut down before it is dropped.

use std::future::Future;
use std::io;
use std::net::{Shutdown, SocketAddr};

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

    /// Reads into `buf`'s capacity (its contents are replaced); 0 means EOF. Never race this
    /// future: dropping it in flight loses the bytes it reads.
    pub async fn read(&self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        buf.clear();
        self.0.read(buf).await
    }

    /// Writes `buf[from..]` through the ring (the part a non-blocking send could not take);
    /// callers pass `from < buf.len()`. The future is the ring write itself, nothing more, so a
    /// session's pump future stays small.
    pub fn write_rest(
        &self,
        buf: Vec<u8>,
        from: usize,
    ) -> WriteRest<impl Future<Output = (io::Result<()>, tokio_uring::buf::Slice<Vec<u8>>)> + '_>
    {
        let len = buf.len();
        WriteRest(self.0.write_all(buf.slice(from.min(len)..len)))
    }

    /// Writes what the socket takes now without waiting; returns how many bytes. Callers
    /// serialise writes to one socket, so no ring write is in flight on it meanwhile.
    pub fn send_now(&self, data: &[u8]) -> io::Result<usize> {
        super::send_nonblocking(&self.0, data)
    }
}

/// The future of `Stream::write_rest`: the ring write, giving the whole buffer back.
pub struct WriteRest<F>(F);

impl<F> Future for WriteRest<F>
where
    F: Future<Output = (io::Result<()>, tokio_uring::buf::Slice<Vec<u8>>)>,
{
    type Output = (io::Result<()>, Vec<u8>);

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        // SAFETY: the inner future is never moved out of the pinned wrapper.
        let inner = unsafe { self.map_unchecked_mut(|w| &mut w.0) };
        inner
            .poll(cx)
            .map(|(written, slice)| (written, slice.into_inner()))
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

    fn shutdown_how(&self, how: Shutdown) -> io::Result<()> {
        self.0.shutdown(how)
    }
}
