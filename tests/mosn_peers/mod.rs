//! Scripted MOSN peers for interop tests: a MOSN tunnel agent ([`MosnAgent`]) and a MOSN tunnel
//! server ([`MosnServer`]), written from MOSN's source (mosn/mosn 707d635, mosn.io/pkg v1.6.0;
//! see docs/mosn-behaviour.md for every behaviour and where MOSN does it).
//!
//! They copy MOSN's behaviour, bugs included (the stale read buffer, the dead slot after a
//! refusal, the silent hosted aside connection, immediate re-dials), not just its bytes. They use
//! only std, tokio and serde_json and write the 8-byte header by hand, so they do not share
//! ringtun's codec. Each peer runs on its own small tokio runtime, so tests stay plain blocking
//! code. They must not be used as a model of good behaviour: they are MOSN.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod agent;
mod hosting;
pub mod server;
mod slot;
pub mod wire;

#[allow(unused_imports)]
pub use agent::{mosn_agent, AgentCounts, GracefulClose, Hosting, MosnAgent};
#[allow(unused_imports)]
pub use server::{mosn_server, MosnServer, ServerCounts};

/// Declares a struct of `AtomicU64` counters and a plain copy of it (`snapshot()`).
macro_rules! counters {
    ($name:ident => $snap:ident { $($(#[$doc:meta])* $field:ident),* $(,)? }) => {
        #[derive(Default)]
        pub struct $name {
            $($(#[$doc])* pub $field: std::sync::atomic::AtomicU64,)*
        }
        /// A copy of the counters at one moment.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct $snap {
            $($(#[$doc])* pub $field: u64,)*
        }
        impl $name {
            pub fn snapshot(&self) -> $snap {
                $snap { $($field: self.$field.load(std::sync::atomic::Ordering::SeqCst),)* }
            }
        }
    };
}
pub(crate) use counters;

/// Adds one to a counter.
pub(crate) fn bump(c: &std::sync::atomic::AtomicU64) {
    c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

/// A small multi-threaded runtime of its own for one peer.
pub(crate) fn runtime(name: &str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("peer runtime")
}
