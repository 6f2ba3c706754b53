//! The configuration (SPEC §4): YAML text in, a fully typed [`Config`] out, or the list of
//! every error, each with its YAML path and line. Nothing downstream re-checks config:
//! regexes are compiled, addresses parsed, secrets read and route overrides merged here.
//!
//! `yaml.rs` turns text into a bounded tree with lines, `decode.rs` reads typed values
//! from it while collecting errors, `files.rs` reads the files the config names (bounded,
//! never blocking), and this file holds the schema.

mod decode;
mod embed;
pub mod files;
mod identity;
mod tls;
pub mod yaml;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use regex::Regex;
use url::Url;

use crate::page::rewrite::insert::InsertRule;
use crate::page::rewrite::EmbedTags;
use crate::request::routes::{HostPattern, Route, Routes};
use crate::request::trust::{parse_net, IdentityHeaders, TrustRule, TrustedProxies};
use crate::token::cool_down::CoolDownPolicy;
use crate::token::keys::{KeyError, KeySource, KeyStore};
use crate::token::released::{ReleasedSettings, SecretSource, DEFAULT_API_URL, DEFAULT_TIMEOUT};
use crate::token::secret::Secret;
pub use decode::parse_duration;
pub use embed::{ClientEmbed, RateLimit};
pub use tls::{Tls, TlsLines};

use decode::{join, Decoder, Fields};
use identity::PartialIdentity;
pub use identity::PRESETS;
use yaml::Node;

/// Default proxy listener.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// Default admin listener (loopback: metrics are not for the world).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
/// Default embed tags (SPEC §4).
pub const DEFAULT_EMBED_TAGS: &[&str] = &["released-page", "released-widget", "released-form"];
/// Default per-response bound on the rewriter's buffers.
pub const DEFAULT_REWRITE_MEMORY: usize = 1024 * 1024;
/// Default idle keep-alive connections to the app per worker: above the concurrent
/// connections a gateway opens per worker, so a busy sidecar reuses connections instead
/// of closing and reopening them (pingora's own default is 128).
pub const DEFAULT_UPSTREAM_KEEPALIVE: usize = 1024;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// YAML path such as `identity.user_id.pattern` or `routes[1].match.host`.
    pub path: String,
    /// 1-based line, when the problem is tied to one.
    pub line: Option<usize>,
    /// What is wrong, written for the person fixing it.
    pub message: String,
}

/// Every problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    /// The file (or `<input>`).
    pub source: String,
    /// All problems, in line order.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        writeln!(
            f,
            "{}: {n} error{}",
            self.source,
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            match e.line {
                Some(line) => write!(f, "  {}:{line}: ", self.source)?,
                None => write!(f, "  {}: ", self.source)?,
            }
            if e.path.is_empty() {
                writeln!(f, "{}", e.message)?;
            } else {
                writeln!(f, "{}: {}", e.path, e.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Supplies the key store for a key source (the live config reuses stores across
/// reloads so fetched keys survive).
pub type KeyStoreProvider<'a> =
    dyn Fn(&KeySource, Duration) -> Result<Arc<KeyStore>, KeyError> + 'a;

/// How to load: the environment for `${VAR}` and which files to read.
pub struct LoadOptions<'e> {
    /// Resolves `${VAR}`; the process environment by default.
    pub env: &'e dyn Fn(&str) -> Option<String>,
    /// `false` for `check --skip-secrets` and `explain`: the secret source is validated but
    /// not read, and the config carries an empty placeholder that is never sent.
    pub read_secrets: bool,
    /// `false` for `check --skip-secrets`: a `jwks_file` is not read.
    pub read_key_files: bool,
    /// Where key stores come from (a fresh one per source by default).
    pub key_stores: &'e KeyStoreProvider<'e>,
}

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// A new key store per source: reads a JWKS file now, leaves URLs to be fetched.
pub fn new_key_store(source: &KeySource, refresh: Duration) -> Result<Arc<KeyStore>, KeyError> {
    KeyStore::new(source.clone(), refresh).map(Arc::new)
}

impl Default for LoadOptions<'_> {
    fn default() -> Self {
        Self {
            env: &process_env,
            read_secrets: true,
            read_key_files: true,
            key_stores: &new_key_store,
        }
    }
}

/// The app the sidecar proxies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// The URL as configured (for logs).
    pub url: String,
    /// `https`?
    pub tls: bool,
    /// Host name or address.
    pub host: String,
    /// Port (default 80/443).
    pub port: u16,
    /// TLS server name (default: `host`).
    pub sni: String,
    /// Verify the app's certificate (default true).
    pub verify: bool,
    /// CA bundle to verify the app's certificate with (default: system roots).
    pub ca_file: Option<PathBuf>,
}

/// Bounds on waiting, all with defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP (+TLS) connect to the app.
    pub upstream_connect: Duration,
    /// Longest silence while reading from the app.
    pub upstream_read: Duration,
    /// Longest stall while writing to the app.
    pub upstream_write: Duration,
    /// Idle keep-alive connections to the app are closed after this.
    pub upstream_idle: Duration,
    /// On SIGTERM, in-flight requests get this long to finish.
    pub shutdown_grace: Duration,
    /// The whole request head must arrive within this (else 408 and close).
    pub client_header: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            upstream_connect: Duration::from_secs(5),
            upstream_read: Duration::from_secs(60),
            upstream_write: Duration::from_secs(60),
            upstream_idle: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
            client_header: Duration::from_secs(30),
        }
    }
}

