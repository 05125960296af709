//! One tunnel connection's handshake task: optional TLS, the init frame (read on from the bytes
//! `join_now` found), the join (`join`), the response, and then the hand-off of a data
//! connection to a worker (or the aside task).

use super::*;

impl Control {
    pub(super) async fn tunnel_conn(
        self: Rc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        permit: super::admission::Admission,
        // Bytes already read from a plaintext connection (`join_now`).
        first: Vec<u8>,
    ) {
        // Nagle off and the liveness options come from the listener (`bind_tunnel_listener`).
        let timeout_ms = self.config.tunnel_listener.handshake_timeout_ms;
        let max_payload = self.config.tunnel_listener.max_frame_payload_bytes;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
        let (mut stream, first) = match &self.tls {
            None => (Channel::plain(stream), first),
            Some(config) => {
                // Boxed: the handshake's state is large, and plaintext agents should not carry it.
                let accepted = Box::pin(crate::tls::accept(
                    &stream,
                    config.current(),
                    Duration::from_millis(timeout_ms),
                ))
                .await;
                match accepted {
                    Ok(est) => (
                        Channel::new(stream, Some(Box::new(est.session))),
                        est.plaintext,
                    ),
                    Err(e) => {
                        // `accept` has sent the alert telling the agent why (best effort).
                        self.stats.handshake(match e {
                            crate::tls::TlsError::Timeout(_) => HandshakeOutcome::Timeout,
                            _ => HandshakeOutcome::TlsError,
                        });
                        crate::log_limited!(
                            warn!(%peer, reason = %e, "TLS handshake with agent failed; connection closed")
                        );
                        let _ = stream.shutdown_std();
                        return;
                    }
                }
            }
        };
        let mut permit = Some(permit);
        let mut buf = first;
        let read = tokio::time::timeout_at(
            deadline,
            read_first_from(&mut stream, &mut buf, max_payload),
        )
        .await
        .unwrap_or(Err(HandshakeError::Timeout(timeout_ms)));
        let (init, leftover) = match read {
            Ok(First::Init(init, leftover)) => (init, leftover),
            Ok(First::GracefulClose(g)) => {
                // MOSN's aside connection, opened just to send it.
                drop(permit.take());
                self.stats.handshake(HandshakeOutcome::LegacyGracefulClose);
                self.legacy_graceful_close(peer, &g);
                let _ = stream.stream.shutdown_std();
                return;
            }
            Err(HandshakeError::Timeout(_)) if buf.is_empty() => {
                // Silent from the start: from a MOSN agent's address, its aside connection.
                if let Some(slot) = self.park_slot(peer.ip()) {
                    drop(permit.take());
                    self.stats.handshake(HandshakeOutcome::LegacyAside);
                    debug!(%peer, "silent tunnel connection from a MOSN agent's address: parked as its aside connection");
                    // A task of its own: this handshake's state is freed now, not held while the
                    // connection stays parked.
                    let ctl = self.clone();
                    tokio::task::spawn_local(async move { ctl.parked(stream, peer, slot).await });
                    return;
                }
                self.refuse_early(&stream, peer, &HandshakeError::Timeout(timeout_ms));
                return;
            }
            Err(e @ HandshakeError::Decode(crate::protocol::DecodeError::WrongMagic(_))) => {
                // Not a frame: closing at once would make a MOSN aside hosted on a banner
                // backend re-dial at once, forever. From a MOSN agent's address it holds no
                // handshake permit meanwhile.
                let slot = self.park_slot(peer.ip());
                if slot.is_some() {
                    drop(permit.take());
                }
                self.refuse_early(&stream, peer, &e);
                Box::pin(self.hold(&mut stream, deadline)).await;
                drop(slot);
                let _ = stream.stream.shutdown_std();
                return;
            }
            Err(e) => {
                self.refuse_early(&stream, peer, &e);
                return;
            }
        };
        let joined = match self.join(&init, peer) {
            Ok(joined) => joined,
            // Boxed, as the hold above: their timers would otherwise enlarge every handshake.
            Err(refused) => return Box::pin(super::join::refuse(stream, refused, deadline)).await,
        };
        let response = Frame::InitResponse(joined.response.clone());
        if let Err(e) = Box::pin(super::join::send_by(deadline, &mut stream, &response)).await {
            return self.response_failed(peer, joined.conn_id, &e);
        }
        self.registered(&init, peer, &joined);
        drop(permit.take());
        match joined.role {
            Role::Data => {
                if joined.legacy() && !self.settled(&stream, joined.conn_id).await {
                    return;
                }
                let (ready, tls) = stream.into_parts();
                match ready.into_std() {
                    Ok(std_stream) => self.hand_to_worker(
                        std_stream,
                        tls,
                        joined.conn_id,
                        joined.host_id,
                        &init.cluster_name,
                        joined.extension,
                        leftover,
                    ),
                    Err(e) => {
                        warn!(conn = joined.conn_id, error = %e, "cannot hand data connection to a worker");
                        self.conn_closed(joined.conn_id);
                    }
                }
            }
            // A task of its own, for as long as the agent is up: the handshake's state (this
            // future, the init's strings) is freed now instead of staying with every agent, and
            // data connections' handshakes never carry the aside loop's state.
            Role::Aside => {
                let (conn_id, host_id) = (joined.conn_id, joined.host_id);
                let held = joined.aside_slots;
                let ctl = self.clone();
                tokio::task::spawn_local(async move {
                    let _held = held;
                    ctl.aside(stream, conn_id, host_id, leftover).await;
                });
            }
        }
    }

