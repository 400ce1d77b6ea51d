//! The event stream of a `/v1` answer, cut into whole events as the upstream wrote them
//! (so that an event passed on untouched is the upstream's own bytes), each event's `data`,
//! and the error event the gateway ends a failed stream with.

use std::borrow::Cow;
use std::ops::Range;

use bytes::{Bytes, BytesMut};

/// A line or event longer than the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge {
    pub limit: usize,
}

/// Cuts an event stream into whole events, each as the upstream's own bytes (its blank
/// line included): zero-copy slices of the upstream's chunks unless an event spans two.
/// Holds at most `max` bytes of an unfinished event (plus one chunk).
#[derive(Debug)]
pub struct EventSplitter {
    pending: BytesMut,
    /// Where the unfinished line in `pending` starts.
    line_start: usize,
    max: usize,
}

/// The end of the next event in `buf` (just past its blank line), scanning from
/// `line_start`, the start of the line being read, which it moves on; `None` until a blank
/// line is complete (a CR at the end of `buf` may be the first half of a CRLF).
fn next_event_end(buf: &[u8], line_start: &mut usize) -> Option<usize> {
    loop {
        let at = *line_start + memchr::memchr2(b'\r', b'\n', &buf[*line_start..])?;
        let next = match (buf[at], buf.get(at + 1)) {
            (b'\r', Some(b'\n')) => at + 2,
            (b'\r', None) => return None,
            _ => at + 1,
        };
        let blank = at == *line_start;
        *line_start = next;
        if blank {
            return Some(next);
        }
    }
}

impl EventSplitter {
    pub fn new(max: usize) -> Self {
        Self {
            pending: BytesMut::new(),
            line_start: 0,
            max,
        }
    }

    /// Feeds one read; calls `on_event` with every event it completes, until it returns
    /// `false`.
    pub fn push(
        &mut self,
        chunk: Bytes,
        mut on_event: impl FnMut(Bytes) -> bool,
    ) -> Result<(), TooLarge> {
        if self.pending.is_empty() {
            let (mut start, mut line) = (0, 0);
            while let Some(end) = next_event_end(&chunk, &mut line) {
                if !on_event(chunk.slice(start..end)) {
                    return Ok(());
                }
                start = end;
            }
            self.pending.extend_from_slice(&chunk[start..]);
            self.line_start = line - start;
        } else {
            self.pending.extend_from_slice(&chunk);
            while let Some(end) = next_event_end(&self.pending, &mut self.line_start) {
                self.line_start = 0;
                if !on_event(self.pending.split_to(end).freeze()) {
                    return Ok(());
                }
            }
        }
        if self.pending.len() > self.max {
            return Err(TooLarge { limit: self.max });
        }
        Ok(())
    }

    /// The stream ended: a last event not followed by a blank line is not dispatched (as
    /// SSE says).
    pub fn finish(&mut self) {
        self.pending.clear();
    }
}

/// An event's `data`: borrowed from it when it has one `data` line (what every OpenAI
/// server sends), joined with LF when it has several; `None` for an event without data (a
/// comment, a keep-alive).
pub fn event_data(event: &[u8]) -> Option<Cow<'_, [u8]>> {
    let mut data: Option<Cow<'_, [u8]>> = None;
    for line in event.split(|b| matches!(b, b'\n' | b'\r')) {
        let Some(value) = line.strip_prefix(b"data") else {
            continue;
        };
        let value = match value {
            [] => value,
            [b':', b' ', rest @ ..] | [b':', rest @ ..] => rest,
            // `dataX: ...` is another field.
            _ => continue,
        };
        data = Some(match data {
            None => Cow::Borrowed(value),
            Some(d) => {
                let mut joined = d.into_owned();
                joined.push(b'\n');
                joined.extend_from_slice(value);
                Cow::Owned(joined)
            }
        });
    }
    data
}

/// Where `data` (borrowed from `event`) lies in it.
pub fn data_span(event: &[u8], data: &[u8]) -> Range<usize> {
    let start = data.as_ptr() as usize - event.as_ptr() as usize;
    start..start + data.len()
}
