//! Logging and request ids: one tracing subscriber (text or JSON, filtered by config or
//! `RUST_LOG`), and the root span every request runs in, carrying its request id.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::BufWriter;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::HeaderMap;
use actix_web::{Error, HttpMessage as _};
use tracing::field::{Field, Visit};
use tracing::{Event, Span, Subscriber};
use tracing_actix_web::RootSpanBuilder;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, RawLog};

/// Lines formatted but not yet written, at most; past it, threads that log wait.
const LOG_QUEUE_LINES: usize = 4096;

/// What the default filter holds back (see [`init`]).
const QUIET: &str = "rustls=error,actix_http::h1::dispatcher=off";

/// Installs the global subscriber. `RUST_LOG`, when set, wins over `log.level`.
///
/// rustls is held at `error` unless asked for: clients that send an IP address as SNI make
/// it warn on every handshake, which would flood the log. actix-http's h1 dispatcher is off
/// unless asked for: it writes one `ERROR stream error: ...` per connection that sends a
/// request it cannot parse, without the client's address; the listener notes each such
/// connection itself, rate-limited (see `listener`).
///
/// Lines are formatted on the thread that logs them and written to stdout by a writer
/// thread, in batches: a request never waits for a `write(2)` (measured: about a tenth of the
/// gateway's CPU per request under load, scenario S3 in BENCHMARKS.md). Nothing is dropped
/// when the writer falls behind; loggers wait instead. Keep the returned guard alive until
/// exit: dropping it writes out what is still queued.
pub fn init(log: &RawLog, rust_log: Option<&str>) -> WorkerGuard {
    let directives = match rust_log {
        Some(value) if !value.trim().is_empty() => value.to_string(),
        _ => format!("{},{QUIET}", log.level),
    };
    let filter =
        EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new(format!("info,{QUIET}")));
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
        LogFormat::Json => builder.event_format(JsonLine).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    drop(result);
    guard
}

/// One JSON object per event: `timestamp`, `level`, then the event's fields in the order
/// they were written (`message` first), flat, without span data.
///
/// tracing-subscriber's own JSON format does the same through a generic serde map and checks
/// every piece it writes for UTF-8: about 7% of the gateway's CPU per request under load
/// (scenario S2 in BENCHMARKS.md). This one puts the fields into a reused per-thread buffer
/// and hands the line over once. Values are escaped by serde_json.
pub struct JsonLine;

thread_local! {
    /// The line being built, and room to render a `Debug` or `Display` value before escaping.
    static LINE: RefCell<(Vec<u8>, String)> = const { RefCell::new((Vec::new(), String::new())) };
}

/// Buffers that grew past this (an event with a huge field) are given back afterwards.
const LINE_KEEP_BYTES: usize = 16 * 1024;

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // The same RFC 3339 UTC form as tracing-subscriber's default timer, formatted in
        // one piece.
        let now = humantime::format_rfc3339_micros(std::time::SystemTime::now());
        write!(
            writer,
            "{{\"timestamp\":\"{now}\",\"level\":\"{}\"",
            event.metadata().level()
        )?;
        let mut fields = |line: &mut Vec<u8>, scratch: &mut String| {
            let mut visitor = JsonFields {
                line,
                scratch,
                failed: false,
            };
            event.record(&mut visitor);
            if visitor.failed {
                return Err(fmt::Error);
            }
            line.extend_from_slice(b"}\n");
            writer.write_str(std::str::from_utf8(line).map_err(|_| fmt::Error)?)
        };
        LINE.with(|cell| match cell.try_borrow_mut() {
            Ok(mut buffers) => {
                let (line, scratch) = &mut *buffers;
                line.clear();
                scratch.clear();
                let result = fields(line, scratch);
                if line.capacity() > LINE_KEEP_BYTES {
                    *line = Vec::new();
                }
                if scratch.capacity() > LINE_KEEP_BYTES {
                    *scratch = String::new();
                }
                result
            }
            // An event logged while formatting one (a Debug impl that logs): fresh buffers.
            Err(_) => fields(&mut Vec::new(), &mut String::new()),
        })
    }
}

/// Appends `,"name":value` per field. Records bridged from the `log` crate keep their
/// `log.target`, `log.module_path`, `log.file` and `log.line` fields: with no `target` on a
/// line, they are all that says where such a line came from.
struct JsonFields<'a> {
    line: &'a mut Vec<u8>,
    scratch: &'a mut String,
    failed: bool,
}

