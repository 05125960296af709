//! `weighted_round_robin`: smooth weighted round robin, as nginx.
//!
//! nginx's smooth WRR is O(hosts) per pick. Here the schedule is precomputed in `new()`:
//!
//! - Weights are divided by their gcd (this does not change nginx's sequence), giving the total
//!   weight `W`, the period of the schedule.
//! - If `W <= TABLE_CAP` and `W * hosts <= BUILD_BUDGET`, the table is the exact nginx sequence
//!   of one period (built by running nginx's algorithm `W` times).
//! - Else if `W <= TABLE_CAP`, the table is built in O(W log hosts) by earliest-virtual-deadline
//!   first with midpoint deadlines: host `i`'s `k`-th slot of a period has deadline
//!   `(k + 1/2) / w_i`. Every period still holds exactly `w_i` slots of host `i`, and slots of
//!   one host are evenly spread.
//! - Else (huge total weight) the same deadline order is run live on a 4-ary heap: O(log hosts)
//!   per pick.
//!
//! Either way the schedule is periodic with period `W` and each period holds exactly `w_i` picks
//! of host `i`, so every window of `W` consecutive picks has exact proportions when all hosts are
//! available. Unavailable hosts are skipped: the cursor moves past their slots, so among the
//! available hosts the proportions are kept. Skipping is a bounded scan of the table; after
//! [`PROBES`] unavailable slots it falls back to finding, for every available host, its next
//! slot (binary search in its precomputed slot list) — the same answer the scan would give, in
//! O(hosts log W).

use super::{HostSpec, HostState, PROBES};

/// Largest schedule table (entries). 64 Ki entries of u32 = 256 KiB.
pub(crate) const TABLE_CAP: u64 = 1 << 16;
/// Largest `W * hosts` for which the exact nginx sequence is computed in `new()`.
pub(crate) const BUILD_BUDGET: u64 = 1 << 22;

#[derive(Debug)]
pub(crate) struct WeightedRoundRobin {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    /// No host has a weight > 0.
    Empty,
    Table(Table),
    Heap(Heap),
}

impl WeightedRoundRobin {
    pub(crate) fn new(hosts: &[HostSpec]) -> WeightedRoundRobin {
        let hosts_w: Vec<(u32, u64)> = hosts
            .iter()
            .enumerate()
            .filter(|(_, h)| h.weight > 0)
            .filter_map(|(i, h)| u32::try_from(i).ok().map(|i| (i, u64::from(h.weight))))
            .collect();
        if hosts_w.is_empty() {
            return WeightedRoundRobin {
                inner: Inner::Empty,
            };
        }
        let g = hosts_w.iter().fold(0, |g, &(_, w)| gcd(g, w)).max(1);
        let hosts_w: Vec<(u32, u64)> = hosts_w.into_iter().map(|(i, w)| (i, w / g)).collect();
        let total: u64 = hosts_w.iter().map(|&(_, w)| w).sum();
        let n = hosts_w.len() as u64;
        let inner = if total <= TABLE_CAP {
            let schedule = if total.saturating_mul(n) <= BUILD_BUDGET {
                nginx_schedule(&hosts_w, total)
            } else {
                let mut heap = Heap::new(&hosts_w);
                (0..total).filter_map(|_| heap.next_any()).collect()
            };
            Inner::Table(Table::new(schedule, hosts.len()))
        } else {
            Inner::Heap(Heap::new(&hosts_w))
        };
        WeightedRoundRobin { inner }
    }

