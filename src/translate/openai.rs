//! Ollama `/api/chat` <-> OpenAI Chat Completions (PROTOCOLS.md section 6).
//!
//! [`to_openai_request`] maps a request; [`from_openai_response`] maps a whole answer;
//! [`SseToNdjson`] turns an SSE stream into Ollama NDJSON lines as bytes arrive.

use std::borrow::Cow;
use std::time::Instant;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::ollama::{
    AnswerLine, ChatRequest, LineMessage, Message, OutToolCall, OutToolFunction, Shape, Timing,
};
use super::sse::{EventTooLarge, SseParser};
use crate::config::MaxTokensParam;
use crate::error::GatewayError;

/// How the upstream is asked: the parts of its configuration that shape a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestShape {
    pub stream_usage: bool,
    pub max_tokens_param: MaxTokensParam,
}

/// Builds the OpenAI request body for `req`, addressed to `model` (prefix already stripped).
pub fn to_openai_request(
    req: &ChatRequest<'_>,
    model: &str,
    shape: RequestShape,
) -> Result<Vec<u8>, GatewayError> {
    let mut body = Map::new();
    body.insert("model".into(), Value::from(model));
    body.insert(
        "messages".into(),
        Value::Array(map_messages(req.messages.as_deref().unwrap_or_default())?),
    );
    let stream = req.streams();
    body.insert("stream".into(), Value::Bool(stream));
    if stream && shape.stream_usage {
        body.insert("stream_options".into(), json!({ "include_usage": true }));
    }
    if let Some(options) = &req.options {
        map_options(options, shape.max_tokens_param, &mut body)?;
    }
    if let Some(format) = req.format {
        if let Some(response_format) = map_format(format)? {
            body.insert("response_format".into(), response_format);
        }
    }
    if let Some(tools) = req.tools {
        let tools: Value = serde_json::from_str(tools.get())
            .map_err(|e| GatewayError::InvalidField(format!("invalid tools: {e}")))?;
        match tools {
            Value::Array(list) if list.is_empty() => {}
            Value::Array(list) => {
                body.insert("tools".into(), Value::Array(list));
            }
            Value::Null => {}
            _ => return Err(GatewayError::InvalidField("tools must be an array".into())),
        }
    }
    if let Some(think) = &req.think {
        if let Some(effort) = map_think(think)? {
            body.insert("reasoning_effort".into(), Value::from(effort));
        }
    }
    serde_json::to_vec(&Value::Object(body))
        .map_err(|e| GatewayError::InvalidField(format!("cannot encode the upstream request: {e}")))
}

