//! Model management at Ollama (pull, push, create, copy, delete, blobs): the request goes
//! as sent, a JSON body whole and a blob streamed as it arrives; progress streams come back
//! line by line as Ollama writes them, every other answer whole (they are small).

use std::time::Duration;

use actix_web::http::{Method, StatusCode};
use actix_web::{HttpRequest, HttpResponse};
use awc::error::SendRequestError;
use bytes::Bytes;
use tokio::time::Instant;

use super::ollama::{streamed, whole, with_client_headers, Answer};
use super::upload::Upload;
use super::{send_error, took, OLLAMA};
use crate::config::Config;
use crate::error::GatewayError;
use crate::metrics::{self, RequestRecord, Tokens};
use crate::middleware::{DRAIN_LIMIT, DRAIN_TIME};
use crate::translate::ndjson::NdjsonRelay;

/// What goes to Ollama with the request.
pub enum Outgoing {
    /// A JSON body, and how long Ollama may take to begin its answer: a pull that does not
    /// stream answers only when it is over.
    Json { body: Bytes, wait: Duration },
    /// No body (`HEAD /api/blobs/:digest`).
    Nothing,
    /// A blob, streamed; `length` is the client's Content-Length, passed on when given.
    Blob { upload: Upload, length: Option<u64> },
}

/// One management request: `path` (with its digest, for blobs) at Ollama's `base_url`.
pub struct Call<'a> {
    pub method: Method,
    pub path: &'a str,
    pub config: &'a Config,
    pub req: &'a HttpRequest,
    pub request_id: &'a str,
}

/// Sends the request to Ollama and relays its answer; `record` counts and logs it.
pub async fn forward(
    client: &awc::Client,
    call: Call<'_>,
    outgoing: Outgoing,
    record: RequestRecord,
) -> Result<HttpResponse, GatewayError> {
    let Call {
        method,
        path,
        config,
        req,
        request_id,
    } = call;
    let timeouts = &config.timeouts;
    let deadline = Instant::now() + timeouts.total;
    let uri = format!("{}{path}", config.ollama.base);
    let request =
        |method| with_client_headers(client.request(method, &uri), config, req, request_id);
    let upstream_req = request(method);
    let sent = match outgoing {
        Outgoing::Json { body, wait } => upstream_req
            .timeout(wait)
            .send_body(body)
            .await
            .map_err(|e| send_error(OLLAMA, e, timeouts)),
        Outgoing::Nothing => upstream_req
            .timeout(timeouts.first_byte)
            .send()
            .await
            .map_err(|e| send_error(OLLAMA, e, timeouts)),
        Outgoing::Blob { upload, length } => {
            // Ollama answers a blob it already has at once, without reading the body, and
            // then closes the connection: sent anyway, the body would meet a reset. Ask first.
            let exists = request(Method::HEAD)
                .timeout(timeouts.first_byte)
                .send()
                .await;
            match exists.map_err(|e| send_error(OLLAMA, e, timeouts)) {
                Ok(resp) if resp.status() == StatusCode::OK => {
                    crate::body::drain(std::pin::pin!(upload), DRAIN_LIMIT, DRAIN_TIME).await;
                    record.finish(200, Tokens::default(), None, &metrics::Ending::Complete);
                    return Ok(HttpResponse::Ok().finish());
                }
                Ok(_) => send_blob(upstream_req, upload, length, config, deadline).await,
                Err(e) => Err(e),
            }
        }
    };
    let resp = match sent {
        Ok(resp) => resp,
        Err(e) => return Err(record.fail(e)),
    };
    let (mut resp, record) = match streamed(resp, NdjsonRelay::progress, config, deadline, record) {
        Answer::Streamed(streamed) => return Ok(streamed),
        Answer::Whole(resp, record) => (resp, record),
    };
    // Copy, delete and blobs answer with a status and no body, a pull that does not stream
    // with one status line, errors with `{"error"}`: relayed as they are.
    match whole(&mut resp, config, deadline).await {
        Ok((mut builder, status, body)) => {
            let ending = metrics::Ending::Complete;
            record.finish(status.as_u16(), Tokens::default(), None, &ending);
            Ok(builder.body(body))
        }
        Err(e) => Err(record.fail(e)),
    }
}

/// Sends a blob as it arrives. awc's own timeout would count the upload too, so the wait
/// for Ollama's answer (`timeouts.first_byte`) starts only once the body is all sent; the
/// whole exchange stays within `timeouts.total`.
async fn send_blob(
    upstream_req: awc::ClientRequest,
    upload: Upload,
    length: Option<u64>,
    config: &Config,
    deadline: Instant,
) -> Result<awc::ClientResponse, GatewayError> {
    let timeouts = &config.timeouts;
    let ended = upload.ended();
    let send = match length {
        Some(n) => upstream_req.send_body(actix_web::body::SizedStream::new(n, upload)),
        None => upstream_req.send_stream(upload),
    };
    let answer_begins = async {
        ended.notified().await;
        tokio::time::sleep(timeouts.first_byte).await;
    };
    let timed_out = |detail: String| GatewayError::UpstreamTimeout {
        upstream: OLLAMA.to_string(),
        detail,
    };
    tokio::select! {
        sent = send => sent.map_err(|e| match e {
            // The client's side of the upload failed (too large, too slow, gone): its error.
            SendRequestError::Body(e) => match e.downcast::<GatewayError>() {
                Ok(e) => *e,
                Err(e) => GatewayError::BodyRead(e.to_string()),
            },
            e => send_error(OLLAMA, e, timeouts),
        }),
        () = answer_begins => Err(timed_out(format!(
            "after {} waiting for the answer to the upload (timeouts.first_byte)",
            took(timeouts.first_byte)
        ))),
        () = tokio::time::sleep_until(deadline) => Err(timed_out(format!(
            "after {} before the upload was answered (timeouts.total)",
            took(timeouts.total)
        ))),
    }
}
