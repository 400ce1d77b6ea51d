//! Ollama's `/api/generate` request (PROTOCOLS.md 1.4, 1.6) as the gateway reads it, and what
//! it becomes for an OpenAI-compatible upstream: a chat of one `system` and one `user`
//! message, translated as `/api/chat` is (`images`, `format`, `options`, `think` included),
//! whose answer comes back in `/api/generate`'s shape ([`Shape::Generate`]).

use std::borrow::Cow;

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::ollama::{parse_request, AnswerLine, ChatRequest, LineMessage, Message, Shape, Text};
use crate::error::GatewayError;

/// The fields of a generate request the gateway needs; unknown fields are ignored, as
/// Ollama's own decoder does. To Ollama the body goes unchanged whatever it holds.
#[derive(Debug, Deserialize)]
pub struct GenerateRequest<'a> {
    #[serde(default, borrow, deserialize_with = "crate::translate::borrowed")]
    pub model: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "crate::translate::borrowed")]
    pub prompt: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "crate::translate::borrowed")]
    pub system: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub images: Option<Vec<Text<'a>>>,
    /// Absent means stream (Ollama's default); only an explicit `false` disables it.
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default, borrow)]
    pub format: Option<&'a RawValue>,
    #[serde(default)]
    pub options: Option<Map<String, Value>>,
    #[serde(default)]
    pub think: Option<Value>,
    #[serde(default)]
    pub keep_alive: Option<Value>,
    // Fields Chat Completions has no equivalent for (see `unsupported`).
    #[serde(default)]
    pub raw: Option<bool>,
    #[serde(default, borrow, deserialize_with = "crate::translate::borrowed")]
    pub suffix: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "crate::translate::borrowed")]
    pub template: Option<Cow<'a, str>>,
    #[serde(default)]
    pub context: Option<Vec<IgnoredAny>>,
}

fn is_set(text: &Option<Cow<'_, str>>) -> bool {
    text.as_deref().is_some_and(|t| !t.is_empty())
}

impl<'a> GenerateRequest<'a> {
    /// Parses and checks a request body: JSON syntax and types, and a non-empty model.
    pub fn parse(body: &'a [u8]) -> Result<Self, GatewayError> {
        parse_request(body, |r: &Self| r.model.as_deref().unwrap_or_default())
    }

    /// The first field set that Chat Completions cannot express: `raw` (a prompt without
    /// the model's template), `suffix` (fill-in-the-middle), `template` (Ollama's prompt
    /// template) and `context` (Ollama's token history). Unset, false, empty: not set, as
    /// clients send them (ollama-python leaves out what is unset; others send defaults).
    pub fn unsupported(&self) -> Option<&'static str> {
        if self.raw == Some(true) {
            Some("raw")
        } else if is_set(&self.suffix) {
            Some("suffix")
        } else if is_set(&self.template) {
            Some("template")
        } else if self.context.as_ref().is_some_and(|c| !c.is_empty()) {
            Some("context")
        } else {
            None
        }
    }

    /// Ollama's rule: a request with no prompt, system or template generates nothing; it
    /// loads the model (`done_reason` "load"), or with a `keep_alive` of zero unloads it
    /// ("unload"). `None` when there is something to generate.
    pub fn load(&self) -> Option<&'static str> {
        if is_set(&self.prompt) || is_set(&self.system) || is_set(&self.template) {
            return None;
        }
        Some(if self.keep_alive.as_ref().is_some_and(is_zero_duration) {
            "unload"
        } else {
            "load"
        })
    }

    /// The chat this request stands for: the `system` text, then the `prompt` with the
    /// `images`, and the same `model`, `stream`, `format`, `options` and `think`; with what
    /// decides whether it is sent at all.
    pub fn into_chat(self) -> AsChat<'a> {
        AsChat {
            unsupported: self.unsupported(),
            load: self.load(),
            chat: self.chat(),
        }
    }

    fn chat(self) -> ChatRequest<'a> {
        let message = |role: &'static str, content, images| Message {
            role: Cow::Borrowed(role),
            content,
            images,
            tool_calls: None,
            tool_name: None,
            tool_call_id: None,
            thinking: None,
        };
        let mut messages = Vec::with_capacity(2);
        if is_set(&self.system) {
            messages.push(message("system", self.system, None));
        }
        let has_images = self.images.as_ref().is_some_and(|i| !i.is_empty());
        if is_set(&self.prompt) || has_images {
            messages.push(message("user", self.prompt, self.images));
        }
        ChatRequest {
            model: self.model,
            messages: Some(messages),
            stream: self.stream,
            format: self.format,
            options: self.options,
            tools: None,
            think: self.think,
        }
    }
}

