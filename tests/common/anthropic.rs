//! Fake-upstream helpers for Ollama's Anthropic Messages API (`/v1/messages`): the events
//! of a streamed answer, one chunk each, and a whole answer, as Ollama writes them.

use serde_json::{json, Value};

use super::{FakeUpstream, Reply};

/// One SSE event: `event: <type>` and its JSON `data`.
pub fn event(data: &Value) -> Vec<u8> {
    let kind = data["type"].as_str().unwrap_or("message");
    format!("event: {kind}\ndata: {data}\n\n").into_bytes()
}

/// The events of a streamed answer of `tokens`: `message_start` with `input` tokens,
/// a text block, `message_delta` with `output` tokens, `message_stop`. One chunk each.
pub fn stream_events(model: &str, tokens: &[&str], input: u64, output: u64) -> Vec<Vec<u8>> {
    let mut events = vec![
        event(
            &json!({"type": "message_start", "message": {"id": "msg_01", "type": "message",
            "role": "assistant", "model": model, "content": [], "stop_reason": null,
            "stop_sequence": null, "usage": {"input_tokens": input, "output_tokens": 0}}}),
        ),
        event(&json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}})),
        event(&json!({"type": "ping"})),
    ];
    for t in tokens {
        events.push(event(&json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": t}})));
    }
    events.push(event(&json!({"type": "content_block_stop", "index": 0})));
    events.push(event(&json!({"type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": null},
        "usage": {"output_tokens": output}})));
    events.push(event(&json!({"type": "message_stop"})));
    events
}

/// A whole answer with `text`, reporting `input` and `output` tokens.
pub fn message(model: &str, text: &str, input: u64, output: u64) -> Value {
    json!({"id": "msg_01", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
        "stop_sequence": null, "usage": {"input_tokens": input, "output_tokens": output}})
}

/// A fake Ollama whose `/v1/messages` answers "你好" (streamed when asked), with 11 input
/// and 2 output tokens; anything else is a 404 in Ollama's shape.
pub fn ollama() -> FakeUpstream {
    FakeUpstream::start(|r| {
        if r.path != "/v1/messages" {
            return Reply::json(404, &json!({"error": "404 page not found"}));
        }
        let body = r.json();
        let model = body["model"].as_str().unwrap_or("").to_string();
        if body["stream"] == true {
            Reply::sse(stream_events(&model, &["你", "好"], 11, 2))
        } else {
            Reply::json(200, &message(&model, "你好", 11, 2))
        }
    })
}

/// The gateway's own last event of a failed stream, as it writes it.
pub fn error_event_for_tests(message: &str) -> Vec<u8> {
    ollama_gateway::error::anthropic_stream_error(message).to_vec()
}
