//! ringtun: a reverse tunnel for cloud–edge networks.
//!
//! An agent at the edge dials out to cloud servers; clients that reach a server's frontend port are
//! carried over those agent-initiated connections to the edge backend. `docs/architecture.md`
//! describes the wire protocol, the lifecycles, the threads and the layers of these modules
//! (each depends only on lower layers; `tests/layers.rs` keeps it so).

pub mod admin;
pub mod agent;
pub mod balancer;
pub mod bench;
pub mod config;
pub mod control;
pub mod credential;
pub mod dataplane;
pub mod demo;
pub mod echo;
pub mod log_limit;
pub mod metrics;
pub mod plane;
pub mod protocol;
pub mod reload;
pub mod rt;
pub mod secret;
pub mod server;
pub mod tls;