    #[inline]
    pub(crate) fn pick(&mut self, state: &impl HostState) -> Option<usize> {
        match &mut self.inner {
            Inner::Empty => None,
            Inner::Table(t) => t.pick(state),
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
#[derive(Debug)]
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

/// Earliest virtual deadline first over a 4-ary heap. A host's next deadline is
/// `(2 * count + 1) / (2 * weight)`; ties go to the lower host index.
#[derive(Debug)]
struct Heap {
    /// Min-heap by deadline.
    heap: Vec<Entry>,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    /// `2 * count + 1`: the deadline's numerator.
    num: u64,
    weight: u32,
    /// Host index; hosts are in list order, so it is also the tie-break.
    host: u32,
}

impl Entry {
    /// `self`'s deadline is before `other`'s. Branch-free: the heap walk's child choice is a coin
    /// flip for the branch predictor.
    #[inline(always)]
    fn before(&self, other: &Entry) -> bool {
        let a = u128::from(self.num) * u128::from(other.weight);
        let b = u128::from(other.num) * u128::from(self.weight);
        (a < b) | ((a == b) & (self.host < other.host))
    }
}

impl Heap {
    fn new(hosts_w: &[(u32, u64)]) -> Heap {
        let mut h = Heap {
            heap: hosts_w
                .iter()
                .map(|&(host, weight)| Entry {
                    num: 1,
                    weight: u32::try_from(weight).unwrap_or(u32::MAX),
                    host,
                })
                .collect(),
        };
        for i in (0..h.heap.len()).rev() {
            h.sift_down(i);
        }
        h
    }

    /// Restore the heap after the entry at `i` got a later deadline. A 4-ary heap (one 64-byte
    /// line of children, half the levels of a binary heap), bottom-up: move the hole down along
    /// the earliest children to a leaf, then sift the entry up (it usually belongs low).
    #[inline]
    fn sift_down(&mut self, i: usize) {
        let heap = self.heap.as_mut_slice();
        let n = heap.len();
        if i >= n {
            return;
        }
        let mut hole = i;
        loop {
            let first = 4 * hole + 1;
            let Some(kids) = heap.get(first..n.min(first + 4)) else {
                break;
            };
            let c = match kids {
                [k0, k1, k2, k3] => {
                    let a = usize::from(k1.before(k0));
                    let b = 2 + usize::from(k3.before(k2));
                    match (kids.get(a), kids.get(b)) {
                        (Some(ka), Some(kb)) if kb.before(ka) => b,
                        _ => a,
                    }
                }
                [] => break,
                _ => {
                    let mut c = 0;
                    for (k, e) in kids.iter().enumerate().skip(1) {
                        if kids.get(c).is_some_and(|best| e.before(best)) {
                            c = k;
                        }
                    }
                    c
                }
            };
            heap.swap(hole, first + c);
            hole = first + c;
        }
        // Sift the entry (now at `hole`) up, but not above `i`.
        while hole > i {
            let parent = (hole - 1) / 4;
            let (Some(p), Some(h)) = (heap.get(parent), heap.get(hole)) else {
                break;
            };
            if !h.before(p) {
                break;
            }
            heap.swap(hole, parent);
            hole = parent;
        }
    }

    /// Advance the host at heap position `i` by one slot and restore the heap.
    #[inline]
    fn advance(&mut self, i: usize) {
        if let Some(e) = self.heap.get_mut(i) {
            e.num += 2;
            self.sift_down(i);
        }
    }

    /// The next host of the schedule, ignoring availability.
    fn next_any(&mut self) -> Option<u32> {
        let host = self.heap.first()?.host;
        self.advance(0);
        Some(host)
    }

    #[inline]
    fn pick(&mut self, state: &impl HostState) -> Option<usize> {
        for _ in 0..self.heap.len().min(PROBES) {
            let host = self.heap.first()?.host as usize;
            // An unavailable host's slot is consumed too, as with the table's cursor.
            self.advance(0);
            if state.is_available(host) {
                return Some(host);
            }
        }
        self.pick_slow(state)
    }

    /// The available host with the earliest deadline, by a scan of the heap.
    #[cold]
    fn pick_slow(&mut self, state: &impl HostState) -> Option<usize> {
        let mut best: Option<(usize, Entry)> = None;
        for (i, e) in self.heap.iter().enumerate() {
            if !state.is_available(e.host as usize) {
                continue;
            }
            if !matches!(best, Some((_, b)) if !e.before(&b)) {
                best = Some((i, *e));
            }
        }
        let (i, e) = best?;
        self.advance(i);
        Some(e.host as usize)
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
