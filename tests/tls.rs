//! HTTPS on `listen` and identity trusted by the gateway's client certificate (`tls`):
//! certificates made in the test, real TLS handshakes on 127.0.0.1.

mod support;

use std::sync::Arc;
use std::time::Duration;

use rcgen::SanType;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use support::pki::{Ca, Leaf};
use support::sidecar::Sidecar;
use support::{eventually, navigation, tokens_in, Reply, SidecarBuilder, StandIn, Upstream};

const PAGE: &str = "<released-page></released-page>";

/// An HTTPS client trusting `ca`, presenting `identity` if given.
fn https_client(ca: &Ca, identity: Option<&Leaf>) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .use_preconfigured_tls(client_config(ca, identity))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// TLS for a client trusting `ca`, presenting `identity` if given; it keeps the sessions
/// it is given for resumption (rustls' default in-memory store).
fn client_config(ca: &Ca, identity: Option<&Leaf>) -> rustls::ClientConfig {
    released_sidecar::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match identity {
        Some(leaf) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(leaf.cert.as_bytes())
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config
}

/// The page (with the identity headers of `navigation`) and the headers the app saw.
async fn load(client: &reqwest::Client, sidecar: &Sidecar) -> reqwest::Result<(String, String)> {
    let base = format!("https://localhost:{}", sidecar.listen.port());
    let page = client
        .get(format!("{base}/page"))
        .headers(navigation("alice", "alice@example.com"))
        .send()
        .await?
        .text()
        .await?;
    // The same identity headers on a request that is not a page load (no token call).
    let mut api = navigation("alice", "alice@example.com");
    api.insert("accept", "application/json".parse().unwrap());
    api.remove("sec-fetch-dest");
    let echo = client
        .get(format!("{base}/echo"))
        .headers(api)
        .send()
        .await?
        .text()
        .await?;
    Ok((page, echo))
}

fn app(seen: &support::upstream::Seen) -> Reply {
    match seen.path.as_str() {
        "/echo" => Reply::EchoHeaders,
        _ => Reply::html(PAGE),
    }
}

/// A sidecar serving HTTPS with a certificate from `server_ca`, `extra` added to `tls`.
async fn https_sidecar(
    server_ca: &Ca,
    tls_extra: &str,
    files: &[(&str, &str)],
) -> (Upstream, StandIn, Sidecar) {
    let upstream = Upstream::start(app).await;
    let standin = StandIn::start(support::sidecar::SECRET).await;
    let server = server_ca.server("sidecar");
    let mut builder = SidecarBuilder::new(&upstream.url(), &standin.url())
        .file("tls.crt", &server.cert)
        .file("tls.key", &server.key)
        .extra(&format!(
            "tls:\n  cert_file: tls.crt\n  key_file: tls.key\n{tls_extra}"
        ));
    for (name, content) in files {
        builder = builder.file(name, content);
    }
    let sidecar = builder.start().await;
    (upstream, standin, sidecar)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_page_load_gets_its_token() {
    let ca = Ca::new("server CA");
    let (_upstream, standin, sidecar) = https_sidecar(&ca, "", &[]).await;
    let (page, echo) = load(&https_client(&ca, None), &sidecar).await.unwrap();
    assert_eq!(tokens_in(&page).len(), 1, "{page}");
    assert!(echo.contains("x-forwarded-user"), "address trust: loopback");
    assert_eq!(standin.calls().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_client_ca_only_a_trusted_gateway_certificate_mints_a_token() {
    let server_ca = Ca::new("server CA");
    let gateway_ca = Ca::new("gateway CA");
    let (_upstream, standin, sidecar) = https_sidecar(
        &server_ca,
        "  client_ca_file: gateway-ca.pem\n  trusted_client_names: [oauth2-proxy.gateway.internal]\n",
        &[("gateway-ca.pem", &gateway_ca.pem)],
    )
    .await;

    let gateway = gateway_ca.client(&["oauth2-proxy.gateway.internal"], "gw");
    let (page, echo) = load(&https_client(&server_ca, Some(&gateway)), &sidecar)
        .await
        .unwrap();
    assert_eq!(
        tokens_in(&page).len(),
        1,
        "the gateway's certificate: {page}"
    );
    assert!(echo.contains("\"x-forwarded-user\":[\"alice\"]"), "{echo}");
    assert_eq!(standin.calls().len(), 1);

    // Served, but untrusted: identity headers stripped (a forged one included), no token.
    let wrong_name = gateway_ca.client(&["laptop.example.com"], "laptop");
    for (who, identity) in [
        ("no certificate", None),
        ("a name not in the list", Some(&wrong_name)),
    ] {
        let (page, echo) = load(&https_client(&server_ca, identity), &sidecar)
            .await
            .unwrap();
        assert_eq!(page, PAGE, "{who}: served unchanged");
        assert!(!echo.contains("x-forwarded-user"), "{who}: {echo}");
        assert_eq!(standin.calls().len(), 1, "{who}: no call");
    }

    // Another CA's certificate is refused at the handshake.
    let stranger = Ca::new("other CA").client(&["oauth2-proxy.gateway.internal"], "gw");
    let refused = load(&https_client(&server_ca, Some(&stranger)), &sidecar).await;
    assert!(
        refused.is_err(),
        "a certificate from another CA must not get through"
    );
    assert_eq!(standin.calls().len(), 1);

    for (series, at_least) in [
        (
            "released_sidecar_requests_by_trust_total{source=\"certificate\"}",
            2.0,
        ),
        (
            "released_sidecar_requests_by_trust_total{source=\"none\"}",
            4.0,
        ),
        (
            "released_sidecar_requests_by_trust_total{source=\"address\"}",
            0.0,
        ),
        (
            "released_sidecar_tls_handshakes_total{result=\"bad_certificate\"}",
            1.0,
        ),
    ] {
        let v = sidecar.metric(series).await;
        if at_least == 0.0 {
            assert_eq!(v, 0.0, "{series}: addresses never count with a client CA");
        } else {
            assert!(v >= at_least, "{series} = {v}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_name_in_the_cn_does_not_count_beside_a_uri_or_ip_san() {
    let (server_ca, gateway_ca) = (Ca::new("server CA"), Ca::new("gateway CA"));
    let (_upstream, standin, sidecar) = https_sidecar(
        &server_ca,
        "  client_ca_file: gateway-ca.pem\n  trusted_client_names: [oauth2-proxy.gateway.internal]\n",
        &[("gateway-ca.pem", &gateway_ca.pem)],
    )
    .await;
    let name = "oauth2-proxy.gateway.internal";
    // RFC 6125 §6.4.4: a certificate with any subject alternative name is named by those
    // alone; these name a workload and a host, not the gateway in their CN.
    let uri = SanType::URI("spiffe://gateway.internal/laptop".try_into().unwrap());
    let ip = SanType::IpAddress("10.1.2.3".parse().unwrap());
    for (why, sans) in [("a URI SAN", vec![uri]), ("an IP SAN", vec![ip])] {
        let leaf = gateway_ca.client_with_sans(sans, name);
        let (page, echo) = load(&https_client(&server_ca, Some(&leaf)), &sidecar)
            .await
            .unwrap();
        assert_eq!(page, PAGE, "{why}: served, untrusted");
        assert!(!echo.contains("x-forwarded-user"), "{why}: {echo}");
    }
    assert!(standin.calls().is_empty());
    // With no subject alternative name at all, the CN names the certificate.
    let cn_only = gateway_ca.client(&[], name);
    let (page, _) = load(&https_client(&server_ca, Some(&cn_only)), &sidecar)
        .await
        .unwrap();
    assert_eq!(tokens_in(&page).len(), 1, "{page}");
}

/// A page load with identity headers over a new TLS connection made with `config`: how
/// the handshake went (`None`: it failed) and everything read before the server closed.
async fn page_over(
    config: &Arc<rustls::ClientConfig>,
    sidecar: &Sidecar,
) -> (Option<rustls::HandshakeKind>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
    let tcp = tokio::net::TcpStream::connect(sidecar.listen)
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let Ok(mut tls) = connector.connect(name, tcp).await else {
        return (None, String::new());
    };
    let kind = tls.get_ref().1.handshake_kind();
    let request = "GET /page HTTP/1.1\r\nhost: localhost\r\naccept: text/html\r\n\
                   sec-fetch-dest: document\r\nx-forwarded-user: alice\r\n\
                   x-forwarded-email: alice@example.com\r\nconnection: close\r\n\r\n";
    let mut out = Vec::new();
    if tls.write_all(request.as_bytes()).await.is_ok() {
        let mut buf = [0u8; 4096];
        // Reading also takes in the session tickets the server sends after the handshake.
        let read_all = async {
            while let Ok(n @ 1..) = tls.read(&mut buf).await {
                out.extend_from_slice(&buf[..n]);
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), read_all).await;
    }
    (kind, String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_session_does_not_outlive_the_client_ca_it_was_verified_under() {
    let (server_ca, ca_a, ca_b) = (Ca::new("server CA"), Ca::new("CA A"), Ca::new("CA B"));
    let name = "oauth2-proxy.gateway.internal";
    let (_upstream, standin, sidecar) = https_sidecar(
        &server_ca,
        &format!("  client_ca_file: gateway-ca.pem\n  trusted_client_names: [{name}]\n"),
        &[("gateway-ca.pem", &ca_a.pem)],
    )
    .await;
    // One client (one session store) with a certificate from CA A.
    let gateway_a = Arc::new(client_config(&server_ca, Some(&ca_a.client(&[name], "gw"))));
    let (kind, page) = page_over(&gateway_a, &sidecar).await;
    assert_eq!(kind, Some(rustls::HandshakeKind::Full));
    assert_eq!(tokens_in(&page).len(), 1, "{page}");
    let (kind, page) = page_over(&gateway_a, &sidecar).await;
    assert_eq!(
        kind,
        Some(rustls::HandshakeKind::Resumed),
        "resumption is on while the CA stays"
    );
    assert_eq!(
        tokens_in(&page).len(),
        1,
        "a resumed session keeps its trust: {page}"
    );
    assert_eq!(standin.calls().len(), 2);

    // The gateway CA is rotated: CA A's certificates are no longer trusted.
    std::fs::write(sidecar.dir.path().join("gateway-ca.pem"), &ca_b.pem).unwrap();
    let gateway_b = Arc::new(client_config(&server_ca, Some(&ca_b.client(&[name], "gw"))));
    let rotated = eventually(Duration::from_secs(10), || async {
        tokens_in(&page_over(&gateway_b, &sidecar).await.1).len() == 1
    })
    .await;
    assert!(rotated, "CA B not in use:\n{}", sidecar.logs());
    let calls = standin.calls().len();

    // The client still holds a session from CA A's time and offers it: it must not
    // resume, so CA A's certificate is checked again, and refused.
    let (kind, page) = page_over(&gateway_a, &sidecar).await;
    assert!(
        tokens_in(&page).is_empty(),
        "CA A's session still mints: {page}"
    );
    assert_eq!(standin.calls().len(), calls, "no call for CA A's session");
    assert_ne!(
        kind,
        Some(rustls::HandshakeKind::Resumed),
        "a session from before the rotation resumed"
    );
}

/// The certificate the server presents to a new connection.
async fn served_certificate(sidecar: &Sidecar, ca: &Ca) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(sidecar.listen)
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_swapped_by_symlink_serves_new_connections_and_a_broken_key_keeps_the_old() {
    let ca = Ca::new("server CA");
    let (v1, v2) = (ca.server("v1"), ca.server("v2"));
    let upstream = Upstream::start(app).await;
    let standin = StandIn::start(support::sidecar::SECRET).await;
    // A Kubernetes TLS Secret volume: tls.crt -> ..data/tls.crt, ..data -> ..v1.
    let (c1, k1) = (v1.cert.clone(), v1.key.clone());
    let sidecar = SidecarBuilder::new(&upstream.url(), &standin.url())
        .prepare(move |dir| {
            let v = dir.join("certs").join("..v1");
            std::fs::create_dir_all(&v).unwrap();
            std::fs::write(v.join("tls.crt"), &c1).unwrap();
            std::fs::write(v.join("tls.key"), &k1).unwrap();
            std::os::unix::fs::symlink("..v1", dir.join("certs/..data")).unwrap();
            for f in ["tls.crt", "tls.key"] {
                std::os::unix::fs::symlink(format!("..data/{f}"), dir.join("certs").join(f))
                    .unwrap();
            }
        })
        .extra("tls:\n  cert_file: certs/tls.crt\n  key_file: certs/tls.key\n")
        .start()
        .await;
    assert_eq!(served_certificate(&sidecar, &ca).await, der(&v1.cert));
    let client = https_client(&ca, None);
    let (page, _) = load(&client, &sidecar).await.unwrap();
    assert_eq!(tokens_in(&page).len(), 1);

    let certs = sidecar.dir.path().join("certs");
    let swap = |name: &str, cert: &str, key: &str| {
        let v = certs.join(name);
        std::fs::create_dir_all(&v).unwrap();
        std::fs::write(v.join("tls.crt"), cert).unwrap();
        std::fs::write(v.join("tls.key"), key).unwrap();
        std::os::unix::fs::symlink(name, certs.join("..data_tmp")).unwrap();
        std::fs::rename(certs.join("..data_tmp"), certs.join("..data")).unwrap();
    };
    swap("..v2", &v2.cert, &v2.key);
    let rotated = eventually(Duration::from_secs(5), || async {
        served_certificate(&sidecar, &ca).await == der(&v2.cert)
    })
    .await;
    assert!(rotated, "v2 not served:\n{}", sidecar.logs());
    // The client's kept-alive connection (handshaken with v1) goes on working.
    let (page, _) = load(&client, &sidecar).await.unwrap();
    assert_eq!(tokens_in(&page).len(), 1);

    let errors = "released_sidecar_config_reloads_total{result=\"error\"}";
    swap(
        "..v3",
        &ca.server("v3").cert,
        "-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n",
    );
    assert!(
        sidecar.wait_for_metric(errors, |v| v >= 1.0).await,
        "{}",
        sidecar.logs()
    );
    assert_eq!(
        served_certificate(&sidecar, &ca).await,
        der(&v2.cert),
        "a broken pair keeps the previous one serving"
    );
    let (page, _) = load(&https_client(&ca, None), &sidecar).await.unwrap();
    assert_eq!(tokens_in(&page).len(), 1);
}

#[test]
fn explain_shows_the_trust_decision_for_a_client_certificate() {
    let (server_ca, gateway_ca) = (Ca::new("server CA"), Ca::new("gateway CA"));
    let dir = tempfile::tempdir().unwrap();
    let server = server_ca.server("sidecar");
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write("tls.crt", &server.cert);
    write("tls.key", &server.key);
    write("gateway-ca.pem", &gateway_ca.pem);
    write("secret", "s3cret\n");
    write(
        "gateway.pem",
        &gateway_ca
            .client(&["oauth2-proxy.gateway.internal"], "gw")
            .cert,
    );
    write(
        "laptop.pem",
        &gateway_ca.client(&["laptop.example.com"], "l").cert,
    );
    write(
        "stranger.pem",
        &Ca::new("other")
            .client(&["oauth2-proxy.gateway.internal"], "x")
            .cert,
    );
    write(
        "config.yaml",
        "upstream: http://127.0.0.1:3000\nreleased: { account_id: a, shared_secret_file: secret }\nidentity: { preset: oauth2-proxy }\ntls:\n  cert_file: tls.crt\n  key_file: tls.key\n  client_ca_file: gateway-ca.pem\n  trusted_client_names: [oauth2-proxy.gateway.internal]\n",
    );
    let explain = |cert: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_released-sidecar"));
        cmd.arg("explain")
            .arg("--config")
            .arg(dir.path().join("config.yaml"))
            .args([
                "--url",
                "https://app.example.com/",
                "-H",
                "X-Forwarded-User: alice",
            ])
            .args(["-H", "X-Forwarded-Email: alice@example.com"]);
        if let Some(cert) = cert {
            cmd.arg("--client-cert").arg(dir.path().join(cert));
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, out) = explain(Some("gateway.pem"));
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("trusted:    yes (a verified certificate for oauth2-proxy.gateway.internal"),
        "{out}"
    );
    assert!(out.contains("Authorization: Bearer [redacted]"), "{out}");
    let (_, out) = explain(Some("laptop.pem"));
    assert!(
        out.contains("trusted:    no (a verified certificate for laptop.example.com"),
        "{out}"
    );
    let (_, out) = explain(None);
    assert!(
        out.contains("trusted:    no (no client certificate"),
        "{out}"
    );
    assert!(out.contains("addresses do not count"), "{out}");
    let (code, out) = explain(Some("stranger.pem"));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("refused at the TLS handshake"), "{out}");

    // `check` loads the pair too, like `nginx -t`.
    let check = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_released-sidecar"))
            .arg("check")
            .arg("--config")
            .arg(dir.path().join("config.yaml"))
            .output()
            .unwrap()
    };
    assert!(check().status.success());
    write("tls.key", &server_ca.server("another").key);
    let out = check();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Like every config error: the file, the line and the key that names the key file.
    assert!(
        stderr.contains("config.yaml:6: tls.key_file: ")
            && stderr.contains("does not match the certificate"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_handshakes_never_use_up_the_connection_cap() {
    let (server_ca, gateway_ca) = (Ca::new("server CA"), Ca::new("gateway CA"));
    let (_upstream, _standin, sidecar) = https_sidecar(
        &server_ca,
        "  client_ca_file: gateway-ca.pem\nlimits: { max_connections: 2 }\n",
        &[("gateway-ca.pem", &gateway_ca.pem)],
    )
    .await;
    let stranger = Ca::new("other CA").client(&["gw"], "gw");
    for _ in 0..5 {
        let refused = load(&https_client(&server_ca, Some(&stranger)), &sidecar).await;
        assert!(refused.is_err());
    }
    let gateway = gateway_ca.client(&["gw"], "gw");
    for _ in 0..3 {
        // A fresh client each time: a new connection, which needs a free slot.
        let loaded = tokio::time::timeout(
            Duration::from_secs(10),
            load(&https_client(&server_ca, Some(&gateway)), &sidecar),
        )
        .await;
        assert!(
            matches!(loaded, Ok(Ok(_))),
            "a slot leaked: {loaded:?}\n{}",
            sidecar.logs()
        );
    }
}
