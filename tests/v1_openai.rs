//! OpenAI's API in front of both upstreams: the official `openai` Python SDK over TLS, and
//! byte-level checks of what the upstreams receive and the client gets back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::v1::{self, chat_chunks, sse_data, Flavour};
use common::{End, FakeUpstream, Gateway, Reply, TEST_KEY};
use serde_json::{json, Value};

const SDK: &str = r#"
import os, json, httpx, openai
client = openai.OpenAI(base_url=os.environ["GW"] + "/v1", api_key=os.environ["GW_KEY"],
    http_client=httpx.Client(verify=os.environ["GW_CA"]), max_retries=0)
out = {}
hi = [{"role": "user", "content": "hi"}]
tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
    "properties": {"city": {"type": "string"}}}}}]
for name, model in [("ollama", "llama3:instruct"), ("openai", "openai/gpt-4o-mini")]:
    r = client.chat.completions.create(model=model, messages=hi)
    out[name + "_whole"] = [r.model, r.choices[0].message.content, r.usage.total_tokens]
    chunks = list(client.chat.completions.create(model=model, messages=hi, stream=True))
    out[name + "_stream"] = ["".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
        sorted({c.model for c in chunks}), [c.usage is not None for c in chunks], len(chunks)]
    chunks = list(client.chat.completions.create(model=model, messages=hi, stream=True,
        stream_options={"include_usage": True}))
    out[name + "_usage"] = [chunks[-1].choices, chunks[-1].usage.completion_tokens, len(chunks)]
    calls = {}
    for c in client.chat.completions.create(model=model, messages=hi, tools=tools, stream=True):
        for t in (c.choices[0].delta.tool_calls or []) if c.choices else []:
            calls.setdefault(t.index, {"name": "", "arguments": ""})
            calls[t.index]["name"] += t.function.name or ""
            calls[t.index]["arguments"] += t.function.arguments or ""
    out[name + "_tools"] = calls[0]
    r = client.chat.completions.create(model=model, messages=hi, response_format={"type": "json_object"})
    out[name + "_json"] = json.loads(r.choices[0].message.content)
    e = client.embeddings.create(model=model, input="hi")
    out[name + "_embed"] = [e.model, e.data[0].embedding, e.usage.prompt_tokens]
    c = client.completions.create(model=model, prompt="def")
    out[name + "_completion"] = [c.model, c.choices[0].text]
    out[name + "_completion_stream"] = "".join(p.choices[0].text for p in
        client.completions.create(model=model, prompt="def", stream=True))
    try:
        for _ in client.chat.completions.create(model=model + "-cut", messages=hi, stream=True):
            pass
        out[name + "_cut"] = "clean end"
    except openai.APIError as e:
        out[name + "_cut"] = [type(e).__name__, e.message]
print(json.dumps(out))
"#;

