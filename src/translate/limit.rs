//! The output and context limits the gateway writes into a request for a key with caps
//! (`max_output_tokens`, `max_context`), edited in place: every other byte as the client
//! sent it. Pure code: no I/O.
//!
//! A limit lives at the top level (`max_tokens` of OpenAI's and Anthropic's APIs) or in an
//! object there (Ollama's `options.num_predict`). Upstreams written in Go match field names
//! case-insensitively and take the last of duplicate keys, so a second spelling of any of
//! these (`Options`, `MAX_TOKENS`, a duplicate) is refused: the gateway and the upstream
//! would read different limits.

use std::borrow::Cow;
use std::ops::Range;

use serde_json::value::RawValue;

use super::v1::{apply, check_keys, span, Members};
use crate::error::GatewayError;

/// Where a request's limits are: at its top level, or in the object `within` there.
#[derive(Debug)]
pub struct Limits<'a> {
    body: &'a [u8],
    within: Option<&'static str>,
    names: &'static [&'static str],
    /// Each name's value (the last, were there several; integers only) and span.
    found: Vec<Option<(Option<i64>, Range<usize>)>>,
    container: Container,
}

#[derive(Debug)]
enum Container {
    /// The members are in this object (its span); `empty` when it has none.
    Object { span: Range<usize>, empty: bool },
    /// `within` is absent: it goes in the top-level object (its span).
    Absent { top: Range<usize>, top_empty: bool },
    /// `within` is `null`: replaced whole.
    Null(Range<usize>),
}

fn bad_json(e: serde_json::Error) -> GatewayError {
    GatewayError::InvalidJson(format!("invalid request body: {e}"))
}

/// The span of the whole JSON object in `body` (its leading and trailing whitespace cut).
fn object_span(body: &[u8]) -> Range<usize> {
    let start = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(0);
    let end = body
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(body.len(), |i| i + 1);
    start..end
}

