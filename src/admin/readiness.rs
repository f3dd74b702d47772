//! Readiness: which components are not ready yet, and why. `/readyz` is 200 only when none
//! is; the sources report here as they connect and lose their connection.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

/// The Postgres source's component name: `/readyz` says `postgres: ...` until its listener
/// is up.
pub const POSTGRES: &str = "postgres";

/// The MQTT source's component name: `/readyz` says `mqtt: ...` until the broker
/// connection is up.
pub const MQTT: &str = "mqtt";

/// Not-ready reasons by component (`postgres`, `mqtt`).
#[derive(Debug, Default)]
pub struct Readiness {
    /// Held only to insert, remove or copy one entry; never across an await.
    not_ready: Mutex<BTreeMap<&'static str, String>>,
}

impl Readiness {
    /// Mark `component` not ready (with the reason) or ready (`None`).
    pub fn set(&self, component: &'static str, not_ready: Option<String>) {
        let mut map = self
            .not_ready
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match not_ready {
            Some(reason) => {
                map.insert(component, reason);
            }
            None => {
                map.remove(component);
            }
        }
    }

    /// The reasons this instance is not ready, by component name; empty when ready.
    pub fn not_ready(&self) -> Vec<(&'static str, String)> {
        let map = self
            .not_ready
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.iter().map(|(k, v)| (*k, v.clone())).collect()
    }

    /// Whether every component is ready.
    pub fn is_ready(&self) -> bool {
        self.not_ready
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::Readiness;

    #[test]
    fn ready_once_every_component_is() {
        let readiness = Readiness::default();
        assert!(readiness.is_ready());
        readiness.set("postgres", Some("starting".into()));
        readiness.set("mqtt", Some("connecting".into()));
        assert!(!readiness.is_ready());
        readiness.set("postgres", None);
        assert_eq!(
            readiness.not_ready(),
            vec![("mqtt", "connecting".to_string())]
        );
        readiness.set("mqtt", None);
        assert!(readiness.is_ready());
    }
}
