//! Bad requests get a clear 4xx in Ollama's error shape; nothing reaches an upstream.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{FakeUpstream, Gateway, Reply};
use serde_json::{json, Value};

#[actix_rt::test]
async fn malformed_bodies_are_400() {
    let ollama = FakeUpstream::start(|_| Reply::json(200, &json!({})));
    let gw = Gateway::start(Some(&ollama), Some(&ollama), |_| {}).await;
    let cases: [(&[u8], &str); 8] = [
        (b"", "missing request body"),
        (b"not json", "invalid request body"),
        (b"{\"model\":", "invalid request body"),
        (b"{}", "model is required"),
        (b"{\"model\":42}", "invalid type"),
        (
            b"{\"model\":\"llama3\",\"messages\":\"hi\"}",
            "invalid type",
        ),
        (b"{\"model\":\"llama3\",\"stream\":\"yes\"}", "invalid type"),
        (
            b"{\"model\":\"openai/gpt-4o-mini\",\"options\":{\"temperature\":\"hot\"}}",
            "must be of type number",
        ),
    ];
    for (body, needle) in cases {
        let (status, headers, out) = gw.post_raw("/api/chat", body.to_vec(), &[]).await;
        assert_eq!(status, 400, "{:?}", String::from_utf8_lossy(body));
        assert_eq!(
            headers.get("content-type").unwrap(),
            "application/json; charset=utf-8"
        );
        let v: Value = serde_json::from_slice(&out).unwrap();
        let msg = v["error"].as_str().unwrap();
        assert!(msg.contains(needle), "{msg}");
    }
    assert!(ollama.requests().is_empty(), "nothing reached the upstream");
    gw.stop().await;
}

#[actix_rt::test]
async fn unknown_route_wrong_method_and_too_large() {
    let ollama = FakeUpstream::start(|_| Reply::json(200, &json!({})));
    let gw = Gateway::start(Some(&ollama), None, |raw| raw.server.max_body_bytes = 1024).await;
    let client = gw.client();
    let bearer = format!("Bearer {}", common::TEST_KEY);

    let mut resp = client
        .get(format!("{}/api/nonexistent", gw.url))
        .insert_header(("authorization", bearer.as_str()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("/api/nonexistent"));

    let mut resp = client
        .get(format!("{}/api/chat", gw.url))
        .insert_header(("authorization", bearer.as_str()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    assert_eq!(resp.headers().get("allow").unwrap(), "POST");
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("not allowed"));

    let big = format!(
        r#"{{"model":"llama3","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(2000)
    );
    let (status, _, out) = gw.post_raw("/api/chat", big.into_bytes(), &[]).await;
    assert_eq!(status, 413);
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert!(v["error"].as_str().unwrap().contains("1024"));

    let mut resp = client
        .get(format!("{}/healthz", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["status"], "ok");
    assert!(ollama.requests().is_empty());
    gw.stop().await;
}
