//! One slot of the scripted MOSN agent: MOSN's `connection` (connection.go) — its dial, its
//! handshake over a read buffer that lives as long as the slot, its retries, and the re-dial
//! after each hosted connection closes. `Start()`'s order is here too (agent.go:251-271).
//! It copies MOSN's bugs on purpose (see agent.rs); it must not be "fixed" silently.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::agent::Peer;
use super::hosting::{host_conn, HostCtx, Writer};
use super::{bump, wire};

/// One connection slot (`connection` in connection.go).
pub(super) struct Slot {
    pub(super) aside: bool,
    /// `a.rawc`'s local address; `None` is `a.rawc == nil`.
    pub(super) local_addr: Mutex<Option<SocketAddr>>,
    close_flag: AtomicBool,
    pub(super) prepare_close: AtomicBool,
    close_tx: watch::Sender<bool>,
    /// Writes to the hosted connection (the aside's graceful close goes through it).
    pub(super) writer: Mutex<Option<Writer>>,
}

impl Slot {
    fn new(aside: bool) -> Arc<Self> {
        Arc::new(Self {
            aside,
            local_addr: Mutex::new(None),
            close_flag: AtomicBool::new(false),
            prepare_close: AtomicBool::new(false),
            close_tx: watch::channel(false).0,
            writer: Mutex::new(None),
        })
    }
    fn closed(&self) -> bool {
        self.close_flag.load(Ordering::SeqCst)
    }
    /// `Close()`: no more dials; the hosted connection is closed.
    pub(super) fn close(&self) {
        if !self.close_flag.swap(true, Ordering::SeqCst) {
            self.close_tx.send_replace(true);
        }
    }
}

/// The slot's read buffer (`readBuffer`, `buffer.NewIoBuffer(1024)`): unread bytes, and the
/// capacity a single `ReadOnce` may fill (doubled when a read fills it).
struct SlotBuf {
    data: Vec<u8>,
    cap: usize,
}

impl SlotBuf {
    fn new() -> Self {
        Self {
            data: Vec::new(),
            cap: 1024,
        }
    }

    /// `ReadOnce`: one read of what is there, bounded by the absolute deadline.
    async fn read_once(&mut self, stream: &mut TcpStream, deadline: Instant) -> Result<(), String> {
        let free = self.cap.saturating_sub(self.data.len()).max(512);
        let mut chunk = vec![0u8; free];
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => Err("i/o timeout".into()),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(0)) => Err("EOF".into()),
            Ok(Ok(n)) => {
                self.data.extend_from_slice(&chunk[..n]);
                if n == free {
                    self.cap *= 2;
                }
                Ok(())
            }
        }
    }
}

