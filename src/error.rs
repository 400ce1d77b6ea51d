//! One error type for the request path, one status table, one JSON body shape.
//!
//! Every rejection and upstream failure the gateway answers with is a [`GatewayError`].
//! Its status comes from an exhaustive `match`, and [`GatewayError::kind`] gives a short,
//! bounded label for metrics and logs. Its body is in the shape of the API the request
//! speaks ([`Api::of_path`], [`GatewayError::body_for`]): Ollama's `{"error": "..."}`,
//! OpenAI's `{"error": {"message", "type", "param", "code"}}`, or Anthropic's
//! `{"type": "error", "error": {"type", "message"}}`, because each SDK maps those to its
//! exception classes. Status and headers are the same in every shape.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, HttpResponseBuilder, ResponseError};
use bytes::Bytes;

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
    /// A window of the identity's or its team's token budget has no room for the
    /// request's reservation (or never can: it is larger than the whole limit).
    #[error("{}", token_budget_message(.0))]
    TokenBudget(Box<crate::budget::Exhausted>),
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
    /// Time until the bucket is full again (OpenAI's `x-ratelimit-reset-requests`): exact
    /// when it is empty, otherwise at most one refill period over the truth.
    pub full_in: Duration,
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
    pub fn policy_header(&self) -> String {
        // Room for the longest: a name, `";q=`, ten digits, `;w=60`.
        let mut h = String::with_capacity(self.name.len() + 20);
        self.write_policy(&mut h);
        h
    }

    /// [`Self::policy_header`], appended to `out`. (Written on every answer: itoa and
    /// plain appends, not the formatting machinery.)
    pub fn write_policy(&self, out: &mut impl fmt::Write) {
        let mut n = itoa::Buffer::new();
        for part in ["\"", self.name, "\";q=", n.format(self.quota), ";w=60"] {
            let _ = out.write_str(part);
        }
    }

    /// `RateLimit: "default";r=19;t=1`.
    pub fn state_header(&self) -> String {
        // Room for the longest: a name, `";r=`, ten digits, `;t=`, twenty.
        let mut h = String::with_capacity(self.name.len() + 40);
        self.write_state(&mut h);
        h
    }

    /// [`Self::state_header`], appended to `out`.
    pub fn write_state(&self, out: &mut impl fmt::Write) {
        let (mut r, mut t) = (itoa::Buffer::new(), itoa::Buffer::new());
        let parts = [
            "\"",
            self.name,
            "\";r=",
            r.format(self.remaining),
            ";t=",
            t.format(self.reset),
        ];
        for part in parts {
            let _ = out.write_str(part);
        }
    }
}

/// The draft's headers (`RatePolicy::write_policy`, `RatePolicy::write_state`).
pub(crate) const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub(crate) const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// "token budget of team alpha exhausted (tokens_per_day); resets in 3h12m": who, which
/// window, and when; or, for a reservation that can never fit, that and why.
fn token_budget_message(e: &crate::budget::Exhausted) -> String {
    let who = format!("{} {}", e.spec.subject.scope.word(), e.spec.subject.name);
    let field = e.spec.window.field();
    let when = short_duration(e.retry_in);
    if e.never_fits {
        return format!(
            "token budget of {who} is too small for this request ({field} = {}): it reserves an estimated {} tokens (prompt plus output limit), more than the whole window; ask for fewer output tokens (num_predict, max_tokens) or send a shorter prompt",
            e.spec.limit, e.needed
        );
    }
    // The minute bucket refills continuously: "resets" is when it has room for this one.
    format!("token budget of {who} exhausted ({field}); resets in {when}")
}

/// A wait in its two largest units, rounded up to the second: `3h12m`, `4m30s`, `12s`,
/// `2d3h`.
pub fn short_duration(d: Duration) -> String {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    let (days, hours, minutes, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m{s}s"),
        (0, h, m) => format!("{h}h{m}m"),
        (d, h, _) => format!("{d}d{h}h"),
    }
}

