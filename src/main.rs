//! The `released-sidecar` command line: `run`, `check` and `explain`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use http::header::HeaderMap;
use http::Method;

use released_sidecar::config::{Config, ConfigErrors, LoadOptions};
use released_sidecar::ops::explain::{explain, parse_header, read_client_cert, ExplainRequest};

/// Where the config is looked for when neither --config nor RELEASED_SIDECAR_CONFIG is set.
const DEFAULT_CONFIG: &str = "/etc/released-sidecar/config.yaml";

#[derive(Parser)]
#[command(
    name = "released-sidecar",
    version,
    about = "Reverse-proxy sidecar that writes Released user tokens into a legacy app's pages"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ConfigArg {
    /// Config file.
    #[arg(long, short, env = "RELEASED_SIDECAR_CONFIG", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Serve: proxy to the app and write tokens into its pages.
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Log format on stderr (filter with RUST_LOG).
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
        /// Take over the listening sockets of the running sidecar (zero-downtime binary
        /// upgrade): start this, then send SIGQUIT to the old process.
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate the config and print every error with its YAML path and line (like nginx -t).
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// Validate secret sources without reading them (for CI, where secrets are absent).
        #[arg(long)]
        skip_secrets: bool,
    },
    /// Dry run for one request: route, trust, page load, identity and the token request
    /// that would be sent (secret redacted). No network.
    Explain {
        #[command(flatten)]
        config: ConfigArg,
        /// The request URL, e.g. https://app.example.com/feedback.
        #[arg(long)]
        url: url::Url,
        /// A request header, `Name: value` (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// The TCP peer the request comes from.
        #[arg(long, default_value = "127.0.0.1")]
        peer: IpAddr,
        /// The request method.
        #[arg(long, short = 'X', default_value = "GET")]
        method: String,
        /// The client certificate (PEM) the connection presents, with `tls.client_ca_file`.
        #[arg(long)]
        client_cert: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            config,
            log_format,
            upgrade,
        } => {
            init_logging(log_format);
            let err = match released_sidecar::ops::server::run(&config.config, upgrade) {
                Ok(()) => return ExitCode::SUCCESS,
                Err(e) => e,
            };
            tracing::error!("cannot start");
            released_sidecar::logging::flush();
            eprintln!("released-sidecar: {err}");
            ExitCode::FAILURE
        }
        Command::Check {
            config,
            skip_secrets,
        } => {
            let options = LoadOptions {
                read_secrets: !skip_secrets,
                read_key_files: !skip_secrets,
                ..LoadOptions::default()
            };
            match Config::load(&config.config, &options) {
                Ok(c) => {
                    // Like `nginx -t`: the certificate and key must load and match (the
                    // key is a secret, so not with --skip-secrets).
                    let tls = c.tls.as_ref().filter(|_| !skip_secrets);
                    if let Some(Err(e)) = tls.map(released_sidecar::edge::tls::load) {
                        let errors = ConfigErrors {
                            source: config.config.display().to_string(),
                            errors: vec![e.into()],
                        };
                        eprint!("{errors}");
                        return ExitCode::FAILURE;
                    }
                    println!("{}", c.summary());
                    ExitCode::SUCCESS
                }
                Err(errors) => {
                    eprint!("{errors}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Explain {
            config,
            url,
            headers,
            peer,
            method,
            client_cert,
        } => match run_explain(&config.config, url, &headers, peer, &method, client_cert) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("released-sidecar: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn run_explain(
    path: &std::path::Path,
    url: url::Url,
    headers: &[String],
    peer: IpAddr,
    method: &str,
    client_cert: Option<PathBuf>,
) -> anyhow::Result<String> {
    let options = LoadOptions {
        read_secrets: false,
        ..LoadOptions::default()
    };
    let config = Config::load(path, &options).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut map = HeaderMap::new();
    for h in headers {
        let (name, value) = parse_header(h).map_err(anyhow::Error::msg)?;
        map.append(name, value);
    }
    let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .with_context(|| format!("`{method}` is not an HTTP method"))?;
    let client_cert = match client_cert {
        Some(path) => Some(
            read_client_cert(&config, &path)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("client certificate {}", path.display()))?,
        ),
        None => None,
    };
    Ok(explain(
        &config,
        &ExplainRequest {
            method,
            url,
            headers: map,
            peer,
            client_cert,
        },
    ))
}

fn init_logging(format: LogFormat) {
    released_sidecar::logging::init(match format {
        LogFormat::Text => released_sidecar::logging::Format::Text,
        LogFormat::Json => released_sidecar::logging::Format::Json,
    });
}
