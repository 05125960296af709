//! Limits and hostile peers: every size and wait is bounded, and whoever exceeds a limit is
//! refused alone while everyone else keeps working.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use ringtun::control::stats::HandshakeOutcome;
use ringtun::protocol::{self, ConnectionInitInfo, Frame, InitExtra, RingtunInit, Role};

fn reads_eof_within(mut c: TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    c.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return started.elapsed(),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return started.elapsed(),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("still open after {limit:?}: {e}"),
        }
    }
}

both_backends!(sessions_over_max_sessions_are_refused_alone, |backend| {
    let echo = echo_backend();
    let mut config = server(backend).cluster("c").config();
    config.clusters[0].max_sessions = 2;
    let server = ringtun::server::ServerHandle::start(config).unwrap();
    let _agent = agent(backend, server.tunnel_addr(), echo.addr).run();
    wait_registered(&server, "c", 1, 4);
    let frontend = server.frontend_addr("c").unwrap();
    let mut held: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(frontend).unwrap())
        .collect();
    for c in &mut held {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"hi").unwrap();
        let mut b = [0u8; 2];
        c.read_exact(&mut b).unwrap();
    }
    let third = TcpStream::connect(frontend).unwrap();
    assert!(reads_eof_within(third, Duration::from_secs(5)) < Duration::from_secs(1));
    assert!(wait_until(Duration::from_secs(5), || server
        .counters()
        .sessions_over_limit_total
        == 1));
    for c in &mut held {
        c.write_all(b"ok").unwrap();
        let mut b = [0u8; 2];
        c.read_exact(&mut b).unwrap();
    }
    drop(held);
    assert!(wait_until(Duration::from_secs(5), || server
        .counters()
        .active_sessions
        == 0));
    assert_eq!(echo_roundtrip(frontend, b"room again"), b"room again");
});

both_backends!(
    data_connections_over_the_per_agent_limit_are_refused,
    |backend| {
        let echo = echo_backend();
        let mut config = server(backend).cluster("c").config();
        config.clusters[0].max_data_connections_per_agent = 2;
        let server = ringtun::server::ServerHandle::start(config).unwrap();
        let greedy = agent(backend, server.tunnel_addr(), echo.addr)
            .host_name("greedy")
            .connection_num(4)
            .reconnect_ms(50, 200)
            .run();
        let _modest = agent(backend, server.tunnel_addr(), echo.addr)
            .host_name("modest")
            .connection_num(2)
            .run();
        wait_registered(&server, "c", 2, 2);
        assert!(wait_until(Duration::from_secs(5), || server
            .control_stats()
            .handshakes(HandshakeOutcome::OverLimit)
            >= 2));
        for h in server.hosts("c") {
            assert_eq!(h.data_connections, 2, "{h:?}");
        }
        // The agent counts a refusal when it reads the answer, after the server counted it.
        assert!(wait_until(Duration::from_secs(5), || greedy
            .status()
            .dial_failures_total
            >= 2));
        let frontend = server.frontend_addr("c").unwrap();
        for i in 0..10u8 {
            assert_eq!(echo_roundtrip(frontend, &[i; 3]), [i; 3]);
        }
    }
);

/// Raises the soft open-files limit to the hard one (2,000 silent connections need ~4,000 fds here).
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit with a valid, initialised struct.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

both_backends!(
    silent_connections_and_random_streams_hurt_no_one_else,
    |backend| {
        raise_fd_limit();
        let echo = echo_backend();
        let mut config = server(backend)
            .cluster("c")
            .handshake_timeout_ms(1500)
            .config();
        // All from this test's one address: this test is about the global bound.
        config.tunnel_listener.max_handshakes_per_ip = 4096;
        let server = ringtun::server::ServerHandle::start(config).unwrap();
        let _agent = agent(backend, server.tunnel_addr(), echo.addr).run();
        wait_registered(&server, "c", 1, 4);
        let frontend = server.frontend_addr("c").unwrap();
        let mut live = TcpStream::connect(frontend).unwrap();
        live.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut check_live = |msg: &[u8]| {
            live.write_all(msg).unwrap();
            let mut back = vec![0u8; msg.len()];
            live.read_exact(&mut back).unwrap();
            assert_eq!(back, msg);
        };
        check_live(b"before");
        // 2,000 connections that never send a byte.
        let opened = Instant::now();
        let silent: Vec<TcpStream> = (0..2000)
            .map(|_| TcpStream::connect(server.tunnel_addr()).unwrap())
            .collect();
        // Meanwhile everything else works: sessions, new sessions, and a new agent's join
        // (the flood outnumbers the listen backlog while the kernel defers its accept).
        check_live(b"during the flood");
        assert_eq!(echo_roundtrip(frontend, b"new session"), b"new session");
        let _late = agent(backend, server.tunnel_addr(), echo.addr)
            .host_name("late")
            .agent_id(Some("late"))
            .run();
        // The first host has one connection in the live session.
        wait_registered(&server, "c", 2, 3);
        // A 1 MiB random stream at the tunnel port closes that connection only.
        let mut rng = 0x9e37_79b9u32;
        let random: Vec<u8> = (0..1 << 20)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 17;
                rng ^= rng << 5;
                rng as u8
            })
            .collect();
        let mut noisy = TcpStream::connect(server.tunnel_addr()).unwrap();
        let _ = noisy.write_all(&random);
        reads_eof_within(noisy, Duration::from_secs(5));
        check_live(b"after the random stream");
        // The silent ones are closed at the handshake timeout, not before.
        let mut last = Duration::ZERO;
        for c in silent {
            let waited = reads_eof_within(c, Duration::from_secs(10));
            last = last.max(waited);
        }
        let lived = opened.elapsed();
        assert!(
            lived >= Duration::from_millis(1400),
            "silent connections closed too early: {lived:?}"
        );
        assert!(server.control_stats().handshakes(HandshakeOutcome::Timeout) >= 2000);
        check_live(b"after");
        assert_eq!(server.hosts("c").len(), 2);
    }
);