impl<'a> Limits<'a> {
    /// Reads `names` at the top level of `body`, or in its object `within`.
    pub fn read(
        body: &'a [u8],
        within: Option<&'static str>,
        names: &'static [&'static str],
    ) -> Result<Self, GatewayError> {
        let top = Members::parse(body).map_err(bad_json)?;
        let top_span = object_span(body);
        let (members, container, prefix) = match within {
            None => (
                top,
                Container::Object {
                    span: top_span,
                    empty: false,
                },
                String::new(),
            ),
            Some(name) => {
                check_keys(&top, &[name], "")?;
                match top.get(name) {
                    None => (
                        Members(Vec::new()),
                        Container::Absent {
                            top_empty: top.0.is_empty(),
                            top: top_span,
                        },
                        String::new(),
                    ),
                    Some(raw) if raw.get() == "null" => (
                        Members(Vec::new()),
                        Container::Null(span(body, raw)),
                        String::new(),
                    ),
                    Some(raw) => {
                        let inner = Members::parse(raw.get().as_bytes()).map_err(|_| {
                            GatewayError::InvalidField(format!("{name} must be an object"))
                        })?;
                        let empty = inner.0.is_empty();
                        (
                            inner,
                            Container::Object {
                                span: span(body, raw),
                                empty,
                            },
                            format!("{name}: "),
                        )
                    }
                }
            }
        };
        check_keys(&members, names, &prefix)?;
        let found = names
            .iter()
            .map(|name| {
                members.get(name).map(|raw: &RawValue| {
                    let value = serde_json::from_str::<i64>(raw.get()).ok();
                    (value, span(body, raw))
                })
            })
            .collect();
        // `empty` was taken for the top level above only when `within` is none: a request
        // body always has a model, so it is never empty there.
        Ok(Self {
            body,
            within,
            names,
            found,
            container,
        })
    }

    /// The integer value of `name` (one of the names read), if the request gives one.
    pub fn get(&self, name: &str) -> Option<i64> {
        let i = self.names.iter().position(|n| *n == name)?;
        self.found.get(i)?.as_ref()?.0
    }

    /// Whether the request gives `name` at all (of any type).
    pub fn has(&self, name: &str) -> bool {
        self.names
            .iter()
            .position(|n| *n == name)
            .and_then(|i| self.found.get(i))
            .is_some_and(Option::is_some)
    }

    /// The body with each of `set` written (replacing the value given, or added).
    pub fn write(&self, set: &[(&'static str, u64)]) -> Vec<u8> {
        let mut edits: Vec<(Range<usize>, Cow<'static, [u8]>)> = Vec::new();
        let mut added: Vec<u8> = Vec::new();
        for (name, value) in set {
            let mut n = itoa::Buffer::new();
            let value = n.format(*value).as_bytes().to_vec();
            let at = self
                .names
                .iter()
                .position(|x| x == name)
                .and_then(|i| self.found.get(i))
                .and_then(Option::as_ref);
            match at {
                Some((_, range)) => edits.push((range.clone(), Cow::Owned(value))),
                None => {
                    if !added.is_empty() {
                        added.push(b',');
                    }
                    added.push(b'"');
                    added.extend_from_slice(name.as_bytes());
                    added.extend_from_slice(b"\":");
                    added.extend_from_slice(&value);
                }
            }
        }
        if !added.is_empty() {
            edits.push(self.insertion(added));
        }
        apply(self.body, &mut edits)
    }

    /// The edit that adds `members` (`"a":1,"b":2`) where they belong.
    fn insertion(&self, members: Vec<u8>) -> (Range<usize>, Cow<'static, [u8]>) {
        let object = |members: &[u8]| {
            let mut o = Vec::with_capacity(members.len() + 2);
            o.push(b'{');
            o.extend_from_slice(members);
            o.push(b'}');
            o
        };
        match &self.container {
            Container::Object { span, empty: true } => (span.clone(), Cow::Owned(object(&members))),
            Container::Object { span, empty: false } => {
                let mut m = members;
                m.push(b',');
                (span.start + 1..span.start + 1, Cow::Owned(m))
            }
            Container::Null(span) => (span.clone(), Cow::Owned(object(&members))),
            Container::Absent { top, top_empty } => {
                let name = self.within.unwrap_or_default();
                let mut m = Vec::with_capacity(members.len() + name.len() + 6);
                m.push(b'"');
                m.extend_from_slice(name.as_bytes());
                m.extend_from_slice(b"\":");
                m.extend_from_slice(&object(&members));
                if *top_empty {
                    (top.clone(), Cow::Owned(object(&m)))
                } else {
                    m.push(b',');
                    (top.start + 1..top.start + 1, Cow::Owned(m))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes).unwrap()
    }

    const OLLAMA: &[&str] = &["num_predict", "num_ctx"];

    #[test]
    fn options_added_replaced_or_completed() {
        let body = br#"{"model":"m","messages":[]}"#;
        let l = Limits::read(body, Some("options"), OLLAMA).unwrap();
        assert_eq!(l.get("num_predict"), None);
        let out = l.write(&[("num_predict", 64)]);
        assert_eq!(
            out,
            br#"{"options":{"num_predict":64},"model":"m","messages":[]}"#
        );

        let body =
            br#"{"model":"m","options":{"temperature":0.5,"num_predict":9000,"num_ctx":99999}}"#;
        let l = Limits::read(body, Some("options"), OLLAMA).unwrap();
        assert_eq!(
            (l.get("num_predict"), l.get("num_ctx")),
            (Some(9000), Some(99999))
        );
        let out = l.write(&[("num_predict", 64), ("num_ctx", 8192)]);
        assert_eq!(
            out,
            br#"{"model":"m","options":{"temperature":0.5,"num_predict":64,"num_ctx":8192}}"#
        );

        let body = br#"{"model":"m","options":{"temperature":0.5}}"#;
        let out = Limits::read(body, Some("options"), OLLAMA)
            .unwrap()
            .write(&[("num_predict", 64)]);
        assert_eq!(
            json(&out)["options"],
            json(br#"{"num_predict":64,"temperature":0.5}"#)
        );

        for (body, want) in [
            (
                &br#"{"model":"m","options":{}}"#[..],
                &br#"{"model":"m","options":{"num_predict":1}}"#[..],
            ),
            (
                br#" {"model":"m","options":null} "#,
                br#" {"model":"m","options":{"num_predict":1}} "#,
            ),
        ] {
            let out = Limits::read(body, Some("options"), OLLAMA)
                .unwrap()
                .write(&[("num_predict", 1)]);
            assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(want));
        }
    }

    #[test]
    fn top_level_limits() {
        let body = br#"{"model":"gpt","max_tokens":5000,"messages":[]}"#;
        let l = Limits::read(body, None, &["max_tokens", "max_completion_tokens"]).unwrap();
        assert_eq!(l.get("max_tokens"), Some(5000));
        assert!(!l.has("max_completion_tokens"));
        let out = l.write(&[("max_tokens", 100)]);
        assert_eq!(out, br#"{"model":"gpt","max_tokens":100,"messages":[]}"#);
        let body = br#"{"model":"gpt"}"#;
        let out = Limits::read(body, None, &["max_tokens"])
            .unwrap()
            .write(&[("max_tokens", 7)]);
        assert_eq!(out, br#"{"max_tokens":7,"model":"gpt"}"#);
        // Not an integer: read as none, replaced when written.
        let body = br#"{"model":"gpt","max_tokens":"lots"}"#;
        let l = Limits::read(body, None, &["max_tokens"]).unwrap();
        assert_eq!(l.get("max_tokens"), None);
        assert!(l.has("max_tokens"));
        assert_eq!(
            l.write(&[("max_tokens", 7)]),
            br#"{"model":"gpt","max_tokens":7}"#
        );
    }

    #[test]
    fn second_spellings_are_refused() {
        for body in [
            &br#"{"model":"m","Options":{"num_predict":99999}}"#[..],
            br#"{"model":"m","options":{},"options":{"num_predict":99999}}"#,
            br#"{"model":"m","options":{"num_predict":1,"num_predict":99999}}"#,
            br#"{"model":"m","options":{"NUM_PREDICT":99999}}"#,
        ] {
            let err = Limits::read(body, Some("options"), OLLAMA).unwrap_err();
            assert!(matches!(err, GatewayError::InvalidField(_)), "{err:?}");
        }
        let err =
            Limits::read(br#"{"model":"m","Max_Tokens":1}"#, None, &["max_tokens"]).unwrap_err();
        assert!(matches!(err, GatewayError::InvalidField(_)), "{err:?}");
        let err =
            Limits::read(br#"{"model":"m","options":[1]}"#, Some("options"), OLLAMA).unwrap_err();
        assert!(matches!(err, GatewayError::InvalidField(_)), "{err:?}");
    }
}
