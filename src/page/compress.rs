//! Compression of rewritten pages for clients that accept it (SPEC §2.6).
//!
//! pingora's response compression module is not used here: its brotli stream is flushed
//! but never finished (strict decoders reject it) and it ignores `q` values. This
//! module negotiates from `Accept-Encoding` properly and always terminates the stream.

use std::io::Write;

use bytes::Bytes;
use flate2::write::GzEncoder;

/// gzip level (nginx's `gzip_comp_level` default is 1; 5 is a better size/CPU balance).
const GZIP_LEVEL: u32 = 5;
/// brotli quality (4 is as fast as gzip 5 and smaller).
const BROTLI_QUALITY: u32 = 4;
/// brotli window (log2), as nginx's ngx_brotli default.
const BROTLI_WINDOW: u32 = 22;

/// A content coding the sidecar can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// `gzip`.
    Gzip,
    /// `br`.
    Brotli,
}

impl Coding {
    /// The `Content-Encoding` token.
    pub fn token(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Brotli => "br",
        }
    }

    /// The coding to use for a client's `Accept-Encoding` (RFC 9110 §12.5.3): the
    /// acceptable one with the highest `q`, brotli on a tie; none without the header.
    pub fn negotiate(accept_encoding: Option<&[u8]>) -> Option<Coding> {
        let header = std::str::from_utf8(accept_encoding?).ok()?;
        let (mut gzip, mut br, mut any) = (None, None, None);
        for item in header.split(',') {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| {
                    p.trim()
                        .strip_prefix("q=")
                        .or_else(|| p.trim().strip_prefix("Q="))
                })
                .find_map(|v| v.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            match name.as_str() {
                "gzip" | "x-gzip" => gzip = Some(q),
                "br" => br = Some(q),
                "*" => any = Some(q),
                _ => {}
            }
        }
        let gzip = gzip.or(any).unwrap_or(0.0);
        let br = br.or(any).unwrap_or(0.0);
        match (gzip > 0.0, br > 0.0) {
            (_, true) if br >= gzip => Some(Coding::Brotli),
            (true, _) => Some(Coding::Gzip),
            _ => None,
        }
    }
}

/// A streaming compressor writing into memory; each call returns the bytes ready so far.
///
/// [`Compressor::write`] flushes after every call: a page streams because the client can
/// decode what the app has sent while the app is still working, and an encoder left to
/// itself holds its input until a block fills (tens of KiB), which is the whole first part
/// of a slow page. The price, a block end per upstream read, is measured in
/// benches/README.md (at most +6 % size and +17 % compression CPU at 4 KiB reads). Reads
/// are not coalesced: the body filter cannot know whether more bytes are already waiting,
/// and holding back bytes the app sent would stall the page if it then pauses.
pub struct Compressor {
    inner: Inner,
    /// Input went in since the last flush (a flush with nothing new would still cost bytes).
    unflushed: bool,
}

