//! Retry delays: exponential with jitter, capped. Separate from the engine's repair
//! attempts: a repair is a new phase attempt, a retry is the same attempt delivered again.

use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            max: Duration::from_secs(600),
        }
    }
}

impl Backoff {
    /// Delay before delivery number `attempt + 1`, given `attempt` deliveries so far.
    /// "Equal jitter": half the exponential delay is fixed, half is random, so retries
    /// from a burst of failures spread out but never retry immediately.
    #[must_use]
    pub fn delay(&self, attempt: i32) -> Duration {
        let exp = u32::try_from(attempt.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
        let raw = self
            .base
            .checked_mul(2u32.saturating_pow(exp))
            .unwrap_or(self.max)
            .min(self.max);
        let half = raw / 2;
        let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(fastrand::u64(0..=jitter_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_within_jitter_and_caps() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        for _ in 0..100 {
            let d1 = b.delay(1);
            assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100));
            let d3 = b.delay(3);
            assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400));
            let d30 = b.delay(30);
            assert!(d30 >= Duration::from_secs(1) && d30 <= Duration::from_secs(2));
        }
    }
}
