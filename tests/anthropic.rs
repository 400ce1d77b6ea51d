//! `POST /v1/messages` over real TLS, in front of a fake Ollama serving its Anthropic
//! Messages API: the official anthropic Python client, streamed and not; the body goes to
//! Ollama as it came and the answer comes back as Ollama wrote it; tokens counted; a stream
//! that fails ends with an `error` event the SDK raises on, never a `message_stop`; failures
//! before the answer are honest statuses; an OpenAI-compatible upstream's model is refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::anthropic::{event, message, ollama, stream_events};
use common::gen::tokens;
use common::{key_entry, End, FakeUpstream, Gateway, Reply, TEST_KEY};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const PATH: &str = "/v1/messages";

/// POSTs `body` to /v1/messages with the key as `x-api-key`, as the Anthropic SDKs send it.
async fn post(gw: &Gateway, body: &str) -> (u16, awc::http::header::HeaderMap, Vec<u8>) {
    gw.post_raw(
        PATH,
        body.as_bytes().to_vec(),
        &[("x-api-key", TEST_KEY), ("anthropic-version", "2023-06-01")],
    )
    .await
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The `error` events of an SSE body, as JSON.
fn error_events(body: &str) -> Vec<Value> {
    body.split("\n\n")
        .filter_map(|e| e.strip_prefix("event: error\ndata: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

const SDK: &str = r#"
import os, json, anthropic
client = anthropic.Anthropic(base_url=os.environ["GW"], api_key=os.environ["GW_KEY"], max_retries=0,
                             http_client=anthropic.DefaultHttpxClient(verify=os.environ["GW_CA"]))
msgs = [{"role": "user", "content": "用一句話介紹你自己"}]
out = {}
m = client.messages.create(model="llama3:instruct", max_tokens=64, messages=msgs)
out["whole"] = [m.content[0].text, m.usage.input_tokens, m.usage.output_tokens, m.stop_reason]
with client.messages.stream(model="llama3:instruct", max_tokens=64, messages=msgs) as s:
    out["helper_text"] = "".join(s.text_stream)
    final = s.get_final_message()
out["helper_final"] = [final.usage.input_tokens, final.usage.output_tokens, final.stop_reason]
out["raw_events"] = [e.type for e in client.messages.create(model="llama3:instruct", max_tokens=64, messages=msgs, stream=True)]
try:
    client.messages.create(model="openai/gpt-4o-mini", max_tokens=64, messages=msgs)
    out["openai"] = "no error"
except anthropic.BadRequestError as e:
    out["openai"] = [e.status_code, str(e)]
print(json.dumps(out))
"#;

fn sdk_present() -> bool {
    common::skip::available(
        common::skip::runs("python3", &["-c", "import anthropic"]),
        "python3 module `anthropic` (pip install anthropic)",
    )
}

#[actix_rt::test]
async fn the_anthropic_python_client_talks_to_ollama_through_the_gateway() {
    if !sdk_present() {
        return;
    }
    let ollama = ollama();
    let openai = FakeUpstream::start(|_| Reply::json(500, &json!({})));
    let gw = Gateway::start(Some(&ollama), Some(&openai), |_| {}).await;
    let v = common::run_python(&gw, SDK).await;
    assert_eq!(v["whole"], json!(["你好", 11, 2, "end_turn"]));
    assert_eq!(v["helper_text"], "你好");
    assert_eq!(v["helper_final"], json!([11, 2, "end_turn"]));
    assert_eq!(
        v["raw_events"],
        json!([
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]),
        "every event passed on (the SDK skips ping)"
    );
    let refused = v["openai"][1].as_str().unwrap();
    assert_eq!(v["openai"][0], 400, "{refused}");
    assert!(refused.contains("/v1/messages does not serve"), "{refused}");
    // Three requests reached Ollama, each to its Messages API with the model as sent and
    // without the client's key; none reached the OpenAI-compatible upstream.
    let requests = ollama.requests();
    assert_eq!(requests.len(), 3);
    for r in &requests {
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", PATH));
        assert_eq!(r.json()["model"], "llama3:instruct");
        assert_eq!(r.header("x-api-key"), None);
        assert!(!text(&r.body).contains(TEST_KEY));
        assert!(
            r.header("anthropic-version").is_some(),
            "the SDK's headers go on"
        );
    }
    assert!(openai.requests().is_empty());
    // Tokens of all three answers, streamed or not.
    assert_eq!(tokens(&gw, "prompt", "llama3:instruct", "ollama"), 33.0);
    assert_eq!(tokens(&gw, "completion", "llama3:instruct", "ollama"), 6.0);
    assert_eq!(
        gw.metric(r#"gateway_requests_total{code="200",endpoint="/v1/messages",key_id="test-key",model="llama3:instruct",team="test",upstream="ollama"}"#),
        3.0
    );
    assert_eq!(
        gw.metric(r#"gateway_rejections_total{reason="model_not_served"}"#),
        1.0
    );
    gw.stop().await;
}

#[actix_rt::test]
async fn bodies_and_answers_cross_byte_for_byte() {
    let ollama = ollama();
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;
    // Odd spacing, key order, escapes and an unknown field: all Ollama's business.
    let body = "{ \"max_tokens\" : 8,\n \"messages\":[{\"role\":\"user\",\"content\":\"\\u4f60\\u597d\"}],\n \"model\":\"llama3\", \"metadata\":{\"user_id\":\"u1\"}, \"stream\" : true }";
    let (status, headers, out) = post(&gw, body).await;
    assert_eq!(status, 200, "{}", text(&out));
    assert_eq!(ollama.last().body, body.as_bytes());
    assert_eq!(out, stream_events("llama3", &["你", "好"], 11, 2).concat());
    assert!(headers
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let body = r#"{"model":"llama3","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#;
    let (status, _, out) = post(&gw, body).await;
    assert_eq!(status, 200);
    assert_eq!(ollama.last().body, body.as_bytes());
    assert_eq!(
        serde_json::from_slice::<Value>(&out).unwrap(),
        message("llama3", "你好", 11, 2)
    );
    gw.stop().await;
}

/// A fake Ollama that streams `message_start` and one delta, then ends with `end`.
fn cut_ollama(end: End) -> FakeUpstream {
    let mut events = stream_events("llama3", &["半"], 7, 1);
    events.truncate(4);
    FakeUpstream::start(move |_| Reply::stream("text/event-stream", events.clone(), end))
}

const CUT: &str = r#"
import os, json, anthropic
client = anthropic.Anthropic(base_url=os.environ["GW"], api_key=os.environ["GW_KEY"], max_retries=0,
                             http_client=anthropic.DefaultHttpxClient(verify=os.environ["GW_CA"]))
msgs = [{"role": "user", "content": "hi"}]
out = {}
seen = []
try:
    for e in client.messages.create(model="llama3", max_tokens=8, messages=msgs, stream=True):
        seen.append(e.type)
    out["raw"] = "clean end"
except anthropic.APIError as e:
    out["raw"] = [type(e).__name__, str(e)]
out["seen"] = seen
try:
    with client.messages.stream(model="llama3", max_tokens=8, messages=msgs) as s:
        "".join(s.text_stream)
    out["helper"] = "clean end"
except anthropic.APIError as e:
    out["helper"] = type(e).__name__
print(json.dumps(out))
"#;

#[actix_rt::test]
async fn a_cut_stream_raises_in_the_sdk_and_never_ends_with_message_stop() {
    let ollama = cut_ollama(End::Close);
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;
    let (status, _, out) = post(
        &gw,
        r#"{"model":"llama3","max_tokens":8,"messages":[],"stream":true}"#,
    )
    .await;
    assert_eq!(status, 200);
    let out = text(&out);
    let mut expected = text(&stream_events("llama3", &["半"], 7, 1)[..4].concat());
    assert!(out.starts_with(&expected), "{out}");
    assert!(!out.contains("message_stop"), "{out}");
    let errors = error_events(&out);
    assert_eq!(errors.len(), 1, "{out}");
    assert_eq!(errors[0]["type"], "error");
    assert_eq!(errors[0]["error"]["type"], "api_error");
    let message = errors[0]["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("upstream ollama closed"), "{message}");
    expected.push_str(&text(&common::anthropic::error_event_for_tests(message)));
    assert_eq!(
        out, expected,
        "the upstream's events, then the gateway's error event only"
    );
    assert_eq!(gw.upstream_errors("ollama", "truncated"), 1.0);
    // What was read before the cut is counted (under `other`: a model is admitted as a
    // label only by an answer that succeeded).
    assert_eq!(tokens(&gw, "prompt", "other", "ollama"), 7.0);
    if sdk_present() {
        let v = common::run_python(&gw, CUT).await;
        assert_eq!(v["raw"][0], "APIStatusError", "{v}");
        assert!(
            v["raw"][1]
                .as_str()
                .unwrap()
                .contains("upstream ollama closed"),
            "{v}"
        );
        assert_eq!(
            v["seen"],
            json!([
                "message_start",
                "content_block_start",
                "content_block_delta"
            ]),
            "{v}"
        );
        assert_eq!(v["helper"], "APIStatusError", "{v}");
    }
    gw.stop().await;
}

#[actix_rt::test]
async fn garbled_oversized_and_stalled_streams_end_with_an_error_event() {
    // An event that is not the API's: the events before it, then the gateway's error.
    let mut events = stream_events("llama3", &["a"], 1, 1);
    events.insert(2, b"data: {not json}\n\n".to_vec());
    let garbled = FakeUpstream::start(move |_| Reply::sse(events.clone()));
    // An event over upstream.max_stream_line_bytes.
    let big = event(&json!({"type": "content_block_delta", "index": 0,
        "delta": {"type": "text_delta", "text": "x".repeat(70_000)}}));
    let mut events = stream_events("llama3", &["a"], 1, 1);
    events.insert(2, big);
    let oversized = FakeUpstream::start(move |_| Reply::sse(events.clone()));
    let stalled = cut_ollama(End::Hold);
    for (fake, kind, says) in [
        (&garbled, "protocol", "not a Messages API event"),
        (
            &oversized,
            "too_large",
            "larger than the limit of 65536 bytes",
        ),
        (&stalled, "timeout", "idle time limit"),
    ] {
        let gw = Gateway::start(Some(fake), None, |raw| {
            raw.upstream.max_stream_line_bytes = 65_536;
            raw.timeouts.idle = Duration::from_millis(300);
        })
        .await;
        let (status, _, out) = post(
            &gw,
            r#"{"model":"llama3","max_tokens":8,"messages":[],"stream":true}"#,
        )
        .await;
        assert_eq!(status, 200);
        let out = text(&out);
        assert!(out.starts_with("event: message_start\n"), "{kind}: {out}");
        assert!(
            !out.contains("message_stop") && !out.contains("not json") && !out.contains("xxx"),
            "{kind}: {out}"
        );
        let errors = error_events(&out);
        assert_eq!(errors.len(), 1, "{kind}: {out}");
        assert!(out.ends_with("\n\n"), "{kind}");
        let message = errors[0]["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{kind}: {message}");
        assert_eq!(gw.upstream_errors("ollama", kind), 1.0, "{kind}");
        gw.stop().await;
    }
}

#[actix_rt::test]
async fn the_upstreams_own_error_event_is_passed_on_and_the_stream_ends_there() {
    let mut events = stream_events("llama3", &["a"], 1, 1);
    let error =
        event(&json!({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}));
    events.insert(2, error.clone());
    let expected = [&events[..3].concat()[..]].concat();
    let fake = FakeUpstream::start(move |_| Reply::sse(events.clone()));
    let gw = Gateway::start(Some(&fake), None, |_| {}).await;
    let (_, _, out) = post(
        &gw,
        r#"{"model":"llama3","max_tokens":8,"messages":[],"stream":true}"#,
    )
    .await;
    assert_eq!(text(&out), text(&expected));
    assert_eq!(gw.upstream_errors("ollama", "mid_stream"), 1.0);
    gw.stop().await;
}

#[actix_rt::test]
async fn failures_before_the_answer_are_honest_statuses() {
    // Nothing listens: 502.
    let gw = Gateway::start(None, None, |_| {}).await;
    let (status, _, out) = post(&gw, r#"{"model":"llama3","max_tokens":8,"messages":[]}"#).await;
    assert_eq!(status, 502, "{}", text(&out));
    gw.stop().await;
    // No answer in time: 504.
    let hang = FakeUpstream::start(|_| Reply::Hang);
    let gw = Gateway::start(Some(&hang), None, |raw| {
        raw.timeouts.first_byte = Duration::from_millis(300);
    })
    .await;
    let (status, _, out) = post(
        &gw,
        r#"{"model":"llama3","max_tokens":8,"messages":[],"stream":true}"#,
    )
    .await;
    assert_eq!(status, 504, "{}", text(&out));
    gw.stop().await;
    // Ollama's own error, in Anthropic's shape, relayed as it is; a 2xx that is no message
    // and a whole answer cut short are 502s.
    let not_found = json!({"type": "error", "error": {"type": "not_found_error", "message": "model 'nope' not found"}});
    let body = not_found.clone();
    let fake = FakeUpstream::start(move |r| {
        match r.json()["model"].as_str().unwrap() {
        "nope" => Reply::json(404, &body),
        "runner" => Reply::json(500, &json!({"error": "llama runner process has terminated: exit status 2"})),
        "old" => Reply::Full {
            status: 404,
            headers: vec![("Content-Type".into(), "text/plain".into())],
            body: b"404 page not found".to_vec(),
        },
        "unauth" => Reply::json(401, &json!({"error": "unauthorized"})),
        "whole" => Reply::json(200, &json!({"type": "message", "usage": {"input_tokens": 1, "output_tokens": 1}})),
        "html" => Reply::Full {
            status: 200,
            headers: vec![("Content-Type".into(), "text/html".into())],
            body: b"<html>".to_vec(),
        },
        _ => Reply::Raw(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"type\":\"message\"".to_vec(),
        ),
    }
    });
    let gw = Gateway::start(Some(&fake), None, |_| {}).await;
    let (status, _, out) = post(&gw, r#"{"model":"nope","max_tokens":8,"messages":[]}"#).await;
    assert_eq!(status, 404);
    assert_eq!(serde_json::from_slice::<Value>(&out).unwrap(), not_found);
    for model in ["html", "cut"] {
        let body = format!(r#"{{"model":"{model}","max_tokens":8,"messages":[]}}"#);
        let (status, _, out) = post(&gw, &body).await;
        assert_eq!(status, 502, "{model}: {}", text(&out));
    }
    // Any other error answer becomes the gateway's, in Anthropic's shape: Ollama's own
    // `{"error": ...}`, an Ollama too old to serve /v1/messages, a refusal of the gateway
    // itself (not the client's key: 502).
    for (model, want_status, want_type) in [
        ("runner", 502, "api_error"),
        ("old", 404, "not_found_error"),
        ("unauth", 502, "api_error"),
    ] {
        let body = format!(r#"{{"model":"{model}","max_tokens":8,"messages":[]}}"#);
        let (status, _, out) = post(&gw, &body).await;
        assert_eq!(status, want_status, "{model}: {}", text(&out));
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["type"], "error", "{model}: {v}");
        assert_eq!(v["error"]["type"], want_type, "{model}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("upstream ollama"),
            "{v}"
        );
    }
    // A whole message for a streamed request is no stream: 502, not a silent empty stream.
    let (status, _, out) = post(
        &gw,
        r#"{"model":"whole","max_tokens":8,"messages":[],"stream":true}"#,
    )
    .await;
    assert_eq!(status, 502, "{}", text(&out));
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["error"]["type"], "api_error", "{v}");
    assert_eq!(gw.upstream_errors("ollama", "status"), 4.0);
    assert_eq!(gw.upstream_errors("ollama", "protocol"), 2.0);
    assert_eq!(gw.upstream_errors("ollama", "truncated"), 1.0);
    gw.stop().await;
}

#[actix_rt::test]
async fn refusals_come_before_any_upstream() {
    let ollama = ollama();
    let openai = FakeUpstream::start(|_| Reply::json(500, &json!({})));
    let gw = Gateway::start(Some(&ollama), Some(&openai), |_| {}).await;
    let narrow = "ogw_narrow_key_for_messages_0001";
    gw.set_keys(&format!(
        "{}{}",
        key_entry("test-key", "test", TEST_KEY, ""),
        key_entry("narrow", "t", narrow, "models = [\"llama3\"]")
    ));
    for (key, body, status, says) in [
        (
            TEST_KEY,
            r#"{"model":"openai/gpt-4o-mini","max_tokens":8,"messages":[]}"#,
            400,
            "does not serve",
        ),
        (
            narrow,
            r#"{"model":"qwen3:8b","max_tokens":8,"messages":[]}"#,
            403,
            "not allowed",
        ),
        // The key check comes first: a model this key may not use is a 403 on any route.
        (
            narrow,
            r#"{"model":"openai/gpt-4o-mini","max_tokens":8,"messages":[]}"#,
            403,
            "not allowed",
        ),
        // Ollama would read the second spelling: refused, not smuggled past the key check.
        (
            narrow,
            r#"{"model":"llama3","Model":"qwen3:8b","max_tokens":8,"messages":[]}"#,
            400,
            "more than once",
        ),
        (
            TEST_KEY,
            r#"{"model":"llama3","model":"qwen3:8b"}"#,
            400,
            "more than once",
        ),
        (
            TEST_KEY,
            r#"{"max_tokens":8,"messages":[]}"#,
            400,
            "model is required",
        ),
        (
            TEST_KEY,
            r#"{"model":"llama3","stream":"yes"}"#,
            400,
            "invalid request body",
        ),
        (TEST_KEY, "", 400, "missing request body"),
    ] {
        let (got, _, out) = gw
            .post_raw(PATH, body.as_bytes().to_vec(), &[("x-api-key", key)])
            .await;
        assert_eq!(got, status, "{body}: {}", text(&out));
        assert!(text(&out).contains(says), "{body}: {}", text(&out));
    }
    let mut resp = gw
        .client()
        .get(format!("{}{PATH}", gw.url))
        .insert_header(("x-api-key", TEST_KEY))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    assert_eq!(resp.headers().get("allow").unwrap(), "POST");
    let _ = resp.body().await;
    assert!(ollama.requests().is_empty() && openai.requests().is_empty());
    gw.stop().await;
}

#[actix_rt::test]
async fn a_client_that_leaves_mid_stream_cancels_the_upstream_request() {
    let ollama = cut_ollama(End::Hold);
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;
    let mut tls = gw.raw_tls().await;
    let body = r#"{"model":"llama3","max_tokens":8,"messages":[],"stream":true}"#;
    let request = common::raw_chat_request(body, "").replacen("/api/chat", PATH, 1);
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !text(&seen).contains("content_block_delta") {
        let n = tls.read(&mut buf).await.unwrap();
        assert!(n > 0, "the stream started: {}", text(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    drop(tls);
    assert!(
        ollama.wait_closed(Duration::from_secs(10)).await,
        "the upstream connection closed after the client left"
    );
    gw.stop().await;
}
