use super::*;

const SHAPE: RequestShape = RequestShape {
    stream_usage: true,
    max_tokens_param: MaxTokensParam::MaxTokens,
};

fn map(body: &str) -> Value {
    let req = ChatRequest::parse(body.as_bytes()).unwrap();
    serde_json::from_slice(&to_openai_request(&req, "gpt-4o-mini", SHAPE).unwrap()).unwrap()
}

fn map_err(body: &str) -> String {
    let req = ChatRequest::parse(body.as_bytes()).unwrap();
    to_openai_request(&req, "m", SHAPE).unwrap_err().to_string()
}

const PNG_B64: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";

#[test]
fn request_basics_and_stream_default() {
    let v = map(
        r#"{"model":"openai/gpt-4o-mini","messages":[{"role":"System","content":"請用繁體中文"},{"role":"user","content":"你好"}]}"#,
    );
    assert_eq!(v["model"], "gpt-4o-mini");
    assert_eq!(v["stream"], true);
    assert_eq!(v["stream_options"]["include_usage"], true);
    assert_eq!(
        v["messages"][0],
        json!({"role":"system","content":"請用繁體中文"})
    );
    assert_eq!(v["messages"][1]["content"], "你好");
    let v = map(r#"{"model":"m","messages":[],"stream":false}"#);
    assert_eq!(v["stream"], false);
    assert!(v.get("stream_options").is_none());
}

#[test]
fn options_map_to_parameters() {
    let v = map(
        r#"{"model":"m","options":{"num_predict":128,"num_thread":8,"temperature":0.2,"top_p":0.9,"seed":42,"stop":"\n","presence_penalty":0.5,"frequency_penalty":0.1,"top_k":40,"num_ctx":4096}}"#,
    );
    assert_eq!(v["max_tokens"], 128);
    assert_eq!(v["temperature"], 0.2);
    assert_eq!(v["top_p"], 0.9);
    assert_eq!(v["seed"], 42);
    assert_eq!(v["stop"], json!(["\n"]));
    assert_eq!(v["presence_penalty"], 0.5);
    assert_eq!(v["frequency_penalty"], 0.1);
    for dropped in ["num_thread", "top_k", "num_ctx", "num_predict", "options"] {
        assert!(v.get(dropped).is_none(), "{dropped}");
    }
    let v = map(r#"{"model":"m","options":{"num_predict":-1,"stop":["a","b"]}}"#);
    assert!(v.get("max_tokens").is_none());
    assert_eq!(v["stop"], json!(["a", "b"]));
    let req = ChatRequest::parse(br#"{"model":"m","options":{"num_predict":7}}"#).unwrap();
    let shape = RequestShape {
        stream_usage: false,
        max_tokens_param: MaxTokensParam::MaxCompletionTokens,
    };
    let v: Value = serde_json::from_slice(&to_openai_request(&req, "m", shape).unwrap()).unwrap();
    assert_eq!(v["max_completion_tokens"], 7);
    assert!(v.get("stream_options").is_none());
}

#[test]
fn option_type_errors_are_named() {
    assert!(map_err(r#"{"model":"m","options":{"temperature":"hot"}}"#)
        .contains("\"temperature\" must be of type number"));
    assert!(map_err(r#"{"model":"m","options":{"num_predict":"x"}}"#).contains("\"num_predict\""));
    assert!(map_err(r#"{"model":"m","options":{"stop":[1]}}"#).contains("\"stop\""));
}

#[test]
fn format_tools_and_think() {
    let v = map(r#"{"model":"m","format":"json"}"#);
    assert_eq!(v["response_format"], json!({"type":"json_object"}));
    let v = map(r#"{"model":"m","format":{"type":"object","properties":{"a":{"type":"string"}}}}"#);
    assert_eq!(v["response_format"]["type"], "json_schema");
    assert_eq!(v["response_format"]["json_schema"]["name"], "response");
    assert_eq!(
        v["response_format"]["json_schema"]["schema"]["type"],
        "object"
    );
    assert!(map_err(r#"{"model":"m","format":"yaml"}"#).contains("invalid format"));
    let tools = r#"[{"type":"function","function":{"name":"get_weather","description":"d","parameters":{"type":"object"}}}]"#;
    let v = map(&format!(r#"{{"model":"m","tools":{tools}}}"#));
    assert_eq!(v["tools"], serde_json::from_str::<Value>(tools).unwrap());
    assert!(map(r#"{"model":"m","tools":[]}"#).get("tools").is_none());
    assert_eq!(
        map(r#"{"model":"m","think":true}"#)["reasoning_effort"],
        "medium"
    );
    assert_eq!(
        map(r#"{"model":"m","think":"high"}"#)["reasoning_effort"],
        "high"
    );
    assert!(map_err(r#"{"model":"m","think":"very"}"#).contains("invalid think value"));
}

#[test]
fn images_become_data_uri_parts() {
    let v = map(&format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"what is this?","images":["{PNG_B64}"]}}]}}"#
    ));
    let parts = &v["messages"][0]["content"];
    assert_eq!(parts[0], json!({"type":"text","text":"what is this?"}));
    assert_eq!(parts[1]["type"], "image_url");
    assert_eq!(
        parts[1]["image_url"]["url"],
        format!("data:image/png;base64,{PNG_B64}")
    );
    assert!(
        map_err(r#"{"model":"m","messages":[{"role":"user","images":["!!!notbase64!!!"]}]}"#)
            .contains("base64")
    );
    assert!(map_err(
        r#"{"model":"m","messages":[{"role":"user","images":["data:image/png;base64,AAAA"]}]}"#
    )
    .contains("data: prefix"));
}

#[test]
fn tool_calls_and_results_are_correlated() {
    let v = map(r#"{"model":"m","messages":[
        {"role":"user","content":"weather?"},
        {"role":"assistant","tool_calls":[
            {"function":{"name":"get_weather","arguments":{"city":"Tokyo","unit":"c"}}},
            {"id":"call_x","function":{"name":"get_time","arguments":{}}}]},
        {"role":"tool","tool_name":"get_time","content":"noon"},
        {"role":"tool","tool_name":"get_weather","content":"sunny"}]}"#);
    let calls = &v["messages"][1]["tool_calls"];
    assert_eq!(v["messages"][1]["content"], Value::Null);
    assert_eq!(calls[0]["id"], "call_0");
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(
        calls[0]["function"]["arguments"],
        r#"{"city":"Tokyo","unit":"c"}"#
    );
    assert_eq!(calls[1]["id"], "call_x");
    assert_eq!(
        v["messages"][2],
        json!({"role":"tool","tool_call_id":"call_x","content":"noon"})
    );
    assert_eq!(v["messages"][3]["tool_call_id"], "call_0");
}

/// A whole answer to /api/chat that began to arrive 3 ms after the request, and was all in
/// 2 ms later.
fn whole_in(body: &[u8], shape: Shape, model: &str) -> Result<Translated, String> {
    let now = Instant::now();
    let started = now - std::time::Duration::from_millis(5);
    let timing = Timing {
        started,
        first: Some(started + std::time::Duration::from_millis(3)),
        last: Some(now),
    };
    from_openai_response(body, shape, model, timing)
}

fn whole(body: &[u8], model: &str) -> Result<Translated, String> {
    whole_in(body, Shape::Chat, model)
}

#[test]
fn non_stream_response_maps_to_ollama_shape() {
    let body = br#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"\u4f60\u597d"},"finish_reason":"length"}],"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21}}"#;
    let t = whole(body, "openai/gpt-4o-mini").unwrap();
    let v: Value = serde_json::from_slice(&t.body).unwrap();
    assert_eq!(v["model"], "openai/gpt-4o-mini");
    assert_eq!(v["message"], json!({"role":"assistant","content":"你好"}));
    assert_eq!(v["done"], true);
    assert_eq!(v["done_reason"], "length");
    assert_eq!(v["prompt_eval_count"], 9);
    assert_eq!(v["eval_count"], 12);
    assert!(v["total_duration"].as_u64().unwrap() >= 5_000_000);
    assert!(v["created_at"].as_str().unwrap().contains('T'));
    // The same fields as a streamed final line: the gateway's own measurements.
    assert_eq!(v["load_duration"], 0);
    assert_eq!(v["prompt_eval_duration"], 3_000_000);
    assert_eq!(v["eval_duration"], 2_000_000);
}

#[test]
fn non_stream_generate_answer_has_generates_shape() {
    let body = br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"\u4f60\u597d","reasoning_content":"think"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":12}}"#;
    let t = whole_in(body, Shape::Generate, "openai/m").unwrap();
    let text = String::from_utf8(t.body).unwrap();
    assert!(
        text.contains(r#""response":"你好","thinking":"think","done":true,"done_reason":"stop","total_duration":"#),
        "{text}"
    );
    let v: Value = serde_json::from_str(&text).unwrap();
    assert!(v.get("message").is_none());
    for (field, value) in [
        ("model", json!("openai/m")),
        ("load_duration", json!(0)),
        ("prompt_eval_count", json!(9)),
        ("prompt_eval_duration", json!(3_000_000)),
        ("eval_count", json!(12)),
        ("eval_duration", json!(2_000_000)),
    ] {
        assert_eq!(v[field], value, "{field}");
    }
}

#[test]
fn non_stream_tool_calls_become_objects() {
    let body = br#"{"choices":[{"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_9","type":"function","function":{"name":"f","arguments":"{\"b\":1,\"a\":2}"}}]},"finish_reason":"tool_calls"}]}"#;
    let t = whole(body, "openai/m").unwrap();
    let text = String::from_utf8(t.body).unwrap();
    assert!(text.contains(r#""tool_calls":[{"id":"call_9","function":{"index":0,"name":"f","arguments":{"b":1,"a":2}}}]"#), "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["done_reason"], "stop");
    assert_eq!(v["message"]["content"], "");
    let bad = br#"{"choices":[{"message":{"tool_calls":[{"function":{"name":"f","arguments":"{nope"}}]},"finish_reason":"tool_calls"}]}"#;
    assert!(whole(bad, "m").is_err());
    assert!(whole(b"{\"choices\":[]}", "m").is_err());
    assert!(whole(b"<html>", "m").is_err());
}

const STREAM: &str = concat!(
    ": OPENROUTER PROCESSING\n\n",
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"繁體\"},\"finish_reason\":null}]}\r\n\r\n",
    "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"中文\"},\"finish_reason\":null}]}\r\r",
    "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
    "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11}}\n\n",
    "data: [DONE]\n\n",
);

fn translate(input: &[u8], splits: &[usize]) -> (Vec<Value>, Result<(), StreamError>) {
    translate_to(Shape::Chat, input, splits)
}

fn translate_to(
    shape: Shape,
    input: &[u8],
    splits: &[usize],
) -> (Vec<Value>, Result<(), StreamError>) {
    let mut t = SseToNdjson::with_max(shape, "openai/gpt-4o-mini", Instant::now(), 1 << 20);
    let mut out = Vec::new();
    let mut start = 0;
    let mut result = Ok(());
    for &end in splits.iter().chain(std::iter::once(&input.len())) {
        if let Err(e) = t.feed(&input[start..end], &mut out) {
            result = Err(e);
            break;
        }
        start = end;
    }
    if result.is_ok() {
        result = t.finish(&mut out);
    }
    let text = String::from_utf8(out).unwrap();
    assert!(text.is_empty() || text.ends_with('\n'));
    let lines = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (lines, result)
}

fn contents(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["message"]["content"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn stream_translates_at_every_split() {
    let input = STREAM.as_bytes();
    for i in 0..=input.len() {
        let (lines, result) = translate(input, &[i]);
        assert_eq!(result, Ok(()), "split at {i}");
        assert_eq!(contents(&lines), ["繁體", "中文", ""], "split at {i}");
        let last = lines.last().unwrap();
        assert_eq!(last["done"], true);
        assert_eq!(last["done_reason"], "stop");
        assert_eq!(last["prompt_eval_count"], 9);
        assert_eq!(last["eval_count"], 2);
        assert!(last["total_duration"].as_u64().unwrap() > 0);
        for field in ["load_duration", "prompt_eval_duration", "eval_duration"] {
            assert!(last[field].is_u64(), "{field} at split {i}: {last}");
        }
        assert_eq!(last["load_duration"], 0);
        assert_eq!(lines[0]["model"], "openai/gpt-4o-mini");
        assert_eq!(lines[0]["done"], false);
        assert!(lines[0].get("load_duration").is_none());
    }
    let bytewise: Vec<usize> = (1..input.len()).collect();
    let (lines, result) = translate(input, &bytewise);
    assert_eq!(result, Ok(()));
    assert_eq!(lines.len(), 3);
}

#[test]
fn generate_stream_translates_at_every_split() {
    let thinking = "data: {\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"想\"},\"finish_reason\":null}]}\n\n";
    let input = format!("{thinking}{STREAM}");
    let input = input.as_bytes();
    for i in 0..=input.len() {
        let (lines, result) = translate_to(Shape::Generate, input, &[i]);
        assert_eq!(result, Ok(()), "split at {i}");
        let responses: Vec<&str> = lines
            .iter()
            .map(|l| l["response"].as_str().unwrap())
            .collect();
        assert_eq!(responses, ["", "繁體", "中文", ""], "split at {i}");
        assert_eq!(lines[0]["thinking"], "想");
        assert!(lines.iter().all(|l| l.get("message").is_none()));
        assert!(lines[1].get("thinking").is_none());
        let last = lines.last().unwrap();
        assert_eq!(last["done"], true);
        assert_eq!(last["done_reason"], "stop");
        assert_eq!(last["prompt_eval_count"], 9);
        assert_eq!(last["eval_count"], 2);
        assert_eq!(last["load_duration"], 0);
        assert!(last["eval_duration"].is_u64() && last["prompt_eval_duration"].is_u64());
    }
}

#[test]
fn stream_tool_call_fragments_are_assembled() {
    let input = concat!(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"index\":0,\"id\":\"call_a\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"city\\\":\"}}]}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\"東京\\\"}\"}}]}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_b\",\"type\":\"function\",\"function\":{\"name\":\"get_time\",\"arguments\":\"{}\"}}]}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
        "data: [DONE]\n\n",
    );
    for i in (0..=input.len()).step_by(7) {
        let (lines, result) = translate(input.as_bytes(), &[i]);
        assert_eq!(result, Ok(()));
        assert_eq!(lines.len(), 2, "{lines:?}");
        let calls = &lines[0]["message"]["tool_calls"];
        assert_eq!(calls[0]["id"], "call_a");
        assert_eq!(calls[0]["function"]["name"], "get_weather");
        assert_eq!(calls[0]["function"]["index"], 0);
        assert_eq!(calls[0]["function"]["arguments"], json!({"city":"東京"}));
        assert_eq!(calls[1]["function"]["name"], "get_time");
        assert_eq!(calls[1]["function"]["index"], 1);
        assert_eq!(lines[1]["done"], true);
        assert_eq!(lines[1]["done_reason"], "stop");
    }
}

#[test]
fn stream_failures_never_end_done() {
    // Ends without finish_reason or [DONE].
    let cut = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n";
    let (lines, result) = translate(cut.as_bytes(), &[]);
    assert_eq!(result, Err(StreamError::Truncated));
    assert!(lines.iter().all(|l| l["done"] == false));
    // Error event mid-stream.
    let err = format!(
        "{cut}data: {{\"error\":{{\"message\":\"overloaded\",\"type\":\"server_error\"}}}}\n\n"
    );
    let (_, result) = translate(err.as_bytes(), &[]);
    assert_eq!(result, Err(StreamError::Upstream("overloaded".into())));
    // Garbage.
    let (_, result) = translate(b"data: <html>\n\n", &[]);
    assert!(matches!(result, Err(StreamError::Protocol(_))));
    // finish_reason then EOF without [DONE] counts as finished.
    let ok = format!("{cut}data: {{\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"length\"}}]}}\n\n");
    let (lines, result) = translate(ok.as_bytes(), &[]);
    assert_eq!(result, Ok(()));
    assert_eq!(lines.last().unwrap()["done_reason"], "length");
}

#[test]
fn nothing_after_done_is_emitted() {
    let input = format!(
        "{STREAM}data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"late\"}}}}]}}\n\n"
    );
    let (lines, result) = translate(input.as_bytes(), &[]);
    assert_eq!(result, Ok(()));
    assert_eq!(lines.last().unwrap()["done"], true);
    assert!(!contents(&lines).contains(&"late".to_string()));
}

#[test]
fn events_and_assembled_tool_calls_are_bounded() {
    let feed = |max: usize, input: &str| {
        let mut t = SseToNdjson::with_max(Shape::Chat, "m", Instant::now(), max);
        let mut out = Vec::new();
        t.feed(input.as_bytes(), &mut out).map(|_| out.len())
    };
    let event = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"abc\"}}]}\n\n";
    assert!(feed(event.len(), event).is_ok());
    assert_eq!(
        feed(40, event),
        Err(StreamError::TooLarge { limit: 40 }),
        "an event longer than the limit"
    );
    // Each fragment is small; together they pass the limit before any line is written.
    let fragment = "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"xxxxxxxxxx\"}}]}}]}\n\n";
    assert_eq!(
        feed(200, &fragment.repeat(21)),
        Err(StreamError::TooLarge { limit: 200 })
    );
    assert_eq!(feed(200, &fragment.repeat(20)), Ok(0));
}
