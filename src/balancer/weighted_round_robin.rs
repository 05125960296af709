//! `weighted_round_robin`: smooth weighted round robin, as nginx.
//!
//! nginx's smooth WRR is O(hosts) per pick. Here:
//!
//! - Small clusters (`total weight * hosts <= BUILD_BUDGET`): the exact nginx sequence of one
//!   period is precomputed (weights divided by their gcd, which does not change nginx's
//!   sequence; the period is the total weight `W`), and picks walk it with a cursor: O(1). Any
//!   change rebuilds the table (at most `BUILD_BUDGET` steps); the cursor keeps its phase in the
//!   period.
//! - Larger ones: the same smooth order by earliest virtual deadline, run live on a 4-ary heap
//!   (`heap`): host `i`'s `k`-th slot has deadline `(k + 1/2) / w_i`. O(log hosts) per pick and
//!   per host change: a host that joins, leaves or changes weight is one heap operation, and
//!   takes its first slot after the cursor, as a rebuild at that cursor would.
//!
//! Either way the schedule is periodic with period `W` and each period holds exactly `w_i` picks
//! of host `i`, so every window of `W` consecutive picks has exact proportions when all hosts are
//! available. Unavailable hosts are skipped: the cursor moves past their slots, so among the
//! available hosts the proportions are kept. In the table, skipping is a bounded scan; after
//! [`PROBES`] unavailable slots it falls back to finding, for every available host, its next
//! slot (binary search in its precomputed slot list) — the same answer the scan would give, in
//! O(hosts log W).

mod heap;

use super::{HostSpec, HostState, PROBES};
use heap::Heap;

/// Largest schedule table (entries). 64 Ki entries of u32 = 256 KiB.
pub(crate) const TABLE_CAP: u64 = 1 << 16;
/// Largest `total weight * hosts` for which the exact nginx table is used (and rebuilt on each
/// change): about 64 Ki steps of nginx's loop.
pub(crate) const BUILD_BUDGET: u64 = 1 << 16;

#[derive(Debug, Clone)]
pub(crate) struct WeightedRoundRobin {
    /// Weight per host index.
    weights: Vec<u32>,
    /// Sum of `weights` and how many are > 0.
    total: u64,
    eligible: u64,
    inner: Inner,
}

#[derive(Debug, Clone)]
enum Inner {
    /// No host has a weight > 0.
    Empty,
    Table(Table),
    Heap(Heap),
}

impl WeightedRoundRobin {
    pub(crate) fn new(hosts: &[HostSpec]) -> WeightedRoundRobin {
        let weights: Vec<u32> = hosts.iter().map(|h| h.weight).collect();
        let mut w = WeightedRoundRobin {
            total: weights.iter().map(|&w| u64::from(w)).sum(),
            eligible: weights.iter().filter(|&&w| w > 0).count() as u64,
            weights,
            inner: Inner::Empty,
        };
        w.inner = w.build(None);
        w
    }

    fn table_fits(&self) -> bool {
        self.total.saturating_mul(self.eligible) <= BUILD_BUDGET && self.total <= TABLE_CAP
    }

    /// The schedule for the current weights; a heap continues after `cursor`.
    fn build(&self, cursor: Option<heap::Entry>) -> Inner {
        if self.eligible == 0 {
            Inner::Empty
        } else if self.table_fits() {
            Inner::Table(Table::for_weights(&self.weights))
        } else {
            Inner::Heap(Heap::new(&self.weights, cursor))
        }
    }

    /// Hosts `changed` (indices into `hosts`) have new weights. A table is rebuilt once for all
    /// of them (its cursor keeping its phase); a heap takes one O(log hosts) step per host.
    pub(crate) fn update(&mut self, hosts: &[HostSpec], changed: &[usize]) {
        if self.weights.len() < hosts.len() {
            self.weights.resize(hosts.len(), 0);
        }
        for &i in changed {
            let (Some(w), Some(h)) = (self.weights.get_mut(i), hosts.get(i)) else {
                continue;
            };
            self.total = self.total - u64::from(*w) + u64::from(h.weight);
            self.eligible = self.eligible - u64::from(*w > 0) + u64::from(h.weight > 0);
            *w = h.weight;
        }
        let heap_stays = self.eligible > 0 && !self.table_fits();
        if let (true, Inner::Heap(heap)) = (heap_stays, &mut self.inner) {
            for &i in changed {
                if let Some(&w) = self.weights.get(i) {
                    heap.set(i, w);
                }
            }
            return;
        }
        let (phase, cursor) = match &self.inner {
            Inner::Table(t) => (Some((t.cursor, t.schedule.len())), None),
            Inner::Heap(h) => (None, h.cursor()),
            Inner::Empty => (None, None),
        };
        self.inner = self.build(cursor);
        if let (Some(phase), Inner::Table(t)) = (phase, &mut self.inner) {
            t.set_phase(phase);
        }
    }

