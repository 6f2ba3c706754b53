//! Behind the real gateway: the sidecar behind the real oauth2-proxy binary, signed in
//! through a real OpenID Connect login, in the three topologies users run:
//!
//! 1. oauth2-proxy as the reverse proxy (`--provider=oidc --pass-user-headers`, `--upstream`
//!    = the sidecar) → released-sidecar (`identity.preset: oauth2-proxy`) → the app;
//! 2. nginx `auth_request` to oauth2-proxy's `/oauth2/auth` (`--set-xauthrequest`), nginx
//!    forwarding `X-Auth-Request-User`/`-Email` to the sidecar: the README's recipe, read
//!    from README.md itself so the recipe users copy is the one tested;
//! 3. Caddy `forward_auth` to the same `/oauth2/auth` with `copy_headers`, then
//!    `reverse_proxy` to the sidecar (`preset: oauth2-proxy-auth-request`, `strip_headers`
//!    for the `X-Forwarded-*` family): the README's Caddyfile and sidecar block, likewise
//!    read from README.md; a second Caddy site with the same recipe straight to the app
//!    shows what Caddy itself lets through;
//!
//! and a real browser (headless Chromium) signing in through topology 1, and through
//! topology 3 onto a page with no embed tag that `embed.insert` gives one.
//!
//! The IdP is `oauth2-mock-server` (tests/gateway/idp.mjs), a mock OpenID provider made for
//! tests that signs one known user in without a form; the app and the Released stand-in
//! are tests/support's. Everything listens on 127.0.0.1.
//!
//! Tools: `scripts/gateway-tools.sh` builds oauth2-proxy and Caddy into target/tools/bin and
//! installs the npm packages (tests/gateway/package-lock.json); `scripts/deps.sh test`
//! installs nginx-light and chromium. A missing tool is a visible SKIP, and a failure under
//! CI.
//!
//! Each topology is started once, lazily, and shared; the tests take turns (one lock) so
//! each one counts exactly the token calls it caused.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use support::pki::Ca;
use support::sidecar::Sidecar;
use support::standin::Call;
use support::tools::{self, Process};
use support::{free_port, Reply, SidecarBuilder, StandIn, Upstream};

/// The one user the mock IdP signs in. Four different values, so a test can tell which
/// claim ended up in which header.
const SUB: &str = "8f14e45f-carol";
const EMAIL: &str = "carol@example.org";
const PREFERRED_USERNAME: &str = "carol.p";
const NAME: &str = "Carol Petersen";

const CLIENT_ID: &str = "released-gateway-test";
const CLIENT_SECRET: &str = "gateway-test-client-secret";
/// oauth2-proxy wants 16, 24 or 32 bytes.
const COOKIE_SECRET: &str = "0123456789abcdef0123456789abcdef";

/// Who the identity headers claim in forged requests: markers no session cookie, token or
/// header of a real sign-in can contain by chance, so finding one anywhere means a leak.
const FORGED_USER: &str = "forged-user-Qx7Vd2Rk";
const FORGED_EMAIL: &str = "forged-user-Qx7Vd2Rk@example.com";
const FORGED_NAME: &str = "Forged Name Qx7Vd2Rk";

const PAGE: &str = r#"<!doctype html>
<html><head><title>Legacy app</title></head>
<body>
<h1>A legacy app behind oauth2-proxy and released-sidecar</h1>
<released-page account="gateway-test"></released-page>
<p>auth-token on &lt;released-page&gt;: <code id="shown">(none)</code></p>
<script>
document.getElementById('shown').textContent =
  document.querySelector('released-page').getAttribute('auth-token') || '(none)';
</script>
</body></html>
"#;

/// A legacy page with no embed tag: `embed.insert` gives it one behind Caddy.
const LEGACY_PAGE: &str = r#"<!doctype html>
<html><head><title>Legacy app, untouched</title></head>
<body>
<h1>A legacy app nobody may edit</h1>
<p>Its templates have no Released tag; the sidecar inserts one below.</p>
</body></html>
"#;

const SIDECAR_PRESET: &str = r#"listen: "{listen}"
admin: { listen: "{admin}" }
upstream: "{upstream}"
workers: 1
released:
  api_url: "{api}"
  account_id: "acct-gateway"
  shared_secret_file: "{secret_file}"
  timeout: "1500ms"
identity:
  preset: oauth2-proxy
"#;

/// The identity block of [`SIDECAR_PRESET`], for topologies that bring their own.
const PRESET_IDENTITY: &str = "identity:\n  preset: oauth2-proxy\n";

/// Topology 3's routes: `/legacy` gets an embed inserted, everything else is as usual.
const CADDY_ROUTES: &str = r#"routes:
  - name: legacy
    match: { path: "^/legacy" }
    embed:
      insert:
        - selector: body
          html: '<released-widget account="gateway-test" widget-id="w1"></released-widget>
            <p>Inserted by the sidecar; auth-token on its &lt;released-widget&gt;: <code id="inserted">(none)</code></p>
            <script>document.getElementById("inserted").textContent = document.querySelector("released-widget").getAttribute("auth-token") || "(none)";</script>'
  - name: default
"#;

// ---------------------------------------------------------------------------------------
// topologies

/// The mock OpenID provider.
struct Idp {
    _process: Process,
    issuer: String,
}

/// One oauth2-proxy process.
struct OAuth2Proxy {
    _process: Process,
    url: String,
}

/// Topology 1 and what the others share: app, stand-in, IdP.
struct Gateway {
    rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    oauth2_proxy_bin: PathBuf,
    upstream: Upstream,
    standin: StandIn,
    idp: Idp,
    sidecar: Sidecar,
    /// oauth2-proxy → sidecar → app.
    proxy: OAuth2Proxy,
    /// oauth2-proxy → app, for the latency comparison; same cookie, so one sign-in serves both.
    direct: OAuth2Proxy,
    nginx: OnceLock<Result<Nginx, String>>,
    /// Topology 2 with nginx reaching the sidecar over TLS with a client certificate.
    nginx_tls: OnceLock<Result<Nginx, String>>,
    caddy: OnceLock<Result<Caddy, String>>,
}

