//! Reading a client's request body: bounded in size (early, by Content-Length, when the
//! client declares it) and in time.

use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;

use crate::config::ServerConfig;
use crate::error::GatewayError;
use crate::upstream;

/// Reads the request body, refusing more than `limit` bytes (early, by Content-Length,
/// when the client declares it) and bodies not complete within `within` of the request's
/// arrival.
pub async fn read(
    payload: web::Payload,
    req: &HttpRequest,
    limit: usize,
    within: Duration,
) -> Result<Bytes, GatewayError> {
    // From when the request came in: its head's arrival starts the body's time too.
    let deadline = tokio::time::Instant::from_std(super::started(req)) + within;
    tokio::time::timeout_at(deadline, read_limited(payload, req, limit))
        .await
        .map_err(|_| GatewayError::BodyTimeout(humantime::format_duration(within).to_string()))?
}

/// Reads a JSON request body, within `server.max_body_bytes` and
/// `server.request_body_timeout`.
pub async fn read_json(
    payload: web::Payload,
    req: &HttpRequest,
    server: &ServerConfig,
) -> Result<Bytes, GatewayError> {
    read(
        payload,
        req,
        server.max_body_bytes,
        server.request_body_timeout,
    )
    .await
}

async fn read_limited(
    mut payload: web::Payload,
    req: &HttpRequest,
    limit: usize,
) -> Result<Bytes, GatewayError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(GatewayError::BodyTooLarge { limit });
    }
    let failed = |e: actix_web::error::PayloadError| {
        let what = upstream::payload_failure(&e, "before the body was complete");
        GatewayError::BodyRead(format!("the client {what}"))
    };
    // A body that comes in one piece (a JSON request usually arrives with its head) is
    // kept as it came, a view of the connection's read buffer: no allocation, no copy.
    let first = match payload.next().await {
        None => return Ok(Bytes::new()),
        Some(chunk) => chunk.map_err(failed)?,
    };
    if first.len() > limit {
        return Err(GatewayError::BodyTooLarge { limit });
    }
    let Some(second) = payload.next().await else {
        return Ok(first);
    };
    let mut body = BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
    body.extend_from_slice(&first);
    let mut next = Some(second);
    while let Some(chunk) = next {
        let chunk = chunk.map_err(failed)?;
        if body.len() + chunk.len() > limit {
            return Err(GatewayError::BodyTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
        next = payload.next().await;
    }
    Ok(body.freeze())
}
