//! The live configuration (SPEC §5): an `arc-swap`ped generation of the config (the
//! [`Snapshot`] every request loads once, and the `tls` material every new connection
//! reads), a reloader that builds and validates a complete new generation off the
//! request path before swapping it in, and a `notify` watcher on the directories of the
//! config and secret files (Kubernetes swaps a `..data` symlink rather than writing the
//! files, editors write-and-rename, `cp` truncates in place: watching directories sees all
//! three). `SIGHUP` feeds the same reloader.
//!
//! Building a generation is where the config meets the world: the upstream host is resolved
//! (at start and on each reload, never per request), the upstream CA bundle and the `tls`
//! certificate, key and client CA are loaded, and the state that outlives one config is
//! handed in — assertion key stores fetched from URLs (refreshed in the background by
//! [`KeyRefresher`]) and the accounts' cool-down breakers.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use pingora::upstreams::peer::{HttpPeer, Peer};
use pingora::utils::tls::WrappedX509;

use crate::config::{Config, ConfigErrors, LoadOptions};
use crate::edge::front::ConnectionSettings;
use crate::edge::tls::{PemError, TlsLoadError, TlsMaterial};
use crate::metrics::Metrics;
use crate::request::snapshot::{Snapshot, Snapshots};
use crate::token::cool_down::CoolDowns;
use crate::token::keys::{KeyError, KeySource, KeyStore};
use crate::token::released::SecretSource;

/// Quiet time after the last file event before reloading (editors and Kubernetes write in
/// bursts).
const DEBOUNCE: Duration = Duration::from_millis(200);
/// Upper bound on how long a steady stream of events can postpone a reload.
const DEBOUNCE_MAX: Duration = Duration::from_secs(2);

/// One generation of the config, built and validated as one unit: what requests read,
/// what new connections read, and what a reload compares.
struct Generation {
    /// What every request reads.
    snapshot: Arc<Snapshot>,
    /// The certificate, key and client CA of `tls` (HTTPS on `listen`).
    tls: Option<Arc<TlsMaterial>>,
    /// Increments with each successful reload (1 at start).
    number: u64,
    fingerprint: u64,
    ca_digest: Option<u64>,
}

impl Generation {
    /// Builds generation `number` from a loaded config; `text` is the config source for
    /// change detection, `cool_downs` where the accounts' breakers live on between
    /// generations.
    fn build(
        config: Config,
        text: &str,
        number: u64,
        cool_downs: &CoolDowns,
    ) -> Result<Generation, BuildError> {
        let upstream = upstream_peer(&config)?;
        // A pair that does not load fails the reload: the old one keeps serving.
        let tls = config
            .tls
            .as_ref()
            .map(crate::edge::tls::load)
            .transpose()?;
        let mut fingerprint = fingerprint(&config, text, &upstream);
        if let Some(tls) = &tls {
            fingerprint ^= tls.digest;
        }
        Ok(Generation {
            snapshot: Arc::new(Snapshot::new(config, upstream.peer, cool_downs)),
            tls: tls.map(Arc::new),
            number,
            fingerprint,
            ca_digest: upstream.ca_digest,
        })
    }
}

/// A digest of every input that changes behaviour: the config text, what it resolved to,
/// and the bytes actually loaded from the files it names (a file read again here could
/// differ from what was parsed).
fn fingerprint(config: &Config, text: &str, upstream: &UpstreamPeer) -> u64 {
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    upstream.peer.address().to_string().hash(&mut h);
    upstream.ca_digest.hash(&mut h);
    for route in &config.routes.0 {
        route.released.secret.expose().hash(&mut h);
    }
    for store in &config.key_stores {
        store.loaded_digest().hash(&mut h);
    }
    h.finish()
}

/// The app as a pingora peer, and a digest of the CA bundle it trusts.
struct UpstreamPeer {
    peer: HttpPeer,
    ca_digest: Option<u64>,
}

