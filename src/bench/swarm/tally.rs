//! What the emulated agents did, counted with atomics shared by every swarm thread: which agents
//! have all their connections up, handshakes and their latency, failures by reason, losses, and
//! the frames answered. Times are nanoseconds since the run started. This module does no I/O.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::protocol::Status;

use super::super::stats::{nanos, Shards};

/// Why a handshake failed. Each kind is counted apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailKind {
    /// The server answered the init with this non-success status.
    Refused(Status),
    /// Connect, TLS and init answer did not complete within the connect timeout.
    Timeout,
    /// ECONNREFUSED: nothing listens (the server is down).
    ConnectRefused,
    /// EADDRNOTAVAIL / EADDRINUSE: this source address has no free local port.
    NoLocalPort,
    /// EMFILE / ENFILE: out of file descriptors.
    FdLimit,
    /// The server closed the connection before answering the init (e.g. too many handshakes).
    Closed,
    /// Any other I/O error (connection reset, ...).
    Io,
    /// The TLS handshake failed.
    Tls,
    /// The server answered with bytes that are not the expected frame.
    Protocol,
}

impl FailKind {
    /// Number of counter slots: the kinds without a status, then statuses 0..=4 and "other".
    const SLOTS: usize = 8 + 6;

    fn slot(self) -> usize {
        match self {
            FailKind::Timeout => 0,
            FailKind::ConnectRefused => 1,
            FailKind::NoLocalPort => 2,
            FailKind::FdLimit => 3,
            FailKind::Closed => 4,
            FailKind::Io => 5,
            FailKind::Tls => 6,
            FailKind::Protocol => 7,
            FailKind::Refused(s) => 8 + usize::try_from(s.0).ok().filter(|&c| c <= 4).unwrap_or(5),
        }
    }

    /// The key of each slot in the report.
    fn slot_name(slot: usize) -> &'static str {
        [
            "timeout",
            "connect_refused",
            "no_local_port",
            "fd_limit",
            "closed_during_handshake",
            "io",
            "tls",
            "protocol",
            "refused_status_0_unknown_failure",
            "refused_status_1",
            "refused_status_2_auth_failed",
            "refused_status_3_validator_not_found",
            "refused_status_4_cluster_not_exist",
            "refused_status_other",
        ]
        .get(slot)
        .copied()
        .unwrap_or("?")
    }

    /// A refusal that retrying will not cure (wrong credential, policy or cluster).
    pub fn permanent(self) -> bool {
        matches!(
            self,
            FailKind::Refused(Status::AUTH_FAILED)
                | FailKind::Refused(Status::VALIDATOR_NOT_FOUND)
                | FailKind::Refused(Status::CLUSTER_NOT_EXIST)
        )
    }
}

/// A failed handshake: its kind and what was said about it.
#[derive(Debug)]
pub struct Failure {
    pub kind: FailKind,
    pub text: String,
}

/// Bit of an agent's state byte: one of its connections gave up.
const GAVE_UP: u8 = 0x80;

/// Counts shared by all emulated connections.
pub struct Tally {
    start: Instant,
    /// Connections each agent needs up to count as registered.
    conns_per_agent: u8,
    /// Per agent: connections up (low bits), [`GAVE_UP`].
    agents: Vec<AtomicU8>,
    agents_up: AtomicUsize,
    agents_dead: AtomicUsize,
    /// When an agent last became fully registered.
    last_complete_ns: AtomicU64,
    /// The first connection lost since [`Tally::reset_first_loss`] (0: none).
    first_loss_ns: AtomicU64,
    pub handshakes: AtomicU64,
    fails: [AtomicU64; FailKind::SLOTS],
    first_fail: Mutex<BTreeMap<usize, String>>,
    pub lost: AtomicU64,
    first_lost: Mutex<Option<String>>,
    pub pongs: AtomicU64,
    pub sessions: AtomicU64,
    pub session_bytes: AtomicU64,
    pub sessions_refused: AtomicU64,
    pub pool_requests: AtomicU64,
    pub drains: AtomicU64,
    latency: Shards,
}

