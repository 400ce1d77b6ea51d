//! OpenAI's API (`/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`) relayed to
//! Ollama's own OpenAI-compatible layer or to an OpenAI-compatible upstream: the body as it
//! came but for `model` (and the usage the gateway asks for), the answer as it came but for
//! `model` (put back to the client's name) and the usage chunk the client did not ask for.

use std::borrow::Cow;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use super::headers::{has_media_type, unbuffered};
use super::ollama::with_client_headers;
use super::openai::{self, not_a_stream, status_error};
use super::relay::{Relay, Step, Transform};
use super::{read_body, read_error_body, send_error, unreadable_answer, MAX_ANSWER_BYTES, OLLAMA};
use crate::config::Config;
use crate::error::{GatewayError, UpstreamFault, JSON_UTF8};
use crate::metrics::{self, OllamaTimings, RequestRecord, Tokens};
use crate::translate::openai::Usage;
use crate::translate::v1::{data_span, event_data, Answer, Endpoint, EventSplitter, V1Request};

/// Relays `request` (its raw `body`) to Ollama's `/v1/...` for `endpoint`: the model name
/// unchanged, the answer's bytes too but for a usage chunk only the gateway asked for.
#[allow(clippy::too_many_arguments)]
pub async fn to_ollama(
    client: &awc::Client,
    req: &HttpRequest,
    config: &Config,
    request_id: &str,
    endpoint: Endpoint,
    request: &V1Request<'_>,
    body: Bytes,
    record: RequestRecord,
) -> Result<HttpResponse, GatewayError> {
    let uri = match endpoint {
        Endpoint::Chat => &config.ollama.v1_chat_uri,
        Endpoint::Completions => &config.ollama.v1_completions_uri,
        Endpoint::Embeddings => &config.ollama.v1_embeddings_uri,
    };
    let streams = request.streams() && endpoint.can_stream();
    let inject = streams && !request.asked_usage();
    let body = request.rewrite(None, inject).map_or(body, Bytes::from);
    let timeouts = &config.timeouts;
    let deadline = record.deadline(timeouts.total);
    let upstream_req = with_client_headers(
        client.post(uri.clone()).timeout(timeouts.first_byte),
        config,
        req,
        request_id,
    );
    let mut resp = match upstream_req.send_body(body).await {
        Ok(resp) => resp,
        Err(e) => return Err(record.fail(send_error(OLLAMA, e, timeouts))),
    };
    let status = resp.status();
    if !status.is_success() {
        let retry_after = resp.headers().get(header::RETRY_AFTER).cloned();
        let body = read_error_body(&mut resp, OLLAMA, deadline, config)
            .await
            .unwrap_or_default();
        let e = status_error(OLLAMA, status, &body, retry_after, &config.scrubber);
        return Err(record.fail(e));
    }
    let answer = Relayed {
        upstream: OLLAMA,
        config,
        deadline,
        streams,
        quoted_model: None,
        drop_usage: inject,
    };
    answer.relay(resp, record).await
}

/// Relays `request` to its OpenAI-compatible upstream for `endpoint`, as `call.model`; the
/// answer's `model` back to the client's name.
pub async fn to_openai(
    client: &awc::Client,
    call: openai::Call<'_>,
    endpoint: Endpoint,
    request: &V1Request<'_>,
    record: RequestRecord,
) -> Result<HttpResponse, GatewayError> {
    let up = call.upstream;
    let uri = match endpoint {
        Endpoint::Chat => &up.chat_uri,
        Endpoint::Completions => &up.completions_uri,
        Endpoint::Embeddings => &up.embeddings_uri,
    };
    let streams = request.streams() && endpoint.can_stream();
    // An upstream that refuses `stream_options` (stream_usage = false) is not asked.
    let inject = streams && !request.asked_usage() && up.stream_usage;
    let body = request
        .rewrite(Some(call.model), inject)
        .unwrap_or_default();
    let accept = if streams {
        "text/event-stream"
    } else {
        "application/json"
    };
    let deadline = Instant::from_std(call.started) + call.config.timeouts.total;
    let resp = match openai::send(client, &call, uri, body, accept, deadline).await {
        Ok((resp, _)) => resp,
        Err(e) => return Err(record.fail(e)),
    };
    let answer = Relayed {
        upstream: &up.name,
        config: call.config,
        deadline,
        streams,
        quoted_model: Some(serde_json::to_vec(request.model()).unwrap_or_default()),
        drop_usage: inject,
    };
    answer.relay(resp, record).await
}

/// How a 2xx answer goes back to the client.
struct Relayed<'a> {
    upstream: &'a str,
    config: &'a Config,
    deadline: Instant,
    streams: bool,
    /// The client's model name as a JSON string, to put in every answer object.
    quoted_model: Option<Vec<u8>>,
    /// The usage chunk was the gateway's idea: not passed on.
    drop_usage: bool,
}

