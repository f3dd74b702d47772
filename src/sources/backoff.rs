//! Capped exponential backoff with full jitter, for reconnecting a source (Postgres,
//! MQTT): many unpoll instances that lost the same server must not reconnect in lock-step.

use std::time::Duration;

/// Reconnect delays: attempt `n` (from 0) waits a random time in `[min, min(max, min·2ⁿ)]`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Start at `min`, never above `max`.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The upper bound of the next delay (before jitter).
    pub fn ceiling(&self) -> Duration {
        // 2^20 × 1ms is already ~17 minutes: past that only the cap matters.
        let factor = 1u32 << self.attempt.min(20);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The next delay, jittered uniformly between `min` and the ceiling.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let span = ceiling.saturating_sub(self.min).as_nanos();
        let span = u64::try_from(span).unwrap_or(u64::MAX);
        self.min + Duration::from_nanos(fastrand::u64(0..=span))
    }

    /// Failed attempts since the last [`Backoff::reset`].
    #[cfg(test)]
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// After a success: the next failure starts from `min` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_jitter_inside_bounds() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        let mut b = Backoff::new(min, max);
        let ceilings: Vec<u128> = (0..6)
            .map(|_| {
                let c = b.ceiling();
                let d = b.next_delay();
                assert!(d >= min && d <= c, "{d:?} outside [{min:?}, {c:?}]");
                c.as_millis()
            })
            .collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.attempts(), 6);
        b.reset();
        assert_eq!(b.ceiling(), min);
        for _ in 0..100 {
            b.next_delay();
        }
        assert_eq!(b.ceiling(), max, "no overflow after many attempts");
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut b = Backoff::new(Duration::from_millis(1), Duration::from_secs(10));
        for _ in 0..10 {
            b.next_delay();
        }
        let delays: std::collections::HashSet<Duration> = (0..20)
            .map(|_| {
                let mut c = b.clone();
                c.next_delay()
            })
            .collect();
        assert!(delays.len() > 10, "jitter should vary: {delays:?}");
    }
}
