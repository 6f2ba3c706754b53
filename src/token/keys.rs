//! Public keys for verifying gateway assertions: a JWKS fetched from a URL (refreshed in
//! the background and on an unknown `kid`, rate-limited), a JWKS file (re-read on every
//! config reload, for air-gapped sites), or AWS ALB's one-PEM-per-`kid` URL template.
//! Symmetric (HMAC) keys are never loaded: a gateway assertion is always verified with a
//! public key.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::config::files;

/// Largest key document accepted.
const MAX_KEY_DOCUMENT: usize = 1024 * 1024;
/// Fewest seconds between two fetches caused by unknown `kid`s (a flood of bogus `kid`s
/// must not hammer the key server).
pub const MIN_REFETCH: Duration = Duration::from_secs(10);
/// Most keys kept from a per-`kid` URL.
const MAX_KID_KEYS: usize = 64;
/// Bound on one key fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the keys come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeySource {
    /// A JWKS document at this URL.
    JwksUrl(String),
    /// A JWKS document in this file.
    JwksFile(PathBuf),
    /// One PEM public key per `kid` at this URL template (`{kid}` is replaced): AWS ALB.
    KeyUrl(String),
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::JwksUrl(u) => write!(f, "JWKS {u}"),
            KeySource::JwksFile(p) => write!(f, "JWKS file {}", p.display()),
            KeySource::KeyUrl(u) => write!(f, "per-kid keys {u}"),
        }
    }
}

/// The kind of a public key, which decides the algorithms it may verify (so an RSA key
/// can never be used with an EC algorithm or as an HMAC secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFamily {
    /// ECDSA P-256.
    EcP256,
    /// ECDSA P-384.
    EcP384,
    /// RSA.
    Rsa,
    /// Ed25519.
    Ed25519,
}

impl KeyFamily {
    /// Whether a key of this family may verify `alg`.
    pub fn allows(self, alg: Algorithm) -> bool {
        matches!(
            (self, alg),
            (KeyFamily::EcP256, Algorithm::ES256)
                | (KeyFamily::EcP384, Algorithm::ES384)
                | (KeyFamily::Ed25519, Algorithm::EdDSA)
                | (
                    KeyFamily::Rsa,
                    Algorithm::RS256
                        | Algorithm::RS384
                        | Algorithm::RS512
                        | Algorithm::PS256
                        | Algorithm::PS384
                        | Algorithm::PS512
                )
        )
    }
}

/// One usable public key.
#[derive(Clone)]
pub struct PublicKey {
    /// The key material.
    pub key: DecodingKey,
    /// Its family.
    pub family: KeyFamily,
    /// The `alg` the key declares, if any (must then match the token's).
    pub alg: Option<Algorithm>,
}

/// Why keys could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Fetching failed.
    #[error("fetching keys failed: {0}")]
    Fetch(String),
    /// The document is not a usable key set.
    #[error("unusable key document: {0}")]
    Parse(String),
}

/// Parses a JWKS document, keeping the public keys it can use (with or without `kid`).
pub fn parse_jwks(bytes: &[u8]) -> Result<HashMap<String, PublicKey>, KeyError> {
    let set: JwkSet =
        serde_json::from_slice(bytes).map_err(|e| KeyError::Parse(format!("not a JWKS: {e}")))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        if let Some(key) = public_key(jwk) {
            keys.insert(jwk.common.key_id.clone().unwrap_or_default(), key);
        }
    }
    if keys.is_empty() {
        return Err(KeyError::Parse(
            "no usable public key (EC P-256/P-384, RSA or Ed25519)".into(),
        ));
    }
    Ok(keys)
}

fn public_key(jwk: &Jwk) -> Option<PublicKey> {
    let family = match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => KeyFamily::EcP256,
            EllipticCurve::P384 => KeyFamily::EcP384,
            _ => return None,
        },
        AlgorithmParameters::RSA(_) => KeyFamily::Rsa,
        AlgorithmParameters::OctetKeyPair(_) => KeyFamily::Ed25519,
        // Symmetric keys have no place in a public key set.
        AlgorithmParameters::OctetKey(_) => return None,
    };
    let alg = jwk
        .common
        .key_algorithm
        .and_then(|a| a.to_string().parse::<Algorithm>().ok());
    Some(PublicKey {
        key: DecodingKey::from_jwk(jwk).ok()?,
        family,
        alg,
    })
}

/// Parses one PEM public key (AWS ALB publishes EC P-256 keys this way).
pub fn parse_pem(bytes: &[u8]) -> Result<PublicKey, KeyError> {
    if let Ok(key) = DecodingKey::from_ec_pem(bytes) {
        // ALB keys are P-256; a P-384 key would fail ES256 verification, never pass it.
        return Ok(PublicKey {
            key,
            family: KeyFamily::EcP256,
            alg: Some(Algorithm::ES256),
        });
    }
    DecodingKey::from_rsa_pem(bytes)
        .map(|key| PublicKey {
            key,
            family: KeyFamily::Rsa,
            alg: None,
        })
        .map_err(|e| KeyError::Parse(format!("not a PEM public key: {e}")))
}

