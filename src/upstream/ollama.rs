//! The Ollama upstream: the request body goes as is; answers come back unchanged, streams
//! line by line as they arrive.

use std::sync::Arc;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpMessage as _, HttpRequest, HttpResponse, HttpResponseBuilder};
use bytes::Bytes;
use tokio::time::Instant;

use super::headers::{
    downstream_response_headers, has_media_type, unbuffered, upstream_request_headers,
};
use super::relay::{Relay, Step, Transform};
use super::{read_body, read_error_body, send_error, unreadable_answer, MAX_ANSWER_BYTES, OLLAMA};
use crate::config::Config;
use crate::error::{GatewayError, UpstreamFault};
use crate::metrics::{self, OllamaTimings, RequestRecord, Tokens};
use crate::middleware::context::RequestContext;
use crate::telemetry::X_REQUEST_ID;
use crate::translate::ndjson::{DoneCounts, Ending, LineTooLong, NdjsonRelay};

/// Sends `body` to `uri`, one of Ollama's model endpoints (`/api/chat`, `/api/generate`,
/// `/api/embed`, ...), and relays the answer. Every one of them ends a stream with a
/// `done` line (or an `{"error"}` line) and reports its counts there, or in its whole
/// answer; the legacy `/api/embeddings` reports none.
pub async fn forward(
    client: &awc::Client,
    config: &Config,
    req: &HttpRequest,
    uri: &awc::http::Uri,
    body: Bytes,
    request_id: Arc<str>,
    record: RequestRecord,
) -> Result<HttpResponse, GatewayError> {
    let timeouts = &config.timeouts;
    let deadline = record.deadline(timeouts.total);
    let upstream_req = with_client_headers(
        client.post(uri.clone()).timeout(timeouts.first_byte),
        config,
        req,
        &request_id,
    );
    let resp = match upstream_req.send_body(body).await {
        Ok(resp) => resp,
        Err(e) => return Err(record.fail(send_error(OLLAMA, e, timeouts))),
    };
    let (mut resp, record) =
        match streamed(resp, NdjsonRelay::with_max_line, config, deadline, record) {
            Answer::Streamed(streamed) => return Ok(streamed),
            Answer::Whole(resp, record) => (resp, record),
        };
    let (mut builder, status, body) = match whole(&mut resp, config, deadline).await {
        Ok(whole) => whole,
        Err(e) => return Err(record.fail(e)),
    };
    let counts: DoneCounts = if status.is_success() {
        match serde_json::from_slice(&body) {
            Ok(counts) => counts,
            Err(e) => {
                let detail = format!("the answer is not a JSON object ({e})");
                return Err(record.fail(unreadable_answer(
                    OLLAMA,
                    &body,
                    detail,
                    &config.scrubber,
                )));
            }
        }
    } else {
        DoneCounts::default()
    };
    let (tokens, timings) = report(counts);
    record.finish(
        status.as_u16(),
        tokens,
        Some(timings),
        &metrics::Ending::Complete,
    );
    Ok(builder.body(body))
}

/// Ollama's answer, once its head is in.
pub(super) enum Answer {
    /// A 2xx NDJSON stream, relayed line by line; its record ends with it.
    Streamed(HttpResponse),
    /// Any other answer, with its record, for the caller to read [`whole`].
    Whole(awc::ClientResponse, RequestRecord),
}

/// Relays a 2xx NDJSON answer through the relay `lines` makes (given
/// `upstream.max_stream_line_bytes`) as it arrives; the record ends with it. Not async, so
/// that the caller's future holds no state of its own across the read of any other answer.
pub(super) fn streamed(
    resp: awc::ClientResponse,
    lines: fn(usize) -> NdjsonRelay,
    config: &Config,
    deadline: Instant,
    record: RequestRecord,
) -> Answer {
    let status = resp.status();
    if !(status.is_success() && has_media_type(resp.headers(), "application/x-ndjson")) {
        return Answer::Whole(resp, record);
    }
    let mut builder = relayed_headers(status, resp.headers());
    unbuffered(&mut builder);
    let relay = Relay::new(
        resp,
        OllamaLines(lines(config.upstream.max_stream_line_bytes)),
        OLLAMA.to_string(),
        config,
        deadline,
        Some(record),
    );
    Answer::Streamed(builder.streaming(relay))
}