/// The app as a pingora peer: address resolved now (at start and on each reload, never
/// per request), TLS settings and timeouts applied.
fn upstream_peer(config: &Config) -> Result<UpstreamPeer, BuildError> {
    let up = &config.upstream;
    let addr = (up.host.as_str(), up.port)
        .to_socket_addrs()
        .map_err(|error| BuildError::Resolve {
            host: up.host.clone(),
            error,
        })?
        .next()
        .ok_or_else(|| BuildError::NoAddress {
            host: up.host.clone(),
        })?;
    let mut peer = HttpPeer::new(addr, up.tls, up.sni.clone());
    let t = &config.timeouts;
    peer.options.connection_timeout = Some(t.upstream_connect);
    peer.options.total_connection_timeout = Some(t.upstream_connect);
    peer.options.read_timeout = Some(t.upstream_read);
    peer.options.write_timeout = Some(t.upstream_write);
    peer.options.idle_timeout = Some(t.upstream_idle);
    peer.options.verify_cert = up.verify;
    peer.options.verify_hostname = up.verify;
    let mut ca_digest = None;
    if let Some(ca_file) = &up.ca_file {
        let (certs, digest) =
            crate::edge::tls::read_certificates(ca_file).map_err(BuildError::UpstreamCa)?;
        let certs: Box<[WrappedX509]> = certs
            .into_iter()
            .map(|der| WrappedX509::new(der.to_vec(), pingora::utils::tls::parse_x509))
            .collect();
        peer.options.ca = Some(Arc::from(certs));
        ca_digest = Some(digest);
    }
    Ok(UpstreamPeer { peer, ca_digest })
}

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A watched file or directory changed.
    FileChange,
    /// `SIGHUP`.
    Signal,
}

/// Why a reload was refused (the previous config stays active).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new config cannot be read (missing, not a small regular file) or is invalid.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// The new config is valid but cannot be put to use.
    #[error(transparent)]
    Build(#[from] BuildError),
}

/// Why a valid config cannot be put to use: what it names does not resolve or load.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The upstream host name does not resolve.
    #[error("upstream host `{host}` does not resolve: {error}")]
    Resolve {
        /// The host.
        host: String,
        /// The resolver's error.
        error: std::io::Error,
    },
    /// The upstream host name resolves to no address.
    #[error("upstream host `{host}` has no address")]
    NoAddress {
        /// The host.
        host: String,
    },
    /// `upstream_tls.ca_file` does not load.
    #[error("upstream_tls.ca_file: {0}")]
    UpstreamCa(PemError),
    /// A `tls` file does not load (the old certificate keeps serving).
    #[error(transparent)]
    Tls(#[from] TlsLoadError),
}

/// Key stores of fetched sources, kept across reloads so a reload never empties the
/// cache (or makes `/readyz` wait for keys again). A JWKS file is re-read instead.
#[derive(Default)]
struct KeyCache(Mutex<Vec<std::sync::Weak<KeyStore>>>);

impl KeyCache {
    fn get(&self, source: &KeySource, refresh: Duration) -> Result<Arc<KeyStore>, KeyError> {
        let mut stores = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        stores.retain(|w| w.strong_count() > 0);
        if !matches!(source, KeySource::JwksFile(_)) {
            if let Some(existing) = stores
                .iter()
                .filter_map(|w| w.upgrade())
                .find(|k| k.source() == source)
            {
                return Ok(existing);
            }
        }
        let store = Arc::new(KeyStore::new(source.clone(), refresh)?);
        stores.push(Arc::downgrade(&store));
        Ok(store)
    }
}

/// The active generation and how to replace it.
pub struct Live {
    current: ArcSwap<Generation>,
    path: PathBuf,
    metrics: Arc<Metrics>,
    reloading: Mutex<()>,
    keys: KeyCache,
    cool_downs: CoolDowns,
}

