//! Anthropic's Messages API (`POST /v1/messages`), relayed to Ollama's own (Ollama serves
//! it since v0.14); an OpenAI-compatible upstream's model is refused in Anthropic's shape.

pub mod messages;

use actix_web::http::Method;
use actix_web::web;

use super::{on, only};

/// Registers Anthropic's endpoints.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(only(
        "/v1/messages",
        "POST",
        on(Method::POST).to(messages::messages),
    ));
}
