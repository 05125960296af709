//! `round_robin`: every eligible host in turn, skipping unavailable ones. Weights are ignored
//! except that a weight of 0 excludes the host.
//!
//! Incremental: a host joining or leaving the eligible set is one binary search and one insert or
//! remove in the sorted index list (a memmove, no allocation past the list's growth); the cursor
//! keeps pointing at the same next host, so the rotation goes on where it was.

use super::{eligible, HostSpec, HostState};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RoundRobin {
    /// Host indices with weight > 0, in host order.
    hosts: Vec<u32>,
    /// Position in `hosts` of the next host to try.
    cursor: usize,
}

impl RoundRobin {
    pub(crate) fn new(hosts: &[HostSpec], seed: u64) -> RoundRobin {
        let hosts = eligible(hosts);
        // Start at a seeded offset so that workers rebuilt at the same moment do not all begin
        // with host 0.
        let cursor = if hosts.is_empty() {
            0
        } else {
            (seed % hosts.len() as u64) as usize
        };
        RoundRobin { hosts, cursor }
    }

    /// Host `index` now has `weight` (0: it leaves the rotation).
    pub(crate) fn set(&mut self, index: usize, weight: u32) {
        let Ok(host) = u32::try_from(index) else {
            return;
        };
        match self.hosts.binary_search(&host) {
            Ok(p) if weight == 0 => {
                self.hosts.remove(p);
                if p < self.cursor {
                    self.cursor -= 1;
                }
                if self.cursor >= self.hosts.len() {
                    self.cursor = 0;
                }
            }
            Err(p) if weight > 0 => {
                self.hosts.insert(p, host);
                if p < self.cursor {
                    self.cursor += 1;
                }
            }
            _ => {}
        }
    }

    /// A rebuild from `hosts` that continues at this one's cursor (tests).
    #[cfg(test)]
    pub(crate) fn rebuilt(&self, hosts: &[HostSpec]) -> RoundRobin {
        RoundRobin {
            hosts: eligible(hosts),
            cursor: self.cursor,
        }
    }

    #[inline]
    pub(crate) fn pick(&mut self, state: &impl HostState) -> Option<usize> {
        let n = self.hosts.len();
        for _ in 0..n {
            let host = self.hosts.get(self.cursor).copied();
            self.cursor += 1;
            if self.cursor >= n {
                self.cursor = 0;
            }
            if let Some(host) = host {
                let host = host as usize;
                if state.is_available(host) {
                    return Some(host);
                }
            }
        }
        None
    }
}