/// Topology 2: nginx auth_request → oauth2-proxy; nginx → sidecar → app.
struct Nginx {
    _nginx: Process,
    _auth: OAuth2Proxy,
    sidecar: Sidecar,
    url: String,
}

/// Topology 3: Caddy forward_auth → oauth2-proxy; Caddy → sidecar → app.
struct Caddy {
    _caddy: Process,
    _auth: OAuth2Proxy,
    _sidecar: Sidecar,
    /// Caddy → sidecar → app.
    url: String,
    /// The same recipe, Caddy → app: what Caddy itself passes on. Signed in by the same
    /// cookie (cookies do not tell ports apart).
    direct: String,
}

static GATEWAY: OnceLock<Result<Gateway, String>> = OnceLock::new();
static TURN: Mutex<()> = Mutex::new(());

/// The shared topology 1 and this test's turn, or `None` after a visible SKIP.
fn gateway() -> Option<(&'static Gateway, MutexGuard<'static, ()>)> {
    let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    match GATEWAY.get_or_init(Gateway::start) {
        Ok(gw) => Some((gw, turn)),
        Err(missing) => {
            tools::skip(missing, "scripts/gateway-tools.sh");
            None
        }
    }
}

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The npm packages of tests/gateway, installed by `npm ci`.
fn node_modules() -> PathBuf {
    repo("tests/gateway/node_modules")
}

impl Gateway {
    fn start() -> Result<Gateway, String> {
        let oauth2_proxy_bin = tools::find("oauth2-proxy")
            .ok_or("oauth2-proxy is not built (target/tools/bin/oauth2-proxy)")?;
        tools::find("node").ok_or("`node` (Node.js 20) is not installed")?;
        if !node_modules().join("oauth2-mock-server").is_dir() {
            return Err("the npm packages of tests/gateway are not installed (npm ci)".into());
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        tools::remove_at_exit(dir.path());
        let (upstream, standin, idp, sidecar) = rt.block_on(async {
            let upstream = Upstream::start(app).await;
            let standin = StandIn::start(support::sidecar::SECRET).await;
            let idp = Idp::start(dir.path()).await;
            let sidecar = SidecarBuilder::new(&upstream.url(), &standin.url())
                .template(SIDECAR_PRESET)
                .start()
                .await;
            tools::kill_at_exit(sidecar.pid() as u32);
            tools::remove_at_exit(sidecar.dir.path());
            (upstream, standin, idp, sidecar)
        });
        let proxy = rt.block_on(OAuth2Proxy::start(
            &oauth2_proxy_bin,
            dir.path(),
            "oauth2-proxy",
            &idp,
            &[&format!("--upstream={}", sidecar.url("/"))],
        ));
        let direct = rt.block_on(OAuth2Proxy::start(
            &oauth2_proxy_bin,
            dir.path(),
            "oauth2-proxy-direct",
            &idp,
            &[&format!("--upstream={}/", upstream.url())],
        ));
        tools::note(&format!(
            "gateway: {} ({}), IdP {}",
            version(&oauth2_proxy_bin),
            oauth2_proxy_bin.display(),
            idp.issuer
        ));
        Ok(Gateway {
            rt,
            dir,
            oauth2_proxy_bin,
            upstream,
            standin,
            idp,
            sidecar,
            proxy,
            direct,
            nginx: OnceLock::new(),
            nginx_tls: OnceLock::new(),
            caddy: OnceLock::new(),
        })
    }

    /// Topology 3, started on first use.
    fn caddy(&self) -> Option<&Caddy> {
        let caddy = self
            .caddy
            .get_or_init(|| self.rt.block_on(Caddy::start(self)));
        match caddy {
            Ok(c) => Some(c),
            Err(missing) => {
                tools::skip(missing, "scripts/gateway-tools.sh");
                None
            }
        }
    }

    /// Topology 2, started on first use.
    fn nginx(&self) -> Option<&Nginx> {
        self.started(&self.nginx, false)
    }

    /// Topology 2 over mutual TLS (nginx `proxy_ssl_certificate` → sidecar `tls`),
    /// started on first use.
    fn nginx_tls(&self) -> Option<&Nginx> {
        self.started(&self.nginx_tls, true)
    }

    fn started<'a>(
        &'a self,
        cell: &'a OnceLock<Result<Nginx, String>>,
        tls: bool,
    ) -> Option<&'a Nginx> {
        let nginx = cell.get_or_init(|| self.rt.block_on(Nginx::start(self, tls)));
        match nginx {
            Ok(n) => Some(n),
            Err(missing) => {
                tools::skip(missing, "scripts/deps.sh test");
                None
            }
        }
    }

    /// Calls the stand-in received after the first `before`.
    fn calls_since(&self, before: usize) -> Vec<Call> {
        self.standin.calls().split_off(before)
    }
}

/// The module version Go recorded in a tool (`go install` builds say `undefined` or
/// `unknown` in their own `--version`), else what `--version` says.
fn version(bin: &Path) -> String {
    let run = |cmd: &mut Command| {
        cmd.output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let module = run(Command::new("go").args(["version", "-m"]).arg(bin));
    module
        .lines()
        .find(|l| l.trim_start().starts_with("mod\t"))
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| run(Command::new(bin).arg("--version")))
}

