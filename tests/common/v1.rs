//! Fake upstreams for OpenAI's API: Ollama's `/v1/*` compatibility layer and an
//! OpenAI-compatible server, answering as those do (chunks, usage chunk, `[DONE]`), the
//! model name echoed from the request, so a test sees what the gateway made of it.

use serde_json::{json, Value};

use super::{End, FakeUpstream, Recorded, Reply};

/// Which server a fake plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// Ollama's `/v1`: no `usage` member in chunks unless it is the usage chunk.
    Ollama,
    /// OpenAI: with `include_usage`, every chunk carries `"usage":null`.
    OpenAi,
}

/// Whether the request asked for the usage chunk.
pub fn asks_usage(body: &Value) -> bool {
    body["stream_options"]["include_usage"] == true
}

/// One chunk of a chat stream, as `flavour` writes it.
fn chunk(flavour: Flavour, usage: bool, model: &str, choice: Value) -> Vec<u8> {
    let mut c = json!({"id":"chatcmpl-7","object":"chat.completion.chunk","created":1733100000,
        "model":model,"system_fingerprint":"fp_ollama","choices":[choice]});
    if flavour == Flavour::OpenAi && usage {
        c["usage"] = Value::Null;
    }
    format!("data: {c}\n\n").into_bytes()
}

/// The chunks of a chat stream of `tokens` (or of one streamed tool call when `tool` is
/// set), with the usage chunk when `usage`, then `[DONE]` when `done`.
pub fn chat_chunks(
    flavour: Flavour,
    model: &str,
    tokens: &[&str],
    tool: bool,
    usage: bool,
    done: bool,
) -> Vec<Vec<u8>> {
    let mut out = vec![chunk(
        flavour,
        usage,
        model,
        json!({"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}),
    )];
    if tool {
        out.push(chunk(
            flavour,
            usage,
            model,
            json!({"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function",
            "function":{"name":"get_weather","arguments":""}}]},"finish_reason":null}),
        ));
        for part in ["{\"city\":", "\"Taipei\"}"] {
            out.push(chunk(
                flavour,
                usage,
                model,
                json!({"index":0,"delta":{"tool_calls":[{"index":0,
                "function":{"arguments":part}}]},"finish_reason":null}),
            ));
        }
    }
    for t in tokens {
        out.push(chunk(
            flavour,
            usage,
            model,
            json!({"index":0,"delta":{"content":t},"finish_reason":null}),
        ));
    }
    let finish = if tool { "tool_calls" } else { "stop" };
    out.push(chunk(
        flavour,
        usage,
        model,
        json!({"index":0,"delta":{},"finish_reason":finish}),
    ));
    if usage {
        let u = json!({"id":"chatcmpl-7","object":"chat.completion.chunk","created":1733100000,"model":model,
            "system_fingerprint":"fp_ollama","choices":[],"usage":{"prompt_tokens":11,"completion_tokens":7,"total_tokens":18}});
        out.push(format!("data: {u}\n\n").into_bytes());
    }
    if done {
        out.push(b"data: [DONE]\n\n".to_vec());
    }
    out
}

/// A whole chat completion: `content`, or the text of `response_format` when JSON asked.
pub fn chat_completion(model: &str, content: &str, tool: bool) -> Value {
    let message = if tool {
        json!({"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function",
            "function":{"name":"get_weather","arguments":"{\"city\":\"Taipei\"}"}}]})
    } else {
        json!({"role":"assistant","content":content})
    };
    json!({"id":"chatcmpl-7","object":"chat.completion","created":1733100000,"model":model,
        "system_fingerprint":"fp_ollama","choices":[{"index":0,"message":message,
        "finish_reason": if tool {"tool_calls"} else {"stop"}}],
        "usage":{"prompt_tokens":11,"completion_tokens":7,"total_tokens":18}})
}

/// The fake's answer to one request on its `/v1/...` (`prefix` is the part of the path
/// before `/chat/completions`, `/completions`, `/embeddings`): the model echoed from the
/// request; a model named `cut` streams two chunks and closes the connection.
pub fn answer(flavour: Flavour, prefix: &str, req: &Recorded) -> Reply {
    let body = req.json();
    let model = body["model"].as_str().unwrap_or_default().to_string();
    let stream = body["stream"] == true;
    let tool = body.get("tools").is_some();
    let path = req.path.strip_prefix(prefix).unwrap_or(&req.path);
    match path {
        "/chat/completions" if stream && model.ends_with("cut") => Reply::stream(
            "text/event-stream",
            chat_chunks(flavour, &model, &["Hel", "lo"], false, false, false)[..2].to_vec(),
            End::Close,
        ),
        "/chat/completions" if stream => Reply::sse(chat_chunks(
            flavour,
            &model,
            &["Hel", "lo"],
            tool,
            asks_usage(&body),
            true,
        )),
        "/chat/completions" => {
            let content = if body["response_format"]["type"] == "json_object" {
                "{\"answer\":42}"
            } else {
                "Hello"
            };
            Reply::json(200, &chat_completion(&model, content, tool))
        }
        "/completions" if stream => {
            let mut out: Vec<Vec<u8>> = ["def ", "f():"]
                .iter()
                .map(|t| {
                    let c = json!({"id":"cmpl-1","object":"text_completion","created":1733100000,"model":model,
                        "choices":[{"index":0,"text":t,"finish_reason":null}]});
                    format!("data: {c}\n\n").into_bytes()
                })
                .collect();
            if asks_usage(&body) {
                let u = json!({"id":"cmpl-1","object":"text_completion","created":1733100000,"model":model,
                    "choices":[],"usage":{"prompt_tokens":4,"completion_tokens":2,"total_tokens":6}});
                out.push(format!("data: {u}\n\n").into_bytes());
            }
            out.push(b"data: [DONE]\n\n".to_vec());
            Reply::sse(out)
        }
        "/completions" => Reply::json(
            200,
            &json!({"id":"cmpl-1","object":"text_completion","created":1733100000,
            "model":model,"choices":[{"index":0,"text":"def f():","finish_reason":"stop"}],
            "usage":{"prompt_tokens":4,"completion_tokens":2,"total_tokens":6}}),
        ),
        "/embeddings" => Reply::json(
            200,
            &json!({"object":"list","model":model,
            "data":[{"object":"embedding","index":0,"embedding":[0.25,-0.5,1.0]}],
            "usage":{"prompt_tokens":3,"total_tokens":3}}),
        ),
        _ => Reply::json(
            404,
            &json!({"error":{"message":"404 page not found","type":"invalid_request_error"}}),
        ),
    }
}

/// A fake Ollama serving `/v1/*`.
pub fn ollama() -> FakeUpstream {
    FakeUpstream::start(|req| answer(Flavour::Ollama, "/v1", req))
}

/// A fake OpenAI-compatible upstream (`base_url` is `{fake}/v1`).
pub fn openai() -> FakeUpstream {
    FakeUpstream::start(|req| answer(Flavour::OpenAi, "/v1", req))
}

/// The `data` of each event of an SSE body, in order.
pub fn sse_data(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}