impl Relayed<'_> {
    async fn relay(
        self,
        mut resp: awc::ClientResponse,
        record: RequestRecord,
    ) -> Result<HttpResponse, GatewayError> {
        if self.streams && has_media_type(resp.headers(), "text/event-stream") {
            let events = Events {
                splitter: EventSplitter::new(self.config.upstream.max_stream_line_bytes),
                edit: Edit {
                    upstream: self.upstream.to_string(),
                    quoted_model: self.quoted_model,
                    drop_usage: self.drop_usage,
                    usage: Usage::default(),
                    chunks: 0,
                },
            };
            let relay = Relay::new(
                resp,
                events,
                self.upstream.to_string(),
                self.config,
                self.deadline,
                Some(record),
            );
            return Ok(unbuffered(
                HttpResponse::Ok().insert_header((header::CONTENT_TYPE, "text/event-stream")),
            )
            .streaming(relay));
        }
        if self.streams {
            let e = not_a_stream(&mut resp, self.upstream, self.deadline, self.config).await;
            return Err(record.fail(e));
        }
        let timeouts = &self.config.timeouts;
        let body = match read_body(
            &mut resp,
            self.upstream,
            MAX_ANSWER_BYTES,
            self.deadline,
            timeouts,
        )
        .await
        {
            Ok(body) => body,
            Err(e) => return Err(record.fail(e)),
        };
        let answer = match Answer::read(&body) {
            Ok(answer) => answer,
            Err(e) => {
                let detail = format!("the answer is not a JSON object ({e})");
                let scrubber = &self.config.scrubber;
                return Err(record.fail(unreadable_answer(self.upstream, &body, detail, scrubber)));
            }
        };
        let usage = answer.usage.unwrap_or_default();
        let body = match answer.rewrite(&body, self.quoted_model.as_deref(), false) {
            Some(edited) => Bytes::from(edited),
            None => body,
        };
        record.finish(200, tokens(usage), None, &metrics::Ending::Complete);
        Ok(HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, JSON_UTF8))
            .body(body))
    }
}

fn tokens(usage: Usage) -> Tokens {
    Tokens {
        prompt: usage.prompt_tokens,
        completion: usage.completion_tokens,
    }
}

/// The SSE relay: upstream events in, the client's events out.
struct Events {
    splitter: EventSplitter,
    edit: Edit,
}

/// What is done to each event, and the usage read from them.
struct Edit {
    upstream: String,
    quoted_model: Option<Vec<u8>>,
    drop_usage: bool,
    usage: Usage,
    /// Answer chunks seen (about one token each).
    chunks: u64,
}

/// Whether a chunk carries generated text (a token, about): a non-empty `content`, `text`
/// (completions) or `reasoning_content`, or a tool call; not the role chunk OpenAI opens
/// with, nor the finish chunk.
fn carries_text(data: &[u8]) -> bool {
    let non_empty = |name: &[u8]| {
        memchr::memmem::find_iter(data, name).any(|at| data.get(at + name.len()) != Some(&b'"'))
    };
    non_empty(b"\"content\":\"")
        || non_empty(b"\"text\":\"")
        || non_empty(b"\"reasoning_content\":\"")
        || memchr::memmem::find(data, b"\"tool_calls\":[{").is_some()
}

/// How a stream ended, as one of its events says.
enum End {
    /// `data: [DONE]`.
    Done,
    /// The upstream's own error event, relayed.
    UpstreamError,
    /// An event the gateway cannot read.
    Garbled(String),
}

/// The client's bytes of one upstream chunk: the upstream's own when at most one event
/// passes untouched, else copied together.
#[derive(Default)]
struct Out {
    first: Option<Bytes>,
    more: BytesMut,
}

impl Out {
    fn spill(&mut self) {
        if let Some(first) = self.first.take() {
            self.more.extend_from_slice(&first);
        }
    }

    fn keep(&mut self, event: Bytes) {
        if self.first.is_none() && self.more.is_empty() {
            self.first = Some(event);
        } else {
            self.spill();
            self.more.extend_from_slice(&event);
        }
    }

    fn write(&mut self, parts: [&[u8]; 3]) {
        self.spill();
        for part in parts {
            self.more.extend_from_slice(part);
        }
    }

    fn take(mut self) -> Option<Bytes> {
        if self.more.is_empty() {
            self.first.take()
        } else {
            self.spill();
            Some(self.more.freeze())
        }
    }
}

impl Edit {
    /// Passes on, edits or drops one event; `Some` when the stream ends with it.
    fn event(&mut self, event: Bytes, out: &mut Out) -> Option<End> {
        let Some(data) = event_data(&event) else {
            // A comment or keep-alive.
            out.keep(event);
            return None;
        };
        if data.trim_ascii() == b"[DONE]" {
            out.keep(event);
            return Some(End::Done);
        }
        let answer = match Answer::read(&data) {
            Ok(answer) => answer,
            Err(e) => {
                return Some(End::Garbled(format!(
                    "upstream {} sent an event that is not a JSON object ({e})",
                    self.upstream
                )))
            }
        };
        if answer.is_error {
            out.keep(event);
            return Some(End::UpstreamError);
        }
        if let Some(usage) = answer.usage {
            self.usage = usage;
        }
        if answer.usage_only {
            if self.drop_usage {
                return None;
            }
        } else if carries_text(&data) {
            self.chunks += 1;
        }
        match answer.rewrite(&data, self.quoted_model.as_deref(), self.drop_usage) {
            None => out.keep(event),
            Some(edited) => match &data {
                Cow::Borrowed(d) => {
                    let at = data_span(&event, d);
                    out.write([&event[..at.start], &edited, &event[at.end..]]);
                }
                Cow::Owned(_) => out.write([b"data: ", &edited, b"\n\n"]),
            },
        }
        None
    }
}

