//! Table-driven tests of the config schema: every bad input names its YAML path and line.

use super::*;

const SECRET: &str = "s3cret-value";

fn env(name: &str) -> Option<String> {
    match name {
        "ACCOUNT" => Some("acc-from-env".into()),
        "RELEASED_SECRET" => Some(format!("  {SECRET}\n")),
        "EMPTY_SECRET" => Some("  ".into()),
        "TWO_LINE_SECRET" => Some("first\nsecond\n".into()),
        _ => None,
    }
}

/// A directory holding a secret file named `secret`, and `empty` with nothing in it,
/// `two-lines` with a line break inside, `bom` written by a Windows editor, `big` past
/// the secret bound and `dir`, a directory.
fn secret_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), format!("{SECRET}\n")).unwrap();
    std::fs::write(dir.path().join("empty"), "\n").unwrap();
    std::fs::write(dir.path().join("two-lines"), format!("{SECRET}\nsecond\n")).unwrap();
    std::fs::write(dir.path().join("bom"), format!("\u{feff}{SECRET}\r\n")).unwrap();
    std::fs::write(dir.path().join("big"), "x".repeat(64 * 1024 + 1)).unwrap();
    std::fs::create_dir(dir.path().join("dir")).unwrap();
    dir
}

pub(super) fn load(text: &str) -> Result<Config, ConfigErrors> {
    let dir = secret_dir();
    Config::parse(
        text,
        "test.yaml",
        dir.path(),
        &LoadOptions {
            env: &env,
            ..LoadOptions::default()
        },
    )
}

fn header_of(rule: &crate::token::identity::FieldRule) -> &str {
    match &rule.source {
        crate::token::identity::Source::Header(h) => h.as_str(),
        crate::token::identity::Source::Claim(c) => c,
    }
}

pub(super) const MINIMAL: &str = "\
upstream: http://127.0.0.1:3000
released:
  account_id: acc
  shared_secret_file: secret
identity:
  user_id: { header: X-Forwarded-User, transform: [escape] }
  user_email: { header: X-Forwarded-Email }
";

#[test]
fn upstream_keepalive_is_read_per_worker() {
    let c = load(&format!("{MINIMAL}upstream_keepalive: 64\n")).unwrap();
    assert_eq!(c.upstream_keepalive, 64);
}

#[test]
fn minimal_config_gets_every_default() {
    let c = load(MINIMAL).unwrap();
    assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
    assert_eq!(c.admin_listen.to_string(), DEFAULT_ADMIN_LISTEN);
    assert_eq!(
        (c.upstream.host.as_str(), c.upstream.port, c.upstream.tls),
        ("127.0.0.1", 3000, false)
    );
    assert_eq!(c.trusted_proxies, TrustedProxies::loopback());
    assert_eq!(c.embed.tags.names(), DEFAULT_EMBED_TAGS);
    assert_eq!(c.timeouts, Timeouts::default());
    assert_eq!(c.timeouts.client_header, Duration::from_secs(30));
    assert_eq!(c.limits.max_connections, 4096);
    assert_eq!(c.upstream_keepalive, DEFAULT_UPSTREAM_KEEPALIVE);
    assert_eq!(c.routes.0.len(), 1);
    let route = &c.routes.0[0];
    assert_eq!(route.name, "default");
    assert_eq!(
        route.released.secret.expose(),
        SECRET,
        "secret file is trimmed"
    );
    assert_eq!(route.released.api_url.as_str(), DEFAULT_API_URL);
    assert_eq!(route.released.timeout, DEFAULT_TIMEOUT);
    assert_eq!(
        c.identity_headers
            .names()
            .iter()
            .map(|h| h.as_str())
            .collect::<Vec<_>>(),
        ["x-forwarded-user", "x-forwarded-email"]
    );
    assert!(c
        .summary()
        .starts_with("config OK: listen 0.0.0.0:8080 -> upstream http://127.0.0.1:3000"));
}

