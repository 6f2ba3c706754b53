//! The docs tell the truth about what a running sidecar exports: every metric name and
//! label value quoted in README.md, deploy/**/README.md, systemd/README.md and
//! config.example.yaml appears in the real `/metrics` of a sidecar that has been driven
//! through the outcomes the docs name (an alert on a label value that never exists fires
//! on every success, or never).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use regex::Regex;
use serde_json::{json, Value};
use support::jwt::{ec_key, jwks, now, sign, Key};
use support::{Reply, SidecarBuilder, StandIn, Upstream};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Every doc a user reads for operations: the READMEs and the example config.
fn docs() -> Vec<PathBuf> {
    let mut docs = vec![
        repo("README.md"),
        repo("systemd/README.md"),
        repo("config.example.yaml"),
    ];
    let mut dirs = vec![repo("deploy")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.file_name().is_some_and(|n| n == "README.md") {
                docs.push(path);
            }
        }
    }
    docs.sort();
    docs
}

/// One metric a doc quotes: its name and the labels it names, each with the value it
/// quotes (`None`: only the label's name). A trailing `*` is a wildcard.
#[derive(Debug, Clone, PartialEq)]
struct Quote {
    at: String,
    metric: String,
    labels: Vec<(String, Option<String>)>,
}

/// The metric quotes in `text` (from `file`): selectors (`name{label="value"}`, with an
/// "(and `v2`, `v3`)" list of more values after it), bare names, and the rows of a
/// metrics table (`| name | type | labels | meaning |`, labels as "`label`: `v1`, `v2`"
/// or "`label1`, `label2`").
fn quotes_in(file: &str, text: &str) -> Vec<Quote> {
    let name = Regex::new(r"\b(released_sidecar_[a-z0-9_]+\*?)(\{[^}]*\})?").unwrap();
    let matcher = Regex::new(r#"([a-z_]+)\s*(=~|!~|!=|=)\s*"([^"]*)""#).unwrap();
    let more = Regex::new(r"^`?\s*\(and ((?:`[a-z_*]+`,?\s*)+)").unwrap();
    let ticked = Regex::new(r"`([^`]+)`").unwrap();
    let line_of = |offset: usize| text[..offset].matches('\n').count() + 1;
    let mut quotes = Vec::new();

    for line in text.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let metric = cells[1].trim_matches('`');
        if !(metric.starts_with("released_sidecar_") || metric.ends_with('*')) {
            continue;
        }
        let labels_cell = cells.get(3).copied().unwrap_or_default();
        let names: Vec<String> = ticked
            .captures_iter(labels_cell)
            .map(|c| c[1].to_string())
            .collect();
        let labels = match labels_cell.find("`:") {
            Some(_) => {
                let (label, values) = names.split_first().expect("a label name");
                values
                    .iter()
                    .map(|v| (label.clone(), Some(v.clone())))
                    .collect()
            }
            None => names.into_iter().map(|n| (n, None)).collect(),
        };
        quotes.push(Quote {
            at: format!("{file} (metrics table)"),
            metric: metric.to_string(),
            labels,
        });
    }

    for m in name.captures_iter(text) {
        let whole = m.get(0).unwrap();
        let mut labels: Vec<(String, Option<String>)> = Vec::new();
        if let Some(selector) = m.get(2) {
            for c in matcher.captures_iter(selector.as_str()) {
                let regex_op = c[2].contains('~');
                labels.push((c[1].to_string(), (!regex_op).then(|| c[3].to_string())));
            }
            if let (Some(after), [(label, Some(_))]) = (
                more.captures(&text[whole.end()..]),
                labels.clone().as_slice(),
            ) {
                for v in ticked.captures_iter(&after[1]) {
                    labels.push((label.clone(), Some(v[1].to_string())));
                }
            }
        }
        quotes.push(Quote {
            at: format!("{file}:{}", line_of(whole.start())),
            metric: m[1].to_string(),
            labels,
        });
    }
    quotes
}

