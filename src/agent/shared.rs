//! State shared by every slot and worker thread of the agent: its config, identity, weight,
//! counters, peers and the worker task queues. Read-only but for atomics and the peer list;
//! nothing outside the agent reaches its fields (the admin handlers live beside it).

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::{mpsc, watch};
use tracing::{debug, info};

use super::peer::{self, Peer};
use super::slot::SlotSpec;
use super::stats::{self, AgentStats};
use super::{dial, Task};
use crate::config::{AgentConfig, HostingListenerConfig};
use crate::protocol::Role;
use crate::rt;

/// State shared by every slot of the agent (read-only but for the atomics).
pub struct Shared {
    pub(super) config: AgentConfig,
    /// The I/O backend sessions run on.
    pub(super) backend: rt::Backend,
    pub(super) agent_id: String,
    /// One set per worker thread (index = worker), each written only by its worker; readers
    /// sum them.
    pub(super) stats: Vec<Arc<AgentStats>>,
    /// Per `config.tunnels` entry: its TLS client config, loaded once at start.
    pub(super) tls: Vec<Option<dial::TlsDial>>,
    /// False once the agent is stopping (admin `/ready`).
    pub(super) running: AtomicBool,
    /// The weight announced in inits and weight updates; aside connections watch it.
    pub(super) weight: watch::Sender<i64>,
    /// The same weight for inits (an atomic load per dial instead of the watch's lock).
    pub(super) weight_now: AtomicI64,
    /// Every peer ever started (stopped ones stay, finished).
    pub(super) peers: Mutex<Vec<Arc<Peer>>>,
    /// Task queues of the worker threads, to start slots on.
    pub(super) tasks: OnceLock<Vec<mpsc::UnboundedSender<Task>>>,
    pub(super) next_worker: AtomicUsize,
}

impl Shared {
    /// The weight to announce now.
    pub fn weight(&self) -> i64 {
        self.weight_now.load(Ordering::Relaxed)
    }

    /// Changes the weight announced to every server (a weight update on each aside).
    pub fn set_weight(&self, weight: i64) {
        self.weight_now.store(weight, Ordering::Relaxed);
        self.weight.send_replace(weight);
    }

    /// Every worker's counters, summed.
    pub fn status(&self) -> stats::AgentStatus {
        stats::AgentStatus::sum(self.stats.iter().map(|s| &**s))
    }

    /// (data, aside) connections of `tunnel` up now, over every worker.
    pub fn tunnel_connections(&self, tunnel: usize) -> (u64, u64) {
        stats::tunnel_connections(self.stats.iter().map(|s| &**s), tunnel)
    }

    /// True when every enabled tunnel has at least one data connection up.
    pub fn ready(&self) -> bool {
        self.running.load(Ordering::Acquire)
            && self
                .config
                .tunnels
                .iter()
                .enumerate()
                .filter(|(_, t)| t.enable)
                .all(|(i, _)| self.tunnel_connections(i).0 > 0)
    }

    /// Starts a slot on the next worker thread.
    pub(super) fn spawn_slot(&self, spec: SlotSpec) {
        let Some(tasks) = self.tasks.get() else {
            return;
        };
        let n = self.next_worker.fetch_add(1, Ordering::Relaxed);
        if let Some(tx) = tasks.get(n % tasks.len().max(1)) {
            let _ = tx.send(Task::Slot(spec));
        }
    }

    /// Starts a peer's `connection_num` data slots and its aside slot.
    pub(super) fn start_peer(&self, peer: Arc<Peer>) {
        let Some(t) = self.config.tunnels.get(peer.tunnel) else {
            return;
        };
        info!(cluster = %t.cluster, peer = %peer.addr, connections = t.connection_num, dynamic = peer.dynamic, "dialling server");
        if let Ok(mut peers) = self.peers.lock() {
            forget_gone(&mut peers);
            peers.push(peer.clone());
        }
        for index in 0..t.connection_num {
            self.spawn_slot(SlotSpec {
                peer: peer.clone(),
                role: Role::Data,
                index,
                extra: false,
            });
        }
        self.spawn_slot(SlotSpec {
            peer,
            role: Role::Aside,
            index: 0,
            extra: false,
        });
    }

    /// A server asked for `count` more data connections: open up to `max_connection_num` in all.
    pub fn extra_slots(&self, peer: &Arc<Peer>, count: u32) {
        let Some(t) = self.config.tunnels.get(peer.tunnel) else {
            return;
        };
        if peer.stopping() {
            return;
        }
        let alive = peer.data_slots.load(Ordering::Acquire);
        let room = t.max_connections().saturating_sub(alive);
        let start = count.min(room);
        debug!(peer = %peer.addr, asked = count, starting = start, "pool request");
        for index in 0..start {
            // Counted now, not when the task runs, so the next request sees these.
            peer::SlotGuard::reserve(peer, true);
            self.spawn_slot(SlotSpec {
                peer: peer.clone(),
                role: Role::Data,
                index,
                extra: true,
            });
        }
    }

    /// Peers that are not stopping, of one tunnel. (Discovery asks every refresh: peers that
    /// are gone are forgotten here too.)
    pub fn running_peers(&self, tunnel: usize) -> Vec<Arc<Peer>> {
        self.peers
            .lock()
            .map(|mut p| {
                forget_gone(&mut p);
                p.iter()
                    .filter(|p| p.tunnel == tunnel && !p.stopping())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(super) fn listener_of(&self, tunnel: usize) -> Option<&HostingListenerConfig> {
        let name = &self.config.tunnels.get(tunnel)?.hosting_listener;
        self.config.listeners.iter().find(|l| &l.name == name)
    }
}

/// Drops peers that stopped and whose last data slot ended: with a dynamic lister, servers come
/// and go (pod IPs), and the list must not keep every one ever seen.
fn forget_gone(peers: &mut Vec<Arc<Peer>>) {
    peers.retain(|p| !(p.stopping() && p.finished()));
}