enum Inner {
    Gzip(GzEncoder<Vec<u8>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    Finished,
}

impl Compressor {
    /// A compressor for `coding`.
    pub fn new(coding: Coding) -> Self {
        let inner = match coding {
            Coding::Gzip => Inner::Gzip(GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(GZIP_LEVEL),
            )),
            Coding::Brotli => Inner::Brotli(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                16 * 1024,
                BROTLI_QUALITY,
                BROTLI_WINDOW,
            ))),
        };
        Self {
            inner,
            unflushed: false,
        }
    }

    /// Compresses `data` and flushes (gzip `Z_SYNC_FLUSH`, brotli
    /// `BROTLI_OPERATION_FLUSH`): with everything returned before, the bytes returned
    /// decode to every byte written so far.
    pub fn write(&mut self, data: &[u8]) -> Bytes {
        self.compress(data);
        if self.unflushed {
            self.unflushed = false;
            // Flushing into a Vec cannot fail.
            let _ = match &mut self.inner {
                Inner::Gzip(e) => e.flush(),
                Inner::Brotli(e) => e.flush(),
                Inner::Finished => Ok(()),
            };
        }
        self.take()
    }

    /// Compresses `data` without a flush: what the encoder emits when it chooses (often
    /// nothing until its block fills). Only for measuring what the flushes cost.
    pub fn write_unflushed(&mut self, data: &[u8]) -> Bytes {
        self.compress(data);
        self.take()
    }

    /// Compresses `last`, ends the stream and returns its last bytes.
    pub fn finish(&mut self, last: &[u8]) -> Bytes {
        self.compress(last);
        match std::mem::replace(&mut self.inner, Inner::Finished) {
            Inner::Gzip(e) => Bytes::from(e.finish().unwrap_or_default()),
            Inner::Brotli(e) => Bytes::from(e.into_inner()),
            Inner::Finished => Bytes::new(),
        }
    }

    fn compress(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.unflushed = true;
        // Writes into a Vec cannot fail.
        let _ = match &mut self.inner {
            Inner::Gzip(e) => e.write_all(data),
            Inner::Brotli(e) => e.write_all(data),
            Inner::Finished => Ok(()),
        };
    }

    /// The compressed bytes produced so far and not yet returned.
    fn take(&mut self) -> Bytes {
        match &mut self.inner {
            Inner::Gzip(e) => Bytes::from(std::mem::take(e.get_mut())),
            Inner::Brotli(e) => Bytes::from(std::mem::take(e.get_mut())),
            Inner::Finished => Bytes::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn negotiation_table() {
        let cases: &[(Option<&str>, Option<Coding>)] = &[
            (None, None),
            (Some(""), None),
            (Some("identity"), None),
            (Some("gzip"), Some(Coding::Gzip)),
            (Some("x-gzip"), Some(Coding::Gzip)),
            (Some("br"), Some(Coding::Brotli)),
            (Some("gzip, deflate, br, zstd"), Some(Coding::Brotli)),
            (Some("deflate, gzip"), Some(Coding::Gzip)),
            (Some("br;q=0.5, gzip"), Some(Coding::Gzip)),
            (Some("br;q=0, gzip;q=0"), None),
            (Some("gzip;q=0, *"), Some(Coding::Brotli)),
            (Some("*;q=0"), None),
            (Some("GZIP ; q=0.8"), Some(Coding::Gzip)),
        ];
        for (header, want) in cases {
            assert_eq!(
                Coding::negotiate(header.map(str::as_bytes)),
                *want,
                "{header:?}"
            );
        }
    }

    fn decode(coding: Coding, compressed: &[u8]) -> Vec<u8> {
        let mut plain = Vec::new();
        match coding {
            Coding::Gzip => flate2::read::GzDecoder::new(compressed)
                .read_to_end(&mut plain)
                .unwrap(),
            Coding::Brotli => brotli::Decompressor::new(compressed, 4096)
                .read_to_end(&mut plain)
                .unwrap(),
        };
        plain
    }

    /// What a decoder fed `compressed` (an unfinished stream) can produce so far.
    fn decode_so_far(coding: Coding, compressed: &[u8]) -> Vec<u8> {
        match coding {
            Coding::Gzip => {
                let mut d = flate2::write::GzDecoder::new(Vec::new());
                d.write_all(compressed).unwrap();
                d.flush().unwrap();
                d.get_ref().clone()
            }
            Coding::Brotli => {
                // brotli-decompressor's writer keeps what overflows its output buffer
                // until more input comes; a buffer larger than the input avoids that.
                let mut d = brotli::DecompressorWriter::new(Vec::new(), 1 << 16);
                d.write_all(compressed).unwrap();
                d.get_ref().clone()
            }
        }
    }

    fn roundtrip(coding: Coding, chunks: &[&[u8]]) -> Vec<u8> {
        let mut c = Compressor::new(coding);
        let mut out = Vec::new();
        for chunk in chunks {
            out.extend_from_slice(&c.write(chunk));
        }
        out.extend_from_slice(&c.finish(b""));
        decode(coding, &out)
    }

    #[test]
    fn every_write_is_decodable_before_the_stream_ends() {
        let page = "<p>hello</p>".repeat(1000);
        for coding in [Coding::Gzip, Coding::Brotli] {
            let mut c = Compressor::new(coding);
            let mut out = Vec::new();
            let mut written = 0;
            for chunk in page.as_bytes().chunks(700) {
                out.extend_from_slice(&c.write(chunk));
                written += chunk.len();
                let decoded = decode_so_far(coding, &out);
                assert!(
                    decoded == page.as_bytes()[..written],
                    "{coding:?}: {written} bytes written, {} decoded",
                    decoded.len()
                );
            }
            let flushed = out.len();
            assert!(c.write(b"").is_empty(), "{coding:?}: nothing new, no bytes");
            out.extend_from_slice(&c.finish(b"<p>last</p>"));
            assert!(out.len() > flushed);
            assert_eq!(
                decode(coding, &out),
                format!("{page}<p>last</p>").as_bytes()
            );
        }
    }

    #[test]
    fn streams_are_complete_and_strictly_decodable() {
        let page = "<p>hello</p>".repeat(10_000);
        let chunks: Vec<&[u8]> = page.as_bytes().chunks(3000).collect();
        for coding in [Coding::Gzip, Coding::Brotli] {
            assert_eq!(roundtrip(coding, &chunks), page.as_bytes(), "{coding:?}");
            assert_eq!(roundtrip(coding, &[]), b"", "{coding:?} empty body");
        }
    }
}