/// How one `initConnection` ended.
enum Init {
    Hosted(TcpStream, Vec<u8>),
    /// The slot never dials again.
    Dead(Death),
    /// The slot was closed.
    Closed,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Death {
    /// Status != 1: `initConnection` returned nil, the hosting listener panicked on nil.
    Refused,
    /// A non-response frame answered the init: the type assertion panicked.
    Panicked,
    /// `connect_retry_times` attempts failed: `initConnection` returned the error.
    GaveUp,
}

pub(super) async fn start_peer(peer: Arc<Peer>) {
    for _ in 0..peer.cfg.connection_num {
        let slot = Slot::new(false);
        let mut buf = SlotBuf::new();
        match init_connection(&peer, &slot, &mut buf).await {
            Init::Hosted(stream, initial) => {
                peer.connections.lock().unwrap().push(slot.clone());
                tokio::spawn(run_slot(peer.clone(), slot, buf, stream, initial));
            }
            // `initConnection` returned nil after a refusal: MOSN lists the slot.
            Init::Dead(Death::Refused) => peer.connections.lock().unwrap().push(slot),
            // The panic unwound `Start()`: no more slots, no aside, never stored.
            Init::Dead(Death::Panicked) => return,
            Init::Dead(Death::GaveUp) | Init::Closed => {}
        }
    }
    if peer.cfg.aside {
        init_aside(&peer).await;
    }
    peer.stored.store(true, Ordering::SeqCst);
}

pub(super) async fn init_aside(peer: &Arc<Peer>) -> bool {
    let slot = Slot::new(true);
    let mut buf = SlotBuf::new();
    match init_connection(peer, &slot, &mut buf).await {
        Init::Hosted(stream, initial) => {
            *peer.aside.lock().unwrap() = Some(slot.clone());
            tokio::spawn(run_slot(peer.clone(), slot, buf, stream, initial));
            true
        }
        _ => false,
    }
}

/// Hosts the connection; on its close re-dials at once, until the slot is closing or dead.
async fn run_slot(
    peer: Arc<Peer>,
    slot: Arc<Slot>,
    mut buf: SlotBuf,
    mut stream: TcpStream,
    mut initial: Vec<u8>,
) {
    loop {
        let ctx = HostCtx {
            backend: peer.cfg.backend,
            hosting: peer.cfg.hosting,
            idle_timeout: peer.cfg.idle_timeout,
            data: !slot.aside,
            hosted: &peer.counters.hosted,
            sessions: &peer.counters.sessions,
            backend_failures: &peer.counters.backend_failures,
            writer: &slot.writer,
            close_rx: slot.close_tx.subscribe(),
        };
        host_conn(&ctx, stream, initial).await;
        if slot.closed() || slot.prepare_close.load(Ordering::SeqCst) {
            return;
        }
        bump(if slot.aside {
            &peer.counters.aside_redials
        } else {
            &peer.counters.redials
        });
        match init_connection(&peer, &slot, &mut buf).await {
            Init::Hosted(s, i) => (stream, initial) = (s, i),
            Init::Dead(_) | Init::Closed => return,
        }
    }
}

/// `initConnection` (connection.go:158-184): attempts with doubling backoff, no cap.
async fn init_connection(peer: &Peer, slot: &Slot, buf: &mut SlotBuf) -> Init {
    let retries = peer.cfg.connect_retry_times;
    let mut backoff = peer.cfg.reconnect_base;
    let mut i = 0i64;
    while i < retries || retries == -1 {
        if slot.closed() {
            return Init::Closed;
        }
        let attempt = if slot.aside {
            do_connect(peer, slot)
                .await
                .map(|s| Init::Hosted(s, Vec::new()))
        } else {
            init_core(peer, slot, buf).await
        };
        match attempt {
            Ok(Init::Dead(why)) => {
                bump(&peer.counters.dead_slots);
                return Init::Dead(why);
            }
            Ok(done) => return done,
            Err(_why) => {
                bump(&peer.counters.init_errors);
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
        }
        i += 1;
    }
    bump(&peer.counters.dead_slots);
    Init::Dead(Death::GaveUp)
}

/// `doConnect`: dial within `connect_timeout`; `a.rawc` is set.
async fn do_connect(peer: &Peer, slot: &Slot) -> Result<TcpStream, String> {
    let dialed = tokio::time::timeout(
        peer.cfg.connect_timeout,
        TcpStream::connect(peer.cfg.server),
    )
    .await
    .map_err(|_| "dial timeout".to_string())?
    .map_err(|e| e.to_string())?;
    // Go sets TCP_NODELAY on every TCP connection.
    let _ = dialed.set_nodelay(true);
    *slot.local_addr.lock().unwrap() = dialed.local_addr().ok();
    if slot.aside {
        bump(&peer.counters.aside_connects);
    }
    Ok(dialed)
}

/// `initAgentCoreConnection` (connection.go:250-278). `Err` is an attempt to retry.
async fn init_core(peer: &Peer, slot: &Slot, buf: &mut SlotBuf) -> Result<Init, String> {
    let mut stream = do_connect(peer, slot).await?;
    // The deadline is set once, at connect, and covers the whole handshake.
    let deadline = Instant::now() + peer.cfg.connect_timeout;
    let fail = |e: String| -> Result<Init, String> {
        // The deferred close: `a.rawc.Close(); a.rawc = nil` (the stream drops with it).
        *slot.local_addr.lock().unwrap() = None;
        Err(e)
    };
    let info = wire::InitInfo {
        cluster_name: peer.cfg.cluster.clone(),
        weight: 10,
        host_name: String::new(),
        credential_policy: peer.cfg.credential_policy.clone(),
        credential: if peer.cfg.credential_policy.is_empty() {
            String::new()
        } else {
            peer.cfg.credential.clone()
        },
        extra: None,
    };
    if let Err(e) = stream.write_all(&wire::init_frame(&info)).await {
        return fail(e.to_string());
    }
    // `ReadOneMessage`: read, then decode; the buffer keeps whatever a failure left in it.
    let msg = loop {
        if slot.closed() {
            return fail("agent connection closed".into());
        }
        if let Err(e) = buf.read_once(&mut stream, deadline).await {
            return fail(e);
        }
        match wire::decode_from_buffer(&mut buf.data) {
            Err(e) => return fail(e.to_string()),
            Ok(None) => continue,
            Ok(Some(m)) => break m,
        }
    };
    match msg {
        wire::Msg::Response(wire::STATUS_SUCCESS) => {
            bump(&peer.counters.handshakes);
            // `OnAccept(..., a.readBuffer.Bytes(), ...)` copies; the buffer is not drained.
            let initial = buf.data.clone();
            if !initial.is_empty() {
                bump(&peer.counters.stale_handoffs);
            }
            if !peer.cfg.stale_buffer_bug {
                buf.data.clear();
            }
            Ok(Init::Hosted(stream, initial))
        }
        wire::Msg::Response(_) => {
            // `err` is set, the defer closes the connection, but nil is returned: the hosting
            // listener gets a nil connection and panics. The slot is dead.
            bump(&peer.counters.refusals);
            *slot.local_addr.lock().unwrap() = None;
            Ok(Init::Dead(Death::Refused))
        }
        _ => {
            // The type assertion panics; `err` is nil, so the connection stays open, unread.
            bump(&peer.counters.panics);
            peer.leaked.lock().unwrap().push(stream);
            Ok(Init::Dead(Death::Panicked))
        }
    }
}
