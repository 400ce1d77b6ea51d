//! The Ollama upstream: the request body goes as is; answers come back unchanged, streams
//! line by line as they arrive.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse};
use bytes::Bytes;
use tokio::time::Instant;

use super::headers::{downstream_response_headers, upstream_request_headers};
use super::relay::{OnEnd, Relay, Step, Transform};
use super::{read_body, send_error, MAX_ANSWER_BYTES, OLLAMA};
use crate::config::Config;
use crate::error::GatewayError;
use crate::translate::ndjson::{Ending, NdjsonRelay};

/// Sends `body` to Ollama's `/api/chat` and relays the answer.
pub async fn forward(
    client: &awc::Client,
    config: &Config,
    req: &HttpRequest,
    body: Bytes,
    on_end: Option<OnEnd>,
) -> Result<HttpResponse, GatewayError> {
    let timeouts = &config.timeouts;
    let deadline = Instant::now() + timeouts.total;
    let mut upstream_req = client
        .post(&config.ollama.chat_url)
        .timeout(timeouts.first_byte);
    for (name, value) in &upstream_request_headers(req.headers()) {
        upstream_req
            .headers_mut()
            .append(name.clone(), value.clone());
    }
    let mut resp = upstream_req
        .send_body(body)
        .await
        .map_err(|e| send_error(OLLAMA, e, timeouts))?;

    let status = resp.status();
    let headers = downstream_response_headers(resp.headers());
    let mut builder = HttpResponse::build(status);
    for (name, value) in &headers {
        builder.append_header((name.clone(), value.clone()));
    }
    let is_ndjson = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-ndjson"));
    if status.is_success() && is_ndjson {
        builder
            .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-cache")))
            .insert_header(("x-accel-buffering", HeaderValue::from_static("no")));
        let relay = Relay::new(
            resp,
            OllamaLines(NdjsonRelay::new()),
            OLLAMA.to_string(),
            timeouts.idle,
            deadline,
            on_end,
        );
        return Ok(builder.streaming(relay));
    }
    // A whole answer or an error: Ollama writes these in one piece, so buffering them costs
    // nothing and lets a broken answer become a 502 instead of a truncated 200.
    let body = read_body(&mut resp, OLLAMA, MAX_ANSWER_BYTES, deadline).await?;
    Ok(builder.body(body))
}

/// Relays NDJSON lines and checks that the stream really finished.
struct OllamaLines(NdjsonRelay);

impl Transform for OllamaLines {
    fn chunk(&mut self, chunk: Bytes) -> Step {
        Step::Forward(self.0.push(chunk))
    }

    fn eof(&mut self) -> Step {
        let rest = self.0.finish();
        match self.0.ending() {
            Ending::Done(_) | Ending::UpstreamError => Step::Finish(rest),
            Ending::Truncated => Step::Fail {
                forward: rest,
                kind: "truncated",
                message: format!("upstream {OLLAMA} closed the stream before it finished"),
            },
        }
    }
}
