//! One error type for the request path, one status table, one JSON body shape.
//!
//! Every rejection and upstream failure the gateway answers with is a [`GatewayError`].
//! Its status comes from an exhaustive `match`, its body is Ollama's `{"error": "..."}`,
//! and [`GatewayError::kind`] gives a short, bounded label for metrics and logs.

use std::borrow::Cow;
use std::sync::Arc;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, HttpResponseBuilder, ResponseError};

/// Whose fault a failure is; drives log levels and the metrics' `blame` dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The request was wrong (4xx).
    Client,
    /// The upstream failed or misbehaved (502/504, or its own status relayed).
    Upstream,
    /// The gateway itself failed (500).
    Gateway,
}

/// Why a request did not get a normal answer.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The body was empty.
    #[error("missing request body")]
    EmptyBody,
    /// The body was not the JSON we expect (syntax or types); the text says where.
    #[error("{0}")]
    InvalidJson(String),
    /// The body parsed but a field has a value we cannot use.
    #[error("{0}")]
    InvalidField(String),
    /// No `model` in the request.
    #[error("model is required")]
    MissingModel,
    /// The body exceeds the configured limit.
    #[error("request body is larger than the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    /// A blob (`POST /api/blobs/:digest`) over `server.max_blob_bytes`.
    #[error("blob is larger than the limit of {limit} bytes (server.max_blob_bytes)")]
    BlobTooLarge { limit: u64 },
    /// The body could not be read from the client.
    #[error("could not read the request body: {0}")]
    BodyRead(String),
    /// No route matches the path.
    #[error("no such endpoint: {method} {path}")]
    NotFound { method: String, path: String },
    /// The path exists but not for this method.
    #[error("method {method} is not allowed on {path}; allowed: {allow}")]
    MethodNotAllowed {
        method: String,
        path: String,
        allow: &'static str,
    },
    /// The client address is not allowed; says nothing more.
    #[error("access denied")]
    IpDenied,
    /// No API key in `X-API-Key` or `Authorization` (Bearer, or Basic's password), and the
    /// client address in no trusted network.
    #[error("missing API key: send it as `Authorization: Bearer <key>`, as `X-API-Key: <key>`, or as the password of `Authorization: Basic`")]
    MissingKey,
    /// A key that is not in the keys file.
    #[error("invalid API key")]
    InvalidKey,
    /// A key marked `enabled = false`.
    #[error("API key is disabled")]
    DisabledKey,
    /// Too many failed authentications from this address: banned for `remaining` seconds.
    /// `Retry-After` says at most 60 (what clients honour); the message says the truth.
    #[error("too many failed authentications from this address; banned for another {remaining} s")]
    AuthThrottled { remaining: u64 },
    /// The key's model allowlist does not cover the requested model.
    #[error("model {model:?} is not allowed for this API key")]
    ModelNotAllowed { model: String },
    /// An upstream's model that its list does not hold (Ollama's words for the same).
    #[error("model '{model}' not found")]
    ModelNotFound { model: String },
    /// A model this route's API does not serve: an OpenAI-compatible upstream's model on
    /// Anthropic's `/v1/messages`, which only Ollama serves.
    #[error("model '{model}' is served by the OpenAI-compatible upstream {upstream}, which {route} does not serve; use /v1/chat/completions for it")]
    ModelNotServedHere {
        model: String,
        upstream: String,
        route: &'static str,
    },
    /// Model management with a key that lacks `role = "admin"`.
    #[error("this endpoint manages Ollama's models and needs an API key with role = \"admin\" in the keys file")]
    AdminRequired,
    /// The key's token bucket (of inference, or of cheap reads) is empty.
    #[error("{} exceeded for API key {key_id}; retry after {} s", .policy.what(), .policy.reset)]
    RateLimited {
        key_id: Arc<str>,
        policy: RatePolicy,
    },
    /// The key already has its maximum of requests in flight.
    #[error(
        "too many requests in flight for API key {key_id} (limit {limit}); retry when one finishes"
    )]
    TooManyInFlight { key_id: Arc<str>, limit: u32 },
    /// Request headers over the configured count or size.
    #[error("request header fields too large: {0}")]
    HeadersTooLarge(String),
    /// An `Upgrade` request (WebSocket, h2c, ...): the gateway serves none. Answered on a
    /// connection that is then closed (see `middleware::refuse`).
    #[error("protocol upgrades are not served here (Upgrade: {0}); send the request without an Upgrade header")]
    UpgradeRefused(String),
    /// The body did not arrive in time (a slow or stalled client).
    #[error("the request body did not arrive within {0}")]
    BodyTimeout(String),
    /// The upstream could not be reached (DNS, refused, TLS).
    #[error("upstream {upstream} is unreachable: {detail}")]
    UpstreamConnect { upstream: String, detail: String },
    /// The upstream did not answer in time; `detail` says after how long, waiting for what.
    #[error("upstream {upstream} timed out {detail}")]
    UpstreamTimeout { upstream: String, detail: String },
    /// The connection broke after it was made: closed or reset before the answer was
    /// complete. `what` says what the upstream did ("reset the connection before ...").
    #[error("upstream {upstream} {what}")]
    UpstreamBroken {
        upstream: String,
        what: Cow<'static, str>,
    },
    /// The upstream needs an API key and none is configured; it was not contacted.
    /// `env` names the variable that sets it.
    #[error("upstream {upstream} has no API key configured: set {env}")]
    UpstreamNoKey { upstream: String, env: String },
    /// The upstream's whole answer is larger than the gateway buffers.
    #[error("upstream {upstream} sent an answer larger than the limit of {limit} bytes")]
    UpstreamTooLarge { upstream: String, limit: usize },
    /// The upstream answered with an error status; `status` is what the client gets.
    #[error("{message}")]
    UpstreamStatus {
        upstream: String,
        status: StatusCode,
        message: String,
        retry_after: Option<HeaderValue>,
    },
    /// The upstream answered 2xx with something we cannot read.
    #[error("upstream {upstream} sent an invalid response: {detail}")]
    UpstreamProtocol { upstream: String, detail: String },
}

