//! The agent's counters and gauges (connection events only, never per byte), and the guard that
//! counts a connection while it is up.

use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Sessions ended because they moved no byte for `session_idle_timeout_ms`.
    pub sessions_idle_timeout_total: AtomicU64,
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
    pub sessions_idle_timeout_total: u64,
}

/// Connections of one tunnel that are up (handshaken), idle or in a session.
#[derive(Debug, Default)]
pub struct TunnelGauges {
    pub data_connections: AtomicU64,
    pub aside_connections: AtomicU64,
}

/// Decrements a [`TunnelGauges`] gauge when the connection it counts ends.
pub struct ConnectionUp<'a>(pub(super) &'a AtomicU64);

impl Drop for ConnectionUp<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
