//! The agent: dials out to servers and carries their sessions to local backends.
//!
//! Thread-per-core like the server: each worker thread runs its share of connection slots and
//! their sessions on its own runtime. Every slot has its own retry loop, so connections come up
//! (and fail) independently. This module wires threads; `slot` holds the per-connection logic.

pub mod backoff;
pub mod credential;
pub mod dial;
pub mod slot;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::admin::{self, AdminError, AdminServer};
use crate::config::{AgentConfig, HostingListenerConfig};
use crate::dataplane::pump::Pools;
use crate::protocol::Role;
use crate::rt::{self, RtError};
use backoff::Backoff;
use slot::SlotSpec;

/// Why an agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Runtime(#[from] RtError),
    #[error("invalid address admin.address: {0:?}")]
    AdminAddress(String),
    #[error(transparent)]
    Admin(#[from] AdminError),
}

/// Agent-wide counters and gauges (connection events only, never per byte).
#[derive(Debug, Default)]
pub struct AgentStats {
    /// Data connections handshaken and waiting for a session.
    pub idle_data_connections: AtomicU64,
    /// Aside connections up.
    pub aside_connections: AtomicU64,
    /// Failed dials (connect errors, refusals, timeouts).
    pub dial_failures_total: AtomicU64,
    /// Sessions started by servers.
    pub sessions_total: AtomicU64,
    /// Sessions whose backend could not be reached.
    pub backend_failures_total: AtomicU64,
    /// Sessions pumping now.
    pub active_sessions: AtomicU64,
    pub bytes_to_backend_total: AtomicU64,
    pub bytes_from_backend_total: AtomicU64,
}

/// A plain copy of the stats.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AgentStatus {
    pub idle_data_connections: u64,
    pub aside_connections: u64,
    pub dial_failures_total: u64,
    pub sessions_total: u64,
    pub backend_failures_total: u64,
    pub active_sessions: u64,
}

/// Connections of one tunnel that are up (handshaken), idle or in a session.
#[derive(Debug, Default)]
pub struct TunnelGauges {
    pub data_connections: AtomicU64,
    pub aside_connections: AtomicU64,
}

/// Decrements a [`TunnelGauges`] gauge when the connection it counts ends.
pub struct ConnectionUp<'a>(&'a AtomicU64);

impl Drop for ConnectionUp<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// State shared by every slot of the agent (read-only but for the atomics).
pub struct Shared {
    pub config: AgentConfig,
    /// The I/O backend sessions run on.
    pub backend: rt::Backend,
    pub agent_id: String,
    pub stats: AgentStats,
    /// One per `config.tunnels` entry.
    pub tunnels: Vec<TunnelGauges>,
    /// False once the agent is stopping (admin `/ready`).
    pub running: AtomicBool,
}

impl Shared {
    /// Counts a handshaken connection of `tunnel` until the returned guard is dropped.
    pub fn connection_up(&self, tunnel: usize, role: Role) -> Option<ConnectionUp<'_>> {
        let t = self.tunnels.get(tunnel)?;
        let gauge = match role {
            Role::Data => &t.data_connections,
            Role::Aside => &t.aside_connections,
        };
        gauge.fetch_add(1, Ordering::Relaxed);
        Some(ConnectionUp(gauge))
    }

    /// True when every enabled tunnel has at least one data connection up.
    pub fn ready(&self) -> bool {
        self.running.load(Ordering::Acquire)
            && self
                .config
                .tunnels
                .iter()
                .zip(&self.tunnels)
                .filter(|(t, _)| t.enable)
                .all(|(_, g)| g.data_connections.load(Ordering::Relaxed) > 0)
    }

    fn listener_of(&self, tunnel: usize) -> Option<&HostingListenerConfig> {
        let name = &self.config.tunnels.get(tunnel)?.hosting_listener;
        self.config.listeners.iter().find(|l| &l.name == name)
    }
}

/// Work for an agent worker thread.
enum Task {
    /// Resolve `server_list[server]` of a tunnel and start its slots.
    Resolve {
        tunnel: usize,
        server: usize,
    },
    Slot(SlotSpec),
}

/// A running agent.
pub struct AgentHandle {
    shared: Arc<Shared>,
    admin: Option<AdminServer>,
    stop: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
}

