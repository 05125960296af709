//! Pure host selection over a worker's snapshot.
//!
//! A [`Balancer`] is built from a cluster's hosts (stable key + weight, by host index; an index
//! whose weight is 0 is a vacant or drained slot), kept up to date with [`Balancer::update`] as
//! hosts join, leave or change weight, and answers [`Balancer::pick`]: which host a new session
//! should use, among the hosts that have an idle data connection on this worker ([`HostState`]).
//!
//! `update` costs what changed where the strategy allows: round robin, least active and random
//! take O(log hosts) (or one memmove of the index list) per changed host, weighted round robin
//! too once the cluster is past its small exact table; client_ip_hash and the small WRR table
//! are rebuilt once per `update` call. An updated balancer picks as one rebuilt from the same
//! hosts would (continuing at the same cursor or random state).
//!
//! What it must not do: no I/O, no clock, no locks, no threads, and no allocation per pick — all
//! tables are built in [`Balancer::new`] and [`Balancer::update`]; `pick` only reads them and
//! advances small cursors or a seeded PRNG. Randomness comes only from the `seed` given to `new`,
//! so picks are reproducible.
//!
//! Common rules for every strategy:
//! - a host whose weight is 0 is never picked (it is draining or weighted out);
//! - a host for which [`HostState::is_available`] is false is never picked;
//! - `None` when no host is available (or the host list is empty).
//!
//! Strategies (one file each): [`round_robin`], [`weighted_round_robin`] (smooth WRR as nginx),
//! [`least_active`] (power of two choices, weighted), [`random`] (weighted), [`client_ip_hash`]
//! (weighted Maglev consistent hashing).

pub mod client_ip_hash;
pub mod least_active;
pub mod random;
pub mod round_robin;
pub mod weighted_round_robin;

#[cfg(test)]
mod incremental_tests;
#[cfg(test)]
mod tests;

use std::net::IpAddr;

use crate::config::LbType;

use client_ip_hash::ClientIpHash;
use least_active::LeastActive;
use random::WeightedRandom;
use round_robin::RoundRobin;
use weighted_round_robin::WeightedRoundRobin;

/// How many cheap probes a strategy makes when some hosts are unavailable before it falls back
/// to a bounded O(hosts) scan. Keeps the common case (most hosts available) O(1).
pub(crate) const PROBES: usize = 32;

/// One host as the balancer sees it. `key` is a stable identity (hash of host_name + agent id),
/// used by client_ip_hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostSpec {
    pub key: u64,
    pub weight: u32,
}

/// What changes between picks; implemented by the worker's snapshot.
pub trait HostState {
    /// The host at this index has an idle data connection on this worker (only such hosts may be
    /// picked).
    fn is_available(&self, index: usize) -> bool;
    /// Sessions currently active on this host on this worker (least_active).
    fn active_sessions(&self, index: usize) -> u32;
}

/// Host selection for one cluster on one worker. Update it when the host set or a weight changes.
#[derive(Debug, Clone)]
pub struct Balancer {
    lb_type: LbType,
    strategy: Strategy,
}

#[derive(Debug, Clone)]
enum Strategy {
    RoundRobin(RoundRobin),
    WeightedRoundRobin(WeightedRoundRobin),
    LeastActive(LeastActive),
    Random(WeightedRandom),
    ClientIpHash(ClientIpHash),
}

impl Balancer {
    /// Built whenever the worker's snapshot changes (host added/removed, weight changed). `seed`
    /// seeds random choices.
    pub fn new(lb_type: LbType, hosts: &[HostSpec], seed: u64) -> Balancer {
        let strategy = match lb_type {
            LbType::RoundRobin => Strategy::RoundRobin(RoundRobin::new(hosts, seed)),
            LbType::WeightedRoundRobin => {
                Strategy::WeightedRoundRobin(WeightedRoundRobin::new(hosts))
            }
            LbType::LeastActive => Strategy::LeastActive(LeastActive::new(hosts, seed)),
            LbType::Random => Strategy::Random(WeightedRandom::new(hosts, seed)),
            LbType::ClientIpHash => Strategy::ClientIpHash(ClientIpHash::new(hosts)),
        };
        Balancer { lb_type, strategy }
    }

