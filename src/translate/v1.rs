//! OpenAI's API relayed, not translated: a request body with its top-level `model` (and
//! maybe `stream_options`) edited in place and every other byte as the client sent it, and
//! answers (JSON, or SSE events cut from the upstream's bytes) with their `model` put back
//! to the client's name and the usage read on the way. Pure code: no I/O.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::GatewayError;
use crate::translate::openai::Usage;

mod events;

pub use self::events::{data_span, event_data, EventSplitter, TooLarge};

/// One of OpenAI's model endpoints the gateway relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
    Embeddings,
}

impl Endpoint {
    /// The route, as the `endpoint` label and the log line name it.
    pub fn path(self) -> &'static str {
        match self {
            Self::Chat => "/v1/chat/completions",
            Self::Completions => "/v1/completions",
            Self::Embeddings => "/v1/embeddings",
        }
    }

    /// Whether the endpoint answers with an event stream when asked to.
    pub fn can_stream(self) -> bool {
        !matches!(self, Self::Embeddings)
    }
}

/// A JSON object key, borrowed from the input unless it had escapes.
pub(crate) struct Key<'a>(pub(crate) Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// A JSON object key as its bytes (escapes resolved), not checked for UTF-8: for matching
/// against known ASCII names, where serde_json's check of every key is only cost.
pub(crate) struct KeyBytes<'a>(pub(crate) Cow<'a, [u8]>);

impl<'de> Deserialize<'de> for KeyBytes<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = KeyBytes<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Self::Value, E> {
                Ok(KeyBytes(Cow::Borrowed(v)))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                Ok(KeyBytes(Cow::Owned(v.to_owned())))
            }
            // Deserializers of already parsed data (serde's buffered content) give strings.
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(KeyBytes(Cow::Borrowed(v.as_bytes())))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(KeyBytes(Cow::Owned(v.as_bytes().to_owned())))
            }
        }
        // serde_json reads a key asked for as bytes without its UTF-8 check.
        d.deserialize_bytes(KeyVisitor)
    }
}

/// A JSON object's members in order, duplicates kept, values as their raw text.
pub(crate) struct Members<'a>(pub(crate) Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    members.push((key, value));
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(MembersVisitor)
    }
}

impl<'a> Members<'a> {
    pub(crate) fn parse(json: &'a [u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(json)
    }

    /// The first member named exactly `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
    }
}

/// Where `raw` lies in `within` (it was parsed out of it).
pub(crate) fn span(within: &[u8], raw: &RawValue) -> Range<usize> {
    let start = raw.get().as_ptr() as usize - within.as_ptr() as usize;
    start..start + raw.get().len()
}

fn is_null(raw: &RawValue) -> bool {
    raw.get() == "null"
}

/// A key as a case-insensitive decoder would match it: Go's `encoding/json` (Ollama)
/// folds case, including the long s (`ſ`, U+017F) to `s` and the Kelvin sign to `k`.
fn folded(key: &str) -> String {
    key.chars().map(super::go_fold).collect()
}

/// Refuses two members that any reader could take for the same one of `guarded`: a
/// duplicate, or a case (or fold) variant, which gateway and upstream could read
/// differently.
pub(crate) fn check_keys(
    members: &Members<'_>,
    guarded: &[&str],
    within: &str,
) -> Result<(), GatewayError> {
    let mut seen = [false; 8];
    for (key, _) in &members.0 {
        // Only a key as long as a guarded one (in bytes, or in characters when folded from
        // a longer one) can match it: most keys are passed over without folding.
        if !guarded.iter().any(|g| key.chars().count() == g.len()) {
            continue;
        }
        let key_folded = folded(key);
        let Some(i) = guarded.iter().position(|g| *g == key_folded) else {
            continue;
        };
        let name = guarded[i];
        if key != name {
            return Err(GatewayError::InvalidField(format!(
                "{within}key {:?} is not {name:?}: keys differing from it only in case are refused",
                key.chars().take(50).collect::<String>()
            )));
        }
        if std::mem::replace(&mut seen[i], true) {
            return Err(GatewayError::InvalidField(format!(
                "{within}key {name:?} appears more than once"
            )));
        }
    }
    Ok(())
}

/// A client's request body, checked, with what the gateway reads of it.
#[derive(Debug)]
pub struct V1Request<'a> {
    body: &'a [u8],
    /// The client's model name, decoded.
    model: Cow<'a, str>,
    model_span: Range<usize>,
    stream: bool,
    /// The client asked for `stream_options.include_usage`.
    include_usage: bool,
    stream_options: Option<StreamOptions>,
    /// Just after the body's opening `{`.
    open: usize,
}

/// The client's `stream_options` and where its `include_usage` is.
#[derive(Debug)]
struct StreamOptions {
    span: Range<usize>,
    /// `null` or `{}`: replaced whole.
    empty: bool,
    include_usage: Option<Range<usize>>,
}

