//! Test helpers: builders that start servers, agents and backends on loopback with port 0 and
//! return once they are listening, plus a `both_backends!` macro and condition waits.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub mod logs;
pub mod process;
pub mod raw_agent;
pub mod udp;

#[allow(unused_imports)]
pub use raw_agent::RawAgent;

use ringtun::agent::AgentHandle;
use ringtun::config::{AgentConfig, IoBackend, ServerConfig};
use ringtun::server::ServerHandle;

/// Runs a test body once per I/O backend: `name::epoll` and `name::uring`. Where io_uring cannot
/// be used the io_uring run prints a `RINGTUN-SKIP io_uring:` line saying why and passes, or
/// fails when `RINGTUN_REQUIRE_URING=1` (see `ringtun::rt::uring_gate`).
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[test]
            fn epoll() {
                let f: fn(ringtun::config::IoBackend) = $body;
                f(ringtun::config::IoBackend::Epoll);
            }
            #[test]
            fn uring() {
                if !ringtun::rt::uring_gate::available_for_test() {
                    return;
                }
                let f: fn(ringtun::config::IoBackend) = $body;
                f(ringtun::config::IoBackend::Uring);
            }
        }
    };
}

/// Polls `cond` until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A cluster of a test server.
#[derive(Clone)]
pub struct ClusterSpec {
    pub name: String,
    pub lb_type: &'static str,
    pub tokens: Vec<String>,
    pub pool_wait_ms: u64,
    /// `credential_policy` when `tokens` is not empty: `token` unless [`ServerBuilder::hmac`].
    pub hmac: bool,
    /// `frontends[0]` fields set on top of `address` (which they may replace).
    pub frontend: serde_json::Map<String, serde_json::Value>,
}

/// Builder for a test server.
pub struct ServerBuilder {
    backend: IoBackend,
    workers: usize,
    heartbeat_interval_ms: u64,
    handshake_timeout_ms: u64,
    max_frame_payload_bytes: usize,
    tunnel_address: String,
    clusters: Vec<ClusterSpec>,
    admin: bool,
    /// `tunnel_listener.tls_context`.
    tls: Option<serde_json::Value>,
}

pub fn server(backend: IoBackend) -> ServerBuilder {
    ServerBuilder {
        backend,
        workers: 2,
        heartbeat_interval_ms: 10_000,
        handshake_timeout_ms: 5_000,
        max_frame_payload_bytes: 16384,
        tunnel_address: "127.0.0.1:0".into(),
        clusters: vec![],
        admin: false,
        tls: None,
    }
}

impl ServerBuilder {
    pub fn cluster(mut self, name: &str) -> Self {
        self.clusters.push(ClusterSpec {
            name: name.into(),
            lb_type: "weighted_round_robin",
            tokens: vec![],
            pool_wait_ms: 2000,
            hmac: false,
            frontend: serde_json::Map::new(),
        });
        self
    }
    /// Sets a field of the last cluster's frontend (`address`, `accept_proxy_protocol`, ...).
    pub fn frontend_field(mut self, key: &str, value: serde_json::Value) -> Self {
        let c = self.clusters.last_mut().unwrap();
        c.frontend.insert(key.to_string(), value);
        self
    }
    pub fn lb(mut self, lb: &'static str) -> Self {
        self.clusters.last_mut().unwrap().lb_type = lb;
        self
    }
    pub fn token(mut self, token: &str) -> Self {
        self.clusters.last_mut().unwrap().tokens.push(token.into());
        self
    }
    /// The last cluster's `token`s are `hmac` shared secrets instead.
    pub fn hmac(mut self) -> Self {
        self.clusters.last_mut().unwrap().hmac = true;
        self
    }
    pub fn pool_wait_ms(mut self, ms: u64) -> Self {
        self.clusters.last_mut().unwrap().pool_wait_ms = ms;
        self
    }
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }
    pub fn heartbeat_ms(mut self, ms: u64) -> Self {
        self.heartbeat_interval_ms = ms;
        self
    }
    pub fn handshake_timeout_ms(mut self, ms: u64) -> Self {
        self.handshake_timeout_ms = ms;
        self
    }
    pub fn max_frame_payload_bytes(mut self, n: usize) -> Self {
        self.max_frame_payload_bytes = n;
        self
    }
    pub fn tunnel_address(mut self, addr: SocketAddr) -> Self {
        self.tunnel_address = addr.to_string();
        self
    }
    /// Serves the admin endpoint on a free loopback port (`ServerHandle::admin_addr`).
    pub fn admin(mut self) -> Self {
        self.admin = true;
        self
    }
    /// Sets `tunnel_listener.tls_context` (e.g. `{"cert_chain_file": .., "private_key_file": ..}`).
    pub fn tls(mut self, tls_context: serde_json::Value) -> Self {
        self.tls = Some(tls_context);
        self
    }

    pub fn config(&self) -> ServerConfig {
        let clusters: Vec<serde_json::Value> = self
            .clusters
            .iter()
            .map(|c| {
                let mut frontend = serde_json::json!({"address": "127.0.0.1:0"});
                for (k, v) in &c.frontend {
                    frontend[k] = v.clone();
                }
                serde_json::json!({
                    "name": c.name,
                    "lb_type": c.lb_type,
                    "credential_policy": match (c.tokens.is_empty(), c.hmac) {
                        (true, _) => "",
                        (false, false) => "token",
                        (false, true) => "hmac",
                    },
                    "credentials": c.tokens,
                    "frontends": [frontend],
                    "pool_wait_ms": c.pool_wait_ms,
                })
            })
            .collect();
        let mut json = serde_json::json!({
            "workers": self.workers,
            "io_backend": self.backend,
            "heartbeat_interval_ms": self.heartbeat_interval_ms,
            "tunnel_listener": {
                "address": self.tunnel_address,
                "handshake_timeout_ms": self.handshake_timeout_ms,
                "max_frame_payload_bytes": self.max_frame_payload_bytes,
            },
            "clusters": clusters,
        });
        if self.admin {
            json["admin"] = serde_json::json!({"address": "127.0.0.1:0"});
        }
        if let Some(tls) = &self.tls {
            json["tunnel_listener"]["tls_context"] = tls.clone();
        }
        ServerConfig::from_str(Path::new("test-server.json"), &json.to_string()).unwrap()
    }

    /// Starts the server; it is listening when this returns.
    pub fn run(self) -> ServerHandle {
        ServerHandle::start(self.config()).unwrap()
    }
}

