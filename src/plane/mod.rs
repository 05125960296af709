//! The contract between the control path and the workers: what the control path publishes
//! (snapshots and changes, through each worker's latest-wins `update::UpdateSlot`), what it hands over (data connections) and tells (`WorkerMsg`), what workers report
//! back (`WorkerEvent`), and the per-worker counters both sides read.
//!
//! Nothing here runs: these are the types both `control` and `dataplane` depend on, so that
//! neither depends on the other. This module must not name a runtime, a pump or the registry.

pub mod counters;
pub mod snapshot;
pub mod update;

use std::sync::Arc;

use snapshot::{ConnId, HostId};

/// Control path → worker.
#[derive(Debug)]
pub enum WorkerMsg {
    /// The worker's `UpdateSlot` has changes: take and apply them. Sent only when the slot goes
    /// from empty to pending, so at most one waits per worker however many changes there are.
    Update,
    /// A handshaken data connection, now idle on this worker.
    DataConn(HandedConn),
    /// Close these idle connections (their agent asked, or the host is gone).
    CloseConns(Vec<ConnId>),
    /// Give one idle connection of `host_id` (or else of any host of `cluster`) to worker `to`.
    Donate {
        cluster: Arc<str>,
        host_id: HostId,
        to: usize,
    },
    /// Stop accepting frontends (drain); sessions in flight go on.
    StopAccepting,
    /// Reload: close the frontends of the `stop` clusters and start accepting on `add`.
    Frontends {
        stop: Vec<Arc<str>>,
        add: Vec<crate::rt::FrontendSocket>,
    },
    /// Stop: close listeners and connections and return.
    Shutdown,
}

/// A data connection handed from the control path to a worker.
#[derive(Debug)]
pub struct HandedConn {
    pub conn_id: ConnId,
    pub host_id: HostId,
    pub cluster: Arc<str>,
    /// In non-blocking mode (as tokio's `into_std` leaves it): idle connections are probed and
    /// written without waiting.
    pub stream: std::net::TcpStream,
    /// A MOSN agent without the ringtun extension: no session start frame, no heartbeat.
    pub legacy: bool,
    /// The extension version the agent announced (0 for a legacy MOSN agent): framed sessions,
    /// many per connection, when it and this build both speak `FRAMED_SESSIONS_VERSION`; UDP
    /// flows are leased only to connections of `UDP_FLOWS_VERSION` or more.
    pub peer_extension_version: u32,
    /// Bytes already read after the init frame.
    pub pending: Vec<u8>,
    /// Pings sent on it and not yet answered (their pongs precede any session bytes).
    pub outstanding_pings: u32,
    /// The TLS session when the tunnel listener has TLS (`pending` is then plaintext).
    pub tls: Option<Box<crate::tls::TlsSession>>,
}

/// Worker → control path.
#[derive(Debug)]
pub enum WorkerEvent {
    /// An idle data connection was taken by a session.
    Leased { conn_id: ConnId },
    /// A framed session ended cleanly and its data connection is idle again on `worker`.
    Returned { conn_id: ConnId, worker: usize },
    /// A data connection closed (idle or after its session).
    Closed { conn_id: ConnId },
    /// Frontends of `cluster` wait on `worker`, which has no idle connection for them.
    Starving {
        worker: usize,
        cluster: Arc<str>,
        /// How many frontends wait there.
        waiting: u32,
    },
    /// An idle connection given up for worker `to` (answer to `Donate`).
    Donated { to: usize, conn: HandedConn },
    /// A `Donate` found no idle connection here any more (it was leased meanwhile).
    DonateFailed { to: usize, cluster: Arc<str> },
    /// Leases and returns batched by a worker, in the order it made them: one message, so a
    /// batch wakes the control thread once.
    Batch(Vec<WorkerEvent>),
}