impl<'a> V1Request<'a> {
    /// Parses `body`: a JSON object with a non-empty string `model`, a boolean `stream` and
    /// an object `stream_options` if any, none of them twice or in another case.
    pub fn parse(body: &'a [u8]) -> Result<Self, GatewayError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(GatewayError::EmptyBody);
        }
        let members = Members::parse(body)
            .map_err(|e| GatewayError::InvalidJson(format!("invalid request body: {e}")))?;
        check_keys(&members, &["model", "stream", "stream_options"], "")?;
        let raw_model = members.get("model").ok_or(GatewayError::MissingModel)?;
        let model = match serde_json::from_str::<Key<'a>>(raw_model.get()) {
            Ok(Key(m)) if !m.trim().is_empty() => m,
            Ok(_) => return Err(GatewayError::MissingModel),
            Err(_) => return Err(GatewayError::InvalidField("model must be a string".into())),
        };
        let stream = match members.get("stream") {
            None => false,
            Some(raw) => serde_json::from_str::<Option<bool>>(raw.get())
                .map_err(|_| GatewayError::InvalidField("stream must be a boolean".into()))?
                .unwrap_or(false),
        };
        let mut include_usage = false;
        let stream_options = match members.get("stream_options") {
            None => None,
            Some(raw) if is_null(raw) => Some(StreamOptions {
                span: span(body, raw),
                empty: true,
                include_usage: None,
            }),
            Some(raw) => {
                let bad = || GatewayError::InvalidField("stream_options must be an object".into());
                let inner = Members::parse(raw.get().as_bytes()).map_err(|_| bad())?;
                check_keys(&inner, &["include_usage"], "stream_options: ")?;
                let usage = inner.get("include_usage");
                if let Some(u) = usage {
                    include_usage = serde_json::from_str::<Option<bool>>(u.get())
                        .map_err(|_| {
                            GatewayError::InvalidField(
                                "stream_options.include_usage must be a boolean".into(),
                            )
                        })?
                        .unwrap_or(false);
                }
                Some(StreamOptions {
                    span: span(body, raw),
                    empty: inner.0.is_empty(),
                    include_usage: usage.map(|u| span(body, u)),
                })
            }
        };
        let open = body.iter().position(|b| *b == b'{').map_or(0, |i| i + 1);
        Ok(Self {
            body,
            model_span: span(body, raw_model),
            model,
            stream,
            include_usage,
            stream_options,
            open,
        })
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    pub fn streams(&self) -> bool {
        self.stream
    }

    /// Whether the client itself asked for the usage chunk.
    pub fn asked_usage(&self) -> bool {
        self.include_usage
    }

    /// The body for the upstream: `model` replaced by `upstream_model` (if given), and
    /// `stream_options.include_usage` turned on when `inject_usage` (for a stream whose
    /// client did not ask for it); every other byte as it came. `None`: send it unchanged.
    pub fn rewrite(&self, upstream_model: Option<&str>, inject_usage: bool) -> Option<Vec<u8>> {
        let mut edits: Vec<(Range<usize>, Cow<'static, [u8]>)> = Vec::new();
        if let Some(model) = upstream_model {
            let quoted = serde_json::to_vec(model).unwrap_or_default();
            edits.push((self.model_span.clone(), Cow::Owned(quoted)));
        }
        if inject_usage && self.stream && !self.include_usage {
            const ALL: &[u8] = br#"{"include_usage":true}"#;
            edits.push(match &self.stream_options {
                None => (
                    self.open..self.open,
                    Cow::Borrowed(br#""stream_options":{"include_usage":true},"#),
                ),
                Some(o) if o.empty => (o.span.clone(), Cow::Borrowed(ALL)),
                Some(StreamOptions {
                    include_usage: Some(at),
                    ..
                }) => (at.clone(), Cow::Borrowed(b"true")),
                // An object with other members: the key goes first in it.
                Some(o) => (
                    o.span.start + 1..o.span.start + 1,
                    Cow::Borrowed(br#""include_usage":true,"#),
                ),
            });
        }
        if edits.is_empty() {
            return None;
        }
        Some(apply(self.body, &mut edits))
    }
}

/// `body` with each range replaced (ranges do not overlap).
pub(crate) fn apply(body: &[u8], edits: &mut [(Range<usize>, Cow<'_, [u8]>)]) -> Vec<u8> {
    edits.sort_by_key(|(r, _)| r.start);
    let extra: usize = edits.iter().map(|(_, b)| b.len()).sum();
    let mut out = Vec::with_capacity(body.len() + extra);
    let mut at = 0;
    for (range, bytes) in edits.iter() {
        out.extend_from_slice(&body[at..range.start]);
        out.extend_from_slice(bytes);
        at = range.end;
    }
    out.extend_from_slice(&body[at..]);
    out
}

/// What the gateway reads of one answer object (a whole answer, or a stream's chunk).
#[derive(Debug, Default)]
pub struct Answer {
    /// Where its top-level `model` string is.
    model: Option<Range<usize>>,
    /// Its usage, if it carries one (not `null`).
    pub usage: Option<Usage>,
    /// Where its `"usage":null` member is, comma included (OpenAI sends one in every chunk
    /// when usage was asked for).
    null_usage: Option<Range<usize>>,
    /// A usage-only chunk: `choices` empty and a usage.
    pub usage_only: bool,
    /// An error object (`{"error": ...}`) instead of an answer.
    pub is_error: bool,
}

#[derive(Deserialize)]
struct TokenCounts {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

/// The members of an answer object the gateway reads (the first of each name), found
/// without collecting the others: this runs for every event of a stream.
#[derive(Default)]
struct Fields<'a> {
    model: Option<&'a RawValue>,
    usage: Option<&'a RawValue>,
    choices: Option<&'a RawValue>,
    error: Option<&'a RawValue>,
}

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Fields::default();
                // Keys as bytes; the members not read are skipped, not kept as raw text.
                while let Some(KeyBytes(key)) = map.next_key::<KeyBytes<'de>>()? {
                    let slot = match &*key {
                        b"model" => &mut fields.model,
                        b"usage" => &mut fields.usage,
                        b"choices" => &mut fields.choices,
                        b"error" => &mut fields.error,
                        _ => {
                            map.next_value::<de::IgnoredAny>()?;
                            continue;
                        }
                    };
                    let value: &'de RawValue = map.next_value()?;
                    slot.get_or_insert(value);
                }
                Ok(fields)
            }
        }
        d.deserialize_map(FieldsVisitor)
    }
}

