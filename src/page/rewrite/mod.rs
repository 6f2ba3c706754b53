//! The streaming HTML rewrite: every start tag named in `embed.tags` gets
//! `auth-token="<token>"` (replacing any existing one) as chunks pass through.
//! Knows nothing about HTTP: bytes in, bytes out, chunk by chunk, with a hard bound on
//! the memory one response may hold.
//!
//! Two engines produce the same bytes. lol_html is the reference; [`scan`] is a
//! purpose-built port of the part of lol_html's parser that decides where start tags are,
//! about three times faster in criterion (2.45–2.56 GiB/s against lol_html's 759–797 MiB/s
//! on the 100 KB page, `benches/README.md`) because it keeps no open-element stack, builds
//! no tokens and skips text a word at a time. The
//! fast engine runs when the only edit is the token and the escaped token is ASCII (so it
//! is the same bytes in every ASCII-compatible charset lol_html might switch to); the
//! loader injection, which needs lol_html's end-tag and document-end handlers, runs on
//! lol_html. `tests/rewrite_differential.rs` holds the two to the same output.
//!
//! Past the bound (a hostile page with a huge or unterminated tag), what is held is
//! flushed unchanged and the rest of the response passes through untouched: the page is
//! always complete; tags after that point get no token.
//!
//! The output is bounded too: every embed tag grows by a copy of the token, and pingora
//! filters up to five body chunks before it writes any of them to the client, so a page
//! of nothing but empty embed tags would multiply into gigabytes held in memory. At most
//! [`MAX_TOKEN_BYTES_PER_PAGE`] of token copies go into one page; later tags keep
//! whatever they had.

use std::borrow::Cow;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::{Bytes, BytesMut};
use lol_html::errors::RewritingError;
use lol_html::html_content::{ContentType, EndTag};
use lol_html::send::{Element, ElementContentHandlers, EndTagHandler, HtmlRewriter, Settings};
use lol_html::{element, end, AsciiCompatibleEncoding, MemorySettings, Selector};

use crate::token::secret::Token;

pub mod insert;
pub mod scan;

use insert::{Insertion, Slot};

/// The attribute the Released embed reads.
pub const TOKEN_ATTRIBUTE: &str = "auth-token";

/// Most bytes of token copies written into one page: 256 tags with the largest token
/// the client accepts (8 KiB), thousands with a typical one; real pages have a handful.
pub const MAX_TOKEN_BYTES_PER_PAGE: usize = 2 * 1024 * 1024;

/// The compiled `embed.tags`: names and the selector matching them.
#[derive(Debug, Clone)]
pub struct EmbedTags {
    names: Vec<String>,
    selector: Selector,
}

impl EmbedTags {
    /// Compiles a list of lowercase tag names (validated by the config).
    pub fn new(names: &[String]) -> Result<Self, String> {
        let selector = Selector::from_str(&names.join(", "))
            .map_err(|e| format!("embed tags do not form a valid selector: {e}"))?;
        Ok(Self {
            names: names.to_vec(),
            selector,
        })
    }

    /// The tag names.
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

/// Which encoding a response body is in, from its `Content-Type` charset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    /// Declared and ASCII-compatible: rewrite in it.
    Declared(AsciiCompatibleEncoding),
    /// Not declared: start as UTF-8 and follow a `<meta charset>` if the page has one.
    Sniffed,
    /// Declared but not ASCII-compatible (UTF-16…) or unknown: pass the body through.
    Unsupported,
}

impl Charset {
    /// Reads the `charset` parameter of a `Content-Type` value.
    pub fn from_content_type(content_type: &str) -> Charset {
        let label = content_type.split(';').skip(1).find_map(|param| {
            let (key, value) = param.split_once('=')?;
            key.trim()
                .eq_ignore_ascii_case("charset")
                .then(|| value.trim().trim_matches('"'))
        });
        match label {
            None => Charset::Sniffed,
            Some(label) => encoding_rs::Encoding::for_label(label.as_bytes())
                .and_then(AsciiCompatibleEncoding::new)
                .map_or(Charset::Unsupported, Charset::Declared),
        }
    }
}

