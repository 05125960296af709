//! Runtime control and high availability: weights changed at runtime, graceful agent stop under
//! load, server drain, admin drain, pool requests, and dynamic discovery across two servers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use ringtun::agent::AgentHandle;
use ringtun::config::IoBackend;
use ringtun::control::registry::HostStatus;
use ringtun::server::ServerHandle;

fn split(frontend: SocketAddr, sessions: usize) {
    for i in 0..sessions {
        assert_eq!(echo_roundtrip(frontend, &[i as u8; 8]), vec![i as u8; 8]);
    }
}

both_backends!(
    weight_changed_at_runtime_shifts_the_split_within_one_heartbeat,
    |backend| {
        const HEARTBEAT_MS: u64 = 1000;
        let (a_backend, b_backend) = (echo_backend(), echo_backend());
        let server = server(backend)
            .cluster("c")
            .heartbeat_ms(HEARTBEAT_MS)
            .run();
        let _a = agent(backend, server.tunnel_addr(), a_backend.addr)
            .host_name("a")
            .weight(1)
            .connection_num(8)
            .run();
        let b = agent(backend, server.tunnel_addr(), b_backend.addr)
            .host_name("b")
            .weight(1)
            .connection_num(8)
            .run();
        wait_registered(&server, "c", 2, 8);
        let changed_at = Instant::now();
        b.set_weight(3);
        let seen = wait_until(Duration::from_millis(HEARTBEAT_MS), || {
            server
                .hosts("c")
                .iter()
                .any(|h| h.host_name == "b" && h.weight == 3)
        });
        assert!(
            seen,
            "weight not applied within one heartbeat interval: {:?}",
            server.hosts("c")
        );
        println!(
            "weight change reached the server in {:?}",
            changed_at.elapsed()
        );
        let before = (
            a_backend.accepted.load(Ordering::SeqCst),
            b_backend.accepted.load(Ordering::SeqCst),
        );
        split(server.frontend_addr("c").unwrap(), 400);
        let a = a_backend.accepted.load(Ordering::SeqCst) - before.0;
        let bb = b_backend.accepted.load(Ordering::SeqCst) - before.1;
        assert!(
            (90..=110).contains(&a) && (290..=310).contains(&bb),
            "split a={a} b={bb}"
        );
    }
);

both_backends!(admin_weight_and_host_drain, |backend| {
    let (a_backend, b_backend) = (echo_backend(), echo_backend());
    let server = server(backend).cluster("c").run();
    let _a = agent(backend, server.tunnel_addr(), a_backend.addr)
        .host_name("a")
        .connection_num(8)
        .run();
    let _b = agent(backend, server.tunnel_addr(), b_backend.addr)
        .host_name("b")
        .connection_num(8)
        .run();
    wait_registered(&server, "c", 2, 8);
    assert_eq!(server.set_host_weight("c", "a", Some(30)), 1);
    assert_eq!(server.set_host_weight("c", "nobody", Some(3)), 0);
    split(server.frontend_addr("c").unwrap(), 40);
    let a = a_backend.accepted.load(Ordering::SeqCst);
    assert!((28..=40).contains(&a), "weight 30 vs 10 gave a={a} of 40");
    assert_eq!(server.drain_host("c", "a"), 1);
    let before = a_backend.accepted.load(Ordering::SeqCst);
    split(server.frontend_addr("c").unwrap(), 40);
    assert_eq!(
        a_backend.accepted.load(Ordering::SeqCst),
        before,
        "a drained host was picked"
    );
});

