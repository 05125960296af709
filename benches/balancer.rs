//! One `Balancer::pick` at 1, 10 and 1,000 hosts (all available) for every lb_type, beside a naive
//! O(hosts) smooth WRR scan for comparison; building a balancer; and updating one host's weight
//! at 10,000 hosts (`Balancer::update`) beside a rebuild.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ringtun::balancer::weighted_round_robin::NaiveSmoothWrr;
use ringtun::balancer::{Balancer, HostSpec, HostState};
use ringtun::config::LbType;

struct State {
    available: Vec<bool>,
    active: Vec<u32>,
}

impl HostState for State {
    fn is_available(&self, index: usize) -> bool {
        self.available.get(index).copied().unwrap_or(false)
    }
    fn active_sessions(&self, index: usize) -> u32 {
        self.active.get(index).copied().unwrap_or(0)
    }
}

fn hosts(n: usize) -> Vec<HostSpec> {
    (0..n)
        .map(|i| HostSpec {
            key: (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x1234_5678,
            weight: (i % 10 + 1) as u32,
        })
        .collect()
}

fn state(n: usize) -> State {
    State {
        available: vec![true; n],
        active: (0..n).map(|i| (i % 7) as u32).collect(),
    }
}

const TYPES: [(&str, LbType); 5] = [
    ("round_robin", LbType::RoundRobin),
    ("weighted_round_robin", LbType::WeightedRoundRobin),
    ("least_active", LbType::LeastActive),
    ("random", LbType::Random),
    ("client_ip_hash", LbType::ClientIpHash),
];

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for n in [1usize, 10, 1000] {
        let hs = hosts(n);
        let st = state(n);
        for (name, lb) in TYPES {
            let mut b = Balancer::new(lb, &hs, 42);
            let mut addr = 0x0A00_0000u32;
            group.bench_with_input(BenchmarkId::new(name, n), &n, |bench, _| {
                bench.iter(|| {
                    addr = addr.wrapping_add(0x9E37_79B9);
                    b.pick(black_box(IpAddr::V4(Ipv4Addr::from(addr))), black_box(&st))
                })
            });
        }
        let mut naive = NaiveSmoothWrr::new(&hs);
        group.bench_with_input(BenchmarkId::new("naive_smooth_wrr", n), &n, |bench, _| {
            bench.iter(|| naive.pick(black_box(&st)))
        });
    }
    // Beside the table: the live EDF heap (total weight above the table cap), and every strategy
    // with one host in ten unavailable (the schedule/probe skipping path).
    let n = 1000;
    let heavy: Vec<HostSpec> = hosts(n)
        .into_iter()
        .enumerate()
        .map(|(i, h)| HostSpec {
            // + i % 3: no common divisor, so the total stays above the table cap.
            weight: h.weight * 100_003 + (i % 3) as u32,
            ..h
        })
        .collect();
    let st = state(n);
    let mut b = Balancer::new(LbType::WeightedRoundRobin, &heavy, 42);
    group.bench_with_input(BenchmarkId::new("wrr_live_heap", n), &n, |bench, _| {
        bench.iter(|| b.pick(black_box(IpAddr::V4(Ipv4Addr::LOCALHOST)), black_box(&st)))
    });
    let mut partial = state(n);
    partial
        .available
        .iter_mut()
        .enumerate()
        .for_each(|(i, a)| *a = i % 10 != 3);
    for (name, lb) in TYPES {
        let mut b = Balancer::new(lb, &hosts(n), 42);
        let mut addr = 0x0A00_0000u32;
        let id = BenchmarkId::new(format!("{name}_90pct_available"), n);
        group.bench_with_input(id, &n, |bench, _| {
            bench.iter(|| {
                addr = addr.wrapping_add(0x9E37_79B9);
                b.pick(
                    black_box(IpAddr::V4(Ipv4Addr::from(addr))),
                    black_box(&partial),
                )
            })
        });
    }
    group.finish();
}

fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("new");
    group.sample_size(10);
    let hs = hosts(1000);
    for (name, lb) in TYPES {
        group.bench_with_input(BenchmarkId::new(name, 1000), &hs, |bench, hs| {
            bench.iter(|| Balancer::new(lb, black_box(hs), 42))
        });
    }
    group.finish();
}

/// One host's weight changing in a 10,000-host cluster: `Balancer::update` (what a worker does per
/// published change) beside a rebuild with `Balancer::new` (what it did before).
fn update(c: &mut Criterion) {
    let mut group = c.benchmark_group("update");
    group.sample_size(10);
    let n = 10_000;
    let mut hs = hosts(n);
    for (name, lb) in TYPES {
        let mut b = Balancer::new(lb, &hs, 42);
        let mut i = 0usize;
        group.bench_with_input(BenchmarkId::new(name, n), &n, |bench, _| {
            bench.iter(|| {
                i = (i + 7919) % n;
                if let Some(h) = hs.get_mut(i) {
                    h.weight = h.weight % 10 + 1;
                }
                b.update(black_box(&hs), &[i]);
            })
        });
        group.bench_with_input(
            BenchmarkId::new(format!("{name}_rebuild"), n),
            &hs,
            |bench, hs| bench.iter(|| Balancer::new(lb, black_box(hs), 42)),
        );
    }
    group.finish();
}

criterion_group!(benches, pick, build, update);
criterion_main!(benches);