fn map_messages(messages: &[Message<'_>]) -> Result<Vec<Value>, GatewayError> {
    // Tool calls seen so far, (id, name, answered), to give tool results a tool_call_id.
    let mut calls: Vec<(String, String, bool)> = Vec::new();
    let mut out = Vec::with_capacity(messages.len());
    for msg in messages {
        let role = msg.role.to_ascii_lowercase();
        let text = msg.content.as_deref().unwrap_or_default();
        let mut m = Map::new();
        let images = msg.images.as_deref().unwrap_or_default();
        let content = if images.is_empty() {
            Value::from(text)
        } else {
            let mut parts = Vec::with_capacity(images.len() + 1);
            if !text.is_empty() {
                parts.push(json!({ "type": "text", "text": text }));
            }
            for image in images {
                let image = image.0.trim();
                let url = format!("data:{};base64,{image}", sniff_image(image)?);
                parts.push(json!({ "type": "image_url", "image_url": { "url": url } }));
            }
            Value::Array(parts)
        };
        match role.as_str() {
            "assistant" => {
                let tool_calls = msg.tool_calls.as_deref().unwrap_or_default();
                if tool_calls.is_empty() {
                    m.insert("content".into(), content);
                } else {
                    let mut list = Vec::with_capacity(tool_calls.len());
                    for call in tool_calls {
                        let id = match call.id.as_deref().filter(|s| !s.is_empty()) {
                            Some(id) => id.to_string(),
                            None => format!("call_{}", calls.len()),
                        };
                        let arguments = match call.function.arguments {
                            Some(raw) if raw.get() != "null" => raw.get().to_string(),
                            _ => "{}".to_string(),
                        };
                        list.push(json!({
                            "id": id,
                            "type": "function",
                            "function": { "name": call.function.name, "arguments": arguments },
                        }));
                        calls.push((id, call.function.name.to_string(), false));
                    }
                    m.insert(
                        "content".into(),
                        if text.is_empty() {
                            Value::Null
                        } else {
                            content
                        },
                    );
                    m.insert("tool_calls".into(), Value::Array(list));
                }
            }
            "tool" => {
                let id = match msg.tool_call_id.as_deref().filter(|s| !s.is_empty()) {
                    Some(id) => Some(id.to_string()),
                    None => take_call(&mut calls, msg.tool_name.as_deref()),
                };
                if let Some(id) = id {
                    for call in calls.iter_mut().filter(|c| c.0 == id) {
                        call.2 = true;
                    }
                    m.insert("tool_call_id".into(), Value::from(id));
                }
                m.insert("content".into(), content);
            }
            _ => {
                m.insert("content".into(), content);
            }
        }
        m.insert("role".into(), Value::from(role));
        out.push(Value::Object(m));
    }
    Ok(out)
}

/// The id of the first unanswered call with this tool name (or, without a name, the first
/// unanswered call), marking it answered.
fn take_call(calls: &mut [(String, String, bool)], name: Option<&str>) -> Option<String> {
    let call = calls
        .iter_mut()
        .find(|c| !c.2 && name.is_none_or(|n| n == c.1))?;
    call.2 = true;
    Some(call.0.clone())
}

/// The MIME type of base64 image data, from its magic bytes.
fn sniff_image(b64: &str) -> Result<&'static str, GatewayError> {
    let invalid = || {
        GatewayError::InvalidField(
            "images must be base64-encoded PNG, JPEG, GIF or WEBP data".into(),
        )
    };
    let b64 = b64.trim();
    if b64.starts_with("data:") {
        return Err(GatewayError::InvalidField(
            "images must be raw base64 without a data: prefix, as Ollama expects".into(),
        ));
    }
    // 16 base64 characters decode to the first 12 bytes, enough for every signature.
    let head = b64.get(..16.min(b64.len())).ok_or_else(invalid)?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(head)
        .map_err(|_| invalid())?;
    let mime = match bytes.as_slice() {
        [0x89, b'P', b'N', b'G', ..] => "image/png",
        [0xFF, 0xD8, 0xFF, ..] => "image/jpeg",
        [b'G', b'I', b'F', b'8', ..] => "image/gif",
        [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => "image/webp",
        _ => return Err(invalid()),
    };
    Ok(mime)
}

fn option_error(key: &str, kind: &str) -> GatewayError {
    GatewayError::InvalidField(format!("option {key:?} must be of type {kind}"))
}

/// Maps Ollama `options` to OpenAI parameters; options with no OpenAI equivalent are dropped.
fn map_options(
    options: &Map<String, Value>,
    max_tokens_param: MaxTokensParam,
    body: &mut Map<String, Value>,
) -> Result<(), GatewayError> {
    for (key, value) in options {
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "num_predict" => {
                let n = value.as_f64().ok_or_else(|| option_error(key, "integer"))? as i64;
                if n > 0 {
                    body.insert(max_tokens_param.as_str().into(), Value::from(n));
                }
            }
            "seed" => {
                let n = value.as_f64().ok_or_else(|| option_error(key, "integer"))? as i64;
                body.insert("seed".into(), Value::from(n));
            }
            "temperature" | "top_p" | "presence_penalty" | "frequency_penalty" => {
                if !value.is_number() {
                    return Err(option_error(key, "number"));
                }
                body.insert(key.clone(), value.clone());
            }
            "stop" => {
                let stops = match value {
                    Value::String(s) => vec![Value::from(s.as_str())],
                    Value::Array(list) if list.iter().all(Value::is_string) => list.clone(),
                    _ => return Err(option_error(key, "array")),
                };
                if !stops.is_empty() {
                    body.insert("stop".into(), Value::Array(stops));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn map_format(format: &RawValue) -> Result<Option<Value>, GatewayError> {
    let value: Value = serde_json::from_str(format.get())
        .map_err(|e| GatewayError::InvalidField(format!("invalid format: {e}")))?;
    match value {
        Value::Null => Ok(None),
        Value::String(s) if s.is_empty() => Ok(None),
        Value::String(s) if s == "json" => Ok(Some(json!({ "type": "json_object" }))),
        Value::Object(schema) => Ok(Some(json!({
            "type": "json_schema",
            "json_schema": { "name": "response", "schema": schema },
        }))),
        other => Err(GatewayError::InvalidField(format!(
            "invalid format {other}: use \"json\" or a JSON schema object"
        ))),
    }
}

fn map_think(think: &Value) -> Result<Option<&'static str>, GatewayError> {
    match think {
        Value::Null => Ok(None),
        Value::Bool(true) => Ok(Some("medium")),
        Value::Bool(false) => Ok(Some("none")),
        Value::String(s) => match s.as_str() {
            "low" => Ok(Some("low")),
            "medium" => Ok(Some("medium")),
            "high" => Ok(Some("high")),
            "max" => Ok(Some("max")),
            _ => Err(GatewayError::InvalidField(format!(
                "invalid think value: {s:?}"
            ))),
        },
        other => Err(GatewayError::InvalidField(format!(
            "invalid think value: {other}"
        ))),
    }
}

/// Ollama's `done_reason` for an OpenAI `finish_reason` (PROTOCOLS.md 6.4).
pub fn done_reason(finish_reason: &str) -> &str {
    match finish_reason {
        "tool_calls" | "function_call" => "stop",
        other => other,
    }
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(default)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

#[derive(Deserialize)]
struct Completion<'a> {
    #[serde(default, borrow)]
    choices: Vec<CompletionChoice<'a>>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct CompletionChoice<'a> {
    #[serde(borrow)]
    message: CompletionMessage<'a>,
    #[serde(default, borrow, deserialize_with = "crate::translate::borrowed")]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct CompletionMessage<'a> {
    #[serde(default, borrow, deserialize_with = "crate::translate::borrowed")]
    content: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "crate::translate::borrowed")]
    refusal: Option<Cow<'a, str>>,
    #[serde(
        default,
        borrow,
        alias = "reasoning",
        deserialize_with = "crate::translate::borrowed"
    )]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    tool_calls: Option<Vec<WholeToolCall<'a>>>,
}

#[derive(Deserialize)]
struct WholeToolCall<'a> {
    #[serde(default, borrow, deserialize_with = "crate::translate::borrowed")]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    function: WholeFunction<'a>,
}

