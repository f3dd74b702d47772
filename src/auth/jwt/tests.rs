use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderMap;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;

use super::*;
use crate::auth::config::RawJwtConfig;
use crate::config::ConfigErrors;

const SECRET: &str = "0123456789abcdef0123456789abcdef-test";
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn auth(toml_text: &str) -> JwtAuth {
    let raw: RawJwtConfig = toml::from_str(toml_text).unwrap();
    let mut errors = ConfigErrors::default();
    let config = raw.validate("jwt", &mut errors);
    assert!(errors.is_empty(), "{errors}");
    JwtAuth::new(&config.unwrap())
}

fn hs256() -> JwtAuth {
    auth(&format!(
        "secret = {SECRET:?}\nleeway = \"0s\"\ncookie = \"jwt\""
    ))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: serde_json::Value) -> String {
    encode(&Header::new(alg), &claims, key).unwrap()
}

fn hs(claims: serde_json::Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        claims,
    )
}

fn channels(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn valid_token_allows_matching_channels_until_exp() {
    let exp = now() + 600;
    let token = hs(json!({"exp": exp, "unpoll": {"subscribe": ["bot:*", "twilio"]}}));
    let until = hs256()
        .verify(&token, &channels(&["bot:1", "twilio"]))
        .unwrap();
    assert_eq!(until, UNIX_EPOCH + Duration::from_secs(exp));
    // A literal top-level key of the claim's name works too, and a single string.
    let token = hs(json!({"exp": exp, "unpoll.subscribe": "bot:1"}));
    assert!(hs256().verify(&token, &channels(&["bot:1"])).is_ok());
}

#[test]
fn every_channel_must_be_allowed() {
    let token = hs(json!({"exp": now() + 600, "unpoll": {"subscribe": ["bot:1"]}}));
    let err = hs256()
        .verify(&token, &channels(&["bot:1", "bot:2"]))
        .unwrap_err();
    assert!(matches!(&err, AuthError::ChannelNotAllowed { channel } if channel == "bot:2"));
    assert_eq!(err.status(), http::StatusCode::FORBIDDEN);
    let no_claim = hs(json!({"exp": now() + 600}));
    assert!(hs256().verify(&no_claim, &channels(&["bot:1"])).is_err());
}

fn invalid(auth: &JwtAuth, token: &str) -> &'static str {
    match auth.verify(token, &channels(&["bot:1"])) {
        Err(AuthError::InvalidToken { why }) => why,
        other => panic!("expected InvalidToken, got {other:?}"),
    }
}

#[test]
fn expired_bad_signature_and_missing_exp_are_refused() {
    let claims = |exp: u64| json!({"exp": exp, "unpoll": {"subscribe": ["*"]}});
    assert_eq!(invalid(&hs256(), &hs(claims(now() - 10))), "expired");
    let other = EncodingKey::from_secret(b"another-secret-another-secret-xx");
    let forged = sign(Algorithm::HS256, &other, claims(now() + 600));
    assert_eq!(invalid(&hs256(), &forged), "bad signature");
    let no_exp = hs(json!({"unpoll": {"subscribe": ["*"]}}));
    assert_eq!(invalid(&hs256(), &no_exp), "missing a required claim");
    assert_eq!(invalid(&hs256(), "not.a.jwt"), "malformed");
    // Leeway: a token expired 10 s ago passes with 30 s of leeway, and access ends at
    // exp + leeway.
    let lenient = auth(&format!("secret = {SECRET:?}\nleeway = \"30s\""));
    let exp = now() - 10;
    let until = lenient.verify(&hs(claims(exp)), &channels(&["x"])).unwrap();
    assert_eq!(until, UNIX_EPOCH + Duration::from_secs(exp + 30));
}

#[test]
fn alg_none_is_refused() {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = json!({"exp": now() + 600, "unpoll": {"subscribe": ["*"]}});
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    for token in [
        format!("{header}.{payload}."),
        format!("{header}.{payload}"),
    ] {
        assert!(matches!(
            hs256().verify(&token, &channels(&["bot:1"])),
            Err(AuthError::InvalidToken { .. })
        ));
    }
}

