//! What the server handle, the admin endpoint and reload may ask of the control path, and how it
//! answers. Types only: the control path's loop (`path`) serves them.

use super::registry::{ClusterStatus, HostStatus};

/// Requests from the server handle.
pub enum ControlCmd {
    Hosts {
        cluster: String,
        reply: std::sync::mpsc::Sender<Vec<HostStatus>>,
    },
    /// Every cluster and its hosts (admin `/clusters` and `/metrics`).
    Clusters {
        reply: tokio::sync::oneshot::Sender<Vec<ClusterStatus>>,
    },
    /// Admin: set (Some) or clear (None) the server-side weight of the hosts named `host_name`
    /// in `cluster`; replies with how many hosts matched.
    SetWeight {
        cluster: String,
        host_name: String,
        weight: Option<u32>,
        reply: tokio::sync::oneshot::Sender<usize>,
    },
    /// Admin: stop leasing the connections of the hosts named `host_name` in `cluster`.
    DrainHost {
        cluster: String,
        host_name: String,
        reply: tokio::sync::oneshot::Sender<usize>,
    },
    /// Drain the server: stop accepting agents and frontends, tell agents, let sessions finish
    /// within `grace_ms`, then stop.
    Drain {
        grace_ms: u64,
    },
    /// Apply a reloaded configuration's clusters: `removed` ones leave (their connections are
    /// closed), the frontends of `stop_frontends` close, `listeners[w]` start on worker `w`.
    Reload {
        clusters: Vec<crate::config::ClusterConfig>,
        removed: Vec<String>,
        stop_frontends: Vec<String>,
        listeners: crate::rt::FrontendSockets,
        reply: tokio::sync::oneshot::Sender<()>,
    },
    Shutdown,
}