#[derive(Deserialize)]
struct WholeFunction<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "crate::translate::borrowed")]
    arguments: Option<Cow<'a, str>>,
}

/// A whole translated answer, with the counts for metrics.
pub struct Translated {
    pub body: Vec<u8>,
    pub usage: Usage,
}

/// Maps a non-streaming OpenAI answer to Ollama's non-streaming answer in `shape`; `timing`
/// says when the request came in, when the answer began to arrive and when it was all in.
pub fn from_openai_response(
    body: &[u8],
    shape: Shape,
    client_model: &str,
    timing: Timing,
) -> Result<Translated, String> {
    let completion: Completion<'_> =
        serde_json::from_slice(body).map_err(|e| format!("not a chat completion: {e}"))?;
    let choice = completion
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| "the completion has no choices".to_string())?;
    let msg = choice.message;
    let mut tool_calls = Vec::new();
    for (index, call) in msg.tool_calls.unwrap_or_default().into_iter().enumerate() {
        tool_calls.push(whole_tool_call(
            index,
            call.id.as_deref(),
            &call.function.name,
            call.function.arguments.as_deref().unwrap_or_default(),
        )?);
    }
    let content = msg.content.or(msg.refusal).unwrap_or_default();
    let usage = completion.usage.unwrap_or_default();
    let line = AnswerLine::chunk(
        shape,
        client_model,
        LineMessage {
            role: "assistant",
            content: &content,
            thinking: msg.reasoning_content.as_deref().filter(|s| !s.is_empty()),
            tool_calls: &tool_calls,
        },
    )
    .finish(
        done_reason(choice.finish_reason.as_deref().unwrap_or("stop")),
        (usage.prompt_tokens, usage.completion_tokens),
        timing,
    );
    let mut out = Vec::with_capacity(content.len() + 256);
    line.write(&mut out);
    Ok(Translated { body: out, usage })
}

/// An OpenAI tool call (arguments as a JSON string) in Ollama's shape (arguments as an object).
fn whole_tool_call(
    index: usize,
    id: Option<&str>,
    name: &str,
    arguments: &str,
) -> Result<OutToolCall, String> {
    let arguments = if arguments.trim().is_empty() {
        "{}"
    } else {
        arguments
    };
    let raw = RawValue::from_string(arguments.to_string())
        .map_err(|e| format!("tool call {name:?} has arguments that are not JSON: {e}"))?;
    if !raw.get().trim_start().starts_with('{') {
        return Err(format!(
            "tool call {name:?} has arguments that are not a JSON object"
        ));
    }
    Ok(OutToolCall {
        id: id
            .filter(|s| !s.is_empty())
            .map_or_else(|| format!("call_{index}"), str::to_string),
        function: OutToolFunction {
            index,
            name: name.to_string(),
            arguments: raw,
        },
    })
}