/// `/metrics` text as families (from `# TYPE`) and samples (`name` → label sets).
struct Exposition {
    families: BTreeSet<String>,
    samples: BTreeMap<String, Vec<BTreeMap<String, String>>>,
}

impl Exposition {
    fn parse(text: &str) -> Exposition {
        let pair = Regex::new(r#"([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)""#).unwrap();
        let mut families = BTreeSet::new();
        let mut samples: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                families.insert(rest.split_whitespace().next().unwrap().to_string());
            } else if !line.starts_with('#') && !line.is_empty() {
                let name_end = line.find(['{', ' ']).unwrap_or(line.len());
                let labels = match line.find('{') {
                    Some(open) => {
                        let close = line.rfind('}').unwrap();
                        pair.captures_iter(&line[open..close])
                            .map(|c| (c[1].to_string(), c[2].to_string()))
                            .collect()
                    }
                    None => BTreeMap::new(),
                };
                samples
                    .entry(line[..name_end].to_string())
                    .or_default()
                    .push(labels);
            }
        }
        Exposition { families, samples }
    }

    /// The label sets of every sample of the families `metric` names (a histogram's
    /// `_bucket`/`_sum`/`_count` included; `prefix*` names every family it starts).
    fn series_of(&self, metric: &str) -> Option<Vec<&BTreeMap<String, String>>> {
        let families: Vec<&String> = match metric.strip_suffix('*') {
            Some(prefix) => self
                .families
                .iter()
                .filter(|f| f.starts_with(prefix))
                .collect(),
            None => {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| metric.strip_suffix(s))
                    .filter(|b| self.families.contains(*b))
                    .unwrap_or(metric);
                self.families.iter().filter(|f| *f == base).collect()
            }
        };
        if families.is_empty() {
            return None;
        }
        Some(
            self.samples
                .iter()
                .filter(|(name, _)| {
                    families.iter().any(|f| {
                        *name == *f
                            || ["_bucket", "_sum", "_count"]
                                .map(|s| format!("{f}{s}"))
                                .contains(name)
                    })
                })
                .flat_map(|(_, sets)| sets.iter())
                .collect(),
        )
    }

    /// What is wrong with `quote` against this exposition, if anything.
    fn check(&self, quote: &Quote) -> Vec<String> {
        let Some(series) = self.series_of(&quote.metric) else {
            return vec![format!("{}: no metric {}", quote.at, quote.metric)];
        };
        let mut problems = Vec::new();
        for (label, value) in &quote.labels {
            let found = series
                .iter()
                .any(|labels| match (labels.get(label), value) {
                    (None, _) => false,
                    (Some(_), None) => true,
                    (Some(v), Some(want)) => match want.strip_suffix('*') {
                        Some(prefix) => v.starts_with(prefix),
                        None => v == want,
                    },
                });
            if !found {
                let shown = value
                    .as_deref()
                    .map(|v| format!("=\"{v}\""))
                    .unwrap_or_default();
                problems.push(format!(
                    "{}: {}{{{label}{shown}}} is not in /metrics",
                    quote.at, quote.metric
                ));
            }
        }
        problems
    }
}

// ---------------------------------------------------------------------------------------
// a sidecar driven through the outcomes the docs name

const ISSUER: &str = "https://issuer.example.com";
const AUDIENCE: &str = "docs-test";
const SIGNER: &str = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:loadbalancer/app/docs/1";

