//! The live schedule of smooth WRR for large clusters: earliest virtual deadline first over a
//! 4-ary heap, O(log hosts) per pick and per host change.
//!
//! Host `i`'s `k`-th slot has the virtual deadline `(2k + 1) / (2 w_i)`; ties go to the lower
//! host index. The cursor is the last slot handed out (deadline and host). A host that joins or
//! changes weight takes its first slot after the cursor — exactly where a schedule rebuilt from
//! scratch and run up to the cursor would have it — so an incremental change and a rebuild at the
//! same cursor give the same picks, and proportions stay exact per period from there on.

use super::super::{HostState, PROBES};

/// `pos` of a host not in the heap.
const ABSENT: u32 = u32::MAX;

#[derive(Debug, Clone)]
pub(super) struct Heap {
    /// Min-heap by deadline.
    heap: Vec<Entry>,
    /// Heap position per host index (`ABSENT` when weight 0).
    pos: Vec<u32>,
    /// The last slot handed out (its deadline before it advanced).
    cursor: Option<Entry>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Entry {
    /// `2 * k + 1`: the deadline's numerator.
    num: u64,
    weight: u32,
    /// Host index; also the tie-break.
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

    /// Host `host`'s first slot after `cursor` with weight `weight` (> 0).
    fn first_after(cursor: Option<Entry>, weight: u32, host: u32) -> Entry {
        let num = match cursor {
            None => 1,
            Some(c) => {
                // Smallest odd m with m / w > c.num / c.weight, or equal and host > c.host.
                let x = u128::from(c.num) * u128::from(weight);
                let cw = u128::from(c.weight.max(1));
                let (q, r) = (x / cw, x % cw);
                let m = if r == 0 && host > c.host { q } else { q + 1 };
                let m = if m % 2 == 0 { m + 1 } else { m };
                u64::try_from(m).unwrap_or(u64::MAX)
            }
        };
        Entry { num, weight, host }
    }
}

impl Heap {
    /// The schedule of `weights` (by host index) continued after `cursor`.
    pub(super) fn new(weights: &[u32], cursor: Option<Entry>) -> Heap {
        let mut h = Heap {
            heap: Vec::new(),
            pos: vec![ABSENT; weights.len()],
            cursor,
        };
        for (i, &w) in weights.iter().enumerate() {
            if let (true, Ok(i)) = (w > 0, u32::try_from(i)) {
                h.heap.push(Entry::first_after(cursor, w, i));
            }
        }
        for (k, e) in h.heap.iter().enumerate() {
            if let Some(p) = h.pos.get_mut(e.host as usize) {
                *p = k as u32;
            }
        }
        for i in (0..h.heap.len()).rev() {
            h.sift_down(i);
        }
        h
    }

    pub(super) fn cursor(&self) -> Option<Entry> {
        self.cursor
    }

    pub(super) fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Host `index` now has `weight` (0: it leaves); its next slot is the first after the
    /// cursor.
    pub(super) fn set(&mut self, index: usize, weight: u32) {
        let Ok(host) = u32::try_from(index) else {
            return;
        };
        if self.pos.len() <= index {
            self.pos.resize(index + 1, ABSENT);
        }
        if let Some(&p) = self.pos.get(index) {
            if p != ABSENT {
                self.remove_at(p as usize);
            }
        }
        if weight > 0 {
            let i = self.heap.len();
            self.heap
                .push(Entry::first_after(self.cursor, weight, host));
            if let Some(p) = self.pos.get_mut(index) {
                *p = i as u32;
            }
            self.sift_up(i);
        }
    }

    fn remove_at(&mut self, i: usize) {
        let Some(last) = self.heap.len().checked_sub(1) else {
            return;
        };
        self.swap(i, last);
        if let Some(e) = self.heap.pop() {
            if let Some(p) = self.pos.get_mut(e.host as usize) {
                *p = ABSENT;
            }
        }
        if i < self.heap.len() {
            self.sift_up(i);
            self.sift_down(i);
        }
    }

    #[inline(always)]
    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        for k in [a, b] {
            if let Some(e) = self.heap.get(k) {
                if let Some(p) = self.pos.get_mut(e.host as usize) {
                    *p = k as u32;
                }
            }
        }
    }

    fn sift_up(&mut self, mut hole: usize) {
        while hole > 0 {
            let parent = (hole - 1) / 4;
            let (Some(p), Some(h)) = (self.heap.get(parent), self.heap.get(hole)) else {
                break;
            };
            if !h.before(p) {
                break;
            }
            self.swap(hole, parent);
            hole = parent;
        }
    }

    /// Restore the heap after the entry at `i` got a later deadline: a 4-ary heap (one 64-byte
    /// line of children, half the levels of a binary heap).
    #[inline]
    fn sift_down(&mut self, mut hole: usize) {
        let n = self.heap.len();
        loop {
            let first = 4 * hole + 1;
            let Some(kids) = self.heap.get(first..n.min(first + 4)) else {
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
            let (Some(kid), Some(me)) = (self.heap.get(first + c), self.heap.get(hole)) else {
                break;
            };
            if !kid.before(me) {
                break;
            }
            self.swap(hole, first + c);
            hole = first + c;
        }
    }

    /// Hand out the slot at heap position `i` and restore the heap.
    #[inline]
    fn advance(&mut self, i: usize) {
        if let Some(e) = self.heap.get_mut(i) {
            self.cursor = Some(*e);
            e.num += 2;
            self.sift_down(i);
        }
    }

    #[inline]
    pub(super) fn pick(&mut self, state: &impl HostState) -> Option<usize> {
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

    /// Every host's next slot, by host (tests compare schedules).
    #[cfg(test)]
    pub(super) fn entries(&self) -> Vec<(u32, u64, u32)> {
        let mut v: Vec<_> = self
            .heap
            .iter()
            .map(|e| (e.host, e.num, e.weight))
            .collect();
        v.sort_unstable();
        v
    }
}
