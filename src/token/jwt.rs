//! Verified identity: a gateway's signed assertion (Pomerium, Google IAP, Cloudflare
//! Access, AWS ALB) checked end to end before any of its claims is believed — algorithm
//! (public-key algorithms only: `none` and HMAC are refused, and a key is only used with
//! its own family, so there is no algorithm confusion), signature, `exp`/`nbf`/`iat` with
//! leeway, `iss`, `aud`, and ALB's `signer`.
//!
//! Signatures are checked by `jsonwebtoken`'s crypto over the token's segments exactly as
//! received, which is what lets ALB's padded base64 segments verify.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::header::HeaderName;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use crate::token::keys::{KeyStore, Lookup, PublicKey};

/// Largest assertion accepted.
const MAX_ASSERTION: usize = 16 * 1024;

/// The compiled `identity.jwt` block.
pub struct JwtSettings {
    /// Header carrying the assertion.
    pub header: HeaderName,
    /// Where the verification keys come from.
    pub keys: Arc<KeyStore>,
    /// Required `iss`.
    pub issuer: String,
    /// Accepted `aud` values (one must match); empty only when `signer` is set.
    pub audience: Vec<String>,
    /// Required `signer` header field (AWS ALB's load balancer ARN).
    pub signer: Option<String>,
    /// Accepted algorithms (never `none` or HMAC).
    pub algorithms: Vec<Algorithm>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
}

impl fmt::Debug for JwtSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtSettings")
            .field("header", &self.header)
            .field("keys", &self.keys.source().to_string())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("signer", &self.signer)
            .field("algorithms", &self.algorithms)
            .field("leeway", &self.leeway)
            .finish()
    }
}

/// Algorithms a gateway assertion may use.
pub const PUBLIC_KEY_ALGORITHMS: &[Algorithm] = &[
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::EdDSA,
];

/// Why an assertion was not believed. Never carries claim values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// No assertion header.
    #[error("the assertion header is missing")]
    Missing,
    /// The header appears more than once.
    #[error("the assertion header appears more than once")]
    MultipleValues,
    /// Not a JWS compact token.
    #[error("malformed assertion: {0}")]
    Malformed(&'static str),
    /// `alg` is `none`, HMAC, unknown or not in `algorithms`.
    #[error("algorithm {0} is not accepted")]
    Algorithm(String),
    /// No key with this `kid`.
    #[error("no key with this kid")]
    UnknownKid,
    /// Keys could not be fetched in time.
    #[error("verification keys are unavailable")]
    KeysUnavailable,
    /// The key's type does not match `alg`.
    #[error("the key for this kid cannot verify this algorithm")]
    KeyMismatch,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// `exp` has passed (beyond the leeway).
    #[error("expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("not yet valid")]
    NotYetValid,
    /// `iat` is in the future (beyond the leeway).
    #[error("issued in the future")]
    IssuedInFuture,
    /// `iss` differs.
    #[error("wrong issuer")]
    Issuer,
    /// No accepted `aud`.
    #[error("wrong audience")]
    Audience,
    /// ALB `signer` differs.
    #[error("wrong signer")]
    Signer,
}

impl JwtError {
    /// A stable label for `released_sidecar_token_skips_total{reason}`.
    pub fn label(&self) -> &'static str {
        match self {
            JwtError::Missing => "jwt_missing",
            JwtError::MultipleValues => "jwt_multiple_values",
            JwtError::Malformed(_) => "jwt_malformed",
            JwtError::Algorithm(_) => "jwt_algorithm",
            JwtError::UnknownKid => "jwt_unknown_kid",
            JwtError::KeysUnavailable => "jwt_keys_unavailable",
            JwtError::KeyMismatch => "jwt_key_mismatch",
            JwtError::BadSignature => "jwt_bad_signature",
            JwtError::Expired => "jwt_expired",
            JwtError::NotYetValid => "jwt_not_yet_valid",
            JwtError::IssuedInFuture => "jwt_issued_in_future",
            JwtError::Issuer => "jwt_issuer",
            JwtError::Audience => "jwt_audience",
            JwtError::Signer => "jwt_signer",
        }
    }
}

