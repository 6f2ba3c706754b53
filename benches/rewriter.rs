//! Throughput of the streaming HTML rewrite (`src/page/rewrite/`) on a realistic ~100 KB page,
//! and of the recompression of rewritten pages (`src/page/compress.rs`).
//!
//! Run: `cargo bench --bench rewriter -- --warm-up-time 1 --measurement-time 3`
//!
//! Groups (criterion prints throughput in MiB/s or GiB/s; see benches/README.md):
//! - `rewrite_100k/<page>/<chunking>`: one whole response through `Rewriter::new` (the fast
//!   engine, `rewrite::scan`), `write` per chunk and `end`, for the page with exactly one
//!   `<released-page>` (`one_tag`) and the same page without any embed tag (`no_tag`), fed
//!   whole or in 16 KiB / 4 KiB chunks (pingora hands the body filter chunks of roughly
//!   that size).
//! - `rewrite_100k_lolhtml/<page>/<chunking>`: the same through the reference engine,
//!   lol_html (`Engine::Reference`), in the same run.
//! - `rewrite_100k_bytes/<page>/<chunking>`: the fast engine fed `Bytes` chunks
//!   (`Rewriter::write_bytes`, what the proxy calls): unchanged chunks go out as slices of
//!   the input instead of copies.
//! - `baseline_100k/*`: what the bytes cost without lol_html: a plain copy per chunk (what
//!   a passthrough chunk costs at most) and a memchr pre-scan for a possible embed tag
//!   (the candidate fast path suggested in the README), to put the rewrite figure in scale.
//! - `rewriter_setup/new_end_tiny{,_lolhtml}`: fixed cost per rewritten response, measured
//!   on a 40-byte page, for each engine.
//! - `compress_100k/<coding>/<chunking>_{flush,no_flush}`: recompressing the rewritten page
//!   (`page::compress`) as the proxy does, `write` (flushed) per chunk and `finish`, against
//!   the same without the flushes; the compressed sizes are printed before the group runs.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use released_sidecar::page::compress::{Coding, Compressor};
use released_sidecar::page::rewrite::{Charset, Edits, EmbedTags, Engine, Rewriter};
use released_sidecar::token::secret::Token;

/// 1 MiB, the default `embed.memory_limit`.
const MEMORY_LIMIT: usize = 1 << 20;
/// A token of realistic length (Released hands out JWT-like strings).
const TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImFjY291bnQiOiJiZW5jaCIsImV4cCI6MTcwMDAwMDAwMH0.c2lnbmF0dXJlLW5vdC1yZWFsLWJlbmNobWFyay1vbmx5";

fn tags() -> EmbedTags {
    EmbedTags::new(&[
        "released-page".to_string(),
        "released-widget".to_string(),
        "released-form".to_string(),
    ])
    .expect("valid tags")
}

/// A small deterministic PRNG (xorshift), so the page is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

const WORDS: &[&str] = &[
    "release",
    "roadmap",
    "feedback",
    "customer",
    "portal",
    "feature",
    "request",
    "status",
    "quarterly",
    "planning",
    "the",
    "a",
    "of",
    "and",
    "to",
    "with",
    "for",
    "on",
    "new",
    "update",
    "intranet",
    "legacy",
    "application",
    "report",
    "team",
    "review",
    "ticket",
    "priority",
    "deadline",
    "summary",
    "é",
    "naïve",
    "café",
    "—",
    "“quoted”",
];