/// The app: the page with `<released-page>`, a JSON endpoint under /api/, and under
/// /legacy a page with no embed tag.
fn app(seen: &support::upstream::Seen) -> Reply {
    if seen.path.starts_with("/api/") {
        Reply::with(200, "application/json", r#"{"status":"ok"}"#)
    } else if seen.path.starts_with("/legacy") {
        Reply::html(LEGACY_PAGE)
    } else {
        Reply::html(PAGE)
    }
}

impl Idp {
    async fn start(dir: &Path) -> Idp {
        let user = serde_json::json!({
            "sub": SUB, "email": EMAIL, "preferred_username": PREFERRED_USERNAME, "name": NAME,
        });
        let mut cmd = Command::new("node");
        cmd.arg(repo("tests/gateway/idp.mjs"))
            .arg("0")
            .current_dir(repo("tests/gateway"))
            .env("IDP_USER", user.to_string());
        let mut process = Process::spawn("mock IdP", cmd, &dir.join("idp.log"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            process.assert_running();
            let logs = process.logs();
            let issuer = logs.lines().find_map(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["issuer"].as_str().map(str::to_string))
            });
            if let Some(issuer) = issuer {
                return Idp {
                    _process: process,
                    issuer,
                };
            }
            assert!(Instant::now() < deadline, "mock IdP did not start:\n{logs}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// An ID token for the user, obtained like a client app would: authorize, then code
    /// for tokens at the token endpoint.
    async fn id_token(&self) -> String {
        let client = support::client();
        let redirect_uri = "http://127.0.0.1:9/callback";
        let authorize = url::Url::parse_with_params(
            &format!("{}/authorize", self.issuer),
            [
                ("client_id", CLIENT_ID),
                ("redirect_uri", redirect_uri),
                ("response_type", "code"),
                ("scope", "openid email profile"),
                ("state", "bearer-test"),
            ],
        )
        .unwrap();
        let authorize = client.get(authorize).send().await.expect("authorize");
        let location = location(&authorize).expect("authorize redirects with a code");
        let code = url::Url::parse(&location)
            .unwrap()
            .query_pairs()
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v.to_string())
            .expect("code");
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "authorization_code")
            .append_pair("code", &code)
            .append_pair("redirect_uri", redirect_uri)
            .finish();
        let tokens: serde_json::Value = client
            .post(format!("{}/token", self.issuer))
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .expect("token endpoint")
            .json()
            .await
            .expect("token response");
        tokens["id_token"].as_str().expect("id_token").to_string()
    }
}

impl OAuth2Proxy {
    /// Starts oauth2-proxy on a free port with the settings both topologies share and
    /// `extra` flags; `redirect_base` is where the browser reaches it (itself by default).
    async fn start_at(
        bin: &Path,
        dir: &Path,
        name: &str,
        idp: &Idp,
        port: u16,
        redirect_base: &str,
        extra: &[&str],
    ) -> OAuth2Proxy {
        let url = format!("http://127.0.0.1:{port}");
        let mut cmd = Command::new(bin);
        cmd.args([
            &format!("--http-address=127.0.0.1:{port}"),
            "--provider=oidc",
            &format!("--oidc-issuer-url={}", idp.issuer),
            &format!("--client-id={CLIENT_ID}"),
            &format!("--client-secret={CLIENT_SECRET}"),
            &format!("--cookie-secret={COOKIE_SECRET}"),
            // Plain http on loopback: a Secure cookie would never be sent back.
            "--cookie-secure=false",
            &format!("--redirect-url={redirect_base}/oauth2/callback"),
            "--email-domain=*",
            "--skip-provider-button=true",
        ])
        .args(extra)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        let mut process = Process::spawn(name, cmd, &dir.join(format!("{name}.log")));
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = support::client();
        loop {
            process.assert_running();
            if let Ok(r) = client.get(format!("{url}/ping")).send().await {
                if r.status() == 200 {
                    return OAuth2Proxy {
                        _process: process,
                        url,
                    };
                }
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not answer /ping:\n{}",
                process.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// oauth2-proxy as the reverse proxy in front of `--upstream`, passing user headers.
    async fn start(bin: &Path, dir: &Path, name: &str, idp: &Idp, extra: &[&str]) -> Self {
        let port = free_port();
        let mut flags = vec![
            "--pass-user-headers=true",
            "--skip-jwt-bearer-tokens=true",
            "--silence-ping-logging=true",
        ];
        flags.extend_from_slice(extra);
        let base = format!("http://127.0.0.1:{port}");
        Self::start_at(bin, dir, name, idp, port, &base, &flags).await
    }
}

/// The first fenced block of `lang` in README.md that contains `needle`.
fn readme_block(lang: &str, needle: &str) -> String {
    let readme = std::fs::read_to_string(repo("README.md")).expect("README.md");
    let fence = format!("```{lang}\n");
    readme
        .split(&fence)
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .find(|block| block.contains(needle))
        .unwrap_or_else(|| panic!("README.md has no ```{lang} block containing {needle}"))
        .to_string()
}

impl Nginx {
    async fn start(gw: &Gateway, tls: bool) -> Result<Nginx, String> {
        let nginx_bin = tools::find("nginx")
            .or_else(|| Some(PathBuf::from("/usr/sbin/nginx")).filter(|p| p.is_file()))
            .ok_or("`nginx` (Debian nginx-light) is not installed")?;
        let dir = gw.dir.path().join(if tls { "nginx-tls" } else { "nginx" });
        std::fs::create_dir_all(&dir).expect("nginx dir");
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");

        // The README's recipe: oauth2-proxy only authenticates (static 202 upstream) and
        // answers /oauth2/auth with X-Auth-Request-* headers.
        let auth = OAuth2Proxy::start_at(
            &gw.oauth2_proxy_bin,
            gw.dir.path(),
            "oauth2-proxy-auth",
            &gw.idp,
            free_port(),
            &url,
            &[
                "--upstream=static://202",
                "--set-xauthrequest=true",
                "--reverse-proxy=true",
                "--cookie-name=_oauth2_proxy_nginx",
                "--silence-ping-logging=true",
            ],
        )
        .await;
        let identity = readme_block("yaml", "preset: oauth2-proxy-auth-request");
        let mut builder = SidecarBuilder::new(&gw.upstream.url(), &gw.standin.url()).template(
            &format!("{}{identity}", SIDECAR_PRESET.replace(PRESET_IDENTITY, "")),
        );
        // With TLS: the sidecar trusts only nginx's client certificate (not its address),
        // and nginx verifies the sidecar's.
        let (server_ca, gateway_ca) = (Ca::new("sidecar CA"), Ca::new("gateway CA"));
        if tls {
            let server = server_ca.server("sidecar");
            let client = gateway_ca.client(&["nginx.gateway.internal"], "nginx");
            for (name, text) in [
                ("server-ca.pem", &server_ca.pem),
                ("client.crt", &client.cert),
                ("client.key", &client.key),
            ] {
                std::fs::write(dir.join(name), text).expect("nginx TLS file");
            }
            builder = builder
                .file("tls.crt", &server.cert)
                .file("tls.key", &server.key)
                .file("gateway-ca.pem", &gateway_ca.pem)
                .extra("tls:\n  cert_file: tls.crt\n  key_file: tls.key\n  client_ca_file: gateway-ca.pem\n  trusted_client_names: [nginx.gateway.internal]\n");
        }
        let sidecar = builder.start().await;
        tools::kill_at_exit(sidecar.pid() as u32);
        tools::remove_at_exit(sidecar.dir.path());

        let d = dir.display();
        let to_sidecar = if tls {
            format!(
                "proxy_ssl_certificate {d}/client.crt;\n        \
                 proxy_ssl_certificate_key {d}/client.key;\n        \
                 proxy_ssl_trusted_certificate {d}/server-ca.pem;\n        \
                 proxy_ssl_verify on;\n        proxy_ssl_name localhost;\n        \
                 proxy_pass https://{};",
                sidecar.listen
            )
        } else {
            format!("proxy_pass http://{};", sidecar.listen)
        };
        let locations = readme_block("nginx", "auth_request")
            .replace("127.0.0.1:4180", &auth.url["http://".len()..])
            .replace("proxy_pass http://127.0.0.1:8080;", &to_sidecar);
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log info;\nevents {{ worker_connections 64; }}\n\
             http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n\
             proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
             uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             server {{\n  listen 127.0.0.1:{port};\n{locations}\n  }}\n}}\n"
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, &conf).expect("nginx.conf");
        let mut cmd = Command::new(nginx_bin);
        cmd.arg("-p").arg(&dir).arg("-c").arg(&conf_path);
        let mut nginx = Process::spawn("nginx", cmd, &dir.join("stderr.log"));
        wait_until_listening(&mut nginx, &[&url], &conf).await;
        Ok(Nginx {
            _nginx: nginx,
            _auth: auth,
            sidecar,
            url,
        })
    }
}

/// Waits (20 s at most) until the gateway `process` answers on each of `bases` (any
/// HTTP answer to `/oauth2/ping` will do); panics with its logs and `config` otherwise.
async fn wait_until_listening(process: &mut Process, bases: &[&str], config: &str) {
    let client = support::client();
    let deadline = Instant::now() + Duration::from_secs(20);
    for base in bases {
        loop {
            process.assert_running();
            if client
                .get(format!("{base}/oauth2/ping"))
                .send()
                .await
                .is_ok()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not start:\n{}\n{config}",
                process.name,
                process.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Caddy {
    async fn start(gw: &Gateway) -> Result<Caddy, String> {
        let caddy_bin =
            tools::find("caddy").ok_or("caddy is not built (target/tools/bin/caddy)")?;
        let dir = gw.dir.path().join("caddy");
        std::fs::create_dir_all(&dir).expect("caddy dir");
        let port = free_port();
        let direct_port = std::iter::repeat_with(free_port)
            .find(|p| *p != port)
            .expect("a second port");
        let url = format!("http://127.0.0.1:{port}");
        let direct = format!("http://127.0.0.1:{direct_port}");

        // oauth2-proxy only authenticates and answers /oauth2/auth with X-Auth-Request-*.
        let auth = OAuth2Proxy::start_at(
            &gw.oauth2_proxy_bin,
            gw.dir.path(),
            "oauth2-proxy-caddy",
            &gw.idp,
            free_port(),
            &url,
            &[
                "--upstream=static://202",
                "--set-xauthrequest=true",
                "--reverse-proxy=true",
                "--cookie-name=_oauth2_proxy_caddy",
                "--silence-ping-logging=true",
            ],
        )
        .await;
        // The README's sidecar block: the preset and strip_headers.
        let identity = readme_block("yaml", "strip_headers:");
        let sidecar = SidecarBuilder::new(&gw.upstream.url(), &gw.standin.url())
            .template(&format!(
                "{}{identity}{CADDY_ROUTES}",
                SIDECAR_PRESET.replace(PRESET_IDENTITY, "")
            ))
            .start()
            .await;
        tools::kill_at_exit(sidecar.pid() as u32);
        tools::remove_at_exit(sidecar.dir.path());

        // The README's Caddyfile, served twice: in front of the sidecar, and in front of
        // the app alone.
        let recipe = readme_block("caddyfile", "forward_auth");
        let auth_addr = &auth.url["http://".len()..];
        let site = |port: u16, to: &str| {
            recipe
                .replace("app.example.com {", &format!("http://127.0.0.1:{port} {{"))
                .replace("127.0.0.1:4180", auth_addr)
                .replace("127.0.0.1:8080", to)
        };
        let d = dir.display();
        let conf = format!(
            "{{\n\tadmin off\n\tauto_https off\n\tpersist_config off\n\tstorage file_system {d}/data\n}}\n{}\n{}",
            site(port, &sidecar.listen.to_string()),
            site(direct_port, &gw.upstream.addr.to_string()),
        );
        let conf_path = dir.join("Caddyfile");
        std::fs::write(&conf_path, &conf).expect("Caddyfile");
        let mut cmd = Command::new(caddy_bin);
        cmd.args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&conf_path)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &dir)
            .env("XDG_CONFIG_HOME", dir.join("config"))
            .env("XDG_DATA_HOME", dir.join("data"));
        let mut caddy = Process::spawn("caddy", cmd, &dir.join("caddy.log"));
        wait_until_listening(&mut caddy, &[&url, &direct], &conf).await;
        tools::note(&format!(
            "gateway: caddy {} ({})",
            version(&tools::find("caddy").unwrap_or_default()),
            dir.display()
        ));
        Ok(Caddy {
            _caddy: caddy,
            _auth: auth,
            _sidecar: sidecar,
            url,
            direct,
        })
    }
}

// ---------------------------------------------------------------------------------------
// a client that signs in

fn location(resp: &reqwest::Response) -> Option<String> {
    let value = resp.headers().get("location")?.to_str().ok()?;
    resp.url().join(value).ok().map(|u| u.to_string())
}

/// A browser-like client with its own cookie jar; never follows redirects by itself.
fn cookie_client() -> reqwest::Client {
    released_sidecar::install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// Headers of a browser navigation (no identity: the gateway adds it).
fn navigation() -> reqwest::header::HeaderMap {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        "accept",
        "text/html,application/xhtml+xml,*/*;q=0.8".parse().unwrap(),
    );
    h.insert("sec-fetch-dest", "document".parse().unwrap());
    h
}

/// Where a navigation ended.
struct Landed {
    /// Every URL requested, in order.
    hops: Vec<String>,
    status: u16,
    body: String,
}

/// Navigates to `url` with `extra` headers on every request, following redirects (at most
/// 10) with the client's cookie jar, as a browser does.
async fn navigate(client: &reqwest::Client, url: &str, extra: &[(&str, &str)]) -> Landed {
    let mut hops = vec![url.to_string()];
    for _ in 0..10 {
        let mut req = client.get(hops.last().unwrap()).headers(navigation());
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("navigation");
        if resp.status().is_redirection() {
            hops.push(location(&resp).expect("a redirect has a Location"));
            continue;
        }
        let status = resp.status().as_u16();
        let body = resp.text().await.expect("body");
        return Landed { hops, status, body };
    }
    panic!("more than 10 redirects: {hops:#?}");
}

/// A fresh cookie jar signed in through `base` (oauth2-proxy or nginx): the page at
/// `base/page`, reached through the IdP's authorize endpoint and `/oauth2/callback`.
async fn sign_in(gw: &Gateway, base: &str) -> (reqwest::Client, Landed) {
    let client = cookie_client();
    let landed = navigate(&client, &format!("{base}/page"), &[]).await;
    let authorize = format!("{}/authorize", gw.idp.issuer);
    let callback = format!("{base}/oauth2/callback");
    assert!(
        landed.hops.iter().any(|h| h.starts_with(&authorize))
            && landed.hops.iter().any(|h| h.starts_with(&callback)),
        "the sign-in went through the IdP and the callback: {:#?}",
        landed.hops
    );
    assert_eq!(
        landed.hops.last().unwrap(),
        &format!("{base}/page"),
        "{:#?}",
        landed.hops
    );
    (client, landed)
}

/// Asserts `calls` is exactly one successful token call for the IdP's user, and returns
/// its token.
fn one_call_for_the_idp_user(calls: &[Call]) -> String {
    assert_eq!(calls.len(), 1, "exactly one token call: {calls:#?}");
    let call = &calls[0];
    assert_eq!(call.rejected, None, "{call:#?}");
    assert_eq!(call.body["account_id"], "acct-gateway");
    // oauth2-proxy puts the ID token's `sub` in X-Forwarded-User (escape keeps it as is).
    assert_eq!(call.body["user_id"], SUB, "{call:#?}");
    assert_eq!(call.body["user_email"], EMAIL, "{call:#?}");
    assert_eq!(
        call.body["profile"]["name"], PREFERRED_USERNAME,
        "{call:#?}"
    );
    call.token.clone().expect("a token was issued")
}

/// A navigation to `base/page` without a session, with `extra` headers on every request:
/// answered with a redirect to the IdP's authorize endpoint (at once, or through the
/// gateway's own `/oauth2/start`), and no token call is made.
async fn redirected_to_login_without_a_token(gw: &Gateway, base: &str, extra: &[(&str, &str)]) {
    let before = gw.standin.calls().len();
    let client = cookie_client();
    let mut at = format!("{base}/page");
    let authorize = format!("{}/authorize", gw.idp.issuer);
    for hop in 0.. {
        let mut req = client.get(&at).headers(navigation());
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 302, "{at}");
        at = location(&resp).unwrap();
        if at.starts_with(&authorize) {
            break;
        }
        assert!(
            hop < 2 && at.starts_with(&format!("{base}/oauth2/")),
            "{at} is neither the IdP nor the gateway's sign-in"
        );
    }
    settle().await;
    assert_eq!(gw.calls_since(before).len(), 0);
}

/// Waits long enough for a token call the sidecar might still make to arrive.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

// ---------------------------------------------------------------------------------------
// topology 1: oauth2-proxy → sidecar → app

#[test]
fn oauth2_proxy_login_flow_ends_on_the_page_with_one_token_for_the_idp_user() {
    let Some((gw, _turn)) = gateway() else { return };
    gw.rt.block_on(async {
        let before = gw.standin.calls().len();
        let (_client, landed) = sign_in(gw, &gw.proxy.url).await;
        assert_eq!(landed.status, 200, "{}", landed.body);
        let token = one_call_for_the_idp_user(&gw.calls_since(before));
        assert_eq!(support::tokens_in(&landed.body), vec![token]);
    });
}

#[test]
fn oauth2_proxy_sends_the_headers_preset_oauth2_proxy_reads() {
    let Some((gw, _turn)) = gateway() else { return };
    gw.rt.block_on(async {
        let seen_before = gw.upstream.seen().len();
        let (_client, landed) = sign_in(gw, &gw.proxy.url).await;
        assert_eq!(landed.status, 200);
        let seen = gw.upstream.seen().split_off(seen_before);
        let page = seen
            .iter()
            .rev()
            .find(|s| s.path == "/page")
            .expect("the app saw the page request");
        // What the real oauth2-proxy sends (through the sidecar, which passes them on):
        // `sub` as the user, the email and preferred_username claims, under these names.
        assert_eq!(page.header("x-forwarded-user"), vec![SUB]);
        assert_eq!(page.header("x-forwarded-email"), vec![EMAIL]);
        assert_eq!(
            page.header("x-forwarded-preferred-username"),
            vec![PREFERRED_USERNAME]
        );
    });
}

#[test]
fn oauth2_proxy_without_a_session_redirects_to_login_and_no_token_is_requested() {
    let Some((gw, _turn)) = gateway() else { return };
    gw.rt
        .block_on(redirected_to_login_without_a_token(gw, &gw.proxy.url, &[]));
}

/// Forged identity headers, in both spellings: app servers (and some proxies) fold `_`
/// into `-`.
const FORGED: &[(&str, &str)] = &[
    ("X-Forwarded-User", FORGED_USER),
    ("X-Forwarded-Email", FORGED_EMAIL),
    ("X-Forwarded-Preferred-Username", FORGED_NAME),
    ("X_Forwarded_User", FORGED_USER),
    ("X_Forwarded_Email", FORGED_EMAIL),
    ("X_Forwarded_Preferred_Username", FORGED_NAME),
];

#[test]
fn forged_identity_headers_through_oauth2_proxy_never_change_the_token_identity() {
    let Some((gw, _turn)) = gateway() else { return };
    gw.rt.block_on(async {
        // Signed in: the token is still the IdP user's.
        let (client, _) = sign_in(gw, &gw.proxy.url).await;
        let before = gw.standin.calls().len();
        let seen_before = gw.upstream.seen().len();
        let landed = navigate(&client, &format!("{}/page", gw.proxy.url), FORGED).await;
        assert_eq!(landed.status, 200);
        let token = one_call_for_the_idp_user(&gw.calls_since(before));
        assert_eq!(support::tokens_in(&landed.body), vec![token]);
        // Nor does the app see the forged values under any spelling.
        let seen = gw.upstream.seen().split_off(seen_before);
        let leaked: Vec<_> = seen
            .iter()
            .flat_map(|s| s.headers.iter())
            .filter(|(_, v)| v.contains(FORGED_USER) || v.contains(FORGED_NAME))
            .collect();
        assert!(leaked.is_empty(), "{leaked:?}");

        // oauth2-proxy on its own (no sidecar behind it) already replaces the dashed names
        // and drops the underscore spellings, as the README says.
        let seen_before = gw.upstream.seen().len();
        let direct = navigate(&client, &format!("{}/page", gw.direct.url), FORGED).await;
        assert_eq!(direct.status, 200);
        let seen = gw.upstream.seen().split_off(seen_before);
        let page = seen
            .iter()
            .find(|s| s.path == "/page")
            .expect("direct page");
        assert_eq!(page.header("x-forwarded-user"), vec![SUB]);
        let underscored: Vec<_> = page
            .headers
            .iter()
            .filter(|(k, _)| k.contains('_'))
            .collect();
        assert!(underscored.is_empty(), "{underscored:?}");

        // Without a session the forgery only earns a redirect to the IdP.
        redirected_to_login_without_a_token(gw, &gw.proxy.url, FORGED).await;
    });
}

#[test]
fn a_bearer_id_token_signs_in_with_skip_jwt_bearer_tokens() {
    let Some((gw, _turn)) = gateway() else { return };
    gw.rt.block_on(async {
        let id_token = gw.idp.id_token().await;
        let before = gw.standin.calls().len();
        let resp = support::client()
            .get(format!("{}/page", gw.proxy.url))
            .headers(navigation())
            .bearer_auth(&id_token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.text().await.unwrap();
        let token = one_call_for_the_idp_user(&gw.calls_since(before));
        assert_eq!(support::tokens_in(&body), vec![token]);

        // A bearer that is not the IdP's signs nobody in.
        let before = gw.standin.calls().len();
        let forged = support::client()
            .get(format!("{}/page", gw.proxy.url))
            .headers(navigation())
            .bearer_auth(format!("{id_token}x"))
            .send()
            .await
            .unwrap();
        assert_ne!(forged.status(), 200);
        settle().await;
        assert_eq!(gw.calls_since(before).len(), 0);
    });
}

#[test]
fn a_json_endpoint_behind_oauth2_proxy_passes_with_no_token_call() {
    let Some((gw, _turn)) = gateway() else { return };
    gw.rt.block_on(async {
        let (client, _) = sign_in(gw, &gw.proxy.url).await;
        let before = gw.standin.calls().len();
        let resp = client
            .get(format!("{}/api/status", gw.proxy.url))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), r#"{"status":"ok"}"#);
        settle().await;
        assert_eq!(gw.calls_since(before).len(), 0);
    });
}

#[test]
fn rotating_the_secret_file_while_signed_in_takes_effect_on_the_next_page() {
    let Some((gw, _turn)) = gateway() else { return };
    gw.rt.block_on(async {
        let (client, _) = sign_in(gw, &gw.proxy.url).await;
        let page = format!("{}/page", gw.proxy.url);
        let new_secret = format!("rotated-{}", std::process::id());

        // Released rotated first: the old secret is refused, the page goes out without a
        // token (and is still served).
        gw.standin.set_secret(&new_secret);
        let before = gw.standin.calls().len();
        let refused = navigate(&client, &page, &[]).await;
        assert_eq!(refused.status, 200);
        assert!(support::tokens_in(&refused.body).is_empty());
        let calls = gw.calls_since(before);
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].status, 401);

        // The operator writes the new secret into the file: the next page has a token.
        let reloads = r#"released_sidecar_config_reloads_total{result="success"}"#;
        let reloaded = gw.sidecar.metric(reloads).await;
        std::fs::write(&gw.sidecar.secret_path, format!("{new_secret}\n")).unwrap();
        assert!(
            gw.sidecar.wait_for_metric(reloads, |v| v > reloaded).await,
            "no reload:\n{}",
            gw.sidecar.logs()
        );
        let before = gw.standin.calls().len();
        let next = navigate(&client, &page, &[]).await;
        let token = one_call_for_the_idp_user(&gw.calls_since(before));
        assert_eq!(support::tokens_in(&next.body), vec![token]);
        assert_eq!(
            gw.calls_since(before)[0].authorization.as_deref(),
            Some(format!("Bearer {new_secret}").as_str())
        );
    });
}

