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

/// The estimated prompt tokens of a JSON request body (0 if it is not JSON).
pub fn prompt_tokens(body: &[u8]) -> u64 {
    let mut de = serde_json::Deserializer::from_slice(body);
    let bytes = Text { skip: false }.deserialize(&mut de).unwrap_or(0);
    bytes.div_ceil(BYTES_PER_TOKEN)
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

    #[test]
    fn escapes_count_as_the_text_they_stand_for() {
        assert_eq!(prompt_tokens(br#"{"prompt":"\u00e9\u00e9"}"#), 1); // 4 bytes of UTF-8
        assert_eq!(prompt_tokens(br#"{"input":["abcd","abcd"]}"#), 2);
    }
}
