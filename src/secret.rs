//! A string that must never be printed: API keys, upstream credentials; and the scrubber
//! that takes them out of text that came from elsewhere.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use memchr::memmem::Finder;

/// Holds a secret; `Debug`, `Display` and `Serialize` print `*****` (or nothing when empty).
#[derive(Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call only where it is sent to its one rightful recipient.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn redacted(&self) -> &'static str {
        if self.0.is_empty() {
            ""
        } else {
            "*****"
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.redacted())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.redacted())
    }
}

impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.redacted())
    }
}

/// What a scrubbed secret becomes.
pub const REDACTED: &str = "[redacted]";

/// Removes every one of a fixed set of secrets from text, wherever it occurs. Built once;
/// cloning shares it. With no secrets it costs nothing; otherwise one memmem search per
/// secret, and a copy only when one is found.
#[derive(Clone, Default)]
pub struct Scrubber(Arc<[Finder<'static>]>);

impl Scrubber {
    /// A scrubber for `secrets` (empty ones are skipped).
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a Secret>) -> Self {
        let mut keys: Vec<&str> = secrets
            .into_iter()
            .map(Secret::expose)
            .filter(|s| !s.is_empty())
            .collect();
        // Longest first, so a secret that contains another is removed whole.
        keys.sort_by_key(|k| std::cmp::Reverse(k.len()));
        keys.dedup();
        Self(
            keys.into_iter()
                .map(|k| Finder::new(k.as_bytes()).into_owned())
                .collect(),
        )
    }

    /// `text` without the secrets.
    pub fn scrub<'t>(&self, text: &'t str) -> Cow<'t, str> {
        match self.scrub_slice(text.as_bytes()) {
            Cow::Borrowed(_) => Cow::Borrowed(text),
            // Secrets are whole UTF-8 strings, so replacing them keeps the text valid.
            Cow::Owned(bytes) => Cow::Owned(String::from_utf8_lossy(&bytes).into_owned()),
        }
    }

    /// `text` without the secrets.
    pub fn scrub_string(&self, text: String) -> String {
        match self.scrub(&text) {
            Cow::Borrowed(_) => text,
            Cow::Owned(clean) => clean,
        }
    }

    /// `bytes` without the secrets.
    pub fn scrub_bytes(&self, bytes: Bytes) -> Bytes {
        match self.scrub_slice(&bytes) {
            Cow::Borrowed(_) => bytes,
            Cow::Owned(clean) => Bytes::from(clean),
        }
    }

    /// `bytes` (an upstream's JSON or NDJSON) without the secrets, also where the upstream
    /// wrote them JSON-escaped (`sk-a\/b`, `\u0073k-...`), which a search of the raw bytes
    /// cannot see: after [`Self::scrub_bytes`], a body that still holds a backslash and
    /// parses as JSON (whole, or line by line) has every string decoded and scrubbed, and is
    /// written anew when one changed. Untouched otherwise; for bounded error texts only.
    pub fn scrub_json_bytes(&self, bytes: Bytes) -> Bytes {
        let bytes = self.scrub_bytes(bytes);
        if self.0.is_empty() || memchr::memchr(b'\\', &bytes).is_none() {
            return bytes;
        }
        if let Some(clean) = self.scrub_json(&bytes) {
            return Bytes::from(clean);
        }
        let mut out = Vec::new();
        let mut changed = false;
        for line in bytes.split_inclusive(|b| *b == b'\n') {
            let body = line.strip_suffix(b"\n").unwrap_or(line);
            match memchr::memchr(b'\\', body).and_then(|_| self.scrub_json(body)) {
                Some(clean) => {
                    out.extend_from_slice(&clean);
                    out.extend_from_slice(&line[body.len()..]);
                    changed = true;
                }
                None => out.extend_from_slice(line),
            }
        }
        if changed {
            Bytes::from(out)
        } else {
            bytes
        }
    }

    /// `text` re-serialized without the secrets, when it is JSON and one of its decoded
    /// strings (or object keys) holds one.
    fn scrub_json(&self, text: &[u8]) -> Option<Vec<u8>> {
        let mut value: serde_json::Value = serde_json::from_slice(text).ok()?;
        if !self.scrub_value(&mut value) {
            return None;
        }
        serde_json::to_vec(&value).ok()
    }

    /// Scrubs every string in `value` in place; whether one changed. (Nesting is bounded by
    /// serde_json's recursion limit.)
    fn scrub_value(&self, value: &mut serde_json::Value) -> bool {
        use serde_json::Value;
        match value {
            Value::String(s) => match self.scrub(s) {
                Cow::Borrowed(_) => false,
                Cow::Owned(clean) => {
                    *s = clean;
                    true
                }
            },
            Value::Array(items) => items
                .iter_mut()
                .fold(false, |changed, item| self.scrub_value(item) | changed),
            Value::Object(map) => {
                let mut changed = false;
                for (key, mut item) in std::mem::take(map) {
                    changed |= self.scrub_value(&mut item);
                    let key = match self.scrub(&key) {
                        Cow::Borrowed(_) => key,
                        Cow::Owned(clean) => {
                            changed = true;
                            clean
                        }
                    };
                    map.insert(key, item);
                }
                changed
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => false,
        }
    }

    fn scrub_slice<'t>(&self, text: &'t [u8]) -> Cow<'t, [u8]> {
        let mut out = Cow::Borrowed(text);
        for finder in self.0.iter() {
            if finder.find(&out).is_none() {
                continue;
            }
            let mut clean = Vec::with_capacity(out.len());
            let mut last = 0;
            for at in finder.find_iter(&out) {
                clean.extend_from_slice(&out[last..at]);
                clean.extend_from_slice(REDACTED.as_bytes());
                last = at + finder.needle().len();
            }
            clean.extend_from_slice(&out[last..]);
            out = Cow::Owned(clean);
        }
        out
    }
}