    /// Counts and logs a connection that produced no init, and closes it unless it is held
    /// (wrong magic: the caller closes it at the handshake deadline).
    fn refuse_early(&self, stream: &Channel, peer: SocketAddr, e: &HandshakeError) {
        self.stats.handshake(match e {
            HandshakeError::Timeout(_) => HandshakeOutcome::Timeout,
            _ => HandshakeOutcome::ProtocolError,
        });
        crate::log_limited!(warn!(%peer, reason = %e, "tunnel connection refused"));
        if !matches!(
            e,
            HandshakeError::Decode(crate::protocol::DecodeError::WrongMagic(_))
        ) {
            let _ = stream.stream.shutdown_std();
        }
    }

    /// A MOSN agent reads its response and whatever follows it in one read, and keeps the
    /// bytes after the response in its slot's buffer for good (the slot never handshakes
    /// again). So its data connection is leasable only after `legacy_lease_delay_ms`, or as
    /// soon as it sends a byte or closes: MOSN writes only once it has read the response and
    /// hosted the connection. False when the connection was named by a graceful close (or its
    /// cluster removed) meanwhile; it is then closed here.
    async fn settled(&self, stream: &Channel, conn_id: ConnId) -> bool {
        let delay = Duration::from_millis(self.config.tunnel_listener.legacy_lease_delay_ms);
        if !delay.is_zero() {
            let _ = tokio::time::timeout(delay, stream.stream.readable()).await;
        }
        if self.registry.borrow().is_closing(conn_id) {
            let _ = stream.stream.shutdown_std();
            self.conn_closed(conn_id);
            return false;
        }
        true
    }

