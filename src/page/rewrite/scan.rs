//! The fast rewrite engine: a streaming HTML start-tag scanner that finds embed start
//! tags exactly where lol_html finds them and rewrites them to the bytes lol_html writes,
//! without lol_html's token, selector and open-element machinery.
//!
//! Written by hand because it has to be byte-identical to the reference engine, not to
//! the WHATWG spec: it ports lol_html 3's tokenizer states
//! (`parser/state_machine/syntax`), its two parser modes (the tag scanner and the lexer,
//! and how one hands over to the other at a tag through a bookmark), and its tree
//! builder simulator (`parser/tree_builder_simulator`, non-strict) one for one, quirks
//! included (`<script a=>` leaves the scanner in the data state, as lol_html's does).
//! `tests/rewrite_differential.rs` holds the two engines to the same output.
//!
//! Only the bytes of an unfinished tag are held back (at most the memory limit); the rest
//! of each chunk goes out in one piece, as a slice of the chunk when it is unchanged
//! ([`Scanner::write_bytes`]).
//!
//! Speed comes from not running the byte-at-a-time port where its outcome is known:
//! text is skipped to the next `<` a word at a time (memchr past 32 bytes); in the data
//! state whole tags, comments and runs of them are read in one loop (`data_tags`) with
//! byte-class tables, and a tag that cannot interest the tree builder simulator or the
//! matchers (a name that neither steers parsing nor has an embed name's length, checked
//! with one lookup each) never reaches them; in script, style and title text, a `<` that
//! cannot be the appropriate end tag is skipped likewise. `Scanner::step` remains the
//! reference for everything else, and every shortcut leaves the state it would.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};

/// How the text after a tag is tokenized (lol_html's `TextType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextType {
    /// Markup: tags, comments, doctypes.
    Data,
    /// Everything up to the end of the input is text (`<plaintext>`).
    PlainText,
    /// Text up to the matching end tag, character references allowed (`<title>`).
    RcData,
    /// Text up to the matching end tag (`<style>`).
    RawText,
    /// Script text with its `<!--` escapes (`<script>`).
    ScriptData,
    /// `<![CDATA[` … `]]>` in foreign content.
    CdataSection,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ns {
    Html,
    Svg,
    MathMl,
}

/// lol_html's `LocalNameHash`: up to 12 characters of `[a-z1-6]`, case-folded; any other
/// name hashes to `EMPTY_HASH`. The tree builder simulator and the appropriate-end-tag
/// check compare these hashes, not names, so the port must too (`</abcdefghijklm>` in a
/// context whose last start tag was unhashable is an "appropriate" end tag for lol_html).
const EMPTY_HASH: u64 = !0;

const fn hash_update(h: u64, ch: u8) -> u64 {
    if h >> (64 - 5) != 0 {
        return EMPTY_HASH;
    }
    match ch {
        b'a'..=b'z' | b'A'..=b'Z' => (h << 5) | ((ch as u64 & 0x1F) + 5),
        b'1'..=b'6' => (h << 5) | ((ch as u64 & 0x0F) - 1),
        _ => EMPTY_HASH,
    }
}

/// Each byte's 5-bit code in a [`LocalNameHash`](hash_update), or `0xFF` where the byte
/// makes the name unhashable.
static HASH_CODE: [u8; 256] = {
    let mut t = [0xFFu8; 256];
    let mut b = 0;
    while b < 256 {
        let ch = b as u8;
        if ch.is_ascii_alphabetic() {
            t[b] = (ch & 0x1F) + 5;
        } else if ch >= b'1' && ch <= b'6' {
            t[b] = (ch & 0x0F) - 1;
        }
        b += 1;
    }
    t
};

/// For each byte: bit 7, it ends a tag name; else bit 6, it makes the name unhashable;
/// else its [`HASH_CODE`].
static NAME_BYTE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = if CLASS[b] & NAME_END != 0 {
            0x80
        } else if HASH_CODE[b] == 0xFF {
            0x40
        } else {
            HASH_CODE[b]
        };
        b += 1;
    }
    t
};

/// A start tag's name from `chunk[at]` (a letter) in one pass: where it ends (the chunk's
/// length if it goes on) and its hash. The overflow check of [`hash_update`] depends only
/// on the length when the first byte is a letter (code 6 to 31): 12 codes always fit,
/// 14 never do, and 13 fit when the first code is below 16.
#[inline]
fn scan_start_tag_name(chunk: &[u8], at: usize) -> (usize, u64) {
    let mut h = 0u64;
    let mut bad = 0u8;
    let mut j = at;
    for &b in &chunk[at..] {
        let t = NAME_BYTE[b as usize];
        if t & 0x80 != 0 {
            break;
        }
        bad |= t;
        h = (h << 5) | u64::from(t & 0x1F);
        j += 1;
    }
    let len = j - at;
    let overflows = len > 13 || len == 13 && HASH_CODE[chunk[at] as usize] >= 16;
    let h = if bad & 0x40 != 0 || overflows {
        EMPTY_HASH
    } else {
        h
    };
    (j, h)
}

/// `hash(name)` with a table lookup per byte, for the scanner's hot loop.
#[inline]
fn name_hash(name: &[u8]) -> u64 {
    let mut h = 0u64;
    for &b in name {
        let code = HASH_CODE[b as usize];
        if code == 0xFF || h >> (64 - 5) != 0 {
            return EMPTY_HASH;
        }
        h = (h << 5) | u64::from(code);
    }
    h
}

const fn hash(name: &[u8]) -> u64 {
    let mut h = 0;
    let mut i = 0;
    while i < name.len() {
        h = hash_update(h, name[i]);
        i += 1;
    }
    h
}

/// Tag name hashes the tree builder simulator tests.
mod tag {
    use super::hash;
    pub const SVG: u64 = hash(b"svg");
    pub const MATH: u64 = hash(b"math");
    pub const TEXTAREA: u64 = hash(b"textarea");
    pub const TITLE: u64 = hash(b"title");
    pub const PLAINTEXT: u64 = hash(b"plaintext");
    pub const SCRIPT: u64 = hash(b"script");
    pub const RAWTEXT: [u64; 6] = [
        hash(b"style"),
        hash(b"iframe"),
        hash(b"xmp"),
        hash(b"noembed"),
        hash(b"noframes"),
        hash(b"noscript"),
    ];
    pub const P: u64 = hash(b"p");
    pub const BR: u64 = hash(b"br");
    pub const FONT: u64 = hash(b"font");
    pub const MATHML_TEXT_INTEGRATION: [u64; 5] = [
        hash(b"mi"),
        hash(b"mo"),
        hash(b"mn"),
        hash(b"ms"),
        hash(b"mtext"),
    ];
    /// "foreignobject" has 13 characters, one more than a hash holds, but its first
    /// letter leaves room for the shift: lol_html's `Tag::ForeignObject` is this
    /// overflowed value, and a real `<foreignObject>` hashes to it too.
    pub const SVG_HTML_INTEGRATION: [u64; 3] =
        [hash(b"desc"), hash(b"title"), hash(b"foreignobject")];
    pub const FOREIGN_EXIT: [u64; 44] = [
        hash(b"b"),
        hash(b"big"),
        hash(b"blockquote"),
        hash(b"body"),
        hash(b"br"),
        hash(b"center"),
        hash(b"code"),
        hash(b"dd"),
        hash(b"div"),
        hash(b"dl"),
        hash(b"dt"),
        hash(b"em"),
        hash(b"embed"),
        hash(b"h1"),
        hash(b"h2"),
        hash(b"h3"),
        hash(b"h4"),
        hash(b"h5"),
        hash(b"h6"),
        hash(b"head"),
        hash(b"hr"),
        hash(b"i"),
        hash(b"img"),
        hash(b"li"),
        hash(b"listing"),
        hash(b"menu"),
        hash(b"meta"),
        hash(b"nobr"),
        hash(b"ol"),
        hash(b"p"),
        hash(b"pre"),
        hash(b"ruby"),
        hash(b"s"),
        hash(b"small"),
        hash(b"span"),
        hash(b"strong"),
        hash(b"strike"),
        hash(b"sub"),
        hash(b"sup"),
        hash(b"table"),
        hash(b"tt"),
        hash(b"u"),
        hash(b"ul"),
        hash(b"var"),
    ];
}

/// The start tags that, in HTML content, get anything but `Feedback::None` from
/// [`Namespaces::start_tag`].
const STEERING: [u64; 12] = [
    tag::SVG,
    tag::MATH,
    tag::TEXTAREA,
    tag::TITLE,
    tag::PLAINTEXT,
    tag::SCRIPT,
    tag::RAWTEXT[0],
    tag::RAWTEXT[1],
    tag::RAWTEXT[2],
    tag::RAWTEXT[3],
    tag::RAWTEXT[4],
    tag::RAWTEXT[5],
];

/// A multiplier that sends each [`STEERING`] hash to its own slot of 16 (found by search;
/// a unit test checks it).
const STEERING_MULTIPLIER: u64 = 0x313b_2e0e_557e_0e89;

fn steering_slot(h: u64) -> usize {
    (h.wrapping_mul(STEERING_MULTIPLIER) >> 60) as usize
}

/// [`STEERING`] by slot, so the check per start tag is one multiply and one comparison.
static STEERING_SLOTS: [u64; 16] = {
    let mut t = [0u64; 16];
    let mut k = 0;
    while k < STEERING.len() {
        t[(STEERING[k].wrapping_mul(STEERING_MULTIPLIER) >> 60) as usize] = STEERING[k];
        k += 1;
    }
    t
};

/// Whether a start tag with this name hash, in HTML content, gets anything but
/// `Feedback::None` from [`Namespaces::start_tag`]. (No name hashes to 0, the empty slots.)
#[inline]
fn steers_html_parsing(h: u64) -> bool {
    STEERING_SLOTS[steering_slot(h)] == h
}

fn is_svg_html_integration_point(h: u64) -> bool {
    tag::SVG_HTML_INTEGRATION.contains(&h)
}

/// What the tree builder simulator asks of the parser after a tag (lol_html's
/// `TreeBuilderFeedback`); the requests stand for its `RequestLexeme` callbacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Feedback {
    None,
    Switch(TextType),
    AllowCdata(bool),
    /// An svg desc/title/foreignObject or MathML mi/mo/mn/ms/mtext start tag: enters HTML
    /// unless self-closing.
    IntegrationPoint,
    /// `<font>` in foreign content: leaves it when it has color, face or size.
    Font,
    /// An unhashable start tag in MathML: `<annotation-xml encoding=text/html>` enters HTML.
    AnnotationXmlStart,
    /// An unhashable end tag in HTML inside MathML: `</annotation-xml>` leaves HTML.
    AnnotationXmlEnd,
}

