//! PROXY protocol refusals at a frontend with `accept_proxy_protocol`, both backends: an untrusted
//! source is closed, a header cut in half then silent is closed after its timeout, oversized
//! headers at once, and 1,000 garbage headers leave a session in flight intact; every refusal
//! is counted by reason on /metrics. And the client address a header names is the session's:
//! `client_ip_hash` balances on it, and it shows in the server's session logs (debug) and in the
//! agent's session span. The real peers (nginx, HAProxy) are in tests/proxy_protocol.rs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use ringtun::protocol::proxy::{encode_proxy_header, ProxyHeader, ProxyVersion};
use serde_json::json;
use socket2::{Domain, Socket, Type};

use common::logs::{capture_logs, captured_logs, logged};
use common::*;

/// A TCP connection to `to` from `from` (port 0: any).
fn connect_from(from: SocketAddr, to: SocketAddr) -> TcpStream {
    let socket = Socket::new(Domain::for_address(from), Type::STREAM, None).unwrap();
    socket.bind(&from.into()).unwrap();
    socket.connect(&to.into()).unwrap();
    let s: TcpStream = socket.into();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s
}

/// Whether the server closed `s` (EOF or reset) without sending anything.
fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

// ---- the client address in logs ----

both_backends!(client_address_in_session_logs_and_the_agent_span, |io| {
    capture_logs(tracing::Level::DEBUG);
    // The backend refuses, so the agent logs inside its session span.
    let server = server(io)
        .cluster("c")
        .frontend_field("accept_proxy_protocol", json!(true))
        .frontend_field("trusted_proxies", json!(["127.0.0.1"]))
        .run();
    let _agent = agent(io, server.tunnel_addr(), closed_port())
        .connection_num(1)
        .run();
    wait_registered(&server, "c", 1, 1);
    let port = match io {
        ringtun::config::IoBackend::Uring => 3001,
        _ => 3002,
    };
    let mut s = connect_from(addr("127.0.0.1:0"), server.frontend_addr("c").unwrap());
    let header = format!("PROXY TCP4 198.51.100.20 192.0.2.80 {port} 443\r\n");
    s.write_all(header.as_bytes()).unwrap();
    let client = format!("client=198.51.100.20:{port}");
    assert!(logged(&["DEBUG", "PROXY header accepted", &client]));
    // The agent's span names the client and the frontend it connected to.
    let ok = logged(&[
        "cannot connect to backend",
        "session{id=",
        &format!("{client} frontend=192.0.2.80:443}}"),
    ]);
    let text = captured_logs();
    let near: Vec<&str> = text.lines().filter(|l| l.contains("backend")).collect();
    assert!(ok, "{near:#?}");
});

