//! The agent: dials out to servers and carries their sessions to local backends.
//!
//! Thread-per-core like the server: each worker thread runs its share of connection slots and
//! their sessions on its own runtime. Every slot has its own retry loop, so connections come up
//! (and fail) independently. This module wires threads; `slot` holds the per-connection logic.

mod admin;
pub mod backoff;
pub mod credential;
pub mod dial;
pub mod discovery;
pub mod peer;
pub mod resolve;
mod shared;
pub mod slot;
mod stats;

pub use shared::Shared;
pub use stats::{AgentStats, AgentStatus, ConnectionUp, TunnelGauges};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::admin::{AdminError, AdminServer};
use crate::config::AgentConfig;
use crate::dataplane::pump::Pools;
use crate::rt::{self, RtError};
use backoff::Backoff;
use peer::Peer;
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
    #[error("tunnels[{tunnel}].tls_context: {source}")]
    Tls {
        tunnel: usize,
        source: crate::tls::TlsError,
    },
}

/// Work for an agent worker thread.
pub(crate) enum Task {
    /// Resolve `server_list[server]` of a tunnel and start its slots.
    Resolve {
        tunnel: usize,
        server: usize,
    },
    /// Run a tunnel's dynamic server lister.
    Discover {
        tunnel: usize,
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
                Some(crate::admin::bind(addr)?)
            }
            None => None,
        };
        let mut tls = Vec::with_capacity(config.tunnels.len());
        for (tunnel, t) in config.tunnels.iter().enumerate() {
            tls.push(match &t.tls_context {
                Some(c) => Some(dial::TlsDial {
                    config: crate::tls::Rotating::new(
                        crate::tls::client_config(c)
                            .map_err(|source| AgentError::Tls { tunnel, source })?,
                    ),
                    tls: c.clone(),
                }),
                None => None,
            });
        }
        let shared = Arc::new(Shared {
            tls,
            backend,
            agent_id: config.effective_agent_id(),
            stats: (0..workers)
                .map(|_| Arc::new(AgentStats::new(config.tunnels.len())))
                .collect(),
            weight: watch::channel(config.weight).0,
            weight_now: AtomicI64::new(config.weight),
            config,
            running: AtomicBool::new(true),
            peers: Mutex::new(Vec::new()),
            tasks: OnceLock::new(),
            next_worker: AtomicUsize::new(0),
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut senders = Vec::with_capacity(workers);
        let mut receivers = Vec::with_capacity(workers);
        for _ in 0..workers {
            let (tx, rx) = mpsc::unbounded_channel();
            senders.push(tx);
            receivers.push(rx);
        }
        let _ = shared.tasks.set(senders.clone());
        let senders = Arc::new(senders);
        let mut threads = Vec::with_capacity(workers);
        for (index, rx) in receivers.into_iter().enumerate() {
            let (shared, stop) = (shared.clone(), stop_rx.clone());
            let pin_to = shared.config.cpu_affinity.then_some(index);
            let spawned = rt::spawn_worker(
                format!("ringtun-agent-w{index}"),
                backend,
                pin_to,
                move || worker(shared, index, rx, stop),
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
            let lister = tunnel
                .dynamic_server_list_config
                .as_ref()
                .map_or("", |d| d.dynamic_server_lister.as_str());
            if !lister.is_empty() {
                let _ = senders[next % workers].send(Task::Discover { tunnel: t });
                next += 1;
            }
        }
        let admin = match admin_listener {
            Some(listener) => {
                let handler = admin::AgentAdmin {
                    shared: shared.clone(),
                    backend: backend.name(),
                };
                let token = shared.config.admin.as_ref().and_then(|a| a.token.clone());
                match AdminServer::start("ringtun-agent-admin", listener, handler, token) {
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

    /// The id this agent announces (`agent_id`, or derived from `host_name`).
    pub fn agent_id(&self) -> &str {
        &self.shared.agent_id
    }

    /// Servers (peers) this agent keeps state for: running ones, and stopping ones still
    /// finishing sessions.
    pub fn peer_count(&self) -> usize {
        self.shared.peers.lock().map_or(0, |p| p.len())
    }

    /// Re-reads every tunnel's TLS files (`tls_context.ca_file`, `cert_chain_file`,
    /// `private_key_file`, at the paths of the running configuration): new connections use
    /// them, established ones keep theirs. All or nothing: when one tunnel's files do not load,
    /// none changes and the error says which. Returns how many tunnels were re-read.
    pub fn reload_tls(&self) -> Result<usize, AgentError> {
        let mut loaded = Vec::new();
        for (tunnel, dial) in self.shared.tls.iter().enumerate() {
            if let Some(dial) = dial {
                let config = crate::tls::client_config(&dial.tls)
                    .map_err(|source| AgentError::Tls { tunnel, source })?;
                loaded.push((dial, config));
            }
        }
        let n = loaded.len();
        for (dial, config) in loaded {
            dial.config.replace(config);
        }
        Ok(n)
    }

    /// Current counters.
    /// Current counters, summed over the worker threads.
    pub fn status(&self) -> AgentStatus {
        self.shared.status()
    }

    /// Sets the weight announced to every server (weight update on each aside connection).
    pub fn set_weight(&self, weight: i64) {
        self.shared.set_weight(weight);
    }

    /// The weight announced now.
    pub fn weight(&self) -> i64 {
        self.shared.weight()
    }

    /// Graceful stop: every peer, in parallel, asks its server to stop leasing this agent's
    /// connections, serves the sessions still arriving or running, and ends when its last data
    /// connection is gone; bounded by the largest `graceful_close_max_wait_duration_ms`. Then
    /// closes everything.
    pub fn shutdown_graceful(mut self) {
        self.shared.running.store(false, Ordering::Release);
        let peers: Vec<Arc<Peer>> = self
            .shared
            .peers
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default();
        for p in &peers {
            p.begin_stop();
        }
        let grace_ms = self
            .shared
            .config
            .tunnels
            .iter()
            .map(|t| t.graceful_close_max_wait_duration_ms)
            .max()
            .unwrap_or(0);
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(grace_ms);
        while std::time::Instant::now() < deadline && !peers.iter().all(|p| p.finished()) {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let unfinished = peers.iter().filter(|p| !p.finished()).count();
        if unfinished > 0 {
            warn!(
                peers = unfinished,
                grace_ms, "graceful close time is up; closing the remaining connections"
            );
        } else {
            info!("graceful close complete: every server released this agent's connections");
        }
        self.stop_now();
    }

    /// Closes every connection at once and waits for the threads to exit.
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
    mut stop: watch::Receiver<bool>,
) {
    let Some(stats) = shared.stats.get(index).cloned() else {
        return;
    };
    let local = std::rc::Rc::new(slot::Local {
        pool: Pools::new(
            shared.config.pump_buffer_bytes,
            shared.config.splice_pipe_bytes,
        ),
        stats,
        backends: resolve::BackendCache::default(),
    });
    loop {
        tokio::select! {
            task = tasks.recv() => match task {
                Some(Task::Slot(spec)) => {
                    crate::rt::spawn_local(slot::run(shared.clone(), spec, local.clone(), stop.clone()));
                }
                Some(Task::Resolve { tunnel, server }) => {
                    crate::rt::spawn_local(resolve(shared.clone(), tunnel, server, stop.clone()));
                }
                Some(Task::Discover { tunnel }) => {
                    crate::rt::spawn_local(discovery::run(shared.clone(), tunnel, stop.clone()));
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

/// Resolves one `server_list` entry (retrying with backoff) and starts a peer per address.
async fn resolve(
    shared: Arc<Shared>,
    tunnel: usize,
    server: usize,
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
    let addrs: Vec<SocketAddr> = loop {
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
            _ = crate::rt::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
    };
    for addr in addrs {
        shared.start_peer(Peer::new(tunnel, addr, name.clone(), false));
    }
}
