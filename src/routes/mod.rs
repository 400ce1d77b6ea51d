//! Thin HTTP handlers; the work happens in `upstream` and `translate`.

pub mod anthropic;
pub mod body;
pub mod health;
pub mod models;
pub mod ollama;
pub mod openai;
pub(crate) mod routed;
pub mod spend;
pub mod usage;

use actix_web::guard::{Guard, GuardContext};
use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};

use crate::error::GatewayError;

/// Registers every route of the public listener. Unknown paths and wrong methods answer
/// in the error shape of their path's API (see `middleware::in_api_shape`).
/// `public_metrics` also serves /metrics (behind a key).
pub fn configure(cfg: &mut web::ServiceConfig, public_metrics: bool) {
    if public_metrics {
        cfg.route("/metrics", web::get().to(health::metrics));
    }
    ollama::configure(cfg);
    openai::configure(cfg);
    anthropic::configure(cfg);
    cfg.service(probe("/healthz", health::healthz))
        .service(probe("/readyz", health::readyz));
}

/// A route for `method` alone, for [`only`] and [`probe`], which answer other methods
/// themselves. actix-web's own method routes (`web::post()` and the like) also note each
/// method they test in the request's extensions, for an `Allow` header that those two
/// write anyway: a vector and a map entry made for every request.
pub(crate) fn on(method: Method) -> actix_web::Route {
    web::route().guard(Is(method))
}

/// Matches requests of one method, and only compares.
struct Is(Method);

impl Guard for Is {
    fn check(&self, ctx: &GuardContext<'_>) -> bool {
        ctx.head().method == self.0
    }
}

/// A resource served by `route` alone; other methods get 405 naming `allow`.
pub(crate) fn only(
    path: &str,
    allow: &'static str,
    route: actix_web::Route,
) -> actix_web::Resource {
    web::resource(path)
        .route(route)
        .default_service(web::to(move |req: HttpRequest| {
            method_not_allowed(req, allow)
        }))
}

/// A GET/HEAD-only resource; other methods get 405 with `Allow`.
pub(crate) fn probe<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args> + Clone,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(on(Method::GET).to(handler.clone()))
        .route(on(Method::HEAD).to(handler))
        .default_service(web::to(|req: HttpRequest| {
            method_not_allowed(req, "GET, HEAD")
        }))
}

pub(crate) async fn method_not_allowed(
    req: HttpRequest,
    allow: &'static str,
) -> Result<HttpResponse, GatewayError> {
    Err(GatewayError::MethodNotAllowed {
        method: req.method().to_string(),
        path: req.path().chars().take(200).collect(),
        allow,
    })
}

/// The fallback for every path no route matches.
/// The admin listener: metrics, probes and the token usage report, nothing else.
pub fn configure_admin(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(health::metrics))
        .service(probe("/healthz", health::healthz))
        .service(probe("/readyz", health::readyz))
        .service(probe("/usage", usage::usage));
}

pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, GatewayError> {
    Err(GatewayError::NotFound {
        method: req.method().to_string(),
        path: req.path().chars().take(200).collect(),
    })
}

/// When the request came in, as the edge noted it: what its record's duration, its upstream
/// deadline and its body timeout count from.
pub(crate) fn started(req: &actix_web::HttpRequest) -> std::time::Instant {
    use actix_web::HttpMessage as _;
    crate::middleware::context::RequestContext::started(&req.extensions())
}
