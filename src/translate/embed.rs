//! Ollama's `/api/embed` and legacy `/api/embeddings` (PROTOCOLS.md 1.6) to and from an
//! OpenAI-compatible `POST {base_url}/embeddings`. The vectors pass through as the upstream
//! wrote them: checked to be JSON arrays, never parsed into floats and printed again.

use std::borrow::Cow;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::ollama::{nanos, parse_request};
use super::openai::{Translated, Usage};
use crate::error::GatewayError;

/// Which of Ollama's two embedding endpoints a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/api/embed`: `input` (a string or a list), answered `{"embeddings": [[...], ...]}`.
    Embed,
    /// `/api/embeddings`: `prompt` (one string), answered `{"embedding": [...]}`.
    Legacy,
}

/// The fields of either embedding request the gateway needs; to Ollama the body goes
/// unchanged. `input` is read only when it is translated, so that Ollama judges its own.
#[derive(Debug, Deserialize)]
pub struct EmbedRequest<'a> {
    #[serde(default, borrow, deserialize_with = "crate::translate::borrowed")]
    pub model: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub input: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "crate::translate::borrowed")]
    pub prompt: Option<Cow<'a, str>>,
    #[serde(default)]
    pub dimensions: Option<i64>,
}

/// The texts to embed, as OpenAI takes them (and as Ollama's `input` is written).
#[derive(Debug, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Input<'a> {
    One(#[serde(borrow)] Cow<'a, str>),
    Many(#[serde(borrow)] Vec<Cow<'a, str>>),
}

impl Input<'_> {
    /// How many vectors the answer must hold.
    pub fn count(&self) -> usize {
        match self {
            Self::One(_) => 1,
            Self::Many(list) => list.len(),
        }
    }
}

#[derive(Serialize)]
struct OpenAiRequest<'a> {
    model: &'a str,
    input: &'a Input<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dimensions: Option<i64>,
}

impl<'a> EmbedRequest<'a> {
    /// Parses and checks a request body: JSON syntax and types, and a non-empty model.
    pub fn parse(body: &'a [u8]) -> Result<Self, GatewayError> {
        parse_request(body, |r: &Self| r.model())
    }

    pub fn model(&self) -> &str {
        self.model.as_deref().unwrap_or_default()
    }

    /// What to embed for `endpoint`, or `None` when there is nothing (Ollama answers that
    /// at once, with no vector: the "load" of an embedding model).
    pub fn input(&self, endpoint: Endpoint) -> Result<Option<Input<'a>>, GatewayError> {
        let input = match endpoint {
            Endpoint::Legacy => self.prompt.clone().map(Input::One),
            Endpoint::Embed => match self.input {
                None => None,
                Some(raw) => {
                    serde_json::from_str::<Option<Input<'a>>>(raw.get()).map_err(|_| {
                        GatewayError::InvalidField(
                            "invalid input type: input must be a string or an array of strings"
                                .into(),
                        )
                    })?
                }
            },
        };
        Ok(input.filter(|i| !matches!(i, Input::One(t) if t.is_empty()) && i.count() > 0))
    }

    /// The OpenAI request body for `input`, addressed to `model` (prefix already stripped);
    /// `dimensions` when the client set a positive one.
    pub fn to_openai(&self, input: &Input<'_>, model: &str) -> Vec<u8> {
        let body = OpenAiRequest {
            model,
            input,
            dimensions: self.dimensions.filter(|d| *d > 0),
        };
        // Serializing this plain struct into a Vec cannot fail.
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

#[derive(Deserialize)]
struct OpenAiEmbeddings<'a> {
    #[serde(borrow)]
    data: Vec<Datum<'a>>,
    #[serde(default)]
    usage: Option<EmbedUsage>,
}

#[derive(Deserialize)]
struct Datum<'a> {
    #[serde(default)]
    index: Option<usize>,
    #[serde(borrow)]
    embedding: &'a RawValue,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct EmbedUsage {
    prompt_tokens: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// `/api/embed`'s answer; the durations are the gateway's own (there is nothing to load).
