//! `/api/embed` and `/api/embeddings` to an OpenAI-compatible upstream's `/embeddings`.

use actix_web::http::header;
use actix_web::HttpResponse;
use tokio::time::Instant;

use super::{send, Call};
use crate::error::{GatewayError, JSON_UTF8};
use crate::metrics::{self, RequestRecord, Tokens};
use crate::translate::embed::{empty_answer, from_openai_embeddings, EmbedRequest, Endpoint};
use crate::upstream::{read_body, unreadable_answer, MAX_ANSWER_BYTES};

/// Translates and sends an embedding request; answers in Ollama's shape for `endpoint`,
/// counting the upstream's prompt tokens. Nothing to embed is answered at once, as Ollama
/// answers it (OpenAI refuses an empty input).
pub async fn embed(
    client: &awc::Client,
    call: Call<'_>,
    req: &EmbedRequest<'_>,
    endpoint: Endpoint,
    record: RequestRecord,
) -> Result<HttpResponse, GatewayError> {
    let answer = |body: Vec<u8>| {
        HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, JSON_UTF8))
            .body(body)
    };
    let input = match req.input(endpoint) {
        Ok(Some(input)) => input,
        Ok(None) => {
            record.finish(200, Tokens::default(), None, &metrics::Ending::Complete);
            return Ok(answer(empty_answer(endpoint, req.model())));
        }
        Err(e) => return Err(record.fail(e)),
    };
    let up = call.upstream;
    let timeouts = &call.config.timeouts;
    let deadline = Instant::now() + timeouts.total;
    let body = req.to_openai(&input, call.model);
    let sent = send(
        client,
        &call,
        &up.embeddings_uri,
        body,
        "application/json",
        deadline,
    );
    let (mut resp, _) = match sent.await {
        Ok(answer) => answer,
        Err(e) => return Err(record.fail(e)),
    };
    let body = match read_body(&mut resp, &up.name, MAX_ANSWER_BYTES, deadline, timeouts).await {
        Ok(body) => body,
        Err(e) => return Err(record.fail(e)),
    };
    let translated =
        match from_openai_embeddings(&body, endpoint, req.model(), input.count(), call.started) {
            Ok(t) => t,
            Err(detail) => {
                return Err(record.fail(unreadable_answer(
                    &up.name,
                    &body,
                    detail,
                    &call.config.scrubber,
                )))
            }
        };
    let tokens = Tokens {
        prompt: translated.usage.prompt_tokens,
        completion: 0,
    };
    record.finish(200, tokens, None, &metrics::Ending::Complete);
    Ok(answer(translated.body))
}
