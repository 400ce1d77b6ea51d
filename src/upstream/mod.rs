//! Where requests leave the gateway: choosing the upstream by model name, the per-worker
//! HTTP client, and the two upstream kinds.

pub mod anthropic;
mod conn;
pub mod headers;
pub mod manage;
pub mod models;
pub mod ollama;
pub mod openai;
pub mod relay;
pub mod upload;
pub mod v1;

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use actix_service::Service;
use actix_tls::connect::{ConnectError, ConnectInfo, Connection, Resolver};
use actix_web::error::ParseError;
use actix_web::http::Uri;
use awc::error::{PayloadError, SendRequestError};
use bytes::Bytes;
use futures_util::future::LocalBoxFuture;
use tokio::net::TcpStream;
use tokio::time::error::Elapsed;
use tokio::time::Instant;

use crate::config::{Config, Timeouts};
use crate::error::GatewayError;
use crate::secret::Scrubber;

/// Name of the Ollama upstream in messages, logs and metrics.
pub const OLLAMA: &str = "ollama";

/// Largest non-streaming answer the gateway will buffer from an upstream.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;
/// Largest error body read from an upstream (the message is all we need).
pub const MAX_ERROR_BYTES: usize = 64 * 1024;

/// The TCP connector of the upstream leg, setting TCP_NODELAY on every new connection so
/// small writes (one request, one line) are not held back by Nagle's algorithm, and handing
/// awc each one as a [`conn::Upstream`], closed off the request path when its pool drops it.
#[derive(Clone)]
struct NoDelay<S> {
    inner: S,
}

impl<S> Service<ConnectInfo<Uri>> for NoDelay<S>
where
    S: Service<ConnectInfo<Uri>, Response = Connection<Uri, TcpStream>, Error = ConnectError>,
    S::Future: 'static,
{
    type Response = Connection<Uri, conn::Upstream>;
    type Error = ConnectError;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    actix_service::forward_ready!(inner);

    fn call(&self, req: ConnectInfo<Uri>) -> Self::Future {
        let connect = self.inner.call(req);
        Box::pin(async move {
            let conn = connect.await?;
            if let Err(e) = conn.io_ref().set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY on an upstream connection");
            }
            let (io, uri) = conn.into_parts();
            Ok(Connection::new(uri, conn::Upstream::new(io)))
        })
    }
}

/// Builds the HTTP client of one worker (awc clients are not `Send`, so one per worker).
pub fn build_client(timeouts: &Timeouts, tls: Arc<rustls::ClientConfig>) -> awc::Client {
    let tcp = actix_tls::connect::Connector::new(Resolver::default()).service();
    let connector = awc::Connector::new()
        .connector(NoDelay { inner: tcp })
        // Before `rustls_0_23`: awc's `max_http_version` replaces the TLS settings with a
        // default of its own, which would drop `tls`.
        .max_http_version(awc::http::Version::HTTP_11)
        .rustls_0_23(tls)
        .timeout(timeouts.connect)
        .handshake_timeout(timeouts.connect)
        // Bounded by the listener's own connection limit instead.
        .limit(0)
        .conn_keep_alive(Duration::from_secs(30));
    awc::Client::builder()
        .connector(connector)
        .disable_redirects()
        .disable_timeout()
        .no_default_headers()
        .finish()
}

/// TLS settings for upstream connections: the webpki roots, HTTP/1.1.
pub fn client_tls() -> Arc<rustls::ClientConfig> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .unwrap_or_else(|_| {
            // The ring provider supports the default versions; this branch is unreachable.
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        });
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// `d` as `10s`, `5m`, `300ms`.
fn took(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}

