//! Ollama's `/api/chat` wire format (PROTOCOLS.md 1.2-1.4), as the gateway reads and writes
//! it, and the answer lines `/api/chat` and `/api/generate` share.
//!
//! Requests are parsed borrowing from the body, so large base64 images are not copied.

use std::borrow::Cow;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error::GatewayError;

/// The fields of an Ollama chat request the gateway needs; unknown fields are ignored,
/// as Ollama's own decoder does.
#[derive(Debug, Deserialize)]
pub struct ChatRequest<'a> {
    #[serde(default, borrow, deserialize_with = "crate::translate::borrowed")]
    pub model: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub messages: Option<Vec<Message<'a>>>,
    /// Absent means stream (Ollama's default); only an explicit `false` disables it.
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default, borrow)]
    pub format: Option<&'a RawValue>,
    #[serde(default)]
    pub options: Option<Map<String, Value>>,
    #[serde(default, borrow)]
    pub tools: Option<&'a RawValue>,
    #[serde(default)]
    pub think: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct Message<'a> {
    #[serde(default, borrow)]
    pub role: Cow<'a, str>,
    /// Absent or null means "" (ollama-python drops empty keys).
    #[serde(default, borrow, deserialize_with = "crate::translate::borrowed")]
    pub content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub images: Option<Vec<Text<'a>>>,
    #[serde(default, borrow)]
    pub tool_calls: Option<Vec<ToolCall<'a>>>,
    #[serde(default, borrow, deserialize_with = "crate::translate::borrowed")]
    pub tool_name: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "crate::translate::borrowed")]
    pub tool_call_id: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "crate::translate::borrowed")]
    pub thinking: Option<Cow<'a, str>>,
}

/// A string borrowed from the body unless it had escapes (`Cow` borrows only as a direct field).
#[derive(Debug, Deserialize)]
pub struct Text<'a>(#[serde(borrow)] pub Cow<'a, str>);

#[derive(Debug, Deserialize)]
pub struct ToolCall<'a> {
    #[serde(default, borrow, deserialize_with = "crate::translate::borrowed")]
    pub id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub function: ToolCallFunction<'a>,
}

#[derive(Debug, Deserialize)]
pub struct ToolCallFunction<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    /// A JSON object in Ollama's format.
    #[serde(default, borrow)]
    pub arguments: Option<&'a RawValue>,
}

impl<'a> ChatRequest<'a> {
    /// Parses and checks a request body: JSON syntax and types, and a non-empty model.
    pub fn parse(body: &'a [u8]) -> Result<Self, GatewayError> {
        parse_request(body, |r: &Self| r.model())
    }

    pub fn model(&self) -> &str {
        self.model.as_deref().unwrap_or_default()
    }

    /// Ollama streams unless `stream` is explicitly false.
    pub fn streams(&self) -> bool {
        self.stream != Some(false)
    }
}

/// Parses a request body of any of Ollama's model endpoints: not empty, JSON of the right
/// types (Ollama's own decoder ignores unknown fields, and so does this), and a non-empty
/// `model` (as `model` reads it).
pub fn parse_request<'a, T: Deserialize<'a>>(
    body: &'a [u8],
    model: impl Fn(&T) -> &str,
) -> Result<T, GatewayError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(GatewayError::EmptyBody);
    }
    let req: T = serde_json::from_slice(body)
        .map_err(|e| GatewayError::InvalidJson(format!("invalid request body: {e}")))?;
    if model(&req).trim().is_empty() {
        return Err(GatewayError::MissingModel);
    }
    Ok(req)
}

/// Serializes as the current time in RFC 3339 with nanoseconds, UTC (`...Z`), as Ollama does.
#[derive(Debug, Clone, Copy)]
pub struct Now;

impl Serialize for Now {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_nanos(SystemTime::now()))
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Which of Ollama's answers a line is: `/api/chat`'s (the text in `message`) or
/// `/api/generate`'s (the text in `response`, with `thinking` and `tool_calls` beside it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Chat,
    Generate,
}

/// One line of an Ollama answer (a stream chunk, the final chunk, or a whole answer), in
/// either [`Shape`]: exactly one of `message` and `response` is present. Counts follow
/// Ollama's `omitempty` (zero means absent); the durations are present on every final line
/// of a generated answer (see [`Timing`]) and on no other.
#[derive(Debug, Serialize)]
pub struct AnswerLine<'a> {
    pub model: &'a str,
    pub created_at: Now,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<LineMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thinking: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub tool_calls: &'a [OutToolCall],
    pub done: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub done_reason: Option<&'a str>,
    #[serde(skip_serializing_if = "is_zero")]
    pub total_duration: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_duration: Option<u64>,
    #[serde(skip_serializing_if = "is_zero")]
    pub prompt_eval_count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_eval_duration: Option<u64>,
    #[serde(skip_serializing_if = "is_zero")]
    pub eval_count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_duration: Option<u64>,
}

