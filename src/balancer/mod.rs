//! Pure host selection over a worker's snapshot.
//!
//! A [`Balancer`] is built from a cluster's hosts (stable key + weight) whenever a worker's
//! snapshot changes, and then answers [`Balancer::pick`]: which host a new session should use,
//! among the hosts that have an idle data connection on this worker ([`HostState`]).
//!
//! What it must not do: no I/O, no clock, no locks, no threads, and no allocation per pick — all
//! tables are built in [`Balancer::new`]; `pick` only reads them and advances small cursors or a
//! seeded PRNG. Randomness comes only from the `seed` given to `new`, so picks are reproducible.
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

/// Host selection for one cluster on one worker. Rebuild it when the host set or a weight changes.
#[derive(Debug)]
pub struct Balancer {
    lb_type: LbType,
    strategy: Strategy,
}

#[derive(Debug)]
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
