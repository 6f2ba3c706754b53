//! The `embed.client` block (SPEC §3a): where the same-origin token endpoint and the
//! loader script are served, whether pages get the loader injected, and the per-identity
//! rate limit.

use std::time::Duration;

use super::decode::join;
use super::yaml::Node;
use super::Schema;

/// Default path of the token endpoint.
pub const DEFAULT_TOKEN_PATH: &str = "/.released/token";
/// Default per-identity rate limit of the token endpoint.
pub const DEFAULT_RATE_LIMIT: RateLimit = RateLimit {
    count: 30,
    per: Duration::from_secs(60),
};

/// `count` requests per `per`, for one identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests allowed per period (also the burst).
    pub count: u32,
    /// The period.
    pub per: Duration,
}

impl std::fmt::Display for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}s", self.count, self.per.as_secs())
    }
}

/// The compiled `embed.client` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientEmbed {
    /// The token endpoint's path.
    pub token_path: String,
    /// The loader script's path: the endpoint's directory + `embed.js`.
    pub loader_path: String,
    /// Insert the loader into token routes' pages.
    pub inject: bool,
    /// Per-identity limit on token endpoint calls.
    pub rate_limit: RateLimit,
}

impl Schema<'_, '_> {
    /// Decodes `embed.client`.
    pub(super) fn embed_client(&mut self, node: &Node) -> Option<ClientEmbed> {
        const PATH: &str = "embed.client";
        let fields = self.d.map(node, PATH, &["path", "inject", "rate_limit"])?;
        let mut token_path = Some(DEFAULT_TOKEN_PATH.to_string());
        if let Some(n) = fields.get("path") {
            let p = join(PATH, "path");
            token_path = self.d.non_empty(n, &p).and_then(|text| {
                let text = text.trim().to_string();
                match check_endpoint_path(&text) {
                    Ok(()) => Some(text),
                    Err(msg) => {
                        self.d.error(&p, n.line, msg);
                        None
                    }
                }
            });
        }
        let inject = match fields.get("inject") {
            Some(n) => self.bool(n, &join(PATH, "inject")),
            None => Some(false),
        };
        let rate_limit = match fields.get("rate_limit") {
            Some(n) => {
                let p = join(PATH, "rate_limit");
                self.d
                    .non_empty(n, &p)
                    .and_then(|text| match parse_rate_limit(&text) {
                        Ok(r) => Some(r),
                        Err(msg) => {
                            self.d.error(&p, n.line, msg);
                            None
                        }
                    })
            }
            None => Some(DEFAULT_RATE_LIMIT),
        };
        let token_path = token_path?;
        let dir = &token_path[..=token_path.rfind('/').unwrap_or(0)];
        Some(ClientEmbed {
            loader_path: format!("{dir}embed.js"),
            token_path,
            inject: inject?,
            rate_limit: rate_limit?,
        })
    }
}

/// An absolute path of plain characters, not itself the loader's `embed.js`.
fn check_endpoint_path(path: &str) -> Result<(), String> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/-._~".contains(c);
    if !path.starts_with('/') || !path.chars().all(plain) || path.ends_with('/') {
        return Err(format!(
            "`{path}` must be an absolute path of letters, digits and -._~ not ending in /, e.g. /.released/token"
        ));
    }
    if path.rsplit('/').next() == Some("embed.js") {
        return Err("must not end in embed.js: the loader is served there".into());
    }
    Ok(())
}

/// Parses `30/min`, `5/s`, `100/hour`.
pub fn parse_rate_limit(text: &str) -> Result<RateLimit, String> {
    let bad = || format!("`{text}` is not a rate; expected N/s, N/min or N/hour, e.g. 30/min");
    let (count, unit) = text.trim().split_once('/').ok_or_else(bad)?;
    let count: u32 = count.trim().parse().map_err(|_| bad())?;
    if count == 0 {
        return Err("must allow at least 1 request".into());
    }
    let per = match unit.trim() {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        _ => return Err(bad()),
    };
    Ok(RateLimit { count, per })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_parse_from_count_and_unit() {
        assert_eq!(parse_rate_limit("30/min").unwrap(), DEFAULT_RATE_LIMIT);
        assert_eq!(
            parse_rate_limit(" 5/s ").unwrap(),
            RateLimit {
                count: 5,
                per: Duration::from_secs(1)
            }
        );
        for bad in ["30", "0/min", "x/min", "30/day", "-1/s"] {
            assert!(parse_rate_limit(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoint_paths_are_plain_and_absolute() {
        for good in ["/.released/token", "/t", "/a/b-c/t_1"] {
            assert!(check_endpoint_path(good).is_ok(), "{good}");
        }
        for bad in ["token", "/a/", "/a?b", "/a b", "/x/embed.js", "/%2e"] {
            assert!(check_endpoint_path(bad).is_err(), "{bad}");
        }
    }
}
