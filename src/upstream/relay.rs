//! The response body of a streaming answer: upstream chunks in, client chunks out, with the
//! idle and total timeouts, and an honest ending. A failure after the first byte becomes a
//! final `{"error": ...}` line (or the stream format's own error event, see
//! [`Transform::failure`]); the body itself never errors, so the chunked encoding is
//! always terminated properly and clients (curl) never see a truncated transfer.

use std::convert::Infallible;
use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use tokio::time::{Instant, Sleep};

use super::BodyError;
use crate::config::{Config, Timeouts};
use crate::error::{error_line, UpstreamFault};
use crate::metrics::{Ending, OllamaTimings, RequestRecord, Tokens};
use crate::secret::Scrubber;

/// What a transform does with one piece of the upstream body.
pub enum Step {
    /// Forward these bytes (if any) and keep reading.
    Forward(Option<Bytes>),
    /// Forward these bytes (if any); the answer is complete.
    Finish(Option<Bytes>),
    /// Forward these bytes (if any), which already end with the upstream's own error line;
    /// the answer failed.
    Relayed {
        forward: Option<Bytes>,
        fault: UpstreamFault,
        message: String,
    },
    /// Forward these bytes (if any), then an error line with `message`; the answer failed.
    Fail {
        forward: Option<Bytes>,
        fault: UpstreamFault,
        message: String,
    },
}

/// Turns the upstream's body into the client's, one chunk at a time.
pub trait Transform {
    fn chunk(&mut self, chunk: Bytes) -> Step;
    /// The upstream body ended: the answer is complete or failed (a `Forward` here is
    /// treated as a truncated answer).
    fn eof(&mut self) -> Step;
    /// What the upstream reported about the answer so far (for metrics and the log).
    fn report(&self) -> (Tokens, Option<OllamaTimings>);
    /// The client's last piece of a failed answer, in the client's stream format: an NDJSON
    /// `{"error": ...}` line unless the transform speaks another (an SSE error event).
    fn failure(&self, message: &str) -> Vec<u8> {
        error_line(message)
    }
    /// Content chunks of the answer seen so far (about one token each): what a client that
    /// leaves, or a stream without counts, is charged for its output.
    fn generated(&self) -> u64 {
        0
    }
}

/// Most of an upstream body read after its answer was complete (and dropped), so that its
/// connection can go back to the pool: the SSE `[DONE]` event comes just before the end of
/// the chunked body, and a body dropped before its end closes the connection.
const TAIL_LIMIT: usize = 64 * 1024;
/// Longest wait for that end.
const TAIL_TIME: Duration = Duration::from_secs(1);

