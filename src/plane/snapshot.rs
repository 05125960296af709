//! The read-only view of clusters and hosts that workers keep, as the control path publishes it:
//! a whole [`Snapshot`] when a worker starts and after a reload, and otherwise only the host
//! slots that changed ([`crate::plane::update`]), so a change costs what changed, not the fleet.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use crate::config::LbType;

/// Server-issued id of one tunnel connection.
pub type ConnId = u64;
/// Server-issued id of one host (an agent in a cluster). Never 0 (0 marks a vacant slot).
pub type HostId = u64;
/// Index of a host in its cluster's host list; the registry reuses the slots of hosts that left.
pub type HostSlot = u32;

/// Every cluster as the workers see it.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Increases with every publication.
    pub version: u64,
    pub clusters: HashMap<Arc<str>, Arc<ClusterSnapshot>>,
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
    /// Indexed by [`HostSlot`]; a vacant slot holds [`SnapshotHost::vacant`] (id 0, weight 0).
    pub hosts: Vec<SnapshotHost>,
}

/// One host of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotHost {
    /// 0 for a vacant slot.
    pub id: HostId,
    /// Stable hash of `host_name` and agent id (consistent hashing needs identity, not ids).
    pub key: u64,
    pub weight: u32,
    /// Shared with the registry's record (no allocation per publication).
    pub host_name: Arc<str>,
}

impl SnapshotHost {
    /// An empty slot: never picked.
    pub fn vacant() -> SnapshotHost {
        static EMPTY: OnceLock<Arc<str>> = OnceLock::new();
        SnapshotHost {
            id: 0,
            key: 0,
            weight: 0,
            host_name: EMPTY.get_or_init(|| Arc::from("")).clone(),
        }
    }

    pub fn is_vacant(&self) -> bool {
        self.id == 0
    }
}
