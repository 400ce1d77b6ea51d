//! `POST /api/chat`: read the body, pick the upstream by model, hand over.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use actix_web::{web, HttpMessage as _, HttpRequest, HttpResponse};

use crate::catalog::{self, Route};
use crate::error::GatewayError;
use crate::keys::ApiKey;
use crate::metrics::{RequestRecord, WorkerMetrics};
use crate::middleware::observe::Recorded;
use crate::state::AppState;
use crate::telemetry::RequestId;
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
    let body = crate::routes::body::read(
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
    let route = catalog::route(config, chat.model());
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
