//! /api/generate through the gateway, over TLS: to Ollama unchanged (its load and unload
//! included), to an OpenAI-compatible upstream as a chat and back in generate's shape; and
//! the fields a translated answer carries, streamed or not, for chat and generate alike.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::gen::{
    ollama_generate_done, ollama_generate_lines, open_stream, requests, tokens, TOKENS,
};
use common::{json_error, ndjson, End, FakeUpstream, Gateway, Reply, UPSTREAM_KEY};
use serde_json::{json, Value};

async fn generate(gw: &Gateway, body: &Value) -> (u16, awc::http::header::HeaderMap, Vec<u8>) {
    gw.post_raw("/api/generate", serde_json::to_vec(body).unwrap(), &[])
        .await
}

fn bytes_of(lines: &[Value]) -> Vec<u8> {
    lines
        .iter()
        .flat_map(|l| {
            let mut v = serde_json::to_vec(l).unwrap();
            v.push(b'\n');
            v
        })
        .collect()
}

/// Checks that `line` has exactly `keys` at its top level, in that order (Ollama's).
fn assert_keys(line: &str, keys: &[&str]) {
    let v: Value = serde_json::from_str(line).unwrap();
    assert_eq!(v.as_object().unwrap().len(), keys.len(), "{line}");
    let mut at = 0;
    for key in keys {
        let needle = format!("\"{key}\":");
        let found = line[at..]
            .find(&needle)
            .unwrap_or_else(|| panic!("{key} after byte {at} in {line}"));
        at += found + needle.len();
    }
}

#[actix_rt::test]
async fn to_ollama_the_request_goes_as_is_and_answers_come_back_unchanged() {
    let ollama = common::gen::ollama();
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;

    // No "stream": Ollama's default is to stream. Fields Chat Completions lacks go to Ollama.
    let body = r#"{"model":"llama3:instruct","prompt":"用一句話介紹你自己","system":"簡短","raw":true,"suffix":"。","context":[1,2],"options":{"num_predict":64}}"#;
    let (status, headers, out) = gw
        .post_raw("/api/generate", body.as_bytes().to_vec(), &[])
        .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&out));
    assert_eq!(headers.get("content-type").unwrap(), "application/x-ndjson");
    assert_eq!(
        out,
        bytes_of(&ollama_generate_lines("llama3:instruct")),
        "relayed byte for byte"
    );
    let rec = ollama.last();
    assert_eq!(
        (rec.method.as_str(), rec.path.as_str()),
        ("POST", "/api/generate")
    );
    assert_eq!(rec.body, body.as_bytes(), "forwarded as is");
    assert_eq!(
        rec.header("authorization"),
        None,
        "the client key stays here"
    );

    let (status, headers, out) = generate(
        &gw,
        &json!({"model":"llama3:instruct","prompt":"hi","stream":false}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(headers
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let whole = ollama_generate_done("llama3:instruct", &TOKENS.concat());
    assert_eq!(out, serde_json::to_vec(&whole).unwrap());

    // Counted under its own route, with the counts Ollama reported (stream and whole).
    assert_eq!(
        requests(&gw, "/api/generate", "llama3:instruct", "ollama", 200),
        2.0
    );
    assert_eq!(tokens(&gw, "prompt", "llama3:instruct", "ollama"), 10.0);
    assert_eq!(tokens(&gw, "completion", "llama3:instruct", "ollama"), 4.0);
    gw.stop().await;
}

#[actix_rt::test]
async fn open_webui_unload_reaches_ollama() {
    let ollama = common::gen::ollama();
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;
    // Open WebUI's unload, byte for byte (routers/ollama.py).
    let body = r#"{"model": "llama3:latest", "keep_alive": 0, "prompt": ""}"#;
    let (status, _, out) = gw
        .post_raw("/api/generate", body.as_bytes().to_vec(), &[])
        .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&out));
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["done_reason"], "unload");
    assert_eq!(v["done"], true);
    let rec = ollama.last();
    assert_eq!(rec.path, "/api/generate");
    assert_eq!(rec.body, body.as_bytes());
    gw.stop().await;
}

