//! Ollama's `/api/chat` wire format (PROTOCOLS.md 1.2-1.4), as the gateway reads and writes it.
//!
//! Requests are parsed borrowing from the body, so large base64 images are not copied.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error::GatewayError;

/// The fields of an Ollama chat request the gateway needs; unknown fields are ignored,
/// as Ollama's own decoder does.
#[derive(Debug, Deserialize)]
pub struct ChatRequest<'a> {
    #[serde(default, borrow)]
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
    #[serde(default, borrow)]
    pub content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub images: Option<Vec<Text<'a>>>,
    #[serde(default, borrow)]
    pub tool_calls: Option<Vec<ToolCall<'a>>>,
    #[serde(default, borrow)]
    pub tool_name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub tool_call_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub thinking: Option<Cow<'a, str>>,
}

/// A string borrowed from the body unless it had escapes (`Cow` borrows only as a direct field).
#[derive(Debug, Deserialize)]
pub struct Text<'a>(#[serde(borrow)] pub Cow<'a, str>);

#[derive(Debug, Deserialize)]
pub struct ToolCall<'a> {
    #[serde(default, borrow)]
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
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(GatewayError::EmptyBody);
        }
        let req: Self = serde_json::from_slice(body)
            .map_err(|e| GatewayError::InvalidJson(format!("invalid request body: {e}")))?;
        match req.model.as_deref().map(str::trim) {
            None | Some("") => Err(GatewayError::MissingModel),
            Some(_) => Ok(req),
        }
    }

    pub fn model(&self) -> &str {
        self.model.as_deref().unwrap_or_default()
    }

    /// Ollama streams unless `stream` is explicitly false.
    pub fn streams(&self) -> bool {
        self.stream != Some(false)
    }
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

/// One line of an Ollama chat answer (a stream chunk, the final chunk, or a whole answer).
/// Metrics follow Ollama's `omitempty`: zero means absent.
#[derive(Debug, Serialize)]
pub struct ChatLine<'a> {
    pub model: &'a str,
    pub created_at: Now,
    pub message: LineMessage<'a>,
    pub done: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub done_reason: Option<&'a str>,
    #[serde(skip_serializing_if = "is_zero")]
    pub total_duration: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub prompt_eval_count: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub prompt_eval_duration: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub eval_count: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub eval_duration: u64,
}

impl<'a> ChatLine<'a> {
    /// A `done: false` chunk carrying `message`.
    pub fn chunk(model: &'a str, message: LineMessage<'a>) -> Self {
        Self {
            model,
            created_at: Now,
            message,
            done: false,
            done_reason: None,
            total_duration: 0,
            prompt_eval_count: 0,
            prompt_eval_duration: 0,
            eval_count: 0,
            eval_duration: 0,
        }
    }

    /// Appends this line as JSON plus `\n` to `out`.
    pub fn write_line(&self, out: &mut Vec<u8>) {
        // Serializing these plain structs into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, self);
        out.push(b'\n');
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
        ChatLine::chunk("openai/x", LineMessage::assistant("你好")).write_line(&mut out);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["message"]["content"], "你好");
        assert_eq!(v["done"], false);
        assert!(v.get("eval_count").is_none());
        assert!(v["created_at"].as_str().unwrap().ends_with('Z'));
        assert_eq!(*out.last().unwrap(), b'\n');
    }
}
