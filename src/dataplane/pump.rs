//! Moving session bytes both ways between two sockets (epoll backend).
//!
//! Each direction waits for readiness *without* a buffer, takes one from the worker's pool only
//! while bytes are flowing, and returns it when the socket runs dry: an idle session holds no
//! buffer at all, a busy one reads and writes the same buffer with no copy in between. A
//! direction whose read fills the buffer moves on with splice(2) through a pooled pipe (see
//! `splice`), and copies again once quiet. A read EOF becomes a write shutdown on the other
//! socket (half-close); an error on either side ends both.

use std::cell::RefCell;
use std::io;
use std::net::Shutdown;
use std::rc::Rc;

use tokio::io::Interest;
use tokio::net::TcpStream;

/// Size of one pump buffer.
pub const PUMP_BUFFER_BYTES: usize = crate::config::defaults::PUMP_BUFFER_BYTES;
/// Size of the pipe a busy plaintext direction splices through.
pub const SPLICE_PIPE_BYTES: usize = crate::config::defaults::SPLICE_PIPE_BYTES;
/// Buffers kept for reuse per worker; more are freed when returned.
const POOL_KEEP: usize = 32;

/// A worker's recycled pump buffers, and its pipes when busy directions splice.
#[derive(Clone)]
pub struct BufferPool {
    buffer_bytes: usize,
    free: Rc<RefCell<Vec<Box<[u8]>>>>,
    pipes: Option<super::splice::PipePool>,
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
            pipes: None,
        }
    }

    /// This pool, with busy directions splicing through pipes of `pipe_bytes` (0: never).
    pub fn with_splice(mut self, pipe_bytes: usize) -> Self {
        self.pipes = (pipe_bytes > 0).then(|| super::splice::PipePool::new(pipe_bytes));
        self
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
    // A direction copies through a buffer until a read fills it (it is busy), then splices while
    // each wake-up moves at least a buffer's worth; a quiet one goes back to copying (one read and
    // one write per message, no pipe held).
    let mut splicing = false;
    loop {
        from.readable().await?;
        let eof = match pool.pipes.as_ref().filter(|_| splicing) {
            Some(pipes) => match pipes.take() {
                Ok(pipe) => {
                    let drained = super::splice::drain(from, to, &pipe).await?;
                    pipes.give(pipe);
                    total += drained.moved;
                    splicing = drained.moved >= pool.buffer_bytes as u64;
                    drained.eof
                }
                Err(e) => {
                    // Out of descriptors for a pipe: this direction copies instead.
                    crate::log_limited!(
                        warn!(error = %e, "cannot open a pipe for splice (out of descriptors?); this session direction copies instead")
                    );
                    splicing = false;
                    continue;
                }
            },
            None => {
                let mut buf = pool.take();
                let splice_on = pool.pipes.is_some();
                let drained = drain(from, to, &mut buf, splice_on, &mut total).await;
                pool.give(buf);
                let drained = drained?;
                splicing = drained == Drain::Busy;
                drained == Drain::Eof
            }
        };
        if eof {
            // Carry the half-close across. ENOTCONN means the peer is already gone.
            if let Err(e) = socket2::SockRef::from(to).shutdown(Shutdown::Write) {
                if e.kind() != io::ErrorKind::NotConnected {
                    return Err(e);
                }
            }
            return Ok(total);
        }
    }
}

/// How a copy drain ended.
#[derive(Debug, PartialEq, Eq)]
enum Drain {
    /// The source has nothing more now.
    Dry,
    /// A read filled the buffer and splice is on: the caller splices the rest.
    Busy,
    /// The source reached EOF.
    Eof,
}

