//! OpenAI-compatible upstreams: the request is translated to Chat Completions (a generate
//! request as the chat it stands for), the answer (JSON or SSE) back to Ollama's shape;
//! embeddings go to `{base_url}/embeddings` (see `embed`).

mod embed;

use std::sync::Arc;
use std::time::Instant as StdInstant;

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use bytes::Bytes;
use serde::Deserialize;
use tokio::time::Instant;

pub use self::embed::embed;
use super::headers::{has_media_type, unbuffered};
use super::relay::{Relay, Step, Transform};
use super::{read_body, read_error_body, send_error, unreadable_answer, MAX_ANSWER_BYTES};
use crate::config::{Config, OpenAiConfig};
use crate::error::{GatewayError, UpstreamFault, JSON_UTF8};
use crate::metrics::{self, OllamaTimings, RequestRecord, Tokens};
use crate::secret::Scrubber;
use crate::telemetry::X_REQUEST_ID;
use crate::translate::generate::{load_answer, AsChat};
use crate::translate::ollama::{ChatRequest, Shape, Timing};
use crate::translate::openai::{
    from_openai_response, to_openai_request, Progress, RequestShape, SseToNdjson, StreamError,
    Translated, UpstreamErrorBody,
};

const USER_AGENT: &str = concat!("ollama-gateway/", env!("CARGO_PKG_VERSION"));

/// Everything one OpenAI request needs besides the client and what it asks.
pub struct Call<'a> {
    pub upstream: &'a OpenAiConfig,
    pub config: &'a Config,
    /// The model without the upstream's prefix.
    pub model: &'a str,
    /// When the gateway received the request (durations are measured from here).
    pub started: StdInstant,
    pub request_id: Arc<str>,
}

/// `req` with the upstream's key as `Authorization: Bearer` (marked sensitive), if it has one.
pub(super) fn with_key(req: awc::ClientRequest, up: &OpenAiConfig) -> awc::ClientRequest {
    if up.api_key.is_empty() {
        return req;
    }
    match HeaderValue::try_from(format!("Bearer {}", up.api_key.expose())) {
        Ok(mut value) => {
            value.set_sensitive(true);
            req.insert_header((header::AUTHORIZATION, value))
        }
        Err(_) => req,
    }
}

/// The upstream's answer to a request sent, and when its head arrived.
pub(super) type Answer = (awc::ClientResponse, StdInstant);

/// Sends `body` to `uri` of the call's upstream with its credentials, asking for
/// `accept`. An error status becomes the client's error (see `status_error`); an upstream
/// that needs a key and has none is not contacted at all.
pub(super) async fn send(
    client: &awc::Client,
    call: &Call<'_>,
    uri: &awc::http::Uri,
    body: Vec<u8>,
    accept: &'static str,
    deadline: Instant,
) -> Result<Answer, GatewayError> {
    let up = call.upstream;
    if up.requires_api_key && up.api_key.is_empty() {
        // Never send a prompt to a paid API without credentials.
        return Err(GatewayError::UpstreamNoKey {
            upstream: up.name.clone(),
            env: crate::config::api_key_env(&up.name),
        });
    }
    let timeouts = &call.config.timeouts;
    let mut req = client
        .post(uri.clone())
        .timeout(timeouts.first_byte)
        // Made once (`config::host_header`), not formatted again by awc for each request.
        .insert_header((header::HOST, up.host.clone()))
        .insert_header((header::CONTENT_TYPE, "application/json"))
        .insert_header((header::ACCEPT, accept))
        .insert_header((header::USER_AGENT, USER_AGENT))
        .insert_header((X_REQUEST_ID, &*call.request_id));
    req = with_key(req, up);
    let mut resp = req
        .send_body(body)
        .await
        .map_err(|e| send_error(&up.name, e, timeouts))?;
    let answered = StdInstant::now();
    let status = resp.status();
    if !status.is_success() {
        let retry_after = resp.headers().get(header::RETRY_AFTER).cloned();
        // The status says what happened even when its body cannot be read.
        let body = read_error_body(&mut resp, &up.name, deadline, call.config)
            .await
            .unwrap_or_default();
        return Err(status_error(
            &up.name,
            status,
            &body,
            retry_after,
            &call.config.scrubber,
        ));
    }
    Ok((resp, answered))
}