#[actix_rt::test]
async fn the_official_openai_sdk_works_on_both_upstreams() {
    if !common::skip::available(
        common::skip::runs("python3", &["-c", "import openai"]),
        "python3 module `openai` (pip install openai)",
    ) {
        return;
    }
    let (ollama, openai) = (v1::ollama(), v1::openai());
    let gw = Gateway::start(Some(&ollama), Some(&openai), |_| {}).await;
    let v = common::run_python(&gw, SDK).await;
    for (name, model) in [
        ("ollama", "llama3:instruct"),
        ("openai", "openai/gpt-4o-mini"),
    ] {
        let at = |what: &str| v[format!("{name}_{what}")].clone();
        assert_eq!(at("whole"), json!([model, "Hello", 18]), "{name}");
        // No usage asked for, none seen; the gateway's own usage chunk was not passed on.
        assert_eq!(
            at("stream"),
            json!(["Hello", [model], [false, false, false, false], 4]),
            "{name}"
        );
        assert_eq!(at("usage"), json!([[], 7, 5]), "{name}");
        assert_eq!(
            at("tools"),
            json!({"name": "get_weather", "arguments": "{\"city\":\"Taipei\"}"}),
            "{name}"
        );
        assert_eq!(at("json"), json!({"answer": 42}), "{name}");
        assert_eq!(at("embed"), json!([model, [0.25, -0.5, 1.0], 3]), "{name}");
        assert_eq!(at("completion"), json!([model, "def f():"]), "{name}");
        assert_eq!(at("completion_stream"), "def f():", "{name}");
        let cut = at("cut");
        assert_eq!(cut[0], "APIError", "{name}: {cut}");
        assert!(
            cut[1].as_str().unwrap().contains("upstream"),
            "{name}: {cut}"
        );
    }
    // What each upstream was asked: the OpenAI one by its own name, Ollama by the client's.
    let sent: Vec<Value> = openai
        .requests()
        .iter()
        .map(common::Recorded::json)
        .collect();
    assert!(sent
        .iter()
        .all(|b| b["model"].as_str().unwrap().starts_with("gpt-4o-mini")));
    let sent: Vec<Value> = ollama
        .requests()
        .iter()
        .map(common::Recorded::json)
        .collect();
    assert!(sent
        .iter()
        .all(|b| b["model"].as_str().unwrap().starts_with("llama3:instruct")));
    assert!(ollama.requests().iter().all(|r| r.path.starts_with("/v1/")));
    // The response_format went as it came.
    let asked = sent
        .iter()
        .find(|b| b.get("response_format").is_some())
        .unwrap();
    assert_eq!(asked["response_format"], json!({"type": "json_object"}));
    // The tokens counted, the endpoint labelled.
    let series = r#"gateway_requests_total{code="200",endpoint="/v1/chat/completions",key_id="test-key",model="openai/gpt-4o-mini",team="test",upstream="openai"}"#;
    assert_eq!(gw.metric(series), 5.0);
    let tokens = r#"gateway_tokens_total{key_id="test-key",kind="completion",model="openai/gpt-4o-mini",team="test",upstream="openai"}"#;
    // 7 for each of the 4 chats that got a usage (whole, two streams, json), 7 for the tool
    // stream, 2 for each of the two completions.
    assert_eq!(gw.metric(tokens), 7.0 * 5.0 + 2.0 * 2.0);
    gw.stop().await;
}

/// POSTs `body` as it is to `path`; status and whole body.
async fn post(gw: &Gateway, path: &str, body: &str) -> (u16, Vec<u8>) {
    let (status, _, body) = gw.post_raw(path, body.as_bytes().to_vec(), &[]).await;
    (status, body)
}

#[actix_rt::test]
async fn only_the_model_is_rewritten_in_the_upstreams_request() {
    let (ollama, openai) = (v1::ollama(), v1::openai());
    let gw = Gateway::start(Some(&ollama), Some(&openai), |_| {}).await;
    let body = r#"{ "temperature" : 0.70, "model":"openai/gpt-4o-mini",
        "messages":[{"role":"user","content":"caf\u00e9 ☕"}], "seed": 1e3 }"#;
    let (status, answer) = post(&gw, "/v1/chat/completions", body).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    let sent = openai.last();
    assert_eq!(
        String::from_utf8(sent.body.clone()).unwrap(),
        body.replace("openai/gpt-4o-mini", "gpt-4o-mini")
    );
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(
        sent.header("authorization"),
        Some(format!("Bearer {}", common::UPSTREAM_KEY).as_str())
    );
    // Ollama gets it byte for byte, and none of the client's credentials.
    let body = body.replace("openai/gpt-4o-mini", "llama3:instruct");
    let (status, _) = post(&gw, "/v1/embeddings", &body).await;
    assert_eq!(status, 200);
    let sent = ollama.last();
    assert_eq!(sent.path, "/v1/embeddings");
    assert_eq!(String::from_utf8(sent.body.clone()).unwrap(), body);
    assert!(sent.header("authorization").is_none());
    // A stream that did not ask for usage: asked for it upstream, nothing else changed.
    let body = r#"{"model":"llama3:instruct","stream":true,"messages":[]}"#;
    let (status, _) = post(&gw, "/v1/chat/completions", body).await;
    assert_eq!(status, 200);
    assert_eq!(
        ollama.last().body,
        br#"{"stream_options":{"include_usage":true},"model":"llama3:instruct","stream":true,"messages":[]}"#
    );
    gw.stop().await;
}

