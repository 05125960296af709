//! The TLS pump, on either backend: plaintext on one socket, TLS records on the tunnel
//! connection, through the session's rustls state.
//!
//! Written once over `rt::OwnedIo`. Every write to the data socket (records, close_notify, TLS's
//! own answers) is made in order under one lock. TLS bytes never splice. It must not touch the
//! worker's pools or state beyond the buffer size it is given.

use std::cell::RefCell;
use std::io;
use std::net::Shutdown;

use super::{Moved, Pools};
use crate::rt::{shutdown_write, Conn, OwnedIo};

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
    let buffer_bytes = pools.epoll.buffer_bytes();
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
                return shutdown_write(plain).map(|()| total).map_err(fail);
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
                return shutdown_write(plain).map(|()| total).map_err(fail);
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
                return shutdown_write(data).map(|()| total).map_err(fail);
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
