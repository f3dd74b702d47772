//! The route table: which rule, if any, a request falls under. Built from one config
//! snapshot; a reload builds a new table.

use std::borrow::Cow;

use http::Method;

use crate::config::Config;
use crate::metrics::{ProxyMetrics, RuleCounters};
use crate::route::PathParams;

/// What the handler does with a request.
#[derive(Debug)]
pub enum Action {
    /// Forward to the upstream unchanged.
    Proxy,
}

impl Action {
    /// Label for logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Proxy => "proxy",
        }
    }
}

/// The outcome of routing one request.
pub struct Route<'a> {
    /// What to do.
    pub action: Action,
    /// Values of the matched pattern's `{name}` segments.
    pub params: PathParams,
    /// The rule's name for metrics and logs (`proxy`, `cache[0]`, ...).
    pub name: &'a str,
    /// The rule's response counters.
    pub counters: &'a RuleCounters,
}

/// Compiled rules of one config snapshot.
pub struct Routes {
    proxy: RuleCounters,
}

impl Routes {
    /// Compile the rules of `config`.
    pub fn build(_config: &Config, metrics: &ProxyMetrics) -> Routes {
        Routes {
            proxy: metrics.rule_counters(Cow::Borrowed("proxy")),
        }
    }

    /// Route a request by method and path (without query).
    pub fn resolve(&self, _method: &Method, _path: &str) -> Route<'_> {
        Route {
            action: Action::Proxy,
            params: PathParams::default(),
            name: "proxy",
            counters: &self.proxy,
        }
    }
}
