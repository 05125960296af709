//! A slot's connection to a MOSN tunnel server (`server_type` `mosn`, or `auto` with a
//! response that carries no ringtun fields). MOSN's server sends nothing after `{"status":1}`
//! but the raw bytes of whichever client it routes to the connection (no session start, no
//! heartbeat), and it decodes frames only on a connection that sent no init (its aside).
//!
//! So a data connection is a raw session at once: the backend is connected right away, as
//! MOSN's own `tcp_proxy` hosting does (server-speaks-first backends need it), the bytes that
//! came with the response go first, and the slot re-dials when it closes. The aside connection
//! sends no init and no ringtun frame; when the agent stops it sends MOSN's graceful close, the
//! data connections' local addresses, as its first and only frame, and closes.
//!
//! Must not: write any ringtun frame to a MOSN server.

use super::data::run_session;
use super::*;

/// Serves a data connection to a MOSN server: one raw session from now on.
pub(super) async fn serve_mosn_data(
    shared: &Shared,
    spec: &SlotSpec,
    cell: &ConnCell,
    conn: Dialed,
    local: &Local,
    stop: &mut watch::Receiver<bool>,
) -> Ended {
    let Dialed {
        stream, leftover, ..
    } = conn;
    let Some(tunnel) = shared.config.tunnels.get(spec.peer.tunnel) else {
        return Ended::Lost("no such tunnel".into());
    };
    let _up = local.stats.connection_up(spec.peer.tunnel, Role::Data);
    let local_addr = stream.stream.local_addr().ok();
    if let Some(a) = local_addr {
        spec.peer.local_up(cell, a);
    }
    let failures = &local.stats.backend_failures_total;
    let failed_before = failures.load(Ordering::Relaxed);
    // MOSN's server names no session and no client: the connection is the session.
    let start = SessionStart {
        session_id: 0,
        client_addr: String::new(),
        frontend_addr: None,
        protocol: Default::default(),
    };
    let span = tracing::debug_span!("mosn session", local = ?local_addr);
    let stopped = Box::pin(run_session(
        shared,
        local,
        spec.peer.tunnel,
        stream,
        start,
        leftover,
        stop,
    ))
    .instrument(span)
    .await;
    if local_addr.is_some() {
        spec.peer.local_down(cell);
    }
    if stopped {
        return Ended::Stopped;
    }
    if failures.load(Ordering::Relaxed) != failed_before {
        // The backend could not be connected (and the connection is closed): a re-dial at once
        // would loop connect/handshake/close as fast as the server answers.
        tokio::select! {
            _ = crate::rt::time::sleep(Duration::from_millis(tunnel.reconnect_base_duration_ms)) => {}
            _ = stop.changed() => return Ended::Stopped,
        }
    }
    Ended::Session
}

/// Serves the aside connection to a MOSN server: silent; MOSN's graceful close on stop. A MOSN
/// server issues no connection ids, so the stop itself (not a command naming ids) sends it.
pub(super) async fn serve_mosn_aside(
    shared: &Shared,
    spec: &SlotSpec,
    mut stream: Channel,
    local: &Local,
) -> Ended {
    let peer = &spec.peer;
    let Some(tunnel) = shared.config.tunnels.get(peer.tunnel) else {
        return Ended::Lost("no such tunnel".into());
    };
    let _up = local.stats.connection_up(peer.tunnel, Role::Aside);
    local
        .stats
        .aside_connections
        .fetch_add(1, Ordering::Relaxed);
    let mut state = peer.subscribe();
    let mut scratch = Vec::new();
    let ended = loop {
        if peer.stopping() {
            let addresses: Vec<String> =
                peer.local_addrs().iter().map(ToString::to_string).collect();
            let request = Frame::GracefulClose(GracefulCloseOnewayRequest {
                addresses,
                cluster_name: tunnel.cluster.clone(),
                connection_ids: Vec::new(),
            });
            let sent = send(&mut stream, &request).await;
            drop(stream);
            if let Err(e) = sent {
                break Ended::Lost(e);
            }
            info!(peer = %peer.addr, cluster = %tunnel.cluster, "MOSN graceful close sent");
            // MOSN closes its aside after the frame; no new one is needed until the end.
            while !peer.finished() {
                tokio::select! {
                    _ = state.changed() => {}
                    _ = crate::rt::time::sleep(Duration::from_millis(100)) => {}
                }
            }
            break Ended::Lost("peer stopped".into());
        }
        tokio::select! {
            read = stream.read_into(&mut scratch) => match read {
                Ok(0) => break Ended::Lost("server closed the aside connection".into()),
                // A MOSN server never writes here; whatever comes is dropped.
                Ok(_) => scratch.clear(),
                Err(e) => break Ended::Lost(format!("read failed: {e}")),
            },
            _ = state.changed() => {}
        }
    };
    local
        .stats
        .aside_connections
        .fetch_sub(1, Ordering::Relaxed);
    ended
}