/// The longest `timeouts.client_header`: pingora closes a connection whose next request
/// has not arrived after 60 s of keep-alive idleness, so a longer deadline could not act.
pub const MAX_CLIENT_HEADER: Duration = Duration::from_secs(60);

/// Bounds on what clients may hold, all with defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Client connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
        }
    }
}

/// The `embed` block.
#[derive(Debug, Clone)]
pub struct Embed {
    /// The tags that get `auth-token`, compiled to a selector.
    pub tags: EmbedTags,
    /// The top-level `embed.insert` rules (each route holds the list in force for it).
    pub insert: Arc<[InsertRule]>,
    /// Per-response bound on the rewriter's buffers, in bytes.
    pub memory_limit: usize,
    /// The same-origin token endpoint and loader for client-rendered embeds (off if `None`).
    pub client: Option<ClientEmbed>,
}

/// A loaded, validated configuration.
#[derive(Debug)]
pub struct Config {
    /// Where the proxy listens.
    pub listen: SocketAddr,
    /// Where `/healthz`, `/readyz` and `/metrics` listen.
    pub admin_listen: SocketAddr,
    /// The app.
    pub upstream: Upstream,
    /// Peers whose identity headers count.
    pub trusted_proxies: TrustedProxies,
    /// Routes in order (an implicit catch-all `default` route when none are written).
    pub routes: Routes,
    /// Embed tags and rewrite bounds.
    pub embed: Embed,
    /// Proxy worker threads.
    pub workers: usize,
    /// Most idle keep-alive connections to the app kept open for reuse.
    pub upstream_keepalive: usize,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Connection limits.
    pub limits: Limits,
    /// Where `run --upgrade` receives the listening sockets of the running process; `None`:
    /// the default, a private directory chosen at start (see `ops/upgrade.rs`), since it
    /// depends on the environment and the user rather than on the file.
    pub upgrade_sock: Option<PathBuf>,
    /// HTTPS on `listen`, and certificate trust (plain HTTP when `None`).
    pub tls: Option<Tls>,
    /// Every identity header named anywhere in the config and the `strip_headers`, and
    /// which spellings of them the trust boundary strips.
    pub identity_headers: IdentityHeaders,
    /// Secret files to watch for rotation.
    pub secret_files: Vec<PathBuf>,
    /// JWKS files to watch (reloaded like secrets).
    pub key_files: Vec<PathBuf>,
    /// Every key store the routes use (each once), for refreshing and readiness.
    pub key_stores: Vec<Arc<KeyStore>>,
}

impl Config {
    /// How `listen` decides trust: by client certificate when `tls.client_ca_file` is set,
    /// else by the peer's address.
    pub fn trust_rule(&self) -> TrustRule<'_> {
        match &self.tls {
            Some(tls) if tls.client_ca_file.is_some() => {
                TrustRule::Certificate(&tls.trusted_client_names)
            }
            _ => TrustRule::Address(&self.trusted_proxies),
        }
    }

    /// Loads and validates the file at `path`.
    pub fn load(path: &Path, options: &LoadOptions<'_>) -> Result<Config, ConfigErrors> {
        let text = Self::read(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, &path.display().to_string(), base, options)
    }

    /// The text of the config file at `path`: a regular file of at most
    /// [`files::MAX_CONFIG_BYTES`], read without blocking.
    pub fn read(path: &Path) -> Result<String, ConfigErrors> {
        files::read_text_bounded(path, files::MAX_CONFIG_BYTES).map_err(|e| ConfigErrors {
            source: path.display().to_string(),
            errors: vec![ConfigError {
                path: String::new(),
                line: None,
                message: format!("cannot read the config file: {}", e.problem),
            }],
        })
    }

    /// Loads and validates config text; relative secret paths resolve against `base`.
    pub fn parse(
        text: &str,
        source: &str,
        base: &Path,
        options: &LoadOptions<'_>,
    ) -> Result<Config, ConfigErrors> {
        let fail = |errors| ConfigErrors {
            source: source.to_string(),
            errors,
        };
        if text.len() as u64 > files::MAX_CONFIG_BYTES {
            return Err(fail(vec![ConfigError {
                path: String::new(),
                line: None,
                message: format!(
                    "the config is larger than {}, the most a config may hold",
                    files::size(files::MAX_CONFIG_BYTES)
                ),
            }]));
        }
        let root = yaml::parse(text).map_err(|e| {
            fail(vec![ConfigError {
                path: e.path,
                line: Some(e.line),
                message: e.message,
            }])
        })?;
        // One store per key source and refresh within a config: a hundred routes naming
        // one JWKS file read and hold it once.
        let stores: std::cell::RefCell<Vec<(KeySource, Duration, Arc<KeyStore>)>> =
            std::cell::RefCell::default();
        let shared_stores = |source: &KeySource, refresh: Duration| {
            let known = stores
                .borrow()
                .iter()
                .find(|(s, r, _)| s == source && *r == refresh)
                .map(|(_, _, store)| Arc::clone(store));
            if let Some(store) = known {
                return Ok(store);
            }
            let store = (options.key_stores)(source, refresh)?;
            stores
                .borrow_mut()
                .push((source.clone(), refresh, Arc::clone(&store)));
            Ok(store)
        };
        let mut d = Decoder::new(options.env);
        let config = Schema {
            d: &mut d,
            base,
            read_secrets: options.read_secrets,
            read_key_files: options.read_key_files,
            key_stores: &shared_stores,
            regex_budget: Some(MAX_REGEXES_BYTES),
        }
        .config(&root);
        match config {
            Some(c) if !d.has_errors() => Ok(c),
            _ => Err(fail(d.into_errors())),
        }
    }

    /// The one-line summary printed by `check`.
    pub fn summary(&self) -> String {
        let routes: Vec<&str> = self.routes.0.iter().map(|r| r.name.as_str()).collect();
        let mut secrets: Vec<String> = self
            .routes
            .0
            .iter()
            .map(|r| r.released.secret_source.to_string())
            .collect();
        secrets.sort();
        secrets.dedup();
        format!(
            "config OK: listen {} -> upstream {}; admin {}; {} route{} ({}); embed tags {}; secret from {}",
            self.listen,
            self.upstream.url,
            self.admin_listen,
            routes.len(),
            if routes.len() == 1 { "" } else { "s" },
            routes.join(", "),
            self.embed.tags.names().join(", "),
            secrets.join(" and "),
        )
    }
}