/// Routes for each way of getting no token, and a default route that gets one.
fn config(closed_port: u16) -> String {
    let base = &support::sidecar::DEFAULT_CONFIG
        [..support::sidecar::DEFAULT_CONFIG.find("identity:").unwrap()];
    let claims = "user_id: { claim: sub, transform: [escape] }, user_email: { claim: email }";
    format!(
        r#"{base}trusted_proxies: ["127.0.0.1/32"]
identity:
  user_id: {{ header: X-Forwarded-User, transform: [escape] }}
  user_email: {{ header: X-Forwarded-Email }}
routes:
  - name: jwt
    match: {{ path: "^/jwt" }}
    identity: {{ jwt: {{ header: X-Assertion, jwks_file: "{{dir}}/jwks.json", issuer: "{ISSUER}", audience: "{AUDIENCE}" }}, {claims} }}
  - name: alb
    match: {{ path: "^/alb" }}
    identity: {{ jwt: {{ header: X-Assertion, jwks_file: "{{dir}}/jwks.json", issuer: "{ISSUER}", signer: "{SIGNER}" }}, {claims} }}
  - name: nokeys
    match: {{ path: "^/nokeys" }}
    identity: {{ jwt: {{ header: X-Assertion, jwks_url: "http://127.0.0.1:{closed_port}/jwks.json", issuer: "{ISSUER}", audience: "{AUDIENCE}" }}, {claims} }}
  - name: pattern
    match: {{ path: "^/pattern" }}
    identity: {{ user_id: {{ header: X-Forwarded-User, pattern: '^id-(.*)$' }} }}
  - name: raw
    match: {{ path: "^/raw" }}
    identity: {{ user_id: {{ header: X-Forwarded-User }} }}
  - name: default
"#
    )
}

fn claims(overrides: Value) -> Value {
    let mut c = json!({"iss": ISSUER, "aud": AUDIENCE, "exp": now() + 300, "iat": now(),
                       "sub": "user-1", "email": "user@example.com"});
    for (k, v) in overrides.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

/// A token with a hand-made header (`alg` not matching the key, extra fields).
fn signed_with_header(key: &Key, header: Value, claims: &Value) -> String {
    let b64 = |v: &Value| support::jwt::b64(v.to_string().as_bytes());
    let input = format!("{}.{}", b64(&header), b64(claims));
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key.encoding, key.alg).unwrap();
    format!("{input}.{sig}")
}

/// A page load: path, headers (raw bytes, to send non-UTF-8), and the client's address.
type PageLoad = (&'static str, Vec<(&'static str, Vec<u8>)>, &'static str);