/// Reads what is left of a complete answer's upstream body, bounded in size and time, so the
/// client's stream can end now and the upstream connection still be reused. Whatever is
/// already buffered is read here, in place; only a body whose end is still on the way gets
/// a task.
fn release_upstream<S, E>(upstream: S, cx: &mut Context<'_>)
where
    S: Stream<Item = Result<Bytes, E>> + Unpin + 'static,
{
    // Past the limits the connection is dropped (closed), as before.
    let mut drain = Box::pin(crate::body::drain(upstream, TAIL_LIMIT, TAIL_TIME));
    if drain.as_mut().poll(cx).is_pending() {
        actix_rt::spawn(drain);
    }
}

pin_project_lite::pin_project! {
    /// The client-facing body of a streamed answer.
    pub struct Relay<S, T> {
        // Taken when the answer ends: dropped on failure, drained to its end on success.
        upstream: Option<S>,
        #[pin]
        idle: Sleep,
        #[pin]
        total: Sleep,
        timeouts: Timeouts,
        // A failing step's text came from the upstream: scrubbed before anyone sees it.
        scrubber: Scrubber,
        transform: T,
        upstream_name: String,
        // Bytes to send after the current ones (an error line after forwarded data).
        queued: Option<Bytes>,
        record: Option<RequestRecord>,
    }
}

impl<S, T> Relay<S, T> {
    /// `deadline` is when `config.timeouts.total` runs out for this request.
    pub fn new(
        upstream: S,
        transform: T,
        upstream_name: String,
        config: &Config,
        deadline: Instant,
        record: Option<RequestRecord>,
    ) -> Self {
        Self {
            upstream: Some(upstream),
            idle: tokio::time::sleep(config.timeouts.idle),
            total: tokio::time::sleep_until(deadline),
            timeouts: config.timeouts,
            scrubber: config.scrubber.clone(),
            transform,
            upstream_name,
            queued: None,
            record,
        }
    }
}

fn join(first: Option<Bytes>, second: Option<Bytes>) -> (Option<Bytes>, Option<Bytes>) {
    match first {
        Some(f) if !f.is_empty() => (Some(f), second),
        _ => (second, None),
    }
}

impl<S, T, E> Stream for Relay<S, T>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin + 'static,
    E: BodyError,
    T: Transform,
{
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        if let Some(bytes) = this.queued.take() {
            return Poll::Ready(Some(Ok(bytes)));
        }
        loop {
            let Some(upstream) = this.upstream.as_mut() else {
                return Poll::Ready(None);
            };
            let step = match Pin::new(upstream).poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    let deadline = Instant::now() + this.timeouts.idle;
                    this.idle.as_mut().reset(deadline);
                    this.transform.chunk(chunk)
                }
                Poll::Ready(Some(Err(e))) => Step::Fail {
                    forward: None,
                    fault: UpstreamFault::Truncated,
                    message: format!("upstream {} {}", this.upstream_name, e.what()),
                },
                Poll::Ready(None) => {
                    // Ended by the upstream itself: nothing left to read.
                    this.upstream.take();
                    match this.transform.eof() {
                        Step::Forward(forward) => Step::Fail {
                            forward,
                            fault: UpstreamFault::Truncated,
                            message: format!(
                                "upstream {} ended the answer before finishing it",
                                this.upstream_name
                            ),
                        },
                        step => step,
                    }
                }
                Poll::Pending => {
                    let t = &this.timeouts;
                    let waited = if this.total.as_mut().poll(cx).is_ready() {
                        format!(
                            "after {} before the answer was complete (the total time limit, timeouts.total)",
                            humantime::format_duration(t.total)
                        )
                    } else if this.idle.as_mut().poll(cx).is_ready() {
                        format!(
                            "after {} without sending anything (the idle time limit between chunks, timeouts.idle)",
                            humantime::format_duration(t.idle)
                        )
                    } else {
                        return Poll::Pending;
                    };
                    Step::Fail {
                        forward: None,
                        fault: UpstreamFault::Timeout,
                        message: format!("upstream {} timed out {waited}", this.upstream_name),
                    }
                }
            };
            let (now, later, ending) = match step {
                Step::Forward(None) => continue,
                Step::Forward(Some(bytes)) => (Some(bytes), None, None),
                Step::Finish(bytes) => (bytes, None, Some(Ending::Complete)),
                Step::Relayed {
                    forward,
                    fault,
                    message,
                } => {
                    // The upstream's own error line is in `forward`.
                    let forward = forward.map(|b| this.scrubber.scrub_json_bytes(b));
                    let message = this.scrubber.scrub_string(message);
                    (forward, None, Some(Ending::Failed { fault, message }))
                }
                Step::Fail {
                    forward,
                    fault,
                    message,
                } => {
                    let message = this.scrubber.scrub_string(message);
                    let line = Bytes::from(this.transform.failure(&message));
                    let (now, later) = join(forward, Some(line));
                    (now, later, Some(Ending::Failed { fault, message }))
                }
            };
            let (now, later) = join(now, later);
            if let Some(record) = this.record.as_mut() {
                if now.is_some() {
                    record.first_byte();
                }
                if record.budgeted() {
                    let (so_far, _) = this.transform.report();
                    record.progress(this.transform.generated(), so_far);
                }
            }
            if let Some(ending) = ending {
                match (&ending, this.upstream.take()) {
                    (Ending::Complete, Some(upstream)) => release_upstream(upstream, cx),
                    // A failed answer's connection is not reused: dropping it closes it.
                    (_, upstream) => drop(upstream),
                }
                if let Some(record) = this.record.take() {
                    let (tokens, timings) = this.transform.report();
                    record.finish(200, tokens, timings, &ending);
                }
            }
            *this.queued = later;
            match now {
                Some(bytes) => return Poll::Ready(Some(Ok(bytes))),
                None => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;

    use futures_util::StreamExt as _;
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
    use tokio::sync::Notify;

    use super::*;

    /// An upstream body fed by the test, which notes when it was read to its end.
    struct Upstream {
        rx: UnboundedReceiver<Result<Bytes, std::io::Error>>,
        ended: Rc<Cell<bool>>,
        end: Rc<Notify>,
    }

    impl Stream for Upstream {
        type Item = Result<Bytes, std::io::Error>;

        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            let next = self.rx.poll_recv(cx);
            if let Poll::Ready(None) = next {
                self.ended.set(true);
                self.end.notify_one();
            }
            next
        }
    }

    /// `done` completes the answer, `fail` fails it, `leak` fails it quoting the upstream's
    /// key, `relay` relays the upstream's own error line quoting it; anything else is
    /// forwarded.
    struct Script;

    impl Transform for Script {
        fn chunk(&mut self, chunk: Bytes) -> Step {
            match &chunk[..] {
                b"done" => Step::Finish(Some(chunk)),
                b"fail" => Step::Fail {
                    forward: None,
                    fault: UpstreamFault::Protocol,
                    message: "failed".into(),
                },
                b"leak" => Step::Fail {
                    forward: None,
                    fault: UpstreamFault::MidStream,
                    message: "bad key sk-test-key".into(),
                },
                b"relay" => Step::Relayed {
                    forward: Some(Bytes::from_static(b"{\"error\":\"bad key sk-test-key\"}\n")),
                    fault: UpstreamFault::MidStream,
                    message: "relayed".into(),
                },
                // The same, the key JSON-escaped.
                b"relay-escaped" => Step::Relayed {
                    forward: Some(Bytes::from_static(
                        b"{\"error\":\"bad key \\u0073k-test\\u002dkey\"}\n",
                    )),
                    fault: UpstreamFault::MidStream,
                    message: "relayed".into(),
                },
                _ => Step::Forward(Some(chunk)),
            }
        }

        fn eof(&mut self) -> Step {
            Step::Forward(None)
        }

        fn report(&self) -> (Tokens, Option<OllamaTimings>) {
            (Tokens::default(), None)
        }
    }

    type Fed = (
        UnboundedSender<Result<Bytes, std::io::Error>>,
        Pin<Box<Relay<Upstream, Script>>>,
        Rc<Cell<bool>>,
        Rc<Notify>,
    );

    fn fed() -> Fed {
        let (tx, rx) = unbounded_channel();
        let ended = Rc::new(Cell::new(false));
        let end = Rc::new(Notify::new());
        let upstream = Upstream {
            rx,
            ended: Rc::clone(&ended),
            end: Rc::clone(&end),
        };
        let mut raw = crate::config::RawConfig::default();
        raw.upstreams.get_mut("openai").unwrap().api_key =
            crate::secret::Secret::new("sk-test-key");
        let config = Config::from_raw(raw).unwrap();
        let relay = Relay::new(
            upstream,
            Script,
            "test".into(),
            &config,
            Instant::now() + Duration::from_secs(60),
            None,
        );
        (tx, Box::pin(relay), ended, end)
    }

    fn send(tx: &UnboundedSender<Result<Bytes, std::io::Error>>, bytes: &'static [u8]) {
        tx.send(Ok(Bytes::from_static(bytes))).unwrap();
    }

    async fn body(relay: &mut Pin<Box<Relay<Upstream, Script>>>) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Some(Ok(bytes)) = relay.next().await {
            out.push(bytes);
        }
        out
    }

    #[actix_rt::test]
    async fn a_complete_answer_ends_at_once_and_its_upstream_is_read_to_the_end_later() {
        let (tx, mut relay, ended, end) = fed();
        send(&tx, b"a");
        send(&tx, b"done");
        assert_eq!(body(&mut relay).await, ["a", "done"]);
        drop(relay);
        // The client's stream is over; the upstream's end is still on its way.
        assert!(!ended.get() && !tx.is_closed());
        send(&tx, b"tail");
        drop(tx);
        tokio::time::timeout(Duration::from_secs(10), end.notified())
            .await
            .expect("the rest of the upstream body is read");
        assert!(ended.get());
    }

    #[actix_rt::test]
    async fn a_tail_already_there_is_read_in_place() {
        let (tx, mut relay, ended, _) = fed();
        send(&tx, b"done");
        send(&tx, b"tail");
        drop(tx);
        assert_eq!(body(&mut relay).await, ["done"]);
        assert!(ended.get());
    }

    #[actix_rt::test]
    async fn a_long_tail_and_a_failed_answer_drop_their_upstream() {
        let (tx, mut relay, ended, _) = fed();
        send(&tx, b"done");
        tx.send(Ok(Bytes::from(vec![b'x'; TAIL_LIMIT + 1])))
            .unwrap();
        assert_eq!(body(&mut relay).await, ["done"]);
        assert!(tx.is_closed() && !ended.get());

        let (tx, mut relay, ended, _) = fed();
        send(&tx, b"fail");
        let out = body(&mut relay).await;
        assert_eq!(out.len(), 1);
        assert!(out[0].starts_with(b"{\"error\":"), "{:?}", out[0]);
        assert!(tx.is_closed() && !ended.get());
    }

    #[actix_rt::test]
    async fn the_upstream_key_never_leaves_in_a_failing_step() {
        for script in [&b"leak"[..], b"relay", b"relay-escaped"] {
            let (tx, mut relay, _, _) = fed();
            tx.send(Ok(Bytes::from_static(script))).unwrap();
            let out = body(&mut relay).await.concat();
            let text = String::from_utf8_lossy(&out);
            assert!(!text.contains("k-test"), "{text}");
            assert!(text.contains("bad key [redacted]"), "{text}");
        }
    }

    #[actix_rt::test]
    async fn an_upstream_that_ends_without_finishing_gets_an_error_line() {
        let (tx, mut relay, _, _) = fed();
        send(&tx, b"a");
        drop(tx);
        let out = body(&mut relay).await;
        assert_eq!(out[0], "a");
        assert!(
            out[1].starts_with(b"{\"error\":\"upstream test ended the answer"),
            "{:?}",
            out[1]
        );
        assert_eq!(out.len(), 2);
    }
}