/// A key's rate-limit state, sent as the IETF draft `RateLimit` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RatePolicy {
    /// The policy's name in the headers: [`Self::DEFAULT`] or [`Self::READS`].
    pub name: &'static str,
    /// Requests per 60 s window.
    pub quota: u32,
    /// Requests the bucket still allows right now.
    pub remaining: u32,
    /// Seconds until the bucket allows another request (1..=60 when empty).
    pub reset: u64,
}

impl RatePolicy {
    /// The bucket of inference and everything else.
    pub const DEFAULT: &'static str = "default";
    /// The bucket of cheap reads (`limits.reads_per_minute`, `limits.read_burst`).
    pub const READS: &'static str = "reads";

    /// What ran out, in words.
    pub fn what(&self) -> &'static str {
        if self.name == Self::READS {
            "rate limit for cheap reads"
        } else {
            "rate limit"
        }
    }

    /// `RateLimit-Policy: "default";q=120;w=60` (draft-ietf-httpapi-ratelimit-headers-10).
    /// (Both are written on every answer: itoa, not the formatting machinery.)
    pub fn policy_header(&self) -> String {
        let mut n = itoa::Buffer::new();
        let mut h = String::with_capacity(24);
        h.push('"');
        h.push_str(self.name);
        h.push_str("\";q=");
        h.push_str(n.format(self.quota));
        h.push_str(";w=60");
        h
    }

    /// `RateLimit: "default";r=19;t=1`.
    pub fn state_header(&self) -> String {
        let mut n = itoa::Buffer::new();
        let mut h = String::with_capacity(32);
        h.push('"');
        h.push_str(self.name);
        h.push_str("\";r=");
        h.push_str(n.format(self.remaining));
        h.push_str(";t=");
        h.push_str(n.format(self.reset));
        h
    }
}

