//! Errors of `ringtun bench`. A run that completes but finds bad data (a corrupted byte, a dead idle
//! session) is not an error here: it is a failure listed in the run's [`Outcome`](super::Outcome),
//! so the result is still printed. These errors are for runs that could not be carried out.

use std::io;
use std::net::SocketAddr;

/// Why a bench run could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("--target ADDR is required for `bench {0}`")]
    MissingTarget(&'static str),
    #[error("cannot resolve {addr:?}: {reason}")]
    Resolve { addr: String, reason: String },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("cannot build the tokio runtime: {0}")]
    Runtime(#[source] io::Error),
    #[error("connecting to {addr} failed: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("connecting to {addr} timed out after {ms} ms")]
    ConnectTimeout { addr: SocketAddr, ms: u64 },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{what} timed out after {ms} ms")]
    Timeout { what: &'static str, ms: u64 },
    #[error("the target closed the connection during {what}")]
    Closed { what: &'static str },
    #[error("{0}")]
    Protocol(String),
    #[error("cannot read memory of pid {pid}: {reason}")]
    Pid { pid: u32, reason: String },
    #[error("cannot write plot {path}: {source}")]
    Plot {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the result: {0}")]
    Output(#[source] io::Error),
    #[error("the run failed: {0}")]
    Failed(String),
}