/// A token split into its parts, nothing verified yet.
#[derive(Debug)]
pub struct Parsed<'a> {
    /// Header `alg`.
    pub alg: Algorithm,
    /// Header `kid` (empty when absent).
    pub kid: String,
    /// Header `signer` (AWS ALB).
    pub signer: Option<String>,
    /// The payload.
    pub claims: Map<String, Value>,
    signing_input: &'a str,
    signature: String,
}

/// Decodes base64url with or without padding (ALB pads; RFC 7515 does not).
fn decode_segment(segment: &str) -> Result<Vec<u8>, JwtError> {
    let trimmed = segment.trim_end_matches('=');
    if trimmed.contains('=') {
        return Err(JwtError::Malformed("bad base64"));
    }
    // Some gateways use the standard alphabet; map it onto the URL-safe one.
    let normalized: String = trimmed
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    URL_SAFE_NO_PAD
        .decode(normalized)
        .map_err(|_| JwtError::Malformed("bad base64"))
}

/// Splits and decodes a compact JWS; refuses `none` and unknown algorithms outright.
pub fn parse(raw: &str) -> Result<Parsed<'_>, JwtError> {
    if raw.len() > MAX_ASSERTION {
        return Err(JwtError::Malformed("longer than 16 KiB"));
    }
    let raw = raw.trim();
    let mut parts = raw.splitn(4, '.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("not three dot-separated parts"));
    };
    let header: Map<String, Value> = serde_json::from_slice(&decode_segment(h)?)
        .map_err(|_| JwtError::Malformed("header is not a JSON object"))?;
    let alg_name = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(JwtError::Malformed("header has no alg"))?;
    let alg = match alg_name.parse::<Algorithm>() {
        Ok(alg) if PUBLIC_KEY_ALGORITHMS.contains(&alg) => alg,
        _ => return Err(JwtError::Algorithm(alg_name.chars().take(16).collect())),
    };
    if s.is_empty() {
        return Err(JwtError::Malformed("no signature"));
    }
    let claims: Map<String, Value> = serde_json::from_slice(&decode_segment(p)?)
        .map_err(|_| JwtError::Malformed("payload is not a JSON object"))?;
    let signature = URL_SAFE_NO_PAD.encode(decode_segment(s)?);
    Ok(Parsed {
        alg,
        kid: header
            .get("kid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        signer: header
            .get("signer")
            .and_then(Value::as_str)
            .map(str::to_string),
        claims,
        signing_input: &raw[..h.len() + 1 + p.len()],
        signature,
    })
}

/// `alg` must be one the configuration accepts.
pub fn check_algorithm(parsed: &Parsed<'_>, settings: &JwtSettings) -> Result<(), JwtError> {
    if settings.algorithms.contains(&parsed.alg) {
        Ok(())
    } else {
        Err(JwtError::Algorithm(format!("{:?}", parsed.alg)))
    }
}

/// ALB's `signer` must be the configured load balancer.
pub fn check_signer(parsed: &Parsed<'_>, settings: &JwtSettings) -> Result<(), JwtError> {
    match &settings.signer {
        Some(want) if parsed.signer.as_deref() != Some(want.as_str()) => Err(JwtError::Signer),
        _ => Ok(()),
    }
}

/// The signature, with a key of the right family for `alg`.
pub fn check_signature(parsed: &Parsed<'_>, key: &PublicKey) -> Result<(), JwtError> {
    if !key.family.allows(parsed.alg) || key.alg.is_some_and(|a| a != parsed.alg) {
        return Err(JwtError::KeyMismatch);
    }
    match jsonwebtoken::crypto::verify(
        &parsed.signature,
        parsed.signing_input.as_bytes(),
        &key.key,
        parsed.alg,
    ) {
        Ok(true) => Ok(()),
        _ => Err(JwtError::BadSignature),
    }
}

