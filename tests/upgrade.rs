//! Protocol upgrades (WebSocket, h2c): the gateway serves none. actix-http reads an
//! `Upgrade: websocket` request's body until the connection ends, whatever its
//! Content-Length says, so a request pipelined behind it would be swallowed (behind a proxy
//! that reuses connections, a smuggling risk). Every upgrade is refused with a JSON error
//! and counted; after a WebSocket one the connection is closed at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{raw_chat_request, read_pipelined_response, FakeUpstream, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BODY: &str = r#"{"model":"llama3","messages":[],"stream":false}"#;

/// Sends `first` with an ordinary request pipelined behind it, in one write; returns the
/// first answer's status, head and JSON error, checking it came at once. What the reads
/// brought after that answer (the second one, or its start) is left in `pending`.
async fn pipelined<S>(tls: &mut S, first: &str, pending: &mut Vec<u8>) -> (u16, String, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let both = format!("{first}{}", raw_chat_request(BODY, ""));
    let sent = Instant::now();
    tls.write_all(both.as_bytes()).await.unwrap();
    let (status, head, body) = read_pipelined_response(tls, pending).await;
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "answered at once, not after the body timeout"
    );
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    (
        status,
        head.to_ascii_lowercase(),
        v["error"].as_str().unwrap().to_string(),
    )
}

#[actix_rt::test]
async fn a_websocket_upgrade_with_a_body_is_refused_at_once_and_its_connection_closed() {
    let ollama = FakeUpstream::ollama_ok();
    let gw = Gateway::start(Some(&ollama), None, |raw| {
        raw.server.request_body_timeout = Duration::from_secs(30);
    })
    .await;
    let upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\n";
    let without_key = format!(
        "POST /api/chat HTTP/1.1\r\nHost: localhost\r\n{upgrade}Content-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    for first in [raw_chat_request(BODY, upgrade), without_key] {
        let mut tls = gw.raw_tls().await;
        let mut pending = Vec::new();
        let (status, head, error) = pipelined(&mut tls, &first, &mut pending).await;
        assert_eq!(status, 400, "{head}");
        assert!(head.contains("connection: close"), "{head}");
        assert!(error.contains("Upgrade: websocket"), "{error}");
        // Then the connection ends: the request behind it is neither answered nor run.
        let mut rest = pending;
        let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut rest))
            .await
            .expect("the gateway closes the connection");
        assert!(
            rest.is_empty(),
            "nothing after the refusal: {}",
            String::from_utf8_lossy(&rest)
        );
    }
    assert!(
        ollama.requests().is_empty(),
        "neither the upgrade nor the request behind it reached the upstream"
    );
    assert_eq!(gw.metrics.rejections("upgrade"), 2);
    gw.stop().await;
}

#[actix_rt::test]
async fn an_upgrade_with_framed_body_is_refused_and_the_connection_stays_in_step() {
    let ollama = FakeUpstream::ollama_ok();
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;
    let mut tls = gw.raw_tls().await;
    // h2c keeps its Content-Length framing: refused, and the next request is read as one.
    let first = raw_chat_request(
        BODY,
        "Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n",
    );
    // Both answers can come in one read: what came after the first is kept for the second.
    let mut pending = Vec::new();
    let (status, head, error) = pipelined(&mut tls, &first, &mut pending).await;
    assert_eq!(status, 400, "{head}");
    assert!(!head.contains("connection: close"), "{head}");
    assert!(error.contains("Upgrade: h2c"), "{error}");
    let (status, _, body) = read_pipelined_response(&mut tls, &mut pending).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(ollama.requests().len(), 1, "only the request behind it ran");
    assert_eq!(gw.metrics.rejections("upgrade"), 1);
    gw.stop().await;
}
