//! The route table: which rule, if any, a request falls under. Built from one config
//! snapshot; a reload builds a new table.

use std::borrow::Cow;

use http::Method;
use prometheus_client::metrics::gauge::Gauge;

use std::sync::Arc;

use crate::auth::{AuthMetrics, Authorizer, JwtAuth, SharedCounts};
use crate::cache::CacheRule;
use crate::config::Config;
use crate::metrics::{ProxyMetrics, RuleCounters};
use crate::route::PathParams;
use crate::stream::StreamRule;
use crate::tap::TapRule;
use crate::watch::WatchRule;

/// What the handler does with a request.
#[derive(Debug, Clone, Copy)]
pub enum Action<'a> {
    /// Forward to the upstream unchanged.
    Proxy,
    /// Serve an SSE stream under this `[[stream]]` rule.
    Stream(&'a StreamRoute),
    /// Forward, then publish on 2xx, under this `[[tap]]` rule.
    Tap(&'a TapRoute),
    /// Answer from the cache, or fetch once for all, under this `[[cache]]` rule.
    Cache(&'a CacheRoute),
    /// A stream of the body (`Accept: text/event-stream`) or the cached poll, under this
    /// `[[watch]]` rule.
    Watch(&'a WatchRoute),
}

/// The outcome of routing one request.
pub struct Route<'a> {
    /// What to do.
    pub action: Action<'a>,
    /// Values of the matched pattern's `{name}` segments.
    pub params: PathParams,
    /// The rule's name for metrics and logs (`proxy`, `cache[0]`, ...).
    pub name: &'a str,
    /// The rule's response counters.
    pub counters: &'a RuleCounters,
}

/// A `[[stream]]` rule with its counters.
#[derive(Debug)]
pub struct StreamRoute {
    /// The rule.
    pub rule: StreamRule,
    /// Responses by status class.
    pub counters: RuleCounters,
    /// The rule's gate: its limits, then its auth.
    pub authorizer: Authorizer,
    /// Streams open now under this rule (shared across reloads by rule name, so a reload
    /// does not lose count of streams opened before it).
    pub subscribers: Gauge,
}

/// A `[[tap]]` rule with its counters.
#[derive(Debug)]
pub struct TapRoute {
    /// The rule.
    pub rule: TapRule,
    /// Responses by status class.
    pub counters: RuleCounters,
}

/// A `[[cache]]` rule with its counters.
#[derive(Debug)]
pub struct CacheRoute {
    /// The rule.
    pub rule: CacheRule,
    /// Responses by status class.
    pub counters: RuleCounters,
}

/// A `[[watch]]` rule with its counters.
#[derive(Debug)]
pub struct WatchRoute {
    /// The rule; shared with the watchers it starts, which outlive a reload.
    pub rule: Arc<WatchRule>,
    /// Responses by status class.
    pub counters: RuleCounters,
}

/// Compiled rules of one config snapshot.
pub struct Routes {
    proxy: RuleCounters,
    /// `[[stream]]` rules in file order; the first match wins.
    pub streams: Vec<StreamRoute>,
    /// `[[tap]]` rules in file order; the first match wins.
    pub taps: Vec<TapRoute>,
    /// `[[cache]]` rules in file order; the first match wins.
    pub caches: Vec<CacheRoute>,
    /// `[[watch]]` rules in file order; the first match wins.
    pub watches: Vec<WatchRoute>,
}

impl Routes {
    /// Let each `[[stream]]` rule count on from the rule of the same name in `previous`
    /// (the routes a reload replaces): the streams those admitted stay open and keep their
    /// places under the rule's limits.
    pub fn carry_counts_from(&mut self, previous: &Routes) {
        for route in &mut self.streams {
            if let Some(old) = previous
                .streams
                .iter()
                .find(|r| r.rule.name == route.rule.name)
            {
                route.authorizer.carry_counts_from(&old.authorizer);
            }
        }
    }

    /// Compile the rules of `config`.
    pub fn build(
        config: &Config,
        metrics: &ProxyMetrics,
        auth_metrics: &AuthMetrics,
        jwt: Option<&Arc<JwtAuth>>,
        shared: Option<&Arc<dyn SharedCounts>>,
    ) -> Routes {
        let streams = config
            .streams
            .iter()
            .map(|rule| StreamRoute {
                counters: metrics.rule_counters(Cow::Owned(rule.name.clone())),
                subscribers: metrics.stream_subscribers(&rule.name),
                authorizer: Authorizer::new(
                    &rule.name,
                    &rule.auth,
                    &rule.limits,
                    jwt,
                    auth_metrics,
                    shared,
                ),
                rule: rule.clone(),
            })
            .collect();
        let taps = config
            .taps
            .iter()
            .map(|rule| TapRoute {
                counters: metrics.rule_counters(Cow::Owned(rule.name.clone())),
                rule: rule.clone(),
            })
            .collect();
        let caches = config
            .caches
            .iter()
            .map(|rule| CacheRoute {
                counters: metrics.rule_counters(Cow::Owned(rule.name.clone())),
                rule: rule.clone(),
            })
            .collect();
        let watches = config
            .watches
            .iter()
            .map(|rule| WatchRoute {
                counters: metrics.rule_counters(Cow::Owned(rule.name.clone())),
                rule: Arc::new(rule.clone()),
            })
            .collect();
        Routes {
            proxy: metrics.rule_counters(Cow::Borrowed("proxy")),
            streams,
            taps,
            caches,
            watches,
        }
    }

    /// Responses sent to clients under this table's rules and plain proxying, since start
    /// (the counters of a rule outlive reloads that keep its name).
    pub fn responses(&self) -> u64 {
        let rules = (self.streams.iter().map(|s| &s.counters))
            .chain(self.taps.iter().map(|t| &t.counters))
            .chain(self.caches.iter().map(|c| &c.counters))
            .chain(self.watches.iter().map(|w| &w.counters));
        self.proxy.total() + rules.map(RuleCounters::total).sum::<u64>()
    }

    /// Route a request by method and path (without query): streams (GET), then taps, then
    /// watch rules (GET, HEAD), then cache rules, then plain proxying.
    pub fn resolve(&self, method: &Method, path: &str) -> Route<'_> {
        if method == Method::GET {
            for s in &self.streams {
                if let Some(params) = s.rule.path.matches(path) {
                    return Route {
                        action: Action::Stream(s),
                        params,
                        name: &s.rule.name,
                        counters: &s.counters,
                    };
                }
            }
        }
        for t in &self.taps {
            if t.rule.method == method
                && let Some(params) = t.rule.path.matches(path)
            {
                return Route {
                    action: Action::Tap(t),
                    params,
                    name: &t.rule.name,
                    counters: &t.counters,
                };
            }
        }
        if method == Method::GET || method == Method::HEAD {
            for w in &self.watches {
                if let Some(params) = w.rule.cache.path.matches(path) {
                    return Route {
                        action: Action::Watch(w),
                        params,
                        name: &w.rule.name,
                        counters: &w.counters,
                    };
                }
            }
        }
        for c in &self.caches {
            if c.rule.methods.contains(method)
                && let Some(params) = c.rule.path.matches(path)
            {
                return Route {
                    action: Action::Cache(c),
                    params,
                    name: &c.rule.name,
                    counters: &c.counters,
                };
            }
        }
        Route {
            action: Action::Proxy,
            params: PathParams::default(),
            name: "proxy",
            counters: &self.proxy,
        }
    }
}