#[actix_rt::test]
async fn a_client_that_did_not_ask_for_usage_sees_exactly_the_upstreams_chunks() {
    let (ollama, openai) = (v1::ollama(), v1::openai());
    let gw = Gateway::start(Some(&ollama), Some(&openai), |_| {}).await;
    for (flavour, model, upstream_model) in [
        (Flavour::Ollama, "llama3:instruct", "llama3:instruct"),
        (Flavour::OpenAi, "openai/gpt-4o-mini", "gpt-4o-mini"),
    ] {
        let body = json!({"model": model, "stream": true, "messages": []}).to_string();
        let (status, got) = post(&gw, "/v1/chat/completions", &body).await;
        assert_eq!(status, 200);
        // What the upstream sends a client that asks for no usage, under the client's name.
        let want: Vec<u8> =
            chat_chunks(flavour, upstream_model, &["Hel", "lo"], false, false, true).concat();
        let want = String::from_utf8(want).unwrap().replace(
            &format!("\"model\":\"{upstream_model}\""),
            &format!("\"model\":\"{model}\""),
        );
        assert_eq!(String::from_utf8(got).unwrap(), want, "{model}");
        // One that asks gets the usage chunk as the upstream sent it.
        let body = json!({"model": model, "stream": true, "messages": [],
            "stream_options": {"include_usage": true}})
        .to_string();
        let (_, got) = post(&gw, "/v1/chat/completions", &body).await;
        let data = sse_data(&got);
        assert_eq!(data.last().unwrap(), "[DONE]");
        let usage: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["total_tokens"], 18);
        assert_eq!(usage["model"], model);
    }
    let tokens = r#"gateway_tokens_total{key_id="test-key",kind="prompt",model="llama3:instruct",team="test",upstream="ollama"}"#;
    assert_eq!(gw.metric(tokens), 22.0);
    gw.stop().await;
}

#[actix_rt::test]
async fn a_cut_or_garbled_stream_ends_with_an_error_event_never_done() {
    let garbled = |_: &common::Recorded| {
        let mut chunks = chat_chunks(Flavour::Ollama, "llama3", &["a"], false, true, true);
        chunks.insert(2, b"data: {not json\n\n".to_vec());
        Reply::sse(chunks)
    };
    for (upstream, what) in [
        (FakeUpstream::start(garbled), "not a JSON object"),
        (
            FakeUpstream::start(|_| {
                Reply::stream(
                    "text/event-stream",
                    chat_chunks(Flavour::Ollama, "llama3", &["a", "b"], false, true, false),
                    End::Terminate,
                )
            }),
            "ended the answer before finishing it",
        ),
        (
            FakeUpstream::start(|_| {
                Reply::stream(
                    "text/event-stream",
                    chat_chunks(Flavour::Ollama, "llama3", &["a"], false, false, false)[..1]
                        .to_vec(),
                    End::Hold,
                )
            }),
            "timed out",
        ),
    ] {
        let gw = Gateway::start(Some(&upstream), None, |raw| {
            raw.timeouts.idle = Duration::from_millis(300);
        })
        .await;
        let (status, got) = post(
            &gw,
            "/v1/chat/completions",
            r#"{"model":"llama3","stream":true}"#,
        )
        .await;
        assert_eq!(status, 200);
        let data = sse_data(&got);
        assert!(!data.iter().any(|d| d == "[DONE]"), "{data:?}");
        let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
        assert_eq!(last["error"]["type"], "server_error", "{last}");
        let message = last["error"]["message"].as_str().unwrap();
        assert!(message.contains(what), "{message}");
        gw.stop().await;
    }
}

