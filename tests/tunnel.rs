//! End-to-end: frontend → server → data connection → agent → backend, on loopback, both backends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;

both_backends!(echo_one_mebibyte, |backend| {
    let echo = echo_backend();
    let server = server(backend).cluster("c").run();
    let _agent = agent(backend, server.tunnel_addr(), echo.addr).run();
    wait_registered(&server, "c", 1, 4);
    let data = pattern(1 << 20, 7);
    let back = echo_roundtrip(server.frontend_addr("c").unwrap(), &data);
    assert_eq!(back.len(), data.len());
    assert!(back == data, "echoed bytes differ");
});

both_backends!(a_backend_named_by_host_name_is_reached, |backend| {
    // `localhost` may resolve to ::1 first: the connect tries each address of the answer.
    let echo = echo_backend();
    let server = server(backend).cluster("c").run();
    let named = format!("localhost:{}", echo.addr.port());
    let agent = agent(backend, server.tunnel_addr(), echo.addr)
        .listener_field("backend", named.into())
        .run();
    wait_registered(&server, "c", 1, 4);
    for seed in 0..3 {
        let data = pattern(4096, seed);
        assert_eq!(
            echo_roundtrip(server.frontend_addr("c").unwrap(), &data),
            data
        );
    }
    assert_eq!(agent.status().backend_failures_total, 0);
    assert_eq!(echo.accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
});

both_backends!(one_way_256_mebibytes_checked_at_far_end, |backend| {
    // The backend verifies the pattern and answers with the count of verified bytes.
    let sink = TcpListener::bind("127.0.0.1:0").unwrap();
    let sink_addr = sink.local_addr().unwrap();
    const LEN: u64 = 256 << 20;
    let checker = std::thread::spawn(move || {
        let (mut s, _) = sink.accept().unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut offset = 0u64;
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            for b in &buf[..n] {
                assert_eq!(*b, (offset % 251) as u8, "byte {offset} corrupted");
                offset += 1;
            }
        }
        s.write_all(&offset.to_be_bytes()).unwrap();
        offset
    });
    let server = server(backend).cluster("c").run();
    let _agent = agent(backend, server.tunnel_addr(), sink_addr).run();
    wait_registered(&server, "c", 1, 4);
    let mut c = TcpStream::connect(server.frontend_addr("c").unwrap()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let chunk: Vec<u8> = (0..251u32 * 256).map(|i| (i % 251) as u8).collect();
    let mut sent = 0u64;
    while sent < LEN {
        let n = (chunk.len() as u64).min(LEN - sent) as usize;
        c.write_all(&chunk[..n]).unwrap();
        sent += n as u64;
    }
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut count = [0u8; 8];
    c.read_exact(&mut count).unwrap();
    assert_eq!(u64::from_be_bytes(count), LEN);
    assert_eq!(checker.join().unwrap(), LEN);
});

both_backends!(half_close_still_delivers_the_whole_response, |backend| {
    // A backend that reads the whole request first, then answers and closes.
    let backend_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = backend_listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in backend_listener.incoming() {
            let mut s = s.unwrap();
            let mut req = Vec::new();
            s.read_to_end(&mut req).unwrap();
            let mut resp = b"got ".to_vec();
            resp.extend_from_slice(&req.len().to_string().into_bytes());
            resp.extend_from_slice(&pattern(300_000, 3));
            s.write_all(&resp).unwrap();
        }
    });
    let server = server(backend).cluster("c").run();
    let _agent = agent(backend, server.tunnel_addr(), addr).run();
    wait_registered(&server, "c", 1, 4);
    let back = echo_roundtrip(server.frontend_addr("c").unwrap(), &pattern(100_000, 1));
    let mut expected = b"got 100000".to_vec();
    expected.extend_from_slice(&pattern(300_000, 3));
    assert_eq!(back.len(), expected.len());
    assert!(back == expected);
});

both_backends!(
    refused_backend_closes_frontend_and_pool_stays_full,
    |backend| {
        let server = server(backend).cluster("c").run();
        let agent = agent(backend, server.tunnel_addr(), closed_port()).run();
        wait_registered(&server, "c", 1, 4);
        let frontend = server.frontend_addr("c").unwrap();
        for _ in 0..5 {
            let mut c = TcpStream::connect(frontend).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let _ = c.write_all(b"hello");
            let mut buf = [0u8; 16];
            // Closed cleanly: EOF (or a reset if our bytes raced the close), never a hang.
            match c.read(&mut buf) {
                Ok(n) => assert_eq!(n, 0, "expected EOF"),
                Err(e) => assert!(
                    matches!(e.kind(), std::io::ErrorKind::ConnectionReset),
                    "unexpected error {e}"
                ),
            }
        }
        assert!(wait_until(Duration::from_secs(10), || agent
            .status()
            .backend_failures_total
            == 5));
        wait_registered(&server, "c", 1, 4);
        assert!(wait_until(Duration::from_secs(10), || agent
            .status()
            .idle_data_connections
            == 4));
    }
);

