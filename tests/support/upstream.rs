//! A real HTTP/1.1 app on 127.0.0.1 (hyper), optionally over TLS, whose answers each
//! test chooses. It records every request head and counts TCP connections opened and
//! closed, so tests can see exactly what the sidecar sent upstream and whether
//! connections were reused or let go.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A response body.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// What the app answers.
pub enum Reply {
    /// A complete response.
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Bytes,
    },
    /// A response streamed in chunks, each sent after its delay.
    Stream {
        status: u16,
        headers: Vec<(String, String)>,
        chunks: Vec<(Duration, Bytes)>,
    },
    /// A response whose body chunks the test sends, when it chooses, down a channel; the
    /// body ends when the sender is dropped. Lets a test hold the app mid-page on a signal
    /// instead of a timer.
    Channel {
        status: u16,
        headers: Vec<(String, String)>,
        chunks: tokio::sync::mpsc::UnboundedReceiver<Bytes>,
    },
    /// JSON of the request headers the app received (name -> list of values).
    EchoHeaders,
    /// The request body sent back as is (`application/octet-stream`).
    EchoBody,
    /// The request body sent back chunk by chunk as it arrives (chunked
    /// `application/octet-stream`): the response streams while the upload does.
    StreamEcho,
    /// Accept a WebSocket upgrade and echo every message.
    WebSocketEcho,
    /// Wait, then answer.
    Delayed(Duration, Box<Reply>),
}

impl Reply {
    /// `200 text/html; charset=utf-8` with `body`.
    pub fn html(body: impl Into<Bytes>) -> Reply {
        Reply::Full {
            status: 200,
            headers: vec![("content-type".into(), "text/html; charset=utf-8".into())],
            body: body.into(),
        }
    }

    /// A complete response with one content type.
    pub fn with(status: u16, content_type: &str, body: impl Into<Bytes>) -> Reply {
        Reply::Full {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            body: body.into(),
        }
    }

    /// Adds a header to a `Full`, `Stream` or `Channel` reply.
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        if let Reply::Full { headers, .. }
        | Reply::Stream { headers, .. }
        | Reply::Channel { headers, .. } = &mut self
        {
            headers.push((name.into(), value.into()));
        }
        self
    }
}

/// The head of a request the app received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Seen {
    /// The values of header `name`.
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

/// A running app; stops when dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    tls: bool,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// Starts a plain HTTP app answering every request with `handler`.
    pub async fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Upstream {
        Self::start_inner(Arc::new(handler), None).await
    }

    /// Starts an HTTPS app with a fresh self-signed certificate for `localhost` and
    /// 127.0.0.1; returns it with the certificate PEM (to use as CA).
    pub async fn start_tls(
        handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> (Upstream, String) {
        released_sidecar::install_crypto_provider();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("self-signed cert");
        let pem = cert.cert.pem();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .expect("tls config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        (
            Self::start_inner(Arc::new(handler), Some(acceptor)).await,
            pem,
        )
    }

    async fn start_inner(handler: Handler, tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let is_tls = tls.is_some();
        let (seen2, conns2, closed2) = (
            Arc::clone(&seen),
            Arc::clone(&connections),
            Arc::clone(&closed),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                conns2.fetch_add(1, Ordering::SeqCst);
                let handler = Arc::clone(&handler);
                let seen = Arc::clone(&seen2);
                let closed = Arc::clone(&closed2);
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let handler = Arc::clone(&handler);
                        let seen = Arc::clone(&seen);
                        async move { Ok::<_, Infallible>(answer(req, &handler, &seen).await) }
                    });
                    let builder = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                let _ = builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .with_upgrades()
                                    .await;
                            }
                        }
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(tcp), service)
                                .with_upgrades()
                                .await;
                        }
                    }
                    closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Upstream {
            addr,
            tls: is_tls,
            seen,
            connections,
            closed,
            task,
        }
    }

    /// `http://127.0.0.1:PORT` (or `https://localhost:PORT`).
    pub fn url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// Every request head received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// TCP connections closed so far (by either side; a connection upgraded to a tunnel
    /// counts when its HTTP part ends).
    pub fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }
}

async fn answer(
    mut req: Request<Incoming>,
    handler: &Handler,
    seen: &Mutex<Vec<Seen>>,
) -> Response<Body> {
    let head = Seen {
        method: req.method().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
    };
    seen.lock().unwrap().push(head.clone());
    let mut reply = handler(&head);
    loop {
        match reply {
            Reply::Delayed(delay, inner) => {
                tokio::time::sleep(delay).await;
                reply = *inner;
            }
            other => {
                reply = other;
                break;
            }
        }
    }
    match reply {
        Reply::Full {
            status,
            headers,
            body,
        } => build(status, &headers, full(body)),
        Reply::Stream {
            status,
            headers,
            chunks,
        } => {
            let stream = futures_util::stream::iter(chunks).then(|(delay, bytes)| async move {
                tokio::time::sleep(delay).await;
                Ok::<_, std::io::Error>(Frame::data(bytes))
            });
            build(status, &headers, BodyExt::boxed(StreamBody::new(stream)))
        }
        Reply::Channel {
            status,
            headers,
            chunks,
        } => {
            let stream = futures_util::stream::unfold(chunks, |mut chunks| async move {
                let bytes = chunks.recv().await?;
                Some((Ok::<_, std::io::Error>(Frame::data(bytes)), chunks))
            });
            build(status, &headers, BodyExt::boxed(StreamBody::new(stream)))
        }
        Reply::EchoHeaders => {
            let mut map = serde_json::Map::new();
            for (k, v) in &head.headers {
                map.entry(k.clone())
                    .or_insert_with(|| serde_json::Value::Array(vec![]))
                    .as_array_mut()
                    .unwrap()
                    .push(serde_json::Value::String(v.clone()));
            }
            let body = serde_json::to_vec(&map).unwrap();
            build(
                200,
                &[("content-type".into(), "application/json".into())],
                full(body),
            )
        }
        Reply::EchoBody => {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            build(
                200,
                &[("content-type".into(), "application/octet-stream".into())],
                full(body),
            )
        }
        Reply::StreamEcho => {
            let echo = req
                .into_body()
                .into_data_stream()
                .map(|chunk| chunk.map(Frame::data).map_err(std::io::Error::other));
            build(
                200,
                &[("content-type".into(), "application/octet-stream".into())],
                BodyExt::boxed(StreamBody::new(echo)),
            )
        }
        Reply::WebSocketEcho => websocket_echo(&mut req),
        Reply::Delayed(..) => unreachable!(),
    }
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

fn build(status: u16, headers: &[(String, String)], body: Body) -> Response<Body> {
    let mut resp = Response::builder().status(status);
    for (k, v) in headers {
        resp = resp.header(k.as_str(), v.as_str());
    }
    resp.body(body).unwrap()
}

fn websocket_echo(req: &mut Request<Incoming>) -> Response<Body> {
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return build(400, &[], full("not a websocket request"));
    };
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            if ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    Response::builder()
        .status(101)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", derive_accept_key(key.as_bytes()))
        .body(full(Bytes::new()))
        .unwrap()
}
