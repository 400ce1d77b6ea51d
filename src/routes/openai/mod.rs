//! OpenAI's API (`/v1/...` but `/v1/messages`), one file per concern: relayed to the
//! model's upstream, Ollama's own OpenAI-compatible layer (`{ollama}/v1/...`) or an
//! OpenAI-compatible server, with only the model name rewritten.

pub mod models;

use actix_web::web;

use super::probe;

/// Registers OpenAI's endpoints.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(probe("/v1/models", models::list))
        .service(probe("/v1/models/{model:.+}", models::retrieve));
}
