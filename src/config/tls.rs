//! The `tls` block: HTTPS on `listen`, and optionally identity trusted by the gateway's
//! client certificate instead of its address.

use std::path::PathBuf;

use super::decode::join;
use super::yaml::Node;
use super::Schema;

/// The compiled `tls` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// PEM certificate chain served on `listen` (watched).
    pub cert_file: PathBuf,
    /// PEM private key for it (watched).
    pub key_file: PathBuf,
    /// When set: client certificates are requested and verified against this CA bundle,
    /// and only a verified certificate makes a peer trusted.
    pub client_ca_file: Option<PathBuf>,
    /// DNS names a verified certificate must carry to be trusted (its DNS SANs; its CN only
    /// without any SAN); empty: any certificate the CA signed.
    pub trusted_client_names: Vec<String>,
    /// Where each file is named in the config, for errors found when the files are loaded.
    pub lines: TlsLines,
}

/// The YAML lines of the `tls` file keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsLines {
    /// `tls.cert_file`.
    pub cert_file: usize,
    /// `tls.key_file`.
    pub key_file: usize,
    /// `tls.client_ca_file` (the `tls` block's line when it is not set).
    pub client_ca_file: usize,
}

impl Schema<'_, '_> {
    /// Decodes `tls`.
    pub(super) fn tls(&mut self, node: &Node) -> Option<Tls> {
        const KEYS: &[&str] = &[
            "cert_file",
            "key_file",
            "client_ca_file",
            "trusted_client_names",
        ];
        let fields = self.d.map(node, "tls", KEYS)?;
        let required = |s: &mut Self, key: &str| match fields.get(key) {
            Some(n) => s.existing_file(n, &join("tls", key)),
            None => {
                s.d.error(
                    &join("tls", key),
                    fields.line,
                    "is required: HTTPS needs a certificate chain and its key (PEM)",
                );
                None
            }
        };
        let cert_file = required(self, "cert_file");
        let key_file = required(self, "key_file");
        let client_ca_file = match fields.get("client_ca_file") {
            Some(n) => Some(self.existing_file(n, "tls.client_ca_file")?),
            None => None,
        };
        let trusted_client_names = match fields.get("trusted_client_names") {
            Some(n) => {
                let path = "tls.trusted_client_names";
                let names = self.d.strings(n, path)?;
                if client_ca_file.is_none() {
                    self.d.error(
                        path,
                        n.line,
                        "needs tls.client_ca_file: names are only checked on certificates verified against it",
                    );
                }
                let mut out = Vec::with_capacity(names.len());
                for (i, (name, line)) in names.into_iter().enumerate() {
                    let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
                    if name.is_empty() || name.contains(char::is_whitespace) {
                        self.d
                            .error(&format!("{path}[{i}]"), line, "is not a DNS name");
                    } else {
                        out.push(name);
                    }
                }
                out
            }
            None => Vec::new(),
        };
        let line = |key: &str| fields.get(key).map_or(fields.line, |n| n.line);
        Some(Tls {
            cert_file: cert_file?,
            key_file: key_file?,
            lines: TlsLines {
                cert_file: line("cert_file"),
                key_file: line("key_file"),
                client_ca_file: line("client_ca_file"),
            },
            client_ca_file,
            trusted_client_names,
        })
    }
}
