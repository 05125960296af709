//! One frontend's session: a `max_sessions` slot, a leased data connection, the session start
//! frame (pongs still due are stripped first), the pump (plaintext or TLS), and the accounting
//! when it ends. A legacy (MOSN) connection gets no start frame: the raw bytes begin at once.
//! The session's client is the frontend's peer, or what its PROXY header named (`proxy`).

use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::rt::time::Instant;
use tracing::{debug, trace};

use super::proxy::Client;
use super::Worker;
use crate::dataplane::idle::IdleConn;
use crate::dataplane::pump::{pump_conns, pump_tls, Moved};
use crate::dataplane::session_timeout::with_idle_timeout;
use crate::plane::counters::{add, bump, drop_one, SessionSetup};
use crate::plane::WorkerEvent;
use crate::protocol::{self, Decoded, Frame, SessionStart};
use crate::rt::Conn;

impl Worker {
    pub(super) async fn serve_frontend(
        self: Rc<Self>,
        cluster: Arc<str>,
        frontend: Conn,
        mut client: Client,
    ) {
        let setup = SessionSetup::start(self.cluster_stats(&cluster));
        let stats = &*setup.stats;
        bump(&stats.frontends_accepted_total);
        let Some(_slot) = self.session_slot(&cluster) else {
            bump(&self.counters.sessions_over_limit_total);
            crate::log_limited!(warn!(worker = self.index, %cluster, client = %client.addr,
                "frontend refused: the cluster is at max_sessions"));
            frontend.shutdown();
            return;
        };
        let Some(conn) = self.lease(&cluster, client.addr).await else {
            bump(&self.counters.pool_exhausted_total);
            bump(&stats.pool_exhausted_total);
            debug!(worker = self.index, %cluster, client = %client.addr, "no idle data connection within pool_wait_ms; closing frontend");
            frontend.shutdown();
            return;
        };
        let (conn_id, host_id) = (conn.conn_id, conn.host_id);
        let idle = self.session_idle_timeout(&cluster);
        self.events.soon(WorkerEvent::Leased { conn_id });
        self.leased.borrow_mut().insert(conn_id, false);
        bump(&self.counters.sessions_started_total);
        add(&self.counters.active_sessions, 1);
        bump(&stats.sessions_started_total);
        add(&stats.active_sessions, 1);
        let session_id = (self.index as u64) << 48 | self.next_session.get();
        self.next_session.set(self.next_session.get() + 1);
        tracing::Span::current().record("id", session_id);
        let (result, kept) = if conn.framed() {
            match session_start(session_id, &client, &frontend) {
                // Boxed: only framed sessions pay for their pump's state.
                Ok(frame) => {
                    Box::pin(self.run_framed_session(
                        conn,
                        &frontend,
                        &mut client,
                        &cluster,
                        frame,
                        &setup,
                        idle,
                    ))
                    .await
                }
                Err(e) => {
                    conn.shutdown();
                    (Err(e), false)
                }
            }
        } else {
            // Boxed too: a session task holds only the state of the kind it runs (version 1
            // sessions pay a handshake each anyway).
            let result =
                Box::pin(self.run_session(conn, &frontend, &mut client, session_id, &setup, idle))
                    .await;
            (result, false)
        };
        match result {
            Ok(moved) => {
                add(&self.counters.bytes_to_agent_total, moved.a_to_b);
                add(&self.counters.bytes_from_agent_total, moved.b_to_a);
                add(&stats.bytes_to_agent_total, moved.a_to_b);
                add(&stats.bytes_from_agent_total, moved.b_to_a);
                trace!(
                    session = session_id,
                    to_agent = moved.a_to_b,
                    from_agent = moved.b_to_a,
                    "session ended"
                );
            }
            Err(e) => {
                bump(&self.counters.session_errors_total);
                bump(&stats.session_errors_total);
                debug!(session = session_id, %cluster, client = %client.addr, error = %e, "session ended with error");
            }
        }
        bump(&self.counters.sessions_ended_total);
        drop_one(&self.counters.active_sessions);
        drop_one(&stats.active_sessions);
        if let Some(pool) = self.state.borrow_mut().pools.get_mut(&host_id) {
            pool.active = pool.active.saturating_sub(1);
        }
        self.leased.borrow_mut().remove(&conn_id);
        if !kept {
            self.events.now(WorkerEvent::Closed { conn_id });
        }
    }

    pub(super) async fn run_session(
        &self,
        conn: IdleConn,
        frontend: &Conn,
        client: &mut Client,
        session_id: u64,
        setup: &SessionSetup,
        idle: Option<Duration>,
    ) -> io::Result<Moved> {
        if conn.tls.is_some() {
            // Boxed: a TLS session's state is large, and plaintext sessions should not carry it.
            return Box::pin(self.run_tls_session(conn, frontend, client, session_id, setup, idle))
                .await;
        }
        let IdleConn {
            stream,
            legacy,
            pending,
            outstanding_pings,
            ..
        } = conn;
        let (data, prefix_to_frontend) = if legacy {
            setup.started();
            (Conn::from_std(self.backend, stream)?, pending)
        } else {
            let frame = session_start(session_id, client, frontend)?;
            let adopted = self
                .start_session(stream, &frame, pending, outstanding_pings)
                .await?;
            setup.started();
            adopted
        };
        let pump = std::pin::pin!(pump_conns(
            frontend,
            &data,
            prefix_to_frontend,
            client.take_early(),
            &self.buffers,
        ));
        let (moved, timed_out) = with_idle_timeout(frontend, &data, idle, pump).await;
        self.count_idle_timeout(timed_out);
        moved
    }

