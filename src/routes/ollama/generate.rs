//! `POST /api/generate`: to Ollama as it came (its load and unload included); to an
//! OpenAI-compatible upstream as the chat it stands for.

use std::time::Instant;

use actix_web::{web, HttpRequest, HttpResponse};

use super::routed::{self, Routed};
use crate::catalog::Route;
use crate::error::GatewayError;
use crate::state::AppState;
use crate::translate::generate::GenerateRequest;
use crate::upstream::{self, openai};

pub async fn generate(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    client: web::Data<awc::Client>,
) -> Result<HttpResponse, GatewayError> {
    let started = Instant::now();
    let body = routed::body(payload, &req, &state).await?;
    // Moves the parsed fields, copies nothing: cheap even when the body goes to Ollama.
    let generate = GenerateRequest::parse(&body)?.into_chat();
    let chat = &generate.chat;
    let Routed {
        route,
        request_id,
        record,
    } = routed::admit(
        &req,
        &state,
        "/api/generate",
        chat.model(),
        started,
        chat.streams(),
    )?;
    let config = &state.config;
    match route {
        Route::Ollama => {
            let uri = &config.ollama.generate_uri;
            upstream::ollama::forward(
                &client,
                config,
                &req,
                uri,
                body.clone(),
                &request_id,
                record,
            )
            .await
        }
        Route::OpenAi { upstream, model } => {
            let call = openai::Call {
                upstream,
                config,
                model,
                started,
                request_id: &request_id,
            };
            openai::generate(&client, call, &generate, record).await
        }
    }
}
