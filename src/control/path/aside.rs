//! An aside connection on the server: heartbeats both ways and the agent's control frames
//! (weight updates, graceful close by connection id), and the frames the server sends on it
//! (drain, pool requests).

use super::*;

impl Control {
    /// Serves an aside connection: heartbeats and the agent's control frames.
    pub(super) async fn aside(
        &self,
        mut stream: Channel,
        conn_id: ConnId,
        host_id: HostId,
        mut buf: Vec<u8>,
    ) {
        let interval = Duration::from_millis(self.config.heartbeat_interval_ms);
        let max_missed = self.config.heartbeat_max_missed;
        let max_payload = self.config.tunnel_listener.max_frame_payload_bytes;
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        let mut outstanding = 0u32;
        let mut seq = 0u64;
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Box<Frame>>();
        self.asides
            .borrow_mut()
            .entry(host_id)
            .or_default()
            .push((conn_id, out_tx));
        let reason = 'conn: loop {
            loop {
                match protocol::decode(&buf, max_payload) {
                    Ok(Decoded::NeedMore(_)) => break,
                    Ok(Decoded::Frame(frame, used)) => {
                        buf.drain(..used);
                        match frame {
                            Frame::Pong(_) => outstanding = outstanding.saturating_sub(1),
                            Frame::WeightUpdate(w) => {
                                let weight = w.weight.clamp(0, MAX_WEIGHT) as u32;
                                // An aside connection announces its weight when it opens; only
                                // a real change is worth an `info` line.
                                if self.registry.borrow_mut().set_weight(host_id, weight) {
                                    info!(
                                        conn = conn_id,
                                        host = host_id,
                                        weight,
                                        "agent changed its weight"
                                    );
                                    self.publish();
                                } else {
                                    debug!(
                                        conn = conn_id,
                                        host = host_id,
                                        weight,
                                        "agent weight update: the host's effective weight is unchanged"
                                    );
                                }
                            }
                            Frame::GracefulClose(g) => {
                                // Only this authenticated agent's own connections, by the ids
                                // this server issued; addresses (MOSN's form) name nothing here.
                                let close = self
                                    .registry
                                    .borrow_mut()
                                    .graceful_close(host_id, &g.connection_ids);
                                debug!(
                                    conn = conn_id,
                                    host = host_id,
                                    named = g.connection_ids.len(),
                                    closing_idle = close.len(),
                                    "graceful close"
                                );
                                self.close_on_workers(close);
                            }
                            other => {
                                break 'conn format!(
                                    "unexpected {} frame on aside connection",
                                    other.flag().name()
                                )
                            }
                        }
                    }
                    Err(e) => break 'conn e.to_string(),
                }
            }
            tokio::select! {
                read = stream.read_into(&mut buf) => match read {
                    Ok(0) => break 'conn "agent closed the aside connection".to_string(),
                    Ok(_) => {}
                    Err(e) => break 'conn format!("read failed: {e}"),
                },
                frame = out_rx.recv() => match frame {
                    Some(frame) => {
                        if let Err(e) = send_frame(&mut stream, &frame).await {
                            break 'conn format!("write failed: {e}");
                        }
                    }
                    None => break 'conn "its cluster was removed by a configuration reload".to_string(),
                },
                _ = tick.tick() => {
                    if outstanding >= max_missed {
                        self.stats.aside_heartbeat_closes_total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        break 'conn format!("{outstanding} heartbeats unanswered");
                    }
                    seq += 1;
                    if let Err(e) = send_frame(&mut stream, &Frame::Ping(Ping { seq })).await {
                        break 'conn format!("write failed: {e}");
                    }
                    outstanding += 1;
                }
            }
        };
        debug!(conn = conn_id, host = host_id, %reason, "aside connection closed");
        {
            // Only this host's entry: a scan of every host per closing aside connection would
            // cost the fleet.
            let mut asides = self.asides.borrow_mut();
            if let Some(list) = asides.get_mut(&host_id) {
                list.retain(|(id, _)| *id != conn_id);
                if list.is_empty() {
                    asides.remove(&host_id);
                }
            }
        }
        let _ = stream.stream.shutdown_std();
        self.conn_closed(conn_id);
    }
}

pub(super) async fn send_frame(stream: &mut Channel, frame: &Frame) -> std::io::Result<()> {
    let bytes = protocol::encode_to_vec(frame).map_err(std::io::Error::other)?;
    stream.write_all(&bytes).await
}
