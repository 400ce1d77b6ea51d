//! Anthropic's Messages API (`POST /v1/messages`), relayed to Ollama's own (Ollama serves
//! it since v0.14); an OpenAI-compatible upstream's model is refused in Anthropic's shape.

use actix_web::web;

/// Registers Anthropic's endpoints.
pub fn configure(_cfg: &mut web::ServiceConfig) {}
