//! An incremental Server-Sent Events parser (WHATWG HTML, "Parsing an event stream").
//!
//! Bytes go in as they arrive from the socket, in any split; the `data` of each dispatched
//! event comes out. Lines end in CR, LF or CRLF (a CR at the end of one read and the LF at
//! the start of the next count once); `:` lines are comments; several `data:` lines in one
//! event are joined with LF; a leading UTF-8 BOM is skipped; an event is dispatched only on
//! a blank line, so an unterminated event at end of stream is dropped, as the spec says.
//! Lines are buffered as bytes, so a UTF-8 character split across reads is never cut.
//! A line, or an event's data, longer than the limit is an error: nothing past the limit is
//! ever buffered.

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// A line or an event's data longer than the parser's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventTooLarge {
    pub limit: usize,
}

/// Parser state carried between reads.
#[derive(Debug)]
pub struct SseParser {
    /// The unfinished line from previous reads.
    line: Vec<u8>,
    /// The data buffer of the event being built.
    data: Vec<u8>,
    /// Whether any `data` field was seen for the event being built.
    has_data: bool,
    /// The previous read ended in CR: a LF at the start of the next one belongs to it.
    skip_lf: bool,
    /// How many bytes of the stream have been checked against the BOM (3 = done).
    bom_seen: usize,
    /// Longest line, and longest event data, accepted.
    max: usize,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::with_max(super::DEFAULT_MAX_LINE)
    }
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// A parser that refuses lines, and event data, longer than `max` bytes.
    pub fn with_max(max: usize) -> Self {
        Self {
            line: Vec::new(),
            data: Vec::new(),
            has_data: false,
            skip_lf: false,
            bom_seen: 0,
            max,
        }
    }

    /// Feeds one read; calls `on_data` with the data of every event it completes.
    ///
    /// Stops at the first error `on_data` returns, or at a line or event longer than the
    /// limit, and hands it back.
    pub fn feed<E: From<EventTooLarge>>(
        &mut self,
        mut chunk: &[u8],
        mut on_data: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.bom_seen < BOM.len() {
            chunk = self.skip_bom(chunk);
        }
        if self.skip_lf && !chunk.is_empty() {
            self.skip_lf = false;
            if chunk[0] == b'\n' {
                chunk = &chunk[1..];
            }
        }
        while let Some(end) = memchr::memchr2(b'\r', b'\n', chunk) {
            let rest_start = if chunk[end] == b'\r' {
                match chunk.get(end + 1) {
                    Some(b'\n') => end + 2,
                    Some(_) => end + 1,
                    None => {
                        self.skip_lf = true;
                        end + 1
                    }
                }
            } else {
                end + 1
            };
            if self.line.len() + end > self.max {
                return Err(self.too_large());
            }
            if self.line.is_empty() {
                self.process_line(&chunk[..end], &mut on_data)?;
            } else {
                let mut line = std::mem::take(&mut self.line);
                append(&mut line, &chunk[..end], self.max);
                let result = self.process_line(&line, &mut on_data);
                line.clear();
                self.line = line;
                result?;
            }
            chunk = &chunk[rest_start..];
        }
        if self.line.len() + chunk.len() > self.max {
            return Err(self.too_large());
        }
        append(&mut self.line, chunk, self.max);
        Ok(())
    }

    fn too_large<E: From<EventTooLarge>>(&self) -> E {
        E::from(EventTooLarge { limit: self.max })
    }

    /// Bytes held back for a line or event not yet complete (for memory bounds).
    pub fn buffered(&self) -> usize {
        self.line.len() + self.data.len()
    }

    fn skip_bom<'a>(&mut self, chunk: &'a [u8]) -> &'a [u8] {
        let mut i = 0;
        while self.bom_seen < BOM.len() && i < chunk.len() {
            if chunk[i] != BOM[self.bom_seen] {
                // Not a BOM after all: give back the bytes that looked like one.
                let matched = &BOM[..self.bom_seen];
                self.line.extend_from_slice(matched);
                self.bom_seen = BOM.len();
                return &chunk[i..];
            }
            self.bom_seen += 1;
            i += 1;
        }
        &chunk[i..]
    }

    fn process_line<E: From<EventTooLarge>>(
        &mut self,
        line: &[u8],
        on_data: &mut impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        if line.is_empty() {
            if !self.has_data {
                return Ok(());
            }
            self.has_data = false;
            let result = on_data(&self.data);
            self.data.clear();
            return result;
        }
        if line[0] == b':' {
            return Ok(());
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        // Only `data` matters to the gateway; `event`, `id` and `retry` are read and dropped.
        if field == b"data" {
            if self.data.len() + usize::from(self.has_data) + value.len() > self.max {
                return Err(self.too_large());
            }
            if self.has_data {
                self.data.push(b'\n');
            }
            append(&mut self.data, value, self.max);
            self.has_data = true;
        }
        Ok(())
    }
}

