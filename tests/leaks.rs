//! No leaks: after 20,000 short sessions, open file descriptors return to their idle baseline and
//! memory stays there too. One test running the backends one after the other, alone in its
//! binary, so nothing else moves this process's counts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use ringtun::config::IoBackend;

const SESSIONS: usize = 20_000;
const CONCURRENCY: usize = 16;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn short_sessions(frontend: SocketAddr, count: usize) {
    let per_thread = count / CONCURRENCY;
    let threads: Vec<_> = (0..CONCURRENCY)
        .map(|t| {
            std::thread::spawn(move || {
                let msg = [t as u8; 64];
                let mut back = [0u8; 64];
                for _ in 0..per_thread {
                    let mut c = TcpStream::connect(frontend).unwrap();
                    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    c.write_all(&msg).unwrap();
                    c.read_exact(&mut back).unwrap();
                    assert_eq!(back, msg);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

fn run(backend: IoBackend) {
    let backend_addr = ringtun::echo::spawn("127.0.0.1:0".parse().unwrap()).unwrap();
    let server = server(backend).cluster("c").run();
    let agent = agent(backend, server.tunnel_addr(), backend_addr)
        .connection_num(8)
        .run();
    wait_registered(&server, "c", 1, 8);
    let frontend = server.frontend_addr("c").unwrap();
    let settled = |server: &ringtun::server::ServerHandle| {
        let c = server.counters();
        c.active_sessions == 0
            && agent.status().idle_data_connections == 8
            && server
                .hosts("c")
                .first()
                .is_some_and(|h| h.idle_connections == 8 && h.data_connections == 8)
    };
    // Warm up pools and allocator at the same concurrency, then take the baseline. Settling
    // includes extra connections (opened on pool requests) being let go after
    // `extra_connection_idle_duration_ms` (10 s by default) idle, so each wait allows well over that.
    short_sessions(frontend, 1_024);
    assert!(
        wait_until(Duration::from_secs(30), || settled(&server)),
        "pool never settled after the warm-up"
    );
    let (fds_before, rss_before) = (open_fds(), rss_kib());

    short_sessions(frontend, SESSIONS);
    assert!(
        wait_until(Duration::from_secs(30), || settled(&server)),
        "pool never refilled"
    );
    let back_to_baseline = wait_until(Duration::from_secs(10), || open_fds() <= fds_before);
    let (fds_after, rss_after) = (open_fds(), rss_kib());
    println!(
        "{backend:?}: {SESSIONS} sessions; fds {fds_before} -> {fds_after}; RSS {rss_before} KiB -> {rss_after} KiB"
    );
    assert!(
        back_to_baseline,
        "file descriptors leaked: {fds_before} -> {fds_after}"
    );
    assert!(
        rss_after <= rss_before + 4 * 1024,
        "memory grew by {} KiB over {SESSIONS} sessions",
        rss_after.saturating_sub(rss_before)
    );
    assert_eq!(
        server.counters().sessions_ended_total,
        (SESSIONS + 1_024) as u64
    );
    drop(agent);
    server.shutdown();
}

#[test]
fn twenty_thousand_short_sessions_leave_no_fds_or_memory_behind() {
    run(IoBackend::Epoll);
    if ringtun::rt::uring_gate::available_for_test() {
        run(IoBackend::Uring);
    }
}