/// What the gateway measured of an answer whose upstream reports no timings of its own
/// (an OpenAI-compatible API): when the request came in, and when the first and the last
/// token arrived (for a whole answer: when it began to arrive, and when it was all in).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub started: Instant,
    pub first: Option<Instant>,
    pub last: Option<Instant>,
}

impl<'a> AnswerLine<'a> {
    /// A `done: false` chunk carrying `message` in `shape`.
    pub fn chunk(shape: Shape, model: &'a str, message: LineMessage<'a>) -> Self {
        let (message, response, thinking, tool_calls) = match shape {
            Shape::Chat => (Some(message), None, None, &[][..]),
            Shape::Generate => (
                None,
                Some(message.content),
                message.thinking,
                message.tool_calls,
            ),
        };
        Self {
            model,
            created_at: Now,
            message,
            response,
            thinking,
            tool_calls,
            done: false,
            done_reason: None,
            total_duration: 0,
            load_duration: None,
            prompt_eval_count: 0,
            prompt_eval_duration: None,
            eval_count: 0,
            eval_duration: None,
        }
    }

    /// Makes this the final line of a generated answer: `done_reason`, the upstream's token
    /// counts, and the durations as the gateway measured them, which Ollama always sends
    /// on a real run: an API upstream has nothing to load (`load_duration` 0), the wait for
    /// the first token stands for prompt evaluation, from the first token to the last for
    /// generation.
    pub fn finish(
        mut self,
        done_reason: &'a str,
        (prompt_eval_count, eval_count): (u64, u64),
        timing: Timing,
    ) -> Self {
        let total = Instant::now().saturating_duration_since(timing.started);
        let prompt_eval = timing.first.map_or(total, |first| {
            first.saturating_duration_since(timing.started)
        });
        let eval = match (timing.first, timing.last) {
            (Some(first), Some(last)) => last.saturating_duration_since(first),
            _ => Duration::ZERO,
        };
        self.done = true;
        self.done_reason = Some(done_reason);
        self.total_duration = nanos(total);
        self.load_duration = Some(0);
        self.prompt_eval_count = prompt_eval_count;
        self.prompt_eval_duration = Some(nanos(prompt_eval));
        self.eval_count = eval_count;
        self.eval_duration = Some(nanos(eval));
        self
    }

    /// Appends this line as JSON plus `\n` to `out`.
    pub fn write_line(&self, out: &mut Vec<u8>) {
        self.write(out);
        out.push(b'\n');
    }

    /// Appends this line as JSON to `out` (a whole answer).
    pub fn write(&self, out: &mut Vec<u8>) {
        // Serializing these plain structs into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, self);
    }
}

#[derive(Debug, Serialize)]
pub struct LineMessage<'a> {
    pub role: &'static str,
    pub content: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thinking: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub tool_calls: &'a [OutToolCall],
}

impl<'a> LineMessage<'a> {
    pub fn assistant(content: &'a str) -> Self {
        Self {
            role: "assistant",
            content,
            thinking: None,
            tool_calls: &[],
        }
    }
}

/// A complete tool call in Ollama's shape: arguments as a JSON object, index in `function`.
#[derive(Debug, Serialize)]
pub struct OutToolCall {
    pub id: String,
    pub function: OutToolFunction,
}

#[derive(Debug, Serialize)]
pub struct OutToolFunction {
    pub index: usize,
    pub name: String,
    pub arguments: Box<RawValue>,
}

/// `GET /api/version`'s answer (PROTOCOLS.md 1.6), `{"version":"0.5.1"}`. Clients parse the
/// value as dotted integers, so the gateway relays Ollama's bytes as they are and only
/// checks that they are this.
#[derive(Debug, Deserialize)]
pub struct VersionResponse<'a> {
    #[serde(borrow)]
    pub version: Cow<'a, str>,
}

impl VersionResponse<'_> {
    /// Whether `body` is a version answer; the reason if not.
    pub fn check(body: &[u8]) -> Result<(), String> {
        serde_json::from_slice::<VersionResponse<'_>>(body)
            .map(drop)
            .map_err(|e| format!("the answer is not {{\"version\": \"...\"}} ({e})"))
    }
}