#[actix_rt::test]
async fn smuggling_bodies_are_refused_before_any_upstream() {
    let (ollama, openai) = (v1::ollama(), v1::openai());
    let gw = Gateway::start(Some(&ollama), Some(&openai), |_| {}).await;
    for body in [
        r#"{"model":"llama3","model":"openai/gpt-4o"}"#,
        r#"{"model":"openai/gpt-4o-mini","Model":"llama3"}"#,
        r#"{"model":"llama3","stream":false,"stream":true}"#,
        r#"{"model":"llama3","stream":true,"Stream_Options":{"include_usage":false}}"#,
        r#"{"model":"llama3","stream":true,"stream_options":{"include_usage":true,"INCLUDE_USAGE":false}}"#,
        r#"{"model":"openai/x","messages":[]"#,
        r#"{"messages":[]}"#,
    ] {
        for path in ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"] {
            let (status, got) = post(&gw, path, body).await;
            assert_eq!(
                status,
                400,
                "{path} {body}: {}",
                String::from_utf8_lossy(&got)
            );
        }
    }
    assert!(ollama.requests().is_empty() && openai.requests().is_empty());
    gw.stop().await;
}

#[actix_rt::test]
async fn upstream_failures_are_reported_honestly() {
    let ollama = FakeUpstream::start(|_| {
        Reply::json(
            404,
            &json!({"error":{"message":"model \"nope\" not found, try pulling it first","type":"api_error"}}),
        )
    });
    let slow = FakeUpstream::start(|_| Reply::Hang);
    let gw = Gateway::start(Some(&ollama), Some(&slow), |raw| {
        raw.timeouts.first_byte = Duration::from_millis(300);
    })
    .await;
    let (status, got) = post(&gw, "/v1/chat/completions", r#"{"model":"nope"}"#).await;
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&got).contains("not found"));
    let (status, _) = post(&gw, "/v1/chat/completions", r#"{"model":"openai/gpt-4o"}"#).await;
    assert_eq!(status, 504);
    gw.stop().await;
    let gw = Gateway::start(None, None, |_| {}).await;
    let (status, _) = post(&gw, "/v1/embeddings", r#"{"model":"llama3","input":"x"}"#).await;
    assert_eq!(status, 502);
    let (status, _) = post(
        &gw,
        "/v1/completions",
        r#"{"model":"openai/gpt-4o","prompt":"x","stream":true}"#,
    )
    .await;
    assert_eq!(status, 502);
    gw.stop().await;
}

#[actix_rt::test]
async fn a_model_the_key_excludes_is_refused() {
    let (ollama, openai) = (v1::ollama(), v1::openai());
    let gw = Gateway::start(Some(&ollama), Some(&openai), |_| {}).await;
    gw.set_keys(&common::key_entry(
        "test-key",
        "test",
        TEST_KEY,
        "models = [\"llama3:*\"]",
    ));
    let (status, _) = post(
        &gw,
        "/v1/chat/completions",
        r#"{"model":"openai/gpt-4o-mini"}"#,
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = post(
        &gw,
        "/v1/chat/completions",
        r#"{"model":"llama3:instruct"}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert!(openai.requests().is_empty());
    gw.stop().await;
}

#[actix_rt::test]
async fn a_client_that_goes_away_cancels_the_upstream_request() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let ollama = FakeUpstream::start(|_| {
        let first = chat_chunks(Flavour::Ollama, "hold", &["a"], false, false, false);
        Reply::stream("text/event-stream", first[..2].to_vec(), End::Hold)
    });
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;
    let mut tls = gw.raw_tls().await;
    let body = r#"{"model":"hold","stream":true,"messages":[]}"#;
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nAuthorization: Bearer {TEST_KEY}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("\"content\":\"a\"") {
        let n = tls.read(&mut buf).await.unwrap();
        assert!(n > 0, "stream started: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    drop(tls);
    assert!(ollama.wait_closed(Duration::from_secs(10)).await);
    let series = r#"gateway_requests_total{code="499",endpoint="/v1/chat/completions",key_id="test-key",model="other",team="test",upstream="ollama"}"#;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while gw
        .metrics
        .render()
        .windows(series.len())
        .all(|w| w != series.as_bytes())
    {
        assert!(tokio::time::Instant::now() < deadline, "no 499 recorded");
        tokio::task::yield_now().await;
    }
    assert_eq!(gw.metric(series), 1.0);
    gw.stop().await;
}