#[actix_rt::test]
async fn to_openai_a_whole_generate_is_a_chat_and_comes_back_in_generates_shape() {
    let openai = common::gen::openai();
    let gw = Gateway::start(None, Some(&openai), |_| {}).await;
    let (status, headers, out) = generate(
        &gw,
        &json!({"model":"openai/gpt-4o-mini","system":"請用繁體中文","prompt":"你好","stream":false,
            "format":{"type":"object","properties":{"a":{"type":"string"}}},
            "options":{"num_predict":32,"temperature":0.2,"num_ctx":4096},"think":false,
            "keep_alive":"5m","raw":false,"suffix":"","context":[]}),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&out));
    assert_eq!(
        headers.get("content-type").unwrap(),
        "application/json; charset=utf-8"
    );
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["model"], "openai/gpt-4o-mini");
    assert_eq!(v["response"], TOKENS.concat());
    assert_eq!(v["done"], true);
    assert_eq!(v["done_reason"], "stop");
    assert_eq!(v["prompt_eval_count"], 9);
    assert_eq!(v["eval_count"], 12);
    for field in [
        "created_at",
        "total_duration",
        "load_duration",
        "prompt_eval_duration",
        "eval_duration",
    ] {
        assert!(v.get(field).is_some(), "{field} in {v}");
    }
    assert_eq!(v["load_duration"], 0);
    assert!(v.get("message").is_none(), "{v}");

    let rec = openai.last();
    assert_eq!(rec.path, "/v1/chat/completions");
    assert_eq!(
        rec.header("authorization"),
        Some(format!("Bearer {UPSTREAM_KEY}").as_str())
    );
    let sent = rec.json();
    assert_eq!(sent["model"], "gpt-4o-mini");
    assert_eq!(sent["stream"], false);
    assert_eq!(
        sent["messages"],
        json!([{"role":"system","content":"請用繁體中文"},{"role":"user","content":"你好"}])
    );
    assert_eq!(sent["max_tokens"], 32);
    assert_eq!(sent["temperature"], 0.2);
    assert_eq!(sent["reasoning_effort"], "none");
    assert_eq!(sent["response_format"]["type"], "json_schema");
    for dropped in [
        "num_ctx",
        "keep_alive",
        "raw",
        "suffix",
        "context",
        "prompt",
    ] {
        assert!(sent.get(dropped).is_none(), "{dropped}");
    }
    assert_eq!(
        requests(&gw, "/api/generate", "openai/gpt-4o-mini", "openai", 200),
        1.0
    );
    assert_eq!(tokens(&gw, "prompt", "openai/gpt-4o-mini", "openai"), 9.0);
    gw.stop().await;
}

#[actix_rt::test]
async fn to_openai_a_streamed_generate_is_ollama_ndjson() {
    let openai = common::gen::openai();
    let gw = Gateway::start(None, Some(&openai), |_| {}).await;
    let (status, headers, out) =
        generate(&gw, &json!({"model":"openai/gpt-4o-mini","prompt":"你好"})).await;
    assert_eq!(status, 200);
    assert_eq!(headers.get("content-type").unwrap(), "application/x-ndjson");
    assert_eq!(headers.get("cache-control").unwrap(), "no-cache");
    let lines = ndjson(&out);
    let responses: Vec<&str> = lines
        .iter()
        .map(|l| l["response"].as_str().unwrap())
        .collect();
    assert_eq!(responses, ["你", "好", ""]);
    let text = String::from_utf8(out).unwrap();
    let raw: Vec<&str> = text.lines().collect();
    for line in &raw[..2] {
        assert_keys(line, &["model", "created_at", "response", "done"]);
    }
    assert!(lines[..2].iter().all(|l| l["done"] == false));
    assert_keys(
        raw[2],
        &[
            "model",
            "created_at",
            "response",
            "done",
            "done_reason",
            "total_duration",
            "load_duration",
            "prompt_eval_count",
            "prompt_eval_duration",
            "eval_count",
            "eval_duration",
        ],
    );
    let last = &lines[2];
    assert_eq!(
        (
            last["prompt_eval_count"].as_u64(),
            last["eval_count"].as_u64()
        ),
        (Some(9), Some(12))
    );
    let sent = openai.last().json();
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"]["include_usage"], true);
    assert_eq!(sent["messages"], json!([{"role":"user","content":"你好"}]));
    gw.stop().await;
}