#[test]
fn report_latency_added_by_the_sidecar_behind_oauth2_proxy() {
    let Some((gw, _turn)) = gateway() else { return };
    const LOADS: usize = 20;
    gw.rt.block_on(async {
        let (client, _) = sign_in(gw, &gw.proxy.url).await;
        let time = |base: String| {
            let client = client.clone();
            async move {
                let start = Instant::now();
                let landed = navigate(&client, &format!("{base}/page"), &[]).await;
                assert_eq!(landed.status, 200, "{:#?}", landed.hops);
                assert_eq!(landed.hops.len(), 1, "still signed in: {:#?}", landed.hops);
                (start.elapsed(), landed.body)
            }
        };
        // One warm-up each (connections, the sidecar's first token call).
        time(gw.proxy.url.clone()).await;
        time(gw.direct.url.clone()).await;
        let (mut with, mut without) = (Vec::new(), Vec::new());
        for _ in 0..LOADS {
            let (d, body) = time(gw.proxy.url.clone()).await;
            assert_eq!(support::tokens_in(&body).len(), 1);
            with.push(d);
            let (d, body) = time(gw.direct.url.clone()).await;
            assert!(support::tokens_in(&body).is_empty());
            without.push(d);
        }
        let p50 = |v: &mut Vec<Duration>| {
            v.sort();
            v[v.len() / 2].as_secs_f64() * 1000.0
        };
        let (with, without) = (p50(&mut with), p50(&mut without));
        tools::note(&format!(
            "gateway latency over {LOADS} page loads, p50: oauth2-proxy → sidecar → app \
             {with:.2} ms, oauth2-proxy → app {without:.2} ms: the sidecar adds {:.2} ms \
             (token call to a local stand-in included)",
            with - without
        ));
    });
}