impl Live {
    /// Loads the config at `path` for the first time.
    pub fn start(path: &Path, metrics: Arc<Metrics>) -> Result<Live, ReloadError> {
        let keys = KeyCache::default();
        let cool_downs = CoolDowns::default();
        let generation = build(path, 1, &keys, &cool_downs)?;
        metrics.config_last_success.set(unix_now());
        Ok(Live {
            current: ArcSwap::from_pointee(generation),
            path: path.to_path_buf(),
            metrics,
            reloading: Mutex::new(()),
            keys,
            cool_downs,
        })
    }

    /// Whether every key store of the active config has keys (`/readyz` waits for it).
    pub fn keys_ready(&self) -> bool {
        self.snapshot()
            .config
            .key_stores
            .iter()
            .all(|k| k.is_ready())
    }

    /// The active snapshot. Load it once per request and keep it: a request never mixes two
    /// configs.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.current.load().snapshot)
    }

    /// Builds a new snapshot and swaps it in, or keeps the current one and reports why.
    /// Returns whether anything changed.
    pub fn reload(&self, trigger: Trigger) -> Result<bool, ReloadError> {
        let _one_at_a_time = self
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let old = self.current.load_full();
        let next = match build(&self.path, old.number + 1, &self.keys, &self.cool_downs) {
            Ok(next) => next,
            Err(e) => {
                self.metrics
                    .config_reloads
                    .with_label_values(&["error"])
                    .inc();
                tracing::error!(
                    trigger = ?trigger,
                    "config reload failed; still serving generation {}:\n{e}",
                    old.number
                );
                return Err(e);
            }
        };
        self.metrics
            .config_reloads
            .with_label_values(&["success"])
            .inc();
        self.metrics.config_last_success.set(unix_now());
        if next.fingerprint == old.fingerprint {
            match trigger {
                Trigger::Signal => {
                    tracing::info!(generation = old.number, "config reloaded: no changes")
                }
                Trigger::FileChange => tracing::debug!("watched files touched; config unchanged"),
            }
            return Ok(false);
        }
        let changes = describe_changes(&old, &next);
        for warning in restart_needed(&old.snapshot.config, &next.snapshot.config) {
            tracing::warn!("{warning}; the running process keeps the old value until restarted");
        }
        let generation = next.number;
        self.current.store(Arc::new(next));
        tracing::info!(generation, trigger = ?trigger, changes = %changes, "config reloaded");
        Ok(true)
    }

    /// The config file and every secret file of the active snapshot.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let snapshot = self.snapshot();
        let mut files = vec![self.path.clone()];
        files.extend(snapshot.config.secret_files.iter().cloned());
        files.extend(snapshot.config.key_files.iter().cloned());
        files.extend(snapshot.config.upstream.ca_file.iter().cloned());
        if let Some(tls) = &snapshot.config.tls {
            files.push(tls.cert_file.clone());
            files.push(tls.key_file.clone());
            files.extend(tls.client_ca_file.iter().cloned());
        }
        files
    }
}