/// Builder for a test agent.
pub struct AgentBuilder {
    backend: IoBackend,
    host_name: String,
    weight: i64,
    cluster: String,
    servers: Vec<String>,
    backend_addr: SocketAddr,
    connection_num: u32,
    workers: usize,
    token: Option<String>,
    reconnect_base_ms: u64,
    reconnect_max_ms: u64,
    admin: bool,
    /// `tunnels[0]` fields set on top of the defaults (listers, grace, limits).
    extra: serde_json::Map<String, serde_json::Value>,
    /// `listeners[0]` fields set on top of the defaults.
    listener: serde_json::Map<String, serde_json::Value>,
    /// `agent_id`: unique per builder unless [`AgentBuilder::agent_id`] sets it (`None`: derived
    /// from the host name), so agents of one test sharing a host name stay distinct hosts.
    agent_id: Option<String>,
}

/// A process-unique agent id for a test agent.
fn unique_agent_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn agent(backend: IoBackend, tunnel: SocketAddr, target: SocketAddr) -> AgentBuilder {
    AgentBuilder {
        backend,
        host_name: "edge-test".into(),
        weight: 10,
        cluster: "c".into(),
        servers: vec![tunnel.to_string()],
        backend_addr: target,
        connection_num: 4,
        workers: 1,
        token: None,
        reconnect_base_ms: 50,
        reconnect_max_ms: 1000,
        admin: false,
        extra: serde_json::Map::new(),
        listener: serde_json::Map::new(),
        agent_id: Some(unique_agent_id()),
    }
}

impl AgentBuilder {
    /// Sets `agent_id` (`None`: leave it out, so it is derived from the host name).
    pub fn agent_id(mut self, id: Option<&str>) -> Self {
        self.agent_id = id.map(str::to_string);
        self
    }
    pub fn host_name(mut self, n: &str) -> Self {
        self.host_name = n.into();
        self
    }
    pub fn weight(mut self, w: i64) -> Self {
        self.weight = w;
        self
    }
    pub fn cluster(mut self, c: &str) -> Self {
        self.cluster = c.into();
        self
    }
    pub fn connection_num(mut self, n: u32) -> Self {
        self.connection_num = n;
        self
    }
    /// Agent worker threads (1 by default).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }
    pub fn token(mut self, t: &str) -> Self {
        self.token = Some(t.into());
        self
    }
    /// Serves the admin endpoint on a free loopback port (`AgentHandle::admin_addr`).
    pub fn admin(mut self) -> Self {
        self.admin = true;
        self
    }
    pub fn reconnect_ms(mut self, base: u64, max: u64) -> Self {
        self.reconnect_base_ms = base;
        self.reconnect_max_ms = max;
        self
    }

    /// Sets `tunnels[0].tls_context` (e.g. `{"ca_file": .., "server_name": ..}`).
    pub fn tls(self, tls_context: serde_json::Value) -> Self {
        self.tunnel_field("tls_context", tls_context)
    }

    /// Sets a `tunnels[0]` field.
    pub fn tunnel_field(mut self, key: &str, value: serde_json::Value) -> Self {
        self.extra.insert(key.to_string(), value);
        self
    }

    /// Sets a `listeners[0]` field (e.g. `send_proxy_protocol`).
    pub fn listener_field(mut self, key: &str, value: serde_json::Value) -> Self {
        self.listener.insert(key.to_string(), value);
        self
    }

    /// Discovers servers from a `file` lister instead of `server_list`.
    pub fn file_lister(self, path: &Path, refresh_ms: u64) -> Self {
        self.tunnel_field("server_list", serde_json::json!([])).tunnel_field(
            "dynamic_server_list_config",
            serde_json::json!({"dynamic_server_lister": "file", "path": path, "refresh_interval_ms": refresh_ms}),
        )
    }

