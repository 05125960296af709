//! A tunnel over a slow link (a delaying relay between agent and server): handshakes, heartbeats
//! and sessions, one after another and in a burst, all served; both backends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;

both_backends!(sessions_cross_a_slow_link, |backend| {
    let echo = echo_backend();
    let server = server(backend).cluster("c").heartbeat_ms(200).run();
    // 20 ms each way: a 40 ms round trip, well under the 200 ms heartbeat interval.
    let link = slow_link(server.tunnel_addr(), Duration::from_millis(20));
    let _agent = agent(backend, link, echo.addr).connection_num(4).run();
    wait_registered(&server, "c", 1, 4);
    let frontend = server.frontend_addr("c").unwrap();
    for i in 0..10u8 {
        let data = pattern(10_000 + i as usize, i);
        assert_eq!(echo_roundtrip(frontend, &data), data, "session {i}");
    }
    // A burst larger than the pool: the server asks the agent for more over the slow link.
    let burst: Vec<_> = (0..16u8)
        .map(|i| {
            std::thread::spawn(move || {
                let data = pattern(4096, i);
                assert_eq!(echo_roundtrip(frontend, &data), data, "burst session {i}");
            })
        })
        .collect();
    for t in burst {
        t.join().unwrap();
    }
    // Heartbeats cross the link in time: no connection was closed for missing them.
    assert_eq!(server.counters().heartbeat_closes_total, 0);
    assert_eq!(server.hosts("c").len(), 1, "{:?}", server.hosts("c"));
});