/// Appends `,"name":value` to `line`.
fn put<T: serde::Serialize + ?Sized>(
    line: &mut Vec<u8>,
    field: &Field,
    value: &T,
) -> serde_json::Result<()> {
    line.push(b',');
    serde_json::to_writer(&mut *line, field.name())?;
    line.push(b':');
    serde_json::to_writer(line, value)
}

impl JsonFields<'_> {
    fn put<T: serde::Serialize + ?Sized>(&mut self, field: &Field, value: &T) {
        self.failed |= put(self.line, field, value).is_err();
    }
}

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, &value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, &value);
    }

    /// Not finite (no JSON number for it): `null`.
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, &value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, &value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.scratch.clear();
        self.failed |= write!(self.scratch, "{value:?}").is_err();
        self.failed |= put(self.line, field, self.scratch.as_str()).is_err();
    }
}

/// `d` in milliseconds, rounded to the microsecond: what the log lines' `*_ms` fields carry
/// (`0.236`, not `0.23611100000000002`).
pub fn millis(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
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
        Self(numbered(prefix, COUNTER.fetch_add(1, Ordering::Relaxed)))
    }
}

/// `<prefix>-<n in hex>`, written without the formatting machinery (once per request).
fn numbered(prefix: &str, n: u64) -> Arc<str> {
    let mut id = [0u8; 64];
    let mut len = prefix.len().min(id.len() - 17);
    id[..len].copy_from_slice(&prefix.as_bytes()[..len]);
    id[len] = b'-';
    len += 1;
    let digits = (64 - n.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, slot) in id[len..len + digits].iter_mut().enumerate() {
        let nibble = (n >> (4 * (digits - 1 - i))) & 0xf;
        *slot = b"0123456789abcdef"[nibble as usize];
    }
    len += digits;
    std::str::from_utf8(&id[..len]).unwrap_or_default().into()
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

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    #[test]
    fn json_lines_are_flat_objects_with_every_value_escaped() {
        let out = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .event_format(JsonLine)
            .with_writer(out.clone())
            .finish();
        let tricky = "quote \" backslash \\ newline \n tab \t control \u{1} non-ascii \u{e9}";
        tracing::subscriber::with_default(subscriber, || {
            let absent: Option<&str> = None;
            tracing::info!(
                text = tricky, count = 42u64, delta = -3i64, ms = 0.25f64, nan = f64::NAN,
                yes = true, shown = %"dis\"play", absent, "request"
            );
            tracing::warn!(list = ?vec!["a"], "second {}", 2);
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].starts_with("{\"timestamp\":\""), "{text}");
        assert!(
            lines[0].contains("\"level\":\"INFO\",\"message\":\"request\","),
            "{text}"
        );
        let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        let stamp = first["timestamp"].as_str().unwrap();
        assert!(stamp.len() >= 20 && stamp.ends_with('Z'), "{stamp}");
        assert_eq!(first["text"], tricky);
        assert_eq!(first["count"], 42);
        assert_eq!(first["delta"], -3);
        assert_eq!(first["ms"], 0.25);
        assert!(first["nan"].is_null());
        assert_eq!(first["yes"], true);
        assert_eq!(first["shown"], "dis\"play");
        assert!(first.get("absent").is_none(), "{text}");
        assert_eq!(first.as_object().unwrap().len(), 10, "{text}");
        let second: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(second["level"], "WARN");
        assert_eq!(second["message"], "second 2");
        assert_eq!(second["list"], "[\"a\"]");
    }

    #[test]
    fn millis_are_rounded_to_the_microsecond() {
        use std::time::Duration;
        for (nanos, shown) in [
            (236_111, "0.236"),
            (236_611, "0.237"),
            (1_402_613_499, "1402.613"),
            (0, "0"),
        ] {
            assert_eq!(millis(Duration::from_nanos(nanos)).to_string(), shown);
        }
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
        for n in [0, 1, 0xf, 0x10, 0xabc, u64::MAX] {
            assert_eq!(&*numbered("5f0c2a9e71b4", n), format!("5f0c2a9e71b4-{n:x}"));
        }
    }
}
