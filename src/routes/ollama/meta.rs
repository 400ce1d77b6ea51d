//! What clients ask about the server rather than a model: `HEAD`/`GET /` (the CLI's
//! heartbeat) and `GET`/`HEAD /api/version`. Both are cheap reads (see
//! `middleware::rate_limit::is_cheap_read`): no in-flight slot, the key's bucket of reads.
//! Both need a key or a trusted network, like every path but liveness: `/` reveals nothing
//! but that this is an Ollama endpoint, and that banner is what scanners for exposed
//! Ollama servers look for; `/healthz` serves the probes that need no key.

use std::sync::Arc;
use std::time::Instant;

use actix_web::{web, HttpRequest, HttpResponse};

use crate::error::GatewayError;
use crate::state::AppState;
use crate::translate::ollama::VersionResponse;
use crate::upstream::ollama::get_whole;
use crate::upstream::MAX_ERROR_BYTES;

/// `HEAD /`, `GET /`: what Ollama answers, word for word.
pub async fn root() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body("Ollama is running")
}

/// `GET`/`HEAD /api/version`: Ollama's own version, relayed as it is (a HEAD gets the
/// same head and no body). A version answer is a few bytes; more than [`MAX_ERROR_BYTES`]
/// is not one.
pub async fn version(
    req: HttpRequest,
    state: web::Data<AppState>,
    client: web::Data<awc::Client>,
) -> Result<HttpResponse, GatewayError> {
    let (record, request_id) = super::record(
        &req,
        &state,
        "/api/version",
        Instant::now(),
        Arc::clone(&state.ollama_label),
        true,
        "",
        false,
    );
    let config = &state.config;
    get_whole(
        &client,
        config,
        &config.ollama.version_uri,
        &request_id,
        MAX_ERROR_BYTES,
        VersionResponse::check,
        record,
    )
    .await
}
