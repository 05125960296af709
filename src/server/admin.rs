//! The server's admin endpoints: `/metrics` (Prometheus text), `/clusters` (JSON), `/healthz`,
//! `/ready`, and `POST /hosts/weight` / `POST /hosts/drain` (JSON bodies naming cluster and
//! host) to set a host's weight or stop leasing its connections.
//!
//! Cluster and host state comes from the control path over its command channel (with a timeout);
//! counters are read straight from the workers' and control path's atomics. Credentials are never
//! read here: cluster status carries the policy name only.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::admin::{get_only, Handler, Request, Response};
use crate::control::api::ControlCmd;
use crate::control::registry::ClusterStatus;
use crate::control::stats::{ControlStats, HandshakeOutcome};
use crate::metrics::{self, Exposition, Kind};
use crate::plane::counters::{sum_clusters, ClusterSummary, CounterTotals, WorkerCounters};

/// How long the admin waits for the control path to answer.
pub const CONTROL_ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// What the server's admin handler reads.
pub struct ServerAdmin {
    pub commands: mpsc::UnboundedSender<ControlCmd>,
    pub counters: Vec<Arc<WorkerCounters>>,
    pub control: Arc<ControlStats>,
    /// True from the end of start until shutdown begins.
    pub ready: Arc<AtomicBool>,
    pub backend: &'static str,
    pub frontends: Arc<std::sync::Mutex<HashMap<String, Vec<SocketAddr>>>>,
    pub tunnel_addr: SocketAddr,
    /// Applies reloads (`POST /reload`).
    pub reloader: Arc<crate::reload::Reloader>,
    /// The file `POST /reload` re-reads (set by `ringtun server`).
    pub reload_path: Arc<std::sync::Mutex<Option<std::path::PathBuf>>>,
}

impl Handler for ServerAdmin {
    async fn handle(&self, req: Request) -> Response {
        if req.path == "/hosts/weight" || req.path == "/hosts/drain" {
            return self.host_action(&req).await;
        }
        if req.path == "/reload" {
            return self.reload(&req).await;
        }
        let known = ["/metrics", "/clusters", "/healthz", "/ready"];
        if !known.contains(&req.path.as_str()) {
            return Response::not_found(&req.path);
        }
        if let Some(refused) = get_only(&req) {
            return refused;
        }
        match req.path.as_str() {
            "/healthz" => Response::text(200, "ok\n"),
            "/ready" => {
                if !self.ready.load(Ordering::Acquire) {
                    return Response::text(503, "not ready: starting or shutting down\n");
                }
                match self.clusters().await {
                    Some(_) => Response::text(200, "ready\n"),
                    None => Response::text(503, "not ready: the control path does not answer\n"),
                }
            }
            "/clusters" => match self.clusters().await {
                Some(c) => Response::json(200, &self.clusters_json(&c)),
                None => Response::text(503, "the control path does not answer\n"),
            },
            _ => match self.clusters().await {
                Some(c) => {
                    let mut r = Response::text(200, self.render_metrics(&c));
                    r.content_type = metrics::CONTENT_TYPE;
                    r
                }
                None => Response::text(503, "the control path does not answer\n"),
            },
        }
    }
}

/// Body of `POST /hosts/weight` and `POST /hosts/drain`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HostAction {
    cluster: String,
    host_name: String,
    /// `/hosts/weight` only: the weight, or `null` to give the agent's own back.
    #[serde(default)]
    weight: Option<u32>,
}

