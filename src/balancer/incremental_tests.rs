//! `Balancer::update` against rebuilds: over random sequences of hosts joining, leaving and
//! changing weight, an updated balancer has the tables of one rebuilt from the same hosts and
//! picks as it does (continuing at the same cursor or random state); smooth WRR stays exact per
//! period across changes.

use std::net::{IpAddr, Ipv4Addr};

use super::*;

const ALL: [LbType; 5] = [
    LbType::RoundRobin,
    LbType::WeightedRoundRobin,
    LbType::LeastActive,
    LbType::Random,
    LbType::ClientIpHash,
];

struct Avail(Vec<bool>);

impl HostState for Avail {
    fn is_available(&self, index: usize) -> bool {
        self.0.get(index).copied().unwrap_or(false)
    }
    fn active_sessions(&self, index: usize) -> u32 {
        (index % 5) as u32
    }
}

fn ip(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0A00_0000u32.wrapping_add(n)))
}

/// A random weight: mostly small, sometimes 0, sometimes large (WRR's heap).
fn weight(rng: &mut fastrand::Rng, large: bool) -> u32 {
    match rng.u32(0..10) {
        0 => 0,
        1 if large => rng.u32(1000..100_000),
        _ => rng.u32(1..12),
    }
}

/// One random change to `hosts`; returns the index changed.
fn random_op(rng: &mut fastrand::Rng, hosts: &mut Vec<HostSpec>, large: bool) -> usize {
    let vacant: Vec<usize> = (0..hosts.len()).filter(|&i| hosts[i].weight == 0).collect();
    match rng.u32(0..4) {
        // A host joins: a vacant slot or a new one at the end.
        0 => {
            let spec = HostSpec {
                key: rng.u64(..),
                weight: weight(rng, large).max(1),
            };
            match (rng.bool(), vacant.first()) {
                (true, Some(&i)) => {
                    hosts[i] = spec;
                    i
                }
                _ => {
                    hosts.push(spec);
                    hosts.len() - 1
                }
            }
        }
        // A host leaves.
        1 if !hosts.is_empty() => {
            let i = rng.usize(..hosts.len());
            hosts[i] = HostSpec { key: 0, weight: 0 };
            i
        }
        // A weight change.
        _ if !hosts.is_empty() => {
            let i = rng.usize(..hosts.len());
            hosts[i].weight = weight(rng, large);
            i
        }
        _ => {
            hosts.push(HostSpec {
                key: rng.u64(..),
                weight: 1,
            });
            hosts.len() - 1
        }
    }
}

fn check_against_rebuild(lb: LbType, seed: u64, large: bool) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let n = rng.usize(0..40);
    let mut hosts: Vec<HostSpec> = (0..n)
        .map(|_| HostSpec {
            key: rng.u64(..),
            weight: weight(&mut rng, large),
        })
        .collect();
    let mut b = Balancer::new(lb, &hosts, seed);
    // client_ip_hash re-populates 65,537 slots per update: fewer rounds.
    let rounds = if lb == LbType::ClientIpHash { 15 } else { 200 };
    for round in 0..rounds {
        let mut changed = Vec::new();
        for _ in 0..rng.usize(1..6) {
            changed.push(random_op(&mut rng, &mut hosts, large));
        }
        b.update(&hosts, &changed);
        let rebuilt = b.rebuilt(&hosts);
        assert!(
            b.same_tables(&rebuilt),
            "{lb:?} seed {seed} round {round}: tables differ from a rebuild"
        );
        // Both pick alike from here, under any availability.
        let (mut x, mut y) = (b.clone(), rebuilt);
        for p in 0..64 {
            let avail = Avail((0..hosts.len()).map(|_| rng.u32(0..4) != 0).collect());
            let client = ip(rng.u32(..));
            assert_eq!(
                x.pick(client, &avail),
                y.pick(client, &avail),
                "{lb:?} seed {seed} round {round} pick {p}"
            );
        }
        // Move the balancer's own cursor on (every host available).
        let all = Avail(vec![true; hosts.len()]);
        for _ in 0..rng.usize(0..30) {
            b.pick(ip(rng.u32(..)), &all);
        }
    }
}

#[test]
fn updated_balancers_pick_as_rebuilt_ones() {
    for lb in ALL {
        for seed in 0..20 {
            check_against_rebuild(lb, seed, false);
        }
    }
}

#[test]
fn updated_wrr_heap_picks_as_rebuilt_one() {
    // Large weights: past the exact table, the live heap updated in place.
    for seed in 100..140 {
        check_against_rebuild(LbType::WeightedRoundRobin, seed, true);
    }
}

#[test]
fn update_with_nothing_changed_keeps_everything() {
    let hosts: Vec<HostSpec> = (0..10).map(|i| HostSpec { key: i, weight: 3 }).collect();
    for lb in ALL {
        let mut b = Balancer::new(lb, &hosts, 7);
        let before = b.rebuilt(&hosts);
        b.update(&hosts, &[]);
        assert!(b.same_tables(&before), "{lb:?}");
    }
}

/// Every window of `total` picks right after a change has exact proportions: each host gets
/// its weight's share of the period.
#[test]
fn smooth_wrr_stays_exact_per_period_across_changes() {
    let mut rng = fastrand::Rng::with_seed(3);
    for large in [false, true] {
        let mut hosts: Vec<HostSpec> = (0..50)
            .map(|i| HostSpec {
                key: i,
                weight: if large {
                    rng.u32(2000..3000)
                } else {
                    rng.u32(1..4)
                },
            })
            .collect();
        let mut b = Balancer::new(LbType::WeightedRoundRobin, &hosts, 0);
        let all = Avail(vec![true; 200]);
        for _ in 0..20 {
            let mut changed = Vec::new();
            for _ in 0..3 {
                let i = rng.usize(..60);
                if i >= hosts.len() {
                    hosts.push(HostSpec { key: 0, weight: 0 });
                }
                let i = i.min(hosts.len() - 1);
                hosts[i] = HostSpec {
                    key: rng.u64(..),
                    weight: if large {
                        rng.u32(2000..3000)
                    } else {
                        rng.u32(1..4)
                    },
                };
                changed.push(i);
            }
            b.update(&hosts, &changed);
            let total: u64 = hosts.iter().map(|h| u64::from(h.weight)).sum();
            if !large {
                // The small table: its period is the total weight over the gcd; take it whole.
                let g = hosts
                    .iter()
                    .filter(|h| h.weight > 0)
                    .fold(0u64, |g, h| gcd(g, u64::from(h.weight)));
                let period = total / g.max(1);
                // A table rebuild keeps its phase, so a period starts at the table's start:
                // skip to it by picking out the rest of the current one.
                let mut counts = vec![0u64; hosts.len()];
                let seq: Vec<usize> = (0..2 * period)
                    .map(|_| b.pick(ip(0), &all).unwrap())
                    .collect();
                // Some window of one period in the first two periods is aligned; every window
                // is exact for nginx's periodic sequence.
                for &h in &seq[..period as usize] {
                    counts[h] += 1;
                }
                for (h, spec) in hosts.iter().enumerate() {
                    assert_eq!(counts[h] * g.max(1), u64::from(spec.weight), "host {h}");
                }
            } else {
                let mut counts = vec![0u64; hosts.len()];
                for _ in 0..total {
                    counts[b.pick(ip(0), &all).unwrap()] += 1;
                }
                for (h, spec) in hosts.iter().enumerate() {
                    assert_eq!(counts[h], u64::from(spec.weight), "host {h}");
                }
            }
        }
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}
