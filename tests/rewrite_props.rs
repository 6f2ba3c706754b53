//! Property: for generated HTML (random markup around embed tags: random case, attributes,
//! existing tokens, comments, scripts, raw-text elements) split at random chunk
//! boundaries, the rewrite equals the input except for the `auth-token` attribute of each
//! embed start tag, whatever the chunking.

use proptest::prelude::*;
use released_sidecar::page::rewrite::{Charset, EmbedTags, Rewriter};
use released_sidecar::token::secret::Token;

#[path = "support/case.rs"]
mod case;
use case::random_case;

const TAGS: [&str; 3] = ["released-page", "released-widget", "released-form"];

/// One generated piece of markup: what goes in and what must come out.
#[derive(Debug, Clone)]
struct Piece {
    input: String,
    expected: String,
}

fn same(s: String) -> Piece {
    Piece {
        input: s.clone(),
        expected: s,
    }
}

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 .,;:!?éü&>\n-]{0,40}"
}

fn attr() -> impl Strategy<Value = (String, String)> {
    ("[a-z][a-z0-9-]{0,8}", "[a-zA-Z0-9 ./:&;=-]{0,16}")
        .prop_filter("not the token attribute", |(n, _)| n != "auth-token")
}

/// An embed start tag in the form lol_html preserves byte for byte (double-quoted
/// attributes, single spaces), with or without an existing token, self-closing or not.
fn embed_tag() -> impl Strategy<Value = Piece> {
    (
        prop::sample::select(TAGS.to_vec()),
        any::<u32>(),
        prop::collection::vec(attr(), 0..3),
        prop::option::of(("[a-zA-Z0-9]{0,8}", any::<u32>())),
        any::<bool>(),
        text(),
    )
        .prop_map(|(name, mask, attrs, stale, self_closing, inner)| {
            let name = random_case(name, mask);
            let mut attrs_in = String::new();
            let mut attrs_out = String::new();
            let mut seen = std::collections::HashSet::new();
            for (k, v) in attrs {
                if seen.insert(k.clone()) {
                    attrs_in.push_str(&format!(" {k}=\"{v}\""));
                    attrs_out.push_str(&format!(" {k}=\"{v}\""));
                }
            }
            if let Some((old, mask)) = stale {
                attrs_in.push_str(&format!(" {}=\"{old}\"", random_case("auth-token", mask)));
            }
            let close = if self_closing { " />" } else { ">" };
            let end = if self_closing {
                String::new()
            } else {
                format!("{inner}</{name}>")
            };
            Piece {
                input: format!("<{name}{attrs_in}{close}{end}"),
                expected: format!("<{name}{attrs_out} auth-token=\"\u{0}\"{close}{end}"),
            }
        })
}

/// Markup that must come out unchanged, including embed tags where they are not tags.
fn inert() -> impl Strategy<Value = Piece> {
    prop_oneof![
        text().prop_map(same),
        (
            prop::sample::select(vec![
                "div",
                "p",
                "span",
                "section",
                "released-pages",
                "x-released-page"
            ]),
            prop::collection::vec(attr(), 0..3),
            text()
        )
            .prop_map(|(tag, attrs, inner)| {
                let attrs: String = attrs.iter().map(|(k, v)| format!(" {k}=\"{v}\"")).collect();
                same(format!("<{tag}{attrs}>{inner}</{tag}>"))
            }),
        text().prop_map(|t| same(format!("<!-- <released-page {t}> -->"))),
        text().prop_map(|t| same(format!(
            "<script>var s = '<released-page>{}';</script>",
            t.replace('<', "")
        ))),
        text().prop_map(|t| same(format!("<textarea><released-widget>{t}</textarea>"))),
        text().prop_map(|t| same(format!("<title><released-form>{t}</title>"))),
        text().prop_map(|t| same(format!(
            "<style>/* <released-page> */ p {{}} {}</style>",
            t.replace('<', "")
        ))),
        Just(same("</released-page>".to_string())),
        Just(same("<br/>".to_string())),
    ]
}

fn document() -> impl Strategy<Value = (Vec<Piece>, String)> {
    (
        prop::collection::vec(prop_oneof![3 => inert(), 1 => embed_tag()], 0..24),
        "[a-zA-Z0-9._\"<>&'-]{1,40}",
    )
}

fn escape(token: &str) -> String {
    token
        .replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn rewrite(input: &[u8], cuts: &[usize], token: &str) -> Vec<u8> {
    let tags = EmbedTags::new(&TAGS.map(String::from)).unwrap();
    let mut rewriter = Rewriter::new(&tags, &Token::new(token), Charset::Sniffed, 1 << 20);
    let mut out = Vec::new();
    let mut start = 0;
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    cuts.sort_unstable();
    for cut in cuts {
        out.extend_from_slice(&rewriter.write(&input[start..cut.max(start)]));
        start = cut.max(start);
    }
    out.extend_from_slice(&rewriter.write(&input[start..]));
    out.extend_from_slice(&rewriter.end());
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn output_is_input_plus_tokens_whatever_the_chunking(
        (pieces, token) in document(),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let input: String = pieces.iter().map(|p| p.input.as_str()).collect();
        let expected: String = pieces
            .iter()
            .map(|p| p.expected.replace('\u{0}', &escape(&token)))
            .collect();
        let whole = rewrite(input.as_bytes(), &[], &token);
        prop_assert_eq!(String::from_utf8_lossy(&whole), expected.as_str());
        let chunked = rewrite(input.as_bytes(), &cuts, &token);
        prop_assert_eq!(chunked, whole);
    }
}
