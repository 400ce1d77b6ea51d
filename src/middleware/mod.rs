//! The edge checks every request passes before any upstream work, in this order:
//! `observe` (counts what the others reject) -> `allowlist` -> `auth` -> `rate_limit`.
//! `server::app` wraps them; in actix the last `.wrap()` runs first.

pub mod allowlist;
pub mod auth;
pub mod observe;
pub mod rate_limit;

use std::time::Duration;

use actix_web::body::{BoxBody, EitherBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::{web, HttpMessage as _};

use futures_util::StreamExt as _;

use crate::error::GatewayError;

use crate::server::AppState;

/// Most of a refused request's body read (and dropped) before answering.
const DRAIN_LIMIT: usize = 64 * 1024;
/// Longest wait for that body.
const DRAIN_TIME: Duration = Duration::from_secs(1);

/// Answers a refused request with its error response (the error stays attached, so the
/// outer layers can count and log it). Refusals are responses, not `Err`s, so that every
/// answer passes through `observe` and carries its request id.
///
/// A small body still on its way is read first (bounded in size and time): answering
/// before it arrived makes HTTP/2 reset the stream and HTTP/1.1 close the connection,
/// and some clients (curl among them) then report a transport error instead of the 401.
async fn refuse<B>(
    mut req: ServiceRequest,
    error: GatewayError,
) -> ServiceResponse<EitherBody<B, BoxBody>> {
    let mut payload = req.take_payload();
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut seen = 0;
        while let Some(Ok(chunk)) = payload.next().await {
            seen += chunk.len();
            if seen > DRAIN_LIMIT {
                break;
            }
        }
    })
    .await;
    req.error_response(error).map_into_right_body()
}

/// The shared state, which every App built by `server` carries.
fn state(req: &ServiceRequest) -> Option<web::Data<AppState>> {
    req.app_data::<web::Data<AppState>>().cloned()
}
