//! `random`: weighted random among the available hosts.
//!
//! A host is drawn with probability `weight / total`: a uniform `r` in `0..total` is looked up in
//! a Fenwick tree of the weights by host index (O(log hosts): the host whose cumulative range
//! holds `r`). An unavailable draw is redrawn, which keeps proportions among the available
//! hosts; after [`PROBES`] misses, one scan sums the weights of the available hosts and draws
//! among exactly those.
//!
//! Incremental: a weight change (0 for a host leaving) is one O(log hosts) tree update; the tree
//! is rebuilt (O(hosts)) only when the host list outgrows its power-of-two capacity.

use super::{HostSpec, HostState, PROBES};

#[derive(Debug, Clone)]
pub(crate) struct WeightedRandom {
    /// Weight per host index (0: never drawn).
    weights: Vec<u32>,
    /// Fenwick tree over `weights`, 1-based, `cap + 1` entries.
    tree: Vec<u64>,
    /// Power of two, at least `weights.len()`.
    cap: usize,
    /// Sum of all weights.
    total: u64,
    rng: fastrand::Rng,
}

impl WeightedRandom {
    pub(crate) fn new(hosts: &[HostSpec], seed: u64) -> WeightedRandom {
        let mut r = WeightedRandom {
            weights: hosts.iter().map(|h| h.weight).collect(),
            tree: Vec::new(),
            cap: 0,
            total: 0,
            rng: fastrand::Rng::with_seed(seed),
        };
        r.build();
        r
    }

    fn build(&mut self) {
        self.cap = self.weights.len().next_power_of_two().max(1);
        self.tree = vec![0u64; self.cap + 1];
        for (i, &w) in self.weights.iter().enumerate() {
            if let Some(t) = self.tree.get_mut(i + 1) {
                *t += u64::from(w);
            }
        }
        for i in 1..=self.cap {
            let j = i + (i & i.wrapping_neg());
            if j <= self.cap {
                let v = self.tree.get(i).copied().unwrap_or(0);
                if let Some(t) = self.tree.get_mut(j) {
                    *t += v;
                }
            }
        }
        self.total = self.weights.iter().map(|&w| u64::from(w)).sum();
    }

    /// Host `index` now has `weight`; `len` is the host list's length.
    pub(crate) fn set(&mut self, index: usize, weight: u32, len: usize) {
        if self.weights.len() < len.max(index + 1) {
            self.weights.resize(len.max(index + 1), 0);
            if self.weights.len() > self.cap {
                if let Some(w) = self.weights.get_mut(index) {
                    *w = weight;
                }
                self.build();
                return;
            }
        }
        let Some(w) = self.weights.get_mut(index) else {
            return;
        };
        let (old, new) = (u64::from(*w), u64::from(weight));
        *w = weight;
        self.total = self.total - old + new;
        let mut i = index + 1;
        while i <= self.cap {
            if let Some(t) = self.tree.get_mut(i) {
                *t = *t - old + new;
            }
            i += i & i.wrapping_neg();
        }
    }

    /// A rebuild from `hosts` that continues with this one's random state (tests).
    #[cfg(test)]
    pub(crate) fn rebuilt(&self, hosts: &[HostSpec]) -> WeightedRandom {
        let mut r = WeightedRandom::new(hosts, 0);
        r.rng = self.rng.clone();
        r
    }

    /// Same tables as `other` (random state aside).
    #[cfg(test)]
    pub(crate) fn same_tables(&self, other: &WeightedRandom) -> bool {
        self.weights == other.weights
            && self.tree == other.tree
            && self.cap == other.cap
            && self.total == other.total
    }

    /// The host whose cumulative weight range holds `r` (`r < total`).
    #[inline]
    fn find(&self, mut r: u64) -> usize {
        let mut pos = 0usize;
        let mut step = self.cap;
        while step > 0 {
            if let Some(&t) = self.tree.get(pos + step) {
                if t <= r {
                    pos += step;
                    r -= t;
                }
            }
            step >>= 1;
        }
        pos
    }

    #[inline]
    pub(crate) fn pick(&mut self, state: &impl HostState) -> Option<usize> {
        if self.total == 0 {
            return None;
        }
        for _ in 0..PROBES {
            let r = self.rng.u64(..self.total);
            let h = self.find(r);
            if self.weights.get(h).is_some_and(|&w| w > 0) && state.is_available(h) {
                return Some(h);
            }
        }
        self.pick_slow(state)
    }

    /// Draw among exactly the available hosts, by two scans.
    #[cold]
    fn pick_slow(&mut self, state: &impl HostState) -> Option<usize> {
        let available: u64 = self
            .weights
            .iter()
            .enumerate()
            .filter(|&(h, &w)| w > 0 && state.is_available(h))
            .map(|(_, &w)| u64::from(w))
            .sum();
        if available == 0 {
            return None;
        }
        let mut r = self.rng.u64(..available);
        for (h, &w) in self.weights.iter().enumerate() {
            if w == 0 || !state.is_available(h) {
                continue;
            }
            let w = u64::from(w);
            if r < w {
                return Some(h);
            }
            r -= w;
        }
        None
    }
}
