//! Thin HTTP handlers; the work happens in `upstream` and `translate`.

pub mod chat;
pub mod health;

use actix_web::{web, HttpRequest, HttpResponse};

use crate::error::GatewayError;

/// Registers every route of the public listener. Unknown paths and wrong methods answer
/// in Ollama's error shape. `public_metrics` also serves /metrics (behind a key).
pub fn configure(cfg: &mut web::ServiceConfig, public_metrics: bool) {
    if public_metrics {
        cfg.route("/metrics", web::get().to(health::metrics));
    }
    cfg.route("/readyz", web::get().to(health::readyz));
    cfg.service(
        web::resource("/api/chat")
            .route(web::post().to(chat::chat))
            .default_service(web::to(|req: HttpRequest| method_not_allowed(req, "POST"))),
    )
    .service(
        web::resource("/healthz")
            .route(web::get().to(health::healthz))
            .route(web::head().to(health::healthz))
            .default_service(web::to(|req: HttpRequest| {
                method_not_allowed(req, "GET, HEAD")
            })),
    );
}

async fn method_not_allowed(
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
/// The admin listener: metrics and probes, nothing else.
pub fn configure_admin(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(health::metrics))
        .route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz));
}

pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, GatewayError> {
    Err(GatewayError::NotFound {
        method: req.method().to_string(),
        path: req.path().chars().take(200).collect(),
    })
}