    /// Gives a registered data connection (its response sent) to a worker.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn hand_to_worker(
        &self,
        std_stream: std::net::TcpStream,
        tls: Option<Box<crate::tls::TlsSession>>,
        conn_id: ConnId,
        host_id: HostId,
        cluster: &str,
        // The ringtun extension version the agent announced; `None`: a legacy (MOSN) agent.
        extension: Option<u32>,
        pending: Vec<u8>,
    ) {
        let legacy = extension.is_none();
        let peer_extension_version = extension.unwrap_or(0);
        // A worker whose frontends asked for a connection of this cluster gets it first.
        let wanted = self
            .wanted
            .borrow_mut()
            .get_mut(cluster)
            .and_then(std::collections::VecDeque::pop_front)
            .map(|(w, _)| w);
        let worker = self
            .registry
            .borrow_mut()
            .assign_worker_preferring(conn_id, wanted);
        let handed = HandedConn {
            conn_id,
            host_id,
            cluster: Arc::from(cluster),
            stream: std_stream,
            legacy,
            pending,
            outstanding_pings: 0,
            tls,
            peer_extension_version,
        };
        let Some(worker) = worker else {
            self.conn_closed(conn_id);
            return;
        };
        if self.flush_at.get().is_some() {
            // Its host's join may be in the publication that is due: the connection goes with
            // it, after the changes, so no worker holds a connection of a host it does not know.
            self.deferred
                .borrow_mut()
                .push((worker, handed, wanted.is_some()));
            return;
        }
        self.deliver(worker, handed, wanted.is_some());
    }

    /// Gives a handed connection to `worker`: sent (which wakes it) when it is owed to that
    /// worker's waiting frontends, else left in its update slot, taken before the worker's next
    /// lease, message or heartbeat sweep, so a join wakes no worker whose frontends do not wait.
    pub(super) fn deliver(&self, worker: usize, handed: HandedConn, owed: bool) {
        let conn_id = handed.conn_id;
        if !self.registry.borrow().is_live(conn_id) {
            // Named for closing (its agent is stopping) or gone while its publication was due:
            // no worker may pool it.
            let _ = handed.stream.shutdown(std::net::Shutdown::Both);
            self.conn_closed(conn_id);
            return;
        }
        let sent = match (self.workers.get(worker), self.updates.get(worker)) {
            (Some(tx), Some(slot)) if !owed => {
                !slot.push_conn(handed) || tx.send(WorkerMsg::Update).is_ok()
            }
            (Some(tx), _) => tx.send(WorkerMsg::DataConn(handed)).is_ok(),
            (None, _) => false,
        };
        if !sent {
            self.conn_closed(conn_id);
        }
    }
}

pub(super) trait ShutdownStd {
    fn shutdown_std(&self) -> std::io::Result<()>;
}

impl ShutdownStd for TcpStream {
    fn shutdown_std(&self) -> std::io::Result<()> {
        socket2::SockRef::from(self).shutdown(std::net::Shutdown::Both)
    }
}

#[cfg(test)]
mod keepalive_tests {
    use super::*;

    #[tokio::test]
    async fn tunnel_connections_inherit_keepalive_and_nodelay_from_the_listener() {
        let std = crate::rt::bind_tunnel_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = tokio::net::TcpListener::from_std(std).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        // A byte, so the listener's deferred accept does not wait for its timer.
        tokio::io::AsyncWriteExt::write_all(&mut client, b"x")
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let sock = socket2::SockRef::from(&accepted);
        assert_eq!(
            sock.tcp_user_timeout().unwrap(),
            Some(Duration::from_millis(60_000))
        );
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.keepalive_time().unwrap(), Duration::from_secs(30));
        assert_eq!(sock.keepalive_interval().unwrap(), Duration::from_secs(10));
        assert_eq!(sock.keepalive_retries().unwrap(), 3);
        assert!(sock.nodelay().unwrap());
    }
}

#[cfg(test)]
mod future_sizes {
    use super::*;

    /// Every connection an agent opens runs one handshake task here; a storm of pool requests
    /// runs thousands at once, so its future must stay small (TLS state is boxed; an aside
    /// connection's loop is a task of its own).
    #[test]
    fn a_handshake_task_stays_small() {
        fn future_bytes<A, F>(_: impl Fn(A) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let handshake = future_bytes(
            |(c, s, p, q, f): (
                Rc<Control>,
                TcpStream,
                SocketAddr,
                super::admission::Admission,
                Vec<u8>,
            )| { c.tunnel_conn(s, p, q, f) },
        );
        assert!(handshake <= 2048, "tunnel_conn future is {handshake} bytes");
    }
}