/// Reads and forwards until the source would block, reaches EOF, or (with splice on) a read
/// fills the buffer.
async fn drain(
    from: &TcpStream,
    to: &TcpStream,
    buf: &mut [u8],
    splice_on: bool,
    total: &mut u64,
) -> io::Result<Drain> {
    loop {
        match from.try_read(buf) {
            Ok(0) => return Ok(Drain::Eof),
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
                    return Ok(Drain::Dry);
                }
                if splice_on {
                    return Ok(Drain::Busy);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Drain::Dry),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Writes all of `data`, waiting for writability as needed. For current-thread runtimes only
/// (every runtime ringtun runs sockets on is one): it clears readiness it has just seen go stale.
pub async fn write_all(to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    loop {
        let sent = crate::rt::send_nonblocking(to, data)?;
        data = &data[sent..];
        if data.is_empty() {
            return Ok(());
        }
        // The send buffer is full: clear tokio's writable readiness (it may predate the full
        // buffer) so the wait below sleeps until the next edge. Safe on this current-thread
        // runtime: the reactor cannot record newer readiness between the send and this line.
        let _ = to.try_io(Interest::WRITABLE, || {
            Err::<(), io::Error>(io::ErrorKind::WouldBlock.into())
        });
        to.writable().await?;
    }
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

    /// Shuts both directions down (before a drop that might leave an operation in flight).
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
        Self::new(PUMP_BUFFER_BYTES, SPLICE_PIPE_BYTES)
    }
}

impl Pools {
    /// Pools whose busy-direction buffers are `buffer_bytes` long; busy plaintext directions on
    /// either backend splice through pipes of `splice_pipe_bytes` (0: they always copy).
    pub fn new(buffer_bytes: usize, splice_pipe_bytes: usize) -> Self {
        Self {
            epoll: BufferPool::new(buffer_bytes).with_splice(splice_pipe_bytes),
            uring: crate::rt::uring::Buffers::new(buffer_bytes).with_splice(splice_pipe_bytes),
        }
    }
}

/// Pumps between two sockets of the same backend; when it fails, shuts both down.
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
    if moved.is_err() {
        // A failed pump may leave a direction mid-transfer (an io_uring read in flight): shutting
        // both sockets down ends it before they are dropped. A pump that finished has already
        // shut both write sides down and read both EOFs: two more calls would only fail.
        a.shutdown();
        b.shutdown();
    }
    moved
}

/// Owned-buffer socket I/O, as both backends can do it: the TLS pump is written once over it.
pub(crate) trait OwnedIo {
    /// Reads into `buf`'s capacity (its contents are replaced); 0 means EOF.
    async fn read_owned(&self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>);
    /// Writes all of `buf`.
    async fn write_owned(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>);
    fn shutdown_how(&self, how: Shutdown) -> io::Result<()>;
}

impl OwnedIo for TcpStream {
    async fn read_owned(&self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        buf.clear();
        if buf.capacity() == 0 {
            buf.reserve(PUMP_BUFFER_BYTES);
        }
        loop {
            if let Err(e) = self.readable().await {
                return (Err(e), buf);
            }
            // Reads into the spare capacity: no zeroing, no growth (the buffer is empty).
            match self.try_read_buf(&mut buf) {
                Ok(n) => return (Ok(n), buf),
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), buf),
            }
        }
    }

    async fn write_owned(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let written = write_all(self, &buf).await;
        (written, buf)
    }

    fn shutdown_how(&self, how: Shutdown) -> io::Result<()> {
        socket2::SockRef::from(self).shutdown(how)
    }
}

/// A TLS failure inside a pump, as an `io::Error`.
fn tls_io(e: crate::tls::TlsError) -> io::Error {
    crate::tls::io_error(e)
}