/// A duration as Go's `time.Duration.String` writes it, to the millisecond (rounded up, so
/// that a wait is never shown as none), appended to `out`: `0s`, `17ms`, `1s`, `1.5s`,
/// `6m0s`, `1h0m0s`. The form OpenAI uses in `x-ratelimit-reset-*`.
pub fn write_go_duration(d: Duration, out: &mut impl fmt::Write) {
    // In u64 (a u128 division costs more than the rest of this together).
    let millis = d
        .as_secs()
        .saturating_mul(1000)
        .saturating_add(u64::from(d.subsec_nanos().div_ceil(1_000_000)));
    let mut n = itoa::Buffer::new();
    let mut put = |s: &str| {
        let _ = out.write_str(s);
    };
    if millis == 0 {
        put("0s");
        return;
    }
    if millis < 1000 {
        put(n.format(millis));
        put("ms");
        return;
    }
    let (secs, frac) = (millis / 1000, millis % 1000);
    let (hours, minutes, secs) = (secs / 3600, secs / 60 % 60, secs % 60);
    if hours > 0 {
        put(n.format(hours));
        put("h");
    }
    if hours > 0 || minutes > 0 {
        put(n.format(minutes));
        put("m");
    }
    put(n.format(secs));
    if frac > 0 {
        // Three digits, trailing zeros dropped: 0.5, 0.25, 0.125.
        let digits = [frac / 100, frac / 10 % 10, frac % 10];
        let used = if digits[2] != 0 {
            3
        } else if digits[1] != 0 {
            2
        } else {
            1
        };
        put(".");
        for d in &digits[..used] {
            put(char::from(b'0' + u8::try_from(*d).unwrap_or(0)).encode_utf8(&mut [0; 4]));
        }
    }
    put("s");
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

/// The API a request speaks, which decides the shape of its error bodies. By path alone,
/// so that refusals before routing (and unknown paths) answer in the right shape too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// Everything not under `/v1`: `{"error": "..."}`.
    Ollama,
    /// `/v1` and below, but `/v1/messages`: `{"error": {"message", "type", "param", "code"}}`.
    OpenAi,
    /// `/v1/messages` and below: `{"type": "error", "error": {"type", "message"}}`.
    Anthropic,
}

/// Whether `path` is `prefix` or below it (`/v1/x`, not `/v1x`).
fn is_under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

impl Api {
    /// The API of a request path (as sent: no normalisation, so `//v1` is not `/v1`).
    pub fn of_path(path: &str) -> Self {
        if !is_under(path, "/v1") {
            Self::Ollama
        } else if is_under(path, "/v1/messages") {
            Self::Anthropic
        } else {
            Self::OpenAi
        }
    }
}

/// OpenAI's error object: all four keys always present (`param` and `code` may be null).
#[derive(serde::Serialize)]
struct OpenAiError<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

#[derive(serde::Serialize)]
struct OpenAiBody<'a> {
    error: OpenAiError<'a>,
}

#[derive(serde::Serialize)]
struct AnthropicError<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
}

#[derive(serde::Serialize)]
struct AnthropicBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: AnthropicError<'a>,
}

