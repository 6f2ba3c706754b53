//! `embed.insert` (SPEC §3b): a fixed snippet put next to the first element a CSS selector
//! matches, so that a page with no embed tag gets one. A rule is config ([`InsertRule`]);
//! for each page its snippet is made ready ([`Insertion`]: the page's token on the
//! snippet's own embed tags, the page's CSP nonce on its `<script>`s) and put in once by
//! lol_html handlers that the reference engine of [`super::Rewriter`] carries.
//!
//! lol_html never parses what a handler inserts, so the snippet's embed tags would not get
//! the token the page's own tags get: the snippet is rewritten on its own first (a few
//! microseconds, once per rule and page). `append` and `after` go next to the element's end
//! tag, and lol_html runs no end-tag handler for an element closed implicitly: when the
//! page never closes the element (a `</body>` left out), the snippet goes at the end of the
//! document, which is still inside an element left open.

use std::borrow::Cow;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use lol_html::html_content::{ContentType, DocumentEnd, EndTag};
use lol_html::send::{Element, EndTagHandler, Settings};
use lol_html::{element, end, ElementContentHandlers, RewriteStrSettings, Selector};

use super::{escape_attribute, EmbedTags, TOKEN_ATTRIBUTE};
use crate::token::secret::Token;

/// Where a snippet goes relative to the matched element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// Right before the element's start tag.
    Before,
    /// Right after the element's end tag.
    After,
    /// Inside, right after the start tag.
    Prepend,
    /// Inside, right before the end tag.
    Append,
}

impl Position {
    /// The names `embed.insert[].position` accepts.
    pub const NAMES: &'static [&'static str] = &["before", "after", "prepend", "append"];

    /// The position a config name stands for.
    pub fn from_name(name: &str) -> Option<Position> {
        match name {
            "before" => Some(Position::Before),
            "after" => Some(Position::After),
            "prepend" => Some(Position::Prepend),
            "append" => Some(Position::Append),
            _ => None,
        }
    }

    /// The config name.
    pub fn name(self) -> &'static str {
        match self {
            Position::Before => "before",
            Position::After => "after",
            Position::Prepend => "prepend",
            Position::Append => "append",
        }
    }
}

/// One compiled `embed.insert` rule.
#[derive(Debug, Clone)]
pub struct InsertRule {
    selector_text: String,
    selector: Selector,
    /// Where the snippet goes.
    pub position: Position,
    /// The snippet as configured (shared, not copied, by the pages it goes into as is).
    pub html: Arc<str>,
}

impl InsertRule {
    /// Compiles a rule; the error says why lol_html cannot use the selector.
    pub fn new(selector: &str, position: Position, html: &str) -> Result<InsertRule, String> {
        let compiled = Selector::from_str(selector).map_err(|e| e.to_string())?;
        Ok(InsertRule {
            selector_text: selector.to_string(),
            selector: compiled,
            position,
            html: Arc::from(html),
        })
    }

    /// The selector as written.
    pub fn selector(&self) -> &str {
        &self.selector_text
    }
}

/// Rules are equal when written alike (a reload compares them to report a change).
impl PartialEq for InsertRule {
    fn eq(&self, other: &Self) -> bool {
        (&self.selector_text, self.position, &self.html)
            == (&other.selector_text, other.position, &other.html)
    }
}

/// A rule's snippet made ready for one page.
pub struct Insertion<'a> {
    selector: &'a Selector,
    position: Position,
    html: Arc<str>,
    tags: usize,
}

