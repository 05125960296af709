//! One server that one tunnel dials: the state its slots share, and the channel its aside
//! connection takes commands from.
//!
//! A peer is `Running` until the agent stops or discovery removes the server; then it is
//! `Stopping`: the aside connection asks the server to stop leasing this agent's connections
//! (graceful close, by the connection ids the server issued), data slots serve whatever session
//! still arrives but dial no replacement, and the peer is done when its last data slot ends.
//!
//! The ids the aside connection is to name in graceful closes are coalesced in one set (bounded
//! by this peer's connections), not queued frame by frame: a server that reads slowly cannot make
//! the queue grow.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{watch, Notify};

/// Lifecycle of a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    Running,
    Stopping,
}

/// What a peer turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// Not known yet (`server_type: auto` before the first data connection's answer).
    Unknown,
    Ringtun,
    /// A MOSN tunnel server: raw sessions, a silent aside, graceful close by address.
    Mosn,
}

/// What the aside connection is asked to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AsideCmd {
    /// Stop leasing these data connections (graceful close).
    GracefulClose(Vec<u64>),
}

/// Connection ids named in one graceful close at most (keeps its payload under the server's
/// default 16 KiB frame limit even with 20-digit ids).
pub const MAX_IDS_PER_GRACEFUL_CLOSE: usize = 512;

/// Connection ids waiting to be named in a graceful close, and the wake-up of the aside slot.
#[derive(Default)]
struct PendingClose {
    ids: Mutex<BTreeSet<u64>>,
    wake: Notify,
}

/// The aside slot's end of the commands: what is pending, coalesced.
pub struct AsideCommands {
    pending: Arc<PendingClose>,
}

impl AsideCommands {
    /// The next command: the ids pending (at most [`MAX_IDS_PER_GRACEFUL_CLOSE`]), once there
    /// are any. Cancel-safe: ids are taken only when this returns.
    pub async fn recv(&mut self) -> Option<AsideCmd> {
        loop {
            if let Some(cmd) = self.try_recv() {
                return Some(cmd);
            }
            self.pending.wake.notified().await;
        }
    }

    /// The next command if one is pending now.
    pub fn try_recv(&mut self) -> Option<AsideCmd> {
        let mut ids = self.pending.ids.lock().ok()?;
        if ids.is_empty() {
            return None;
        }
        let mut taken = Vec::with_capacity(ids.len().min(MAX_IDS_PER_GRACEFUL_CLOSE));
        while taken.len() < MAX_IDS_PER_GRACEFUL_CLOSE {
            let Some(id) = ids.pop_first() else { break };
            taken.push(id);
        }
        if !ids.is_empty() {
            // More than one frame's worth: come back for the rest.
            self.pending.wake.notify_one();
        }
        Some(AsideCmd::GracefulClose(taken))
    }
}

/// Shared state of one (tunnel, server address).
pub struct Peer {
    pub tunnel: usize,
    pub addr: SocketAddr,
    /// The configured `host:port` that `addr` was resolved from (a `server_list` entry, a
    /// `dns_name` or a file lister's entry): TLS verifies the server against its host when
    /// `tls_context.server_name` is unset.
    pub name: String,
    /// Found by a dynamic lister (removed when the lister stops listing it).
    pub dynamic: bool,
    state: watch::Sender<PeerState>,
    /// Server-issued ids of this peer's data connections that are up now.
    conn_ids: Mutex<BTreeSet<u64>>,
    /// Local addresses of this peer's data connections that are up now (a MOSN server's
    /// graceful close names them).
    local_addrs: Mutex<BTreeSet<SocketAddr>>,
    kind: watch::Sender<ServerKind>,
    /// Data slots alive (regular and extra).
    pub data_slots: AtomicU32,
    /// Extra data slots alive (started by pool requests).
    pub extra_slots: AtomicU32,
    /// Ids the aside connection is to name in a graceful close.
    pending_close: Arc<PendingClose>,
}

impl Peer {
    pub fn new(tunnel: usize, addr: SocketAddr, name: String, dynamic: bool) -> Arc<Self> {
        Arc::new(Self {
            tunnel,
            addr,
            name,
            dynamic,
            state: watch::channel(PeerState::Running).0,
            conn_ids: Mutex::new(BTreeSet::new()),
            local_addrs: Mutex::new(BTreeSet::new()),
            kind: watch::channel(ServerKind::Unknown).0,
            data_slots: AtomicU32::new(0),
            extra_slots: AtomicU32::new(0),
            pending_close: Arc::default(),
        })
    }

    pub fn stopping(&self) -> bool {
        *self.state.borrow() == PeerState::Stopping
    }

    /// Watches the state (changes once, to `Stopping`).
    pub fn subscribe(&self) -> watch::Receiver<PeerState> {
        self.state.subscribe()
    }

    /// The command receiver of the aside slot.
    pub fn take_aside_commands(&self) -> Option<AsideCommands> {
        Some(AsideCommands {
            pending: self.pending_close.clone(),
        })
    }

    /// Asks the aside connection to name `ids` in a graceful close.
    fn request_close(&self, ids: impl IntoIterator<Item = u64>) {
        if let Ok(mut pending) = self.pending_close.ids.lock() {
            pending.extend(ids);
        }
        self.pending_close.wake.notify_one();
    }

