//! Typed reads from the YAML tree that never stop at the first problem: every helper
//! records what is wrong (with the YAML path and line) and returns `None`, so one pass
//! over a config reports all of its errors.

use std::time::Duration;

use super::yaml::{Entry, Node, Value};
use super::ConfigError;

/// Reads values out of [`Node`]s, collecting errors instead of returning early.
pub struct Decoder<'e> {
    errors: Vec<ConfigError>,
    env: &'e dyn Fn(&str) -> Option<String>,
}

/// The entries of one mapping, already checked for unknown and duplicate keys.
pub struct Fields<'n> {
    entries: &'n [Entry],
    /// Line of the mapping itself.
    pub line: usize,
}

impl<'n> Fields<'n> {
    /// The value under `key`, if present and not null.
    pub fn get(&self, key: &str) -> Option<&'n Node> {
        self.entry(key)
            .map(|e| &e.value)
            .filter(|n| !matches!(n.value, Value::Null))
    }

    /// The line of `key` if present, else the mapping's line.
    pub fn line_of(&self, key: &str) -> usize {
        self.entry(key).map_or(self.line, |e| e.key_line)
    }

    /// Whether `key` is written at all (even as null).
    pub fn has(&self, key: &str) -> bool {
        self.entry(key).is_some()
    }

    fn entry(&self, key: &str) -> Option<&'n Entry> {
        self.entries.iter().find(|e| e.key == key)
    }
}

/// `parent.key`, or `key` at the root.
pub fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl<'e> Decoder<'e> {
    /// A decoder that resolves `${VAR}` through `env`.
    pub fn new(env: &'e dyn Fn(&str) -> Option<String>) -> Self {
        Self {
            errors: Vec::new(),
            env,
        }
    }

    /// Records an error.
    pub fn error(&mut self, path: &str, line: usize, message: impl Into<String>) {
        self.errors.push(ConfigError {
            path: path.to_string(),
            line: Some(line),
            message: message.into(),
        });
    }

    /// Everything recorded so far, in document order.
    pub fn into_errors(mut self) -> Vec<ConfigError> {
        self.errors.sort_by_key(|e| e.line.unwrap_or(0));
        self.errors
    }

    /// Reads an environment variable through the decoder's environment.
    pub fn env_var(&self, name: &str) -> Option<String> {
        (self.env)(name)
    }

    /// Whether any error was recorded.
    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    /// A mapping whose keys must all be in `known`. Null reads as an empty mapping.
    pub fn map<'n>(&mut self, node: &'n Node, path: &str, known: &[&str]) -> Option<Fields<'n>> {
        let entries: &'n [Entry] = match &node.value {
            Value::Map(entries) => entries,
            Value::Null => &[],
            _ => {
                self.error(
                    path,
                    node.line,
                    format!("expected a mapping, found {}", node.kind()),
                );
                return None;
            }
        };
        // A set, not a scan of the entries before: a hostile file may hold many thousands.
        let mut seen = std::collections::HashSet::with_capacity(entries.len());
        for entry in entries {
            let key_path = join(path, &entry.key);
            let first = seen.insert(entry.key.as_str());
            if !known.contains(&entry.key.as_str()) {
                let hint = suggest(&entry.key, known)
                    .map(|k| format!(" (did you mean `{k}`?)"))
                    .unwrap_or_default();
                self.error(
                    &key_path,
                    entry.key_line,
                    format!("unknown key{hint}; expected one of: {}", known.join(", ")),
                );
            } else if !first {
                self.error(&key_path, entry.key_line, "duplicate key");
            }
        }
        Some(Fields {
            entries,
            line: node.line,
        })
    }

    /// A list; a single scalar is not silently promoted.
    pub fn list<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n [Node]> {
        match &node.value {
            Value::Seq(items) => Some(items),
            _ => {
                self.error(
                    path,
                    node.line,
                    format!("expected a list, found {}", node.kind()),
                );
                None
            }
        }
    }

    /// A string with `${VAR}` expanded from the environment.
    pub fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        match &node.value {
            Value::Scalar { text, .. } => match expand_env(text, self.env) {
                Ok(s) => Some(s),
                Err(msg) => {
                    self.error(path, node.line, msg);
                    None
                }
            },
            _ => {
                self.error(
                    path,
                    node.line,
                    format!("expected a string, found {}", node.kind()),
                );
                None
            }
        }
    }

    /// A non-empty string.
    pub fn non_empty(&mut self, node: &Node, path: &str) -> Option<String> {
        let s = self.string(node, path)?;
        if s.trim().is_empty() {
            self.error(path, node.line, "must not be empty");
            return None;
        }
        Some(s)
    }

    /// A list of strings.
    pub fn strings(&mut self, node: &Node, path: &str) -> Option<Vec<(String, usize)>> {
        let items = self.list(node, path)?;
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match self.string(item, &format!("{path}[{i}]")) {
                Some(s) => out.push((s, item.line)),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// A positive whole number written without quotes.
    pub fn positive_integer(&mut self, node: &Node, path: &str) -> Option<usize> {
        let text = match &node.value {
            Value::Scalar { text, plain: true } => text,
            _ => {
                self.error(path, node.line, "expected a whole number");
                return None;
            }
        };
        match text.parse::<usize>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                self.error(
                    path,
                    node.line,
                    format!("expected a whole number above 0, found `{text}`"),
                );
                None
            }
        }
    }

    /// A duration such as `1500ms`, `2s`, `1m` or `1h`.
    pub fn duration(&mut self, node: &Node, path: &str) -> Option<Duration> {
        let text = self.string(node, path)?;
        match parse_duration(&text) {
            Ok(d) => Some(d),
            Err(msg) => {
                self.error(path, node.line, msg);
                None
            }
        }
    }
}