/// lol_html's `FeedbackDirective`: what the lexer does about the tree builder at the
/// first tag it emits after taking over from the tag scanner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Directive {
    /// Ask the simulator.
    Ask,
    /// The scanner already did.
    Skip,
    /// Apply what the scanner left unapplied.
    Apply(Feedback),
}

/// The namespace stack of lol_html's tree builder simulator, run-length encoded so a page
/// of nested `<svg>` costs a counter, not memory.
struct Namespaces {
    stack: Vec<(Ns, usize)>,
    enabled: bool,
}

impl Namespaces {
    fn new(enabled: bool) -> Self {
        Self {
            stack: vec![(Ns::Html, 1)],
            enabled,
        }
    }

    /// HTML content and nothing else open: end tags get no feedback, and start tags only
    /// those [`steers_html_parsing`] names.
    fn is_plain_html(&self) -> bool {
        self.enabled && self.stack.len() == 1 && self.stack[0] == (Ns::Html, 1)
    }

    fn current(&self) -> Ns {
        self.stack.last().map_or(Ns::Html, |&(ns, _)| ns)
    }

    fn depth(&self) -> usize {
        self.stack.iter().map(|&(_, n)| n).sum()
    }

    fn previous(&self) -> Option<Ns> {
        let &(top, n) = self.stack.last()?;
        if n >= 2 {
            Some(top)
        } else {
            self.stack.len().checked_sub(2).map(|i| self.stack[i].0)
        }
    }

    fn enter(&mut self, ns: Ns) -> Feedback {
        match self.stack.last_mut() {
            Some((top, n)) if *top == ns => *n += 1,
            _ => self.stack.push((ns, 1)),
        }
        Feedback::AllowCdata(ns != Ns::Html)
    }

    fn leave(&mut self) -> Feedback {
        if let Some((_, n)) = self.stack.last_mut() {
            *n -= 1;
            if *n == 0 {
                self.stack.pop();
            }
        }
        if self.stack.is_empty() {
            // lol_html never pops its last entry (it debug-asserts); nor do we.
            self.stack.push((Ns::Html, 1));
            return Feedback::None;
        }
        Feedback::AllowCdata(self.current() != Ns::Html)
    }

    fn start_tag(&mut self, h: u64) -> Feedback {
        if !self.enabled {
            return Feedback::None;
        }
        if h == tag::SVG {
            return self.enter(Ns::Svg);
        }
        if h == tag::MATH {
            return self.enter(Ns::MathMl);
        }
        let ns = self.current();
        if ns != Ns::Html {
            if tag::FOREIGN_EXIT.contains(&h) {
                return self.leave();
            }
            if ns == Ns::Svg && is_svg_html_integration_point(h)
                || ns == Ns::MathMl && tag::MATHML_TEXT_INTEGRATION.contains(&h)
            {
                return Feedback::IntegrationPoint;
            }
            if h == tag::FONT {
                return Feedback::Font;
            }
            if h == EMPTY_HASH && ns == Ns::MathMl {
                return Feedback::AnnotationXmlStart;
            }
            return Feedback::None;
        }
        if h == tag::TEXTAREA || h == tag::TITLE {
            Feedback::Switch(TextType::RcData)
        } else if h == tag::PLAINTEXT {
            Feedback::Switch(TextType::PlainText)
        } else if h == tag::SCRIPT {
            Feedback::Switch(TextType::ScriptData)
        } else if tag::RAWTEXT.contains(&h) {
            Feedback::Switch(TextType::RawText)
        } else {
            Feedback::None
        }
    }

    fn end_tag(&mut self, h: u64) -> Feedback {
        if !self.enabled {
            return Feedback::None;
        }
        let ns = self.current();
        if ns == Ns::Html {
            if self.depth() < 2 {
                return Feedback::None;
            }
            let prev = self.previous();
            if prev == Some(Ns::MathMl) && tag::MATHML_TEXT_INTEGRATION.contains(&h)
                || prev == Some(Ns::Svg) && is_svg_html_integration_point(h)
            {
                self.leave()
            } else if h == EMPTY_HASH && prev == Some(Ns::MathMl) {
                Feedback::AnnotationXmlEnd
            } else {
                Feedback::None
            }
        } else if ns == Ns::Svg && h == tag::SVG
            || ns == Ns::MathMl && h == tag::MATH
            || h == tag::P
            || h == tag::BR
        {
            self.leave()
        } else {
            Feedback::None
        }
    }
}

/// lol_html's tokenizer states, one for one (see the module doc); `Seq` is a character
/// sequence arm (`"--"`, `"DOCTYPE"`…) part way through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Data,
    TagOpen,
    EndTagOpen,
    MarkupDeclarationOpen,
    TagName,
    SelfClosingStartTag,
    BeforeAttributeName,
    AttributeName,
    AfterAttributeName,
    BeforeAttributeValue,
    AttributeValueDoubleQuoted,
    AttributeValueSingleQuoted,
    AttributeValueUnquoted,
    Text(TextKind),
    TextLessThanSign(TextKind),
    TextEndTagOpen(TextKind),
    TextEndTagName(TextKind),
    ScriptDataEscapeStart,
    ScriptDataEscapedDashDash,
    ScriptDataDoubleEscapedStart,
    ScriptDataDoubleEscaped,
    ScriptDataDoubleEscapedDashDash,
    ScriptDataDoubleEscapedLessThanSign,
    ScriptDataDoubleEscapedEndTagName,
    ScriptDataDoubleEscapedEnd,
    PlainText,
    CdataSection,
    CdataSectionBracket,
    BogusComment,
    CommentStart,
    Comment,
    CommentStartDash,
    CommentEndDash,
    CommentEnd,
    CommentLessThanSign,
    CommentLessThanSignBang,
    CommentLessThanSignBangDash,
    CommentLessThanSignBangDashDash,
    CommentEndBang,
    Doctype,
    BeforeDoctypeName,
    DoctypeName,
    AfterDoctypeName,
    AfterDoctypePublicKeyword,
    AfterDoctypeSystemKeyword,
    BeforeDoctypePublicIdentifier,
    BeforeDoctypeSystemIdentifier,
    DoctypePublicIdentifier,
    DoctypeSystemIdentifier,
    AfterDoctypePublicIdentifier,
    AfterDoctypeSystemIdentifier,
    BetweenDoctypePublicAndSystemIdentifiers,
    BogusDoctype,
    Seq(Seq, u8),
}

/// The text states that end at an appropriate end tag, which share their shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TextKind {
    RcData,
    RawText,
    Script,
    ScriptEscaped,
}

/// A character sequence arm in progress: which one, in which state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seq {
    /// `<!--` after `<!` in the data state.
    CommentOpen,
    /// `<!DOCTYPE` (any case).
    Doctype,
    /// `<![CDATA[`.
    Cdata,
    /// `--` after `<!` in script data.
    ScriptEscapeStart,
    /// `--` in escaped script data.
    ScriptEscapedDashes,
    /// `script` (any case) after `<` in escaped script data.
    ScriptEscapedScript,
    /// `--` in double-escaped script data.
    ScriptDoubleEscapedDashes,
    /// `script` (any case) after `</` in double-escaped script data.
    ScriptDoubleEscapedScript,
    /// `]>` after `]` in a CDATA section.
    CdataEnd,
    /// `PUBLIC` (any case) after a doctype name.
    Public,
    /// `SYSTEM` (any case) after a doctype name.
    System,
}

impl Seq {
    fn pattern(self) -> (&'static [u8], bool) {
        match self {
            Seq::CommentOpen
            | Seq::ScriptEscapeStart
            | Seq::ScriptEscapedDashes
            | Seq::ScriptDoubleEscapedDashes => (b"--", false),
            Seq::Doctype => (b"DOCTYPE", true),
            Seq::Cdata => (b"[CDATA[", false),
            Seq::ScriptEscapedScript | Seq::ScriptDoubleEscapedScript => (b"SCRIPT", true),
            Seq::CdataEnd => (b"]>", false),
            Seq::Public => (b"PUBLIC", true),
            Seq::System => (b"SYSTEM", true),
        }
    }
}

fn is_ws(b: u8) -> bool {
    CLASS[b as usize] & WS != 0
}

/// Byte classes for the loops inside tags: one table load per byte instead of a chain of
/// comparisons.
const WS: u8 = 1;
/// Ends a tag name: whitespace, `/`, `>`.
const NAME_END: u8 = 2;
/// Ends an attribute name: whitespace, `=`, `/`, `>`.
const ATTR_NAME_END: u8 = 4;
/// Ends an unquoted attribute value: whitespace, `>`.
const VALUE_END: u8 = 8;

static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let ws = [b' ', b'\n', b'\r', b'\t', b'\x0C'];
    let mut k = 0;
    while k < ws.len() {
        t[ws[k] as usize] = WS | NAME_END | ATTR_NAME_END | VALUE_END;
        k += 1;
    }
    t[b'/' as usize] = NAME_END | ATTR_NAME_END;
    t[b'>' as usize] = NAME_END | ATTR_NAME_END | VALUE_END;
    t[b'=' as usize] = ATTR_NAME_END;
    t
};

/// How many bytes [`find_byte`] looks at a word at a time before it calls memchr.
const NEAR: usize = 32;

/// The index of the first `needle` in `chunk[from..]`. Gaps in markup are mostly short (a
/// newline between tags, a class name), so the first [`NEAR`] bytes are looked at a word
/// at a time before memchr's call and setup, which only pay off on longer runs of text.
#[inline(always)]
fn find_byte(chunk: &[u8], from: usize, needle: u8) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let rest = chunk.get(from..)?;
    let Some((near, _)) = rest.split_first_chunk::<NEAR>() else {
        return rest.iter().position(|&b| b == needle).map(|k| from + k);
    };
    let pattern = ONES * u64::from(needle);
    let (words, _) = near.as_chunks::<8>();
    for (word, &bytes) in words.iter().enumerate() {
        let x = u64::from_le_bytes(bytes) ^ pattern;
        // The lowest set bit marks the first zero byte of `x`, the first match (a borrow
        // can only mark bytes above it).
        let zeros = x.wrapping_sub(ONES) & !x & HIGHS;
        if zeros != 0 {
            return Some(from + word * 8 + zeros.trailing_zeros() as usize / 8);
        }
    }
    memchr::memchr(needle, &rest[NEAR..]).map(|k| from + NEAR + k)
}

