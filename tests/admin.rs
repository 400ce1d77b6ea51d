//! Model management through the gateway over TLS, against a fake Ollama that records what
//! it receives: admin keys only (401 without a key, 403 for an ordinary one), Ollama's
//! models only, progress streamed line by line with an honest end, blobs streamed with
//! their own size limit, the upstream request dropped when the client leaves, and honest
//! 502/504s.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use awc::http::header::HeaderMap;
use awc::http::Method;
use bytes::Bytes;
use common::admin::{Answer, FakeOllama, Seen};
use common::{json_error, key_entry, ndjson, read_response, End, Gateway, TEST_KEY};
use futures_util::StreamExt as _;
use ollama_gateway::config::RawConfig;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::Notify;

const ADMIN_KEY: &str = "ogw_test_admin_key_0123456789abcdef";

/// A blob the fake Ollama does not have yet.
fn digest() -> String {
    format!("sha256:{}", "ab".repeat(32))
}

/// A blob the fake Ollama has.
fn kept_digest() -> String {
    format!("sha256:{}", "cd".repeat(32))
}

/// An admin key (`ops-admin`) and the ordinary test key (`test-key`), with extra lines.
fn keys(admin_extra: &str) -> String {
    let admin = format!("role = \"admin\"\n{admin_extra}");
    key_entry("ops-admin", "ops", ADMIN_KEY, &admin) + &key_entry("test-key", "test", TEST_KEY, "")
}

async fn gateway(fake: &FakeOllama, tweak: impl FnOnce(&mut RawConfig)) -> Gateway {
    let url = fake.url();
    let gw = Gateway::start(None, None, |raw| {
        raw.ollama.base_url = url;
        tweak(raw);
    })
    .await;
    gw.set_keys(&keys(""));
    gw
}

/// `method path` with `key` as a Bearer token (none: no credentials); the whole answer.
async fn call(
    gw: &Gateway,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: impl Into<Bytes>,
) -> (u16, HeaderMap, Vec<u8>) {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = gw
        .client()
        .request(method, format!("{}{path}", gw.url))
        .insert_header(("content-type", "application/json"));
    if let Some(key) = key {
        req = req.insert_header(("authorization", format!("Bearer {key}")));
    }
    let mut resp = req.send_body(body.into()).await.expect("gateway answers");
    let body = resp.body().limit(64 << 20).await.expect("whole body");
    (
        resp.status().as_u16(),
        resp.headers().clone(),
        body.to_vec(),
    )
}

fn text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

/// What the fake answers for each endpoint, as Ollama does.
fn ollama_answers(seen: &Seen) -> Answer {
    match (seen.method.as_str(), seen.path.as_str()) {
        ("POST", "/api/pull" | "/api/push" | "/api/create") => {
            if seen.json()["stream"] == false {
                Answer::Json(200, json!({"status": "success"}))
            } else {
                Answer::pull_progress(2)
            }
        }
        ("POST", "/api/copy") | ("DELETE", "/api/delete") => Answer::Empty(200),
        ("HEAD", p) if p.ends_with(&kept_digest()) => Answer::Empty(200),
        ("HEAD", p) if p.starts_with("/api/blobs/") => Answer::Empty(404),
        ("POST", p) if p.starts_with("/api/blobs/") => Answer::Empty(201),
        _ => Answer::Json(404, json!({"error": "404 page not found"})),
    }
}

fn endpoints() -> Vec<(&'static str, String, Vec<u8>, u16)> {
    let blob = format!("/api/blobs/{}", digest());
    let body = |v: Value| serde_json::to_vec(&v).unwrap();
    vec![
        (
            "POST",
            "/api/pull".into(),
            body(json!({"model": "llama3", "stream": false})),
            200,
        ),
        (
            "POST",
            "/api/push".into(),
            body(json!({"model": "me/llama3", "stream": false})),
            200,
        ),
        (
            "POST",
            "/api/create".into(),
            body(json!({"model": "mine", "from": "llama3", "stream": false})),
            200,
        ),
        (
            "POST",
            "/api/copy".into(),
            body(json!({"source": "llama3", "destination": "mine"})),
            200,
        ),
        (
            "DELETE",
            "/api/delete".into(),
            body(json!({"model": "mine"})),
            200,
        ),
        ("HEAD", blob.clone(), Vec::new(), 404),
        ("POST", blob, b"the bytes of a model file".to_vec(), 201),
    ]
}