// ---------------------------------------------------------------------------------------
// topology 2: nginx auth_request → oauth2-proxy; nginx → sidecar → app

#[test]
fn nginx_auth_request_login_flow_ends_on_the_page_with_one_token_for_the_idp_user() {
    let Some((gw, _turn)) = gateway() else { return };
    let Some(nginx) = gw.nginx() else { return };
    gw.rt.block_on(async {
        let before = gw.standin.calls().len();
        let (client, landed) = sign_in(gw, &nginx.url).await;
        assert_eq!(landed.status, 200, "{}", landed.body);
        let token = one_call_for_the_idp_user(&gw.calls_since(before));
        assert_eq!(support::tokens_in(&landed.body), vec![token]);

        // Forged headers, either spelling, change nothing: nginx replaces the
        // X-Auth-Request-* headers and drops names with underscores.
        let forged = [
            ("X-Auth-Request-User", FORGED_USER),
            ("X-Auth-Request-Email", FORGED_EMAIL),
            ("X_Auth_Request_User", FORGED_USER),
            ("X_Auth_Request_Email", FORGED_EMAIL),
        ];
        let before = gw.standin.calls().len();
        let landed = navigate(&client, &format!("{}/page", nginx.url), &forged).await;
        let token = one_call_for_the_idp_user(&gw.calls_since(before));
        assert_eq!(support::tokens_in(&landed.body), vec![token]);
    });
}