impl<'a> Insertion<'a> {
    /// `rule`'s snippet with `token` written into its `tags` (none when there is no token,
    /// as for the page's own tags) and `nonce` on its `<script>` elements.
    pub fn prepare(
        rule: &'a InsertRule,
        tags: &EmbedTags,
        token: Option<&Token>,
        nonce: Option<&str>,
    ) -> Insertion<'a> {
        let mut insertion = Insertion {
            selector: &rule.selector,
            position: rule.position,
            html: Arc::clone(&rule.html),
            tags: 0,
        };
        if token.is_none() && nonce.is_none() {
            return insertion;
        }
        let value = token.map(|t| escape_attribute(t.expose()));
        let nonce = nonce.map(escape_attribute);
        let mut tagged = 0;
        let mut settings = RewriteStrSettings::new();
        if let Some(value) = &value {
            let counter = &mut tagged;
            settings = settings.append_element_content_handler((
                Cow::Borrowed(&tags.selector),
                ElementContentHandlers::default().element(
                    move |el: &mut lol_html::html_content::Element<'_, '_>| {
                        el.remove_attribute(TOKEN_ATTRIBUTE);
                        el.set_attribute(TOKEN_ATTRIBUTE, value)?;
                        *counter += 1;
                        Ok(())
                    },
                ),
            ));
        }
        if let Some(nonce) = &nonce {
            settings = settings.append_element_content_handler(element!("script", move |el| {
                el.set_attribute("nonce", nonce)?;
                Ok(())
            }));
        }
        // Without a memory limit the snippet (config text) cannot fail to rewrite; if it
        // did, it goes in as written rather than not at all.
        match lol_html::rewrite_str(&rule.html, settings) {
            Ok(html) => {
                insertion.html = Arc::from(html);
                insertion.tags = tagged;
            }
            Err(e) => {
                tracing::warn!(error = %e, selector = rule.selector(), "embed.insert snippet left as written")
            }
        }
        insertion
    }

    /// The snippet as it goes into the page.
    pub fn html(&self) -> &str {
        &self.html
    }
}

// One rule's fate in one page: not matched yet,
const PENDING: u8 = 0;
// matched and waiting for the element's end tag,
const AWAITING_END: u8 = 1;
// or in the page.
const INSERTED: u8 = 2;

/// A snippet and whether it went in, shared by its handlers and the rewriter.
pub(super) struct Slot {
    position: Position,
    html: Arc<str>,
    tags: usize,
    state: AtomicU8,
}

impl Slot {
    /// Whether the snippet is in the page.
    pub(super) fn inserted(&self) -> bool {
        self.state.load(Ordering::Relaxed) == INSERTED
    }

    /// Embed tags in the snippet that carry the token.
    pub(super) fn tags(&self) -> usize {
        self.tags
    }

    fn on_element(self: &Arc<Self>, el: &mut Element<'_, '_>) {
        // Only the first match in document order.
        if self.state.load(Ordering::Relaxed) != PENDING {
            return;
        }
        let html = &*self.html;
        match (self.position, el.can_have_content()) {
            (Position::Before, _) => el.before(html, ContentType::Html),
            (Position::Prepend, true) => el.prepend(html, ContentType::Html),
            // A void element (`<img>`, `<input>`) has no inside: the snippet goes where
            // its content would have been, right after it.
            (_, false) => el.after(html, ContentType::Html),
            (Position::Append | Position::After, true) => {
                let slot = Arc::clone(self);
                let handler: EndTagHandler<'static> = Box::new(move |end: &mut EndTag<'_>| {
                    slot.on_end_tag(end);
                    Ok(())
                });
                if el.on_end_tag(handler).is_ok() {
                    self.state.store(AWAITING_END, Ordering::Relaxed);
                    return;
                }
                el.after(html, ContentType::Html);
            }
        }
        self.state.store(INSERTED, Ordering::Relaxed);
    }

    fn on_end_tag(&self, end: &mut EndTag<'_>) {
        match self.position {
            Position::After => end.after(&self.html, ContentType::Html),
            _ => end.before(&self.html, ContentType::Html),
        }
        self.state.store(INSERTED, Ordering::Relaxed);
    }

    /// The page ended with the matched element never closed: the end of the document is
    /// as close to its end tag as the page comes.
    fn at_document_end(&self, end: &mut DocumentEnd<'_>) {
        if self.state.load(Ordering::Relaxed) == AWAITING_END {
            end.append(&self.html, ContentType::Html);
            self.state.store(INSERTED, Ordering::Relaxed);
        }
    }
}

