//! The agent's counters and gauges (connection events only, never per byte), and the guard that
//! counts a connection while it is up.
//!
//! Like the server's `plane::counters`: every agent worker has its own [`AgentStats`] (relaxed
//! atomics, one writer each, on their own cache lines), and readers sum the sets of all workers
//! ([`AgentStatus::sum`]). A slot runs on one worker for its whole life, so a gauge it raises is
//! lowered on the same set. Must not: be written by a thread other than its worker's.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::protocol::session_frame::AbortReason;
use crate::protocol::Role;

/// The slot of a reason in the abort counters: `AbortReason::KNOWN` order, then "other".
pub fn abort_index(reason: AbortReason) -> usize {
    AbortReason::KNOWN
        .iter()
        .position(|r| *r == reason)
        .unwrap_or(AbortReason::KNOWN.len())
}

/// One agent worker's counters and gauges (connection events only, never per byte).
#[derive(Debug, Default)]
#[repr(align(128))]
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
    /// Framed data connections that came back idle after a session (and waited for another).
    pub data_connection_reuses_total: AtomicU64,
    /// Framed sessions this agent aborted, by reason (`AbortReason::KNOWN` order, then other).
    pub session_aborts_sent_total: [AtomicU64; 4],
    /// Framed sessions the server aborted, by reason (same order).
    pub session_aborts_received_total: [AtomicU64; 4],
    /// UDP flows started by servers (a `"protocol":"udp"` session start to a UDP listener).
    pub udp_flows_total: AtomicU64,
    /// UDP flows running now.
    pub active_udp_flows: AtomicU64,
    /// Session starts refused for a listener protocol mismatch (UDP flow to a TCP listener or the reverse).
    pub udp_flows_refused_total: AtomicU64,
    /// UDP flows ended by their listener's `session_idle_timeout_ms`.
    pub udp_flows_idle_timeout_total: AtomicU64,
    /// Datagrams sent to backends (counted when a flow ends).
    pub udp_datagrams_to_backend_total: AtomicU64,
    /// Datagrams from backends carried to the server (counted when a flow ends).
    pub udp_datagrams_from_backend_total: AtomicU64,
    /// Their payload bytes (counted when a flow ends).
    pub udp_bytes_to_backend_total: AtomicU64,
    /// Their payload bytes (counted when a flow ends).
    pub udp_bytes_from_backend_total: AtomicU64,
    /// Backend datagrams dropped: longer than 65507 bytes.
    pub udp_dropped_oversized_total: AtomicU64,
    /// Datagrams the backend socket could not send or that were refused (ICMP unreachable).
    pub udp_dropped_send_failed_total: AtomicU64,
    /// Empty backend replies of a flow on a framed connection (a DATA record cannot be empty).
    pub udp_dropped_empty_total: AtomicU64,
    /// Server datagrams that arrived after this agent ended their flow (its END or ABORT sent).
    pub udp_dropped_flow_ended_total: AtomicU64,
    /// One per `config.tunnels` entry: this worker's connections of that tunnel that are up.
    pub tunnels: Vec<TunnelGauges>,
}

impl AgentStats {
    /// A set for a worker of an agent with `tunnels` tunnels.
    pub fn new(tunnels: usize) -> Self {
        Self {
            tunnels: (0..tunnels).map(|_| TunnelGauges::default()).collect(),
            ..Self::default()
        }
    }

