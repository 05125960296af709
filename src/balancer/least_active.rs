//! `least_active`: power of two choices over active sessions, weighted.
//!
//! Two distinct eligible hosts are drawn uniformly at random; both must be available. The one
//! with the lower `active / weight` wins (compared as `active_a * w_b` vs `active_b * w_a`, ties
//! to the first draw). Unavailable draws are redrawn a few times; when that fails (few hosts
//! available, or fewer than 2 eligible hosts) a full scan picks the available host with the
//! lowest `active / weight`, starting at a random offset so ties are spread.
//!
//! Incremental: a weight change is one store; a host joining or leaving the eligible set is one
//! binary search and one insert or remove in the sorted index list.

use super::{eligible, HostSpec, HostState, PROBES};

#[derive(Debug, Clone)]
pub(crate) struct LeastActive {
    /// Eligible (weight > 0) host indices.
    hosts: Vec<u32>,
    /// Weight of every host, by host index.
    weights: Vec<u32>,
    rng: fastrand::Rng,
}

/// How many draws per candidate before falling back to the scan.
const DRAWS: usize = PROBES / 4;

impl LeastActive {
    pub(crate) fn new(hosts: &[HostSpec], seed: u64) -> LeastActive {
        LeastActive {
            hosts: eligible(hosts),
            weights: hosts.iter().map(|h| h.weight).collect(),
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// Host `index` now has `weight`; `len` is the host list's length.
    pub(crate) fn set(&mut self, index: usize, weight: u32, len: usize) {
        if self.weights.len() < len {
            self.weights.resize(len, 0);
        }
        let Some(w) = self.weights.get_mut(index) else {
            return;
        };
        *w = weight;
        let Ok(host) = u32::try_from(index) else {
            return;
        };
        match self.hosts.binary_search(&host) {
            Ok(p) if weight == 0 => {
                self.hosts.remove(p);
            }
            Err(p) if weight > 0 => self.hosts.insert(p, host),
            _ => {}
        }
    }

    /// A rebuild from `hosts` that continues with this one's random state (tests).
    #[cfg(test)]
    pub(crate) fn rebuilt(&self, hosts: &[HostSpec]) -> LeastActive {
        LeastActive {
            hosts: eligible(hosts),
            weights: hosts.iter().map(|h| h.weight).collect(),
            rng: self.rng.clone(),
        }
    }

    /// Same tables as `other` (random state aside).
    #[cfg(test)]
    pub(crate) fn same_tables(&self, other: &LeastActive) -> bool {
        self.hosts == other.hosts && self.weights == other.weights
    }

    #[inline]
    fn weight(&self, host: usize) -> u64 {
        u64::from(self.weights.get(host).copied().unwrap_or(0))
    }

    /// `a` is strictly less loaded than `b`, relative to their weights.
    #[inline]
    fn less_loaded(&self, a: usize, b: usize, state: &impl HostState) -> bool {
        let la = u64::from(state.active_sessions(a)) * self.weight(b);
        let lb = u64::from(state.active_sessions(b)) * self.weight(a);
        la < lb
    }

    #[inline]
    pub(crate) fn pick(&mut self, state: &impl HostState) -> Option<usize> {
        let n = self.hosts.len();
        if n < 2 {
            return self.scan(state);
        }
        let Some(a) = self.draw(state, None) else {
            return self.scan(state);
        };
        let Some(b) = self.draw(state, Some(a)) else {
            return self.scan(state);
        };
        let (a, b) = (self.host(a), self.host(b));
        if self.less_loaded(b, a, state) {
            Some(b)
        } else {
            Some(a)
        }
    }

    #[inline]
    fn host(&self, position: usize) -> usize {
        self.hosts.get(position).copied().unwrap_or(0) as usize
    }

    /// A random available eligible position other than `not`, or None after `DRAWS` misses.
    #[inline]
    fn draw(&mut self, state: &impl HostState, not: Option<usize>) -> Option<usize> {
        let n = self.hosts.len();
        for _ in 0..DRAWS {
            let p = match not {
                None => self.rng.usize(..n),
                Some(a) => {
                    let p = self.rng.usize(..n - 1);
                    if p >= a {
                        p + 1
                    } else {
                        p
                    }
                }
            };
            if let Some(&h) = self.hosts.get(p) {
                if state.is_available(h as usize) {
                    return Some(p);
                }
            }
        }
        None
    }

    /// The available eligible host with the lowest `active / weight`.
    #[cold]
    fn scan(&mut self, state: &impl HostState) -> Option<usize> {
        let n = self.hosts.len();
        if n == 0 {
            return None;
        }
        let start = self.rng.usize(..n);
        let (tail, head) = self.hosts.split_at(start);
        let mut best: Option<usize> = None;
        for &h in head.iter().chain(tail) {
            let h = h as usize;
            if !state.is_available(h) {
                continue;
            }
            best = match best {
                Some(b) if !self.less_loaded(h, b, state) => Some(b),
                _ => Some(h),
            };
        }
        best
    }
}
