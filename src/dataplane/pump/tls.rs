//! The TLS pump, on either backend: plaintext on one socket, TLS records on the tunnel
//! connection, through the session's rustls state.
//!
//! Written once over `rt::OwnedIo`. Buffers come from the worker's pool (`uring::Buffers`, used
//! by both backends here) only while bytes flow and go back after each read is handled: a quiet
//! direction on epoll waits for readiness holding no buffer; on io_uring it receives into a
//! provided buffer the kernel picks when bytes arrive (`uring::read_quiet`; a read that fills
//! its buffer moves the direction to large buffers until a read comes back short), as the
//! plaintext pumps do. Every write to the data socket (records, close_notify, TLS's own answers)
//! is made in order by one writer at a time, with the records produced by that writer: a
//! `Cell<bool>` turn and a `Notify` for the rare wait (both directions writing at once), not an
//! async mutex per write. TLS bytes never splice. It must not touch the worker's state beyond its
//! buffer pool.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::Shutdown;

use tokio::sync::Notify;

use super::policy::{DirectionPolicy, Next};
use super::uring::Buffers;
use super::{Moved, Pools};
use crate::rt::{shutdown_write, Conn, OwnedIo};
use crate::tls::TlsSession;

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
    session: Box<TlsSession>,
    prefix_to_plain: Vec<u8>,
    prefix_to_data: Vec<u8>,
    pools: &Pools,
) -> io::Result<Moved> {
    let buffers = &pools.uring;
    let moved = match (data, plain) {
        (Conn::Epoll(d), Conn::Epoll(p)) => {
            tls_pump(d, p, session, prefix_to_plain, prefix_to_data, buffers).await
        }
        (Conn::Uring(d), Conn::Uring(p)) => {
            tls_pump(d, p, session, prefix_to_plain, prefix_to_data, buffers).await
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

/// One writer at a time on the data socket. Single-threaded: a `Cell` says whose turn it is,
/// and a `Notify` wakes a writer that found the turn taken (rare: both directions writing at
/// once).
#[derive(Default)]
pub(super) struct Turn {
    taken: Cell<bool>,
    waiting: Cell<u32>,
    wake: Notify,
}

impl Turn {
    pub(super) async fn take(&self) -> TurnGuard<'_> {
        while self.taken.get() {
            self.waiting.set(self.waiting.get() + 1);
            self.wake.notified().await;
            self.waiting.set(self.waiting.get() - 1);
        }
        self.taken.set(true);
        TurnGuard(self)
    }
}

/// Holds the data socket's write turn; gives it back when dropped.
pub(super) struct TurnGuard<'a>(&'a Turn);

impl Drop for TurnGuard<'_> {
    fn drop(&mut self) {
        self.0.taken.set(false);
        if self.0.waiting.get() > 0 {
            self.0.wake.notify_one();
        }
    }
}

/// Reads the next chunk from `from` into a pool buffer. On a readiness backend (epoll) the buffer
/// is taken only once bytes are there, and is a large one. Without readiness (io_uring) it is a
/// small one while the direction is `quiet` (most messages fit; one that fills it turns the
/// direction busy), a large one while bytes flow. The caller gives the buffer back.
pub(super) async fn read_next<S: OwnedIo>(
    from: &S,
    buffers: &Buffers,
    quiet: bool,
) -> (io::Result<usize>, Vec<u8>) {
    let waited = match from.wait_readable().await {
        Ok(waited) => waited,
        Err(e) => return (Err(e), Vec::new()),
    };
    if !waited && quiet {
        // No readiness (io_uring): a provided buffer, or a parked small read.
        return super::uring::read_quiet(from, buffers).await;
    }
    // After a readiness wait (epoll) the buffer is held for this one read only: a large one
    // takes a whole message at once (a 660-byte HTTP response in a 512-byte buffer cost two
    // reads and two records).
    from.read_owned(buffers.take(true)).await
}

