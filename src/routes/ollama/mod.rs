//! Ollama's own API (`/api/...`), one file per concern.

pub mod chat;
pub mod embed;
pub mod generate;
mod routed;

use actix_web::web;

use super::only;

/// Registers Ollama's endpoints.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(only("/api/chat", "POST", web::post().to(chat::chat)));
    cfg.service(only(
        "/api/generate",
        "POST",
        web::post().to(generate::generate),
    ))
    .service(only("/api/embed", "POST", web::post().to(embed::embed)))
    .service(only(
        "/api/embeddings",
        "POST",
        web::post().to(embed::embeddings),
    ));
}
