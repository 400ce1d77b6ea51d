//! `POST /api/chat`: read the body, pick the upstream by model, hand over.

use std::time::Instant;

use actix_web::{web, HttpRequest, HttpResponse};

use super::routed::{self, Routed};
use crate::catalog::Route;
use crate::error::GatewayError;
use crate::state::AppState;
use crate::translate::ollama::{ChatRequest, Shape};
use crate::upstream::{self, openai};

pub async fn chat(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    client: web::Data<awc::Client>,
) -> Result<HttpResponse, GatewayError> {
    let started = Instant::now();
    let body = routed::body(payload, &req, &state).await?;
    let chat = ChatRequest::parse(&body)?;
    let Routed {
        route,
        request_id,
        record,
    } = routed::admit(
        &req,
        &state,
        "/api/chat",
        chat.model(),
        started,
        chat.streams(),
    )?;
    let config = &state.config;
    match route {
        Route::Ollama => {
            let uri = &config.ollama.chat_uri;
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
            openai::forward(&client, call, &chat, Shape::Chat, record).await
        }
    }
}
