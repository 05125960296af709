//! Reconnect delays: exponential from a base, doubling per failure, capped, with "equal jitter"
//! (half fixed, half random) so a fleet of agents does not reconnect in lockstep. Pure.

use std::time::Duration;

/// Delay policy of one connection slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base_ms: u64,
    pub max_ms: u64,
}

impl Backoff {
    /// The delay after `failures` consecutive failures (1 for the first), given `unit` in [0, 1)
    /// from a random source. Always within [ceiling/2, ceiling] where ceiling = min(base·2^(n-1), max).
    pub fn delay(&self, failures: u32, unit: f64) -> Duration {
        let exponent = failures.saturating_sub(1).min(32);
        let ceiling = self
            .base_ms
            .saturating_mul(1u64 << exponent)
            .min(self.max_ms)
            .max(1);
        let half = ceiling / 2;
        let jitter = ((ceiling - half) as f64 * unit.clamp(0.0, 1.0)) as u64;
        Duration::from_millis(half + jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_until_the_cap() {
        let b = Backoff {
            base_ms: 100,
            max_ms: 1000,
        };
        let ceilings: Vec<u64> = (1..=6)
            .map(|n| b.delay(n, 1.0).as_millis() as u64)
            .collect();
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn jitter_stays_in_upper_half() {
        let b = Backoff {
            base_ms: 1000,
            max_ms: 30_000,
        };
        assert_eq!(b.delay(1, 0.0), Duration::from_millis(500));
        assert_eq!(b.delay(1, 0.999_999), Duration::from_millis(999));
        assert_eq!(b.delay(40, 0.0), Duration::from_millis(15_000));
    }

    #[test]
    fn huge_failure_counts_do_not_overflow() {
        let b = Backoff {
            base_ms: u64::MAX / 2,
            max_ms: u64::MAX,
        };
        assert!(b.delay(u32::MAX, 0.5) > Duration::ZERO);
    }
}
