//! Issue 15, "MOSN interop that survives real use, in both directions", against the scripted
//! MOSN peers (tests/mosn_peers): a MOSN agent through bursts, a banner backend, its silent aside
//! and its graceful close with a ringtun server; idle legacy connections bounded; a ringtun agent
//! serving through a MOSN server and stopping with MOSN's graceful close. Each failure message
//! says which MOSN behaviour is at stake (see docs/mosn-behaviour.md).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod mosn_peers;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use mosn_peers::{mosn_agent, mosn_server, GracefulClose};

fn wait_for(what: &str, cond: impl FnMut() -> bool) {
    assert!(wait_until(Duration::from_secs(10), cond), "never: {what}");
}

/// One request/response on a fresh frontend connection (no half-close), then close.
fn try_request(frontend: SocketAddr, msg: &[u8]) -> Result<(), String> {
    let mut c = TcpStream::connect(frontend).map_err(|e| format!("connect: {e}"))?;
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(msg).map_err(|e| format!("write: {e}"))?;
    let mut back = Vec::with_capacity(msg.len());
    let mut chunk = [0u8; 4096];
    while back.len() < msg.len() {
        match c.read(&mut chunk) {
            Ok(0) => return Err(format!("closed after {:?}", String::from_utf8_lossy(&back))),
            Ok(n) => back.extend_from_slice(&chunk[..n]),
            Err(e) => {
                return Err(format!(
                    "read after {:?}: {e}",
                    String::from_utf8_lossy(&back)
                ))
            }
        }
    }
    if back != msg {
        return Err(format!("got {:?}", String::from_utf8_lossy(&back)));
    }
    Ok(())
}

// MOSN agent → ringtun server.

both_backends!(burst_of_8_clients_by_5_rounds_all_served, |backend| {
    let echo = echo_backend();
    let server = server(backend).cluster("c").pool_wait_ms(5000).run();
    let agent = mosn_agent(server.tunnel_addr(), echo.addr)
        .connection_num(8)
        .start();
    wait_registered(&server, "c", 1, 8);
    wait_for("eight handshakes", || agent.counts().handshakes == 8);
    let frontend = server.frontend_addr("c").unwrap();
    let mut failures = Vec::new();
    // Rounds back to back: clients of a round wait for the connections the last round used,
    // and a connection leased the moment it registers gets session bytes right after its
    // response, which MOSN reads together with it and never drains from the slot's buffer.
    for round in 0..5 {
        let clients: Vec<_> = (0..8)
            .map(|i| {
                std::thread::spawn(move || {
                    try_request(frontend, format!("round {round} client {i}").as_bytes())
                })
            })
            .collect();
        for (i, c) in clients.into_iter().enumerate() {
            if let Err(e) = c.join().unwrap() {
                failures.push(format!("round {round} client {i}: {e}"));
            }
        }
    }
    let c = agent.counts();
    assert!(
        failures.is_empty() && c.dead_slots == 0,
        "{} of 40 requests failed: {failures:?}\nMOSN agent: {c:?}\n(stale_handoffs: handshakes \
         whose read carried session bytes after the response; MOSN keeps them in the slot's \
         buffer, so that slot's next handshake cannot decode its response)",
        failures.len()
    );
});

both_backends!(
    banner_backend_causes_no_reconnect_storm_on_the_aside,
    |backend| {
        let banner = banner_backend(b"220 edge ready\r\n");
        let server = server(backend).cluster("c").run();
        // tcp_proxy hosting connects the backend for the aside too: its first bytes are the banner.
        let agent = mosn_agent(server.tunnel_addr(), banner)
            .connection_num(2)
            .start();
        wait_registered(&server, "c", 1, 2);
        wait_for("the aside connection", || {
            agent.counts().aside_connects >= 1
        });
        let before = agent.counts();
        // An observation window: a storm is a rate.
        std::thread::sleep(Duration::from_secs(3));
        let after = agent.counts();
        drop(agent);
        let redials = after.aside_redials - before.aside_redials;
        assert!(
            redials <= 1,
            "the MOSN agent's aside connection was re-dialled {redials} times in 3 s \
         (each one a backend connection too)\nMOSN agent: {after:?}"
        );
    }
);

both_backends!(
    silent_aside_survives_10_s_with_at_most_one_redial,
    |backend| {
        let echo = echo_backend();
        let server = server(backend)
            .cluster("c")
            .handshake_timeout_ms(2000)
            .run();
        let agent = mosn_agent(server.tunnel_addr(), echo.addr)
            .connection_num(1)
            .start();
        wait_registered(&server, "c", 1, 1);
        wait_for("the aside connection", || {
            agent.counts().aside_connects >= 1
        });
        // An observation window: MOSN's aside connection never sends anything, by design.
        std::thread::sleep(Duration::from_secs(10));
        let c = agent.counts();
        assert!(
            c.aside_redials <= 1,
            "the silent MOSN aside connection was closed and re-dialled {} times in 10 s \
         (handshake_timeout_ms 2000)\nMOSN agent: {c:?}",
            c.aside_redials
        );
        try_request(server.frontend_addr("c").unwrap(), b"still served").unwrap();
    }
);