/// A generate request as the chat it stands for (see [`GenerateRequest::into_chat`]).
#[derive(Debug)]
pub struct AsChat<'a> {
    pub chat: ChatRequest<'a>,
    /// A field set that Chat Completions cannot express ([`GenerateRequest::unsupported`]).
    pub unsupported: Option<&'static str>,
    /// Nothing to generate: the `done_reason` of the answer ([`GenerateRequest::load`]).
    pub load: Option<&'static str>,
}

/// Whether an Ollama `keep_alive` is zero: a number of seconds, or a Go duration ("0",
/// "0s", "0m0s").
fn is_zero_duration(value: &Value) -> bool {
    match value {
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => {
            let s = s.trim().trim_start_matches(['+', '-']);
            s.contains('0')
                && s.chars()
                    .all(|c| matches!(c, '0' | '.' | 'n' | 's' | 'u' | 'µ' | 'm' | 'h'))
        }
        _ => false,
    }
}

/// Ollama's whole answer to a request that generates nothing (see
/// [`GenerateRequest::load`]): done at once, with an empty response and no metrics.
pub fn load_answer(model: &str, done_reason: &'static str) -> Vec<u8> {
    let mut line = AnswerLine::chunk(Shape::Generate, model, LineMessage::assistant(""));
    line.done = true;
    line.done_reason = Some(done_reason);
    let mut out = Vec::with_capacity(128);
    line.write(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MaxTokensParam;
    use crate::translate::openai::{to_openai_request, RequestShape};
    use serde_json::json;

    fn parse(body: &str) -> GenerateRequest<'_> {
        GenerateRequest::parse(body.as_bytes()).unwrap()
    }

    fn to_openai(body: &str) -> Value {
        let shape = RequestShape {
            stream_usage: true,
            max_tokens_param: MaxTokensParam::MaxTokens,
        };
        let chat = parse(body).into_chat().chat;
        serde_json::from_slice(&to_openai_request(&chat, "gpt-4o-mini", shape).unwrap()).unwrap()
    }

    /// The head of a JPEG file, in base64.
    const JPEG_B64: &str = "/9j/4AAQSkZJRgABAQAAAQABAAD";

    #[test]
    fn system_and_prompt_become_messages_mapped_as_chat_maps_them() {
        let v = to_openai(&format!(
            r#"{{"model":"openai/gpt-4o-mini","system":"請用繁體中文","prompt":"你好","images":["{JPEG_B64}"],"format":"json","options":{{"num_predict":9,"temperature":0.1,"top_k":3}},"think":"high","keep_alive":"5m","logprobs":false}}"#
        ));
        assert_eq!(v["model"], "gpt-4o-mini");
        assert_eq!(v["stream"], true, "Ollama's default: stream");
        assert_eq!(
            v["messages"][0],
            json!({"role":"system","content":"請用繁體中文"})
        );
        assert_eq!(v["messages"][1]["role"], "user");
        let parts = &v["messages"][1]["content"];
        assert_eq!(parts[0], json!({"type":"text","text":"你好"}));
        assert!(parts[1]["image_url"]["url"]
            .as_str()
            .unwrap()
            .starts_with("data:image/jpeg;base64,/9j/"));
        assert_eq!(v["response_format"], json!({"type":"json_object"}));
        assert_eq!(v["max_tokens"], 9);
        assert_eq!(v["temperature"], 0.1);
        assert!(v.get("top_k").is_none());
        assert_eq!(v["reasoning_effort"], "high");
        let v = to_openai(r#"{"model":"m","prompt":"hi","stream":false}"#);
        assert_eq!(v["messages"], json!([{"role":"user","content":"hi"}]));
        assert_eq!(v["stream"], false);
    }

    #[test]
    fn fields_without_an_equivalent_count_only_when_set() {
        for (body, field) in [
            (r#"{"model":"m","prompt":"x","raw":true}"#, Some("raw")),
            (r#"{"model":"m","prompt":"x","suffix":"}"}"#, Some("suffix")),
            (
                r#"{"model":"m","prompt":"x","template":"{{ .Prompt }}"}"#,
                Some("template"),
            ),
            (
                r#"{"model":"m","prompt":"x","context":[1,2,3]}"#,
                Some("context"),
            ),
            (
                r#"{"model":"m","prompt":"x","raw":false,"suffix":"","template":"","context":[]}"#,
                None,
            ),
            (
                r#"{"model":"m","prompt":"x","raw":null,"suffix":null,"template":null,"context":null}"#,
                None,
            ),
            (r#"{"model":"m","prompt":"x"}"#, None),
        ] {
            assert_eq!(parse(body).unsupported(), field, "{body}");
        }
    }

    #[test]
    fn an_empty_request_loads_and_a_zero_keep_alive_unloads() {
        for (body, load) in [
            (r#"{"model":"m"}"#, Some("load")),
            (r#"{"model":"m","prompt":""}"#, Some("load")),
            (
                r#"{"model":"m","prompt":"","keep_alive":0}"#,
                Some("unload"),
            ),
            (
                r#"{"model":"m","prompt":"","keep_alive":"0s"}"#,
                Some("unload"),
            ),
            (
                r#"{"model":"m","prompt":"","keep_alive":"0"}"#,
                Some("unload"),
            ),
            (
                r#"{"model":"m","prompt":"","keep_alive":"5m"}"#,
                Some("load"),
            ),
            (r#"{"model":"m","prompt":"","keep_alive":-1}"#, Some("load")),
            (
                r#"{"model":"m","prompt":"","keep_alive":"10s"}"#,
                Some("load"),
            ),
            (r#"{"model":"m","prompt":"hi","keep_alive":0}"#, None),
            (r#"{"model":"m","system":"be brief"}"#, None),
        ] {
            assert_eq!(parse(body).load(), load, "{body}");
        }
        let v: Value = serde_json::from_slice(&load_answer("openai/m", "unload")).unwrap();
        assert_eq!(v["model"], "openai/m");
        assert_eq!(v["response"], "");
        assert_eq!(v["done"], true);
        assert_eq!(v["done_reason"], "unload");
        assert!(v.get("total_duration").is_none() && v.get("message").is_none());
    }

    #[test]
    fn parse_checks_types_and_the_model() {
        assert!(matches!(
            GenerateRequest::parse(b"  "),
            Err(GatewayError::EmptyBody)
        ));
        assert!(matches!(
            GenerateRequest::parse(br#"{"prompt":"x"}"#),
            Err(GatewayError::MissingModel)
        ));
        for bad in [
            &br#"{"model":"m","prompt":1}"#[..],
            br#"{"model":"m","images":"x"}"#,
            br#"{"model":"m","context":"x"}"#,
            br#"{"model":"m","raw":"yes"}"#,
        ] {
            assert!(matches!(
                GenerateRequest::parse(bad),
                Err(GatewayError::InvalidJson(_))
            ));
        }
        let chat = parse(r#"{"model":"m","stream":false}"#).into_chat().chat;
        assert!(!chat.streams() && chat.model() == "m");
        assert!(parse(r#"{"model":"m"}"#).into_chat().chat.streams());
    }
}
