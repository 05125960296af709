//! The MOSN agent's hosting listener: what happens to a tunnel connection after `OnAccept`.
//!
//! It becomes an ordinary MOSN server connection (pkg/server/handler.go:641-670): the bytes the
//! agent read after the response are its first read buffer (pkg/network/connection.go:219-224)
//! and go to the backend at once (filtermanager.go:68-110). A `tcp_proxy` connects the backend
//! when the connection is hosted (streamproxy.go:90-95, 120-194) and a failed connect closes the
//! connection (streamproxy.go:207-209). EOF on either side closes the whole connection, with no
//! half-close (pkg/network/connection.go:493-496, streamproxy.go:220-228, 296-305). The idle
//! checker closes a connection with no traffic for the idle timeout (idlechecker.go:70-99;
//! MOSN counts 15 s read ticks, this uses one timer). It must not decode tunnel frames: MOSN
//! never reads a frame on a hosted connection.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::agent::Hosting;
use super::bump;

/// The write side of a hosted connection, shared with the aside's graceful close.
pub(super) type Writer = Arc<tokio::sync::Mutex<OwnedWriteHalf>>;

/// How long a `tcp_proxy` upstream connect may take (MOSN's cluster default is 3 s).
const BACKEND_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

pub(super) struct HostCtx<'a> {
    pub backend: SocketAddr,
    pub hosting: Hosting,
    pub idle_timeout: Option<Duration>,
    /// A data connection (not the aside): its traffic counts as a session.
    pub data: bool,
    pub hosted: &'a AtomicU64,
    pub sessions: &'a AtomicU64,
    pub backend_failures: &'a AtomicU64,
    pub writer: &'a Mutex<Option<Writer>>,
    /// Becomes true when the slot is closed (`Close()` closes `rawc`).
    pub close_rx: watch::Receiver<bool>,
}

/// Serves one hosted connection until either side ends it; both sockets are then closed.
pub(super) async fn host_conn(ctx: &HostCtx<'_>, tunnel: TcpStream, initial: Vec<u8>) {
    bump(ctx.hosted);
    let (mut tunnel_rd, tunnel_wr) = tunnel.into_split();
    let tunnel_wr: Writer = Arc::new(tokio::sync::Mutex::new(tunnel_wr));
    *ctx.writer.lock().unwrap() = Some(tunnel_wr.clone());
    let mut backend = None;
    if ctx.hosting == Hosting::TcpProxy {
        match connect_backend(ctx.backend).await {
            Some(b) => backend = Some(b),
            None => {
                bump(ctx.backend_failures);
                *ctx.writer.lock().unwrap() = None;
                return;
            }
        }
    }
    let mut session_counted = false;
    if !initial.is_empty() && !forward(ctx, &mut backend, &initial, &mut session_counted).await {
        *ctx.writer.lock().unwrap() = None;
        return;
    }
    let mut close_rx = ctx.close_rx.clone();
    let idle = ctx
        .idle_timeout
        .unwrap_or(Duration::from_secs(86_400 * 365));
    let mut idle_at = Instant::now() + idle;
    let mut from_tunnel = vec![0u8; 16 * 1024];
    let mut from_backend = vec![0u8; 16 * 1024];
    loop {
        if *close_rx.borrow() {
            break;
        }
        tokio::select! {
            read = tunnel_rd.read(&mut from_tunnel) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    idle_at = Instant::now() + idle;
                    if !forward(ctx, &mut backend, &from_tunnel[..n], &mut session_counted).await {
                        break;
                    }
                }
            },
            read = async {
                match backend.as_mut() {
                    Some((rd, _)) => rd.read(&mut from_backend).await,
                    None => std::future::pending().await,
                }
            } => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    idle_at = Instant::now() + idle;
                    if tunnel_wr.lock().await.write_all(&from_backend[..n]).await.is_err() {
                        break;
                    }
                }
            },
            _ = tokio::time::sleep_until(idle_at) => break,
            _ = close_rx.changed() => break,
        }
    }
    *ctx.writer.lock().unwrap() = None;
    // Dropping every half closes both connections (no half-close is ever forwarded).
}

async fn connect_backend(addr: SocketAddr) -> Option<(OwnedReadHalf, OwnedWriteHalf)> {
    match tokio::time::timeout(BACKEND_CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Some(s.into_split())
        }
        _ => None,
    }
}

/// Writes server bytes to the backend (connecting it first for a lazy listener).
async fn forward(
    ctx: &HostCtx<'_>,
    backend: &mut Option<(OwnedReadHalf, OwnedWriteHalf)>,
    bytes: &[u8],
    session_counted: &mut bool,
) -> bool {
    if ctx.data && !*session_counted {
        *session_counted = true;
        bump(ctx.sessions);
    }
    if backend.is_none() {
        match connect_backend(ctx.backend).await {
            Some(b) => *backend = Some(b),
            None => {
                bump(ctx.backend_failures);
                return false;
            }
        }
    }
    match backend.as_mut() {
        Some((_, wr)) => wr.write_all(bytes).await.is_ok(),
        None => false,
    }
}
