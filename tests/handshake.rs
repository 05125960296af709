//! The tunnel port under handshakes good, bad and hostile, and legacy MOSN agents; both backends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use ringtun::protocol::{self, ConnectionInitInfo, Decoded, Frame, InitExtra, RingtunInit, Role};
use ringtun::secret::Secret;

fn init_frame(cluster: &str, credential: &str, ringtun_ext: bool) -> Vec<u8> {
    protocol::encode_to_vec(&Frame::Init(ConnectionInitInfo {
        cluster_name: cluster.into(),
        weight: 10,
        host_name: "raw".into(),
        credential_policy: if credential.is_empty() { "" } else { "token" }.into(),
        credential: Secret::new(credential),
        extra: ringtun_ext.then(|| InitExtra {
            ringtun: Some(RingtunInit {
                version: 1,
                role: Role::Data,
                agent_id: "raw-agent".into(),
                max_connection_num: None,
            }),
            other: Default::default(),
        }),
    }))
    .unwrap()
}

/// Sends an init and returns the decoded response status.
fn handshake_status(tunnel: SocketAddr, init: &[u8]) -> i64 {
    let mut c = TcpStream::connect(tunnel).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(init).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    loop {
        if let Decoded::Frame(Frame::InitResponse(r), _) = protocol::decode(&buf, 4096).unwrap() {
            return r.status.0;
        }
        let n = c.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before answering");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads until EOF or reset; returns how long it took. Panics if still open after `limit`.
fn closed_within(mut c: TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    c.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return started.elapsed(),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return started.elapsed(),
            // SIGCHLD from other tests' child processes.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("connection not closed within {limit:?}: {e}"),
        }
    }
}

both_backends!(
    credentials_and_unknown_cluster_get_mosn_statuses,
    |backend| {
        let server = server(backend).cluster("c").token("right").run();
        let tunnel = server.tunnel_addr();
        assert_eq!(handshake_status(tunnel, &init_frame("c", "wrong", true)), 2);
        assert_eq!(handshake_status(tunnel, &init_frame("c", "", true)), 2);
        assert_eq!(
            handshake_status(tunnel, &init_frame("nope", "right", true)),
            4
        );
        assert_eq!(handshake_status(tunnel, &init_frame("c", "right", true)), 1);
        // The agent naming no policy does not bypass the cluster's requirement.
        assert_eq!(handshake_status(tunnel, &init_frame("c", "", false)), 2);
    }
);

/// An init carrying an hmac credential made by the agent-side code.
fn hmac_init_frame(secret: &str, timestamp: u64, nonce: u8) -> Vec<u8> {
    use ringtun::credential::{make, HmacSubject};
    let credential = make(
        &Secret::new(secret),
        &HmacSubject {
            cluster: "c",
            host_name: "raw",
            agent_id: "raw-agent",
        },
        timestamp,
        [nonce; ringtun::credential::NONCE_LEN],
    )
    .unwrap();
    protocol::encode_to_vec(&Frame::Init(ConnectionInitInfo {
        cluster_name: "c".into(),
        weight: 10,
        host_name: "raw".into(),
        credential_policy: "hmac".into(),
        credential,
        extra: Some(InitExtra {
            ringtun: Some(RingtunInit {
                version: 1,
                role: Role::Data,
                agent_id: "raw-agent".into(),
                max_connection_num: None,
            }),
            other: Default::default(),
        }),
    }))
    .unwrap()
}

both_backends!(hmac_right_wrong_missing_replayed_and_skewed, |backend| {
    let server = server(backend).cluster("c").token("s1").hmac().run();
    let tunnel = server.tunnel_addr();
    let now = ringtun::credential::unix_now_secs();
    let good = hmac_init_frame("s1", now, 1);
    assert_eq!(handshake_status(tunnel, &good), 1);
    assert_eq!(handshake_status(tunnel, &good), 2, "replayed");
    assert_eq!(handshake_status(tunnel, &hmac_init_frame("s1", now, 2)), 1);
    assert_eq!(handshake_status(tunnel, &hmac_init_frame("s2", now, 3)), 2);
    assert_eq!(
        handshake_status(tunnel, &hmac_init_frame("s1", now - 400, 4)),
        2
    );
    assert_eq!(
        handshake_status(tunnel, &hmac_init_frame("s1", now + 400, 5)),
        2
    );
    assert_eq!(handshake_status(tunnel, &init_frame("c", "", true)), 2);
    // The shared secret sent as a token is not an hmac credential.
    assert_eq!(handshake_status(tunnel, &init_frame("c", "s1", true)), 3);
});