both_backends!(client_ip_hash_balances_on_the_header_address, |io| {
    // One worker, and every host back at its idle count before each session: the hash's pick
    // always has a connection, so nothing falls back to another host.
    let server = server(io)
        .workers(1)
        .cluster("c")
        .lb("client_ip_hash")
        .frontend_field("accept_proxy_protocol", json!(true))
        .frontend_field("trusted_proxies", json!(["127.0.0.1"]))
        .run();
    let backends = [echo_backend(), echo_backend()];
    let _agents: Vec<_> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            agent(io, server.tunnel_addr(), b.addr)
                .host_name(&format!("edge-{i}"))
                .connection_num(2)
                .run()
        })
        .collect();
    wait_registered(&server, "c", 2, 2);
    let frontend = server.frontend_addr("c").unwrap();
    let done = std::cell::Cell::new(0u64);
    // The registry's idle counts come from the worker's reports, so they can still show a
    // session's connection as idle before its lease is reported. Settled: every earlier
    // session's lease (counted per connection) and return have been reported.
    let settled = || {
        let ok = wait_until(Duration::from_secs(10), || {
            let h = server.hosts("c");
            h.len() == 2
                && h.iter()
                    .all(|h| h.idle_connections >= 2 && h.active_per_worker.iter().all(|&n| n == 0))
                && h.iter()
                    .flat_map(|h| h.sessions_per_data_connection.iter())
                    .sum::<u64>()
                    == done.get()
        });
        assert!(
            ok,
            "after {} sessions the hosts never settled (2 idle connections each, none active, \
             the sessions counted on live connections adding up: a connection closed instead of \
             reused drops its count): {:?}",
            done.get(),
            server.hosts("c")
        );
    };
    let session = |source: &str| {
        settled();
        let header = format!("PROXY TCP4 {source} 127.0.0.1 5000 80\r\nping");
        let mut s = connect_from(addr("127.0.0.1:0"), frontend);
        s.write_all(header.as_bytes()).unwrap();
        let mut back = [0u8; 4];
        s.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"ping");
        done.set(done.get() + 1);
    };
    let counts = || {
        backends
            .iter()
            .map(|b| b.accepted.load(std::sync::atomic::Ordering::SeqCst))
            .collect::<Vec<u64>>()
    };
    // One client address (from one proxy address) always reaches the same host ...
    for _ in 0..8 {
        session("198.51.100.77");
    }
    let one = counts();
    assert!(
        one.contains(&0) && one.contains(&8),
        "one client spread: {one:?}"
    );
    // ... and many client addresses (all from that same proxy address) reach both.
    for i in 1..=24 {
        session(&format!("203.0.113.{i}"));
    }
    let many = counts();
    assert!(
        many[0] > one[0] && many[1] > one[1],
        "24 clients behind one proxy all on one host: {many:?}"
    );
});

// ---- refusals ----

/// A server whose frontend accepts headers from 127.0.0.1 only, an echo agent, and its admin.
fn trusting_localhost(
    io: ringtun::config::IoBackend,
    timeout_ms: u64,
) -> (ringtun::server::ServerHandle, ringtun::agent::AgentHandle) {
    let echo = echo_backend();
    let server = server(io)
        .cluster("c")
        .frontend_field("accept_proxy_protocol", json!(true))
        .frontend_field("trusted_proxies", json!(["127.0.0.1/32"]))
        .frontend_field("proxy_protocol_timeout_ms", json!(timeout_ms))
        .admin()
        .run();
    let agent = agent(io, server.tunnel_addr(), echo.addr)
        .connection_num(2)
        .run();
    wait_registered(&server, "c", 1, 2);
    (server, agent)
}

