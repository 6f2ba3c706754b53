//! Verified identity from signed gateway assertions: keys generated here, a JWKS server on
//! 127.0.0.1, the Released stand-in. A valid assertion mints a token for its claims;
//! every forged, stale or malformed one mints nothing and the page is served unchanged.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::jwt::{ec_key, jwks, now, rsa_key, sign, Key};
use support::sidecar::{Sidecar, DEFAULT_CONFIG};
use support::{client, eventually, tokens_in, Reply, SidecarBuilder, StandIn, Upstream};

const SECRET: &str = support::sidecar::SECRET;
const PAGE: &str = "<released-page></released-page>";
const ISSUER: &str = "https://authenticate.example.com";
const AUDIENCE: &str = "app.example.com";

fn claims(overrides: Value) -> Value {
    let mut c = json!({"iss": ISSUER, "aud": AUDIENCE, "exp": now() + 300, "iat": now(),
                       "sub": "user-123", "email": "alice@example.com", "name": "Alice"});
    for (k, v) in overrides.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

/// A JWKS (or per-kid PEM) server whose document a test can change, counting fetches.
struct KeyServer {
    upstream: Upstream,
    document: Arc<Mutex<(u16, String)>>,
}

impl KeyServer {
    async fn start(document: String) -> KeyServer {
        let doc = Arc::new(Mutex::new((200, document)));
        let shared = Arc::clone(&doc);
        let upstream = Upstream::start(move |_| {
            let (status, body) = shared.lock().unwrap().clone();
            Reply::with(status, "application/json", body)
        })
        .await;
        KeyServer {
            upstream,
            document: doc,
        }
    }

    fn url(&self) -> String {
        format!("{}/jwks.json", self.upstream.url())
    }

    fn set(&self, status: u16, body: String) {
        *self.document.lock().unwrap() = (status, body);
    }

    fn fetches(&self) -> usize {
        self.upstream.seen().len()
    }
}

fn config_with_identity(identity: &str) -> String {
    let base = &DEFAULT_CONFIG[..DEFAULT_CONFIG.find("identity:").unwrap()];
    format!("{base}identity:\n{identity}")
}

fn pomerium_identity(jwks_url: &str) -> String {
    format!(
        "  preset: pomerium\n  jwt:\n    jwks_url: \"{jwks_url}\"\n    issuer: \"{ISSUER}\"\n    audience: \"{AUDIENCE}\"\n"
    )
}

fn pomerium(jwks_url: &str) -> String {
    config_with_identity(&pomerium_identity(jwks_url))
}

/// A sidecar whose `identity:` block is `identity` (indented), in front of an app
/// serving [`PAGE`], with a stand-in.
async fn start_with_identity(identity: &str) -> (Upstream, StandIn, Sidecar) {
    let upstream = Upstream::start(|_| Reply::html(PAGE)).await;
    let standin = StandIn::start(SECRET).await;
    let sidecar = SidecarBuilder::new(&upstream.url(), &standin.url())
        .template(&config_with_identity(identity))
        .start()
        .await;
    (upstream, standin, sidecar)
}

/// A sidecar with the Pomerium preset and keys from `keys`.
async fn pomerium_sidecar(keys: &KeyServer) -> (Upstream, StandIn, Sidecar) {
    start_with_identity(&pomerium_identity(&keys.url())).await
}

async fn page_with(sidecar: &Sidecar, header: &str, assertion: Option<&str>) -> String {
    let mut req = client()
        .get(sidecar.url("/"))
        .header("accept", "text/html")
        // A forwarded identity the sidecar must ignore when an assertion is configured.
        .header("x-forwarded-user", "mallory")
        .header("x-forwarded-email", "mallory@example.com");
    if let Some(a) = assertion {
        req = req.header(header, a);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap()
}

async fn skips(sidecar: &Sidecar, reason: &str) -> f64 {
    sidecar
        .metric(&format!(
            "released_sidecar_token_skips_total{{reason=\"{reason}\"}}"
        ))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_pomerium_assertion_mints_a_token_for_its_claims() {
    let key = ec_key("k1");
    let keys = KeyServer::start(jwks(&[&key])).await;
    let (_upstream, standin, sidecar) = pomerium_sidecar(&keys).await;

    let assertion = sign(
        &key,
        &claims(json!({"picture": "https://cdn.example.com/a.png"})),
    );
    let body = page_with(&sidecar, "x-pomerium-jwt-assertion", Some(&assertion)).await;
    let issued = standin.issued();
    assert_eq!(issued.len(), 1, "{}", sidecar.logs());
    assert_eq!(tokens_in(&body), vec![issued[0].token.clone().unwrap()]);
    assert_eq!(
        issued[0].body,
        json!({"account_id": "acct-test", "user_id": "user-123", "user_email": "alice@example.com",
               "profile": {"name": "Alice", "avatar_url": "https://cdn.example.com/a.png"}})
    );
    assert_eq!(keys.fetches(), 1, "keys fetched once at start, then cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_stale_or_malformed_assertions_mint_nothing() {
    let key = ec_key("k1");
    let intruder = ec_key("k1");
    let keys = KeyServer::start(jwks(&[&key])).await;
    let (_upstream, standin, sidecar) = pomerium_sidecar(&keys).await;

    let n = now();
    let valid_body = URL_SAFE_NO_PAD.encode(claims(json!({})).to_string());
    // HS256 "signed" with the public key: the classic algorithm-confusion forgery.
    let hs256 = {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("k1".into());
        jsonwebtoken::encode(
            &h,
            &claims(json!({})),
            &EncodingKey::from_secret(key.public_pem.as_bytes()),
        )
        .unwrap()
    };
    let unsigned = format!(
        "{}.{valid_body}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"k1"}"#)
    );
    let unknown_kid = sign(&ec_key("k-unknown"), &claims(json!({})));
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        (
            "expired",
            Some(sign(&key, &claims(json!({"exp": n - 120})))),
            "jwt_expired",
        ),
        (
            "not yet valid",
            Some(sign(&key, &claims(json!({"nbf": n + 600})))),
            "jwt_not_yet_valid",
        ),
        (
            "wrong issuer",
            Some(sign(
                &key,
                &claims(json!({"iss": "https://evil.example.com"})),
            )),
            "jwt_issuer",
        ),
        (
            "wrong audience",
            Some(sign(&key, &claims(json!({"aud": "other.example.com"})))),
            "jwt_audience",
        ),
        (
            "bad signature",
            Some(sign(&intruder, &claims(json!({"sub": "admin"})))),
            "jwt_bad_signature",
        ),
        ("alg none", Some(unsigned), "jwt_algorithm"),
        ("HS256 with the public key", Some(hs256), "jwt_algorithm"),
        ("unknown kid", Some(unknown_kid), "jwt_unknown_kid"),
        (
            "malformed",
            Some("not.a.jwt-at-all".into()),
            "jwt_malformed",
        ),
        ("missing header", None, "jwt_missing"),
    ];
    for (what, assertion, reason) in &cases {
        let body = page_with(&sidecar, "x-pomerium-jwt-assertion", assertion.as_deref()).await;
        assert_eq!(body, PAGE, "{what}: page must be served unchanged");
        assert!(
            eventually(Duration::from_secs(2), || async {
                skips(&sidecar, reason).await >= 1.0
            })
            .await,
            "{what}: reason {reason} not counted:\n{}",
            sidecar.metrics().await
        );
    }
    assert!(
        standin.calls().is_empty(),
        "nothing may be minted: {:?}",
        standin.calls()
    );
    assert!(!sidecar.settled_logs().await.contains("mallory"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_kid_in_the_jwks_is_picked_up_without_restart_and_bogus_kids_are_rate_limited() {
    let old = ec_key("2026-01");
    let new = ec_key("2026-02");
    let keys = KeyServer::start(jwks(&[&old])).await;
    let (_upstream, _standin, sidecar) = pomerium_sidecar(&keys).await;
    let body = page_with(
        &sidecar,
        "x-pomerium-jwt-assertion",
        Some(&sign(&old, &claims(json!({})))),
    )
    .await;
    assert_eq!(tokens_in(&body).len(), 1);

    // The gateway rotates: the JWKS now holds the new key, and assertions use it.
    keys.set(200, jwks(&[&old, &new]));
    let body = page_with(
        &sidecar,
        "x-pomerium-jwt-assertion",
        Some(&sign(&new, &claims(json!({})))),
    )
    .await;
    assert_eq!(
        tokens_in(&body).len(),
        1,
        "new kid not picked up:\n{}",
        sidecar.logs()
    );
    let after_rotation = keys.fetches();
    assert_eq!(after_rotation, 2, "one fetch at start, one for the new kid");

    // A flood of made-up kids cannot make the sidecar hammer the key server.
    for i in 0..20 {
        let bogus = sign(&ec_key(&format!("bogus-{i}")), &claims(json!({})));
        assert_eq!(
            page_with(&sidecar, "x-pomerium-jwt-assertion", Some(&bogus)).await,
            PAGE
        );
    }
    assert!(
        keys.fetches() <= after_rotation + 1,
        "{} fetches for 20 bogus kids",
        keys.fetches() - after_rotation
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_waits_for_the_keys() {
    let key = ec_key("k1");
    let keys = KeyServer::start(String::new()).await;
    keys.set(503, "{}".into());
    let upstream = Upstream::start(|_| Reply::html(PAGE)).await;
    let standin = StandIn::start(SECRET).await;
    let sidecar = SidecarBuilder::new(&upstream.url(), &standin.url())
        .template(&pomerium(&keys.url()))
        .without_waiting_for_ready()
        .start()
        .await;
    let readyz = || async {
        client()
            .get(sidecar.admin_url("/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert!(eventually(Duration::from_secs(3), || async { keys.fetches() >= 1 }).await);
    assert_eq!(readyz().await, 503, "not ready without keys");
    keys.set(200, jwks(&[&key]));
    assert!(
        eventually(Duration::from_secs(10), || async { readyz().await == 200 }).await,
        "ready once keys load:\n{}",
        sidecar.logs()
    );
    let body = page_with(
        &sidecar,
        "x-pomerium-jwt-assertion",
        Some(&sign(&key, &claims(json!({})))),
    )
    .await;
    assert_eq!(tokens_in(&body).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_iap_assertions_use_the_sub_after_the_accounts_prefix() {
    let key = ec_key("iap-1");
    let keys = KeyServer::start(jwks(&[&key])).await;
    let audience = "/projects/123456/global/backendServices/789";
    let (_upstream, standin, sidecar) = start_with_identity(&format!(
        "  preset: google-iap\n  jwt: {{ jwks_url: \"{}\", audience: \"{audience}\" }}\n",
        keys.url()
    ))
    .await;
    let assertion = sign(
        &key,
        &claims(
            json!({"iss": "https://cloud.google.com/iap", "aud": audience,
                       "sub": "accounts.google.com:1122334455", "email": "bob@example.com"}),
        ),
    );
    let body = page_with(&sidecar, "x-goog-iap-jwt-assertion", Some(&assertion)).await;
    assert_eq!(tokens_in(&body).len(), 1, "{}", sidecar.logs());
    assert_eq!(standin.issued()[0].body["user_id"], "1122334455");
    assert_eq!(standin.issued()[0].body["user_email"], "bob@example.com");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudflare_access_rs256_assertions_with_audience_lists_verify() {
    let key = rsa_key("cf-1");
    let keys = KeyServer::start(jwks(&[&key])).await;
    let (_upstream, standin, sidecar) = start_with_identity(&format!(
            "  preset: cloudflare-access\n  jwt: {{ jwks_url: \"{}\", issuer: \"https://team.cloudflareaccess.com\", audience: \"aud-tag-1\" }}\n",
            keys.url()
        )).await;
    let assertion = sign(
        &key,
        &claims(
            json!({"iss": "https://team.cloudflareaccess.com", "aud": ["aud-tag-1"], "sub": "7f0c-11"}),
        ),
    );
    let body = page_with(&sidecar, "cf-access-jwt-assertion", Some(&assertion)).await;
    assert_eq!(tokens_in(&body).len(), 1, "{}", sidecar.logs());
    assert_eq!(standin.issued()[0].body["user_id"], "7f0c-11");
    // An ES256 assertion is refused by a config that accepts only RS256.
    let es = sign(
        &ec_key("cf-1"),
        &claims(json!({"iss": "https://team.cloudflareaccess.com", "aud": ["aud-tag-1"]})),
    );
    assert_eq!(
        page_with(&sidecar, "cf-access-jwt-assertion", Some(&es)).await,
        PAGE
    );
    assert_eq!(skips(&sidecar, "jwt_algorithm").await, 1.0);
}

/// An ALB token: base64 with padding, signed over the padded segments, `signer` in the
/// header.
fn alb_token(key: &Key, signer: &str, claims: &Value) -> String {
    let header = URL_SAFE.encode(
        json!({"alg": "ES256", "kid": key.kid, "signer": signer, "typ": "JWT",
                                        "iss": ISSUER, "client": "c", "exp": now() + 300})
        .to_string(),
    );
    let mut payload = claims.to_string().into_bytes();
    while !URL_SAFE.encode(&payload).ends_with('=') {
        payload.push(b' ');
    }
    let signing_input = format!("{header}.{}", URL_SAFE.encode(&payload));
    let signature =
        jsonwebtoken::crypto::sign(signing_input.as_bytes(), &key.encoding, Algorithm::ES256)
            .unwrap();
    format!("{signing_input}.{signature}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_alb_padded_assertions_verify_with_a_key_fetched_per_kid() {
    let key = ec_key("3c7e1e1b-7a1f-4a0e-9d55-2f1d5e6a7b8c");
    let pem = key.public_pem.clone();
    let kid = key.kid.clone();
    let key_server = Upstream::start(move |req| {
        if req.path == format!("/alb/{kid}") {
            Reply::with(200, "text/plain", pem.clone())
        } else {
            Reply::with(404, "text/plain", "no such key")
        }
    })
    .await;
    let signer = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:loadbalancer/app/legacy/50dc6c495c0c9188";
    let (_upstream, standin, sidecar) = start_with_identity(&format!(
            "  preset: aws-alb\n  jwt: {{ key_url: \"{}/alb/{{kid}}\", issuer: \"{ISSUER}\", signer: \"{signer}\" }}\n",
            key_server.url()
        )).await;
    let no_aud = claims(json!({}));
    let body = page_with(
        &sidecar,
        "x-amzn-oidc-data",
        Some(&alb_token(&key, signer, &no_aud)),
    )
    .await;
    assert_eq!(tokens_in(&body).len(), 1, "{}", sidecar.logs());
    assert_eq!(standin.issued()[0].body["user_id"], "user-123");

    let other_alb = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:loadbalancer/app/other/1";
    assert_eq!(
        page_with(
            &sidecar,
            "x-amzn-oidc-data",
            Some(&alb_token(&key, other_alb, &no_aud))
        )
        .await,
        PAGE
    );
    assert_eq!(skips(&sidecar, "jwt_signer").await, 1.0);
    assert_eq!(
        key_server.seen().len(),
        1,
        "the key is fetched once per kid"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_file_is_hot_reloaded_like_a_secret() {
    let first = ec_key("file-1");
    let second = ec_key("file-2");
    let upstream = Upstream::start(|_| Reply::html(PAGE)).await;
    let standin = StandIn::start(SECRET).await;
    let sidecar = SidecarBuilder::new(&upstream.url(), &standin.url())
        .file("jwks.json", &jwks(&[&first]))
        .template(&config_with_identity(&format!(
            "  preset: pomerium\n  jwt: {{ jwks_file: \"{{dir}}/jwks.json\", issuer: \"{ISSUER}\", audience: \"{AUDIENCE}\" }}\n"
        )))
        .start()
        .await;
    let body = page_with(
        &sidecar,
        "x-pomerium-jwt-assertion",
        Some(&sign(&first, &claims(json!({})))),
    )
    .await;
    assert_eq!(tokens_in(&body).len(), 1);

    std::fs::write(sidecar.dir.path().join("jwks.json"), jwks(&[&second])).unwrap();
    let rotated = eventually(Duration::from_secs(5), || async {
        let body = page_with(
            &sidecar,
            "x-pomerium-jwt-assertion",
            Some(&sign(&second, &claims(json!({})))),
        )
        .await;
        tokens_in(&body).len() == 1
    })
    .await;
    assert!(rotated, "{}", sidecar.logs());
    let old = page_with(
        &sidecar,
        "x-pomerium-jwt-assertion",
        Some(&sign(&first, &claims(json!({})))),
    )
    .await;
    assert_eq!(old, PAGE, "the removed key no longer verifies");
}

#[test]
fn explain_shows_the_expanded_preset_and_every_assertion_check() {
    let key = ec_key("k1");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), "s").unwrap();
    std::fs::write(dir.path().join("jwks.json"), jwks(&[&key])).unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "upstream: http://127.0.0.1:3000\nreleased: {{ account_id: acct, shared_secret_file: secret }}\n\
             identity:\n  preset: pomerium\n  jwt: {{ jwks_file: jwks.json, issuer: \"{ISSUER}\", audience: \"{AUDIENCE}\" }}\n"
        ),
    )
    .unwrap();
    let explain = |assertion: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_released-sidecar"))
            .args(["explain", "--config"])
            .arg(&config)
            .args(["--url", "https://app.example.com/", "-H"])
            .arg(format!("X-Pomerium-Jwt-Assertion: {assertion}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };

    let good = explain(&sign(&key, &claims(json!({}))));
    for line in [
        "assertion:  header x-pomerium-jwt-assertion, keys from JWKS file",
        "identity:   user_id    <- claim sub, transform [escape]",
        "ok   algorithm: ES256 is accepted",
        "ok   signature: valid",
        "ok   claims: iss, aud, exp",
        r#"{"account_id":"acct","user_id":"user-123","user_email":"alice@example.com","profile":{"name":"Alice"}}"#,
    ] {
        assert!(good.contains(line), "missing {line:?} in:\n{good}");
    }
    let expired = explain(&sign(&key, &claims(json!({"exp": now() - 3600}))));
    assert!(expired.contains("FAIL claims: expired"), "{expired}");
    assert!(
        expired.contains("token:      none: the gateway assertion is not believed"),
        "{expired}"
    );
    let forged = explain(&sign(&ec_key("k1"), &claims(json!({}))));
    assert!(forged.contains("FAIL signature: bad signature"), "{forged}");
}
