//! A throwaway certificate authority for TLS tests: server certificates for 127.0.0.1 and
//! client certificates with chosen DNS names, all PEM.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A CA made for one test.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub pem: String,
}

/// A certificate and its private key, PEM.
pub struct Leaf {
    /// Certificate, PEM.
    pub cert: String,
    /// Private key (PKCS#8), PEM.
    pub key: String,
}

impl Ca {
    /// A new self-signed CA called `name`.
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    fn issue(&self, names: &[&str], cn: &str, usage: ExtendedKeyUsagePurpose) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        self.issue_params(CertificateParams::new(names).unwrap(), cn, usage)
    }

    fn issue_params(
        &self,
        mut params: CertificateParams,
        cn: &str,
        usage: ExtendedKeyUsagePurpose,
    ) -> Leaf {
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1, with `cn` as its common name.
    pub fn server(&self, cn: &str) -> Leaf {
        self.issue(
            &["localhost", "127.0.0.1"],
            cn,
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate whose DNS names are `names` (none: only the CN `cn`).
    pub fn client(&self, names: &[&str], cn: &str) -> Leaf {
        self.issue(names, cn, ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// A client certificate with the CN `cn` and exactly the subject alternative names
    /// `sans` (URIs, IP addresses, emails…).
    pub fn client_with_sans(&self, sans: Vec<SanType>, cn: &str) -> Leaf {
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        self.issue_params(params, cn, ExtendedKeyUsagePurpose::ClientAuth)
    }
}
