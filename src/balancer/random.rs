//! `random`: weighted random among the available hosts.
//!
//! A host is drawn with probability `weight / total` from precomputed cumulative weights (binary
//! search; a direct index when all weights are equal). An unavailable draw is redrawn, which keeps
//! proportions among the available hosts; after [`PROBES`] misses, one scan sums the weights of
//! the available hosts and draws among exactly those.

use super::{HostSpec, HostState, PROBES};

#[derive(Debug)]
pub(crate) struct WeightedRandom {
    /// Eligible (weight > 0) host indices.
    hosts: Vec<u32>,
    /// `cumulative[k]` = sum of the weights of `hosts[..=k]`.
    cumulative: Vec<u64>,
    /// Sum of all weights.
    total: u64,
    /// Every eligible host has the same weight: draw an index directly.
    uniform: bool,
    rng: fastrand::Rng,
}

impl WeightedRandom {
    pub(crate) fn new(hosts: &[HostSpec], seed: u64) -> WeightedRandom {
        let mut ids = Vec::new();
        let mut cumulative = Vec::new();
        let mut total = 0u64;
        for (i, h) in hosts.iter().enumerate() {
            if h.weight == 0 {
                continue;
            }
            if let Ok(i) = u32::try_from(i) {
                total += u64::from(h.weight);
                ids.push(i);
                cumulative.push(total);
            }
        }
        let first = hosts.iter().find(|h| h.weight > 0).map(|h| h.weight);
        let uniform = hosts
            .iter()
            .all(|h| h.weight == 0 || Some(h.weight) == first);
        WeightedRandom {
            hosts: ids,
            cumulative,
            total,
            uniform,
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    #[inline]
    pub(crate) fn pick(&mut self, state: &impl HostState) -> Option<usize> {
        let n = self.hosts.len();
        if n == 0 {
            return None;
        }
        for _ in 0..PROBES {
            let k = if self.uniform {
                self.rng.usize(..n)
            } else {
                let r = self.rng.u64(..self.total);
                self.cumulative.partition_point(|&c| c <= r)
            };
            if let Some(&h) = self.hosts.get(k) {
                if state.is_available(h as usize) {
                    return Some(h as usize);
                }
            }
        }
        self.pick_slow(state)
    }

    /// Draw among exactly the available hosts, by two scans.
    #[cold]
    fn pick_slow(&mut self, state: &impl HostState) -> Option<usize> {
        let weight = |k: usize| {
            let before = if k == 0 {
                0
            } else {
                self.cumulative.get(k - 1).copied().unwrap_or(0)
            };
            self.cumulative.get(k).copied().unwrap_or(0) - before
        };
        let available: u64 = self
            .hosts
            .iter()
            .enumerate()
            .filter(|&(_, &h)| state.is_available(h as usize))
            .map(|(k, _)| weight(k))
            .sum();
        if available == 0 {
            return None;
        }
        let mut r = self.rng.u64(..available);
        for (k, &h) in self.hosts.iter().enumerate() {
            if !state.is_available(h as usize) {
                continue;
            }
            let w = weight(k);
            if r < w {
                return Some(h as usize);
            }
            r -= w;
        }
        None
    }
}
