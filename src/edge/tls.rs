//! HTTPS on `listen` (the `tls` block): the certificate and key, loaded with each snapshot
//! (so a rotated pair, a Kubernetes `..data` swap included, is used for new connections
//! without a restart, and a broken pair keeps the old one), and client certificates,
//! verified against `tls.client_ca_file` and turned into a [`ClientCert`] the trust
//! boundary reads.
//!
//! A connection without a certificate is served (the app may have public pages) but is
//! untrusted; a certificate that does not verify against the CA is refused at the
//! handshake.

use std::any::Any;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use crate::config::{ConfigError, Tls};
use crate::metrics::Metrics;
use crate::ops::live::Live;
use crate::request::trust::ClientCert;

/// What a snapshot loaded from the `tls` block.
pub struct TlsMaterial {
    /// The certificate chain and key served.
    pub key: Arc<CertifiedKey>,
    /// Verifies client certificates (only with `tls.client_ca_file`).
    pub client_verifier: Option<Arc<dyn ClientCertVerifier>>,
    /// A digest of every byte loaded (for reload change detection).
    pub digest: u64,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("client_certificates", &self.client_verifier.is_some())
            .finish_non_exhaustive()
    }
}

/// A `tls` file that does not load or does not fit: the key naming it, that key's line in
/// the config, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} (line {line}): {message}")]
pub struct TlsLoadError {
    /// `tls.cert_file`, `tls.key_file` or `tls.client_ca_file`.
    pub key: &'static str,
    /// Its 1-based line in the config file.
    pub line: usize,
    /// What is wrong, with the file's path.
    pub message: String,
}

impl From<TlsLoadError> for ConfigError {
    fn from(e: TlsLoadError) -> Self {
        ConfigError {
            path: e.key.to_string(),
            line: Some(e.line),
            message: e.message,
        }
    }
}

// A snapshot that cannot load its TLS files fails to build, with this text (`Snapshot::build`
// reports errors as text).
impl From<TlsLoadError> for String {
    fn from(e: TlsLoadError) -> Self {
        e.to_string()
    }
}

fn read(path: &Path, h: &mut DefaultHasher) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    bytes.hash(h);
    Ok(bytes)
}

fn certificates(bytes: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{} is not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(certs)
}

/// Loads and checks the certificate, the key (they must match) and the client CA.
pub fn load(tls: &Tls) -> Result<TlsMaterial, TlsLoadError> {
    crate::install_crypto_provider();
    let at = |key: &'static str, line: usize| move |message| TlsLoadError { key, line, message };
    let cert_error = at("tls.cert_file", tls.lines.cert_file);
    let key_error = at("tls.key_file", tls.lines.key_file);
    let mut h = DefaultHasher::new();
    let chain = read(&tls.cert_file, &mut h)
        .and_then(|bytes| certificates(&bytes, &tls.cert_file))
        .map_err(cert_error)?;
    let key_bytes = read(&tls.key_file, &mut h).map_err(key_error)?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| {
        key_error(format!(
            "{} holds no PEM private key: {e}",
            tls.key_file.display()
        ))
    })?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| {
        key_error(format!(
            "{}: unusable private key: {e}",
            tls.key_file.display()
        ))
    })?;
    let key = CertifiedKey::new(chain, signing);
    key.keys_match().map_err(|e| {
        key_error(format!(
            "{} does not match the certificate in {} (tls.cert_file): {e}",
            tls.key_file.display(),
            tls.cert_file.display()
        ))
    })?;
    let client_verifier = match &tls.client_ca_file {
        Some(path) => Some(
            read(path, &mut h)
                .and_then(|bytes| client_verifier(&bytes, path))
                .map_err(at("tls.client_ca_file", tls.lines.client_ca_file))?,
        ),
        None => None,
    };
    Ok(TlsMaterial {
        key: Arc::new(key),
        client_verifier,
        digest: h.finish(),
    })
}

/// A verifier for certificates signed by the CA bundle in `bytes`; connections without a
/// certificate are let through (untrusted).
pub fn client_verifier(bytes: &[u8], path: &Path) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(bytes, path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: not a CA certificate: {e}", path.display()))?;
    }
    WebPkiClientVerifier::builder(Arc::new(roots))
        .allow_unauthenticated()
        .build()
        .map_err(|e| format!("{}: {e}", path.display()))
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

/// Serves the active snapshot's certificate to every handshake.
pub struct LiveCertificate(pub Arc<Live>);

impl std::fmt::Debug for LiveCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveCertificate")
    }
}

impl ResolvesServerCert for LiveCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.snapshot().tls.as_ref().map(|t| Arc::clone(&t.key))
    }
}

/// Asks for and verifies client certificates with the active snapshot's CA (asks for none
/// when the config has no `tls.client_ca_file`), counting refusals.
pub struct LiveClientVerifier {
    live: Arc<Live>,
    metrics: Arc<Metrics>,
}

impl LiveClientVerifier {
    /// A verifier following `live`.
    pub fn new(live: Arc<Live>, metrics: Arc<Metrics>) -> Self {
        Self { live, metrics }
    }
}

impl std::fmt::Debug for LiveClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveClientVerifier")
    }
}

fn algorithms() -> rustls::crypto::WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

impl ClientCertVerifier for LiveClientVerifier {
    fn offer_client_auth(&self) -> bool {
        let snapshot = self.live.snapshot();
        snapshot
            .tls
            .as_ref()
            .is_some_and(|t| t.client_verifier.is_some())
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The CA can change with a reload; clients with one certificate send it anyway.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let snapshot = self.live.snapshot();
        let verifier = snapshot
            .tls
            .as_ref()
            .and_then(|t| t.client_verifier.as_ref());
        let result = match verifier {
            Some(v) => v.verify_client_cert(end_entity, intermediates, now),
            None => Err(rustls::Error::General(
                "client certificates are not configured".into(),
            )),
        };
        if let Err(e) = &result {
            self.metrics
                .tls_handshakes
                .with_label_values(&["bad_certificate"])
                .inc();
            tracing::info!(error = %e, "client certificate refused");
        }
        result
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

/// After each handshake: counts it and hands the verified client certificate's names to
/// the request path (in the connection's TLS digest).
pub struct Handshakes(pub Arc<Metrics>);

#[async_trait]
impl TlsAccept for Handshakes {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        self.0.tls_handshakes.with_label_values(&["ok"]).inc();
        let der = tls.peer_certificate_der()?;
        Some(Arc::new(ClientCert {
            names: certificate_names(der),
        }))
    }
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
        assert!(material.client_verifier.is_some());
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
            assert!(e.message.contains(message), "{e}");
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
