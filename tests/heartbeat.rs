//! Heartbeats: a frozen agent is dropped, a silent server is left; both backends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::*;
use ringtun::protocol::{self, ConnectionInitResponse, Decoded, Frame, Status};

both_backends!(frozen_agent_leaves_within_three_heartbeats, |backend| {
    const HEARTBEAT_MS: u64 = 200;
    let healthy_backend = echo_backend();
    let frozen_backend = echo_backend();
    let server = server(backend)
        .cluster("c")
        .heartbeat_ms(HEARTBEAT_MS)
        .run();
    let _healthy = agent(backend, server.tunnel_addr(), healthy_backend.addr)
        .host_name("healthy")
        .run();
    let dir =
        std::env::temp_dir().join(format!("ringtun-frozen-{}-{backend:?}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = agent(backend, server.tunnel_addr(), frozen_backend.addr)
        .host_name("frozen")
        .spawn_process(&dir);
    let stderr = child.stderr.take().unwrap();
    let drain = std::thread::spawn(move || std::io::copy(&mut { stderr }, &mut std::io::sink()));
    wait_registered(&server, "c", 2, 4);

    let pid = child.id() as libc::pid_t;
    // SAFETY: plain signal delivery to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let frozen_at = Instant::now();
    let left = wait_until(Duration::from_secs(10), || {
        server.hosts("c").iter().all(|h| h.host_name != "frozen")
    });
    let took = frozen_at.elapsed();
    // Three unanswered pings are counted at the ticks after them: the first goes out within one
    // interval of the freeze, so the host is gone within (3 + 1) intervals, plus scheduling slack.
    assert!(
        left,
        "frozen agent still registered: {:?}",
        server.hosts("c")
    );
    assert!(
        took <= Duration::from_millis(4 * HEARTBEAT_MS + 400),
        "frozen agent dropped only after {took:?}"
    );
    assert!(
        took >= Duration::from_millis(2 * HEARTBEAT_MS),
        "dropped too early: {took:?}"
    );
    assert!(server.counters().heartbeat_closes_total >= 4);

    let frontend = server.frontend_addr("c").unwrap();
    for i in 0..100u32 {
        let msg = i.to_be_bytes();
        assert_eq!(echo_roundtrip(frontend, &msg), msg, "session {i} failed");
    }
    assert_eq!(
        frozen_backend
            .accepted
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );

    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    child.kill().unwrap();
    let _ = child.wait();
    let _ = drain.join();
    let _ = std::fs::remove_dir_all(&dir);
});

both_backends!(agent_leaves_a_silent_server_and_redials, |backend| {
    // A server that accepts the handshake, promises 100 ms heartbeats, then never pings.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !matches!(protocol::decode(&buf, 65535), Ok(Decoded::Frame(..))) {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let ok = ConnectionInitResponse {
                    status: Status::SUCCESS,
                    connection_id: Some(1),
                    heartbeat_interval_ms: Some(100),
                    // A version 1 server: one session per connection.
                    extension_version: None,
                };
                s.write_all(&protocol::encode_to_vec(&Frame::InitResponse(ok)).unwrap())
                    .unwrap();
                let accepted = Instant::now();
                // The agent must close this connection by itself (it may send frames first,
                // e.g. its weight on the aside connection).
                while matches!(s.read(&mut chunk), Ok(n) if n > 0) {}
                let _ = tx.send(accepted.elapsed());
            });
        }
    });
    let agent = agent(backend, addr, closed_port()).connection_num(1).run();
    let lifetimes: Vec<Duration> = (0..3)
        .map(|_| {
            rx.recv_timeout(Duration::from_secs(10))
                .expect("agent never left the silent server")
        })
        .collect();
    for l in &lifetimes {
        assert!(
            *l >= Duration::from_millis(300) && *l < Duration::from_secs(3),
            "{lifetimes:?}"
        );
    }
    drop(agent);
});