fn text_state(t: TextType) -> State {
    match t {
        TextType::Data => State::Data,
        TextType::PlainText => State::PlainText,
        TextType::RcData => State::Text(TextKind::RcData),
        TextType::RawText => State::Text(TextKind::RawText),
        TextType::ScriptData => State::Text(TextKind::Script),
        TextType::CdataSection => State::CdataSection,
    }
}

/// Which of lol_html's two parsers the port is imitating at the moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The tag scanner: tag names only.
    Scan,
    /// The lexer: whole tags with attributes, for one tag a matcher or the simulator needs.
    Lex,
}

/// One attribute of the tag being lexed, as absolute stream offsets.
#[derive(Debug, Clone, Copy)]
struct Attr {
    name: (usize, usize),
    value: Option<(usize, usize)>,
    /// From the name to the end of the value, closing quote included: lol_html writes an
    /// attribute it did not change as these bytes.
    raw: (usize, usize),
}

/// A start tag the scanner recognised (for the tokenizer conformance test).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenStartTag {
    /// The name as written.
    pub name: Vec<u8>,
    /// Whether it ended in `/>`.
    pub self_closing: bool,
}

/// What happened to an embed tag the scanner found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Embed {
    /// Matched a name to rewrite.
    Rewrite,
    /// Matched only a name lol_html lexes without changing it (`meta`, for the charset).
    LexOnly,
    /// No match.
    None,
}

/// The streaming scanner and rewriter: feed chunks with [`Scanner::write`], finish with
/// [`Scanner::end`].
pub struct Scanner {
    // What to find and write.
    rewrite_names: Vec<Vec<u8>>,
    lex_names: Vec<Vec<u8>>,
    /// Bit `n` set: some name in `rewrite_names` or `lex_names` has `n` bytes (bit 63: 63
    /// or more), so a tag name of another length is rejected without a comparison.
    name_lengths: u64,
    /// The escaped token; `None` rewrites nothing (still finds tags).
    value: Option<Box<[u8]>>,
    memory_limit: usize,
    token_budget: usize,

    // lol_html parser state.
    state: State,
    mode: Mode,
    last_text_type: TextType,
    cdata_allowed: bool,
    last_start_hash: u64,
    pending_text_type: Option<TextType>,
    scan_in_end_tag: bool,
    directive: Directive,
    /// `Some(embed)` while the lexer handles a tag the scanner's hint matched.
    hinted: Option<Embed>,
    /// A hinted match whose lexer session emitted an end tag first (only after the
    /// `<script a=>` quirk): lol_html's element handlers stay armed and fire on the next
    /// start tag the lexer emits, whatever its name.
    armed: Embed,
    ns: Namespaces,
    closing_quote: u8,

    // The tag in progress.
    tag_start: usize,
    tag_began_in: State,
    /// Whether the tag in progress (lexer) or just named (scanner) is an end tag.
    tag_is_end: bool,
    name_start: usize,
    name_end: usize,
    name_hash: u64,
    self_closing: bool,
    token_part_start: usize,
    attr: Option<Attr>,
    attrs: Vec<Attr>,
    seq_start: usize,
    /// Where [`Self::data_tag`] left the chunk.
    fast_next: usize,

    // Output bookkeeping, in absolute stream offsets.
    /// Offset of the next chunk's first byte.
    base: usize,
    /// Everything before this offset has been written out.
    emitted: usize,
    /// The bytes from `emitted` to `base`: held back from earlier chunks.
    held: Vec<u8>,
    /// The first byte that must not be written yet (a tag in progress starts there).
    hold_from: Option<usize>,
    /// A run of the current chunk, `[from, to)`, written out but not yet copied to `out`:
    /// when it is all a chunk's output, it goes out as a slice of the chunk.
    pending: Option<(usize, usize)>,
    out: BytesMut,
    bailed_out: bool,

    // Results.
    tags_rewritten: usize,
    tags_over_budget: usize,
    seen: Option<Vec<SeenStartTag>>,
    seen_name: Vec<u8>,
}

/// Where a step leaves the main loop.
enum Flow {
    Next,
    /// The lexer took over from the scanner at a tag whose start it must parse again in
    /// another state (lol_html's bookmark): continue from this offset.
    Rewind(usize),
}

/// The input being scanned: the current chunk and its stream offset.
#[derive(Clone, Copy)]
struct Input<'a> {
    chunk: &'a [u8],
    base: usize,
}

impl Scanner {
    /// A scanner that writes `value` (already escaped) as `auth-token` into every start tag
    /// named in `rewrite_names`, also lexing `lex_names` the way lol_html's matchers make it,
    /// holding at most `memory_limit` bytes of an unfinished tag.
    pub fn new(
        rewrite_names: &[String],
        lex_names: &[&str],
        value: Option<&str>,
        token_budget: usize,
        memory_limit: usize,
    ) -> Self {
        let name_lengths = rewrite_names
            .iter()
            .map(String::as_str)
            .chain(lex_names.iter().copied())
            .fold(0u64, |bits, n| bits | 1 << n.len().min(63));
        Self {
            rewrite_names: rewrite_names
                .iter()
                .map(|n| n.as_bytes().to_ascii_lowercase())
                .collect(),
            lex_names: lex_names
                .iter()
                .map(|n| n.as_bytes().to_ascii_lowercase())
                .collect(),
            name_lengths,
            value: value.map(|v| v.as_bytes().into()),
            memory_limit,
            token_budget,
            state: State::Data,
            mode: Mode::Scan,
            last_text_type: TextType::Data,
            cdata_allowed: false,
            last_start_hash: 0,
            pending_text_type: None,
            scan_in_end_tag: false,
            directive: Directive::Ask,
            hinted: None,
            armed: Embed::None,
            ns: Namespaces::new(true),
            closing_quote: b'"',
            tag_start: 0,
            tag_began_in: State::Data,
            tag_is_end: false,
            name_start: 0,
            name_end: 0,
            name_hash: 0,
            self_closing: false,
            token_part_start: 0,
            attr: None,
            attrs: Vec::new(),
            seq_start: 0,
            fast_next: 0,
            base: 0,
            emitted: 0,
            held: Vec::new(),
            hold_from: None,
            pending: None,
            out: BytesMut::new(),
            bailed_out: false,
            tags_rewritten: 0,
            tags_over_budget: 0,
            seen: None,
            seen_name: Vec::new(),
        }
    }

    /// A bare tokenizer for conformance tests: no tree builder simulation, starting in
    /// `initial` text with `last_start_tag` as the last start tag, recording start tags.
    pub fn tokenizer(initial: TextType, last_start_tag: Option<&str>) -> Self {
        let mut s = Self::new(&[], &[], None, 0, usize::MAX);
        s.ns = Namespaces::new(false);
        s.last_text_type = initial;
        s.state = text_state(initial);
        s.last_start_hash = last_start_tag.map_or(0, |t| hash(t.as_bytes()));
        s.seen = Some(Vec::new());
        s
    }

    /// Start tags seen so far (only for [`Scanner::tokenizer`]).
    pub fn seen_start_tags(&self) -> &[SeenStartTag] {
        self.seen.as_deref().unwrap_or_default()
    }

    /// Start tags that received the token so far.
    pub fn tags_rewritten(&self) -> usize {
        self.tags_rewritten
    }

    /// Embed tags left without a token because the budget was spent.
    pub fn tags_over_budget(&self) -> usize {
        self.tags_over_budget
    }

    /// Whether the memory bound was hit and the rest passed through unchanged.
    pub fn bailed_out(&self) -> bool {
        self.bailed_out
    }

    /// Bytes held back right now (an unfinished tag), for the memory bound.
    pub fn held_bytes(&self) -> usize {
        self.held.len()
    }

    /// Scans one chunk and returns the output ready so far.
    pub fn write(&mut self, chunk: &[u8]) -> Bytes {
        if self.bailed_out {
            return Bytes::copy_from_slice(chunk);
        }
        // Reserving first lets the buffer the previous output was split from be reused
        // once that output has been dropped, instead of a fresh allocation per chunk.
        self.out.reserve(chunk.len() + self.held.len() + 256);
        self.write_input(chunk, None)
    }

    /// [`Scanner::write`] for a chunk the caller owns as [`Bytes`]: what passes through
    /// unchanged goes out as a slice of `chunk`, not a copy, whenever this chunk's output
    /// is one unchanged run of it (no tag rewritten in it, nothing held from before).
    pub fn write_bytes(&mut self, chunk: Bytes) -> Bytes {
        if self.bailed_out {
            return chunk;
        }
        self.write_input(&chunk, Some(&chunk))
    }

    fn write_input(&mut self, chunk: &[u8], owner: Option<&Bytes>) -> Bytes {
        let input = Input {
            chunk,
            base: self.base,
        };
        self.run(input);
        let end = self.base + chunk.len();
        let keep_from = self.hold_from.map_or(end, |h| h.max(self.emitted));
        self.emit_until(input, keep_from);
        self.held
            .extend_from_slice(&chunk[keep_from.max(self.base) - self.base..]);
        self.base = end;
        let attr_bytes = self.attrs.len() * std::mem::size_of::<Attr>();
        if self.held.len() + attr_bytes > self.memory_limit {
            // Past the bound: what is held goes out as it came, and so does the rest.
            self.bailed_out = true;
            self.flush_pending(input);
            self.out.extend_from_slice(&self.held);
            self.held = Vec::new();
            self.attrs = Vec::new();
            self.emitted = end;
        }
        match (self.pending.take(), owner) {
            (Some((from, to)), Some(owner)) if self.out.is_empty() => {
                owner.slice(from - input.base..to - input.base)
            }
            (pending, _) => {
                self.pending = pending;
                self.flush_pending(input);
                self.out.split().freeze()
            }
        }
    }

    /// Flushes what is held: at the end of the input an unfinished tag is text, unchanged.
    pub fn end(&mut self) -> Bytes {
        self.out.extend_from_slice(&self.held);
        self.held.clear();
        self.emitted = self.base;
        self.hold_from = None;
        self.out.split().freeze()
    }

