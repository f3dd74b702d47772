//! `[admin]`: the listener for metrics, health, stats, publish and purge.

use std::fmt;
use std::net::SocketAddr;

use serde::Deserialize;

use crate::config::{ConfigErrors, join};

/// The `[admin]` section as written.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdminConfig {
    listen: Option<String>,
    token: Option<String>,
}

/// Validated admin settings.
#[derive(Clone, PartialEq)]
pub struct AdminConfig {
    /// Where the admin endpoints listen; loopback by default.
    pub listen: SocketAddr,
    /// Bearer token for `POST /publish` and `POST /purge` (and for everything when the
    /// listener is not on loopback). Never logged.
    pub token: Option<String>,
}

impl fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The default admin address: loopback only.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";

impl RawAdminConfig {
    /// Validate, recording every error under `path`.
    pub fn validate(self, path: &str, errors: &mut ConfigErrors) -> AdminConfig {
        let text = self.listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN);
        let listen = match text.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                errors.push(
                    join(path, "listen"),
                    format!("invalid address {text:?} (write e.g. \"127.0.0.1:9090\")"),
                );
                ([127, 0, 0, 1], 9090).into()
            }
        };
        let token = self.token.filter(|t| !t.is_empty());
        if token.is_none() && !listen.ip().is_loopback() {
            errors.push(
                join(path, "token"),
                format!(
                    "required when admin.listen ({listen}) is not a loopback address: \
                     anyone who reaches it could publish events and purge the cache"
                ),
            );
        }
        AdminConfig { listen, token }
    }
}
