//! UDP flows on framed data connections (extension version 2), on both I/O backends: a flow's
//! connection returns to the pool after it (idle timeout either side, backend failure, an ABORT
//! of either reason), plaintext and TLS, with no handshake per flow; a session or flow refused
//! for its protocol is aborted and its connection kept; empty datagrams and datagrams after a
//! flow's end are dropped and counted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::udp::*;
use common::*;
use ringtun::config::IoBackend;
use ringtun::protocol::TransportProtocol;
use ringtun::server::ServerHandle;

/// The agent refused one session or flow for its protocol and aborted it (not closed: the
/// server counts the abort): its connection went back to the pool (`idle` idle in all), and no
/// replacement was dialled (`before`: the server's handshakes before).
fn refused_and_kept(
    server: &ServerHandle,
    agent: &ringtun::agent::AgentHandle,
    idle: usize,
    before: u64,
) {
    assert!(wait_until(Duration::from_secs(10), || agent
        .status()
        .udp_flows_refused_total
        == 1));
    assert!(wait_until(Duration::from_secs(10), || server
        .counters()
        .session_aborts_received_backend_connect_total
        == 1));
    assert!(wait_until(Duration::from_secs(10), || server.hosts("c")[0]
        .idle_connections
        == idle));
    assert_eq!(
        handshakes(server),
        before,
        "the refused session's connection was replaced"
    );
}

both_backends!(
    a_udp_flow_to_a_tcp_listener_is_refused_on_both_sides,
    |backend| {
        let target = udp_backend(echo);
        let server = udp_server(backend, 1, |_| {});
        // The listener's protocol is left at "tcp".
        let agent = agent(backend, server.tunnel_addr(), target).run();
        wait_registered(&server, "c", 1, 4);
        let before = handshakes(&server);
        let frontend = server.frontend_addr("c").unwrap();
        client().send_to(b"anyone?", frontend).unwrap();
        refused_and_kept(&server, &agent, 4, before);
    }
);

both_backends!(
    a_tcp_session_to_a_udp_listener_is_aborted_and_its_connection_kept,
    |backend| {
        let target = udp_backend(echo);
        let server = server(backend).cluster("c").run();
        let agent = udp_agent(backend, &server, target, 2);
        wait_registered(&server, "c", 1, 2);
        let before = handshakes(&server);
        let frontend = server.frontend_addr("c").unwrap();
        let mut c = std::net::TcpStream::connect(frontend).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = std::io::Write::write_all(&mut c, b"hello?");
        // The session ends with nothing sent back.
        let mut got = Vec::new();
        let _ = std::io::Read::read_to_end(&mut c, &mut got);
        assert!(got.is_empty(), "{got:?}");
        refused_and_kept(&server, &agent, 2, before);
    }
);

/// A server with one UDP cluster `c` (idle flows end after `flow_idle_ms`) and an agent with one
/// data connection to `target`, through a TLS tunnel when `tls`; returns once it is idle. The
/// directory of the TLS files is the last member.
fn one_connection_tunnel(
    backend: IoBackend,
    tls: bool,
    target: SocketAddr,
    flow_idle_ms: u64,
) -> (
    ServerHandle,
    ringtun::agent::AgentHandle,
    Option<std::path::PathBuf>,
) {
    let files = tls.then(tls_files);
    let mut builder = server(backend).cluster("c").workers(1);
    if let Some((_, _, cert, key)) = &files {
        builder =
            builder.tls(serde_json::json!({"cert_chain_file": cert, "private_key_file": key}));
    }
    let mut config = builder.config();
    config.clusters[0].protocol = TransportProtocol::Udp;
    config.clusters[0].udp_flow_idle_timeout_ms = flow_idle_ms;
    let server = ServerHandle::start(config).unwrap();
    let mut agent = agent(backend, server.tunnel_addr(), target)
        .connection_num(1)
        .listener_field("protocol", serde_json::json!("udp"));
    if let Some((_, ca, _, _)) = &files {
        agent = agent.tls(serde_json::json!({"ca_file": ca, "server_name": "tunnel.test"}));
    }
    let agent = agent.run();
    wait_registered(&server, "c", 1, 1);
    (server, agent, files.map(|(dir, ..)| dir))
}

