//! One emulated agent connection: bind a loopback source address, connect, TLS when asked, send
//! the init (the crate's codec and TLS client, as a real agent's dial does), then serve it as a
//! real agent's slot does — answer pings, echo a session when `--serve-echo`, send weight updates
//! on the aside connection — and dial again when it ends: at once after a session, with the
//! agent's backoff after a failure, and after a loss only with `--reconnect`.
//!
//! It keeps no buffer while idle (reads go through the thread's scratch buffer) and logs nothing:
//! what happens is counted in the [`Tally`].

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;

use super::tally::{FailKind, Failure};
use super::Swarm;
use crate::agent::dial::{read_frame, ReadFrameError, MAX_SERVER_FRAME_PAYLOAD_BYTES};
use crate::protocol::{
    self, ConnectionInitInfo, Decoded, Frame, InitExtra, Pong, RingtunInit, Role, Status,
    WeightUpdate,
};
use crate::tls::Channel;

/// Heartbeat intervals of silence after which the server is presumed dead (as the agent does).
const SERVER_SILENCE_INTERVALS: u64 = 4;

/// What the coordinator can ask an aside connection to do.
#[derive(Debug, Clone, Copy)]
pub enum Cmd {
    /// Announce this weight (a WeightUpdate frame).
    Weight(i64),
}

/// Which connection of which agent this is.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    pub agent: usize,
    pub role: Role,
    /// The source address to bind, if any.
    pub source: Option<IpAddr>,
}

/// A handshaken connection.
struct Dialed {
    channel: Channel,
    heartbeat_interval_ms: Option<u64>,
    /// Bytes the server sent behind its answer.
    leftover: Vec<u8>,
}

enum Ended {
    /// A session ran on it: dial the replacement at once.
    Session,
    Lost(String),
}

/// Runs one connection slot until its thread's runtime is dropped (or it gives up).
pub async fn run(sw: Arc<Swarm>, slot: Slot, mut cmds: Option<mpsc::UnboundedReceiver<Cmd>>) {
    let tally = &sw.tally;
    let mut failures = 0u32;
    let mut weight = sw.weight;
    loop {
        let Ok(permit) = sw.handshakes.acquire().await else {
            return;
        };
        let started = Instant::now();
        let dialed = tokio::time::timeout(sw.connect_timeout, Box::pin(dial(&sw, slot, weight)))
            .await
            .unwrap_or_else(|_| {
                Err(Failure {
                    kind: FailKind::Timeout,
                    text: format!(
                        "no handshake with {} within {} ms",
                        sw.target,
                        sw.connect_timeout.as_millis()
                    ),
                })
            });
        drop(permit);
        match dialed {
            Ok(conn) => {
                tally.handshake_ok(slot.agent, started.elapsed());
                failures = 0;
                tally.conn_up(slot.agent);
                let ended = Box::pin(serve(&sw, slot.role, conn, cmds.as_mut(), &mut weight)).await;
                tally.conn_down(slot.agent);
                match ended {
                    Ended::Session => continue,
                    Ended::Lost(why) => {
                        tally.lost(&why);
                        if !sw.reconnect {
                            tally.gave_up(slot.agent);
                            return;
                        }
                        // As the agent: the first re-dial is immediate, repeated losses back off.
                        failures = 1;
                    }
                }
            }
            Err(f) => {
                tally.failed(&f);
                if f.kind.permanent() {
                    tally.gave_up(slot.agent);
                    return;
                }
                failures = failures.saturating_add(1);
                tokio::time::sleep(sw.backoff.delay(failures, fastrand::f64())).await;
            }
        }
    }
}

fn io_failure(what: &str, e: &io::Error) -> Failure {
    let kind = match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => FailKind::ConnectRefused,
        Some(libc::EADDRNOTAVAIL) | Some(libc::EADDRINUSE) => FailKind::NoLocalPort,
        Some(libc::EMFILE) | Some(libc::ENFILE) => FailKind::FdLimit,
        _ => FailKind::Io,
    };
    Failure {
        kind,
        text: format!("{what}: {e}"),
    }
}

