//! Credentials: the request must carry a key in `Authorization: Bearer` or `X-API-Key`
//! (never the query string). Deny by default: every path except liveness needs one.
//! Also the request-head sanity limits, which apply before credentials are read.

use std::net::IpAddr;
use std::sync::Arc;

use actix_web::dev::ServiceRequest;
use actix_web::http::header::{self, Header as _, HeaderMap};
use actix_web::http::Method;
use actix_web_httpauth::headers::authorization::{Authorization, Bearer};

use crate::error::GatewayError;
use crate::keys::ApiKey;
use crate::state::AppState;

/// Paths served without a key: liveness probes only.
pub fn is_public(method: &Method, path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz") && (method == Method::GET || method == Method::HEAD)
}

/// Refuses request heads over the configured count or size (431).
pub fn check_headers(
    headers: &HeaderMap,
    max_count: usize,
    max_bytes: usize,
) -> Result<(), GatewayError> {
    if headers.len() > max_count {
        return Err(GatewayError::HeadersTooLarge(format!(
            "{} header fields, at most {max_count} allowed",
            headers.len()
        )));
    }
    let bytes: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len())
        .sum();
    if bytes > max_bytes {
        return Err(GatewayError::HeadersTooLarge(format!(
            "{bytes} bytes of headers, at most {max_bytes} allowed"
        )));
    }
    Ok(())
}

/// Whether actix-http reads this request's body until the connection ends: an
/// `Upgrade: websocket` request not sent chunked (its Content-Length is ignored, the
/// WebSocket handshake being expected to take the connection over). Nothing after such a
/// request can be framed. (Other upgrades, h2c say, keep their Content-Length framing.)
pub fn body_runs_to_eof(req: &ServiceRequest) -> bool {
    let websocket = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
    websocket && !actix_web::HttpMessage::chunked(req).unwrap_or(false)
}

/// Refuses a protocol upgrade (RFC 9110 7.8): the gateway serves none.
pub fn check_upgrade(headers: &HeaderMap) -> Result<(), GatewayError> {
    match headers.get(header::UPGRADE) {
        None => Ok(()),
        Some(value) => {
            let protocol = String::from_utf8_lossy(value.as_bytes());
            Err(GatewayError::UpgradeRefused(
                protocol.chars().take(64).collect(),
            ))
        }
    }
}

/// What the client presented: `X-API-Key` first, else a Bearer token.
enum Presented {
    None,
    Malformed,
    Key(String),
}

fn presented_key(req: &ServiceRequest) -> Presented {
    if let Some(value) = req.headers().get("x-api-key") {
        return match value.to_str().map(str::trim) {
            Ok(key) if !key.is_empty() => Presented::Key(key.to_string()),
            _ => Presented::Malformed,
        };
    }
    if !req.headers().contains_key(header::AUTHORIZATION) {
        return Presented::None;
    }
    let token = match Authorization::<Bearer>::parse(req) {
        Ok(auth) => auth.as_ref().token().trim().to_string(),
        // RFC 9110 11.1: the scheme name is case-insensitive ("bearer", "BEARER").
        Err(_) => req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim().to_string())
            .unwrap_or_default(),
    };
    if token.is_empty() {
        Presented::Malformed
    } else {
        Presented::Key(token)
    }
}

/// The key the request may use (`None` on public paths), or why it may not proceed.
/// `ip` is the client address the allowlist resolved.
pub fn check(
    state: &AppState,
    req: &ServiceRequest,
    ip: IpAddr,
) -> Result<Option<Arc<ApiKey>>, GatewayError> {
    let server = &state.config.server;
    check_headers(req.headers(), server.max_headers, server.max_header_bytes)?;
    check_upgrade(req.headers())?;
    if is_public(req.method(), req.path()) {
        return Ok(None);
    }
    state.throttle.check(ip)?;
    match presented_key(req) {
        Presented::None => Err(GatewayError::MissingKey),
        Presented::Malformed => Err(state.throttle.fail(ip, GatewayError::InvalidKey)),
        Presented::Key(secret) => match state.keys.table().lookup(&secret) {
            None => Err(state.throttle.fail(ip, GatewayError::InvalidKey)),
            Some(key) if !key.enabled => Err(state.throttle.fail(ip, GatewayError::DisabledKey)),
            Some(key) => Ok(Some(Arc::clone(key))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    #[test]
    fn only_liveness_is_public() {
        assert!(is_public(&Method::GET, "/healthz"));
        assert!(is_public(&Method::HEAD, "/healthz"));
        assert!(!is_public(&Method::POST, "/healthz"));
        assert!(!is_public(&Method::GET, "/healthz/"));
        assert!(!is_public(&Method::POST, "/api/chat"));
        assert!(!is_public(&Method::GET, "/nope"));
    }

    #[test]
    fn header_limits() {
        let mut h = HeaderMap::new();
        for i in 0..5 {
            h.append(
                HeaderName::try_from(format!("x-h{i}")).unwrap(),
                HeaderValue::from_static("0123456789"),
            );
        }
        assert!(check_headers(&h, 5, 1000).is_ok());
        assert!(check_headers(&h, 4, 1000).is_err());
        assert!(check_headers(&h, 5, 60).is_err());
    }
}
