//! Below HTTP: what every accepted TCP connection passes before it may carry a request.
//!
//! In order, on the worker that accepted it:
//! 1. the **gate**: the peer must be in the allowlist (or be a trusted proxy) and hold fewer
//!    than `server.max_connections_per_ip` connections; otherwise it is closed at once, and
//!    costs one accept and a close, no TLS work;
//! 2. the **first byte** (HTTPS listener): a TLS handshake starts with 0x16; anything else is
//!    plain HTTP on the HTTPS port, answered with 400 as nginx does, then closed;
//! 3. the **handshake**, bounded in time (`server.tls_handshake_timeout`, counted from the
//!    accept) and in number (`server.max_tls_handshakes`, all workers together). A peer that
//!    sends nothing holds no handshake slot, only its own per-address slot;
//! 4. HTTP/1.1 (actix-http's h1 dispatcher). ALPN offers `http/1.1` only: the gateway does not
//!    serve HTTP/2, so an h2 stream never outlives the limits written for connections. A
//!    request it cannot parse gets actix-http's 400 (no body) and the connection is closed,
//!    counted and noted as `bad_http`.
//!
//! The per-address count lives here, shared by all workers; it is per replica by nature
//! (connections are local), unlike the request limits behind `limits`.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_http::error::DispatchError;
use actix_service::{fn_factory, fn_service, Service, ServiceFactory};
use actix_web::rt::net::TcpStream;
use dashmap::DashMap;
use futures_util::FutureExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::Semaphore;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::allowlist::Allowlist;
use crate::metrics::{ConnRejection, Metrics, CONNECTION_REJECTIONS};

/// The first byte of every TLS record that opens a handshake (ContentType handshake).
const TLS_HANDSHAKE: u8 = 0x16;
/// Most bytes of a plain-HTTP request head read before it is answered.
const PLAIN_HEAD_LIMIT: usize = 16 * 1024;
/// After answering plain HTTP: most bytes, and longest wait, for the rest of the request to
/// be read and dropped, so that the close sends a FIN and not a reset that hides the 400.
const PLAIN_DRAIN_LIMIT: usize = 64 * 1024;
const PLAIN_DRAIN_TIME: Duration = Duration::from_secs(1);
/// What plain HTTP on the HTTPS port gets (nginx answers the same status).
const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
content-type: application/json\r\n\
content-length: 77\r\n\
connection: close\r\n\
\r\n\
{\"error\":\"this port speaks HTTPS: send the request to https:// on this port\"}";

/// The connection gate and what the stages after it share; one per server, all workers.
pub struct Edge {
    allowlist: Allowlist,
    /// 0 = no cap.
    per_ip: usize,
    open: DashMap<IpAddr, usize, foldhash::fast::RandomState>,
    handshakes: Semaphore,
    handshake_timeout: Duration,
    metrics: Arc<Metrics>,
    notes: [LogEvery; CONNECTION_REJECTIONS.len()],
}

impl Edge {
    pub fn new(
        allowlist: Allowlist,
        per_ip: usize,
        max_handshakes: usize,
        handshake_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            allowlist,
            per_ip,
            open: DashMap::default(),
            handshakes: Semaphore::new(max_handshakes.min(Semaphore::MAX_PERMITS)),
            handshake_timeout,
            metrics,
            notes: Default::default(),
        })
    }

    /// Admits a new connection from `peer`, or says why not (counted and noted here).
    fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<Slot> {
        let peer = peer.to_canonical();
        if !self.allowlist.admits_peer(peer) {
            self.reject(ConnRejection::Ip, peer);
            return None;
        }
        if self.per_ip == 0 {
            return Some(Slot(None));
        }
        let mut open = self.open.entry(peer).or_insert(0);
        if *open >= self.per_ip {
            drop(open);
            self.reject(ConnRejection::PerIpLimit, peer);
            return None;
        }
        *open += 1;
        Some(Slot(Some((Arc::clone(self), peer))))
    }

    fn reject(&self, why: ConnRejection, peer: IpAddr) {
        self.metrics.connection_rejected(why);
        if let Some(suppressed) = self.notes[why as usize].due() {
            let what = match why {
                ConnRejection::BadHttp => {
                    "connection closed after a request that is not valid HTTP/1.1 (answered 400)"
                }
                _ => "connection closed before any request",
            };
            tracing::info!(
                reason = why.as_str(),
                client = %peer,
                suppressed,
                "{what}; further ones for this reason are noted at most every 10 s"
            );
        }
    }

    /// How a connection's HTTP/1.1 dispatcher ended, if not cleanly: a request it could not
    /// parse is the client's, noted like the closes below HTTP (actix-http's own line for it
    /// is filtered out, see `telemetry::init`); broken or timed-out connections are common
    /// and only debug; the rest would be a fault of the gateway's.
    fn connection_ended(&self, peer: IpAddr, error: DispatchError) {
        match error {
            DispatchError::Parse(_) => self.reject(ConnRejection::BadHttp, peer.to_canonical()),
            DispatchError::Io(_)
            | DispatchError::SlowRequestTimeout
            | DispatchError::DisconnectTimeout
            | DispatchError::HandlerDroppedPayload => {
                tracing::debug!(client = %peer, error = %error, "connection ended with an error");
            }
            error => {
                tracing::error!(client = %peer, error = %error, "connection ended with an error");
            }
        }
    }

    fn release(&self, peer: IpAddr) {
        self.open.remove_if_mut(&peer, |_, open| {
            *open = open.saturating_sub(1);
            *open == 0
        });
    }
}

