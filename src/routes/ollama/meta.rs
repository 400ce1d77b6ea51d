//! What clients ask about the server rather than a model: `HEAD`/`GET /` (the CLI's
//! heartbeat) and `GET`/`HEAD /api/version`. Both are cheap reads (see
//! `middleware::rate_limit::is_cheap_read`): no in-flight slot, the key's bucket of reads.
//! Both need a key or a trusted network, like every path but liveness: `/` reveals nothing
//! but that this is an Ollama endpoint, and that banner is what scanners for exposed
//! Ollama servers look for; `/healthz` serves the probes that need no key.

use std::sync::Arc;
use std::time::Instant;

use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};

use crate::error::GatewayError;
use crate::metrics::{Ending, Tokens};
use crate::state::AppState;
use crate::translate::ollama::VersionResponse;
use crate::upstream::{models, unreadable_answer, OLLAMA};

/// `HEAD /`, `GET /`: what Ollama answers, word for word.
pub async fn root() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body("Ollama is running")
}

/// `GET`/`HEAD /api/version`: Ollama's own version, relayed as it is (a HEAD gets the
/// same head and no body), within `catalog.timeout` like the other cheap reads. A 2xx that
/// is not a version becomes a 502: clients parse it as dotted integers.
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
    let answer = match models::ollama(
        &client,
        config,
        Method::GET,
        "/api/version",
        None,
        &request_id,
    )
    .await
    {
        Ok(answer) => answer,
        Err(e) => return Err(record.fail(e)),
    };
    if answer.status.is_success() {
        if let Err(detail) = VersionResponse::check(&answer.body) {
            let e = unreadable_answer(OLLAMA, &answer.body, detail, &config.scrubber);
            return Err(record.fail(e));
        }
    }
    record.finish(
        answer.status.as_u16(),
        Tokens::default(),
        None,
        &Ending::Complete,
    );
    Ok(super::models::relay(answer))
}
