//! Model management: `POST /api/pull`, `/api/push`, `/api/create`, `/api/copy`,
//! `DELETE /api/delete`, `HEAD`/`POST /api/blobs/:digest`. Only for keys with
//! `role = "admin"`, only for Ollama's models; relayed to Ollama, streamed both ways.

use std::sync::Arc;
use std::time::Instant;

use actix_web::http::{header, Method};
use actix_web::{web, HttpMessage as _, HttpRequest, HttpResponse};

use crate::catalog::{self, Route};
use crate::config::Config;
use crate::error::GatewayError;
use crate::keys::{ApiKey, Role};
use crate::metrics::RequestRecord;
use crate::middleware::{DRAIN_LIMIT, DRAIN_TIME};
use crate::state::AppState;
use crate::translate::manage::{check_digest, ManageRequest, Operation};
use crate::upstream::manage::{self, Call, Outgoing};
use crate::upstream::upload::Upload;

/// The `route` label of both blob endpoints (the digest is never a label).
const BLOBS_ROUTE: &str = "/api/blobs/:digest";

/// A JSON management request (the operation its path names): the key, the body (within
/// `server.max_body_bytes`), the models it names, then Ollama.
pub async fn json(
    req: HttpRequest,
    mut payload: web::Payload,
    state: web::Data<AppState>,
    client: web::Data<awc::Client>,
) -> Result<HttpResponse, GatewayError> {
    let started = crate::routes::started(&req);
    let pattern = req.match_pattern();
    let Some(op) = Operation::ALL
        .into_iter()
        .find(|op| pattern.as_deref() == Some(op.path()))
    else {
        return crate::routes::not_found(req).await;
    };
    let key = admin(&req, &mut payload).await?;
    let config = &state.config;
    let body = crate::routes::body::read_json(payload, &req, &config.server).await?;
    let request = ManageRequest::parse(op, &body)?;
    for model in &request.models {
        ollama_only(config, model)?;
        super::may_use(Some(&key), model)?;
    }
    // Without a stream Ollama answers only when the pull (push, create) is over.
    let wait = if op.reports_progress() && !request.streams {
        config.timeouts.total
    } else {
        config.timeouts.first_byte
    };
    let (record, request_id) = record(&req, &state, op.path(), started, request.model());
    let call = Call {
        method: req.method().clone(),
        path: op.path(),
        config,
        req: &req,
        request_id: &request_id,
    };
    let outgoing = Outgoing::Json {
        body: body.clone(),
        wait,
    };
    manage::forward(&client, call, outgoing, record).await
}

/// `HEAD /api/blobs/:digest` (whether Ollama has the blob: 200 or 404) and `POST` (a
/// model file, streamed to Ollama: 201 when it took it): the key, the digest, the size the
/// client declares (within `server.max_blob_bytes`), then Ollama.
pub async fn blob(
    req: HttpRequest,
    mut payload: web::Payload,
    state: web::Data<AppState>,
    client: web::Data<awc::Client>,
    digest: web::Path<String>,
) -> Result<HttpResponse, GatewayError> {
    let started = crate::routes::started(&req);
    admin(&req, &mut payload).await?;
    let config = &state.config;
    let limit = config.server.max_blob_bytes;
    let upload = req.method() == Method::POST;
    let digest = match check_digest(&digest) {
        Ok(digest) => digest,
        Err(e) => return Err(refuse(&mut payload, e).await),
    };
    let outgoing = if upload {
        let length = declared_length(&req);
        if length.is_some_and(|n| n > limit) {
            return Err(refuse(&mut payload, GatewayError::BlobTooLarge { limit }).await);
        }
        let upload = Upload::new(payload, limit, config.server.request_body_timeout);
        Outgoing::Blob { upload, length }
    } else {
        Outgoing::Nothing
    };
    let (record, request_id) = record(&req, &state, BLOBS_ROUTE, started, "");
    let path = format!("/api/blobs/{digest}");
    let call = Call {
        method: req.method().clone(),
        path: &path,
        config,
        req: &req,
        request_id: &request_id,
    };
    manage::forward(&client, call, outgoing, record).await
}

/// The request's key, if it has `role = "admin"`; otherwise 403.
async fn admin(req: &HttpRequest, payload: &mut web::Payload) -> Result<Arc<ApiKey>, GatewayError> {
    let key = super::key(req);
    match key {
        Some(key) if key.role == Role::Admin => Ok(key),
        _ => Err(refuse(payload, GatewayError::AdminRequired).await),
    }
}

/// `error`, after reading (and dropping) a little of a body still on its way, as the edge
/// does for its refusals: answering before it arrived makes clients see a reset instead.
async fn refuse(payload: &mut web::Payload, error: GatewayError) -> GatewayError {
    crate::body::drain(payload, DRAIN_LIMIT, DRAIN_TIME).await;
    error
}

/// The body length the client declares, unless the body is chunked.
fn declared_length(req: &HttpRequest) -> Option<u64> {
    if req.chunked().unwrap_or(false) {
        return None;
    }
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Refuses a model an OpenAI-compatible upstream serves: those have no model management.
fn ollama_only(config: &Config, model: &str) -> Result<(), GatewayError> {
    match catalog::route(config, model) {
        Route::Ollama => Ok(()),
        Route::OpenAi { upstream, .. } => Err(GatewayError::InvalidField(format!(
            "model {:?} is served by {}, an OpenAI-compatible upstream: model management (pull, push, create, copy, delete) is for Ollama's models only",
            model.chars().take(200).collect::<String>(),
            upstream.name
        ))),
    }
}

/// Starts the record that counts and logs the request when its answer ends; and its id.
fn record(
    req: &HttpRequest,
    state: &AppState,
    route: &'static str,
    started: Instant,
    model: &str,
) -> (RequestRecord, Arc<str>) {
    let ollama = Arc::clone(&state.ollama_label);
    super::record(req, state, route, started, ollama, true, model, false)
}
