//! Which connections join without a task (`join_now`) and which take the handshake task, and
//! that both end the same way. Connections made before the control path runs wait in the
//! listener's backlog with their bytes acknowledged, so which path each takes is certain.

use std::io::Write;
use std::net::TcpStream as StdStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::test_control::{
    answer, mosn_init, ringtun_init, wait_acknowledged, wait_read_by_server, TestControl,
};
use super::HandshakeOutcome;
use crate::protocol::{self, Frame, Ping, Role, Status};

/// Connects and writes `bytes`, acknowledged by the server's kernel before returning.
fn sent(control: &TestControl, bytes: &[u8]) -> StdStream {
    let mut s = StdStream::connect(control.addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    wait_acknowledged(&s);
    s
}

/// Waits until the worker's slot has held `n` connections; returns their pending bytes.
fn handed(control: &TestControl, n: usize) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut pending = Vec::new();
    while pending.len() < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} connections handed",
            pending.len()
        );
        pending.extend(control.slot.take().conns.into_iter().map(|c| c.pending));
        std::thread::yield_now();
    }
    pending
}

fn inline(control: &TestControl) -> u64 {
    control
        .stats
        .handshakes_inline_total
        .load(Ordering::Relaxed)
}

/// Waits until the control path has counted `n` successful handshakes (counted just after each
/// answer is written), then says how many of them joined without a task.
fn inline_of_successes(control: &TestControl, n: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    while control.stats.handshakes(HandshakeOutcome::Success) < n {
        assert!(
            Instant::now() < deadline,
            "fewer than {n} handshakes counted"
        );
        std::thread::yield_now();
    }
    assert_eq!(control.stats.handshakes(HandshakeOutcome::Success), n);
    inline(control)
}

#[test]
fn a_data_init_waiting_at_accept_joins_without_a_task_and_keeps_what_followed_it() {
    let control = TestControl::bind();
    let ping = protocol::encode_to_vec(&Frame::Ping(Ping { seq: 7 })).unwrap();
    let mut with_ping = ringtun_init("c", 1, Role::Data);
    with_ping.extend_from_slice(&ping);
    let mut agents = vec![
        sent(&control, &with_ping),
        sent(&control, &ringtun_init("c", 2, Role::Data)),
    ];
    let control = control.run();
    for a in &mut agents {
        let r = answer(a);
        assert_eq!(r.status, Status::SUCCESS);
        assert!(
            r.connection_id.is_some(),
            "a ringtun agent gets its connection id"
        );
    }
    let mut pending = handed(&control, 2);
    pending.sort();
    assert_eq!(
        pending,
        vec![Vec::new(), ping],
        "the bytes after the init reach the worker"
    );
    assert_eq!(inline_of_successes(&control, 2), 2);
}

#[test]
fn an_init_cut_short_at_accept_is_read_on_by_the_handshake_task() {
    let control = TestControl::bind();
    let init = ringtun_init("c", 1, Role::Data);
    let mut agent = sent(&control, &init[..5]);
    let control = control.run();
    // The rest only once the first part was read at accept.
    wait_read_by_server(&agent);
    agent.write_all(&init[5..]).unwrap();
    assert_eq!(answer(&mut agent).status, Status::SUCCESS);
    handed(&control, 1);
    assert_eq!(
        inline_of_successes(&control, 1),
        0,
        "an incomplete init takes the handshake task"
    );
}

#[test]
fn mosn_and_aside_inits_take_the_handshake_task() {
    let control = TestControl::bind();
    let mut mosn = sent(&control, &mosn_init("c", 1));
    let mut aside = sent(&control, &ringtun_init("c", 2, Role::Aside));
    let control = control.run();
    let r = answer(&mut mosn);
    assert_eq!(r.status, Status::SUCCESS);
    assert_eq!(
        r.connection_id, None,
        "a MOSN agent gets exactly {{\"status\":1}}"
    );
    assert_eq!(answer(&mut aside).status, Status::SUCCESS);
    assert_eq!(inline_of_successes(&control, 2), 0);
}

#[test]
fn a_refused_init_waiting_at_accept_is_answered_and_closed() {
    let control = TestControl::bind();
    let mut agent = sent(&control, &ringtun_init("nope", 1, Role::Data));
    let mut good = sent(&control, &ringtun_init("c", 2, Role::Data));
    let control = control.run();
    assert_eq!(answer(&mut agent).status, Status::CLUSTER_NOT_EXIST);
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut agent, &mut rest);
    assert!(rest.is_empty(), "closed after the refusal");
    assert_eq!(
        answer(&mut good).status,
        Status::SUCCESS,
        "the next agent is served"
    );
    assert_eq!(
        control.stats.handshakes(HandshakeOutcome::ClusterNotExist),
        1
    );
    assert_eq!(inline_of_successes(&control, 1), 1);
}

#[test]
fn a_refused_inline_join_gives_its_handshake_slot_back_once_answered() {
    let control = TestControl::bind()
        .configure(|c| c.tunnel_listener.max_handshakes_per_ip = 1)
        .run();
    for agent in 0..3 {
        // Each refusal holds the address's only slot while it is sent, then frees it: the
        // next connection from the same address is admitted and answered, not closed at accept.
        let mut refused = StdStream::connect(control.addr).unwrap();
        refused
            .write_all(&ringtun_init("nope", agent, Role::Data))
            .unwrap();
        assert_eq!(answer(&mut refused).status, Status::CLUSTER_NOT_EXIST);
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut refused, &mut rest);
    }
    let mut good = StdStream::connect(control.addr).unwrap();
    good.write_all(&ringtun_init("c", 9, Role::Data)).unwrap();
    assert_eq!(answer(&mut good).status, Status::SUCCESS);
    assert_eq!(
        control.stats.handshakes(HandshakeOutcome::OverloadedPerIp),
        0
    );
}
