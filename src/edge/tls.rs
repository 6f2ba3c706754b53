//! HTTPS on `listen` (the `tls` block): the certificate, key and client CA, loaded with
//! each generation of the live config into one rustls server config (so a rotated pair, a Kubernetes `..data`
//! swap included, is used for new connections without a restart, and a broken pair keeps
//! the old one); [`accept`], the handshake of each connection with the config of the
//! generation current when it arrives; [`certificate_names`], what a verified client
//! certificate is called, for the trust boundary; and [`read_certificates`], the one PEM
//! certificate reader (the upstream CA bundle and `explain` use it too).
//!
//! A connection without a certificate is served (the app may have public pages) but is
//! untrusted; a certificate that does not verify against the CA is refused at the
//! handshake.
//!
//! Sessions resume (TLS 1.3 tickets, TLS 1.2 session IDs) only within one generation of
//! material: each distinct set of certificate, key and CA bytes gets a session cache of its
//! own, and a resumed session carries the client certificate that was verified under that
//! same material. After a rotation of `tls.client_ca_file`, a session made under the old CA
//! finds nothing to resume: the client makes a full handshake, and its certificate is
//! verified against the new CA. pingora's TLS listener builds its rustls config itself,
//! with one session cache for the life of the process that no reload can reach, so the
//! proxy port listens in plain TCP and the handshake happens here.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{
    ClientHello, ResolvesServerCert, ServerConfig, ServerSessionMemoryCache, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::config::{ConfigError, Tls};
use crate::metrics::Metrics;
use crate::request::trust::ClientCert;

/// Sessions kept for resumption per generation of material (rustls' default is 256 per
/// config; this one config serves every worker). An entry is a few hundred bytes plus the
/// client's certificate chain.
const SESSION_CACHE_ENTRIES: usize = 1024;
/// The only protocol offered: the head guard and the proxy speak HTTP/1.1.
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// What a snapshot loaded from the `tls` block.
pub struct TlsMaterial {
    /// The rustls config every handshake under this snapshot uses: certificate, key,
    /// client verifier and this material's session cache.
    pub server: Arc<ServerConfig>,
    /// Whether client certificates are asked for (`tls.client_ca_file`).
    pub client_certificates: bool,
    /// A digest of every byte loaded (for reload change detection).
    pub digest: u64,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("client_certificates", &self.client_certificates)
            .finish_non_exhaustive()
    }
}

/// A `tls` file that does not load or does not fit: the key naming it, that key's line in
/// the config, and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{key} (line {line}): {problem}")]
pub struct TlsLoadError {
    /// `tls.cert_file`, `tls.key_file` or `tls.client_ca_file`.
    pub key: &'static str,
    /// Its 1-based line in the config file.
    pub line: usize,
    /// What is wrong, with the file's path (boxed: errors are rare, results small).
    pub problem: Box<TlsFileError>,
}

impl From<TlsLoadError> for ConfigError {
    fn from(e: TlsLoadError) -> Self {
        ConfigError {
            path: e.key.to_string(),
            line: Some(e.line),
            message: e.problem.to_string(),
        }
    }
}

/// What is wrong with one `tls` file, naming it.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    /// It cannot be read, or holds no PEM certificate.
    #[error(transparent)]
    Pem(#[from] PemError),
    /// The key file holds no PEM private key.
    #[error("{} holds no PEM private key: {error}", path.display())]
    NoKey {
        /// The key file.
        path: PathBuf,
        /// What the PEM reader found.
        error: rustls::pki_types::pem::Error,
    },
    /// The key is of a kind rustls cannot sign with.
    #[error("{}: unusable private key: {error}", path.display())]
    UnusableKey {
        /// The key file.
        path: PathBuf,
        /// Why rustls refused it.
        error: rustls::Error,
    },
    /// The key is not the certificate's.
    #[error("{} does not match the certificate in {} (tls.cert_file): {error}", key.display(), cert.display())]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
        /// rustls' verdict.
        error: rustls::Error,
    },
    /// A certificate of the client CA bundle is not a usable trust anchor.
    #[error("{}: not a CA certificate: {error}", path.display())]
    NotCa {
        /// The CA file.
        path: PathBuf,
        /// Why it was refused.
        error: rustls::Error,
    },
    /// No client verifier can be built on the CA bundle.
    #[error("{}: {error}", path.display())]
    Verifier {
        /// The CA file.
        path: PathBuf,
        /// Why the verifier was refused.
        error: rustls::server::VerifierBuilderError,
    },
}

