//! A stable agent identity: the agent id is derived from the configuration (`host_name`, or a
//! configured `agent_id`), so a restarted agent is the same host on the server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

both_backends!(a_restarted_agent_is_the_same_host, |backend| {
    let echo = echo_backend();
    // Short heartbeats: the stopped agent's idle connections are seen closed at once.
    let server = server(backend).cluster("c").heartbeat_ms(200).run();
    let start = |host: &str| {
        agent(backend, server.tunnel_addr(), echo.addr)
            .host_name(host)
            .agent_id(None)
            .run()
    };
    let first = start("edge-stable");
    wait_registered(&server, "c", 1, 4);
    let id = first.agent_id().to_string();
    assert_eq!(server.hosts("c")[0].agent_id, id);
    first.shutdown();
    assert!(wait_until(std::time::Duration::from_secs(10), || server
        .hosts("c")
        .is_empty()));
    let second = start("edge-stable");
    wait_registered(&server, "c", 1, 4);
    assert_eq!(second.agent_id(), id, "two starts of one config");
    assert_eq!(server.hosts("c")[0].agent_id, id);
    let other = start("edge-other");
    wait_registered(&server, "c", 2, 4);
    assert_ne!(other.agent_id(), id, "another host name");
    // A configured agent_id is announced as it is.
    let named = agent(backend, server.tunnel_addr(), echo.addr)
        .host_name("edge-stable")
        .agent_id(Some("edge-stable-b"))
        .run();
    wait_registered(&server, "c", 3, 4);
    assert_eq!(named.agent_id(), "edge-stable-b");
    assert!(server
        .hosts("c")
        .iter()
        .any(|h| h.host_name == "edge-stable" && h.agent_id == "edge-stable-b"));
});