#[test]
fn nginx_reaches_the_sidecar_over_mutual_tls_and_only_its_certificate_is_trusted() {
    let Some((gw, _turn)) = gateway() else { return };
    let Some(nginx) = gw.nginx_tls() else { return };
    gw.rt.block_on(async {
        let before = gw.standin.calls().len();
        let (_client, landed) = sign_in(gw, &nginx.url).await;
        assert_eq!(landed.status, 200, "{}", landed.body);
        let token = one_call_for_the_idp_user(&gw.calls_since(before));
        assert_eq!(support::tokens_in(&landed.body), vec![token]);
        let sidecar = &nginx.sidecar;
        let by_cert = sidecar
            .metric("released_sidecar_requests_by_trust_total{source=\"certificate\"}")
            .await;
        assert!(by_cert >= 1.0, "trust came from nginx's certificate");
        assert_eq!(
            sidecar
                .metric("released_sidecar_requests_by_trust_total{source=\"address\"}")
                .await,
            0.0,
            "never from its (loopback) address"
        );
    });
}

#[test]
fn nginx_auth_request_without_a_session_redirects_to_login_and_no_token_is_requested() {
    let Some((gw, _turn)) = gateway() else { return };
    let Some(nginx) = gw.nginx() else { return };
    let forged = [
        ("X-Auth-Request-User", FORGED_USER),
        ("X-Auth-Request-Email", FORGED_EMAIL),
    ];
    gw.rt
        .block_on(redirected_to_login_without_a_token(gw, &nginx.url, &forged));
}