/// Encrypts `bytes` (or, when None, closes; `Some(&[])` sends what TLS owes) and writes the
/// records to `data`, in the data socket's write turn, through a pool buffer.
async fn send_data<D: OwnedIo>(
    data: &D,
    session: &RefCell<Box<TlsSession>>,
    turn: &Turn,
    buffers: &Buffers,
    bytes: Option<&[u8]>,
) -> io::Result<()> {
    let _turn = turn.take().await;
    let small = bytes.is_none_or(|b| b.len() + 64 <= super::policy::SMALL_BUFFER_BYTES);
    let mut out = buffers.take(!small);
    let made = {
        let mut s = session.borrow_mut();
        match bytes {
            Some(b) => {
                // Room for the records' overhead too, so the buffer does not double.
                out.reserve_exact(b.len() + (b.len() / 16_384 + 1) * 64);
                s.encrypt(b, &mut out).map_err(tls_io)
            }
            None => {
                s.close_notify(&mut out);
                Ok(())
            }
        }
    };
    if let Err(e) = made {
        buffers.give(out);
        return Err(e);
    }
    if out.is_empty() {
        buffers.give(out);
        return Ok(());
    }
    let (written, out) = data.write_owned(out).await;
    buffers.give(out);
    written
}

/// The TLS pump on either backend. On an error both sockets are shut down, which completes the
/// other direction's read (io_uring reads in flight are never dropped).
async fn tls_pump<D: OwnedIo, P: OwnedIo>(
    data: &D,
    plain: &P,
    session: Box<TlsSession>,
    prefix_to_plain: Vec<u8>,
    prefix_to_data: Vec<u8>,
    buffers: &Buffers,
) -> io::Result<Moved> {
    let session = RefCell::new(session);
    let turn = Turn::default();
    let policy = DirectionPolicy::new(buffers.large_bytes(), false);
    let fail = |e: io::Error| {
        let _ = data.shutdown_how(Shutdown::Both);
        let _ = plain.shutdown_how(Shutdown::Both);
        e
    };
    let inbound = async {
        let mut total = 0u64;
        if !prefix_to_plain.is_empty() {
            total += prefix_to_plain.len() as u64;
            plain.write_owned(prefix_to_plain).await.0.map_err(fail)?;
        }
        let mut quiet = true;
        loop {
            let (read, mut cipher) = read_next(data, buffers, quiet).await;
            let n = match read {
                Ok(n) => n,
                Err(e) => {
                    buffers.give(cipher);
                    return Err(fail(e));
                }
            };
            if n == 0 {
                buffers.give(cipher);
                session
                    .borrow()
                    .peer_closed()
                    .map_err(tls_io)
                    .map_err(fail)?;
                return shutdown_write(plain).map(|()| total).map_err(fail);
            }
            quiet = policy.after_read(n, cipher.capacity()) == Next::Wait;
            // Plaintext is never longer than the records it came in.
            let mut clear = buffers.take(n > super::policy::SMALL_BUFFER_BYTES);
            let outcome = session
                .borrow_mut()
                .decrypt_in_place(&mut cipher[..n], &mut clear);
            buffers.give(cipher);
            let outcome = match outcome {
                Ok(o) => o,
                Err(e) => {
                    buffers.give(clear);
                    return Err(fail(tls_io(e)));
                }
            };
            if outcome.wants_write {
                // TLS's own answer (a key update): what it owes goes out with an empty encrypt.
                send_data(data, &session, &turn, buffers, Some(&[]))
                    .await
                    .map_err(fail)?;
            }
            if !clear.is_empty() {
                total += clear.len() as u64;
                let (written, c) = plain.write_owned(clear).await;
                buffers.give(c);
                written.map_err(fail)?;
            } else {
                buffers.give(clear);
            }
            if outcome.eof {
                return shutdown_write(plain).map(|()| total).map_err(fail);
            }
        }
    };
    let outbound = async {
        let mut total = 0u64;
        if !prefix_to_data.is_empty() {
            total += prefix_to_data.len() as u64;
            send_data(data, &session, &turn, buffers, Some(&prefix_to_data))
                .await
                .map_err(fail)?;
        }
        drop(prefix_to_data);
        let mut quiet = true;
        loop {
            let (read, buf) = read_next(plain, buffers, quiet).await;
            let n = match read {
                Ok(n) => n,
                Err(e) => {
                    buffers.give(buf);
                    return Err(fail(e));
                }
            };
            if n == 0 {
                buffers.give(buf);
                send_data(data, &session, &turn, buffers, None)
                    .await
                    .map_err(fail)?;
                return shutdown_write(data).map(|()| total).map_err(fail);
            }
            quiet = policy.after_read(n, buf.capacity()) == Next::Wait;
            total += n as u64;
            let sent = send_data(data, &session, &turn, buffers, Some(&buf[..n])).await;
            buffers.give(buf);
            sent.map_err(fail)?;
        }
    };
    let (x, y) = tokio::join!(inbound, outbound);
    Ok(Moved {
        a_to_b: x?,
        b_to_a: y?,
    })
}