/// What the lol_html callbacks share with the [`Rewriter`] that owns them.
#[derive(Default)]
struct Shared {
    out: Mutex<BytesMut>,
    tags: AtomicUsize,
    /// The injection is done (or there is none).
    injected: AtomicBool,
    /// Token copies still allowed in this page, in bytes.
    token_budget: AtomicUsize,
    /// Embed tags left without a token because the budget was spent.
    tags_over_budget: AtomicUsize,
}

impl Shared {
    /// Claims the one injection; `true` for exactly one caller.
    fn take_injection(&self) -> bool {
        !self.injected.swap(true, Ordering::Relaxed)
    }

    fn push(&self, bytes: &[u8]) {
        self.out
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(bytes);
    }

    fn take(&self) -> Bytes {
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        // split() keeps the spare capacity here, so steady-state chunks reuse one buffer.
        out.split().freeze()
    }

    fn reserve(&self, additional: usize) {
        self.out
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .reserve(additional);
    }
}

type Sink = Box<dyn FnMut(&[u8]) + Send>;

/// Inserts `script` at the first of: `</head>`, `<body>`, the end of the document (the
/// embed-tag handler covers the first embed tag).
fn with_injection<'h, 's>(
    settings: Settings<'h, 's>,
    shared: &Arc<Shared>,
    script: Arc<str>,
) -> Settings<'h, 's> {
    let (head, body, end) = (Arc::clone(shared), Arc::clone(shared), Arc::clone(shared));
    let (s1, s2, s3) = (Arc::clone(&script), Arc::clone(&script), script);
    settings
        .append_element_content_handler(element!("head", move |el| {
            let (shared, script) = (Arc::clone(&head), Arc::clone(&s1));
            // Not called for a head closed implicitly; `<body>` covers that.
            let handler: EndTagHandler<'static> = Box::new(move |end: &mut EndTag<'_>| {
                if shared.take_injection() {
                    end.before(&script, ContentType::Html);
                }
                Ok(())
            });
            let _ = el.on_end_tag(handler);
            Ok(())
        }))
        .append_element_content_handler(element!("body", move |el| {
            if body.take_injection() {
                el.before(&s2, ContentType::Html);
            }
            Ok(())
        }))
        .append_document_content_handler(end!(move |doc_end| {
            if end.take_injection() {
                doc_end.append(&s3, ContentType::Html);
            }
            Ok(())
        }))
}

/// Which implementation rewrites a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// The [`scan`] port where it is exact (token-only edits, ASCII token), else lol_html.
    Fast,
    /// lol_html, always: the reference the fast engine is tested against.
    Reference,
}

/// One response's rewrite. Feed chunks with [`Rewriter::write`], finish with
/// [`Rewriter::end`]; each returns the output ready to send.
pub struct Rewriter {
    inner: Inner,
    injects: bool,
}

enum Inner {
    Fast(Box<scan::Scanner>),
    Reference(Box<Reference>),
}

/// The lol_html engine and what its callbacks share.
struct Reference {
    html: Option<HtmlRewriter<'static, Sink>>,
    shared: Arc<Shared>,
    /// One per `embed.insert` rule.
    slots: Vec<Arc<Slot>>,
    bailed_out: bool,
}

/// What one response's rewrite does besides passing the page through.
#[derive(Default)]
pub struct Edits<'a> {
    /// Written as `auth-token` into every embed start tag.
    pub token: Option<&'a Token>,
    /// Markup inserted once: before `</head>`; else (a head closed implicitly, or none)
    /// before `<body>`; else before the first embed tag; else at the end of the document.
    pub inject: Option<String>,
    /// `embed.insert` snippets, each put next to the first element its selector matches.
    pub insert: Vec<Insertion<'a>>,
}