/// `/api/generate` to an OpenAI-compatible upstream: refused (400) when it sets a field
/// Chat Completions cannot express; answered at once, without the upstream, when it
/// generates nothing (Ollama's load and unload: an API has nothing to load); else sent as
/// the chat it stands for, its answer in `/api/generate`'s shape.
pub async fn generate(
    client: &awc::Client,
    call: Call<'_>,
    generate: &AsChat<'_>,
    record: RequestRecord,
) -> Result<HttpResponse, GatewayError> {
    if let Some(field) = generate.unsupported {
        return Err(record.fail(GatewayError::InvalidField(format!(
            "{field:?} is not supported for the models of upstream {}: Chat Completions has no equivalent; send the request without it",
            call.upstream.name
        ))));
    }
    if let Some(done_reason) = generate.load {
        record.answered_locally();
        return Ok(json_answer(load_answer(generate.chat.model(), done_reason)));
    }
    forward(client, call, &generate.chat, Shape::Generate, record).await
}

/// Translates and sends a chat; answers in Ollama's `shape`.
pub async fn forward(
    client: &awc::Client,
    call: Call<'_>,
    chat: &ChatRequest<'_>,
    shape: Shape,
    record: RequestRecord,
) -> Result<HttpResponse, GatewayError> {
    let up = call.upstream;
    let timeouts = &call.config.timeouts;
    let stream = chat.streams();
    let request_shape = RequestShape {
        stream_usage: up.stream_usage,
        max_tokens_param: up.max_tokens_param,
    };
    let body = match to_openai_request(chat, call.model, request_shape) {
        Ok(body) => body,
        Err(e) => return Err(record.fail(e)),
    };
    let deadline = record.deadline(timeouts.total);
    let accept = if stream {
        "text/event-stream"
    } else {
        "application/json"
    };
    let (mut resp, answered) = match send(client, &call, &up.chat_uri, body, accept, deadline).await
    {
        Ok(answer) => answer,
        Err(e) => return Err(record.fail(e)),
    };
    let client_model = chat.model();
    if stream && has_media_type(resp.headers(), "text/event-stream") {
        let relay = Relay::new(
            resp,
            SseTransform {
                inner: SseToNdjson::with_max(
                    shape,
                    client_model,
                    call.started,
                    call.config.upstream.max_stream_line_bytes,
                ),
                upstream: up.name.clone(),
                lines: 0,
            },
            up.name.clone(),
            call.config,
            deadline,
            Some(record),
        );
        return Ok(unbuffered(
            HttpResponse::Ok().insert_header((header::CONTENT_TYPE, "application/x-ndjson")),
        )
        .streaming(relay));
    }
    if stream {
        // Asked for a stream, got something else (an upstream that ignores `stream`, an
        // error object with a 200, or garbage): the upstream broke the protocol.
        let error = not_a_stream(&mut resp, &up.name, deadline, call.config).await;
        return Err(record.fail(error));
    }
    whole_answer(&mut resp, &call, deadline, record, |body| {
        let timing = Timing {
            started: call.started,
            first: Some(answered),
            last: Some(StdInstant::now()),
        };
        from_openai_response(body, shape, chat.model(), timing)
    })
    .await
}

/// A whole answer in Ollama's JSON.
fn json_answer(body: Vec<u8>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, JSON_UTF8))
        .body(body)
}

/// Reads the upstream's whole answer and `translate`s it; one it cannot read is the
/// upstream's fault (502, its text scrubbed). Records the tokens the upstream reported.
async fn whole_answer(
    resp: &mut awc::ClientResponse,
    call: &Call<'_>,
    deadline: Instant,
    record: RequestRecord,
    translate: impl FnOnce(&[u8]) -> Result<Translated, String>,
) -> Result<HttpResponse, GatewayError> {
    let up = call.upstream;
    let timeouts = &call.config.timeouts;
    let body = match read_body(resp, &up.name, MAX_ANSWER_BYTES, deadline, timeouts).await {
        Ok(body) => body,
        Err(e) => return Err(record.fail(e)),
    };
    let translated = match translate(&body) {
        Ok(t) => t,
        Err(detail) => {
            let scrubber = &call.config.scrubber;
            return Err(record.fail(unreadable_answer(&up.name, &body, detail, scrubber)));
        }
    };
    let tokens = Tokens {
        prompt: translated.usage.prompt_tokens,
        completion: translated.usage.completion_tokens,
    };
    record.finish(200, tokens, None, &metrics::Ending::Complete);
    Ok(json_answer(translated.body))
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: UpstreamErrorBody,
}