impl ServerAdmin {
    async fn reload(&self, req: &Request) -> Response {
        if req.method != "POST" {
            return Response::method_not_allowed("POST");
        }
        let path = self.reload_path.lock().ok().and_then(|p| p.clone());
        let Some(path) = path else {
            return Response::text(
                409,
                "no config file to reload: the server was not started from one\n",
            );
        };
        let reloader = self.reloader.clone();
        let done = tokio::task::spawn_blocking(move || reloader.reload_file(&path)).await;
        match done {
            Ok(Ok(summary)) => {
                tracing::info!(%summary, "configuration reloaded (admin)");
                Response::json(
                    200,
                    &json!({
                        "added": summary.added, "removed": summary.removed, "changed": summary.changed,
                    }),
                )
            }
            Ok(Err(e)) => {
                tracing::warn!("configuration reload refused, keeping the running one: {e}");
                Response::text(
                    400,
                    format!("reload refused, the running configuration stays: {e}\n"),
                )
            }
            Err(_) => Response::text(500, "reload failed\n"),
        }
    }

    async fn host_action(&self, req: &Request) -> Response {
        if req.method != "POST" {
            return Response::method_not_allowed("POST");
        }
        let action: HostAction = match serde_json::from_slice(&req.body) {
            Ok(a) => a,
            Err(e) => return Response::text(400, format!("bad JSON body: {e}\n")),
        };
        if action
            .weight
            .is_some_and(|w| i64::from(w) > crate::config::agent::MAX_WEIGHT)
        {
            return Response::text(
                400,
                format!("weight is more than {}\n", crate::config::agent::MAX_WEIGHT),
            );
        }
        let (reply, rx) = oneshot::channel();
        let cmd = if req.path == "/hosts/weight" {
            ControlCmd::SetWeight {
                cluster: action.cluster,
                host_name: action.host_name,
                weight: action.weight,
                reply,
            }
        } else {
            ControlCmd::DrainHost {
                cluster: action.cluster,
                host_name: action.host_name,
                reply,
            }
        };
        if self.commands.send(cmd).is_err() {
            return Response::text(503, "the control path does not answer\n");
        }
        match tokio::time::timeout(CONTROL_ANSWER_TIMEOUT, rx).await {
            Ok(Ok(0)) => Response::text(404, "no such host in that cluster\n"),
            Ok(Ok(n)) => Response::json(200, &json!({ "hosts": n })),
            _ => Response::text(503, "the control path does not answer\n"),
        }
    }

    async fn clusters(&self) -> Option<Vec<ClusterStatus>> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(ControlCmd::Clusters { reply }).ok()?;
        tokio::time::timeout(CONTROL_ANSWER_TIMEOUT, rx)
            .await
            .ok()?
            .ok()
    }

    fn clusters_json(&self, clusters: &[ClusterStatus]) -> serde_json::Value {
        let clusters: Vec<serde_json::Value> = clusters
            .iter()
            .map(|c| {
                let hosts: Vec<serde_json::Value> = c
                    .hosts
                    .iter()
                    .map(|h| {
                        let active: u32 = h.active_per_worker.iter().sum();
                        json!({
                            "host_name": h.host_name,
                            "agent_id": h.agent_id,
                            "weight": h.weight,
                            "legacy": h.legacy,
                            "data_connections": h.data_connections,
                            "aside_connections": h.aside_connections,
                            "idle_connections": h.idle_connections,
                            "active_connections": active,
                            "idle_per_worker": h.idle_per_worker,
                            "active_per_worker": h.active_per_worker,
                            "sessions_per_data_connection": h.sessions_per_data_connection,
                        })
                    })
                    .collect();
                let frontends: Vec<String> = self
                    .frontends
                    .lock()
                    .ok()
                    .and_then(|f| {
                        f.get(&c.name)
                            .map(|v| v.iter().map(|a| a.to_string()).collect())
                    })
                    .unwrap_or_default();
                json!({
                    "name": c.name,
                    "lb_type": c.lb_type,
                    "credential_policy": c.credential_policy.name(),
                    "pool_wait_ms": c.pool_wait_ms,
                    "frontends": frontends,
                    "hosts": hosts,
                })
            })
            .collect();
        json!({
            "tunnel_listener": self.tunnel_addr.to_string(),
            "workers": self.counters.len(),
            "io_backend": self.backend,
            "clusters": clusters,
        })
    }

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