/// `exp` (required), `nbf`, `iat`, `iss` and `aud` at time `now`.
pub fn check_claims(
    claims: &Map<String, Value>,
    settings: &JwtSettings,
    now: SystemTime,
) -> Result<(), JwtError> {
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let leeway = settings.leeway.as_secs_f64();
    let time = |name: &str| claims.get(name).and_then(Value::as_f64);
    let exp = time("exp").ok_or(JwtError::Malformed("no numeric exp claim"))?;
    if now > exp + leeway {
        return Err(JwtError::Expired);
    }
    if time("nbf").is_some_and(|nbf| now + leeway < nbf) {
        return Err(JwtError::NotYetValid);
    }
    if time("iat").is_some_and(|iat| iat > now + leeway) {
        return Err(JwtError::IssuedInFuture);
    }
    if claims.get("iss").and_then(Value::as_str) != Some(settings.issuer.as_str()) {
        return Err(JwtError::Issuer);
    }
    if !settings.audience.is_empty() {
        let matches = |v: &Value| {
            v.as_str()
                .is_some_and(|a| settings.audience.iter().any(|want| want == a))
        };
        let ok = match claims.get("aud") {
            Some(Value::Array(list)) => list.iter().any(matches),
            Some(v) => matches(v),
            None => false,
        };
        if !ok {
            return Err(JwtError::Audience);
        }
    }
    Ok(())
}

/// Verifies `raw` completely and returns its claims. Waits for a key fetch (unknown
/// `kid`) no later than `deadline`.
pub async fn verify(
    raw: &str,
    settings: &JwtSettings,
    http: &reqwest::Client,
    deadline: Instant,
) -> Result<Map<String, Value>, JwtError> {
    let parsed = parse(raw)?;
    let mut quiet = |_: &'static str, _: Outcome| {};
    // No key fetch for an assertion that cannot pass anyway.
    checks_before_key(&parsed, settings, &mut quiet)?;
    let key = match settings.keys.ensure(http, &parsed.kid, deadline).await {
        Lookup::Found => settings
            .keys
            .cached(&parsed.kid)
            .map_or(Key::Missing(JwtError::UnknownKid), Key::Found),
        Lookup::Unknown => Key::Missing(JwtError::UnknownKid),
        Lookup::Unavailable => Key::Missing(JwtError::KeysUnavailable),
    };
    checks_with_key(&parsed, key, settings, SystemTime::now(), &mut quiet)?;
    Ok(parsed.claims)
}

/// The outcome of one check in a [`report`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Passed.
    Pass(String),
    /// Failed.
    Fail(String),
    /// Could not be checked here.
    Skipped(String),
}

