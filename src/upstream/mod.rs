//! Where requests leave the gateway: choosing the upstream by model name, the per-worker
//! HTTP client, and the two upstream kinds.

pub mod headers;
pub mod ollama;
pub mod openai;
pub mod relay;

use std::sync::Arc;
use std::time::Duration;

use actix_service::Service;
use actix_tls::connect::{ConnectError, ConnectInfo, Connection, Resolver};
use actix_web::http::Uri;
use awc::error::{PayloadError, SendRequestError};
use bytes::Bytes;
use futures_util::future::LocalBoxFuture;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::{Config, OpenAiConfig, Timeouts};
use crate::error::GatewayError;

/// Where a model name sends the request.
#[derive(Debug, Clone, Copy)]
pub enum Route<'c, 'm> {
    /// Everything without a configured prefix goes to Ollama, unchanged.
    Ollama,
    /// `<prefix><model>` goes to this OpenAI-compatible upstream as `<model>`.
    OpenAi {
        upstream: &'c OpenAiConfig,
        model: &'m str,
    },
}

/// Picks the upstream for `model`: the longest matching configured prefix, else Ollama.
pub fn route<'c, 'm>(config: &'c Config, model: &'m str) -> Route<'c, 'm> {
    for upstream in &config.upstreams {
        if let Some(rest) = model.strip_prefix(upstream.prefix.as_str()) {
            return Route::OpenAi {
                upstream,
                model: rest,
            };
        }
    }
    Route::Ollama
}

/// Name of the Ollama upstream in messages, logs and metrics.
pub const OLLAMA: &str = "ollama";

/// Largest non-streaming answer the gateway will buffer from an upstream.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;
/// Largest error body read from an upstream (the message is all we need).
pub const MAX_ERROR_BYTES: usize = 64 * 1024;

/// The TCP connector of the upstream leg, setting TCP_NODELAY on every new connection so
/// small writes (one request, one line) are not held back by Nagle's algorithm.
#[derive(Clone)]
struct NoDelay<S> {
    inner: S,
}

impl<S> Service<ConnectInfo<Uri>> for NoDelay<S>
where
    S: Service<ConnectInfo<Uri>, Response = Connection<Uri, TcpStream>, Error = ConnectError>,
    S::Future: 'static,
{
    type Response = Connection<Uri, TcpStream>;
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
            Ok(conn)
        })
    }
}

/// Builds the HTTP client of one worker (awc clients are not `Send`, so one per worker).
pub fn build_client(timeouts: &Timeouts, tls: Arc<rustls::ClientConfig>) -> awc::Client {
    let tcp = actix_tls::connect::Connector::new(Resolver::default()).service();
    let connector = awc::Connector::new()
        .connector(NoDelay { inner: tcp })
        .rustls_0_23(tls)
        .timeout(timeouts.connect)
        .handshake_timeout(timeouts.connect)
        .max_http_version(awc::http::Version::HTTP_11)
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

/// The client-facing error for a request that got no response from `upstream`.
pub fn send_error(upstream: &str, error: SendRequestError, timeouts: &Timeouts) -> GatewayError {
    let upstream = upstream.to_string();
    match error {
        SendRequestError::Connect(awc::error::ConnectError::Timeout) => {
            GatewayError::UpstreamTimeout {
                upstream,
                detail: format!(
                    "no connection within {}",
                    humantime::format_duration(timeouts.connect)
                ),
            }
        }
        SendRequestError::Connect(e) => GatewayError::UpstreamConnect {
            upstream,
            detail: e.to_string(),
        },
        SendRequestError::Timeout => GatewayError::UpstreamTimeout {
            upstream,
            detail: format!(
                "no response within {}",
                humantime::format_duration(timeouts.first_byte)
            ),
        },
        other => GatewayError::UpstreamConnect {
            upstream,
            detail: other.to_string(),
        },
    }
}

/// Reads a whole upstream body of at most `limit` bytes before `deadline`.
pub async fn read_body<S>(
    resp: &mut awc::ClientResponse<S>,
    upstream: &str,
    limit: usize,
    deadline: Instant,
) -> Result<Bytes, GatewayError>
where
    S: futures_util::Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    match tokio::time::timeout_at(deadline, resp.body().limit(limit)).await {
        Err(_) => Err(GatewayError::UpstreamTimeout {
            upstream: upstream.to_string(),
            detail: "the answer did not arrive within the total time limit".into(),
        }),
        Ok(Err(PayloadError::Overflow)) => Err(GatewayError::UpstreamProtocol {
            upstream: upstream.to_string(),
            detail: format!("the answer is larger than {limit} bytes"),
        }),
        Ok(Err(e)) => Err(GatewayError::UpstreamConnect {
            upstream: upstream.to_string(),
            detail: format!("the connection failed while reading the answer: {e}"),
        }),
        Ok(Ok(bytes)) => Ok(bytes),
    }
}