impl Transform for Events {
    fn chunk(&mut self, chunk: Bytes) -> Step {
        let mut out = Out::default();
        let mut end = None;
        let edit = &mut self.edit;
        let pushed = self.splitter.push(chunk, |event| {
            end = edit.event(event, &mut out);
            end.is_none()
        });
        let forward = out.take();
        let upstream = &self.edit.upstream;
        match (pushed, end) {
            (_, Some(End::Done)) => Step::Finish(forward),
            (_, Some(End::UpstreamError)) => Step::Relayed {
                forward,
                fault: UpstreamFault::MidStream,
                message: format!("upstream {upstream} reported an error in the stream"),
            },
            (_, Some(End::Garbled(message))) => Step::Fail {
                forward,
                fault: UpstreamFault::Protocol,
                message,
            },
            (Err(too_large), None) => Step::Fail {
                forward,
                fault: UpstreamFault::TooLarge,
                message: format!(
                    "upstream {upstream} sent a stream event larger than the limit of {} bytes (upstream.max_stream_line_bytes)",
                    too_large.limit
                ),
            },
            (Ok(()), None) => Step::Forward(forward),
        }
    }

    fn eof(&mut self) -> Step {
        // Ended without `[DONE]`: the relay reports it as cut short.
        self.splitter.finish();
        Step::Forward(None)
    }

    fn report(&self) -> (Tokens, Option<OllamaTimings>) {
        (tokens(self.edit.usage), None)
    }

    fn generated(&self) -> u64 {
        self.edit.chunks
    }

    fn failure(&self, message: &str) -> Vec<u8> {
        crate::error::openai_stream_error(message).to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(quoted_model: Option<&str>, drop_usage: bool) -> Events {
        Events {
            splitter: EventSplitter::new(1024),
            edit: Edit {
                upstream: "up".into(),
                quoted_model: quoted_model.map(|m| m.as_bytes().to_vec()),
                drop_usage,
                usage: Usage::default(),
                chunks: 0,
            },
        }
    }

    /// The client's bytes for `stream` fed in pieces of `split`, and whether it finished.
    fn relay(t: &mut Events, stream: &[u8], split: usize) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        for piece in stream.chunks(split) {
            match t.chunk(Bytes::copy_from_slice(piece)) {
                Step::Forward(b) => out.extend_from_slice(&b.unwrap_or_default()),
                Step::Finish(b) => {
                    out.extend_from_slice(&b.unwrap_or_default());
                    return (out, true);
                }
                _ => panic!("the stream failed"),
            }
        }
        (out, false)
    }

    const OPENAI: &[u8] = b"data: {\"id\":\"1\",\"model\":\"gpt-4o\",\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\n\
: keep-alive\n\n\
data: {\"id\":\"1\",\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":3}}\n\n\
data: [DONE]\n\n";

    #[test]
    fn the_model_is_put_back_and_the_usage_chunk_dropped_at_every_split() {
        for split in 1..=OPENAI.len() {
            let mut t = events(Some("\"openai/gpt-4o\""), true);
            let (out, done) = relay(&mut t, OPENAI, split);
            assert!(done, "split {split}");
            assert_eq!(
                String::from_utf8(out).unwrap(),
                "data: {\"id\":\"1\",\"model\":\"openai/gpt-4o\",\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n: keep-alive\n\ndata: [DONE]\n\n",
                "split {split}"
            );
            assert_eq!(t.report().0.completion, 3);
        }
    }

    #[test]
    fn untouched_events_are_the_upstreams_own_bytes() {
        let mut t = events(None, false);
        let (out, done) = relay(&mut t, OPENAI, OPENAI.len());
        assert!(done);
        assert_eq!(out, OPENAI);
        assert_eq!(t.report().0.prompt, 2);
    }

    #[test]
    fn an_upstream_error_event_is_relayed_and_fails_the_stream() {
        let mut t = events(None, true);
        let step = t.chunk(Bytes::from_static(
            b"data: {\"error\":{\"message\":\"boom\"}}\n\n",
        ));
        assert!(
            matches!(step, Step::Relayed { forward: Some(b), .. } if &b[..] == b"data: {\"error\":{\"message\":\"boom\"}}\n\n")
        );
        let bad = events(None, true).chunk(Bytes::from_static(b"data: nope\n\n"));
        assert!(matches!(
            bad,
            Step::Fail {
                fault: UpstreamFault::Protocol,
                ..
            }
        ));
    }
}