both_backends!(
    weights_one_and_three_split_sessions_one_to_three,
    |backend| {
        let light = echo_backend();
        let heavy = echo_backend();
        let server = server(backend)
            .cluster("c")
            .lb("weighted_round_robin")
            .run();
        let _a = agent(backend, server.tunnel_addr(), light.addr)
            .host_name("light")
            .weight(1)
            .connection_num(8)
            .run();
        let _b = agent(backend, server.tunnel_addr(), heavy.addr)
            .host_name("heavy")
            .weight(3)
            .connection_num(8)
            .run();
        wait_registered(&server, "c", 2, 8);
        let frontend = server.frontend_addr("c").unwrap();
        for i in 0..400 {
            let back = echo_roundtrip(frontend, &[i as u8; 16]);
            assert_eq!(back, vec![i as u8; 16]);
        }
        let (l, h) = (
            light.accepted.load(Ordering::SeqCst),
            heavy.accepted.load(Ordering::SeqCst),
        );
        assert_eq!(l + h, 400);
        assert!((90..=110).contains(&l), "light got {l}, heavy {h}");
        assert!((270..=330).contains(&h), "light got {l}, heavy {h}");
    }
);

both_backends!(server_restarted_on_same_port_is_rejoined, |backend| {
    let echo = echo_backend();
    let first = server(backend).cluster("c").run();
    let tunnel = first.tunnel_addr();
    let agent = agent(backend, tunnel, echo.addr)
        .reconnect_ms(20, 200)
        .run();
    wait_registered(&first, "c", 1, 4);
    first.shutdown();
    let second = server(backend).cluster("c").tunnel_address(tunnel).run();
    wait_registered(&second, "c", 1, 4);
    let back = echo_roundtrip(second.frontend_addr("c").unwrap(), b"after restart");
    assert_eq!(back, b"after restart");
    // The same agent process came back by itself.
    assert_eq!(second.hosts("c")[0].agent_id, agent.agent_id());
});

both_backends!(
    no_idle_connection_closes_frontend_after_pool_wait,
    |backend| {
        let server = server(backend).cluster("c").pool_wait_ms(200).run();
        let frontend = server.frontend_addr("c").unwrap();
        let started = Instant::now();
        let mut c = TcpStream::connect(frontend).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 1];
        let read = c.read(&mut buf);
        assert!(matches!(read, Ok(0)), "expected EOF, got {read:?}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(150),
            "closed too early: {waited:?}"
        );
        assert!(wait_until(Duration::from_secs(5), || server
            .counters()
            .pool_exhausted_total
            == 1));
    }
);

both_backends!(
    a_frontend_waiting_before_any_agent_is_served_when_one_joins,
    |backend| {
        // The join's connections reach the workers without waking them unless frontends wait
        // there: these wait, on whichever worker accepted them, so they must be woken.
        let echo = echo_backend();
        let server = server(backend)
            .cluster("c")
            .workers(2)
            .pool_wait_ms(10_000)
            .run();
        let frontend = server.frontend_addr("c").unwrap();
        let clients: Vec<_> = (0..4u8)
            .map(|i| std::thread::spawn(move || echo_roundtrip(frontend, &pattern(1000, i))))
            .collect();
        assert!(
            wait_until(Duration::from_secs(10), || server
                .counters()
                .pool_waits_total
                >= 4),
            "the frontends never waited: {:?}",
            server.counters()
        );
        let _agent = agent(backend, server.tunnel_addr(), echo.addr)
            .connection_num(1)
            .run();
        for (i, c) in clients.into_iter().enumerate() {
            assert!(c.join().unwrap() == pattern(1000, i as u8));
        }
        assert_eq!(server.counters().pool_exhausted_total, 0);
    }
);

both_backends!(sessions_beyond_the_pool_wait_for_replacements, |backend| {
    // 2 idle connections over 2 workers, 20 concurrent sessions: the rest wait for the agent's
    // re-dials, or for a connection donated by the other worker.
    let echo = echo_backend();
    let server = server(backend).cluster("c").workers(2).run();
    let _agent = agent(backend, server.tunnel_addr(), echo.addr)
        .connection_num(2)
        .run();
    wait_registered(&server, "c", 1, 2);
    let frontend = server.frontend_addr("c").unwrap();
    let clients: Vec<_> = (0..20)
        .map(|i| std::thread::spawn(move || echo_roundtrip(frontend, &pattern(10_000, i))))
        .collect();
    for (i, c) in clients.into_iter().enumerate() {
        assert!(c.join().unwrap() == pattern(10_000, i as u8));
    }
});

// A healthy agent keeps its connections across many heartbeat intervals.
both_backends!(heartbeats_keep_idle_connections_alive, |backend| {
    let echo = echo_backend();
    let server = server(backend).cluster("c").heartbeat_ms(100).run();
    let agent = agent(backend, server.tunnel_addr(), echo.addr).run();
    wait_registered(&server, "c", 1, 4);
    let ids: Vec<u64> = server.hosts("c").iter().map(|h| h.id).collect();
    // Wait for the condition "ten intervals have passed" by watching the clock, not by sleeping
    // for readiness: the property is that nothing changes.
    let until = Instant::now() + Duration::from_millis(1000);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
        let hosts = server.hosts("c");
        assert_eq!(hosts.iter().map(|h| h.id).collect::<Vec<_>>(), ids);
        assert_eq!(hosts[0].idle_connections, 4, "{hosts:?}");
    }
    assert_eq!(server.counters().heartbeat_closes_total, 0);
    assert_eq!(agent.status().dial_failures_total, 0);
    let frontend: SocketAddr = server.frontend_addr("c").unwrap();
    assert_eq!(echo_roundtrip(frontend, b"alive"), b"alive");
});
