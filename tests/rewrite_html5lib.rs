//! The fast rewrite engine's tokenizer against the html5lib-tests tokenizer corpus: for
//! every test case, in each of its initial states, the start tags the scanner recognises
//! (name, self-closing) are the StartTag tokens the test expects.
//!
//! The corpus tests the tokenizer alone, so the scanner runs with its tree builder
//! simulation off. It is not vendored: `scripts/gateway-tools.sh` puts it in
//! `target/tools/html5lib-tests`.

mod support;

use std::path::Path;

use released_sidecar::page::rewrite::scan::{Scanner, TextType};
use serde_json::Value;
use support::tools;

/// The start tags a case expects: lowercase names (NUL as U+FFFD), self-closing flags.
fn expected_start_tags(output: &Value) -> Vec<(String, bool)> {
    output
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|token| {
            let token = token.as_array()?;
            if token.first()?.as_str()? != "StartTag" {
                return None;
            }
            let name = token.get(1)?.as_str()?.to_string();
            let self_closing = token.get(3).and_then(Value::as_bool).unwrap_or(false);
            Some((name, self_closing))
        })
        .collect()
}

/// What the scanner saw, in the same form as the expectation.
fn scanned_start_tags(
    input: &[u8],
    initial: TextType,
    last_start_tag: Option<&str>,
    chunk: usize,
) -> Vec<(String, bool)> {
    let mut scanner = Scanner::tokenizer(initial, last_start_tag);
    for b in input.chunks(chunk) {
        scanner.write(b);
    }
    scanner.end();
    scanner
        .seen_start_tags()
        .iter()
        .map(|tag| {
            let name = String::from_utf8_lossy(&tag.name)
                .to_ascii_lowercase()
                .replace('\0', "\u{FFFD}");
            (name, tag.self_closing)
        })
        .collect()
}

/// Undoes the corpus's `doubleEscaped` encoding (`\uXXXX` in the JSON string); lone
/// surrogates, which UTF-8 cannot carry, become U+FFFD on both sides.
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut units = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find("\\u") {
        out.push_str(&String::from_utf16_lossy(&units));
        units.clear();
        out.push_str(&rest[..i]);
        let mut tail = &rest[i..];
        while let Some(hex) = tail.strip_prefix("\\u").and_then(|t| t.get(..4)) {
            let Ok(unit) = u16::from_str_radix(hex, 16) else {
                break;
            };
            units.push(unit);
            tail = &tail[6..];
        }
        out.push_str(&String::from_utf16_lossy(&units));
        units.clear();
        if tail.len() == rest[i..].len() {
            out.push_str("\\u");
            tail = &tail[2..];
        }
        rest = tail;
    }
    out.push_str(rest);
    out
}

fn unescape_value(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(unescape(s)),
        Value::Array(items) => Value::Array(items.iter().map(unescape_value).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (unescape(k), unescape_value(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn initial_state(name: &str) -> Option<TextType> {
    Some(match name {
        "Data state" => TextType::Data,
        "PLAINTEXT state" => TextType::PlainText,
        "RCDATA state" => TextType::RcData,
        "RAWTEXT state" => TextType::RawText,
        "Script data state" => TextType::ScriptData,
        "CDATA section state" => TextType::CdataSection,
        _ => return None,
    })
}

#[test]
fn scanner_finds_the_start_tags_of_the_html5lib_tokenizer_corpus() {
    let dir = tools::tools_dir().join("html5lib-tests/tokenizer");
    if !dir.is_dir() {
        tools::skip(
            &format!("the html5lib-tests corpus is missing ({})", dir.display()),
            "scripts/gateway-tools.sh",
        );
        return;
    }
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "test"))
        .collect();
    files.sort();
    let (mut ran, mut skipped, mut tags) = (0, 0, 0);
    let mut failures = Vec::new();
    for file in &files {
        let json: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        // xmlViolation.test has `xmlViolationTests` only: XML conformance, not HTML.
        let Some(cases) = json.get("tests").and_then(Value::as_array) else {
            skipped += json
                .get("xmlViolationTests")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            continue;
        };
        for case in cases {
            let case = if case.get("doubleEscaped").and_then(Value::as_bool) == Some(true) {
                unescape_value(case)
            } else {
                case.clone()
            };
            let input = case["input"].as_str().unwrap_or_default();
            let want = expected_start_tags(&case["output"]);
            let last_start_tag = case.get("lastStartTag").and_then(Value::as_str);
            let states: Vec<&str> = match case.get("initialStates").and_then(Value::as_array) {
                Some(states) => states.iter().filter_map(Value::as_str).collect(),
                None => vec!["Data state"],
            };
            for state in states {
                let Some(initial) = initial_state(state) else {
                    skipped += 1;
                    continue;
                };
                ran += 1;
                tags += want.len();
                // Whole, and one byte at a time: the hardest chunking.
                let whole =
                    scanned_start_tags(input.as_bytes(), initial, last_start_tag, usize::MAX);
                let bytewise = scanned_start_tags(input.as_bytes(), initial, last_start_tag, 1);
                let got = if whole == want { bytewise } else { whole };
                if got != want {
                    failures.push(format!(
                        "{} / {:?} / {state}: input {input:?}: want {want:?}, got {got:?}",
                        file.file_name().unwrap().to_string_lossy(),
                        case["description"].as_str().unwrap_or_default(),
                    ));
                }
            }
        }
    }
    tools::note(&format!(
        "html5lib tokenizer corpus: {ran} cases run ({tags} start tags), {skipped} skipped, {} failed, from {}",
        failures.len(),
        Path::new(&dir).display()
    ));
    assert!(ran > 1000, "only {ran} cases ran: is the corpus complete?");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
