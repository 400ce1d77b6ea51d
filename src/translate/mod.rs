//! Pure protocol code, no I/O: Ollama's request and response shapes, the SSE parser, and
//! the OpenAI <-> Ollama mapping (chat; generate, as a chat; embeddings). Everything here can be tested at every byte split and
//! benchmarked on its own.

pub mod anthropic;
pub mod embed;
pub mod generate;
pub mod limit;
pub mod manage;
pub mod ndjson;
pub mod ollama;
pub mod openai;
pub mod sse;
pub mod v1;

/// The default longest line (NDJSON) or event (SSE) taken from an upstream stream: the
/// Ollama Go client's own line limit.
pub const DEFAULT_MAX_LINE: usize = 8 * 1024 * 1024;

/// Lines up to this size grow their buffer the usual way (doubling).
const SMALL_LINE: usize = 64 * 1024;

/// How much to reserve before appending `additional` bytes to a buffer of `len` bytes (and
/// `capacity`) that holds part of one line of at most `max` bytes: 0 (grow as usual) while
/// the line is small, else the whole rest of `max` at once. A long line then never grows
/// by doubling, which holds the old and the new copy at the same moment and overshoots
/// `max` by up to 2x; the allocator maps a large buffer's pages only as they are written,
/// so memory follows the bytes actually held.
pub(crate) fn line_reserve(len: usize, capacity: usize, additional: usize, max: usize) -> usize {
    let needed = len.saturating_add(additional);
    if needed <= capacity || needed <= SMALL_LINE {
        0
    } else {
        max.max(needed) - len
    }
}

/// One character of a JSON object key as Go's `encoding/json` (Ollama's decoder) matches
/// field names: ASCII case folded, and Unicode's simple folds of `ſ` (U+017F) to `s` and
/// the Kelvin sign (U+212A) to `k`. A request whose guarded keys (`model`, `stream`, ...)
/// come twice under such spellings is refused: gateway and Ollama would read different ones.
pub(crate) fn go_fold(c: char) -> char {
    match c {
        '\u{17F}' => 's',
        '\u{212A}' => 'k',
        c => c.to_ascii_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_line_reserves_its_limit_once() {
        // Small lines: the usual growth.
        assert_eq!(line_reserve(10, 16, 100, 1 << 23), 0);
        // Room already there: nothing to do.
        assert_eq!(line_reserve(100_000, 200_000, 50_000, 1 << 23), 0);
        // Past the small size: straight to the limit.
        assert_eq!(
            line_reserve(60_000, 65_536, 10_000, 1 << 23),
            (1 << 23) - 60_000
        );
    }
}

/// Deserializes an optional string borrowed from the input when it has no escape: what
/// `#[serde(borrow)]` does for a `Cow<'a, str>` field, which serde does not do for an
/// `Option<Cow<'a, str>>` (that one is always an owned copy: a prompt copied once more per
/// request; measured with callgrind, two allocations of every /api/chat). For
/// `#[serde(default, borrow, deserialize_with = "crate::translate::borrowed")]`.
pub(crate) fn borrowed<'de: 'a, 'a, D>(
    deserializer: D,
) -> Result<Option<std::borrow::Cow<'a, str>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    // `Text` holds its string as a direct `Cow` field, which serde borrows.
    let value: Option<ollama::Text<'a>> = serde::Deserialize::deserialize(deserializer)?;
    Ok(value.map(|text| text.0))
}

#[cfg(test)]
mod borrowed_tests {
    use std::borrow::Cow;

    #[derive(serde::Deserialize)]
    struct Request<'a> {
        #[serde(default, borrow, deserialize_with = "super::borrowed")]
        text: Option<Cow<'a, str>>,
    }

    fn text(json: &str) -> Option<Cow<'_, str>> {
        serde_json::from_str::<Request<'_>>(json).unwrap().text
    }

    #[test]
    fn an_optional_string_is_borrowed_unless_it_has_escapes() {
        assert!(matches!(
            text(r#"{"text":"hi"}"#),
            Some(Cow::Borrowed("hi"))
        ));
        assert!(matches!(text(r#"{"text":"h\u0069"}"#), Some(Cow::Owned(s)) if s == "hi"));
        assert!(text(r#"{"text":null}"#).is_none());
        assert!(text("{}").is_none());
        assert!(serde_json::from_str::<Request<'_>>(r#"{"text":5}"#).is_err());
    }
}
