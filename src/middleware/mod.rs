//! The edge checks every request passes before any upstream work, in this order:
//! `observe` (counts what the others reject) -> `allowlist` -> `auth` -> `rate_limit`.
//! `server::app` wraps them; in actix the last `.wrap()` runs first.

pub mod allowlist;
pub mod auth;
pub mod observe;
pub mod rate_limit;

use actix_web::body::{BoxBody, EitherBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::web;

use crate::error::GatewayError;

use crate::server::AppState;

/// Answers a refused request with its error response (the error stays attached, so the
/// outer layers can count and log it). Refusals are responses, not `Err`s, so that every
/// answer passes through `observe` and carries its request id.
fn refuse<B>(req: ServiceRequest, error: GatewayError) -> ServiceResponse<EitherBody<B, BoxBody>> {
    req.error_response(error).map_into_right_body()
}

/// The shared state, which every App built by `server` carries.
fn state(req: &ServiceRequest) -> Option<web::Data<AppState>> {
    req.app_data::<web::Data<AppState>>().cloned()
}
