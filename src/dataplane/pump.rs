//! Moving session bytes both ways between two sockets (epoll backend).
//!
//! Each direction waits for readiness *without* a buffer, takes one from the worker's pool only
//! while bytes are flowing, and returns it when the socket runs dry: an idle session holds no
//! buffer at all, a busy one reads and writes the same buffer with no copy in between. A read EOF
//! becomes a write shutdown on the other socket (half-close); an error on either side ends both.

use std::cell::RefCell;
use std::io;
use std::net::Shutdown;
use std::rc::Rc;

use tokio::io::Interest;
use tokio::net::TcpStream;

/// Size of one pump buffer.
pub const PUMP_BUFFER_BYTES: usize = 64 * 1024;
/// Buffers kept for reuse per worker; more are freed when returned.
const POOL_KEEP: usize = 256;

/// A worker's recycled pump buffers.
#[derive(Clone)]
pub struct BufferPool {
    buffer_bytes: usize,
    free: Rc<RefCell<Vec<Box<[u8]>>>>,
}

impl Default for BufferPool {
    fn default() -> Self {
        Self::new(PUMP_BUFFER_BYTES)
    }
}

impl BufferPool {
    /// A pool of buffers of `buffer_bytes` each.
    pub fn new(buffer_bytes: usize) -> Self {
        Self {
            buffer_bytes,
            free: Rc::default(),
        }
    }

    fn take(&self) -> Box<[u8]> {
        self.free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| vec![0u8; self.buffer_bytes].into_boxed_slice())
    }

    fn give(&self, buf: Box<[u8]>) {
        let mut free = self.free.borrow_mut();
        if free.len() < POOL_KEEP {
            free.push(buf);
        }
    }
}

/// Bytes moved by a finished pump.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    pub a_to_b: u64,
    pub b_to_a: u64,
}

/// Pumps until both directions have seen EOF, or either fails. `prefix_to_a` / `prefix_to_b` are
/// bytes already read that must be delivered first.
pub async fn pump(
    a: &TcpStream,
    b: &TcpStream,
    prefix_to_a: &[u8],
    prefix_to_b: &[u8],
    pool: &BufferPool,
) -> io::Result<Moved> {
    let a_to_b = one_way(a, b, prefix_to_b, pool);
    let b_to_a = one_way(b, a, prefix_to_a, pool);
    let (x, y) = tokio::try_join!(a_to_b, b_to_a)?;
    Ok(Moved {
        a_to_b: x,
        b_to_a: y,
    })
}

async fn one_way(
    from: &TcpStream,
    to: &TcpStream,
    prefix: &[u8],
    pool: &BufferPool,
) -> io::Result<u64> {
    let mut total = 0u64;
    if !prefix.is_empty() {
        write_all(to, prefix).await?;
        total += prefix.len() as u64;
    }
    loop {
        from.readable().await?;
        let mut buf = pool.take();
        let outcome = drain(from, to, &mut buf, &mut total).await;
        pool.give(buf);
        match outcome {
            Ok(true) => {
                // EOF: carry the half-close across. ENOTCONN means the peer is already gone.
                if let Err(e) = socket2::SockRef::from(to).shutdown(Shutdown::Write) {
                    if e.kind() != io::ErrorKind::NotConnected {
                        return Err(e);
                    }
                }
                return Ok(total);
            }
            Ok(false) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Reads and forwards until the source would block (false) or reaches EOF (true).
async fn drain(
    from: &TcpStream,
    to: &TcpStream,
    buf: &mut [u8],
    total: &mut u64,
) -> io::Result<bool> {
    loop {
        match from.try_read(buf) {
            Ok(0) => return Ok(true),
            Ok(n) => {
                let drained = n < buf.len();
                if drained {
                    // A short read emptied the socket: clear its readiness now, without a
                    // syscall, so the next wait sleeps instead of paying one more read that
                    // returns EAGAIN. Safe on this current-thread runtime: the reactor cannot
                    // record newer readiness before this line, and bytes arriving later raise a
                    // new edge.
                    let _ = from.try_io(Interest::READABLE, || {
                        Err::<(), io::Error>(io::ErrorKind::WouldBlock.into())
                    });
                }
                write_all(to, &buf[..n]).await?;
                *total += n as u64;
                if drained {
                    return Ok(false);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Writes all of `data`, waiting for writability as needed.
pub async fn write_all(to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match to.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => to.writable().await?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A session socket on whichever backend the worker runs.
pub enum Conn {
    Epoll(TcpStream),
    Uring(crate::rt::uring::Stream),
}

impl Conn {
    /// Adopts a std socket on `backend`.
    pub fn from_std(backend: crate::rt::Backend, stream: std::net::TcpStream) -> io::Result<Self> {
        match backend {
            crate::rt::Backend::Epoll => {
                stream.set_nonblocking(true)?;
                Ok(Conn::Epoll(TcpStream::from_std(stream)?))
            }
            crate::rt::Backend::Uring { .. } => {
                Ok(Conn::Uring(crate::rt::uring::Stream::from_std(stream)?))
            }
        }
    }

    /// Moves a tokio (epoll) socket to `backend`.
    pub fn from_tokio(backend: crate::rt::Backend, stream: TcpStream) -> io::Result<Self> {
        match backend {
            crate::rt::Backend::Epoll => Ok(Conn::Epoll(stream)),
            crate::rt::Backend::Uring { .. } => Self::from_std(backend, stream.into_std()?),
        }
    }

    /// Shuts both directions down (done before every drop).
    pub fn shutdown(&self) {
        let _ = match self {
            Conn::Epoll(s) => socket2::SockRef::from(s).shutdown(Shutdown::Both),
            Conn::Uring(s) => s.shutdown(Shutdown::Both),
        };
    }
}

/// A worker's recycled buffers for both pumps.
#[derive(Clone)]
pub struct Pools {
    epoll: BufferPool,
    uring: crate::rt::uring::Buffers,
}

impl Default for Pools {
    fn default() -> Self {
        Self::new(PUMP_BUFFER_BYTES)
    }
}

impl Pools {
    /// Pools whose busy-direction buffers are `buffer_bytes` long.
    pub fn new(buffer_bytes: usize) -> Self {
        Self {
            epoll: BufferPool::new(buffer_bytes),
            uring: crate::rt::uring::Buffers::new(buffer_bytes),
        }
    }
}

/// Pumps between two sockets of the same backend, then shuts both down.
pub async fn pump_conns(
    a: &Conn,
    b: &Conn,
    prefix_to_a: Vec<u8>,
    prefix_to_b: Vec<u8>,
    pools: &Pools,
) -> io::Result<Moved> {
    let moved = match (a, b) {
        (Conn::Epoll(x), Conn::Epoll(y)) => {
            pump(x, y, &prefix_to_a, &prefix_to_b, &pools.epoll).await
        }
        (Conn::Uring(x), Conn::Uring(y)) => {
            crate::rt::uring::pump(x, y, prefix_to_a, prefix_to_b, &pools.uring)
                .await
                .map(|(a_to_b, b_to_a)| Moved { a_to_b, b_to_a })
        }
        _ => Err(io::Error::other(
            "sockets of different I/O backends cannot be pumped together",
        )),
    };
    a.shutdown();
    b.shutdown();
    moved
}
