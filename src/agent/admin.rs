//! The agent's admin endpoints: `/metrics` (Prometheus text), `/healthz`, `/ready`, and
//! `POST /weight` (body `{"weight": N}`) to change the weight announced to every server.
//!
//! Everything is read from the agent's atomics; nothing here touches a connection or a credential.

use std::sync::Arc;

use super::{AgentStatus, Shared};
use crate::admin::{get_only, Handler, Request, Response};
use crate::metrics::{self, Exposition, Kind};

/// What the agent's admin handler reads.
pub struct AgentAdmin {
    pub shared: Arc<Shared>,
    pub backend: &'static str,
}

impl Handler for AgentAdmin {
    async fn handle(&self, req: Request) -> Response {
        if req.path == "/weight" {
            return self.set_weight(&req);
        }
        if !["/metrics", "/healthz", "/ready"].contains(&req.path.as_str()) {
            return Response::not_found(&req.path);
        }
        if let Some(refused) = get_only(&req) {
            return refused;
        }
        match req.path.as_str() {
            "/healthz" => Response::text(200, "ok\n"),
            "/ready" => {
                if self.shared.ready() {
                    Response::text(200, "ready\n")
                } else {
                    Response::text(
                        503,
                        "not ready: an enabled tunnel has no data connection up (or stopping)\n",
                    )
                }
            }
            _ => {
                let mut r = Response::text(200, self.render_metrics());
                r.content_type = metrics::CONTENT_TYPE;
                r
            }
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightBody {
    weight: i64,
}

impl AgentAdmin {
    fn set_weight(&self, req: &Request) -> Response {
        if req.method != "POST" {
            return Response::method_not_allowed("POST");
        }
        let body: WeightBody = match serde_json::from_slice(&req.body) {
            Ok(b) => b,
            Err(e) => return Response::text(400, format!("bad JSON body: {e}\n")),
        };
        let max = crate::config::agent::MAX_WEIGHT;
        if !(1..=max).contains(&body.weight) {
            return Response::text(
                400,
                format!("weight {} is outside 1..={max}\n", body.weight),
            );
        }
        self.shared.set_weight(body.weight);
        tracing::info!(weight = body.weight, "weight changed by admin");
        Response::text(200, format!("weight {}\n", body.weight))
    }

    /// The Prometheus text of every agent metric.
    pub fn render_metrics(&self) -> String {
        let s = self.shared.status();
        let mut e = Exposition::new();
        e.family(
            "ringtun_agent_info",
            Kind::Gauge,
            "Build and runtime information; always 1.",
        )
        .sample(
            "ringtun_agent_info",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("host_name", &self.shared.config.host_name),
                ("agent_id", &self.shared.agent_id),
                ("io_backend", self.backend),
            ],
            1.0,
        );
        e.family(
            "ringtun_agent_data_connections",
            Kind::Gauge,
            "Handshaken data connections per tunnel (idle or in a session).",
        );
        for (i, t) in self.shared.config.tunnels.iter().enumerate() {
            let tunnel = i.to_string();
            e.sample_u64(
                "ringtun_agent_data_connections",
                &[("tunnel", &tunnel), ("cluster", &t.cluster)],
                self.shared.tunnel_connections(i).0,
            );
        }
        e.family(
            "ringtun_agent_idle_data_connections",
            Kind::Gauge,
            "Data connections handshaken and waiting for a session.",
        )
        .sample_u64(
            "ringtun_agent_idle_data_connections",
            &[],
            s.idle_data_connections,
        );
        e.family(
            "ringtun_agent_aside_connections",
            Kind::Gauge,
            "Aside connections up.",
        )
        .sample_u64("ringtun_agent_aside_connections", &[], s.aside_connections);
        e.family(
            "ringtun_agent_dial_failures_total",
            Kind::Counter,
            "Failed dials: connect errors, refused handshakes, timeouts.",
        )
        .sample_u64(
            "ringtun_agent_dial_failures_total",
            &[],
            s.dial_failures_total,
        );
        e.family(
            "ringtun_agent_sessions_total",
            Kind::Counter,
            "Sessions started by servers.",
        )
        .sample_u64("ringtun_agent_sessions_total", &[], s.sessions_total);
        e.family(
            "ringtun_agent_sessions_active",
            Kind::Gauge,
            "Sessions pumping now.",
        )
        .sample_u64("ringtun_agent_sessions_active", &[], s.active_sessions);
        e.family(
            "ringtun_agent_backend_failures_total",
            Kind::Counter,
            "Sessions whose backend could not be reached (refused or timed out).",
        )
        .sample_u64(
            "ringtun_agent_backend_failures_total",
            &[],
            s.backend_failures_total,
        );
        e.family(
            "ringtun_agent_sessions_idle_timeout_total",
            Kind::Counter,
            "Sessions ended because they moved no byte either way for session_idle_timeout_ms.",
        )
        .sample_u64(
            "ringtun_agent_sessions_idle_timeout_total",
            &[],
            s.sessions_idle_timeout_total,
        );
        e.family(
            "ringtun_agent_data_connection_reuses_total",
            Kind::Counter,
            "Framed data connections that waited for another session after one ended (a handshake saved each); sessions per connection = sessions / (sessions - reuses).",
        )
        .sample_u64(
            "ringtun_agent_data_connection_reuses_total",
            &[],
            s.data_connection_reuses_total,
        );
        e.family(
            "ringtun_agent_session_aborts_total",
            Kind::Counter,
            "Framed sessions aborted, by who aborted (sent: this agent, received: the server) and reason.",
        );
        for (direction, counts) in [
            ("sent", &s.session_aborts_sent_total),
            ("received", &s.session_aborts_received_total),
        ] {
            for (i, reason) in crate::protocol::session_frame::AbortReason::KNOWN
                .iter()
                .map(|r| r.label())
                .chain(["other"])
                .enumerate()
            {
                e.sample_u64(
                    "ringtun_agent_session_aborts_total",
                    &[("direction", direction), ("reason", reason)],
                    counts[i],
                );
            }
        }
        e.family(
            "ringtun_agent_session_bytes_total",
            Kind::Counter,
            "Session bytes by direction, counted when a session ends.",
        )
        .sample_u64(
            "ringtun_agent_session_bytes_total",
            &[("direction", "to_backend")],
            s.bytes_to_backend_total,
        )
        .sample_u64(
            "ringtun_agent_session_bytes_total",
            &[("direction", "from_backend")],
            s.bytes_from_backend_total,
        );
        render_udp(&mut e, &s);
        e.finish()
    }
}

/// The UDP flows' families: flows, datagrams and bytes each way, drops by reason.
fn render_udp(e: &mut Exposition, s: &AgentStatus) {
    e.family(
        "ringtun_agent_udp_flows_total",
        Kind::Counter,
        "UDP flows started by servers.",
    )
    .sample_u64("ringtun_agent_udp_flows_total", &[], s.udp_flows_total);
    e.family(
        "ringtun_agent_udp_flows_active",
        Kind::Gauge,
        "UDP flows running now.",
    )
    .sample_u64("ringtun_agent_udp_flows_active", &[], s.active_udp_flows);
    e.family(
        "ringtun_agent_udp_flows_idle_timeout_total",
        Kind::Counter,
        "UDP flows ended by their listener's session_idle_timeout_ms.",
    )
    .sample_u64(
        "ringtun_agent_udp_flows_idle_timeout_total",
        &[],
        s.udp_flows_idle_timeout_total,
    );
    e.family(
        "ringtun_agent_protocol_mismatches_total",
        Kind::Counter,
        "Session starts refused because the listener's protocol differs (UDP flow to a TCP listener or the reverse).",
    )
    .sample_u64(
        "ringtun_agent_protocol_mismatches_total",
        &[],
        s.udp_flows_refused_total,
    );
    e.family(
        "ringtun_agent_udp_datagrams_total",
        Kind::Counter,
        "UDP datagrams by direction, counted when a flow ends.",
    )
    .sample_u64(
        "ringtun_agent_udp_datagrams_total",
        &[("direction", "to_backend")],
        s.udp_datagrams_to_backend_total,
    )
    .sample_u64(
        "ringtun_agent_udp_datagrams_total",
        &[("direction", "from_backend")],
        s.udp_datagrams_from_backend_total,
    );
    e.family(
        "ringtun_agent_udp_bytes_total",
        Kind::Counter,
        "UDP payload bytes by direction, counted when a flow ends.",
    )
    .sample_u64(
        "ringtun_agent_udp_bytes_total",
        &[("direction", "to_backend")],
        s.udp_bytes_to_backend_total,
    )
    .sample_u64(
        "ringtun_agent_udp_bytes_total",
        &[("direction", "from_backend")],
        s.udp_bytes_from_backend_total,
    );
    e.family(
        "ringtun_agent_udp_datagrams_dropped_total",
        Kind::Counter,
        "UDP datagrams dropped, by reason.",
    )
    .sample_u64(
        "ringtun_agent_udp_datagrams_dropped_total",
        &[("reason", "oversized")],
        s.udp_dropped_oversized_total,
    )
    .sample_u64(
        "ringtun_agent_udp_datagrams_dropped_total",
        &[("reason", "send_failed")],
        s.udp_dropped_send_failed_total,
    )
    .sample_u64(
        "ringtun_agent_udp_datagrams_dropped_total",
        &[("reason", "empty")],
        s.udp_dropped_empty_total,
    )
    .sample_u64(
        "ringtun_agent_udp_datagrams_dropped_total",
        &[("reason", "flow_ended")],
        s.udp_dropped_flow_ended_total,
    );
}
