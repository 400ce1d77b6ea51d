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
    fn never_printed() {
        let s = Secret::new("sk-live-123");
        assert_eq!(format!("{s} {s:?}"), "***** *****");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"*****\"");
        assert_eq!(s.expose(), "sk-live-123");
        assert_eq!(format!("{:?}", Secret::default()), "");
    }
}
