//! OpenAI's API (`/v1/...` but `/v1/messages`), one file per concern: relayed to the
//! model's upstream, Ollama's own OpenAI-compatible layer (`{ollama}/v1/...`) or an
//! OpenAI-compatible server, with only the model name rewritten.

use actix_web::web;

/// Registers OpenAI's endpoints.
pub fn configure(_cfg: &mut web::ServiceConfig) {}
