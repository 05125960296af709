//! Stopping an agent with sessions in flight: the sessions end cleanly on either backend (on
//! io_uring a session is ended by shutting its sockets down and letting its pump finish, never by
//! dropping a pump with reads in flight), nothing panics, and every descriptor is released. On
//! the way, the counters the agent's workers keep apart must add up in `/metrics`.
//!
//! One test running the backends one after the other, alone in its binary, so nothing else moves
//! this process's descriptor count.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use ringtun::config::IoBackend;

static PANICS: AtomicUsize = AtomicUsize::new(0);

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// An agent's life: sessions that end, sessions left in flight, counters checked, stop.
fn agent_life(backend: IoBackend, server: &ringtun::server::ServerHandle, echo: &EchoBackend) {
    let frontend = server.frontend_addr("c").unwrap();
    let agent = agent(backend, server.tunnel_addr(), echo.addr)
        .workers(2)
        .connection_num(4)
        .admin()
        .run();
    let admin = agent.admin_addr().unwrap();
    wait_registered(server, "c", 1, 4);

    // Three sessions that end, on whichever workers their connections were dialled from.
    for seed in 0..3u8 {
        let data = pattern(1000, seed);
        assert_eq!(echo_roundtrip(frontend, &data), data);
    }
    // Three sessions left in flight, each with a round trip done.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = TcpStream::connect(frontend).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(b"ping").unwrap();
        let mut back = [0u8; 4];
        c.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"ping");
        held.push(c);
    }
    let metrics = || http(admin, "GET", "/metrics").2;
    let counted = wait_until(Duration::from_secs(10), || {
        let m = metrics();
        metric(&m, "ringtun_agent_sessions_total") == Some(6.0)
            && metric(&m, "ringtun_agent_sessions_active") == Some(3.0)
            && metric(
                &m,
                "ringtun_agent_session_bytes_total{direction=\"to_backend\"}",
            ) == Some(3000.0)
            && metric(
                &m,
                "ringtun_agent_session_bytes_total{direction=\"from_backend\"}",
            ) == Some(3000.0)
            // A slot's connection is replaced when its session ends: 3 in a session, 1 idle.
            && metric(
                &m,
                "ringtun_agent_data_connections{tunnel=\"0\",cluster=\"c\"}",
            ) == Some(4.0)
            && metric(&m, "ringtun_agent_idle_data_connections") == Some(1.0)
            && metric(&m, "ringtun_agent_aside_connections") == Some(1.0)
    });
    assert!(
        counted,
        "{backend:?}: /metrics does not add up:\n{}",
        metrics()
    );
    let status = agent.status();
    assert_eq!(
        (
            status.sessions_total,
            status.active_sessions,
            status.bytes_to_backend_total
        ),
        (6, 3, 3000)
    );

    agent.shutdown();
    // The sessions in flight end: their clients read the end, not a timeout.
    for mut c in held {
        let mut rest = Vec::new();
        match c.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) => assert_ne!(
                e.kind(),
                std::io::ErrorKind::WouldBlock,
                "{backend:?}: a session in flight did not end on stop"
            ),
        }
    }
    assert_eq!(
        PANICS.load(Ordering::SeqCst),
        0,
        "{backend:?}: a thread panicked"
    );
}

fn run(backend: IoBackend) {
    let echo = echo_backend();
    let server = server(backend).cluster("c").heartbeat_ms(200).run();
    // The first life warms up what the server keeps (worker state, pools); the second one must
    // leave no descriptor behind.
    agent_life(backend, &server, &echo);
    let settled = |server: &ringtun::server::ServerHandle| server.hosts("c").is_empty();
    assert!(wait_until(Duration::from_secs(10), || settled(&server)));
    let fds_before = open_fds();
    agent_life(backend, &server, &echo);
    assert!(wait_until(Duration::from_secs(10), || settled(&server)));
    let released = wait_until(Duration::from_secs(10), || open_fds() <= fds_before);
    assert!(
        released,
        "{backend:?}: descriptors not released: {fds_before} -> {}",
        open_fds()
    );
    server.shutdown();
}

#[test]
fn stopping_an_agent_ends_its_sessions_in_flight_cleanly() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));
    run(IoBackend::Epoll);
    if ringtun::rt::uring_gate::available_for_test() {
        run(IoBackend::Uring);
    }
}
