//! Fakes for `/api/generate` and the embedding endpoints, answering as their real servers
//! do (and recording what they receive, as every `FakeUpstream` does): an Ollama serving
//! `/api/generate`, `/api/embed` and `/api/embeddings`, and an OpenAI-compatible server
//! serving `/v1/chat/completions` and `/v1/embeddings`.

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{openai_sse, raw_chat_request, FakeUpstream, Gateway, Recorded, Reply};

/// The tokens every fake generates.
pub const TOKENS: [&str; 2] = ["你", "好"];

/// Ollama's lines for a streamed generate of [`TOKENS`]: `response` chunks, then a final
/// line with the token context and every metric.
pub fn ollama_generate_lines(model: &str) -> Vec<Value> {
    let mut lines: Vec<Value> = TOKENS
        .iter()
        .map(|t| {
            json!({"model": model, "created_at": "2025-08-08T08:27:50.537Z", "response": t,
                "done": false})
        })
        .collect();
    lines.push(ollama_generate_done(model, ""));
    lines
}

/// Ollama's final generate line (or whole answer, with `response` the whole text).
pub fn ollama_generate_done(model: &str, response: &str) -> Value {
    json!({"model": model, "created_at": "2025-08-08T08:27:51.000Z", "response": response,
        "done": true, "done_reason": "stop", "context": [1, 2, 3],
        "total_duration": 5_000_000, "load_duration": 1_000_000, "prompt_eval_count": 5,
        "prompt_eval_duration": 2_000_000, "eval_count": 2, "eval_duration": 2_000_000})
}

fn is_empty(v: &Value) -> bool {
    v.as_str().is_none_or(str::is_empty)
}

/// How many texts an embedding request's `input` holds.
fn input_count(body: &Value) -> usize {
    match &body["input"] {
        Value::String(s) if s.is_empty() => 0,
        Value::String(_) => 1,
        Value::Array(list) => list.len(),
        _ => 0,
    }
}

/// What Ollama answers at each of its model endpoints.
pub fn ollama_answer(req: &Recorded) -> Reply {
    let body = req.json();
    let model = body["model"].as_str().unwrap_or_default().to_string();
    match req.path.as_str() {
        "/api/generate" if is_empty(&body["prompt"]) && is_empty(&body["system"]) => {
            let unload = body["keep_alive"] == 0;
            Reply::json(
                200,
                &json!({"model": model, "created_at": "2025-08-08T08:27:50.537Z", "response": "",
                    "done": true, "done_reason": if unload { "unload" } else { "load" }}),
            )
        }
        "/api/generate" if body["stream"] == false => {
            Reply::json(200, &ollama_generate_done(&model, &TOKENS.concat()))
        }
        "/api/generate" => Reply::ndjson(&ollama_generate_lines(&model)),
        "/api/embed" => {
            let n = input_count(&body);
            Reply::json(
                200,
                &json!({"model": model, "embeddings": vec![[0.1, -0.2, 0.3]; n],
                    "total_duration": 3_000_000, "load_duration": 1_000_000,
                    "prompt_eval_count": 4 * n}),
            )
        }
        "/api/embeddings" => Reply::json(200, &json!({"embedding": [0.5, 0.25]})),
        other => Reply::json(404, &json!({"error": format!("no fake for {other}")})),
    }
}

/// A fake Ollama answering with [`ollama_answer`].
pub fn ollama() -> FakeUpstream {
    FakeUpstream::start(ollama_answer)
}

/// What an OpenAI-compatible server answers; model `missing` does not exist.
pub fn openai_answer(req: &Recorded) -> Reply {
    let body = req.json();
    if body["model"] == "missing" {
        return Reply::json(
            404,
            &json!({"error": {"message": "The model `missing` does not exist",
                "type": "invalid_request_error", "param": null, "code": "model_not_found"}}),
        );
    }
    match req.path.as_str() {
        "/v1/chat/completions" if body["stream"] == true => Reply::sse(openai_sse(&TOKENS, "stop")),
        "/v1/chat/completions" => Reply::json(
            200,
            &json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1694268190,
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": TOKENS.concat()},
                    "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}}),
        ),
        "/v1/embeddings" => {
            let n = input_count(&body);
            // Listed last input first: the index says where each belongs.
            let data: Vec<Value> = (0..n)
                .rev()
                .map(|i| json!({"object": "embedding", "index": i, "embedding": [0.25, -0.5, i]}))
                .collect();
            Reply::json(
                200,
                &json!({"object": "list", "data": data, "model": body["model"],
                    "usage": {"prompt_tokens": 3 * n, "total_tokens": 3 * n}}),
            )
        }
        other => Reply::json(
            404,
            &json!({"error": {"message": format!("no fake for {other}")}}),
        ),
    }
}

/// A fake OpenAI-compatible server answering with [`openai_answer`].
pub fn openai() -> FakeUpstream {
    FakeUpstream::start(openai_answer)
}

/// `gateway_requests_total` for the test key's requests at `route`.
pub fn requests(gw: &Gateway, route: &str, model: &str, upstream: &str, code: u16) -> f64 {
    gw.metric(&format!(
        r#"gateway_requests_total{{code="{code}",endpoint="{route}",key_id="test-key",model="{model}",team="test",upstream="{upstream}"}}"#
    ))
}

/// `gateway_tokens_total` of `kind` for the test key.
pub fn tokens(gw: &Gateway, kind: &str, model: &str, upstream: &str) -> f64 {
    gw.metric(&format!(
        r#"gateway_tokens_total{{key_id="test-key",kind="{kind}",model="{model}",team="test",upstream="{upstream}"}}"#
    ))
}

/// POSTs `body` to `path` with the test key on a raw TLS connection and reads until the
/// first `"done":false` line arrived: a stream that is open now.
pub async fn open_stream(
    gw: &Gateway,
    path: &str,
    body: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut tls = gw.raw_tls().await;
    let request = raw_chat_request(body, "").replacen("/api/chat", path, 1);
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("\"done\":false") {
        let n = tls.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "the stream started: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    tls
}
