//! The Prometheus registry: every counter and histogram the sidecar exports on
//! `/metrics` (SPEC §7), created once and shared by the proxy, the Released client and the
//! reloader. Label values are bounded sets (route names, status codes, outcome labels),
//! never user data.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// Every metric the sidecar exports.
pub struct Metrics {
    registry: Registry,
    /// Requests answered to clients, by route and status code.
    pub requests: IntCounterVec,
    /// Page loads on a matching route, by route.
    pub page_loads: IntCounterVec,
    /// Token API outcomes, by result.
    pub token_requests: IntCounterVec,
    /// Token API call latency.
    pub token_duration: Histogram,
    /// Page loads that got no token call, by reason.
    pub token_skips: IntCounterVec,
    /// Token calls stopped because their request could no longer use the token, by reason.
    pub token_calls_aborted: IntCounterVec,
    /// Requests refused before they reached the proxy logic (a bad or slow head), by reason.
    pub rejected_heads: IntCounterVec,
    /// Clients that closed the connection in the middle of sending a request head.
    pub client_head_disconnects: IntCounter,
    /// Client connections being served right now (`limits.max_connections` bounds it).
    pub connections: IntGauge,
    /// Embed start tags that received an `auth-token`.
    pub tags_rewritten: IntCounter,
    /// Rewrites that stopped early: the per-response memory bound (the rest passed through
    /// unchanged) or the token budget (later tags got no token).
    pub rewrite_bailouts: IntCounter,
    /// Config reloads, by result.
    pub config_reloads: IntCounterVec,
    /// Unix time of the last successful config load.
    pub config_last_success: IntGauge,
    /// Responses received from the app, by status code.
    pub upstream_responses: IntCounterVec,
    /// Time from sending a request upstream to the app's response header.
    pub upstream_duration: HistogramVec,
    /// Requests being served right now.
    pub in_flight: IntGauge,
    /// Identity headers removed before a request reached the app, by reason.
    pub identity_headers_stripped: IntCounterVec,
    /// Optional user fields left out of a token request instead of refusing it, by field
    /// and reason.
    pub identity_fields_dropped: IntCounterVec,
    /// Unix time the config reloader last ran its loop (it wakes at least every few
    /// seconds; a stale value means hot reload has stopped).
    pub reloader_heartbeat: IntGauge,
    /// Token API answers 401/403: the shared secret or account is wrong.
    pub token_auth_failures: IntCounter,
    /// TLS handshakes on `listen`, by outcome.
    pub tls_handshakes: IntCounterVec,
    /// Requests by where their trust came from.
    pub requests_by_trust: IntCounterVec,
    /// Answers of the client-embed token endpoint, by status code.
    pub embed_token_responses: IntCounterVec,
    /// Pages that got the embed loader injected, or were left alone for their CSP.
    pub loader_injections: IntCounterVec,
    /// Binary upgrades this process tried to hand its listening sockets over in, by result.
    pub upgrades: IntCounterVec,
    /// `embed.insert` rules applied to a page, by whether their snippet went in.
    pub embed_insertions: IntCounterVec,
    /// Log lines dropped because stderr could not keep up (synced at each render).
    log_lines_dropped: IntCounter,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("released_sidecar".into()), None)
            .expect("static registry options are valid");
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let requests = counter_vec(
            "requests_total",
            "Requests answered to clients, by route and HTTP status code.",
            &["route", "code"],
        );
        let page_loads = counter_vec(
            "page_loads_total",
            "Page loads (GET for an HTML document) on a matching route.",
            &["route"],
        );
        let token_requests = counter_vec(
            "token_requests_total",
            "Released token API outcomes: success; timeout, transport_error, server_error (5xx), rate_limited (429) (these count toward the cool-down); unauthorized (401/403: wrong secret or account), rejected (other 4xx: this request's data), http_error (other statuses), bad_response; cooldown (not sent), abandoned (the page could not use it, or the client left).",
            &["result"],
        );
        let token_skips = counter_vec(
            "token_skips_total",
            "Page loads on a route that requested no token, by reason.",
            &["reason"],
        );
        let token_calls_aborted = counter_vec(
            "token_calls_aborted_total",
            "Token calls aborted before they finished, by why the page could not use the token: not_rewritable, client_gone, upstream_error, error, unused.",
            &["reason"],
        );
        let rejected_heads = counter_vec(
            "rejected_requests_total",
            "Requests answered before the proxy logic ran, by reason: header_timeout (408), uri_too_long (414), headers_too_large (431), bad_request (400 from the HTTP parser), method_not_allowed (405 for CONNECT).",
            &["reason"],
        );
        let identity_headers_stripped = counter_vec(
            "identity_headers_stripped_total",
            "Identity headers removed before the request reached the app: untrusted_peer (any identity header from a peer outside trusted_proxies), respelled (an _ spelling of one, from any peer) or strip_headers (a strip_headers name in any spelling, from any peer).",
            &["reason"],
        );
        let identity_fields_dropped = counter_vec(
            "identity_fields_dropped_total",
            "Optional user fields (name, avatar_url) left out of a token request instead of refusing it, by field and by the rule the value broke.",
            &["field", "reason"],
        );
        let embed_token_responses = counter_vec(
            "embed_token_responses_total",
            "Answers of the client-embed token endpoint (embed.client), by HTTP status code.",
            &["code"],
        );
        let tls_handshakes = counter_vec(
            "tls_handshakes_total",
            "TLS handshakes on listen: ok, or bad_certificate (a client certificate that does not verify against tls.client_ca_file; the handshake is refused).",
            &["result"],
        );
        let requests_by_trust = counter_vec(
            "requests_by_trust_total",
            "Requests by where the trust in their identity headers came from: certificate, address, or none.",
            &["source"],
        );
        let loader_injections = counter_vec(
            "loader_injections_total",
            "Token-route pages given the embed loader (injected), or left alone because their Content-Security-Policy would block it (csp_blocked).",
            &["result"],
        );
        let embed_insertions = counter_vec(
            "embed_insertions_total",
            "embed.insert rules on token page loads: inserted (the snippet went in next to the first element the selector matched) or no_match (nothing matched; the page is unchanged).",
            &["result"],
        );
        let config_reloads = counter_vec(
            "config_reloads_total",
            "Config and secret reloads, by result (success or error).",
            &["result"],
        );
        let upgrades = counter_vec(
            "upgrades_total",
            "Binary upgrades (SIGUSR2, SIGQUIT) by result: success (the new process took the listening sockets over), refused (a safety check refused the socket path or the process on it), failed (the new process did not start or take over). This process keeps serving unless success.",
            &["result"],
        );
        let upstream_responses = counter_vec(
            "upstream_responses_total",
            "Responses received from the app, by HTTP status code.",
            &["code"],
        );
        let token_duration = Histogram::with_opts(
            HistogramOpts::new(
                "token_request_duration_seconds",
                "Duration of Released token API calls.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        registry
            .register(Box::new(token_duration.clone()))
            .expect("unique metric");
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "upstream_response_duration_seconds",
                "Time from the request to the app's response header, by route.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(upstream_duration.clone()))
            .expect("unique metric");
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let tags_rewritten = counter(
            "tags_rewritten_total",
            "Embed start tags that received an auth-token attribute.",
        );
        let token_auth_failures = counter(
            "token_auth_failures_total",
            "Token API answers 401 or 403: the shared secret or account_id is wrong. Alert on any increase.",
        );
        let log_lines_dropped = counter(
            "log_lines_dropped_total",
            "Log lines dropped because stderr could not keep up (the proxy never waits for the log).",
        );
        let rewrite_bailouts = counter(
            "rewrite_bailouts_total",
            "Rewrites that stopped early: the per-response memory bound (embed.memory_limit; the rest of the page passed through unchanged) or the 2 MiB token budget (later tags got no token).",
        );
        let client_head_disconnects = counter(
            "client_head_disconnects_total",
            "Clients that closed the connection before finishing a request head.",
        );
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let config_last_success = gauge(
            "config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful config load.",
        );
        let in_flight = gauge("in_flight_requests", "Requests being served right now.");
        let connections = gauge(
            "client_connections",
            "Client connections open on the proxy port right now.",
        );
        let reloader_heartbeat = gauge(
            "config_reloader_heartbeat_timestamp_seconds",
            "Unix time the config reloader last ran; alert when time() minus this exceeds a minute (hot reload and secret rotation have stopped).",
        );

        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique metric");

        // Pre-create the outcome series so dashboards see zeros, not gaps.
        for result in [
            "success",
            "timeout",
            "transport_error",
            "server_error",
            "rate_limited",
            "unauthorized",
            "rejected",
            "http_error",
            "bad_response",
            "cooldown",
            "abandoned",
        ] {
            token_requests.with_label_values(&[result]);
        }
        for code in ["200", "401", "403", "404", "405", "429", "503"] {
            embed_token_responses.with_label_values(&[code]);
        }
        for result in ["ok", "bad_certificate"] {
            tls_handshakes.with_label_values(&[result]);
        }
        for source in ["certificate", "address", "none"] {
            requests_by_trust.with_label_values(&[source]);
        }
        for result in ["injected", "csp_blocked"] {
            loader_injections.with_label_values(&[result]);
        }
        for result in ["inserted", "no_match"] {
            embed_insertions.with_label_values(&[result]);
        }
        for reason in ["untrusted_peer", "respelled", "strip_headers"] {
            identity_headers_stripped.with_label_values(&[reason]);
        }
        for result in ["success", "error"] {
            config_reloads.with_label_values(&[result]);
        }
        for result in ["success", "refused", "failed"] {
            upgrades.with_label_values(&[result]);
        }
        for field in ["name", "avatar_url"] {
            for reason in [
                "multiple_values",
                "not_utf8",
                "pattern_mismatch",
                "empty",
                "claim_not_a_string",
            ] {
                identity_fields_dropped.with_label_values(&[field, reason]);
            }
        }
        identity_fields_dropped.with_label_values(&["avatar_url", "invalid_avatar_url"]);
        for reason in [
            "not_rewritable",
            "client_gone",
            "upstream_error",
            "error",
            "unused",
        ] {
            token_calls_aborted.with_label_values(&[reason]);
        }
        for reason in [
            "header_timeout",
            "uri_too_long",
            "headers_too_large",
            "bad_request",
            "method_not_allowed",
        ] {
            rejected_heads.with_label_values(&[reason]);
        }

        Self {
            registry,
            requests,
            page_loads,
            token_requests,
            token_duration,
            token_skips,
            token_calls_aborted,
            rejected_heads,
            client_head_disconnects,
            connections,
            tags_rewritten,
            rewrite_bailouts,
            config_reloads,
            config_last_success,
            upstream_responses,
            upstream_duration,
            in_flight,
            identity_headers_stripped,
            identity_fields_dropped,
            reloader_heartbeat,
            token_auth_failures,
            embed_token_responses,
            tls_handshakes,
            requests_by_trust,
            loader_injections,
            upgrades,
            embed_insertions,
            log_lines_dropped,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let dropped = crate::logging::dropped_lines();
        self.log_lines_dropped
            .inc_by(dropped.saturating_sub(self.log_lines_dropped.get()));
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_metric_names_are_exported() {
        let m = Metrics::new();
        m.requests.with_label_values(&["portal", "200"]).inc();
        m.page_loads.with_label_values(&["portal"]).inc();
        m.token_duration.observe(0.01);
        m.tags_rewritten.inc();
        let text = m.render();
        for name in [
            "released_sidecar_requests_total",
            "released_sidecar_page_loads_total",
            "released_sidecar_token_requests_total{result=\"success\"}",
            "released_sidecar_token_request_duration_seconds_bucket",
            "released_sidecar_tags_rewritten_total",
            "released_sidecar_config_reloads_total{result=\"error\"}",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
