//! /api/chat to an OpenAI-compatible upstream: translated both ways.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ndjson, openai_sse, FakeUpstream, Gateway, Reply, UPSTREAM_KEY};
use ollama_gateway::config::RawOpenAi;
use serde_json::{json, Value};

fn completion(content: &str) -> Value {
    json!({"id":"chatcmpl-1","object":"chat.completion","created":1694268190,"model":"gpt-4o-mini",
        "choices":[{"index":0,"message":{"role":"assistant","content":content},"finish_reason":"stop"}],
        "usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21}})
}

#[actix_rt::test]
async fn non_stream_is_translated_both_ways() {
    let reply = Reply::json(200, &completion("您好，我是客服助理。"));
    let openai = FakeUpstream::start(move |_| reply.clone());
    let gw = Gateway::start(None, Some(&openai), |_| {}).await;
    let (status, headers, out) = gw
        .post_raw(
            "/api/chat",
            serde_json::to_vec(&json!({
                "model": "openai/gpt-4o-mini",
                "messages": [
                    {"role": "system", "content": "請用繁體中文（台灣用語）。"},
                    {"role": "user", "content": "幫我寫三句客服問候語"}],
                "stream": false,
                "options": {"num_predict": 128, "num_thread": 8, "temperature": 0.3, "top_p": 0.8,
                            "seed": 7, "stop": ["\n\n"], "presence_penalty": 0.1, "frequency_penalty": 0.2},
                "format": "json"
            }))
            .unwrap(),
            &[("x-api-key", common::TEST_KEY)],
        )
        .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&out));
    assert_eq!(
        headers.get("content-type").unwrap(),
        "application/json; charset=utf-8"
    );
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["model"], "openai/gpt-4o-mini");
    assert_eq!(
        v["message"],
        json!({"role":"assistant","content":"您好，我是客服助理。"})
    );
    assert_eq!(v["done"], true);
    assert_eq!(v["done_reason"], "stop");
    assert_eq!(v["prompt_eval_count"], 9);
    assert_eq!(v["eval_count"], 12);
    assert!(v["total_duration"].as_u64().unwrap() > 0);
    let created = v["created_at"].as_str().unwrap();
    assert!(created.ends_with('Z') && created.contains('T'), "{created}");

    let rec = openai.last();
    assert_eq!(rec.path, "/v1/chat/completions");
    assert_eq!(
        rec.header("authorization"),
        Some(format!("Bearer {UPSTREAM_KEY}").as_str())
    );
    assert_eq!(rec.header("host"), Some(openai.addr.to_string().as_str()));
    assert_eq!(rec.header("x-api-key"), None);
    let sent = rec.json();
    assert_eq!(sent["model"], "gpt-4o-mini");
    assert_eq!(sent["stream"], false);
    assert_eq!(sent["max_tokens"], 128);
    assert_eq!(sent["temperature"], 0.3);
    assert_eq!(sent["top_p"], 0.8);
    assert_eq!(sent["seed"], 7);
    assert_eq!(sent["stop"], json!(["\n\n"]));
    assert_eq!(sent["presence_penalty"], 0.1);
    assert_eq!(sent["frequency_penalty"], 0.2);
    assert_eq!(sent["response_format"], json!({"type":"json_object"}));
    assert!(sent.get("num_thread").is_none() && sent.get("options").is_none());
    assert_eq!(
        sent["messages"][0],
        json!({"role":"system","content":"請用繁體中文（台灣用語）。"})
    );
    gw.stop().await;
}