/// `settings` plus the handlers that put each of `insertions` in once; returns the slots
/// that tell afterwards which went in.
pub(super) fn with_insertions<'h, 's>(
    mut settings: Settings<'h, 's>,
    insertions: Vec<Insertion<'s>>,
) -> (Settings<'h, 's>, Vec<Arc<Slot>>) {
    let mut slots = Vec::with_capacity(insertions.len());
    for insertion in insertions {
        let slot = Arc::new(Slot {
            position: insertion.position,
            html: insertion.html,
            tags: insertion.tags,
            state: AtomicU8::new(PENDING),
        });
        let on_match = Arc::clone(&slot);
        settings = settings.append_element_content_handler((
            Cow::Borrowed(insertion.selector),
            ElementContentHandlers::default().element(move |el: &mut Element<'_, '_>| {
                on_match.on_element(el);
                Ok(())
            }),
        ));
        slots.push(slot);
    }
    if !slots.is_empty() {
        let at_end: Vec<Arc<Slot>> = slots.iter().map(Arc::clone).collect();
        settings = settings.append_document_content_handler(end!(move |doc_end| {
            for slot in &at_end {
                slot.at_document_end(doc_end);
            }
            Ok(())
        }));
    }
    (settings, slots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page::rewrite::{Charset, Edits, Engine, Insertions, Rewriter};

    fn tags() -> EmbedTags {
        EmbedTags::new(&["released-page".to_string(), "released-widget".to_string()]).unwrap()
    }

    fn rule(selector: &str, position: Position, html: &str) -> InsertRule {
        InsertRule::new(selector, position, html).unwrap()
    }

    /// `page` through a rewriter with `rules`, fed in `chunk`-byte pieces.
    fn run(
        page: &[u8],
        rules: &[InsertRule],
        token: Option<&str>,
        nonce: Option<&str>,
        charset: Charset,
        chunk: usize,
    ) -> (Vec<u8>, Insertions, usize) {
        let token = token.map(Token::new);
        let tags = tags();
        let edits = Edits {
            token: token.as_ref(),
            insert: rules
                .iter()
                .map(|r| Insertion::prepare(r, &tags, token.as_ref(), nonce))
                .collect(),
            ..Edits::default()
        };
        let mut r = Rewriter::with_edits(&tags, edits, charset, 1 << 20);
        assert_eq!(r.engine(), Engine::Reference, "inserts run on lol_html");
        let mut out = Vec::new();
        for c in page.chunks(chunk.max(1)) {
            out.extend_from_slice(&r.write(c));
        }
        out.extend_from_slice(&r.end());
        (out, r.insertions(), r.tags_rewritten())
    }

    fn text(page: &str, rules: &[InsertRule], chunk: usize) -> (String, Insertions) {
        let (out, n, _) = run(page.as_bytes(), rules, None, None, Charset::Sniffed, chunk);
        (String::from_utf8(out).unwrap(), n)
    }

    const W: &str = "<i>W</i>";

    #[test]
    fn each_position_puts_the_snippet_at_the_first_match_in_any_chunking() {
        use Position::{After, Append, Before, Prepend};
        let page =
            "<html><body><div class=a>1</div><div class=a>2</div><img class=a></body></html>";
        let cases = [
            ("div.a", Before, format!("<html><body>{W}<div class=a>1</div><div class=a>2</div><img class=a></body></html>")),
            ("div.a", After, format!("<html><body><div class=a>1</div>{W}<div class=a>2</div><img class=a></body></html>")),
            ("div.a", Prepend, format!("<html><body><div class=a>{W}1</div><div class=a>2</div><img class=a></body></html>")),
            ("div.a", Append, format!("<html><body><div class=a>1{W}</div><div class=a>2</div><img class=a></body></html>")),
            ("body", Append, format!("<html><body><div class=a>1</div><div class=a>2</div><img class=a>{W}</body></html>")),
            // A void element has no inside: where its content would be is right after it.
            ("img", Append, format!("<html><body><div class=a>1</div><div class=a>2</div><img class=a>{W}</body></html>")),
            ("img", Prepend, format!("<html><body><div class=a>1</div><div class=a>2</div><img class=a>{W}</body></html>")),
            ("img", Before, format!("<html><body><div class=a>1</div><div class=a>2</div>{W}<img class=a></body></html>")),
        ];
        for (selector, position, want) in cases {
            for chunk in [1, 3, 7, 4096] {
                let (out, n) = text(page, &[rule(selector, position, W)], chunk);
                assert_eq!(out, want, "{selector} {position:?} chunk {chunk}");
                assert_eq!(
                    n,
                    Insertions {
                        inserted: 1,
                        no_match: 0
                    }
                );
            }
        }
    }

    #[test]
    fn no_match_leaves_the_page_unchanged_and_is_counted() {
        let page = "<html><body><p>x</p><!-- <main> --><script>'<main>'</script></body></html>";
        let (out, n) = text(page, &[rule("main", Position::Append, W)], 5);
        assert_eq!(out, page);
        assert_eq!(
            n,
            Insertions {
                inserted: 0,
                no_match: 1
            }
        );
    }

    #[test]
    fn an_element_the_page_never_closes_gets_its_snippet_at_the_end() {
        let (out, n) = text(
            "<html><body><p>x</p>",
            &[
                rule("body", Position::Append, W),
                rule("body", Position::After, "<b>A</b>"),
            ],
            2,
        );
        assert_eq!(out, format!("<html><body><p>x</p>{W}<b>A</b>"));
        assert_eq!(
            n,
            Insertions {
                inserted: 2,
                no_match: 0
            }
        );
    }

    #[test]
    fn rules_apply_independently_and_in_order() {
        let rules = [
            rule("#x", Position::Before, "<a>1</a>"),
            rule("#nope", Position::Before, "<a>2</a>"),
            rule("#x", Position::Before, "<a>3</a>"),
        ];
        let (out, n) = text("<p id=x></p>", &rules, 1);
        assert_eq!(out, "<a>1</a><a>3</a><p id=x></p>");
        assert_eq!(
            n,
            Insertions {
                inserted: 2,
                no_match: 1
            }
        );
    }

    #[test]
    fn snippet_embed_tags_get_the_token_and_scripts_the_nonce() {
        let snippet = r#"<released-widget widget-id="w1" auth-token="stale"></released-widget><script>init()</script><script src="/x.js" nonce="old"></script>"#;
        let page = "<body><released-page></released-page></body>";
        let (out, n, tagged) = run(
            page.as_bytes(),
            &[rule("body", Position::Append, snippet)],
            Some("T\"0K"),
            Some("n0nce"),
            Charset::Sniffed,
            4,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"<body><released-page auth-token="T&quot;0K"></released-page><released-widget widget-id="w1" auth-token="T&quot;0K"></released-widget><script nonce="n0nce">init()</script><script src="/x.js" nonce="n0nce"></script></body>"#
        );
        assert_eq!(n.inserted, 1);
        assert_eq!(tagged, 2, "the page's tag and the snippet's");

        // No token (the call failed) and no nonce: the snippet goes in as written.
        let (out, _, tagged) = run(
            page.as_bytes(),
            &[rule("body", Position::Append, snippet)],
            None,
            None,
            Charset::Sniffed,
            4,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("<body><released-page></released-page>{snippet}</body>")
        );
        assert_eq!(tagged, 0);
    }

    #[test]
    fn the_snippet_is_written_in_the_page_charset() {
        // windows-1252: é is one byte; a character it cannot hold becomes a reference.
        let charset = Charset::from_content_type("text/html; charset=windows-1252");
        let (out, n, _) = run(
            b"<p>caf\xe9</p><div></div>",
            &[rule("div", Position::Prepend, "<b>\u{e9}\u{4e2d}</b>")],
            Some("T"),
            None,
            charset,
            3,
        );
        assert_eq!(
            out,
            b"<p>caf\xe9</p><div><b>\xe9&#20013;</b></div>".to_vec()
        );
        assert_eq!(n.inserted, 1);
    }

    #[test]
    fn positions_read_from_their_names() {
        for name in Position::NAMES {
            assert_eq!(Position::from_name(name).map(Position::name), Some(*name));
        }
        assert_eq!(Position::from_name("inside"), None);
        assert!(InsertRule::new("div[", Position::Append, W).is_err());
        assert!(InsertRule::new("div:hover", Position::Append, W).is_err());
        assert!(InsertRule::new("main > #app.x[data-y=\"z\"]", Position::Append, W).is_ok());
    }
}
