//! What every model endpoint does before its upstream call: read the body, check that the
//! key may use the model, pick the upstream (the catalog's one decision), and start the
//! request's record, which from then on counts and logs it.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use actix_web::{web, HttpMessage as _, HttpRequest};
use bytes::Bytes;

use crate::catalog::{self, Route};
use crate::error::GatewayError;
use crate::keys::ApiKey;
use crate::metrics::{RequestRecord, WorkerMetrics};
use crate::middleware::observe::Recorded;
use crate::state::AppState;
use crate::telemetry::RequestId;

/// A request admitted to its upstream.
pub struct Routed<'c, 'm> {
    pub route: Route<'c, 'm>,
    pub request_id: Arc<str>,
    pub record: RequestRecord,
}

/// The request body, bounded in size and time (`server.max_body_bytes`,
/// `server.request_body_timeout`).
pub async fn body(
    payload: web::Payload,
    req: &HttpRequest,
    state: &AppState,
) -> Result<Bytes, GatewayError> {
    let server = &state.config.server;
    crate::routes::body::read(
        payload,
        req,
        server.max_body_bytes,
        server.request_body_timeout,
    )
    .await
}

/// Admits a request for `model` at `endpoint` (the `route` label): 403 when the key's
/// `models` exclude it; else its upstream and its record, started at `started`.
pub fn admit<'c, 'm>(
    req: &HttpRequest,
    state: &'c AppState,
    endpoint: &'static str,
    model: &'m str,
    started: Instant,
    streams: bool,
) -> Result<Routed<'c, 'm>, GatewayError> {
    let key = req.extensions().get::<Arc<ApiKey>>().cloned();
    if let Some(key) = &key {
        if !key.allows_model(model) {
            return Err(GatewayError::ModelNotAllowed {
                model: model.chars().take(200).collect(),
            });
        }
    }
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map_or_else(|| RequestId::generate().0, |id| Arc::clone(&id.0));
    let route = catalog::route(&state.config, model);
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
        endpoint,
        started,
        Arc::clone(&request_id),
        label,
        is_ollama,
        model,
        key.as_deref(),
        streams,
    );
    Ok(Routed {
        route,
        request_id,
        record,
    })
}