    /// A rebuild from `hosts` that continues at this one's cursor (tests).
    #[cfg(test)]
    pub(crate) fn rebuilt(&self, hosts: &[HostSpec]) -> WeightedRoundRobin {
        let mut r = WeightedRoundRobin::new(hosts);
        match &self.inner {
            Inner::Table(a) => {
                if let Inner::Table(b) = &mut r.inner {
                    b.cursor = a.cursor;
                }
            }
            Inner::Heap(a) => {
                if let Inner::Heap(_) = r.inner {
                    r.inner = Inner::Heap(Heap::new(&r.weights, a.cursor()));
                }
            }
            Inner::Empty => {}
        }
        r
    }

    /// Same schedule as `other` (cursor aside for a table).
    #[cfg(test)]
    pub(crate) fn same_tables(&self, other: &WeightedRoundRobin) -> bool {
        self.total == other.total
            && self.eligible == other.eligible
            && match (&self.inner, &other.inner) {
                (Inner::Empty, Inner::Empty) => true,
                (Inner::Table(a), Inner::Table(b)) => a.schedule == b.schedule,
                (Inner::Heap(a), Inner::Heap(b)) => a.entries() == b.entries(),
                _ => false,
            }
    }

    #[inline]
    pub(crate) fn pick(&mut self, state: &impl HostState) -> Option<usize> {
        match &mut self.inner {
            Inner::Empty => None,
            Inner::Table(t) => t.pick(state),
            Inner::Heap(h) if h.is_empty() => None,
            Inner::Heap(h) => h.pick(state),
        }
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// One period of nginx's smooth WRR: add each weight to its current weight, pick the largest
/// (first on ties), subtract the total from the picked one.
fn nginx_schedule(hosts_w: &[(u32, u64)], total: u64) -> Vec<u32> {
    let weights: Vec<i64> = hosts_w
        .iter()
        .map(|&(_, w)| i64::try_from(w).unwrap_or(i64::MAX))
        .collect();
    let total = i64::try_from(total).unwrap_or(i64::MAX);
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        let mut best = 0usize;
        let mut best_value = i64::MIN;
        for (i, (c, &w)) in current.iter_mut().zip(&weights).enumerate() {
            *c += w;
            if *c > best_value {
                best_value = *c;
                best = i;
            }
        }
        if let (Some(c), Some(&(host, _))) = (current.get_mut(best), hosts_w.get(best)) {
            *c -= total;
            schedule.push(host);
        }
    }
    schedule
}

/// A precomputed period of the schedule plus, per host, the sorted positions of its slots.
#[derive(Debug, Clone)]
struct Table {
    /// Host index per slot.
    schedule: Vec<u32>,
    /// Next slot to use.
    cursor: usize,
    /// CSR: `slots[starts[k]..starts[k + 1]]` are the sorted positions of host `hosts[k]`.
    hosts: Vec<u32>,
    starts: Vec<u32>,
    slots: Vec<u32>,
}

impl Table {
    /// nginx's period for `weights` (by host index, at least one > 0).
    fn for_weights(weights: &[u32]) -> Table {
        let hosts_w: Vec<(u32, u64)> = weights
            .iter()
            .enumerate()
            .filter(|(_, &w)| w > 0)
            .filter_map(|(i, &w)| u32::try_from(i).ok().map(|i| (i, u64::from(w))))
            .collect();
        let g = hosts_w.iter().fold(0, |g, &(_, w)| gcd(g, w)).max(1);
        let hosts_w: Vec<(u32, u64)> = hosts_w.into_iter().map(|(i, w)| (i, w / g)).collect();
        let total: u64 = hosts_w.iter().map(|&(_, w)| w).sum();
        Table::new(nginx_schedule(&hosts_w, total), weights.len())
    }