both_backends!(a_parked_mosn_aside_holds_no_handshake_permit, |backend| {
    let echo = echo_backend();
    let mut config = server(backend)
        .cluster("c")
        .handshake_timeout_ms(300)
        .config();
    // One handshake at a time: a parked aside holding it would refuse everyone else.
    config.tunnel_listener.max_concurrent_handshakes = 1;
    let server = ringtun::server::ServerHandle::start(config).unwrap();
    let mosn = mosn_agent(server.tunnel_addr(), echo.addr)
        .connection_num(1)
        .start();
    wait_for("the MOSN aside parked", || {
        server
            .control_stats()
            .handshakes(ringtun::control::stats::HandshakeOutcome::LegacyAside)
            == 1
    });
    // Another agent (and the MOSN agent's own re-dials) still handshake.
    let _ringtun = agent(backend, server.tunnel_addr(), echo.addr)
        .host_name("edge-2")
        .connection_num(2)
        .run();
    wait_for("both agents registered", || {
        server
            .hosts("c")
            .iter()
            .map(|h| h.idle_connections)
            .sum::<usize>()
            == 3
    });
    try_request(server.frontend_addr("c").unwrap(), b"with the aside parked").unwrap();
    // (The ringtun agent's own concurrent dials may be refused at accept and retried: the
    // limit is 1.) The aside is still the one parked.
    let parked = server
        .control_stats()
        .handshakes(ringtun::control::stats::HandshakeOutcome::LegacyAside);
    assert_eq!(parked, 1);
    assert_eq!(mosn.counts().aside_redials, 0);
});

both_backends!(mosn_graceful_close_is_honoured, |backend| {
    let echo = echo_backend();
    let server = server(backend).cluster("c").pool_wait_ms(200).run();
    let agent = mosn_agent(server.tunnel_addr(), echo.addr)
        .connection_num(4)
        .start();
    wait_registered(&server, "c", 1, 4);
    wait_for("the aside connection", || {
        agent.counts().aside_connects >= 1
    });
    let sent = agent.graceful_close();
    assert!(
        matches!(&sent, GracefulClose::Sent(a) if a.len() == 4),
        "the MOSN agent could not send its graceful close: {sent:?}"
    );
    // MOSN's own server removes those hosts at once; the agent closes them 15 s later.
    let stopped = wait_until(Duration::from_secs(3), || {
        server.hosts("c").iter().all(|h| h.idle_connections == 0)
    });
    assert!(
        stopped,
        "3 s after MOSN's graceful close (addresses {sent:?}), ringtun still leases its \
         connections: {:?}",
        server.hosts("c")
    );
    assert!(
        try_request(server.frontend_addr("c").unwrap(), b"late").is_err(),
        "a new session was given a connection of an agent that is closing"
    );
    assert_eq!(agent.counts().redials, 0);
});

