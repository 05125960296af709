//! Session liveness: a session that moves no byte for its idle timeout is ended on both sides
//! (server `clusters[].session_idle_timeout_ms`, agent `listeners[].session_idle_timeout_ms`)
//! and its slot freed; an active session outlives the timeout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use ringtun::agent::AgentHandle;
use ringtun::config::IoBackend;
use ringtun::server::ServerHandle;

const SHORT_MS: u64 = 300;

/// A server (cluster `c`, `max_sessions` 1) and an agent; `server_ms` / `agent_ms` are the
/// session idle timeouts of each side.
fn pair(
    backend: IoBackend,
    server_ms: u64,
    agent_ms: u64,
) -> (ServerHandle, AgentHandle, EchoBackend) {
    let echo = echo_backend();
    let mut config = server(backend).cluster("c").config();
    config.clusters[0].session_idle_timeout_ms = server_ms;
    config.clusters[0].max_sessions = 1;
    let server = ServerHandle::start(config).unwrap();
    let agent = agent(backend, server.tunnel_addr(), echo.addr)
        .listener_field("session_idle_timeout_ms", serde_json::json!(agent_ms))
        .run();
    wait_registered(&server, "c", 1, 4);
    (server, agent, echo)
}

fn roundtrip(c: &mut TcpStream, data: &[u8]) {
    c.write_all(data).unwrap();
    let mut back = vec![0u8; data.len()];
    c.read_exact(&mut back).unwrap();
    assert_eq!(back, data);
}

/// Reads until EOF (or a reset), within `limit`.
fn ends_within(c: &mut TcpStream, limit: Duration) {
    c.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 64];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("session still open after {limit:?}: {e}"),
        }
    }
}

/// A silent client: the session ends on both sides, is counted, and its `max_sessions` slot
/// (1) serves the next client. When the agent ends it, the server's side gets the agent's FIN
/// (the client sees EOF) and ends when the client closes, as any half-close.
fn silent_session_ends(backend: IoBackend, server_ms: u64, agent_ms: u64) {
    let (server, agent, _echo) = pair(backend, server_ms, agent_ms);
    let frontend = server.frontend_addr("c").unwrap();
    let mut c = TcpStream::connect(frontend).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    roundtrip(&mut c, b"hello");
    assert_eq!(agent.status().active_sessions, 1);
    ends_within(&mut c, Duration::from_secs(10));
    assert!(wait_until(Duration::from_secs(5), || agent
        .status()
        .active_sessions
        == 0));
    if server_ms > 0 {
        // The server ended it: its side is gone while the client still holds its socket.
        assert!(wait_until(Duration::from_secs(5), || server
            .counters()
            .active_sessions
            == 0));
        assert_eq!(server.counters().sessions_idle_timeout_total, 1);
    } else {
        assert_eq!(agent.status().sessions_idle_timeout_total, 1);
    }
    drop(c);
    assert!(wait_until(Duration::from_secs(5), || server
        .counters()
        .active_sessions
        == 0));
    let mut next = TcpStream::connect(frontend).unwrap();
    next.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    roundtrip(&mut next, b"the slot is free");
}

both_backends!(a_silent_session_is_ended_by_the_server, |backend| {
    silent_session_ends(backend, SHORT_MS, 0);
});

both_backends!(a_silent_session_is_ended_by_the_agent, |backend| {
    silent_session_ends(backend, 0, SHORT_MS);
});

both_backends!(an_active_session_outlives_the_idle_timeout, |backend| {
    let (server, agent, _echo) = pair(backend, SHORT_MS, SHORT_MS);
    let frontend = server.frontend_addr("c").unwrap();
    let mut c = TcpStream::connect(frontend).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // A byte each way every sixth of the timeout, for four timeouts: never idle that long.
    let until = Instant::now() + Duration::from_millis(SHORT_MS * 4);
    while Instant::now() < until {
        roundtrip(&mut c, b"x");
        std::thread::sleep(Duration::from_millis(SHORT_MS / 6));
    }
    roundtrip(&mut c, b"still here");
    assert_eq!(server.counters().sessions_idle_timeout_total, 0);
    assert_eq!(agent.status().sessions_idle_timeout_total, 0);
});