// ---------------------------------------------------------------------------------------
// topology 3: Caddy forward_auth → oauth2-proxy; Caddy → sidecar → app

#[test]
fn caddy_forward_auth_login_flow_ends_on_the_page_with_one_token_for_the_idp_user() {
    let Some((gw, _turn)) = gateway() else { return };
    let Some(caddy) = gw.caddy() else { return };
    gw.rt.block_on(async {
        let before = gw.standin.calls().len();
        let (_client, landed) = sign_in(gw, &caddy.url).await;
        assert_eq!(landed.status, 200, "{}", landed.body);
        let token = one_call_for_the_idp_user(&gw.calls_since(before));
        assert_eq!(support::tokens_in(&landed.body), vec![token]);
    });
}

/// Forged identity headers of both families in every spelling Caddy might see, each value
/// carrying `marker`.
fn forged_through_caddy(marker: &str) -> Vec<(&'static str, String)> {
    let email = format!("{marker}@example.com");
    [
        ("X-Auth-Request-User", marker.to_string()),
        ("X-Auth-Request-Email", email.clone()),
        ("X-Auth-Request-Preferred-Username", marker.to_string()),
        ("X_Auth_Request_User", marker.to_string()),
        ("X.Auth.Request.Email", email.clone()),
        ("X-Forwarded-User", marker.to_string()),
        ("X-Forwarded-Email", email.clone()),
        ("X-Forwarded-Preferred-Username", marker.to_string()),
        ("X_Forwarded_User", marker.to_string()),
        ("X_Forwarded_Email", email),
    ]
    .into()
}

