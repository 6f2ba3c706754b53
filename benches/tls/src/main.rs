//! Server-side CPU time of one TLS handshake, as `released-sidecar` configures rustls for
//! `listen` with `tls.client_ca_file`: a full handshake with a client certificate against
//! a resumed one (TLS 1.3 PSK with (EC)DHE, the only mode rustls resumes with), for an
//! ECDSA P-256 server key and, when `openssl` is installed, an RSA-2048 one. The two sides
//! talk through memory; only the server's calls are timed, with the thread's CPU clock, so
//! the figures hold on a busy machine. Prints the median and the 90th percentile.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::Resumption;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

const ROUNDS: usize = 2000;

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes a timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let key = KeyPair::generate().unwrap();
        let der = params.self_signed(&key).unwrap().der().clone();
        Ca {
            issuer: Issuer::new(params, key),
            der,
        }
    }

    fn leaf(
        &self,
        name: &str,
        usage: ExtendedKeyUsagePurpose,
        key: KeyPair,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let key = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        (vec![cert.der().clone()], key)
    }

    fn roots(&self) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        Arc::new(roots)
    }
}

/// An RSA-2048 key from `openssl`, if it is installed (ring cannot generate RSA keys).
fn rsa_key() -> Option<KeyPair> {
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .ok()?;
    KeyPair::from_pem(std::str::from_utf8(&out.stdout).ok()?).ok()
}

/// Runs one handshake (and the session tickets after it) through memory; returns the
/// server's CPU time in nanoseconds and whether it resumed.
fn handshake(server: &Arc<ServerConfig>, client: &Arc<ClientConfig>) -> (u64, bool) {
    let name = ServerName::try_from("localhost").unwrap();
    let mut c = ClientConnection::new(Arc::clone(client), name).unwrap();
    let mut spent = 0;
    let started = thread_cpu_ns();
    let mut s = ServerConnection::new(Arc::clone(server)).unwrap();
    spent += thread_cpu_ns() - started;
    let mut buf = Vec::new();
    for _ in 0..10 {
        buf.clear();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        let started = thread_cpu_ns();
        let mut rd = &buf[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).unwrap();
            s.process_new_packets().unwrap();
        }
        let mut out = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut out).unwrap();
        }
        spent += thread_cpu_ns() - started;
        let mut rd = &out[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
            c.process_new_packets().unwrap();
        }
        if !s.is_handshaking() && !c.is_handshaking() && !c.wants_write() && out.is_empty() {
            break;
        }
    }
    assert!(!s.is_handshaking() && !c.is_handshaking());
    let resumed = s.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    (spent, resumed)
}

fn measure(server: &Arc<ServerConfig>, client: &Arc<ClientConfig>, resumed: bool) -> (f64, f64) {
    let _ = handshake(server, client);
    let mut times: Vec<u64> = (0..ROUNDS)
        .map(|_| {
            let (ns, was) = handshake(server, client);
            assert_eq!(was, resumed);
            ns
        })
        .collect();
    times.sort_unstable();
    let us = |i: usize| times[i] as f64 / 1000.0;
    (us(ROUNDS / 2), us(ROUNDS * 9 / 10))
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("gateway CA"));
    let (client_chain, client_key) = client_ca.leaf(
        "gw.example",
        ExtendedKeyUsagePurpose::ClientAuth,
        KeyPair::generate().unwrap(),
    );
    let client = |resume: bool| {
        let mut config = ClientConfig::builder()
            .with_root_certificates(server_ca.roots())
            .with_client_auth_cert(client_chain.clone(), client_key.clone_key())
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        if !resume {
            config.resumption = Resumption::disabled();
        }
        Arc::new(config)
    };
    let mut keys = vec![("ECDSA P-256", KeyPair::generate().unwrap())];
    match rsa_key() {
        Some(k) => keys.push(("RSA 2048", k)),
        None => eprintln!("no openssl: RSA skipped"),
    }
    println!(
        "server CPU per handshake, client certificate verified (ECDSA P-256), {ROUNDS} rounds"
    );
    println!("| server key | full: median | p90 | resumed: median | p90 |");
    println!("| --- | --- | --- | --- | --- |");
    for (what, key) in keys {
        let (chain, key) = server_ca.leaf("localhost", ExtendedKeyUsagePurpose::ServerAuth, key);
        let verifier = WebPkiClientVerifier::builder(client_ca.roots())
            .allow_unauthenticated()
            .build()
            .unwrap();
        let mut server = ServerConfig::builder_with_protocol_versions(&[
            &rustls::version::TLS13,
            &rustls::version::TLS12,
        ])
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        server.session_storage = ServerSessionMemoryCache::new(1024);
        let server = Arc::new(server);
        let (full, full90) = measure(&server, &client(false), false);
        let (resumed, resumed90) = measure(&server, &client(true), true);
        println!(
            "| {what} | {full:.0} µs | {full90:.0} µs | {resumed:.0} µs | {resumed90:.0} µs |"
        );
    }
}
