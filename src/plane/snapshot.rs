//! The read-only view of clusters and hosts that the control path publishes to every worker.
//! A snapshot is replaced whole on every change; workers never see a half-applied update.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::LbType;

/// Server-issued id of one tunnel connection.
pub type ConnId = u64;
/// Server-issued id of one host (an agent in a cluster).
pub type HostId = u64;

/// Every cluster as the workers see it.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Increases with every publication.
    pub version: u64,
    /// When the control path built it (workers measure propagation against it).
    pub published_at: Option<std::time::Instant>,
    pub clusters: HashMap<Arc<str>, ClusterSnapshot>,
}

/// One cluster: how to balance and whom.
#[derive(Debug, Clone)]
pub struct ClusterSnapshot {
    pub name: Arc<str>,
    pub lb_type: LbType,
    pub pool_wait_ms: u64,
    /// A session with no byte either way this long is ended; 0 = never.
    pub session_idle_timeout_ms: u64,
    /// Bound on `sessions`.
    pub max_sessions: u64,
    /// Frontend sessions of this cluster now, over all workers (shared; kept across snapshots).
    pub sessions: Arc<std::sync::atomic::AtomicU64>,
    /// Ordered by host id, so a balancer rebuilt from an unchanged host set behaves the same.
    pub hosts: Vec<SnapshotHost>,
}

/// One host of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotHost {
    pub id: HostId,
    /// Stable hash of `host_name` and agent id (consistent hashing needs identity, not ids).
    pub key: u64,
    pub weight: u32,
    pub host_name: Arc<str>,
}
