//! An aside connection on the server: heartbeats both ways and the agent's control frames
//! (weight updates, graceful close by connection id), and the frames the server sends on it
//! (drain, pool requests).
//!
//! Frames to send wait in a bounded queue (`ASIDE_QUEUE_FRAMES`), and every write must finish
//! within `heartbeat_interval_ms × heartbeat_max_missed` — the time after which unanswered
//! heartbeats would close the connection: an agent that stops reading is closed like one that
//! stops answering, and cannot freeze this connection's heartbeats.

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
        let write_timeout = interval.saturating_mul(max_missed);
        let mut outstanding = 0u32;
        let mut seq = 0u64;
        let (out_tx, mut out_rx) = mpsc::channel::<Box<Frame>>(ASIDE_QUEUE_FRAMES);
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
                                // this server issued; addresses name nothing here (MOSN's form
                                // comes as the first frame of a connection: `parked`).
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
                        if let Err(e) = send_within(&mut stream, &frame, write_timeout).await {
                            break 'conn e;
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
                    if let Err(e) = send_within(&mut stream, &Frame::Ping(Ping { seq }), write_timeout).await {
                        break 'conn e;
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

/// [`send_frame`], given up after `timeout` (the agent stopped reading).
async fn send_within(stream: &mut Channel, frame: &Frame, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, send_frame(stream, frame)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("write failed: {e}")),
        Err(_) => Err(format!(
            "write timed out after {} ms (the agent stopped reading)",
            timeout.as_millis()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_aside_queue_refuses_without_waiting() {
        let (tx, mut rx) = mpsc::channel::<Box<Frame>>(ASIDE_QUEUE_FRAMES);
        let ping = |seq| Frame::Ping(Ping { seq });
        for seq in 0..ASIDE_QUEUE_FRAMES as u64 {
            assert!(offer(&tx, ping(seq)));
        }
        assert!(!offer(&tx, ping(99)), "queued beyond the bound");
        assert_eq!(tx.capacity(), 0);
        assert!(matches!(
            rx.try_recv().map(|f| *f),
            Ok(Frame::Ping(Ping { seq: 0 }))
        ));
        assert!(offer(&tx, ping(100)));
        drop(rx);
        assert!(!offer(&tx, ping(101)));
    }

    /// A write to an agent that stopped reading ends at the timeout instead of waiting forever.
    #[test]
    fn a_write_to_a_peer_that_stopped_reading_times_out() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            let (connected, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
            let (_never_read, _) = accepted.expect("accept");
            let mut stream = Channel::plain(connected.expect("connect"));
            // Large frames, until the socket buffers on both ends are full.
            let big = Frame::GracefulClose(crate::protocol::GracefulCloseOnewayRequest {
                addresses: Vec::new(),
                cluster_name: "c".into(),
                connection_ids: (0..2500u64).map(|i| u64::MAX - i).collect(),
            });
            let timeout = Duration::from_millis(200);
            let all = tokio::time::timeout(Duration::from_secs(30), async {
                for _ in 0..100_000 {
                    if let Err(e) = send_within(&mut stream, &big, timeout).await {
                        return e;
                    }
                }
                "every write went through".to_string()
            })
            .await
            .expect("a write waited for the peer far past its timeout");
            assert!(all.contains("timed out after 200 ms"), "{all}");
        });
    }
}