both_backends!(
    full_hmac_replay_cache_refuses_new_credentials_not_old_replays,
    |backend| {
        let mut config = server(backend).cluster("c").token("s1").hmac().config();
        config.tunnel_listener.hmac_replay_cache_entries = 2;
        let server = ringtun::server::ServerHandle::start(config).unwrap();
        let tunnel = server.tunnel_addr();
        let now = ringtun::credential::unix_now_secs();
        let (a, b) = (hmac_init_frame("s1", now, 1), hmac_init_frame("s1", now, 2));
        assert_eq!(handshake_status(tunnel, &a), 1);
        assert_eq!(handshake_status(tunnel, &b), 1);
        // Full of live credentials: a new one is refused with status 0 and counted ...
        for nonce in 3..20 {
            assert_eq!(
                handshake_status(tunnel, &hmac_init_frame("s1", now, nonce)),
                0
            );
        }
        let full = ringtun::control::stats::HandshakeOutcome::ReplayCacheFull;
        assert_eq!(server.control_stats().handshakes(full), 17);
        // ... and the accepted ones stay replays.
        assert_eq!(handshake_status(tunnel, &a), 2, "replayed");
        assert_eq!(handshake_status(tunnel, &b), 2, "replayed");
    }
);

/// A server that refuses every init with `status`, recording when each data-slot attempt came.
fn refusing_server(status: i64) -> (SocketAddr, std::sync::mpsc::Receiver<Instant>) {
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
                if init.ringtun().map(|r| r.role) == Some(Role::Data) {
                    let _ = tx.send(Instant::now());
                }
                let resp = protocol::encode_to_vec(&Frame::InitResponse(
                    protocol::ConnectionInitResponse::status(protocol::Status(status)),
                ))
                .unwrap();
                let _ = s.write_all(&resp);
            });
        }
    });
    (addr, rx)
}

fn refused_agent_logs_and_backs_off(
    backend: ringtun::config::IoBackend,
    status: i64,
    expect_log: &str,
) {
    let (addr, attempts) = refusing_server(status);
    let dir = std::env::temp_dir().join(format!(
        "ringtun-refused-{}-{status}-{backend:?}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = agent(backend, addr, closed_port())
        .cluster("edge-web")
        .connection_num(1)
        .token("t")
        .reconnect_ms(40, 5000)
        .spawn_process(&dir);
    let stderr = child.stderr.take().unwrap();
    // Read stderr to its end: a reader that stops early would block or kill the child.
    let lines = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .filter(|l| l.contains("retrying in"))
            .collect::<Vec<_>>()
    });
    let times: Vec<Instant> = (0..6)
        .map(|_| {
            attempts
                .recv_timeout(Duration::from_secs(20))
                .expect("agent stopped retrying")
        })
        .collect();
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    child.kill().unwrap();
    let _ = child.wait();
    let logged = lines.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    // Equal jitter keeps delay n within [base·2^(n-2), base·2^(n-1)] (base 40 ms). A busy
    // machine only makes an attempt arrive late, which lengthens one gap and shortens the next by
    // as much, so check what lateness cannot hide: each gap against its window's floor (less a
    // margin for one late arrival), and growth over the run.
    let late = Duration::from_millis(60);
    for (n, gap) in gaps.iter().enumerate() {
        let floor = Duration::from_millis(20 << n);
        assert!(
            *gap + late >= floor,
            "delay {n} below its floor {floor:?}: {gaps:?}"
        );
    }
    assert!(
        gaps[3] + gaps[4] >= (gaps[0] + gaps[1]) * 2,
        "delays did not grow: {gaps:?}"
    );
    assert!(
        logged.iter().any(|l| l.contains(expect_log)),
        "log lines: {logged:#?}"
    );
}

both_backends!(
    wrong_credential_is_logged_and_retried_with_growing_delays,
    |backend| {
        refused_agent_logs_and_backs_off(backend, 2, "authentication failed for cluster edge-web");
    }
);

both_backends!(
    unknown_cluster_is_logged_and_retried_with_growing_delays,
    |backend| {
        refused_agent_logs_and_backs_off(backend, 4, "cluster edge-web does not exist on");
    }
);

