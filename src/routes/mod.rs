//! Thin HTTP handlers; the work happens in `upstream` and `translate`.

pub mod chat;
pub mod health;

use actix_web::{web, HttpRequest, HttpResponse};

use crate::error::GatewayError;

/// Registers every route. Unknown paths and wrong methods answer in Ollama's error shape.
pub fn configure(cfg: &mut web::ServiceConfig) {
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
pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, GatewayError> {
    Err(GatewayError::NotFound {
        method: req.method().to_string(),
        path: req.path().chars().take(200).collect(),
    })
}