/// The keys of one source, shared by every request and kept across config reloads.
pub struct KeyStore {
    source: KeySource,
    /// A digest of the file bytes the keys were parsed from (0 for fetched keys).
    loaded_digest: u64,
    keys: ArcSwap<HashMap<String, PublicKey>>,
    loaded: AtomicBool,
    refresh_every: Duration,
    schedule: Mutex<Schedule>,
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("source", &self.source)
            .field("keys", &self.len())
            .field("loaded", &self.is_ready())
            .finish()
    }
}

struct Schedule {
    next_refresh: Instant,
    last_on_demand: Option<Instant>,
    failures: u32,
}

/// What a key lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The key was there.
    Found,
    /// Not there, and a fetch was not allowed or did not help.
    Unknown,
    /// Keys could not be fetched in time.
    Unavailable,
}

impl KeyStore {
    /// A store for `source`. A file is read now; URLs are fetched by [`KeyStore::refresh`].
    pub fn new(source: KeySource, refresh_every: Duration) -> Result<KeyStore, KeyError> {
        let mut store = KeyStore::unloaded(source, refresh_every);
        match &store.source {
            KeySource::JwksFile(path) => {
                let bytes = files::read_bounded(path, MAX_KEY_DOCUMENT as u64)
                    .map_err(|e| KeyError::Fetch(format!("cannot read {e}")))?;
                store.keys.store(Arc::new(parse_jwks(&bytes)?));
                store.loaded.store(true, Ordering::Release);
                let mut h = std::collections::hash_map::DefaultHasher::new();
                std::hash::Hash::hash(&bytes, &mut h);
                store.loaded_digest = std::hash::Hasher::finish(&h);
            }
            // Keys are fetched one by one as `kid`s appear: nothing to wait for.
            KeySource::KeyUrl(_) => store.loaded.store(true, Ordering::Release),
            KeySource::JwksUrl(_) => {}
        }
        Ok(store)
    }

    /// A store that loads nothing (for `check --skip-secrets`).
    pub fn unloaded(source: KeySource, refresh_every: Duration) -> KeyStore {
        KeyStore {
            loaded_digest: 0,
            keys: ArcSwap::from_pointee(HashMap::new()),
            loaded: AtomicBool::new(false),
            refresh_every,
            schedule: Mutex::new(Schedule {
                next_refresh: Instant::now(),
                last_on_demand: None,
                failures: 0,
            }),
            fetching: tokio::sync::Mutex::new(()),
            source,
        }
    }

    /// A digest of the file bytes the keys were parsed from (0 for fetched keys), so a
    /// reload sees exactly what changed in what was loaded.
    pub fn loaded_digest(&self) -> u64 {
        self.loaded_digest
    }

    /// Where the keys come from.
    pub fn source(&self) -> &KeySource {
        &self.source
    }

    /// Whether keys are loaded (`/readyz` waits for this).
    pub fn is_ready(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// The cached key for `kid`, without any I/O.
    pub fn cached(&self, kid: &str) -> Option<PublicKey> {
        self.keys.load().get(kid).cloned()
    }

    /// Number of cached keys.
    pub fn len(&self) -> usize {
        self.keys.load().len()
    }

    /// Whether no key is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a background refresh is due.
    pub fn refresh_due(&self) -> bool {
        matches!(self.source, KeySource::JwksUrl(_))
            && Instant::now()
                >= self
                    .schedule
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .next_refresh
    }

    /// Fetches the key set now (scheduled refresh); on failure the previous keys stay.
    pub async fn refresh(&self, http: &reqwest::Client) -> Result<(), KeyError> {
        let KeySource::JwksUrl(url) = &self.source else {
            return Ok(());
        };
        let _single_flight = self.fetching.lock().await;
        let result = fetch(http, url).await.and_then(|body| parse_jwks(&body));
        let mut schedule = self.schedule.lock().unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(keys) => {
                let count = keys.len();
                self.keys.store(Arc::new(keys));
                if !self.loaded.swap(true, Ordering::AcqRel) {
                    tracing::info!(source = %self.source, keys = count, "gateway assertion keys loaded");
                }
                schedule.failures = 0;
                schedule.next_refresh = Instant::now() + self.refresh_every;
                Ok(())
            }
            Err(e) => {
                schedule.failures += 1;
                // Retry soon at first, then back off to the normal interval.
                let backoff = Duration::from_secs(2u64.saturating_pow(schedule.failures.min(8)))
                    .min(self.refresh_every);
                schedule.next_refresh = Instant::now() + backoff;
                tracing::warn!(source = %self.source, error = %e, retry_in_s = backoff.as_secs(), "gateway assertion keys not refreshed; keeping the previous ones");
                Err(e)
            }
        }
    }

