//! Which headers cross the gateway. Small pure functions over fixed lists.

use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::HttpResponseBuilder;

/// Hop-by-hop headers (RFC 9110 7.6.1, plus the legacy `Keep-Alive` and `Proxy-Connection`):
/// they describe one connection and are never forwarded. Header names are lower case, so a
/// match on the name is the whole comparison (one per header, not one per listed name).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
    )
}

/// Request headers the gateway consumes or recomputes and so never sends upstream: the
/// client's credentials (`Authorization`, `X-API-Key`, cookies), framing (`Content-Length`,
/// `Host`, `Expect`, `Upgrade`) and `Accept-Encoding` (the relay needs identity bodies to
/// flush line by line).
fn not_forwarded_upstream(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "authorization"
            | "x-api-key"
            | "cookie"
            | "host"
            | "content-length"
            | "expect"
            | "upgrade"
            | "accept-encoding"
    )
}

/// Response headers recomputed by the gateway's own HTTP layer.
fn not_forwarded_downstream(name: &HeaderName) -> bool {
    matches!(name.as_str(), "content-length" | "upgrade" | "date")
}

/// Names listed in `Connection` (RFC 9110 7.6.1: they are hop-by-hop too).
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect()
}

/// The headers of `from` that pass: not hop-by-hop, not `skip`ped, not named in
/// `Connection`. Allocates only when a `Connection` header names extra headers.
fn passing<'a>(
    from: &'a HeaderMap,
    skip: fn(&HeaderName) -> bool,
) -> impl Iterator<Item = (&'a HeaderName, &'a header::HeaderValue)> + 'a {
    let listed = if from.contains_key(header::CONNECTION) {
        connection_listed(from)
    } else {
        Vec::new()
    };
    from.iter()
        .filter(move |(name, _)| !is_hop_by_hop(name) && !skip(name) && !listed.contains(name))
}

/// The client's request headers that may go to an Ollama upstream.
pub fn upstream_request_headers(
    client: &HeaderMap,
) -> impl Iterator<Item = (&HeaderName, &header::HeaderValue)> + '_ {
    passing(client, not_forwarded_upstream)
}

/// The upstream's response headers that may go back to the client.
pub fn downstream_response_headers(
    upstream: &HeaderMap,
) -> impl Iterator<Item = (&HeaderName, &header::HeaderValue)> + '_ {
    passing(upstream, not_forwarded_downstream)
}

/// Whether an upstream answer's `Content-Type` is `media_type` (its parameters aside).
pub fn has_media_type(headers: &HeaderMap, media_type: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(media_type))
}

const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// Marks a relayed stream as neither to be cached nor buffered by a proxy in front (nginx
/// reads `X-Accel-Buffering`), so that each piece reaches the client as it comes.
pub fn unbuffered(builder: &mut HttpResponseBuilder) -> &mut HttpResponseBuilder {
    builder
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-cache")))
        .insert_header((X_ACCEL_BUFFERING, HeaderValue::from_static("no")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        m
    }

    fn collect<'a>(it: impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)>) -> HeaderMap {
        let mut out = HeaderMap::new();
        for (k, v) in it {
            out.append(k.clone(), v.clone());
        }
        out
    }

    #[test]
    fn credentials_and_hop_by_hop_never_go_upstream() {
        let client = map(&[
            ("authorization", "Bearer ogw_secret"),
            ("x-api-key", "ogw_secret"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("host", "gateway"),
            ("content-length", "10"),
            ("accept-encoding", "gzip"),
            ("proxy-authorization", "Basic x"),
            ("content-type", "application/json"),
            ("user-agent", "ollama-python/0.6"),
            ("x-request-id", "abc"),
        ]);
        let out = collect(upstream_request_headers(&client));
        let names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        for kept in ["content-type", "user-agent", "x-request-id"] {
            assert!(out.contains_key(kept), "{kept}");
        }
    }

    #[test]
    fn hop_by_hop_never_come_back() {
        let upstream = map(&[
            ("connection", "close, x-internal"),
            ("x-internal", "1"),
            ("transfer-encoding", "chunked"),
            ("content-length", "5"),
            ("content-type", "application/x-ndjson"),
        ]);
        let out = collect(downstream_response_headers(&upstream));
        assert_eq!(out.len(), 1);
        assert!(out.contains_key("content-type"));
    }
}