fn build(
    path: &Path,
    number: u64,
    keys: &KeyCache,
    cool_downs: &CoolDowns,
) -> Result<Generation, ReloadError> {
    let text = Config::read(path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let provider = |source: &KeySource, refresh: Duration| keys.get(source, refresh);
    let options = LoadOptions {
        key_stores: &provider,
        ..LoadOptions::default()
    };
    let config = Config::parse(&text, &path.display().to_string(), base, &options)?;
    Ok(Generation::build(config, &text, number, cool_downs)?)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Settings a reload cannot apply to a running process.
fn restart_needed(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if old.listen != new.listen {
        out.push(format!(
            "`listen` changed from {} to {}: needs a restart",
            old.listen, new.listen
        ));
    }
    if old.admin_listen != new.admin_listen {
        out.push(format!(
            "`admin.listen` changed from {} to {}: needs a restart",
            old.admin_listen, new.admin_listen
        ));
    }
    if old.workers != new.workers {
        out.push(format!(
            "`workers` changed from {} to {}: needs a restart",
            old.workers, new.workers
        ));
    }
    if old.tls.is_some() != new.tls.is_some() {
        out.push("`tls` added or removed (HTTPS on or off): needs a restart".to_string());
    }
    if old.limits != new.limits {
        out.push("`limits` changed: needs a restart".to_string());
    }
    if old.upgrade_sock != new.upgrade_sock {
        out.push("`upgrade_sock` changed: needs a restart".to_string());
    }
    if old.upstream_keepalive != new.upstream_keepalive {
        out.push(format!(
            "`upstream_keepalive` changed from {} to {}: needs a restart",
            old.upstream_keepalive, new.upstream_keepalive
        ));
    }
    if old.timeouts.shutdown_grace != new.timeouts.shutdown_grace {
        out.push("`timeouts.shutdown_grace` changed: needs a restart".to_string());
    }
    out
}

/// A one-line, secret-free summary of what a reload changed.
fn describe_changes(old_generation: &Generation, new_generation: &Generation) -> String {
    let (old, new) = (
        &old_generation.snapshot.config,
        &new_generation.snapshot.config,
    );
    let mut parts = Vec::new();
    let tls_digest = |g: &Generation| g.tls.as_ref().map(|t| t.digest);
    if tls_digest(old_generation) != tls_digest(new_generation) {
        parts.push("TLS certificate, key or client CA changed".to_string());
    }
    if old_generation.ca_digest != new_generation.ca_digest {
        parts.push("upstream CA bundle changed".to_string());
    }
    let key_digests =
        |c: &Config| -> Vec<u64> { c.key_stores.iter().map(|k| k.loaded_digest()).collect() };
    if key_digests(old) != key_digests(new) {
        parts.push("assertion keys changed".to_string());
    }
    if old.upstream != new.upstream {
        parts.push(format!(
            "upstream {} -> {}",
            old.upstream.url, new.upstream.url
        ));
    }
    let names = |c: &Config| {
        c.routes
            .0
            .iter()
            .map(|r| r.name.clone())
            .collect::<BTreeSet<_>>()
    };
    let (before, after) = (names(old), names(new));
    let added: Vec<_> = after.difference(&before).cloned().collect();
    let removed: Vec<_> = before.difference(&after).cloned().collect();
    if !added.is_empty() {
        parts.push(format!("routes added: {}", added.join(", ")));
    }
    if !removed.is_empty() {
        parts.push(format!("routes removed: {}", removed.join(", ")));
    }
    let mut rotated = BTreeSet::new();
    for route in &new.routes.0 {
        let Some(prev) = old.routes.0.iter().find(|r| r.name == route.name) else {
            continue;
        };
        let (a, b) = (&prev.released, &route.released);
        if a.secret != b.secret {
            rotated.insert(match &b.secret_source {
                SecretSource::File(p) => format!("file {}", p.display()),
                SecretSource::Env(n) => format!("env {n}"),
            });
        }
        let matcher = |r: &crate::request::routes::Route| {
            (
                r.host.clone(),
                r.path.as_ref().map(|p| p.as_str().to_string()),
            )
        };
        if matcher(prev) != matcher(route)
            || a.account_id != b.account_id
            || a.api_url != b.api_url
            || a.timeout != b.timeout
            || a.cooldown != b.cooldown
            || format!("{:?}", prev.identity) != format!("{:?}", route.identity)
            || prev.insert != route.insert
        {
            parts.push(format!("route {} changed", route.name));
        }
    }
    if !rotated.is_empty() {
        parts.push(format!(
            "secret rotated ({})",
            rotated.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    if old.trusted_proxies != new.trusted_proxies {
        parts.push("trusted_proxies changed".into());
    }
    if old.identity_headers.stripped() != new.identity_headers.stripped() {
        parts.push("strip_headers changed".into());
    }
    if old.embed.tags.names() != new.embed.tags.names()
        || old.embed.memory_limit != new.embed.memory_limit
        || old.embed.client != new.embed.client
        || old.embed.insert != new.embed.insert
    {
        parts.push("embed changed".into());
    }
    if old.timeouts != new.timeouts {
        parts.push("timeouts changed".into());
    }
    if parts.is_empty() {
        "formatting only".into()
    } else {
        parts.join("; ")
    }
}

impl Snapshots for Live {
    fn snapshot(&self) -> Arc<Snapshot> {
        Live::snapshot(self)
    }
}

impl ConnectionSettings for Live {
    fn tls(&self) -> Option<Arc<TlsMaterial>> {
        self.current.load().tls.clone()
    }

    fn client_header(&self) -> Duration {
        self.current.load().snapshot.config.timeouts.client_header
    }
}

/// Handle to the reload thread: send [`Trigger`]s (the SIGHUP handler does).
#[derive(Clone)]
pub struct Reloader {
    tx: Sender<Trigger>,
}

impl Reloader {
    /// Asks for a reload; never blocks.
    pub fn trigger(&self, trigger: Trigger) {
        let _ = self.tx.send(trigger);
    }
}

/// Starts watching the config and secret files and the thread that reloads on changes or
/// on [`Reloader::trigger`].
pub fn spawn_reloader(live: Arc<Live>) -> Result<Reloader, notify::Error> {
    let (tx, rx) = mpsc::channel::<Trigger>();
    let events_tx = tx.clone();
    // The event callback reads the watch set without a lock: notify's watch() and unwatch()
    // wait for its event thread, which may be inside this callback at that moment, so a
    // lock shared by the two would deadlock hot reload without a word.
    let shared = Arc::new(ArcSwap::from_pointee(WatchSet::default()));
    let filter = Arc::clone(&shared);
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if !event.kind.is_access() && filter.load().is_relevant(&event.paths) {
            let _ = events_tx.send(Trigger::FileChange);
        }
    })?;
    let mut watching = Watching { watcher, shared };
    watching.follow(&live.watched_files());
    live.metrics.reloader_heartbeat.set(unix_now());

    std::thread::Builder::new()
        .name("config-reloader".into())
        .spawn(move || {
            let metrics = Arc::clone(&live.metrics);
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                reload_loop(&live, &rx, &mut watching)
            }));
            let why = match outcome {
                Ok(()) => "its trigger channel closed".to_string(),
                Err(panic) => panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into()),
            };
            // The heartbeat metric goes stale from here on, for the alert.
            metrics.reloader_heartbeat.set(0);
            tracing::error!(
                reason = %why,
                "the config reloader stopped: config and secret changes are no longer picked up until a restart"
            );
        })
        .map_err(|e| notify::Error::generic(&e.to_string()))?;
    Ok(Reloader { tx })
}

