//! `/api/embed` and `/api/embeddings` to an OpenAI-compatible upstream's `/embeddings`.

use actix_web::HttpResponse;

use super::{json_answer, send, whole_answer, Call};
use crate::error::GatewayError;
use crate::metrics::RequestRecord;
use crate::translate::embed::{empty_answer, from_openai_embeddings, EmbedRequest, Endpoint};

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
    let input = match req.input(endpoint) {
        Ok(Some(input)) => input,
        Ok(None) => {
            record.answered_locally();
            return Ok(json_answer(empty_answer(endpoint, req.model())));
        }
        Err(e) => return Err(record.fail(e)),
    };
    let deadline = record.deadline(call.config.timeouts.total);
    let body = req.to_openai(&input, call.model);
    let uri = &call.upstream.embeddings_uri;
    let (mut resp, _) = match send(client, &call, uri, body, "application/json", deadline).await {
        Ok(answer) => answer,
        Err(e) => return Err(record.fail(e)),
    };
    whole_answer(&mut resp, &call, deadline, record, |body| {
        from_openai_embeddings(body, endpoint, req.model(), input.count(), call.started)
    })
    .await
}