/// A PEM certificate file that does not load: unreadable, not PEM, or without a
/// certificate. Shared by the `tls` files, the upstream CA bundle and `explain`.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// The file cannot be read, or is not a small regular file.
    #[error("cannot read {0}")]
    Read(#[from] crate::config::files::FileError),
    /// The file is not PEM.
    #[error("{} is not PEM: {error}", path.display())]
    NotPem {
        /// The file.
        path: PathBuf,
        /// What the PEM reader found.
        error: rustls::pki_types::pem::Error,
    },
    /// The file holds no certificate.
    #[error("{} holds no certificate", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
}

fn read(path: &Path, h: &mut DefaultHasher) -> Result<Vec<u8>, PemError> {
    let bytes = crate::config::files::read_bounded(path, crate::config::files::MAX_PEM_BYTES)?;
    bytes.hash(h);
    Ok(bytes)
}

/// The certificates of a PEM bundle, `bytes` read from `path`; at least one.
pub fn certificates(bytes: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<_, _>>()
        .map_err(|error| PemError::NotPem {
            path: path.to_path_buf(),
            error,
        })?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Reads the certificates of the PEM bundle at `path` (at least one), and a digest of its
/// bytes for change detection.
pub fn read_certificates(path: &Path) -> Result<(Vec<CertificateDer<'static>>, u64), PemError> {
    let mut h = DefaultHasher::new();
    let certs = certificates(&read(path, &mut h)?, path)?;
    Ok((certs, h.finish()))
}

/// Loads and checks the certificate, the key (they must match) and the client CA, and
/// builds the server config for them.
pub fn load(tls: &Tls) -> Result<TlsMaterial, TlsLoadError> {
    crate::install_crypto_provider();
    let at = |key: &'static str, line: usize| {
        move |problem: TlsFileError| TlsLoadError {
            key,
            line,
            problem: Box::new(problem),
        }
    };
    let cert_error = at("tls.cert_file", tls.lines.cert_file);
    let key_error = at("tls.key_file", tls.lines.key_file);
    let key_file = || tls.key_file.clone();
    let mut h = DefaultHasher::new();
    let chain = read(&tls.cert_file, &mut h)
        .and_then(|bytes| certificates(&bytes, &tls.cert_file))
        .map_err(|e| cert_error(e.into()))?;
    let key_bytes = read(&tls.key_file, &mut h).map_err(|e| key_error(e.into()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|error| {
        key_error(TlsFileError::NoKey {
            path: key_file(),
            error,
        })
    })?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|error| {
        key_error(TlsFileError::UnusableKey {
            path: key_file(),
            error,
        })
    })?;
    let key = CertifiedKey::new(chain, signing);
    key.keys_match().map_err(|error| {
        key_error(TlsFileError::KeyMismatch {
            key: key_file(),
            cert: tls.cert_file.clone(),
            error,
        })
    })?;
    let verifier = match &tls.client_ca_file {
        Some(path) => Some(
            read(path, &mut h)
                .and_then(|bytes| certificates(&bytes, path))
                .map_err(TlsFileError::from)
                .and_then(|certs| client_verifier(certs, path))
                .map_err(at("tls.client_ca_file", tls.lines.client_ca_file))?,
        ),
        None => None,
    };
    let digest = h.finish();
    let builder = ServerConfig::builder_with_protocol_versions(&[
        &rustls::version::TLS13,
        &rustls::version::TLS12,
    ]);
    let builder = match &verifier {
        Some(v) => builder.with_client_cert_verifier(Arc::clone(v)),
        None => builder.with_no_client_auth(),
    };
    let mut server = builder.with_cert_resolver(Arc::new(FixedCertificate(Arc::new(key))));
    server.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    server.session_storage = sessions_for(digest);
    Ok(TlsMaterial {
        server: Arc::new(server),
        client_certificates: verifier.is_some(),
        digest,
    })
}

/// The session cache of the material with `digest`: the one already in use when a reload
/// left the material as it was (sessions survive config changes elsewhere), a new one
/// when anything in it changed (no session outlives the CA or key it was made under).
fn sessions_for(digest: u64) -> Arc<ServerSessionMemoryCache> {
    static CURRENT: Mutex<Option<(u64, Arc<ServerSessionMemoryCache>)>> = Mutex::new(None);
    let mut current = CURRENT.lock().unwrap_or_else(PoisonError::into_inner);
    match current.as_ref() {
        Some((d, cache)) if *d == digest => Arc::clone(cache),
        _ => {
            let cache = ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
            *current = Some((digest, Arc::clone(&cache)));
            cache
        }
    }
}