/// How an upstream failed: the `kind` label of `gateway_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFault {
    /// No connection: DNS, refused, TLS handshake.
    Connect,
    /// One of the gateway's `timeouts` ran out.
    Timeout,
    /// An error status.
    Status,
    /// An answer that is not valid (not JSON, not a completion, not a stream).
    Protocol,
    /// An answer, stream line or event larger than the gateway's limit.
    TooLarge,
    /// The connection closed or broke before the answer was complete.
    Truncated,
    /// The upstream reported an error in the middle of a stream.
    MidStream,
}

impl UpstreamFault {
    /// Every kind, in the order metric handles are kept.
    pub const ALL: [Self; 7] = [
        Self::Connect,
        Self::Timeout,
        Self::Status,
        Self::Protocol,
        Self::TooLarge,
        Self::Truncated,
        Self::MidStream,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Status => "status",
            Self::Protocol => "protocol",
            Self::TooLarge => "too_large",
            Self::Truncated => "truncated",
            Self::MidStream => "mid_stream",
        }
    }

    /// The request log's `outcome` for a stream that failed this way after its first byte.
    pub fn outcome(self) -> &'static str {
        match self {
            Self::MidStream => "upstream_error",
            other => other.label(),
        }
    }
}

/// The `WWW-Authenticate` challenge sent with every 401.
pub const AUTH_CHALLENGE: &str = "Bearer realm=\"ollama-gateway\"";

impl GatewayError {
    /// A short, fixed label for metrics and logs (never free text).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::IpDenied => "ip",
            Self::MissingKey | Self::InvalidKey | Self::DisabledKey => "auth",
            Self::AuthThrottled { .. } => "auth_throttled",
            Self::ModelNotAllowed { .. } => "model_not_allowed",
            Self::ModelNotFound { .. } => "model_not_found",
            Self::ModelNotServedHere { .. } => "model_not_served",
            Self::AdminRequired => "admin_required",
            Self::RateLimited { .. } => "rate_limit",
            Self::TooManyInFlight { .. } => "in_flight",
            Self::HeadersTooLarge(_) => "header_too_large",
            Self::UpgradeRefused(_) => "upgrade",
            Self::BodyTimeout(_) => "body_timeout",
            Self::EmptyBody | Self::InvalidJson(_) | Self::InvalidField(_) | Self::MissingModel => {
                "bad_request"
            }
            Self::BodyTooLarge { .. } | Self::BlobTooLarge { .. } => "body_too_large",
            Self::BodyRead(_) => "body_read",
            Self::NotFound { .. } => "not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::UpstreamConnect { .. } => "upstream_connect",
            Self::UpstreamTimeout { .. } => "upstream_timeout",
            Self::UpstreamBroken { .. } => "upstream_truncated",
            Self::UpstreamTooLarge { .. } => "upstream_too_large",
            Self::UpstreamNoKey { .. } => "upstream_no_key",
            Self::UpstreamStatus { .. } => "upstream_status",
            Self::UpstreamProtocol { .. } => "upstream_protocol",
        }
    }

    /// The upstream failure this is, for `gateway_upstream_errors_total`; `None` for the
    /// gateway's own refusals.
    pub fn fault(&self) -> Option<UpstreamFault> {
        self.class().1
    }

    /// Whose fault it is.
    pub fn blame(&self) -> Blame {
        self.class().0
    }

    /// Whose fault, and for the upstream's, which kind: one table for both.
    fn class(&self) -> (Blame, Option<UpstreamFault>) {
        let upstream = |fault| (Blame::Upstream, Some(fault));
        match self {
            Self::IpDenied
            | Self::MissingKey
            | Self::InvalidKey
            | Self::DisabledKey
            | Self::AuthThrottled { .. }
            | Self::ModelNotAllowed { .. }
            | Self::ModelNotFound { .. }
            | Self::ModelNotServedHere { .. }
            | Self::AdminRequired
            | Self::RateLimited { .. }
            | Self::TooManyInFlight { .. }
            | Self::HeadersTooLarge(_)
            | Self::UpgradeRefused(_)
            | Self::BodyTimeout(_)
            | Self::EmptyBody
            | Self::InvalidJson(_)
            | Self::InvalidField(_)
            | Self::MissingModel
            | Self::BodyTooLarge { .. }
            | Self::BlobTooLarge { .. }
            | Self::BodyRead(_)
            | Self::NotFound { .. }
            | Self::MethodNotAllowed { .. } => (Blame::Client, None),
            Self::UpstreamConnect { .. } => upstream(UpstreamFault::Connect),
            Self::UpstreamTimeout { .. } => upstream(UpstreamFault::Timeout),
            Self::UpstreamBroken { .. } => upstream(UpstreamFault::Truncated),
            Self::UpstreamTooLarge { .. } => upstream(UpstreamFault::TooLarge),
            Self::UpstreamStatus { .. } => upstream(UpstreamFault::Status),
            Self::UpstreamProtocol { .. } => upstream(UpstreamFault::Protocol),
            // The gateway's own configuration lacks the key; refused before any upstream work.
            Self::UpstreamNoKey { .. } => (Blame::Gateway, None),
        }
    }
}

