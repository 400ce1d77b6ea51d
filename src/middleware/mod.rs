//! The edge checks every request passes before any upstream work, in this order:
//! `observe` (counts what the others reject) -> `allowlist` -> `auth` -> `rate_limit`.
//! `server::app` wraps them; in actix the last `.wrap()` runs first.

pub mod allowlist;
pub mod auth;
pub mod observe;
pub mod rate_limit;

use actix_web::dev::ServiceRequest;
use actix_web::web;

use crate::server::AppState;

/// The shared state, which every App built by `server` carries.
fn state(req: &ServiceRequest) -> Option<web::Data<AppState>> {
    req.app_data::<web::Data<AppState>>().cloned()
}