both_backends!(untrusted_source_is_closed, |io| {
    let (server, _agent) = trusting_localhost(io, 5_000);
    let frontend = server.frontend_addr("c").unwrap();
    let mut s = connect_from(addr("127.0.0.2:0"), frontend);
    s.write_all(b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\nhello")
        .unwrap();
    assert!(closed_by_server(&mut s), "an untrusted source is closed");
    let text = http(server.admin_addr().unwrap(), "GET", "/metrics").2;
    assert_eq!(
        metric(
            &text,
            "ringtun_proxy_headers_refused_total{reason=\"untrusted\"}"
        ),
        Some(1.0)
    );
    assert_eq!(server.counters().sessions_started_total, 0);
    // The trusted source right after is served.
    let header = b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\nhello";
    let mut ok = connect_from(addr("127.0.0.1:0"), frontend);
    ok.write_all(header).unwrap();
    let mut back = [0u8; 5];
    ok.read_exact(&mut back).unwrap();
    assert_eq!(
        &back, b"hello",
        "bytes sent with the header are the session's first"
    );
});

both_backends!(
    half_a_header_then_silence_is_closed_after_its_timeout,
    |io| {
        let (server, _agent) = trusting_localhost(io, 300);
        let frontend = server.frontend_addr("c").unwrap();
        let header = encode_proxy_header(
            ProxyVersion::V2,
            &ProxyHeader::Proxy {
                source: addr("10.0.0.1:1"),
                destination: addr("10.0.0.2:2"),
            },
        );
        let mut s = connect_from(addr("127.0.0.1:0"), frontend);
        let sent = Instant::now();
        s.write_all(&header[..header.len() / 2]).unwrap();
        assert!(closed_by_server(&mut s));
        let waited = sent.elapsed();
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_secs(10),
            "closed after {waited:?}, timeout 300 ms"
        );
        // A v2 length beyond the bound, and a v1 line without its CRLF, are closed at once.
        let mut big = ringtun::protocol::proxy::V2_SIGNATURE.to_vec();
        big.extend_from_slice(&[0x21, 0x11, 0x20, 0x00]);
        let mut long_v1 = b"PROXY TCP4 ".to_vec();
        long_v1.extend_from_slice(&[b'1'; 120]);
        for bytes in [big, long_v1] {
            let mut s = connect_from(addr("127.0.0.1:0"), frontend);
            let sent = Instant::now();
            s.write_all(&bytes).unwrap();
            assert!(closed_by_server(&mut s));
            assert!(sent.elapsed() < Duration::from_millis(250));
        }
        let text = http(server.admin_addr().unwrap(), "GET", "/metrics").2;
        let refused = |reason: &str| {
            metric(
                &text,
                &format!("ringtun_proxy_headers_refused_total{{reason=\"{reason}\"}}"),
            )
        };
        assert_eq!(refused("timeout"), Some(1.0));
        assert_eq!(refused("oversized"), Some(2.0));
        assert_eq!(server.counters().sessions_started_total, 0);
    }
);

both_backends!(garbage_headers_do_not_disturb_a_session_in_flight, |io| {
    let (server, _agent) = trusting_localhost(io, 5_000);
    let frontend = server.frontend_addr("c").unwrap();
    let mut session = connect_from(addr("127.0.0.1:0"), frontend);
    session
        .write_all(b"PROXY TCP4 203.0.113.7 127.0.0.1 4444 80\r\nbefore")
        .unwrap();
    let mut back = [0u8; 6];
    session.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"before");
    let garbage: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"PROXY TCP9 1.2.3.4 1.2.3.4 1 2\r\n".to_vec(),
        b"PROXY TCP4 1.2.3.4 1.2.3.4 99999 2\r\n".to_vec(),
        [
            &ringtun::protocol::proxy::V2_SIGNATURE[..],
            &[0x31, 0x11, 0, 12],
        ]
        .concat(),
        [
            &ringtun::protocol::proxy::V2_SIGNATURE[..],
            &[0x21, 0x21, 0, 12],
        ]
        .concat(),
        [
            &ringtun::protocol::proxy::V2_SIGNATURE[..11],
            b"X".as_slice(),
        ]
        .concat(),
        pattern(300, 9),
    ];
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let garbage = garbage.clone();
            std::thread::spawn(move || {
                for i in 0..250 {
                    let bytes = &garbage[(t * 250 + i) % garbage.len()];
                    let mut s = connect_from(addr("127.0.0.1:0"), frontend);
                    let _ = s.write_all(bytes);
                    assert!(closed_by_server(&mut s), "garbage {bytes:?} not closed");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // The session in flight goes on, byte for byte.
    let data = pattern(256 * 1024, 3);
    let mut w = session.try_clone().unwrap();
    let sent = data.clone();
    let writer = std::thread::spawn(move || w.write_all(&sent).unwrap());
    let mut got = vec![0u8; data.len()];
    session.read_exact(&mut got).unwrap();
    writer.join().unwrap();
    assert!(got == data, "the session's bytes changed");
    assert!(wait_until(Duration::from_secs(5), || {
        let c = server.counters();
        c.proxy_headers_refused_malformed_total == 1000
    }));
    let c = server.counters();
    assert_eq!(c.proxy_headers_accepted_total, 1);
    assert_eq!(c.sessions_started_total, 1);
    assert_eq!(c.active_sessions, 1);
});
