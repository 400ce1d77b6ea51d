//! The edge: one middleware that every request passes before any upstream work, in this
//! order: `observe` notes it, `allowlist` checks the client address, `auth` the request
//! head and the key (or the trusted network), `rate_limit` the key's in-flight slot and
//! bucket (a cheap read: only its bucket of reads), and a declared body length over the
//! limit is refused; on the way out, `rate_limit` adds its headers, an error answer takes
//! the shape of its path's API ([`in_api_shape`]), and `observe` adds the request id,
//! counts and logs. One layer rather than four: each actix middleware costs two boxed
//! futures per request and one more level on every poll (measured with callgrind: 1.6% of
//! the instructions of a proxied request).
//! `server` wraps it inside tracing-actix-web's `TracingLogger`.

pub mod auth;
pub mod context;
pub mod observe;
pub mod rate_limit;

use std::sync::Arc;
use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::ConnectionType;
use actix_web::middleware::Next;
use actix_web::{web, Error, HttpMessage as _};

use crate::allowlist;
use crate::error::{Api, GatewayError};

use crate::state::AppState;

/// The `Strict-Transport-Security` value, in the app data of the HTTPS listener's App only.
#[derive(Debug, Clone)]
pub struct Hsts(pub actix_web::http::header::HeaderValue);

pub async fn edge(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    crate::memory::count_request();
    let mut seen = observe::Seen::start(&req);
    let res = match admit(&req, &mut seen) {
        Ok(admission) => admission.apply(next.call(req).await?),
        Err(e) => refuse(req, e).await,
    };
    let mut res = seen.finish(in_api_shape(res));
    if let Some(Hsts(value)) = res.request().app_data::<Hsts>() {
        let value = value.clone();
        res.headers_mut()
            .insert(actix_web::http::header::STRICT_TRANSPORT_SECURITY, value);
    }
    Ok(res)
}

/// The allowlist, the key, the limits, in that order; the first refusal wins. Notes the
/// client address in `seen` first, so that a refusal's log line says who it was.
fn admit(
    req: &ServiceRequest,
    seen: &mut observe::Seen,
) -> Result<rate_limit::Admission, GatewayError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or(GatewayError::IpDenied)?;
    seen.client = allowlist::client(&state.allowlist, req);
    let ip = allowlist::check(&state.allowlist, seen.client)?;
    let key = auth::check(state, req, ip)?;
    if let Some(key) = &key {
        let key = Arc::clone(key);
        context::RequestContext::update(&mut req.extensions_mut(), |c| c.key = Some(key));
    }
    check_declared_length(req, state.config.server.max_body_bytes)?;
    let cheap_read = rate_limit::is_cheap_read(req.method(), req.path());
    rate_limit::admit(key.as_ref(), cheap_read)
}

/// Refuses a body whose declared `Content-Length` is over `server.max_body_bytes` before
/// any of it is read, and before it costs the key a token or a slot. Blob uploads have
/// their own limit (`server.max_blob_bytes`), which their route applies. A body sent
/// without a length is held to the limit as it is read (`routes::body`).
fn check_declared_length(req: &ServiceRequest, limit: usize) -> Result<(), GatewayError> {
    if req.path().starts_with("/api/blobs/") {
        return Ok(());
    }
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(n) if n > u64::try_from(limit).unwrap_or(u64::MAX) => {
            Err(GatewayError::BodyTooLarge { limit })
        }
        _ => Ok(()),
    }
}

/// The one place an error answer takes the shape of its path's API ([`Api::of_path`]):
/// every `GatewayError` response (the edge's refusals, the routes' errors, unknown paths
/// and methods) is rendered by `ResponseError` in Ollama's shape with its status and
/// headers; on `/v1` its body is swapped for OpenAI's or Anthropic's. The error stays
/// attached, so `observe` counts and logs it as before. A rate-limit refusal on `/v1`
/// also gets OpenAI's `x-ratelimit-*-requests` headers (passed answers get them in
/// [`rate_limit::Admission::apply`]). Answers without an error pass untouched.
fn in_api_shape(mut res: ServiceResponse<BoxBody>) -> ServiceResponse<BoxBody> {
    let api = Api::of_path(res.request().path());
    if api == Api::Ollama {
        return res;
    }
    let Some(error) = res
        .response()
        .error()
        .and_then(|e| e.as_error::<GatewayError>())
    else {
        return res;
    };
    let body = error.body_for(api);
    if let GatewayError::RateLimited { policy, .. } = error {
        let policy = *policy;
        rate_limit::add_openai_headers(res.headers_mut(), &policy);
    }
    res.map_body(|_, _| BoxBody::new(body))
}

/// Most of a refused request's body read (and dropped) before answering.
pub(crate) const DRAIN_LIMIT: usize = 64 * 1024;
/// Longest wait for that body.
pub(crate) const DRAIN_TIME: Duration = Duration::from_secs(1);

/// Answers a refused request with its error response (the error stays attached, so
/// `observe` can count and log it). Refusals are responses, not `Err`s, so that every
/// answer carries its request id.
///
/// A small body still on its way is read first (bounded in size and time): answering
/// before it arrived makes HTTP/2 reset the stream and HTTP/1.1 close the connection,
/// and some clients (curl among them) then report a transport error instead of the 401.
///
/// Except after an `Upgrade: websocket` request: its "body" is the rest of the connection
/// (see `auth::body_runs_to_eof`), requests pipelined behind it included. It is answered at
/// once and the connection closed, so that nothing on it is read as anything else.
async fn refuse(mut req: ServiceRequest, error: GatewayError) -> ServiceResponse {
    if auth::body_runs_to_eof(&req) {
        let mut res = req.error_response(error);
        res.response_mut()
            .head_mut()
            .set_connection_type(ConnectionType::Close);
        return res;
    }
    crate::body::drain(req.take_payload(), DRAIN_LIMIT, DRAIN_TIME).await;
    req.error_response(error)
}
