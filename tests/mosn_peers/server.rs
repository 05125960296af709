//! A scripted MOSN tunnel server: a listener with the `tunnel` network filter
//! (pkg/filter/network/tunnel/filter.go) plus one `tcp_proxy` frontend per cluster.
//!
//! Until a connection is initialised, each read event runs `DecodeFromBuffer` once
//! (filter.go:40-60): a decode error closes the connection, an incomplete frame waits. An init
//! is checked policy first (3 without a validator, 2 when it refuses), then cluster (4); success
//! writes `{"status":1}` and registers one host keyed by the connection's remote address
//! (filter.go:72-122). A refusal does not close the connection. A graceful close removes hosts by
//! address (filter.go:124-130, host_remover.go:43-49). After the init every byte is upstream
//! data: bytes that arrive before a frontend uses the connection stay buffered and reach the
//! client with the next read event on the tunnel connection (filtermanager.go:99-108,
//! connection.go:627-642). Nothing is ever sent after the response; there is no heartbeat.
//!
//! Not MOSN: a frontend takes an *unused* connection (oldest first) and waits up to `pool_wait`
//! for one. MOSN's load balancer may hand one tunnel connection to two clients, and with no host
//! it closes the client at once (streamproxy.go:149-181; `pool_wait(Duration::ZERO)`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use super::{bump, counters, wire};

/// A credential validator: `Validate(credential, host, cluster)` (ext/base.go:35-37).
pub type Validator = Arc<dyn Fn(&str, &str, &str) -> bool + Send + Sync>;

/// Most bytes buffered from an unused tunnel connection before it is closed.
const PENDING_LIMIT_BYTES: usize = 1 << 20;

pub struct MosnServerBuilder {
    clusters: Vec<String>,
    validators: HashMap<String, Validator>,
    pool_wait: Duration,
    idle_timeout: Option<Duration>,
}

pub fn mosn_server() -> MosnServerBuilder {
    MosnServerBuilder {
        clusters: Vec::new(),
        validators: HashMap::new(),
        pool_wait: Duration::from_secs(5),
        idle_timeout: Some(Duration::from_secs(90)),
    }
}

impl MosnServerBuilder {
    /// A cluster (with a frontend listener on a free loopback port).
    pub fn cluster(mut self, name: &str) -> Self {
        self.clusters.push(name.into());
        self
    }
    /// Registers a validator under a credential policy name.
    pub fn validator(
        mut self,
        policy: &str,
        f: impl Fn(&str, &str, &str) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.validators.insert(policy.into(), Arc::new(f));
        self
    }
    pub fn pool_wait(mut self, d: Duration) -> Self {
        self.pool_wait = d;
        self
    }
    /// The tunnel listener's `connection_idle_timeout` (MOSN's default 90 s; `None`: never).
    pub fn idle_timeout(mut self, d: Option<Duration>) -> Self {
        self.idle_timeout = d;
        self
    }

    pub fn start(self) -> MosnServer {
        let rt = super::runtime("mosn-server");
        let state = Arc::new(State {
            clusters: self.clusters.clone(),
            validators: self.validators,
            pool_wait: self.pool_wait,
            idle_timeout: self.idle_timeout,
            hosts: Mutex::new(HashMap::new()),
            registered: Notify::new(),
            counters: ServerCounters::default(),
        });
        let (tunnel, frontends) = rt.block_on(async {
            let tunnel = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let mut frontends = HashMap::new();
            for c in &self.clusters {
                let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
                frontends.insert(c.clone(), l);
            }
            (tunnel, frontends)
        });
        let tunnel_addr = tunnel.local_addr().unwrap();
        let mut frontend_addrs = HashMap::new();
        for (cluster, l) in frontends {
            frontend_addrs.insert(cluster.clone(), l.local_addr().unwrap());
            rt.spawn(frontend_loop(state.clone(), cluster, l));
        }
        rt.spawn(tunnel_loop(state.clone(), tunnel));
        MosnServer {
            rt: Some(rt),
            tunnel_addr,
            frontend_addrs,
            state,
        }
    }
}

counters!(ServerCounters => ServerCounts {
    tunnel_accepted,
    /// Inits decoded.
    inits,
    status_success,
    status_auth_failed,
    status_validator_not_found,
    status_cluster_not_exist,
    /// Connections closed for a frame `DecodeFromBuffer` rejected.
    decode_errors,
    graceful_closes,
    /// Hosts removed by graceful closes.
    hosts_removed_by_graceful_close,
    /// Frontends given a tunnel connection.
    sessions,
    /// Frontends closed with no host to give them.
    frontend_refused,
    /// Tunnel connections closed by the idle timeout.
    idle_closes,
});

