//! /api/embed and the legacy /api/embeddings through the gateway, over TLS: to Ollama
//! unchanged, to an OpenAI-compatible upstream as `POST {base_url}/embeddings`; input
//! tokens counted for both; and the edge every model endpoint shares.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::gen::{open_stream, requests, tokens};
use common::{json_error, key_entry, End, FakeUpstream, Gateway, Reply, TEST_KEY, UPSTREAM_KEY};
use serde_json::{json, Value};

async fn post(
    gw: &Gateway,
    path: &str,
    body: &Value,
) -> (u16, awc::http::header::HeaderMap, Value) {
    let (status, headers, out) = gw
        .post_raw(path, serde_json::to_vec(body).unwrap(), &[])
        .await;
    let v = serde_json::from_slice(&out)
        .unwrap_or_else(|_| panic!("JSON answer: {}", String::from_utf8_lossy(&out)));
    (status, headers, v)
}

fn prompt_tokens(gw: &Gateway, model: &str, upstream: &str) -> f64 {
    tokens(gw, "prompt", model, upstream)
}

#[actix_rt::test]
async fn to_ollama_both_endpoints_go_as_is_and_count_input_tokens() {
    let ollama = common::gen::ollama();
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;
    let body = r#"{"model":"nomic-embed-text","input":["第一段","second"],"truncate":false,"dimensions":2,"options":{"num_ctx":512},"keep_alive":"1m"}"#;
    let (status, _, out) = gw
        .post_raw("/api/embed", body.as_bytes().to_vec(), &[])
        .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&out));
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["embeddings"], json!([[0.1, -0.2, 0.3], [0.1, -0.2, 0.3]]));
    let rec = ollama.last();
    assert_eq!(rec.path, "/api/embed");
    assert_eq!(rec.body, body.as_bytes(), "forwarded as is");

    let legacy = r#"{"model":"nomic-embed-text","prompt":"hello"}"#;
    let (status, _, out) = gw
        .post_raw("/api/embeddings", legacy.as_bytes().to_vec(), &[])
        .await;
    assert_eq!(status, 200);
    assert_eq!(out, br#"{"embedding":[0.5,0.25]}"#);
    let rec = ollama.last();
    assert_eq!(rec.path, "/api/embeddings");
    assert_eq!(rec.body, legacy.as_bytes());

    // Ollama's prompt_eval_count (4 per input here); the legacy answer reports none.
    assert_eq!(prompt_tokens(&gw, "nomic-embed-text", "ollama"), 8.0);
    assert_eq!(
        requests(&gw, "/api/embed", "nomic-embed-text", "ollama", 200),
        1.0
    );
    assert_eq!(
        requests(&gw, "/api/embeddings", "nomic-embed-text", "ollama", 200),
        1.0
    );
    gw.stop().await;
}