/// How often the reloader proves it is alive when nothing happens.
const HEARTBEAT: Duration = Duration::from_secs(5);

fn reload_loop(live: &Live, rx: &Receiver<Trigger>, watching: &mut Watching) {
    loop {
        live.metrics.reloader_heartbeat.set(unix_now());
        let mut trigger = match rx.recv_timeout(HEARTBEAT) {
            Ok(t) => t,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        // Collapse a burst into one reload: wait for DEBOUNCE of quiet, at most DEBOUNCE_MAX.
        let burst_started = Instant::now();
        loop {
            match rx.recv_timeout(DEBOUNCE) {
                Ok(t) => {
                    if t == Trigger::Signal {
                        trigger = Trigger::Signal;
                    }
                    if burst_started.elapsed() >= DEBOUNCE_MAX {
                        break;
                    }
                }
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        let _ = live.reload(trigger);
        // A new config may name new secret files (or drop some): follow them.
        watching.follow(&live.watched_files());
    }
}

/// The watcher and the set its callback filters on; owned by the reloader thread.
struct Watching {
    watcher: notify::RecommendedWatcher,
    shared: Arc<ArcSwap<WatchSet>>,
}

impl Watching {
    /// Watches the directories of `files` (and only those). The callback sees the new set
    /// before the new directories are watched, so no first event is filtered out.
    fn follow(&mut self, files: &[PathBuf]) {
        let old = self.shared.load_full();
        let next = WatchSet::of(files);
        if next == *old {
            return;
        }
        self.shared.store(Arc::new(next.clone()));
        for gone in old.dirs.difference(&next.dirs) {
            let _ = self.watcher.unwatch(gone);
        }
        for new in next.dirs.difference(&old.dirs) {
            if let Err(e) = self.watcher.watch(new, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %new.display(), error = %e, "cannot watch directory; reload with SIGHUP instead");
            }
        }
    }
}

/// Which directories are watched and which file names in them matter.
#[derive(Default, Clone, PartialEq, Eq)]
struct WatchSet {
    dirs: BTreeSet<PathBuf>,
    files: BTreeSet<PathBuf>,
}

impl WatchSet {
    fn of(files: &[PathBuf]) -> Self {
        let files: BTreeSet<PathBuf> = files.iter().map(|f| absolute(f)).collect();
        let dirs = files
            .iter()
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .collect();
        Self { dirs, files }
    }

    /// An event matters if it touches a watched file, or a `..`-prefixed entry next to one
    /// (the `..data` symlink and timestamped directories of a Kubernetes volume).
    fn is_relevant(&self, paths: &[PathBuf]) -> bool {
        paths.iter().any(|p| {
            self.files.contains(p)
                || (p.parent().is_some_and(|d| self.dirs.contains(d))
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("..")))
        })
    }
}

fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    }
}

