//! Event ids: `<boot>-<seq>`.
//!
//! `boot` is unique per [`Hub`](super::Hub) instance (several hubs live in one test process),
//! `seq` is one monotonic counter for the whole hub, so a single `Last-Event-ID` resumes a
//! stream that spans several channels.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Hex digits of a boot id: 48 bits make a collision between two restarts negligible while
/// keeping ids short on the wire.
const BOOT_HEX_DIGITS: usize = 12;
const BOOT_MASK: u64 = (1 << (BOOT_HEX_DIGITS * 4)) - 1;

/// Identifies one hub instance; ids of another boot cannot be replayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Boot(u64);

impl Boot {
    /// A fresh boot id, different for every call in this process and very likely different
    /// from every earlier process start.
    pub fn generate() -> Boot {
        /// Distinguishes hubs created in the same nanosecond of one process.
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut h = RandomState::new().build_hasher();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        h.write_u128(nanos);
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        h.write_u32(std::process::id());
        Boot(h.finish() & BOOT_MASK)
    }
}

impl Boot {
    /// Its bits, for storing it in an atomic.
    pub(crate) fn raw(self) -> u64 {
        self.0
    }

    /// From [`Boot::raw`].
    pub(crate) fn from_raw(raw: u64) -> Boot {
        Boot(raw & BOOT_MASK)
    }
}

impl std::str::FromStr for Boot {
    type Err = ParseIdError;

    /// The `<boot>` part of an id: 12 hex digits (a cluster epoch is stored this way).
    fn from_str(s: &str) -> Result<Boot, ParseIdError> {
        if s.len() != BOOT_HEX_DIGITS || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ParseIdError);
        }
        u64::from_str_radix(s, 16)
            .map(Boot)
            .map_err(|_| ParseIdError)
    }
}

impl fmt::Display for Boot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:0width$x}", self.0, width = BOOT_HEX_DIGITS)
    }
}

/// The id of an event, or a hub position (a cursor): every event with a greater `seq` of
/// the same boot happened after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EventId {
    /// The hub instance that assigned it.
    pub boot: Boot,
    /// Position in that hub's single sequence; 0 is "before the first event".
    pub seq: u64,
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.boot, self.seq)
    }
}

/// Why a `Last-Event-ID` could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an unpoll event id (expected <boot>-<seq>)")]
pub struct ParseIdError;

impl std::str::FromStr for EventId {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<EventId, ParseIdError> {
        let (boot, seq) = s.trim().split_once('-').ok_or(ParseIdError)?;
        if boot.len() != BOOT_HEX_DIGITS || !boot.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ParseIdError);
        }
        if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseIdError);
        }
        let boot = u64::from_str_radix(boot, 16).map_err(|_| ParseIdError)?;
        let seq = seq.parse().map_err(|_| ParseIdError)?;
        Ok(EventId {
            boot: Boot(boot),
            seq,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let id = EventId {
            boot: Boot::generate(),
            seq: 42,
        };
        let text = id.to_string();
        assert_eq!(text.len(), BOOT_HEX_DIGITS + 3);
        assert_eq!(text.parse::<EventId>(), Ok(id));
    }

    #[test]
    fn boots_differ_within_a_process() {
        assert_ne!(Boot::generate(), Boot::generate());
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in [
            "",
            "42",
            "abc-1",
            "00000000000g-1",
            "000000000000-",
            "000000000000-x",
            "000000000000--1",
        ] {
            assert_eq!(bad.parse::<EventId>(), Err(ParseIdError), "{bad:?}");
        }
        assert!(
            "000000000000-18446744073709551616"
                .parse::<EventId>()
                .is_err()
        );
    }
}
