//! The control path's hand-off order under a join storm: a data connection reaches its worker's
//! update slot only after (or together with) its host's join, never before it. Agents join in
//! bursts well inside the coalescing interval, so most hand-offs happen while a publication is
//! due and take the deferred path (`Control::deferred`).

use std::collections::HashSet;
use std::io::Write;
use std::net::TcpStream as StdStream;
use std::time::{Duration, Instant};

use super::test_control::{answer, ringtun_init, TestControl};
use crate::plane::update::UpdateSlot;
use crate::plane::WorkerMsg;
use crate::protocol::{Role, Status};

const AGENTS: usize = 120;
const BURST: usize = 20;

/// Reads the init answer and checks it accepted the agent.
fn accepted(stream: &mut StdStream) {
    assert_eq!(answer(stream).status, Status::SUCCESS, "init refused");
}

/// Takes the slot as a worker does (changes first, then connections) and checks every
/// connection's host is known by then; returns the connections taken.
fn take_checked(slot: &UpdateSlot, known: &mut HashSet<u64>) -> usize {
    let pending = slot.take();
    assert!(pending.full.is_none(), "no reload in this test");
    for hosts in pending.hosts.values() {
        known.extend(hosts.values().map(|h| h.id));
    }
    for conn in &pending.conns {
        assert!(
            known.contains(&conn.host_id),
            "connection {} of host {} reached the worker before its host's join",
            conn.conn_id,
            conn.host_id
        );
    }
    pending.conns.len()
}

#[test]
fn a_connection_never_reaches_its_worker_before_its_hosts_join() {
    let mut control = TestControl::bind().run();
    let (addr, slot) = (control.addr, control.slot.clone());
    let mut known = HashSet::new();
    let mut taken = 0;
    let mut agents = Vec::with_capacity(AGENTS);
    for burst in 0..AGENTS / BURST {
        // A burst's inits all go out before any answer is read: their joins land inside one
        // coalescing interval.
        let mut streams: Vec<StdStream> = (0..BURST)
            .map(|i| {
                let mut s = StdStream::connect(addr).unwrap();
                s.set_nodelay(true).unwrap();
                s.write_all(&ringtun_init("c", burst * BURST + i, Role::Data))
                    .unwrap();
                s
            })
            .collect();
        for s in &mut streams {
            accepted(s);
            taken += take_checked(&slot, &mut known);
        }
        agents.extend(streams);
    }
    // The last hand-offs follow the last publication within one interval.
    let deadline = Instant::now() + Duration::from_secs(10);
    while taken < AGENTS {
        assert!(
            Instant::now() < deadline,
            "{taken} of {AGENTS} connections handed"
        );
        taken += take_checked(&slot, &mut known);
        // Nobody waits for a connection here, so none may be sent as a message.
        assert!(
            !matches!(control.worker_rx.try_recv(), Ok(WorkerMsg::DataConn(_))),
            "a connection no worker was owed was sent as a message"
        );
        std::thread::yield_now();
    }
    assert_eq!(known.len(), AGENTS);
    drop(control);
    drop(agents);
}
