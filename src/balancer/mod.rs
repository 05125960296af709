//! Minimal host selection (round robin and O(n) smooth weighted round robin); superseded by the full balancer module.
use crate::config::LbType;
use std::net::IpAddr;
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostSpec {
    pub key: u64,
    pub weight: u32,
}
pub trait HostState {
    fn is_available(&self, index: usize) -> bool;
    fn active_sessions(&self, index: usize) -> u32;
}
pub struct Balancer {
    lb: LbType,
    hosts: Vec<HostSpec>,
    current: Vec<i64>,
    next: usize,
}
impl Balancer {
    pub fn new(lb_type: LbType, hosts: &[HostSpec], _seed: u64) -> Balancer {
        Balancer {
            lb: lb_type,
            hosts: hosts.to_vec(),
            current: vec![0; hosts.len()],
            next: 0,
        }
    }
    pub fn lb_type(&self) -> LbType {
        self.lb
    }
    pub fn pick(&mut self, _client_ip: IpAddr, state: &impl HostState) -> Option<usize> {
        let n = self.hosts.len();
        if self.lb == LbType::RoundRobin {
            for k in 0..n {
                let i = (self.next + k) % n;
                if state.is_available(i) {
                    self.next = i + 1;
                    return Some(i);
                }
            }
            return None;
        }
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for i in 0..n {
            if !state.is_available(i) || self.hosts[i].weight == 0 {
                continue;
            }
            self.current[i] += self.hosts[i].weight as i64;
            total += self.hosts[i].weight as i64;
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        if let Some(b) = best {
            self.current[b] -= total;
        }
        best
    }
}
