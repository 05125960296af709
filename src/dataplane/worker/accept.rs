//! Frontend accept loops: one per frontend listener, on the worker's backend, each accepted
//! client served in its own task inside a session span (after its PROXY header, on a frontend
//! that accepts one: `proxy`). Stopped for a drain or a reload through `rt::AcceptStop`, which
//! knows how each backend's accept is ended safely.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tracing::{warn, Instrument};

use super::proxy::Client;
use super::Worker;
use crate::plane::counters::bump;
use crate::rt::{AcceptStop, Conn, FrontendListener, FrontendSocket, Listener, ProxyAccept};

/// A running accept loop of one frontend listener.
pub(super) struct AcceptLoop {
    pub(super) cluster: Arc<str>,
    task: crate::rt::JoinHandle<()>,
    stop: AcceptStop,
    /// Set before the listener is stopped, so the loop knows its accept error means "stop".
    stopped: Rc<Cell<bool>>,
}

impl AcceptLoop {
    pub(super) fn stop(self) {
        self.stopped.set(true);
        self.stop.stop(self.task);
    }
}

impl Worker {
    /// Starts an accept loop per listener.
    pub(super) fn start_accepting(
        self: &Rc<Self>,
        listeners: Vec<FrontendSocket>,
        into: &mut Vec<AcceptLoop>,
    ) {
        for FrontendSocket {
            cluster,
            listener,
            proxy,
        } in listeners
        {
            let listener = match listener {
                FrontendListener::Tcp(listener) => listener,
                FrontendListener::Udp { socket, limits } => {
                    // Readiness on both backends: aborting its task is a safe stop.
                    if let Some(task) = self.start_udp(cluster.clone(), socket, limits) {
                        into.push(AcceptLoop {
                            cluster,
                            task,
                            stop: AcceptStop::abort(),
                            stopped: Rc::new(Cell::new(false)),
                        });
                    }
                    continue;
                }
            };
            // Every connection accepted on a listener bound to one address has that address
            // as its own: known here, it costs no `getsockname` per session.
            let bound = listener.local_addr().ok();
            let known_local = bound.filter(|a| !a.ip().is_unspecified());
            match Listener::from_std(self.backend, listener) {
                Ok((listener, stop)) => {
                    let stopped = Rc::new(Cell::new(false));
                    let task = crate::rt::spawn_local(self.clone().accept_loop(
                        cluster.clone(),
                        (listener, known_local),
                        proxy,
                        stopped.clone(),
                    ));
                    into.push(AcceptLoop {
                        cluster,
                        task,
                        stop,
                        stopped,
                    });
                }
                Err(e) => {
                    warn!(worker = self.index, %cluster, error = %e, "cannot adopt frontend listener")
                }
            }
        }
    }

    /// Accepts until stopped (`AcceptStop`: aborted on epoll; on io_uring it ends when its
    /// listener is shut down).
    /// `known_local`: the address of every connection it accepts, when the listener is bound
    /// to one.
    async fn accept_loop(
        self: Rc<Self>,
        cluster: Arc<str>,
        (listener, known_local): (Listener, Option<SocketAddr>),
        proxy: Option<Arc<ProxyAccept>>,
        stopped: Rc<Cell<bool>>,
    ) {
        loop {
            if stopped.get() {
                return;
            }
            match listener.accept().await {
                Ok((frontend, client)) => match &proxy {
                    None => self.accepted(&cluster, frontend, Client::direct(client, known_local)),
                    Some(policy) => {
                        bump(&self.counters.frontends_accepted_total);
                        crate::rt::spawn_local(self.clone().serve_proxied(
                            cluster.clone(),
                            frontend,
                            client,
                            policy.clone(),
                        ));
                    }
                },
                Err(e) => {
                    if stopped.get() || !self.accepting.get() {
                        return;
                    }
                    self.accept_failed(&cluster, &e).await;
                }
            }
        }
    }

    /// Serves an accepted frontend in its own task, inside a session span.
    fn accepted(self: &Rc<Self>, cluster: &Arc<str>, frontend: Conn, client: Client) {
        bump(&self.counters.frontends_accepted_total);
        let span = tracing::debug_span!("session", worker = self.index, %cluster,
            client = %client.addr, id = tracing::field::Empty);
        crate::rt::spawn_local(
            self.clone()
                .serve_frontend(cluster.clone(), frontend, client)
                .instrument(span),
        );
    }

    /// Out of descriptors and similar: log (rate-limited) and back off instead of spinning.
    async fn accept_failed(&self, cluster: &str, e: &io::Error) {
        crate::log_limited!(
            warn!(worker = self.index, %cluster, error = %e, "frontend accept failed")
        );
        crate::rt::time::sleep(Duration::from_millis(50)).await;
    }
}