/// Counts at one moment, to report a phase as the difference of two.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    pub handshakes: u64,
    pub failures: u64,
    pub by_reason: BTreeMap<&'static str, u64>,
    pub lost: u64,
}

impl Counts {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Counts) -> Counts {
        let mut by_reason = BTreeMap::new();
        for (k, v) in &self.by_reason {
            let d = v - earlier.by_reason.get(k).copied().unwrap_or(0);
            if d > 0 {
                by_reason.insert(*k, d);
            }
        }
        Counts {
            handshakes: self.handshakes - earlier.handshakes,
            failures: self.failures - earlier.failures,
            by_reason,
            lost: self.lost - earlier.lost,
        }
    }
}

impl Tally {
    pub fn new(agents: usize, conns_per_agent: u8, latency_shards: usize) -> Self {
        Self {
            start: Instant::now(),
            conns_per_agent,
            agents: (0..agents).map(|_| AtomicU8::new(0)).collect(),
            agents_up: AtomicUsize::new(0),
            agents_dead: AtomicUsize::new(0),
            last_complete_ns: AtomicU64::new(0),
            first_loss_ns: AtomicU64::new(0),
            handshakes: AtomicU64::new(0),
            fails: std::array::from_fn(|_| AtomicU64::new(0)),
            first_fail: Mutex::new(BTreeMap::new()),
            lost: AtomicU64::new(0),
            first_lost: Mutex::new(None),
            pongs: AtomicU64::new(0),
            sessions: AtomicU64::new(0),
            session_bytes: AtomicU64::new(0),
            sessions_refused: AtomicU64::new(0),
            pool_requests: AtomicU64::new(0),
            drains: AtomicU64::new(0),
            latency: Shards::new(latency_shards),
        }
    }

    fn now_ns(&self) -> u64 {
        nanos(self.start.elapsed())
    }

    /// Seconds since the run started, of a time this tally recorded.
    pub fn secs(&self, ns: u64) -> f64 {
        ns as f64 / 1e9
    }

    /// The instant the run started.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// A handshake of `agent`'s took `took`.
    pub fn handshake_ok(&self, agent: usize, took: Duration) {
        self.handshakes.fetch_add(1, Ordering::Relaxed);
        self.latency.record(agent, nanos(took));
    }

    pub fn failed(&self, f: &Failure) {
        let slot = f.kind.slot();
        self.fails[slot].fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_fail.lock().unwrap_or_else(|e| e.into_inner());
        first.entry(slot).or_insert_with(|| f.text.clone());
    }

    /// One of `agent`'s connections is handshaken.
    pub fn conn_up(&self, agent: usize) {
        let Some(a) = self.agents.get(agent) else {
            return;
        };
        let prev = a.fetch_add(1, Ordering::AcqRel);
        if (prev & !GAVE_UP) + 1 == self.conns_per_agent {
            self.agents_up.fetch_add(1, Ordering::AcqRel);
            self.last_complete_ns
                .fetch_max(self.now_ns(), Ordering::AcqRel);
        }
    }