/// A ~100 KB page shaped like a legacy intranet page: doctype, head with meta, a big
/// inline `<style>`, external and inline `<script>`s (with `<` in code and `</div>` in a
/// string), a nav of links, nested `div`s, tables, forms, comments and paragraphs of text.
/// With `embed_tag`, exactly one `<released-page>` sits near the top of `<main>`.
pub fn page(target_len: usize, embed_tag: bool) -> Vec<u8> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut s = String::with_capacity(target_len + 8192);
    s.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    s.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    s.push_str("<title>Legacy Intranet — Feedback portal</title>\n");
    s.push_str("<link rel=\"stylesheet\" href=\"/static/css/site.css?v=20240101\">\n");
    s.push_str("<style>\n");
    for i in 0..120 {
        s.push_str(&format!(
            ".c{i} > .item-{i}:hover {{ color: #{:06x}; margin: {}px {}px; font: 14px/1.4 \"Helvetica Neue\", Arial, sans-serif; }}\n",
            rng.next() & 0xff_ffff,
            rng.next() % 20,
            rng.next() % 20
        ));
    }
    s.push_str("</style>\n");
    s.push_str("<script src=\"/static/js/jquery-1.12.4.min.js\"></script>\n");
    s.push_str("<script>\n");
    for i in 0..60 {
        s.push_str(&format!(
            "function f{i}(a, b) {{ if (a < b && b > {i}) {{ return '<div class=\"x{i}\">' + a + '</div>'; }} for (var k = 0; k < {}; k++) {{ a += k; }} return a; }}\n",
            rng.next() % 100
        ));
    }
    s.push_str("</script>\n</head>\n<body class=\"portal\">\n");
    s.push_str("<!-- header generated by the CMS, do not edit -->\n<nav id=\"top\"><ul>\n");
    for i in 0..40 {
        s.push_str(&format!(
            "<li class=\"nav-item\"><a href=\"/section/{i}/index.html?ref=nav&amp;lang=en\" title=\"Section {i}\">Section {i}</a></li>\n"
        ));
    }
    s.push_str("</ul></nav>\n<main id=\"content\">\n");
    if embed_tag {
        s.push_str(
            "<released-page account=\"bench\" channel=\"feedback\" data-theme=\"light\"></released-page>\n",
        );
    }
    let mut n = 0;
    while s.len() < target_len.saturating_sub(400) {
        n += 1;
        s.push_str(&format!(
            "<div class=\"row c{}\"><div class=\"col-md-8\"><div class=\"card\" id=\"card-{n}\">\n<h3 class=\"card-title\">",
            n % 120
        ));
        for _ in 0..4 {
            s.push_str(rng.pick(WORDS));
            s.push(' ');
        }
        s.push_str("</h3>\n<p class=\"card-text\">");
        for w in 0..60 {
            s.push_str(rng.pick(WORDS));
            s.push(if w % 17 == 16 { '.' } else { ' ' });
            if w == 30 {
                s.push_str(&format!(
                    "<a href=\"https://intranet.example.com/items/{}\">item {n}</a> <strong>now</strong> ",
                    rng.next() % 100_000
                ));
            }
        }
        s.push_str("</p>\n");
        match n % 5 {
            0 => s.push_str(&format!(
                "<table class=\"grid\"><tr><th>Key</th><th>Value</th></tr><tr><td>id</td><td>{n}</td></tr><tr><td>owner</td><td>team-{}</td></tr></table>\n",
                rng.next() % 50
            )),
            1 => s.push_str(&format!(
                "<form action=\"/vote/{n}\" method=\"post\"><input type=\"hidden\" name=\"csrf\" value=\"{:016x}\"><button type=\"submit\" class=\"btn\">Vote</button></form>\n",
                rng.next()
            )),
            2 => s.push_str("<!-- card footer -->\n<img src=\"/static/img/spacer.gif\" alt=\"\" width=\"1\" height=\"1\">\n"),
            3 => s.push_str(&format!(
                "<ul class=\"tags\"><li>tag-{}</li><li>tag-{}</li><li>tag-{}</li></ul>\n",
                rng.next() % 30,
                rng.next() % 30,
                rng.next() % 30
            )),
            _ => s.push_str("<br><hr class=\"sep\">\n"),
        }
        s.push_str("</div></div><div class=\"col-md-4 sidebar\">&nbsp;</div></div>\n");
    }
    s.push_str("</main>\n<footer><p>&copy; Example Corp — internal use only</p></footer>\n");
    s.push_str(
        "<script>window.analytics && window.analytics.track('page');</script>\n</body>\n</html>\n",
    );
    s.into_bytes()
}