/// A running scripted MOSN server; dropping it closes everything.
pub struct MosnServer {
    rt: Option<tokio::runtime::Runtime>,
    tunnel_addr: SocketAddr,
    frontend_addrs: HashMap<String, SocketAddr>,
    state: Arc<State>,
}

impl MosnServer {
    pub fn tunnel_addr(&self) -> SocketAddr {
        self.tunnel_addr
    }
    pub fn frontend_addr(&self, cluster: &str) -> SocketAddr {
        self.frontend_addrs[cluster]
    }
    /// Registered hosts of a cluster (remote addresses), in or out of a session.
    pub fn hosts(&self, cluster: &str) -> Vec<SocketAddr> {
        let hosts = self.state.hosts.lock().unwrap();
        hosts
            .get(cluster)
            .map(|v| v.iter().map(|h| h.addr).collect())
            .unwrap_or_default()
    }
    /// Registered hosts no frontend has used yet.
    pub fn idle_hosts(&self, cluster: &str) -> usize {
        let hosts = self.state.hosts.lock().unwrap();
        hosts
            .get(cluster)
            .map_or(0, |v| v.iter().filter(|h| h.pair.is_some()).count())
    }
    pub fn counts(&self) -> ServerCounts {
        self.state.counters.snapshot()
    }
}

impl Drop for MosnServer {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

struct Host {
    addr: SocketAddr,
    host_name: String,
    weight: u32,
    /// Hands a frontend to the connection; taken when a frontend uses it.
    pair: Option<oneshot::Sender<TcpStream>>,
}

struct State {
    clusters: Vec<String>,
    validators: HashMap<String, Validator>,
    pool_wait: Duration,
    idle_timeout: Option<Duration>,
    hosts: Mutex<HashMap<String, Vec<Host>>>,
    registered: Notify,
    counters: ServerCounters,
}

impl State {
    /// `removeHost(address, cluster)`.
    fn remove_host(&self, addr: &str, cluster: &str) -> usize {
        let mut hosts = self.hosts.lock().unwrap();
        let Some(list) = hosts.get_mut(cluster) else {
            return 0;
        };
        let before = list.len();
        list.retain(|h| h.addr.to_string() != addr);
        before - list.len()
    }

    fn idle_deadline(&self) -> Instant {
        Instant::now()
            + self
                .idle_timeout
                .unwrap_or(Duration::from_secs(86_400 * 365))
    }
}

async fn tunnel_loop(state: Arc<State>, listener: TcpListener) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        bump(&state.counters.tunnel_accepted);
        tokio::spawn(tunnel_conn(state.clone(), stream, peer));
    }
}

