//! Relaying Ollama's NDJSON stream line-exact: complete lines go out as soon as they are in,
//! a partial line waits for its newline, and the final line (`done`, or `"status":"success"`
//! for the progress of pull, push and create; or an `{"error"}` line) is recognised so a
//! stream that stops short can be reported instead of passing as finished.
//! A line longer than the limit ends the stream: nothing past the limit is ever buffered.

use bytes::{Bytes, BytesMut};
use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::translate::v1::KeyBytes;

/// Token counts and timings from Ollama's final line (or whole answer); other members are
/// skipped unread, and a count given twice is the last one, as Ollama's Go decoder reads it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DoneCounts {
    pub prompt_eval_count: u64,
    pub eval_count: u64,
    pub load_duration: u64,
    pub eval_duration: u64,
}

/// By hand rather than derived: the keys are matched as bytes (no UTF-8 check of each, as a
/// derived field name costs), measured ~1,000 instructions of every Ollama answer.
impl<'de> Deserialize<'de> for DoneCounts {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Counts;
        impl<'de> serde::de::Visitor<'de> for Counts {
            type Value = DoneCounts;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<DoneCounts, A::Error> {
                let mut counts = DoneCounts::default();
                while let Some(KeyBytes(key)) = map.next_key::<KeyBytes<'de>>()? {
                    let slot = match &*key {
                        b"prompt_eval_count" => &mut counts.prompt_eval_count,
                        b"eval_count" => &mut counts.eval_count,
                        b"load_duration" => &mut counts.load_duration,
                        b"eval_duration" => &mut counts.eval_duration,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    *slot = map.next_value()?;
                }
                Ok(counts)
            }
        }
        d.deserialize_map(Counts)
    }
}

#[derive(Deserialize)]
struct LineProbe {
    #[serde(default)]
    done: bool,
    #[serde(default)]
    error: Option<IgnoredAny>,
    #[serde(flatten)]
    counts: DoneCounts,
}

/// The status line that completes a progress stream (pull, push, create).
#[derive(Deserialize)]
struct ProgressProbe<'a> {
    #[serde(default)]
    error: Option<IgnoredAny>,
    #[serde(default, borrow)]
    status: Option<std::borrow::Cow<'a, str>>,
}

/// How a relayed stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// A `done: true` line was relayed.
    Done(DoneCounts),
    /// The upstream sent its own `{"error": ...}` line.
    UpstreamError,
    /// Neither: the stream stopped short.
    Truncated,
}

/// A line longer than the limit arrived; the stream cannot go on.
#[derive(Debug, PartialEq, Eq)]
pub struct LineTooLong {
    /// The complete lines before it, still to forward.
    pub before: Option<Bytes>,
}

/// Splits a byte stream into whole lines without copying in the common case.
#[derive(Debug)]
pub struct NdjsonRelay {
    partial: BytesMut,
    max_line: usize,
    done: Option<DoneCounts>,
    error: bool,
    /// A progress stream: complete at `"status":"success"` rather than at `done`.
    progress: bool,
    /// Content lines (`"done":false`) seen: about one token each.
    chunks: u64,
}

impl Default for NdjsonRelay {
    fn default() -> Self {
        Self::with_max_line(super::DEFAULT_MAX_LINE)
    }
}

impl NdjsonRelay {
    pub fn new() -> Self {
        Self::default()
    }

    /// A relay that refuses lines longer than `max_line` bytes (newline not counted).
    pub fn with_max_line(max_line: usize) -> Self {
        Self {
            partial: BytesMut::new(),
            max_line,
            done: None,
            error: false,
            progress: false,
            chunks: 0,
        }
    }

    /// The content lines relayed so far (Ollama streams one token a line).
    pub fn chunks(&self) -> u64 {
        self.chunks
    }

    /// A relay of model-management progress (pull, push, create), which is complete at its
    /// `{"status":"success"}` line (Ollama's last, when all went well).
    pub fn progress(max_line: usize) -> Self {
        Self {
            progress: true,
            ..Self::with_max_line(max_line)
        }
    }

    /// The longest line accepted.
    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// Takes one read; returns the complete lines to forward now, if any. The unfinished
    /// last line is kept (at most `max_line` bytes of it).
    pub fn push(&mut self, mut chunk: Bytes) -> Result<Option<Bytes>, LineTooLong> {
        let Some(last_nl) = memchr::memrchr(b'\n', &chunk) else {
            if self.partial.len() + chunk.len() > self.max_line {
                return Err(LineTooLong { before: None });
            }
            self.append(&chunk);
            return Ok(None);
        };
        let tail = chunk.split_off(last_nl + 1);
        let out = if self.partial.is_empty() {
            chunk
        } else {
            self.append(&chunk);
            self.partial.split().freeze()
        };
        if let Some(at) = self.inspect(&out) {
            return Err(LineTooLong {
                before: (at > 0).then(|| out.slice(..at)),
            });
        }
        if tail.len() > self.max_line {
            return Err(LineTooLong { before: Some(out) });
        }
        self.append(&tail);
        Ok(Some(out))
    }