    /// A data connection with this id is up. While stopping, the server is asked at once not
    /// to lease it either.
    pub fn conn_up(&self, id: Option<u64>) {
        let Some(id) = id else { return };
        if let Ok(mut ids) = self.conn_ids.lock() {
            ids.insert(id);
        }
        if self.stopping() {
            self.request_close([id]);
        }
    }

    /// The data connection with this id is gone (or leased to a session).
    pub fn conn_down(&self, id: Option<u64>) {
        let Some(id) = id else { return };
        if let Ok(mut ids) = self.conn_ids.lock() {
            ids.remove(&id);
        }
    }

    /// Asks the server not to lease this one connection (an extra connection idle too long).
    pub fn release(&self, id: u64) {
        self.request_close([id]);
    }

    /// Starts the graceful stop: no more re-dials; the server is asked to stop leasing every
    /// connection that is up.
    pub fn begin_stop(&self) {
        if self.state.send_replace(PeerState::Stopping) == PeerState::Stopping {
            return;
        }
        let ids: Vec<u64> = self
            .conn_ids
            .lock()
            .map(|ids| ids.iter().copied().collect())
            .unwrap_or_default();
        self.request_close(ids);
    }

    /// Records what the server is (from a data connection's answer, or the config).
    pub fn set_kind(&self, kind: ServerKind) {
        self.kind
            .send_if_modified(|k| std::mem::replace(k, kind) != kind);
    }

    /// What the server is, once known (waits while it is `Unknown`).
    pub async fn kind(&self) -> ServerKind {
        let mut rx = self.kind.subscribe();
        let kind = match rx.wait_for(|k| *k != ServerKind::Unknown).await {
            Ok(k) => *k,
            Err(_) => ServerKind::Unknown,
        };
        kind
    }

    /// A data connection with this local address is up (MOSN servers know it by that).
    pub fn local_up(&self, addr: SocketAddr) {
        if let Ok(mut a) = self.local_addrs.lock() {
            a.insert(addr);
        }
    }

    pub fn local_down(&self, addr: SocketAddr) {
        if let Ok(mut a) = self.local_addrs.lock() {
            a.remove(&addr);
        }
    }

    /// Local addresses of the data connections up now.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.local_addrs
            .lock()
            .map(|a| a.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Every data slot has ended.
    pub fn finished(&self) -> bool {
        self.data_slots.load(Ordering::Acquire) == 0
    }
}

/// Counts a running data slot until dropped.
pub struct SlotGuard {
    peer: Arc<Peer>,
    extra: bool,
}

impl SlotGuard {
    pub fn new(peer: Arc<Peer>, extra: bool) -> Self {
        Self::reserve(&peer, extra);
        Self { peer, extra }
    }

    /// Counts a slot before its task starts (so concurrent pool requests see it at once);
    /// the task then takes the count over with [`SlotGuard::adopt`].
    pub fn reserve(peer: &Peer, extra: bool) {
        peer.data_slots.fetch_add(1, Ordering::AcqRel);
        if extra {
            peer.extra_slots.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Takes over a count made by [`SlotGuard::reserve`].
    pub fn adopt(peer: Arc<Peer>, extra: bool) -> Self {
        Self { peer, extra }
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if self.extra {
            self.peer.extra_slots.fetch_sub(1, Ordering::AcqRel);
        }
        self.peer.data_slots.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stopping_sends_one_graceful_close_with_every_live_id() {
        let p = Peer::new(
            0,
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:1".into(),
            false,
        );
        let mut rx = p.take_aside_commands().unwrap();
        p.conn_up(Some(3));
        p.conn_up(Some(5));
        p.conn_down(Some(3));
        p.begin_stop();
        p.begin_stop();
        assert_eq!(rx.try_recv().unwrap(), AsideCmd::GracefulClose(vec![5]));
        assert!(rx.try_recv().is_none());
        // A connection that comes up while stopping is named at once.
        p.conn_up(Some(9));
        assert_eq!(rx.try_recv().unwrap(), AsideCmd::GracefulClose(vec![9]));
    }

    #[test]
    fn pending_closes_coalesce_and_split_into_bounded_frames() {
        let p = Peer::new(
            0,
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:1".into(),
            false,
        );
        let mut rx = p.take_aside_commands().unwrap();
        // The same id asked many times while the aside is busy is one entry.
        for _ in 0..10_000 {
            p.release(7);
        }
        for id in 0..1000 {
            p.release(id);
        }
        let mut named = Vec::new();
        while let Some(AsideCmd::GracefulClose(ids)) = rx.try_recv() {
            assert!(ids.len() <= MAX_IDS_PER_GRACEFUL_CLOSE);
            named.extend(ids);
        }
        assert_eq!(named, (0..1000).collect::<Vec<u64>>());
    }

    #[test]
    fn finished_when_the_last_data_slot_ends() {
        let p = Peer::new(
            0,
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:1".into(),
            false,
        );
        let a = SlotGuard::new(p.clone(), false);
        let b = SlotGuard::new(p.clone(), true);
        assert_eq!(p.extra_slots.load(Ordering::Relaxed), 1);
        drop(a);
        assert!(!p.finished());
        drop(b);
        assert!(p.finished());
    }
}
