//! Ollama's own API (`/api/...`), one file per concern.

pub mod chat;
pub mod manage;

use std::rc::Rc;
use std::sync::Arc;

use actix_web::{web, HttpMessage as _, HttpRequest};

use super::only;
use crate::metrics::WorkerMetrics;
use crate::middleware::observe::Recorded;
use crate::state::AppState;
use crate::telemetry::RequestId;
use crate::translate::manage::Operation;

/// Registers Ollama's endpoints.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(only("/api/chat", "POST", web::post().to(chat::chat)));
    for op in Operation::ALL {
        let (allow, route) = match op {
            Operation::Delete => ("DELETE", web::delete()),
            _ => ("POST", web::post()),
        };
        cfg.service(only(op.path(), allow, route.to(manage::json)));
    }
    cfg.service(
        only(
            "/api/blobs/{digest}",
            "HEAD, POST",
            web::head().to(manage::blob),
        )
        .route(web::post().to(manage::blob)),
    );
}

/// The request's id and this worker's metric handles, for the `RequestRecord` of a request
/// that is about to go upstream: from here on the record, not the edge, counts and logs it.
fn recorded(req: &HttpRequest, state: &AppState) -> (Arc<str>, Rc<WorkerMetrics>) {
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map_or_else(|| RequestId::generate().0, |id| Arc::clone(&id.0));
    let worker = req
        .app_data::<Rc<WorkerMetrics>>()
        .cloned()
        .unwrap_or_else(|| Rc::new(WorkerMetrics::new(Arc::clone(&state.metrics))));
    req.extensions_mut().insert(Recorded);
    (request_id, worker)
}
