//! Ollama's Anthropic Messages API (`{ollama}/v1/messages`): the request body goes as it
//! came; the answer comes back unchanged, a stream event by event as the events arrive,
//! its token usage read on the way. A stream that fails ends with an `error` event, never
//! with a `message_stop` the upstream did not send.

use std::sync::Arc;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse};
use bytes::Bytes;

use super::headers::{downstream_response_headers, has_media_type, unbuffered};
use super::ollama::with_client_headers;
use super::relay::{Relay, Step, Transform};
use super::{read_body, read_error_body, send_error, unreadable_answer, MAX_ANSWER_BYTES, OLLAMA};
use crate::config::Config;
use crate::error::{GatewayError, UpstreamFault};
use crate::metrics::{Ending, OllamaTimings, RequestRecord, Tokens};
use crate::translate::anthropic::{whole_usage, MessagesEvents, Pushed, Usage};

fn tokens(usage: Usage) -> Tokens {
    Tokens {
        prompt: usage.input,
        completion: usage.output,
    }
}

/// Sends `body` to Ollama's `/v1/messages` and relays the answer: a 2xx event stream as it
/// arrives, anything else read whole (a 2xx answer that is not a message, or not a stream
/// when `streams`, becomes a 502). An error status is relayed with its body when Ollama
/// wrote it in Anthropic's shape; any other error answer (Ollama's own `{"error": ...}`, a
/// proxy's HTML, an Ollama too old to serve `/v1/messages`) becomes the gateway's error, in
/// Anthropic's shape, as on the other routes (401/403 as 502: not the client's key).
pub async fn forward(
    client: &awc::Client,
    config: &Config,
    req: &HttpRequest,
    body: Bytes,
    streams: bool,
    request_id: Arc<str>,
    record: RequestRecord,
) -> Result<HttpResponse, GatewayError> {
    let timeouts = &config.timeouts;
    let deadline = record.deadline(timeouts.total);
    let upstream_req = with_client_headers(
        client
            .post(config.ollama.messages_uri.clone())
            .timeout(timeouts.first_byte),
        config,
        req,
        &request_id,
    );
    let mut resp = match upstream_req.send_body(body).await {
        Ok(resp) => resp,
        Err(e) => return Err(record.fail(send_error(OLLAMA, e, timeouts))),
    };
    let status = resp.status();
    let mut builder = HttpResponse::build(status);
    for (name, value) in downstream_response_headers(resp.headers()) {
        builder.append_header((name.clone(), value.clone()));
    }
    if status.is_success() && has_media_type(resp.headers(), "text/event-stream") {
        unbuffered(&mut builder);
        let events = Events(
            MessagesEvents::with_max(config.upstream.max_stream_line_bytes),
            0,
        );
        let relay = Relay::new(
            resp,
            events,
            OLLAMA.to_string(),
            config,
            deadline,
            Some(record),
        );
        return Ok(builder.streaming(relay));
    }
    if status.is_success() && streams {
        let e = super::openai::not_a_stream(&mut resp, OLLAMA, deadline, config).await;
        return Err(record.fail(e));
    }
    if !status.is_success() {
        let retry_after = resp.headers().get(header::RETRY_AFTER).cloned();
        let body = match read_error_body(&mut resp, OLLAMA, deadline, config).await {
            Ok(body) => body,
            Err(GatewayError::UpstreamTooLarge { limit, .. }) => {
                return Err(record.fail(super::error_body_too_large(OLLAMA, status, limit)))
            }
            Err(e) => return Err(record.fail(e)),
        };
        if !matches!(status.as_u16(), 401 | 403) && in_anthropic_shape(&body) {
            record.finish(status.as_u16(), Tokens::default(), None, &Ending::Complete);
            return Ok(builder.body(body));
        }
        let e = super::openai::status_error(OLLAMA, status, &body, retry_after, &config.scrubber);
        return Err(record.fail(e));
    }
    let body = match read_body(&mut resp, OLLAMA, MAX_ANSWER_BYTES, deadline, timeouts).await {
        Ok(body) => body,
        Err(e) => return Err(record.fail(e)),
    };
    match whole_usage(&body) {
        Ok(usage) => {
            record.finish(status.as_u16(), tokens(usage), None, &Ending::Complete);
            Ok(builder.body(body))
        }
        Err(detail) => Err(record.fail(unreadable_answer(OLLAMA, &body, detail, &config.scrubber))),
    }
}

/// Whether an error answer is Anthropic's `{"type": "error", "error": {"type", "message"}}`.
fn in_anthropic_shape(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|v| {
        v["type"] == "error" && v["error"]["type"].is_string() && v["error"]["message"].is_string()
    })
}

/// Relays whole events and knows when the answer is complete (`message_stop`).
/// The second field counts `content_block_delta` events (about one token each).
struct Events(MessagesEvents, u64);

impl Transform for Events {
    fn chunk(&mut self, chunk: Bytes) -> Step {
        // Each delta event says its type once in its data (a split across reads can miss
        // one: this is an estimate).
        self.1 +=
            memchr::memmem::find_iter(&chunk, b"\"type\":\"content_block_delta\"").count() as u64;
        match self.0.push(chunk) {
            Pushed::More(forward) => Step::Forward(forward),
            Pushed::Stopped(forward) => Step::Finish(forward),
            Pushed::UpstreamError(forward) => Step::Relayed {
                forward,
                fault: UpstreamFault::MidStream,
                message: format!("upstream {OLLAMA} reported an error in the stream"),
            },
            Pushed::Unreadable {
                forward,
                detail,
                too_large,
            } => Step::Fail {
                forward,
                fault: if too_large {
                    UpstreamFault::TooLarge
                } else {
                    UpstreamFault::Protocol
                },
                message: format!("upstream {OLLAMA} {detail}"),
            },
        }
    }

    fn eof(&mut self) -> Step {
        if self.0.finish() {
            Step::Fail {
                forward: None,
                fault: UpstreamFault::Truncated,
                message: format!("upstream {OLLAMA} closed the stream before it finished"),
            }
        } else {
            Step::Finish(None)
        }
    }

    fn report(&self) -> (Tokens, Option<OllamaTimings>) {
        (tokens(self.0.usage()), None)
    }

    fn generated(&self) -> u64 {
        self.1
    }

    fn failure(&self, message: &str) -> Vec<u8> {
        crate::error::anthropic_stream_error(message).to_vec()
    }
}
