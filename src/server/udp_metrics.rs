//! The UDP flows' part of the server's `/metrics`: flows, datagrams and bytes each way, drops
//! by reason (summed over workers). Rendering only; the counters live in `plane::counters`.

use crate::metrics::{Exposition, Kind};
use crate::plane::counters::CounterTotals;

/// Appends the UDP families to `e`.
pub(super) fn render(e: &mut Exposition, t: &CounterTotals) {
    e.family(
        "ringtun_udp_flows_total",
        Kind::Counter,
        "UDP flows (one client address on one frontend) that got a data connection and started.",
    )
    .sample_u64("ringtun_udp_flows_total", &[], t.udp_flows_started_total);
    e.family(
        "ringtun_udp_flows_ended_total",
        Kind::Counter,
        "UDP flows that ended, including those that never got a data connection.",
    )
    .sample_u64(
        "ringtun_udp_flows_ended_total",
        &[],
        t.udp_flows_ended_total,
    );
    e.family(
        "ringtun_udp_flows_active",
        Kind::Gauge,
        "UDP flows now (waiting for a data connection or running).",
    )
    .sample_u64("ringtun_udp_flows_active", &[], t.active_udp_flows);
    e.family(
        "ringtun_udp_flows_idle_timeout_total",
        Kind::Counter,
        "UDP flows ended by udp_flow_idle_timeout_ms.",
    )
    .sample_u64(
        "ringtun_udp_flows_idle_timeout_total",
        &[],
        t.udp_flows_idle_timeout_total,
    );
    e.family(
        "ringtun_udp_flow_errors_total",
        Kind::Counter,
        "UDP flows ended by an error of their data connection (or closed by the agent before any reply).",
    )
    .sample_u64("ringtun_udp_flow_errors_total", &[], t.udp_flow_errors_total);
    e.family(
        "ringtun_udp_datagrams_total",
        Kind::Counter,
        "UDP datagrams carried: to_agent (client to edge) and from_agent (edge to client).",
    )
    .sample_u64(
        "ringtun_udp_datagrams_total",
        &[("direction", "to_agent")],
        t.udp_datagrams_to_agent_total,
    )
    .sample_u64(
        "ringtun_udp_datagrams_total",
        &[("direction", "from_agent")],
        t.udp_datagrams_from_agent_total,
    );
    e.family(
        "ringtun_udp_bytes_total",
        Kind::Counter,
        "UDP payload bytes carried, by direction.",
    )
    .sample_u64(
        "ringtun_udp_bytes_total",
        &[("direction", "to_agent")],
        t.udp_bytes_to_agent_total,
    )
    .sample_u64(
        "ringtun_udp_bytes_total",
        &[("direction", "from_agent")],
        t.udp_bytes_from_agent_total,
    );
    e.family(
        "ringtun_udp_datagrams_dropped_total",
        Kind::Counter,
        "UDP datagrams dropped, by reason.",
    );
    for (reason, n) in [
        ("oversized", t.udp_dropped_oversized_total),
        ("queue_full", t.udp_dropped_queue_full_total),
        ("client_ip_flows", t.udp_dropped_client_ip_flows_total),
        ("over_limit", t.udp_dropped_over_limit_total),
        ("no_connection", t.udp_dropped_no_connection_total),
        ("send_failed", t.udp_dropped_send_failed_total),
        ("empty", t.udp_dropped_empty_total),
        ("flow_ended", t.udp_dropped_flow_ended_total),
    ] {
        e.sample_u64(
            "ringtun_udp_datagrams_dropped_total",
            &[("reason", reason)],
            n,
        );
    }
}
