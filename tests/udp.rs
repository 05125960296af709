//! UDP services through the tunnel (issue 18), on both I/O backends: flows keep their own
//! datagrams in order, a real client (`dig`) reaches a DNS responder, idle flows end and new
//! ones start, a silent backend delays no other flow, and limits drop and count while existing
//! flows go on. What happens to a flow's data connection between version 2 peers (reuse, aborts,
//! empty and late datagrams) is in `udp_reuse.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::udp::*;
use common::*;
use ringtun::protocol::TransportProtocol;
use ringtun::server::ServerHandle;

/// `ask`, retransmitting each second as a real UDP client does (up to 10 times): a burst of
/// datagrams from another client can overflow the frontend socket's kernel buffer, and a datagram
/// the kernel dropped is UDP's loss, not a flow waiting behind another. Stale replies are skipped.
fn ask_retrying(c: &UdpSocket, to: SocketAddr, what: &[u8]) -> Vec<u8> {
    c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = vec![0u8; 65_536];
    for _ in 0..10 {
        c.send_to(what, to).unwrap();
        while let Ok((n, _)) = c.recv_from(&mut buf) {
            if &buf[..n] == what {
                return buf[..n].to_vec();
            }
        }
    }
    panic!(
        "no reply to {:?} in 10 tries",
        String::from_utf8_lossy(what)
    );
}

both_backends!(
    eight_clients_get_exactly_their_own_replies_in_order,
    |backend| {
        let target = udp_backend(echo);
        let server = udp_server(backend, 2, |_| {});
        let _agent = udp_agent(backend, &server, target, 8);
        wait_registered(&server, "c", 1, 8);
        let frontend = server.frontend_addr("c").unwrap();
        const CLIENTS: u32 = 8;
        const PER_CLIENT: u32 = 1250;
        // A window of datagrams in flight per client: loss on loopback would be a kernel buffer
        // overflow, not what this test is about.
        const WINDOW: u32 = 16;
        let clients: Vec<_> = (0..CLIENTS)
            .map(|id| {
                std::thread::spawn(move || {
                    let c = client();
                    let mut buf = [0u8; 64];
                    let mut next_reply = 0u32;
                    for seq in 0..PER_CLIENT {
                        c.send_to(format!("{id}:{seq}").as_bytes(), frontend)
                            .unwrap();
                        while seq + 1 - next_reply >= WINDOW
                            || (seq + 1 == PER_CLIENT && next_reply < PER_CLIENT)
                        {
                            let (n, _) = c.recv_from(&mut buf).expect("a reply within 10 s");
                            assert_eq!(
                                std::str::from_utf8(&buf[..n]).unwrap(),
                                format!("{id}:{next_reply}"),
                                "client {id} got another datagram than its next reply"
                            );
                            next_reply += 1;
                        }
                    }
                    next_reply
                })
            })
            .collect();
        for c in clients {
            assert_eq!(c.join().unwrap(), PER_CLIENT);
        }
        // A reply is counted just after its send returns: the client may have it first.
        let all = u64::from(CLIENTS * PER_CLIENT);
        assert!(wait_until(Duration::from_secs(5), || server
            .counters()
            .udp_datagrams_from_agent_total
            == all));
        let totals = server.counters();
        assert_eq!(totals.udp_datagrams_to_agent_total, all);
        assert_eq!(totals.udp_flows_started_total, u64::from(CLIENTS));
        assert_eq!(totals.udp_dropped_queue_full_total, 0);
    }
);

/// A DNS answer to `query`: `192.0.2.1` for its (first) question, whatever it asks.
fn dns_answer(query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    // The question: a name (labels up to a zero byte), then type and class.
    let mut end = 12;
    while *query.get(end)? != 0 {
        end += 1 + usize::from(query[end]);
    }
    end += 5;
    let question = query.get(12..end)?;
    let mut reply = Vec::new();
    reply.extend_from_slice(&query[..2]); // id
    reply.extend_from_slice(&[0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]); // answer, 1 question, 1 answer
    reply.extend_from_slice(question);
    reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1]);
    Some(reply)
}