    /// One of `agent`'s connections ended (lost, or done with its session).
    pub fn conn_down(&self, agent: usize) {
        let Some(a) = self.agents.get(agent) else {
            return;
        };
        let prev = a.fetch_sub(1, Ordering::AcqRel);
        if prev & !GAVE_UP == self.conns_per_agent {
            self.agents_up.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// A connection that was up was lost (not ended by a session).
    pub fn lost(&self, why: &str) {
        self.lost.fetch_add(1, Ordering::Relaxed);
        let _ = self.first_loss_ns.compare_exchange(
            0,
            self.now_ns().max(1),
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
        let mut first = self.first_lost.lock().unwrap_or_else(|e| e.into_inner());
        first.get_or_insert_with(|| why.to_string());
    }

    /// One of `agent`'s connections stopped trying: the agent cannot register.
    pub fn gave_up(&self, agent: usize) {
        if let Some(a) = self.agents.get(agent) {
            if a.fetch_or(GAVE_UP, Ordering::AcqRel) & GAVE_UP == 0 {
                self.agents_dead.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    /// Agents with every connection up.
    pub fn agents_up(&self) -> usize {
        self.agents_up.load(Ordering::Acquire)
    }

    /// Agents one of whose connections gave up.
    pub fn agents_dead(&self) -> usize {
        self.agents_dead.load(Ordering::Acquire)
    }

    /// Whether `agent` has every connection up.
    pub fn agent_complete(&self, agent: usize) -> bool {
        self.agents
            .get(agent)
            .is_some_and(|a| a.load(Ordering::Acquire) & !GAVE_UP == self.conns_per_agent)
    }

    pub fn last_complete_ns(&self) -> u64 {
        self.last_complete_ns.load(Ordering::Acquire)
    }

    pub fn first_loss_ns(&self) -> Option<u64> {
        Some(self.first_loss_ns.load(Ordering::Acquire)).filter(|&ns| ns > 0)
    }

    pub fn reset_first_loss(&self) {
        self.first_loss_ns.store(0, Ordering::Release);
    }

    pub fn counts(&self) -> Counts {
        let mut by_reason = BTreeMap::new();
        let mut failures = 0;
        for (slot, c) in self.fails.iter().enumerate() {
            let n = c.load(Ordering::Relaxed);
            if n > 0 {
                by_reason.insert(FailKind::slot_name(slot), n);
                failures += n;
            }
        }
        Counts {
            handshakes: self.handshakes.load(Ordering::Relaxed),
            failures,
            by_reason,
            lost: self.lost.load(Ordering::Relaxed),
        }
    }

    /// The first error text seen of each failure reason.
    pub fn first_errors(&self) -> BTreeMap<&'static str, String> {
        let first = self.first_fail.lock().unwrap_or_else(|e| e.into_inner());
        first
            .iter()
            .map(|(slot, text)| (FailKind::slot_name(*slot), text.clone()))
            .collect()
    }

    pub fn first_lost(&self) -> Option<String> {
        self.first_lost
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Handshake latencies so far.
    pub fn latency(&self) -> hdrhistogram::Histogram<u64> {
        self.latency.merged()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_counts_once_all_its_connections_are_up() {
        let t = Tally::new(2, 2, 1);
        t.conn_up(0);
        assert_eq!(t.agents_up(), 0);
        t.conn_up(0);
        assert_eq!(t.agents_up(), 1);
        assert!(t.agent_complete(0));
        t.conn_down(0);
        assert_eq!(t.agents_up(), 0);
        t.conn_up(0);
        t.gave_up(1);
        t.gave_up(1);
        assert_eq!((t.agents_up(), t.agents_dead()), (1, 1));
        t.conn_up(5); // out of range: ignored
    }

    #[test]
    fn failures_are_counted_by_reason() {
        let t = Tally::new(1, 1, 1);
        let before = t.counts();
        for kind in [
            FailKind::Timeout,
            FailKind::Timeout,
            FailKind::Refused(Status::CLUSTER_NOT_EXIST),
            FailKind::Refused(Status(77)),
        ] {
            t.failed(&Failure {
                kind,
                text: format!("{kind:?}"),
            });
        }
        let c = t.counts().since(&before);
        assert_eq!(c.failures, 4);
        assert_eq!(c.by_reason["timeout"], 2);
        assert_eq!(c.by_reason["refused_status_4_cluster_not_exist"], 1);
        assert_eq!(c.by_reason["refused_status_other"], 1);
        assert_eq!(t.first_errors()["timeout"], "Timeout");
        assert!(FailKind::Refused(Status::AUTH_FAILED).permanent());
        assert!(!FailKind::Refused(Status::UNKNOWN_FAILURE).permanent());
    }
}