    /// Makes sure `kid` is known, fetching (single-flight, at most once per
    /// [`MIN_REFETCH`]) if it is not, and never waiting past `deadline`.
    pub async fn ensure(&self, http: &reqwest::Client, kid: &str, deadline: Instant) -> Lookup {
        if self.cached(kid).is_some() {
            return Lookup::Found;
        }
        if matches!(self.source, KeySource::JwksFile(_)) {
            return Lookup::Unknown;
        }
        let wait = tokio::time::timeout_at(deadline.into(), async {
            let _single_flight = self.fetching.lock().await;
            // Someone else's fetch may have brought it while we waited.
            if self.cached(kid).is_some() {
                return Lookup::Found;
            }
            {
                let mut schedule = self.schedule.lock().unwrap_or_else(PoisonError::into_inner);
                if schedule
                    .last_on_demand
                    .is_some_and(|t| t.elapsed() < MIN_REFETCH)
                {
                    return Lookup::Unknown;
                }
                schedule.last_on_demand = Some(Instant::now());
            }
            match self.fetch_for(http, kid).await {
                Ok(()) if self.cached(kid).is_some() => Lookup::Found,
                Ok(()) => Lookup::Unknown,
                Err(_) => Lookup::Unavailable,
            }
        });
        wait.await.unwrap_or(Lookup::Unavailable)
    }

    async fn fetch_for(&self, http: &reqwest::Client, kid: &str) -> Result<(), KeyError> {
        match &self.source {
            KeySource::JwksUrl(url) => {
                let keys = parse_jwks(&fetch(http, url).await?)?;
                self.keys.store(Arc::new(keys));
                self.loaded.store(true, Ordering::Release);
                Ok(())
            }
            KeySource::KeyUrl(template) => {
                // kids become part of a URL: only plain identifiers are fetched.
                let plain = !kid.is_empty()
                    && kid.len() <= 128
                    && kid
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if !plain {
                    return Ok(());
                }
                let key = parse_pem(&fetch(http, &template.replace("{kid}", kid)).await?)?;
                let mut keys = (**self.keys.load()).clone();
                if keys.len() >= MAX_KID_KEYS {
                    keys.clear();
                }
                keys.insert(kid.to_string(), key);
                self.keys.store(Arc::new(keys));
                Ok(())
            }
            KeySource::JwksFile(_) => Ok(()),
        }
    }
}

async fn fetch(http: &reqwest::Client, url: &str) -> Result<Vec<u8>, KeyError> {
    let mut resp = http
        .get(url)
        .timeout(FETCH_TIMEOUT)
        .send()
        .await
        .map_err(|e| KeyError::Fetch(e.without_url().to_string()))?;
    if !resp.status().is_success() {
        return Err(KeyError::Fetch(format!(
            "HTTP status {}",
            resp.status().as_u16()
        )));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| KeyError::Fetch(e.without_url().to_string()))?
    {
        if body.len() + chunk.len() > MAX_KEY_DOCUMENT {
            return Err(KeyError::Fetch("key document larger than 1 MiB".into()));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EC_JWK: &str = r#"{"kty":"EC","crv":"P-256","kid":"k1","alg":"ES256",
        "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;

    #[test]
    fn jwks_keeps_public_keys_and_drops_symmetric_ones() {
        let doc = format!(
            r#"{{"keys":[{EC_JWK},{{"kty":"oct","kid":"h","k":"c2VjcmV0"}}],"public_cert":"ignored"}}"#
        );
        let keys = parse_jwks(doc.as_bytes()).unwrap();
        assert_eq!(keys.len(), 1);
        let k = &keys["k1"];
        assert_eq!(
            (k.family, k.alg),
            (KeyFamily::EcP256, Some(Algorithm::ES256))
        );
        assert!(parse_jwks(br#"{"keys":[{"kty":"oct","kid":"h","k":"c2VjcmV0"}]}"#).is_err());
        assert!(parse_jwks(b"not json").is_err());
    }

    #[test]
    fn families_only_verify_their_own_algorithms() {
        assert!(KeyFamily::EcP256.allows(Algorithm::ES256));
        assert!(!KeyFamily::EcP256.allows(Algorithm::ES384));
        assert!(!KeyFamily::EcP256.allows(Algorithm::HS256));
        assert!(KeyFamily::Rsa.allows(Algorithm::RS256));
        assert!(!KeyFamily::Rsa.allows(Algorithm::HS256));
        assert!(!KeyFamily::Rsa.allows(Algorithm::ES256));
    }
}
