//! Anthropic's Messages API as the gateway reads it, no I/O: the two fields of a request it
//! routes by (`model`, `stream`), the token usage of a whole answer, and a scanner over an
//! answer's event stream that finds where each event ends, reads the usage as it passes and
//! knows how the stream ended. The bytes themselves go on unchanged.

use std::borrow::Cow;
use std::fmt;

use bytes::{Bytes, BytesMut};
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::sse::{EventTooLarge, SseParser};
use crate::error::GatewayError;

/// What the gateway reads of a Messages request; the body itself goes on as it came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessagesRequest {
    pub model: String,
    /// `stream`, false when absent (the API's default).
    pub stream: bool,
}

/// Whether `key` is `name` as Go's `encoding/json` matches field names (Ollama's decoder):
/// case-insensitively, with Unicode's simple folds of `s` (U+017F) and `k` (U+212A).
fn folds_to(key: &str, name: &str) -> bool {
    key.chars().map(super::go_fold).eq(name.chars())
}

/// The top level of a request, read once; every other value is skipped unread.
struct Top {
    model: Option<String>,
    stream: Option<bool>,
}

impl<'de> Deserialize<'de> for Top {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(TopVisitor)
    }
}

struct TopVisitor;

impl<'de> Visitor<'de> for TopVisitor {
    type Value = Top;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top, A::Error> {
        let mut top = Top {
            model: None,
            stream: None,
        };
        let (mut model_seen, mut stream_seen) = (false, false);
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            // The gateway routes and limits by these two; Ollama reads the last of
            // duplicate keys and matches names case-insensitively, so any second spelling
            // would let the two read different values.
            let (name, seen) = if folds_to(&key, "model") {
                ("model", &mut model_seen)
            } else if folds_to(&key, "stream") {
                ("stream", &mut stream_seen)
            } else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            if *seen || key != name {
                return Err(de::Error::custom(format_args!(
                    "`{name}` is given more than once (as {key:?}); send it once, as `{name}`"
                )));
            }
            *seen = true;
            if name == "model" {
                top.model = map.next_value()?;
            } else {
                top.stream = map.next_value()?;
            }
        }
        Ok(top)
    }
}

/// Reads the request's `model` and `stream`: 400 for a body that is not a JSON object, a
/// field of the wrong type, a second spelling of either, or no model.
pub fn parse_request(body: &[u8]) -> Result<MessagesRequest, GatewayError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(GatewayError::EmptyBody);
    }
    let top: Top = serde_json::from_slice(body)
        .map_err(|e| GatewayError::InvalidJson(format!("invalid request body: {e}")))?;
    let model = top.model.unwrap_or_default();
    if model.trim().is_empty() {
        return Err(GatewayError::MissingModel);
    }
    Ok(MessagesRequest {
        model,
        stream: top.stream.unwrap_or(false),
    })
}

/// Tokens an answer reports.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
}

#[derive(Deserialize)]
struct UsageJson {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
}

impl Usage {
    /// Takes what `usage` reports (a count it leaves out stays as it was).
    fn update(&mut self, usage: Option<UsageJson>) {
        if let Some(u) = usage {
            self.input = u.input_tokens.unwrap_or(self.input);
            self.output = u.output_tokens.unwrap_or(self.output);
        }
    }
}

/// The `usage` of a whole answer (`{"type": "message", ..., "usage": {"input_tokens",
/// "output_tokens"}}`); an error when it is not a JSON object.
pub fn whole_usage(body: &[u8]) -> Result<Usage, String> {
    #[derive(Deserialize)]
    struct Whole {
        #[serde(default)]
        usage: Option<UsageJson>,
    }
    let whole: Whole = serde_json::from_slice(body)
        .map_err(|e| format!("the answer is not a Messages API message ({e})"))?;
    let mut usage = Usage::default();
    usage.update(whole.usage);
    Ok(usage)
}

/// How a stream stands after the events read so far.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Open,
    /// `message_stop`: the answer is complete.
    Stopped,
    /// The upstream's own `error` event.
    UpstreamError,
    /// An event that is not one of the API's (`detail` says why), or one too large.
    Unreadable {
        detail: String,
        too_large: bool,
    },
}

/// What one piece of the stream gives.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Whole events to pass on (if any); the stream goes on.
    More(Option<Bytes>),
    /// Whole events to pass on, the last one `message_stop`: the answer is complete.
    Stopped(Option<Bytes>),
    /// Whole events to pass on, the last one the upstream's own `error`: the answer failed.
    UpstreamError(Option<Bytes>),
    /// Whole events to pass on, after which comes one that cannot be read (not passed on):
    /// the answer failed.
    Unreadable {
        forward: Option<Bytes>,
        detail: String,
        too_large: bool,
    },
}

/// Why the parser's callback stopped it.
enum Halt {
    Ended,
    TooLarge(usize),
}

impl From<EventTooLarge> for Halt {
    fn from(e: EventTooLarge) -> Self {
        Self::TooLarge(e.limit)
    }
}

/// Reads the events of one `data` field each and keeps the stream's state and usage.
struct Scan {
    state: State,
    usage: Usage,
}

