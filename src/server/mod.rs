//! Wiring of a ringtun server: binds the listeners, starts the workers and the control path, and
//! gives the caller a handle to query and stop them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::info;

use crate::admin::{AdminError, AdminServer};
mod admin;
mod metrics_page;
mod udp_metrics;

use crate::config::ServerConfig;
use crate::control::path::{self, ControlCmd, ControlSetup};
use crate::control::registry::{HostStatus, Registry};
use crate::control::stats::ControlStats;
use crate::dataplane::worker::{self, WorkerSetup};
use crate::plane::counters::{CounterTotals, WorkerCounters};
use crate::rt::{self, bind_frontends, parse_addr, Backend, BindError, RtError};

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Listen(#[from] BindError),
    #[error(transparent)]
    Runtime(#[from] RtError),
    #[error("tunnel_listener.tls_context: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot start the control thread: {0}")]
    Thread(std::io::Error),
    #[error(transparent)]
    Admin(#[from] AdminError),
}

/// A running server.
pub struct ServerHandle {
    tunnel_addr: SocketAddr,
    frontends: Arc<std::sync::Mutex<HashMap<String, Vec<SocketAddr>>>>,
    reloader: Arc<crate::reload::Reloader>,
    reload_path: Arc<std::sync::Mutex<Option<std::path::PathBuf>>>,
    backend: Backend,
    workers: usize,
    commands: mpsc::UnboundedSender<ControlCmd>,
    counters: Vec<Arc<WorkerCounters>>,
    control_stats: Arc<ControlStats>,
    ready: Arc<AtomicBool>,
    admin: Option<AdminServer>,
    threads: Vec<JoinHandle<()>>,
}

impl ServerHandle {
    /// Binds every listener and starts the threads. Returns once everything is listening.
    pub fn start(config: ServerConfig) -> Result<Self, ServerError> {
        let backend = rt::resolve_with(config.io_backend, config.uring_entries)?;
        let workers = if config.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            config.workers
        };
        let tls = match &config.tunnel_listener.tls_context {
            Some(tls) => Some(Arc::new(crate::tls::Rotating::new(
                crate::tls::server_config(tls)?,
            ))),
            None => None,
        };
        let tunnel_addr = parse_addr("tunnel_listener.address", &config.tunnel_listener.address)?;
        let tunnel = rt::bind_tunnel_listener(tunnel_addr).map_err(|source| BindError::Bind {
            what: "tunnel listener".into(),
            addr: tunnel_addr,
            source,
        })?;
        let tunnel_addr = tunnel.local_addr().map_err(|source| BindError::Bind {
            what: "tunnel listener".into(),
            addr: tunnel_addr,
            source,
        })?;

        let admin_listener = match &config.admin {
            Some(a) => Some(crate::admin::bind(parse_addr(
                "admin.address",
                &a.address,
            )?)?),
            None => None,
        };
        let admin_token = config.admin.as_ref().and_then(|a| a.token.clone());

        let mut per_worker: rt::FrontendSockets = (0..workers).map(|_| Vec::new()).collect();
        let mut frontends: HashMap<String, Vec<SocketAddr>> = HashMap::new();
        for (ci, cluster) in config.clusters.iter().enumerate() {
            let (sockets, addrs) = bind_frontends(ci, cluster, workers)?;
            for (w, s) in per_worker.iter_mut().zip(sockets) {
                w.extend(s);
            }
            frontends.insert(cluster.name.clone(), addrs);
        }

        let mut registry = Registry::new(&config.clusters, workers);
        let snapshot = Arc::new(registry.snapshot());
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        let mut worker_txs: Vec<mpsc::UnboundedSender<crate::plane::WorkerMsg>> =
            Vec::with_capacity(workers);
        let mut counters = Vec::with_capacity(workers);
        let mut updates = Vec::with_capacity(workers);
        let mut threads = Vec::with_capacity(workers + 1);
        for (index, sockets) in per_worker.into_iter().enumerate() {
            let (tx, rx) = mpsc::unbounded_channel();
            let c = Arc::new(WorkerCounters::default());
            let slot = crate::plane::update::UpdateSlot::new();
            updates.push(slot.clone());
            let setup = WorkerSetup {
                index,
                backend,
                frontends: sockets,
                snapshot: snapshot.clone(),
                updates: slot,
                rx,
                events: events_tx.clone(),
                heartbeat_interval: Duration::from_millis(config.heartbeat_interval_ms),
                heartbeat_max_missed: config.heartbeat_max_missed,
                legacy_idle_timeout: config.tunnel_listener.legacy_idle_timeout(),
                max_frame_payload_bytes: config.tunnel_listener.max_frame_payload_bytes,
                pump_buffer_bytes: config.pump_buffer_bytes,
                splice_pipe_bytes: config.splice_pipe_bytes,
                counters: c.clone(),
            };
            let pin_to = config.cpu_affinity.then_some(index);
            let handle =
                match rt::spawn_worker(format!("ringtun-w{index}"), backend, pin_to, move || {
                    worker::run(setup)
                }) {
                    Ok(h) => h,
                    Err(e) => {
                        // Stop the workers already running before reporting.
                        for tx in &worker_txs {
                            let _ = tx.send(crate::plane::WorkerMsg::Shutdown);
                        }
                        return Err(e.into());
                    }
                };
            worker_txs.push(tx);
            counters.push(c);
            threads.push(handle);
        }
        drop(events_tx);
        let control_stats = Arc::new(ControlStats::default());
        let frontends = Arc::new(std::sync::Mutex::new(frontends));
        let reloader = Arc::new(crate::reload::Reloader::new(
            config.clone(),
            workers,
            commands_tx.clone(),
            frontends.clone(),
            tls.clone(),
        ));
        let reload_path = Arc::new(std::sync::Mutex::new(None));
        let control = ControlSetup {
            listener: tunnel,
            config,
            registry,
            workers: worker_txs.clone(),
            updates,
            events: events_rx,
            commands: commands_rx,
            stats: control_stats.clone(),
            counters: counters.clone(),
            tls,
        };
        let control_thread = std::thread::Builder::new()
            .name("ringtun-control".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot build the control runtime");
                        for tx in &control.workers {
                            let _ = tx.send(crate::plane::WorkerMsg::Shutdown);
                        }
                        return;
                    }
                };
                tokio::task::LocalSet::new().block_on(&runtime, path::run(control));
            })
            .map_err(ServerError::Thread)?;
        threads.push(control_thread);
        let ready = Arc::new(AtomicBool::new(false));
        let admin = match admin_listener {
            Some(listener) => {
                let handler = admin::ServerAdmin {
                    commands: commands_tx.clone(),
                    counters: counters.clone(),
                    control: control_stats.clone(),
                    ready: ready.clone(),
                    backend: backend.name(),
                    frontends: frontends.clone(),
                    tunnel_addr,
                    reloader: reloader.clone(),
                    reload_path: reload_path.clone(),
                };
                match AdminServer::start("ringtun-admin", listener, handler, admin_token) {
                    Ok(a) => Some(a),
                    Err(e) => {
                        let _ = commands_tx.send(ControlCmd::Shutdown);
                        for t in threads {
                            let _ = t.join();
                        }
                        return Err(e.into());
                    }
                }
            }
            None => None,
        };
        info!(%tunnel_addr, workers, backend = backend.name(), "server started");
        if let Ok(f) = frontends.lock() {
            for (cluster, addrs) in f.iter() {
                for a in addrs {
                    info!(%cluster, frontend = %a, "frontend listening");
                }
            }
        }
        ready.store(true, Ordering::Release);
        Ok(Self {
            tunnel_addr,
            frontends,
            reloader,
            reload_path,
            backend,
            workers,
            commands: commands_tx,
            counters,
            control_stats,
            ready,
            admin,
            threads,
        })
    }

    /// Where agents connect.
    pub fn tunnel_addr(&self) -> SocketAddr {
        self.tunnel_addr
    }

    /// The first frontend address of a cluster.
    pub fn frontend_addr(&self, cluster: &str) -> Option<SocketAddr> {
        self.frontends
            .lock()
            .ok()
            .and_then(|f| f.get(cluster).and_then(|a| a.first().copied()))
    }

    /// The bound admin address (port 0 resolved), when `admin` is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(AdminServer::local_addr)
    }

    /// The control path's counters (handshakes by outcome).
    pub fn control_stats(&self) -> &ControlStats {
        &self.control_stats
    }

    /// The backend the workers run on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The hosts of a cluster as the registry sees them now (empty if the server stopped).
    pub fn hosts(&self, cluster: &str) -> Vec<HostStatus> {
        let (reply, rx) = std::sync::mpsc::channel();
        let cmd = ControlCmd::Hosts {
            cluster: cluster.to_string(),
            reply,
        };
        if self.commands.send(cmd).is_err() {
            return Vec::new();
        }
        rx.recv_timeout(Duration::from_secs(5)).unwrap_or_default()
    }

    /// Counters summed over workers.
    pub fn counters(&self) -> CounterTotals {
        CounterTotals::sum(self.counters.iter().map(|c| &**c))
    }

    /// Stops everything and waits for the threads to exit.
    pub fn shutdown(mut self) {
        self.stop();
    }

    /// Graceful stop: no new agents or frontends, agents are told (drain frame), sessions in
    /// flight get up to `grace_ms` to finish; then everything stops. Blocks until done.
    pub fn drain(mut self, grace_ms: u64) {
        self.ready.store(false, Ordering::Release);
        let _ = self.commands.send(ControlCmd::Drain { grace_ms });
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.stop();
    }

    /// Admin: sets (`Some`) or clears (`None`) the server-side weight of a cluster's hosts named
    /// `host_name`; returns how many matched.
    pub fn set_host_weight(&self, cluster: &str, host_name: &str, weight: Option<u32>) -> usize {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let cmd = ControlCmd::SetWeight {
            cluster: cluster.into(),
            host_name: host_name.into(),
            weight,
            reply,
        };
        if self.commands.send(cmd).is_err() {
            return 0;
        }
        rx.blocking_recv().unwrap_or(0)
    }

    /// Admin: stops leasing the connections of a cluster's hosts named `host_name`.
    pub fn drain_host(&self, cluster: &str, host_name: &str) -> usize {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let cmd = ControlCmd::DrainHost {
            cluster: cluster.into(),
            host_name: host_name.into(),
            reply,
        };
        if self.commands.send(cmd).is_err() {
            return 0;
        }
        rx.blocking_recv().unwrap_or(0)
    }

    /// Applies a new configuration (see [`crate::reload`]). Blocking.
    pub fn reload(
        &self,
        config: ServerConfig,
    ) -> Result<crate::reload::ReloadSummary, crate::reload::ReloadError> {
        self.reloader.reload(config)
    }

    /// Re-reads `path` and applies it; also makes `path` what admin `POST /reload` reads.
    pub fn reload_file(
        &self,
        path: &std::path::Path,
    ) -> Result<crate::reload::ReloadSummary, crate::reload::ReloadError> {
        self.set_config_path(path);
        self.reloader.reload_file(path)
    }

    /// The file admin `POST /reload` re-reads.
    pub fn set_config_path(&self, path: &std::path::Path) {
        if let Ok(mut p) = self.reload_path.lock() {
            *p = Some(path.to_path_buf());
        }
    }

    /// The configuration running now.
    pub fn config(&self) -> Option<ServerConfig> {
        self.reloader.current()
    }

    /// A sender of control commands, for the admin endpoint.
    pub fn commands(&self) -> mpsc::UnboundedSender<ControlCmd> {
        self.commands.clone()
    }

    fn stop(&mut self) {
        self.ready.store(false, Ordering::Release);
        let _ = self.commands.send(ControlCmd::Shutdown);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some(mut a) = self.admin.take() {
            a.stop();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}