/// Client threads doing short sessions until told to stop; counts successes and failures.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn load(frontend: SocketAddr, threads: usize) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let handles = (0..threads)
        .map(|t| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                let msg = pattern(2048, t as u8);
                while !stop.load(Ordering::Relaxed) {
                    let result = (|| -> std::io::Result<()> {
                        let mut c = TcpStream::connect(frontend)?;
                        c.set_read_timeout(Some(Duration::from_secs(5)))?;
                        c.write_all(&msg)?;
                        let mut back = vec![0u8; msg.len()];
                        c.read_exact(&mut back)?;
                        if back != msg {
                            return Err(std::io::Error::other("corrupted"));
                        }
                        Ok(())
                    })();
                    match result {
                        Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            eprintln!("session failed: {e}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    Load {
        stop,
        ok,
        failed,
        threads: handles,
    }
}

impl Load {
    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

both_backends!(
    sigterm_on_one_of_two_agents_under_load_fails_no_session,
    |backend| {
        const GRACE_MS: u64 = 5000;
        let (stay_backend, leave_backend) = (echo_backend(), echo_backend());
        let server = server(backend).cluster("c").run();
        let _stay = agent(backend, server.tunnel_addr(), stay_backend.addr)
            .host_name("stay")
            .run();
        let dir = std::env::temp_dir().join(format!(
            "ringtun-sigterm-{}-{backend:?}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut leaving = agent(backend, server.tunnel_addr(), leave_backend.addr)
            .host_name("leave")
            .tunnel_field("graceful_close_max_wait_duration_ms", GRACE_MS.into())
            .spawn_process(&dir);
        let stderr = leaving.stderr.take().unwrap();
        let log = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = { stderr }.read_to_string(&mut s);
            s
        });
        wait_registered(&server, "c", 2, 4);
        let running = load(server.frontend_addr("c").unwrap(), 4);
        assert!(wait_until(Duration::from_secs(10), || leave_backend
            .accepted
            .load(Ordering::SeqCst)
            > 20));
        // SAFETY: plain signal delivery to our own child process.
        assert_eq!(
            unsafe { libc::kill(leaving.id() as libc::pid_t, libc::SIGTERM) },
            0
        );
        let signalled = Instant::now();
        let status = loop {
            if let Some(s) = leaving.try_wait().unwrap() {
                break s;
            }
            assert!(
                signalled.elapsed() < Duration::from_millis(GRACE_MS + 3000),
                "agent did not exit within its grace time"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let took = signalled.elapsed();
        assert!(wait_until(Duration::from_secs(5), || server
            .hosts("c")
            .len()
            == 1));
        let after = stay_backend.accepted.load(Ordering::SeqCst);
        assert!(wait_until(Duration::from_secs(10), || stay_backend
            .accepted
            .load(Ordering::SeqCst)
            > after + 20));
        let (ok, failed) = running.finish();
        let log = log.join().unwrap();
        println!("SIGTERM: agent exited in {took:?} ({status}); {ok} sessions ok, {failed} failed");
        assert!(status.success(), "agent exit status {status}: {log}");
        assert_eq!(
            failed, 0,
            "sessions failed while an agent stopped gracefully"
        );
        assert!(log.contains("graceful close complete"), "{log}");
        let _ = std::fs::remove_dir_all(&dir);
    }
);

both_backends!(
    server_drain_finishes_sessions_and_refuses_new_ones,
    |backend| {
        let echo = echo_backend();
        let server = server(backend).cluster("c").run();
        let agent = agent(backend, server.tunnel_addr(), echo.addr).run();
        wait_registered(&server, "c", 1, 4);
        let frontend = server.frontend_addr("c").unwrap();
        let tunnel = server.tunnel_addr();
        let mut in_flight = TcpStream::connect(frontend).unwrap();
        in_flight
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        in_flight.write_all(b"before").unwrap();
        let mut buf = [0u8; 6];
        in_flight.read_exact(&mut buf).unwrap();
        let drainer = std::thread::spawn(move || {
            let t = Instant::now();
            server.drain(10_000);
            t.elapsed()
        });
        // New agents and frontends are refused once the drain began.
        assert!(wait_until(Duration::from_secs(5), || TcpStream::connect(
            frontend
        )
        .is_err()));
        assert!(wait_until(Duration::from_secs(5), || TcpStream::connect(
            tunnel
        )
        .is_err()));
        // The session in flight goes on, then ends the drain early.
        in_flight.write_all(b"during").unwrap();
        in_flight.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"during");
        drop(in_flight);
        let took = drainer.join().unwrap();
        assert!(
            took < Duration::from_secs(8),
            "drain waited {took:?} after its last session ended"
        );
        drop(agent);
    }
);

both_backends!(
    server_drain_ends_at_its_deadline_while_events_keep_arriving,
    |backend| {
        const GRACE_MS: u64 = 500;
        let echo = echo_backend();
        let server = server(backend).cluster("c").run();
        let agent = agent(backend, server.tunnel_addr(), echo.addr).run();
        wait_registered(&server, "c", 1, 4);
        // A session that outlives the grace time, so only the deadline can end the drain.
        let mut in_flight = TcpStream::connect(server.frontend_addr("c").unwrap()).unwrap();
        in_flight
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        in_flight.write_all(b"before").unwrap();
        let mut buf = [0u8; 6];
        in_flight.read_exact(&mut buf).unwrap();
        // Control-path events every 2 ms (as admin scrapes or ending sessions would be), until
        // the control path is gone or 10 s passed.
        let commands = server.commands();
        let events = std::thread::spawn(move || {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                let (reply, _rx) = std::sync::mpsc::channel();
                let cmd = ringtun::control::api::ControlCmd::Hosts {
                    cluster: "c".into(),
                    reply,
                };
                if commands.send(cmd).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        let t = Instant::now();
        server.drain(GRACE_MS);
        let took = t.elapsed();
        events.join().unwrap();
        assert!(
            took < Duration::from_millis(GRACE_MS + 1000),
            "a {GRACE_MS} ms drain took {took:?} while events kept arriving"
        );
        drop(in_flight);
        drop(agent);
    }
);

both_backends!(
    waiting_frontends_make_the_agent_open_more_connections,
    |backend| {
        let echo = echo_backend();
        let server = server(backend)
            .cluster("c")
            .workers(1)
            .pool_wait_ms(3000)
            .run();
        let agent = agent(backend, server.tunnel_addr(), echo.addr)
            .connection_num(1)
            .tunnel_field("max_connection_num", 6.into())
            .run();
        wait_registered(&server, "c", 1, 1);
        let frontend = server.frontend_addr("c").unwrap();
        // Five sessions held open at once: one idle connection, and no session ends to free it.
        let mut held: Vec<TcpStream> = (0..5)
            .map(|_| TcpStream::connect(frontend).unwrap())
            .collect();
        for (i, c) in held.iter_mut().enumerate() {
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            c.write_all(&[i as u8; 32]).unwrap();
            let mut back = [0u8; 32];
            c.read_exact(&mut back).unwrap();
            assert_eq!(back, [i as u8; 32]);
        }
        assert_eq!(server.counters().pool_exhausted_total, 0);
        assert!(agent.status().sessions_total >= 5);
        drop(held);
    }
);

both_backends!(two_servers_two_agents_with_a_file_list, |backend| {
    let dir = std::env::temp_dir().join(format!(
        "ringtun-file-lister-{}-{backend:?}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let list = dir.join("servers.json");
    let s1 = server(backend).cluster("c").run();
    let s2 = server(backend).cluster("c").run();
    let write_list = |servers: &[SocketAddr]| {
        let tmp = dir.join("servers.json.tmp");
        let names: Vec<String> = servers.iter().map(|s| s.to_string()).collect();
        std::fs::write(&tmp, serde_json::to_string(&names).unwrap()).unwrap();
        std::fs::rename(&tmp, &list).unwrap();
    };
    write_list(&[s1.tunnel_addr(), s2.tunnel_addr()]);
    let (e1, e2) = (echo_backend(), echo_backend());
    let _a = agent(backend, s1.tunnel_addr(), e1.addr)
        .host_name("a")
        .file_lister(&list, 200)
        .run();
    let _b = agent(backend, s1.tunnel_addr(), e2.addr)
        .host_name("b")
        .file_lister(&list, 200)
        .run();
    wait_registered(&s1, "c", 2, 4);
    wait_registered(&s2, "c", 2, 4);
    for s in [&s1, &s2] {
        assert_eq!(
            echo_roundtrip(s.frontend_addr("c").unwrap(), b"either"),
            b"either"
        );
    }
    // Removed from the file: left (gracefully); put back: rejoined.
    write_list(&[s1.tunnel_addr()]);
    assert!(
        wait_until(Duration::from_secs(10), || s2.hosts("c").is_empty()),
        "{:?}",
        s2.hosts("c")
    );
    assert_eq!(
        echo_roundtrip(s1.frontend_addr("c").unwrap(), b"one"),
        b"one"
    );
    write_list(&[s1.tunnel_addr(), s2.tunnel_addr()]);
    wait_registered(&s2, "c", 2, 4);
    // One server killed: service continues through the other.
    s2.shutdown();
    for i in 0..20u8 {
        assert_eq!(
            echo_roundtrip(s1.frontend_addr("c").unwrap(), &[i; 4]),
            [i; 4]
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
});

both_backends!(servers_that_come_and_go_are_forgotten, |backend| {
    let dir = std::env::temp_dir().join(format!(
        "ringtun-file-lister-churn-{}-{backend:?}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let list = dir.join("servers.json");
    let s2 = server(backend).cluster("c").run();
    let write_list = |servers: &[SocketAddr]| {
        let tmp = dir.join("servers.json.tmp");
        let names: Vec<String> = servers.iter().map(|s| s.to_string()).collect();
        std::fs::write(&tmp, serde_json::to_string(&names).unwrap()).unwrap();
        std::fs::rename(&tmp, &list).unwrap();
    };
    write_list(&[s2.tunnel_addr()]);
    let echo = echo_backend();
    let a = agent(backend, s2.tunnel_addr(), echo.addr)
        .file_lister(&list, 100)
        .run();
    wait_registered(&s2, "c", 1, 4);
    // s2 leaves and comes back, five times: each time a new peer, the old one done.
    for _ in 0..5 {
        write_list(&[]);
        assert!(wait_until(Duration::from_secs(10), || s2
            .hosts("c")
            .is_empty()));
        write_list(&[s2.tunnel_addr()]);
        wait_registered(&s2, "c", 1, 4);
    }
    // Only the latest s2 peer (server_list is empty with a lister): the finished ones are
    // forgotten.
    assert!(
        wait_until(Duration::from_secs(10), || a.peer_count() == 1),
        "{} peers kept",
        a.peer_count()
    );
    assert_eq!(echo_roundtrip(s2.frontend_addr("c").unwrap(), b"s2"), b"s2");
    let _ = std::fs::remove_dir_all(&dir);
});

both_backends!(dns_lister_dials_every_address_of_the_name, |backend| {
    let s = server(backend).cluster("c").run();
    let echo = echo_backend();
    // `localhost` resolves to 127.0.0.1 (and maybe ::1, where nothing listens: that peer just
    // retries with backoff).
    let name = format!("localhost:{}", s.tunnel_addr().port());
    let _a = agent(backend, s.tunnel_addr(), echo.addr)
        .tunnel_field("server_list", serde_json::json!([]))
        .tunnel_field(
            "dynamic_server_list_config",
            serde_json::json!({"dynamic_server_lister": "dns", "dns_name": name, "refresh_interval_ms": 200}),
        )
        .run();
    wait_registered(&s, "c", 1, 4);
    assert_eq!(
        echo_roundtrip(s.frontend_addr("c").unwrap(), b"via dns"),
        b"via dns"
    );
});

/// Opens `n` sessions at once and holds them; returns how many echoed.
fn hold_sessions(frontend: SocketAddr, n: usize) -> (usize, Vec<TcpStream>) {
    let handles: Vec<_> = (0..n)
        .map(|i| {
            std::thread::spawn(move || -> Option<TcpStream> {
                let mut c = TcpStream::connect(frontend).ok()?;
                c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
                c.write_all(&[i as u8; 16]).ok()?;
                let mut back = [0u8; 16];
                c.read_exact(&mut back).ok()?;
                (back == [i as u8; 16]).then_some(c)
            })
        })
        .collect();
    let held: Vec<TcpStream> = handles
        .into_iter()
        .filter_map(|h| h.join().unwrap())
        .collect();
    (held.len(), held)
}

both_backends!(
    concurrent_sessions_beyond_the_idle_pool_are_served,
    |backend| {
        let echo = echo_backend();
        let server = server(backend).cluster("c").pool_wait_ms(5000).run();
        let _agent = agent(backend, server.tunnel_addr(), echo.addr)
            .connection_num(2)
            .run();
        wait_registered(&server, "c", 1, 2);
        let (ok, held) = hold_sessions(server.frontend_addr("c").unwrap(), 60);
        assert_eq!(
            ok,
            60,
            "pool exhausted {}",
            server.counters().pool_exhausted_total
        );
        drop(held);
    }
);

/// A one-worker server (every idle connection is where every frontend is accepted) and an agent
/// keeping 2 idle connections, whose extra ones are let go after `extra_idle_ms`; `burst`
/// sessions held at once, then closed, have grown its pool.
fn grown_pool(
    backend: IoBackend,
    extra_idle_ms: u64,
    burst: usize,
) -> (ServerHandle, AgentHandle, EchoBackend) {
    let echo = echo_backend();
    let server = server(backend)
        .cluster("c")
        .workers(1)
        .pool_wait_ms(5000)
        .run();
    let agent = agent(backend, server.tunnel_addr(), echo.addr)
        .connection_num(2)
        .tunnel_field("extra_connection_idle_duration_ms", extra_idle_ms.into())
        .run();
    wait_registered(&server, "c", 1, 2);
    let (ok, held) = hold_sessions(server.frontend_addr("c").unwrap(), burst);
    assert_eq!(ok, burst);
    drop(held);
    (server, agent, echo)
}

/// Waits (up to 5 s: well over the 300 ms release the shrink tests set, and under the 10 s
/// default, so a release that ignored the setting fails them) until cluster `c`'s one host
/// satisfies `cond`.
fn wait_for_host(server: &ServerHandle, cond: impl Fn(&HostStatus) -> bool) -> bool {
    wait_until(Duration::from_secs(5), || {
        server.hosts("c").first().is_some_and(&cond)
    })
}

both_backends!(
    a_pool_grown_by_demand_stays_grown_while_it_is_used,
    |backend| {
        // Released only after an hour idle: nothing here depends on how fast the test runs.
        let (server, _agent, _echo) = grown_pool(backend, 3_600_000, 6);
        // The extra connections that carried sessions are kept (framed sessions) or replaced
        // like the first two, so the pool keeps what the demand needed.
        let grown = wait_for_host(&server, |h| h.idle_connections >= 6);
        assert!(grown, "pool did not stay grown: {:?}", server.hosts("c"));
        let waits = server.counters().pool_waits_total;
        let (ok, held) = hold_sessions(server.frontend_addr("c").unwrap(), 6);
        assert_eq!(ok, 6);
        assert_eq!(
            server.counters().pool_waits_total,
            waits,
            "the same demand again waited for connections"
        );
        drop(held);
    }
);

both_backends!(a_grown_pool_shrinks_back_once_idle, |backend| {
    let (server, _agent, _echo) = grown_pool(backend, 300, 6);
    // The connections beyond `connection_num` are let go once idle for 300 ms.
    let shrunk = wait_for_host(&server, |h| {
        h.idle_connections == 2 && h.data_connections == 2
    });
    assert!(shrunk, "pool did not shrink back: {:?}", server.hosts("c"));
});

both_backends!(
    a_grown_pool_shrinks_back_while_light_traffic_continues,
    |backend| {
        let (server, _agent, _echo) = grown_pool(backend, 300, 8);
        let frontend = server.frontend_addr("c").unwrap();
        // One session at a time, back to back: the server reuses its newest connection, so
        // the ones nobody needs idle long enough to be let go.
        let stop = Arc::new(AtomicBool::new(false));
        let traffic = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut sessions = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    assert_eq!(echo_roundtrip(frontend, b"light"), b"light");
                    sessions += 1;
                }
                sessions
            })
        };
        let shrunk = wait_for_host(&server, |h| h.data_connections <= 3);
        stop.store(true, Ordering::Relaxed);
        let sessions = traffic.join().unwrap();
        assert!(
            shrunk,
            "pool did not shrink under light traffic ({sessions} sessions): {:?}",
            server.hosts("c")
        );
    }
);

both_backends!(max_connection_num_bounds_concurrent_sessions, |backend| {
    let echo = echo_backend();
    let server = server(backend).cluster("c").pool_wait_ms(500).run();
    let _agent = agent(backend, server.tunnel_addr(), echo.addr)
        .connection_num(2)
        .tunnel_field("max_connection_num", 6.into())
        .run();
    wait_registered(&server, "c", 1, 2);
    let (ok, held) = hold_sessions(server.frontend_addr("c").unwrap(), 10);
    assert_eq!(
        ok, 6,
        "max_connection_num 6 served {ok} concurrent sessions"
    );
    assert!(server.counters().pool_exhausted_total >= 4);
    drop(held);
});