/// Nanoseconds in a duration, saturating.
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod version_tests {
    use super::VersionResponse;

    #[test]
    fn a_version_answer_is_an_object_with_a_version_string() {
        assert!(VersionResponse::check(br#"{"version":"0.12.6"}"#).is_ok());
        assert!(VersionResponse::check(br#"{"version":"0.5.1-rc2","extra":1}"#).is_ok());
        for bad in [
            &br#"{"version":5}"#[..],
            b"{}",
            b"Ollama is running",
            b"",
            b"[]",
        ] {
            let err = VersionResponse::check(bad).unwrap_err();
            assert!(err.contains("not {\"version\""), "{err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_ollama_shapes_and_borrows_images() {
        let body = br#"{"model":"llama3","messages":[{"role":"user","content":"hi","images":["iVBORw0KGgo="]},{"role":"assistant","tool_calls":[{"function":{"name":"f","arguments":{"a":1}}}]}],"options":{"num_predict":5},"unknown":1}"#;
        let req = ChatRequest::parse(body).unwrap();
        assert_eq!(req.model(), "llama3");
        assert!(req.streams());
        let msgs = req.messages.as_ref().unwrap();
        assert!(matches!(
            msgs[0].images.as_ref().unwrap()[0].0,
            Cow::Borrowed(_)
        ));
        assert!(msgs[1].content.is_none());
    }

    #[test]
    fn parse_rejects_bad_bodies_with_clear_messages() {
        assert!(matches!(
            ChatRequest::parse(b""),
            Err(GatewayError::EmptyBody)
        ));
        assert!(matches!(
            ChatRequest::parse(b" \n"),
            Err(GatewayError::EmptyBody)
        ));
        assert!(matches!(
            ChatRequest::parse(b"{}"),
            Err(GatewayError::MissingModel)
        ));
        assert!(matches!(
            ChatRequest::parse(br#"{"model":" "}"#),
            Err(GatewayError::MissingModel)
        ));
        for bad in [
            &b"not json"[..],
            br#"{"model":1}"#,
            br#"{"model":"m","stream":"yes"}"#,
            br#"{"model":"m","messages":{}}"#,
            br#"{"model":"m","messages":[{"role":"user","content":5}]}"#,
            br#"{"model":"m","options":[]}"#,
            br#"[1,2]"#,
        ] {
            let err = ChatRequest::parse(bad).unwrap_err();
            assert!(matches!(err, GatewayError::InvalidJson(_)), "{err:?}");
            assert!(err.to_string().starts_with("invalid request body"));
        }
    }

    #[test]
    fn stream_false_only_when_explicit() {
        assert!(!ChatRequest::parse(br#"{"model":"m","stream":false}"#)
            .unwrap()
            .streams());
        assert!(ChatRequest::parse(br#"{"model":"m","stream":null}"#)
            .unwrap()
            .streams());
    }

    #[test]
    fn chat_line_omits_zero_metrics_and_keeps_message() {
        let mut out = Vec::new();
        AnswerLine::chunk(Shape::Chat, "openai/x", LineMessage::assistant("你好"))
            .write_line(&mut out);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["message"]["content"], "你好");
        assert_eq!(v["done"], false);
        assert!(v.get("eval_count").is_none() && v.get("load_duration").is_none());
        assert!(v.get("response").is_none());
        assert!(v["created_at"].as_str().unwrap().ends_with('Z'));
        assert_eq!(*out.last().unwrap(), b'\n');
    }

    #[test]
    fn generate_line_carries_response_and_thinking_beside_it() {
        let mut out = Vec::new();
        let message = LineMessage {
            thinking: Some("hmm"),
            ..LineMessage::assistant("你好")
        };
        AnswerLine::chunk(Shape::Generate, "openai/x", message).write(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(r#""response":"你好","thinking":"hmm","done":false}"#),
            "{text}"
        );
        assert!(!text.contains("message"), "{text}");
    }

    #[test]
    fn a_final_line_carries_every_duration_even_zero() {
        let started = Instant::now();
        let first = started + Duration::from_millis(5);
        let last = first + Duration::from_millis(7);
        let timing = Timing {
            started,
            first: Some(first),
            last: Some(last),
        };
        let line = AnswerLine::chunk(Shape::Generate, "m", LineMessage::assistant("")).finish(
            "stop",
            (3, 0),
            timing,
        );
        let mut out = Vec::new();
        line.write(&mut out);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["done"], true);
        assert_eq!(v["done_reason"], "stop");
        assert_eq!(v["load_duration"], 0);
        assert_eq!(v["prompt_eval_duration"], 5_000_000);
        assert_eq!(v["eval_duration"], 7_000_000);
        assert_eq!(v["prompt_eval_count"], 3);
        assert!(v.get("eval_count").is_none(), "unknown counts stay absent");
        // No token at all: the whole wait was for the first one.
        let line = AnswerLine::chunk(Shape::Chat, "m", LineMessage::assistant("")).finish(
            "stop",
            (0, 0),
            Timing {
                started,
                first: None,
                last: None,
            },
        );
        assert_eq!(line.eval_duration, Some(0));
        assert_eq!(line.prompt_eval_duration, Some(line.total_duration));
    }
}
