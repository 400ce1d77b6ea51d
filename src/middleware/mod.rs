//! The edge: one middleware that every request passes before any upstream work, in this
//! order: `observe` notes it, `allowlist` checks the client address, `auth` the request
//! head and the key (or the trusted network), `rate_limit` the key's in-flight slot and
//! bucket (a cheap read: only its bucket of reads); on the way out, `rate_limit` adds its
//! headers and `observe` the request id, counts and logs. One layer rather than four: each
//! actix middleware costs two boxed futures per request and one more level on every poll
//! (measured with callgrind: 1.6% of the instructions of a proxied request).
//! `server` wraps it inside tracing-actix-web's `TracingLogger`.

pub mod auth;
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
use crate::error::GatewayError;

use crate::state::AppState;

/// The `Strict-Transport-Security` value, in the app data of the HTTPS listener's App only.
#[derive(Debug, Clone)]
pub struct Hsts(pub actix_web::http::header::HeaderValue);

pub async fn edge(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let mut seen = observe::Seen::start(&req);
    let res = match admit(&req, &mut seen) {
        Ok(admission) => admission.apply(next.call(req).await?),
        Err(e) => refuse(req, e).await,
    };
    let mut res = seen.finish(res);
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
        req.extensions_mut().insert(Arc::clone(key));
    }
    let cheap_read = rate_limit::is_cheap_read(req.method(), req.path());
    rate_limit::admit(key.as_deref(), cheap_read)
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
