//! A LOCAL STAND-IN for the Released token API (never the real service). It enforces the
//! contract of SPEC §1 — POST, `Authorization: Bearer <secret>`, a JSON body whose fields
//! follow Released's rules — records every call, and answers with a fresh token per call
//! or with a failure the test chooses. Shared by the integration tests and the demo.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The path of the real endpoint, kept so configs look like production.
pub const TOKEN_PATH: &str = "/auth/api/impersonation/token";

/// How the stand-in answers a valid call.
#[derive(Debug, Clone)]
pub enum Behavior {
    /// A fresh token as a bare JSON string (what the official demos expect).
    Token,
    /// A fresh token inside an object under this key (`token`, `auth_token`, ...).
    TokenIn(&'static str),
    /// A fresh token after a delay.
    Slow(Duration),
    /// This HTTP status with a JSON error body.
    Status(u16),
    /// 200 with a body that is not a token.
    Garbage,
    /// A fresh token padded to this many bytes.
    LongToken(usize),
}

/// One call as received.
#[derive(Debug, Clone)]
pub struct Call {
    /// The `Authorization` header.
    pub authorization: Option<String>,
    /// The parsed JSON body (`Null` if unparseable).
    pub body: serde_json::Value,
    /// The status answered.
    pub status: u16,
    /// The token issued, for a successful call.
    pub token: Option<String>,
    /// Why the call broke the contract, if it did.
    pub rejected: Option<String>,
}

struct State {
    secrets: Vec<String>,
    behavior: Behavior,
    calls: Vec<Call>,
    issued: u64,
}

/// A running stand-in; stops when dropped.
pub struct StandIn {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StandIn {
    /// Starts a stand-in that accepts `secret` as the bearer.
    pub async fn start(secret: &str) -> StandIn {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind stand-in");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            secrets: vec![secret.to_string()],
            behavior: Behavior::Token,
            calls: Vec::new(),
            issued: 0,
        }));
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let state = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(handle(req, &state).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        StandIn { addr, state, task }
    }

    /// The token endpoint URL.
    pub fn url(&self) -> String {
        format!("http://{}{TOKEN_PATH}", self.addr)
    }

    /// Changes how valid calls are answered.
    pub fn set_behavior(&self, behavior: Behavior) {
        self.state.lock().unwrap().behavior = behavior;
    }

    /// Accepts only `secret` from now on (a rotation on Released's side).
    pub fn set_secret(&self, secret: &str) {
        self.state.lock().unwrap().secrets = vec![secret.to_string()];
    }

    /// Accepts `secret` as well (an overlap window during a rotation).
    pub fn also_accept(&self, secret: &str) {
        self.state.lock().unwrap().secrets.push(secret.to_string());
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    /// Calls that followed the contract and got a token.
    pub fn issued(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.token.is_some())
            .collect()
    }
}

fn json(status: u16, value: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())))
        .unwrap()
}

async fn handle(req: Request<Incoming>, state: &Mutex<State>) -> Response<Full<Bytes>> {
    let method_ok = req.method() == hyper::Method::POST;
    let path_ok = req.uri().path() == TOKEN_PATH;
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let content_type_ok = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().unwrap_or_default().trim() == "application/json");
    let bytes = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);

    let (secrets, behavior) = {
        let s = state.lock().unwrap();
        (s.secrets.clone(), s.behavior.clone())
    };
    let bearer_ok = authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Bearer "))
        .is_some_and(|given| secrets.iter().any(|s| s == given));
    let rejection = if !path_ok {
        Some((404, "unknown path".to_string()))
    } else if !method_ok {
        Some((405, "POST only".to_string()))
    } else if !bearer_ok {
        Some((401, "bad or missing bearer secret".to_string()))
    } else if !content_type_ok {
        Some((415, "Content-Type must be application/json".to_string()))
    } else {
        contract_violation(&body).map(|why| (400, why))
    };
    if let Some((status, why)) = rejection {
        state.lock().unwrap().calls.push(Call {
            authorization,
            body,
            status,
            token: None,
            rejected: Some(why.clone()),
        });
        return json(status, serde_json::json!({ "error": why }));
    }

    if let Behavior::Slow(delay) = behavior {
        tokio::time::sleep(delay).await;
    }
    let mut s = state.lock().unwrap();
    s.issued += 1;
    let token = format!("tok-{}-{:08x}", s.issued, rand_u32(s.issued));
    let (status, response, issued) = match behavior {
        Behavior::Token | Behavior::Slow(_) => (200, serde_json::json!(token), Some(token)),
        Behavior::LongToken(len) => {
            let token = format!("{token:x<len$}");
            (200, serde_json::json!(token), Some(token))
        }
        Behavior::TokenIn(key) => (200, serde_json::json!({ key: token }), Some(token)),
        Behavior::Status(code) => (
            code,
            serde_json::json!({ "error": "stand-in told to fail" }),
            None,
        ),
        Behavior::Garbage => (200, serde_json::json!({ "unexpected": true }), None),
    };
    s.calls.push(Call {
        authorization,
        body,
        status,
        token: issued,
        rejected: None,
    });
    json(status, response)
}

/// SPEC §1 field rules, as Released enforces them.
fn contract_violation(body: &serde_json::Value) -> Option<String> {
    let Some(obj) = body.as_object() else {
        return Some("body must be a JSON object".into());
    };
    let str_field = |k: &str| obj.get(k).and_then(|v| v.as_str());
    for key in obj.keys() {
        if !["account_id", "user_id", "user_email", "profile"].contains(&key.as_str()) {
            return Some(format!("unknown field {key}"));
        }
    }
    match str_field("account_id") {
        Some(a) if !a.is_empty() => {}
        _ => return Some("account_id missing".into()),
    }
    let user_id = str_field("user_id").unwrap_or_default();
    let user_id_ok = (1..=255).contains(&user_id.len())
        && user_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_:-".contains(&b));
    if !user_id_ok {
        return Some("user_id must match ^[a-zA-Z0-9:_-]{1,255}$".into());
    }
    let email = str_field("user_email").unwrap_or_default();
    let email_ok = email
        .split_once('@')
        .is_some_and(|(l, d)| !l.is_empty() && d.contains('.'));
    if !email_ok {
        return Some("user_email must be an email address".into());
    }
    if let Some(profile) = obj.get("profile") {
        let Some(p) = profile.as_object() else {
            return Some("profile must be an object".into());
        };
        for (k, v) in p {
            match (k.as_str(), v.as_str()) {
                ("name", Some(n)) if n.chars().count() <= 200 => {}
                ("avatar_url", Some(u))
                    if (u.starts_with("https://") || u.starts_with("http://"))
                        && u.len() <= 2048
                        && !u
                            .chars()
                            .any(|c| c.is_whitespace() || "\"'`<>\\".contains(c)) => {}
                _ => return Some(format!("invalid profile.{k}")),
            }
        }
    }
    None
}

fn rand_u32(seed: u64) -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    ((nanos ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> 7) as u32
}
