//! Logging and request ids: one tracing subscriber (text or JSON, filtered by config or
//! `RUST_LOG`), and the root span every request runs in, carrying its request id.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::web::Bytes;
use actix_web::{Error, HttpMessage as _};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Span, Subscriber};
use tracing_actix_web::RootSpanBuilder;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, RawLog};
use crate::log_sink::{LogSink, SinkGuard};

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
/// thread, in batches (see `log_sink`): a request never waits for a `write(2)`. Nothing is
/// dropped when the writer falls behind; loggers wait instead. Keep the returned guard alive
/// until exit: dropping it writes out what is still waiting. `None` when the writer thread
/// cannot start: lines go to stdout directly then.
pub fn init(log: &RawLog, rust_log: Option<&str>) -> Option<SinkGuard> {
    let directives = match rust_log {
        Some(value) if !value.trim().is_empty() => value.to_string(),
        _ => format!("{},{QUIET}", log.level),
    };
    let filter =
        EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new(format!("info,{QUIET}")));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let (sink, guard) = match LogSink::start(Box::new(std::io::stdout())) {
        Ok((sink, guard)) => (Some(sink), Some(guard)),
        Err(e) => {
            eprintln!(
                "warning: the log writer thread did not start ({e}); writing the log directly"
            );
            (None, None)
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi);
    let result = match (log.format, sink) {
        // Request lines carry their request id themselves: no span data per line.
        (LogFormat::Json, Some(sink)) => {
            let result = builder
                .event_format(JsonLine)
                .with_writer(sink.clone())
                .try_init();
            if result.is_ok() {
                let _ = DIRECT.set(sink);
            }
            result
        }
        (LogFormat::Json, None) => builder.event_format(JsonLine).try_init(),
        (LogFormat::Text, Some(sink)) => builder.with_writer(sink).try_init(),
        (LogFormat::Text, None) => builder.try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    drop(result);
    guard
}

/// The log sink, when the global subscriber writes JSON: [`request_line`] writes there.
static DIRECT: OnceLock<LogSink> = OnceLock::new();

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`, as `humantime::format_rfc3339_micros` writes it.
const STAMP_LEN: usize = 27;

thread_local! {
    /// The second a thread last stamped, and its `YYYY-MM-DDTHH:MM:SS`: a line's timestamp
    /// is that and its microseconds, without a calendar conversion per line.
    static SECOND: RefCell<(u64, [u8; 19])> = const { RefCell::new((u64::MAX, [0; 19])) };
}

/// The current time in RFC 3339 UTC with microseconds: the same text as tracing-subscriber's
/// default timer and `humantime::format_rfc3339_micros`.
fn timestamp() -> [u8; STAMP_LEN] {
    stamp_at(std::time::SystemTime::now())
}

fn stamp_at(now: std::time::SystemTime) -> [u8; STAMP_LEN] {
    let mut out = [0u8; STAMP_LEN];
    let Ok(since) = now.duration_since(std::time::UNIX_EPOCH) else {
        let text = humantime::format_rfc3339_micros(now).to_string();
        let n = text.len().min(STAMP_LEN);
        out[..n].copy_from_slice(&text.as_bytes()[..n]);
        return out;
    };
    let secs = since.as_secs();
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            let text = humantime::format_rfc3339_seconds(now).to_string();
            cached.1.copy_from_slice(&text.as_bytes()[..19]);
            cached.0 = secs;
        }
        out[..19].copy_from_slice(&cached.1);
    });
    out[19] = b'.';
    let mut micros = since.subsec_micros();
    for slot in out[20..26].iter_mut().rev() {
        *slot = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    out[26] = b'Z';
    out
}

/// The fields of a line [`request_line`] writes, each appended as `,"name":value`. Each
/// method takes that field's key already joined, `,"name":` ([`line_key!`] makes it from the
/// name at compile time): plain ASCII, written as it is, in one copy. Values are escaped as
/// [`JsonLine`] escapes them (serde_json's escapes); an absent optional field is left out, as
/// tracing leaves out a `None`.
pub struct LineFields<'a> {
    line: &'a mut Vec<u8>,
}

/// `,"name":`, the key [`LineFields`] writes before a field's value, for the field `name`.
#[macro_export]
macro_rules! line_key {
    ($name:ident) => {
        concat!(",\"", stringify!($name), "\":")
    };
}

impl LineFields<'_> {
    fn key(&mut self, key: &'static str) {
        debug_assert!(
            key.starts_with(",\"")
                && key.ends_with("\":")
                && key[2..key.len() - 2]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        );
        self.line.extend_from_slice(key.as_bytes());
    }

    pub fn str(&mut self, key: &'static str, value: &str) {
        self.key(key);
        // Ids, names and routes need no escape: the bytes as they are, between quotes,
        // which is what serde_json writes for them (it escapes only `"`, `\` and the
        // controls below 0x20).
        if value.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
            self.line.reserve(value.len() + 2);
            self.line.push(b'"');
            self.line.extend_from_slice(value.as_bytes());
            self.line.push(b'"');
        } else {
            // Into a Vec: cannot fail.
            let _ = serde_json::to_writer(&mut *self.line, value);
        }
    }

    pub fn u64(&mut self, key: &'static str, value: u64) {
        self.key(key);
        self.line
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    /// Not finite (no JSON number for it): `null`, as [`JsonLine`] writes it.
    pub fn f64(&mut self, key: &'static str, value: f64) {
        self.key(key);
        let _ = serde_json::to_writer(&mut *self.line, &value);
    }

    pub fn opt_str(&mut self, key: &'static str, value: Option<&str>) {
        if let Some(value) = value {
            self.str(key, value);
        }
    }

    pub fn opt_u64(&mut self, key: &'static str, value: Option<u64>) {
        if let Some(value) = value {
            self.u64(key, value);
        }
    }

    pub fn opt_f64(&mut self, key: &'static str, value: Option<f64>) {
        if let Some(value) = value {
            self.f64(key, value);
        }
    }
}

