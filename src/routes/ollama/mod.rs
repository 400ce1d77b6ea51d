//! Ollama's own API (`/api/...`), one file per concern.

pub mod chat;
pub mod models;

use actix_web::web;

use super::{only, probe};

/// Registers Ollama's endpoints.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(only("/api/chat", "POST", web::post().to(chat::chat)))
        .service(probe("/api/tags", models::tags))
        .service(only("/api/ps", "GET", web::get().to(models::ps)))
        .service(only("/api/show", "POST", web::post().to(models::show)));
}
