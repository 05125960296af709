//! The server's `/metrics` page: every server metric in Prometheus text, summed over workers
//! (counters are read straight from the workers' and control path's atomics; cluster and host
//! state comes with the `/clusters` status). Rendering only; it must not change any state.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use super::admin::ServerAdmin;
use crate::control::registry::ClusterStatus;
use crate::control::stats::HandshakeOutcome;
use crate::metrics::{Exposition, Kind};
use crate::plane::counters::{sum_clusters, ClusterSummary, CounterTotals};

impl ServerAdmin {
    /// The Prometheus text of every server metric.
    pub fn render_metrics(&self, clusters: &[ClusterStatus]) -> String {
        let totals = CounterTotals::sum(self.counters.iter().map(|c| &**c));
        let per_cluster: BTreeMap<String, ClusterSummary> =
            sum_clusters(self.counters.iter().map(|c| &**c));
        let empty = ClusterSummary::default();
        let summary = |name: &str| per_cluster.get(name).unwrap_or(&empty);
        let mut e = Exposition::new();

        e.family(
            "ringtun_info",
            Kind::Gauge,
            "Build and runtime information; always 1.",
        )
        .sample(
            "ringtun_info",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("role", "server"),
                ("io_backend", self.backend),
            ],
            1.0,
        );
        e.family("ringtun_workers", Kind::Gauge, "Worker threads.")
            .sample_u64("ringtun_workers", &[], self.counters.len() as u64);

        e.family(
            "ringtun_hosts",
            Kind::Gauge,
            "Hosts (agents) registered per cluster.",
        );
        for c in clusters {
            e.sample_u64(
                "ringtun_hosts",
                &[("cluster", &c.name)],
                c.hosts.len() as u64,
            );
        }
        e.family(
            "ringtun_host_weight",
            Kind::Gauge,
            "Balancing weight of each host.",
        );
        for c in clusters {
            for h in &c.hosts {
                let labels = host_labels(&c.name, &h.host_name, &h.agent_id);
                e.sample_u64("ringtun_host_weight", &labels, u64::from(h.weight));
            }
        }
        e.family(
            "ringtun_data_connections",
            Kind::Gauge,
            "Data connections per host by state: idle (parked on a worker) or active (leased to a session).",
        );
        for c in clusters {
            for h in &c.hosts {
                let [cl, hn, ai] = host_labels(&c.name, &h.host_name, &h.agent_id);
                let active: u64 = h.active_per_worker.iter().map(|n| u64::from(*n)).sum();
                e.sample_u64(
                    "ringtun_data_connections",
                    &[cl, hn, ai, ("state", "idle")],
                    h.idle_connections as u64,
                );
                e.sample_u64(
                    "ringtun_data_connections",
                    &[cl, hn, ai, ("state", "active")],
                    active,
                );
            }
        }
        e.family(
            "ringtun_aside_connections",
            Kind::Gauge,
            "Aside (control) connections per host.",
        );
        for c in clusters {
            for h in &c.hosts {
                let labels = host_labels(&c.name, &h.host_name, &h.agent_id);
                e.sample_u64(
                    "ringtun_aside_connections",
                    &labels,
                    h.aside_connections as u64,
                );
            }
        }

        e.family(
            "ringtun_handshakes_total",
            Kind::Counter,
            "Tunnel connection handshakes by outcome (status label; success is status 1).",
        );
        for o in HandshakeOutcome::ALL {
            e.sample_u64(
                "ringtun_handshakes_total",
                &[("status", o.label())],
                self.control.handshakes(o),
            );
        }

        e.family(
            "ringtun_handshakes_inline_total",
            Kind::Counter,
            "Successful handshakes joined without a task (plaintext data connections whose init was waiting at accept).",
        );
        e.sample_u64(
            "ringtun_handshakes_inline_total",
            &[],
            self.control.handshakes_inline_total.load(Ordering::Relaxed),
        );

        type Field = fn(&ClusterSummary) -> u64;
        let per_cluster_counters: [(&str, Kind, &str, Field); 6] = [
            (
                "ringtun_frontend_connections_total",
                Kind::Counter,
                "Frontend (client) connections accepted.",
                |s| s.counters.frontends_accepted_total,
            ),
            (
                "ringtun_sessions_opened_total",
                Kind::Counter,
                "Sessions that got a data connection and started.",
                |s| s.counters.sessions_started_total,
            ),
            (
                "ringtun_sessions_active",
                Kind::Gauge,
                "Sessions in progress.",
                |s| s.counters.active_sessions,
            ),
            (
                "ringtun_sessions_failed_total",
                Kind::Counter,
                "Sessions that ended with an I/O error (either side).",
                |s| s.counters.session_errors_total,
            ),
            (
                "ringtun_pool_waits_total",
                Kind::Counter,
                "Frontends that found no idle data connection on their worker and had to wait.",
                |s| s.counters.pool_waits_total,
            ),
            (
                "ringtun_pool_exhausted_total",
                Kind::Counter,
                "Frontends closed because no idle data connection came within pool_wait_ms.",
                |s| s.counters.pool_exhausted_total,
            ),
        ];
        for (name, kind, help, field) in per_cluster_counters {
            e.family(name, kind, help);
            for c in clusters {
                e.sample_u64(name, &[("cluster", &c.name)], field(summary(&c.name)));
            }
        }
        e.family(
            "ringtun_session_bytes_total",
            Kind::Counter,
            "Session bytes by direction: to_agent (frontend to edge) and from_agent (edge to frontend).",
        );
        for c in clusters {
            let s = summary(&c.name);
            e.sample_u64(
                "ringtun_session_bytes_total",
                &[("cluster", &c.name), ("direction", "to_agent")],
                s.counters.bytes_to_agent_total,
            );
            e.sample_u64(
                "ringtun_session_bytes_total",
                &[("cluster", &c.name), ("direction", "from_agent")],
                s.counters.bytes_from_agent_total,
            );
        }
        e.family(
            "ringtun_session_setup_seconds",
            Kind::Histogram,
            "Time from frontend accept to session start (data connection leased, start frame written).",
        );
        for c in clusters {
            e.histogram_seconds(
                "ringtun_session_setup_seconds",
                &[("cluster", &c.name)],
                &summary(&c.name).setup_latency,
            );
        }

