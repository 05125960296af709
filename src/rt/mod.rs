//! The runtime seam: which I/O backend a worker runs, worker threads, sockets (binding,
//! adoption on a backend, owned-buffer I/O, non-blocking probes), pipes, and the io_uring runtime.
//!
//! Everything above this module is shared by the backends; it spawns tasks (`task`) and waits on
//! timers (`time`) through this module too, never through tokio directly. A worker is one OS thread with its own
//! single-threaded runtime; connections reach it as `std::net::TcpStream`s and are adopted there.
//! This module must not know about clusters, frames or sessions.

mod accept;
mod conn;
mod connect;
mod io;
mod listen;
mod liveness;
mod pipe;
mod ready;
mod ready_accept;
mod ready_udp;
pub mod ring;
mod socket;
mod task;
pub mod time;
pub mod uring;
#[doc(hidden)]
pub mod uring_gate;
pub mod uring_splice;

pub use accept::{AcceptStop, Listener};
pub use conn::Conn;
pub use connect::connect;
pub(crate) use io::OwnedIo;
pub(crate) use io::{io_clearing, read_into_slice, read_spare, shutdown_write};
pub use io::{shutdown_both, write_all};
pub use listen::{
    bind_frontends, parse_addr, BindError, FrontendListener, FrontendSocket, FrontendSockets,
    ProxyAccept, UdpFrontendLimits,
};
pub use liveness::{data_idle_ms, set_session_keepalive, set_tunnel_liveness};
pub use pipe::{Pipe, PipePool};
pub use ready::ReadyStream;
pub use ready_accept::ReadyListener;
pub use ready_udp::ReadyUdp;
pub use socket::{
    bind_reuseport, bind_tunnel_listener, bind_udp_reuseport, poll_readable_nonblocking,
    readable_bytes, send_nonblocking, splice_nonblocking, ReadPoll, UDP_SOCKET_BUFFER_BYTES,
};
pub use task::{spawn_local, yield_now, JoinHandle};

use std::future::Future;

use crate::config::IoBackend;

/// The backend a worker actually runs on, after `auto` is resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A tokio current-thread runtime (epoll).
    Epoll,
    /// The ring runtime (`rt::ring`) with `entries` submission queue entries.
    Uring { entries: u32 },
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Epoll => "epoll",
            Backend::Uring { .. } => "io_uring",
        }
    }
}

/// Objects (buffers, pipes) a worker keeps for reuse per pool; more are freed when returned.
pub const POOL_KEEP: usize = 32;

/// Default io_uring submission queue size per worker.
pub const DEFAULT_URING_ENTRIES: u32 = crate::config::defaults::URING_ENTRIES;

/// Why a backend cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RtError {
    #[error("io_backend \"uring\" was requested but {0}")]
    UringUnavailable(String),
    #[error("cannot start worker thread {name}: {source}")]
    Spawn {
        name: String,
        source: std::io::Error,
    },
    #[error("cannot build the runtime of {name}: {source}")]
    Runtime {
        name: String,
        source: std::io::Error,
    },
}

/// Resolves the configured backend to the one workers run on, with the default ring size.
pub fn resolve(requested: IoBackend) -> Result<Backend, RtError> {
    resolve_with(requested, DEFAULT_URING_ENTRIES)
}

/// Resolves the configured backend: `auto` takes the backend the real-client suite
/// (`perf/realworld`) measures faster, io_uring where it can be used, and says which in one log
/// line; `uring` refuses to start where io_uring cannot be used. Over four runs (2026-12-02 and
/// 03) ringtun's own ring worker served 1.05–1.19× epoll's keep-alive requests through nginx
/// (16 connections) and was even or ahead on short connections (1.00–1.13×), even on bulk
/// (README, Performance).
pub fn resolve_with(requested: IoBackend, uring_entries: u32) -> Result<Backend, RtError> {
    let uring = Backend::Uring {
        entries: uring_entries,
    };
    match requested {
        IoBackend::Epoll => Ok(Backend::Epoll),
        IoBackend::Uring => uring::probe_with(uring_entries)
            .map(|()| uring)
            .map_err(RtError::UringUnavailable),
        IoBackend::Auto => match uring::probe_with(uring_entries) {
            Ok(()) => {
                tracing::info!(
                    "io_backend auto: io_uring (measured faster than epoll on real-client loads, see README Performance; set io_backend \"epoll\" to run epoll)"
                );
                Ok(uring)
            }
            Err(reason) => {
                tracing::info!("io_backend auto: epoll (io_uring cannot be used here: {reason})");
                Ok(Backend::Epoll)
            }
        },
    }
}

/// Starts a named worker thread running `make()`'s future to completion on `backend`. The
/// future may spawn local tasks (`rt::spawn_local`) and use timers (`rt::time`).
pub fn spawn_worker<F, Fut>(
    name: String,
    backend: Backend,
    pin_to: Option<usize>,
    make: F,
) -> Result<std::thread::JoinHandle<()>, RtError>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let thread_name = name.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = std::thread::Builder::new()
        .name(thread_name)
        .spawn(move || {
            if let Some(index) = pin_to {
                match pin_current_thread(index) {
                    Ok(cpu) => tracing::debug!(index, cpu, "worker pinned"),
                    Err(e) => tracing::warn!(index, "cannot pin worker to a CPU: {e}"),
                }
            }
            match backend {
                Backend::Epoll => {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    let local = tokio::task::LocalSet::new();
                    local.block_on(&runtime, make());
                }
                Backend::Uring { entries } => {
                    let runtime = match uring::runtime(entries) {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let setup = runtime.setup();
                    tracing::debug!(
                        entries = setup.entries,
                        deferred_taskrun = setup.deferred_taskrun,
                        provided_buffer_bytes = setup.provided_buffer_bytes,
                        "io_uring worker ring ready"
                    );
                    let _ = ready_tx.send(Ok(()));
                    uring::block_on(runtime, make());
                }
            }
        })
        .map_err(|source| RtError::Spawn {
            name: name.clone(),
            source,
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(source)) => Err(RtError::Runtime { name, source }),
        Err(_) => Err(RtError::Runtime {
            name,
            source: std::io::Error::other("worker thread exited during start"),
        }),
    }
}

/// Pins the calling thread to the `index`-th CPU (modulo) of those this process may run on;
/// returns the CPU number.
pub fn pin_current_thread(index: usize) -> std::io::Result<usize> {
    // SAFETY: cpu_set_t is plain data; the libc calls get valid pointers and its exact size.
    unsafe {
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut allowed) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            .filter(|c| libc::CPU_ISSET(*c, &allowed))
            .collect();
        let Some(&cpu) = cpus.get(index % cpus.len().max(1)) else {
            return Err(std::io::Error::other("no CPU is available to this process"));
        };
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut one);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(cpu)
    }
}