#[actix_rt::test]
async fn to_openai_embed_is_translated_both_ways() {
    let openai = common::gen::openai();
    let gw = Gateway::start(None, Some(&openai), |_| {}).await;
    let model = "openai/text-embedding-3-small";
    let (status, headers, v) = post(
        &gw,
        "/api/embed",
        &json!({"model": model, "input": ["第一段", "second", "third"], "dimensions": 3, "truncate": true}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        headers.get("content-type").unwrap(),
        "application/json; charset=utf-8"
    );
    assert_eq!(v["model"], model);
    assert_eq!(
        v["embeddings"],
        json!([[0.25, -0.5, 0], [0.25, -0.5, 1], [0.25, -0.5, 2]]),
        "in input order"
    );
    assert_eq!(v["prompt_eval_count"], 9, "from the upstream's usage");
    assert_eq!(v["load_duration"], 0);
    assert!(v["total_duration"].as_u64().unwrap() > 0);
    let rec = openai.last();
    assert_eq!(rec.path, "/v1/embeddings");
    assert_eq!(
        rec.header("authorization"),
        Some(format!("Bearer {UPSTREAM_KEY}").as_str())
    );
    assert_eq!(
        rec.json(),
        json!({"model":"text-embedding-3-small","input":["第一段","second","third"],"dimensions":3})
    );

    let (status, _, v) = post(&gw, "/api/embed", &json!({"model": model, "input": "one"})).await;
    assert_eq!(status, 200);
    assert_eq!(v["embeddings"], json!([[0.25, -0.5, 0]]));
    assert_eq!(
        openai.last().json(),
        json!({"model":"text-embedding-3-small","input":"one"})
    );

    let (status, _, v) = post(
        &gw,
        "/api/embeddings",
        &json!({"model": model, "prompt": "legacy"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(v, json!({"embedding": [0.25, -0.5, 0]}));
    assert_eq!(
        openai.last().json(),
        json!({"model":"text-embedding-3-small","input":"legacy"})
    );

    assert_eq!(prompt_tokens(&gw, model, "openai"), 15.0);
    assert_eq!(requests(&gw, "/api/embed", model, "openai", 200), 2.0);
    assert_eq!(requests(&gw, "/api/embeddings", model, "openai", 200), 1.0);
    gw.stop().await;
}

#[actix_rt::test]
async fn to_openai_nothing_to_embed_is_answered_without_the_upstream() {
    let openai = common::gen::openai();
    let gw = Gateway::start(None, Some(&openai), |_| {}).await;
    let model = "openai/text-embedding-3-small";
    for input in [json!(""), json!([]), Value::Null] {
        let (status, _, v) =
            post(&gw, "/api/embed", &json!({"model": model, "input": input})).await;
        assert_eq!(status, 200);
        assert_eq!(v, json!({"model": model, "embeddings": []}));
    }
    let (status, _, v) = post(
        &gw,
        "/api/embeddings",
        &json!({"model": model, "prompt": ""}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(v, json!({"embedding": []}));
    assert!(openai.requests().is_empty());
    assert_eq!(requests(&gw, "/api/embed", "other", "openai", 200), 3.0);
    assert_eq!(
        requests(&gw, "/api/embeddings", "other", "openai", 200),
        1.0
    );
    gw.stop().await;
}

#[actix_rt::test]
async fn to_openai_errors_are_mapped_and_bad_answers_are_502() {
    let openai = FakeUpstream::start(|req| match req.json()["model"].as_str().unwrap() {
        "short" => Reply::json(200, &json!({"data": [{"index": 0, "embedding": [1.0]}]})),
        "refused" => Reply::json(
            401,
            &json!({"error": {"message": "Incorrect API key provided: sk-abc***xyz"}}),
        ),
        _ => common::gen::openai_answer(req),
    });
    let gw = Gateway::start(None, Some(&openai), |_| {}).await;
    let cases = [
        ("openai/missing", 404, "does not exist"),
        ("openai/short", 502, "1 embeddings for 2 inputs"),
        ("openai/refused", 502, "refused the gateway's credentials"),
    ];
    for (model, status, text) in cases {
        let (got, headers, out) = gw
            .post_raw(
                "/api/embed",
                serde_json::to_vec(&json!({"model": model, "input": ["a", "b"]})).unwrap(),
                &[],
            )
            .await;
        assert_eq!(got, status, "{model}");
        let msg = json_error(&headers, &out);
        assert!(msg.contains(text) && !msg.contains("sk-"), "{model}: {msg}");
    }
    let (status, headers, out) = gw
        .post_raw(
            "/api/embed",
            br#"{"model":"openai/e","input":[1,2]}"#.to_vec(),
            &[],
        )
        .await;
    assert_eq!(status, 400);
    assert!(json_error(&headers, &out).contains("invalid input type"));
    assert_eq!(gw.upstream_errors("openai", "status"), 2.0);
    assert_eq!(gw.upstream_errors("openai", "protocol"), 1.0);

    // Unreachable and silent upstreams: 502 and 504, both kinds.
    gw.stop().await;
    let gw = Gateway::start(None, None, |_| {}).await;
    for (path, model, name) in [
        ("/api/embed", "nomic-embed-text", "ollama"),
        ("/api/embeddings", "openai/e", "openai"),
    ] {
        let (status, _, v) = post(
            &gw,
            path,
            &json!({"model": model, "input": "x", "prompt": "x"}),
        )
        .await;
        assert_eq!(status, 502);
        assert_eq!(
            v["error"],
            format!("upstream {name} is unreachable: it refused the connection")
        );
    }
    gw.stop().await;
    let hang = FakeUpstream::start(|_| Reply::Hang);
    let gw = Gateway::start(Some(&hang), Some(&hang), |raw| {
        raw.timeouts.first_byte = Duration::from_millis(300);
    })
    .await;
    for model in ["nomic-embed-text", "openai/e"] {
        let (status, _, _) = post(&gw, "/api/embed", &json!({"model": model, "input": "x"})).await;
        assert_eq!(status, 504, "{model}");
    }
    gw.stop().await;
}

#[actix_rt::test]
async fn every_model_endpoint_passes_the_same_edge() {
    let ollama = common::gen::ollama();
    let openai = common::gen::openai();
    let gw = Gateway::start(Some(&ollama), Some(&openai), |_| {}).await;
    let endpoints = ["/api/generate", "/api/embed", "/api/embeddings"];
    let body = |model: &str| {
        serde_json::to_vec(&json!({"model": model, "prompt": "x", "input": "x", "stream": false}))
            .unwrap()
    };
    // No key: 401, before anything is read or sent.
    for path in endpoints {
        let (status, _, out) = gw.post_exact(path, body("llama3"), &[]).await;
        assert_eq!(status, 401, "{path}: {}", String::from_utf8_lossy(&out));
    }
    // Wrong method: 405 naming the one allowed.
    for path in endpoints {
        let mut resp = gw
            .client()
            .get(format!("{}{path}", gw.url))
            .insert_header(("authorization", format!("Bearer {TEST_KEY}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 405, "{path}");
        assert_eq!(resp.headers().get("allow").unwrap(), "POST");
        let _ = resp.body().await;
    }
    // A key's models: 403 elsewhere, on every endpoint and both upstream kinds.
    gw.set_keys(&key_entry(
        "test-key",
        "test",
        TEST_KEY,
        r#"models = ["llama3*", "openai/gpt-4o-mini"]"#,
    ));
    for path in endpoints {
        for (model, status) in [
            ("llama3:8b", 200),
            ("openai/gpt-4o-mini", 200),
            ("mistral", 403),
            ("openai/text-embedding-3-small", 403),
        ] {
            let (got, headers, out) = gw.post_raw(path, body(model), &[]).await;
            assert_eq!(
                got,
                status,
                "{path} {model}: {}",
                String::from_utf8_lossy(&out)
            );
            if status == 403 {
                assert!(json_error(&headers, &out).contains("not allowed"));
            }
        }
        let refused = format!(
            r#"gateway_requests_total{{code="403",endpoint="{path}",key_id="test-key",model="none",team="test",upstream="none"}}"#
        );
        assert_eq!(gw.metric(&refused), 2.0, "{path}");
    }
    assert_eq!(gw.metrics.rejections("model_not_allowed"), 6);
    assert_eq!(ollama.requests().len() + openai.requests().len(), 6);
    gw.stop().await;
}

#[actix_rt::test]
async fn an_open_generate_stream_holds_its_in_flight_slot_against_embeddings() {
    let first_line = format!("{}\n", common::gen::ollama_generate_lines("hold")[0]).into_bytes();
    let ollama = FakeUpstream::start(move |req| {
        if req.json()["model"] == "hold" {
            Reply::stream("application/x-ndjson", vec![first_line.clone()], End::Hold)
        } else {
            common::gen::ollama_answer(req)
        }
    });
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;
    gw.set_keys(&key_entry(
        "test-key",
        "test",
        TEST_KEY,
        "max_in_flight = 1",
    ));
    let tls = open_stream(&gw, "/api/generate", r#"{"model":"hold","prompt":"x"}"#).await;
    let embed = json!({"model":"nomic-embed-text","input":"x"});
    let (status, _, v) = post(&gw, "/api/embed", &embed).await;
    assert_eq!(status, 429);
    assert!(v["error"].as_str().unwrap().contains("in flight"), "{v}");
    drop(tls);
    assert!(ollama.wait_closed(Duration::from_secs(10)).await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, _) = post(&gw, "/api/embed", &embed).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 429);
        assert!(
            tokio::time::Instant::now() < deadline,
            "slot never released"
        );
        tokio::task::yield_now().await;
    }
    gw.stop().await;
}