impl ResponseError for GatewayError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::IpDenied | Self::ModelNotAllowed { .. } | Self::AdminRequired => {
                StatusCode::FORBIDDEN
            }
            Self::ModelNotFound { .. } => StatusCode::NOT_FOUND,
            Self::MissingKey | Self::InvalidKey | Self::DisabledKey => StatusCode::UNAUTHORIZED,
            Self::AuthThrottled { .. }
            | Self::RateLimited { .. }
            | Self::TooManyInFlight { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            // A client error, not 501: the request asks for something this gateway
            // deliberately does not offer, and says so (426 would ask the client to upgrade).
            Self::UpgradeRefused(_) => StatusCode::BAD_REQUEST,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::EmptyBody
            | Self::InvalidJson(_)
            | Self::InvalidField(_)
            | Self::MissingModel
            | Self::ModelNotServedHere { .. } => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge { .. } | Self::BlobTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyRead(_) => StatusCode::BAD_REQUEST,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::UpstreamConnect { .. }
            | Self::UpstreamBroken { .. }
            | Self::UpstreamTooLarge { .. }
            | Self::UpstreamProtocol { .. } => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::UpstreamNoKey { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamStatus { status, .. } => *status,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut builder = HttpResponseBuilder::new(self.status_code());
        match self {
            Self::MethodNotAllowed { allow, .. } => {
                builder.insert_header((header::ALLOW, *allow));
            }
            Self::MissingKey | Self::InvalidKey | Self::DisabledKey => {
                builder.insert_header((header::WWW_AUTHENTICATE, AUTH_CHALLENGE));
            }
            Self::AuthThrottled { remaining } => {
                builder.insert_header((header::RETRY_AFTER, (*remaining).clamp(1, 60).to_string()));
            }
            Self::RateLimited { policy, .. } => {
                builder
                    .insert_header((header::RETRY_AFTER, policy.reset.to_string()))
                    .insert_header(("ratelimit-policy", policy.policy_header()))
                    .insert_header(("ratelimit", policy.state_header()));
            }
            Self::TooManyInFlight { .. } => {
                builder.insert_header((header::RETRY_AFTER, "1"));
            }
            Self::BodyTimeout(_) => {
                // The rest of the body may still be on its way: do not reuse the connection.
                builder.force_close();
            }
            Self::UpstreamStatus {
                retry_after: Some(value),
                ..
            } => {
                builder.insert_header((header::RETRY_AFTER, value.clone()));
            }
            _ => {}
        }
        json_error(&mut builder, &self.to_string())
    }
}

/// The content type of every JSON body the gateway writes, as Ollama sends it.
pub const JSON_UTF8: &str = "application/json; charset=utf-8";

/// Finishes `builder` with Ollama's error body `{"error": message}`.
pub fn json_error(builder: &mut HttpResponseBuilder, message: &str) -> HttpResponse {
    builder
        .insert_header((header::CONTENT_TYPE, JSON_UTF8))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(error_body(message))
}