#[derive(Serialize)]
struct EmbedAnswer<'a> {
    model: &'a str,
    embeddings: Vec<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    total_duration: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    load_duration: Option<u64>,
    #[serde(skip_serializing_if = "is_zero")]
    prompt_eval_count: u64,
}

#[derive(Serialize)]
struct LegacyAnswer<'a> {
    embedding: &'a RawValue,
}

/// Ollama's answer when there is nothing to embed: no vector, as Ollama answers.
pub fn empty_answer(endpoint: Endpoint, model: &str) -> Vec<u8> {
    match endpoint {
        Endpoint::Embed => serde_json::to_vec(&EmbedAnswer {
            model,
            embeddings: Vec::new(),
            total_duration: None,
            load_duration: None,
            prompt_eval_count: 0,
        })
        .unwrap_or_default(),
        Endpoint::Legacy => b"{\"embedding\":[]}".to_vec(),
    }
}

/// Maps an OpenAI embeddings answer for `expected` inputs to Ollama's answer at `endpoint`,
/// the vectors in input order; the prompt tokens come from its usage.
pub fn from_openai_embeddings(
    body: &[u8],
    endpoint: Endpoint,
    client_model: &str,
    expected: usize,
    started: Instant,
) -> Result<Translated, String> {
    let answer: OpenAiEmbeddings<'_> =
        serde_json::from_slice(body).map_err(|e| format!("not an embeddings answer: {e}"))?;
    let mut data = answer.data;
    if data.len() != expected {
        return Err(format!(
            "the answer holds {} embeddings for {expected} inputs",
            data.len()
        ));
    }
    data.sort_by_key(|d| d.index);
    if let Some(bad) = data
        .iter()
        .find(|d| !d.embedding.get().trim_start().starts_with('['))
    {
        let head: String = bad.embedding.get().chars().take(40).collect();
        return Err(format!("an embedding is not a list of numbers: {head}"));
    }
    let usage = Usage {
        prompt_tokens: answer.usage.unwrap_or_default().prompt_tokens,
        completion_tokens: 0,
    };
    let mut out = Vec::with_capacity(body.len() + 128);
    let written = match endpoint {
        Endpoint::Embed => serde_json::to_writer(
            &mut out,
            &EmbedAnswer {
                model: client_model,
                embeddings: data.iter().map(|d| d.embedding).collect(),
                total_duration: Some(nanos(started.elapsed())),
                load_duration: Some(0),
                prompt_eval_count: usage.prompt_tokens,
            },
        ),
        Endpoint::Legacy => match data.first() {
            Some(d) => serde_json::to_writer(
                &mut out,
                &LegacyAnswer {
                    embedding: d.embedding,
                },
            ),
            None => return Err("the answer holds no embedding".into()),
        },
    };
    written.map_err(|e| format!("cannot write the answer: {e}"))?;
    Ok(Translated { body: out, usage })
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn request(body: &str) -> EmbedRequest<'_> {
        EmbedRequest::parse(body.as_bytes()).unwrap()
    }

    fn openai_body(body: &str, endpoint: Endpoint) -> Option<Value> {
        let req = request(body);
        let input = req.input(endpoint).unwrap()?;
        Some(serde_json::from_slice(&req.to_openai(&input, "text-embedding-3-small")).unwrap())
    }

    #[test]
    fn requests_map_to_openai_embeddings() {
        assert_eq!(
            openai_body(
                r#"{"model":"openai/text-embedding-3-small","input":"你好","truncate":true,"dimensions":256,"options":{"num_ctx":8},"keep_alive":"5m"}"#,
                Endpoint::Embed
            ),
            Some(json!({"model":"text-embedding-3-small","input":"你好","dimensions":256}))
        );
        assert_eq!(
            openai_body(
                r#"{"model":"m","input":["a","b\n"],"dimensions":0}"#,
                Endpoint::Embed
            ),
            Some(json!({"model":"text-embedding-3-small","input":["a","b\n"]}))
        );
        assert_eq!(
            openai_body(r#"{"model":"m","prompt":"hi"}"#, Endpoint::Legacy),
            Some(json!({"model":"text-embedding-3-small","input":"hi"}))
        );
        // The legacy endpoint reads only `prompt`, the new one only `input`.
        assert_eq!(
            openai_body(r#"{"model":"m","input":"x"}"#, Endpoint::Legacy),
            None
        );
        assert_eq!(
            openai_body(r#"{"model":"m","prompt":"x"}"#, Endpoint::Embed),
            None
        );
    }

    #[test]
    fn nothing_to_embed_is_answered_without_a_vector() {
        for body in [
            r#"{"model":"m"}"#,
            r#"{"model":"m","input":""}"#,
            r#"{"model":"m","input":[]}"#,
            r#"{"model":"m","input":null}"#,
        ] {
            assert!(
                request(body).input(Endpoint::Embed).unwrap().is_none(),
                "{body}"
            );
        }
        assert!(request(r#"{"model":"m","prompt":""}"#)
            .input(Endpoint::Legacy)
            .unwrap()
            .is_none());
        let v: Value = serde_json::from_slice(&empty_answer(Endpoint::Embed, "openai/e")).unwrap();
        assert_eq!(v, json!({"model":"openai/e","embeddings":[]}));
        assert_eq!(empty_answer(Endpoint::Legacy, "m"), b"{\"embedding\":[]}");
    }

    #[test]
    fn a_bad_input_is_named() {
        let err = request(r#"{"model":"m","input":[1,2]}"#)
            .input(Endpoint::Embed)
            .unwrap_err();
        assert!(err.to_string().contains("invalid input type"), "{err}");
        assert!(matches!(
            EmbedRequest::parse(br#"{"model":"m","prompt":3}"#),
            Err(GatewayError::InvalidJson(_))
        ));
    }

    const ANSWER: &str = r#"{"object":"list","data":[{"object":"embedding","index":1,"embedding":[0.5,-1e-7]},{"object":"embedding","index":0,"embedding":[0.1234567890123,2]}],"model":"text-embedding-3-small","usage":{"prompt_tokens":7,"total_tokens":7}}"#;

    #[test]
    fn answers_keep_the_vectors_as_written_in_input_order() {
        let t = from_openai_embeddings(
            ANSWER.as_bytes(),
            Endpoint::Embed,
            "openai/e",
            2,
            Instant::now(),
        )
        .unwrap();
        let text = String::from_utf8(t.body).unwrap();
        assert!(
            text.starts_with(
                r#"{"model":"openai/e","embeddings":[[0.1234567890123,2],[0.5,-1e-7]],"total_duration":"#
            ),
            "{text}"
        );
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["load_duration"], 0);
        assert_eq!(v["prompt_eval_count"], 7);
        assert_eq!(t.usage.prompt_tokens, 7);

        let one = r#"{"data":[{"index":0,"embedding":[1.5,2.5]}],"usage":{"prompt_tokens":2}}"#;
        let t = from_openai_embeddings(one.as_bytes(), Endpoint::Legacy, "m", 1, Instant::now())
            .unwrap();
        assert_eq!(t.body, br#"{"embedding":[1.5,2.5]}"#);
        assert_eq!(t.usage.prompt_tokens, 2);
    }

    #[test]
    fn answers_that_do_not_fit_the_request_are_refused() {
        let run = |body: &str, expected| {
            from_openai_embeddings(
                body.as_bytes(),
                Endpoint::Embed,
                "m",
                expected,
                Instant::now(),
            )
            .err()
            .unwrap_or_default()
        };
        assert!(run(ANSWER, 3).contains("2 embeddings for 3 inputs"));
        assert!(run(r#"{"data":[{"embedding":"AAAA"}]}"#, 1).contains("not a list of numbers"));
        assert!(run("<html>", 1).contains("not an embeddings answer"));
        assert!(run(r#"{"error":{"message":"x"}}"#, 1).contains("not an embeddings answer"));
    }
}