/// Rewrites `page` fed in `chunk`-sized pieces on `engine`; returns the output length.
fn rewrite_once(
    engine: Engine,
    tags: &EmbedTags,
    token: &Token,
    page: &[u8],
    chunk: usize,
) -> usize {
    let edits = Edits {
        token: Some(token),
        ..Edits::default()
    };
    let mut r = Rewriter::with_engine(tags, edits, Charset::Sniffed, MEMORY_LIMIT, engine);
    let mut n = 0;
    for c in page.chunks(chunk) {
        n += black_box(r.write(c)).len();
    }
    n + black_box(r.end()).len()
}

/// [`rewrite_once`] on the fast engine with the chunks handed over as `Bytes` slices of
/// one buffer (`Rewriter::write_bytes`), as the proxy does: unchanged chunks go out
/// uncopied.
fn rewrite_bytes_once(tags: &EmbedTags, token: &Token, chunks: &[bytes::Bytes]) -> usize {
    let edits = Edits {
        token: Some(token),
        ..Edits::default()
    };
    let mut r = Rewriter::with_engine(tags, edits, Charset::Sniffed, MEMORY_LIMIT, Engine::Fast);
    let mut n = 0;
    for c in chunks {
        n += black_box(r.write_bytes(c.clone())).len();
    }
    n + black_box(r.end()).len()
}

/// Could `chunk` (plus the tail of the previous chunk) hold the start of an embed tag?
/// `<` followed by `released-` in any case; `carry` holds up to 9 bytes of the previous
/// chunk's tail so a name split across chunks is still found.
fn may_hold_embed_tag(carry: &[u8], chunk: &[u8]) -> bool {
    const NAME: &[u8] = b"released-";
    let mut joined = [0u8; 32];
    let head = chunk.len().min(joined.len() - carry.len());
    joined[..carry.len()].copy_from_slice(carry);
    joined[carry.len()..carry.len() + head].copy_from_slice(&chunk[..head]);
    let check = |hay: &[u8]| {
        memchr::memchr_iter(b'<', hay).any(|i| {
            let rest = &hay[i + 1..];
            rest.len() < NAME.len() || rest[..NAME.len()].eq_ignore_ascii_case(NAME)
        })
    };
    check(&joined[..carry.len() + head]) || check(chunk)
}