/// Flows that idle out, one after another from new clients, each on the same data connection.
fn idle_flows_reuse_their_connection(backend: IoBackend, tls: bool) {
    let target = udp_backend(echo);
    let (server, _agent, dir) = one_connection_tunnel(backend, tls, target, 200);
    let frontend = server.frontend_addr("c").unwrap();
    let before = handshakes(&server);
    const FLOWS: u64 = 12;
    for i in 0..FLOWS {
        let c = client();
        let q = format!("flow {i}");
        assert_eq!(ask(&c, frontend, q.as_bytes()), q.as_bytes());
        assert_eq!(ask(&c, frontend, b"again"), b"again");
        assert!(
            wait_until(Duration::from_secs(10), || {
                let t = server.counters();
                t.udp_flows_idle_timeout_total == i + 1
                    && t.active_udp_flows == 0
                    && t.data_connection_reuses_total == i + 1
            }),
            "{:?}",
            server.counters()
        );
    }
    let t = server.counters();
    assert_eq!(t.udp_flows_started_total, FLOWS);
    assert_eq!(t.udp_flow_errors_total, 0);
    assert_eq!(t.udp_datagrams_from_agent_total, 2 * FLOWS);
    // No handshake per flow: the one connection carried them all.
    assert_eq!(handshakes(&server), before, "handshakes during the flows");
    if let Some(dir) = dir {
        let _ = std::fs::remove_dir_all(dir);
    }
}

both_backends!(an_idle_flow_returns_its_connection_to_the_pool, |backend| {
    idle_flows_reuse_their_connection(backend, false);
});

both_backends!(
    an_idle_flow_returns_its_tls_connection_to_the_pool,
    |backend| {
        idle_flows_reuse_their_connection(backend, true);
    }
);

/// A backend the agent cannot open a socket to (a broadcast address without SO_BROADCAST):
/// each flow is aborted (backend connect) and its connection carries the next one.
fn backend_failures_abort_and_reuse(backend: IoBackend, tls: bool) {
    let broadcast: SocketAddr = "255.255.255.255:9".parse().unwrap();
    let (server, agent, dir) = one_connection_tunnel(backend, tls, broadcast, 60_000);
    let frontend = server.frontend_addr("c").unwrap();
    let before = handshakes(&server);
    for i in 1..=3u64 {
        client().send_to(b"anyone?", frontend).unwrap();
        assert!(
            wait_until(Duration::from_secs(10), || {
                let t = server.counters();
                t.session_aborts_received_backend_connect_total == i
                    && t.active_udp_flows == 0
                    && t.data_connection_reuses_total == i
            }),
            "{:?}",
            server.counters()
        );
    }
    assert_eq!(server.counters().udp_flow_errors_total, 0);
    assert_eq!(handshakes(&server), before);
    assert!(agent.status().backend_failures_total >= 3);
    if let Some(dir) = dir {
        let _ = std::fs::remove_dir_all(dir);
    }
}

both_backends!(
    a_backend_failure_aborts_the_flow_and_keeps_the_connection,
    |backend| {
        backend_failures_abort_and_reuse(backend, false);
        backend_failures_abort_and_reuse(backend, true);
    }
);

both_backends!(
    an_agent_side_idle_end_returns_the_connection_too,
    |backend| {
        let target = udp_backend(echo);
        let server = udp_server(backend, 1, |_| {});
        let agent = agent(backend, server.tunnel_addr(), target)
            .connection_num(1)
            .listener_field("protocol", serde_json::json!("udp"))
            .listener_field("session_idle_timeout_ms", serde_json::json!(300))
            .run();
        wait_registered(&server, "c", 1, 1);
        let frontend = server.frontend_addr("c").unwrap();
        let before = handshakes(&server);
        let c = client();
        assert_eq!(ask(&c, frontend, b"one"), b"one");
        // The agent ends the flow (END), the server answers END: the connection is pooled again.
        assert!(
            wait_until(Duration::from_secs(10), || {
                let t = server.counters();
                agent.status().udp_flows_idle_timeout_total == 1
                    && t.active_udp_flows == 0
                    && t.data_connection_reuses_total == 1
            }),
            "{:?}",
            server.counters()
        );
        assert_eq!(server.counters().udp_flows_idle_timeout_total, 0);
        assert_eq!(ask(&c, frontend, b"two"), b"two");
        assert_eq!(server.counters().udp_flows_started_total, 2);
        assert_eq!(handshakes(&server), before);
    }
);

both_backends!(
    an_empty_client_datagram_is_dropped_and_counted_and_the_flow_goes_on,
    |backend| {
        let target = udp_backend(echo);
        let (server, _agent, _) = one_connection_tunnel(backend, false, target, 60_000);
        let frontend = server.frontend_addr("c").unwrap();
        let c = client();
        // A framed connection cannot carry an empty datagram (no DATA record is empty).
        c.send_to(b"", frontend).unwrap();
        assert_eq!(ask(&c, frontend, b"after"), b"after");
        assert!(
            wait_until(Duration::from_secs(10), || server
                .counters()
                .udp_dropped_empty_total
                == 1),
            "{:?}",
            server.counters()
        );
        assert_eq!(server.counters().udp_flows_started_total, 1);
    }
);