#[actix_rt::test]
async fn every_management_endpoint_is_for_admin_keys_only() {
    let fake = FakeOllama::start(ollama_answers);
    let gw = gateway(&fake, |_| {}).await;
    for (method, path, body, status) in endpoints() {
        let reached = fake.seen().len();
        let (got, headers, answer) = call(&gw, method, &path, None, body.clone()).await;
        assert_eq!(got, 401, "{method} {path} without a key");
        let (got, headers_403, answer_403) =
            call(&gw, method, &path, Some(TEST_KEY), body.clone()).await;
        assert_eq!(got, 403, "{method} {path} with an ordinary key");
        if method != "HEAD" {
            assert!(json_error(&headers, &answer).contains("missing API key"));
            let error = json_error(&headers_403, &answer_403);
            assert!(error.contains("role = \"admin\""), "{error}");
        }
        assert_eq!(
            fake.seen().len(),
            reached,
            "refused requests never reach Ollama"
        );

        let (got, _, answer) = call(&gw, method, &path, Some(ADMIN_KEY), body.clone()).await;
        assert_eq!(
            got,
            status,
            "{method} {path} with the admin key: {}",
            text(&answer)
        );
        let seen = fake.last();
        assert_eq!(
            (seen.method.as_str(), seen.path.as_str()),
            (method, path.as_str())
        );
        assert_eq!(seen.body, body, "{path}: the body goes as sent");
        assert!(
            seen.header("authorization").is_none(),
            "the client's key stays here"
        );
        assert!(seen.header("x-request-id").is_some());
    }
    assert_eq!(gw.metrics.rejections("admin_required"), 7);
    for (route, code, model) in [
        ("/api/pull", 200, "llama3"),
        ("/api/copy", 200, "llama3"),
        ("/api/delete", 200, "mine"),
        ("/api/blobs/:digest", 201, "none"),
        ("/api/blobs/:digest", 404, "none"),
    ] {
        let series = format!(
            r#"gateway_requests_total{{code="{code}",endpoint="{route}",key_id="ops-admin",model="{model}",team="ops",upstream="ollama"}}"#
        );
        assert_eq!(gw.metric(&series), 1.0, "{series}");
    }
    let refused = r#"gateway_requests_total{code="403",endpoint="/api/blobs/:digest",key_id="test-key",model="none",team="test",upstream="none"}"#;
    assert_eq!(gw.metric(refused), 2.0);
    gw.stop().await;
}

/// A fake whose pulls send `lines`, holding after the first `at` until the test notifies
/// the gate; every other request gets `other`.
fn held_pulls(lines: Vec<Value>, at: usize, other: Answer) -> (FakeOllama, Arc<Notify>) {
    let gate = Arc::new(Notify::new());
    let held = Arc::clone(&gate);
    let fake = FakeOllama::start(move |seen| match seen.path.as_str() {
        "/api/pull" => Answer::Lines {
            lines: lines.clone(),
            pause: Some((at, Arc::clone(&held))),
            end: End::Terminate,
        },
        _ => other.clone(),
    });
    (fake, gate)
}

/// Two progress lines, the second `success`.
fn short_pull() -> Vec<Value> {
    vec![
        json!({"status": "pulling manifest"}),
        json!({"status": "success"}),
    ]
}