/// What became of a page's `embed.insert` rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Insertions {
    /// Snippets that went in.
    pub inserted: usize,
    /// Rules whose selector matched nothing (or not before the rewrite stopped).
    pub no_match: usize,
}

impl Rewriter {
    /// A rewriter that writes `token` into every `tags` start tag, holding at most
    /// `memory_limit` bytes of unfinished markup.
    pub fn new(tags: &EmbedTags, token: &Token, charset: Charset, memory_limit: usize) -> Self {
        let edits = Edits {
            token: Some(token),
            ..Edits::default()
        };
        Self::with_edits(tags, edits, charset, memory_limit)
    }

    /// A rewriter making `edits`, holding at most `memory_limit` bytes of unfinished markup.
    pub fn with_edits(
        tags: &EmbedTags,
        edits: Edits<'_>,
        charset: Charset,
        memory_limit: usize,
    ) -> Self {
        Self::with_engine(tags, edits, charset, memory_limit, Engine::Fast)
    }

    /// [`Rewriter::with_edits`] on the given engine (tests and benches compare them).
    pub fn with_engine(
        tags: &EmbedTags,
        edits: Edits<'_>,
        charset: Charset,
        memory_limit: usize,
        engine: Engine,
    ) -> Self {
        let value = edits.token.map(|t| escape_attribute(t.expose()));
        // The scanner only writes tokens; the loader and `embed.insert` need lol_html.
        let exact = edits.inject.is_none()
            && edits.insert.is_empty()
            && value.as_deref().is_none_or(str::is_ascii);
        if engine == Engine::Fast && exact {
            // lol_html lexes `<meta>` for its charset sniffing, which changes how it
            // parses in one quirky case; the scanner copies that too.
            let lexed: &[&str] = if charset == Charset::Sniffed {
                &["meta"]
            } else {
                &[]
            };
            let scanner = scan::Scanner::new(
                tags.names(),
                lexed,
                value.as_deref(),
                MAX_TOKEN_BYTES_PER_PAGE,
                memory_limit,
            );
            return Self {
                inner: Inner::Fast(Box::new(scanner)),
                injects: false,
            };
        }
        Self::reference(tags, value, edits, charset, memory_limit)
    }