/// Page loads that end in every outcome the docs name, one skip reason each.
fn page_loads(key: &Key) -> Vec<PageLoad> {
    let ok = [
        ("x-forwarded-user", b"alice".to_vec()),
        ("x-forwarded-email", b"alice@example.com".to_vec()),
    ];
    let jwt = |token: String| vec![("x-assertion", token.into_bytes())];
    // Another token's claims under this one's signature.
    let genuine = sign(key, &claims(json!({})));
    let other = sign(key, &claims(json!({"sub": "admin"})));
    let (head, rest) = genuine.split_once('.').unwrap();
    let signature = rest.rsplit_once('.').unwrap().1;
    let claims_of_other = other.split('.').nth(1).unwrap();
    let tampered = format!("{head}.{claims_of_other}.{signature}");
    let forged_hs = format!(
        "{}.{}.c2ln",
        support::jwt::b64(br#"{"alg":"HS256","kid":"k1"}"#),
        support::jwt::b64(claims(json!({})).to_string().as_bytes())
    );
    let rs_on_ec_key = format!(
        "{}.{}.c2ln",
        support::jwt::b64(br#"{"alg":"RS256","kid":"k1"}"#),
        support::jwt::b64(claims(json!({})).to_string().as_bytes())
    );
    let n = now();
    vec![
        ("/", ok.to_vec(), "127.0.0.1"),
        ("/", ok.to_vec(), "127.0.0.2"),
        ("/", vec![ok[1].clone()], "127.0.0.1"),
        (
            "/",
            [ok.to_vec(), vec![ok[0].clone()]].concat(),
            "127.0.0.1",
        ),
        (
            "/",
            vec![("x-forwarded-user", b"\xff".to_vec()), ok[1].clone()],
            "127.0.0.1",
        ),
        (
            "/",
            vec![ok[0].clone(), ("x-forwarded-email", b"nope".to_vec())],
            "127.0.0.1",
        ),
        (
            "/raw",
            vec![("x-forwarded-user", b"a b".to_vec()), ok[1].clone()],
            "127.0.0.1",
        ),
        (
            "/pattern",
            vec![("x-forwarded-user", b"nope".to_vec()), ok[1].clone()],
            "127.0.0.1",
        ),
        (
            "/pattern",
            vec![("x-forwarded-user", b"id-".to_vec()), ok[1].clone()],
            "127.0.0.1",
        ),
        ("/jwt", vec![], "127.0.0.1"),
        ("/jwt", jwt("not-a-jwt".into()), "127.0.0.1"),
        ("/jwt", jwt(forged_hs), "127.0.0.1"),
        ("/jwt", jwt(rs_on_ec_key), "127.0.0.1"),
        (
            "/jwt",
            jwt(sign(&ec_key("k-unknown"), &claims(json!({})))),
            "127.0.0.1",
        ),
        ("/jwt", jwt(tampered), "127.0.0.1"),
        (
            "/jwt",
            jwt(sign(key, &claims(json!({"exp": n - 600})))),
            "127.0.0.1",
        ),
        (
            "/jwt",
            jwt(sign(key, &claims(json!({"nbf": n + 600})))),
            "127.0.0.1",
        ),
        (
            "/jwt",
            jwt(sign(key, &claims(json!({"iat": n + 600})))),
            "127.0.0.1",
        ),
        (
            "/jwt",
            jwt(sign(
                key,
                &claims(json!({"iss": "https://other.example.com"})),
            )),
            "127.0.0.1",
        ),
        (
            "/jwt",
            jwt(sign(key, &claims(json!({"aud": "other"})))),
            "127.0.0.1",
        ),
        (
            "/jwt",
            jwt(sign(key, &claims(json!({"email": null})))),
            "127.0.0.1",
        ),
        (
            "/jwt",
            jwt(sign(key, &claims(json!({"email": ["a@example.com"]})))),
            "127.0.0.1",
        ),
        (
            "/alb",
            jwt(signed_with_header(
                key,
                json!({"alg": "ES256", "kid": "k1", "typ": "JWT", "signer": "arn:other"}),
                &claims(json!({})),
            )),
            "127.0.0.1",
        ),
        ("/nokeys", jwt(sign(key, &claims(json!({})))), "127.0.0.1"),
    ]
}

/// `/metrics` of a sidecar after every page load of [`page_loads`].
async fn driven_metrics() -> String {
    let upstream = Upstream::start(|_| Reply::html("<released-page></released-page>")).await;
    let standin = StandIn::start(support::sidecar::SECRET).await;
    let key = ec_key("k1");
    // Nothing listens there: the `nokeys` route's keys stay unavailable.
    let closed_port = support::free_port();
    let sidecar = SidecarBuilder::new(&upstream.url(), &standin.url())
        .template(&config(closed_port))
        .file("jwks.json", &jwks(&[&key]))
        .without_waiting_for_ready()
        .start()
        .await;
    for (path, headers, peer) in page_loads(&key) {
        let client = reqwest::Client::builder()
            .no_proxy()
            .local_address(peer.parse::<std::net::IpAddr>().unwrap())
            .build()
            .unwrap();
        let mut req = client.get(sidecar.url(path)).header("accept", "text/html");
        for (name, value) in headers {
            req = req.header(
                name,
                reqwest::header::HeaderValue::from_bytes(&value).unwrap(),
            );
        }
        let resp = req.send().await.expect("page load");
        assert_eq!(resp.status(), 200, "{path}");
    }
    assert_eq!(standin.issued().len(), 1, "{:#?}", standin.calls());
    sidecar.metrics().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_name_and_label_value_quoted_in_the_docs_is_exported() {
    let metrics = Exposition::parse(&driven_metrics().await);
    let mut quotes = Vec::new();
    for doc in docs() {
        let rel = doc.strip_prefix(repo("")).unwrap().display().to_string();
        quotes.extend(quotes_in(&rel, &std::fs::read_to_string(&doc).unwrap()));
    }
    // The docs do quote metrics, and the parser sees the table and the prose lists.
    let has = |metric: &str, label: &str, value: &str| {
        quotes.iter().any(|q| {
            q.metric == metric
                && q.labels
                    .iter()
                    .any(|(l, v)| l == label && v.as_deref() == Some(value))
        })
    };
    assert!(has(
        "released_sidecar_token_requests_total",
        "result",
        "abandoned"
    ));
    assert!(has(
        "released_sidecar_token_skips_total",
        "reason",
        "jwt_signer"
    ));
    assert!(has(
        "released_sidecar_token_skips_total",
        "reason",
        "untrusted_peer"
    ));
    assert!(quotes.len() > 20, "{quotes:#?}");

    let problems: Vec<String> = quotes.iter().flat_map(|q| metrics.check(q)).collect();
    assert!(
        problems.is_empty(),
        "the docs quote metrics the sidecar does not export:\n{}",
        problems.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_label_value_no_sidecar_exports_is_reported() {
    // The alert the Kubernetes README once suggested: `ok` is not a result.
    let upstream = Upstream::start(|_| Reply::html("<p></p>")).await;
    let standin = StandIn::start(support::sidecar::SECRET).await;
    let sidecar = SidecarBuilder::new(&upstream.url(), &standin.url())
        .start()
        .await;
    let metrics = Exposition::parse(&sidecar.metrics().await);
    let bad = quotes_in(
        "example",
        "alert on `released_sidecar_token_requests_total{result!=\"ok\"}` and `released_sidecar_tokens_total`",
    );
    let problems: Vec<String> = bad.iter().flat_map(|q| metrics.check(q)).collect();
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(problems[0].contains("result=\"ok\""), "{problems:#?}");
    assert!(problems[1].contains("no metric released_sidecar_tokens_total"));
}

/// `1.95` or `1.88.0` as comparable numbers.
fn version(v: &str) -> Vec<u64> {
    v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

/// The triple this machine builds for (`rustc -vV`'s `host:` line).
fn host_triple() -> String {
    let out = std::process::Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("rustc runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .to_string()
}

#[test]
fn the_minimum_rust_version_stated_builds_every_locked_dependency() {
    let manifest = std::fs::read_to_string(repo("Cargo.toml")).unwrap();
    let stated = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .expect("Cargo.toml states rust-version")
        .trim_matches('"')
        .to_string();
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    assert!(
        readme.contains(&format!("Rust **{stated} or newer**")),
        "README.md must state the minimum Rust version {stated}"
    );

    // The packages a release build compiles (normal and build dependencies, not dev).
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        // Only this platform's packages: a Windows-only dependency (winapi) is never
        // downloaded by a Linux build, and --offline cannot fetch it.
        .args([
            "metadata",
            "--locked",
            "--offline",
            "--format-version",
            "1",
            "--filter-platform",
            &host_triple(),
        ])
        .current_dir(repo(""))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    let nodes: BTreeMap<&str, &Value> = meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();
    let packages: BTreeMap<&str, &Value> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p))
        .collect();
    let mut todo = vec![meta["resolve"]["root"].as_str().unwrap()];
    let mut built = BTreeSet::new();
    while let Some(id) = todo.pop() {
        if !built.insert(id) {
            continue;
        }
        for dep in nodes[id]["deps"].as_array().unwrap() {
            let kinds = dep["dep_kinds"].as_array().unwrap();
            if kinds.iter().any(|k| k["kind"].as_str() != Some("dev")) {
                todo.push(dep["pkg"].as_str().unwrap());
            }
        }
    }
    let too_new: Vec<String> = built
        .iter()
        .filter_map(|id| {
            let p = packages[id];
            let needs = p["rust_version"].as_str()?;
            (version(needs) > version(&stated))
                .then(|| format!("{} {} needs {needs}", p["name"], p["version"]))
        })
        .collect();
    assert!(
        too_new.is_empty(),
        "rust-version {stated} is too old for:\n{}",
        too_new.join("\n")
    );
}