/// One tunnel connection, from accept to close.
async fn tunnel_conn(state: Arc<State>, mut stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    // Not initialised: one decode per read event.
    let cluster = loop {
        let read = tokio::time::timeout_at(state.idle_deadline(), stream.read(&mut chunk)).await;
        match read {
            Err(_) => {
                bump(&state.counters.idle_closes);
                return;
            }
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
        match wire::decode_from_buffer(&mut buf) {
            Ok(None) => continue,
            Err(_) => {
                bump(&state.counters.decode_errors);
                return;
            }
            Ok(Some(wire::Msg::Init(info))) => {
                bump(&state.counters.inits);
                let status = decide(&state, &info);
                if stream
                    .write_all(&wire::response_frame(status))
                    .await
                    .is_err()
                {
                    return;
                }
                if status == wire::STATUS_SUCCESS {
                    break info;
                }
            }
            Ok(Some(wire::Msg::GracefulClose {
                addresses,
                cluster_name,
            })) => {
                bump(&state.counters.graceful_closes);
                for a in &addresses {
                    let removed = state.remove_host(a, &cluster_name) as u64;
                    state
                        .counters
                        .hosts_removed_by_graceful_close
                        .fetch_add(removed, std::sync::atomic::Ordering::SeqCst);
                }
            }
            // `handleRequest` lets any other frame through: nothing happens.
            Ok(Some(wire::Msg::Response(_))) => {}
        }
    };
    let (pair_tx, pair_rx) = oneshot::channel();
    state
        .hosts
        .lock()
        .unwrap()
        .entry(cluster.cluster_name.clone())
        .or_default()
        .push(Host {
            addr: peer,
            host_name: cluster.host_name.clone(),
            weight: cluster.weight as u32,
            pair: Some(pair_tx),
        });
    state.registered.notify_waiters();
    serve_host(&state, stream, buf, pair_rx).await;
    // hostRemover: the connection closed, its host goes.
    state.remove_host(&peer.to_string(), &cluster.cluster_name);
}

/// `handleConnectionInit`'s checks, in MOSN's order.
fn decide(state: &State, info: &wire::InitInfo) -> i64 {
    let status = if !info.credential_policy.is_empty() {
        match state.validators.get(&info.credential_policy) {
            None => wire::STATUS_VALIDATOR_NOT_FOUND,
            Some(v) if !v(&info.credential, &info.host_name, &info.cluster_name) => {
                wire::STATUS_AUTH_FAILED
            }
            Some(_) => cluster_status(state, info),
        }
    } else {
        cluster_status(state, info)
    };
    let c = &state.counters;
    bump(match status {
        wire::STATUS_SUCCESS => &c.status_success,
        wire::STATUS_AUTH_FAILED => &c.status_auth_failed,
        wire::STATUS_VALIDATOR_NOT_FOUND => &c.status_validator_not_found,
        _ => &c.status_cluster_not_exist,
    });
    status
}

fn cluster_status(state: &State, info: &wire::InitInfo) -> i64 {
    if state.clusters.contains(&info.cluster_name) {
        wire::STATUS_SUCCESS
    } else {
        wire::STATUS_CLUSTER_NOT_EXIST
    }
}

/// An initialised connection: buffers upstream bytes until a frontend uses it, then carries
/// that one session. Either side's EOF closes both.
async fn serve_host(
    state: &State,
    stream: TcpStream,
    mut pending: Vec<u8>,
    mut pair_rx: oneshot::Receiver<TcpStream>,
) {
    let (mut tunnel_rd, mut tunnel_wr) = stream.into_split();
    let mut chunk = vec![0u8; 16 * 1024];
    let mut removed = false;
    let client = loop {
        let deadline = state.idle_deadline();
        tokio::select! {
            read = tunnel_rd.read(&mut chunk) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    pending.extend_from_slice(&chunk[..n]);
                    if pending.len() > PENDING_LIMIT_BYTES {
                        return;
                    }
                }
            },
            paired = &mut pair_rx, if !removed => match paired {
                Ok(client) => break client,
                // Removed by a graceful close: the connection stays, unused.
                Err(_) => removed = true,
            },
            _ = tokio::time::sleep_until(deadline) => {
                bump(&state.counters.idle_closes);
                return;
            }
        }
    };
    let (mut client_rd, mut client_wr) = client.into_split();
    let mut from_client = vec![0u8; 16 * 1024];
    loop {
        let deadline = state.idle_deadline();
        tokio::select! {
            read = tunnel_rd.read(&mut chunk) => match read {
                Err(_) => return,
                // A read event delivers everything buffered, even EOF's (doRead → onRead).
                Ok(n) => {
                    pending.extend_from_slice(&chunk[..n]);
                    if !pending.is_empty() && client_wr.write_all(&pending).await.is_err() {
                        return;
                    }
                    pending.clear();
                    if n == 0 {
                        return;
                    }
                }
            },
            read = client_rd.read(&mut from_client) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tunnel_wr.write_all(&from_client[..n]).await.is_err() {
                        return;
                    }
                }
            },
            _ = tokio::time::sleep_until(deadline) => {
                bump(&state.counters.idle_closes);
                return;
            }
        }
    }
}

async fn frontend_loop(state: Arc<State>, cluster: String, listener: TcpListener) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let _ = client.set_nodelay(true);
        tokio::spawn(pair(state.clone(), cluster.clone(), client));
    }
}

/// Gives the client the oldest unused connection of the cluster, waiting up to `pool_wait`.
async fn pair(state: Arc<State>, cluster: String, mut client: TcpStream) {
    let deadline = Instant::now() + state.pool_wait;
    loop {
        let registered = state.registered.notified();
        loop {
            let sender = {
                let mut hosts = state.hosts.lock().unwrap();
                hosts
                    .get_mut(&cluster)
                    .and_then(|list| list.iter_mut().find_map(|h| h.pair.take()))
            };
            let Some(sender) = sender else { break };
            match sender.send(client) {
                Ok(()) => {
                    bump(&state.counters.sessions);
                    return;
                }
                // That connection just ended: try the next one.
                Err(back) => client = back,
            }
        }
        if Instant::now() >= deadline {
            bump(&state.counters.frontend_refused);
            return;
        }
        let wake = deadline.min(Instant::now() + Duration::from_millis(20));
        let _ = tokio::time::timeout_at(wake, registered).await;
    }
}