#[actix_rt::test]
async fn to_openai_fields_without_an_equivalent_are_400_naming_them() {
    let openai = common::gen::openai();
    let gw = Gateway::start(None, Some(&openai), |_| {}).await;
    for (extra, field) in [
        (json!({"raw": true}), "raw"),
        (json!({"suffix": "\n}"}), "suffix"),
        (json!({"template": "{{ .Prompt }}"}), "template"),
        (json!({"context": [1, 2, 3]}), "context"),
    ] {
        for stream in [true, false] {
            let mut body = json!({"model":"openai/gpt-4o-mini","prompt":"x","stream":stream});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            let (status, headers, out) = generate(&gw, &body).await;
            assert_eq!(status, 400, "{body}");
            let msg = json_error(&headers, &out);
            assert!(
                msg.starts_with(&format!("\"{field}\" is not supported")) && msg.contains("openai"),
                "{msg}"
            );
        }
    }
    assert!(openai.requests().is_empty(), "nothing went upstream");
    assert_eq!(gw.metrics.rejections("bad_request"), 8);
    // A model no request has succeeded with yet is no label of its own.
    assert_eq!(requests(&gw, "/api/generate", "other", "openai", 400), 8.0);
    gw.stop().await;
}

#[actix_rt::test]
async fn to_openai_an_empty_prompt_is_a_load_answered_without_the_upstream() {
    let openai = common::gen::openai();
    let gw = Gateway::start(None, Some(&openai), |_| {}).await;
    for (body, reason) in [
        (json!({"model":"openai/gpt-4o-mini"}), "load"),
        (
            json!({"model":"openai/gpt-4o-mini","prompt":"","stream":true}),
            "load",
        ),
        (
            json!({"model":"openai/gpt-4o-mini","prompt":"","keep_alive":0}),
            "unload",
        ),
    ] {
        let (status, headers, out) = generate(&gw, &body).await;
        assert_eq!(status, 200, "{body}");
        // One JSON object even when streaming was asked for, as Ollama answers a load.
        assert_eq!(
            headers.get("content-type").unwrap(),
            "application/json; charset=utf-8"
        );
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["model"], "openai/gpt-4o-mini");
        assert_eq!(
            (v["response"].as_str(), v["done"].as_bool()),
            (Some(""), Some(true))
        );
        assert_eq!(v["done_reason"], reason);
    }
    assert!(openai.requests().is_empty());
    // Counted, but no upstream vouched for the model: it is not a label of its own.
    assert_eq!(requests(&gw, "/api/generate", "other", "openai", 200), 3.0);
    gw.stop().await;
}

#[actix_rt::test]
async fn translated_answers_carry_the_same_fields_streamed_or_not() {
    let openai = common::gen::openai();
    let gw = Gateway::start(None, Some(&openai), |_| {}).await;
    let fields = [
        "done_reason",
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
    ];
    for (path, body) in [
        (
            "/api/chat",
            json!({"model":"openai/m","messages":[{"role":"user","content":"hi"}]}),
        ),
        ("/api/generate", json!({"model":"openai/m","prompt":"hi"})),
    ] {
        let mut finals = Vec::new();
        for stream in [true, false] {
            let mut body = body.clone();
            body["stream"] = json!(stream);
            let (status, _, out) = gw
                .post_raw(path, serde_json::to_vec(&body).unwrap(), &[])
                .await;
            assert_eq!(status, 200);
            let last: Value = if stream {
                ndjson(&out).pop().unwrap()
            } else {
                serde_json::from_slice(&out).unwrap()
            };
            for field in fields {
                assert!(
                    last.get(field).is_some(),
                    "{path} stream={stream}: {field} in {last}"
                );
            }
            assert_eq!(last["load_duration"], 0, "an API upstream loads nothing");
            let keys: Vec<String> = last.as_object().unwrap().keys().cloned().collect();
            finals.push(keys);
        }
        assert_eq!(
            finals[0], finals[1],
            "{path}: the same fields streamed or not"
        );
    }
    gw.stop().await;
}