const TOP_KEYS: &[&str] = &[
    "listen",
    "tls",
    "upgrade_sock",
    "upstream",
    "upstream_tls",
    "admin",
    "trusted_proxies",
    "released",
    "identity",
    "routes",
    "embed",
    "workers",
    "upstream_keepalive",
    "timeouts",
    "limits",
    "strip_headers",
];
const RELEASED_KEYS: &[&str] = &[
    "api_url",
    "account_id",
    "shared_secret_file",
    "shared_secret_env",
    "shared_secret",
    "timeout",
    "cooldown",
];
const ROUTE_KEYS: &[&str] = &["name", "match", "identity", "released", "embed"];

/// A `released` block as written, before merging a route's override with the top level.
/// A key that is written but invalid is `None` here and listed in `written`, so it is
/// reported once (as invalid), not twice (as invalid and as missing).
#[derive(Default, Clone)]
struct PartialReleased {
    written: Vec<&'static str>,
    api_url: Option<Url>,
    account_id: Option<String>,
    secret: Option<(SecretSource, Secret)>,
    timeout: Option<Duration>,
    cooldown: Option<CoolDownPolicy>,
}

impl PartialReleased {
    fn or(self, base: &PartialReleased) -> PartialReleased {
        PartialReleased {
            written: Vec::new(),
            api_url: self.api_url.or_else(|| base.api_url.clone()),
            account_id: self.account_id.or_else(|| base.account_id.clone()),
            secret: self.secret.or_else(|| base.secret.clone()),
            timeout: self.timeout.or(base.timeout),
            cooldown: self.cooldown.or(base.cooldown),
        }
    }

    fn finish(self) -> Option<ReleasedSettings> {
        let (secret_source, secret) = self.secret?;
        Some(ReleasedSettings {
            api_url: self
                .api_url
                .unwrap_or_else(|| Url::parse(DEFAULT_API_URL).expect("valid default")),
            account_id: self.account_id?,
            secret,
            secret_source,
            timeout: self.timeout.unwrap_or(DEFAULT_TIMEOUT),
            cooldown: self.cooldown.unwrap_or_default(),
        })
    }
}

/// A route as written, with its raw overrides.
struct PartialRoute {
    name: Option<String>,
    host: Option<HostPattern>,
    path: Option<Regex>,
    identity: Option<PartialIdentity>,
    released: Option<PartialReleased>,
    /// The route's own `embed.insert` (replaces the top-level list).
    insert: Option<Vec<InsertRule>>,
}

/// Keys whose absence makes a route unusable, with what they are checked on.
const REQUIRED: &[(&str, &str)] = &[
    ("released", "account_id"),
    ("released", "shared_secret_file"),
    ("identity", "user_id"),
    ("identity", "user_email"),
];

/// Largest compiled form of one regex (`regex`'s own size limit).
pub const MAX_REGEX_BYTES: usize = 1024 * 1024;
/// Largest compiled form of all the regexes of one config together: ten thousand routes
/// of small patterns would otherwise take hundreds of MB before anything is served.
pub const MAX_REGEXES_BYTES: usize = 8 * 1024 * 1024;
/// What each regex is charged beyond its compiled automata (its search caches and
/// bookkeeping, measured at about 8 KiB for a pattern like `^/a`).
const REGEX_OVERHEAD_BYTES: usize = 8 * 1024;

struct Schema<'a, 'e> {
    d: &'a mut Decoder<'e>,
    base: &'a Path,
    read_secrets: bool,
    read_key_files: bool,
    key_stores: &'e KeyStoreProvider<'e>,
    /// Bytes of compiled regex still allowed; `None` once the budget was exceeded (and
    /// reported: later regexes are not compiled at all).
    regex_budget: Option<usize>,
}