/// Reads an answer that is not a stream whole: Ollama writes those in one piece, so
/// buffering them costs nothing and lets a broken answer become a 502 instead of a
/// truncated 200. Its status, the client's response with Ollama's headers, and the body.
pub(super) async fn whole(
    resp: &mut awc::ClientResponse,
    config: &Config,
    deadline: Instant,
) -> Result<(HttpResponseBuilder, StatusCode, Bytes), GatewayError> {
    let status = resp.status();
    let body = if status.is_success() {
        read_body(resp, OLLAMA, MAX_ANSWER_BYTES, deadline, &config.timeouts).await?
    } else {
        match read_error_body(resp, OLLAMA, deadline, config).await {
            Ok(body) => body,
            Err(GatewayError::UpstreamTooLarge { limit, .. }) => {
                return Err(super::error_body_too_large(OLLAMA, status, limit))
            }
            Err(e) => return Err(e),
        }
    };
    Ok((relayed_headers(status, resp.headers()), status, body))
}

/// The client's response with `status` and the upstream's headers that may go back.
fn relayed_headers(status: StatusCode, upstream: &header::HeaderMap) -> HttpResponseBuilder {
    let mut builder = HttpResponse::build(status);
    for (name, value) in downstream_response_headers(upstream) {
        builder.append_header((name.clone(), value.clone()));
    }
    builder
}

/// `upstream_req` with the client's headers that may go to Ollama, the request id, and
/// Ollama's `Host` (made once, see `config::host_header`).
pub(super) fn with_client_headers(
    mut upstream_req: awc::ClientRequest,
    config: &Config,
    req: &HttpRequest,
    request_id: &str,
) -> awc::ClientRequest {
    upstream_req
        .headers_mut()
        .insert(header::HOST, config.ollama.host.clone());
    for (name, value) in upstream_request_headers(req.headers()) {
        upstream_req
            .headers_mut()
            .append(name.clone(), value.clone());
    }
    // The edge's header value of the id (shared), else one made of `request_id`.
    let id = RequestContext::of(&req.extensions())
        .and_then(|c| c.id.header.clone())
        .or_else(|| HeaderValue::from_str(request_id).ok());
    if let Some(id) = id {
        upstream_req.headers_mut().insert(X_REQUEST_ID, id);
    }
    upstream_req
}

fn report(c: DoneCounts) -> (Tokens, OllamaTimings) {
    (
        Tokens {
            prompt: c.prompt_eval_count,
            completion: c.eval_count,
        },
        OllamaTimings {
            load_duration: c.load_duration,
            eval_count: c.eval_count,
            eval_duration: c.eval_duration,
        },
    )
}

/// Relays NDJSON lines and checks that the stream really finished (as its relay knows a
/// finished stream: a `done` line, or a progress stream's `success`).
struct OllamaLines(NdjsonRelay);

impl Transform for OllamaLines {
    fn chunk(&mut self, chunk: Bytes) -> Step {
        let (lines, too_long) = match self.0.push(chunk) {
            Ok(lines) => (lines, false),
            Err(LineTooLong { before }) => (before, true),
        };
        match self.0.ending() {
            // The answer is complete at its `done` line: whatever the connection does next
            // (Ollama's chunked terminator, or a reset, or more bytes) is not the client's
            // business.
            Ending::Done(_) | Ending::UpstreamError => self.end(lines),
            Ending::Truncated if too_long => Step::Fail {
                forward: lines,
                fault: UpstreamFault::TooLarge,
                message: format!(
                    "upstream {OLLAMA} sent a stream line longer than the limit of {} bytes (upstream.max_stream_line_bytes)",
                    self.0.max_line()
                ),
            },
            Ending::Truncated => Step::Forward(lines),
        }
    }

    fn report(&self) -> (Tokens, Option<OllamaTimings>) {
        let counts = match self.0.ending() {
            Ending::Done(counts) => counts,
            Ending::UpstreamError | Ending::Truncated => DoneCounts::default(),
        };
        let (tokens, timings) = report(counts);
        (tokens, Some(timings))
    }

    fn eof(&mut self) -> Step {
        let rest = self.0.finish();
        self.end(rest)
    }

    fn generated(&self) -> u64 {
        self.0.chunks()
    }
}

impl OllamaLines {
    /// The step that ends the answer after `rest`, as its last lines say.
    fn end(&self, rest: Option<Bytes>) -> Step {
        match self.0.ending() {
            Ending::Done(_) => Step::Finish(rest),
            // Ollama reported its own failure in a last {"error"} line, already relayed.
            Ending::UpstreamError => Step::Relayed {
                forward: rest,
                fault: UpstreamFault::MidStream,
                message: format!("upstream {OLLAMA} reported an error in the stream"),
            },
            Ending::Truncated => Step::Fail {
                forward: rest,
                fault: UpstreamFault::Truncated,
                message: format!("upstream {OLLAMA} closed the stream before it finished"),
            },
        }
    }
}