/// Starts a streamed pull with the admin key; the answer, its body still to read.
async fn open_pull(
    gw: &Gateway,
) -> awc::ClientResponse<impl futures_util::Stream<Item = Result<Bytes, awc::error::PayloadError>>>
{
    gw.client()
        .post(format!("{}/api/pull", gw.url))
        .insert_header(("authorization", format!("Bearer {ADMIN_KEY}")))
        .send_body(r#"{"model":"llama3"}"#)
        .await
        .unwrap()
}

#[actix_rt::test]
async fn pull_progress_is_streamed_line_by_line() {
    let Answer::Lines { lines, .. } = Answer::pull_progress(2) else {
        unreachable!()
    };
    let (fake, gate) = held_pulls(lines.clone(), 2, Answer::Empty(404));
    let gw = gateway(&fake, |_| {}).await;
    let mut resp = open_pull(&gw).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers().get("content-type").unwrap(),
        "application/x-ndjson"
    );
    // The fake holds the rest of its stream until the gate opens: these two lines can only
    // have come through while it waits.
    let mut got = Vec::new();
    while got.iter().filter(|b| **b == b'\n').count() < 2 {
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.next())
            .await
            .expect("progress arrives while the pull is still going")
            .unwrap()
            .unwrap();
        got.extend_from_slice(&chunk);
    }
    assert_eq!(ndjson(&got), lines[..2]);
    gate.notify_one();
    while let Some(chunk) = resp.next().await {
        got.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(
        ndjson(&got),
        lines,
        "every line, unchanged, and nothing else"
    );
    let series = r#"gateway_requests_total{code="200",endpoint="/api/pull",key_id="ops-admin",model="llama3",team="ops",upstream="ollama"}"#;
    assert_eq!(gw.metric(series), 1.0);
    gw.stop().await;
}

#[actix_rt::test]
async fn a_progress_stream_that_fails_ends_with_an_error_line() {
    let fake = FakeOllama::start(|seen| {
        let start = vec![
            json!({"status": "pulling manifest"}),
            json!({"status": "pulling layer0", "total": 9, "completed": 1}),
        ];
        let (mut lines, end) = (start, End::Terminate);
        let end = match seen.json()["model"].as_str().unwrap() {
            "reset" => End::Reset,
            "own-error" => {
                lines.push(json!({"error": "max retries exceeded: unexpected EOF"}));
                end
            }
            _ => end,
        };
        Answer::Lines {
            lines,
            pause: None,
            end,
        }
    });
    let gw = gateway(&fake, |_| {}).await;
    for (model, needle) in [
        ("reset", "upstream ollama reset the connection"),
        ("own-error", "max retries exceeded"),
        (
            "short",
            "upstream ollama closed the stream before it finished",
        ),
    ] {
        let body = json!({"model": model}).to_string();
        let (status, _, answer) = call(&gw, "POST", "/api/pull", Some(ADMIN_KEY), body).await;
        assert_eq!(status, 200, "{model}");
        let lines = ndjson(&answer);
        assert_eq!(lines.len(), 3, "{model}: {}", text(&answer));
        assert_eq!(lines[1]["status"], "pulling layer0");
        let last = lines[2]["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{model}: {}", text(&answer)));
        assert!(last.contains(needle), "{model}: {last}");
        assert!(!text(&answer).contains("success"), "never a fake success");
    }
    assert_eq!(gw.upstream_errors("ollama", "truncated"), 2.0);
    assert_eq!(gw.upstream_errors("ollama", "mid_stream"), 1.0);
    gw.stop().await;
}

#[actix_rt::test]
async fn an_openai_model_is_never_managed() {
    let fake = FakeOllama::start(ollama_answers);
    let gw = gateway(&fake, |_| {}).await;
    for (method, path, body) in [
        ("POST", "/api/pull", json!({"model": "openai/gpt-4o"})),
        ("POST", "/api/push", json!({"name": "openai/gpt-4o"})),
        (
            "POST",
            "/api/create",
            json!({"model": "openai/mine", "from": "llama3"}),
        ),
        (
            "POST",
            "/api/create",
            json!({"model": "mine", "from": "openai/gpt-4o"}),
        ),
        (
            "POST",
            "/api/copy",
            json!({"source": "openai/gpt-4o", "destination": "mine"}),
        ),
        (
            "POST",
            "/api/copy",
            json!({"source": "llama3", "destination": "openai/mine"}),
        ),
        ("DELETE", "/api/delete", json!({"model": "openai/gpt-4o"})),
    ] {
        let (status, headers, answer) =
            call(&gw, method, path, Some(ADMIN_KEY), body.to_string()).await;
        assert_eq!(status, 400, "{path} {body}");
        let error = json_error(&headers, &answer);
        assert!(
            error.contains("openai, an OpenAI-compatible upstream")
                && error.contains("Ollama's models only"),
            "{error}"
        );
    }
    assert!(fake.seen().is_empty());
    gw.stop().await;
}