#[actix_rt::test]
async fn stream_is_translated_to_ndjson_with_usage() {
    // Events deliberately split at awkward places, including inside a UTF-8 character.
    let whole: Vec<u8> = openai_sse(&["您", "好", "，世界"], "stop").concat();
    let mut chunks = Vec::new();
    let mut rest = &whole[..];
    for size in [5usize, 1, 70, 3, 2, 200, 11] {
        let n = size.min(rest.len());
        chunks.push(rest[..n].to_vec());
        rest = &rest[n..];
    }
    chunks.push(rest.to_vec());
    let reply = Reply::sse(chunks);
    let openai = FakeUpstream::start(move |_| reply.clone());
    let gw = Gateway::start(None, Some(&openai), |_| {}).await;
    let (status, headers, out) = gw
        .chat(&json!({"model":"openai/gpt-4o-mini","messages":[{"role":"user","content":"你好"}]}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(headers.get("content-type").unwrap(), "application/x-ndjson");
    assert_eq!(headers.get("cache-control").unwrap(), "no-cache");
    assert_eq!(headers.get("x-accel-buffering").unwrap(), "no");
    let lines = ndjson(&out);
    let contents: Vec<&str> = lines
        .iter()
        .map(|l| l["message"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["您", "好", "，世界", ""]);
    for line in &lines[..3] {
        assert_eq!(line["done"], false);
        assert_eq!(line["model"], "openai/gpt-4o-mini");
        assert_eq!(line["message"]["role"], "assistant");
    }
    let last = &lines[3];
    assert_eq!(last["done"], true);
    assert_eq!(last["done_reason"], "stop");
    assert_eq!(last["prompt_eval_count"], 9);
    assert_eq!(last["eval_count"], 12);
    assert!(
        last["total_duration"].as_u64().unwrap() >= last["prompt_eval_duration"].as_u64().unwrap()
    );

    let sent = openai.last().json();
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));
    assert_eq!(openai.last().header("accept"), Some("text/event-stream"));
    gw.stop().await;
}

#[actix_rt::test]
async fn the_upstream_connection_is_reused_after_a_complete_stream() {
    // `[DONE]` comes just before the end of the chunked body: a gateway that stops reading
    // there drops (closes) the connection, and every stream pays a new one.
    let reply = Reply::sse(openai_sse(&["a", "b"], "stop"));
    let openai = FakeUpstream::start(move |_| reply.clone());
    let gw = Gateway::start(None, Some(&openai), |_| {}).await;
    for _ in 0..3 {
        let (status, _, out) = gw
            .chat(
                &json!({"model":"openai/gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}),
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(ndjson(&out).last().unwrap()["done"], true);
    }
    assert_eq!(openai.requests().len(), 3);
    assert_eq!(openai.connections(), 1);
    gw.stop().await;
}

#[actix_rt::test]
async fn tool_calls_round_trip() {
    let sse = vec![
        b"data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"tool_calls\":[{\"index\":0,\"id\":\"call_abc\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]}}]}\n\n".to_vec(),
        b"data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"city\\\":\"}}]}}]}\n\n".to_vec(),
        b"data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\"Tokyo\\\"}\"}}]}}]}\n\n".to_vec(),
        b"data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n".to_vec(),
        b"data: [DONE]\n\n".to_vec(),
    ];
    let reply = Reply::sse(sse);
    let openai = FakeUpstream::start(move |_| reply.clone());
    let gw = Gateway::start(None, Some(&openai), |_| {}).await;
    let tools = json!([{"type":"function","function":{"name":"get_weather","description":"Weather in a city",
        "parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}]);
    let (status, _, out) = gw
        .chat(&json!({"model":"openai/gpt-4o-mini","stream":true,"tools":tools,"messages":[
            {"role":"user","content":"weather in Tokyo?"},
            {"role":"assistant","tool_calls":[{"function":{"name":"get_weather","arguments":{"city":"Osaka"}}}]},
            {"role":"tool","tool_name":"get_weather","content":"sunny"}]}))
        .await;
    assert_eq!(status, 200);
    let lines = ndjson(&out);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let call = &lines[0]["message"]["tool_calls"][0];
    assert_eq!(call["id"], "call_abc");
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["function"]["arguments"], json!({"city":"Tokyo"}));
    assert_eq!(lines[1]["done"], true);
    assert_eq!(lines[1]["done_reason"], "stop");

    let sent = openai.last().json();
    assert_eq!(sent["tools"], tools);
    let msgs = &sent["messages"];
    assert_eq!(
        msgs[1]["tool_calls"][0]["function"]["arguments"],
        r#"{"city":"Osaka"}"#
    );
    assert_eq!(msgs[1]["tool_calls"][0]["type"], "function");
    let id = msgs[1]["tool_calls"][0]["id"].as_str().unwrap();
    assert_eq!(
        msgs[2],
        json!({"role":"tool","tool_call_id":id,"content":"sunny"})
    );
    gw.stop().await;
}

#[actix_rt::test]
async fn images_go_as_data_uri_parts() {
    let reply = Reply::json(200, &completion("a red pixel"));
    let openai = FakeUpstream::start(move |_| reply.clone());
    let gw = Gateway::start(None, Some(&openai), |_| {}).await;
    let png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";
    let (status, _, _) = gw
        .chat(&json!({"model":"openai/gpt-4o-mini","stream":false,
            "messages":[{"role":"user","content":"what is this?","images":[png]}]}))
        .await;
    assert_eq!(status, 200);
    let sent = openai.last().json();
    assert_eq!(
        sent["messages"][0]["content"][1]["image_url"]["url"],
        format!("data:image/png;base64,{png}")
    );
    gw.stop().await;
}

#[actix_rt::test]
async fn prefixes_are_configuration() {
    let openai = FakeUpstream::start(|_| Reply::json(200, &completion("from openai")));
    let groq = FakeUpstream::start(|_| Reply::json(200, &completion("from groq")));
    let groq_url = format!("{}/openai/v1", groq.url());
    let gw = Gateway::start(None, Some(&openai), move |raw| {
        raw.upstreams.insert(
            "groq".into(),
            RawOpenAi {
                base_url: groq_url,
                api_key: ollama_gateway::secret::Secret::new("gsk-groq-key"),
                ..RawOpenAi::default()
            },
        );
    })
    .await;
    let (status, _, out) = gw
        .chat(&json!({"model":"groq/llama-3.1-8b-instant","stream":false,"messages":[{"role":"user","content":"hi"}]}))
        .await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["message"]["content"], "from groq");
    assert_eq!(v["model"], "groq/llama-3.1-8b-instant");
    let rec = groq.last();
    assert_eq!(rec.path, "/openai/v1/chat/completions");
    assert_eq!(rec.json()["model"], "llama-3.1-8b-instant");
    assert_eq!(
        rec.header("authorization"),
        Some("Bearer gsk-groq-key"),
        "each upstream gets its own key"
    );
    assert!(openai.requests().is_empty());
    gw.stop().await;
}

#[actix_rt::test]
async fn an_upstream_that_needs_a_key_and_has_none_is_not_contacted() {
    let openai = FakeUpstream::start(|_| Reply::json(200, &completion("should not happen")));
    let groq = FakeUpstream::start(|_| Reply::json(200, &completion("should not happen")));
    let groq_url = format!("{}/v1", groq.url());
    let gw = Gateway::start(None, Some(&openai), move |raw| {
        raw.upstreams.get_mut("openai").unwrap().api_key = Default::default();
        raw.upstreams.insert(
            "groq".into(),
            RawOpenAi {
                base_url: groq_url,
                ..RawOpenAi::default()
            },
        );
    })
    .await;
    for (model, expected) in [
        (
            "openai/gpt-4o-mini",
            "upstream openai has no API key configured: set OPENAI_API_KEY",
        ),
        (
            "groq/llama-3.1-8b-instant",
            "upstream groq has no API key configured: set GATEWAY__UPSTREAMS__GROQ__API_KEY",
        ),
    ] {
        for stream in [true, false] {
            let (status, headers, out) = gw
                .chat(&json!({"model":model,"stream":stream,"messages":[{"role":"user","content":"hi"}]}))
                .await;
            assert_eq!(status, 503, "{model}");
            assert_eq!(common::json_error(&headers, &out), expected);
        }
    }
    assert!(openai.requests().is_empty() && openai.connections() == 0);
    assert!(groq.requests().is_empty() && groq.connections() == 0);
    assert_eq!(
        gw.metric(r#"gateway_rejections_total{reason="upstream_no_key"}"#),
        4.0
    );
    gw.stop().await;
}

#[actix_rt::test]
async fn an_upstream_that_needs_no_key_gets_no_authorization() {
    let vllm = FakeUpstream::start(|_| Reply::json(200, &completion("from vllm")));
    let vllm_url = format!("{}/v1", vllm.url());
    let gw = Gateway::start(None, None, move |raw| {
        raw.upstreams.insert(
            "vllm".into(),
            RawOpenAi {
                base_url: vllm_url,
                requires_api_key: Some(false),
                ..RawOpenAi::default()
            },
        );
    })
    .await;
    let (status, _, out) = gw
        .chat(&json!({"model":"vllm/qwen","stream":false,"messages":[{"role":"user","content":"hi"}]}))
        .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&out));
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["message"]["content"], "from vllm");
    let rec = vllm.last();
    assert_eq!(rec.json()["model"], "qwen");
    assert_eq!(rec.header("authorization"), None);
    gw.stop().await;
}