both_backends!(
    mosn_graceful_close_from_another_ip_changes_nothing,
    |backend| {
        let echo = echo_backend();
        let server = server(backend).cluster("c").run();
        let agent = mosn_agent(server.tunnel_addr(), echo.addr)
            .connection_num(2)
            .start();
        wait_registered(&server, "c", 1, 2);
        let addrs: Vec<String> = agent
            .data_local_addrs()
            .into_iter()
            .map(|a| a.unwrap().to_string())
            .collect();
        // The agent's own addresses, sent from another IP (127.0.0.2 is loopback too).
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket
            .bind(&"127.0.0.2:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        socket.connect(&server.tunnel_addr().into()).unwrap();
        let mut c: TcpStream = socket.into();
        c.write_all(&mosn_peers::wire::graceful_close_frame(&addrs, "c"))
            .unwrap();
        // The server closes the connection once it has handled the frame.
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(c.read(&mut buf).unwrap(), 0);
        let hosts = server.hosts("c");
        assert_eq!(hosts[0].idle_connections, 2, "{hosts:?}");
        try_request(server.frontend_addr("c").unwrap(), b"still leased").unwrap();
    }
);

both_backends!(
    idle_legacy_connections_are_closed_at_legacy_idle_timeout_ms,
    |backend| {
        let echo = echo_backend();
        let mut config = server(backend)
            .cluster("c")
            .heartbeat_ms(200)
            .handshake_timeout_ms(500)
            .config();
        config.tunnel_listener.legacy_idle_timeout_ms = 1000;
        let server = ringtun::server::ServerHandle::start(config).unwrap();
        // A MOSN agent whose hosting listener never closes idle connections itself.
        let agent = mosn_agent(server.tunnel_addr(), echo.addr)
            .connection_num(1)
            .idle_timeout(None)
            .start();
        wait_registered(&server, "c", 1, 1);
        // Both the idle data connection and the parked aside are closed, and re-dialled.
        wait_for("the idle data connection closed by the server", || {
            agent.counts().redials >= 1
        });
        wait_for("the parked aside closed by the server", || {
            agent.counts().aside_redials >= 1
        });
        wait_registered(&server, "c", 1, 1);
        try_request(server.frontend_addr("c").unwrap(), b"after idle").unwrap();
    }
);

// ringtun agent → MOSN server.

both_backends!(
    ringtun_agent_behind_mosn_server_serves_100_sequential_requests,
    |backend| {
        let echo = echo_backend();
        let mosn = mosn_server().cluster("c").start();
        let agent = agent(backend, mosn.tunnel_addr(), echo.addr)
            .connection_num(4)
            .run();
        wait_for("four hosts on the MOSN server", || {
            mosn.idle_hosts("c") >= 4
        });
        for i in 0..100 {
            if let Err(e) = try_request(mosn.frontend_addr("c"), format!("request {i}").as_bytes())
            {
                panic!(
                "request {i} through a MOSN server failed: {e}\nMOSN server: {:?}\nringtun agent: {:?}",
                mosn.counts(),
                agent.status()
            );
            }
        }
    }
);

both_backends!(
    ringtun_agent_behind_mosn_server_serves_16_concurrent_requests,
    |backend| {
        let echo = echo_backend();
        let mosn = mosn_server().cluster("c").start();
        let agent = agent(backend, mosn.tunnel_addr(), echo.addr)
            .connection_num(16)
            .run();
        wait_for("sixteen hosts on the MOSN server", || {
            mosn.idle_hosts("c") >= 16
        });
        let frontend = mosn.frontend_addr("c");
        let clients: Vec<_> = (0..16)
            .map(|i| {
                std::thread::spawn(move || try_request(frontend, format!("client {i}").as_bytes()))
            })
            .collect();
        let failures: Vec<String> = clients
            .into_iter()
            .enumerate()
            .filter_map(|(i, c)| c.join().unwrap().err().map(|e| format!("client {i}: {e}")))
            .collect();
        assert!(
        failures.is_empty(),
        "{} of 16 concurrent requests through a MOSN server failed: {failures:?}\nMOSN server: {:?}\nringtun agent: {:?}",
        failures.len(),
        mosn.counts(),
        agent.status()
    );
    }
);

both_backends!(
    ringtun_agent_stopping_sends_mosns_graceful_close_to_a_mosn_server,
    |backend| {
        let echo = echo_backend();
        let mosn = mosn_server().cluster("c").start();
        let agent = agent(backend, mosn.tunnel_addr(), echo.addr)
            .connection_num(4)
            .tunnel_field(
                "graceful_close_max_wait_duration_ms",
                serde_json::json!(5000),
            )
            .run();
        wait_for("four hosts on the MOSN server", || {
            mosn.idle_hosts("c") >= 4
        });
        // The aside sent nothing: no host for it, no frame decoded.
        let c = mosn.counts();
        assert_eq!(
            (c.inits, c.decode_errors, c.graceful_closes),
            (4, 0, 0),
            "{c:?}"
        );
        try_request(mosn.frontend_addr("c"), b"before stop").unwrap();
        wait_for("the used connection re-dialled", || {
            mosn.counts().inits == 5 && mosn.idle_hosts("c") >= 4
        });
        let stopping = std::thread::spawn(move || agent.shutdown_graceful());
        wait_for("MOSN's graceful close removing the agent's hosts", || {
            mosn.counts().graceful_closes == 1 && mosn.idle_hosts("c") == 0
        });
        let c = mosn.counts();
        assert!(c.hosts_removed_by_graceful_close >= 4, "{c:?}");
        stopping.join().unwrap();
    }
);

both_backends!(
    ringtun_agent_with_server_type_mosn_serves_through_a_mosn_server,
    |backend| {
        let echo = echo_backend();
        let mosn = mosn_server().cluster("c").start();
        let _agent = agent(backend, mosn.tunnel_addr(), echo.addr)
            .connection_num(2)
            .tunnel_field("server_type", serde_json::json!("mosn"))
            .run();
        wait_for("two hosts on the MOSN server", || mosn.idle_hosts("c") >= 2);
        for i in 0..10 {
            try_request(mosn.frontend_addr("c"), format!("forced {i}").as_bytes()).unwrap();
        }
        assert_eq!(mosn.counts().decode_errors, 0);
    }
);