#[actix_rt::test]
async fn an_admin_key_manages_only_its_models() {
    let fake = FakeOllama::start(ollama_answers);
    let gw = gateway(&fake, |_| {}).await;
    gw.set_keys(&keys("models = [\"llama3*\"]\n"));
    let (status, _, _) = call(
        &gw,
        "DELETE",
        "/api/delete",
        Some(ADMIN_KEY),
        r#"{"model":"llama3:8b"}"#,
    )
    .await;
    assert_eq!(status, 200);
    for body in [
        json!({"model": "mistral"}),
        json!({"source": "llama3", "destination": "mistral"}),
        json!({"model": "llama3-mine", "from": "mistral"}),
        // The legacy form names its base in a Modelfile (older Ollama builds from it).
        json!({"model": "llama3-mine", "modelfile": "FROM mistral\nSYSTEM hi", "stream": false}),
    ] {
        let path = if body.get("source").is_some() {
            "/api/copy"
        } else {
            "/api/create"
        };
        let (status, headers, answer) =
            call(&gw, "POST", path, Some(ADMIN_KEY), body.to_string()).await;
        assert_eq!(status, 403, "{body}");
        assert!(json_error(&headers, &answer).contains("\"mistral\" is not allowed"));
    }
    assert_eq!(fake.seen().len(), 1);
    assert_eq!(gw.metrics.rejections("model_not_allowed"), 4);
    gw.stop().await;
}

#[actix_rt::test]
async fn blob_digests_are_checked_before_ollama_sees_them() {
    let fake = FakeOllama::start(ollama_answers);
    let gw = gateway(&fake, |_| {}).await;
    let hex = "ab".repeat(32);
    for bad in [
        format!("sha256:{}", &hex[..63]),
        format!("sha256-{hex}"),
        format!("md5:{hex}"),
        format!("sha256:{}", "zz".repeat(32)),
        "..%2F..%2Fetc%2Fpasswd".to_string(),
    ] {
        let path = format!("/api/blobs/{bad}");
        let (status, _, _) = call(&gw, "HEAD", &path, Some(ADMIN_KEY), Bytes::new()).await;
        assert_eq!(status, 400, "HEAD {bad}");
        let (status, headers, answer) = call(&gw, "POST", &path, Some(ADMIN_KEY), "x").await;
        assert_eq!(status, 400, "POST {bad}");
        assert!(json_error(&headers, &answer).contains("expected sha256: and 64 hex digits"));
    }
    assert!(fake.seen().is_empty());
    gw.stop().await;
}

#[actix_rt::test]
async fn a_blob_ollama_already_has_is_not_sent_again() {
    let fake = FakeOllama::start(ollama_answers);
    let gw = gateway(&fake, |_| {}).await;
    let path = format!("/api/blobs/{}", kept_digest());
    let (status, _, answer) = call(&gw, "POST", &path, Some(ADMIN_KEY), vec![3u8; 8 << 20]).await;
    assert_eq!(
        status,
        200,
        "Ollama's answer for a blob it has: {}",
        text(&answer)
    );
    let seen = fake.seen();
    assert_eq!(seen.len(), 1, "only asked, never sent");
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("HEAD", path.as_str())
    );
    gw.stop().await;
}

/// A body of `n` bytes (a repeating pattern) in 64 KiB pieces, never whole in memory.
fn pieces(n: usize) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    let piece = Bytes::from((0..64 * 1024).map(|i| (i % 251) as u8).collect::<Vec<_>>());
    futures_util::stream::iter(
        (0..n)
            .step_by(piece.len())
            .map(move |at| Ok(piece.slice(..piece.len().min(n - at)))),
    )
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| ((i % (64 * 1024)) % 251) as u8).collect()
}

