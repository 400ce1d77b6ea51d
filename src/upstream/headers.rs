//! Which headers cross the gateway. Small pure functions over fixed lists.

use actix_web::http::header::{self, HeaderMap, HeaderName};

/// Hop-by-hop headers (RFC 9110 7.6.1, plus the legacy `Keep-Alive` and `Proxy-Connection`):
/// they describe one connection and are never forwarded.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Request headers the gateway consumes or recomputes and so never sends upstream: the
/// client's credentials (`Authorization`, `X-API-Key`, cookies), framing (`Content-Length`,
/// `Host`, `Expect`, `Upgrade`) and `Accept-Encoding` (the relay needs identity bodies to
/// flush line by line).
const NOT_FORWARDED_UPSTREAM: [HeaderName; 8] = [
    header::AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    header::COOKIE,
    header::HOST,
    header::CONTENT_LENGTH,
    header::EXPECT,
    header::UPGRADE,
    header::ACCEPT_ENCODING,
];

/// Response headers recomputed by the gateway's own HTTP layer.
const NOT_FORWARDED_DOWNSTREAM: [HeaderName; 3] =
    [header::CONTENT_LENGTH, header::UPGRADE, header::DATE];

/// Names listed in `Connection` (RFC 9110 7.6.1: they are hop-by-hop too).
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect()
}

fn copy_except<'a>(
    from: &'a HeaderMap,
    skip: &'a [HeaderName],
) -> impl Iterator<Item = (&'a HeaderName, &'a header::HeaderValue)> + 'a {
    from.iter()
        .filter(move |(name, _)| !HOP_BY_HOP.contains(name) && !skip.contains(name))
}

/// The client's request headers that may go to an Ollama upstream.
pub fn upstream_request_headers(client: &HeaderMap) -> HeaderMap {
    let mut skip = connection_listed(client);
    skip.extend(NOT_FORWARDED_UPSTREAM);
    let mut out = HeaderMap::with_capacity(client.len());
    for (name, value) in copy_except(client, &skip) {
        out.append(name.clone(), value.clone());
    }
    out
}

/// The upstream's response headers that may go back to the client.
pub fn downstream_response_headers(upstream: &HeaderMap) -> HeaderMap {
    let mut skip = connection_listed(upstream);
    skip.extend(NOT_FORWARDED_DOWNSTREAM);
    let mut out = HeaderMap::with_capacity(upstream.len());
    for (name, value) in copy_except(upstream, &skip) {
        out.append(name.clone(), value.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn credentials_and_hop_by_hop_never_go_upstream() {
        let out = upstream_request_headers(&map(&[
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
        ]));
        let names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        for kept in ["content-type", "user-agent", "x-request-id"] {
            assert!(out.contains_key(kept), "{kept}");
        }
    }

    #[test]
    fn hop_by_hop_never_come_back() {
        let out = downstream_response_headers(&map(&[
            ("connection", "close, x-internal"),
            ("x-internal", "1"),
            ("transfer-encoding", "chunked"),
            ("content-length", "5"),
            ("content-type", "application/x-ndjson"),
        ]));
        assert_eq!(out.len(), 1);
        assert!(out.contains_key("content-type"));
    }
}