impl Answer {
    /// Reads `json`, an object.
    pub fn read(json: &[u8]) -> Result<Self, serde_json::Error> {
        // Checked for UTF-8 once, whole: parsed from a `str`, no string in it is again.
        let text = std::str::from_utf8(json).map_err(de::Error::custom)?;
        let members: Fields<'_> = serde_json::from_str(text)?;
        let model = members
            .model
            .filter(|m| m.get().starts_with('"'))
            .map(|m| span(json, m));
        let raw_usage = members.usage;
        let usage = match raw_usage.filter(|u| !is_null(u)) {
            // A usage the gateway cannot read counts nothing, and is still relayed.
            Some(u) => serde_json::from_str::<TokenCounts>(u.get())
                .ok()
                .map(|t| Usage {
                    prompt_tokens: t.prompt_tokens,
                    completion_tokens: t.completion_tokens,
                }),
            None => None,
        };
        let null_usage = raw_usage
            .filter(|u| is_null(u))
            .and_then(|u| member_span(json, span(json, u)));
        let usage_only =
            usage.is_some() && members.choices.is_some_and(|c| is_empty_array(c.get()));
        Ok(Self {
            model,
            usage,
            null_usage,
            usage_only,
            is_error: members.error.is_some_and(|e| !is_null(e)),
        })
    }

    /// `json` with its `model` set to `quoted` (a JSON string) and, if `drop_null_usage`,
    /// its `"usage":null` left out; `None` when nothing changes.
    pub fn rewrite(
        &self,
        json: &[u8],
        quoted: Option<&[u8]>,
        drop_null_usage: bool,
    ) -> Option<Vec<u8>> {
        let mut edits: Vec<(Range<usize>, Cow<'_, [u8]>)> = Vec::new();
        if let (Some(at), Some(q)) = (&self.model, quoted) {
            if json[at.clone()] != *q {
                edits.push((at.clone(), Cow::Borrowed(q)));
            }
        }
        if let (true, Some(at)) = (drop_null_usage, &self.null_usage) {
            edits.push((at.clone(), Cow::Borrowed(&[])));
        }
        if edits.is_empty() {
            return None;
        }
        Some(apply(json, &mut edits))
    }
}

fn is_empty_array(raw: &str) -> bool {
    raw.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .is_some_and(|inner| inner.trim().is_empty())
}

/// The whole member whose value is at `value` in `json` (an object), with the comma that
/// separates it from its neighbour, so that removing it leaves valid JSON.
fn member_span(json: &[u8], value: Range<usize>) -> Option<Range<usize>> {
    let back = |mut i: usize| {
        while i > 0 && json[i - 1].is_ascii_whitespace() {
            i -= 1;
        }
        i
    };
    let colon = back(value.start);
    if colon == 0 || json[colon - 1] != b':' {
        return None;
    }
    let close = back(colon - 1);
    if close == 0 || json[close - 1] != b'"' {
        return None;
    }
    // The key has no escapes when it is `usage` spelled plainly; any other is left alone.
    let open = memchr::memrchr(b'"', &json[..close - 1])?;
    if &json[open..close] != b"\"usage\"" {
        return None;
    }
    let before = back(open);
    if before > 0 && json[before - 1] == b',' {
        return Some(before - 1..value.end);
    }
    // The first member: take the comma after it instead.
    let mut after = value.end;
    while after < json.len() && json[after].is_ascii_whitespace() {
        after += 1;
    }
    if json.get(after) == Some(&b',') {
        return Some(open..after + 1);
    }
    Some(open..value.end)
}

#[cfg(test)]
mod tests;