/// Appends to a buffer of part of one line or event (see [`super::line_reserve`]).
fn append(buf: &mut Vec<u8>, bytes: &[u8], max: usize) {
    buf.reserve(super::line_reserve(
        buf.len(),
        buf.capacity(),
        bytes.len(),
        max,
    ));
    buf.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests' callback error.
    #[derive(Debug, PartialEq, Eq)]
    enum Stop {
        Callback,
        TooLarge,
    }

    impl From<EventTooLarge> for Stop {
        fn from(_: EventTooLarge) -> Self {
            Self::TooLarge
        }
    }

    fn parse_split(input: &[u8], splits: &[usize]) -> Vec<Vec<u8>> {
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        let mut start = 0;
        for &end in splits.iter().chain(std::iter::once(&input.len())) {
            parser
                .feed::<Stop>(&input[start..end], |d| {
                    out.push(d.to_vec());
                    Ok(())
                })
                .unwrap();
            start = end;
        }
        out
    }

    fn parse(input: &[u8]) -> Vec<Vec<u8>> {
        parse_split(input, &[])
    }

    /// Every way of cutting `input` in two and in three gives the same events.
    fn assert_all_splits(input: &[u8], expected: &[&[u8]]) {
        let expected: Vec<Vec<u8>> = expected.iter().map(|e| e.to_vec()).collect();
        assert_eq!(parse(input), expected, "whole");
        for i in 0..=input.len() {
            assert_eq!(parse_split(input, &[i]), expected, "split at {i}");
            for j in i..=input.len() {
                assert_eq!(parse_split(input, &[i, j]), expected, "split at {i},{j}");
            }
        }
        // One byte at a time.
        let splits: Vec<usize> = (1..input.len()).collect();
        assert_eq!(parse_split(input, &splits), expected, "bytewise");
    }

    #[test]
    fn openai_stream_at_every_split() {
        let input = "data: {\"a\":\"你好\"}\n\ndata: {\"b\":2}\n\ndata: [DONE]\n\n".as_bytes();
        assert_all_splits(
            input,
            &["{\"a\":\"你好\"}".as_bytes(), b"{\"b\":2}", b"[DONE]"],
        );
    }

    #[test]
    fn line_endings_cr_lf_crlf_mixed() {
        assert_all_splits(
            b"data: a\r\n\r\ndata: b\r\rdata: c\n\n",
            &[b"a", b"b", b"c"],
        );
        assert_all_splits(b"data:x\r\r\n\ndata:y\n\r\n", &[b"x", b"y"]);
    }

    #[test]
    fn comments_fields_and_multiline_data() {
        let input =
            b": keep-alive\nevent: message\nid: 7\nretry: 10\ndata: line1\ndata:line2\ndata\n\n";
        assert_all_splits(input, &[b"line1\nline2\n"]);
    }

    #[test]
    fn only_one_leading_space_is_dropped() {
        assert_eq!(parse(b"data:  two\n\n"), vec![b" two".to_vec()]);
    }

    #[test]
    fn events_without_data_are_not_dispatched_and_empty_data_is() {
        assert_eq!(parse(b"event: ping\n\n\n\n"), Vec::<Vec<u8>>::new());
        assert_eq!(parse(b"data:\n\n"), vec![Vec::<u8>::new()]);
    }

    #[test]
    fn unterminated_last_event_is_dropped() {
        assert_eq!(parse(b"data: a\n\ndata: b\n"), vec![b"a".to_vec()]);
        assert_eq!(parse(b"data: a\n\ndata: b"), vec![b"a".to_vec()]);
    }

    #[test]
    fn bom_is_skipped_at_start_only() {
        assert_all_splits(b"\xEF\xBB\xBFdata: a\n\n", &[b"a"]);
        assert_all_splits(b"data: \xEF\xBB\xBF\n\n", &[b"\xEF\xBB\xBF"]);
        // Something that starts like a BOM but is not one is kept.
        assert_eq!(parse(b"\xEFdata\n\n"), Vec::<Vec<u8>>::new());
    }

    #[test]
    fn utf8_split_inside_a_character() {
        let input = "data: {\"c\":\"繁體中文🙂\"}\n\n".as_bytes();
        assert_all_splits(input, &["{\"c\":\"繁體中文🙂\"}".as_bytes()]);
    }

    #[test]
    fn callback_error_stops_parsing() {
        let mut parser = SseParser::new();
        let mut seen = 0;
        let r = parser.feed(b"data: a\n\ndata: b\n\n", |_| {
            seen += 1;
            Err(Stop::Callback)
        });
        assert_eq!(r, Err(Stop::Callback));
        assert_eq!(seen, 1);
    }

    /// Feeds `input` to a parser limited to `max` in every split into two reads.
    #[test]
    fn a_long_line_never_holds_more_than_its_limit() {
        let max = 8 << 20;
        let mut parser = SseParser::with_max(max);
        let piece = vec![b'a'; 1 << 20];
        let mut refused = false;
        parser.feed::<Stop>(b"data: ", |_| Ok(())).unwrap();
        for _ in 0..16 {
            if parser.feed::<Stop>(&piece, |_| Ok(())).is_err() {
                refused = true;
                break;
            }
            assert!(parser.line.capacity() <= max, "{}", parser.line.capacity());
        }
        assert!(refused);
    }

    fn limited(input: &[u8], max: usize) -> Vec<Result<Vec<Vec<u8>>, Stop>> {
        (0..=input.len())
            .map(|i| {
                let mut parser = SseParser::with_max(max);
                let mut out = Vec::new();
                for part in [&input[..i], &input[i..]] {
                    parser.feed::<Stop>(part, |d| {
                        out.push(d.to_vec());
                        Ok(())
                    })?;
                    assert!(parser.buffered() <= 2 * max, "buffered past the limit");
                }
                Ok(out)
            })
            .collect()
    }

    #[test]
    fn lines_and_events_up_to_the_limit_pass_and_longer_ones_stop_the_parser() {
        let expect = |input: &[u8], max: usize, expected: Result<&[u8], Stop>| {
            let expected = expected.map(|data| vec![data.to_vec()]);
            for (split, got) in limited(input, max).into_iter().enumerate() {
                assert_eq!(got, expected, "max {max}, split at {split}");
            }
        };
        // "data: 0123456789" is 16 bytes; its data 10.
        let input = b"data: 0123456789\n\n";
        expect(input, 16, Ok(b"0123456789"));
        expect(input, 15, Err(Stop::TooLarge));
        // Many short data lines that add up to a large event.
        let many = b"data: 0123\ndata: 4567\ndata: 89\n\n";
        expect(many, 12, Ok(b"0123\n4567\n89"));
        expect(many, 11, Err(Stop::TooLarge));
        // A comment line counts too: it is buffered like any other.
        let comment = [b":", &[b'x'; 64][..], b"\ndata: a\n\n"].concat();
        expect(&comment, 32, Err(Stop::TooLarge));
    }
}
