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
//!
//! A session takes no lock shared between workers: each data slot registers one [`ConnCell`]
//! with its peer when it starts (a lock, once per slot, not per session) and then records the
//! id of the connection it has up in it with a plain atomic store. `begin_stop` raises the
//! `stopping` flag and then reads every cell; `conn_up` stores its id and then reads the flag
//! (both sequentially consistent), so a connection coming up during a stop is named either by
//! the stop or by itself (twice is harmless: the pending set coalesces).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
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
    /// Mirrors `state` for the session path (an atomic load, no lock).
    stopping: AtomicBool,
    /// One cell per running data slot: the id and local address of its connection up now.
    cells: Mutex<Vec<Arc<ConnCell>>>,
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
            stopping: AtomicBool::new(false),
            cells: Mutex::new(Vec::new()),
            kind: watch::channel(ServerKind::Unknown).0,
            data_slots: AtomicU32::new(0),
            extra_slots: AtomicU32::new(0),
            pending_close: Arc::default(),
        })
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
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

    /// A data connection with this id is up on `slot`'s cell. While stopping, the server is
    /// asked at once not to lease it either.
    pub fn conn_up(&self, slot: &ConnCell, id: Option<u64>) {
        let Some(id) = id.filter(|&id| id != NO_ID) else {
            return;
        };
        slot.id.store(id, Ordering::SeqCst);
        if self.stopping() {
            self.request_close([id]);
        }
    }

    /// `slot`'s data connection is gone (or leased to a session).
    pub fn conn_down(&self, slot: &ConnCell) {
        slot.id.store(NO_ID, Ordering::SeqCst);
    }

    /// Asks the server not to lease this one connection (an extra connection idle too long).
    pub fn release(&self, id: u64) {
        self.request_close([id]);
    }

    /// Starts the graceful stop: no more re-dials; the server is asked to stop leasing every
    /// connection that is up.
    pub fn begin_stop(&self) {
        if self.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        self.state.send_replace(PeerState::Stopping);
        let ids: Vec<u64> = self
            .cells
            .lock()
            .map(|cells| {
                cells
                    .iter()
                    .map(|c| c.id.load(Ordering::SeqCst))
                    .filter(|&id| id != NO_ID)
                    .collect()
            })
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

    /// A data connection with this local address is up on `slot` (MOSN servers know it by
    /// that). The cell's own lock: only its slot and a stop ever take it.
    pub fn local_up(&self, slot: &ConnCell, addr: SocketAddr) {
        if let Ok(mut a) = slot.local.lock() {
            *a = Some(addr);
        }
    }

    pub fn local_down(&self, slot: &ConnCell) {
        if let Ok(mut a) = slot.local.lock() {
            *a = None;
        }
    }

    /// Local addresses of the data connections up now.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        let Ok(cells) = self.cells.lock() else {
            return Vec::new();
        };
        let mut addrs: Vec<SocketAddr> = cells
            .iter()
            .filter_map(|c| c.local.lock().ok().and_then(|a| *a))
            .collect();
        addrs.sort();
        addrs
    }

    /// Registers a data slot's cell (once per slot, when it starts).
    fn add_cell(&self) -> Arc<ConnCell> {
        let cell = Arc::new(ConnCell::default());
        if let Ok(mut cells) = self.cells.lock() {
            cells.push(cell.clone());
        }
        cell
    }

    fn remove_cell(&self, cell: &Arc<ConnCell>) {
        if let Ok(mut cells) = self.cells.lock() {
            cells.retain(|c| !Arc::ptr_eq(c, cell));
        }
    }

    /// Every data slot has ended.
    pub fn finished(&self) -> bool {
        self.data_slots.load(Ordering::Acquire) == 0
    }
}

/// The id no connection has: a ringtun server issues connection ids from 1.
const NO_ID: u64 = 0;

/// One data slot's connection as its peer sees it: the server-issued id of the connection it
/// has up (`NO_ID`: none) and, behind a MOSN server, its local address.
#[derive(Debug, Default)]
pub struct ConnCell {
    id: AtomicU64,
    local: Mutex<Option<SocketAddr>>,
}

/// Counts a running data slot until dropped, and holds its [`ConnCell`].
pub struct SlotGuard {
    peer: Arc<Peer>,
    extra: bool,
    cell: Arc<ConnCell>,
}

impl SlotGuard {
    pub fn new(peer: Arc<Peer>, extra: bool) -> Self {
        Self::reserve(&peer, extra);
        Self::adopt(peer, extra)
    }

    /// This slot's cell.
    pub fn cell(&self) -> &ConnCell {
        &self.cell
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
        let cell = peer.add_cell();
        Self { peer, extra, cell }
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.peer.remove_cell(&self.cell);
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
        let (a, b, c) = (
            SlotGuard::new(p.clone(), false),
            SlotGuard::new(p.clone(), false),
            SlotGuard::new(p.clone(), false),
        );
        p.conn_up(a.cell(), Some(3));
        p.conn_up(b.cell(), Some(5));
        p.conn_down(a.cell());
        p.conn_up(c.cell(), Some(7));
        drop(c);
        p.begin_stop();
        p.begin_stop();
        assert_eq!(rx.try_recv().unwrap(), AsideCmd::GracefulClose(vec![5]));
        assert!(rx.try_recv().is_none());
        // A connection that comes up while stopping is named at once.
        p.conn_up(a.cell(), Some(9));
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
    fn a_stop_racing_connections_coming_up_names_every_one() {
        // Workers bring connections up while another thread stops the peer: every id up when
        // the stop is over is named, by the stop or by its own `conn_up`.
        for _ in 0..200 {
            let p = Peer::new(
                0,
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:1".into(),
                false,
            );
            let mut rx = p.take_aside_commands().unwrap();
            let slots: Vec<SlotGuard> = (0..4).map(|_| SlotGuard::new(p.clone(), false)).collect();
            let slots = Arc::new(slots);
            let workers: Vec<_> = (0..2u64)
                .map(|w| {
                    let (p, slots) = (p.clone(), slots.clone());
                    std::thread::spawn(move || {
                        for (i, s) in slots.iter().enumerate().skip(w as usize * 2).take(2) {
                            p.conn_up(s.cell(), Some(100 + i as u64));
                        }
                    })
                })
                .collect();
            p.begin_stop();
            for w in workers {
                w.join().unwrap();
            }
            let mut named = BTreeSet::new();
            while let Some(AsideCmd::GracefulClose(ids)) = rx.try_recv() {
                named.extend(ids);
            }
            assert_eq!(named, (100..104).collect::<BTreeSet<u64>>());
        }
    }

    #[test]
    fn local_addresses_are_those_of_live_slots() {
        let p = Peer::new(
            0,
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:1".into(),
            false,
        );
        let (a, b) = (
            SlotGuard::new(p.clone(), false),
            SlotGuard::new(p.clone(), false),
        );
        p.local_up(a.cell(), "127.0.0.1:5001".parse().unwrap());
        p.local_up(b.cell(), "127.0.0.1:5000".parse().unwrap());
        assert_eq!(
            p.local_addrs(),
            vec![
                "127.0.0.1:5000".parse().unwrap(),
                "127.0.0.1:5001".parse().unwrap()
            ]
        );
        p.local_down(b.cell());
        drop(a);
        assert!(p.local_addrs().is_empty());
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
