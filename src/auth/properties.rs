//! Property tests of what decides who sees a channel: for generated queries (repeats, commas,
//! `%2C`, other escapes, non-ASCII, empty values), every channel a stream would subscribe to
//! lies inside what allowed it — an upstream auth path rendered from the same values, or a
//! pattern of the JWT claim — and no auth path carries a joined list.

use std::collections::BTreeSet;
use std::time::Duration;

use http::HeaderMap;
use percent_encoding::percent_decode_str;
use proptest::prelude::*;

use super::config::{RawJwtConfig, UpstreamAuthConfig};
use super::error::AuthError;
use super::generic::requested_channels;
use super::jwt::JwtAuth;
use super::upstream::render_paths;
use crate::config::ConfigErrors;
use crate::hub::glob;
use crate::route::PathParams;
use crate::stream::channels;
use crate::template::{RenderEachError, RequestVars, Source, Template};

const CAP: usize = 16;
const SECRET: &str = "0123456789abcdef0123456789abcdef-prop";

/// Pieces of a raw query value: ids, list separators raw and escaped, dot segments, path and
/// query delimiters, broken escapes, non-ASCII raw and escaped, glob stars.
fn piece() -> impl Strategy<Value = String> {
    let special = prop_oneof![
        Just("1"),
        Just("2"),
        Just("1abc"),
        Just(","),
        Just("%2C"),
        Just("%2c"),
        Just("&"),
        Just("="),
        Just("%26"),
        Just("+"),
        Just("%20"),
        Just("."),
        Just(".."),
        Just("%2E"),
        Just("/"),
        Just("%2F"),
        Just("?"),
        Just("%3F"),
        Just("#"),
        Just("%"),
        Just("%FF"),
        Just("é"),
        Just("%C3%A9"),
        Just("*"),
        Just("bot:"),
        Just("chat:"),
    ]
    .prop_map(str::to_string);
    prop_oneof![4 => special, 1 => "[a-z0-9]{1,3}", 1 => "\\PC{1,2}"]
}

/// A raw query string: parameters (often repeated, sometimes without `=`) in any order.
fn query() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        Just("botId"),
        Just("chat"),
        Just("channel"),
        Just("botid"),
        Just("other")
    ];
    let value = proptest::collection::vec(piece(), 0..5).prop_map(|p| p.concat());
    let param = (name, proptest::option::weighted(0.9, value)).prop_map(|(n, v)| match v {
        Some(v) => format!("{n}={v}"),
        None => n.to_string(),
    });
    proptest::collection::vec(param, 0..6).prop_map(|p| p.join("&"))
}

/// A query aimed at one parameter: short lists of ids, raw and escaped separators, repeats.
fn bot_query() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("1"),
        Just("2"),
        Just("12"),
        Just("1abc"),
        Just(","),
        Just("%2C"),
        Just("%2c"),
        Just("%31"),
        Just("%32"),
        Just(" "),
        Just("+"),
        Just("%20"),
        Just("é"),
    ];
    let value = proptest::collection::vec(piece, 0..5).prop_map(|p| p.concat());
    let param = (prop_oneof![4 => Just("botId"), 1 => Just("other")], value)
        .prop_map(|(n, v)| format!("{n}={v}"));
    proptest::collection::vec(param, 1..4).prop_map(|p| p.join("&"))
}

fn templates(texts: &[&str]) -> Vec<Template> {
    texts
        .iter()
        .map(|t| Template::parse(t, &[Source::Path, Source::Query, Source::Header]).unwrap())
        .collect()
}

fn upstream(path: &str) -> UpstreamAuthConfig {
    UpstreamAuthConfig {
        path: templates(&[path]).remove(0),
        cache: Duration::ZERO,
        reauth: None,
        max_paths: CAP,
        token_query: None,
    }
}

/// A path segment as the app reads it.
fn decode(segment: &str) -> String {
    let decoded = percent_decode_str(segment).decode_utf8();
    decoded
        .expect("auth paths encode UTF-8 values")
        .into_owned()
}