    /// After a rebuild: the cursor at the same fraction of the period as `(cursor, len)` was.
    fn set_phase(&mut self, (cursor, len): (usize, usize)) {
        let new_len = self.schedule.len();
        if len > 0 && new_len > 0 {
            self.cursor = ((cursor as u128 * new_len as u128 / len as u128) as usize) % new_len;
        }
    }

    fn new(schedule: Vec<u32>, host_count: usize) -> Table {
        let mut per_host: Vec<Vec<u32>> = vec![Vec::new(); host_count];
        for (pos, &h) in schedule.iter().enumerate() {
            if let (Some(list), Ok(pos)) = (per_host.get_mut(h as usize), u32::try_from(pos)) {
                list.push(pos);
            }
        }
        let mut hosts = Vec::new();
        let mut starts = vec![0u32];
        let mut slots = Vec::with_capacity(schedule.len());
        for (h, list) in per_host.into_iter().enumerate() {
            if list.is_empty() {
                continue;
            }
            if let Ok(h) = u32::try_from(h) {
                hosts.push(h);
                slots.extend_from_slice(&list);
                starts.push(u32::try_from(slots.len()).unwrap_or(u32::MAX));
            }
        }
        Table {
            schedule,
            cursor: 0,
            hosts,
            starts,
            slots,
        }
    }

    #[inline]
    fn pick(&mut self, state: &impl HostState) -> Option<usize> {
        let len = self.schedule.len();
        let probes = len.min(PROBES);
        for _ in 0..probes {
            let host = self.schedule.get(self.cursor).copied();
            self.cursor += 1;
            if self.cursor >= len {
                self.cursor = 0;
            }
            if let Some(host) = host {
                let host = host as usize;
                if state.is_available(host) {
                    return Some(host);
                }
            }
        }
        if probes == len {
            // The whole period was scanned: every host with a slot is unavailable.
            return None;
        }
        self.pick_slow(state)
    }

    /// The first slot at or after the cursor whose host is available, found per host.
    #[cold]
    fn pick_slow(&mut self, state: &impl HostState) -> Option<usize> {
        let len = self.schedule.len();
        let cursor = self.cursor as u64;
        let mut best: Option<(u64, usize)> = None;
        for (k, &host) in self.hosts.iter().enumerate() {
            if !state.is_available(host as usize) {
                continue;
            }
            let (Some(&a), Some(&b)) = (self.starts.get(k), self.starts.get(k + 1)) else {
                continue;
            };
            let Some(slots) = self.slots.get(a as usize..b as usize) else {
                continue;
            };
            let i = slots.partition_point(|&p| u64::from(p) < cursor);
            let next = match slots.get(i) {
                Some(&p) => u64::from(p),
                None => match slots.first() {
                    Some(&p) => u64::from(p) + len as u64,
                    None => continue,
                },
            };
            if !matches!(best, Some((b, _)) if next >= b) {
                best = Some((next, host as usize));
            }
        }
        let (next, host) = best?;
        self.cursor = ((next + 1) % len as u64) as usize;
        Some(host)
    }
}

/// The O(hosts)-per-pick nginx smooth WRR, kept as a reference for tests and the benchmark.
#[derive(Debug)]
pub struct NaiveSmoothWrr {
    weights: Vec<i64>,
    current: Vec<i64>,
}

impl NaiveSmoothWrr {
    pub fn new(hosts: &[HostSpec]) -> NaiveSmoothWrr {
        NaiveSmoothWrr {
            weights: hosts.iter().map(|h| i64::from(h.weight)).collect(),
            current: vec![0; hosts.len()],
        }
    }

    /// nginx's loop: only available hosts with weight > 0 take part.
    pub fn pick(&mut self, state: &impl HostState) -> Option<usize> {
        let mut total = 0i64;
        let mut best: Option<(usize, i64)> = None;
        for (i, (c, &w)) in self.current.iter_mut().zip(&self.weights).enumerate() {
            if w == 0 || !state.is_available(i) {
                continue;
            }
            *c += w;
            total += w;
            if !matches!(best, Some((_, b)) if *c <= b) {
                best = Some((i, *c));
            }
        }
        let (i, _) = best?;
        if let Some(c) = self.current.get_mut(i) {
            *c -= total;
        }
        Some(i)
    }
}