    /// `hosts` is the cluster's host list now; `changed` are the indices whose entry changed
    /// since the last `new` or `update` (a host joined, left — weight 0 — or changed weight; an
    /// index past the old list's end is a new one).
    pub fn update(&mut self, hosts: &[HostSpec], changed: &[usize]) {
        if changed.is_empty() {
            return;
        }
        match &mut self.strategy {
            Strategy::RoundRobin(s) => {
                for &i in changed {
                    s.set(i, hosts.get(i).map_or(0, |h| h.weight));
                }
            }
            Strategy::WeightedRoundRobin(s) => s.update(hosts, changed),
            Strategy::LeastActive(s) => {
                for &i in changed {
                    s.set(i, hosts.get(i).map_or(0, |h| h.weight), hosts.len());
                }
            }
            Strategy::Random(s) => {
                for &i in changed {
                    s.set(i, hosts.get(i).map_or(0, |h| h.weight), hosts.len());
                }
            }
            Strategy::ClientIpHash(s) => *s = ClientIpHash::new(hosts),
        }
    }

    /// What a rebuild from `hosts` would be, continuing at this balancer's cursor or random
    /// state (tests compare it with an updated one).
    #[cfg(test)]
    pub(crate) fn rebuilt(&self, hosts: &[HostSpec]) -> Balancer {
        let strategy = match &self.strategy {
            Strategy::RoundRobin(s) => Strategy::RoundRobin(s.rebuilt(hosts)),
            Strategy::WeightedRoundRobin(s) => Strategy::WeightedRoundRobin(s.rebuilt(hosts)),
            Strategy::LeastActive(s) => Strategy::LeastActive(s.rebuilt(hosts)),
            Strategy::Random(s) => Strategy::Random(s.rebuilt(hosts)),
            Strategy::ClientIpHash(_) => Strategy::ClientIpHash(ClientIpHash::new(hosts)),
        };
        Balancer {
            lb_type: self.lb_type,
            strategy,
        }
    }

    /// Same tables as `other` (cursors and random state aside).
    #[cfg(test)]
    pub(crate) fn same_tables(&self, other: &Balancer) -> bool {
        match (&self.strategy, &other.strategy) {
            (Strategy::RoundRobin(a), Strategy::RoundRobin(b)) => a == b,
            (Strategy::WeightedRoundRobin(a), Strategy::WeightedRoundRobin(b)) => a.same_tables(b),
            (Strategy::LeastActive(a), Strategy::LeastActive(b)) => a.same_tables(b),
            (Strategy::Random(a), Strategy::Random(b)) => a.same_tables(b),
            (Strategy::ClientIpHash(a), Strategy::ClientIpHash(b)) => a == b,
            _ => false,
        }
    }

    /// The index (into `hosts`) of the host to use, or None when no host is available.
    #[inline]
    pub fn pick(&mut self, client_ip: IpAddr, state: &impl HostState) -> Option<usize> {
        match &mut self.strategy {
            Strategy::RoundRobin(s) => s.pick(state),
            Strategy::WeightedRoundRobin(s) => s.pick(state),
            Strategy::LeastActive(s) => s.pick(state),
            Strategy::Random(s) => s.pick(state),
            Strategy::ClientIpHash(s) => s.pick(client_ip, state),
        }
    }

    /// The strategy this balancer was built with.
    pub fn lb_type(&self) -> LbType {
        self.lb_type
    }
}

/// Indices (into `hosts`) of the hosts that may ever be picked: weight > 0.
pub(crate) fn eligible(hosts: &[HostSpec]) -> Vec<u32> {
    hosts
        .iter()
        .enumerate()
        .filter(|(_, h)| h.weight > 0)
        .filter_map(|(i, _)| u32::try_from(i).ok())
        .collect()
}

/// SplitMix64 finaliser: a fast, well-mixed 64-bit hash of a 64-bit value.
#[inline]
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
