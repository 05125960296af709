//! A scripted MOSN tunnel agent (`AgentPeer` of pkg/filter/network/tunnel/agent.go and the
//! connections of connection.go), one server address.
//!
//! What it copies:
//! - `Start()`: the data connections are initialised one after another, then the aside
//!   connection; a slot that keeps failing blocks the ones after it (agent.go:251-271).
//! - one read buffer per slot, living as long as the slot: the bytes read together with
//!   `{"status":1}` are handed to the hosting listener *and left in the buffer*, so the slot's
//!   next handshake decodes them first (connection.go:58, 105-111, 180). Switchable.
//! - an absolute read deadline of `connect_timeout` from the TCP connect (connection.go:94).
//! - status != 1: the connection is closed and the slot is dead for good (connection.go:252-277).
//! - an I/O, timeout or decode error: close, sleep `reconnect_base * 2^n` (no cap), retry
//!   (connection.go:158-176).
//! - any close of a hosted connection re-dials at once, unless the slot is closing
//!   (connection.go:186-210).
//! - the aside connection: a TCP connect, no init, hosted like a data connection
//!   (connection.go:286-295).
//! - `Stop()`: graceful close on the aside with the data connections' local addresses, then
//!   close the aside; close everything when `graceful_close_max_wait` is up (agent.go:273-312).
//!
//! What it does not: TLS, DNS resolution of the server list, dynamic server listers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::slot::{init_aside, start_peer, Slot};
use super::{counters, wire};

/// The hosting listener's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hosting {
    /// A `tcp_proxy` listener: the backend is connected when the connection is hosted
    /// (streamproxy.go:90-95), for the aside connection too.
    TcpProxy,
    /// A codec listener (e.g. HTTP): the backend is connected on the first bytes from the server.
    Lazy,
}

#[derive(Clone)]
pub(super) struct Config {
    pub server: SocketAddr,
    pub backend: SocketAddr,
    pub cluster: String,
    pub connection_num: usize,
    pub credential_policy: String,
    pub credential: String,
    pub hosting: Hosting,
    pub reconnect_base: Duration,
    pub connect_timeout: Duration,
    pub connect_retry_times: i64,
    pub graceful_close_max_wait: Duration,
    pub idle_timeout: Option<Duration>,
    pub stale_buffer_bug: bool,
    pub aside: bool,
}

/// Builder of a [`MosnAgent`]; defaults are MOSN's (agent.go:180-185, 204-218).
pub struct MosnAgentBuilder(Config);

/// A MOSN agent for one server, hosting its connections on `backend`.
pub fn mosn_agent(server: SocketAddr, backend: SocketAddr) -> MosnAgentBuilder {
    MosnAgentBuilder(Config {
        server,
        backend,
        cluster: "c".into(),
        connection_num: 1,
        credential_policy: String::new(),
        credential: String::new(),
        hosting: Hosting::TcpProxy,
        reconnect_base: Duration::from_secs(3),
        connect_timeout: Duration::from_secs(15),
        connect_retry_times: -1,
        graceful_close_max_wait: Duration::from_secs(15),
        idle_timeout: Some(Duration::from_secs(90)),
        stale_buffer_bug: true,
        aside: true,
    })
}

impl MosnAgentBuilder {
    pub fn cluster(mut self, c: &str) -> Self {
        self.0.cluster = c.into();
        self
    }
    pub fn connection_num(mut self, n: usize) -> Self {
        self.0.connection_num = n;
        self
    }
    /// `credential_policy` and the value its getter returns (read once per slot).
    pub fn credential(mut self, policy: &str, credential: &str) -> Self {
        self.0.credential_policy = policy.into();
        self.0.credential = credential.into();
        self
    }
    pub fn hosting(mut self, h: Hosting) -> Self {
        self.0.hosting = h;
        self
    }
    pub fn reconnect_base(mut self, d: Duration) -> Self {
        self.0.reconnect_base = d;
        self
    }
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.0.connect_timeout = d;
        self
    }
    /// `connect_retry_times`; 0 means -1 (forever), as in MOSN.
    pub fn connect_retry_times(mut self, n: i64) -> Self {
        self.0.connect_retry_times = if n == 0 { -1 } else { n };
        self
    }
    pub fn graceful_close_max_wait(mut self, d: Duration) -> Self {
        self.0.graceful_close_max_wait = d;
        self
    }
    /// The hosting listener's idle timeout (MOSN's default 90 s; `None`: never).
    pub fn idle_timeout(mut self, d: Option<Duration>) -> Self {
        self.0.idle_timeout = d;
        self
    }
    /// Clears the slot's read buffer after a handshake (MOSN does not: off by default).
    pub fn fix_stale_buffer(mut self) -> Self {
        self.0.stale_buffer_bug = false;
        self
    }
    /// No aside connection (not MOSN: for tests that must not see it).
    pub fn without_aside(mut self) -> Self {
        self.0.aside = false;
        self
    }

    pub fn start(self) -> MosnAgent {
        let rt = super::runtime("mosn-agent");
        let peer = Arc::new(Peer {
            cfg: self.0,
            counters: AgentCounters::default(),
            connections: Mutex::new(Vec::new()),
            aside: Mutex::new(None),
            stored: AtomicBool::new(false),
            leaked: Mutex::new(Vec::new()),
        });
        rt.spawn(start_peer(peer.clone()));
        MosnAgent { rt: Some(rt), peer }
    }
}