/// A connection to `to` from `source` (an address of the loopback network), bound before connect.
fn connect_from(source: &str, to: std::net::SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let from: std::net::SocketAddr = format!("{source}:0").parse().unwrap();
    s.bind(&from.into()).unwrap();
    s.connect(&to.into()).unwrap();
    s.into()
}

both_backends!(one_address_cannot_take_every_handshake_slot, |backend| {
    raise_fd_limit();
    let echo = echo_backend();
    let mut config = server(backend)
        .cluster("c")
        .handshake_timeout_ms(60_000)
        .config();
    // Fewer slots than the flood, so only the per-address bound keeps some for others.
    config.tunnel_listener.max_concurrent_handshakes = 1000;
    let per_ip = config.tunnel_listener.max_handshakes_per_ip;
    assert_eq!(per_ip, 256, "the documented default");
    let server = ringtun::server::ServerHandle::start(config).unwrap();
    // 3,000 connections from 127.0.0.3 that send the first byte of a frame and never the rest
    // (a silent one would wait in the kernel first: the listener defers accept until bytes).
    let flood: Vec<TcpStream> = (0..3000)
        .map(|_| {
            let mut s = connect_from("127.0.0.3", server.tunnel_addr());
            s.write_all(&[0x20]).unwrap();
            s
        })
        .collect();
    // The whole flood is in (whichever bound refused the rest).
    let stats = server.control_stats();
    assert!(wait_until(Duration::from_secs(30), || stats
        .handshakes(HandshakeOutcome::OverloadedPerIp)
        + stats.handshakes(HandshakeOutcome::Overloaded)
        >= (3000 - per_ip) as u64));
    // A real agent from 127.0.0.1 registers and serves meanwhile.
    let _agent = agent(backend, server.tunnel_addr(), echo.addr).run();
    wait_registered(&server, "c", 1, 4);
    let frontend = server.frontend_addr("c").unwrap();
    assert_eq!(echo_roundtrip(frontend, b"still served"), b"still served");
    // The address's handshakes beyond its bound were refused, and only those.
    assert_eq!(
        stats.handshakes(HandshakeOutcome::OverloadedPerIp),
        (3000 - per_ip) as u64
    );
    assert_eq!(stats.handshakes(HandshakeOutcome::Overloaded), 0);
    drop(flood);
});

both_backends!(
    garbage_instead_of_pong_closes_only_that_connection,
    |backend| {
        let echo = echo_backend();
        let server = server(backend).cluster("c").heartbeat_ms(100).run();
        let _agent = agent(backend, server.tunnel_addr(), echo.addr).run();
        wait_registered(&server, "c", 1, 4);
        // A client with a valid init, then garbage instead of a pong.
        let mut rogue = TcpStream::connect(server.tunnel_addr()).unwrap();
        let init = protocol::encode_to_vec(&Frame::Init(ConnectionInitInfo {
            cluster_name: "c".into(),
            weight: 1,
            host_name: "rogue".into(),
            extra: Some(InitExtra {
                ringtun: Some(RingtunInit {
                    version: 1,
                    role: Role::Data,
                    agent_id: "rogue".into(),
                    max_connection_num: None,
                }),
                other: Default::default(),
            }),
            ..Default::default()
        }))
        .unwrap();
        rogue.write_all(&init).unwrap();
        assert!(wait_until(Duration::from_secs(5), || server
            .hosts("c")
            .len()
            == 2));
        rogue
            .write_all(b"this is not a pong \x00\xff\x20\x88")
            .unwrap();
        reads_eof_within(rogue, Duration::from_secs(5));
        assert!(wait_until(Duration::from_secs(5), || server
            .hosts("c")
            .len()
            == 1));
        assert_eq!(server.hosts("c")[0].host_name, "edge-test");
        assert_eq!(
            echo_roundtrip(server.frontend_addr("c").unwrap(), b"fine"),
            b"fine"
        );
    }
);
