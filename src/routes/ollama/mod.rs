//! Ollama's own API (`/api/...`), one file per concern.

pub mod chat;

use actix_web::web;

use super::only;

/// Registers Ollama's endpoints.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(only("/api/chat", "POST", web::post().to(chat::chat)));
}
