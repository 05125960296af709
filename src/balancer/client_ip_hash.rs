//! `client_ip_hash`: weighted Maglev consistent hashing of the client address.
//!
//! A lookup table of `TABLE_SIZE` (prime, 65537) slots is filled in `new()` by Maglev's
//! population: each host walks its own permutation of the slots (offset and skip derived from its
//! `key`) and takes turns claiming the next free slot. Weights give each host a quota of slots
//! (`TABLE_SIZE * w / total`, largest remainder); a host stops taking turns once its quota is
//! met. Hosts are ordered by `key` while filling, so the table depends only on the set of
//! `(key, weight)`, not on the order of `hosts` — every worker maps a client the same way.
//!
//! The table size does not depend on the host count, so adding or removing one host of N moves
//! about 1/N of client addresses. A client address (IPv4-mapped IPv6 taken as IPv4) is hashed to
//! a slot; when that slot's host is unavailable the walk goes to the following slots (in effect a
//! weighted random, but fixed, sequence of hosts), and after [`PROBES`] slots falls back to
//! rendezvous hashing over the available hosts. Both are deterministic per address.
//!
//! Not incremental: any change re-populates the table (O(TABLE_SIZE + hosts)), once for all the
//! changes a worker applies together (`Balancer::update`).

use std::net::IpAddr;

use super::{mix64, HostSpec, HostState, PROBES};

/// Maglev table size: prime, about 65 slots per host at 1,000 hosts.
pub(crate) const TABLE_SIZE: usize = 65_537;
/// Marks a free slot while filling.
const FREE: u16 = u16::MAX;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientIpHash {
    /// Host index per slot; empty when no host is eligible or there are too many hosts to index
    /// with u16 (then only the rendezvous fallback is used).
    table: Vec<u16>,
    /// Eligible (weight > 0) hosts: (index, mixed key) for the rendezvous fallback.
    hosts: Vec<(u32, u64)>,
}

impl ClientIpHash {
    pub(crate) fn new(hosts: &[HostSpec]) -> ClientIpHash {
        let eligible: Vec<(u32, u64)> = hosts
            .iter()
            .enumerate()
            .filter(|(_, h)| h.weight > 0)
            .filter_map(|(i, h)| u32::try_from(i).ok().map(|i| (i, mix64(h.key ^ 0x5EED))))
            .collect();
        let table = if !eligible.is_empty() && hosts.len() < usize::from(FREE) {
            populate(hosts)
        } else {
            Vec::new()
        };
        ClientIpHash {
            table,
            hosts: eligible,
        }
    }

    #[inline]
    pub(crate) fn pick(&mut self, client_ip: IpAddr, state: &impl HostState) -> Option<usize> {
        let hash = hash_ip(client_ip);
        let len = self.table.len();
        if len > 0 {
            let mut slot = (hash % len as u64) as usize;
            for _ in 0..PROBES {
                if let Some(&h) = self.table.get(slot) {
                    if state.is_available(usize::from(h)) {
                        return Some(usize::from(h));
                    }
                }
                slot += 1;
                if slot >= len {
                    slot = 0;
                }
            }
        }
        self.rendezvous(hash, state)
    }

    /// Highest random weight over the available eligible hosts.
    #[cold]
    fn rendezvous(&self, hash: u64, state: &impl HostState) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for &(h, key) in &self.hosts {
            let h = h as usize;
            if !state.is_available(h) {
                continue;
            }
            let score = mix64(hash ^ key);
            best = match best {
                Some((s, b)) if s >= score => Some((s, b)),
                _ => Some((score, h)),
            };
        }
        best.map(|(_, h)| h)
    }
}

/// Hash of a client address; IPv4-mapped IPv6 addresses hash as their IPv4 address.
#[inline]
pub(crate) fn hash_ip(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => mix64(u64::from(u32::from(v4)) ^ 0x4_0000_0000),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            mix64(mix64(bits as u64) ^ ((bits >> 64) as u64) ^ 0x6_0000_0000)
        }
    }
}

/// Weighted Maglev population. Requires `hosts.len() < FREE` and at least one weight > 0.
fn populate(hosts: &[HostSpec]) -> Vec<u16> {
    let m = TABLE_SIZE as u64;
    // (index, weight, offset, skip), sorted by key so that host order does not matter.
    let mut order: Vec<(u16, u64, u64)> = hosts
        .iter()
        .enumerate()
        .filter(|(_, h)| h.weight > 0)
        .filter_map(|(i, h)| {
            u16::try_from(i)
                .ok()
                .map(|i| (i, h.key, u64::from(h.weight)))
        })
        .collect();
    order.sort_by_key(|&(i, key, _)| (key, i));
    let total: u64 = order.iter().map(|&(_, _, w)| w).sum();
    if total == 0 {
        return Vec::new();
    }

    // Quotas by largest remainder: they sum to exactly TABLE_SIZE.
    let mut quota: Vec<u64> = Vec::with_capacity(order.len());
    let mut remainders: Vec<(u64, usize)> = Vec::with_capacity(order.len());
    for (k, &(_, _, w)) in order.iter().enumerate() {
        let share = u128::from(m) * u128::from(w);
        let q = (share / u128::from(total)) as u64;
        let r = (share % u128::from(total)) as u64;
        quota.push(q);
        remainders.push((r, k));
    }
    let assigned: u64 = quota.iter().sum();
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, k) in remainders.iter().take((m - assigned) as usize) {
        if let Some(q) = quota.get_mut(k) {
            *q += 1;
        }
    }

    struct Walker {
        host: u16,
        offset: u64,
        skip: u64,
        next: u64,
        left: u64,
    }
    let mut walkers: Vec<Walker> = order
        .iter()
        .zip(&quota)
        .filter(|&(_, &q)| q > 0)
        .map(|(&(host, key, _), &q)| Walker {
            host,
            offset: mix64(key ^ 0x0FF5E7) % m,
            skip: mix64(key ^ 0x5_C1B) % (m - 1) + 1,
            next: 0,
            left: q,
        })
        .collect();

    let mut table = vec![FREE; TABLE_SIZE];
    let mut filled = 0usize;
    while filled < TABLE_SIZE && !walkers.is_empty() {
        for w in walkers.iter_mut() {
            // The permutation visits every slot once in m steps, so a free one is found.
            while w.next < m {
                let slot = ((w.offset + w.next * w.skip) % m) as usize;
                w.next += 1;
                if let Some(s) = table.get_mut(slot) {
                    if *s == FREE {
                        *s = w.host;
                        w.left -= 1;
                        filled += 1;
                        break;
                    }
                }
            }
            if w.next >= m {
                w.left = 0;
            }
        }
        walkers.retain(|w| w.left > 0);
    }
    table
}
