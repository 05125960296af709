//! Rate limiting of log floods: a small token bucket per call site.
//!
//! A warning that a peer can trigger at will (refused handshakes, failing accepts) must not turn
//! into millions of log lines. [`log_limited!`](crate::log_limited) wraps one `tracing` event in a
//! per-call-site [`LogLimiter`]: a burst of lines passes, then about one line per second; the next
//! line that passes carries `suppressed = N`, the number of lines dropped since the last one.
//!
//! This module only decides whether a line is printed; it must not be used on a per-byte or
//! per-session hot path (the bucket takes an uncontended mutex), only where something went wrong.

use std::sync::Mutex;
use std::time::Instant;

/// Lines a call site may print at once before it is throttled.
pub const DEFAULT_BURST: u32 = 10;
/// Lines per second a throttled call site may print.
pub const DEFAULT_PER_SECOND: u32 = 1;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Option<Instant>,
    suppressed: u64,
}

/// A token bucket for one log call site.
#[derive(Debug)]
pub struct LogLimiter {
    burst: u32,
    per_second: u32,
    bucket: Mutex<Bucket>,
}

impl LogLimiter {
    /// A bucket holding `burst` tokens, refilled at `per_second` tokens a second.
    pub const fn new(burst: u32, per_second: u32) -> Self {
        Self {
            burst,
            per_second,
            bucket: Mutex::new(Bucket {
                tokens: burst as f64,
                last: None,
                suppressed: 0,
            }),
        }
    }

    /// Takes a token now: `Some(lines suppressed since the last allowed one)` when the line may be
    /// printed, `None` when it must be dropped.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    /// [`allow`](Self::allow) at a given instant (tests).
    pub fn allow_at(&self, now: Instant) -> Option<u64> {
        // A poisoned bucket only means another thread panicked while logging: keep logging.
        let mut b = self
            .bucket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(last) = b.last {
            let elapsed_s = now.saturating_duration_since(last).as_secs_f64();
            b.tokens =
                (b.tokens + elapsed_s * f64::from(self.per_second)).min(f64::from(self.burst));
        }
        b.last = Some(now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Some(std::mem::take(&mut b.suppressed))
        } else {
            b.suppressed += 1;
            None
        }
    }
}

/// Emits one `tracing` event through a token bucket of its own call site.
///
/// ```
/// # let peer = "1.2.3.4:5";
/// ringtun::log_limited!(warn!(%peer, "tunnel connection refused"));
/// ```
///
/// Printed lines carry a `suppressed` field: lines dropped at this call site since the last one.
#[macro_export]
macro_rules! log_limited {
    ($level:ident ! ( $($arg:tt)* )) => {{
        static LIMITER: $crate::log_limit::LogLimiter = $crate::log_limit::LogLimiter::new(
            $crate::log_limit::DEFAULT_BURST,
            $crate::log_limit::DEFAULT_PER_SECOND,
        );
        if let Some(suppressed) = LIMITER.allow() {
            ::tracing::$level!(suppressed, $($arg)*);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_one_per_second_with_suppressed_count() {
        let limiter = LogLimiter::new(3, 1);
        let t0 = Instant::now();
        assert_eq!(limiter.allow_at(t0), Some(0));
        assert_eq!(limiter.allow_at(t0), Some(0));
        assert_eq!(limiter.allow_at(t0), Some(0));
        for _ in 0..100 {
            assert_eq!(limiter.allow_at(t0), None);
        }
        // Half a second refills half a token: still throttled.
        assert_eq!(limiter.allow_at(t0 + Duration::from_millis(500)), None);
        // One more half: one line passes and reports what was dropped.
        assert_eq!(
            limiter.allow_at(t0 + Duration::from_millis(1000)),
            Some(101)
        );
        assert_eq!(limiter.allow_at(t0 + Duration::from_millis(1000)), None);
        // A long pause refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(limiter.allow_at(later), Some(1));
        assert_eq!(limiter.allow_at(later), Some(0));
        assert_eq!(limiter.allow_at(later), Some(0));
        assert_eq!(limiter.allow_at(later), None);
    }

    #[test]
    fn macro_compiles_with_fields_and_format_args() {
        let peer = "1.2.3.4:5";
        let n = 3;
        for _ in 0..20 {
            crate::log_limited!(warn!(%peer, n, "a test line {}", n));
        }
    }
}