/// `{"error": message}` as bytes, with a trailing newline so it also works as an NDJSON line.
pub fn error_line(message: &str) -> Vec<u8> {
    let mut line = error_body(message);
    line.push(b'\n');
    line
}

fn error_body(message: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "error": message }))
        .unwrap_or_else(|_| br#"{"error":"internal error"}"#.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;

    #[test]
    fn ratelimit_headers_follow_the_draft() {
        let p = RatePolicy {
            name: RatePolicy::DEFAULT,
            quota: 120_000,
            remaining: 0,
            reset: 60,
        };
        assert_eq!(p.policy_header(), "\"default\";q=120000;w=60");
        assert_eq!(p.state_header(), "\"default\";r=0;t=60");
        let reads = RatePolicy {
            name: RatePolicy::READS,
            ..p
        };
        assert_eq!(reads.policy_header(), "\"reads\";q=120000;w=60");
        assert_eq!(reads.state_header(), "\"reads\";r=0;t=60");
        let err = GatewayError::RateLimited {
            key_id: "ui".into(),
            policy: RatePolicy { reset: 6, ..reads },
        };
        assert_eq!(
            err.to_string(),
            "rate limit for cheap reads exceeded for API key ui; retry after 6 s"
        );
    }

    fn body_of(err: &GatewayError) -> serde_json::Value {
        let resp = err.error_response();
        let bytes = resp.into_body().try_into_bytes().unwrap_or_default();
        serde_json::from_slice(&bytes).unwrap_or_default()
    }

    #[test]
    fn status_table_is_pinned() {
        let up = || "ollama".to_string();
        let cases: Vec<(GatewayError, u16, &str)> = vec![
            (GatewayError::EmptyBody, 400, "bad_request"),
            (GatewayError::InvalidJson("x".into()), 400, "bad_request"),
            (GatewayError::InvalidField("x".into()), 400, "bad_request"),
            (GatewayError::MissingModel, 400, "bad_request"),
            (
                GatewayError::BodyTooLarge { limit: 1 },
                413,
                "body_too_large",
            ),
            (
                GatewayError::BlobTooLarge { limit: 1 },
                413,
                "body_too_large",
            ),
            (GatewayError::BodyRead("x".into()), 400, "body_read"),
            (
                GatewayError::NotFound {
                    method: "GET".into(),
                    path: "/x".into(),
                },
                404,
                "not_found",
            ),
            (
                GatewayError::MethodNotAllowed {
                    method: "GET".into(),
                    path: "/api/chat".into(),
                    allow: "POST",
                },
                405,
                "method_not_allowed",
            ),
            (
                GatewayError::UpstreamConnect {
                    upstream: up(),
                    detail: "refused".into(),
                },
                502,
                "upstream_connect",
            ),
            (
                GatewayError::UpstreamTimeout {
                    upstream: up(),
                    detail: "no response within 1s".into(),
                },
                504,
                "upstream_timeout",
            ),
            (
                GatewayError::UpstreamBroken {
                    upstream: up(),
                    what: "reset the connection".into(),
                },
                502,
                "upstream_truncated",
            ),
            (
                GatewayError::UpstreamNoKey {
                    upstream: "openai".into(),
                    env: "OPENAI_API_KEY".into(),
                },
                503,
                "upstream_no_key",
            ),
            (
                GatewayError::UpstreamTooLarge {
                    upstream: up(),
                    limit: 1,
                },
                502,
                "upstream_too_large",
            ),
            (
                GatewayError::UpstreamStatus {
                    upstream: up(),
                    status: StatusCode::TOO_MANY_REQUESTS,
                    message: "slow down".into(),
                    retry_after: Some(HeaderValue::from_static("7")),
                },
                429,
                "upstream_status",
            ),
            (
                GatewayError::UpstreamProtocol {
                    upstream: up(),
                    detail: "x".into(),
                },
                502,
                "upstream_protocol",
            ),
        ];
        let edge: Vec<(GatewayError, u16, &str)> = vec![
            (GatewayError::IpDenied, 403, "ip"),
            (GatewayError::MissingKey, 401, "auth"),
            (GatewayError::InvalidKey, 401, "auth"),
            (GatewayError::DisabledKey, 401, "auth"),
            (
                GatewayError::AuthThrottled { remaining: 3 },
                429,
                "auth_throttled",
            ),
            (
                GatewayError::ModelNotAllowed { model: "m".into() },
                403,
                "model_not_allowed",
            ),
            (GatewayError::AdminRequired, 403, "admin_required"),
            (
                GatewayError::ModelNotServedHere {
                    model: "openai/gpt-4o-mini".into(),
                    upstream: "openai".into(),
                    route: "/v1/messages",
                },
                400,
                "model_not_served",
            ),
            (
                GatewayError::ModelNotFound { model: "m".into() },
                404,
                "model_not_found",
            ),
            (
                GatewayError::RateLimited {
                    key_id: "k".into(),
                    policy: RatePolicy {
                        name: RatePolicy::DEFAULT,
                        quota: 1,
                        remaining: 0,
                        reset: 5,
                    },
                },
                429,
                "rate_limit",
            ),
            (
                GatewayError::TooManyInFlight {
                    key_id: "k".into(),
                    limit: 1,
                },
                429,
                "in_flight",
            ),
            (
                GatewayError::HeadersTooLarge("x".into()),
                431,
                "header_too_large",
            ),
            (GatewayError::BodyTimeout("1s".into()), 408, "body_timeout"),
            (
                GatewayError::UpgradeRefused("websocket".into()),
                400,
                "upgrade",
            ),
        ];
        for (err, status, kind) in cases.into_iter().chain(edge) {
            assert_eq!(err.status_code().as_u16(), status, "{err:?}");
            assert_eq!(err.kind(), kind);
            assert_eq!(err.fault().is_some(), err.blame() == Blame::Upstream);
            let body = body_of(&err);
            assert_eq!(body["error"], err.to_string(), "{err:?}");
        }
    }

    #[test]
    fn retry_after_and_allow_headers_are_kept() {
        let err = GatewayError::UpstreamStatus {
            upstream: "openai".into(),
            status: StatusCode::TOO_MANY_REQUESTS,
            message: "m".into(),
            retry_after: Some(HeaderValue::from_static("7")),
        };
        let resp = err.error_response();
        assert_eq!(resp.headers().get(header::RETRY_AFTER).unwrap(), "7");
        assert_eq!(resp.headers().get(header::CONTENT_TYPE).unwrap(), JSON_UTF8);
        let err = GatewayError::MethodNotAllowed {
            method: "GET".into(),
            path: "/api/chat".into(),
            allow: "POST",
        };
        assert_eq!(
            err.error_response().headers().get(header::ALLOW).unwrap(),
            "POST"
        );
    }

    #[test]
    fn edge_rejections_carry_their_headers() {
        let resp = GatewayError::InvalidKey.error_response();
        assert_eq!(
            resp.headers().get(header::WWW_AUTHENTICATE).unwrap(),
            AUTH_CHALLENGE
        );
        let resp = GatewayError::RateLimited {
            key_id: "k".into(),
            policy: RatePolicy {
                name: RatePolicy::DEFAULT,
                quota: 120,
                remaining: 0,
                reset: 7,
            },
        }
        .error_response();
        assert_eq!(resp.headers().get(header::RETRY_AFTER).unwrap(), "7");
        assert_eq!(
            resp.headers().get("ratelimit").unwrap(),
            "\"default\";r=0;t=7"
        );
        assert_eq!(
            resp.headers().get("ratelimit-policy").unwrap(),
            "\"default\";q=120;w=60"
        );
    }

    #[test]
    fn error_line_is_one_json_line() {
        let line = error_line("bad \"thing\"\n");
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap_or_default();
        assert_eq!(v["error"], "bad \"thing\"\n");
    }
}
