//! /api/chat to an Ollama upstream: forwarded as is, answers relayed unchanged.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ndjson, ollama_stream_lines, FakeUpstream, Gateway, Reply, TEST_KEY};
use serde_json::json;

#[actix_rt::test]
async fn stream_is_relayed_line_exact_and_request_forwarded_as_is() {
    let lines = ollama_stream_lines("llama3:instruct", &["您", "好", "，世界"]);
    let reply = Reply::ndjson(&lines);
    let ollama = FakeUpstream::start(move |_| reply.clone());
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;

    // No "stream" key: Ollama's default is to stream.
    let body = r#"{"model":"llama3:instruct","messages":[{"role":"user","content":"用一句話介紹你自己"}],"options":{"num_predict":128,"num_thread":8}}"#;
    let (status, headers, out) = gw
        .post_raw(
            "/api/chat",
            body.as_bytes().to_vec(),
            &[
                ("x-api-key", TEST_KEY),
                ("authorization", &format!("Bearer {TEST_KEY}")),
                ("user-agent", "ollama-python/0.6.1"),
            ],
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(headers.get("content-type").unwrap(), "application/x-ndjson");
    assert_eq!(headers.get("cache-control").unwrap(), "no-cache");
    assert_eq!(headers.get("x-accel-buffering").unwrap(), "no");
    let expected: Vec<u8> = lines
        .iter()
        .flat_map(|l| {
            let mut v = serde_json::to_vec(l).unwrap();
            v.push(b'\n');
            v
        })
        .collect();
    assert_eq!(out, expected, "relayed byte for byte");

    let rec = ollama.last();
    assert_eq!(rec.method, "POST");
    assert_eq!(rec.path, "/api/chat");
    assert_eq!(rec.body, body.as_bytes(), "forwarded as is");
    assert_eq!(rec.header("user-agent"), Some("ollama-python/0.6.1"));
    // Ollama's own address, not the gateway's that the client sent.
    assert_eq!(rec.header("host"), Some(ollama.addr.to_string().as_str()));
    assert_eq!(
        rec.header("x-api-key"),
        None,
        "client key never goes upstream"
    );
    assert_eq!(
        rec.header("authorization"),
        None,
        "client key never goes upstream"
    );
    assert!(!rec.headers.iter().any(|(_, v)| v.contains(TEST_KEY)));
    gw.stop().await;
}

#[actix_rt::test]
async fn non_stream_answer_is_relayed_unchanged() {
    let answer = json!({"model":"llama3:instruct","created_at":"2025-08-08T08:27:50.537Z",
        "message":{"role":"assistant","content":"我是一個語言模型。"},"done":true,"done_reason":"stop",
        "total_duration":3244883583u64,"eval_count":18});
    let reply = Reply::json(200, &answer);
    let ollama = FakeUpstream::start(move |_| reply.clone());
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;
    let (status, headers, out) = gw
        .chat(&json!({"model":"llama3:instruct","messages":[{"role":"user","content":"hi"}],"stream":false}))
        .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&out));
    assert_eq!(
        headers.get("content-type").unwrap(),
        "application/json; charset=utf-8"
    );
    assert_eq!(out, serde_json::to_vec(&answer).unwrap());
    assert_eq!(ollama.last().json()["stream"], false);
    gw.stop().await;
}

#[actix_rt::test]
async fn ollama_error_status_and_body_are_relayed() {
    let ollama = FakeUpstream::start(|req| {
        let model = req.json()["model"].as_str().unwrap().to_string();
        Reply::json(
            404,
            &json!({"error": format!("model \"{model}\" not found, try pulling it first")}),
        )
    });
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;
    for stream in [true, false] {
        let (status, headers, out) = gw
            .chat(&json!({"model":"nope:latest","messages":[],"stream":stream}))
            .await;
        assert_eq!(status, 404);
        assert!(headers
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("application/json"));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["error"],
            "model \"nope:latest\" not found, try pulling it first"
        );
    }
    gw.stop().await;
}

#[actix_rt::test]
async fn ollama_mid_stream_error_line_is_relayed_and_ends_the_stream() {
    let mut lines = ollama_stream_lines("llama3", &["a"]);
    lines.truncate(1);
    lines.push(json!({"error": "an error was encountered while running the model"}));
    let reply = Reply::ndjson(&lines);
    let ollama = FakeUpstream::start(move |_| reply.clone());
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;
    let (status, _, out) = gw.chat(&json!({"model":"llama3","messages":[]})).await;
    assert_eq!(status, 200);
    let got = ndjson(&out);
    assert_eq!(got.len(), 2);
    assert_eq!(
        got[1]["error"],
        "an error was encountered while running the model"
    );
    assert!(got.iter().all(|l| l["done"] != true));
    gw.stop().await;
}
