//! `POST /api/chat`: read the body, pick the upstream by model, hand over.

use std::sync::Arc;
use std::time::Instant;

use actix_web::{web, HttpMessage as _, HttpRequest, HttpResponse};

use crate::catalog::{self, Route};
use crate::error::GatewayError;
use crate::keys::ApiKey;
use crate::metrics::RequestRecord;
use crate::state::AppState;
use crate::translate::ollama::ChatRequest;
use crate::upstream::{self, openai};

pub async fn chat(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    client: web::Data<awc::Client>,
) -> Result<HttpResponse, GatewayError> {
    let started = Instant::now();
    let config = &state.config;
    let body = crate::routes::body::read_json(payload, &req, &config.server).await?;
    let chat = ChatRequest::parse(&body)?;
    let key = req.extensions().get::<Arc<ApiKey>>().cloned();
    if let Some(key) = &key {
        if !key.allows_model(chat.model()) {
            return Err(GatewayError::ModelNotAllowed {
                model: chat.model().chars().take(200).collect(),
            });
        }
    }
    let route = catalog::route(config, chat.model());
    let (label, is_ollama) = match route {
        Route::Ollama => (Arc::clone(&state.ollama_label), true),
        Route::OpenAi { upstream, .. } => (Arc::clone(&upstream.label), false),
    };
    let (request_id, worker) = super::recorded(&req, &state);
    let record = RequestRecord::start(
        worker,
        "/api/chat",
        started,
        Arc::clone(&request_id),
        label,
        is_ollama,
        chat.model(),
        key.as_deref(),
        chat.streams(),
    );
    match route {
        Route::Ollama => {
            upstream::ollama::forward(&client, config, &req, body.clone(), &request_id, record)
                .await
        }
        Route::OpenAi { upstream, model } => {
            let call = openai::Call {
                upstream,
                config,
                chat: &chat,
                model,
                started,
                request_id: &request_id,
            };
            openai::forward(&client, call, record).await
        }
    }
}
