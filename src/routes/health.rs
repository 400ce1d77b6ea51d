//! Liveness, readiness and the metrics exposition: cheap, no key.

use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::{web, HttpResponse};

use crate::config::{Config, Timeouts};
use crate::error::GatewayError;
use crate::error::{json_error, JSON_UTF8};
use crate::state::AppState;
use crate::upstream::{self, OLLAMA};

/// How long a readiness answer is reused, so probes do not hammer Ollama.
const READY_CACHE: Duration = Duration::from_secs(3);
/// Longest the readiness probe waits for Ollama.
const READY_TIMEOUT: Duration = Duration::from_secs(3);

/// `GET /healthz`: the process is up and serving.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(JSON_UTF8)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(r#"{"status":"ok"}"#)
}

/// `GET /readyz`: Ollama answers `GET /api/version`; 503 naming the upstream otherwise.
pub async fn readyz(state: web::Data<AppState>, client: web::Data<awc::Client>) -> HttpResponse {
    let cached = state
        .readiness
        .0
        .lock()
        .ok()
        .and_then(|c| c.clone())
        .filter(|(at, _)| at.elapsed() < READY_CACHE)
        .map(|(_, r)| r);
    let result = match cached {
        Some(r) => r,
        None => {
            let r = probe(&client, &state.config).await;
            if let Ok(mut c) = state.readiness.0.lock() {
                *c = Some((Instant::now(), r.clone()));
            }
            r
        }
    };
    match result {
        Ok(()) => HttpResponse::Ok()
            .content_type(JSON_UTF8)
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .body(r#"{"status":"ready"}"#),
        Err(e) => json_error(&mut HttpResponse::ServiceUnavailable(), &e),
    }
}

async fn probe(client: &awc::Client, config: &Config) -> Result<(), String> {
    let url = &config.ollama.version_url;
    match client.get(url).timeout(READY_TIMEOUT).send().await {
        Ok(mut resp) if resp.status().is_success() => {
            let _ = resp.body().limit(64 * 1024).await;
            Ok(())
        }
        Ok(resp) => Err(format!(
            "upstream {OLLAMA} is not ready: /api/version answered {}",
            resp.status().as_u16()
        )),
        Err(e) => {
            let timeouts = Timeouts {
                first_byte: READY_TIMEOUT,
                ..config.timeouts
            };
            // The error names the upstream already; say only what happened.
            let why = match upstream::send_error(OLLAMA, e, &timeouts) {
                GatewayError::UpstreamConnect { detail, .. }
                | GatewayError::UpstreamTimeout { detail, .. } => detail,
                other => other.to_string(),
            };
            Err(format!("upstream {OLLAMA} is not ready: {why}"))
        }
    }
}

/// `GET /metrics`: the Prometheus text format.
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}