    /// Writes out the input bytes from `emitted` up to `upto`, unchanged: held bytes are
    /// copied, the chunk's own bytes only noted in `pending` (see [`Self::flush_pending`]).
    fn emit_until(&mut self, input: Input<'_>, upto: usize) {
        if upto <= self.emitted {
            return;
        }
        if self.emitted < input.base {
            let from_held = (upto.min(input.base) - self.emitted).min(self.held.len());
            self.out.extend_from_slice(&self.held[..from_held]);
            self.held.drain(..from_held);
        }
        if upto > input.base {
            let from = self.emitted.max(input.base);
            match self.pending.as_mut() {
                Some((_, to)) if *to == from => *to = upto,
                _ => {
                    self.flush_pending(input);
                    self.pending = Some((from, upto));
                }
            }
        }
        self.emitted = upto;
    }

    /// Copies the pending run of the chunk into the output, before anything else goes in.
    fn flush_pending(&mut self, input: Input<'_>) {
        if let Some((from, to)) = self.pending.take() {
            self.out
                .extend_from_slice(&input.chunk[from - input.base..to - input.base]);
        }
    }

    /// The input bytes in `[from, to)`, which are held or in the chunk.
    fn bytes<'a>(&'a self, input: Input<'a>, from: usize, to: usize) -> Cow<'a, [u8]> {
        if from >= input.base {
            return Cow::Borrowed(&input.chunk[from - input.base..to - input.base]);
        }
        let held_from = from - self.emitted;
        if to <= input.base {
            return Cow::Borrowed(&self.held[held_from..to - self.emitted]);
        }
        let mut v = self.held[held_from..].to_vec();
        v.extend_from_slice(&input.chunk[..to - input.base]);
        Cow::Owned(v)
    }

    fn run(&mut self, input: Input<'_>) {
        let chunk = input.chunk;
        let mut i = 0;
        while i < chunk.len() {
            if self.state == State::Data && self.mode == Mode::Scan {
                let Some(lt) = find_byte(chunk, i, b'<') else {
                    break;
                };
                i = match self.data_tags(input, lt) {
                    Flow::Next => self.fast_next,
                    Flow::Rewind(to) => self.rewind(input, to),
                };
                continue;
            }
            // States whose other bytes do nothing skip to the next byte that matters.
            let skip = match self.state {
                State::Data => memchr::memchr(b'<', &chunk[i..]),
                State::Text(kind @ (TextKind::RcData | TextKind::RawText | TextKind::Script)) => {
                    self.skip_text(chunk, i, kind)
                }
                State::AttributeValueDoubleQuoted => memchr::memchr(b'"', &chunk[i..]),
                State::AttributeValueSingleQuoted => memchr::memchr(b'\'', &chunk[i..]),
                State::BogusComment | State::BogusDoctype => memchr::memchr(b'>', &chunk[i..]),
                State::Comment
                | State::Text(TextKind::ScriptEscaped)
                | State::ScriptDataDoubleEscaped => memchr::memchr2(b'-', b'<', &chunk[i..]),
                State::CdataSection => memchr::memchr(b']', &chunk[i..]),
                State::PlainText => None,
                State::TagName => {
                    let rest = &chunk[i..];
                    let n = rest.iter().position(|&b| CLASS[b as usize] & NAME_END != 0);
                    for &b in &rest[..n.unwrap_or(rest.len())] {
                        self.name_hash = hash_update(self.name_hash, b);
                    }
                    n
                }
                State::AttributeName => chunk[i..]
                    .iter()
                    .position(|&b| CLASS[b as usize] & ATTR_NAME_END != 0),
                State::AttributeValueUnquoted => chunk[i..]
                    .iter()
                    .position(|&b| CLASS[b as usize] & VALUE_END != 0),
                State::BeforeAttributeName if self.mode == Mode::Scan => {
                    i = self.skip_attributes(chunk, i);
                    if i == chunk.len() {
                        break;
                    }
                    Some(0)
                }
                _ => Some(0),
            };
            let Some(skip) = skip else {
                break;
            };
            i += skip;
            match self.step(input, chunk[i], input.base + i) {
                Flow::Next => i += 1,
                Flow::Rewind(to) => i = self.rewind(input, to),
            }
        }
    }

    /// In RCDATA, RAWTEXT or script text from `chunk[i]`: how far to the first `<` that
    /// may start something: the appropriate end tag or, in a script, an escape (`<!`). Any
    /// other `<` is text again a few bytes later (`a < b`, `'<div>'` or `'</div>'` in a
    /// script); skipping it leaves what `step` would (no tag in progress: what `step`
    /// records for a `</div>` that turns out to be text is never read again in scanner
    /// mode). Whatever reaches the end of the chunk is left to `step`.
    #[inline]
    fn skip_text(&mut self, chunk: &[u8], i: usize, kind: TextKind) -> Option<usize> {
        let mut from = i;
        loop {
            let lt = find_byte(chunk, from, b'<')?;
            from = match chunk.get(lt + 1) {
                None => return Some(lt - i),
                Some(b'!') if kind == TextKind::Script => return Some(lt - i),
                Some(b'/') if self.mode == Mode::Lex => return Some(lt - i),
                Some(b'/') => {
                    let name = lt + 2;
                    let letters = chunk[name..]
                        .iter()
                        .position(|b| !b.is_ascii_alphabetic())
                        .map_or(chunk.len(), |n| name + n);
                    let ends_name = chunk
                        .get(letters)
                        .map(|&b| CLASS[b as usize] & NAME_END != 0);
                    match ends_name {
                        None => return Some(lt - i),
                        Some(true)
                            if letters > name
                                && name_hash(&chunk[name..letters]) == self.last_start_hash =>
                        {
                            return Some(lt - i)
                        }
                        // Not the end tag: text again from the byte that ended the name.
                        Some(_) => letters,
                    }
                }
                Some(_) => lt + 1,
            };
            self.hold_from = None;
        }
    }

    /// Continues from stream offset `to` after a hand-over to the lexer; returns the
    /// chunk index to go on from.
    fn rewind(&mut self, input: Input<'_>, to: usize) -> usize {
        let mut pos = to;
        // A tag that began in an earlier chunk: parse its held bytes again.
        while pos < input.base {
            let b = self.held[pos - self.emitted];
            pos = match self.step(input, b, pos) {
                Flow::Next => pos + 1,
                Flow::Rewind(to) => to,
            };
        }
        pos - input.base
    }

    /// The common case in one piece: tags in the data state, in scanner mode, from the `<`
    /// at `chunk[i]` on, one after another for as long as each leaves the data state as it
    /// found it. Does what [`Self::step`] would do byte by byte, as far as the bytes are
    /// plain; leaves the state for `step` where they are not, with the chunk index to go
    /// on from in `fast_next` (the indirect jumps of a byte-at-a-time state machine cost
    /// more than the rest of the scan).
    ///
    /// Most tags interest neither lol_html's tree builder nor its matchers: in plain HTML
    /// only a few names switch the text type or the namespace, and only names as long as
    /// one of ours can match. Such a tag is skipped to its `>` touching nothing but the
    /// last start tag's hash; everything a tag in progress records is written only when
    /// the tag goes another way (the slow path, or the end of the chunk).
    fn data_tags(&mut self, input: Input<'_>, mut i: usize) -> Flow {
        let (chunk, base) = (input.chunk, input.base);
        let len = chunk.len();
        let mut plain = self.seen.is_none() && self.ns.is_plain_html();
        loop {
            let alpha = |k: usize| chunk.get(k).is_some_and(u8::is_ascii_alphabetic);
            let is_end = if alpha(i + 1) {
                false
            } else if chunk.get(i + 1) == Some(&b'/') && alpha(i + 2) {
                true
            } else if let Some(close) = self.comment_end(chunk, i) {
                // A whole comment: nothing in it counts, and what `step` records on the
                // way (a sequence start) is never read again.
                self.hold_from = None;
                match find_byte(chunk, close + 1, b'<') {
                    Some(lt) => {
                        i = lt;
                        continue;
                    }
                    None => {
                        self.fast_next = len;
                        return Flow::Next;
                    }
                }
            } else {
                self.mark_data_tag_start(base + i);
                self.state = State::TagOpen;
                self.fast_next = i + 1;
                return Flow::Next;
            };
            let name_at = i + 1 + usize::from(is_end);
            // An end tag's hash is only needed off the fast path.
            let (j, h) = if is_end {
                let n = chunk[name_at..]
                    .iter()
                    .position(|&b| CLASS[b as usize] & NAME_END != 0);
                (n.map_or(len, |n| name_at + n), EMPTY_HASH)
            } else {
                scan_start_tag_name(chunk, name_at)
            };
            let h = if is_end && (j == len || !plain) {
                name_hash(&chunk[name_at..j])
            } else {
                h
            };
            if j == len {
                // The name goes on in the next chunk.
                self.mark_data_tag_start(base + i);
                self.create_tag(is_end, base + name_at, chunk[name_at]);
                self.name_hash = h;
                self.state = State::TagName;
                self.fast_next = len;
                return Flow::Next;
            }
            let ordinary =
                plain && (is_end || !steers_html_parsing(h) && !self.may_match(j - name_at));
            if !ordinary {
                self.mark_data_tag_start(base + i);
                self.create_tag(is_end, base + name_at, chunk[name_at]);
                self.name_hash = h;
                self.state = State::TagName;
                if let Flow::Rewind(to) = self.finish_tag_name(input, base + j) {
                    return Flow::Rewind(to);
                }
                plain = self.seen.is_none() && self.ns.is_plain_html();
                if self.mode == Mode::Lex {
                    // Handed to the lexer at this tag: it goes on byte by byte.
                    match chunk[j] {
                        b'>' => self.emit_tag(input, base + j, false),
                        b'/' => self.state = State::SelfClosingStartTag,
                        _ => self.state = State::BeforeAttributeName,
                    }
                    self.fast_next = j + 1;
                    return Flow::Next;
                }
            } else {
                // What `finish_tag_name` concludes for it (the tag scanner keeps its hash
                // and lets it go); the rest of what it would record is never read again.
                self.hold_from = None;
                if !is_end {
                    self.last_start_hash = h;
                }
            }
            let Some((close, quirk)) = self.tag_end(chunk, j) else {
                if ordinary {
                    // The tag goes on in the next chunk, where `step` reads what it
                    // records.
                    self.tag_start = base + i;
                    self.tag_began_in = State::Data;
                    self.name_start = base + name_at;
                    self.name_end = base + j;
                    self.name_hash = h;
                    self.self_closing = false;
                    self.scan_in_end_tag = false;
                    self.tag_is_end = is_end;
                }
                self.fast_next = len;
                return Flow::Next;
            };
            // `emit_tag` in scanner mode.
            let text = self.pending_text_type.take().unwrap_or(TextType::Data);
            self.last_text_type = text;
            if let Some(seen) = self.seen.as_mut() {
                if !is_end {
                    seen.push(SeenStartTag {
                        name: std::mem::take(&mut self.seen_name),
                        self_closing: self.self_closing,
                    });
                }
            }
            if !quirk && text != TextType::Data {
                self.state = text_state(text);
                self.fast_next = close + 1;
                return Flow::Next;
            }
            self.state = State::Data;
            match find_byte(chunk, close + 1, b'<') {
                Some(lt) => i = lt,
                None => {
                    self.fast_next = len;
                    return Flow::Next;
                }
            }
        }
    }

