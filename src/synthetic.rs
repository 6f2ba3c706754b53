//! Responses the sidecar writes itself, never the app's: the head guard's 408/414/431, the
//! proxy's 502/504 and other failures, the token endpoint's JSON answers and its loader
//! script, the admin pages. One [`SyntheticResponse`] type owns their status, content
//! type, body, `Content-Length`, `Cache-Control`, `X-Content-Type-Options` and
//! `Connection: close`, so the headers of one kind of answer cannot drift between the
//! places that send it. It is written to a pingora proxy session, to the admin server's
//! session, or as raw HTTP/1.1 bytes (the head guard answers before pingora has a session).
//!
//! The body goes out unless the request was `HEAD` or the status is 204 or 304; the headers
//! still describe it (RFC 9110 §8.6 and §15.4.5).

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::proxy::Session;

/// Plain text, the kind of every error page the sidecar writes.
const TEXT: &str = "text/plain; charset=utf-8";

/// A response the sidecar answers with itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntheticResponse {
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
    cache_control: &'static str,
    nosniff: bool,
    close: bool,
    /// Further fields (`Allow`, `Retry-After`, `ETag`), in the order given.
    extra: Vec<(HeaderName, HeaderValue)>,
}

impl SyntheticResponse {
    /// `status` with `body` of `content_type`, never stored by a cache (`no-store`).
    pub fn new(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Self {
        Self {
            status,
            content_type,
            body: body.into(),
            cache_control: "no-store",
            nosniff: false,
            close: false,
            extra: Vec::new(),
        }
    }

    /// A plain-text (UTF-8) answer.
    pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Self {
        Self::new(status, TEXT, body)
    }

    /// A plain-text answer that says only its status: `404 Not Found`.
    pub fn status_text(status: StatusCode) -> Self {
        let reason = status.canonical_reason().unwrap_or("Error");
        Self::text(status, format!("{} {reason}\n", status.as_u16()))
    }

    /// A JSON answer for scripts: never sniffed as anything else.
    pub fn json(status: StatusCode, body: &serde_json::Value) -> Self {
        Self::new(status, "application/json", body.to_string()).nosniff()
    }

    /// Replaces `Cache-Control: no-store`.
    pub fn cache_control(mut self, value: &'static str) -> Self {
        self.cache_control = value;
        self
    }

    /// Adds `X-Content-Type-Options: nosniff`: the browser must take the content type as
    /// given (a script, JSON).
    pub fn nosniff(mut self) -> Self {
        self.nosniff = true;
        self
    }

    /// Ends the connection after this answer (`Connection: close`).
    pub fn close(mut self) -> Self {
        self.close = true;
        self
    }

    /// Adds a field after the standard ones.
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.extra.push((name, value));
        self
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The header fields, in the order they are written.
    fn fields(&self) -> impl Iterator<Item = (HeaderName, HeaderValue)> + '_ {
        let standard = [
            Some((
                header::CONTENT_TYPE,
                HeaderValue::from_static(self.content_type),
            )),
            Some((header::CONTENT_LENGTH, HeaderValue::from(self.body.len()))),
            Some((
                header::CACHE_CONTROL,
                HeaderValue::from_static(self.cache_control),
            )),
            self.nosniff.then(|| {
                (
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                )
            }),
            self.close
                .then(|| (header::CONNECTION, HeaderValue::from_static("close"))),
        ];
        standard
            .into_iter()
            .flatten()
            .chain(self.extra.iter().cloned())
    }

    /// Whether the body goes out with the answer to a request made with `method`.
    fn has_body(&self, method: &Method) -> bool {
        *method != Method::HEAD
            && !matches!(
                self.status,
                StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED
            )
    }

    /// The head as pingora writes it (pingora adds `Date` and sets `Connection` from the
    /// session's keep-alive, which [`Self::close`] turns off).
    fn response_header(&self) -> pingora::Result<ResponseHeader> {
        let mut head = ResponseHeader::build(self.status, Some(6 + self.extra.len()))?;
        for (name, value) in self.fields() {
            head.insert_header(name, value)?;
        }
        Ok(head)
    }