/// A verifier for certificates signed by the CA bundle `certs` (read from `path`);
/// connections without a certificate are let through (untrusted).
pub fn client_verifier(
    certs: Vec<CertificateDer<'static>>,
    path: &Path,
) -> Result<Arc<dyn ClientCertVerifier>, TlsFileError> {
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|error| TlsFileError::NotCa {
            path: path.to_path_buf(),
            error,
        })?;
    }
    WebPkiClientVerifier::builder(Arc::new(roots))
        .allow_unauthenticated()
        .build()
        .map_err(|error| TlsFileError::Verifier {
            path: path.to_path_buf(),
            error,
        })
}

/// The DNS names a client certificate is trusted by (lowercase, no trailing dot): its DNS
/// subject alternative names; its CN only when it has no subject alternative name of any
/// kind (RFC 6125 §6.4.4: a certificate that names itself by URI, IP address or email
/// must not be taken for the host in its CN). A certificate that does not parse, or whose
/// SAN extension does not, has none.
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let normal = |name: &str| name.trim_end_matches('.').to_ascii_lowercase();
    match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(normal(d)),
                _ => None,
            })
            .collect(),
        Ok(None) => cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .map(normal)
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Serves one certificate to every handshake, whatever the SNI.
#[derive(Debug)]
struct FixedCertificate(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

/// Runs the TLS handshake of a new connection on `listen` with `material`, within `limit`,
/// counting it. Returns the encrypted stream and its verified client certificate, or `None`
/// when the handshake failed (logged; a refused certificate at info, the rest at debug:
/// scanners and impatient clients are not an operator matter).
pub async fn accept(
    material: &TlsMaterial,
    stream: Stream,
    limit: Duration,
    metrics: &Metrics,
) -> Option<(Stream, Option<ClientCert>)> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&material.server));
    let tls = match tokio::time::timeout(limit, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            let rustls_error = e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>());
            if let Some(e @ rustls::Error::InvalidCertificate(_)) = rustls_error {
                metrics
                    .tls_handshakes
                    .with_label_values(&["bad_certificate"])
                    .inc();
                tracing::info!(error = %e, "client certificate refused");
            } else {
                tracing::debug!(error = %e, "TLS handshake failed");
            }
            return None;
        }
        Err(_elapsed) => {
            tracing::debug!(
                limit_ms = limit.as_millis() as u64,
                "TLS handshake not done in time"
            );
            return None;
        }
    };
    metrics.tls_handshakes.with_label_values(&["ok"]).inc();
    let connection = TlsConnection::new(tls);
    let cert = connection.leaf().map(|der| ClientCert {
        names: certificate_names(der),
    });
    Some((Box::new(connection), cert))
}

/// A connection on `listen` after its handshake, as pingora's HTTP layer reads it.
pub struct TlsConnection {
    inner: tokio_rustls::server::TlsStream<Stream>,
    digest: Arc<SslDigest>,
}

impl TlsConnection {
    fn new(inner: tokio_rustls::server::TlsStream<Stream>) -> Self {
        let session = inner.get_ref().1;
        let name = |s: Option<&'static str>| s.unwrap_or_default();
        let cert_digest = session
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|leaf| Sha256::digest(leaf).to_vec())
            .unwrap_or_default();
        let digest = SslDigest::new(
            name(
                session
                    .negotiated_cipher_suite()
                    .and_then(|s| s.suite().as_str()),
            ),
            name(session.protocol_version().and_then(|v| v.as_str())),
            None,
            None,
            cert_digest,
        );
        Self {
            inner,
            digest: Arc::new(digest),
        }
    }

    /// The client's certificate, verified under this connection's material (in a full
    /// handshake, or in the one its resumed session started with).
    fn leaf(&self) -> Option<&[u8]> {
        let certs = self.inner.get_ref().1.peer_certificates()?;
        certs.first().map(|c| c.as_ref())
    }

    fn l4(&self) -> &Stream {
        self.inner.get_ref().0
    }
}

impl std::fmt::Debug for TlsConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnection")
            .field("l4", self.l4())
            .finish_non_exhaustive()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    // A chunk's size line, data and CRLF then go into one TLS record instead of three.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for TlsConnection {
    async fn shutdown(&mut self) {
        // close_notify, then the TCP write side.
        if let Err(e) = AsyncWriteExt::shutdown(&mut self.inner).await {
            tracing::debug!(error = %e, "TLS shutdown failed");
        }
    }
}

impl UniqueID for TlsConnection {
    fn id(&self) -> UniqueIDType {
        self.l4().id()
    }
}