    /// Appends to the unfinished line (see [`super::line_reserve`]).
    fn append(&mut self, bytes: &[u8]) {
        let (len, capacity) = (self.partial.len(), self.partial.capacity());
        self.partial.reserve(super::line_reserve(
            len,
            capacity,
            bytes.len(),
            self.max_line,
        ));
        self.partial.extend_from_slice(bytes);
    }

    /// At end of stream: the unterminated last line (given a newline), if any.
    pub fn finish(&mut self) -> Option<Bytes> {
        if self.partial.iter().all(u8::is_ascii_whitespace) {
            self.partial.clear();
            return None;
        }
        self.partial.extend_from_slice(b"\n");
        let out = self.partial.split().freeze();
        // Never longer than the limit: `push` refuses a longer unfinished line.
        let _ = self.inspect(&out);
        Some(out)
    }

    /// Whether the last complete line left the client mid-line (never: lines are whole).
    pub fn ending(&self) -> Ending {
        match (self.done, self.error) {
            (_, true) => Ending::UpstreamError,
            (Some(counts), false) => Ending::Done(counts),
            (None, false) => Ending::Truncated,
        }
    }

    /// Notes the `done` and `error` lines in `lines`; stops at the first line longer than
    /// the limit and returns where it starts.
    fn inspect(&mut self, lines: &[u8]) -> Option<usize> {
        let mut start = 0;
        for line in lines.split(|b| *b == b'\n') {
            if line.len() > self.max_line {
                return Some(start);
            }
            start += line.len() + 1;
            if self.progress {
                self.inspect_progress(line);
                continue;
            }
            // Content chunks say `"done":false`; only other lines need a parse.
            if line.is_empty() {
                continue;
            }
            if memchr::memmem::find(line, b"\"done\":false").is_some() {
                self.chunks += 1;
                continue;
            }
            if let Ok(probe) = serde_json::from_slice::<LineProbe>(line) {
                if probe.error.is_some() {
                    self.error = true;
                } else if probe.done {
                    self.done = Some(probe.counts);
                }
            }
        }
        None
    }