both_backends!(hostile_bytes_close_only_their_connection, |backend| {
    let echo = echo_backend();
    let server = server(backend)
        .cluster("c")
        .max_frame_payload_bytes(1024)
        .handshake_timeout_ms(600)
        .run();
    let _agent = agent(backend, server.tunnel_addr(), echo.addr).run();
    wait_registered(&server, "c", 1, 4);
    let frontend = server.frontend_addr("c").unwrap();
    // A session in flight across all the abuse.
    let mut live = TcpStream::connect(frontend).unwrap();
    live.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut roundtrip = |msg: &[u8]| {
        live.write_all(msg).unwrap();
        let mut back = vec![0u8; msg.len()];
        live.read_exact(&mut back).unwrap();
        assert_eq!(back, msg);
    };
    roundtrip(b"before");

    let mut oversized = vec![0x20, 0x88, 0x01, 0x01, 0x01, 0x00];
    oversized.extend_from_slice(&60_000u16.to_be_bytes());
    let mut bad_json = vec![0x20, 0x88, 0x01, 0x01, 0x01, 0x00, 0x00, 0x05];
    bad_json.extend_from_slice(b"{nope");
    let unknown_flag = vec![0x20, 0x88, 0x01, 0x7e, 0x01, 0x00, 0x00, 0x02, b'{', b'}'];
    let mut rng = 0x1234_5678u32;
    let garbage: Vec<u8> = (0..4096)
        .map(|_| {
            rng ^= rng << 13;
            rng ^= rng >> 17;
            rng ^= rng << 5;
            rng as u8
        })
        .collect();
    // Bytes that are no frame at all (wrong magic) are held until the handshake timeout, so a
    // MOSN aside forwarding a backend's banner does not re-dial in a tight loop; frames that
    // are broken otherwise are closed at once.
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "wrong magic",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            true,
        ),
        ("length over the limit", oversized, false),
        ("invalid JSON", bad_json, false),
        ("unknown flag", unknown_flag, false),
        ("random garbage", garbage, true),
    ];
    for (what, bytes, held) in cases {
        let mut c = TcpStream::connect(server.tunnel_addr()).unwrap();
        let _ = c.write_all(&bytes);
        let took = closed_within(c, Duration::from_secs(3));
        if held {
            assert!(
                took >= Duration::from_millis(450) && took < Duration::from_secs(2),
                "{what}: closed after {took:?}, not at the 600 ms handshake timeout"
            );
        } else {
            assert!(
                took < Duration::from_millis(500),
                "{what}: closed only after {took:?}"
            );
        }
        roundtrip(what.as_bytes());
    }
    // A partial frame, then silence: closed at the handshake timeout.
    let mut c = TcpStream::connect(server.tunnel_addr()).unwrap();
    c.write_all(&init_frame("c", "", true)[..12]).unwrap();
    let took = closed_within(c, Duration::from_secs(5));
    assert!(
        took >= Duration::from_millis(450),
        "closed before the timeout: {took:?}"
    );
    roundtrip(b"after");
    // New sessions still work, and the agent was never disturbed.
    assert_eq!(echo_roundtrip(frontend, b"new session"), b"new session");
    assert_eq!(server.hosts("c").len(), 1);
});

both_backends!(legacy_mosn_init_carries_one_raw_session, |backend| {
    let server = server(backend).cluster("c").run();
    let mut mosn = TcpStream::connect(server.tunnel_addr()).unwrap();
    mosn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Exactly what MOSN's Go agent writes: no ringtun extension, "extra": null.
    let payload = br#"{"cluster_name":"c","weight":10,"host_name":"mosn-edge","credential_policy":"","credential":"","extra":null}"#;
    let mut init = vec![0x20, 0x88, 0x01, 0x01, 0x01, 0x00];
    init.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    init.extend_from_slice(payload);
    mosn.write_all(&init).unwrap();
    let mut response = [0u8; 20];
    mosn.read_exact(&mut response).unwrap();
    let mut expected = vec![0x20, 0x88, 0x01, 0x02, 0x02, 0x00, 0x00, 0x0c];
    expected.extend_from_slice(br#"{"status":1}"#);
    assert_eq!(response.to_vec(), expected);
    // The edge side may speak first (a banner); it reaches the frontend once one connects.
    mosn.write_all(b"banner\n").unwrap();
    wait_registered(&server, "c", 1, 1);
    assert!(server.hosts("c")[0].legacy);

    let mut client = TcpStream::connect(server.frontend_addr("c").unwrap()).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut banner = [0u8; 7];
    client.read_exact(&mut banner).unwrap();
    assert_eq!(&banner, b"banner\n");
    client.write_all(b"hello raw").unwrap();
    let mut got = [0u8; 9];
    mosn.read_exact(&mut got).unwrap();
    assert_eq!(
        &got, b"hello raw",
        "bytes must arrive unframed, with no session start"
    );
    mosn.write_all(b"world").unwrap();
    let mut back = [0u8; 5];
    client.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"world");
    // One session per connection: the client's close closes the MOSN connection.
    drop(client);
    closed_within(mosn, Duration::from_secs(5));
    assert!(wait_until(Duration::from_secs(5), || server
        .hosts("c")
        .is_empty()));
});

both_backends!(unauthenticated_graceful_close_changes_nothing, |backend| {
    let echo = echo_backend();
    let server = server(backend).cluster("c").run();
    let _agent = agent(backend, server.tunnel_addr(), echo.addr).run();
    wait_registered(&server, "c", 1, 4);
    let before = server.hosts("c");
    // A graceful close with no init first (what a MOSN aside connection sends), naming every
    // connection id and the agent's address: refused and closed, nothing else changes.
    let mut c = TcpStream::connect(server.tunnel_addr()).unwrap();
    let close = protocol::encode_to_vec(&Frame::GracefulClose(
        protocol::GracefulCloseOnewayRequest {
            addresses: vec!["127.0.0.1:1".into()],
            cluster_name: "c".into(),
            connection_ids: (0..64).collect(),
        },
    ))
    .unwrap();
    c.write_all(&close).unwrap();
    closed_within(c, Duration::from_secs(5));
    let after = server.hosts("c");
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].id, before[0].id);
    assert_eq!(after[0].idle_connections, 4, "{after:?}");
    for i in 0..20u8 {
        assert_eq!(
            echo_roundtrip(server.frontend_addr("c").unwrap(), &[i; 5]),
            [i; 5]
        );
    }
});
