//! The `embed.client` block (SPEC §3a): where the same-origin token endpoint and the
//! loader script are served, whether pages get the loader injected, and the per-identity
//! rate limit; and the `embed.insert` rules (SPEC §3b), at the top level and per route,
//! compiled (selectors parsed) here so that `check` rejects what lol_html could not use.

use std::time::Duration;

use super::decode::join;
use super::yaml::Node;
use super::Schema;
use crate::page::rewrite::insert::{InsertRule, Position};

const INSERT_KEYS: &[&str] = &["selector", "position", "html"];

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

impl Schema<'_, '_> {
    /// Decodes an `embed.insert` list at `path` (`embed.insert` or a route's).
    pub(super) fn embed_insert(&mut self, node: &Node, path: &str) -> Option<Vec<InsertRule>> {
        let items = self.d.list(node, path)?;
        let mut rules = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match self.insert_rule(item, &format!("{path}[{i}]")) {
                Some(rule) => rules.push(rule),
                None => ok = false,
            }
        }
        ok.then_some(rules)
    }

    fn insert_rule(&mut self, node: &Node, path: &str) -> Option<InsertRule> {
        let fields = self.d.map(node, path, INSERT_KEYS)?;
        let selector_path = join(path, "selector");
        let selector = match fields.get("selector") {
            Some(n) => self
                .d
                .non_empty(n, &selector_path)
                .map(|text| (text.trim().to_string(), n.line)),
            None => {
                self.d.error(
                    &selector_path,
                    fields.line_of("selector"),
                    "is required: a CSS selector such as `body` or `#main`",
                );
                None
            }
        };
        let position = match fields.get("position") {
            Some(n) => {
                let p = join(path, "position");
                self.d.non_empty(n, &p).and_then(|name| {
                    let found = Position::from_name(name.trim());
                    if found.is_none() {
                        self.d.error(
                            &p,
                            n.line,
                            format!(
                                "unknown position `{name}`; expected one of: {}",
                                Position::NAMES.join(", ")
                            ),
                        );
                    }
                    found
                })
            }
            None => Some(Position::Append),
        };
        let html_path = join(path, "html");
        let html = match fields.get("html") {
            Some(n) => self.d.non_empty(n, &html_path),
            None => {
                self.d.error(
                    &html_path,
                    fields.line_of("html"),
                    "is required: the HTML to insert, e.g. an embed tag",
                );
                None
            }
        };
        let (selector, line) = selector?;
        match InsertRule::new(&selector, position?, &html?) {
            Ok(rule) => Some(rule),
            Err(why) => {
                self.d.error(
                    &selector_path,
                    line,
                    format!("lol_html cannot use the selector `{selector}`: {why}"),
                );
                None
            }
        }
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
    use crate::config::tests::{assert_rejected, load, Expected, MINIMAL};
    use std::sync::Arc;

    /// MINIMAL is 7 lines: what follows starts on line 8.
    fn with(yaml: &str) -> String {
        format!("{MINIMAL}{yaml}")
    }

    fn described(rules: &[InsertRule]) -> Vec<String> {
        rules
            .iter()
            .map(|r| format!("{} {} {}", r.position.name(), r.selector(), r.html))
            .collect()
    }

    #[test]
    fn insert_rules_load_with_defaults_and_routes_replace_the_top_level_list() {
        let c = load(&with(
            "embed:
  insert:
    - selector: \"body\"
      html: '<released-widget widget-id=\"w1\"></released-widget>'
    - { selector: \"#app > main\", position: prepend, html: \"<b>x</b>\" }
routes:
  - name: portal
    match: { path: \"^/portal/\" }
    embed: { insert: [] }
  - name: admin
    match: { path: \"^/admin/\" }
    embed:
      insert: [{ selector: nav, position: after, html: \"<i>a</i>\" }]
  - name: rest
",
        ))
        .unwrap();
        let top = [
            "append body <released-widget widget-id=\"w1\"></released-widget>",
            "prepend #app > main <b>x</b>",
        ];
        assert_eq!(described(&c.embed.insert), top);
        let route = |name: &str| c.routes.0.iter().find(|r| r.name == name).unwrap();
        assert!(route("portal").insert.is_empty(), "[] means none");
        assert_eq!(described(&route("admin").insert), ["after nav <i>a</i>"]);
        assert!(
            Arc::ptr_eq(&route("rest").insert, &c.embed.insert),
            "a route without its own list shares the top-level one"
        );
        assert!(load(MINIMAL).unwrap().routes.0[0].insert.is_empty());
    }

    #[test]
    fn every_bad_insert_rule_is_reported_with_path_and_line() {
        let cases: &[(&str, &[Expected])] = &[
            (
                "embed:\n  insert:\n    - { selector: \"div[\", html: x }\n",
                &[("embed.insert[0].selector", 10, "lol_html cannot use the selector `div[`")],
            ),
            (
                "embed:\n  insert:\n    - { selector: \"a:hover\", html: x }\n",
                &[("embed.insert[0].selector", 10, "cannot use the selector `a:hover`")],
            ),
            (
                "embed:\n  insert:\n    - { selector: body, html: \"\" }\n    - { selector: body, html: \"  \" }\n",
                &[
                    ("embed.insert[0].html", 10, "must not be empty"),
                    ("embed.insert[1].html", 11, "must not be empty"),
                ],
            ),
            (
                "embed:\n  insert:\n    - selector: body\n      position: inside\n      html: x\n",
                &[("embed.insert[0].position", 11, "unknown position `inside`; expected one of: before, after, prepend, append")],
            ),
            (
                "embed:\n  insert:\n    - position: before\n      html: x\n",
                &[("embed.insert[0].selector", 10, "is required")],
            ),
            (
                "embed:\n  insert:\n    - selector: body\n",
                &[("embed.insert[0].html", 10, "is required")],
            ),
            (
                "embed:\n  insert:\n    - { selector: \"\", html: x, postion: after }\n",
                &[
                    ("embed.insert[0].selector", 10, "must not be empty"),
                    ("embed.insert[0].postion", 10, "did you mean `position`"),
                ],
            ),
            (
                "embed:\n  insert: { selector: body, html: x }\n",
                &[("embed.insert", 9, "expected a list")],
            ),
            (
                "routes:\n  - name: r\n    embed:\n      insert:\n        - { selector: \"p::before\", html: x }\n      tags: [x]\n",
                &[
                    ("routes[0].embed.insert[0].selector", 12, "cannot use the selector"),
                    ("routes[0].embed.tags", 13, "unknown key"),
                ],
            ),
        ];
        for (yaml, expected) in cases {
            assert_rejected(&with(yaml), expected);
        }
    }

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
