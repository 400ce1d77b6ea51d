//! What a request reserves before its upstream says what it spent: its prompt estimated
//! from its text, about four bytes of text a token.
//!
//! The rule (README "Token budgets"): the UTF-8 bytes of every string value in the request
//! body, except the model's name and image data (Ollama's `images`, Anthropic's `data`,
//! and any `data:` URL), divided by 4 and rounded up. Keys, numbers and JSON punctuation
//! do not count. Text in tools' descriptions and schemas counts: it is part of the prompt.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::translate::v1::KeyBytes;

/// Bytes of text a token is estimated at.
pub const BYTES_PER_TOKEN: u64 = 4;

/// The estimated prompt tokens of a JSON request body. A body that is not JSON has no
/// meaningful figure (0, or what its strings add up to): every route refuses it before
/// anything is reserved.
pub fn prompt_tokens(body: &[u8]) -> u64 {
    let bytes = plain_text_bytes(body).unwrap_or_else(|| {
        let mut de = serde_json::Deserializer::from_slice(body);
        Text { skip: false }.deserialize(&mut de).unwrap_or(0)
    });
    bytes.div_ceil(BYTES_PER_TOKEN)
}

/// Deepest nesting [`plain_text_bytes`] follows; deeper bodies go to serde_json, which
/// refuses them (its limit is 128), so that both ways give the same figure.
const PLAIN_DEPTH: usize = 64;

/// The rule's count for a body in plain ASCII without an escape, the shape of nearly every
/// request, without a parser: every `"` opens or closes a string there, so a string ends at
/// the next `"`, and it is an object's key when it follows `{` or `,` in an object. None for
/// any other body (serde_json counts it). For valid JSON the figure is the one serde_json's
/// count gives (`tests::plain_bodies_count_as_serde_json_counts` checks it on generated
/// bodies). Measured: ~2,500 instructions of every budgeted request went to that count.
fn plain_text_bytes(body: &[u8]) -> Option<u64> {
    if !body.is_ascii() || memchr::memchr(b'\\', body).is_some() {
        return None;
    }
    // Per open container, `depth` of them: whether it is an object, and whether its text
    // is skipped. On the stack: deeper bodies go to serde_json anyway.
    let mut open = [(false, false); PLAIN_DEPTH];
    let mut depth = 0usize;
    let mut last = 0u8; // the last of `{`, `[`, `,`, `:`, or `"` (a string's end)
    let mut key_skips = false; // whether the value after the last key is skipped
    let mut n = 0u64;
    let mut i = 0;
    while let Some(&b) = body.get(i) {
        let (in_object, skip) = depth
            .checked_sub(1)
            .and_then(|d| open.get(d).copied())
            .unwrap_or((false, false));
        match b {
            b'"' => {
                let start = i + 1;
                let len = memchr::memchr(b'"', body.get(start..)?)?;
                let text = &body[start..start + len];
                if in_object && matches!(last, b'{' | b',') {
                    key_skips = skip || skipped(text);
                } else if !(if in_object { key_skips } else { skip }) && !text.starts_with(b"data:")
                {
                    n = n.saturating_add(len as u64);
                }
                last = b'"';
                i = start + len + 1;
                continue;
            }
            b'{' | b'[' => {
                *open.get_mut(depth)? = (b == b'{', if in_object { key_skips } else { skip });
                depth += 1;
                last = b;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                last = b;
            }
            b',' | b':' => last = b,
            _ => {}
        }
        i += 1;
    }
    Some(n)
}

/// Counts the text bytes of one JSON value (none if `skip`).
#[derive(Clone, Copy)]
struct Text {
    skip: bool,
}

impl<'de> DeserializeSeed<'de> for Text {
    type Value = u64;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_any(self)
    }
}

/// Keys whose values are not text a model reads as tokens of its prompt.
fn skipped(key: &[u8]) -> bool {
    matches!(key, b"model" | b"images" | b"data")
}

