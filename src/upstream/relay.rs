//! The response body of a streaming answer: upstream chunks in, client chunks out, with the
//! idle and total timeouts, and an honest ending. A failure after the first byte becomes a
//! final `{"error": ...}` line; the body itself never errors, so the chunked encoding is
//! always terminated properly and clients (curl) never see a truncated transfer.

use std::convert::Infallible;
use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};
use tokio::time::{Instant, Sleep};

use crate::error::error_line;
use crate::metrics::{Ending, OllamaTimings, RequestRecord, Tokens};

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
        kind: &'static str,
        message: String,
    },
    /// Forward these bytes (if any), then an error line with `message`; the answer failed.
    Fail {
        forward: Option<Bytes>,
        kind: &'static str,
        message: String,
    },
}

/// Turns the upstream's body into the client's, one chunk at a time.
pub trait Transform {
    fn chunk(&mut self, chunk: Bytes) -> Step;
    fn eof(&mut self) -> Step;
    /// What the upstream reported about the answer so far (for metrics and the log).
    fn report(&self) -> (Tokens, Option<OllamaTimings>);
}

/// Most of an upstream body read after its answer was complete (and dropped), so that its
/// connection can go back to the pool: the SSE `[DONE]` event comes just before the end of
/// the chunked body, and a body dropped before its end closes the connection.
const TAIL_LIMIT: usize = 64 * 1024;
/// Longest wait for that end.
const TAIL_TIME: Duration = Duration::from_secs(1);

/// Reads what is left of a complete answer's upstream body, bounded in size and time, so the
/// client's stream can end now and the upstream connection still be reused. Whatever is
/// already buffered is read here; only a body whose end is still on the way gets a task.
fn release_upstream<S, E>(mut upstream: S, cx: &mut Context<'_>)
where
    S: Stream<Item = Result<Bytes, E>> + Unpin + 'static,
{
    let mut seen = 0;
    loop {
        match Pin::new(&mut upstream).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                seen += chunk.len();
                if seen > TAIL_LIMIT {
                    return;
                }
            }
            Poll::Ready(Some(Err(_)) | None) => return,
            Poll::Pending => break,
        }
    }
    actix_rt::spawn(async move {
        let tail = async {
            while let Some(Ok(chunk)) = upstream.next().await {
                seen += chunk.len();
                if seen > TAIL_LIMIT {
                    return;
                }
            }
        };
        // Past the limits the connection is dropped (closed), as before.
        let _ = tokio::time::timeout(TAIL_TIME, tail).await;
    });
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
        idle_timeout: Duration,
        transform: T,
        upstream_name: String,
        // Bytes to send after the current ones (an error line after forwarded data).
        queued: Option<Bytes>,
        record: Option<RequestRecord>,
    }
}

impl<S, T> Relay<S, T> {
    pub fn new(
        upstream: S,
        transform: T,
        upstream_name: String,
        idle_timeout: Duration,
        total_deadline: Instant,
        record: Option<RequestRecord>,
    ) -> Self {
        Self {
            upstream: Some(upstream),
            idle: tokio::time::sleep(idle_timeout),
            total: tokio::time::sleep_until(total_deadline),
            idle_timeout,
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
    E: std::fmt::Display,
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
                    let deadline = Instant::now() + *this.idle_timeout;
                    this.idle.as_mut().reset(deadline);
                    this.transform.chunk(chunk)
                }
                Poll::Ready(Some(Err(e))) => Step::Fail {
                    forward: None,
                    kind: "mid_stream",
                    message: format!("upstream {} failed mid-stream: {e}", this.upstream_name),
                },
                Poll::Ready(None) => {
                    // Ended by the upstream itself: nothing left to read.
                    this.upstream.take();
                    this.transform.eof()
                }
                Poll::Pending => {
                    let which = if this.total.as_mut().poll(cx).is_ready() {
                        "the total time limit"
                    } else if this.idle.as_mut().poll(cx).is_ready() {
                        "the idle time limit between chunks"
                    } else {
                        return Poll::Pending;
                    };
                    Step::Fail {
                        forward: None,
                        kind: "timeout",
                        message: format!(
                            "upstream {} timed out: no complete answer within {which}",
                            this.upstream_name
                        ),
                    }
                }
            };
            let (now, later, ending) = match step {
                Step::Forward(None) => continue,
                Step::Forward(Some(bytes)) => (Some(bytes), None, None),
                Step::Finish(bytes) => (bytes, None, Some(Ending::Complete)),
                Step::Relayed {
                    forward,
                    kind,
                    message,
                } => (forward, None, Some(Ending::Failed { kind, message })),
                Step::Fail {
                    forward,
                    kind,
                    message,
                } => {
                    let line = Bytes::from(error_line(&message));
                    let (now, later) = join(forward, Some(line));
                    (now, later, Some(Ending::Failed { kind, message }))
                }
            };
            let (now, later) = join(now, later);
            if now.is_some() {
                if let Some(record) = this.record.as_mut() {
                    record.first_byte();
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