    /// If `chunk[lt..]` starts with `<!--` and the comment ends in this chunk: its `>`.
    /// From the comment states: the body's first bytes may end it at once (`<!-->`,
    /// `<!--->`); after that, whatever the `<!` and dashes inside, it ends at the first
    /// `>` that follows `--` or `--!` in the body.
    fn comment_end(&self, chunk: &[u8], lt: usize) -> Option<usize> {
        if chunk.get(lt + 1..lt + 4) != Some(b"!--") {
            return None;
        }
        let body = lt + 4;
        match chunk.get(body..body + 2) {
            Some([b'>', _]) => return Some(body),
            Some(b"->") => return Some(body + 1),
            _ => {}
        }
        let mut from = body;
        loop {
            let gt = find_byte(chunk, from, b'>')?;
            let before = &chunk[body..gt];
            if before.ends_with(b"--") || before.ends_with(b"--!") {
                return Some(gt);
            }
            from = gt + 1;
        }
    }

    /// `mark_tag_start` for a `<` read in the data state.
    fn mark_data_tag_start(&mut self, at: usize) {
        self.tag_start = at;
        self.tag_began_in = State::Data;
        if self.hold_from.is_none() {
            self.hold_from = Some(at);
        }
    }

    /// From the end of a tag's name (`chunk[j]` is whitespace, `/` or `>`), in scanner
    /// mode: the index of the `>` that ends the tag and whether it was read where a value
    /// was expected (`<tag a=>`, see [`Self::emit_tag`]); `None` at the end of the chunk,
    /// with the state to resume in.
    #[inline(always)]
    fn tag_end(&mut self, chunk: &[u8], mut j: usize) -> Option<(usize, bool)> {
        if chunk[j] == b'>' {
            // No attributes (`<tr>`, `</div>`): the most common tag of all.
            return Some((j, false));
        }
        loop {
            if chunk[j] == b'/' {
                j += 1;
                match chunk.get(j) {
                    None => {
                        self.state = State::SelfClosingStartTag;
                        return None;
                    }
                    Some(b'>') => {
                        self.self_closing = true;
                        return Some((j, false));
                    }
                    // Anything else is read again before an attribute name.
                    Some(_) => {}
                }
            }
            j = self.skip_attributes(chunk, j);
            match chunk.get(j) {
                None => return None,
                Some(b'>') => return Some((j, self.state == State::BeforeAttributeValue)),
                Some(_) => {}
            }
        }
    }

    /// The tag scanner's attribute states in one loop: in scanner mode their actions do
    /// nothing, so only where they end matters. Returns where a byte needs [`Self::step`]
    /// (`>`, `/`, or a `>` right after `=`), in the state that byte is read in, or the
    /// chunk's end with the state to resume in.
    #[inline(always)]
    fn skip_attributes(&mut self, chunk: &[u8], mut i: usize) -> usize {
        let len = chunk.len();
        let class = |k: usize| CLASS[chunk[k] as usize];
        loop {
            // Before the attribute name.
            while i < len && class(i) & WS != 0 {
                i += 1;
            }
            if i == len || matches!(chunk[i], b'>' | b'/') {
                self.state = State::BeforeAttributeName;
                return i;
            }
            // The name: its first byte may be anything else, `=` included.
            i += 1;
            loop {
                while i < len && class(i) & ATTR_NAME_END == 0 {
                    i += 1;
                }
                if i == len || matches!(chunk[i], b'>' | b'/') {
                    self.state = State::AttributeName;
                    return i;
                }
                if chunk[i] == b'=' {
                    break;
                }
                // After the name.
                while i < len && class(i) & WS != 0 {
                    i += 1;
                }
                if i == len || matches!(chunk[i], b'>' | b'/') {
                    self.state = State::AfterAttributeName;
                    return i;
                }
                if chunk[i] == b'=' {
                    break;
                }
                // Another attribute's name starts here.
                i += 1;
            }
            // Before the value.
            i += 1;
            while i < len && class(i) & WS != 0 {
                i += 1;
            }
            if i == len || chunk[i] == b'>' {
                self.state = State::BeforeAttributeValue;
                return i;
            }
            match chunk[i] {
                quote @ (b'"' | b'\'') => {
                    self.closing_quote = quote;
                    match find_byte(chunk, i + 1, quote) {
                        Some(end) => i = end + 1,
                        None => {
                            self.state = if quote == b'"' {
                                State::AttributeValueDoubleQuoted
                            } else {
                                State::AttributeValueSingleQuoted
                            };
                            return len;
                        }
                    }
                }
                _ => {
                    while i < len && class(i) & VALUE_END == 0 {
                        i += 1;
                    }
                    if i == len || chunk[i] == b'>' {
                        self.state = State::AttributeValueUnquoted;
                        return i;
                    }
                }
            }
        }
    }

    // ---- actions shared by lol_html's tag scanner and lexer ----

    fn mark_tag_start(&mut self, at: usize) {
        self.tag_start = at;
        self.tag_began_in = self.state;
        if self.hold_from.is_none() {
            self.hold_from = Some(at);
        }
    }

    fn unmark_tag_start(&mut self) {
        self.hold_from = None;
    }

    #[inline]
    fn create_tag(&mut self, end: bool, at: usize, first: u8) {
        self.name_start = at;
        self.name_hash = hash_update(0, first);
        self.self_closing = false;
        match self.mode {
            Mode::Scan => {
                if end {
                    self.scan_in_end_tag = true;
                }
            }
            Mode::Lex => {
                self.tag_is_end = end;
                self.attrs.clear();
                self.attr = None;
            }
        }
    }

    fn is_appropriate_end_tag(&self) -> bool {
        self.name_hash == self.last_start_hash
    }

    /// The current tag's name ends at `at`. In scanner mode this is where lol_html asks
    /// the tree builder and the matchers, and may hand the tag to the lexer.
    fn finish_tag_name(&mut self, input: Input<'_>, at: usize) -> Flow {
        self.name_end = at;
        if self.mode == Mode::Lex {
            return Flow::Next;
        }
        if self.seen.is_some() {
            self.seen_name = self.bytes(input, self.name_start, at).into_owned();
        }
        let is_end = self.scan_in_end_tag;
        self.scan_in_end_tag = false;
        self.tag_is_end = is_end;
        let feedback = if is_end {
            self.ns.end_tag(self.name_hash)
        } else {
            self.ns.start_tag(self.name_hash)
        };
        match feedback {
            Feedback::None => {}
            Feedback::Switch(t) => self.pending_text_type = Some(t),
            Feedback::AllowCdata(allowed) => self.cdata_allowed = allowed,
            request => return self.hand_to_lexer(Directive::Apply(request), None, at, is_end),
        }
        if is_end {
            self.unmark_tag_start();
            return Flow::Next;
        }
        self.last_start_hash = self.name_hash;
        let embed = self.match_name(input);
        // lol_html's selector VM needs attributes for any start tag outside HTML.
        if embed == Embed::None && self.ns.current() == Ns::Html {
            self.unmark_tag_start();
            return Flow::Next;
        }
        let directive = match self.pending_text_type.take() {
            Some(t) => Directive::Apply(Feedback::Switch(t)),
            None => Directive::Skip,
        };
        self.hand_to_lexer(directive, Some(embed), at, false)
    }

    /// Whether a tag name of `len` bytes could be one of ours.
    fn may_match(&self, len: usize) -> bool {
        self.name_lengths >> len.min(63) & 1 == 1
    }

    fn match_name(&self, input: Input<'_>) -> Embed {
        let len = self.name_end - self.name_start;
        if !self.may_match(len) {
            return Embed::None;
        }
        let name = self.bytes(input, self.name_start, self.name_end);
        let matches = |names: &[Vec<u8>]| names.iter().any(|n| n.eq_ignore_ascii_case(&name));
        if matches(&self.rewrite_names) {
            Embed::Rewrite
        } else if matches(&self.lex_names) {
            Embed::LexOnly
        } else {
            Embed::None
        }
    }

    /// lol_html's scanner-to-lexer hand-over: the lexer starts again at the tag's `<` in
    /// the state of the scanner's last text type. Usually that is the state the tag began
    /// in and the lexer sees what the scanner saw; after `<script a=>` (the scanner went on
    /// in the data state) it is not, and the tag is parsed again as text.
    fn hand_to_lexer(
        &mut self,
        directive: Directive,
        hinted: Option<Embed>,
        at: usize,
        is_end: bool,
    ) -> Flow {
        self.mode = Mode::Lex;
        self.directive = directive;
        self.hinted = hinted;
        let resume = text_state(self.last_text_type);
        let began_in = match self.tag_began_in {
            State::TagOpen => State::Data,
            State::TextLessThanSign(raw) => State::Text(raw),
            other => other,
        };
        self.tag_is_end = is_end;
        self.attrs.clear();
        self.attr = None;
        if resume == began_in {
            self.name_end = at;
            return Flow::Next;
        }
        self.state = resume;
        if self.hold_from.is_none() {
            self.hold_from = Some(self.tag_start);
        }
        Flow::Rewind(self.tag_start)
    }

    fn start_attr(&mut self, at: usize) {
        if self.mode == Mode::Lex && !self.tag_is_end {
            self.attr = Some(Attr {
                name: (at, at),
                value: None,
                raw: (at, at),
            });
            self.token_part_start = at;
        }
    }

    fn finish_attr_name(&mut self, at: usize) {
        if let Some(a) = self.attr.as_mut() {
            a.name = (self.token_part_start, at);
            a.raw = a.name;
        }
    }

