//! The first and last step of the edge: every answer carries `X-Request-Id`; requests that
//! never reached an upstream (rejections, unknown paths) are counted and logged here, one
//! line each. Routed requests are counted and logged by their `RequestRecord` when their
//! answer ends.

use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::HttpMessage as _;

use crate::error::{Blame, GatewayError};
use crate::metrics::WorkerMetrics;
use crate::middleware::context::RequestContext;
use crate::telemetry::{RequestId, X_REQUEST_ID};

/// Probes and scrapes: not traffic, not counted, logged at debug only.
fn is_probe(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// Every value of the `endpoint` label but `other`: the gateway's own routes.
const ENDPOINTS: [&str; 24] = [
    "/",
    "/api/version",
    "/api/chat",
    "/api/generate",
    "/api/embed",
    "/api/embeddings",
    "/api/tags",
    "/api/ps",
    "/api/show",
    "/api/pull",
    "/api/push",
    "/api/create",
    "/api/copy",
    "/api/delete",
    "/api/blobs/{digest}",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
    "/v1/models/{model:.+}",
    "/v1/messages",
    "/healthz",
    "/readyz",
    "/metrics",
];

/// The `endpoint` label: one of the gateway's own routes (as their patterns are written),
/// or `other` (never the raw path, so the label stays bounded).
fn route_label(pattern: Option<&str>) -> &'static str {
    match pattern {
        Some("/api/blobs/{digest}") => return "/api/blobs/:digest",
        Some("/v1/models/{model:.+}") => return "/v1/models/:model",
        _ => {}
    }
    pattern
        .and_then(|p| ENDPOINTS.iter().find(|e| **e == p))
        .copied()
        .unwrap_or("other")
}

/// What the edge notes when a request comes in, to count and log it when its answer leaves.
pub struct Seen {
    started: Instant,
    request_id: RequestId,
    worker: Option<Rc<WorkerMetrics>>,
    /// The client address (as the allowlist resolved it), for the log line: an operator
    /// reading a refusal needs to know who it was. Never a metric label.
    pub client: Option<IpAddr>,
}

impl Seen {
    pub fn start(req: &ServiceRequest) -> Self {
        let (started, request_id) = match RequestContext::of(&req.extensions()) {
            Some(context) => (context.started, context.id.clone()),
            None => (Instant::now(), RequestId::generate()),
        };
        Self {
            started,
            request_id,
            worker: req.app_data::<Rc<WorkerMetrics>>().cloned(),
            client: None,
        }
    }

    /// Every answer, refusals included: its `X-Request-Id`, and unless a `RequestRecord`
    /// took the request over, its count and log line.
    pub fn finish<B>(self, mut res: ServiceResponse<B>) -> ServiceResponse<B> {
        let Self {
            started,
            request_id,
            worker,
            client,
        } = self;
        if let Some(value) = &request_id.header {
            res.headers_mut().insert(X_REQUEST_ID, value.clone());
        }
        let (recorded, key) = match RequestContext::of(&res.request().extensions()) {
            Some(context) if context.recorded => (true, None),
            Some(context) => (false, context.key.clone()),
            None => (false, None),
        };
        if recorded {
            return res;
        }
        let path = res.request().path();
        let status = res.status().as_u16();
        let error = res
            .response()
            .error()
            .and_then(|e| e.as_error::<GatewayError>());
        if is_probe(path) && error.is_none() {
            tracing::debug!(
                request_id = &*request_id.text,
                client = client.map(tracing::field::display),
                status,
                path,
                "probe"
            );
            return res;
        }
        let reason = error
            .filter(|e| e.blame() == Blame::Client)
            .map(GatewayError::kind);
        let route = route_label(res.request().match_pattern().as_deref());
        if let Some(worker) = &worker {
            if let Some(reason) = reason {
                worker.shared().rejected(reason);
            }
            let none = worker.none();
            let (key_id, team) = key.as_ref().map_or_else(
                || (Arc::clone(&none), Arc::clone(&none)),
                |k| (Arc::clone(&k.id), Arc::clone(&k.team)),
            );
            worker.count_request(route, &none, &none, &key_id, &team, status);
        }
        tracing::info!(
            request_id = &*request_id.text,
            client = client.map(tracing::field::display),
            key_id = key.as_ref().map(|k| &*k.id),
            team = key.as_ref().map(|k| &*k.team),
            method = res.request().method().as_str(),
            endpoint = route,
            path = path.chars().take(200).collect::<String>().as_str(),
            status,
            outcome = reason.unwrap_or("answered"),
            duration_ms = crate::telemetry::millis(started.elapsed()),
            error = error.map(|e| e.to_string()),
            "request"
        );
        res
    }
}
