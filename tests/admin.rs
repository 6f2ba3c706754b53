//! The operator's view (SPEC §6-7): admin endpoints on their own port, Prometheus
//! metrics that parse, access logs, and logs that never carry a secret or a token.

mod support;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use support::{
    client, eventually, navigation, tokens_in, Reply, SidecarBuilder, StandIn, Upstream,
};

const SECRET: &str = support::sidecar::SECRET;
const PAGE: &str = "<released-page></released-page>";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_live_on_the_admin_port_only() {
    let upstream = Upstream::start(|_| Reply::with(200, "text/plain", "from the app")).await;
    let standin = StandIn::start(SECRET).await;
    let sidecar = SidecarBuilder::new(&upstream.url(), &standin.url())
        .start()
        .await;
    let c = client();
    for (path, status, body) in [
        ("/healthz", 200, "ok\n"),
        ("/readyz", 200, "ready\n"),
        ("/nope", 404, ""),
    ] {
        let resp = c.get(sidecar.admin_url(path)).send().await.unwrap();
        assert_eq!(resp.status(), status, "{path}");
        if !body.is_empty() {
            assert_eq!(resp.text().await.unwrap(), body);
        }
    }
    let metrics = c.get(sidecar.admin_url("/metrics")).send().await.unwrap();
    assert!(metrics.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    for path in ["/metrics", "/healthz", "/readyz"] {
        let proxied = c
            .get(sidecar.url(path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(
            proxied, "from the app",
            "{path} on the proxy port goes to the app"
        );
    }
}

/// One sample line: `name{labels} value`.
fn parse_sample(line: &str) -> Result<(String, HashMap<String, String>, f64), String> {
    let (series, value) = line.rsplit_once(' ').ok_or("no value")?;
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().map_err(|_| format!("bad value {v}"))?,
    };
    let (name, labels) = match series.split_once('{') {
        None => (series.to_string(), HashMap::new()),
        Some((name, rest)) => {
            let rest = rest.strip_suffix('}').ok_or("unclosed labels")?;
            let mut labels = HashMap::new();
            for pair in rest.split("\",").filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once("=\"").ok_or(format!("bad label {pair}"))?;
                labels.insert(k.to_string(), v.trim_end_matches('"').to_string());
            }
            (name.to_string(), labels)
        }
    };
    let valid_name = name.chars().enumerate().all(|(i, c)| {
        c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
    });
    if !valid_name {
        return Err(format!("bad metric name {name}"));
    }
    Ok((name, labels, value))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metrics_line_parses_and_follows_prometheus_conventions() {
    let upstream = Upstream::start(|_| Reply::html(PAGE)).await;
    let standin = StandIn::start(SECRET).await;
    let sidecar = SidecarBuilder::new(&upstream.url(), &standin.url())
        .start()
        .await;
    let body = sidecar.page_load("/").await.text().await.unwrap();
    assert_eq!(tokens_in(&body).len(), 1);
    // The access metrics are recorded after the response is sent.
    assert!(
        sidecar
            .wait_for_metric(
                "released_sidecar_requests_total{code=\"200\",route=\"default\"}",
                |v| v == 1.0
            )
            .await
    );

    let text = sidecar.metrics().await;
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            types.insert(name.to_string(), kind.to_string());
        } else if line.starts_with("# HELP ") || line.is_empty() {
        } else {
            samples.push(parse_sample(line).unwrap_or_else(|e| panic!("{e}: {line:?}")));
        }
    }
    for (name, kind) in &types {
        assert!(
            name.starts_with("released_sidecar_") || name.starts_with("process_"),
            "{name}"
        );
        match kind.as_str() {
            "counter" => assert!(
                name.ends_with("_total"),
                "counter {name} must end in _total"
            ),
            "histogram" => assert!(
                name.ends_with("_seconds"),
                "histogram {name} must be in seconds"
            ),
            "gauge" => assert!(!name.ends_with("_total"), "{name}"),
            other => panic!("unexpected type {other} for {name}"),
        }
    }
    let names: HashSet<&str> = samples.iter().map(|(n, _, _)| n.as_str()).collect();
    for required in [
        "released_sidecar_requests_total",
        "released_sidecar_page_loads_total",
        "released_sidecar_token_requests_total",
        "released_sidecar_token_request_duration_seconds_bucket",
        "released_sidecar_token_request_duration_seconds_count",
        "released_sidecar_tags_rewritten_total",
        "released_sidecar_config_reloads_total",
        "released_sidecar_upstream_responses_total",
        "released_sidecar_upstream_response_duration_seconds_bucket",
    ] {
        assert!(names.contains(required), "{required} missing:\n{text}");
    }
    let value = |name: &str, label: Option<(&str, &str)>| {
        samples
            .iter()
            .find(|(n, l, _)| {
                n == name && label.is_none_or(|(k, v)| l.get(k).map(String::as_str) == Some(v))
            })
            .map(|(_, _, v)| *v)
    };
    assert_eq!(
        value(
            "released_sidecar_token_requests_total",
            Some(("result", "success"))
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            "released_sidecar_page_loads_total",
            Some(("route", "default"))
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            "released_sidecar_upstream_responses_total",
            Some(("code", "200"))
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            "released_sidecar_token_request_duration_seconds_count",
            None
        ),
        Some(1.0)
    );
    assert!(!text.contains(SECRET) && !text.contains(&standin.issued()[0].token.clone().unwrap()));

    match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool check metrics:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // A visible SKIP, or a failure under CI; the line-by-line checks above still ran.
        Err(e) => support::tools::skip(
            &format!("`promtool` cannot run ({e}); `promtool check metrics` skipped"),
            "scripts/deps.sh test installs it from Debian's prometheus",
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_json_access_line_per_request_without_identity_values() {
    let upstream = Upstream::start(|_| Reply::html(PAGE)).await;
    let standin = StandIn::start(SECRET).await;
    let sidecar = SidecarBuilder::new(&upstream.url(), &standin.url())
        .arg("--log-format")
        .arg("json")
        .start()
        .await;
    let c = client();
    let _ = c
        .get(sidecar.url("/page?q=1"))
        .headers(navigation("alice", "alice@example.com"))
        .send()
        .await
        .unwrap()
        .text()
        .await;
    let _ = c
        .post(sidecar.url("/form"))
        .send()
        .await
        .unwrap()
        .text()
        .await;
    assert!(
        eventually(Duration::from_secs(2), || async {
            sidecar.logs().matches("\"target\":\"access\"").count() == 2
        })
        .await
    );

    let mut access = Vec::new();
    for line in sidecar.logs().lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if v["target"] == "access" {
            access.push(v);
        }
    }
    assert_eq!(access.len(), 2);
    let page = &access[0];
    assert_eq!(page["method"], "GET");
    assert_eq!(page["path"], "/page");
    assert_eq!(page["status"], 200);
    assert_eq!(page["route"], "default");
    assert_eq!(page["token"], "used");
    assert_eq!(page["tags"], 1);
    assert!(page["duration_ms"].is_u64());
    assert_eq!(access[1]["token"], "not_page_load");
    let logs = sidecar.settled_logs().await;
    assert!(
        !logs.contains("alice"),
        "identity values are not logged at info"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_is_handed_to_a_test_only_once_its_proxy_port_accepts() {
    // An admin port that answers while the proxy port is not bound yet: what a test sees
    // when another test's sidecar shares the admin port (SO_REUSEPORT) during the start.
    let admin = Upstream::start(|_| Reply::with(200, "text/plain", "ok\n")).await;
    let ready_url = format!("{}/healthz", admin.url());
    // The proxy port: bound (so no other test can take the number) but not listening, so a
    // connection to it is refused until `listen()` below.
    let proxy = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    proxy
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let listen: SocketAddr = proxy.local_addr().unwrap().as_socket().unwrap();
    // Stands for the sidecar process: alive, and ended (by its handle) when the wait ends.
    let mut child = std::process::Command::new("sleep")
        .arg("25")
        .spawn()
        .expect("spawn sleep");
    let waiting = tokio::spawn(async move {
        let up = support::sidecar::wait_until_serving(&mut child, &ready_url, listen).await;
        let _ = child.kill();
        let _ = child.wait();
        up
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "the harness handed over a sidecar whose proxy port refuses connections"
    );
    proxy.listen(16).unwrap();
    let up = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the wait ends once the proxy port accepts")
        .unwrap();
    assert_eq!(up, Ok(()));
}