/// A socket bound to `source` with IP_BIND_ADDRESS_NO_PORT, so the port is picked at connect
/// time per destination instead of reserved at bind time.
fn socket_for(target: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpSocket> {
    let socket = match target {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(ip) = source {
        if ip.is_ipv4() {
            let one: libc::c_int = 1;
            // SAFETY: setsockopt reads `one` (an int, its size passed) on a socket we own. A
            // failure only means ports are reserved at bind time, which still works.
            unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    Ok(socket)
}

async fn dial(sw: &Swarm, slot: Slot, weight: i64) -> Result<Dialed, Failure> {
    let target = sw.target;
    let socket = socket_for(target, slot.source).map_err(|e| {
        let src = slot.source.map_or("any".to_string(), |s| s.to_string());
        io_failure(&format!("binding source address {src}"), &e)
    })?;
    let stream: TcpStream = socket
        .connect(target)
        .await
        .map_err(|e| io_failure(&format!("connecting to {target}"), &e))?;
    let _ = stream.set_nodelay(true);
    let (mut channel, first) = match &sw.tls {
        None => (Channel::plain(stream), Vec::new()),
        Some(t) => {
            let est = Box::pin(crate::tls::connect(
                &stream,
                t.config.clone(),
                t.name.clone(),
            ))
            .await
            .map_err(|e| Failure {
                kind: FailKind::Tls,
                text: format!("TLS handshake with {target}: {e}"),
            })?;
            (
                Channel::new(stream, Some(Box::new(est.session))),
                est.plaintext,
            )
        }
    };
    let host_name = sw.host_name(slot.agent);
    let agent_id = sw.agent_id(slot.agent);
    let init = Frame::Init(ConnectionInitInfo {
        cluster_name: sw.cluster.clone(),
        weight,
        host_name: host_name.clone(),
        credential_policy: sw.credential_policy.clone(),
        credential: crate::agent::credential::init_credential(
            &sw.credential_policy,
            sw.credential.as_ref(),
            &crate::credential::HmacSubject {
                cluster: &sw.cluster,
                host_name: &host_name,
                agent_id: &agent_id,
            },
        ),
        extra: Some(InitExtra {
            ringtun: Some(RingtunInit {
                // Version 1: the swarm's data connections carry one raw session each.
                version: 1,
                role: slot.role,
                agent_id,
                max_connection_num: Some(sw.max_connection_num),
            }),
            other: Default::default(),
        }),
    });
    let bytes = protocol::encode_to_vec(&init).map_err(|e| Failure {
        kind: FailKind::Protocol,
        text: format!("cannot encode the init: {e}"),
    })?;
    channel
        .write_all(&bytes)
        .await
        .map_err(|e| io_failure("sending the init", &e))?;
    let (frame, leftover) = read_frame(&mut channel, first).await.map_err(|e| match e {
        ReadFrameError::Closed => Failure {
            kind: FailKind::Closed,
            text: format!("{target} closed the connection before answering the init"),
        },
        ReadFrameError::Io(e) => io_failure("reading the init answer", &e),
        ReadFrameError::Protocol(e) => Failure {
            kind: FailKind::Protocol,
            text: format!("{target} answered with a bad frame: {e}"),
        },
    })?;
    match frame {
        Frame::InitResponse(r) if r.status == Status::SUCCESS => Ok(Dialed {
            channel,
            heartbeat_interval_ms: r.heartbeat_interval_ms,
            leftover,
        }),
        Frame::InitResponse(r) => Err(Failure {
            kind: FailKind::Refused(r.status),
            text: format!(
                "{target} refused {} into cluster {}: {} (status {})",
                host_name,
                sw.cluster,
                r.status.meaning(),
                r.status.0
            ),
        }),
        other => Err(Failure {
            kind: FailKind::Protocol,
            text: format!(
                "{target} answered the init with a {} frame",
                other.flag().name()
            ),
        }),
    }
}

async fn send(channel: &mut Channel, frame: &Frame) -> Result<(), String> {
    let bytes = protocol::encode_to_vec(frame).map_err(|e| e.to_string())?;
    channel
        .write_all(&bytes)
        .await
        .map_err(|e| format!("write failed: {e}"))
}

/// Serves a handshaken connection until a session ran on it or it is lost.
async fn serve(
    sw: &Swarm,
    role: Role,
    conn: Dialed,
    mut cmds: Option<&mut mpsc::UnboundedReceiver<Cmd>>,
    weight: &mut i64,
) -> Ended {
    let Dialed {
        mut channel,
        heartbeat_interval_ms,
        leftover: mut buf,
    } = conn;
    let tally = &sw.tally;
    if role == Role::Aside {
        // A real agent announces its weight once its aside connection is up.
        let update = Frame::WeightUpdate(WeightUpdate {
            cluster_name: sw.cluster.clone(),
            weight: *weight,
        });
        if let Err(e) = send(&mut channel, &update).await {
            return Ended::Lost(e);
        }
    }
    let silence = heartbeat_interval_ms
        .map(|ms| Duration::from_millis(ms.saturating_mul(SERVER_SILENCE_INTERVALS)));
    let far = Duration::from_secs(86_400 * 365);
    let mut last_heard = tokio::time::Instant::now();
    loop {
        loop {
            match protocol::decode(&buf, MAX_SERVER_FRAME_PAYLOAD_BYTES) {
                Ok(Decoded::NeedMore(_)) => break,
                Err(e) => return Ended::Lost(format!("bad frame from the server: {e}")),
                Ok(Decoded::Frame(frame, used)) => {
                    buf.drain(..used);
                    match (role, frame) {
                        (_, Frame::Ping(p)) => {
                            if let Err(e) =
                                send(&mut channel, &Frame::Pong(Pong { seq: p.seq })).await
                            {
                                return Ended::Lost(e);
                            }
                            tally
                                .pongs
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        (Role::Data, Frame::SessionStart(_)) => {
                            return Box::pin(session(sw, channel, buf)).await;
                        }
                        (Role::Aside, Frame::PoolRequest(_)) => {
                            tally
                                .pool_requests
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        (Role::Aside, Frame::Drain(_)) => {
                            tally
                                .drains
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        (_, other) => {
                            return Ended::Lost(format!(
                                "unexpected {} frame on a {role:?} connection",
                                other.flag().name()
                            ))
                        }
                    }
                }
            }
        }
        let silent_at = last_heard + silence.unwrap_or(far);
        tokio::select! {
            read = channel.read_into(&mut buf) => match read {
                Ok(0) => return Ended::Lost("server closed the connection".into()),
                Ok(_) => last_heard = tokio::time::Instant::now(),
                Err(e) => return Ended::Lost(format!("read failed: {e}")),
            },
            _ = tokio::time::sleep_until(silent_at) => {
                return Ended::Lost(format!(
                    "server silent for {} ms (missed heartbeats)",
                    silence.unwrap_or(far).as_millis()
                ));
            }
            cmd = async {
                match cmds.as_mut() {
                    Some(c) => c.recv().await,
                    None => std::future::pending().await,
                }
            } => match cmd {
                Some(Cmd::Weight(w)) => {
                    *weight = w;
                    let update = Frame::WeightUpdate(WeightUpdate {
                        cluster_name: sw.cluster.clone(),
                        weight: w,
                    });
                    if let Err(e) = send(&mut channel, &update).await {
                        return Ended::Lost(e);
                    }
                }
                // The coordinator is gone; serve on without commands.
                None => cmds = None,
            },
        }
    }
}

/// A session started: echo its bytes (`--serve-echo`) until the server's end closes, then close;
/// without `--serve-echo`, close at once (as an agent whose backend is unreachable).
async fn session(sw: &Swarm, mut channel: Channel, mut buf: Vec<u8>) -> Ended {
    use std::sync::atomic::Ordering::Relaxed;
    let tally = &sw.tally;
    if !sw.serve_echo {
        tally.sessions_refused.fetch_add(1, Relaxed);
        close(channel).await;
        return Ended::Session;
    }
    tally.sessions.fetch_add(1, Relaxed);
    loop {
        if !buf.is_empty() {
            if channel.write_all(&buf).await.is_err() {
                break;
            }
            tally.session_bytes.fetch_add(buf.len() as u64, Relaxed);
            buf.clear();
        }
        match channel.read_into(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    close(channel).await;
    Ended::Session
}

/// Ends a connection: close_notify under TLS, then a write shutdown.
async fn close(channel: Channel) {
    use tokio::io::AsyncWriteExt;
    let (stream, tls) = channel.into_parts();
    let Ok(mut stream) = stream.into_tokio() else {
        return;
    };
    if let Some(mut tls) = tls {
        let mut out = Vec::new();
        tls.close_notify(&mut out);
        let _ = stream.write_all(&out).await;
    }
    let _ = stream.shutdown().await;
}