/// The client-facing error for a request that got no response from `upstream`, in words
/// (awc's own texts are for developers: "Internal error: connector has been disconnected"
/// is an upstream that closed the connection without answering).
pub fn send_error(upstream: &str, error: SendRequestError, timeouts: &Timeouts) -> GatewayError {
    use awc::error::ConnectError as C;
    let upstream = upstream.to_string();
    let unreachable = |detail: String| GatewayError::UpstreamConnect {
        upstream: upstream.clone(),
        detail,
    };
    match error {
        SendRequestError::Connect(C::Timeout) => GatewayError::UpstreamTimeout {
            detail: format!(
                "after {} waiting for a connection (timeouts.connect)",
                took(timeouts.connect)
            ),
            upstream,
        },
        SendRequestError::Timeout => GatewayError::UpstreamTimeout {
            detail: format!(
                "after {} waiting for the answer to begin (timeouts.first_byte)",
                took(timeouts.first_byte)
            ),
            upstream,
        },
        SendRequestError::Connect(C::Disconnected) => GatewayError::UpstreamBroken {
            upstream,
            what: "closed the connection without answering".into(),
        },
        SendRequestError::Connect(C::Resolver(e)) => {
            unreachable(format!("its host name does not resolve ({e})"))
        }
        SendRequestError::Connect(C::NoRecords) => {
            unreachable("its host name has no address".into())
        }
        SendRequestError::Connect(C::Io(e)) => unreachable(connect_failure(&e)),
        SendRequestError::Connect(e) => unreachable(e.to_string()),
        SendRequestError::Send(e) => GatewayError::UpstreamBroken {
            upstream,
            what: io_failure(&e, "while the request was being sent").into(),
        },
        SendRequestError::Response(ParseError::Io(e)) => GatewayError::UpstreamBroken {
            upstream,
            what: io_failure(&e, "before answering").into(),
        },
        SendRequestError::Response(ParseError::Incomplete) => GatewayError::UpstreamBroken {
            upstream,
            what: "closed the connection in the middle of the response headers".into(),
        },
        SendRequestError::Response(ParseError::Timeout) => GatewayError::UpstreamTimeout {
            detail: "while sending the response headers".into(),
            upstream,
        },
        SendRequestError::Response(e) => GatewayError::UpstreamProtocol {
            upstream,
            detail: format!("the response headers are malformed ({e})"),
        },
        SendRequestError::Custom(e, _) => unreachable(e.to_string()),
        other => unreachable(other.to_string()),
    }
}

/// Why a connection could not be made, in words.
fn connect_failure(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    if let Some(tls) = e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
        return format!("the TLS handshake failed ({tls})");
    }
    match e.kind() {
        K::ConnectionRefused => "it refused the connection".into(),
        K::ConnectionReset => "it reset the connection while it was being made".into(),
        K::HostUnreachable | K::NetworkUnreachable => format!("no route to it ({e})"),
        _ => format!("the connection failed ({e})"),
    }
}

/// What a peer did to a connection that broke, in words, ending with `when`.
fn io_failure(e: &std::io::Error, when: &str) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionReset => format!("reset the connection {when}"),
        K::ConnectionAborted => format!("aborted the connection {when}"),
        K::UnexpectedEof | K::BrokenPipe => format!("closed the connection {when}"),
        K::TimedOut => format!("stopped responding: the connection timed out {when}"),
        _ => format!("broke the connection {when} ({e})"),
    }
}

/// What a peer did to a body that broke off, in words, ending with `when` (the Display of
/// [`PayloadError`] is Rust Debug output: `payload reached EOF before completing:
/// Some(Os { code: 104, .. })`).
pub fn payload_failure(e: &PayloadError, when: &str) -> String {
    match e {
        PayloadError::Incomplete(None) => format!("closed the connection {when}"),
        PayloadError::Incomplete(Some(e)) | PayloadError::Io(e) => io_failure(e, when),
        PayloadError::EncodingCorrupted => {
            "sent a body whose content encoding cannot be decoded".into()
        }
        PayloadError::UnknownLength => "sent a body of unknown length".into(),
        PayloadError::Overflow => "sent a body larger than the limit".into(),
        other => format!("broke off the body {when} ({other})"),
    }
}

/// An upstream body's read error, in words.
pub trait BodyError {
    /// What the upstream did, to follow "upstream <name> ".
    fn what(&self) -> Cow<'static, str>;
}

const BEFORE_COMPLETE: &str = "before the answer was complete";

