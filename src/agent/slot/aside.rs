//! The aside slot's connection: heartbeats, weight changes, graceful close, drain and pool
//! requests between this agent and one server.
//!
//! Every write must finish before the server's silence deadline (the last time it was heard
//! from plus 4 heartbeat intervals): a server that stops reading cannot hold the slot in a write
//! past the point where its silence would have closed the connection anyway.

use super::*;

/// Serves the aside connection: heartbeats, weight changes, graceful close, drain, pool requests.
pub(super) async fn serve_aside(
    shared: &Shared,
    spec: &SlotSpec,
    conn: Dialed,
    local: &Local,
    mut commands: Option<&mut AsideCommands>,
) -> Ended {
    let Dialed {
        mut stream,
        heartbeat_interval_ms,
        leftover,
        ..
    } = conn;
    let peer = &spec.peer;
    let Some(tunnel) = shared.config.tunnels.get(peer.tunnel) else {
        return Ended::Lost("no such tunnel".into());
    };
    let _up = local.stats.connection_up(peer.tunnel, Role::Aside);
    local
        .stats
        .aside_connections
        .fetch_add(1, Ordering::Relaxed);
    let silence = heartbeat_interval_ms
        .map(|ms| Duration::from_millis(ms.saturating_mul(SERVER_SILENCE_INTERVALS)))
        .unwrap_or(Duration::MAX);
    let mut weight = shared.weight.subscribe();
    // The init carried the weight read before dialling; announce the current one once so a
    // change in between is not lost.
    weight.mark_changed();
    let mut state = peer.subscribe();
    let mut buf = leftover;
    let mut last_heard = crate::rt::time::Instant::now();
    let silence_deadline = |last_heard: crate::rt::time::Instant| {
        last_heard + silence.min(Duration::from_secs(86_400 * 365))
    };
    let ended = 'conn: loop {
        loop {
            match protocol::decode(&buf, MAX_SERVER_FRAME_PAYLOAD_BYTES) {
                Ok(Decoded::NeedMore(_)) => break,
                Ok(Decoded::Frame(frame, used)) => {
                    buf.drain(..used);
                    let reply = match frame {
                        Frame::Ping(p) => Some(Frame::Pong(Pong { seq: p.seq })),
                        Frame::Drain(d) => {
                            info!(peer = %peer.addr, cluster = %tunnel.cluster, grace_ms = d.grace_ms,
                                "server is draining; its connections end when it stops, and are re-dialled when it returns");
                            None
                        }
                        Frame::PoolRequest(r) => {
                            shared.extra_slots(peer, r.count);
                            None
                        }
                        other => {
                            break 'conn Ended::Lost(format!(
                                "unexpected {} frame on the aside connection",
                                other.flag().name()
                            ))
                        }
                    };
                    if let Some(reply) = reply {
                        if let Err(e) =
                            send_by(&mut stream, &reply, silence_deadline(last_heard), silence)
                                .await
                        {
                            break 'conn Ended::Lost(e);
                        }
                    }
                }
                Err(e) => break 'conn Ended::Lost(e.to_string()),
            }
        }
        if peer.stopping() && peer.finished() {
            break Ended::Lost("peer stopped".into());
        }
        let deadline = silence_deadline(last_heard);
        tokio::select! {
            read = stream.read_into(&mut buf) => match read {
                Ok(0) => break Ended::Lost("server closed the aside connection".into()),
                Ok(_) => {
                    last_heard = crate::rt::time::Instant::now();
                }
                Err(e) => break Ended::Lost(format!("read failed: {e}")),
            },
            _ = crate::rt::time::sleep_until(deadline) => {
                break Ended::Lost(format!("server silent for {} ms (missed heartbeats)", silence.as_millis()));
            }
            changed = weight.changed() => {
                if changed.is_err() { continue; }
                let w = *weight.borrow_and_update();
                let update = Frame::WeightUpdate(WeightUpdate { cluster_name: tunnel.cluster.clone(), weight: w });
                if let Err(e) = send_by(&mut stream, &update, deadline, silence).await {
                    break Ended::Lost(e);
                }
                info!(peer = %peer.addr, cluster = %tunnel.cluster, weight = w, "weight update sent");
            }
            cmd = async { match commands.as_mut() { Some(c) => c.recv().await, None => std::future::pending().await } } => {
                let Some(AsideCmd::GracefulClose(ids)) = cmd else { continue };
                let request = Frame::GracefulClose(GracefulCloseOnewayRequest {
                    addresses: Vec::new(),
                    cluster_name: tunnel.cluster.clone(),
                    connection_ids: ids,
                });
                if let Err(e) = send_by(&mut stream, &request, deadline, silence).await {
                    break Ended::Lost(e);
                }
            }
            _ = state.changed() => {}
            // Wake up now and then to notice the peer finishing.
            _ = crate::rt::time::sleep(Duration::from_millis(100)), if peer.stopping() => {}
        }
    };
    local
        .stats
        .aside_connections
        .fetch_sub(1, Ordering::Relaxed);
    ended
}

/// [`send`], given up at `deadline` (the server's silence deadline).
async fn send_by(
    stream: &mut Channel,
    frame: &Frame,
    deadline: crate::rt::time::Instant,
    silence: Duration,
) -> Result<(), String> {
    crate::rt::time::timeout_at(deadline, send(stream, frame))
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "write blocked until the server was silent for {} ms (it stopped reading)",
                silence.as_millis()
            ))
        })
}
