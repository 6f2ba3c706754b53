//! Cost of reading the signed-in user from the gateway's headers
//! (`IdentityRules::extract`, `src/token/identity.rs`), once per page load.
//!
//! Run: `cargo bench --bench identity -- --warm-up-time 1 --measurement-time 3`
//!
//! Cases, each on a realistic request head of ~20 headers:
//! - `oauth2_proxy_escape`: the default rules (X-Forwarded-User with `escape`,
//!   X-Forwarded-Email, X-Forwarded-Preferred-Username).
//! - `oauth2_proxy_full`: the same plus X-Forwarded-Avatar (an absolute URL is parsed).
//! - `pattern_sha256`: Google-IAP-style `accounts.google.com:alice@example.com` headers,
//!   a regex capture, then `lowercase` + `sha256` for user_id and `lowercase` for email.
//! - `missing_identity`: the common non-page case of no identity header (early error).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use regex::Regex;
use released_sidecar::token::identity::{FieldRule, IdentityRules, Source, Transform};

fn rule(header: &str, pattern: Option<&str>, transforms: &[Transform]) -> FieldRule {
    FieldRule {
        source: Source::Header(HeaderName::from_bytes(header.as_bytes()).expect("header name")),
        pattern: pattern.map(|p| Regex::new(p).expect("regex")),
        transforms: transforms.to_vec(),
    }
}

/// A browser request as oauth2-proxy forwards it, plus `extra` identity headers.
fn request_headers(extra: &[(&str, &str)]) -> HeaderMap {
    let base: &[(&str, &str)] = &[
        ("host", "app.example.com"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"),
        ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"),
        ("accept-language", "en-US,en;q=0.9,fr;q=0.8"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("cookie", "_oauth2_proxy=c2Vzc2lvbi1jb29raWUtbm90LXJlYWw; theme=light; _ga=GA1.2.123456789.1700000000"),
        ("upgrade-insecure-requests", "1"),
        ("sec-fetch-dest", "document"),
        ("sec-fetch-mode", "navigate"),
        ("sec-fetch-site", "same-origin"),
        ("sec-fetch-user", "?1"),
        ("referer", "https://app.example.com/roadmap"),
        ("x-forwarded-for", "203.0.113.7"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "app.example.com"),
        ("x-real-ip", "203.0.113.7"),
        ("x-forwarded-groups", "engineering,roadmap-editors"),
        ("x-request-id", "7f9c2ba4e88f827d616045507605853e"),
    ];
    let mut map = HeaderMap::new();
    for (k, v) in base.iter().chain(extra) {
        map.append(
            HeaderName::from_bytes(k.as_bytes()).expect("name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    map
}

fn oauth2_proxy_rules(avatar: bool) -> IdentityRules {
    IdentityRules {
        user_id: rule("x-forwarded-user", None, &[Transform::Escape]),
        user_email: rule("x-forwarded-email", None, &[]),
        name: Some(rule("x-forwarded-preferred-username", None, &[])),
        avatar_url: avatar.then(|| rule("x-forwarded-avatar", None, &[])),
        jwt: None,
    }
}

fn bench_identity(c: &mut Criterion) {
    let mut group = c.benchmark_group("identity_extract");

    let rules = oauth2_proxy_rules(false);
    let headers = request_headers(&[
        ("x-forwarded-user", "alice.smith@example.com"),
        ("x-forwarded-email", "alice.smith@example.com"),
        ("x-forwarded-preferred-username", "Alice Smith"),
    ]);
    let got = rules.extract(&headers).expect("identity");
    assert_eq!(got.identity.user_id, "alice:2esmith:40example:2ecom");
    group.bench_function("oauth2_proxy_escape", |b| {
        b.iter(|| black_box(rules.extract(black_box(&headers))).is_ok())
    });

    let rules_full = oauth2_proxy_rules(true);
    let headers_full = request_headers(&[
        ("x-forwarded-user", "alice.smith@example.com"),
        ("x-forwarded-email", "alice.smith@example.com"),
        ("x-forwarded-preferred-username", "Alice Smith"),
        (
            "x-forwarded-avatar",
            "https://cdn.example.com/avatars/alice.png?s=64",
        ),
    ]);
    let got = rules_full.extract(&headers_full).expect("identity");
    assert!(got.identity.avatar_url.is_some());
    group.bench_function("oauth2_proxy_full", |b| {
        b.iter(|| black_box(rules_full.extract(black_box(&headers_full))).is_ok())
    });

    let iap = IdentityRules {
        user_id: rule(
            "x-goog-authenticated-user-id",
            Some(r"^accounts\.google\.com:(.+)$"),
            &[Transform::Lowercase, Transform::Sha256],
        ),
        user_email: rule(
            "x-goog-authenticated-user-email",
            Some(r"^accounts\.google\.com:(.+)$"),
            &[Transform::Lowercase],
        ),
        name: None,
        avatar_url: None,
        jwt: None,
    };
    let iap_headers = request_headers(&[
        (
            "x-goog-authenticated-user-id",
            "accounts.google.com:118234567890123456789",
        ),
        (
            "x-goog-authenticated-user-email",
            "accounts.google.com:Alice.Smith@Example.com",
        ),
    ]);
    let got = iap.extract(&iap_headers).expect("identity");
    assert_eq!(got.identity.user_id.len(), 64);
    assert_eq!(got.identity.user_email, "alice.smith@example.com");
    group.bench_function("pattern_sha256", |b| {
        b.iter(|| black_box(iap.extract(black_box(&iap_headers))).is_ok())
    });

    let anonymous = request_headers(&[]);
    assert!(rules.extract(&anonymous).is_err());
    group.bench_function("missing_identity", |b| {
        b.iter(|| black_box(rules.extract(black_box(&anonymous))).is_err())
    });

    group.finish();
}

criterion_group!(benches, bench_identity);
criterion_main!(benches);
