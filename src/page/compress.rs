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
pub struct Compressor {
    inner: Inner,
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
        Self { inner }
    }

    /// Compresses `data`; returns the compressed bytes produced so far (often empty until
    /// the encoder's block fills).
    pub fn write(&mut self, data: &[u8]) -> Bytes {
        // Writes into a Vec cannot fail.
        match &mut self.inner {
            Inner::Gzip(e) => {
                let _ = e.write_all(data);
                Bytes::from(std::mem::take(e.get_mut()))
            }
            Inner::Brotli(e) => {
                let _ = e.write_all(data);
                Bytes::from(std::mem::take(e.get_mut()))
            }
            Inner::Finished => Bytes::new(),
        }
    }

    /// Ends the stream and returns its last bytes.
    pub fn finish(&mut self) -> Bytes {
        match std::mem::replace(&mut self.inner, Inner::Finished) {
            Inner::Gzip(e) => Bytes::from(e.finish().unwrap_or_default()),
            Inner::Brotli(e) => Bytes::from(e.into_inner()),
            Inner::Finished => Bytes::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

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

    fn roundtrip(coding: Coding, chunks: &[&[u8]]) -> Vec<u8> {
        let mut c = Compressor::new(coding);
        let mut out = Vec::new();
        for chunk in chunks {
            out.extend_from_slice(&c.write(chunk));
        }
        out.extend_from_slice(&c.finish());
        let mut plain = Vec::new();
        match coding {
            Coding::Gzip => flate2::read::GzDecoder::new(&out[..])
                .read_to_end(&mut plain)
                .unwrap(),
            Coding::Brotli => brotli::Decompressor::new(&out[..], 4096)
                .read_to_end(&mut plain)
                .unwrap(),
        };
        plain
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