#[actix_rt::test]
async fn blobs_stream_through_with_their_own_limit() {
    let fake = FakeOllama::start(ollama_answers);
    let gw = gateway(&fake, |raw| {
        raw.server.max_body_bytes = 1 << 20;
        raw.server.max_blob_bytes = 4 << 20;
    })
    .await;
    let url = format!("{}/api/blobs/{}", gw.url, digest());
    let bearer = format!("Bearer {ADMIN_KEY}");
    let three = 3 << 20;
    // Larger than max_body_bytes, within max_blob_bytes: with its length, and chunked.
    for sized in [true, false] {
        let req = gw
            .client()
            .post(&url)
            .insert_header(("authorization", bearer.as_str()));
        let resp = if sized {
            req.send_body(actix_web::body::SizedStream::new(
                three as u64,
                pieces(three),
            ))
            .await
        } else {
            req.send_stream(pieces(three)).await
        };
        assert_eq!(resp.unwrap().status().as_u16(), 201, "sized: {sized}");
        let seen = fake.last();
        assert!(
            seen.complete && seen.length == three as u64,
            "sized: {sized}"
        );
        assert!(seen.body == pattern(three), "the bytes arrive as sent");
        let length = seen.header("content-length");
        assert_eq!(
            length,
            sized.then_some("3145728"),
            "the length goes on when given"
        );
    }
    // Over max_blob_bytes: with its length refused before Ollama is asked.
    let five = 5 << 20;
    let (status, headers, answer) = call(
        &gw,
        "POST",
        &format!("/api/blobs/{}", digest()),
        Some(ADMIN_KEY),
        pattern(five),
    )
    .await;
    assert_eq!(status, 413);
    let error = json_error(&headers, &answer);
    assert!(
        error.contains("limit of 4194304 bytes (server.max_blob_bytes)"),
        "{error}"
    );
    assert_eq!(
        fake.seen().len(),
        4,
        "each upload asked first whether Ollama has it"
    );
    // Chunked: cut off at the limit, and Ollama's request dropped before the body was whole.
    let mut tls = gw.raw_tls().await;
    let head = format!(
        "POST /api/blobs/{} HTTP/1.1\r\nHost: localhost\r\nAuthorization: {bearer}\r\nTransfer-Encoding: chunked\r\n\r\n",
        digest()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    let chunk = [
        format!("{:x}\r\n", 1 << 20).into_bytes(),
        vec![7u8; 1 << 20],
        b"\r\n".to_vec(),
    ]
    .concat();
    for _ in 0..5 {
        tls.write_all(&chunk).await.unwrap();
    }
    let (status, _, body) = read_response(&mut tls).await;
    assert_eq!(status, 413, "{}", text(&body));
    assert!(fake.wait_requests(6, Duration::from_secs(10)).await);
    let cut = fake.last();
    assert!(
        !cut.complete && cut.length <= 4 << 20,
        "{} bytes",
        cut.length
    );
    // JSON bodies keep server.max_body_bytes.
    let big = json!({"model": "llama3", "pad": "x".repeat(2 << 20)}).to_string();
    let (status, headers, answer) = call(&gw, "POST", "/api/pull", Some(ADMIN_KEY), big).await;
    assert_eq!(status, 413);
    assert!(json_error(&headers, &answer).contains("limit of 1048576 bytes"));
    assert_eq!(fake.seen().len(), 6);
    gw.stop().await;
}

/// The head of a raw request with the admin key.
fn raw_head(method: &str, path: &str, length: usize) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {ADMIN_KEY}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )
}

