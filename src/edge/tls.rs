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

use crate::config::Tls;
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

fn read(path: &Path, what: &str, h: &mut DefaultHasher) -> Result<Vec<u8>, String> {
    let bytes = crate::config::files::read_bounded(path, crate::config::files::MAX_PEM_BYTES)
        .map_err(|e| format!("cannot read {what} {e}"))?;
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
pub fn load(tls: &Tls) -> Result<TlsMaterial, String> {
    crate::install_crypto_provider();
    let mut h = DefaultHasher::new();
    let chain = certificates(
        &read(&tls.cert_file, "tls.cert_file", &mut h)?,
        &tls.cert_file,
    )?;
    let key_bytes = read(&tls.key_file, "tls.key_file", &mut h)?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes)
        .map_err(|e| format!("{} holds no PEM private key: {e}", tls.key_file.display()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("{}: unusable private key: {e}", tls.key_file.display()))?;
    let key = CertifiedKey::new(chain, signing);
    key.keys_match().map_err(|e| {
        format!(
            "{} does not match the certificate in {}: {e}",
            tls.key_file.display(),
            tls.cert_file.display()
        )
    })?;
    let client_verifier = match &tls.client_ca_file {
        None => None,
        Some(path) => Some(client_verifier(
            &read(path, "tls.client_ca_file", &mut h)?,
            path,
        )?),
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

/// The DNS names of a certificate: its DNS subject alternative names, else its CN.
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let sans: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if !sans.is_empty() {
        return sans;
    }
    cert.subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .map(str::to_ascii_lowercase)
        .collect()
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