impl Schema<'_, '_> {
    fn config(&mut self, root: &Node) -> Option<Config> {
        let top = self.d.map(root, "", TOP_KEYS)?;

        let listen = self.socket_addr(&top, "listen", DEFAULT_LISTEN);
        let admin = top
            .get("admin")
            .and_then(|n| self.d.map(n, "admin", &["listen"]));
        let admin_listen = match &admin {
            Some(a) => self.socket_addr(a, "admin.listen", DEFAULT_ADMIN_LISTEN),
            None => DEFAULT_ADMIN_LISTEN.parse().ok(),
        };
        if let (Some(l), Some(a)) = (listen, admin_listen) {
            if l == a {
                self.d.error(
                    "admin.listen",
                    top.line_of("admin"),
                    "must differ from `listen`: admin endpoints are never served on the proxy port",
                );
            }
        }
        let upstream = self.upstream(&top);
        let trusted_proxies = self.trusted_proxies(&top);
        let workers = match top.get("workers") {
            Some(n) => self.d.positive_integer(n, "workers"),
            None => Some(
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1),
            ),
        };
        let upstream_keepalive = match top.get("upstream_keepalive") {
            Some(n) => self.d.positive_integer(n, "upstream_keepalive"),
            None => Some(DEFAULT_UPSTREAM_KEEPALIVE),
        };
        let timeouts = self.timeouts(&top);
        let tls = match top.get("tls") {
            Some(n) => self.tls(n).map(Some),
            None => Some(None),
        };
        let limits = self.limits(&top);
        let upgrade_sock = match top.get("upgrade_sock") {
            Some(n) => self
                .d
                .non_empty(n, "upgrade_sock")
                .map(|p| Some(self.base.join(p.trim()))),
            None => Some(None),
        };
        let embed = self.embed(&top);
        let strip_headers = match top.get("strip_headers") {
            Some(n) => self.strip_headers(n),
            None => Some(Vec::new()),
        };

        let top_released = match top.get("released") {
            Some(n) => self.released(n, "released"),
            None => PartialReleased::default(),
        };
        let top_identity = match top.get("identity") {
            Some(n) => self.identity(n, "identity"),
            None => PartialIdentity::default(),
        };
        let routes = self.routes(&top);
        if let Some(routes) = &routes {
            self.check_required(&top, &top_released, &top_identity, routes);
        }
        if self.d.has_errors() {
            return None;
        }
        let routes = routes?;

        // Compiling identities can still find errors (jwt completeness, header/claim
        // mix-ups), reported before anything is built.
        let identity_line = top.line_of("identity");
        let shared_identity = if routes.iter().any(|r| r.identity.is_none()) {
            self.compile_identity(top_identity.clone(), "identity", identity_line)
                .map(Arc::new)
        } else {
            None
        };
        let mut identities = Vec::with_capacity(routes.len());
        for (i, route) in routes.iter().enumerate() {
            identities.push(match &route.identity {
                None => shared_identity.clone(),
                Some(own) => self
                    .compile_identity(
                        own.clone().or(&top_identity),
                        &format!("routes[{i}].identity"),
                        identity_line,
                    )
                    .map(Arc::new),
            });
        }
        if self.d.has_errors() {
            return None;
        }

        let shared_released = top_released.clone().finish().map(Arc::new);
        let mut compiled = Vec::with_capacity(routes.len());
        for (route, identity) in routes.into_iter().zip(identities) {
            let released = match route.released {
                None => shared_released.clone()?,
                Some(own) => Arc::new(own.or(&top_released).finish()?),
            };
            let identity = identity?;
            let insert = match route.insert {
                Some(own) => Arc::from(own),
                None => Arc::clone(&embed.as_ref()?.insert),
            };
            compiled.push(Route {
                name: route.name?,
                host: route.host,
                path: route.path,
                identity,
                released,
                insert,
            });
        }

        let mut identity_headers: Vec<HeaderName> = top_identity.headers().cloned().collect();
        let mut secret_files: Vec<PathBuf> = Vec::new();
        let mut key_files: Vec<PathBuf> = Vec::new();
        let mut key_stores: Vec<Arc<KeyStore>> = Vec::new();
        for route in &compiled {
            if let Some(jwt) = &route.identity.jwt {
                if !key_stores.iter().any(|k| Arc::ptr_eq(k, &jwt.keys)) {
                    key_stores.push(Arc::clone(&jwt.keys));
                }
                if let KeySource::JwksFile(p) = jwt.keys.source() {
                    if !key_files.contains(p) {
                        key_files.push(p.clone());
                    }
                }
            }
            for h in route.identity.headers() {
                if !identity_headers.contains(h) {
                    identity_headers.push(h.clone());
                }
            }
            if let SecretSource::File(p) = &route.released.secret_source {
                if !secret_files.contains(p) {
                    secret_files.push(p.clone());
                }
            }
        }