#[actix_rt::test]
async fn failures_are_honest_502_504_and_a_final_error_line() {
    // Nothing listens: 502, both upstream kinds, streamed or not.
    let gw = Gateway::start(None, None, |_| {}).await;
    for (model, name) in [("llama3", "ollama"), ("openai/gpt-4o-mini", "openai")] {
        for stream in [true, false] {
            let (status, headers, out) =
                generate(&gw, &json!({"model":model,"prompt":"x","stream":stream})).await;
            assert_eq!(status, 502);
            assert_eq!(
                json_error(&headers, &out),
                format!("upstream {name} is unreachable: it refused the connection")
            );
        }
    }
    gw.stop().await;

    // No answer in time: 504.
    let hang = FakeUpstream::start(|_| Reply::Hang);
    let gw = Gateway::start(Some(&hang), Some(&hang), |raw| {
        raw.timeouts.first_byte = Duration::from_millis(300);
    })
    .await;
    for model in ["llama3", "openai/gpt-4o-mini"] {
        let (status, _, _) = generate(&gw, &json!({"model":model,"prompt":"x"})).await;
        assert_eq!(status, 504, "{model}");
    }
    gw.stop().await;

    // A stream that breaks off: the lines so far, then an error line, never done.
    let mut lines = ollama_generate_lines("llama3");
    lines.pop();
    let ollama_reply = Reply::ndjson_until(&lines, End::Close);
    let ollama = FakeUpstream::start(move |_| ollama_reply.clone());
    let mut sse = common::openai_sse(&TOKENS, "stop");
    sse.truncate(2);
    let openai_reply = Reply::stream("text/event-stream", sse, End::Close);
    let openai = FakeUpstream::start(move |_| openai_reply.clone());
    let gw = Gateway::start(Some(&ollama), Some(&openai), |_| {}).await;
    for (model, name) in [("llama3", "ollama"), ("openai/gpt-4o-mini", "openai")] {
        let (status, _, out) = generate(&gw, &json!({"model":model,"prompt":"x"})).await;
        assert_eq!(status, 200);
        let lines = ndjson(&out);
        assert_eq!(lines[0]["response"], "你", "{model}");
        let last = lines.last().unwrap();
        assert!(
            last["error"]
                .as_str()
                .is_some_and(|e| e.starts_with(&format!("upstream {name}"))),
            "{model}: {last}"
        );
        assert!(lines.iter().all(|l| l["done"] != true), "{model}");
        assert_eq!(gw.upstream_errors(name, "truncated"), 1.0, "{name}");
    }
    gw.stop().await;
}

#[actix_rt::test]
async fn a_client_that_leaves_mid_stream_cancels_the_upstream_request() {
    for (model, upstream) in [("llama3", "ollama"), ("openai/m", "openai")] {
        let first_line = format!("{}\n", ollama_generate_lines("llama3")[0]).into_bytes();
        let ollama_reply = Reply::stream("application/x-ndjson", vec![first_line], End::Hold);
        let mut sse = common::openai_sse(&TOKENS, "stop");
        sse.truncate(2);
        let openai_reply = Reply::stream("text/event-stream", sse, End::Hold);
        let ollama = FakeUpstream::start(move |_| ollama_reply.clone());
        let openai = FakeUpstream::start(move |_| openai_reply.clone());
        let gw = Gateway::start(Some(&ollama), Some(&openai), |_| {}).await;
        let fake = if upstream == "ollama" {
            &ollama
        } else {
            &openai
        };

        let body = format!(r#"{{"model":"{model}","prompt":"x"}}"#);
        let tls = open_stream(&gw, "/api/generate", &body).await;
        drop(tls);
        assert!(
            fake.wait_closed(Duration::from_secs(10)).await,
            "{upstream}: the upstream request ends with the client"
        );
        // Recorded once, as the client's leaving (499), under its own route.
        let series = format!(
            r#"gateway_requests_total{{code="499",endpoint="/api/generate",key_id="test-key",model="other",team="test",upstream="{upstream}"}}"#
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !String::from_utf8(gw.metrics.render())
            .unwrap()
            .contains(&series)
        {
            assert!(tokio::time::Instant::now() < deadline, "no {series}");
            tokio::task::yield_now().await;
        }
        assert_eq!(gw.metric(&series), 1.0);
        gw.stop().await;
    }
}