    /// Counts an ABORT this agent sent.
    pub fn count_abort_sent(&self, reason: AbortReason) {
        self.session_aborts_sent_total[abort_index(reason)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an ABORT the server sent.
    pub fn count_abort_received(&self, reason: AbortReason) {
        self.session_aborts_received_total[abort_index(reason)].fetch_add(1, Ordering::Relaxed);
    }

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
}

/// A plain copy of the stats, summed over workers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AgentStatus {
    pub idle_data_connections: u64,
    pub aside_connections: u64,
    pub dial_failures_total: u64,
    pub sessions_total: u64,
    pub backend_failures_total: u64,
    pub active_sessions: u64,
    pub bytes_to_backend_total: u64,
    pub bytes_from_backend_total: u64,
    pub sessions_idle_timeout_total: u64,
    pub data_connection_reuses_total: u64,
    /// By reason, `AbortReason::KNOWN` order then other.
    pub session_aborts_sent_total: [u64; 4],
    pub session_aborts_received_total: [u64; 4],
    pub udp_flows_total: u64,
    pub active_udp_flows: u64,
    pub udp_flows_refused_total: u64,
    pub udp_flows_idle_timeout_total: u64,
    pub udp_datagrams_to_backend_total: u64,
    pub udp_datagrams_from_backend_total: u64,
    pub udp_bytes_to_backend_total: u64,
    pub udp_bytes_from_backend_total: u64,
    pub udp_dropped_oversized_total: u64,
    pub udp_dropped_send_failed_total: u64,
    pub udp_dropped_empty_total: u64,
    pub udp_dropped_flow_ended_total: u64,
}

impl AgentStatus {
    /// Sums the counters of every worker's set.
    pub fn sum<'a>(sets: impl IntoIterator<Item = &'a AgentStats>) -> Self {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut t = Self::default();
        for s in sets {
            t.idle_data_connections += load(&s.idle_data_connections);
            t.aside_connections += load(&s.aside_connections);
            t.dial_failures_total += load(&s.dial_failures_total);
            t.sessions_total += load(&s.sessions_total);
            t.backend_failures_total += load(&s.backend_failures_total);
            t.active_sessions += load(&s.active_sessions);
            t.bytes_to_backend_total += load(&s.bytes_to_backend_total);
            t.bytes_from_backend_total += load(&s.bytes_from_backend_total);
            t.sessions_idle_timeout_total += load(&s.sessions_idle_timeout_total);
            t.data_connection_reuses_total += load(&s.data_connection_reuses_total);
            for i in 0..4 {
                t.session_aborts_sent_total[i] += load(&s.session_aborts_sent_total[i]);
                t.session_aborts_received_total[i] += load(&s.session_aborts_received_total[i]);
            }
            t.udp_flows_total += load(&s.udp_flows_total);
            t.active_udp_flows += load(&s.active_udp_flows);
            t.udp_flows_refused_total += load(&s.udp_flows_refused_total);
            t.udp_flows_idle_timeout_total += load(&s.udp_flows_idle_timeout_total);
            t.udp_datagrams_to_backend_total += load(&s.udp_datagrams_to_backend_total);
            t.udp_datagrams_from_backend_total += load(&s.udp_datagrams_from_backend_total);
            t.udp_bytes_to_backend_total += load(&s.udp_bytes_to_backend_total);
            t.udp_bytes_from_backend_total += load(&s.udp_bytes_from_backend_total);
            t.udp_dropped_oversized_total += load(&s.udp_dropped_oversized_total);
            t.udp_dropped_send_failed_total += load(&s.udp_dropped_send_failed_total);
            t.udp_dropped_empty_total += load(&s.udp_dropped_empty_total);
            t.udp_dropped_flow_ended_total += load(&s.udp_dropped_flow_ended_total);
        }
        t
    }
}

/// Connections of one tunnel that are up (handshaken), idle or in a session.
#[derive(Debug, Default)]
pub struct TunnelGauges {
    pub data_connections: AtomicU64,
    pub aside_connections: AtomicU64,
}

/// Summed over workers: (data, aside) connections of `tunnel` up now.
pub fn tunnel_connections<'a>(
    sets: impl IntoIterator<Item = &'a AgentStats>,
    tunnel: usize,
) -> (u64, u64) {
    sets.into_iter()
        .filter_map(|s| s.tunnels.get(tunnel))
        .fold((0, 0), |(d, a), g| {
            (
                d + g.data_connections.load(Ordering::Relaxed),
                a + g.aside_connections.load(Ordering::Relaxed),
            )
        })
}

/// Decrements a [`TunnelGauges`] gauge when the connection it counts ends.
pub struct ConnectionUp<'a>(pub(super) &'a AtomicU64);

impl Drop for ConnectionUp<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_sums_every_workers_set() {
        let sets = [AgentStats::new(2), AgentStats::new(2)];
        sets[0].sessions_total.fetch_add(3, Ordering::Relaxed);
        sets[1].sessions_total.fetch_add(4, Ordering::Relaxed);
        sets[1]
            .bytes_to_backend_total
            .fetch_add(10, Ordering::Relaxed);
        let _a = sets[0].connection_up(1, Role::Data);
        let b = sets[1].connection_up(1, Role::Data);
        let _c = sets[1].connection_up(0, Role::Aside);
        let s = AgentStatus::sum(&sets);
        assert_eq!(s.sessions_total, 7);
        assert_eq!(s.bytes_to_backend_total, 10);
        assert_eq!(tunnel_connections(&sets, 1), (2, 0));
        assert_eq!(tunnel_connections(&sets, 0), (0, 1));
        drop(b);
        assert_eq!(tunnel_connections(&sets, 1), (1, 0));
        assert!(sets[0].connection_up(5, Role::Data).is_none());
    }
}