/// The upstream's own message in an OpenAI error body, if it is one, scrubbed once decoded
/// (the body was scrubbed as bytes; a decoded string is checked again, before it is cut
/// short, so that no part of a key survives either) and at most 500 characters long.
fn upstream_message(body: &[u8], scrubber: &Scrubber) -> Option<String> {
    let envelope = serde_json::from_slice::<ErrorEnvelope>(body).ok()?;
    let message = scrubber.scrub(envelope.error.message());
    Some(message.chars().take(500).collect())
}

/// The error for a 2xx that is not the event stream asked for: its content type in words,
/// and the upstream's message when the body is an OpenAI error object.
pub(super) async fn not_a_stream<S>(
    resp: &mut awc::ClientResponse<S>,
    upstream: &str,
    deadline: Instant,
    config: &Config,
) -> GatewayError
where
    S: futures_util::Stream<Item = Result<Bytes, awc::error::PayloadError>> + Unpin,
{
    let media_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()))
        .and_then(|v| v.split(';').next().map(|t| t.trim().to_string()))
        .filter(|t| !t.is_empty());
    let got = match media_type {
        Some(t) => config.scrubber.scrub_string(t.chars().take(100).collect()),
        None => "a body without a Content-Type".into(),
    };
    let what = format!("it answered a streamed request with {got} instead of an event stream");
    let detail = match read_error_body(resp, upstream, deadline, config).await {
        Ok(body) => match upstream_message(&body, &config.scrubber) {
            Some(message) => format!("{what}; its message: {message}"),
            None => what,
        },
        // Such a body is read only for its message, as an error body is.
        Err(GatewayError::UpstreamTooLarge { limit, .. }) => {
            format!("{what}, of more than the {limit} bytes the gateway reads of one")
        }
        Err(e) => return e,
    };
    GatewayError::UpstreamProtocol {
        upstream: upstream.to_string(),
        detail,
    }
}

/// Maps an upstream error status to what the client sees (PROTOCOLS.md 6.5).
///
/// A 401/403 means the gateway's own upstream key was refused: that is not the client's
/// fault, so it becomes 502, and the upstream's text (which may quote part of the key) is
/// not passed on.
pub(super) fn status_error(
    upstream: &str,
    status: StatusCode,
    body: &[u8],
    retry_after: Option<HeaderValue>,
    scrubber: &Scrubber,
) -> GatewayError {
    let upstream_message = upstream_message(body, scrubber);
    let describe = |fallback: &str| {
        let text = upstream_message.as_deref().unwrap_or(fallback);
        format!("upstream {upstream}: {text}")
    };
    let reason = status.canonical_reason().unwrap_or("error");
    let (status, message, retry_after) = match status.as_u16() {
        401 | 403 => (
            StatusCode::BAD_GATEWAY,
            format!(
                "upstream {upstream} refused the gateway's credentials ({}); check its api_key",
                status.as_u16()
            ),
            None,
        ),
        408 | 504 => (StatusCode::GATEWAY_TIMEOUT, describe(reason), None),
        429 | 503 => (status, describe(reason), retry_after),
        400..=499 => (status, describe(reason), None),
        _ => (StatusCode::BAD_GATEWAY, describe(reason), None),
    };
    GatewayError::UpstreamStatus {
        upstream: upstream.to_string(),
        status,
        message,
        retry_after,
    }
}

/// SSE in, NDJSON out.
struct SseTransform {
    inner: SseToNdjson,
    upstream: String,
    /// Content lines written (about one token each).
    lines: u64,
}