/// What [`report`] found.
pub struct Report {
    /// Each check, in order.
    pub steps: Vec<(&'static str, Outcome)>,
    /// The claims, when every check that could run passed.
    pub claims: Option<Map<String, Value>>,
}

/// Every check on `raw`, for `explain`: the same sequence as [`verify`], but with only
/// the keys already loaded (no network), so a JWKS URL's signature check is reported as
/// skipped, and every step is run and reported rather than stopping at the first failure.
pub fn report(raw: &str, settings: &JwtSettings, now: SystemTime) -> Report {
    let mut steps = Vec::new();
    let parsed = match parse(raw) {
        Ok(p) => {
            steps.push((
                "format",
                Outcome::Pass(format!("alg {:?}, kid {:?}", p.alg, p.kid)),
            ));
            p
        }
        Err(e) => {
            steps.push(("format", Outcome::Fail(e.to_string())));
            return Report {
                steps,
                claims: None,
            };
        }
    };
    let mut record = |name: &'static str, outcome: Outcome| steps.push((name, outcome));
    let before = checks_before_key(&parsed, settings, &mut record);
    let key = match settings.keys.cached(&parsed.kid) {
        Some(key) => Key::Found(key),
        None if settings.keys.is_ready()
            && matches!(
                settings.keys.source(),
                crate::token::keys::KeySource::JwksFile(_)
            ) =>
        {
            Key::Missing(JwtError::UnknownKid)
        }
        None => Key::NotHere(format!(
            "not checked: keys come from {} and explain makes no network calls",
            settings.keys.source()
        )),
    };
    let after = checks_with_key(&parsed, key, settings, now, &mut record);
    let ok = before.is_ok() && after.is_ok();
    Report {
        steps,
        claims: ok.then_some(parsed.claims),
    }
}

/// The verification key for an assertion's `kid`, as far as the caller could tell.
enum Key {
    /// Loaded.
    Found(PublicKey),
    /// Not to be had: the signature check fails with this.
    Missing(JwtError),
    /// Not looked up here (a dry run without network); the check is skipped.
    NotHere(String),
}

/// Receives each check's outcome, in order.
type Steps<'a> = &'a mut dyn FnMut(&'static str, Outcome);

/// Runs one check, reports it, and keeps the first failure.
fn step(
    steps: Steps<'_>,
    first_failure: &mut Result<(), JwtError>,
    name: &'static str,
    result: Result<(), JwtError>,
    pass: impl FnOnce() -> String,
) {
    match result {
        Ok(()) => steps(name, Outcome::Pass(pass())),
        Err(e) => {
            steps(name, Outcome::Fail(e.to_string()));
            if first_failure.is_ok() {
                *first_failure = Err(e);
            }
        }
    }
}

/// The checks that need no key: the algorithm, and ALB's signer when configured.
fn checks_before_key(
    parsed: &Parsed<'_>,
    settings: &JwtSettings,
    steps: Steps<'_>,
) -> Result<(), JwtError> {
    let mut first = Ok(());
    let alg = check_algorithm(parsed, settings);
    step(steps, &mut first, "algorithm", alg, || {
        format!("{:?} is accepted", parsed.alg)
    });
    if settings.signer.is_some() {
        let signer = check_signer(parsed, settings);
        step(steps, &mut first, "signer", signer, || "matches".into());
    }
    first
}

/// The signature with `key`, then `exp`, `nbf`, `iat`, `iss` and `aud` at `now`.
fn checks_with_key(
    parsed: &Parsed<'_>,
    key: Key,
    settings: &JwtSettings,
    now: SystemTime,
    steps: Steps<'_>,
) -> Result<(), JwtError> {
    let mut first = Ok(());
    match key {
        Key::Found(key) => {
            let signature = check_signature(parsed, &key);
            step(steps, &mut first, "signature", signature, || {
                format!("valid ({})", settings.keys.source())
            });
        }
        Key::Missing(e) => step(steps, &mut first, "signature", Err(e), String::new),
        Key::NotHere(why) => steps("signature", Outcome::Skipped(why)),
    }
    let claims = check_claims(&parsed.claims, settings, now);
    step(steps, &mut first, "claims", claims, || {
        let exp = parsed
            .claims
            .get("exp")
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        let left = exp
            - now
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
        format!(
            "iss, aud, exp ({}s left), nbf and iat accepted",
            left as i64
        )
    });
    first
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::keys::{KeyFamily, KeySource};
    use jsonwebtoken::{EncodingKey, Header};

    /// A fixed P-256 key pair (PKCS#8) for unit tests.
    fn keypair() -> (EncodingKey, PublicKey) {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        )
        .unwrap();
        let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.as_ref(),
            &rng,
        )
        .unwrap();
        use ring::signature::KeyPair;
        let public = pair.public_key().as_ref().to_vec();
        (
            EncodingKey::from_ec_der(pkcs8.as_ref()),
            PublicKey {
                key: jsonwebtoken::DecodingKey::from_ec_der(&public),
                family: KeyFamily::EcP256,
                alg: Some(Algorithm::ES256),
            },
        )
    }