// ---- streaming ----

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(default, borrow)]
    choices: Vec<ChunkChoice<'a>>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<UpstreamErrorBody>,
}

#[derive(Deserialize)]
struct ChunkChoice<'a> {
    #[serde(default)]
    index: u32,
    #[serde(default, borrow)]
    delta: Option<Delta<'a>>,
    #[serde(default, borrow, deserialize_with = "crate::translate::borrowed")]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(default, borrow, deserialize_with = "crate::translate::borrowed")]
    content: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "crate::translate::borrowed")]
    refusal: Option<Cow<'a, str>>,
    #[serde(
        default,
        borrow,
        alias = "reasoning",
        deserialize_with = "crate::translate::borrowed"
    )]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    tool_calls: Option<Vec<ToolCallDelta<'a>>>,
}

#[derive(Deserialize)]
struct ToolCallDelta<'a> {
    #[serde(default)]
    index: Option<usize>,
    #[serde(default, borrow, deserialize_with = "crate::translate::borrowed")]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    function: Option<FunctionDelta<'a>>,
}

#[derive(Deserialize)]
struct FunctionDelta<'a> {
    #[serde(default, borrow, deserialize_with = "crate::translate::borrowed")]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "crate::translate::borrowed")]
    arguments: Option<Cow<'a, str>>,
}

/// An error object as OpenAI sends it (`{"message": ...}`), or a bare string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum UpstreamErrorBody {
    Object {
        #[serde(default)]
        message: Option<String>,
    },
    Text(String),
    Other(IgnoredValue),
}

/// Accepts any JSON value and keeps nothing.
#[derive(Debug)]
pub struct IgnoredValue;

impl<'de> Deserialize<'de> for IgnoredValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| IgnoredValue)
    }
}

impl UpstreamErrorBody {
    /// The human message, or a fixed text when there is none.
    pub fn message(&self) -> &str {
        match self {
            Self::Object { message: Some(m) } | Self::Text(m) if !m.is_empty() => m,
            _ => "the upstream reported an error",
        }
    }
}

/// Why a translated stream stopped early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamError {
    /// The upstream sent an error event; the text is its message.
    Upstream(String),
    /// The upstream sent something that is not a chat completion chunk.
    Protocol(String),
    /// The stream ended before a finish_reason or `[DONE]`.
    Truncated,
    /// A line or event, or the tool calls being assembled, grew past the limit.
    TooLarge { limit: usize },
}

impl From<EventTooLarge> for StreamError {
    fn from(e: EventTooLarge) -> Self {
        Self::TooLarge { limit: e.limit }
    }
}

/// Progress of a translated stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    Open,
    /// The final `done: true` line has been written.
    Done,
}

#[derive(Debug, Default)]
struct PendingCall {
    id: String,
    name: String,
    arguments: String,
}

/// Turns OpenAI SSE bytes into Ollama NDJSON lines, chunk by chunk.
#[derive(Debug)]
pub struct SseToNdjson {
    parser: SseParser,
    shape: Shape,
    model: String,
    started: Instant,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    calls: Vec<PendingCall>,
    /// Bytes held in `calls`; at most `max`, like an event.
    call_bytes: usize,
    max: usize,
    finish_reason: Option<String>,
    usage: Usage,
    progress: Progress,
}

impl SseToNdjson {
    /// `/api/chat` lines; `model` is the name the client used (with prefix); `started` is
    /// when the request came in.
    pub fn new(model: impl Into<String>, started: Instant) -> Self {
        Self::with_max(Shape::Chat, model, started, super::DEFAULT_MAX_LINE)
    }

    /// Lines in `shape`, refusing events (and assembled tool calls) longer than `max` bytes.
    pub fn with_max(shape: Shape, model: impl Into<String>, started: Instant, max: usize) -> Self {
        Self {
            parser: SseParser::with_max(max),
            shape,
            model: model.into(),
            started,
            first_token: None,
            last_token: None,
            calls: Vec::new(),
            call_bytes: 0,
            max,
            finish_reason: None,
            usage: Usage::default(),
            progress: Progress::Open,
        }
    }