impl SseTransform {
    fn step(&self, out: Vec<u8>, result: Result<Progress, StreamError>) -> Step {
        let forward = (!out.is_empty()).then(|| Bytes::from(out));
        match result {
            Ok(Progress::Open) => Step::Forward(forward),
            Ok(Progress::Done) => Step::Finish(forward),
            Err(e) => {
                let (fault, message) = match e {
                    StreamError::Upstream(m) => (
                        UpstreamFault::MidStream,
                        format!("upstream {}: {m}", self.upstream),
                    ),
                    StreamError::Protocol(m) => (
                        UpstreamFault::Protocol,
                        format!("upstream {} sent an invalid stream: {m}", self.upstream),
                    ),
                    StreamError::TooLarge { limit } => (
                        UpstreamFault::TooLarge,
                        format!(
                            "upstream {} sent a stream event larger than the limit of {limit} bytes (upstream.max_stream_line_bytes)",
                            self.upstream
                        ),
                    ),
                    StreamError::Truncated => (
                        UpstreamFault::Truncated,
                        format!(
                            "upstream {} ended the stream before it finished",
                            self.upstream
                        ),
                    ),
                };
                Step::Fail {
                    forward,
                    fault,
                    message,
                }
            }
        }
    }
}

impl Transform for SseTransform {
    fn report(&self) -> (Tokens, Option<OllamaTimings>) {
        let usage = self.inner.usage();
        (
            Tokens {
                prompt: usage.prompt_tokens,
                completion: usage.completion_tokens,
            },
            None,
        )
    }

    fn chunk(&mut self, chunk: Bytes) -> Step {
        let mut out = Vec::new();
        let result = self.inner.feed(&chunk, &mut out);
        // The content lines (the final line is `"done":true`).
        self.lines += memchr::memmem::find_iter(&out, b"\"done\":false").count() as u64;
        self.step(out, result)
    }

    fn eof(&mut self) -> Step {
        let mut out = Vec::new();
        let result = self.inner.finish(&mut out).map(|()| Progress::Done);
        self.step(out, result)
    }

    fn generated(&self) -> u64 {
        self.lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_mapping() {
        let none = Scrubber::default();
        let body = br#"{"error":{"message":"Incorrect API key provided: sk-abc***xyz","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
        let e = status_error("openai", StatusCode::UNAUTHORIZED, body, None, &none);
        let text = e.to_string();
        assert!(!text.contains("sk-"), "{text}");
        assert!(
            matches!(e, GatewayError::UpstreamStatus { status, .. } if status == StatusCode::BAD_GATEWAY)
        );

        let body = br#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
        let e = status_error(
            "openai",
            StatusCode::TOO_MANY_REQUESTS,
            body,
            Some(HeaderValue::from_static("3")),
            &none,
        );
        assert_eq!(e.to_string(), "upstream openai: Rate limit reached");
        assert!(
            matches!(&e, GatewayError::UpstreamStatus { status, retry_after: Some(r), .. } if *status == StatusCode::TOO_MANY_REQUESTS && r == "3")
        );

        let e = status_error(
            "groq",
            StatusCode::NOT_FOUND,
            br#"{"error":{"message":"The model `x` does not exist"}}"#,
            None,
            &none,
        );
        assert!(
            matches!(e, GatewayError::UpstreamStatus { status, .. } if status == StatusCode::NOT_FOUND)
        );
        let e = status_error(
            "groq",
            StatusCode::INTERNAL_SERVER_ERROR,
            b"<html>oops</html>",
            None,
            &none,
        );
        assert_eq!(e.to_string(), "upstream groq: Internal Server Error");
        assert!(
            matches!(e, GatewayError::UpstreamStatus { status, .. } if status == StatusCode::BAD_GATEWAY)
        );
        // A quoted key is scrubbed once decoded, and before the message is cut to 500
        // characters, so not even its first characters are left.
        let keys = [crate::secret::Secret::new("sk-abc/def+ghi123")];
        let scrubber = Scrubber::new(&keys);
        let body = format!(
            r#"{{"error":{{"message":"{} sk-abc\/def+ghi123"}}}}"#,
            "x".repeat(490)
        );
        let e = status_error(
            "groq",
            StatusCode::BAD_REQUEST,
            body.as_bytes(),
            None,
            &scrubber,
        );
        let text = e.to_string();
        assert!(!text.contains("sk-"), "{text}");
        assert!(text.ends_with(" [redacted"), "{text}");
        let e = status_error("groq", StatusCode::GATEWAY_TIMEOUT, b"", None, &none);
        assert!(
            matches!(e, GatewayError::UpstreamStatus { status, .. } if status == StatusCode::GATEWAY_TIMEOUT)
        );
    }
}