    fn finish_attr_value(&mut self, at: usize, b: u8) {
        if let Some(a) = self.attr.as_mut() {
            a.value = Some((self.token_part_start, at));
            a.raw.1 = if b == self.closing_quote { at + 1 } else { at };
        }
    }

    fn finish_attr(&mut self) {
        if let Some(a) = self.attr.take() {
            self.attrs.push(a);
        }
    }

    /// A tag ends at `at` (its `>`). `data_quirk`: lol_html's scanner goes on in the data
    /// state after `<tag a=>`, whatever the tag switched to.
    fn emit_tag(&mut self, input: Input<'_>, at: usize, data_quirk: bool) {
        match self.mode {
            Mode::Scan => {
                self.last_text_type = self.pending_text_type.take().unwrap_or(TextType::Data);
                self.state = if data_quirk {
                    State::Data
                } else {
                    text_state(self.last_text_type)
                };
                if let Some(seen) = self.seen.as_mut() {
                    if !self.tag_is_end {
                        seen.push(SeenStartTag {
                            name: std::mem::take(&mut self.seen_name),
                            self_closing: self.self_closing,
                        });
                    }
                }
            }
            Mode::Lex => self.lexer_emit_tag(input, at, data_quirk),
        }
    }

    fn lexer_emit_tag(&mut self, input: Input<'_>, at: usize, data_quirk: bool) {
        let is_end = self.tag_is_end;
        let feedback = match std::mem::replace(&mut self.directive, Directive::Ask) {
            Directive::Apply(f) => f,
            Directive::Skip => Feedback::None,
            Directive::Ask if is_end => self.ns.end_tag(self.name_hash),
            Directive::Ask => self.ns.start_tag(self.name_hash),
        };
        self.last_text_type = TextType::Data;
        self.apply_lexed_feedback(input, feedback);
        if !is_end {
            self.last_start_hash = self.name_hash;
        }
        let armed = std::mem::replace(&mut self.armed, Embed::None);
        let embed = match self.hinted.take() {
            Some(embed) => embed,
            None if is_end => Embed::None,
            None => self.match_name(input),
        };
        if !is_end && (embed == Embed::Rewrite || armed == Embed::Rewrite) {
            self.rewrite_tag(input, at + 1);
        }
        if self.seen.is_some() && !is_end {
            let name = self
                .bytes(input, self.name_start, self.name_end)
                .into_owned();
            if let Some(seen) = self.seen.as_mut() {
                seen.push(SeenStartTag {
                    name,
                    self_closing: self.self_closing,
                });
            }
        }
        self.attrs.clear();
        self.unmark_tag_start();
        if is_end && (embed != Embed::None || armed != Embed::None) {
            // lol_html's capture flags are still set: the lexer goes on, and so does the
            // tag's own state transition.
            self.armed = if embed == Embed::Rewrite || armed == Embed::Rewrite {
                Embed::Rewrite
            } else {
                Embed::LexOnly
            };
            self.state = if data_quirk {
                State::Data
            } else {
                text_state(self.last_text_type)
            };
            return;
        }
        // Back to the tag scanner after the tag, in the state of the text type now set.
        self.mode = Mode::Scan;
        self.state = text_state(self.last_text_type);
    }

    fn apply_lexed_feedback(&mut self, input: Input<'_>, feedback: Feedback) {
        let next = match feedback {
            Feedback::None => return,
            Feedback::Switch(t) => {
                self.last_text_type = t;
                return;
            }
            Feedback::AllowCdata(allowed) => {
                self.cdata_allowed = allowed;
                return;
            }
            Feedback::IntegrationPoint => {
                if self.tag_is_end || self.self_closing {
                    Feedback::None
                } else {
                    self.ns.enter(Ns::Html)
                }
            }
            Feedback::Font => {
                let leaves = !self.tag_is_end
                    && self.attrs.iter().any(|a| {
                        let name = self.bytes(input, a.name.0, a.name.1);
                        [&b"color"[..], b"size", b"face"]
                            .iter()
                            .any(|n| name.eq_ignore_ascii_case(n))
                    });
                if leaves {
                    self.ns.leave()
                } else {
                    Feedback::None
                }
            }
            Feedback::AnnotationXmlStart => {
                let name = self.bytes(input, self.name_start, self.name_end);
                let enters = !self.tag_is_end
                    && !self.self_closing
                    && name.eq_ignore_ascii_case(b"annotation-xml")
                    && self.attrs.iter().any(|a| {
                        let Some((vs, ve)) = a.value else {
                            return false;
                        };
                        let name = self.bytes(input, a.name.0, a.name.1);
                        let value = self.bytes(input, vs, ve);
                        name.eq_ignore_ascii_case(b"encoding")
                            && (value.eq_ignore_ascii_case(b"text/html")
                                || value.eq_ignore_ascii_case(b"application/xhtml+xml"))
                    });
                if enters {
                    self.ns.enter(Ns::Html)
                } else {
                    Feedback::None
                }
            }
            Feedback::AnnotationXmlEnd => {
                let name = self.bytes(input, self.name_start, self.name_end);
                if self.tag_is_end && name.eq_ignore_ascii_case(b"annotation-xml") {
                    self.ns.leave()
                } else {
                    Feedback::None
                }
            }
        };
        self.apply_lexed_feedback(input, next);
    }

    /// Writes the embed start tag `[tag_start, end)` as lol_html serialises it after
    /// `remove_attribute("auth-token"); set_attribute("auth-token", value)`: `<`, the name
    /// as written, every other attribute as written after one space, the new attribute,
    /// then ` />` or `>` (the `/` and any other separators are not kept).
    fn rewrite_tag(&mut self, input: Input<'_>, end: usize) {
        let Some(value) = self.value.as_deref() else {
            return;
        };
        if self.token_budget < value.len() {
            self.tags_over_budget += 1;
            return;
        }
        self.token_budget -= value.len();
        self.tags_rewritten += 1;
        let start = self.tag_start;
        let mut tag = Vec::with_capacity(end - start + value.len() + 16);
        tag.push(b'<');
        tag.extend_from_slice(&self.bytes(input, self.name_start, self.name_end));
        for a in &self.attrs {
            let name = self.bytes(input, a.name.0, a.name.1);
            if name.eq_ignore_ascii_case(b"auth-token") {
                continue;
            }
            tag.push(b' ');
            tag.extend_from_slice(&self.bytes(input, a.raw.0, a.raw.1));
        }
        tag.extend_from_slice(b" auth-token=\"");
        tag.extend_from_slice(value);
        tag.push(b'"');
        tag.extend_from_slice(if self.self_closing { b" />" } else { b">" });
        self.emit_until(input, start);
        self.flush_pending(input);
        self.out.extend_from_slice(&tag);
        // The tag's bytes are replaced: drop them from what is held.
        let skip_held = end.min(input.base).saturating_sub(self.emitted);
        self.held.drain(..skip_held.min(self.held.len()));
        self.emitted = end;
    }

    // ---- the states ----

    fn seq_start(&mut self, seq: Seq, at: usize) {
        self.seq_start = at;
        self.state = State::Seq(seq, 1);
    }