impl AgentHandle {
    /// Starts the worker threads and every slot; returns at once (connections come up in the
    /// background, each with its own retries).
    pub fn start(config: AgentConfig) -> Result<Self, AgentError> {
        let backend = rt::resolve_with(config.io_backend, config.uring_entries)?;
        let workers = if config.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            config.workers
        };
        let admin_listener = match &config.admin {
            Some(a) => {
                let addr: SocketAddr = a
                    .address
                    .parse()
                    .map_err(|_| AgentError::AdminAddress(a.address.clone()))?;
                Some(admin::bind(addr)?)
            }
            None => None,
        };
        let shared = Arc::new(Shared {
            backend,
            agent_id: format!("{:016x}", fastrand::u64(..)),
            tunnels: config
                .tunnels
                .iter()
                .map(|_| TunnelGauges::default())
                .collect(),
            config,
            stats: AgentStats::default(),
            running: AtomicBool::new(true),
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut senders = Vec::with_capacity(workers);
        let mut receivers = Vec::with_capacity(workers);
        for _ in 0..workers {
            let (tx, rx) = mpsc::unbounded_channel();
            senders.push(tx);
            receivers.push(rx);
        }
        let senders = Arc::new(senders);
        let mut threads = Vec::with_capacity(workers);
        for (index, rx) in receivers.into_iter().enumerate() {
            let (shared, senders, stop) = (shared.clone(), senders.clone(), stop_rx.clone());
            let pin_to = shared.config.cpu_affinity.then_some(index);
            let spawned = rt::spawn_worker(
                format!("ringtun-agent-w{index}"),
                backend,
                pin_to,
                move || worker(shared, index, rx, senders, stop),
            );
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    let _ = stop_tx.send(true);
                    return Err(e.into());
                }
            }
        }
        let mut next = 0usize;
        for (t, tunnel) in shared.config.tunnels.iter().enumerate() {
            if !tunnel.enable {
                info!(cluster = %tunnel.cluster, "tunnel disabled; skipping");
                continue;
            }
            for s in 0..tunnel.server_list.len() {
                let _ = senders[next % workers].send(Task::Resolve {
                    tunnel: t,
                    server: s,
                });
                next += 1;
            }
        }
        let admin = match admin_listener {
            Some(listener) => {
                let handler = admin::agent::AgentAdmin {
                    shared: shared.clone(),
                    backend: backend.name(),
                };
                match AdminServer::start("ringtun-agent-admin", listener, handler) {
                    Ok(a) => Some(a),
                    Err(e) => {
                        let _ = stop_tx.send(true);
                        return Err(e.into());
                    }
                }
            }
            None => None,
        };
        info!(host_name = %shared.config.host_name, agent_id = %shared.agent_id, workers,
            backend = backend.name(), "agent started");
        Ok(Self {
            shared,
            admin,
            stop: stop_tx,
            threads,
        })
    }

    /// The bound admin address (port 0 resolved), when `admin` is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(AdminServer::local_addr)
    }

    /// The id this agent process announces.
    pub fn agent_id(&self) -> &str {
        &self.shared.agent_id
    }

    /// Current counters.
    pub fn status(&self) -> AgentStatus {
        let s = &self.shared.stats;
        AgentStatus {
            idle_data_connections: s.idle_data_connections.load(Ordering::Relaxed),
            aside_connections: s.aside_connections.load(Ordering::Relaxed),
            dial_failures_total: s.dial_failures_total.load(Ordering::Relaxed),
            sessions_total: s.sessions_total.load(Ordering::Relaxed),
            backend_failures_total: s.backend_failures_total.load(Ordering::Relaxed),
            active_sessions: s.active_sessions.load(Ordering::Relaxed),
        }
    }

    /// Closes every connection and waits for the threads to exit.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.shared.running.store(false, Ordering::Release);
        let _ = self.stop.send(true);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some(mut a) = self.admin.take() {
            a.stop();
        }
    }
}

impl Drop for AgentHandle {
    fn drop(&mut self) {
        self.stop_now();
    }
}

async fn worker(
    shared: Arc<Shared>,
    index: usize,
    mut tasks: mpsc::UnboundedReceiver<Task>,
    senders: Arc<Vec<mpsc::UnboundedSender<Task>>>,
    mut stop: watch::Receiver<bool>,
) {
    let pool = Pools::new(shared.config.pump_buffer_bytes);
    let mut spread = index;
    loop {
        tokio::select! {
            task = tasks.recv() => match task {
                Some(Task::Slot(spec)) => {
                    tokio::task::spawn_local(slot::run(shared.clone(), spec, pool.clone(), stop.clone()));
                }
                Some(Task::Resolve { tunnel, server }) => {
                    let (shared, senders, stop) = (shared.clone(), senders.clone(), stop.clone());
                    tokio::task::spawn_local(resolve(shared, tunnel, server, senders, spread, stop));
                    spread += 1;
                }
                None => {
                    let _ = stop.changed().await;
                    return;
                }
            },
            _ = stop.changed() => return,
        }
    }
}

/// Resolves one `server_list` entry (retrying with backoff) and starts a slot set per address.
async fn resolve(
    shared: Arc<Shared>,
    tunnel: usize,
    server: usize,
    senders: Arc<Vec<mpsc::UnboundedSender<Task>>>,
    spread: usize,
    mut stop: watch::Receiver<bool>,
) {
    let Some(t) = shared.config.tunnels.get(tunnel) else {
        return;
    };
    let Some(name) = t.server_list.get(server) else {
        return;
    };
    let backoff = Backoff {
        base_ms: t.reconnect_base_duration_ms,
        max_ms: t.reconnect_max_duration_ms,
    };
    let mut failures = 0;
    let peers: Vec<SocketAddr> = loop {
        match tokio::net::lookup_host(name.as_str()).await {
            Ok(addrs) => {
                let mut v: Vec<SocketAddr> = addrs.collect();
                v.sort();
                v.dedup();
                if !v.is_empty() {
                    break v;
                }
            }
            Err(e) => {
                warn!(server = %name, cluster = %t.cluster, "cannot resolve server address: {e}")
            }
        }
        failures += 1;
        let delay = backoff.delay(failures, fastrand::f64());
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
    };
    let mut next = spread;
    for peer in peers {
        info!(cluster = %t.cluster, %peer, connections = t.connection_num, "dialling server");
        let roles = (0..t.connection_num)
            .map(|i| (Role::Data, i))
            .chain(std::iter::once((Role::Aside, 0)));
        for (role, index) in roles {
            let spec = SlotSpec {
                tunnel,
                peer,
                role,
                index,
            };
            let _ = senders[next % senders.len()].send(Task::Slot(spec));
            next += 1;
        }
    }
}