/// Reads one frame from a blocking socket (test helper).
fn read_frame(s: &mut std::net::TcpStream, buf: &mut Vec<u8>) -> Frame {
    let mut chunk = [0u8; 512];
    loop {
        if let Ok(Decoded::Frame(f, used)) = protocol::decode(buf, 65535) {
            buf.drain(..used);
            return f;
        }
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "server closed the data connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

both_backends!(
    pongs_still_due_at_lease_never_reach_the_frontend,
    |backend| {
        let server = server(backend)
            .cluster("c")
            .heartbeat_ms(100)
            .workers(1)
            .run();
        // A scripted agent: one data connection that leaves pings unanswered until a session starts.
        let mut agent = std::net::TcpStream::connect(server.tunnel_addr()).unwrap();
        agent
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let init = protocol::encode_to_vec(&Frame::Init(protocol::ConnectionInitInfo {
            cluster_name: "c".into(),
            weight: 1,
            host_name: "scripted".into(),
            extra: Some(protocol::InitExtra {
                ringtun: Some(protocol::RingtunInit {
                    version: 1,
                    role: protocol::Role::Data,
                    agent_id: "scripted".into(),
                    max_connection_num: None,
                }),
                other: Default::default(),
            }),
            ..Default::default()
        }))
        .unwrap();
        agent.write_all(&init).unwrap();
        let mut buf = Vec::new();
        assert!(
            matches!(read_frame(&mut agent, &mut buf), Frame::InitResponse(r) if r.status == Status::SUCCESS)
        );
        let mut due = Vec::new();
        match read_frame(&mut agent, &mut buf) {
            Frame::Ping(p) => due.push(p.seq),
            other => panic!("expected a ping, got {other:?}"),
        }
        let mut client = std::net::TcpStream::connect(server.frontend_addr("c").unwrap()).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        client.write_all(b"hello").unwrap();
        loop {
            match read_frame(&mut agent, &mut buf) {
                Frame::Ping(p) => due.push(p.seq),
                Frame::SessionStart(_) => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        // Answer every ping now, then the session's bytes: the server must drop the pongs.
        let mut reply = Vec::new();
        for seq in &due {
            protocol::encode(&Frame::Pong(protocol::Pong { seq: *seq }), &mut reply).unwrap();
        }
        reply.extend_from_slice(b"world");
        agent.write_all(&reply).unwrap();
        let mut got = [0u8; 5];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"world", "{} pongs were due", due.len());
        while buf.len() < 5 {
            let mut chunk = [0u8; 16];
            let n = agent.read(&mut chunk).unwrap();
            buf.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(&buf[..5], b"hello");
    }
);

both_backends!(
    agent_leaves_a_server_that_stops_reading_its_aside,
    |backend| {
        // A server that answers every init (200 ms heartbeats), then floods the aside connection
        // with pings and never reads it: the agent's pongs fill the socket and block its write.
        const HEARTBEAT_MS: u64 = 200;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        // Accepted connections receive little (inherited), so the agent's pongs back up soon.
        socket2::SockRef::from(&listener)
            .set_recv_buffer_size(4096)
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (asides_tx, asides) = std::sync::mpsc::channel::<Instant>();
        std::thread::spawn(move || {
            for (n, s) in listener.incoming().enumerate() {
                let Ok(mut s) = s else { continue };
                let asides_tx = asides_tx.clone();
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    let init = loop {
                        match protocol::decode(&buf, 65535) {
                            Ok(Decoded::Frame(Frame::Init(i), _)) => break i,
                            Ok(Decoded::NeedMore(_)) => {}
                            _ => return,
                        }
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let ok = ConnectionInitResponse {
                        status: Status::SUCCESS,
                        connection_id: Some(n as u64 + 1),
                        heartbeat_interval_ms: Some(HEARTBEAT_MS),
                        extension_version: None,
                    };
                    let mut out = protocol::encode_to_vec(&Frame::InitResponse(ok)).unwrap();
                    if init.ringtun().map(|r| r.role) != Some(protocol::Role::Aside) {
                        let _ = s.write_all(&out);
                        while matches!(s.read(&mut chunk), Ok(n) if n > 0) {}
                        return;
                    }
                    let _ = asides_tx.send(Instant::now());
                    // More pongs (about 5 MiB) than the agent's largest send buffer (4 MiB,
                    // tcp_wmem) and our receive buffer hold.
                    for seq in 1..=250_000u64 {
                        protocol::encode(&Frame::Ping(protocol::Ping { seq }), &mut out).unwrap();
                    }
                    // Blocks once the agent stops reading; fails once it closes.
                    let _ = s.write_all(&out);
                    // Keep the socket (and its unread pongs) open: only the agent may end it.
                    loop {
                        std::thread::park();
                    }
                });
            }
        });
        let agent = agent(backend, addr, closed_port()).connection_num(1).run();
        let first = asides
            .recv_timeout(Duration::from_secs(10))
            .expect("no aside connection");
        // The agent gives up its blocked write at its silence deadline (4 heartbeats) and
        // re-dials: a second aside connection arrives.
        let second = asides
            .recv_timeout(Duration::from_secs(30))
            .expect("the agent stayed blocked writing to a server that stopped reading");
        let took = second - first;
        assert!(
            took >= Duration::from_millis(4 * HEARTBEAT_MS),
            "re-dialled after {took:?}"
        );
        drop(agent);
    }
);