/// `{"error": {"message", "type", "param", "code"}}` as bytes.
fn openai_body(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Vec<u8> {
    let body = OpenAiBody {
        error: OpenAiError {
            message,
            kind,
            param,
            code,
        },
    };
    serde_json::to_vec(&body).unwrap_or_else(|_| {
        br#"{"error":{"message":"internal error","type":"server_error","param":null,"code":null}}"#
            .to_vec()
    })
}

/// `{"type": "error", "error": {"type", "message"}}` as bytes.
fn anthropic_body(kind: &str, message: &str) -> Vec<u8> {
    let body = AnthropicBody {
        kind: "error",
        error: AnthropicError { kind, message },
    };
    serde_json::to_vec(&body).unwrap_or_else(|_| {
        br#"{"type":"error","error":{"type":"api_error","message":"internal error"}}"#.to_vec()
    })
}

/// Anthropic's error `type` for a status (its documented table; 529 is its "overloaded").
pub fn anthropic_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

/// The final event of an OpenAI SSE stream that failed after it began:
/// `data: {"error": {...}}`, on which the openai SDKs raise `APIError` (PROTOCOLS.md 4.2).
/// Nothing follows it, no `data: [DONE]`.
pub fn openai_stream_error(message: &str) -> Bytes {
    let mut event = Vec::with_capacity(message.len() + 96);
    event.extend_from_slice(b"data: ");
    event.extend_from_slice(&openai_body(message, "server_error", None, None));
    event.extend_from_slice(b"\n\n");
    Bytes::from(event)
}

/// The final event of an Anthropic SSE stream that failed after it began: `event: error`
/// with `{"type": "error", "error": {"type": "api_error", "message"}}`, on which the
/// Anthropic SDKs raise. Nothing follows it, no `message_stop`.
pub fn anthropic_stream_error(message: &str) -> Bytes {
    let mut event = Vec::with_capacity(message.len() + 96);
    event.extend_from_slice(b"event: error\ndata: ");
    event.extend_from_slice(&anthropic_body("api_error", message));
    event.extend_from_slice(b"\n\n");
    Bytes::from(event)
}

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
            Self::TokenBudget(_) => "token_budget",
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

    /// The error body in the shape of `api`, with the same message in each.
    pub fn body_for(&self, api: Api) -> Vec<u8> {
        let message = self.to_string();
        match api {
            Api::Ollama => error_body(&message),
            Api::OpenAi => {
                let (kind, param, code) = self.openai_fields();
                openai_body(&message, kind, param, code)
            }
            Api::Anthropic => anthropic_body(anthropic_type(self.status_code()), &message),
        }
    }

    /// OpenAI's `type`, `param` and `code` for this error: OpenAI's own pairs where it has
    /// one (401 `invalid_api_key`, 404 `model_not_found`, 429 `rate_limit_exceeded`),
    /// `server_error` for the gateway's and the upstreams' failures.
    fn openai_fields(&self) -> (&'static str, Option<&'static str>, Option<&'static str>) {
        const INVALID: &str = "invalid_request_error";
        const RATE: &str = "rate_limit_exceeded";
        const SERVER: &str = "server_error";
        match self {
            Self::EmptyBody | Self::InvalidJson(_) | Self::InvalidField(_) | Self::BodyRead(_) => {
                (INVALID, None, None)
            }
            Self::MissingModel => (INVALID, Some("model"), None),
            Self::BodyTooLarge { .. } | Self::BlobTooLarge { .. } => {
                (INVALID, None, Some("request_too_large"))
            }
            Self::NotFound { .. } => (INVALID, None, Some("not_found")),
            Self::MethodNotAllowed { .. } => (INVALID, None, Some("method_not_allowed")),
            Self::IpDenied | Self::ModelNotAllowed { .. } | Self::AdminRequired => {
                (INVALID, None, Some("permission_denied"))
            }
            Self::MissingKey | Self::InvalidKey | Self::DisabledKey => {
                (INVALID, None, Some("invalid_api_key"))
            }
            Self::AuthThrottled { .. }
            | Self::RateLimited { .. }
            | Self::TooManyInFlight { .. } => (RATE, None, Some(RATE)),
            // OpenAI's own answer to a tokens-per-minute limit.
            Self::TokenBudget(_) => ("tokens", None, Some(RATE)),
            Self::ModelNotFound { .. } => (INVALID, None, Some("model_not_found")),
            Self::ModelNotServedHere { .. } => (INVALID, Some("model"), Some("model_not_served")),
            Self::HeadersTooLarge(_) => (INVALID, None, Some("headers_too_large")),
            Self::UpgradeRefused(_) => (INVALID, None, Some("upgrade_not_supported")),
            Self::BodyTimeout(_) => (INVALID, None, Some("request_timeout")),
            Self::UpstreamConnect { .. }
            | Self::UpstreamTimeout { .. }
            | Self::UpstreamBroken { .. }
            | Self::UpstreamNoKey { .. }
            | Self::UpstreamTooLarge { .. }
            | Self::UpstreamProtocol { .. } => (SERVER, None, Some(self.kind())),
            Self::UpstreamStatus { status, .. } => match status.as_u16() {
                404 => (INVALID, None, Some("model_not_found")),
                429 => (RATE, None, Some(RATE)),
                400..=499 => (INVALID, None, None),
                _ => (SERVER, None, None),
            },
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
            | Self::TokenBudget(_)
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
            | Self::TooManyInFlight { .. }
            | Self::TokenBudget(_) => StatusCode::TOO_MANY_REQUESTS,
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
                    .insert_header((RATELIMIT_POLICY, policy.policy_header()))
                    .insert_header((RATELIMIT, policy.state_header()));
            }
            Self::TooManyInFlight { .. } => {
                builder.insert_header((header::RETRY_AFTER, "1"));
            }
            Self::TokenBudget(e) => {
                let mut n = itoa::Buffer::new();
                let secs = e.retry_in.as_secs() + u64::from(e.retry_in.subsec_nanos() > 0);
                builder.insert_header((header::RETRY_AFTER, n.format(secs.max(1)).to_string()));
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

/// Finishes `builder` with Ollama's error body `{"error": message}`. (`ResponseError`
/// renders every `GatewayError` this way; the edge swaps the body on `/v1` paths.)
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
            full_in: Duration::from_secs(60),
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
                        full_in: Duration::from_secs(5),
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
                full_in: Duration::from_secs(7),
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

    /// One of each variant, and a match that fails to compile when a variant is added
    /// without a case here.
    fn one_of_each() -> Vec<GatewayError> {
        let up = || "ollama".to_string();
        let policy = RatePolicy {
            name: RatePolicy::DEFAULT,
            quota: 60,
            remaining: 0,
            reset: 2,
            full_in: Duration::from_millis(1500),
        };
        let all = vec![
            GatewayError::EmptyBody,
            GatewayError::InvalidJson("x".into()),
            GatewayError::InvalidField("x".into()),
            GatewayError::MissingModel,
            GatewayError::BodyTooLarge { limit: 1 },
            GatewayError::BlobTooLarge { limit: 1 },
            GatewayError::BodyRead("x".into()),
            GatewayError::NotFound {
                method: "GET".into(),
                path: "/v1/nope".into(),
            },
            GatewayError::MethodNotAllowed {
                method: "GET".into(),
                path: "/v1/chat/completions".into(),
                allow: "POST",
            },
            GatewayError::IpDenied,
            GatewayError::MissingKey,
            GatewayError::InvalidKey,
            GatewayError::DisabledKey,
            GatewayError::AuthThrottled { remaining: 3 },
            GatewayError::ModelNotAllowed { model: "m".into() },
            GatewayError::ModelNotFound { model: "m".into() },
            GatewayError::ModelNotServedHere {
                model: "openai/m".into(),
                upstream: "openai".into(),
                route: "/v1/messages",
            },
            GatewayError::AdminRequired,
            GatewayError::RateLimited {
                key_id: "k".into(),
                policy,
            },
            GatewayError::TooManyInFlight {
                key_id: "k".into(),
                limit: 1,
            },
            GatewayError::HeadersTooLarge("x".into()),
            GatewayError::UpgradeRefused("websocket".into()),
            GatewayError::BodyTimeout("1s".into()),
            GatewayError::UpstreamConnect {
                upstream: up(),
                detail: "refused".into(),
            },
            GatewayError::UpstreamTimeout {
                upstream: up(),
                detail: "after 1s".into(),
            },
            GatewayError::UpstreamBroken {
                upstream: up(),
                what: "reset the connection".into(),
            },
            GatewayError::UpstreamNoKey {
                upstream: "openai".into(),
                env: "OPENAI_API_KEY".into(),
            },
            GatewayError::UpstreamTooLarge {
                upstream: up(),
                limit: 1,
            },
            GatewayError::UpstreamStatus {
                upstream: up(),
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: "busy".into(),
                retry_after: Some(HeaderValue::from_static("3")),
            },
            GatewayError::UpstreamProtocol {
                upstream: up(),
                detail: "x".into(),
            },
            GatewayError::TokenBudget(Box::new(crate::budget::Exhausted {
                spec: crate::budget::WindowSpec {
                    subject: crate::budget::Subject {
                        scope: crate::budget::Scope::Team,
                        name: "alpha".into(),
                    },
                    window: crate::budget::Window::Day,
                    limit: 1000,
                },
                needed: 10,
                never_fits: false,
                retry_in: Duration::from_secs(3 * 3600 + 12 * 60 + 5),
            })),
        ];
        let mut seen = [false; 31];
        for e in &all {
            let i = match e {
                GatewayError::EmptyBody => 0,
                GatewayError::InvalidJson(_) => 1,
                GatewayError::InvalidField(_) => 2,
                GatewayError::MissingModel => 3,
                GatewayError::BodyTooLarge { .. } => 4,
                GatewayError::BlobTooLarge { .. } => 5,
                GatewayError::BodyRead(_) => 6,
                GatewayError::NotFound { .. } => 7,
                GatewayError::MethodNotAllowed { .. } => 8,
                GatewayError::IpDenied => 9,
                GatewayError::MissingKey => 10,
                GatewayError::InvalidKey => 11,
                GatewayError::DisabledKey => 12,
                GatewayError::AuthThrottled { .. } => 13,
                GatewayError::ModelNotAllowed { .. } => 14,
                GatewayError::ModelNotFound { .. } => 15,
                GatewayError::AdminRequired => 16,
                GatewayError::RateLimited { .. } => 17,
                GatewayError::TooManyInFlight { .. } => 18,
                GatewayError::HeadersTooLarge(_) => 19,
                GatewayError::UpgradeRefused(_) => 20,
                GatewayError::BodyTimeout(_) => 21,
                GatewayError::UpstreamConnect { .. } => 22,
                GatewayError::UpstreamTimeout { .. } => 23,
                GatewayError::UpstreamBroken { .. } => 24,
                GatewayError::UpstreamNoKey { .. } => 25,
                GatewayError::UpstreamTooLarge { .. } => 26,
                GatewayError::UpstreamStatus { .. } => 27,
                GatewayError::UpstreamProtocol { .. } => 28,
                GatewayError::ModelNotServedHere { .. } => 29,
                GatewayError::TokenBudget(_) => 30,
            };
            seen[i] = true;
        }
        assert!(seen.iter().all(|s| *s), "a variant is missing");
        all
    }

    fn parse(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes).unwrap_or_default()
    }

    #[test]
    fn api_follows_the_path() {
        for (path, api) in [
            ("/", Api::Ollama),
            ("/api/chat", Api::Ollama),
            ("/api/v1", Api::Ollama),
            ("/v1x", Api::Ollama),
            ("/v10/models", Api::Ollama),
            ("//v1/models", Api::Ollama),
            ("/healthz", Api::Ollama),
            ("/v1", Api::OpenAi),
            ("/v1/", Api::OpenAi),
            ("/v1/chat/completions", Api::OpenAi),
            ("/v1/models/openai/gpt-4o-mini", Api::OpenAi),
            ("/v1/messagesx", Api::OpenAi),
            ("/v1/message", Api::OpenAi),
            ("/v1/messages", Api::Anthropic),
            ("/v1/messages/", Api::Anthropic),
            ("/v1/messages/count_tokens", Api::Anthropic),
        ] {
            assert_eq!(Api::of_path(path), api, "{path}");
        }
    }

    #[test]
    fn every_variant_in_every_shape() {
        for err in one_of_each() {
            let message = err.to_string();
            let status = err.status_code().as_u16();
            // Ollama: exactly {"error": message}.
            let ollama = parse(&err.body_for(Api::Ollama));
            assert_eq!(ollama, serde_json::json!({ "error": message }), "{err:?}");
            assert_eq!(
                ollama,
                body_of(&err),
                "{err:?}: ResponseError renders Ollama's"
            );
            // OpenAI: the four keys, always.
            let openai = parse(&err.body_for(Api::OpenAi));
            let object = openai["error"].as_object().cloned().unwrap_or_default();
            let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
            keys.sort_unstable();
            assert_eq!(keys, ["code", "message", "param", "type"], "{err:?}");
            assert_eq!(openai.as_object().map(|o| o.len()), Some(1));
            assert_eq!(openai["error"]["message"], message);
            let (kind, code) = (&openai["error"]["type"], &openai["error"]["code"]);
            let expected_type = match status {
                // OpenAI's type for a tokens-per-minute limit.
                429 if matches!(err, GatewayError::TokenBudget(_)) => "tokens",
                429 => "rate_limit_exceeded",
                500..=599 => "server_error",
                _ => "invalid_request_error",
            };
            assert_eq!(kind, expected_type, "{err:?}");
            match status {
                401 => assert_eq!(code, "invalid_api_key"),
                403 => assert_eq!(code, "permission_denied"),
                413 => assert_eq!(code, "request_too_large"),
                429 => assert_eq!(code, "rate_limit_exceeded"),
                _ => {}
            }
            // Anthropic: {"type": "error", "error": {"type", "message"}}.
            let anthropic = parse(&err.body_for(Api::Anthropic));
            assert_eq!(anthropic["type"], "error");
            assert_eq!(anthropic["error"]["message"], message);
            assert_eq!(anthropic.as_object().map(|o| o.len()), Some(2));
            assert_eq!(anthropic["error"].as_object().map(|o| o.len()), Some(2));
            let expected = match status {
                400 | 405 | 408 | 431 => "invalid_request_error",
                401 => "authentication_error",
                403 => "permission_error",
                404 => "not_found_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                500 | 502 | 503 => "api_error",
                504 => "timeout_error",
                other => panic!("{err:?}: no Anthropic type pinned for {other}"),
            };
            assert_eq!(anthropic["error"]["type"], expected, "{err:?}");
        }
    }

    #[test]
    fn openai_codes_say_which_refusal() {
        let code = |e: GatewayError| parse(&e.body_for(Api::OpenAi))["error"].clone();
        let e = code(GatewayError::ModelNotFound { model: "m".into() });
        assert_eq!(e["code"], "model_not_found");
        assert_eq!(e["param"], serde_json::Value::Null);
        let e = code(GatewayError::NotFound {
            method: "GET".into(),
            path: "/v1/nope".into(),
        });
        assert_eq!(e["code"], "not_found");
        assert_eq!(code(GatewayError::MissingModel)["param"], "model");
        assert_eq!(
            code(GatewayError::EmptyBody)["code"],
            serde_json::Value::Null
        );
        let e = code(GatewayError::UpstreamTimeout {
            upstream: "ollama".into(),
            detail: "after 1s".into(),
        });
        assert_eq!(e["type"], "server_error");
        assert_eq!(e["code"], "upstream_timeout");
        let relayed = |status| {
            code(GatewayError::UpstreamStatus {
                upstream: "openai".into(),
                status,
                message: "m".into(),
                retry_after: None,
            })
        };
        assert_eq!(relayed(StatusCode::NOT_FOUND)["code"], "model_not_found");
        assert_eq!(
            relayed(StatusCode::BAD_REQUEST)["type"],
            "invalid_request_error"
        );
        assert_eq!(
            relayed(StatusCode::TOO_MANY_REQUESTS)["code"],
            "rate_limit_exceeded"
        );
        assert_eq!(relayed(StatusCode::BAD_GATEWAY)["type"], "server_error");
    }

    #[test]
    fn anthropic_types_by_status() {
        for (status, kind) in [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (413, "request_too_large"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (502, "api_error"),
            (503, "api_error"),
            (504, "timeout_error"),
            (529, "overloaded_error"),
        ] {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::IM_A_TEAPOT);
            assert_eq!(anthropic_type(status), kind, "{status}");
        }
    }

    #[test]
    fn stream_error_events() {
        let event = openai_stream_error("upstream ollama timed out \"x\"\n");
        let text = std::str::from_utf8(&event).unwrap_or_default();
        assert!(
            text.starts_with("data: ") && text.ends_with("\n\n"),
            "{text:?}"
        );
        assert_eq!(text.matches('\n').count(), 2, "one data line: {text:?}");
        let data = parse(text["data: ".len()..].trim_end().as_bytes());
        assert_eq!(
            data["error"]["message"],
            "upstream ollama timed out \"x\"\n"
        );
        assert_eq!(data["error"]["type"], "server_error");
        assert!(data["error"].as_object().is_some_and(|o| o.len() == 4));
        assert!(!text.contains("[DONE]"));

        let event = anthropic_stream_error("cut\r\noff");
        let text = std::str::from_utf8(&event).unwrap_or_default();
        let (head, data) = text.split_once('\n').unwrap_or_default();
        assert_eq!(head, "event: error");
        assert!(
            data.starts_with("data: ") && data.ends_with("\n\n"),
            "{text:?}"
        );
        assert_eq!(data.matches('\n').count(), 2, "one data line: {text:?}");
        let data = parse(data["data: ".len()..].trim_end().as_bytes());
        assert_eq!(
            data,
            serde_json::json!({"type": "error", "error": {"type": "api_error", "message": "cut\r\noff"}})
        );
    }

    #[test]
    fn go_durations_as_openai_writes_them() {
        for (d, text) in [
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(1), "1ms"),
            (Duration::from_millis(17), "17ms"),
            (Duration::from_micros(16_200), "17ms"),
            (Duration::from_millis(999), "999ms"),
            (Duration::from_secs(1), "1s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_millis(1250), "1.25s"),
            (Duration::from_millis(59_724), "59.724s"),
            (Duration::from_secs(60), "1m0s"),
            (Duration::from_secs(360), "6m0s"),
            (Duration::from_millis(90_500), "1m30.5s"),
            (Duration::from_secs(3600), "1h0m0s"),
            (Duration::from_secs(3600 + 2), "1h0m2s"),
            (Duration::new(59, 999_000_001), "1m0s"),
            (Duration::new(1, 1), "1.001s"),
            (Duration::MAX, "5124095576030h25m51.615s"),
        ] {
            let mut written = String::new();
            write_go_duration(d, &mut written);
            assert_eq!(written, text, "{d:?}");
        }
    }

    #[test]
    fn error_line_is_one_json_line() {
        let line = error_line("bad \"thing\"\n");
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap_or_default();
        assert_eq!(v["error"], "bad \"thing\"\n");
    }
}