        e.family(
            "ringtun_heartbeat_misses_total",
            Kind::Counter,
            "Tunnel connections closed because the agent stopped answering heartbeats.",
        )
        .sample_u64(
            "ringtun_heartbeat_misses_total",
            &[("connection", "data")],
            totals.heartbeat_closes_total,
        )
        .sample_u64(
            "ringtun_heartbeat_misses_total",
            &[("connection", "aside")],
            self.control
                .aside_heartbeat_closes_total
                .load(Ordering::Relaxed),
        );
        e.family(
            "ringtun_idle_closes_total",
            Kind::Counter,
            "Idle data connections that closed or failed while parked (agent closed, bad frame).",
        )
        .sample_u64("ringtun_idle_closes_total", &[], totals.idle_closes_total);
        e.family(
            "ringtun_data_connection_reuses_total",
            Kind::Counter,
            "Framed data connections put back in an idle pool after a session (a handshake saved each); sessions per connection = sessions started / (sessions started - reuses).",
        )
        .sample_u64(
            "ringtun_data_connection_reuses_total",
            &[],
            totals.data_connection_reuses_total,
        );
        e.family(
            "ringtun_session_aborts_total",
            Kind::Counter,
            "Framed sessions aborted, by who aborted (sent: this server, received: the agent) and reason.",
        );
        for (direction, reason, n) in [
            (
                "sent",
                "frontend_reset",
                totals.session_aborts_sent_frontend_reset_total,
            ),
            ("sent", "other", totals.session_aborts_sent_other_total),
            (
                "received",
                "backend_connect",
                totals.session_aborts_received_backend_connect_total,
            ),
            (
                "received",
                "backend_error",
                totals.session_aborts_received_backend_error_total,
            ),
            (
                "received",
                "other",
                totals.session_aborts_received_other_total,
            ),
        ] {
            e.sample_u64(
                "ringtun_session_aborts_total",
                &[("direction", direction), ("reason", reason)],
                n,
            );
        }
        e.family(
            "ringtun_sessions_over_limit_total",
            Kind::Counter,
            "Frontends closed at accept because their cluster had max_sessions sessions.",
        )
        .sample_u64(
            "ringtun_sessions_over_limit_total",
            &[],
            totals.sessions_over_limit_total,
        );
        e.family(
            "ringtun_sessions_idle_timeout_total",
            Kind::Counter,
            "Sessions ended because they moved no byte either way for session_idle_timeout_ms.",
        )
        .sample_u64(
            "ringtun_sessions_idle_timeout_total",
            &[],
            totals.sessions_idle_timeout_total,
        );
        e.family(
            "ringtun_proxy_headers_accepted_total",
            Kind::Counter,
            "PROXY protocol headers read and taken on accept_proxy_protocol frontends (LOCAL ones included).",
        )
        .sample_u64(
            "ringtun_proxy_headers_accepted_total",
            &[],
            totals.proxy_headers_accepted_total,
        );
        e.family(
            "ringtun_proxy_headers_refused_total",
            Kind::Counter,
            "Connections to accept_proxy_protocol frontends closed before their session, by reason.",
        );
        for (reason, n) in [
            ("untrusted", totals.proxy_headers_refused_untrusted_total),
            ("malformed", totals.proxy_headers_refused_malformed_total),
            ("oversized", totals.proxy_headers_refused_oversized_total),
            ("timeout", totals.proxy_headers_refused_timeout_total),
            ("closed", totals.proxy_headers_refused_closed_total),
        ] {
            e.sample_u64(
                "ringtun_proxy_headers_refused_total",
                &[("reason", reason)],
                n,
            );
        }
        super::udp_metrics::render(&mut e, &totals);
        e.family(
            "ringtun_snapshots_applied_total",
            Kind::Counter,
            "Snapshots (clusters, hosts, weights) applied by workers, summed over workers.",
        )
        .sample_u64(
            "ringtun_snapshots_applied_total",
            &[],
            totals.snapshots_applied_total,
        );
        e.family(
            "ringtun_snapshot_propagation_seconds_total",
            Kind::Counter,
            "Sum over applied snapshots of the time from publication by the control path to application by a worker.",
        )
        .sample(
            "ringtun_snapshot_propagation_seconds_total",
            &[],
            totals.snapshot_propagation_ns_total as f64 / 1e9,
        );
        let max_ns = self
            .counters
            .iter()
            .map(|c| c.snapshot_propagation_max_ns.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0);
        e.family(
            "ringtun_snapshot_propagation_max_seconds",
            Kind::Gauge,
            "Longest time from a snapshot's publication to its application by a worker.",
        )
        .sample(
            "ringtun_snapshot_propagation_max_seconds",
            &[],
            max_ns as f64 / 1e9,
        );
        e.finish()
    }
}

fn host_labels<'a>(cluster: &'a str, host: &'a str, agent: &'a str) -> [(&'a str, &'a str); 3] {
    [("cluster", cluster), ("host", host), ("agent_id", agent)]
}
