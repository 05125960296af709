//! MOSN interop that works today, against scripted MOSN peers (tests/mosn_peers) written from
//! MOSN's source: a MOSN agent registering with a ringtun server and carrying sessions, MOSN's
//! statuses and dead slots, a banner on a data connection, a ringtun agent registering with a
//! MOSN server, and the peers' own fidelity (frames, decode order, agent ↔ server).
//! Issue 15's tests (bursts, banner, silent aside, graceful close, ringtun agent through a MOSN
//! server) are in mosn_interop_use.rs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod mosn_peers;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use mosn_peers::wire::{self, DecodeError, Msg};
use mosn_peers::{mosn_agent, mosn_server, GracefulClose};
use ringtun::control::stats::HandshakeOutcome;

fn wait_for(what: &str, cond: impl FnMut() -> bool) {
    assert!(wait_until(Duration::from_secs(10), cond), "never: {what}");
}

/// One request/response on a fresh frontend connection (no half-close: MOSN would drop the
/// reply), then close.
fn request(frontend: SocketAddr, msg: &[u8]) -> Vec<u8> {
    let mut c = TcpStream::connect(frontend).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    c.read_exact(&mut back).unwrap();
    back
}

fn idle(server: &ringtun::server::ServerHandle) -> usize {
    server.hosts("c").iter().map(|h| h.idle_connections).sum()
}

both_backends!(
    mosn_agent_registers_and_serves_sequential_sessions,
    |backend| {
        let echo = echo_backend();
        let server = server(backend).cluster("c").run();
        let agent = mosn_agent(server.tunnel_addr(), echo.addr)
            .connection_num(2)
            .start();
        wait_registered(&server, "c", 1, 2);
        wait_for("two handshakes", || agent.counts().handshakes == 2);
        assert!(server.hosts("c")[0].legacy);
        let frontend = server.frontend_addr("c").unwrap();
        for i in 0..10u64 {
            let msg = format!("request {i}");
            assert_eq!(request(frontend, msg.as_bytes()), msg.as_bytes());
            // The next session starts once the re-dialled connection is handshaken on both sides,
            // so no session bytes can follow its response (that race is a pending test).
            wait_for("the re-dialled connection", || {
                agent.counts().handshakes == 3 + i && idle(&server) == 2
            });
        }
        let c = agent.counts();
        assert_eq!(
            (c.sessions, c.redials, c.dead_slots, c.stale_handoffs),
            (10, 10, 0, 0),
            "{c:?}"
        );
    }
);

both_backends!(
    mosn_agent_data_connection_carries_a_backend_banner,
    |backend| {
        let banner = banner_backend(b"220 edge ready\r\n");
        let server = server(backend).cluster("c").run();
        // No aside: the banner would make it churn (a pending test).
        let agent = mosn_agent(server.tunnel_addr(), banner)
            .connection_num(1)
            .without_aside()
            .start();
        wait_registered(&server, "c", 1, 1);
        let frontend = server.frontend_addr("c").unwrap();
        for i in 0..3u64 {
            let mut c = TcpStream::connect(frontend).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut greeting = [0u8; 16];
            c.read_exact(&mut greeting).unwrap();
            assert_eq!(&greeting, b"220 edge ready\r\n");
            let msg = format!("EHLO {i}\r\n");
            c.write_all(msg.as_bytes()).unwrap();
            let mut back = vec![0u8; msg.len()];
            c.read_exact(&mut back).unwrap();
            assert_eq!(back, msg.as_bytes());
            drop(c);
            wait_for("the re-dialled connection", || {
                agent.counts().handshakes == 2 + i && idle(&server) == 1
            });
        }
        assert_eq!(agent.counts().dead_slots, 0);
    }
);

both_backends!(mosn_statuses_from_ringtun_and_mosn_dead_slots, |backend| {
    let echo = echo_backend();
    let server = server(backend).cluster("c").token("s3cret").run();
    let tunnel = server.tunnel_addr();
    let good = mosn_agent(tunnel, echo.addr)
        .credential("token", "s3cret")
        .connection_num(2)
        .start();
    wait_registered(&server, "c", 1, 2);

    // Status 4: MOSN closes, returns nil and panics on the nil connection; the slots are dead.
    let unknown = mosn_agent(tunnel, echo.addr)
        .cluster("nope")
        .connection_num(2)
        .start();
    wait_for("two dead slots, then the aside", || {
        let c = unknown.counts();
        c.dead_slots == 2 && c.aside_connects == 1
    });
    let c = unknown.counts();
    assert_eq!(
        (c.refusals, c.handshakes, c.init_errors),
        (2, 0, 0),
        "{c:?}"
    );
    let stats = server.control_stats();
    assert_eq!(stats.handshakes(HandshakeOutcome::ClusterNotExist), 2);
    // `Stop()` reads the nil connection's address and panics: no graceful close is sent.
    assert_eq!(unknown.graceful_close(), GracefulClose::NilConnection);

    // No policy announced to a token cluster: ringtun refuses (2), another dead slot.
    let anonymous = mosn_agent(tunnel, echo.addr).connection_num(1).start();
    wait_for("a dead slot", || anonymous.counts().dead_slots == 1);
    assert_eq!(stats.handshakes(HandshakeOutcome::AuthFailed), 1);

    let frontend = server.frontend_addr("c").unwrap();
    assert_eq!(request(frontend, b"still served"), b"still served");
    assert_eq!(good.counts().dead_slots, 0);
});

