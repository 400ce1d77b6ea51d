//! Ollama's own API (`/api/...`), one file per concern.

pub mod chat;
pub mod embed;
pub mod generate;
pub mod manage;
pub mod meta;
pub mod models;

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use actix_web::http::Method;
use actix_web::{web, HttpMessage as _, HttpRequest};

use super::{on, only, probe};
use crate::error::GatewayError;
use crate::keys::ApiKey;
use crate::metrics::{RequestRecord, WorkerMetrics};
use crate::middleware::context::RequestContext;
use crate::state::AppState;
use crate::telemetry::RequestId;
use crate::translate::manage::Operation;

/// Registers Ollama's endpoints.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(only("/api/chat", "POST", on(Method::POST).to(chat::chat)))
        .service(only(
            "/api/generate",
            "POST",
            on(Method::POST).to(generate::generate),
        ))
        .service(only(
            "/api/embed",
            "POST",
            on(Method::POST).to(embed::embed),
        ))
        .service(only(
            "/api/embeddings",
            "POST",
            on(Method::POST).to(embed::embeddings),
        ))
        .service(probe("/", meta::root))
        .service(probe("/api/version", meta::version))
        .service(probe("/api/tags", models::tags))
        .service(only("/api/ps", "GET", on(Method::GET).to(models::ps)))
        .service(only("/api/show", "POST", on(Method::POST).to(models::show)));
    for op in Operation::ALL {
        let (allow, route) = match op {
            Operation::Delete => ("DELETE", on(Method::DELETE)),
            _ => ("POST", on(Method::POST)),
        };
        cfg.service(only(op.path(), allow, route.to(manage::json)));
    }
    cfg.service(
        only(
            "/api/blobs/{digest}",
            "HEAD, POST",
            on(Method::HEAD).to(manage::blob),
        )
        .route(on(Method::POST).to(manage::blob)),
    );
}

/// The identity the edge admitted the request with: its key, or the trusted network that
/// served it without one (none only on the public probe paths).
pub(crate) fn key(req: &HttpRequest) -> Option<Arc<ApiKey>> {
    RequestContext::of(&req.extensions()).and_then(|c| c.key.clone())
}

/// Whether `key` may use `model` (no identity restricts nothing): what every list filters
/// by and [`may_use`] checks.
pub(crate) fn allowed(key: Option<&ApiKey>, model: &str) -> bool {
    key.is_none_or(|k| k.allows_model(model))
}

/// 403 when `key`'s `models` patterns exclude `model`: the one answer every endpoint gives.
pub(crate) fn may_use(key: Option<&ApiKey>, model: &str) -> Result<(), GatewayError> {
    if allowed(key, model) {
        return Ok(());
    }
    Err(GatewayError::ModelNotAllowed {
        model: model.chars().take(200).collect(),
    })
}

/// The request's id, as the edge set it (or a new one).
pub(crate) fn request_id(req: &HttpRequest) -> Arc<str> {
    RequestContext::of(&req.extensions())
        .map_or_else(|| RequestId::generate().text, |c| Arc::clone(&c.id.text))
}

/// The request's id and this worker's metric handles, for the `RequestRecord` of a request
/// that is about to go upstream: from here on the record, not the edge, counts and logs it.
fn recorded(req: &HttpRequest, state: &AppState) -> (Arc<str>, Rc<WorkerMetrics>) {
    let request_id = request_id(req);
    let worker = req
        .app_data::<Rc<WorkerMetrics>>()
        .cloned()
        .unwrap_or_else(|| Rc::new(WorkerMetrics::new(Arc::clone(&state.metrics))));
    RequestContext::update(&mut req.extensions_mut(), |c| c.recorded = true);
    (request_id, worker)
}

/// Hands a routed request over to its record, which from here on counts and logs it when
/// its answer ends (the edge no longer does). Returns the record and the request id.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record(
    req: &HttpRequest,
    state: &AppState,
    route: &'static str,
    started: Instant,
    upstream: Arc<str>,
    is_ollama: bool,
    model: &str,
    streams: bool,
) -> (RequestRecord, Arc<str>) {
    let key = key(req);
    let (request_id, worker) = recorded(req, state);
    let record = RequestRecord::start(
        worker,
        route,
        started,
        Arc::clone(&request_id),
        upstream,
        is_ollama,
        model,
        key.as_deref(),
        streams,
    );
    (record, request_id)
}