#[test]
fn forged_headers_of_both_families_through_caddy_never_change_the_identity_or_reach_the_app() {
    let Some((gw, _turn)) = gateway() else { return };
    let Some(caddy) = gw.caddy() else { return };
    gw.rt.block_on(async {
        let (client, _) = sign_in(gw, &caddy.url).await;
        // A value that cannot turn up in a request by chance.
        let marker = format!("forged{:016x}", rand::random::<u64>());
        let forged = forged_through_caddy(&marker);
        let forged: Vec<(&str, &str)> = forged.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let carrying_marker = |seen: &[support::upstream::Seen]| -> Vec<(String, String)> {
            seen.iter()
                .flat_map(|s| s.headers.iter())
                .filter(|(_, v)| v.contains(&marker))
                .cloned()
                .collect()
        };

        let before = gw.standin.calls().len();
        let seen_before = gw.upstream.seen().len();
        let landed = navigate(&client, &format!("{}/page", caddy.url), &forged).await;
        assert_eq!(landed.status, 200);
        let token = one_call_for_the_idp_user(&gw.calls_since(before));
        assert_eq!(support::tokens_in(&landed.body), vec![token]);
        let seen = gw.upstream.seen().split_off(seen_before);
        let page = seen
            .iter()
            .find(|s| s.path == "/page")
            .expect("the app saw the page");
        assert_eq!(
            page.header("x-auth-request-user"),
            vec![SUB],
            "the gateway's own"
        );
        assert!(
            carrying_marker(&seen).is_empty(),
            "{:?}",
            carrying_marker(&seen)
        );

        // What Caddy alone passes (the same recipe, no sidecar): copy_headers names are
        // replaced by the auth answer, `_` and `.` names dropped, and the other family
        // passes untouched: what strip_headers is for.
        let seen_before = gw.upstream.seen().len();
        let direct = navigate(&client, &format!("{}/page", caddy.direct), &forged).await;
        assert_eq!(direct.status, 200);
        let seen = gw.upstream.seen().split_off(seen_before);
        let page = seen
            .iter()
            .find(|s| s.path == "/page")
            .expect("direct page");
        assert_eq!(page.header("x-auth-request-user"), vec![SUB]);
        assert_eq!(page.header("x-auth-request-email"), vec![EMAIL]);
        let odd: Vec<_> = page
            .headers
            .iter()
            .filter(|(k, _)| k.contains('_') || k.contains('.'))
            .collect();
        assert!(odd.is_empty(), "{odd:?}");
        assert_eq!(page.header("x-forwarded-user"), vec![marker.as_str()]);
        let mut passed: Vec<String> = carrying_marker(&seen).into_iter().map(|(k, _)| k).collect();
        passed.sort();
        assert_eq!(
            passed,
            [
                "x-forwarded-email",
                "x-forwarded-preferred-username",
                "x-forwarded-user"
            ],
        );

        // Without a session the forgery only earns the way to the IdP.
        redirected_to_login_without_a_token(gw, &caddy.url, &forged).await;
    });
}

#[test]
fn caddy_forward_auth_without_a_session_redirects_to_login_and_no_token_is_requested() {
    let Some((gw, _turn)) = gateway() else { return };
    let Some(caddy) = gw.caddy() else { return };
    gw.rt
        .block_on(redirected_to_login_without_a_token(gw, &caddy.url, &[]));
}

// ---------------------------------------------------------------------------------------
// a real browser

/// Where the browser test leaves its screenshot: target/gateway/.
fn artifacts_dir() -> PathBuf {
    // target/<profile>/released-sidecar → target/
    let bin = Path::new(env!("CARGO_BIN_EXE_released-sidecar"));
    bin.parent().and_then(Path::parent).unwrap().join("gateway")
}

#[test]
fn a_real_browser_signs_in_through_oauth2_proxy_and_reads_the_token() {
    let Some((gw, _turn)) = gateway() else { return };
    let Some(chromium) = tools::browser() else {
        return;
    };
    std::fs::create_dir_all(artifacts_dir()).unwrap();
    let screenshot = artifacts_dir().join("browser-signed-in.png");
    let _ = std::fs::remove_file(&screenshot);

    let before = gw.standin.calls().len();
    let report = tools::run_browser(
        &chromium,
        "browser.mjs",
        &[
            &format!("{}/page", gw.proxy.url),
            screenshot.to_str().unwrap(),
        ],
    );

    let token = one_call_for_the_idp_user(&gw.calls_since(before));
    assert_eq!(report["token"], token.as_str(), "{report:#}");
    assert_eq!(report["url"], format!("{}/page", gw.proxy.url));

    // The browser's network log: it went through the IdP and the callback, loaded the page
    // once, and never talked to the token API itself.
    let requests = report["requests"].as_array().expect("requests");
    let urls: Vec<&str> = requests.iter().filter_map(|r| r["url"].as_str()).collect();
    let authorize = format!("{}/authorize", gw.idp.issuer);
    let callback = format!("{}/oauth2/callback", gw.proxy.url);
    assert!(urls.iter().any(|u| u.starts_with(&authorize)), "{urls:#?}");
    assert!(urls.iter().any(|u| u.starts_with(&callback)), "{urls:#?}");
    let pages = requests
        .iter()
        .filter(|r| r["url"] == format!("{}/page", gw.proxy.url) && r["status"] == 200)
        .count();
    assert_eq!(pages, 1, "{requests:#?}");
    let standin = gw.standin.addr.to_string();
    assert!(!urls.iter().any(|u| u.contains(&standin)), "{urls:#?}");

    let png = std::fs::read(&screenshot).expect("screenshot saved");
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    tools::note(&format!(
        "gateway: browser screenshot at {}",
        screenshot.display()
    ));
}

#[test]
fn a_real_browser_behind_caddy_finds_the_embed_the_sidecar_inserted_into_a_page_without_one() {
    let Some((gw, _turn)) = gateway() else { return };
    let Some(caddy) = gw.caddy() else { return };
    let Some(chromium) = tools::browser() else {
        return;
    };
    std::fs::create_dir_all(artifacts_dir()).unwrap();
    let screenshot = artifacts_dir().join("browser-inserted-embed.png");
    let _ = std::fs::remove_file(&screenshot);

    let before = gw.standin.calls().len();
    let page = format!("{}/legacy", caddy.url);
    let report = tools::run_browser(
        &chromium,
        "browser.mjs",
        &[&page, screenshot.to_str().unwrap(), "released-widget"],
    );
    let token = one_call_for_the_idp_user(&gw.calls_since(before));
    assert_eq!(report["token"], token.as_str(), "{report:#}");
    assert_eq!(report["url"], page);
    assert!(
        !LEGACY_PAGE.contains("released-"),
        "the app's page has no embed"
    );
    let png = std::fs::read(&screenshot).expect("screenshot saved");
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    tools::note(&format!(
        "gateway: browser screenshot at {}",
        screenshot.display()
    ));
}
