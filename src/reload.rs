//! Server configuration reload (SIGHUP, admin `POST /reload`): diffs the running configuration
//! against a new one, binds the frontends of added or re-addressed clusters, and hands the change
//! to the control path. Sessions of unchanged clusters are never touched; an invalid or
//! unapplicable file is refused whole and the running configuration stays. Every reload also
//! re-reads the tunnel listener's TLS files (certificate rotation): new handshakes use the new
//! certificate, established connections keep theirs; files that do not load refuse the reload.
//!
//! This module decides and binds; the registry and the workers apply (see `control::path`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::config::{ClusterConfig, ConfigError, ServerConfig};
use crate::control::path::ControlCmd;
use crate::rt::{bind_frontends, BindError, FrontendSockets};
use crate::tls::Rotating;

/// How long a reload waits for the control path to apply it.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a reload was refused; the running configuration is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0} cannot change while the server runs; restart the server to apply it")]
    NotReloadable(&'static str),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("the control path did not apply the change")]
    ControlGone,
    #[error("tunnel_listener.tls_context: {0}; the running certificate keeps serving")]
    Tls(#[from] crate::tls::TlsError),
}

/// What a reload changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl std::fmt::Display for ReloadSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "clusters added {:?}, removed {:?}, changed {:?}",
            self.added, self.removed, self.changed
        )
    }
}

/// Holds the running configuration and applies new ones.
pub struct Reloader {
    current: Mutex<ServerConfig>,
    workers: usize,
    commands: mpsc::UnboundedSender<ControlCmd>,
    frontends: Arc<Mutex<HashMap<String, Vec<SocketAddr>>>>,
    /// The tunnel listener's TLS config, replaced by each reload (`None`: plaintext).
    tls: Option<Arc<Rotating<crate::tls::ServerConfig>>>,
}

/// The clusters to add, remove and change going from `old` to `new`.
pub fn diff(old: &[ClusterConfig], new: &[ClusterConfig]) -> ReloadSummary {
    let find = |list: &[ClusterConfig], name: &str| list.iter().find(|c| c.name == name).cloned();
    let mut s = ReloadSummary::default();
    for c in new {
        match find(old, &c.name) {
            None => s.added.push(c.name.clone()),
            Some(o) if o != *c => s.changed.push(c.name.clone()),
            Some(_) => {}
        }
    }
    for c in old {
        if find(new, &c.name).is_none() {
            s.removed.push(c.name.clone());
        }
    }
    s
}

/// The tunnel listener's settings but its TLS files (which a reload re-reads, see
/// [`Reloader::reload`]).
fn without_tls(t: &crate::config::TunnelListenerConfig) -> crate::config::TunnelListenerConfig {
    crate::config::TunnelListenerConfig {
        tls_context: None,
        ..t.clone()
    }
}

/// The first field that differs and cannot change at runtime.
fn not_reloadable(old: &ServerConfig, new: &ServerConfig) -> Option<&'static str> {
    let checks: [(&'static str, bool); 11] = [
        ("workers", old.workers != new.workers),
        ("io_backend", old.io_backend != new.io_backend),
        (
            "heartbeat_interval_ms",
            old.heartbeat_interval_ms != new.heartbeat_interval_ms,
        ),
        (
            "heartbeat_max_missed",
            old.heartbeat_max_missed != new.heartbeat_max_missed,
        ),
        (
            "tunnel_listener.tls_context",
            old.tunnel_listener.tls_context.is_some() != new.tunnel_listener.tls_context.is_some(),
        ),
        (
            "tunnel_listener",
            without_tls(&old.tunnel_listener) != without_tls(&new.tunnel_listener),
        ),
        ("admin", old.admin != new.admin),
        ("cpu_affinity", old.cpu_affinity != new.cpu_affinity),
        ("uring_entries", old.uring_entries != new.uring_entries),
        (
            "pump_buffer_bytes",
            old.pump_buffer_bytes != new.pump_buffer_bytes,
        ),
        (
            "splice_pipe_bytes",
            old.splice_pipe_bytes != new.splice_pipe_bytes,
        ),
    ];
    checks
        .into_iter()
        .find(|(_, differs)| *differs)
        .map(|(f, _)| f)
}

impl Reloader {
    pub fn new(
        config: ServerConfig,
        workers: usize,
        commands: mpsc::UnboundedSender<ControlCmd>,
        frontends: Arc<Mutex<HashMap<String, Vec<SocketAddr>>>>,
        tls: Option<Arc<Rotating<crate::tls::ServerConfig>>>,
    ) -> Self {
        Self {
            current: Mutex::new(config),
            workers,
            commands,
            frontends,
            tls,
        }
    }

    /// The running configuration.
    pub fn current(&self) -> Option<ServerConfig> {
        self.current.lock().ok().map(|c| c.clone())
    }

    /// Reads, validates and applies `path`. Blocking (binds sockets, waits for the control path).
    pub fn reload_file(&self, path: &Path) -> Result<ReloadSummary, ReloadError> {
        let new = ServerConfig::load(path)?;
        self.reload(new)
    }

