//! Per-worker counters. Each worker is the only writer of its own set (relaxed atomics, no
//! contention); readers sum the sets of all workers.
//!
//! Per-cluster counters work the same way: each worker owns one [`ClusterCounters`] per cluster,
//! created (under a lock, off the hot path) when it applies a snapshot and then reached through
//! its `Arc` without any lock; readers merge them by cluster name.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::metrics::{HistogramSnapshot, LatencyHistogram};

macro_rules! counters {
    ($(#[$sdoc:meta])* $set:ident, $(#[$tdoc:meta])* $totals:ident { $($extra:tt)* }
     $($(#[$doc:meta])* $name:ident),* $(,)?) => {
        $(#[$sdoc])*
        #[derive(Debug, Default)]
        pub struct $set { $($(#[$doc])* pub $name: AtomicU64,)* $($extra)* }

        $(#[$tdoc])*
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct $totals { $($(#[$doc])* pub $name: u64,)* }

        impl $totals {
            /// Sums the counters of every set.
            pub fn sum<'a>(sets: impl IntoIterator<Item = &'a $set>) -> Self {
                let mut total = Self::default();
                for w in sets {
                    total.add(w);
                }
                total
            }

            /// Adds one set's counters.
            pub fn add(&mut self, w: &$set) {
                $(self.$name += w.$name.load(Ordering::Relaxed);)*
            }
        }
    };
}

counters! {
    /// One worker's counters.
    WorkerCounters,
    /// Counters summed over workers.
    CounterTotals {
        /// This worker's per-cluster counters (see [`ClusterCounterSet`]).
        pub clusters: ClusterCounterSet,
    }
    /// Frontend connections accepted.
    frontends_accepted_total,
    /// Sessions that got a data connection and started.
    sessions_started_total,
    /// Sessions that ended (cleanly or by error).
    sessions_ended_total,
    /// Sessions that ended with an I/O error.
    session_errors_total,
    /// Frontends closed because no idle data connection came within `pool_wait_ms`.
    pool_exhausted_total,
    /// Frontends that had to wait for a data connection.
    pool_waits_total,
    /// Bytes from frontends towards agents.
    bytes_to_agent_total,
    /// Bytes from agents towards frontends.
    bytes_from_agent_total,
    /// Idle data connections closed after missed heartbeats.
    heartbeat_closes_total,
    /// Idle data connections that closed or failed while idle.
    idle_closes_total,
    /// Sessions in progress (incremented and decremented by the owning worker).
    active_sessions,
    /// Frontends closed at accept because their cluster had `max_sessions` sessions.
    sessions_over_limit_total,
    /// Sessions ended because they moved no byte for `session_idle_timeout_ms`.
    sessions_idle_timeout_total,
    /// Snapshots applied.
    snapshots_applied_total,
    /// Sum of the times from publication by the control path to application here, in ns.
    snapshot_propagation_ns_total,
    /// Longest such time seen, in ns.
    snapshot_propagation_max_ns,
    /// PROXY headers read and taken (a LOCAL one included) on `accept_proxy_protocol` frontends.
    proxy_headers_accepted_total,
    /// Connections to such frontends closed: their source is not in `trusted_proxies`.
    proxy_headers_refused_untrusted_total,
    /// ... their header is not a valid PROXY v1 or v2 header.
    proxy_headers_refused_malformed_total,
    /// ... their header is longer than the bound.
    proxy_headers_refused_oversized_total,
    /// ... their header did not arrive within `proxy_protocol_timeout_ms`.
    proxy_headers_refused_timeout_total,
    /// ... they closed (or failed) before their header was whole.
    proxy_headers_refused_closed_total,
    /// Framed data connections put back in the idle pool after a session (each reuse saves a
    /// handshake).
    data_connection_reuses_total,
    /// Framed sessions this server aborted: the frontend reset or failed.
    session_aborts_sent_frontend_reset_total,
    /// ... for another reason.
    session_aborts_sent_other_total,
    /// Framed sessions the agent aborted: its backend could not be connected.
    session_aborts_received_backend_connect_total,
    /// ... its backend reset or failed.
    session_aborts_received_backend_error_total,
    /// ... for another reason.
    session_aborts_received_other_total,
    /// UDP flows that got a data connection and started.
    udp_flows_started_total,
    /// UDP flows that ended (any cause; those that never started included).
    udp_flows_ended_total,
    /// UDP flows in progress (waiting for a connection or running).
    active_udp_flows,
    /// UDP flows ended by `udp_flow_idle_timeout_ms`.
    udp_flows_idle_timeout_total,
    /// UDP flows ended by an error (the data connection failed or broke the framing, or the
    /// agent closed it before any reply, e.g. refused for a listener protocol mismatch).
    udp_flow_errors_total,
    /// Client datagrams written towards agents.
    udp_datagrams_to_agent_total,
    /// Datagrams from agents sent to clients.
    udp_datagrams_from_agent_total,
    /// Payload bytes of those client datagrams.
    udp_bytes_to_agent_total,
    /// Payload bytes of those agent datagrams.
    udp_bytes_from_agent_total,
    /// Client datagrams dropped: longer than `max_udp_datagram_bytes`.
    udp_dropped_oversized_total,
    /// ... the oldest of a flow's full queue (`max_udp_queued_datagrams_per_flow`).
    udp_dropped_queue_full_total,
    /// ... a new flow beyond `max_udp_flows_per_client_ip`.
    udp_dropped_client_ip_flows_total,
    /// ... a new flow beyond the cluster's `max_sessions`.
    udp_dropped_over_limit_total,
    /// ... no data connection (of extension version 2) within `pool_wait_ms`, or the flow
    /// ended before they were written.
    udp_dropped_no_connection_total,
    /// Datagrams from agents that could not be sent to their client (socket error).
    udp_dropped_send_failed_total,
    /// Empty client datagrams of a flow on a framed connection (a DATA record cannot be
    /// empty, so they cannot be carried).
    udp_dropped_empty_total,
    /// Datagrams from an agent after the flow ended with its frontend closed (nowhere to send).
    udp_dropped_flow_ended_total,
}

impl WorkerCounters {
    /// The counter of an ABORT sent by this server (`sent`) or received from an agent.
    pub fn abort_counter(
        &self,
        reason: crate::protocol::session_frame::AbortReason,
        sent: bool,
    ) -> &AtomicU64 {
        use crate::protocol::session_frame::AbortReason as R;
        match (sent, reason) {
            (true, R::FrontendReset) => &self.session_aborts_sent_frontend_reset_total,
            (true, _) => &self.session_aborts_sent_other_total,
            (false, R::BackendConnect) => &self.session_aborts_received_backend_connect_total,
            (false, R::BackendError) => &self.session_aborts_received_backend_error_total,
            (false, _) => &self.session_aborts_received_other_total,
        }
    }
}

counters! {
    /// One worker's counters of one cluster.
    ClusterCounters,
    /// One cluster's counters summed over workers.
    ClusterTotals {
        /// Time from frontend accept to session start (frame written), per session.
        pub setup_latency: LatencyHistogram,
    }
    /// Frontend connections accepted.
    frontends_accepted_total,
    /// Sessions that got a data connection and started.
    sessions_started_total,
    /// Sessions that ended with an I/O error.
    session_errors_total,
    /// Frontends that had to wait for a data connection.
    pool_waits_total,
    /// Frontends closed because no idle data connection came within `pool_wait_ms`.
    pool_exhausted_total,
    /// Bytes from frontends towards agents.
    bytes_to_agent_total,
    /// Bytes from agents towards frontends.
    bytes_from_agent_total,
    /// Sessions in progress.
    active_sessions,
}

/// A worker's per-cluster counters, by cluster name. The worker takes the lock only when it
/// applies a snapshot (to fetch or create a cluster's set), readers only to list them.
#[derive(Debug, Default)]
pub struct ClusterCounterSet {
    by_name: Mutex<BTreeMap<Arc<str>, Arc<ClusterCounters>>>,
}

impl ClusterCounterSet {
    /// The counters of `cluster`, created on first use. Not for the hot path: keep the `Arc`.
    pub fn get_or_create(&self, cluster: &Arc<str>) -> Arc<ClusterCounters> {
        let mut map = self
            .by_name
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(cluster.clone()).or_default().clone()
    }

    /// Every cluster's counters.
    pub fn all(&self) -> Vec<(Arc<str>, Arc<ClusterCounters>)> {
        let map = self
            .by_name
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// Per-cluster totals over every worker, with the merged setup latency histogram.
#[derive(Debug, Default, Clone)]
pub struct ClusterSummary {
    pub counters: ClusterTotals,
    pub setup_latency: HistogramSnapshot,
}

/// Merges the per-cluster counters of every worker, by cluster name.
pub fn sum_clusters<'a>(
    workers: impl IntoIterator<Item = &'a WorkerCounters>,
) -> BTreeMap<String, ClusterSummary> {
    let mut out: BTreeMap<String, ClusterSummary> = BTreeMap::new();
    for w in workers {
        for (name, c) in w.clusters.all() {
            let entry = out.entry(name.to_string()).or_default();
            entry.counters.add(&c);
            c.setup_latency.merge_into(&mut entry.setup_latency);
        }
    }
    out
}

/// Adds one.
#[inline]
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Adds `n`.
#[inline]
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Subtracts one (gauges).
#[inline]
pub fn drop_one(counter: &AtomicU64) {
    counter.fetch_sub(1, Ordering::Relaxed);
}

/// A session being set up: its cluster's counters and when its frontend was accepted.
#[derive(Debug)]
pub struct SessionSetup {
    pub stats: std::sync::Arc<ClusterCounters>,
    pub accepted_at: std::time::Instant,
}

impl SessionSetup {
    /// Starts timing a session accepted now.
    pub fn start(stats: std::sync::Arc<ClusterCounters>) -> Self {
        Self {
            stats,
            accepted_at: std::time::Instant::now(),
        }
    }

    /// The session started (start frame written): records the setup latency.
    pub fn started(&self) {
        let us = self.accepted_at.elapsed().as_micros();
        self.stats
            .setup_latency
            .record_us(u64::try_from(us).unwrap_or(u64::MAX));
    }
}