/// A connection's place in its address's count, given back when the connection ends.
struct Slot(Option<(Arc<Edge>, IpAddr)>);

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some((edge, peer)) = self.0.take() {
            edge.release(peer);
        }
    }
}

/// At most one log line per interval, with the count of the ones it stood for.
#[derive(Default)]
struct LogEvery {
    /// Milliseconds since `EPOCH` when the next line may be written.
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

const NOTE_INTERVAL_MS: u64 = 10_000;

impl LogEvery {
    /// `Some(how many were suppressed since the last line)` when a line is due.
    fn due(&self) -> Option<u64> {
        let now = millis_since_start();
        let next = self.next_ms.load(Ordering::Relaxed);
        if now < next
            || self
                .next_ms
                .compare_exchange(
                    next,
                    now + NOTE_INTERVAL_MS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

fn millis_since_start() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The HTTPS listener's per-worker service: gate, first byte, handshake, then `h1` (the
/// HTTP/1.1 dispatcher over the TLS stream).
pub fn https<F>(
    edge: Arc<Edge>,
    tls: TlsAcceptor,
    h1: F,
) -> impl ServiceFactory<TcpStream, Config = (), Response = (), Error = (), InitError = ()>
where
    F: ServiceFactory<
            (TlsStream<TcpStream>, Option<SocketAddr>),
            Config = (),
            Response = (),
            Error = DispatchError,
        > + 'static,
    F::Service: 'static,
{
    serve_with(h1, move |h1: Rc<F::Service>, stream: TcpStream| {
        let edge = Arc::clone(&edge);
        let tls = tls.clone();
        async move {
            let Some((peer, _slot)) = gate(&edge, &stream) else {
                return;
            };
            let Some(stream) = handshake(&edge, &tls, stream, peer.ip()).await else {
                return;
            };
            if let Err(e) = h1.call((stream, Some(peer))).await {
                edge.connection_ended(peer.ip(), e);
            }
        }
    })
}

/// The plain-HTTP listener's per-worker service: gate, then `h1` over the TCP stream.
pub fn plain<F>(
    edge: Arc<Edge>,
    h1: F,
) -> impl ServiceFactory<TcpStream, Config = (), Response = (), Error = (), InitError = ()>
where
    F: ServiceFactory<
            (TcpStream, Option<SocketAddr>),
            Config = (),
            Response = (),
            Error = DispatchError,
        > + 'static,
    F::Service: 'static,
{
    serve_with(h1, move |h1: Rc<F::Service>, stream: TcpStream| {
        let edge = Arc::clone(&edge);
        async move {
            let Some((peer, _slot)) = gate(&edge, &stream) else {
                return;
            };
            if let Err(e) = h1.call((stream, Some(peer))).await {
                edge.connection_ended(peer.ip(), e);
            }
        }
    })
}

/// Builds `inner` once per worker and serves each connection with `conn(inner, stream)`.
fn serve_with<F, I, C, Fut>(
    inner: F,
    conn: C,
) -> impl ServiceFactory<TcpStream, Config = (), Response = (), Error = (), InitError = ()>
where
    F: ServiceFactory<I, Config = ()> + 'static,
    F::Service: 'static,
    C: Fn(Rc<F::Service>, TcpStream) -> Fut + Clone + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let inner = Rc::new(inner);
    fn_factory(move || {
        let init = inner.new_service(());
        let conn = conn.clone();
        async move {
            let service = Rc::new(init.await.map_err(|_| {
                tracing::error!("the HTTP service could not start on this worker");
            })?);
            Ok::<_, ()>(fn_service(move |stream: TcpStream| {
                // Boxed, a connection's state is one allocation of its own size. Unboxed it
                // was held inline by an async block around it and again by actix-server's
                // spawned task around that (each copies the future it awaits): 19 KB a
                // connection instead of the few KB it needs (S5 in BENCHMARKS.md).
                let fut = Box::pin(conn(Rc::clone(&service), stream));
                fut.map(Ok::<(), ()>)
            }))
        }
    })
}

/// Stage 1: the peer's address, and its slot, if it may connect.
fn gate(edge: &Arc<Edge>, stream: &TcpStream) -> Option<(SocketAddr, Slot)> {
    let peer = stream.peer_addr().ok()?;
    let slot = edge.admit(peer.ip())?;
    // Small writes (one NDJSON line) go out at once, not after Nagle's 40 ms.
    let _ = stream.set_nodelay(true);
    Some((peer, slot))
}

/// Stages 2 and 3, within the handshake timeout from now.
async fn handshake(
    edge: &Edge,
    tls: &TlsAcceptor,
    stream: TcpStream,
    peer: IpAddr,
) -> Option<TlsStream<TcpStream>> {
    let deadline = tokio::time::Instant::now() + edge.handshake_timeout;
    let outcome = tokio::time::timeout_at(deadline, async {
        let mut first = [0u8; 1];
        match stream.peek(&mut first).await {
            // Closed before a byte: nothing to count.
            Ok(0) | Err(_) => return Err(None),
            Ok(_) if first[0] != TLS_HANDSHAKE => {
                edge.reject(ConnRejection::PlainHttp, peer);
                answer_plain_http(stream, deadline).await;
                return Err(None);
            }
            Ok(_) => {}
        }
        let _permit = edge
            .handshakes
            .acquire()
            .await
            .map_err(|_| Some(ConnRejection::HandshakeFailed))?;
        tls.accept(stream).await.map_err(|e| {
            tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
            Some(ConnRejection::HandshakeFailed)
        })
    })
    .await;
    match outcome {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(Some(why))) => {
            edge.reject(why, peer);
            None
        }
        Ok(Err(None)) => None,
        Err(_elapsed) => {
            edge.reject(ConnRejection::HandshakeTimeout, peer);
            None
        }
    }
}

/// Plain HTTP on the HTTPS port: read the request head (bounded), answer 400 with a body
/// that says why, close, and read what else comes for a moment so the answer is not lost to
/// a reset.
async fn answer_plain_http(mut stream: TcpStream, deadline: tokio::time::Instant) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout_at(deadline, async {
        while head.len() < PLAIN_HEAD_LIMIT && memchr::memmem::find(&head, b"\r\n\r\n").is_none() {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    if stream.write_all(PLAIN_HTTP_ANSWER).await.is_err() || stream.shutdown().await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(PLAIN_DRAIN_TIME, async {
        let mut drained = 0;
        while drained < PLAIN_DRAIN_LIMIT {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_answer_has_the_length_it_declares() {
        let text = std::str::from_utf8(PLAIN_HTTP_ANSWER).unwrap_or_default();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_default();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        assert!(json["error"].as_str().is_some_and(|e| e.contains("HTTPS")));
    }

    #[test]
    fn log_every_writes_once_per_interval_and_counts_the_rest() {
        let note = LogEvery::default();
        assert_eq!(note.due(), Some(0));
        assert_eq!(note.due(), None);
        assert_eq!(note.due(), None);
        note.next_ms.store(0, Ordering::Relaxed);
        assert_eq!(note.due(), Some(2));
    }
}