    /// The counts reported by the upstream so far.
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// Feeds one read from the upstream, appending finished NDJSON lines to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<Progress, StreamError> {
        if self.progress == Progress::Done {
            return Ok(Progress::Done);
        }
        let mut parser = std::mem::take(&mut self.parser);
        let result = parser.feed(chunk, |data| self.on_event(data, out));
        self.parser = parser;
        result.map(|()| self.progress)
    }

    /// At end of the upstream body: finishes the stream if a finish_reason was seen.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), StreamError> {
        match (self.progress, self.finish_reason.is_some()) {
            (Progress::Done, _) => Ok(()),
            (Progress::Open, true) => self.write_done(out),
            (Progress::Open, false) => Err(StreamError::Truncated),
        }
    }

    fn on_event(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), StreamError> {
        if self.progress == Progress::Done {
            return Ok(());
        }
        let data = data.trim_ascii();
        if data.is_empty() {
            return Ok(());
        }
        if data.starts_with(b"[DONE]") {
            return self.write_done(out);
        }
        let chunk: Chunk<'_> = serde_json::from_slice(data)
            .map_err(|e| StreamError::Protocol(format!("invalid stream event: {e}")))?;
        if let Some(error) = chunk.error {
            return Err(StreamError::Upstream(error.message().to_string()));
        }
        if let Some(usage) = chunk.usage {
            self.usage = usage;
        }
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            if let Some(delta) = choice.delta {
                self.on_delta(delta, out)?;
            }
            if let Some(reason) = choice.finish_reason.filter(|r| !r.is_empty()) {
                self.flush_calls(out)?;
                self.finish_reason = Some(reason.into_owned());
            }
        }
        Ok(())
    }

    fn on_delta(&mut self, delta: Delta<'_>, out: &mut Vec<u8>) -> Result<(), StreamError> {
        for call in delta.tool_calls.unwrap_or_default() {
            let index = call.index.unwrap_or(self.calls.len().saturating_sub(1));
            if index > self.calls.len() {
                return Err(StreamError::Protocol(format!(
                    "tool call index {index} skips ahead of {}",
                    self.calls.len()
                )));
            }
            if index == self.calls.len() {
                self.calls.push(PendingCall::default());
            }
            let pending = &mut self.calls[index];
            let id = call.id.unwrap_or_default();
            let (name, args) = call
                .function
                .map(|f| (f.name.unwrap_or_default(), f.arguments.unwrap_or_default()))
                .unwrap_or_default();
            self.call_bytes += id.len() + name.len() + args.len();
            if self.call_bytes > self.max {
                return Err(StreamError::TooLarge { limit: self.max });
            }
            pending.id.push_str(&id);
            pending.name.push_str(&name);
            pending.arguments.push_str(&args);
            self.mark_token();
        }
        let content = delta.content.or(delta.refusal).filter(|c| !c.is_empty());
        let thinking = delta.reasoning_content.filter(|c| !c.is_empty());
        if content.is_none() && thinking.is_none() {
            return Ok(());
        }
        self.mark_token();
        let message = LineMessage {
            role: "assistant",
            content: content.as_deref().unwrap_or_default(),
            thinking: thinking.as_deref(),
            tool_calls: &[],
        };
        AnswerLine::chunk(self.shape, &self.model, message).write_line(out);
        Ok(())
    }

    fn mark_token(&mut self) {
        let now = Instant::now();
        self.first_token.get_or_insert(now);
        self.last_token = Some(now);
    }

    /// Emits the assembled tool calls, whole, in one chunk (as Ollama does).
    fn flush_calls(&mut self, out: &mut Vec<u8>) -> Result<(), StreamError> {
        if self.calls.is_empty() {
            return Ok(());
        }
        self.call_bytes = 0;
        let calls = std::mem::take(&mut self.calls)
            .into_iter()
            .enumerate()
            .map(|(i, c)| whole_tool_call(i, Some(&c.id), &c.name, &c.arguments))
            .collect::<Result<Vec<_>, _>>()
            .map_err(StreamError::Protocol)?;
        let message = LineMessage {
            role: "assistant",
            content: "",
            thinking: None,
            tool_calls: &calls,
        };
        AnswerLine::chunk(self.shape, &self.model, message).write_line(out);
        Ok(())
    }

    fn write_done(&mut self, out: &mut Vec<u8>) -> Result<(), StreamError> {
        // A [DONE] without a finish_reason still delivers the calls it assembled.
        self.flush_calls(out)?;
        let timing = Timing {
            started: self.started,
            first: self.first_token,
            last: self.last_token,
        };
        let line = AnswerLine::chunk(self.shape, &self.model, LineMessage::assistant("")).finish(
            done_reason(self.finish_reason.as_deref().unwrap_or("stop")),
            (self.usage.prompt_tokens, self.usage.completion_tokens),
            timing,
        );
        line.write_line(out);
        self.progress = Progress::Done;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