/// Pumps between a TLS tunnel connection (`data`) and a plaintext socket (`plain`, the frontend
/// or the backend), then shuts both down. `prefix_to_plain` / `prefix_to_data` are plaintext
/// bytes already read that must be delivered first. Returns (data→plain, plain→data) plaintext
/// bytes moved.
pub async fn pump_tls(
    data: &Conn,
    plain: &Conn,
    session: Box<crate::tls::TlsSession>,
    prefix_to_plain: Vec<u8>,
    prefix_to_data: Vec<u8>,
    pools: &Pools,
) -> io::Result<Moved> {
    let buffer_bytes = pools.epoll.buffer_bytes;
    let moved = match (data, plain) {
        (Conn::Epoll(d), Conn::Epoll(p)) => {
            tls_pump(d, p, session, prefix_to_plain, prefix_to_data, buffer_bytes).await
        }
        (Conn::Uring(d), Conn::Uring(p)) => {
            tls_pump(d, p, session, prefix_to_plain, prefix_to_data, buffer_bytes).await
        }
        _ => Err(io::Error::other(
            "sockets of different I/O backends cannot be pumped together",
        )),
    };
    if moved.is_err() {
        // As in `pump_conns`: only a failed pump can leave something in flight.
        data.shutdown();
        plain.shutdown();
    }
    moved
}

/// The TLS pump on either backend. Each direction reads with an owned buffer; every write to
/// the data socket (encrypted bytes, close_notify, TLS's own answers) is made under one lock,
/// with the records produced under it, so records never interleave or go out of order. On an
/// error both sockets are shut down, which completes the other direction's read (io_uring reads
/// in flight are never dropped).
async fn tls_pump<D: OwnedIo, P: OwnedIo>(
    data: &D,
    plain: &P,
    session: Box<crate::tls::TlsSession>,
    prefix_to_plain: Vec<u8>,
    prefix_to_data: Vec<u8>,
    buffer_bytes: usize,
) -> io::Result<Moved> {
    let session = RefCell::new(session);
    let data_writes = tokio::sync::Mutex::new(());
    let fail = |e: io::Error| {
        let _ = data.shutdown_how(Shutdown::Both);
        let _ = plain.shutdown_how(Shutdown::Both);
        e
    };
    // Encrypts `bytes` (or, when None, closes) and writes the records, under the lock.
    let send_data = |bytes: Option<Vec<u8>>, mut out: Vec<u8>| {
        let session = &session;
        let data_writes = &data_writes;
        async move {
            let _turn = data_writes.lock().await;
            out.clear();
            {
                let mut s = session.borrow_mut();
                match &bytes {
                    Some(b) => s.encrypt(b, &mut out).map_err(tls_io)?,
                    None => s.close_notify(&mut out),
                }
            }
            let (written, out) = data.write_owned(out).await;
            written.map(|()| (bytes, out))
        }
    };
    let inbound = async {
        let mut total = 0u64;
        if !prefix_to_plain.is_empty() {
            total += prefix_to_plain.len() as u64;
            plain.write_owned(prefix_to_plain).await.0.map_err(fail)?;
        }
        let mut cipher = Vec::with_capacity(buffer_bytes);
        let mut clear = Vec::with_capacity(buffer_bytes);
        loop {
            let (read, b) = data.read_owned(cipher).await;
            cipher = b;
            let n = read.map_err(fail)?;
            if n == 0 {
                session
                    .borrow()
                    .peer_closed()
                    .map_err(tls_io)
                    .map_err(fail)?;
                return match plain.shutdown_how(Shutdown::Write) {
                    Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(fail(e)),
                    _ => Ok(total),
                };
            }
            clear.clear();
            let outcome = session
                .borrow_mut()
                .decrypt(&cipher[..n], &mut clear)
                .map_err(tls_io)
                .map_err(fail)?;
            if outcome.wants_write {
                let _turn = data_writes.lock().await;
                let mut out = Vec::new();
                session.borrow_mut().take_output(&mut out);
                data.write_owned(out).await.0.map_err(fail)?;
            }
            if !clear.is_empty() {
                total += clear.len() as u64;
                let (written, c) = plain.write_owned(clear).await;
                clear = c;
                written.map_err(fail)?;
            }
            if outcome.eof {
                return match plain.shutdown_how(Shutdown::Write) {
                    Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(fail(e)),
                    _ => Ok(total),
                };
            }
        }
    };
    let outbound = async {
        let mut total = 0u64;
        let mut out = Vec::with_capacity(buffer_bytes + 1024);
        if !prefix_to_data.is_empty() {
            total += prefix_to_data.len() as u64;
            out = send_data(Some(prefix_to_data), out).await.map_err(fail)?.1;
        }
        let mut buf = Vec::with_capacity(buffer_bytes);
        loop {
            let (read, b) = plain.read_owned(buf).await;
            buf = b;
            let n = read.map_err(fail)?;
            if n == 0 {
                send_data(None, out).await.map_err(fail)?;
                return match data.shutdown_how(Shutdown::Write) {
                    Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(fail(e)),
                    _ => Ok(total),
                };
            }
            total += n as u64;
            let (b, o) = send_data(Some(buf), out).await.map_err(fail)?;
            buf = b.unwrap_or_default();
            out = o;
        }
    };
    let (x, y) = tokio::join!(inbound, outbound);
    Ok(Moved {
        a_to_b: x?,
        b_to_a: y?,
    })
}

