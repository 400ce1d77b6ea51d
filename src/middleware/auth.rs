//! Credentials: who the request is. A key, from `X-API-Key` if the request has one, else
//! from `Authorization`: a Bearer token, or the password of Basic credentials (the user
//! name is ignored; LangChain and others send Basic from an `https://user:KEY@host` URL).
//! Never from the query string. A request that carries a key is judged by that key alone.
//! A request without any key is served as the trusted network (`[[networks]]` in the keys
//! file) that its client address falls in, if any. Deny by default: every path except
//! liveness needs a key or a network. Also the request-head sanity limits, which apply
//! before credentials are read.

use std::net::IpAddr;
use std::sync::Arc;

use actix_web::dev::ServiceRequest;
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::http::Method;
use actix_web_httpauth::headers::authorization::{Basic, Bearer, Scheme};

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

/// Named once: actix-http's `HeaderMap` parses a `&str` name on every use, and copies one
/// outside the standard set into an allocation of its own.
const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// What the client presented: `X-API-Key` first, else `Authorization`.
enum Presented<'a> {
    None,
    Malformed,
    Key(PresentedKey<'a>),
}

/// A presented key where it already is: in its `X-API-Key` value (trimmed), or in the
/// credentials actix-web-httpauth parsed out of `Authorization` (not copied out of them once
/// more). Never formatted: it has no `Debug`, and `Bearer`'s `Display` shows the token.
enum PresentedKey<'a> {
    Header(&'a str),
    Bearer(Bearer),
    Basic(Basic),
}

impl PresentedKey<'_> {
    /// The key, without the blanks around it.
    fn get(&self) -> &str {
        match self {
            Self::Header(key) => key,
            Self::Bearer(bearer) => bearer.token().trim(),
            Self::Basic(basic) => basic.password().map_or("", str::trim),
        }
    }
}

fn presented_key(req: &ServiceRequest) -> Presented<'_> {
    if let Some(value) = req.headers().get(X_API_KEY) {
        return match value.to_str().map(str::trim) {
            Ok(key) if !key.is_empty() => Presented::Key(PresentedKey::Header(key)),
            _ => Presented::Malformed,
        };
    }
    match req.headers().get(header::AUTHORIZATION) {
        None => Presented::None,
        Some(value) => authorization_key(value).map_or(Presented::Malformed, Presented::Key),
    }
}

/// The key in an `Authorization` value: a Bearer token, or the password of Basic
/// credentials (RFC 7617; the user name is ignored). `None` for anything else: another
/// scheme, invalid base64, no colon, an empty key. actix-web-httpauth parses both schemes
/// (and refuses a value that is not visible ASCII or tabs); it only knows their canonical
/// spelling, and RFC 9110 11.1 makes the scheme name case-insensitive, so `bearer` or
/// `BASIC` is respelled for it first.
fn authorization_key(value: &HeaderValue) -> Option<PresentedKey<'static>> {
    let bytes = value.as_bytes();
    let space = memchr::memchr(b' ', bytes)?;
    let (scheme, rest) = (&bytes[..space], &bytes[space + 1..]);
    let canonical = |name: &str| -> Option<HeaderValue> {
        if scheme == name.as_bytes() {
            Some(value.clone())
        } else {
            HeaderValue::from_bytes(&[name.as_bytes(), b" ", rest].concat()).ok()
        }
    };
    let secret = if scheme.eq_ignore_ascii_case(b"bearer") {
        PresentedKey::Bearer(Bearer::parse(&canonical("Bearer")?).ok()?)
    } else if scheme.eq_ignore_ascii_case(b"basic") {
        PresentedKey::Basic(Basic::parse(&canonical("Basic")?).ok()?)
    } else {
        return None;
    };
    (!secret.get().is_empty()).then_some(secret)
}

/// The identity the request is served as (`None` on public paths): its key, or without a
/// key the trusted network of `ip` (the client address the allowlist resolved, trusted
/// proxies included); or why it may not proceed.
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
        Presented::None => match state.keys.table().network(ip) {
            Some(network) => Ok(Some(Arc::clone(network))),
            None => Err(GatewayError::MissingKey),
        },
        Presented::Malformed => Err(state.throttle.fail(ip, GatewayError::InvalidKey)),
        Presented::Key(secret) => match state.keys.table().lookup(secret.get()) {
            None => Err(state.throttle.fail(ip, GatewayError::InvalidKey)),
            Some(key) if !key.enabled => Err(state.throttle.fail(ip, GatewayError::DisabledKey)),
            Some(key) => Ok(Some(Arc::clone(key))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_liveness_is_public() {
        assert!(is_public(&Method::GET, "/healthz"));
        assert!(is_public(&Method::HEAD, "/healthz"));
        assert!(!is_public(&Method::POST, "/healthz"));
        assert!(!is_public(&Method::GET, "/healthz/"));
        assert!(!is_public(&Method::POST, "/api/chat"));
        assert!(!is_public(&Method::GET, "/nope"));
    }

    fn key_of(value: &str) -> Option<String> {
        authorization_key(&HeaderValue::from_str(value).unwrap()).map(|s| s.get().to_string())
    }

    #[test]
    fn authorization_bearer_or_basic_password() {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert_eq!(key_of("Bearer ogw_a").as_deref(), Some("ogw_a"));
        assert_eq!(key_of("bEaReR  ogw_a ").as_deref(), Some("ogw_a"));
        let basic = format!("Basic {}", b64("anyone:ogw_a"));
        assert_eq!(
            key_of(&basic).as_deref(),
            Some("ogw_a"),
            "user name ignored"
        );
        let basic = format!("basic {}", b64(":ogw_a"));
        assert_eq!(
            key_of(&basic).as_deref(),
            Some("ogw_a"),
            "empty user, any case"
        );
        let basic = format!("Basic {}", b64("u:ogw:with:colons"));
        assert_eq!(key_of(&basic).as_deref(), Some("ogw:with:colons"));
        for malformed in [
            "Bearer ".to_string(),
            "Bearer".to_string(),
            "Basic !!notbase64!!".to_string(),
            format!("Basic {}", b64("no-colon-here")),
            format!("Basic {}", b64("user:")),
            format!("Basic {}", b64("user:   ")),
            "Digest username=x".to_string(),
            "ogw_a".to_string(),
        ] {
            assert_eq!(key_of(&malformed), None, "{malformed}");
        }
    }

    /// actix-web-httpauth's parse is what refuses these (the scheme is found in the bytes):
    /// a change there must not let them through.
    #[test]
    fn authorization_that_is_not_visible_ascii_presents_no_key() {
        for value in [
            &b"Bearer caf\xe9"[..],
            b"bearer caf\xe9",
            b"Basic \xff\xfe",
            b"BASIC \xff\xfe",
            b"Bearer\ttok",
        ] {
            let value = HeaderValue::from_bytes(value).unwrap();
            assert!(authorization_key(&value).is_none(), "{value:?}");
        }
        let tabbed = HeaderValue::from_static("Bearer ogw_a\t");
        assert_eq!(
            authorization_key(&tabbed)
                .map(|k| k.get().to_string())
                .as_deref(),
            Some("ogw_a")
        );
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
