//! `round_robin`: every eligible host in turn, skipping unavailable ones. Weights are ignored
//! except that a weight of 0 excludes the host.

use super::{eligible, HostSpec, HostState};

#[derive(Debug)]
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