counters!(AgentCounters => AgentCounts {
    /// Data connections answered `{"status":1}`.
    handshakes,
    /// Connections handed to the hosting listener (data and aside).
    hosted,
    /// Hosted data connections that carried bytes from the server (a session).
    sessions,
    /// Data connections re-dialled after their hosted connection closed.
    redials,
    /// Aside connections connected (TCP).
    aside_connects,
    /// Aside connections re-dialled after their hosted connection closed.
    aside_redials,
    /// Slots that will never dial again: refused, panicked, or out of retries.
    dead_slots,
    /// Answers with a status other than 1.
    refusals,
    /// Failed attempts (connect, write, read, deadline, decode), each followed by a backoff.
    init_errors,
    /// Successful handshakes whose read left bytes after the response in the slot's buffer.
    stale_handoffs,
    /// Hosted connections whose backend could not be connected.
    backend_failures,
    /// MOSN panics: a non-response frame answered an init (`ret.(*ConnectionInitResponse)`).
    panics,
});

/// What `graceful_close` did, as MOSN's `Stop()` would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GracefulClose {
    /// The frame went out on the aside connection with these addresses, and the aside closed.
    Sent(Vec<String>),
    /// The aside connection was not up; MOSN's write fails (logged) and it closes it anyway.
    WriteFailed(String),
    /// A data slot has no connection (`rawc == nil`): MOSN panics, nothing is sent.
    NilConnection,
    /// `Start()` has not returned (or panicked): the peer is not in MOSN's map.
    NotStored,
    /// No aside connection could be opened.
    NoAside,
}

/// A running scripted MOSN agent; dropping it closes every connection at once.
pub struct MosnAgent {
    rt: Option<tokio::runtime::Runtime>,
    peer: Arc<Peer>,
}

impl MosnAgent {
    pub fn counts(&self) -> AgentCounts {
        self.peer.counters.snapshot()
    }

    /// Local addresses of the slots `Start()` listed (`None`: no connection now).
    pub fn data_local_addrs(&self) -> Vec<Option<SocketAddr>> {
        let conns = self.peer.connections.lock().unwrap();
        conns
            .iter()
            .map(|s| *s.local_addr.lock().unwrap())
            .collect()
    }

    /// MOSN's `AgentPeer.Stop()`: returns once the frame is written (or not); the data
    /// connections are closed `graceful_close_max_wait` later, as MOSN does.
    pub fn graceful_close(&self) -> GracefulClose {
        let peer = self.peer.clone();
        let rt = self.rt.as_ref().expect("runtime");
        rt.block_on(async move { stop(peer).await })
    }
}

impl Drop for MosnAgent {
    fn drop(&mut self) {
        for s in self.peer.connections.lock().unwrap().iter() {
            s.close();
        }
        if let Some(a) = self.peer.aside.lock().unwrap().as_ref() {
            a.close();
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

pub(super) struct Peer {
    pub cfg: Config,
    pub counters: AgentCounters,
    /// MOSN's `a.connections`: slots whose first `initConnection` returned nil.
    pub connections: Mutex<Vec<Arc<Slot>>>,
    pub aside: Mutex<Option<Arc<Slot>>>,
    /// `peerMap.Store` ran (after `Start()` returned).
    pub stored: AtomicBool,
    /// Connections MOSN forgot after a panic (never read, never closed).
    pub leaked: Mutex<Vec<TcpStream>>,
}

/// `AgentPeer.Stop()` (agent.go:273-312).
async fn stop(peer: Arc<Peer>) -> GracefulClose {
    if !peer.stored.load(Ordering::SeqCst) {
        return GracefulClose::NotStored;
    }
    // The close-wait timer starts first; when it fires everything is closed.
    let deadline = peer.clone();
    tokio::spawn(async move {
        tokio::time::sleep(deadline.cfg.graceful_close_max_wait).await;
        for s in deadline.connections.lock().unwrap().iter() {
            s.close();
        }
        if let Some(a) = deadline.aside.lock().unwrap().as_ref() {
            a.close();
        }
    });
    let has_aside = peer.aside.lock().unwrap().is_some();
    if !has_aside && !init_aside(&peer).await {
        return GracefulClose::NoAside;
    }
    let mut addresses = Vec::new();
    for conn in peer.connections.lock().unwrap().iter() {
        let Some(addr) = *conn.local_addr.lock().unwrap() else {
            // `conn.rawc.LocalAddr()` on nil: panic, recovered; nothing is sent.
            return GracefulClose::NilConnection;
        };
        conn.prepare_close.store(true, Ordering::SeqCst);
        addresses.push(addr.to_string());
    }
    let aside = peer.aside.lock().unwrap().clone();
    let Some(aside) = aside else {
        return GracefulClose::NoAside;
    };
    let frame = wire::graceful_close_frame(&addresses, &peer.cfg.cluster);
    let writer = aside.writer.lock().unwrap().clone();
    let written = match writer {
        None => Err("the aside connection is not up".to_string()),
        Some(w) => w
            .lock()
            .await
            .write_all(&frame)
            .await
            .map_err(|e| e.to_string()),
    };
    aside.close();
    match written {
        Ok(()) => GracefulClose::Sent(addresses),
        Err(e) => GracefulClose::WriteFailed(e),
    }
}