    /// One input byte at stream offset `at`.
    fn step(&mut self, input: Input<'_>, b: u8, at: usize) -> Flow {
        loop {
            match self.state {
                State::Data => {
                    if b == b'<' {
                        self.mark_tag_start(at);
                        self.state = State::TagOpen;
                    }
                }
                State::TagOpen => match b {
                    b'a'..=b'z' | b'A'..=b'Z' => {
                        self.create_tag(false, at, b);
                        self.state = State::TagName;
                    }
                    b'!' => {
                        self.unmark_tag_start();
                        self.state = State::MarkupDeclarationOpen;
                    }
                    b'/' => self.state = State::EndTagOpen,
                    b'?' => {
                        self.unmark_tag_start();
                        self.state = State::BogusComment;
                    }
                    _ => {
                        self.unmark_tag_start();
                        self.state = State::Data;
                        continue;
                    }
                },
                State::EndTagOpen => match b {
                    b'a'..=b'z' | b'A'..=b'Z' => {
                        self.create_tag(true, at, b);
                        self.state = State::TagName;
                    }
                    b'>' => {
                        self.unmark_tag_start();
                        self.state = State::Data;
                    }
                    _ => {
                        self.unmark_tag_start();
                        self.state = State::BogusComment;
                        continue;
                    }
                },
                State::MarkupDeclarationOpen => match b {
                    b'-' => self.seq_start(Seq::CommentOpen, at),
                    b'D' | b'd' => self.seq_start(Seq::Doctype, at),
                    b'[' => self.seq_start(Seq::Cdata, at),
                    _ => {
                        self.state = State::BogusComment;
                        continue;
                    }
                },
                State::TagName => {
                    if is_ws(b) {
                        if let Flow::Rewind(to) = self.finish_tag_name(input, at) {
                            return Flow::Rewind(to);
                        }
                        self.state = State::BeforeAttributeName;
                    } else if b == b'>' {
                        if let Flow::Rewind(to) = self.finish_tag_name(input, at) {
                            return Flow::Rewind(to);
                        }
                        self.emit_tag(input, at, false);
                    } else if b == b'/' {
                        if let Flow::Rewind(to) = self.finish_tag_name(input, at) {
                            return Flow::Rewind(to);
                        }
                        self.state = State::SelfClosingStartTag;
                    } else {
                        self.name_hash = hash_update(self.name_hash, b);
                    }
                }
                State::SelfClosingStartTag => {
                    if b == b'>' {
                        self.self_closing = true;
                        self.emit_tag(input, at, false);
                    } else {
                        self.state = State::BeforeAttributeName;
                        continue;
                    }
                }
                State::BeforeAttributeName => match b {
                    b'/' => self.state = State::SelfClosingStartTag,
                    b'>' => self.emit_tag(input, at, false),
                    _ if is_ws(b) => {}
                    _ => {
                        self.start_attr(at);
                        self.state = State::AttributeName;
                    }
                },
                State::AttributeName => match b {
                    b'=' => {
                        self.finish_attr_name(at);
                        self.state = State::BeforeAttributeValue;
                    }
                    b'/' => {
                        self.finish_attr_name(at);
                        self.finish_attr();
                        self.state = State::SelfClosingStartTag;
                    }
                    b'>' => {
                        self.finish_attr_name(at);
                        self.finish_attr();
                        self.emit_tag(input, at, false);
                    }
                    _ if is_ws(b) => {
                        self.finish_attr_name(at);
                        self.state = State::AfterAttributeName;
                    }
                    _ => {}
                },
                State::AfterAttributeName => match b {
                    b'/' => {
                        self.finish_attr();
                        self.state = State::SelfClosingStartTag;
                    }
                    b'=' => self.state = State::BeforeAttributeValue,
                    b'>' => {
                        self.finish_attr();
                        self.emit_tag(input, at, false);
                    }
                    _ if is_ws(b) => {}
                    _ => {
                        self.finish_attr();
                        self.start_attr(at);
                        self.state = State::AttributeName;
                    }
                },
                State::BeforeAttributeValue => match b {
                    b'"' => {
                        self.closing_quote = b'"';
                        self.token_part_start = at + 1;
                        self.state = State::AttributeValueDoubleQuoted;
                    }
                    b'\'' => {
                        self.closing_quote = b'\'';
                        self.token_part_start = at + 1;
                        self.state = State::AttributeValueSingleQuoted;
                    }
                    b'>' => {
                        self.finish_attr();
                        self.emit_tag(input, at, true);
                    }
                    _ if is_ws(b) => {}
                    _ => {
                        self.token_part_start = at;
                        self.state = State::AttributeValueUnquoted;
                        continue;
                    }
                },
                State::AttributeValueDoubleQuoted | State::AttributeValueSingleQuoted => {
                    let quote = if self.state == State::AttributeValueDoubleQuoted {
                        b'"'
                    } else {
                        b'\''
                    };
                    if b == quote {
                        self.finish_attr_value(at, b);
                        self.finish_attr();
                        self.state = State::BeforeAttributeName;
                    }
                }
                State::AttributeValueUnquoted => {
                    if is_ws(b) {
                        self.finish_attr_value(at, b);
                        self.finish_attr();
                        self.state = State::BeforeAttributeName;
                    } else if b == b'>' {
                        self.finish_attr_value(at, b);
                        self.finish_attr();
                        self.emit_tag(input, at, false);
                    }
                }
                State::Text(raw) => match b {
                    b'<' => {
                        self.mark_tag_start(at);
                        self.state = State::TextLessThanSign(raw);
                    }
                    b'-' if raw == TextKind::ScriptEscaped => {
                        self.seq_start(Seq::ScriptEscapedDashes, at)
                    }
                    _ => {}
                },
                State::TextLessThanSign(raw) => match (b, raw) {
                    (b'/', _) => self.state = State::TextEndTagOpen(raw),
                    (b'!', TextKind::Script) => {
                        self.unmark_tag_start();
                        self.state = State::ScriptDataEscapeStart;
                    }
                    (b'S' | b's', TextKind::ScriptEscaped) => {
                        self.seq_start(Seq::ScriptEscapedScript, at)
                    }
                    _ => {
                        self.unmark_tag_start();
                        self.state = State::Text(raw);
                        continue;
                    }
                },
                State::TextEndTagOpen(raw) => match b {
                    b'a'..=b'z' | b'A'..=b'Z' => {
                        self.create_tag(true, at, b);
                        self.state = State::TextEndTagName(raw);
                    }
                    _ => {
                        self.unmark_tag_start();
                        self.state = State::Text(raw);
                        continue;
                    }
                },
                State::TextEndTagName(raw) => match b {
                    b'a'..=b'z' | b'A'..=b'Z' => self.name_hash = hash_update(self.name_hash, b),
                    _ if (is_ws(b) || b == b'/' || b == b'>') && self.is_appropriate_end_tag() => {
                        if let Flow::Rewind(to) = self.finish_tag_name(input, at) {
                            return Flow::Rewind(to);
                        }
                        match b {
                            b'/' => self.state = State::SelfClosingStartTag,
                            b'>' => self.emit_tag(input, at, false),
                            _ => self.state = State::BeforeAttributeName,
                        }
                    }
                    _ => {
                        self.unmark_tag_start();
                        self.state = State::Text(raw);
                        continue;
                    }
                },
                State::ScriptDataEscapeStart => {
                    if b == b'-' {
                        self.seq_start(Seq::ScriptEscapeStart, at);
                    } else {
                        self.state = State::Text(TextKind::Script);
                        continue;
                    }
                }
                State::ScriptDataEscapedDashDash => match b {
                    b'-' => {}
                    b'<' => {
                        self.mark_tag_start(at);
                        self.state = State::TextLessThanSign(TextKind::ScriptEscaped);
                    }
                    b'>' => {
                        self.state = State::Text(TextKind::Script);
                        continue;
                    }
                    _ => self.state = State::Text(TextKind::ScriptEscaped),
                },
                State::ScriptDataDoubleEscapedStart => {
                    if is_ws(b) || b == b'/' || b == b'>' {
                        self.state = State::ScriptDataDoubleEscaped;
                    } else {
                        self.state = State::Text(TextKind::ScriptEscaped);
                        continue;
                    }
                }
                State::ScriptDataDoubleEscaped => match b {
                    b'-' => self.seq_start(Seq::ScriptDoubleEscapedDashes, at),
                    b'<' => self.state = State::ScriptDataDoubleEscapedLessThanSign,
                    _ => {}
                },
                State::ScriptDataDoubleEscapedDashDash => match b {
                    b'-' => {}
                    b'<' => self.state = State::ScriptDataDoubleEscapedLessThanSign,
                    b'>' => {
                        self.state = State::Text(TextKind::Script);
                        continue;
                    }
                    _ => self.state = State::ScriptDataDoubleEscaped,
                },
                State::ScriptDataDoubleEscapedLessThanSign => {
                    if b == b'/' {
                        self.state = State::ScriptDataDoubleEscapedEndTagName;
                    } else {
                        self.state = State::ScriptDataDoubleEscaped;
                        continue;
                    }
                }
                State::ScriptDataDoubleEscapedEndTagName => {
                    if b == b'S' || b == b's' {
                        self.seq_start(Seq::ScriptDoubleEscapedScript, at);
                    } else {
                        self.state = State::ScriptDataDoubleEscaped;
                        continue;
                    }
                }
                State::ScriptDataDoubleEscapedEnd => {
                    if is_ws(b) || b == b'/' || b == b'>' {
                        self.state = State::Text(TextKind::ScriptEscaped);
                    } else {
                        self.state = State::ScriptDataDoubleEscaped;
                        continue;
                    }
                }
                State::PlainText => {}
                State::CdataSection => {
                    if b == b']' {
                        self.state = State::CdataSectionBracket;
                    }
                }
                State::CdataSectionBracket => {
                    if b == b']' {
                        self.seq_start(Seq::CdataEnd, at);
                    } else {
                        self.state = State::CdataSection;
                        continue;
                    }
                }
                State::BogusComment | State::BogusDoctype => {
                    if b == b'>' {
                        self.state = State::Data;
                    }
                }
                State::CommentStart => match b {
                    b'-' => self.state = State::CommentStartDash,
                    b'>' => self.state = State::Data,
                    _ => {
                        self.state = State::Comment;
                        continue;
                    }
                },
                State::Comment => match b {
                    b'-' => self.state = State::CommentEndDash,
                    b'<' => self.state = State::CommentLessThanSign,
                    _ => {}
                },
                State::CommentStartDash => match b {
                    b'-' => self.state = State::CommentEnd,
                    b'>' => self.state = State::Data,
                    _ => {
                        self.state = State::Comment;
                        continue;
                    }
                },
                State::CommentEndDash => {
                    if b == b'-' {
                        self.state = State::CommentEnd;
                    } else {
                        self.state = State::Comment;
                        continue;
                    }
                }
                State::CommentEnd => match b {
                    b'>' => self.state = State::Data,
                    b'!' => self.state = State::CommentEndBang,
                    b'-' => {}
                    _ => {
                        self.state = State::Comment;
                        continue;
                    }
                },
                State::CommentLessThanSign => match b {
                    b'!' => self.state = State::CommentLessThanSignBang,
                    b'<' => {}
                    _ => {
                        self.state = State::Comment;
                        continue;
                    }
                },
                State::CommentLessThanSignBang => {
                    if b == b'-' {
                        self.state = State::CommentLessThanSignBangDash;
                    } else {
                        self.state = State::Comment;
                        continue;
                    }
                }
                State::CommentLessThanSignBangDash => {
                    if b == b'-' {
                        self.state = State::CommentLessThanSignBangDashDash;
                    } else {
                        self.state = State::CommentEndDash;
                        continue;
                    }
                }
                State::CommentLessThanSignBangDashDash => {
                    self.state = State::CommentEnd;
                    continue;
                }
                State::CommentEndBang => match b {
                    b'-' => self.state = State::CommentEndDash,
                    b'>' => self.state = State::Data,
                    _ => {
                        self.state = State::Comment;
                        continue;
                    }
                },
                State::Doctype => {
                    if is_ws(b) {
                        self.state = State::BeforeDoctypeName;
                    } else if b == b'>' {
                        self.state = State::Data;
                    } else {
                        self.state = State::BeforeDoctypeName;
                        continue;
                    }
                }
                State::BeforeDoctypeName => {
                    if b == b'>' {
                        self.state = State::Data;
                    } else if !is_ws(b) {
                        self.state = State::DoctypeName;
                    }
                }
                State::DoctypeName => {
                    if is_ws(b) {
                        self.state = State::AfterDoctypeName;
                    } else if b == b'>' {
                        self.state = State::Data;
                    }
                }
                State::AfterDoctypeName => match b {
                    b'P' | b'p' => self.seq_start(Seq::Public, at),
                    b'S' | b's' => self.seq_start(Seq::System, at),
                    b'>' => self.state = State::Data,
                    _ if is_ws(b) => {}
                    _ => self.state = State::BogusDoctype,
                },
                State::AfterDoctypePublicKeyword
                | State::AfterDoctypeSystemKeyword
                | State::BeforeDoctypePublicIdentifier
                | State::BeforeDoctypeSystemIdentifier => {
                    let public = matches!(
                        self.state,
                        State::AfterDoctypePublicKeyword | State::BeforeDoctypePublicIdentifier
                    );
                    match b {
                        b'"' | b'\'' => {
                            self.closing_quote = b;
                            self.state = if public {
                                State::DoctypePublicIdentifier
                            } else {
                                State::DoctypeSystemIdentifier
                            };
                        }
                        b'>' => self.state = State::Data,
                        _ if is_ws(b) => {
                            self.state = if public {
                                State::BeforeDoctypePublicIdentifier
                            } else {
                                State::BeforeDoctypeSystemIdentifier
                            };
                        }
                        _ => self.state = State::BogusDoctype,
                    }
                }
                State::DoctypePublicIdentifier | State::DoctypeSystemIdentifier => {
                    if b == self.closing_quote {
                        self.state = if self.state == State::DoctypePublicIdentifier {
                            State::AfterDoctypePublicIdentifier
                        } else {
                            State::AfterDoctypeSystemIdentifier
                        };
                    } else if b == b'>' {
                        self.state = State::Data;
                    }
                }
                State::AfterDoctypePublicIdentifier
                | State::BetweenDoctypePublicAndSystemIdentifiers => match b {
                    b'>' => self.state = State::Data,
                    b'"' | b'\'' => {
                        self.closing_quote = b;
                        self.state = State::DoctypeSystemIdentifier;
                    }
                    _ if is_ws(b) => self.state = State::BetweenDoctypePublicAndSystemIdentifiers,
                    _ => self.state = State::BogusDoctype,
                },
                State::AfterDoctypeSystemIdentifier => match b {
                    b'>' => self.state = State::Data,
                    _ if is_ws(b) => {}
                    _ => self.state = State::BogusDoctype,
                },
                State::Seq(seq, matched) => {
                    let (pattern, ignore_case) = seq.pattern();
                    let want = pattern[matched as usize];
                    let hit = b == want || ignore_case && b == want ^ 0x20;
                    if hit {
                        if matched as usize + 1 == pattern.len() {
                            self.complete_seq(seq);
                        } else {
                            self.state = State::Seq(seq, matched + 1);
                        }
                    } else {
                        // The arm fails: its first byte goes to the state's other arms,
                        // and the bytes after it (all inert there) are read again.
                        self.state = self.seq_fallback(seq);
                        continue;
                    }
                }
            }
            return Flow::Next;
        }
    }