/// The longest duration any setting accepts; settings have tighter bounds of their own.
/// humantime reads years and months too: this keeps `1y` out of every timeout.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// Parses a duration such as `1500ms`, `2s`, `1m`, `1h` or `1m30s` (humantime's
/// spellings), whole milliseconds from 0 to `MAX_DURATION`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let hint = "write a number with a unit, e.g. 1500ms, 2s, 1m, 1h";
    let d = humantime::parse_duration(text)
        .map_err(|e| format!("invalid duration `{text}` ({e}): {hint}"))?;
    if d > MAX_DURATION {
        return Err(format!(
            "duration `{text}` is longer than 24h, the most any setting accepts"
        ));
    }
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return Err(format!(
            "duration `{text}` is finer than a millisecond: {hint}"
        ));
    }
    Ok(d)
}

/// Replaces `${NAME}` (or `${NAME:-default}`) with the environment value; `$${` writes a
/// literal `${`. Any other `$` is kept, so regexes ending in `$` need no escaping.
pub fn expand_env(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    if !text.contains("${") {
        return Ok(text.to_string());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("${") {
        if rest[..pos].ends_with('$') {
            out.push_str(&rest[..pos - 1]);
            out.push_str("${");
            rest = &rest[pos + 2..];
            continue;
        }
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("unterminated `${{` in `{text}`"));
        };
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        let valid_name = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            return Err(format!(
                "`${{{inner}}}` is not a valid environment variable reference"
            ));
        }
        match (env(name), default) {
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => {
                return Err(format!(
                    "environment variable `{name}` is not set (write `${{{name}:-default}}` for a fallback)"
                ))
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The known key closest to a misspelt one, if it is close enough to be a likely typo.
fn suggest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOME_DIR" => Some("/home/app".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn env_expansion_cases() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("plain", Ok("plain")),
            ("${HOME_DIR}/x", Ok("/home/app/x")),
            ("a${EMPTY}b", Ok("ab")),
            ("${MISSING:-fallback}", Ok("fallback")),
            ("${HOME_DIR:-fallback}", Ok("/home/app")),
            ("$${HOME_DIR}", Ok("${HOME_DIR}")),
            ("^/(a|b)$", Ok("^/(a|b)$")),
            ("${MISSING}", Err("`MISSING` is not set")),
            ("${HOME_DIR", Err("unterminated")),
            ("${1X}", Err("not a valid environment variable")),
        ];
        for (input, want) in cases {
            let got = expand_env(input, &env);
            match (want, &got) {
                (Ok(w), Ok(g)) => assert_eq!(g, w, "{input}"),
                (Err(w), Err(g)) => assert!(g.contains(w), "{input}: {g}"),
                _ => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn duration_cases() {
        let ok: &[(&str, Duration)] = &[
            ("1500ms", Duration::from_millis(1500)),
            ("2s", Duration::from_secs(2)),
            ("1m", Duration::from_secs(60)),
            ("1h", Duration::from_secs(3600)),
            (" 30s ", Duration::from_secs(30)),
            ("1m30s", Duration::from_secs(90)),
            ("1m 30s", Duration::from_secs(90)),
            ("1.5s", Duration::from_millis(1500)),
            ("0s", Duration::ZERO),
            ("24h", MAX_DURATION),
            ("1day", MAX_DURATION),
        ];
        for (text, want) in ok {
            assert_eq!(parse_duration(text), Ok(*want), "{text}");
        }
        let bad: &[(&str, &str)] = &[
            ("", "invalid duration ``"),
            ("2", "invalid duration `2` (time unit needed"),
            ("s", "invalid duration `s`"),
            ("soon", "invalid duration `soon`"),
            ("-1s", "invalid duration `-1s`"),
            ("1x", "unknown time unit"),
            ("99999999999999999999h", "invalid duration"),
            // humantime reads these; no setting wants them.
            ("1y", "longer than 24h"),
            ("1M", "longer than 24h"),
            ("2 days", "longer than 24h"),
            ("25h", "longer than 24h"),
            ("1500us", "finer than a millisecond"),
            ("1ns", "finer than a millisecond"),
        ];
        for (text, want) in bad {
            let err = parse_duration(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn typos_get_a_suggestion() {
        assert_eq!(suggest("hots", &["host", "path"]), Some("host"));
        assert_eq!(
            suggest("upstrem", &["upstream", "listen"]),
            Some("upstream")
        );
        assert_eq!(suggest("zzzzzz", &["host", "path"]), None);
    }
}