fn bench_rewrite(c: &mut Criterion) {
    let tags = tags();
    let token = Token::new(TOKEN);
    let with_tag = page(100 * 1024, true);
    let without_tag = page(100 * 1024, false);
    let mut outputs = Vec::new();
    for engine in [Engine::Fast, Engine::Reference] {
        let edits = Edits {
            token: Some(&token),
            ..Edits::default()
        };
        let mut check = Rewriter::with_engine(&tags, edits, Charset::Sniffed, MEMORY_LIMIT, engine);
        assert_eq!(check.engine(), engine);
        let out = [check.write(&with_tag), check.end()].concat();
        assert_eq!(
            check.tags_rewritten(),
            1,
            "the bench page must hold one embed tag"
        );
        assert!(out.len() == with_tag.len() + " auth-token=\"\"".len() + TOKEN.len());
        outputs.push(out);
    }
    assert!(
        outputs[0] == outputs[1],
        "the engines disagree on the bench page"
    );

    for (group_name, engine) in [
        ("rewrite_100k", Engine::Fast),
        ("rewrite_100k_lolhtml", Engine::Reference),
    ] {
        let mut group = c.benchmark_group(group_name);
        for (name, page) in [("one_tag", &with_tag), ("no_tag", &without_tag)] {
            group.throughput(Throughput::Bytes(page.len() as u64));
            for (label, chunk) in [("whole", usize::MAX), ("16k", 16 * 1024), ("4k", 4 * 1024)] {
                group.bench_with_input(BenchmarkId::new(name, label), page, |b, page| {
                    b.iter(|| rewrite_once(engine, &tags, &token, page, chunk))
                });
            }
        }
        group.finish();
    }

    let mut group = c.benchmark_group("rewrite_100k_bytes");
    for (name, page) in [("one_tag", &with_tag), ("no_tag", &without_tag)] {
        group.throughput(Throughput::Bytes(page.len() as u64));
        let buffer = bytes::Bytes::copy_from_slice(page);
        for (label, chunk) in [("whole", usize::MAX), ("16k", 16 * 1024), ("4k", 4 * 1024)] {
            let chunks: Vec<bytes::Bytes> = (0..buffer.len())
                .step_by(chunk.min(buffer.len()))
                .map(|at| buffer.slice(at..(at.saturating_add(chunk)).min(buffer.len())))
                .collect();
            group.bench_with_input(BenchmarkId::new(name, label), &chunks, |b, chunks| {
                b.iter(|| rewrite_bytes_once(&tags, &token, chunks))
            });
        }
    }
    group.finish();

    let mut group = c.benchmark_group("baseline_100k");
    group.throughput(Throughput::Bytes(with_tag.len() as u64));
    group.bench_function("copy_16k_chunks", |b| {
        b.iter(|| {
            with_tag
                .chunks(16 * 1024)
                .map(|c| black_box(bytes::Bytes::copy_from_slice(c)).len())
                .sum::<usize>()
        })
    });
    group.bench_function("prescan_16k_chunks_no_tag", |b| {
        b.iter(|| {
            let mut carry: &[u8] = &[];
            let mut hits = 0;
            for c in without_tag.chunks(16 * 1024) {
                hits += usize::from(may_hold_embed_tag(carry, c));
                carry = &c[c.len().saturating_sub(9)..];
            }
            black_box(hits)
        })
    });
    group.finish();

    let mut group = c.benchmark_group("rewriter_setup");
    let tiny = b"<html><body><released-page></released-page></body></html>";
    group.bench_function("new_end_tiny", |b| {
        b.iter(|| rewrite_once(Engine::Fast, &tags, &token, tiny, usize::MAX))
    });
    group.bench_function("new_end_tiny_lolhtml", |b| {
        b.iter(|| rewrite_once(Engine::Reference, &tags, &token, tiny, usize::MAX))
    });
    group.finish();
}

/// Compresses `page` fed in `chunk`-sized pieces, flushing after each or not; returns the
/// compressed length.
fn compress_once(coding: Coding, page: &[u8], chunk: usize, flush: bool) -> usize {
    let mut c = Compressor::new(coding);
    let mut n = 0;
    for piece in page.chunks(chunk) {
        let out = if flush {
            c.write(piece)
        } else {
            c.write_unflushed(piece)
        };
        n += black_box(out).len();
    }
    n + black_box(c.finish(b"")).len()
}

fn bench_compress(c: &mut Criterion) {
    let page = page(100 * 1024, true);
    let mut group = c.benchmark_group("compress_100k");
    group.throughput(Throughput::Bytes(page.len() as u64));
    for (name, coding) in [("gzip", Coding::Gzip), ("br", Coding::Brotli)] {
        for (label, chunk) in [("16k", 16 * 1024), ("4k", 4 * 1024)] {
            let flushed = compress_once(coding, &page, chunk, true);
            let unflushed = compress_once(coding, &page, chunk, false);
            println!(
                "compress_100k/{name}/{label}: {} -> {flushed} bytes flushed per chunk, {unflushed} without flushes ({:+.1} %)",
                page.len(),
                (flushed as f64 / unflushed as f64 - 1.0) * 100.0
            );
            for flush in [true, false] {
                let id = format!("{label}_{}", if flush { "flush" } else { "no_flush" });
                group.bench_function(BenchmarkId::new(name, id), |b| {
                    b.iter(|| compress_once(coding, &page, chunk, flush))
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, bench_rewrite, bench_compress);
criterion_main!(benches);
