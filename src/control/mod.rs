//! The control path: one thread that accepts agents, runs every handshake, owns the registry and
//! publishes snapshots to the workers.
//!
//! Nothing here moves session bytes; after a data connection's handshake it is handed to a worker
//! as a `std::net::TcpStream` and the control path only hears about it again when it is leased or
//! closed.

pub mod api;
pub mod auth;
pub mod handshake;
#[doc(hidden)]
pub mod harness;
pub mod path;
pub mod registry;
pub mod replay;
pub mod stats;

#[cfg(test)]
mod proptests;
