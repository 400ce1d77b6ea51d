//! Small exchanges whose answer is read whole, bounded by `catalog.timeout` (and by
//! `timeouts` where those are shorter): Ollama's version, model list, loaded models and
//! `show`, and an OpenAI-compatible upstream's `GET /models`.

use actix_web::http::header;
use actix_web::http::{Method, StatusCode};
use bytes::Bytes;
use tokio::time::Instant;

use super::openai::{status_error, with_key};
use super::{read_body, read_error_body, send_error, unreadable_answer, MAX_ANSWER_BYTES, OLLAMA};
use crate::catalog::{self, Listed};
use crate::config::{Config, OpenAiConfig, Timeouts};
use crate::error::GatewayError;
use crate::telemetry::X_REQUEST_ID;

/// What Ollama answered: its status and its body (scrubbed when it is an error).
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

/// The gateway's timeouts with every wait capped at `catalog.timeout`.
fn timeouts(config: &Config) -> Timeouts {
    let (t, all) = (config.catalog.timeout, &config.timeouts);
    Timeouts {
        connect: all.connect.min(t),
        first_byte: all.first_byte.min(t),
        idle: all.idle.min(t),
        total: all.total.min(t),
    }
}

/// `method {ollama}{path}` with `body` (JSON) if any; Ollama's error statuses come back as
/// they are, for the caller to relay.
pub async fn ollama(
    client: &awc::Client,
    config: &Config,
    method: Method,
    path: &str,
    body: Option<Bytes>,
    request_id: &str,
) -> Result<Answer, GatewayError> {
    let timeouts = timeouts(config);
    let deadline = Instant::now() + timeouts.total;
    let req = client
        .request(method, format!("{}{path}", config.ollama.base))
        .timeout(timeouts.first_byte)
        .insert_header((header::ACCEPT, "application/json"))
        .insert_header((X_REQUEST_ID, request_id));
    let sent = match body {
        Some(body) => {
            req.insert_header((header::CONTENT_TYPE, "application/json"))
                .send_body(body)
                .await
        }
        None => req.send().await,
    };
    let mut resp = sent.map_err(|e| send_error(OLLAMA, e, &timeouts))?;
    let status = resp.status();
    let body = if status.is_success() {
        read_body(&mut resp, OLLAMA, MAX_ANSWER_BYTES, deadline, &timeouts).await?
    } else {
        read_error_body(&mut resp, OLLAMA, deadline, config).await?
    };
    Ok(Answer { status, body })
}

/// The models `up` serves: its configured `models`, else its `GET {base_url}/models`.
pub async fn openai(
    client: &awc::Client,
    config: &Config,
    up: &OpenAiConfig,
    request_id: &str,
) -> Result<Vec<Listed>, GatewayError> {
    if let Some(models) = &up.models {
        return Ok(catalog::configured(models));
    }
    if up.requires_api_key && up.api_key.is_empty() {
        return Err(GatewayError::UpstreamNoKey {
            upstream: up.name.clone(),
            env: crate::config::api_key_env(&up.name),
        });
    }
    let timeouts = timeouts(config);
    let deadline = Instant::now() + timeouts.total;
    let req = client
        .get(up.models_uri.clone())
        .timeout(timeouts.first_byte)
        .insert_header((header::ACCEPT, "application/json"))
        .insert_header((X_REQUEST_ID, request_id));
    let mut resp = with_key(req, up)
        .send()
        .await
        .map_err(|e| send_error(&up.name, e, &timeouts))?;
    let status = resp.status();
    if !status.is_success() {
        let body = read_error_body(&mut resp, &up.name, deadline, config)
            .await
            .unwrap_or_default();
        return Err(status_error(
            &up.name,
            status,
            &body,
            None,
            &config.scrubber,
        ));
    }
    let body = read_body(&mut resp, &up.name, MAX_ANSWER_BYTES, deadline, &timeouts).await?;
    catalog::parse_openai_models(&body)
        .map_err(|detail| unreadable_answer(&up.name, &body, detail, &config.scrubber))
}