    fn reference(
        tags: &EmbedTags,
        value: Option<String>,
        edits: Edits<'_>,
        charset: Charset,
        memory_limit: usize,
    ) -> Self {
        let Edits { inject, insert, .. } = edits;
        let shared = Arc::new(Shared {
            token_budget: AtomicUsize::new(MAX_TOKEN_BYTES_PER_PAGE),
            ..Shared::default()
        });
        let inject: Option<Arc<str>> = inject.map(Arc::from);
        let injects = inject.is_some();
        if inject.is_none() {
            // Nothing to insert: the flag reads as done, so no handler inserts.
            shared.injected.store(true, Ordering::Relaxed);
        }
        let encoding = match charset {
            Charset::Declared(e) => e,
            Charset::Sniffed | Charset::Unsupported => {
                AsciiCompatibleEncoding::new(encoding_rs::UTF_8).expect("UTF-8 is ASCII-compatible")
            }
        };
        let counter = Arc::clone(&shared);
        let before_tag = inject.clone();
        let mut settings = Settings::new_send().append_element_content_handler((
            Cow::Borrowed(&tags.selector),
            ElementContentHandlers::default().element(move |el: &mut Element<'_, '_>| {
                if let Some(script) = before_tag.as_deref() {
                    if counter.take_injection() {
                        el.before(script, ContentType::Html);
                    }
                }
                if let Some(value) = &value {
                    let budget = counter.token_budget.load(Ordering::Relaxed);
                    if budget < value.len() {
                        counter.tags_over_budget.fetch_add(1, Ordering::Relaxed);
                        return Ok(());
                    }
                    counter
                        .token_budget
                        .store(budget - value.len(), Ordering::Relaxed);
                    el.remove_attribute(TOKEN_ATTRIBUTE);
                    el.set_attribute(TOKEN_ATTRIBUTE, value)?;
                    counter.tags.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }),
        ));
        if let Some(script) = inject {
            settings = with_injection(settings, &shared, script);
        }
        let (settings, slots) = insert::with_insertions(settings, insert);
        let settings = settings
            .with_encoding(encoding)
            .with_adjust_charset_on_meta_tag(charset == Charset::Sniffed)
            // Strict mode turns rare ambiguous markup into a hard error that cannot be
            // recovered mid-stream; lol_html's best guess keeps the page whole.
            .with_strict(false)
            .with_memory_settings(
                MemorySettings::new()
                    .with_max_allowed_memory_usage(memory_limit)
                    .with_graceful_bail_out_on_memory_limit_exceeded(true),
            );
        let sink_shared = Arc::clone(&shared);
        let sink: Sink = Box::new(move |bytes: &[u8]| sink_shared.push(bytes));
        Self {
            inner: Inner::Reference(Box::new(Reference {
                html: Some(HtmlRewriter::new(settings, sink)),
                shared,
                slots,
                bailed_out: false,
            })),
            injects,
        }
    }

    /// Which engine this rewriter runs on.
    pub fn engine(&self) -> Engine {
        match self.inner {
            Inner::Fast(_) => Engine::Fast,
            Inner::Reference(_) => Engine::Reference,
        }
    }

    /// Whether the injected markup went in.
    pub fn injected(&self) -> bool {
        match &self.inner {
            Inner::Fast(_) => false,
            Inner::Reference(r) => self.injects && r.shared.injected.load(Ordering::Relaxed),
        }
    }

    /// Rewrites one chunk and returns the output ready so far (possibly empty: an
    /// unfinished tag is held back until its end arrives).
    pub fn write(&mut self, chunk: &[u8]) -> Bytes {
        match &mut self.inner {
            Inner::Fast(scanner) => scan_warning_once(scanner, |s| s.write(chunk)),
            Inner::Reference(r) => r.write(chunk),
        }
    }

    /// [`Rewriter::write`] for a chunk held as [`Bytes`] (what pingora hands the body
    /// filter): on the fast engine, a chunk that passes through unchanged goes out as a
    /// slice of itself instead of a copy.
    pub fn write_bytes(&mut self, chunk: Bytes) -> Bytes {
        match &mut self.inner {
            Inner::Fast(scanner) => scan_warning_once(scanner, |s| s.write_bytes(chunk)),
            Inner::Reference(r) => r.write(&chunk),
        }
    }

    /// Flushes whatever is held back at the end of the body.
    pub fn end(&mut self) -> Bytes {
        match &mut self.inner {
            Inner::Fast(scanner) => scanner.end(),
            Inner::Reference(r) => r.end(),
        }
    }

    /// Start tags that received the token so far (those of inserted snippets included).
    pub fn tags_rewritten(&self) -> usize {
        match &self.inner {
            Inner::Fast(scanner) => scanner.tags_rewritten(),
            Inner::Reference(r) => {
                let inserted: usize = r
                    .slots
                    .iter()
                    .filter(|s| s.inserted())
                    .map(|s| s.tags())
                    .sum();
                r.shared.tags.load(Ordering::Relaxed) + inserted
            }
        }
    }

    /// How many `embed.insert` snippets went in, and how many rules matched nothing; final
    /// after [`Rewriter::end`].
    pub fn insertions(&self) -> Insertions {
        let Inner::Reference(r) = &self.inner else {
            return Insertions::default();
        };
        let inserted = r.slots.iter().filter(|s| s.inserted()).count();
        Insertions {
            inserted,
            no_match: r.slots.len() - inserted,
        }
    }

    /// Whether a bound was hit: the memory bound (the rest passed through unchanged) or
    /// the token budget (later tags got no token).
    pub fn bailed_out(&self) -> bool {
        match &self.inner {
            Inner::Fast(scanner) => scanner.bailed_out() || scanner.tags_over_budget() > 0,
            Inner::Reference(r) => {
                r.bailed_out || r.shared.tags_over_budget.load(Ordering::Relaxed) > 0
            }
        }
    }
}

/// Runs one write on the scanner; warns once, when this write hit the memory bound.
fn scan_warning_once(
    scanner: &mut scan::Scanner,
    write: impl FnOnce(&mut scan::Scanner) -> Bytes,
) -> Bytes {
    let was = scanner.bailed_out();
    let out = write(scanner);
    if scanner.bailed_out() && !was {
        warn_stopped(&"an unfinished tag outgrew the memory limit");
    }
    out
}

fn warn_stopped(error: &dyn std::fmt::Display) {
    tracing::warn!(error = %error, "HTML rewrite stopped; the rest of the page passes through unchanged");
}

impl Reference {
    fn write(&mut self, chunk: &[u8]) -> Bytes {
        let Some(html) = self.html.as_mut() else {
            return Bytes::copy_from_slice(chunk);
        };
        self.shared.reserve(chunk.len() + 256);
        if let Err(e) = html.write(chunk) {
            self.stop(&e);
        }
        self.shared.take()
    }