    fn complete_seq(&mut self, seq: Seq) {
        self.state = match seq {
            Seq::CommentOpen => State::CommentStart,
            Seq::Doctype => State::Doctype,
            Seq::Cdata if self.cdata_allowed => {
                self.last_text_type = TextType::CdataSection;
                State::CdataSection
            }
            Seq::Cdata => State::BogusComment,
            Seq::ScriptEscapeStart | Seq::ScriptEscapedDashes => State::ScriptDataEscapedDashDash,
            Seq::ScriptEscapedScript => {
                self.unmark_tag_start();
                State::ScriptDataDoubleEscapedStart
            }
            Seq::ScriptDoubleEscapedDashes => State::ScriptDataDoubleEscapedDashDash,
            Seq::ScriptDoubleEscapedScript => State::ScriptDataDoubleEscapedEnd,
            Seq::CdataEnd => {
                self.last_text_type = TextType::Data;
                State::Data
            }
            Seq::Public => State::AfterDoctypePublicKeyword,
            Seq::System => State::AfterDoctypeSystemKeyword,
        };
    }

    /// The state a failed sequence leaves, given that its matched bytes are inert there:
    /// what the state's other arms do with the sequence's first byte.
    fn seq_fallback(&mut self, seq: Seq) -> State {
        match seq {
            Seq::CommentOpen | Seq::Doctype | Seq::Cdata => State::BogusComment,
            Seq::ScriptEscapeStart => State::Text(TextKind::Script),
            Seq::ScriptEscapedDashes => State::Text(TextKind::ScriptEscaped),
            Seq::ScriptEscapedScript => {
                self.unmark_tag_start();
                State::Text(TextKind::ScriptEscaped)
            }
            Seq::ScriptDoubleEscapedDashes | Seq::ScriptDoubleEscapedScript => {
                State::ScriptDataDoubleEscaped
            }
            // The `]` read again in the CDATA section goes straight back to the bracket.
            Seq::CdataEnd => State::CdataSectionBracket,
            Seq::Public | Seq::System => State::BogusDoctype,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 32 * 1024;

    fn scanner() -> Scanner {
        let names = ["released-page".to_string(), "released-widget".to_string()];
        Scanner::new(&names, &["meta"], Some("T0K"), usize::MAX, LIMIT)
    }

    /// Feeds `page` in 4 KiB chunks; the output and the most bytes held after any chunk.
    fn feed(s: &mut Scanner, page: &[u8]) -> (Vec<u8>, usize) {
        let mut out = Vec::new();
        let mut most_held = 0;
        for chunk in page.chunks(4096) {
            out.extend_from_slice(&s.write(chunk));
            most_held = most_held.max(s.held_bytes());
        }
        out.extend_from_slice(&s.end());
        (out, most_held)
    }

    #[test]
    fn a_huge_unterminated_embed_tag_is_held_to_the_limit_then_passed_through() {
        let mut page = b"<p>before</p><released-page data-x=\"".to_vec();
        page.extend(std::iter::repeat_n(b'a', 200_000));
        let mut s = scanner();
        let (out, most_held) = feed(&mut s, &page);
        assert!(s.bailed_out());
        assert!(most_held <= LIMIT, "held {most_held} bytes");
        assert!(out == page, "the output is the input unchanged");
    }

    #[test]
    fn after_the_bail_out_later_embed_tags_pass_through_unchanged() {
        let mut page = b"<released-page></released-page><released-widget a=\"".to_vec();
        page.extend(std::iter::repeat_n(b'a', 100_000));
        page.extend_from_slice(b"\"><released-page>");
        let mut s = scanner();
        let (out, most_held) = feed(&mut s, &page);
        assert!(s.bailed_out());
        assert!(most_held <= LIMIT);
        assert_eq!(s.tags_rewritten(), 1);
        let first = b"<released-page auth-token=\"T0K\"></released-page>";
        assert_eq!(&out[..first.len()], first);
        assert!(out[first.len()..] == page[b"<released-page></released-page>".len()..]);
    }

    #[test]
    fn a_huge_comment_before_an_embed_tag_holds_nothing() {
        let mut page = b"<!--".to_vec();
        page.extend(std::iter::repeat_n(b'-', 50_000));
        page.extend(std::iter::repeat_n(b"<released-page> x ".as_slice(), 10_000).flatten());
        page.extend_from_slice(b"--><released-page>");
        let mut s = scanner();
        let (out, most_held) = feed(&mut s, &page);
        assert!(!s.bailed_out());
        assert!(most_held < 64, "held {most_held} bytes");
        assert_eq!(s.tags_rewritten(), 1);
        assert!(out.ends_with(b"--><released-page auth-token=\"T0K\">"));
        assert_eq!(out.len(), page.len() + b" auth-token=\"T0K\"".len());
    }

    #[test]
    fn huge_scripts_and_attributes_of_other_tags_hold_nothing() {
        let mut page = b"<script>".to_vec();
        page.extend(
            std::iter::repeat_n(b"if (a < b) { x = '<released-page>'; } ".as_slice(), 5_000)
                .flatten(),
        );
        page.extend_from_slice(b"</script><div title=\"");
        page.extend(std::iter::repeat_n(b'a', 100_000));
        page.extend_from_slice(b"\"><released-widget/>");
        let mut s = scanner();
        let (out, most_held) = feed(&mut s, &page);
        assert!(!s.bailed_out());
        assert!(most_held < 64, "held {most_held} bytes");
        assert_eq!(s.tags_rewritten(), 1);
        assert!(out.ends_with(b"<released-widget auth-token=\"T0K\" />"));
    }

    #[test]
    fn unchanged_chunks_go_out_as_slices_of_themselves() {
        let mut s = scanner();
        let chunk = Bytes::from_static(b"<!DOCTYPE html><p class=\"a\">text</p><div>");
        let out = s.write_bytes(chunk.clone());
        assert_eq!(out, chunk);
        assert_eq!(out.as_ptr(), chunk.as_ptr(), "not copied");
        // A chunk that ends inside a tag name: what comes before goes out uncopied.
        let chunk = Bytes::from_static(b"<p>x</p><relea");
        let out = s.write_bytes(chunk.clone());
        assert_eq!(&out[..], b"<p>x</p>");
        assert_eq!(out.as_ptr(), chunk.as_ptr(), "not copied");
        // The held tag and a rewritten one: one buffer with the token.
        let out = s.write_bytes(Bytes::from_static(b"sed-page><p>y</p>"));
        assert_eq!(&out[..], b"<released-page auth-token=\"T0K\"><p>y</p>");
        let out = s.write_bytes(Bytes::from_static(b"<p>z</p><released-widget/>."));
        assert_eq!(&out[..], b"<p>z</p><released-widget auth-token=\"T0K\" />.");
        assert!(s.end().is_empty());
    }

    #[test]
    fn names_lol_html_hashes_compare_like_its_tag_constants() {
        // Values from lol_html's `Tag` enum.
        assert_eq!(hash(b"font"), 381_561);
        assert_eq!(hash(b"embed"), 11_083_081);
        assert_eq!(hash(b"H1"), 416);
        assert_eq!(hash(b"foreignObject"), 13_428_975_859_192_539_417);
        assert_eq!(hash(b"released-page"), EMPTY_HASH);
        // Thirteen letters fit when the first is small (the top bits shift out)...
        assert_ne!(hash(b"abcdefghijklm"), EMPTY_HASH);
        // ...but not many more.
        assert_eq!(hash(b"abcdefghijklmnopqrstuvwxyz"), EMPTY_HASH);
        for h in STEERING {
            assert!(steers_html_parsing(h));
        }
        let steering = (0..16).filter(|&k| STEERING_SLOTS[k] != 0).count();
        assert_eq!(steering, STEERING.len(), "one slot each");
        assert!(!steers_html_parsing(hash(b"div")) && !steers_html_parsing(EMPTY_HASH));
        // The hot loop's two hash functions agree with lol_html's.
        for name in [
            &b"font"[..],
            b"H1",
            b"foreignObject",
            b"released-page",
            b"abcdefghijkl",
            b"abcdefghijklm",
            b"jbcdefghijklm",
            b"kbcdefghijklm",
            b"zbcdefghijklm",
            b"abcdefghijklmn",
            b"a7",
            b"a",
        ] {
            assert_eq!(name_hash(name), hash(name), "{name:?}");
            let mut chunk = name.to_vec();
            chunk.push(b'>');
            assert_eq!(
                scan_start_tag_name(&chunk, 0),
                (name.len(), hash(name)),
                "{name:?}"
            );
        }
        assert_eq!(name_hash(b""), hash(b""));
    }
}