/// A UDP backend that answers each datagram with an empty datagram, then with its echo.
fn empty_then_echo_backend() -> SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(b"", from);
            let _ = socket.send_to(&buf[..n], from);
        }
    });
    addr
}

both_backends!(
    an_empty_backend_reply_is_dropped_and_counted_by_the_agent,
    |backend| {
        let (server, agent, _) =
            one_connection_tunnel(backend, false, empty_then_echo_backend(), 60_000);
        let frontend = server.frontend_addr("c").unwrap();
        let c = client();
        // Only the echo arrives: the empty reply stopped at the agent.
        assert_eq!(ask(&c, frontend, b"hello"), b"hello");
        assert!(
            wait_until(Duration::from_secs(10), || agent
                .status()
                .udp_dropped_empty_total
                == 1),
            "{:?}",
            agent.status()
        );
        assert_eq!(ask(&c, frontend, b"again"), b"again");
    }
);

/// A scripted version 2 agent in cluster `c` with one data connection (and no aside
/// connection), once the server holds it idle.
fn scripted_agent(server: &ServerHandle) -> RawAgent {
    let agent = RawAgent::connect(server.tunnel_addr(), "c", "scripted", Some(2));
    assert!(wait_until(Duration::from_secs(10), || server
        .hosts("c")
        .first()
        .is_some_and(|h| h.idle_connections == 1)));
    agent
}

/// `DATA` record of `payload` as the framed protocol writes it: kind, u32 length, bytes.
fn data_record(payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x01];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

both_backends!(
    an_agents_backend_error_abort_ends_the_flow_and_keeps_the_connection,
    |backend| {
        let server = udp_server(backend, 1, |_| {});
        let mut agent = scripted_agent(&server);
        let frontend = server.frontend_addr("c").unwrap();
        let before = handshakes(&server);
        let c = client();
        c.send_to(b"q", frontend).unwrap();
        let start = agent.session();
        assert_eq!(start.protocol, ringtun::protocol::TransportProtocol::Udp);
        assert_eq!(agent.take(6), data_record(b"q"));
        // A reply, then the flow aborted for its backend's error (reason 3).
        let mut out = data_record(b"a");
        ringtun::protocol::session_frame::encode_abort(
            ringtun::protocol::session_frame::AbortReason::BackendError,
            "backend failed",
            &mut out,
        );
        std::io::Write::write_all(&mut agent.s, &out).unwrap();
        let mut buf = [0u8; 64];
        let (n, _) = c
            .recv_from(&mut buf)
            .expect("the reply sent before the abort");
        assert_eq!(&buf[..n], b"a");
        // The server answers with END and keeps the connection for the next flow.
        assert_eq!(agent.take(1), b"\x02");
        assert!(
            wait_until(Duration::from_secs(10), || {
                let t = server.counters();
                t.session_aborts_received_backend_error_total == 1
                    && t.active_udp_flows == 0
                    && t.data_connection_reuses_total == 1
            }),
            "{:?}",
            server.counters()
        );
        let other = client();
        other.send_to(b"next", frontend).unwrap();
        let next = agent.session();
        assert_ne!(next.session_id, start.session_id);
        assert_eq!(agent.take(9), data_record(b"next"));
        assert_eq!(handshakes(&server), before);
        assert_eq!(server.counters().udp_flow_errors_total, 0);
    }
);

both_backends!(
    a_late_reply_after_the_servers_end_still_reaches_the_client,
    |backend| {
        let server = udp_server(backend, 1, |c| c.clusters[0].udp_flow_idle_timeout_ms = 300);
        let mut agent = scripted_agent(&server);
        let frontend = server.frontend_addr("c").unwrap();
        let c = client();
        c.send_to(b"q", frontend).unwrap();
        agent.session();
        assert_eq!(agent.take(6), data_record(b"q"));
        // The flow idles out: the server's END. The backend's answer comes after it.
        assert_eq!(agent.take(1), b"\x02");
        let mut out = data_record(b"late");
        ringtun::protocol::session_frame::encode_end(&mut out);
        std::io::Write::write_all(&mut agent.s, &out).unwrap();
        let mut buf = [0u8; 64];
        let (n, _) = c.recv_from(&mut buf).expect("the late reply");
        assert_eq!(&buf[..n], b"late");
        assert!(
            wait_until(Duration::from_secs(10), || {
                let t = server.counters();
                t.udp_flows_idle_timeout_total == 1
                    && t.data_connection_reuses_total == 1
                    && t.udp_datagrams_from_agent_total == 1
            }),
            "{:?}",
            server.counters()
        );
        assert_eq!(server.counters().udp_dropped_flow_ended_total, 0);
    }
);