#[cfg(test)]
mod tests {
    //! The epoll pump on loopback pairs `a_peer ⇄ a ⇄ pump ⇄ b ⇄ b_peer`, with and without
    //! splice: every byte arrives in order, half-close is carried, and directions switch between
    //! copying and splicing as they turn busy and quiet.
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        (c.expect("connect"), s.expect("accept").0)
    }

    /// Deterministic bytes that catch reordering and loss: the period (251) divides no page or
    /// buffer size, so a page lost, doubled or moved shows.
    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| ((i * 31 + seed as usize) % 251) as u8)
            .collect()
    }

    /// Sends `bytes` from `from` to `to` through the pump and checks they arrive whole.
    async fn bulk(from: &mut TcpStream, to: &mut TcpStream, bytes: &[u8]) {
        let (_, got) = tokio::join!(
            async { from.write_all(bytes).await.expect("write") },
            async {
                let mut got = vec![0u8; bytes.len()];
                to.read_exact(&mut got).await.expect("read");
                got
            }
        );
        assert!(got == bytes, "{} bulk bytes differ", bytes.len());
    }

    /// What a test moved through the pump: (a → b, b → a) bytes.
    type Expected = (u64, u64);

    /// Runs `test` against a pump `a_peer ⇄ a ⇄ pump ⇄ b ⇄ b_peer`; the pump must count exactly
    /// the bytes the test says it moved.
    fn run(pool: BufferPool, test: impl AsyncFnOnce(TcpStream, TcpStream) -> Expected) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        tokio::task::LocalSet::new().block_on(&rt, async move {
            let (a_peer, a) = pair().await;
            let (b, b_peer) = pair().await;
            let pumping =
                tokio::task::spawn_local(async move { pump(&a, &b, &[], &[], &pool).await });
            let expected = test(a_peer, b_peer).await;
            let moved = pumping.await.expect("join").expect("pump");
            assert_eq!((moved.a_to_b, moved.b_to_a), expected, "bytes counted");
        });
    }

    /// Bulk one way, then small messages, then bulk again, both ways; then half-close.
    async fn busy_quiet_busy(mut a_peer: TcpStream, mut b_peer: TcpStream) -> Expected {
        bulk(&mut a_peer, &mut b_peer, &pattern(6 << 20, 1)).await;
        for i in 0..50u8 {
            b_peer.write_all(&[i; 7]).await.expect("write");
            let mut back = [0u8; 7];
            a_peer.read_exact(&mut back).await.expect("read");
            assert_eq!(back, [i; 7]);
        }
        bulk(&mut b_peer, &mut a_peer, &pattern(3 << 20, 2)).await;
        // Half-close: a_peer's EOF reaches b_peer, which can still answer.
        a_peer.shutdown().await.expect("shutdown");
        let mut rest = Vec::new();
        b_peer.read_to_end(&mut rest).await.expect("eof");
        assert!(rest.is_empty());
        b_peer.write_all(b"last words").await.expect("write");
        b_peer.shutdown().await.expect("shutdown");
        let mut last = Vec::new();
        a_peer.read_to_end(&mut last).await.expect("read");
        assert_eq!(last, b"last words");
        (6 << 20, 50 * 7 + (3 << 20) + 10)
    }

    #[test]
    fn copying_delivers_every_byte_and_the_half_close() {
        run(BufferPool::new(16 * 1024), busy_quiet_busy);
    }

    #[test]
    fn splicing_delivers_every_byte_and_the_half_close() {
        run(
            BufferPool::new(16 * 1024).with_splice(64 * 1024),
            busy_quiet_busy,
        );
    }

    #[test]
    fn a_pipe_smaller_than_the_buffer_still_delivers_everything() {
        run(
            BufferPool::new(64 * 1024).with_splice(4096),
            busy_quiet_busy,
        );
    }

    /// The same traffic through the io_uring pump (tokio-uring runtime), with splice on or off.
    fn run_uring(pools: Pools, test: impl AsyncFnOnce(TcpStream, TcpStream) -> Expected) {
        if let Err(why) = crate::rt::uring::probe() {
            eprintln!("skipped: io_uring unavailable: {why}");
            return;
        }
        let rt = crate::rt::uring::runtime(64).expect("io_uring runtime");
        crate::rt::uring::block_on(&rt, async move {
            let (a_peer, a) = pair().await;
            let (b, b_peer) = pair().await;
            let uring = crate::rt::Backend::Uring { entries: 64 };
            let a = Conn::from_tokio(uring, a).expect("adopt");
            let b = Conn::from_tokio(uring, b).expect("adopt");
            let pumping = tokio::task::spawn_local(async move {
                pump_conns(&a, &b, Vec::new(), Vec::new(), &pools).await
            });
            let expected = test(a_peer, b_peer).await;
            let moved = pumping.await.expect("join").expect("pump");
            assert_eq!((moved.a_to_b, moved.b_to_a), expected, "bytes counted");
        });
    }

    #[test]
    fn io_uring_copying_delivers_every_byte_and_the_half_close() {
        run_uring(Pools::new(16 * 1024, 0), busy_quiet_busy);
    }

    #[test]
    fn io_uring_splicing_delivers_every_byte_and_the_half_close() {
        run_uring(Pools::new(16 * 1024, 64 * 1024), busy_quiet_busy);
        run_uring(Pools::new(64 * 1024, 4096), busy_quiet_busy);
    }

    #[test]
    fn an_io_uring_direction_quiet_after_bulk_pins_no_large_buffer() {
        let pools = Pools::new(64 * 1024, 256 * 1024);
        let uring = pools.uring.clone();
        run_uring(pools, async move |mut a_peer, mut b_peer| {
            bulk(&mut a_peer, &mut b_peer, &pattern(4 << 20, 3)).await;
            // Quiet now: the direction's one large buffer goes back to the pool while it waits.
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
            while uring.large_free() == 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            assert_eq!(
                uring.large_free(),
                1,
                "a quiet direction still holds a large buffer"
            );
            b_peer.write_all(b"x").await.expect("write");
            let mut x = [0u8; 1];
            a_peer.read_exact(&mut x).await.expect("read");
            a_peer.shutdown().await.expect("shutdown");
            b_peer.shutdown().await.expect("shutdown");
            let mut rest = Vec::new();
            b_peer.read_to_end(&mut rest).await.expect("eof");
            a_peer.read_to_end(&mut rest).await.expect("eof");
            (4 << 20, 1)
        });
    }

    #[test]
    fn busy_directions_return_their_pipes() {
        let pool = BufferPool::new(16 * 1024).with_splice(64 * 1024);
        let pipes = pool.pipes.clone().expect("splice on");
        run(pool, busy_quiet_busy);
        let kept = pipes.free_count();
        assert!((1..=2).contains(&kept), "{kept} pipes in the pool");
    }
}