    fn settings() -> JwtSettings {
        // A file of the test's own: tests run concurrently, and a JWKS file is read only
        // when the store is built, so it can go as soon as the store exists.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("other-key.json");
        std::fs::write(&file, r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"other","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#).unwrap();
        let keys = KeyStore::new(KeySource::JwksFile(file), Duration::from_secs(3600)).unwrap();
        JwtSettings {
            header: HeaderName::from_static("x-assertion"),
            keys: Arc::new(keys),
            issuer: "https://issuer.example".into(),
            audience: vec!["aud-1".into()],
            signer: None,
            algorithms: vec![Algorithm::ES256],
            leeway: Duration::from_secs(30),
        }
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn claims(extra: Value) -> Value {
        let mut c = serde_json::json!({"iss": "https://issuer.example", "aud": "aud-1", "exp": now() + 300, "iat": now(), "sub": "u1", "email": "u1@example.com"});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    }

    #[test]
    fn claim_checks_table() {
        let s = settings();
        let n = now();
        let cases = [
            (serde_json::json!({}), Ok(())),
            (serde_json::json!({"aud": ["x", "aud-1"]}), Ok(())),
            (serde_json::json!({"exp": n - 10}), Ok(())),
            (serde_json::json!({"exp": n - 31}), Err(JwtError::Expired)),
            (serde_json::json!({"nbf": n + 10}), Ok(())),
            (
                serde_json::json!({"nbf": n + 100}),
                Err(JwtError::NotYetValid),
            ),
            (
                serde_json::json!({"iat": n + 100}),
                Err(JwtError::IssuedInFuture),
            ),
            (
                serde_json::json!({"iss": "https://evil.example"}),
                Err(JwtError::Issuer),
            ),
            (serde_json::json!({"aud": "aud-2"}), Err(JwtError::Audience)),
            (
                serde_json::json!({"aud": ["aud-2"]}),
                Err(JwtError::Audience),
            ),
            (
                serde_json::json!({"exp": "soon"}),
                Err(JwtError::Malformed("no numeric exp claim")),
            ),
        ];
        for (extra, want) in cases {
            let c = claims(extra.clone());
            assert_eq!(
                check_claims(c.as_object().unwrap(), &s, SystemTime::now()),
                want,
                "{extra}"
            );
        }
    }

    #[test]
    fn signatures_verify_only_with_the_right_key_and_family() {
        let (enc, public) = keypair();
        let (_, other) = keypair();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("k1".into());
        let token = jsonwebtoken::encode(&header, &claims(serde_json::json!({})), &enc).unwrap();
        let parsed = parse(&token).unwrap();
        assert_eq!(check_signature(&parsed, &public), Ok(()));
        assert_eq!(
            check_signature(&parsed, &other),
            Err(JwtError::BadSignature)
        );
        let rsa_family = PublicKey {
            family: KeyFamily::Rsa,
            alg: None,
            ..public.clone()
        };
        assert_eq!(
            check_signature(&parsed, &rsa_family),
            Err(JwtError::KeyMismatch)
        );
        // Tampered payload.
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&claims(serde_json::json!({"sub": "admin"}))).unwrap());
        parts[1] = &forged;
        let tampered = parts.join(".");
        assert_eq!(
            check_signature(&parse(&tampered).unwrap(), &public),
            Err(JwtError::BadSignature)
        );
    }

    #[test]
    fn none_and_hmac_are_refused_before_any_key_is_used() {
        let body =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(serde_json::json!({}))).unwrap());
        for alg in ["none", "HS256", "HS512", "RSA-OAEP", ""] {
            let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","kid":"k1"}}"#));
            let token = format!("{header}.{body}.c2ln");
            assert!(
                matches!(parse(&token), Err(JwtError::Algorithm(_))),
                "{alg}"
            );
        }
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256"}"#);
        assert_eq!(
            parse(&format!("{header}.{body}.")).unwrap_err(),
            JwtError::Malformed("no signature")
        );
        for bad in ["", "a.b", "a.b.c.d", "!!.!!.!!"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn alb_padded_segments_verify_against_the_exact_signing_input() {
        // AWS ALB encodes header and payload with base64 padding and signs them as sent.
        use base64::engine::general_purpose::URL_SAFE;
        let (enc, public) = keypair();
        let header = URL_SAFE.encode(r#"{"alg":"ES256","kid":"k1","signer":"arn:aws:elasticloadbalancing:eu-west-1:1:loadbalancer/app/x/y","typ":"JWT"}"#);
        let mut payload_json = serde_json::to_vec(&claims(serde_json::json!({}))).unwrap();
        while !URL_SAFE.encode(&payload_json).ends_with('=') {
            payload_json.push(b' ');
        }
        let payload = URL_SAFE.encode(&payload_json);
        assert!(payload.ends_with('='), "the test needs a padded segment");
        let signing_input = format!("{header}.{payload}");
        let signature =
            jsonwebtoken::crypto::sign(signing_input.as_bytes(), &enc, Algorithm::ES256).unwrap();
        let token = format!("{signing_input}.{}=", signature);
        let parsed = parse(&token).unwrap();
        assert_eq!(check_signature(&parsed, &public), Ok(()));
        assert_eq!(
            parsed.signer.as_deref(),
            Some("arn:aws:elasticloadbalancing:eu-west-1:1:loadbalancer/app/x/y")
        );
        let mut s = settings();
        s.signer = Some("arn:aws:elasticloadbalancing:eu-west-1:1:loadbalancer/app/other/z".into());
        assert_eq!(check_signer(&parsed, &s), Err(JwtError::Signer));
    }
}