/// Keeps every JWKS URL of the active config fresh: fetched at start (so `/readyz` can turn
/// ready), then every `refresh`, and sooner again after a failure.
pub struct KeyRefresher {
    live: Arc<Live>,
    http: reqwest::Client,
}

impl KeyRefresher {
    /// A refresher for `live`'s key stores using `http`.
    pub fn new(live: Arc<Live>, http: reqwest::Client) -> Self {
        Self { live, http }
    }
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for KeyRefresher {
    async fn start(&self, _shutdown: pingora::server::ShutdownWatch) {
        loop {
            let stores = self.live.snapshot().config.key_stores.clone();
            for store in stores.iter().filter(|s| s.refresh_due()) {
                let _ = store.refresh(&self.http).await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generation_that_cannot_be_built_names_the_key_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), "s3cret\n").unwrap();
        std::fs::write(dir.path().join("ca.pem"), "").unwrap();
        let config = dir.path().join("config.yaml");
        std::fs::write(
            &config,
            "upstream: https://127.0.0.1:3000\nreleased: { account_id: a, shared_secret_file: secret }\nidentity: { preset: oauth2-proxy }\nupstream_tls: { ca_file: ca.pem }\n",
        )
        .unwrap();
        let keys = KeyCache::default();
        let cool_downs = CoolDowns::default();
        let Err(e) = build(&config, 1, &keys, &cool_downs) else {
            panic!("an empty CA bundle was accepted");
        };
        assert!(
            matches!(
                e,
                ReloadError::Build(BuildError::UpstreamCa(PemError::NoCertificate { .. }))
            ),
            "{e:?}"
        );
        let ca = dir.path().join("ca.pem");
        assert_eq!(
            e.to_string(),
            format!(
                "upstream_tls.ca_file: {} holds no certificate",
                ca.display()
            )
        );
        let Err(e) = build(&dir.path().join("gone.yaml"), 1, &keys, &cool_downs) else {
            panic!("a missing config file was read");
        };
        assert!(matches!(e, ReloadError::Config(_)), "{e:?}");
        assert!(e.to_string().contains("cannot read the config file"), "{e}");
    }
}