both_backends!(ringtun_agent_registers_with_a_mosn_server, |backend| {
    let echo = echo_backend();
    let mosn = mosn_server().cluster("c").start();
    let _agent = agent(backend, mosn.tunnel_addr(), echo.addr)
        .connection_num(2)
        .run();
    wait_for("two hosts on the MOSN server", || {
        mosn.hosts("c").len() >= 2
    });
    let c = mosn.counts();
    assert!(c.status_success >= 2, "{c:?}");
    assert_eq!(c.decode_errors, 0, "{c:?}");
});

#[test]
fn scripted_mosn_agent_and_server_agree() {
    let echo = echo_backend();
    let mosn = mosn_server()
        .cluster("c")
        .validator("test", |credential, _host, _cluster| {
            credential.starts_with("prefix_")
        })
        .start();
    let agent = mosn_agent(mosn.tunnel_addr(), echo.addr)
        .credential("test", "prefix_edge")
        .connection_num(3)
        .start();
    wait_for("three hosts and the aside", || {
        mosn.idle_hosts("c") == 3 && agent.counts().aside_connects == 1
    });
    // The silent aside connection never sends an init: it is no host.
    assert_eq!(mosn.hosts("c").len(), 3);
    for i in 0..5u64 {
        let msg = format!("hello {i}");
        assert_eq!(
            request(mosn.frontend_addr("c"), msg.as_bytes()),
            msg.as_bytes()
        );
        wait_for("the re-dialled host", || {
            mosn.idle_hosts("c") == 3 && agent.counts().handshakes == 4 + i
        });
    }
    // Graceful close names the data connections by local address; MOSN removes those hosts.
    let GracefulClose::Sent(addresses) = agent.graceful_close() else {
        panic!("no graceful close sent");
    };
    assert_eq!(addresses.len(), 3);
    wait_for("no hosts left", || mosn.hosts("c").is_empty());
    assert_eq!(mosn.counts().hosts_removed_by_graceful_close, 3);
    // A policy with no validator: status 3, and the MOSN agent's slot is dead.
    let other = mosn_agent(mosn.tunnel_addr(), echo.addr)
        .credential("nope", "x")
        .start();
    wait_for("a dead slot", || other.counts().dead_slots == 1);
    assert_eq!(mosn.counts().status_validator_not_found, 1);
}

#[test]
fn frames_are_byte_identical_to_gos_encoder() {
    // Captured from MOSN's Go encoder (shared/reviews/mosn-interop.md §1.2).
    let init = wire::init_frame(&wire::InitInfo {
        cluster_name: "clientCluster".into(),
        weight: 10,
        ..Default::default()
    });
    let mut want = vec![0x20, 0x88, 0x01, 0x01, 0x01, 0x00, 0x00, 0x6f];
    want.extend_from_slice(br#"{"cluster_name":"clientCluster","weight":10,"host_name":"","credential_policy":"","credential":"","extra":null}"#);
    assert_eq!(init, want);
    let mut want = vec![0x20, 0x88, 0x01, 0x02, 0x02, 0x00, 0x00, 0x0c];
    want.extend_from_slice(br#"{"status":1}"#);
    assert_eq!(wire::response_frame(1), want);
    let close = wire::graceful_close_frame(&["127.0.0.1:5555".into()], "clientCluster");
    assert_eq!(
        &close[..8],
        [0x20, 0x88, 0x01, 0x03, 0x01, 0x00, 0x00, 0x3f]
    );
    let none = wire::graceful_close_frame(&[], "c");
    assert_eq!(&none[8..], br#"{"addresses":[],"cluster_name":"c"}"#);
    assert_eq!(none[7], 0x23);
    assert_eq!(
        wire::go_quote("<a&b>\u{2028}\n\u{1}\u{8}"),
        r#""\u003ca\u0026b\u003e\u2028\n\u0001\u0008""#
    );
}

#[test]
fn decoding_follows_mosns_order() {
    let decode = |bytes: &[u8]| wire::decode_from_buffer(&mut bytes.to_vec());
    // Eight bytes are never enough, even for an empty payload.
    assert_eq!(decode(&[0x20, 0x88, 1, 2, 2, 0, 0, 0]), Ok(None));
    // The length comes before the magic: a banner whose bytes 6-7 read as a large length waits.
    assert_eq!(decode(b"220 smtp ready\r\n"), Ok(None));
    assert_eq!(
        decode(&[0xde, 0xad, 1, 1, 1, 0, 0, 1, b'{']),
        Err(DecodeError::Magic)
    );
    // A ringtun extension flag (session start) is unrecognised.
    let start = wire::frame(0x10, br#"{"session_id":1}"#);
    assert_eq!(decode(&start), Err(DecodeError::UnrecognizedFlag(0x10)));
    // Version and type bytes are never checked.
    let mut odd = wire::response_frame(1);
    (odd[2], odd[4]) = (9, 7);
    assert_eq!(decode(&odd), Ok(Some(Msg::Response(1))));
    // Unknown keys are ignored; a fractional status is an error; null leaves zero.
    let extra = wire::frame(
        2,
        br#"{"status":1,"connection_id":7,"heartbeat_interval_ms":10}"#,
    );
    assert_eq!(decode(&extra), Ok(Some(Msg::Response(1))));
    assert!(matches!(
        decode(&wire::frame(2, br#"{"status":1.0}"#)),
        Err(DecodeError::Payload(_))
    ));
    assert_eq!(
        decode(&wire::frame(2, br#"{"STATUS":null}"#)),
        Ok(Some(Msg::Response(0)))
    );
    // The frame is drained, what follows stays.
    let mut two = wire::response_frame(1);
    two.extend_from_slice(b"raw");
    assert_eq!(
        wire::decode_from_buffer(&mut two),
        Ok(Some(Msg::Response(1)))
    );
    assert_eq!(two, b"raw");
}