/// Writes the line `{"timestamp":..,"level":..,"message":..` and `fill`'s fields straight
/// into the log sink: the same bytes [`JsonLine`] makes of the same event, without tracing's
/// dispatch and field visitors, for the one line of every request. The caller checks that its
/// level is enabled (`tracing::enabled!`, which asks the filter). Returns false, writing
/// nothing, when the log is not JSON: the caller logs through tracing then.
pub fn request_line(
    level: Level,
    message: &'static str,
    fill: impl FnOnce(&mut LineFields<'_>),
) -> bool {
    let Some(sink) = DIRECT.get() else {
        return false;
    };
    with_buffers(|line, _| {
        format_line(line, level, message, fill);
        sink.write_line(line);
    });
    true
}

fn format_line(
    line: &mut Vec<u8>,
    level: Level,
    message: &'static str,
    fill: impl FnOnce(&mut LineFields<'_>),
) {
    start_line(line, &level);
    let mut fields = LineFields { line };
    fields.str(line_key!(message), message);
    fill(&mut fields);
    line.extend_from_slice(b"}\n");
}

/// `{"timestamp":"...","level":"..."`: how every JSON line starts, in the same RFC 3339 UTC
/// form as tracing-subscriber's default timer.
fn start_line(line: &mut Vec<u8>, level: &Level) {
    line.extend_from_slice(b"{\"timestamp\":\"");
    line.extend_from_slice(&timestamp());
    line.extend_from_slice(b"\",\"level\":\"");
    line.extend_from_slice(level.as_str().as_bytes());
    line.push(b'"');
}

/// Runs `f` with this thread's line buffers, emptied (fresh ones for a line written while
/// another is being formatted: a `Debug` impl that logs), and gives back afterwards what
/// grew past [`LINE_KEEP_BYTES`].
fn with_buffers<R>(f: impl FnOnce(&mut Vec<u8>, &mut String) -> R) -> R {
    LINE.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffers) => {
            let (line, scratch) = &mut *buffers;
            line.clear();
            scratch.clear();
            let result = f(line, scratch);
            if line.capacity() > LINE_KEEP_BYTES {
                *line = Vec::new();
            }
            if scratch.capacity() > LINE_KEEP_BYTES {
                *scratch = String::new();
            }
            result
        }
        Err(_) => f(&mut Vec::new(), &mut String::new()),
    })
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
        with_buffers(|line, scratch| {
            start_line(line, event.metadata().level());
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
pub struct RequestId {
    pub text: Arc<str>,
    /// The same id as the `X-Request-Id` the answer and the upstream request carry: made
    /// once and cloned (a reference count), not copied into a new value for each.
    pub header: Option<HeaderValue>,
}

/// An id's text as the bytes of its header value, shared with the id.
struct IdBytes(Arc<str>);

impl AsRef<[u8]> for IdBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// `X-Request-Id`, named once: actix-http's `HeaderMap` and awc parse a `&str` name on every
/// use, and copy one outside the standard set into an allocation of its own.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

impl RequestId {
    /// Accepts 1-128 characters of `[A-Za-z0-9._:-]`; anything else is replaced.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let given = headers.get(X_REQUEST_ID).and_then(|value| {
            let id = value.to_str().ok().filter(|v| {
                !v.is_empty()
                    && v.len() <= 128
                    && v.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')
                    })
            })?;
            Some((id, value))
        });
        match given {
            Some((id, value)) => Self {
                text: id.into(),
                header: Some(value.clone()),
            },
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
        let text = numbered(prefix, COUNTER.fetch_add(1, Ordering::Relaxed));
        let bytes = Bytes::from_owner(IdBytes(Arc::clone(&text)));
        Self {
            header: HeaderValue::from_maybe_shared(bytes).ok(),
            text,
        }
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
            request_id = %id.text,
            method = %request.method(),
            path = %request.path().chars().take(200).collect::<String>()
        );
        request
            .extensions_mut()
            .insert(crate::middleware::context::RequestContext::new(id));
        span
    }

    fn on_request_end<B: MessageBody>(_span: Span, _outcome: &Result<ServiceResponse<B>, Error>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static(value));
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
    fn stamps_are_humantimes_microseconds() {
        use std::time::{Duration, UNIX_EPOCH};
        let base = UNIX_EPOCH + Duration::new(1_764_745_199, 999_999_999);
        // The same second twice (the cached part), the next, a day later, and whole seconds.
        for t in [
            base,
            base - Duration::from_micros(250_001),
            base + Duration::from_nanos(1),
            base + Duration::new(86_400, 123_456_789),
            UNIX_EPOCH,
            UNIX_EPOCH + Duration::from_micros(7),
            std::time::SystemTime::now(),
        ] {
            let ours = stamp_at(t);
            let theirs = humantime::format_rfc3339_micros(t).to_string();
            assert_eq!(std::str::from_utf8(&ours).unwrap(), theirs);
        }
    }

    #[test]
    fn request_lines_are_the_bytes_json_line_writes() {
        let out = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .event_format(JsonLine)
            .with_writer(out.clone())
            .finish();
        let tricky = "quote \" backslash \\ newline \n control \u{1} non-ascii \u{e9}";
        // Nothing to escape (the unescaped path), DEL and non-ASCII included.
        let plain = "team-\u{3b1}_1 caf\u{e9} \u{7f} ~";
        let none: Option<f64> = None;
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(
                request_id = "r-1",
                model = tricky,
                team = plain,
                empty = "",
                status = 502u16,
                duration_ms = 0.25f64,
                ttfb_ms = none,
                nan = f64::NAN,
                charged_tokens = Some(7u64),
                output_cap = None::<u64>,
                error = Some("upstream \"x\" failed"),
                "request"
            );
        });
        let traced = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let mut direct = Vec::new();
        format_line(&mut direct, Level::WARN, "request", |line| {
            line.str(line_key!(request_id), "r-1");
            line.str(line_key!(model), tricky);
            line.str(line_key!(team), plain);
            line.str(line_key!(empty), "");
            line.u64(line_key!(status), 502);
            line.f64(line_key!(duration_ms), 0.25);
            line.opt_f64(line_key!(ttfb_ms), None);
            line.f64(line_key!(nan), f64::NAN);
            line.opt_u64(line_key!(charged_tokens), Some(7));
            line.opt_u64(line_key!(output_cap), None);
            line.opt_str(line_key!(error), Some("upstream \"x\" failed"));
        });
        let direct = String::from_utf8(direct).unwrap();
        // Past the timestamp (its own test above), byte for byte.
        let after = |line: &str| line[line.find("\"level\"").unwrap()..].to_string();
        assert_eq!(after(&direct), after(&traced), "{direct}{traced}");
        assert!(direct.ends_with("}\n") && direct.lines().count() == 1);
        let parsed: serde_json::Value = serde_json::from_str(&direct).unwrap();
        assert_eq!(parsed["model"], tricky);
        assert_eq!(parsed["team"], plain);
        assert!(parsed.get("ttfb_ms").is_none() && parsed["nan"].is_null());
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
            &*RequestId::from_headers(&with("abc-123.X_y:z")).text,
            "abc-123.X_y:z"
        );
        for bad in ["", "has space", "a\"b", "semi;colon"] {
            let id = RequestId::from_headers(&with(Box::leak(bad.to_string().into_boxed_str())));
            assert_ne!(&*id.text, bad);
            // The header the answer carries is the id in use, not the one refused.
            assert_eq!(id.header.unwrap().to_str().unwrap(), &*id.text);
        }
        let long: &'static str = Box::leak("a".repeat(129).into_boxed_str());
        assert!(RequestId::from_headers(&with(long)).text.len() < 129);
        let kept = RequestId::from_headers(&with("abc-123"));
        assert_eq!(kept.header.unwrap().to_str().unwrap(), "abc-123");
        assert_ne!(RequestId::generate(), RequestId::generate());
        for n in [0, 1, 0xf, 0x10, 0xabc, u64::MAX] {
            assert_eq!(&*numbered("5f0c2a9e71b4", n), format!("5f0c2a9e71b4-{n:x}"));
        }
    }
}