#[test]
fn spec_example_loads() {
    let text = "\
listen: \"0.0.0.0:8080\"
upstream: \"https://app.internal:8443\"
admin:
  listen: \"127.0.0.1:9901\"
trusted_proxies: [\"127.0.0.1/32\", \"::1/128\"]
released:
  api_url: \"https://accounts.releasedhub.com/auth/api/impersonation/token\"
  account_id: \"${ACCOUNT}\"
  shared_secret_env: RELEASED_SECRET
  timeout: \"1500ms\"
identity:
  user_id:    { header: X-Forwarded-User, transform: [escape] }
  user_email: { header: X-Forwarded-Email }
  name:       { header: X-Forwarded-Preferred-Username }
  avatar_url: { header: X-Forwarded-Avatar }
routes:
  - name: portal
    match: { host: \"app.example.com\", path: \"^/(feedback|roadmap)\" }
    released:
      account_id: other-account
      timeout: 2s
  - name: everything-else
embed:
  tags: [released-page, Released-Widget]
";
    let c = load(text).unwrap();
    assert_eq!(c.upstream.port, 8443);
    assert!(c.upstream.tls);
    let portal = &c.routes.0[0];
    assert_eq!(portal.released.account_id, "other-account");
    assert_eq!(portal.released.timeout, Duration::from_secs(2));
    assert_eq!(
        portal.released.secret.expose(),
        SECRET,
        "inherited from top level"
    );
    let rest = &c.routes.0[1];
    assert_eq!(rest.released.account_id, "acc-from-env");
    assert!(
        Arc::ptr_eq(&portal.identity, &rest.identity),
        "identity shared when not overridden"
    );
    assert_eq!(c.embed.tags.names(), ["released-page", "released-widget"]);
}

#[test]
fn route_identity_override_replaces_single_fields() {
    let text = format!(
        "{MINIMAL}routes:\n  - name: iap\n    identity:\n      user_email: {{ header: X-Goog-Authenticated-User-Email, pattern: '^accounts.google.com:(.+)$' }}\n"
    );
    let c = load(&text).unwrap();
    let id = &c.routes.0[0].identity;
    assert_eq!(header_of(&id.user_email), "x-goog-authenticated-user-email");
    assert_eq!(header_of(&id.user_id), "x-forwarded-user");
    assert!(c
        .identity_headers
        .names()
        .iter()
        .any(|h| h == "x-goog-authenticated-user-email"));
}

/// An expected error: YAML path, line, and a fragment of the message.
pub(super) type Expected = (&'static str, usize, &'static str);

/// Asserts `text` is rejected with exactly the `expected` errors.
pub(super) fn assert_rejected(text: &str, expected: &[Expected]) {
    let errors = match load(text) {
        Ok(_) => panic!("config should be rejected:\n{text}"),
        Err(e) => e,
    };
    for (path, line, fragment) in expected {
        let found = errors
            .errors
            .iter()
            .any(|e| e.path == *path && e.line == Some(*line) && e.message.contains(fragment));
        assert!(
            found,
            "expected `{path}` at line {line} containing {fragment:?}; got:\n{errors}\nfor:\n{text}"
        );
    }
    assert_eq!(
        errors.errors.len(),
        expected.len(),
        "unexpected extra errors:\n{errors}\nfor:\n{text}"
    );
}

/// Each bad input and every error it must produce.
fn error_cases() -> Vec<(String, Vec<Expected>)> {
    vec![
        (
            MINIMAL.replace("X-Forwarded-User, transform: [escape]", "X-Forwarded-User, pattern: '(unclosed'"),
            vec![("identity.user_id.pattern", 6, "invalid regex")],
        ),
        (
            format!("{MINIMAL}lisen: 0.0.0.0:1\n"),
            vec![("lisen", 8, "did you mean `listen`")],
        ),
        (
            format!("{MINIMAL}trusted_proxies: [10.0.0.0/8, not-an-ip, 10.0.0.1/8]\n"),
            vec![
                ("trusted_proxies[1]", 8, "not an IP address"),
                ("trusted_proxies[2]", 8, "host bits"),
            ],
        ),
        (
            MINIMAL.replace("shared_secret_file: secret", "shared_secret: hunter2"),
            vec![("released.shared_secret", 4, "inline secrets are refused")],
        ),
        (
            MINIMAL.replace("shared_secret_file: secret", "shared_secret_file: missing-file"),
            vec![("released.shared_secret_file", 4, "cannot read secret file")],
        ),
        (
            MINIMAL.replace("shared_secret_file: secret", "shared_secret_file: empty"),
            vec![("released.shared_secret_file", 4, "is empty")],
        ),
        (
            MINIMAL.replace("shared_secret_file: secret", "shared_secret_env: EMPTY_SECRET"),
            vec![("released.shared_secret_env", 4, "is empty")],
        ),
        (
            MINIMAL.replace("shared_secret_file: secret", "shared_secret_file: two-lines"),
            vec![("released.shared_secret_file", 4, "contains a control character (a line feed) inside the value")],
        ),
        (
            MINIMAL.replace("shared_secret_file: secret", "shared_secret_env: TWO_LINE_SECRET"),
            vec![("released.shared_secret_env", 4, "TWO_LINE_SECRET contains a control character (a line feed)")],
        ),
        (
            MINIMAL.replace("shared_secret_file: secret", "shared_secret_file: big"),
            vec![("released.shared_secret_file", 4, "it is larger than 64 KiB")],
        ),
        (
            MINIMAL.replace("shared_secret_file: secret", "shared_secret_file: dir"),
            vec![("released.shared_secret_file", 4, "it is a directory, not a regular file")],
        ),
        (
            MINIMAL.replace("shared_secret_file: secret", "shared_secret_env: NOPE"),
            vec![("released.shared_secret_env", 4, "not set")],
        ),
        (
            MINIMAL.replace("account_id: acc", "account_id: ${UNSET_VAR}"),
            vec![("released.account_id", 3, "`UNSET_VAR` is not set")],
        ),
        (
            MINIMAL.replace("upstream: http://127.0.0.1:3000", "upstream: ftp://x"),
            vec![("upstream", 1, "scheme `ftp`")],
        ),
        (
            MINIMAL.replace("upstream: http://127.0.0.1:3000", "upstream: http://127.0.0.1:3000/app"),
            vec![("upstream", 1, "scheme://host[:port] only")],
        ),
        (
            MINIMAL.replace("upstream: http://127.0.0.1:3000\n", ""),
            vec![("upstream", 1, "is required")],
        ),
        (
            format!("{MINIMAL}listen: 8080\n"),
            vec![("listen", 8, "not an address:port")],
        ),
        (
            format!("{MINIMAL}listen: 127.0.0.1:9901\n"),
            vec![("admin.listen", 1, "must differ from `listen`")],
        ),
        (
            format!("{MINIMAL}timeouts: {{ upstream_read: 10, shutdown_grace: 0s }}\n"),
            vec![("timeouts.upstream_read", 8, "invalid duration"), ("timeouts.shutdown_grace", 8, "above zero")],
        ),
        (
            format!("{MINIMAL}timeouts: {{ client_header: 61s }}\nlimits: {{ max_connections: 0 }}\n"),
            vec![("timeouts.client_header", 8, "at most 60s"), ("limits.max_connections", 9, "above 0")],
        ),
        (
            format!("{MINIMAL}timeouts: {{ upstream_read: 1y, upstream_idle: 1500us }}\n"),
            vec![("timeouts.upstream_read", 8, "longer than 24h"), ("timeouts.upstream_idle", 8, "finer than a millisecond")],
        ),
        (
            MINIMAL.replace("account_id: acc\n", "account_id: acc\n  timeout: 2m\n  cooldown: { duration: 2 days }\n"),
            vec![("released.timeout", 4, "between 1ms and 60s"), ("released.cooldown.duration", 5, "longer than 24h")],
        ),
        (
            format!("{MINIMAL}workers: 0\n"),
            vec![("workers", 8, "above 0")],
        ),
        (
            format!("{MINIMAL}workers: 2\nupstream_keepalive: lots\n"),
            vec![("upstream_keepalive", 9, "above 0, found `lots`")],
        ),
        (
            format!("{MINIMAL}embed: {{ tags: [\"<bad>\"], memory_limit: 1KiB }}\n"),
            vec![("embed.tags[0]", 8, "not an HTML tag name"), ("embed.memory_limit", 8, "at least 16KiB")],
        ),
        (
            MINIMAL.replace("transform: [escape]", "transform: [escape, upper]"),
            vec![("identity.user_id.transform[1]", 6, "unknown transform `upper`")],
        ),
        (
            MINIMAL.replace("{ header: X-Forwarded-Email }", "{ header: \"Bad Header\" }"),
            vec![("identity.user_email.header", 7, "not a valid header name")],
        ),
        (
            MINIMAL.replace("{ header: X-Forwarded-Email }", "{ pattern: x }"),
            vec![("identity.user_email.header", 7, "is required")],
        ),
        (
            MINIMAL.replace("released:\n  account_id: acc\n", "released:\n  api_url: http://released.example.com/token\n  account_id: acc\n"),
            vec![("released.api_url", 3, "must use https")],
        ),
        (
            MINIMAL.replace("released:\n  account_id: acc\n", "released:\n  api_url: https://svc:hunter2@released.example.com/token\n  account_id: acc\n"),
            vec![("released.api_url", 3, "must not carry a user name or password")],
        ),
        (
            format!("{MINIMAL}routes:\n  - name: a\n    match: {{ hots: x, path: '[' }}\n  - name: a\n  - match: {{ host: 'http://x' }}\n"),
            vec![
                ("routes[0].match.hots", 10, "did you mean `host`"),
                ("routes[0].match.path", 10, "invalid regex"),
                ("routes[1].name", 11, "duplicate route name"),
                ("routes[2].name", 12, "is required"),
                ("routes[2].match.host", 12, "not a host name"),
            ],
        ),
        (
            format!("{MINIMAL}routes: []\n"),
            vec![("routes", 8, "is empty")],
        ),
        (
            "upstream: http://127.0.0.1:3000\nroutes:\n  - name: a\n    released: { account_id: x }\n  - name: b\n".to_string(),
            vec![
                ("released.account_id", 1, "route b set no own value"),
                ("released", 1, "secret is required"),
                ("identity.user_id", 1, "routes a, b set no own value"),
                ("identity.user_email", 1, "is required"),
            ],
        ),
        (
            "upstream: [1]\nreleased: 5\nidentity:\n  user_id: x\n".to_string(),
            vec![
                ("upstream", 1, "expected a string"),
                ("released", 2, "expected a mapping"),
                ("identity.user_email", 3, "is required"),
                ("identity.user_id", 4, "expected a mapping"),
            ],
        ),
        (
            format!("{MINIMAL}upstream_tls: {{ verify: true }}\n"),
            vec![("upstream_tls", 8, "only applies to an https upstream")],
        ),
        (
            "a: 1\na: 2\nupstream: x: y\n".to_string(),
            vec![("", 3, "YAML syntax error")],
        ),
        (
            format!("{MINIMAL}{}", crate::config::yaml::tests::billion_laughs()),
            vec![("f[0]", 13, "more than 100000 values once its aliases are expanded")],
        ),

    ]
}

#[test]
fn every_bad_input_reports_every_error_with_path_and_line() {
    for (text, expected) in error_cases() {
        assert_rejected(&text, &expected);
    }
}

#[test]
fn nesting_past_the_bound_is_a_config_error_with_its_path_and_line() {
    let text = format!(
        "{MINIMAL}routes:\n  - name:\n      {}x\n",
        "- ".repeat(5_000)
    );
    let errors = load(&text).unwrap_err();
    assert_eq!(errors.errors.len(), 1, "{errors}");
    let e = &errors.errors[0];
    assert_eq!(e.path, format!("routes[0].name{}", "[0]".repeat(61)));
    assert_eq!(e.line, Some(10));
    assert!(e.message.contains("nested more than 64 levels"), "{errors}");
}

#[test]
fn a_byte_order_mark_and_surrounding_whitespace_are_not_part_of_the_secret() {
    let c =
        load(&MINIMAL.replace("shared_secret_file: secret", "shared_secret_file: bom")).unwrap();
    assert_eq!(c.routes.0[0].released.secret.expose(), SECRET);
}

#[test]
fn a_config_past_the_size_bound_is_refused_before_parsing() {
    let padding = format!("# {}\n", "x".repeat(1024)).repeat(1024);
    let errors = load(&format!("{MINIMAL}{padding}")).unwrap_err();
    assert_eq!(errors.errors.len(), 1, "{errors}");
    assert!(
        errors.errors[0].message.contains("larger than 1 MiB"),
        "{errors}"
    );
}

#[test]
fn duplicate_keys_are_errors() {
    let errors = load(&format!("{MINIMAL}workers: 1\nworkers: 2\n")).unwrap_err();
    assert!(
        errors
            .errors
            .iter()
            .any(|e| e.path == "workers" && e.line == Some(9) && e.message == "duplicate key"),
        "{errors}"
    );
}

#[test]
fn error_report_lists_file_line_and_path() {
    let errors = load(&format!("{MINIMAL}lisen: x\nworkers: -1\n")).unwrap_err();
    let text = errors.to_string();
    assert!(text.starts_with("test.yaml: 2 errors\n"), "{text}");
    assert!(text.contains("  test.yaml:8: lisen: unknown key"), "{text}");
    assert!(
        text.contains("  test.yaml:9: workers: expected a whole number above 0"),
        "{text}"
    );
}

#[test]
fn skipping_secrets_validates_the_source_without_reading_it() {
    let text = MINIMAL.replace(
        "shared_secret_file: secret",
        "shared_secret_file: /nonexistent/secret",
    );
    let dir = secret_dir();
    let c = Config::parse(
        &text,
        "t",
        dir.path(),
        &LoadOptions {
            env: &env,
            read_secrets: false,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    assert_eq!(c.secret_files, [PathBuf::from("/nonexistent/secret")]);
    assert!(load(&text).is_err(), "but `run` must read it");
}

#[test]
fn sizes_parse() {
    assert_eq!(parse_size("1024"), Ok(1024));
    assert_eq!(parse_size("512KiB"), Ok(512 * 1024));
    assert_eq!(parse_size("4MiB"), Ok(4 * 1024 * 1024));
    assert!(parse_size("4MB").is_err());
    assert!(parse_size("lots").is_err());
}

/// A config using `identity` written as `identity_yaml` (indented under `identity:`).
fn with_identity(identity_yaml: &str) -> String {
    format!(
        "upstream: http://127.0.0.1:3000\nreleased:\n  account_id: acc\n  shared_secret_file: secret\nidentity:\n{identity_yaml}"
    )
}

fn jwks_dir() -> tempfile::TempDir {
    let dir = secret_dir();
    std::fs::write(
        dir.path().join("jwks.json"),
        r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#,
    )
    .unwrap();
    dir
}

fn load_in(dir: &tempfile::TempDir, text: &str) -> Result<Config, ConfigErrors> {
    Config::parse(
        text,
        "test.yaml",
        dir.path(),
        &LoadOptions {
            env: &env,
            ..LoadOptions::default()
        },
    )
}

#[test]
fn every_preset_expands_to_its_gateway_headers_or_assertion() {
    use crate::token::identity::Source;
    use jsonwebtoken::Algorithm;
    let dir = jwks_dir();
    // (preset, extra jwt keys the operator supplies, user_id source, email source, jwt header, algorithms)
    /// (preset, jwt keys the operator adds, user_id source, email source, jwt header, algorithms)
    type PresetCase<'a> = (
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        Option<&'a str>,
        &'a [Algorithm],
    );
    let cases: &[PresetCase] = &[
        ("oauth2-proxy", "", "x-forwarded-user", "x-forwarded-email", None, &[]),
        ("oauth2-proxy-auth-request", "", "x-auth-request-user", "x-auth-request-email", None, &[]),
        ("authelia", "", "remote-user", "remote-email", None, &[]),
        ("authentik", "", "x-authentik-uid", "x-authentik-email", None, &[]),
        ("pomerium", "jwks_file: jwks.json, issuer: https://authenticate.example.com, audience: app.example.com", "sub", "email", Some("x-pomerium-jwt-assertion"), &[Algorithm::ES256]),
        ("google-iap", "audience: /projects/1/global/backendServices/2", "sub", "email", Some("x-goog-iap-jwt-assertion"), &[Algorithm::ES256]),
        ("cloudflare-access", "jwks_file: jwks.json, issuer: https://team.cloudflareaccess.com, audience: abc", "sub", "email", Some("cf-access-jwt-assertion"), &[Algorithm::RS256]),
        ("aws-alb", "key_url: 'https://public-keys.auth.elb.eu-west-1.amazonaws.com/{kid}', issuer: https://idp.example.com, signer: 'arn:aws:elasticloadbalancing:eu-west-1:1:loadbalancer/app/x/y'", "sub", "email", Some("x-amzn-oidc-data"), &[Algorithm::ES256]),
    ];
    for (preset, jwt, user_id, email, header, algorithms) in cases {
        let mut yaml = format!("  preset: {preset}\n");
        if !jwt.is_empty() {
            yaml.push_str(&format!("  jwt: {{ {jwt} }}\n"));
        }
        let c = load_in(&dir, &with_identity(&yaml)).unwrap_or_else(|e| panic!("{preset}: {e}"));
        let rules = &c.routes.0[0].identity;
        let name = |s: &Source| match s {
            Source::Header(h) => h.as_str().to_string(),
            Source::Claim(c) => c.clone(),
        };
        assert_eq!(name(&rules.user_id.source), *user_id, "{preset}");
        assert_eq!(name(&rules.user_email.source), *email, "{preset}");
        assert_eq!(
            rules.jwt.as_ref().map(|j| j.header.as_str()),
            *header,
            "{preset}"
        );
        if let Some(j) = &rules.jwt {
            assert_eq!(j.algorithms, *algorithms, "{preset}");
            assert_eq!(c.key_stores.len(), 1);
        }
    }
    let iap = load_in(
        &dir,
        &with_identity(
            "  preset: google-iap\n  jwt: { audience: /projects/1/global/backendServices/2 }\n",
        ),
    )
    .unwrap();
    let jwt = iap.routes.0[0].identity.jwt.clone().unwrap();
    assert_eq!(jwt.issuer, "https://cloud.google.com/iap");
    assert_eq!(
        jwt.keys.source(),
        &crate::token::keys::KeySource::JwksUrl(
            "https://www.gstatic.com/iap/verify/public_key-jwk".into()
        )
    );
    assert_eq!(
        iap.routes.0[0]
            .identity
            .user_id
            .pattern
            .as_ref()
            .unwrap()
            .as_str(),
        "^accounts\\.google\\.com:(.+)$"
    );
}

#[test]
fn explicit_fields_override_the_preset() {
    let dir = jwks_dir();
    let c = load_in(&dir, &with_identity("  preset: oauth2-proxy\n  user_id: { header: X-Forwarded-Email, transform: [lowercase, escape] }\n")).unwrap();
    let rules = &c.routes.0[0].identity;
    assert_eq!(header_of(&rules.user_id), "x-forwarded-email");
    assert_eq!(
        header_of(&rules.name.clone().unwrap()),
        "x-forwarded-preferred-username"
    );
}

#[test]
fn jwt_blocks_are_checked_for_completeness_and_safety() {
    let dir = jwks_dir();
    let cases: Vec<(String, Vec<Expected>)> = vec![
        (
            with_identity("  preset: google-iap\n"),
            vec![("identity.jwt.audience", 6, "is required")],
        ),
        (
            with_identity("  jwt: { header: X-Assertion }\n  user_id: { claim: sub }\n  user_email: { claim: email }\n"),
            vec![
                ("identity.jwt.jwks_url", 6, "where the keys come from"),
                ("identity.jwt.issuer", 6, "is required"),
                ("identity.jwt.audience", 6, "is required"),
            ],
        ),
        (
            with_identity("  jwt: { header: X-A, jwks_file: jwks.json, issuer: i, audience: a, algorithms: [HS256, none] }\n  user_id: { claim: sub }\n  user_email: { claim: email }\n"),
            vec![
                ("identity.jwt.algorithms[0]", 6, "is refused"),
                ("identity.jwt.algorithms[1]", 6, "`none` is never accepted"),
                ("identity.jwt.algorithms", 6, "at least one"),
            ],
        ),
        (
            with_identity("  jwt: { header: X-A, jwks_file: jwks.json, issuer: i, audience: a }\n  user_id: { header: X-Forwarded-User }\n  user_email: { claim: email }\n"),
            vec![("identity.user_id", 7, "use `claim:` instead of `header:`")],
        ),
        (
            with_identity("  user_id: { claim: sub }\n  user_email: { header: X-Email }\n"),
            vec![("identity.user_id", 6, "set identity.jwt")],
        ),
        (
            with_identity("  jwt: { header: X-A, jwks_file: missing.json, issuer: i, audience: a }\n  user_id: { claim: sub }\n  user_email: { claim: email }\n"),
            vec![("identity.jwt.jwks_file", 6, "cannot read")],
        ),
        (
            with_identity("  jwt: { header: X-A, jwks_url: 'https://a/k', key_url: 'https://b/{kid}', issuer: i, audience: a }\n  user_id: { claim: sub }\n  user_email: { claim: email }\n"),
            vec![("identity.jwt.key_url", 6, "only one of")],
        ),
        (
            with_identity("  jwt: { header: X-A, key_url: 'https://b/key', jwks_url: http://keys.example.com/jwks, issuer: i, audience: a }\n  user_id: { claim: sub }\n  user_email: { claim: email }\n"),
            vec![("identity.jwt.key_url", 6, "only one of")],
        ),
        (
            with_identity("  jwt: { header: X-A, jwks_url: http://keys.example.com/jwks, issuer: i, audience: a }\n  user_id: { claim: sub }\n  user_email: { claim: email }\n"),
            vec![("identity.jwt.jwks_url", 6, "must use https")],
        ),
        (
            with_identity("  preset: google-iap\n  jwt: { audience: [] }\n"),
            vec![("identity.jwt.audience", 7, "must not be empty")],
        ),
        (
            with_identity("  jwt: { header: X-A, jwks_file: jwks.json, issuer: '', audience: [a, ' '], signer: '' }\n  user_id: { claim: sub }\n  user_email: { claim: email }\n"),
            vec![
                ("identity.jwt.issuer", 6, "must not be empty"),
                ("identity.jwt.audience[1]", 6, "must not be empty"),
                ("identity.jwt.signer", 6, "must not be empty"),
            ],
        ),
        (
            with_identity("  preset: nope\n"),
            vec![("identity.preset", 6, "unknown preset `nope`"), ("identity.user_id", 5, "is required"), ("identity.user_email", 5, "is required")],
        ),
        (
            with_identity("  user_id: { header: X-A, claim: sub }\n  user_email: { header: X-Email }\n"),
            vec![("identity.user_id.claim", 6, "either `header` or `claim`")],
        ),
    ];
    for (text, expected) in cases {
        let errors = match load_in(&dir, &text) {
            Ok(_) => panic!("config should be rejected:\n{text}"),
            Err(e) => e,
        };
        for (path, line, fragment) in &expected {
            assert!(
                errors.errors.iter().any(|e| e.path == *path && e.line == Some(*line) && e.message.contains(fragment)),
                "expected `{path}` at line {line} containing {fragment:?}; got:\n{errors}\nfor:\n{text}"
            );
        }
        assert_eq!(
            errors.errors.len(),
            expected.len(),
            "unexpected extra errors:\n{errors}\nfor:\n{text}"
        );
    }
}

#[test]
fn jwt_identity_strips_its_assertion_header_from_untrusted_peers() {
    let dir = jwks_dir();
    let c = load_in(
        &dir,
        &with_identity("  preset: pomerium\n  jwt: { jwks_file: jwks.json, issuer: https://auth.example.com, audience: app.example.com }\n"),
    )
    .unwrap();
    assert!(c
        .identity_headers
        .names()
        .iter()
        .any(|h| h == "x-pomerium-jwt-assertion"));
    assert_eq!(c.key_files.len(), 1);
}

#[test]
fn head_deadline_and_connection_cap_are_read() {
    let c = load(&format!(
        "{MINIMAL}timeouts: {{ client_header: 5s }}\nlimits: {{ max_connections: 10 }}\n"
    ))
    .unwrap();
    assert_eq!(c.timeouts.client_header, Duration::from_secs(5));
    assert_eq!(c.limits.max_connections, 10);
}

#[test]
fn api_url_credentials_are_refused_without_echoing_them() {
    for url in [
        "https://svc:hunter2@released.example.com/token",
        "hunter2@not a url",
    ] {
        let text = MINIMAL.replace(
            "released:\n  account_id: acc\n",
            &format!("released:\n  api_url: \"{url}\"\n  account_id: acc\n"),
        );
        let errors = load(&text).unwrap_err().to_string();
        assert!(errors.contains("released.api_url"), "{errors}");
        assert!(!errors.contains("hunter2"), "password echoed: {errors}");
    }
}