/// The leading integer of an id, as Rails `find` or PHP `intval` read it.
fn leading_integer(id: &str) -> Option<u64> {
    let digits: String = id.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn jwt() -> JwtAuth {
    let raw: RawJwtConfig = toml::from_str(&format!("secret = {SECRET:?}")).unwrap();
    let mut errors = ConfigErrors::default();
    let config = raw.validate("jwt", &mut errors).unwrap();
    JwtAuth::new(&config)
}

fn token(patterns: &[&str]) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"exp": exp, "unpoll": {"subscribe": patterns}}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Upstream auth: the channels of a stream are exactly those rendered from the values of
    /// the auth paths asked (so each channel was asked about with its own values, and
    /// nothing else was), and every path has one value per variable, none a joined list.
    #[test]
    fn every_channel_comes_from_an_asked_auth_path(q in query()) {
        let params = PathParams::default();
        let headers = HeaderMap::new();
        let vars = RequestVars { path: &params, query: Some(&q), headers: &headers, form: None, json: None };
        let rule = templates(&["bot:{query.botId}", "chat:{query.botId}/{query.chat}"]);
        let config = upstream("/api/bots/{query.botId}/chats/{query.chat}");
        // The stream handler resolves the channels first: no channels, no stream, no auth.
        let Ok(subscribed) = channels(&rule, &vars, CAP) else { return Ok(()) };
        let paths = match render_paths(&config, &vars) {
            Ok(paths) => paths,
            // Refused (a dot segment): the stream does not open.
            Err(e) => {
                prop_assert!(matches!(e, AuthError::BadRequest(_)), "{e}");
                return Ok(());
            }
        };
        let mut from_paths = BTreeSet::new();
        for path in &paths {
            let segments: Vec<&str> = path.split('/').collect();
            prop_assert!(!path.contains(['?', '#']), "{path}");
            prop_assert_eq!(segments.len(), 6, "{}", path);
            prop_assert_eq!((segments[1], segments[2], segments[4]), ("api", "bots", "chats"));
            let (bot, chat) = (decode(segments[3]), decode(segments[5]));
            prop_assert!(!bot.contains(',') && !chat.contains(','), "joined list in {}", path);
            from_paths.insert(format!("bot:{bot}"));
            from_paths.insert(format!("chat:{bot}/{chat}"));
        }
        let subscribed: BTreeSet<String> = subscribed.into_iter().collect();
        prop_assert_eq!(subscribed, from_paths);
    }

    /// The attack of issue 10: an app that reads an id's leading integer and allows bot 1
    /// only. Whenever it allows every auth path, no channel of another bot is subscribed.
    #[test]
    fn a_leading_integer_app_never_lets_another_bot_through(q in bot_query()) {
        let params = PathParams::default();
        let headers = HeaderMap::new();
        let vars = RequestVars { path: &params, query: Some(&q), headers: &headers, form: None, json: None };
        let rule = templates(&["bot:{query.botId}"]);
        let Ok(subscribed) = channels(&rule, &vars, CAP) else { return Ok(()) };
        let Ok(paths) = render_paths(&upstream("/api/bots/{query.botId}"), &vars) else {
            return Ok(());
        };
        let allowed = |path: &String| {
            let id = decode(path.strip_prefix("/api/bots/").unwrap_or_default());
            leading_integer(&id) == Some(1)
        };
        if paths.iter().all(allowed) {
            for channel in &subscribed {
                let id = channel.strip_prefix("bot:").unwrap_or_default();
                prop_assert_eq!(leading_integer(id), Some(1), "{} from ?{}", channel, q);
            }
        }
    }

    /// JWT, on a rule and on the generic stream: a token allows a stream only when every
    /// channel it subscribes to matches one of the claim's patterns, and a requested list
    /// is split into its names, none holding a comma.
    #[test]
    fn a_jwt_stream_subscribes_only_inside_its_claim(
        q in query(),
        claim in proptest::sample::subsequence(vec!["bot:1", "bot:1*", "chat:*", "bot:2"], 0..3),
    ) {
        let auth = jwt();
        let token = token(&claim);
        let params = PathParams::default();
        let headers = HeaderMap::new();
        let vars = RequestVars { path: &params, query: Some(&q), headers: &headers, form: None, json: None };
        let rule = templates(&["bot:{query.botId}"]);
        let lists = [
            channels(&rule, &vars, CAP).map_err(|e: RenderEachError| e.to_string()),
            requested_channels(Some(&q)).map_err(|e| e.to_string()),
        ];
        for subscribed in lists.into_iter().flatten() {
            if auth.verify(&token, &subscribed).is_ok() {
                for channel in &subscribed {
                    prop_assert!(!channel.is_empty());
                    prop_assert!(
                        claim.iter().any(|p| glob::matches(p, channel)),
                        "{} outside {:?}", channel, claim
                    );
                }
            }
        }
        // A name the client listed with commas is never one channel.
        if let Ok(requested) = requested_channels(Some(&q)) {
            prop_assert!(requested.iter().all(|c| !c.contains(',')));
        }
    }
}
