//! Logging and request ids: one tracing subscriber (text or JSON, filtered by config or
//! `RUST_LOG`), and the root span every request runs in, carrying its request id.

use std::io::BufWriter;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::HeaderMap;
use actix_web::{Error, HttpMessage as _};
use tracing::Span;
use tracing_actix_web::RootSpanBuilder;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, RawLog};

/// Lines formatted but not yet written, at most; past it, threads that log wait.
const LOG_QUEUE_LINES: usize = 4096;

/// Installs the global subscriber. `RUST_LOG`, when set, wins over `log.level`.
///
/// rustls is held at `error` unless asked for: clients that send an IP address as SNI make
/// it warn on every handshake, which would flood the log.
///
/// Lines are formatted on the thread that logs them and written to stdout by a writer
/// thread, in batches: a request never waits for a `write(2)` (measured: about a tenth of the
/// gateway's CPU per request under load, scenario S3 in BENCHMARKS.md). Nothing is dropped
/// when the writer falls behind; loggers wait instead. Keep the returned guard alive until
/// exit: dropping it writes out what is still queued.
pub fn init(log: &RawLog, rust_log: Option<&str>) -> WorkerGuard {
    let directives = match rust_log {
        Some(value) if !value.trim().is_empty() => value.to_string(),
        _ => format!("{},rustls=error", log.level),
    };
    let filter =
        EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info,rustls=error"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        // The queue's slots are allocated up front: the default (128,000) costs ~5 MiB of
        // resident memory at idle; a few thousand lines is seconds of headroom at full load.
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("log-writer")
        .finish(BufWriter::with_capacity(64 * 1024, std::io::stdout()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false)
        .with_ansi(ansi);
    let result = match log.format {
        // Request lines carry their request id themselves: no span data per line.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    drop(result);
    guard
}

/// A request's id: the client's `X-Request-Id` when well-formed, else a new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub Arc<str>);

impl RequestId {
    /// Accepts 1-128 characters of `[A-Za-z0-9._:-]`; anything else is replaced.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let given = headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| {
                !v.is_empty()
                    && v.len() <= 128
                    && v.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')
                    })
            });
        match given {
            Some(id) => Self(id.into()),
            None => Self::generate(),
        }
    }

    /// A random per-process prefix and a counter: unique, and cheap (no syscall per request).
    pub fn generate() -> Self {
        static PREFIX: OnceLock<String> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let prefix = PREFIX.get_or_init(|| {
            let mut bytes = [0u8; 6];
            let _ = getrandom::fill(&mut bytes);
            crate::keys::to_hex(&bytes)
        });
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Self(format!("{prefix}-{n:x}").into())
    }
}

/// The root span of every request: its id, method and path (no headers, so no secrets).
///
/// At debug level: the one line per request at info carries the request id itself, and a
/// span enabled at info costs its field formatting on every request (measured: about a
/// fifth of the gateway's CPU per request under load, scenario S3 in BENCHMARKS.md).
pub struct GatewaySpan;

impl RootSpanBuilder for GatewaySpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        let id = RequestId::from_headers(request.headers());
        let span = tracing::debug_span!(
            "request",
            request_id = %id.0,
            method = %request.method(),
            path = %request.path().chars().take(200).collect::<String>()
        );
        request.extensions_mut().insert(id);
        span
    }

    fn on_request_end<B: MessageBody>(_span: Span, _outcome: &Result<ServiceResponse<B>, Error>) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn with(value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            HeaderName::from_static("x-request-id"),
            HeaderValue::from_static(value),
        );
        h
    }

    #[test]
    fn well_formed_ids_are_kept_others_replaced() {
        assert_eq!(
            &*RequestId::from_headers(&with("abc-123.X_y:z")).0,
            "abc-123.X_y:z"
        );
        for bad in ["", "has space", "a\"b", "semi;colon"] {
            let id = RequestId::from_headers(&with(Box::leak(bad.to_string().into_boxed_str())));
            assert_ne!(&*id.0, bad);
        }
        let long: &'static str = Box::leak("a".repeat(129).into_boxed_str());
        assert!(RequestId::from_headers(&with(long)).0.len() < 129);
        assert_ne!(RequestId::generate(), RequestId::generate());
    }
}