        Some(Config {
            listen: listen?,
            admin_listen: admin_listen?,
            upstream: upstream?,
            trusted_proxies: trusted_proxies?,
            routes: Routes(compiled),
            embed: embed?,
            workers: workers?,
            upgrade_sock: upgrade_sock?,
            tls: tls?,
            upstream_keepalive: upstream_keepalive?,
            timeouts: timeouts?,
            limits: limits?,
            identity_headers: IdentityHeaders::new(identity_headers).with_stripped(strip_headers?),
            secret_files,
            key_files,
            key_stores,
        })
    }

    /// Reports each required key missing from the top level and from a route that would
    /// need it, once, at the top-level path.
    fn check_required(
        &mut self,
        top: &Fields<'_>,
        released: &PartialReleased,
        identity: &PartialIdentity,
        routes: &[PartialRoute],
    ) {
        let has = |written: &[&str], key: &str| {
            if key == "shared_secret_file" {
                written.iter().any(|k| k.starts_with("shared_secret"))
            } else {
                written.contains(&key)
            }
        };
        for (block, key) in REQUIRED {
            let top_written = match *block {
                "released" => &released.written,
                _ => &identity.written,
            };
            if has(top_written, key) {
                continue;
            }
            let lacking: Vec<&str> = routes
                .iter()
                .filter(|r| {
                    let own = match *block {
                        "released" => r.released.as_ref().map(|o| &o.written),
                        _ => r.identity.as_ref().map(|o| &o.written),
                    };
                    own.is_none_or(|w| !has(w, key))
                })
                .map(|r| r.name.as_deref().unwrap_or("(unnamed)"))
                .collect();
            if lacking.is_empty() {
                continue;
            }
            let what = if *key == "shared_secret_file" {
                "a secret is required: set `shared_secret_file` or `shared_secret_env`".to_string()
            } else {
                "is required".to_string()
            };
            let routes_note = if top.has("routes") {
                format!(
                    " (route{} {} set no own value)",
                    if lacking.len() == 1 { "" } else { "s" },
                    lacking.join(", ")
                )
            } else {
                String::new()
            };
            let path = if *key == "shared_secret_file" {
                block.to_string()
            } else {
                format!("{block}.{key}")
            };
            self.d
                .error(&path, top.line_of(block), format!("{what}{routes_note}"));
        }
    }

    fn socket_addr(
        &mut self,
        fields: &Fields<'_>,
        path: &str,
        default: &str,
    ) -> Option<SocketAddr> {
        let key = path.rsplit('.').next().unwrap_or(path);
        let Some(node) = fields.get(key) else {
            return default.parse().ok();
        };
        let text = self.d.non_empty(node, path)?;
        match text.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.d.error(
                    path,
                    node.line,
                    format!("`{text}` is not an address:port such as 0.0.0.0:8080 or [::]:8080"),
                );
                None
            }
        }
    }

    fn upstream(&mut self, top: &Fields<'_>) -> Option<Upstream> {
        let Some(node) = top.get("upstream") else {
            self.d.error(
                "upstream",
                top.line,
                "is required: the app's URL, e.g. http://127.0.0.1:3000",
            );
            return None;
        };
        let text = self.d.non_empty(node, "upstream")?;
        let url = match Url::parse(&text) {
            Ok(u) => u,
            Err(e) => {
                self.d
                    .error("upstream", node.line, format!("`{text}` is not a URL: {e}"));
                return None;
            }
        };
        let tls = match url.scheme() {
            "http" => false,
            "https" => true,
            other => {
                self.d.error(
                    "upstream",
                    node.line,
                    format!("scheme `{other}` is not supported; use http or https"),
                );
                return None;
            }
        };
        let host = match url.host() {
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(h) => h.to_string(),
            None => {
                self.d.error("upstream", node.line, "has no host");
                return None;
            }
        };
        if !url.username().is_empty() || url.password().is_some() {
            self.d
                .error("upstream", node.line, "must not contain credentials");
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            self.d.error(
                "upstream",
                node.line,
                "must be scheme://host[:port] only: paths are forwarded as requested",
            );
        }
        let port = url
            .port_or_known_default()
            .unwrap_or(if tls { 443 } else { 80 });

        let mut sni = host.clone();
        let mut verify = true;
        let mut ca_file = None;
        if let Some(tls_node) = top.get("upstream_tls") {
            if let Some(t) = self
                .d
                .map(tls_node, "upstream_tls", &["ca_file", "verify", "sni"])
            {
                if !tls {
                    self.d.error(
                        "upstream_tls",
                        top.line_of("upstream_tls"),
                        "only applies to an https upstream",
                    );
                }
                if let Some(n) = t.get("sni") {
                    if let Some(s) = self.d.non_empty(n, "upstream_tls.sni") {
                        sni = s;
                    }
                }
                if let Some(n) = t.get("verify") {
                    verify = self.bool(n, "upstream_tls.verify").unwrap_or(true);
                }
                if let Some(n) = t.get("ca_file") {
                    ca_file = self.existing_file(n, "upstream_tls.ca_file");
                }
            }
        }
        Some(Upstream {
            url: text,
            tls,
            host,
            port,
            sni,
            verify,
            ca_file,
        })
    }

    fn bool(&mut self, node: &Node, path: &str) -> Option<bool> {
        match &node.value {
            yaml::Value::Scalar { text, plain: true } if text == "true" => Some(true),
            yaml::Value::Scalar { text, plain: true } if text == "false" => Some(false),
            _ => {
                self.d.error(path, node.line, "expected true or false");
                None
            }
        }
    }

    fn existing_file(&mut self, node: &Node, path: &str) -> Option<PathBuf> {
        let text = self.d.non_empty(node, path)?;
        let p = self.base.join(text);
        if !p.is_file() {
            self.d.error(
                path,
                node.line,
                format!("{} is not a readable file", p.display()),
            );
            return None;
        }
        Some(p)
    }

    fn trusted_proxies(&mut self, top: &Fields<'_>) -> Option<TrustedProxies> {
        let Some(node) = top.get("trusted_proxies") else {
            return Some(TrustedProxies::loopback());
        };
        let items = self.d.strings(node, "trusted_proxies")?;
        let mut nets = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, (text, line)) in items.iter().enumerate() {
            match parse_net(text) {
                Ok(net) => nets.push(net),
                Err(msg) => {
                    self.d.error(&format!("trusted_proxies[{i}]"), *line, msg);
                    ok = false;
                }
            }
        }
        ok.then(|| TrustedProxies::new(nets))
    }

    fn timeouts(&mut self, top: &Fields<'_>) -> Option<Timeouts> {
        let mut t = Timeouts::default();
        let Some(node) = top.get("timeouts") else {
            return Some(t);
        };
        let keys = [
            "upstream_connect",
            "upstream_read",
            "upstream_write",
            "upstream_idle",
            "shutdown_grace",
            "client_header",
        ];
        let fields = self.d.map(node, "timeouts", &keys)?;
        let mut ok = true;
        for key in keys {
            let Some(n) = fields.get(key) else { continue };
            let path = join("timeouts", key);
            let Some(v) = self.d.duration(n, &path) else {
                ok = false;
                continue;
            };
            if v.is_zero() {
                self.d.error(&path, n.line, "must be above zero");
                ok = false;
                continue;
            }
            match key {
                "upstream_connect" => t.upstream_connect = v,
                "upstream_read" => t.upstream_read = v,
                "upstream_write" => t.upstream_write = v,
                "upstream_idle" => t.upstream_idle = v,
                "client_header" if v > MAX_CLIENT_HEADER => {
                    self.d.error(
                        &path,
                        n.line,
                        "must be at most 60s (the keep-alive idle limit ends a slower head first)",
                    );
                    ok = false;
                }
                "client_header" => t.client_header = v,
                _ => t.shutdown_grace = v,
            }
        }
        ok.then_some(t)
    }

    fn limits(&mut self, top: &Fields<'_>) -> Option<Limits> {
        let mut limits = Limits::default();
        let Some(node) = top.get("limits") else {
            return Some(limits);
        };
        let fields = self.d.map(node, "limits", &["max_connections"])?;
        if let Some(n) = fields.get("max_connections") {
            limits.max_connections = self.d.positive_integer(n, "limits.max_connections")?;
        }
        Some(limits)
    }

    fn embed(&mut self, top: &Fields<'_>) -> Option<Embed> {
        let mut tags: Vec<String> = DEFAULT_EMBED_TAGS.iter().map(|s| s.to_string()).collect();
        let mut memory_limit = DEFAULT_REWRITE_MEMORY;
        let mut client = None;
        let mut insert = Vec::new();
        let (line, ok) = match top.get("embed") {
            None => (top.line, true),
            Some(node) => (
                node.line,
                self.embed_fields(node, &mut tags, &mut memory_limit, &mut client, &mut insert)?,
            ),
        };
        if !ok {
            return None;
        }
        match EmbedTags::new(&tags) {
            Ok(tags) => Some(Embed {
                tags,
                insert: Arc::from(insert),
                memory_limit,
                client,
            }),
            Err(msg) => {
                self.d.error("embed.tags", line, msg);
                None
            }
        }
    }

    fn embed_fields(
        &mut self,
        node: &Node,
        tags: &mut Vec<String>,
        memory_limit: &mut usize,
        client: &mut Option<ClientEmbed>,
        insert: &mut Vec<InsertRule>,
    ) -> Option<bool> {
        let fields = self
            .d
            .map(node, "embed", &["tags", "memory_limit", "client", "insert"])?;
        let mut ok = true;
        if let Some(n) = fields.get("insert") {
            match self.embed_insert(n, "embed.insert") {
                Some(rules) => *insert = rules,
                None => ok = false,
            }
        }
        if let Some(n) = fields.get("client") {
            *client = self.embed_client(n);
            ok &= client.is_some();
        }
        if let Some(n) = fields.get("tags") {
            match self.d.strings(n, "embed.tags") {
                Some(items) if items.is_empty() => {
                    self.d
                        .error("embed.tags", n.line, "must name at least one tag");
                    ok = false;
                }
                Some(items) => {
                    tags.clear();
                    for (i, (tag, line)) in items.into_iter().enumerate() {
                        let tag = tag.trim().to_ascii_lowercase();
                        let valid = tag.starts_with(|c: char| c.is_ascii_alphabetic())
                            && tag
                                .chars()
                                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
                        if !valid {
                            self.d.error(
                                &format!("embed.tags[{i}]"),
                                line,
                                format!("`{tag}` is not an HTML tag name"),
                            );
                            ok = false;
                        } else if !tags.contains(&tag) {
                            tags.push(tag);
                        }
                    }
                }
                None => ok = false,
            }
        }
        if let Some(n) = fields.get("memory_limit") {
            let text = self.d.string(n, "embed.memory_limit");
            match text.as_deref().map(parse_size) {
                Some(Ok(bytes)) if bytes >= 16 * 1024 => *memory_limit = bytes,
                Some(Ok(_)) => {
                    self.d
                        .error("embed.memory_limit", n.line, "must be at least 16KiB");
                    ok = false;
                }
                Some(Err(msg)) => {
                    self.d.error("embed.memory_limit", n.line, msg);
                    ok = false;
                }
                None => ok = false,
            }
        }
        Some(ok)
    }

    fn routes(&mut self, top: &Fields<'_>) -> Option<Vec<PartialRoute>> {
        let Some(node) = top.get("routes") else {
            if top.has("routes") {
                self.d.error(
                    "routes",
                    top.line_of("routes"),
                    "is empty; remove the key to apply the top-level settings to every request",
                );
                return None;
            }
            return Some(vec![PartialRoute {
                name: Some("default".into()),
                host: None,
                path: None,
                identity: None,
                released: None,
                insert: None,
            }]);
        };
        let items = self.d.list(node, "routes")?;
        if items.is_empty() {
            self.d.error(
                "routes",
                node.line,
                "is empty; remove the key to apply the top-level settings to every request",
            );
            return None;
        }
        let mut routes = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let path = format!("routes[{i}]");
            match self.route(item, &path) {
                Some(r) => {
                    if r.name.is_some() && routes.iter().any(|o: &PartialRoute| o.name == r.name) {
                        self.d.error(
                            &join(&path, "name"),
                            item.line,
                            format!(
                                "duplicate route name `{}`",
                                r.name.as_deref().unwrap_or_default()
                            ),
                        );
                    }
                    routes.push(r);
                }
                None => ok = false,
            }
        }
        ok.then_some(routes)
    }

    fn route(&mut self, node: &Node, path: &str) -> Option<PartialRoute> {
        let fields = self.d.map(node, path, ROUTE_KEYS)?;
        let name = match fields.get("name") {
            Some(n) => self.d.non_empty(n, &join(path, "name")),
            None => {
                self.d.error(&join(path, "name"), node.line, "is required");
                None
            }
        };
        let mut host = None;
        let mut path_re = None;
        if let Some(m) = fields.get("match") {
            let mpath = join(path, "match");
            if let Some(mf) = self.d.map(m, &mpath, &["host", "path"]) {
                if let Some(h) = mf.get("host") {
                    let hp = join(&mpath, "host");
                    match self.d.non_empty(h, &hp).map(|t| HostPattern::parse(&t)) {
                        Some(Ok(p)) => host = Some(p),
                        Some(Err(msg)) => self.d.error(&hp, h.line, msg),
                        None => {}
                    }
                }
                if let Some(p) = mf.get("path") {
                    path_re = self.regex(p, &join(&mpath, "path"));
                }
            }
        }
        let identity = fields
            .get("identity")
            .map(|n| self.identity(n, &join(path, "identity")));
        let released = fields
            .get("released")
            .map(|n| self.released(n, &join(path, "released")));
        let mut insert = None;
        if let Some(n) = fields.get("embed") {
            let embed_path = join(path, "embed");
            if let Some(ef) = self.d.map(n, &embed_path, &["insert"]) {
                if let Some(list) = ef.get("insert") {
                    insert = self.embed_insert(list, &join(&embed_path, "insert"));
                }
            }
        }
        Some(PartialRoute {
            name,
            host,
            path: path_re,
            identity,
            released,
            insert,
        })
    }

    fn regex(&mut self, node: &Node, path: &str) -> Option<Regex> {
        let text = self.d.non_empty(node, path)?;
        let budget = self.regex_budget?;
        let re = match regex::RegexBuilder::new(&text)
            .size_limit(MAX_REGEX_BYTES)
            .build()
        {
            Ok(re) => re,
            Err(e) => {
                let detail = e
                    .to_string()
                    .lines()
                    .last()
                    .unwrap_or_default()
                    .trim()
                    .to_string();
                self.d
                    .error(path, node.line, format!("invalid regex `{text}`: {detail}"));
                return None;
            }
        };
        // `regex::Regex` does not say what it holds; the same engine built alone does.
        let used = regex_automata::meta::Regex::builder()
            .configure(regex_automata::meta::Config::new().nfa_size_limit(Some(MAX_REGEX_BYTES)))
            .build(&text)
            .map_or(MAX_REGEX_BYTES, |m| m.memory_usage())
            .saturating_add(REGEX_OVERHEAD_BYTES);
        match budget.checked_sub(used) {
            Some(left) => {
                self.regex_budget = Some(left);
                Some(re)
            }
            None => {
                self.regex_budget = None;
                self.d.error(
                    path,
                    node.line,
                    format!(
                        "the regexes of this config would take more than {} compiled (the most a config may hold); use fewer routes or simpler patterns",
                        files::size(MAX_REGEXES_BYTES as u64)
                    ),
                );
                None
            }
        }
    }

    fn released(&mut self, node: &Node, path: &str) -> PartialReleased {
        let Some(fields) = self.d.map(node, path, RELEASED_KEYS) else {
            return PartialReleased {
                written: RELEASED_KEYS.to_vec(),
                ..Default::default()
            };
        };
        let mut out = PartialReleased {
            written: RELEASED_KEYS
                .iter()
                .copied()
                .filter(|k| fields.has(k))
                .collect(),
            ..Default::default()
        };

        if let Some(n) = fields.get("api_url") {
            out.api_url = self.api_url(n, &join(path, "api_url"));
        }
        if let Some(n) = fields.get("account_id") {
            out.account_id = self.d.non_empty(n, &join(path, "account_id"));
        }
        if fields.has("shared_secret") {
            self.d.error(
                &join(path, "shared_secret"),
                fields.line_of("shared_secret"),
                "inline secrets are refused (config files end up in ConfigMaps and repos); use shared_secret_file or shared_secret_env",
            );
        }
        match (
            fields.get("shared_secret_file"),
            fields.get("shared_secret_env"),
        ) {
            (Some(_), Some(_)) => self.d.error(
                &join(path, "shared_secret_env"),
                fields.line_of("shared_secret_env"),
                "set either shared_secret_file or shared_secret_env, not both",
            ),
            (Some(n), None) => out.secret = self.secret_file(n, &join(path, "shared_secret_file")),
            (None, Some(n)) => out.secret = self.secret_env(n, &join(path, "shared_secret_env")),
            (None, None) => {}
        }
        if let Some(n) = fields.get("timeout") {
            let p = join(path, "timeout");
            out.timeout = self.d.duration(n, &p);
            if out
                .timeout
                .is_some_and(|t| t.is_zero() || t > Duration::from_secs(60))
            {
                self.d.error(&p, n.line, "must be between 1ms and 60s");
            }
        }
        if let Some(n) = fields.get("cooldown") {
            out.cooldown = self.cooldown(n, &join(path, "cooldown"));
        }
        out
    }

    fn api_url(&mut self, node: &Node, path: &str) -> Option<Url> {
        let text = self.d.non_empty(node, path)?;
        // A URL with `@` may carry a password: never echo it.
        let shown = if text.contains('@') {
            "the URL".to_string()
        } else {
            format!("`{text}`")
        };
        let url = match Url::parse(&text) {
            Ok(u) if u.host_str().is_some() => u,
            _ => {
                self.d
                    .error(path, node.line, format!("{shown} is not an absolute URL"));
                return None;
            }
        };
        if !url.username().is_empty() || url.password().is_some() {
            self.d.error(
                path,
                node.line,
                "must not carry a user name or password: the shared secret is sent as a bearer token (shared_secret_file)",
            );
            return None;
        }
        let loopback = is_loopback_host(&url);
        match url.scheme() {
            "https" => Some(url),
            "http" if loopback => Some(url),
            _ => {
                self.d.error(
                    path,
                    node.line,
                    "must use https: the shared secret travels in it (plain http is only allowed to a loopback address, for local stand-ins)",
                );
                None
            }
        }
    }

    fn secret_file(&mut self, node: &Node, path: &str) -> Option<(SecretSource, Secret)> {
        let text = self.d.non_empty(node, path)?;
        let file = self.base.join(text.trim());
        if !self.read_secrets {
            return Some((SecretSource::File(file), Secret::new("")));
        }
        let secret = files::read_text_bounded(&file, files::MAX_SECRET_BYTES)
            .map_err(|e| format!("cannot read secret file {e}"))
            .and_then(|content| {
                Secret::from_text(&content)
                    .map_err(|e| format!("secret file {} {e}", file.display()))
            });
        match secret {
            Ok(secret) => Some((SecretSource::File(file), secret)),
            Err(message) => {
                self.d.error(path, node.line, message);
                None
            }
        }
    }

    fn secret_env(&mut self, node: &Node, path: &str) -> Option<(SecretSource, Secret)> {
        let name = self.d.non_empty(node, path)?;
        let name = name.trim().to_string();
        if !self.read_secrets {
            return Some((SecretSource::Env(name), Secret::new("")));
        }
        let Some(value) = self.d.env_var(&name) else {
            self.d.error(
                path,
                node.line,
                format!("environment variable {name} is not set"),
            );
            return None;
        };
        match Secret::from_text(&value) {
            Ok(secret) => Some((SecretSource::Env(name), secret)),
            Err(e) => {
                self.d
                    .error(path, node.line, format!("environment variable {name} {e}"));
                None
            }
        }
    }

    fn cooldown(&mut self, node: &Node, path: &str) -> Option<CoolDownPolicy> {
        let fields = self.d.map(node, path, &["after_failures", "duration"])?;
        let mut policy = CoolDownPolicy::default();
        let mut ok = true;
        if let Some(n) = fields.get("after_failures") {
            match self.d.positive_integer(n, &join(path, "after_failures")) {
                Some(v) => policy.after_failures = u32::try_from(v).unwrap_or(u32::MAX),
                None => ok = false,
            }
        }
        if let Some(n) = fields.get("duration") {
            match self.d.duration(n, &join(path, "duration")) {
                Some(v) => policy.duration = v,
                None => ok = false,
            }
        }
        ok.then_some(policy)
    }
}

/// Whether a URL points at this machine (plain http is allowed only there, for local
/// stand-ins: secrets and keys must not cross a network in clear).
fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// Parses `1048576`, `512KiB` or `4MiB`.
fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let (digits, mult) = if let Some(n) = t.strip_suffix("MiB") {
        (n, 1024 * 1024)
    } else if let Some(n) = t.strip_suffix("KiB") {
        (n, 1024)
    } else {
        (t, 1)
    };
    digits
        .trim()
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("invalid size `{t}`: write bytes, or a number with KiB or MiB"))
}

#[cfg(test)]
mod tests;