impl Scan {
    fn event(&mut self, data: &[u8]) -> Result<(), Halt> {
        #[derive(Deserialize)]
        struct Typed<'a> {
            #[serde(borrow, rename = "type")]
            kind: Cow<'a, str>,
        }
        #[derive(Deserialize)]
        struct Start {
            message: Message,
        }
        #[derive(Deserialize)]
        struct Message {
            #[serde(default)]
            usage: Option<UsageJson>,
        }
        #[derive(Deserialize)]
        struct Delta {
            #[serde(default)]
            usage: Option<UsageJson>,
        }
        let unreadable = |e: serde_json::Error| State::Unreadable {
            detail: format!("sent an event that is not a Messages API event ({e})"),
            too_large: false,
        };
        let kind = match serde_json::from_slice::<Typed<'_>>(data) {
            Ok(typed) => typed.kind,
            Err(e) => {
                self.state = unreadable(e);
                return Err(Halt::Ended);
            }
        };
        // Only the two events that carry usage are read further.
        match &*kind {
            "message_start" => match serde_json::from_slice::<Start>(data) {
                Ok(start) => self.usage.update(start.message.usage),
                Err(e) => self.state = unreadable(e),
            },
            "message_delta" => match serde_json::from_slice::<Delta>(data) {
                Ok(delta) => self.usage.update(delta.usage),
                Err(e) => self.state = unreadable(e),
            },
            "message_stop" => self.state = State::Stopped,
            "error" => self.state = State::UpstreamError,
            // content_block_*, ping, and whatever the API adds later.
            _ => {}
        }
        match self.state {
            State::Open => Ok(()),
            _ => Err(Halt::Ended),
        }
    }
}

/// Finds the events of a Messages API stream as its bytes arrive, in any split, and hands
/// back only whole events, as they came: a piece of an event is held until its end is
/// there, so an answer the gateway must end can end cleanly with its own `error` event.
/// Nothing past `max` bytes of one event is held.
pub struct MessagesEvents {
    parser: SseParser,
    scan: Scan,
    /// The start of the event being received (bytes not passed on yet).
    held: BytesMut,
    max: usize,
}

impl MessagesEvents {
    /// A scanner for events of at most `max` bytes of data (`upstream.max_stream_line_bytes`).
    pub fn with_max(max: usize) -> Self {
        Self {
            parser: SseParser::with_max(max),
            scan: Scan {
                state: State::Open,
                usage: Usage::default(),
            },
            held: BytesMut::new(),
            max,
        }
    }

    /// The usage reported so far (`message_start`, then `message_delta`).
    pub fn usage(&self) -> Usage {
        self.scan.usage
    }

    /// Reads one piece of the stream. After anything but `More`, the stream is over and
    /// further pieces are ignored.
    pub fn push(&mut self, chunk: Bytes) -> Pushed {
        if self.scan.state != State::Open {
            return Pushed::More(None);
        }
        // Where the last whole event read so far ends, in `chunk`.
        let mut through = 0;
        let mut at = 0;
        while at < chunk.len() {
            let end = match memchr::memchr2(b'\n', b'\r', &chunk[at..]) {
                Some(i) if chunk[at + i] == b'\r' && chunk.get(at + i + 1) == Some(&b'\n') => {
                    at + i + 2
                }
                Some(i) => at + i + 1,
                None => chunk.len(),
            };
            // One line at a time, to know after which line an event was complete.
            let mut dispatched = false;
            let scan = &mut self.scan;
            let fed = self.parser.feed(&chunk[at..end], |data| {
                dispatched = true;
                scan.event(data)
            });
            at = end;
            if let Err(Halt::TooLarge(limit)) = fed {
                self.scan.state = State::Unreadable {
                    detail: format!(
                        "sent a stream event larger than the limit of {limit} bytes (upstream.max_stream_line_bytes)"
                    ),
                    too_large: true,
                };
            }
            match self.scan.state {
                State::Open if dispatched => through = at,
                State::Open => {}
                State::Stopped | State::UpstreamError => {
                    through = at;
                    break;
                }
                State::Unreadable { .. } => break,
            }
        }
        let forward = self.through(&chunk, through);
        match &self.scan.state {
            State::Open => {
                if self.held.len() + (chunk.len() - through) > 2 * self.max {
                    self.held.clear();
                    self.scan.state = State::Unreadable {
                        detail: format!(
                            "sent a stream event larger than the limit of {} bytes (upstream.max_stream_line_bytes)",
                            self.max
                        ),
                        too_large: true,
                    };
                    return self.ended(forward);
                }
                self.held.extend_from_slice(&chunk[through..]);
                Pushed::More(forward)
            }
            _ => self.ended(forward),
        }
    }

    /// The upstream's body is over: whether the stream was cut (still open, never
    /// finished). Its unfinished event, if any, is dropped.
    pub fn finish(&mut self) -> bool {
        self.held.clear();
        self.scan.state == State::Open
    }

    fn ended(&mut self, forward: Option<Bytes>) -> Pushed {
        self.held.clear();
        match &self.scan.state {
            State::Open => Pushed::More(forward),
            State::Stopped => Pushed::Stopped(forward),
            State::UpstreamError => Pushed::UpstreamError(forward),
            State::Unreadable { detail, too_large } => Pushed::Unreadable {
                forward,
                detail: detail.clone(),
                too_large: *too_large,
            },
        }
    }

    /// What is held, then `chunk` up to `through`: the whole events to pass on. Without
    /// anything held (the usual case: an upstream writes whole events), a slice of the
    /// chunk itself, not a copy.
    fn through(&mut self, chunk: &Bytes, through: usize) -> Option<Bytes> {
        if through == 0 {
            return None;
        }
        if self.held.is_empty() {
            return Some(chunk.slice(..through));
        }
        self.held.extend_from_slice(&chunk[..through]);
        Some(self.held.split().freeze())
    }
}

#[cfg(test)]
mod tests;
