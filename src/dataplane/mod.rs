//! The data plane: what a worker owns and does. Idle data connections and their heartbeats,
//! frontends, sessions and pumps.
//!
//! Workers share nothing mutable with each other or with the control path but the counters they
//! alone write (read by summing) and each cluster's session count (one atomic per cluster, for
//! `max_sessions` over all workers): they receive a snapshot at start, then the host changes the
//! control path publishes (each worker's latest-wins `plane::update::UpdateSlot`) and handed-off
//! sockets over a channel (`crate::plane`), and report leases and closes back.

pub mod idle;
pub mod pump;
pub mod session_timeout;
pub mod worker;