    /// Counts a session ended by its cluster's `session_idle_timeout_ms` (which ended it like a
    /// closed one: both sockets shut down).
    pub(super) fn count_idle_timeout(&self, timed_out: bool) {
        if timed_out {
            bump(&self.counters.sessions_idle_timeout_total);
            trace!(
                worker = self.index,
                "session ended by session_idle_timeout_ms"
            );
        }
    }

    /// `run_session` for a TLS data connection: the session start frame and the pump go
    /// through its TLS session.
    pub(super) async fn run_tls_session(
        &self,
        conn: IdleConn,
        frontend: &Conn,
        client: &mut Client,
        session_id: u64,
        setup: &SessionSetup,
        idle: Option<Duration>,
    ) -> io::Result<Moved> {
        let IdleConn {
            stream,
            legacy,
            pending,
            outstanding_pings,
            tls,
            ..
        } = conn;
        let tls = tls.ok_or_else(|| io::Error::other("TLS session lost"))?;
        let frame = session_start(session_id, client, frontend)?;
        let mut channel = crate::tls::Channel::from_std(stream, Some(tls))?;
        let rest = if legacy {
            pending
        } else {
            channel.write_all(&frame).await?;
            self.strip_pongs(&mut channel, pending, outstanding_pings)
                .await?
        };
        setup.started();
        let (stream, tls) = channel.into_parts();
        let data = Conn::from_ready(self.backend, stream)?;
        let session = tls.ok_or_else(|| io::Error::other("TLS session lost"))?;
        let pump = std::pin::pin!(pump_tls(
            &data,
            frontend,
            session,
            rest,
            client.take_early(),
            &self.buffers,
        ));
        let (moved, timed_out) = with_idle_timeout(&data, frontend, idle, pump).await;
        self.count_idle_timeout(timed_out);
        // (to the frontend, to the agent) → (a = frontend, b = data).
        moved.map(|m| Moved {
            a_to_b: m.b_to_a,
            b_to_a: m.a_to_b,
        })
    }

    /// Writes the session start frame and drops pongs still due, then adopts the data
    /// connection on this worker's backend. The common case (nothing pending, an empty send
    /// buffer) is one non-blocking write.
    pub(super) async fn start_session(
        &self,
        stream: std::net::TcpStream,
        frame: &[u8],
        pending: Vec<u8>,
        outstanding_pings: u32,
    ) -> io::Result<(Conn, Vec<u8>)> {
        let written = match std::io::Write::write(&mut &stream, frame) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        if written == frame.len() && outstanding_pings == 0 {
            return Ok((Conn::from_std(self.backend, stream)?, pending));
        }
        let mut channel = crate::tls::Channel::from_std(stream, None)?;
        channel.write_all(&frame[written..]).await?;
        let rest = self
            .strip_pongs(&mut channel, pending, outstanding_pings)
            .await?;
        let (data, _) = channel.into_parts();
        Ok((Conn::from_ready(self.backend, data)?, rest))
    }

    /// Pongs for pings sent before the lease precede the session's raw bytes; drop them (decoded
    /// from decrypted bytes on a TLS connection).
    pub(super) async fn strip_pongs(
        &self,
        data: &mut crate::tls::Channel,
        mut buf: Vec<u8>,
        mut outstanding: u32,
    ) -> io::Result<Vec<u8>> {
        let deadline = Instant::now() + self.heartbeat_interval;
        while outstanding > 0 {
            match protocol::decode(&buf, self.max_frame_payload_bytes) {
                Ok(Decoded::Frame(Frame::Pong(_), used)) => {
                    buf.drain(..used);
                    outstanding -= 1;
                }
                Ok(Decoded::NeedMore(_)) => {
                    let n = crate::rt::time::timeout_at(deadline, data.read_into(&mut buf))
                        .await
                        .map_err(|_| {
                            io::Error::new(
                                io::ErrorKind::TimedOut,
                                "agent did not answer pending heartbeats",
                            )
                        })??;
                    if n == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
                Ok(Decoded::Frame(other, _)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "unexpected {} frame before session bytes",
                            other.flag().name()
                        ),
                    ))
                }
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
        }
        Ok(buf)
    }
}

/// The session start frame: the client, and where it connected to (what its PROXY header
/// named, else the frontend socket's own address: known from its listener, or asked for).
fn session_start(session_id: u64, client: &Client, frontend: &Conn) -> io::Result<Vec<u8>> {
    let to = client.frontend().or_else(|| frontend.local_addr().ok());
    let start = Frame::SessionStart(SessionStart {
        session_id,
        client_addr: client.addr.to_string(),
        frontend_addr: to.map(|a| a.to_string()),
        protocol: Default::default(),
    });
    protocol::encode_to_vec(&start).map_err(io::Error::other)
}

#[cfg(test)]
mod future_sizes {
    //! What an idle session costs in memory is mostly its task's future: these bounds keep a
    //! stack array or an unboxed TLS state from creeping back into it (see the README's
    //! Performance section for the measured memory per idle session).
    use super::*;
    use crate::dataplane::pump::Pools;

    fn future_bytes<A, F>(_: impl Fn(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn a_server_session_task_stays_small() {
        let session = future_bytes(|(w, c, f, a): (Rc<Worker>, Arc<str>, Conn, Client)| {
            w.serve_frontend(c, f, a)
        });
        assert!(session <= 2048, "serve_frontend future is {session} bytes");
        let pump = future_bytes(|(a, b, p): (&Conn, &Conn, &Pools)| {
            pump_conns(a, b, Vec::new(), Vec::new(), p)
        });
        assert!(pump <= 1536, "pump_conns future is {pump} bytes");
    }
}