    fn end(&mut self) -> Bytes {
        if let Some(html) = self.html.take() {
            if let Err(e) = html.end() {
                self.stop(&e);
            }
        }
        self.shared.take()
    }

    fn stop(&mut self, error: &RewritingError) {
        // With graceful bail-out the sink already holds every input byte not yet
        // emitted, unchanged; from here on chunks are copied through as they are.
        self.html = None;
        self.bailed_out = true;
        warn_stopped(error);
    }
}

/// Escapes a value for a double-quoted attribute (lol_html itself only escapes `"`).
pub fn escape_attribute(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags() -> EmbedTags {
        EmbedTags::new(&[
            "released-page".to_string(),
            "released-widget".to_string(),
            "released-form".to_string(),
        ])
        .unwrap()
    }

    fn rewrite_chunks(
        chunks: &[&[u8]],
        token: &str,
        charset: Charset,
        limit: usize,
    ) -> (Vec<u8>, Rewriter) {
        let mut r = Rewriter::new(&tags(), &Token::new(token), charset, limit);
        let mut out = Vec::new();
        for c in chunks {
            out.extend_from_slice(&r.write(c));
        }
        out.extend_from_slice(&r.end());
        (out, r)
    }

    fn rewrite(html: &str) -> String {
        let (out, _) = rewrite_chunks(&[html.as_bytes()], "T0K", Charset::Sniffed, 1 << 20);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn token_copies_stop_at_the_page_budget() {
        let token = "t".repeat(8 * 1024);
        let page = "<released-page></released-page>".repeat(300);
        let (out, r) = rewrite_chunks(&[page.as_bytes()], &token, Charset::Sniffed, 1 << 20);
        let budgeted = MAX_TOKEN_BYTES_PER_PAGE / token.len();
        assert_eq!(r.tags_rewritten(), budgeted);
        assert!(r.bailed_out());
        let attribute = " auth-token=\"\"".len() + token.len();
        assert_eq!(out.len(), page.len() + budgeted * attribute);

        let (_, r) = rewrite_chunks(&[page.as_bytes()], "short", Charset::Sniffed, 1 << 20);
        assert_eq!(r.tags_rewritten(), 300);
        assert!(!r.bailed_out());
    }

    #[test]
    fn tag_rewrite_table() {
        let cases = [
            (
                "<released-page></released-page>",
                r#"<released-page auth-token="T0K"></released-page>"#,
            ),
            (
                r#"<released-page account="a">"#,
                r#"<released-page account="a" auth-token="T0K">"#,
            ),
            (
                r#"<RELEASED-WIDGET Auth-Token="old">"#,
                r#"<RELEASED-WIDGET auth-token="T0K">"#,
            ),
            (
                r#"<released-form auth-token=a auth-token=b>"#,
                r#"<released-form auth-token="T0K">"#,
            ),
            ("<released-page/>", r#"<released-page auth-token="T0K" />"#),
            ("<div><p>no tags</p></div>", "<div><p>no tags</p></div>"),
            (
                "<released-pages></released-pages>",
                "<released-pages></released-pages>",
            ),
            ("<!-- <released-page> -->", "<!-- <released-page> -->"),
            (
                "<script>'<released-page>'</script>",
                "<script>'<released-page>'</script>",
            ),
            (
                "<textarea><released-page></textarea>",
                "<textarea><released-page></textarea>",
            ),
            ("</released-page>", "</released-page>"),
        ];
        for (input, want) in cases {
            assert_eq!(rewrite(input), want, "{input}");
        }
    }

    #[test]
    fn token_is_html_escaped() {
        let (out, _) = rewrite_chunks(
            &[b"<released-page>"],
            r#"a"b<c>&'d"#,
            Charset::Sniffed,
            1 << 20,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"<released-page auth-token="a&quot;b&lt;c&gt;&amp;&#39;d">"#
        );
    }

    #[test]
    fn every_chunking_gives_the_same_output() {
        let html = r#"<html><body><RELEASED-PAGE id="x" auth-token="stale"></RELEASED-PAGE><released-widget/></body></html>"#;
        let whole = rewrite(html);
        let bytes = html.as_bytes();
        let ones: Vec<&[u8]> = bytes.chunks(1).collect();
        let (out, r) = rewrite_chunks(&ones, "T0K", Charset::Sniffed, 1 << 20);
        assert_eq!(String::from_utf8(out).unwrap(), whole);
        assert_eq!(r.tags_rewritten(), 2);
        for split in 0..bytes.len() {
            let (out, _) = rewrite_chunks(
                &[&bytes[..split], &bytes[split..]],
                "T0K",
                Charset::Sniffed,
                1 << 20,
            );
            assert_eq!(String::from_utf8(out).unwrap(), whole, "split at {split}");
        }
    }

    #[test]
    fn non_utf8_ascii_compatible_charsets_are_rewritten_byte_exactly() {
        // "café" in windows-1252 around the tag: the é byte must survive untouched.
        let page: &[u8] = b"<p>caf\xe9</p><released-page></released-page><p>\xe9</p>";
        let charset = Charset::from_content_type("text/html; charset=windows-1252");
        assert!(matches!(charset, Charset::Declared(_)));
        let (out, _) = rewrite_chunks(&[page], "T0K", charset, 1 << 20);
        assert_eq!(
            out,
            b"<p>caf\xe9</p><released-page auth-token=\"T0K\"></released-page><p>\xe9</p>".to_vec()
        );
    }

    #[test]
    fn charset_parsing() {
        assert_eq!(Charset::from_content_type("text/html"), Charset::Sniffed);
        assert!(matches!(
            Charset::from_content_type("text/html; charset=\"UTF-8\""),
            Charset::Declared(_)
        ));
        assert!(matches!(
            Charset::from_content_type("text/html;CHARSET=iso-8859-1"),
            Charset::Declared(_)
        ));
        assert_eq!(
            Charset::from_content_type("text/html; charset=utf-16le"),
            Charset::Unsupported
        );
        assert_eq!(
            Charset::from_content_type("text/html; charset=klingon"),
            Charset::Unsupported
        );
    }

    fn page_with_huge_tag(tag: &str) -> Vec<u8> {
        let mut page = b"<released-page></released-page>".to_vec();
        page.extend_from_slice(format!("<{tag} data-x=\"").as_bytes());
        page.extend(std::iter::repeat_n(b'a', 200_000));
        page.extend_from_slice(b"\"><released-page></released-page>");
        page
    }

    #[test]
    fn past_the_memory_bound_the_rest_passes_through_whole() {
        // An embed tag far bigger than the bound: everything from there on is the input
        // unchanged (the later tag gets no token), and nothing is lost.
        let page = page_with_huge_tag("released-widget");
        let chunks: Vec<&[u8]> = page.chunks(4096).collect();
        let (out, r) = rewrite_chunks(&chunks, "T0K", Charset::Sniffed, 32 * 1024);
        assert!(r.bailed_out());
        assert_eq!(r.tags_rewritten(), 1);
        let mut want = b"<released-page auth-token=\"T0K\"></released-page>".to_vec();
        want.extend_from_slice(&page[b"<released-page></released-page>".len()..]);
        assert!(out == want, "output differs from input plus one attribute");
    }

    #[test]
    fn huge_tags_that_are_not_embed_tags_need_no_buffering() {
        let page = page_with_huge_tag("div");
        let chunks: Vec<&[u8]> = page.chunks(4096).collect();
        let (out, r) = rewrite_chunks(&chunks, "T0K", Charset::Sniffed, 32 * 1024);
        assert!(!r.bailed_out());
        assert_eq!(r.tags_rewritten(), 2);
        assert_eq!(out.len(), page.len() + 2 * b" auth-token=\"T0K\"".len());
    }

    const SCRIPT: &str = "<script src=\"/.released/embed.js\" defer></script>";

    fn inject(html: &str, token: Option<&str>, chunk: usize) -> (String, bool) {
        let token = token.map(Token::new);
        let edits = Edits {
            token: token.as_ref(),
            inject: Some(SCRIPT.to_string()),
            ..Edits::default()
        };
        let mut r = Rewriter::with_edits(&tags(), edits, Charset::Sniffed, 1 << 20);
        let mut out = Vec::new();
        for c in html.as_bytes().chunks(chunk) {
            out.extend_from_slice(&r.write(c));
        }
        out.extend_from_slice(&r.end());
        (String::from_utf8(out).unwrap(), r.injected())
    }

    #[test]
    fn the_loader_goes_in_once_at_the_best_place_the_page_offers() {
        let s = SCRIPT;
        let cases = [
            (
                "<html><head><title>t</title></head><body><released-page></released-page></body></html>",
                format!("<html><head><title>t</title>{s}</head><body><released-page></released-page></body></html>"),
            ),
            (
                "<html><head><title>t</title><body><p>x</p></body>",
                format!("<html><head><title>t</title>{s}<body><p>x</p></body>"),
            ),
            (
                "<p>a</p><released-widget></released-widget><released-page></released-page>",
                format!("<p>a</p>{s}<released-widget></released-widget><released-page></released-page>"),
            ),
            ("<p>no embed</p>", format!("<p>no embed</p>{s}")),
            (
                "<!-- </head> --><head></head><script>'</head>'</script>",
                format!("<!-- </head> --><head>{s}</head><script>'</head>'</script>"),
            ),
        ];
        for (page, want) in cases {
            for chunk in [1, 7, 4096] {
                let (out, injected) = inject(page, None, chunk);
                assert_eq!(out, want, "chunk {chunk}");
                assert!(injected);
                assert_eq!(out.matches(SCRIPT).count(), 1);
            }
        }
    }

    #[test]
    fn injection_and_token_together() {
        let (out, _) = inject("<head></head><released-page></released-page>", Some("T"), 3);
        assert_eq!(
            out,
            format!("<head>{SCRIPT}</head><released-page auth-token=\"T\"></released-page>")
        );
        let (out, _) = inject("<released-page></released-page>", None, 3);
        assert!(!out.contains("auth-token"), "no token, no attribute: {out}");
    }
}