impl fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scrubber({} secrets)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubber_removes_every_secret_everywhere() {
        let keys = [
            Secret::new("sk-live-123"),
            Secret::new("sk-live-123456"),
            Secret::default(),
            Secret::new("gsk_グロク"),
        ];
        let s = Scrubber::new(&keys);
        assert_eq!(format!("{s:?}"), "Scrubber(3 secrets)");
        assert_eq!(
            s.scrub("Incorrect API key provided: sk-live-123456; also sk-live-123 and gsk_グロク!"),
            "Incorrect API key provided: [redacted]; also [redacted] and [redacted]!"
        );
        assert!(matches!(s.scrub("nothing here"), Cow::Borrowed(_)));
        let bytes = Bytes::from_static(b"{\"error\":\"sk-live-123sk-live-123\"}");
        assert_eq!(
            s.scrub_bytes(bytes),
            Bytes::from_static(b"{\"error\":\"[redacted][redacted]\"}")
        );
        assert_eq!(Scrubber::default().scrub("sk-live-123"), "sk-live-123");
    }

    #[test]
    fn json_escaped_secrets_are_found_decoded() {
        let keys = [
            Secret::new("sk-abc/def+ghi123"),
            Secret::new("sk-SECRET-42"),
        ];
        let s = Scrubber::new(&keys);
        let scrub = |text: &str| {
            let out = s.scrub_json_bytes(Bytes::copy_from_slice(text.as_bytes()));
            String::from_utf8(out.to_vec()).unwrap()
        };
        // PHP's json_encode writes `/` as `\/`; any character may be a `\u` escape.
        let out =
            scrub(r#"{"error":{"message":"Incorrect API key provided: sk-abc\/def+ghi123"}}"#);
        assert_eq!(
            out,
            r#"{"error":{"message":"Incorrect API key provided: [redacted]"}}"#
        );
        let out =
            scrub(r#"{"error":"\u0073k-SECRET-42","n":1,"l":[true,null,"\u0073k-SECRET-42"]}"#);
        assert!(
            !out.contains("SECRET") && out.contains("[redacted]"),
            "{out}"
        );
        // NDJSON: each line on its own; lines without a secret stay byte for byte.
        let out = scrub("{\"done\":false,\"s\":\"a\\/b\"}\n{\"error\":\"sk-abc\\/def+ghi123\"}\n");
        assert_eq!(
            out,
            "{\"done\":false,\"s\":\"a\\/b\"}\n{\"error\":\"[redacted]\"}\n"
        );
        // A key in an object key, and pretty-printed JSON spanning lines.
        let out = scrub("{\n  \"sk-abc\\/def+ghi123\": \"x\"\n}");
        assert_eq!(out, r#"{"[redacted]":"x"}"#);
        // Escapes without a secret, and text that is not JSON, are left as they are.
        for text in [r#"{"path":"a\/b"}"#, r"not json \/ sk-abc", "plain"] {
            assert_eq!(scrub(text), text);
        }
    }

    #[test]
    fn never_printed() {
        let s = Secret::new("sk-live-123");
        assert_eq!(format!("{s} {s:?}"), "***** *****");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"*****\"");
        assert_eq!(s.expose(), "sk-live-123");
        assert_eq!(format!("{:?}", Secret::default()), "");
    }
}