impl Ssl for TlsConnection {
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        Some(Arc::clone(&self.digest))
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        (self.inner.get_ref().1.alpn_protocol() == Some(ALPN_HTTP1)).then_some(ALPN::H1)
    }
}

impl GetTimingDigest for TlsConnection {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.l4().get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.l4().get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.l4().get_write_pending_time()
    }
}

impl GetProxyDigest for TlsConnection {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.l4().get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.get_mut().0.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for TlsConnection {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.l4().get_socket_digest()
    }

    fn set_socket_digest(&mut self, socket_digest: SocketDigest) {
        self.inner.get_mut().0.set_socket_digest(socket_digest);
    }
}

#[async_trait]
impl Peek for TlsConnection {
    // Peeking would see ciphertext; pingora falls back to reading.
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    fn cert(cn: &str, sans: Vec<SanType>) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn dns(name: &str) -> SanType {
        SanType::DnsName(name.try_into().unwrap())
    }

    #[test]
    fn a_file_that_does_not_load_is_reported_at_its_key_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let pem = |names: &[&str]| {
            let key = KeyPair::generate().unwrap();
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let cert = CertificateParams::new(names)
                .unwrap()
                .self_signed(&key)
                .unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (cert, key) = pem(&["localhost"]);
        let (_, other_key) = pem(&["localhost"]);
        /// The certificate, key and CA files, by name and content.
        type Files<'a> = [(&'a str, &'a str); 3];
        let tls = |files: Files| {
            for (name, text) in files {
                std::fs::write(dir.path().join(name), text).unwrap();
            }
            Tls {
                cert_file: dir.path().join("tls.crt"),
                key_file: dir.path().join("tls.key"),
                client_ca_file: Some(dir.path().join("ca.pem")),
                trusted_client_names: Vec::new(),
                lines: crate::config::TlsLines {
                    cert_file: 11,
                    key_file: 12,
                    client_ca_file: 13,
                },
            }
        };
        let ok = [("tls.crt", &*cert), ("tls.key", &*key), ("ca.pem", &*cert)];
        let material = load(&tls(ok)).unwrap();
        assert!(material.client_certificates);
        let cases: &[(Files, &str, usize, &str)] = &[
            (
                [ok[0], ("tls.key", &other_key), ok[2]],
                "tls.key_file",
                12,
                "does not match the certificate",
            ),
            (
                [ok[0], ("tls.key", "junk"), ok[2]],
                "tls.key_file",
                12,
                "no PEM private key",
            ),
            (
                [("tls.crt", ""), ok[1], ok[2]],
                "tls.cert_file",
                11,
                "holds no certificate",
            ),
            (
                [ok[0], ok[1], ("ca.pem", "junk")],
                "tls.client_ca_file",
                13,
                "holds no certificate",
            ),
        ];
        for (files, key, line, message) in cases {
            let e = load(&tls(*files)).unwrap_err();
            assert_eq!((e.key, e.line), (*key, *line), "{e}");
            assert!(e.problem.to_string().contains(message), "{e}");
        }
    }

    #[test]
    fn the_cn_names_a_certificate_only_when_it_has_no_subject_alternative_name() {
        let gw = "gw.example.internal";
        let uri = SanType::URI("spiffe://example.internal/gw".try_into().unwrap());
        let ip = SanType::IpAddress("10.0.0.7".parse().unwrap());
        let email = SanType::Rfc822Name("gw@example.internal".try_into().unwrap());
        let cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
            ("no SAN: the CN", cert(gw, vec![]), vec![gw]),
            (
                "a DNS SAN: it, not the CN",
                cert(gw, vec![dns("a.example")]),
                vec!["a.example"],
            ),
            (
                "only a URI SAN: nothing",
                cert(gw, vec![uri.clone()]),
                vec![],
            ),
            (
                "only an IP SAN: nothing",
                cert(gw, vec![ip.clone()]),
                vec![],
            ),
            ("only an email SAN: nothing", cert(gw, vec![email]), vec![]),
            (
                "DNS beside URI and IP: the DNS names",
                cert(gw, vec![uri, dns("b.example"), ip]),
                vec!["b.example"],
            ),
            (
                "case and a trailing dot do not count",
                cert("GW.Example.", vec![dns("A.Example."), dns("c.example")]),
                vec!["a.example", "c.example"],
            ),
            (
                "no SAN, upper-case CN",
                cert("GW.Example.", vec![]),
                vec!["gw.example"],
            ),
            ("not a certificate", b"garbage".to_vec(), vec![]),
        ];
        for (why, der, want) in cases {
            assert_eq!(certificate_names(&der), want, "{why}");
        }
    }
}