    /// Notes a progress line that ends the stream: `"status":"success"` or an error. Most
    /// lines (`"status":"pulling ..."` with byte counts) mention neither and need no parse.
    fn inspect_progress(&mut self, line: &[u8]) {
        let finder = |word: &[u8]| memchr::memmem::find(line, word).is_some();
        if !finder(b"success") && !finder(b"\"error\"") {
            return;
        }
        if let Ok(probe) = serde_json::from_slice::<ProgressProbe<'_>>(line) {
            if probe.error.is_some() {
                self.error = true;
            } else if probe.status.as_deref() == Some("success") {
                self.done = Some(DoneCounts::default());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_read_at_the_top_level_only_by_their_exact_names() {
        let answer = concat!(
            r#"{"model":"m","message":{"role":"assistant","content":"\"eval_count\":7","#,
            r#""tool_calls":[{"function":{"arguments":{"eval_count":99}}}]},"done":true,"#,
            r#""prompt_eval_count":9,"\u0065val_count":5,"Eval_count":8,"load_duration":3,"#,
            r#""eval_duration":900,"eval_duration":901}"#
        );
        let counts: DoneCounts = serde_json::from_str(answer).unwrap();
        assert_eq!(
            counts,
            DoneCounts {
                prompt_eval_count: 9,
                eval_count: 5,
                load_duration: 3,
                eval_duration: 901,
            }
        );
        assert_eq!(
            serde_json::from_str::<DoneCounts>("{}").unwrap(),
            DoneCounts::default()
        );
        for bad in [
            r#"{"eval_count":"5"}"#,
            r#"{"eval_count":-1}"#,
            "[]",
            r#"{"eval_count":1"#,
        ] {
            assert!(serde_json::from_str::<DoneCounts>(bad).is_err(), "{bad}");
        }
        // Inside a stream's probe (flattened beside `done`), the same.
        let probe: LineProbe = serde_json::from_str(answer).unwrap();
        assert!(probe.done && probe.error.is_none());
        assert_eq!(probe.counts, counts);
    }

    const STREAM: &str = concat!(
        "{\"model\":\"m\",\"message\":{\"role\":\"assistant\",\"content\":\"你\"},\"done\":false}\n",
        "{\"model\":\"m\",\"message\":{\"role\":\"assistant\",\"content\":\"好\"},\"done\":false}\n",
        "{\"model\":\"m\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"done_reason\":\"stop\",\"prompt_eval_count\":3,\"eval_count\":2}\n",
    );

    fn relay(input: &[u8], splits: &[usize]) -> (Vec<u8>, Vec<usize>, Ending) {
        let mut r = NdjsonRelay::new();
        let mut out = Vec::new();
        let mut sizes = Vec::new();
        let mut start = 0;
        for &end in splits.iter().chain(std::iter::once(&input.len())) {
            if let Some(b) = r.push(Bytes::copy_from_slice(&input[start..end])).unwrap() {
                assert_eq!(*b.last().unwrap(), b'\n', "only whole lines go out");
                sizes.push(b.len());
                out.extend_from_slice(&b);
            }
            start = end;
        }
        if let Some(b) = r.finish() {
            out.extend_from_slice(&b);
        }
        (out, sizes, r.ending())
    }

    #[test]
    fn line_exact_at_every_split() {
        let input = STREAM.as_bytes();
        for i in 0..=input.len() {
            let (out, _, ending) = relay(input, &[i]);
            assert_eq!(out, input, "split at {i}");
            assert_eq!(
                ending,
                Ending::Done(DoneCounts {
                    prompt_eval_count: 3,
                    eval_count: 2,
                    ..DoneCounts::default()
                })
            );
        }
    }

    #[test]
    fn generate_lines_at_every_split() {
        // /api/generate: `response` instead of `message`; the final line carries the
        // (deprecated) token context and every metric.
        let input = concat!(
            "{\"model\":\"m\",\"created_at\":\"2025-01-01T00:00:00Z\",\"response\":\"Hi\",\"done\":false}\n",
            "{\"model\":\"m\",\"created_at\":\"2025-01-01T00:00:00Z\",\"response\":\"\\\"done\\\":true\",\"done\":false}\n",
            "{\"model\":\"m\",\"created_at\":\"2025-01-01T00:00:00Z\",\"response\":\"\",\"done\":true,\"done_reason\":\"stop\",\"context\":[1,2,3],\"total_duration\":9,\"load_duration\":4,\"prompt_eval_count\":3,\"prompt_eval_duration\":1,\"eval_count\":2,\"eval_duration\":5}\n",
        )
        .as_bytes();
        let done = Ending::Done(DoneCounts {
            prompt_eval_count: 3,
            eval_count: 2,
            load_duration: 4,
            eval_duration: 5,
        });
        for i in 0..=input.len() {
            let (out, _, ending) = relay(input, &[i]);
            assert_eq!(out, input, "split at {i}");
            assert_eq!(ending, done, "split at {i}");
            let two: usize = input
                .split(|b| *b == b'\n')
                .take(2)
                .map(|l| l.len() + 1)
                .sum();
            let (_, _, ending) = relay(&input[..two], &[i.min(two)]);
            assert_eq!(ending, Ending::Truncated, "split at {i}");
        }
    }

    #[test]
    fn lines_leave_as_soon_as_they_are_whole() {
        let input = STREAM.as_bytes();
        let first_nl = input.iter().position(|b| *b == b'\n').unwrap();
        let (_, sizes, _) = relay(input, &[first_nl + 1]);
        assert_eq!(sizes[0], first_nl + 1);
    }

    #[test]
    fn truncated_and_error_endings() {
        let two_lines: usize = STREAM.lines().take(2).map(|l| l.len() + 1).sum();
        let (_, _, ending) = relay(&STREAM.as_bytes()[..two_lines], &[]);
        assert_eq!(ending, Ending::Truncated);
        let (out, _, ending) = relay(b"{\"done\":false}\n{\"error\":\"boom\"}", &[]);
        assert_eq!(ending, Ending::UpstreamError);
        assert!(out.ends_with(b"{\"error\":\"boom\"}\n"));
        // Text that merely mentions done inside a string does not count.
        let (_, _, ending) = relay(
            b"{\"message\":{\"content\":\"\\\"done\\\":true\"},\"done\":false}\n",
            &[],
        );
        assert_eq!(ending, Ending::Truncated);
    }
}

#[cfg(test)]
mod progress_tests {
    use super::*;

    const PULL: &str = concat!(
        "{\"status\":\"pulling manifest\"}\n",
        "{\"status\":\"pulling 6a0746a1ec1a\",\"digest\":\"sha256:6a0746a1ec1a\",\"total\":4661211808,\"completed\":1048576}\n",
        "{\"status\":\"verifying sha256 digest\"}\n",
        "{\"status\":\"success\"}\n",
    );

    fn relay(input: &[u8], split: usize) -> (Vec<u8>, Ending) {
        let mut r = NdjsonRelay::progress(crate::translate::DEFAULT_MAX_LINE);
        let mut out = Vec::new();
        for piece in [&input[..split], &input[split..]] {
            if let Some(b) = r.push(Bytes::copy_from_slice(piece)).unwrap() {
                out.extend_from_slice(&b);
            }
        }
        if let Some(b) = r.finish() {
            out.extend_from_slice(&b);
        }
        (out, r.ending())
    }

    #[test]
    fn a_progress_stream_is_complete_at_success_at_every_split() {
        let input = PULL.as_bytes();
        for i in 0..=input.len() {
            let (out, ending) = relay(input, i);
            assert_eq!(out, input, "split at {i}");
            assert_eq!(ending, Ending::Done(DoneCounts::default()), "split at {i}");
        }
    }

    #[test]
    fn a_progress_stream_without_success_is_truncated_and_errors_are_seen() {
        let cut: usize = PULL.lines().take(3).map(|l| l.len() + 1).sum();
        let input = &PULL.as_bytes()[..cut];
        for i in 0..=input.len() {
            assert_eq!(relay(input, i).1, Ending::Truncated, "split at {i}");
        }
        let failed = b"{\"status\":\"pulling manifest\"}\n{\"error\":\"pull model manifest: file does not exist\"}\n";
        for i in 0..=failed.len() {
            assert_eq!(relay(failed, i).1, Ending::UpstreamError, "split at {i}");
        }
        // A status that merely mentions success, and a chat line's `done`, do not complete it.
        let (_, ending) = relay(b"{\"status\":\"success is near\"}\n{\"done\":true}\n", 0);
        assert_eq!(ending, Ending::Truncated);
        // Nor does `"status":"success"` complete a chat stream.
        let mut chat = NdjsonRelay::new();
        let _ = chat.push(Bytes::from_static(b"{\"status\":\"success\"}\n"));
        assert_eq!(chat.ending(), Ending::Truncated);
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    const LINE: &[u8] = b"{\"done\":false}\n";

    #[test]
    fn a_line_at_the_limit_passes() {
        let mut r = NdjsonRelay::with_max_line(LINE.len() - 1);
        for byte in LINE {
            let _ = r.push(Bytes::copy_from_slice(&[*byte])).unwrap();
        }
        assert_eq!(
            r.push(Bytes::from_static(LINE)),
            Ok(Some(Bytes::from_static(LINE)))
        );
    }

    #[test]
    fn a_long_line_never_holds_more_than_its_limit() {
        // 1 MiB reads of one endless line: the buffer reaches the limit, never double it.
        let max = 8 << 20;
        let mut r = NdjsonRelay::with_max_line(max);
        let piece = Bytes::from(vec![b'a'; 1 << 20]);
        let mut refused = false;
        for _ in 0..16 {
            if r.push(piece.clone()).is_err() {
                refused = true;
                break;
            }
            assert!(r.partial.capacity() <= max, "{}", r.partial.capacity());
        }
        assert!(refused);
    }

    #[test]
    fn a_long_unfinished_line_is_refused_before_it_is_buffered() {
        let mut r = NdjsonRelay::with_max_line(8);
        assert_eq!(r.push(Bytes::from_static(b"{\"done\":")), Ok(None));
        assert_eq!(
            r.push(Bytes::from_static(b"t")),
            Err(LineTooLong { before: None })
        );
        assert!(r.partial.len() <= 8);
        // A long tail after whole lines: the whole lines still go out.
        let mut r = NdjsonRelay::with_max_line(LINE.len());
        let chunk = [LINE, &[b'x'; 100][..]].concat();
        assert_eq!(
            r.push(Bytes::from(chunk)),
            Err(LineTooLong {
                before: Some(Bytes::from_static(LINE))
            })
        );
    }

    #[test]
    fn a_long_whole_line_is_refused_after_the_lines_before_it() {
        let long = [&[b'x'; 100][..], b"\n"].concat();
        for max in [LINE.len(), 99] {
            let mut r = NdjsonRelay::with_max_line(max);
            let chunk = [LINE, &long, LINE].concat();
            assert_eq!(
                r.push(Bytes::from(chunk)),
                Err(LineTooLong {
                    before: Some(Bytes::from_static(LINE))
                }),
                "{max}"
            );
            // The long line first, completing an unfinished one.
            let mut r = NdjsonRelay::with_max_line(max);
            assert_eq!(r.push(Bytes::from_static(b"xx")), Ok(None));
            assert_eq!(
                r.push(Bytes::from(long.clone())),
                Err(LineTooLong { before: None })
            );
        }
    }
}