both_backends!(dig_gets_its_answer_through_the_tunnel, |backend| {
    let dig = std::path::Path::new("/usr/bin/dig");
    if !dig.exists() {
        println!("RINGTUN-SKIP dig: /usr/bin/dig is not installed (Debian: bind9-dnsutils)");
        return;
    }
    let target = udp_backend(dns_answer);
    let server = udp_server(backend, 2, |_| {});
    let _agent = udp_agent(backend, &server, target, 2);
    wait_registered(&server, "c", 1, 2);
    let frontend = server.frontend_addr("c").unwrap();
    let out = std::process::Command::new(dig)
        .args([
            "@127.0.0.1",
            "-p",
            &frontend.port().to_string(),
            "edge.example",
            "A",
            "+short",
            "+tries=1",
            "+time=10",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "dig failed: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "192.0.2.1");
});

both_backends!(
    an_idle_flow_ends_and_a_new_datagram_starts_a_new_one,
    |backend| {
        let target = udp_backend(echo);
        let server = udp_server(backend, 1, |c| c.clusters[0].udp_flow_idle_timeout_ms = 300);
        let _agent = udp_agent(backend, &server, target, 2);
        wait_registered(&server, "c", 1, 2);
        let frontend = server.frontend_addr("c").unwrap();
        let c = client();
        assert_eq!(ask(&c, frontend, b"one"), b"one");
        assert!(wait_until(Duration::from_secs(10), || {
            let t = server.counters();
            t.udp_flows_idle_timeout_total == 1 && t.active_udp_flows == 0
        }));
        // Its data connection went back to the pool (framed sessions, version 2).
        wait_registered(&server, "c", 1, 2);
        assert_eq!(ask(&c, frontend, b"two"), b"two");
        assert_eq!(server.counters().udp_flows_started_total, 2);
    }
);

both_backends!(a_silent_backend_delays_no_other_flow, |backend| {
    fn answer_unless_silent(d: &[u8]) -> Option<Vec<u8>> {
        (!d.starts_with(b"silent")).then(|| d.to_vec())
    }
    let target = udp_backend(answer_unless_silent);
    let server = udp_server(backend, 1, |_| {});
    let _agent = udp_agent(backend, &server, target, 4);
    wait_registered(&server, "c", 1, 4);
    let frontend = server.frontend_addr("c").unwrap();
    let silent = client();
    for i in 0..2000 {
        silent
            .send_to(format!("silent {i}").as_bytes(), frontend)
            .unwrap();
    }
    let talker = client();
    for i in 0..200 {
        let q = format!("q{i}");
        assert_eq!(ask_retrying(&talker, frontend, q.as_bytes()), q.as_bytes());
    }
    assert_eq!(server.counters().udp_flows_started_total, 2);
});

both_backends!(
    oversized_datagrams_and_a_flood_of_clients_are_dropped_and_counted,
    |backend| {
        let target = udp_backend(echo);
        let server = udp_server(backend, 1, |c| {
            c.clusters[0].max_udp_datagram_bytes = 1000;
            c.clusters[0].max_udp_flows_per_client_ip = 4;
        });
        let _agent = udp_agent(backend, &server, target, 8);
        wait_registered(&server, "c", 1, 8);
        let frontend = server.frontend_addr("c").unwrap();
        let existing = client();
        assert_eq!(ask(&existing, frontend, b"hello"), b"hello");
        existing.send_to(&[7u8; 2000], frontend).unwrap();
        assert!(wait_until(Duration::from_secs(5), || server
            .counters()
            .udp_dropped_oversized_total
            == 1));
        assert_eq!(ask(&existing, frontend, &[1u8; 1000]), vec![1u8; 1000]);
        // 3 more flows fit; 17 do not.
        let flood: Vec<UdpSocket> = (0..20).map(|_| client()).collect();
        for c in &flood {
            c.send_to(b"flood", frontend).unwrap();
        }
        assert!(wait_until(Duration::from_secs(5), || server
            .counters()
            .udp_dropped_client_ip_flows_total
            == 17));
        assert_eq!(ask(&existing, frontend, b"still here"), b"still here");
        // The 3 flood flows that fit start on their own time.
        assert!(
            wait_until(Duration::from_secs(5), || server
                .counters()
                .udp_flows_started_total
                == 4),
            "{:?}",
            server.counters()
        );
    }
);

both_backends!(
    a_reload_that_changes_the_cluster_ends_its_flows_and_rebinds,
    |backend| {
        let target = udp_backend(echo);
        let server = udp_server(backend, 2, |_| {});
        let _agent = udp_agent(backend, &server, target, 4);
        wait_registered(&server, "c", 1, 4);
        let frontend = server.frontend_addr("c").unwrap();
        let c = client();
        assert_eq!(ask(&c, frontend, b"before"), b"before");
        let mut changed = server.config().unwrap();
        changed.clusters[0].frontends[0].address = frontend.to_string();
        changed.clusters[0].udp_flow_idle_timeout_ms = 30_000;
        let summary = server.reload(changed).unwrap();
        assert_eq!(summary.changed, vec!["c".to_string()]);
        // The old sockets' flows end with them, so the old sockets close.
        assert!(wait_until(Duration::from_secs(10), || server
            .counters()
            .active_udp_flows
            == 0));
        wait_registered(&server, "c", 1, 4);
        for i in 0..20 {
            let q = format!("after {i}");
            assert_eq!(ask(&client(), frontend, q.as_bytes()), q.as_bytes());
        }
        assert_eq!(ask(&c, frontend, b"same client"), b"same client");
    }
);

both_backends!(flows_over_tls_data_connections, |backend| {
    let (dir, ca, cert, key) = tls_files();
    let target = udp_backend(echo);
    let mut config = server(backend)
        .cluster("c")
        .tls(serde_json::json!({"cert_chain_file": cert, "private_key_file": key}))
        .config();
    config.clusters[0].protocol = TransportProtocol::Udp;
    let server = ServerHandle::start(config).unwrap();
    let _agent = agent(backend, server.tunnel_addr(), target)
        .tls(serde_json::json!({"ca_file": ca, "server_name": "tunnel.test"}))
        .listener_field("protocol", serde_json::json!("udp"))
        .run();
    wait_registered(&server, "c", 1, 4);
    let frontend = server.frontend_addr("c").unwrap();
    let clients: Vec<UdpSocket> = (0..3).map(|_| client()).collect();
    for i in 0..100 {
        for (k, c) in clients.iter().enumerate() {
            let q = format!("{k}/{i}");
            assert_eq!(ask(c, frontend, q.as_bytes()), q.as_bytes());
        }
    }
    assert_eq!(ask(&clients[0], frontend, &[9u8; 4000]), vec![9u8; 4000]);
    let _ = std::fs::remove_dir_all(dir);
});

both_backends!(a_version_1_agent_is_never_given_a_flow, |backend| {
    use ringtun::protocol::{self, ConnectionInitInfo, Frame, InitExtra, RingtunInit, Role};
    use std::io::{Read, Write};
    let target = udp_backend(echo);
    let server = udp_server(backend, 1, |c| c.clusters[0].pool_wait_ms = 200);
    // An agent of extension version 1 (before UDP flows): one data connection, idle.
    let mut old = std::net::TcpStream::connect(server.tunnel_addr()).unwrap();
    let init = protocol::encode_to_vec(&Frame::Init(ConnectionInitInfo {
        cluster_name: "c".into(),
        weight: 10,
        host_name: "old-agent".into(),
        extra: Some(InitExtra {
            ringtun: Some(RingtunInit {
                version: 1,
                role: Role::Data,
                agent_id: "old".into(),
                max_connection_num: None,
            }),
            other: Default::default(),
        }),
        ..Default::default()
    }))
    .unwrap();
    old.write_all(&init).unwrap();
    assert!(wait_until(Duration::from_secs(5), || server
        .hosts("c")
        .iter()
        .any(|h| h.idle_connections == 1)));
    let frontend = server.frontend_addr("c").unwrap();
    let c = client();
    c.send_to(b"nobody for me", frontend).unwrap();
    assert!(wait_until(Duration::from_secs(5), || {
        let t = server.counters();
        t.pool_exhausted_total == 1 && t.udp_dropped_no_connection_total == 1
    }));
    // A version 2 agent carries the next flow; the old connection still gets nothing.
    let _agent = udp_agent(backend, &server, target, 2);
    assert!(wait_until(Duration::from_secs(10), || server
        .hosts("c")
        .iter()
        .any(|h| h.host_name == "edge-test" && h.idle_connections >= 1)));
    assert_eq!(ask(&c, frontend, b"now"), b"now");
    old.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut response = vec![0u8; 4096];
    let n = old.read(&mut response).unwrap();
    // Only its init response: no session start followed it.
    assert!(matches!(
        protocol::decode(&response[..n], 65_535),
        Ok(protocol::Decoded::Frame(Frame::InitResponse(_), used)) if used == n
    ));
});

// A backend port with nothing bound yet: the kernel's port unreachable for a datagram the agent
// sent is UDP's loss, not the flow's end (a backend restarting loses datagrams, not clients).
// The agent drops and counts it, the flow stays up, and once the backend is there the same flow
// gets its replies.
both_backends!(
    a_backend_not_listening_yet_loses_datagrams_not_the_flow,
    |backend| {
        let nobody = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let server = udp_server(backend, 1, |_| {});
        let agent = udp_agent(backend, &server, nobody, 1);
        wait_registered(&server, "c", 1, 1);
        let frontend = server.frontend_addr("c").unwrap();
        let c = client();
        // Each comes back as an unreachable, the agent's socket's error on its next receive.
        for i in 0..3 {
            c.send_to(format!("anyone there? {i}").as_bytes(), frontend)
                .unwrap();
        }
        assert!(
            wait_until(Duration::from_secs(10), || agent
                .status()
                .udp_dropped_send_failed_total
                >= 1),
            "{:?}",
            agent.status()
        );
        let t = server.counters();
        assert_eq!(
            (t.active_udp_flows, t.udp_flows_started_total),
            (1, 1),
            "{t:?}"
        );
        assert_eq!(t.session_aborts_received_backend_error_total, 0, "{t:?}");
        udp_backend_on(UdpSocket::bind(nobody).unwrap(), echo);
        assert_eq!(ask_retrying(&c, frontend, b"now?"), b"now?");
        let t = server.counters();
        assert_eq!(
            (t.udp_flows_started_total, t.udp_flow_errors_total),
            (1, 0),
            "{t:?}"
        );
    }
);