impl<'de> Visitor<'de> for Text {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("JSON")
    }

    fn visit_str<E>(self, v: &str) -> Result<u64, E> {
        if self.skip || v.starts_with("data:") {
            return Ok(0);
        }
        Ok(v.len() as u64)
    }

    fn visit_bool<E>(self, _: bool) -> Result<u64, E> {
        Ok(0)
    }

    fn visit_i64<E>(self, _: i64) -> Result<u64, E> {
        Ok(0)
    }

    fn visit_u64<E>(self, _: u64) -> Result<u64, E> {
        Ok(0)
    }

    fn visit_f64<E>(self, _: f64) -> Result<u64, E> {
        Ok(0)
    }

    fn visit_unit<E>(self) -> Result<u64, E> {
        Ok(0)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        let mut n = 0u64;
        while let Some(m) = seq.next_element_seed(self)? {
            n = n.saturating_add(m);
        }
        Ok(n)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u64, A::Error> {
        let mut n = 0u64;
        // Keys borrowed from the body as bytes: only compared with ASCII names, so not
        // checked for UTF-8.
        while let Some(KeyBytes(key)) = map.next_key::<KeyBytes<'de>>()? {
            let seed = Text {
                skip: self.skip || skipped(&key),
            };
            n = n.saturating_add(map.next_value_seed(seed)?);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_count_follows_its_depth_and_hands_deeper_bodies_to_serde_json() {
        let nested = |depth: usize| {
            format!(
                r#"{}{{"content":"abcdefgh"}}{}"#,
                "[".repeat(depth - 1),
                "]".repeat(depth - 1)
            )
        };
        assert_eq!(plain_text_bytes(nested(PLAIN_DEPTH).as_bytes()), Some(8));
        assert_eq!(plain_text_bytes(nested(PLAIN_DEPTH + 1).as_bytes()), None);
        // Either way the figure is the same.
        assert_eq!(prompt_tokens(nested(PLAIN_DEPTH).as_bytes()), 2);
        assert_eq!(prompt_tokens(nested(PLAIN_DEPTH + 1).as_bytes()), 2);
        // Closers with nothing open end nothing that is not open.
        assert_eq!(plain_text_bytes(br#"]]{"content":"abcd"}"#), Some(4));
    }

    #[test]
    fn text_bytes_over_four_rounded_up() {
        // "hello" (5) + "user" (4) = 9 bytes: 3 tokens; the model's name does not count.
        let body = br#"{"model":"llama3-with-a-long-name","messages":[{"role":"user","content":"hello"}]}"#;
        assert_eq!(prompt_tokens(body), 3);
        assert_eq!(prompt_tokens(br#"{"model":"m","prompt":"abcd"}"#), 1);
        assert_eq!(prompt_tokens(br#"{"model":"m"}"#), 0);
        assert_eq!(prompt_tokens(b"not json"), 0);
    }

    #[test]
    fn images_and_numbers_do_not_count() {
        let body = br#"{"model":"m","stream":false,"options":{"num_predict":100},
            "messages":[{"role":"user","content":"abcdefgh","images":["aGVsbG8gd29ybGQ="]}]}"#;
        assert_eq!(prompt_tokens(body), 3); // "user" + "abcdefgh" = 12 bytes
        let openai = br#"{"model":"m","messages":[{"role":"user","content":[
            {"type":"text","text":"abcd"},
            {"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]}]}"#;
        // "user" + "text" + "abcd" + "image_url" = 21 bytes: 6 tokens.
        assert_eq!(prompt_tokens(openai), 6);
        let anthropic = br#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[
            {"type":"image","source":{"type":"base64","media_type":"image/png","data":"AAAAAAAA"}}]}]}"#;
        // "user" "image" "base64" "image/png" = 24 bytes.
        assert_eq!(prompt_tokens(anthropic), 6);
    }

    /// The count serde_json's walk gives (the path for bodies that are not plain).
    fn by_serde(body: &[u8]) -> u64 {
        let mut de = serde_json::Deserializer::from_slice(body);
        Text { skip: false }.deserialize(&mut de).unwrap_or(0)
    }

    /// A small deterministic generator of JSON values (xorshift), leaning on what the rule
    /// treats specially: the skipped keys, `data:` strings, nesting and whitespace.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self, below: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % below
        }

        fn space(&mut self, out: &mut String) {
            out.push_str([" ", "", "\n ", "\t"][self.next(4) as usize]);
        }

        fn string(&mut self, out: &mut String) {
            const WORDS: [&str; 12] = [
                "",
                "model",
                "images",
                "data",
                "data:image/png;base64,AA",
                "hi",
                "{",
                "}:,[",
                "user",
                "a b c",
                "modeldata",
                "Model",
            ];
            out.push('"');
            out.push_str(WORDS[self.next(WORDS.len() as u64) as usize]);
            out.push('"');
        }

        fn value(&mut self, out: &mut String, depth: u32) {
            self.space(out);
            match self.next(if depth > 5 { 4 } else { 6 }) {
                0 => self.string(out),
                1 => out.push_str(["0", "-1.5e3", "true", "false", "null"][self.next(5) as usize]),
                2 | 3 => self.string(out),
                4 => {
                    out.push('[');
                    for i in 0..self.next(4) {
                        if i > 0 {
                            out.push(',');
                        }
                        self.value(out, depth + 1);
                    }
                    self.space(out);
                    out.push(']');
                }
                _ => {
                    out.push('{');
                    for i in 0..self.next(4) {
                        if i > 0 {
                            out.push(',');
                        }
                        self.space(out);
                        self.string(out);
                        self.space(out);
                        out.push(':');
                        self.value(out, depth + 1);
                    }
                    self.space(out);
                    out.push('}');
                }
            }
            self.space(out);
        }
    }

    #[test]
    fn plain_bodies_count_as_serde_json_counts() {
        let mut gen = Gen(0x9e37_79b9_7f4a_7c15);
        let mut bodies = 0;
        for _ in 0..20_000 {
            let mut body = String::new();
            gen.value(&mut body, 0);
            assert!(
                serde_json::from_str::<serde::de::IgnoredAny>(&body).is_ok(),
                "{body}"
            );
            let fast = plain_text_bytes(body.as_bytes());
            assert_eq!(fast, Some(by_serde(body.as_bytes())), "{body}");
            bodies += usize::from(fast.is_some_and(|n| n > 0));
        }
        assert!(
            bodies > 5_000,
            "the generator makes bodies with text: {bodies}"
        );
        // Deeper than the plain count follows: serde_json's answer (here its refusal, 0).
        let deep = format!("{}\"abcd\"{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(plain_text_bytes(deep.as_bytes()), None);
        assert_eq!(prompt_tokens(deep.as_bytes()), 0);
        let within = format!("{}\"abcd\"{}", "[".repeat(64), "]".repeat(64));
        assert_eq!(prompt_tokens(within.as_bytes()), 1);
    }

    #[test]
    fn any_bytes_are_counted_without_a_panic() {
        let mut gen = Gen(7);
        let alphabet = b"{}[]:,\" \\a\xc3\xa9";
        for _ in 0..20_000 {
            let body: Vec<u8> = (0..gen.next(40))
                .map(|_| alphabet[gen.next(alphabet.len() as u64) as usize])
                .collect();
            let _ = prompt_tokens(&body);
        }
        // Unterminated strings, and closers with nothing open.
        assert_eq!(plain_text_bytes(br#"{"abc"#), None);
        assert_eq!(plain_text_bytes(br#"]]}"ab""#), Some(2));
    }

    #[test]
    fn escapes_count_as_the_text_they_stand_for() {
        assert_eq!(prompt_tokens(br#"{"prompt":"\u00e9\u00e9"}"#), 1); // 4 bytes of UTF-8
        assert_eq!(prompt_tokens(br#"{"input":["abcd","abcd"]}"#), 2);
    }
}