impl BodyError for std::io::Error {
    fn what(&self) -> Cow<'static, str> {
        io_failure(self, BEFORE_COMPLETE).into()
    }
}

impl BodyError for PayloadError {
    fn what(&self) -> Cow<'static, str> {
        payload_failure(self, BEFORE_COMPLETE).into()
    }
}

// Upstream text enters the gateway in three ways: an error body (any status), a 2xx body
// that is not an answer, and the failing step of a stream (`relay`). Each goes through
// `Config::scrubber` there, so no configured upstream key reaches a client or the log:
// bodies relayed as they are with `scrub_json_bytes` (which also finds a key the upstream
// JSON-escaped), and any text the gateway decoded from them to build its own message again
// once decoded.

/// The error for a whole 2xx answer that could not be read as what it should be:
/// JSON cut short is a broken answer (awc ends a chunked body cut by a close as if it were
/// complete), anything else is invalid; `detail` may quote the body, so it is scrubbed.
pub fn unreadable_answer(
    upstream: &str,
    body: &[u8],
    detail: String,
    scrubber: &Scrubber,
) -> GatewayError {
    let upstream = upstream.to_string();
    match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
        Err(e) if e.is_eof() => GatewayError::UpstreamBroken {
            upstream,
            what: "ended the answer before it was complete".into(),
        },
        _ => GatewayError::UpstreamProtocol {
            upstream,
            detail: scrubber.scrub_string(detail),
        },
    }
}

/// Reads an upstream's error body (of any status, or a 2xx that is not the answer asked
/// for), at most [`MAX_ERROR_BYTES`] of it, scrubbed of every configured upstream key, in
/// whatever JSON encoding the upstream wrote it.
pub async fn read_error_body<S>(
    resp: &mut awc::ClientResponse<S>,
    upstream: &str,
    deadline: Instant,
    config: &Config,
) -> Result<Bytes, GatewayError>
where
    S: futures_util::Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    let body = read_body(resp, upstream, MAX_ERROR_BYTES, deadline, &config.timeouts).await?;
    Ok(config.scrubber.scrub_json_bytes(body))
}

/// What an error status becomes when its body was larger than [`MAX_ERROR_BYTES`]: the
/// status still says what happened; the body was only its explanation.
pub fn error_body_too_large(
    upstream: &str,
    status: actix_web::http::StatusCode,
    limit: usize,
) -> GatewayError {
    GatewayError::UpstreamStatus {
        upstream: upstream.to_string(),
        status,
        message: format!(
            "upstream {upstream} answered {} with an error body larger than the {limit} bytes the gateway reads of one",
            status.as_u16()
        ),
        retry_after: None,
    }
}

/// `tokio::time::timeout_at(deadline, fut)`, with no timer when `fut` is ready at its first
/// poll, as a small body usually is (it came in the same read as its head). Tokio's
/// `timeout_at` builds its timer entry before polling (a clone of the runtime's handle) and
/// cancels it when dropped, under the timer driver's lock even if it was never registered
/// (tokio 1.54 `TimerEntry::cancel`): on every request, though it rarely waits. Tokio's
/// `Timeout` also polls the future before its timer, so a ready future gives its value even
/// past the deadline in both; a future pending at first is polled once more here before the
/// timer is.
async fn until<F: Future>(deadline: Instant, fut: F) -> Result<F::Output, Elapsed> {
    let mut fut = std::pin::pin!(fut);
    match std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await {
        Poll::Ready(out) => Ok(out),
        Poll::Pending => tokio::time::timeout_at(deadline, fut).await,
    }
}