    /// The whole answer as HTTP/1.1 bytes, for a connection pingora has not taken yet.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(160 + self.body.len());
        out.put_slice(b"HTTP/1.1 ");
        out.put_slice(self.status.as_str().as_bytes());
        out.put_u8(b' ');
        let reason = self.status.canonical_reason().unwrap_or("Unknown");
        out.put_slice(reason.as_bytes());
        out.put_slice(b"\r\n");
        for (name, value) in self.fields() {
            out.put_slice(name.as_str().as_bytes());
            out.put_slice(b": ");
            out.put_slice(value.as_bytes());
            out.put_slice(b"\r\n");
        }
        out.put_slice(b"\r\n");
        // No request method is known here: the body goes unless the status forbids it.
        if self.has_body(&Method::GET) {
            out.put_slice(&self.body);
        }
        out.freeze()
    }

    /// Answers the request of a proxy `session` (through pingora's downstream modules, as
    /// a proxied response would go).
    pub async fn write_to_proxy(self, session: &mut Session) -> pingora::Result<()> {
        let body = self.has_body(&session.req_header().method);
        if self.close {
            session.set_keepalive(None);
        }
        let head = self.response_header()?;
        session.write_response_header(Box::new(head), !body).await?;
        if body {
            session.write_response_body(Some(self.body), true).await?;
        }
        Ok(())
    }

    /// Answers the request of a plain HTTP server `session` (the admin listener's).
    pub async fn write_to_server(self, session: &mut ServerSession) -> pingora::Result<()> {
        let body = self.has_body(&session.req_header().method);
        if self.close {
            session.set_keepalive(None);
        }
        session
            .write_response_header(Box::new(self.response_header()?))
            .await?;
        if body {
            session.write_response_body(self.body, true).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The status line and fields of raw response bytes, and the body.
    fn parse(raw: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let mut fields = [httparse::EMPTY_HEADER; 16];
        let mut response = httparse::Response::new(&mut fields);
        let httparse::Status::Complete(len) = response.parse(raw).unwrap() else {
            panic!("incomplete head");
        };
        let fields = response
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8(h.value.to_vec()).unwrap(),
                )
            })
            .collect();
        (response.code.unwrap(), fields, raw[len..].to_vec())
    }

    #[test]
    fn a_refusal_serialises_as_the_head_guard_always_wrote_it() {
        let raw = SyntheticResponse::status_text(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
            .close()
            .to_bytes();
        assert_eq!(
            &raw[..],
            &b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 36\r\ncache-control: no-store\r\nconnection: close\r\n\r\n431 Request Header Fields Too Large\n"[..]
        );
    }

    #[test]
    fn every_kind_of_answer_carries_its_fields_and_a_true_length() {
        let json = serde_json::json!({"error": "too many token requests"});
        type Case = (SyntheticResponse, &'static [(&'static str, &'static str)]);
        let cases: Vec<Case> = vec![
            (
                SyntheticResponse::status_text(StatusCode::REQUEST_TIMEOUT).close(),
                &[
                    ("content-type", "text/plain; charset=utf-8"),
                    ("content-length", "20"),
                    ("cache-control", "no-store"),
                    ("connection", "close"),
                ],
            ),
            (
                SyntheticResponse::json(StatusCode::TOO_MANY_REQUESTS, &json)
                    .header(header::RETRY_AFTER, HeaderValue::from(3u64)),
                &[
                    ("content-type", "application/json"),
                    ("content-length", "35"),
                    ("cache-control", "no-store"),
                    ("x-content-type-options", "nosniff"),
                    ("retry-after", "3"),
                ],
            ),
            (
                SyntheticResponse::new(StatusCode::OK, "application/javascript", "x()")
                    .cache_control("public, max-age=3600")
                    .nosniff()
                    .header(header::ETAG, HeaderValue::from_static("\"ab\"")),
                &[
                    ("content-type", "application/javascript"),
                    ("content-length", "3"),
                    ("cache-control", "public, max-age=3600"),
                    ("x-content-type-options", "nosniff"),
                    ("etag", "\"ab\""),
                ],
            ),
            (
                SyntheticResponse::new(StatusCode::OK, "text/plain", "ok\n").close(),
                &[
                    ("content-type", "text/plain"),
                    ("content-length", "3"),
                    ("cache-control", "no-store"),
                    ("connection", "close"),
                ],
            ),
        ];
        for (response, want) in cases {
            let (status, fields, body) = parse(&response.to_bytes());
            assert_eq!(status, response.status().as_u16());
            let want: Vec<(String, String)> = want
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect();
            assert_eq!(fields, want, "{response:?}");
            assert_eq!(body, response.body, "{response:?}");
            // pingora's head carries exactly the same fields.
            let head = response.response_header().unwrap();
            let pingora: Vec<(String, String)> = head
                .headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
                .collect();
            assert_eq!(pingora, want, "{response:?}");
        }
    }

    #[test]
    fn head_requests_and_not_modified_answers_carry_no_body() {
        let ok = SyntheticResponse::text(StatusCode::OK, "ok\n");
        assert!(ok.has_body(&Method::GET));
        assert!(!ok.has_body(&Method::HEAD));
        let not_modified = SyntheticResponse::new(StatusCode::NOT_MODIFIED, "text/x", "abc");
        assert!(!not_modified.has_body(&Method::GET));
        // The length is still that of the body a 200 would carry (RFC 9110 §8.6).
        let (_, fields, _) = parse(&not_modified.to_bytes());
        assert!(fields.contains(&("content-length".into(), "3".into())));
    }
}
