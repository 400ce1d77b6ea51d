//! `POST /api/chat`: read the body, pick the upstream by model, hand over.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::{web, HttpMessage as _, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;

use crate::error::GatewayError;
use crate::keys::ApiKey;
use crate::metrics::{RequestRecord, WorkerMetrics};
use crate::middleware::observe::Recorded;
use crate::state::AppState;
use crate::telemetry::RequestId;
use crate::translate::ollama::ChatRequest;
use crate::upstream::{self, openai, Route};

pub async fn chat(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    client: web::Data<awc::Client>,
) -> Result<HttpResponse, GatewayError> {
    let started = Instant::now();
    let config = &state.config;
    let body = read_body(
        payload,
        &req,
        config.server.max_body_bytes,
        config.server.request_body_timeout,
    )
    .await?;
    let chat = ChatRequest::parse(&body)?;
    let key = req.extensions().get::<Arc<ApiKey>>().cloned();
    if let Some(key) = &key {
        if !key.allows_model(chat.model()) {
            return Err(GatewayError::ModelNotAllowed {
                model: chat.model().chars().take(200).collect(),
            });
        }
    }
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map_or_else(|| RequestId::generate().0, |id| Arc::clone(&id.0));
    let route = upstream::route(config, chat.model());
    let (label, is_ollama) = match route {
        Route::Ollama => (Arc::clone(&state.ollama_label), true),
        Route::OpenAi { upstream, .. } => (Arc::clone(&upstream.label), false),
    };
    let worker = req
        .app_data::<Rc<WorkerMetrics>>()
        .cloned()
        .unwrap_or_else(|| Rc::new(WorkerMetrics::new(Arc::clone(&state.metrics))));
    // From here on, the record counts and logs this request when its answer ends.
    req.extensions_mut().insert(Recorded);
    let record = RequestRecord::start(
        worker,
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

/// Reads the request body, refusing more than `limit` bytes (early, by Content-Length,
/// when the client declares it) and bodies that take longer than `within` to arrive.
async fn read_body(
    payload: web::Payload,
    req: &HttpRequest,
    limit: usize,
    within: Duration,
) -> Result<Bytes, GatewayError> {
    tokio::time::timeout(within, read_limited(payload, req, limit))
        .await
        .map_err(|_| GatewayError::BodyTimeout(humantime::format_duration(within).to_string()))?
}

async fn read_limited(
    mut payload: web::Payload,
    req: &HttpRequest,
    limit: usize,
) -> Result<Bytes, GatewayError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(GatewayError::BodyTooLarge { limit });
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            let what = upstream::payload_failure(&e, "before the body was complete");
            GatewayError::BodyRead(format!("the client {what}"))
        })?;
        if body.len() + chunk.len() > limit {
            return Err(GatewayError::BodyTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}