#[actix_rt::test]
async fn a_client_that_leaves_drops_the_request_to_ollama() {
    let (fake, gate) = held_pulls(short_pull(), 1, Answer::Empty(201));
    let gw = gateway(&fake, |_| {}).await;
    // A pull whose client leaves after the first line.
    let mut tls = gw.raw_tls().await;
    let body = r#"{"model":"llama3"}"#;
    tls.write_all(format!("{}{body}", raw_head("POST", "/api/pull", body.len())).as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !text(&got).contains("pulling manifest") {
        let n = tls.read(&mut buf).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    drop(tls);
    assert!(
        fake.wait_closed(Duration::from_secs(10)).await,
        "pull dropped"
    );
    // An upload whose client leaves after 1 MiB of 64.
    let mut tls = gw.raw_tls().await;
    let path = format!("/api/blobs/{}", digest());
    tls.write_all(raw_head("POST", &path, 64 << 20).as_bytes())
        .await
        .unwrap();
    tls.write_all(&vec![1u8; 1 << 20]).await.unwrap();
    tls.flush().await.unwrap();
    // The HEAD that asks whether Ollama has it, then the upload itself is on its way.
    assert!(fake.wait_heads(3, Duration::from_secs(10)).await);
    drop(tls);
    assert!(fake.wait_requests(3, Duration::from_secs(10)).await);
    let cut = fake.last();
    assert!(
        !cut.complete && cut.length <= 1 << 20,
        "{} bytes",
        cut.length
    );
    assert_eq!(cut.header("content-length"), Some("67108864"));
    gate.notify_one();
    gw.stop().await;
}

#[actix_rt::test]
async fn a_stalled_upload_is_cut_off_by_the_body_timeout() {
    let fake = FakeOllama::start(ollama_answers);
    let gw = gateway(&fake, |raw| {
        raw.server.request_body_timeout = Duration::from_millis(300);
    })
    .await;
    let mut tls = gw.raw_tls().await;
    let path = format!("/api/blobs/{}", digest());
    tls.write_all(raw_head("POST", &path, 1 << 20).as_bytes())
        .await
        .unwrap();
    tls.write_all(&[0u8; 65536]).await.unwrap();
    // Nothing more is sent: the gateway's own clock ends the upload.
    let (status, head, body) = read_response(&mut tls).await;
    assert_eq!(status, 408, "{head}{}", text(&body));
    assert!(
        text(&body).contains("server.request_body_timeout"),
        "{}",
        text(&body)
    );
    assert!(fake.wait_requests(2, Duration::from_secs(10)).await);
    assert!(!fake.last().complete);
    gw.stop().await;
}

#[actix_rt::test]
async fn ollama_failures_are_502_and_504() {
    // Nothing listens.
    let down = common::closed_port_url();
    let gw = Gateway::start(None, None, |raw| raw.ollama.base_url = down).await;
    gw.set_keys(&keys(""));
    for (method, path, body) in endpoints().into_iter().map(|(m, p, b, _)| (m, p, b)) {
        let (status, headers, answer) = call(&gw, method, &path, Some(ADMIN_KEY), body).await;
        assert_eq!(status, 502, "{method} {path}");
        if method != "HEAD" {
            assert!(json_error(&headers, &answer).contains("upstream ollama is unreachable"));
        }
    }
    gw.stop().await;

    // Ollama takes the request and never answers; then answers an error of its own.
    let fake = FakeOllama::start(|seen| match (seen.method.as_str(), seen.path.as_str()) {
        (_, "/api/pull") => Answer::Json(
            500,
            json!({"error": "pull model manifest: file does not exist"}),
        ),
        ("HEAD", _) => Answer::Empty(404),
        _ => Answer::Hang,
    });
    let gw = gateway(&fake, |raw| {
        raw.timeouts.first_byte = Duration::from_millis(300)
    })
    .await;
    let blob = format!("/api/blobs/{}", digest());
    for (method, path, body, needle) in [
        (
            "POST",
            "/api/copy",
            r#"{"source":"a","destination":"b"}"#.as_bytes(),
            "waiting for the answer to begin",
        ),
        (
            "POST",
            blob.as_str(),
            b"blob".as_slice(),
            "waiting for the answer to the upload",
        ),
    ] {
        let (status, headers, answer) =
            call(&gw, method, path, Some(ADMIN_KEY), body.to_vec()).await;
        assert_eq!(status, 504, "{path}");
        let error = json_error(&headers, &answer);
        assert!(
            error.contains(needle) && error.contains("timeouts.first_byte"),
            "{error}"
        );
    }
    let (status, headers, answer) = call(
        &gw,
        "POST",
        "/api/pull",
        Some(ADMIN_KEY),
        r#"{"model":"nope"}"#,
    )
    .await;
    assert_eq!(status, 500, "Ollama's own status, relayed");
    assert_eq!(
        json_error(&headers, &answer),
        "pull model manifest: file does not exist"
    );
    assert_eq!(gw.upstream_errors("ollama", "timeout"), 2.0);
    assert_eq!(gw.upstream_errors("ollama", "status"), 1.0);
    gw.stop().await;
}

#[actix_rt::test]
async fn a_pull_that_does_not_stream_may_take_longer_than_first_byte() {
    let gate = Arc::new(Notify::new());
    let held = Arc::clone(&gate);
    let fake = FakeOllama::start(move |_| {
        Answer::After(
            Arc::clone(&held),
            Box::new(Answer::Json(200, json!({"status": "success"}))),
        )
    });
    let first_byte = Duration::from_millis(200);
    let gw = gateway(&fake, |raw| raw.timeouts.first_byte = first_byte).await;
    let pull = call(
        &gw,
        "POST",
        "/api/pull",
        Some(ADMIN_KEY),
        r#"{"model":"llama3","stream":false}"#,
    );
    let release = async {
        assert!(fake.wait_requests(1, Duration::from_secs(10)).await);
        // Time passing is the point here: Ollama answers well after timeouts.first_byte.
        tokio::time::sleep(first_byte * 3).await;
        gate.notify_one();
    };
    let ((status, _, answer), ()) = tokio::join!(pull, release);
    assert_eq!(status, 200, "{}", text(&answer));
    assert_eq!(
        serde_json::from_slice::<Value>(&answer).unwrap(),
        json!({"status": "success"})
    );
    gw.stop().await;
}

#[actix_rt::test]
async fn a_pull_holds_an_in_flight_slot_while_it_runs() {
    let (fake, gate) = held_pulls(short_pull(), 1, Answer::Empty(200));
    let gw = gateway(&fake, |_| {}).await;
    gw.set_keys(&keys("max_in_flight = 1\n"));
    let mut resp = open_pull(&gw).await;
    let first = resp.next().await.unwrap().unwrap();
    assert!(text(&first).contains("pulling manifest"));
    let copy = r#"{"source":"llama3","destination":"mine"}"#;
    let (status, _, _) = call(&gw, "POST", "/api/copy", Some(ADMIN_KEY), copy).await;
    assert_eq!(status, 429, "the running pull holds the key's only slot");
    gate.notify_one();
    while let Some(chunk) = resp.next().await {
        chunk.unwrap();
    }
    drop(resp);
    // The slot is released as the pull's body is dropped; wait for that, bounded.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, _) = call(&gw, "POST", "/api/copy", Some(ADMIN_KEY), copy).await;
        if status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "slot never released"
        );
        tokio::task::yield_now().await;
    }
    gw.stop().await;
}

#[test]
fn keys_new_makes_admin_keys() {
    let out = std::process::Command::new(common::BIN)
        .args(["keys", "new", "--team", "ops", "--role", "admin"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let key = stdout.lines().next().unwrap();
    assert!(stdout.contains("role = \"admin\"\n"), "{stdout}");
    let table = ollama_gateway::keys::KeyTable::parse(
        &stdout[key.len()..],
        std::path::Path::new("printed"),
        ollama_gateway::config::Config::from_raw(RawConfig::default())
            .unwrap()
            .limits,
        &ollama_gateway::limits::LimiterPool::default(),
    )
    .unwrap();
    assert_eq!(
        table.lookup(key).unwrap().role,
        ollama_gateway::keys::Role::Admin
    );

    let out = std::process::Command::new(common::BIN)
        .args(["keys", "new", "--team", "ops", "--role", "root"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("[possible values: admin]"),
        "{}",
        text(&out.stderr)
    );
}
