//! A UDP cluster's frontends on one worker: one SO_REUSEPORT datagram socket per frontend, and
//! its flows. A **flow** is one client address on one frontend; its first datagram creates it
//! (`flow.rs`: lease a data connection of an agent speaking extension version 2 or more, send
//! `SessionStart{"protocol":"udp"}`, then length-framed datagrams both ways; on a framed
//! connection, `framed_flow.rs`: session records, the connection pooled again after the flow).
//! Replies go back to that client from the same frontend socket.
//!
//! The frontend loop never waits on a flow: it hands each datagram to its flow's bounded queue
//! (the oldest dropped and counted when full) and goes on, so no flow waits behind another.
//! Limits, each dropping and counting the datagram while existing flows go on: datagram size
//! (`max_udp_datagram_bytes`), flows per client IP on this worker (`max_udp_flows_per_client_ip`)
//! and per cluster (`max_sessions`, a flow is a session).
//!
//! Runtime: the socket is an `rt::ReadyUdp` (readiness, non-blocking `recv_from`: tokio on epoll,
//! a multishot poll on the worker's ring on io_uring); readiness keeps no read in flight, so the
//! loop can be stopped by aborting its task on either backend (the io_uring rule, never drop an
//! operation in flight, does not arise), and one receive buffer serves every flow. Flows' data
//! connections likewise go through `tls::Channel` (readiness, plaintext or TLS).
//!
//! When the receive loop is stopped (a drain, or a reload that changed or removed the cluster)
//! its flows end with it (their data connections closed), so the old socket closes at once and a
//! rebound frontend's socket gets every datagram.
//!
//! Must not: hold a `RefCell` borrow across an `.await`, block the frontend loop on a flow, or
//! keep a datagram beyond a flow's queue bound.

mod flow;
mod framed_flow;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;

use crate::rt::ReadyUdp;
use tokio::sync::Notify;
use tracing::{trace, warn};

use super::Worker;
use crate::plane::counters::{add, bump};
use crate::rt::UdpFrontendLimits;

/// One flow's state shared by the frontend loop (which fills its queue) and its task.
pub(super) struct FlowShared {
    /// Client datagrams not yet written to the data connection, oldest first.
    queue: RefCell<VecDeque<Vec<u8>>>,
    /// Signalled when the queue gets a datagram.
    wake: Notify,
    /// Set by the flow task when it ends (or sent its END): the frontend loop starts a new flow
    /// instead.
    ended: Cell<bool>,
}

/// One frontend's flows, by client address, and how many each client IP holds.
#[derive(Default)]
pub(super) struct FlowTable {
    flows: HashMap<SocketAddr, Rc<FlowShared>>,
    per_ip: HashMap<IpAddr, u32>,
}

impl FlowTable {
    /// Forgets `client`'s flow (if it is still `flow`).
    fn remove(&mut self, client: SocketAddr, flow: &Rc<FlowShared>) {
        if self.flows.get(&client).is_some_and(|f| Rc::ptr_eq(f, flow)) {
            self.flows.remove(&client);
            if let Some(n) = self.per_ip.get_mut(&client.ip()) {
                *n -= 1;
                if *n == 0 {
                    self.per_ip.remove(&client.ip());
                }
            }
        }
    }
}

/// Most client datagrams a UDP frontend takes in one wake before other tasks run.
const UDP_DATAGRAMS_PER_TURN: usize = 64;

/// One UDP frontend on this worker.
pub(super) struct UdpFrontend {
    pub(super) cluster: Arc<str>,
    pub(super) socket: ReadyUdp,
    pub(super) limits: Arc<UdpFrontendLimits>,
    pub(super) local_addr: Option<SocketAddr>,
    pub(super) table: RefCell<FlowTable>,
    /// Set, and `closing` signalled, when the receive loop stops (drain, reload): its flows end
    /// too, so the socket closes with them and a rebound frontend gets every datagram.
    pub(super) closed: Cell<bool>,
    pub(super) closing: Notify,
}

/// Owned by the receive loop's future: dropped when its task is aborted, it ends the flows.
struct EndFlowsOnDrop(Rc<UdpFrontend>);

impl Drop for EndFlowsOnDrop {
    fn drop(&mut self) {
        self.0.closed.set(true);
        self.0.closing.notify_waiters();
    }
}

impl Worker {
    /// Adopts a UDP frontend socket and starts its receive loop; `None` when the socket cannot
    /// be adopted (logged).
    pub(super) fn start_udp(
        self: &Rc<Self>,
        cluster: Arc<str>,
        socket: std::net::UdpSocket,
        limits: Arc<UdpFrontendLimits>,
    ) -> Option<crate::rt::JoinHandle<()>> {
        let socket = match ReadyUdp::from_std(socket) {
            Ok(s) => s,
            Err(e) => {
                warn!(worker = self.index, %cluster, error = %e, "cannot adopt UDP frontend socket");
                return None;
            }
        };
        let frontend = Rc::new(UdpFrontend {
            cluster,
            local_addr: socket.local_addr().ok(),
            socket,
            limits,
            table: RefCell::new(FlowTable::default()),
            closed: Cell::new(false),
            closing: Notify::new(),
        });
        Some(crate::rt::spawn_local(
            self.clone().udp_receive_loop(frontend),
        ))
    }

