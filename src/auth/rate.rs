//! Connection rate per client address: a GCRA (generic cell rate algorithm) table, one
//! timestamp per address, which allows `burst` new streams at once and then one per
//! `period / burst`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Addresses tracked at once. Full policy: entries whose budget has fully recovered carry no
/// state and are swept; if the table is still full, an unknown address is let through
/// uncounted (fail open) — an attacker with that many addresses is not slowed by a
/// per-address rate anyway, and the per-address and hub-wide subscriber caps still hold.
pub const MAX_TRACKED_ADDRESSES: usize = 100_000;

/// `burst` new streams per `period` for each address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Streams allowed at once.
    pub burst: u32,
    /// Time over which `burst` streams are replenished.
    pub period: Duration,
}

impl Rate {
    /// Parse `"N/DURATION"` (`"20/1m"`, `"5/s"`).
    pub fn parse(text: &str) -> Result<Rate, String> {
        let invalid = || format!("invalid rate {text:?} (write e.g. \"20/1m\" or \"5/s\")");
        let (n, period) = text.split_once('/').ok_or_else(invalid)?;
        let burst: u32 = n.trim().parse().map_err(|_| invalid())?;
        let period = period.trim();
        let period = if period.starts_with(|c: char| c.is_ascii_digit()) {
            crate::config::parse_duration(period).map_err(|_| invalid())?
        } else {
            crate::config::parse_duration(&format!("1{period}")).map_err(|_| invalid())?
        };
        if burst == 0 || period.is_zero() {
            return Err(format!(
                "rate {text:?} must allow at least 1 per non-zero period"
            ));
        }
        Ok(Rate { burst, period })
    }

    fn interval(self) -> Duration {
        self.period / self.burst
    }
}

/// The GCRA table of one rule.
#[derive(Debug)]
pub struct RateTable {
    rate: Rate,
    /// Theoretical arrival time per address: the moment its budget is whole again. Bounded
    /// by [`MAX_TRACKED_ADDRESSES`]. Held only for a look-up and an insert, never across an
    /// await.
    tat: Mutex<HashMap<IpAddr, Instant>>,
}

impl RateTable {
    /// A table enforcing `rate`.
    pub fn new(rate: Rate) -> Self {
        RateTable {
            rate,
            tat: Mutex::new(HashMap::new()),
        }
    }

    /// Count one new stream from `ip` at `now`; `Err(wait)` when it is over the rate.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let interval = self.rate.interval();
        // The budget: how far ahead of `now` the TAT may run.
        let tolerance = self.rate.period.saturating_sub(interval);
        let mut table = self.tat.lock().unwrap_or_else(PoisonError::into_inner);
        if table.len() >= MAX_TRACKED_ADDRESSES && !table.contains_key(&ip) {
            table.retain(|_, tat| *tat > now);
            if table.len() >= MAX_TRACKED_ADDRESSES {
                return Ok(());
            }
        }
        let tat = table.get(&ip).copied().unwrap_or(now).max(now);
        let ahead = tat - now;
        if ahead > tolerance {
            return Err(ahead - tolerance);
        }
        table.insert(ip, tat + interval);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates() {
        let r = Rate::parse("20/1m").unwrap();
        assert_eq!((r.burst, r.period), (20, Duration::from_secs(60)));
        let r = Rate::parse("5/s").unwrap();
        assert_eq!((r.burst, r.period), (5, Duration::from_secs(1)));
        for bad in ["", "5", "x/s", "0/s", "5/0s", "5/fast"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn allows_a_burst_then_one_per_interval() {
        let table = RateTable::new(Rate::parse("3/3s").unwrap());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(table.check(a, t0), Ok(()));
        }
        assert_eq!(table.check(a, t0), Err(Duration::from_secs(1)));
        assert_eq!(table.check(b, t0), Ok(()), "addresses are counted apart");
        assert_eq!(
            table.check(a, t0 + Duration::from_millis(400)),
            Err(Duration::from_millis(600))
        );
        assert_eq!(table.check(a, t0 + Duration::from_secs(1)), Ok(()));
        assert!(table.check(a, t0 + Duration::from_secs(1)).is_err());
        // After a full period of quiet, the whole burst is back.
        let later = t0 + Duration::from_secs(10);
        for _ in 0..3 {
            assert_eq!(table.check(a, later), Ok(()));
        }
        assert!(table.check(a, later).is_err());
    }
}
