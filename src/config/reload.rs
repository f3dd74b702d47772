//! Which settings a reload applies and which wait for a restart.
//!
//! A reload (SIGHUP) swaps the config snapshot: whatever is read per request or per
//! connection follows at once (rules, upstream and its pool, timeouts, `[jwt]`, tokens,
//! `[[topic]]` rules, `proxy.direct_streams` for new connections). Some settings are
//! consumed once, when unpoll starts, by parts that live as long as the process:
//!
//! | key | consumed by |
//! | --- | --- |
//! | `listen`, `admin.listen` | the listeners bound in `Listeners::bind` |
//! | `workers` | the runtime built in `main.rs` |
//! | `log.format` | the subscriber installed in `main.rs` |
//! | `proxy.max_connections` | each listener's accept loop (`server::serve`) |
//! | `cache_size` | the cache built in `App::new` |
//! | `hub.*` | the hub built in `App::new` (open streams and history survive reloads) |
//! | `postgres.*`, `notify` | the Postgres source spawned at start |
//! | `mqtt.*` | the MQTT connection spawned at start |
//! | `tls` (present or absent), `tls.redirect_http` | the listeners bound in `Listeners::bind` |
//!
//! `tls.cert` and `tls.key` are re-read by every reload and swapped in for new handshakes
//! (`App::reload`); `tls.max_concurrent_streams` and `tls.handshake_timeout` apply to new
//! connections.
//!
//! [`start_only_changes`] names, by key path, each of those that a reload changed, so the
//! operator is told instead of the change being silently ignored.

use crate::config::Config;
use crate::hub::HubConfig;
use crate::sources::mqtt::MqttConfig;
use crate::sources::postgres::PostgresConfig;

/// Push `prefix.field` for every listed field that differs between `old` and `new`. The
/// destructuring names every field of the type, so a field added to it fails to compile
/// until it is listed here as start-only or as derived from a listed one.
macro_rules! changed_fields {
    ($out:ident, $prefix:literal, $ty:ident, $old:expr, $new:expr,
     compare { $($field:ident),* $(,)? } derived { $($derived:ident),* $(,)? }) => {{
        let $ty { $($field: _,)* $($derived: _,)* } = $new;
        $(
            if $old.$field != $new.$field {
                $out.push(concat!($prefix, ".", stringify!($field)).to_owned());
            }
        )*
    }};
}

/// Key paths of the start-only settings that differ between the running config `old` and
/// the reloaded `new`, in the order of `config.toml.example`. Values are never included
/// (some are secrets: `mqtt.password`, `postgres.url`).
pub fn start_only_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut top = |key: &str, changed: bool| {
        if changed {
            out.push(key.to_owned());
        }
    };
    top("listen", old.listen != new.listen);
    top("workers", old.workers != new.workers);
    top("admin.listen", old.admin.listen != new.admin.listen);
    top(
        "proxy.max_connections",
        old.proxy.max_connections != new.proxy.max_connections,
    );
    top("log.format", old.log.format != new.log.format);
    top("cache_size", old.cache_size != new.cache_size);
    top("cluster", old.cluster != new.cluster);
    match (&old.tls, &new.tls) {
        (Some(old), Some(new)) => top("tls.redirect_http", old.redirect_http != new.redirect_http),
        (None, None) => {}
        _ => top("tls", true),
    }
    hub(&mut out, &old.hub, &new.hub);
    match (&old.postgres, &new.postgres) {
        (Some(old), Some(new)) => postgres(&mut out, old, new),
        (None, None) => {}
        _ => out.push("postgres".to_owned()),
    }
    if old.notify != new.notify {
        out.push("notify".to_owned());
    }
    match (&old.mqtt, &new.mqtt) {
        (Some(old), Some(new)) => mqtt(&mut out, old, new),
        (None, None) => {}
        _ => out.push("mqtt".to_owned()),
    }
    out
}

/// The log line for one start-only key that changed.
pub fn restart_warning(key: &str) -> String {
    format!("{key} changed; takes effect on restart")
}

fn hub(out: &mut Vec<String>, old: &HubConfig, new: &HubConfig) {
    changed_fields!(out, "hub", HubConfig, old, new,
        compare {
            history_max_events, history_max_age, history_max_total, history_max_bytes,
            subscriber_queue, subscriber_queue_bytes, channel_idle_ttl, max_channels,
            max_subscribers, max_subscribers_per_channel, max_subscribers_per_ip,
            max_channels_per_subscription, max_multi, retry_after, sweep_interval,
            max_watch_keys,
        }
        derived {});
}

fn postgres(out: &mut Vec<String>, old: &PostgresConfig, new: &PostgresConfig) {
    changed_fields!(out, "postgres", PostgresConfig, old, new,
        compare {
            url, connect_timeout, reconnect_min, reconnect_max, probe_interval, outbox_poll,
            outbox_retention, outbox_batch, consumer,
        }
        // Parsed from `url`.
        derived { options });
}

fn mqtt(out: &mut Vec<String>, old: &MqttConfig, new: &MqttConfig) {
    changed_fields!(out, "mqtt", MqttConfig, old, new,
        compare {
            url, client_id, username, password, keep_alive, connect_timeout, reconnect_min,
            reconnect_max, max_packet_size,
        }
        // Parsed from `url`.
        derived { host, port });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> Config {
        let text = format!("listen = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:1\"\n{extra}");
        crate::config::parse(&text, &|_| None).unwrap()
    }

    #[test]
    fn names_each_start_only_key_that_changed() {
        let old = parse(
            "[proxy]\nidle_timeout = \"5s\"\n[hub]\nhistory_max_events = 10\n\
             [mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\nusername = \"u\"\npassword = \"old-secret\"\n",
        );
        let new = parse(
            "workers = 2\n[proxy]\nidle_timeout = \"9s\"\nmax_connections = 5\n\
             [hub]\nhistory_max_events = 20\nmax_multi = 3\n\
             [mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\nusername = \"u\"\npassword = \"new-secret\"\n",
        );
        assert_eq!(
            start_only_changes(&old, &new),
            [
                "workers",
                "proxy.max_connections",
                "hub.history_max_events",
                "hub.max_multi",
                "mqtt.password"
            ]
        );
        assert!(start_only_changes(&new, &new).is_empty());
        assert_eq!(
            restart_warning("proxy.max_connections"),
            "proxy.max_connections changed; takes effect on restart"
        );
    }

    #[test]
    fn a_section_added_or_removed_is_named_whole() {
        let without = parse("");
        let with = parse(
            "[postgres]\nurl = \"postgres://u@127.0.0.1/db\"\n\
             [[notify]]\nlisten = \"c\"\nchannel = \"c\"\n",
        );
        assert_eq!(start_only_changes(&without, &with), ["postgres", "notify"]);
    }
}
