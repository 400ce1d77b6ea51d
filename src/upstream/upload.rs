//! A client's request body streamed to an upstream as it arrives (a blob of many
//! gigabytes): never held whole, bounded in size and in the pause between two pieces.
//! Backpressure is the HTTP stacks' own: the upstream client asks for the next piece only
//! when its connection took the last one, and the listener reads from the client only as
//! far as its small body buffer has room.

use std::future::Future as _;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::web;
use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use crate::error::GatewayError;

pin_project_lite::pin_project! {
    /// The body of an upload: the client's pieces, unchanged, until the body ends or a
    /// limit is passed (then one error, which the upstream client turns into an aborted
    /// request: the upstream never sees a complete body that was not).
    pub struct Upload {
        payload: web::Payload,
        // How long the client may pause; counted from the moment the next piece is wanted,
        // so that time spent waiting for the upstream is not held against the client.
        #[pin]
        pause: Sleep,
        max_pause: Duration,
        waiting: bool,
        limit: u64,
        seen: u64,
        finished: bool,
        ended: Rc<Notify>,
    }
}

impl Upload {
    /// Streams `payload`, refusing more than `limit` bytes and a pause longer than
    /// `max_pause` between two pieces.
    pub fn new(payload: web::Payload, limit: u64, max_pause: Duration) -> Self {
        Self {
            payload,
            pause: tokio::time::sleep(max_pause),
            max_pause,
            waiting: false,
            limit,
            seen: 0,
            finished: false,
            ended: Rc::new(Notify::new()),
        }
    }

    /// Notified once, when the whole body has been handed on.
    pub fn ended(&self) -> Rc<Notify> {
        Rc::clone(&self.ended)
    }
}

impl Stream for Upload {
    type Item = Result<Bytes, GatewayError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        if *this.finished {
            return Poll::Ready(None);
        }
        if !*this.waiting {
            *this.waiting = true;
            let deadline = Instant::now() + *this.max_pause;
            this.pause.as_mut().reset(deadline);
        }
        let failure = match Pin::new(&mut *this.payload).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                *this.waiting = false;
                *this.seen += chunk.len() as u64;
                if *this.seen <= *this.limit {
                    return Poll::Ready(Some(Ok(chunk)));
                }
                GatewayError::BlobTooLarge { limit: *this.limit }
            }
            Poll::Ready(Some(Err(e))) => {
                let what = super::payload_failure(&e, "before the body was complete");
                GatewayError::BodyRead(format!("the client {what}"))
            }
            Poll::Ready(None) => {
                *this.finished = true;
                this.ended.notify_one();
                return Poll::Ready(None);
            }
            Poll::Pending => {
                if this.pause.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                GatewayError::BodyTimeout(format!(
                    "{} of its previous piece (server.request_body_timeout, the longest pause in an upload)",
                    humantime::format_duration(*this.max_pause)
                ))
            }
        };
        *this.finished = true;
        Poll::Ready(Some(Err(failure)))
    }
}