    /// Receives client datagrams until its task is aborted (a drain or a reload). A datagram one
    /// byte over the limit is enough to know it is too long, so the buffer is limit + 1. At
    /// most `UDP_DATAGRAMS_PER_TURN` are taken per wake, so a flood cannot hold the worker.
    async fn udp_receive_loop(self: Rc<Self>, frontend: Rc<UdpFrontend>) {
        let _end_flows = EndFlowsOnDrop(frontend.clone());
        let max = frontend.limits.max_datagram_bytes;
        let mut buf = vec![0u8; max + 1];
        loop {
            let failed = match frontend.socket.readable().await {
                Err(e) => Some(e),
                Ok(()) => {
                    let mut taken = 0;
                    let (got, failed) = frontend.socket.recv_now(&mut buf, |datagram, client| {
                        taken += 1;
                        if datagram.len() > max {
                            bump(&self.counters.udp_dropped_oversized_total);
                            trace!(%client, "oversized datagram dropped");
                        } else {
                            self.udp_datagram(&frontend, client, datagram);
                        }
                        taken < UDP_DATAGRAMS_PER_TURN
                    });
                    if got >= UDP_DATAGRAMS_PER_TURN {
                        // A flood is taken in slices: the worker's other tasks run between.
                        crate::rt::yield_now().await;
                    }
                    failed
                }
            };
            if let Some(e) = failed {
                // ICMP errors of earlier sends (ECONNREFUSED) and the like: not fatal for a
                // datagram socket.
                crate::log_limited!(
                    debug!(worker = self.index, cluster = %frontend.cluster, error = %e, "UDP frontend receive failed")
                );
                if !is_transient(&e) {
                    crate::rt::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// One client datagram: to its flow's queue, or the first of a new flow.
    fn udp_datagram(self: &Rc<Self>, frontend: &Rc<UdpFrontend>, client: SocketAddr, data: &[u8]) {
        let existing = frontend
            .table
            .borrow()
            .flows
            .get(&client)
            .filter(|f| !f.ended.get())
            .cloned();
        let flow = match existing {
            Some(flow) => flow,
            None => match self.new_flow(frontend, client) {
                Some(flow) => flow,
                None => return,
            },
        };
        let mut queue = flow.queue.borrow_mut();
        if queue.len() >= frontend.limits.max_queued_datagrams_per_flow {
            queue.pop_front();
            bump(&self.counters.udp_dropped_queue_full_total);
        }
        queue.push_back(data.to_vec());
        drop(queue);
        flow.wake.notify_one();
    }

    /// Creates `client`'s flow and spawns its task, within the limits (else counts the drop).
    fn new_flow(
        self: &Rc<Self>,
        frontend: &Rc<UdpFrontend>,
        client: SocketAddr,
    ) -> Option<Rc<FlowShared>> {
        {
            let mut table = frontend.table.borrow_mut();
            // A flow that ended but was not removed yet (its task is finishing).
            if let Some(old) = table.flows.get(&client).cloned() {
                table.remove(client, &old);
            }
            let held = table.per_ip.get(&client.ip()).copied().unwrap_or(0);
            if held >= frontend.limits.max_flows_per_client_ip {
                bump(&self.counters.udp_dropped_client_ip_flows_total);
                crate::log_limited!(
                    warn!(worker = self.index, cluster = %frontend.cluster, %client,
                    "UDP datagram dropped: its client IP holds max_udp_flows_per_client_ip flows")
                );
                return None;
            }
        }
        let Some(slot) = self.session_slot(&frontend.cluster) else {
            bump(&self.counters.udp_dropped_over_limit_total);
            bump(&self.counters.sessions_over_limit_total);
            crate::log_limited!(
                warn!(worker = self.index, cluster = %frontend.cluster, %client,
                "UDP datagram dropped: the cluster is at max_sessions")
            );
            return None;
        };
        let flow = Rc::new(FlowShared {
            queue: RefCell::new(VecDeque::new()),
            wake: Notify::new(),
            ended: Cell::new(false),
        });
        {
            let mut table = frontend.table.borrow_mut();
            table.flows.insert(client, flow.clone());
            *table.per_ip.entry(client.ip()).or_insert(0) += 1;
        }
        add(&self.counters.active_udp_flows, 1);
        let span = tracing::debug_span!("udp_flow", worker = self.index, cluster = %frontend.cluster, %client, id = tracing::field::Empty);
        crate::rt::spawn_local(tracing::Instrument::instrument(
            self.clone()
                .run_flow(frontend.clone(), client, flow.clone(), slot),
            span,
        ));
        Some(flow)
    }
}

/// Receive errors that say nothing about the socket itself (an ICMP answer to an earlier send).
fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::Interrupted
            | std::io::ErrorKind::WouldBlock
    )
}