/// Reads a whole upstream body of at most `limit` bytes before `deadline` (the end of
/// `timeouts.total`).
pub async fn read_body<S>(
    resp: &mut awc::ClientResponse<S>,
    upstream: &str,
    limit: usize,
    deadline: Instant,
    timeouts: &Timeouts,
) -> Result<Bytes, GatewayError>
where
    S: futures_util::Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    // awc ends a body cut by a clean close as if it were complete: compare with the length
    // the upstream announced.
    let declared = resp
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    match until(deadline, resp.body().limit(limit)).await {
        Err(_) => Err(GatewayError::UpstreamTimeout {
            upstream: upstream.to_string(),
            detail: format!(
                "after {} before the whole answer arrived (timeouts.total)",
                took(timeouts.total)
            ),
        }),
        Ok(Err(PayloadError::Overflow)) => Err(GatewayError::UpstreamTooLarge {
            upstream: upstream.to_string(),
            limit,
        }),
        Ok(Err(e)) => Err(GatewayError::UpstreamBroken {
            upstream: upstream.to_string(),
            what: e.what(),
        }),
        Ok(Ok(bytes)) if declared.is_some_and(|n| bytes.len() < n) => {
            Err(GatewayError::UpstreamBroken {
                upstream: upstream.to_string(),
                what: PayloadError::Incomplete(None).what(),
            })
        }
        Ok(Ok(bytes)) => Ok(bytes),
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use awc::error::ConnectError;

    use super::*;

    fn timeouts() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(10),
            first_byte: Duration::from_secs(30),
            idle: Duration::from_secs(300),
            total: Duration::from_secs(3600),
        }
    }

    fn send(e: SendRequestError) -> (String, Option<&'static str>) {
        let e = send_error("ollama", e, &timeouts());
        (e.to_string(), e.fault().map(|f| f.label()))
    }

    #[test]
    fn awc_errors_are_said_in_words_and_counted_by_kind() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        for (error, text, kind) in [
            (
                SendRequestError::Connect(ConnectError::Io(refused)),
                "upstream ollama is unreachable: it refused the connection",
                "connect",
            ),
            (
                SendRequestError::Connect(ConnectError::Disconnected),
                "upstream ollama closed the connection without answering",
                "truncated",
            ),
            (
                SendRequestError::Connect(ConnectError::Timeout),
                "upstream ollama timed out after 10s waiting for a connection (timeouts.connect)",
                "timeout",
            ),
            (
                SendRequestError::Timeout,
                "upstream ollama timed out after 30s waiting for the answer to begin (timeouts.first_byte)",
                "timeout",
            ),
            (
                SendRequestError::Send(io::Error::from(io::ErrorKind::ConnectionReset)),
                "upstream ollama reset the connection while the request was being sent",
                "truncated",
            ),
            (
                SendRequestError::Response(ParseError::Header),
                "upstream ollama sent an invalid response: the response headers are malformed (invalid Header provided)",
                "protocol",
            ),
        ] {
            assert_eq!(send(error), (text.to_string(), Some(kind)));
        }
    }

    #[test]
    fn broken_bodies_are_said_in_words() {
        let reset = || io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(
            PayloadError::Incomplete(Some(reset())).what(),
            "reset the connection before the answer was complete"
        );
        assert_eq!(
            PayloadError::Incomplete(None).what(),
            "closed the connection before the answer was complete"
        );
        assert_eq!(
            payload_failure(&PayloadError::Io(reset()), "before the body was complete"),
            "reset the connection before the body was complete"
        );
        let other = PayloadError::Io(io::Error::other("weird")).what();
        assert_eq!(
            other,
            "broke the connection before the answer was complete (weird)"
        );
    }

    /// A future that is pending once, then ready with `value`.
    async fn after_one_wait(value: u8) -> u8 {
        tokio::task::yield_now().await;
        value
    }

    #[actix_rt::test]
    async fn until_answers_as_tokio_timeout_at_does() {
        let past = Instant::now() - Duration::from_secs(1);
        let later = Instant::now() + Duration::from_secs(3600);
        // Ready at once: its value, even past the deadline (tokio's `Timeout` polls the
        // future before its timer too).
        assert_eq!(until(past, async { 7 }).await, Ok(7));
        assert_eq!(
            tokio::time::timeout_at(past, async { 7 }).await.ok(),
            Some(7)
        );
        // Pending at first: its value when it ends before the deadline; timed out when it
        // does not end.
        assert_eq!(until(later, after_one_wait(8)).await, Ok(8));
        assert!(until(past, std::future::pending::<()>()).await.is_err());
    }
}