    pub fn json(&self) -> serde_json::Value {
        let mut tunnel = serde_json::json!({
            "connection_num": self.connection_num,
            "cluster": self.cluster,
            "hosting_listener": "backend",
            "server_list": self.servers,
            "reconnect_base_duration_ms": self.reconnect_base_ms,
            "reconnect_max_duration_ms": self.reconnect_max_ms,
            "connect_timeout_duration_ms": 2000,
        });
        if let Some(t) = &self.token {
            tunnel["credential_policy"] = "token".into();
            tunnel["credential"] = t.clone().into();
        }
        for (k, v) in &self.extra {
            tunnel[k] = v.clone();
        }
        let mut listener = serde_json::json!({"name": "backend", "backend": self.backend_addr.to_string(), "connect_timeout_ms": 1000});
        for (k, v) in &self.listener {
            listener[k] = v.clone();
        }
        let mut json = serde_json::json!({
            "host_name": self.host_name,
            "weight": self.weight,
            "workers": self.workers,
            "io_backend": self.backend,
            "listeners": [listener],
            "tunnels": [tunnel],
        });
        if self.admin {
            json["admin"] = serde_json::json!({"address": "127.0.0.1:0"});
        }
        if let Some(id) = &self.agent_id {
            json["agent_id"] = id.clone().into();
        }
        json
    }

    pub fn config(&self) -> AgentConfig {
        AgentConfig::from_str(Path::new("test-agent.json"), &self.json().to_string()).unwrap()
    }

    /// Starts the agent in this process (connections come up in the background).
    pub fn run(self) -> AgentHandle {
        AgentHandle::start(self.config()).unwrap()
    }

    /// Writes the config to a temp file and starts `ringtun agent` as a child process.
    pub fn spawn_process(self, dir: &Path) -> std::process::Child {
        let path = dir.join(format!("agent-{}.json", self.host_name));
        std::fs::write(&path, self.json().to_string()).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_ringtun"))
            .args(["agent", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }
}

/// Waits until the cluster has `hosts` hosts, each with at least `idle` idle data connections.
pub fn wait_registered(server: &ServerHandle, cluster: &str, hosts: usize, idle: usize) {
    let ok = wait_until(Duration::from_secs(10), || {
        let h = server.hosts(cluster);
        h.len() == hosts
            && h.iter().all(|h| {
                h.idle_connections >= idle
                    && (h.legacy || h.aside_connections == 1)
                    // Workers know the host: its join's publication is out.
                    && h.published
            })
    });
    assert!(
        ok,
        "cluster {cluster} never had {hosts} hosts with {idle} idle connections: {:?}",
        server.hosts(cluster)
    );
}

/// An echo backend on port 0 that counts the connections it accepted.
pub struct EchoBackend {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicU64>,
}

/// A backend that speaks first (like SMTP or SSH), then echoes.
pub fn banner_backend(banner: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            std::thread::spawn(move || {
                if s.write_all(banner).is_err() {
                    return;
                }
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

pub fn echo_backend() -> EchoBackend {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => {
                            let _ = s.shutdown(std::net::Shutdown::Write);
                            return;
                        }
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    EchoBackend { addr, accepted }
}

/// A free loopback port with nothing listening on it (bound, then released).
pub fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Connects, sends `data`, half-closes, reads until EOF.
pub fn echo_roundtrip(frontend: SocketAddr, data: &[u8]) -> Vec<u8> {
    let c = TcpStream::connect(frontend).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut w = c.try_clone().unwrap();
    let data_owned = data.to_vec();
    let writer = std::thread::spawn(move || {
        w.write_all(&data_owned).unwrap();
        w.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut out = Vec::with_capacity(data.len());
    let mut r = c;
    r.read_to_end(&mut out).unwrap();
    writer.join().unwrap();
    out
}

/// Deterministic test bytes.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31 + seed as usize) % 251) as u8)
        .collect()
}

/// One HTTP/1.1 request to an admin endpoint; returns the status code, the head and the body.
pub fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    http_raw(
        addr,
        &format!("{method} {path} HTTP/1.1\r\nHost: test\r\n\r\n"),
    )
}

/// Sends `request` as is; returns the status code, the head and the body of the answer.
pub fn http_raw(addr: SocketAddr, request: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, head.to_string(), body.to_string())
}

/// The value of one Prometheus sample, e.g. `metric(&text, "ringtun_x_total{cluster=\"c\"}")`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// A slow link in front of `target`: a `ringtun bench relay` adding `one_way_delay` each way
/// (handshakes included), on its own thread for the rest of the test process. Returns the
/// address to dial instead of `target`.
pub fn slow_link(target: SocketAddr, one_way_delay: Duration) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (addr, task) = ringtun::bench::relay::Relay::to(target)
                .one_way_delay(one_way_delay)
                .spawn("127.0.0.1:0")
                .await
                .unwrap();
            tx.send(addr).unwrap();
            let _ = task.await;
        });
    });
    rx.recv().unwrap()
}