    /// Applies a validated configuration. Blocking.
    pub fn reload(&self, new: ServerConfig) -> Result<ReloadSummary, ReloadError> {
        let mut current = self.current.lock().map_err(|_| ReloadError::ControlGone)?;
        if let Some(field) = not_reloadable(&current, &new) {
            return Err(ReloadError::NotReloadable(field));
        }
        // Loaded (and checked) before anything changes: files that do not load refuse the
        // whole reload.
        let tls = match &new.tunnel_listener.tls_context {
            Some(t) => Some(crate::tls::server_config(t)?),
            None => None,
        };
        let summary = diff(&current.clusters, &new.clusters);
        // Clusters whose frontends moved get new listeners; the old ones are closed.
        let rebind: Vec<String> = summary
            .changed
            .iter()
            .filter(|name| {
                let o = current
                    .clusters
                    .iter()
                    .find(|c| &c.name == *name)
                    .map(|c| &c.frontends);
                let n = new
                    .clusters
                    .iter()
                    .find(|c| &c.name == *name)
                    .map(|c| &c.frontends);
                o != n
            })
            .cloned()
            .collect();
        let mut listeners: FrontendSockets = (0..self.workers).map(|_| Vec::new()).collect();
        let mut bound: HashMap<String, Vec<SocketAddr>> = HashMap::new();
        for (i, c) in new.clusters.iter().enumerate() {
            if summary.added.contains(&c.name) || rebind.contains(&c.name) {
                let (sockets, addrs) = bind_frontends(i, c, self.workers)?;
                for (w, s) in listeners.iter_mut().zip(sockets) {
                    w.extend(s);
                }
                bound.insert(c.name.clone(), addrs);
            }
        }
        let mut stop_frontends = summary.removed.clone();
        stop_frontends.extend(rebind.iter().cloned());
        let (reply, done) = oneshot::channel();
        let cmd = ControlCmd::Reload {
            clusters: new.clusters.clone(),
            removed: summary.removed.clone(),
            stop_frontends,
            listeners,
            reply,
        };
        self.commands
            .send(cmd)
            .map_err(|_| ReloadError::ControlGone)?;
        recv_blocking(done, APPLY_TIMEOUT).ok_or(ReloadError::ControlGone)?;
        if let Ok(mut f) = self.frontends.lock() {
            for name in &summary.removed {
                f.remove(name);
            }
            for (name, addrs) in &bound {
                for a in addrs {
                    tracing::info!(cluster = %name, frontend = %a, "frontend listening");
                }
                f.insert(name.clone(), addrs.clone());
            }
        }
        if let (Some(rotating), Some(config), Some(t)) =
            (&self.tls, tls, &new.tunnel_listener.tls_context)
        {
            rotating.replace(config);
            tracing::info!(cert_chain_file = %t.cert_chain_file, private_key_file = %t.private_key_file,
                ca_file = %t.ca_file.as_deref().unwrap_or("-"),
                "tunnel TLS files re-read: new agent connections use them");
        }
        *current = new;
        Ok(summary)
    }
}

fn recv_blocking(rx: oneshot::Receiver<()>, limit: Duration) -> Option<()> {
    let deadline = std::time::Instant::now() + limit;
    let mut rx = rx;
    loop {
        match rx.try_recv() {
            Ok(()) => return Some(()),
            Err(oneshot::error::TryRecvError::Closed) => return None,
            Err(oneshot::error::TryRecvError::Empty) => {
                if std::time::Instant::now() > deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(name: &str, pool_wait_ms: u64) -> ClusterConfig {
        serde_json::from_value(serde_json::json!({"name": name, "pool_wait_ms": pool_wait_ms}))
            .unwrap()
    }

    #[test]
    fn diff_names_added_removed_and_changed() {
        let old = [cluster("a", 1), cluster("b", 1), cluster("c", 1)];
        let new = [cluster("a", 1), cluster("b", 2), cluster("d", 1)];
        assert_eq!(
            diff(&old, &new),
            ReloadSummary {
                added: vec!["d".into()],
                removed: vec!["c".into()],
                changed: vec!["b".into()],
            }
        );
    }

    #[test]
    fn listener_and_thread_settings_need_a_restart() {
        let text =
            r#"{"tunnel_listener": {"address": "127.0.0.1:7070"}, "clusters": [{"name": "a"}]}"#;
        let old = ServerConfig::from_str(Path::new("s.json"), text).unwrap();
        let mut new = old.clone();
        new.workers = 3;
        assert_eq!(not_reloadable(&old, &new), Some("workers"));
        let mut new = old.clone();
        new.tunnel_listener.handshake_timeout_ms += 1;
        assert_eq!(not_reloadable(&old, &new), Some("tunnel_listener"));
        let mut new = old.clone();
        new.splice_pipe_bytes = 0;
        assert_eq!(not_reloadable(&old, &new), Some("splice_pipe_bytes"));
        let mut new = old.clone();
        new.drain_timeout_ms += 1;
        assert_eq!(not_reloadable(&old, &new), None);
        // TLS files may change (rotation), TLS itself may not be turned on or off.
        let tls: crate::config::ServerTlsConfig = serde_json::from_value(
            serde_json::json!({"cert_chain_file": "a.crt", "private_key_file": "a.key"}),
        )
        .unwrap();
        let mut new = old.clone();
        new.tunnel_listener.tls_context = Some(tls.clone());
        assert_eq!(
            not_reloadable(&old, &new),
            Some("tunnel_listener.tls_context")
        );
        let with_tls = new.clone();
        new.tunnel_listener.tls_context = Some(crate::config::ServerTlsConfig {
            cert_chain_file: "b.crt".into(),
            ca_file: Some("ca.pem".into()),
            ..tls
        });
        assert_eq!(not_reloadable(&with_tls, &new), None);
    }
}