#[test]
fn hs_rs_confusion_is_refused() {
    let rs = auth(&format!(
        "algorithm = \"RS256\"\npublic_key_file = \"{FIXTURES}/rsa_public.pem\""
    ));
    let claims = json!({"exp": now() + 600, "unpoll": {"subscribe": ["*"]}});
    let private = std::fs::read(format!("{FIXTURES}/rsa_private.pem")).unwrap();
    let good = sign(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(&private).unwrap(),
        claims.clone(),
    );
    assert!(rs.verify(&good, &channels(&["bot:1"])).is_ok());
    // The classic attack: HS256 with the (public) RSA key as the HMAC secret.
    let public = std::fs::read(format!("{FIXTURES}/rsa_public.pem")).unwrap();
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&public),
        claims.clone(),
    );
    assert_eq!(invalid(&rs, &confused), "algorithm not accepted");
    // And an RS256 token offered to an HS256 config.
    assert_eq!(invalid(&hs256(), &good), "algorithm not accepted");
}

#[test]
fn es256_and_issuer_audience() {
    let es = auth(&format!(
        "algorithm = \"ES256\"\npublic_key_file = \"{FIXTURES}/ec_public.pem\"\n\
         issuer = \"app\"\naudience = \"unpoll\""
    ));
    let private = std::fs::read(format!("{FIXTURES}/ec_private.pem")).unwrap();
    let key = EncodingKey::from_ec_pem(&private).unwrap();
    let base = |extra: serde_json::Value| {
        let mut c = json!({"exp": now() + 600, "unpoll": {"subscribe": ["*"]}});
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        sign(Algorithm::ES256, &key, c)
    };
    let ok = base(json!({"iss": "app", "aud": "unpoll"}));
    assert!(es.verify(&ok, &channels(&["x"])).is_ok());
    assert_eq!(
        invalid(&es, &base(json!({"iss": "evil", "aud": "unpoll"}))),
        "wrong issuer"
    );
    assert_eq!(
        invalid(&es, &base(json!({"iss": "app", "aud": "other"}))),
        "wrong audience"
    );
    assert_eq!(
        invalid(&es, &base(json!({"iss": "app"}))),
        "missing a required claim"
    );
}

#[test]
fn token_from_header_cookie_or_query() {
    let a = hs256();
    let mut h = HeaderMap::new();
    assert_eq!(a.token(&h, Some("botId=1&token=q%2Eq")).unwrap(), "q.q");
    h.append("cookie", "other=1".parse().unwrap());
    h.append("cookie", "jwt=c.c; x=y".parse().unwrap());
    assert_eq!(a.token(&h, Some("token=q")).unwrap(), "c.c");
    h.insert("authorization", "Bearer h.h".parse().unwrap());
    assert_eq!(a.token(&h, Some("token=q")).unwrap(), "h.h");
    assert!(a.token(&HeaderMap::new(), Some("token=")).is_none());
    assert!(a.token(&HeaderMap::new(), None).is_none());
}

#[test]
fn config_errors_name_their_keys() {
    let check = |text: &str| {
        let raw: RawJwtConfig = toml::from_str(text).unwrap();
        let mut errors = ConfigErrors::default();
        raw.validate("jwt", &mut errors);
        errors.to_string()
    };
    assert!(check("secret = \"short\"").contains("jwt.secret: must be at least 32 bytes"));
    assert!(check("").contains("jwt.secret: required for HS256"));
    assert!(check("algorithm = \"none\"").contains("jwt.algorithm: unsupported algorithm"));
    assert!(check("algorithm = \"RS256\"").contains("jwt.public_key_file: required"));
    let wrong = check(&format!(
        "algorithm = \"RS256\"\npublic_key_file = \"{FIXTURES}/ec_public.pem\""
    ));
    assert!(wrong.contains("is not a RS256 public key"), "{wrong}");
    let debug = format!("{:?}", {
        let raw: RawJwtConfig = toml::from_str(&format!("secret = {SECRET:?}")).unwrap();
        raw.validate("jwt", &mut ConfigErrors::default()).unwrap()
    });
    assert!(!debug.contains(SECRET), "{debug}");
}
