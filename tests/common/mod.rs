//! Test harness: the gateway on 127.0.0.1:0 over real TLS, and fake upstreams of our own
//! that record what they receive and answer as each test scripts them.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod admin;
pub mod anthropic;
pub mod auth;
pub mod budget;
pub mod gen;
pub mod skip;
pub mod v1;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use ollama_gateway::config::{Config, RawConfig};
use ollama_gateway::server;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// The OpenAI key the tests configure; it must only ever reach the fake OpenAI.
pub const UPSTREAM_KEY: &str = "sk-test-upstream-0123456789abcdef";

/// The client API key every test gateway accepts (id `test-key`, team `test`).
pub const TEST_KEY: &str = "ogw_test_client_key_0123456789";

/// The gateway binary, as cargo built it for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_ollama-gateway");

/// The committed config/gateway.toml, as a `--config` argument.
pub fn repo_config() -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/gateway.toml")
        .display()
        .to_string()
}

/// A keys-file entry for `key`, with optional extra TOML lines.
pub fn key_entry(id: &str, team: &str, key: &str, extra: &str) -> String {
    format!(
        "{}{extra}\n",
        ollama_gateway::keys::entry_toml(id, team, key)
    )
}

/// A request as a fake upstream received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }
}

/// How the response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// A proper chunked terminator.
    Terminate,
    /// Close the connection without a terminator.
    Close,
    /// Keep the connection open until the gateway closes it.
    Hold,
    /// Reset the connection (SO_LINGER 0, then close): the gateway reads ECONNRESET.
    Reset,
}

/// What a fake answers.
#[derive(Debug, Clone)]
pub enum Reply {
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// A chunked body; each element is written and flushed on its own.
    Chunked {
        status: u16,
        content_type: String,
        chunks: Vec<Vec<u8>>,
        end: End,
    },
    /// Read the request, never answer.
    Hang,
    /// Write these bytes as they are (a head and a body that may lie about its length),
    /// then close the connection.
    Raw(Vec<u8>),
    /// Chunked: send `before`, wait until the test opens `gate`, send `after`, terminate.
    Gated {
        content_type: String,
        before: Vec<Vec<u8>>,
        gate: Arc<tokio::sync::Notify>,
        after: Vec<Vec<u8>>,
    },
}

impl Reply {
    pub fn json(status: u16, body: &Value) -> Self {
        Self::Full {
            status,
            headers: vec![(
                "Content-Type".into(),
                "application/json; charset=utf-8".into(),
            )],
            body: serde_json::to_vec(body).unwrap(),
        }
    }

    pub fn ndjson(lines: &[Value]) -> Self {
        Self::ndjson_until(lines, End::Terminate)
    }

    /// NDJSON lines, one chunk each, then `end`.
    pub fn ndjson_until(lines: &[Value], end: End) -> Self {
        Self::Chunked {
            status: 200,
            content_type: "application/x-ndjson".into(),
            chunks: lines
                .iter()
                .map(|l| {
                    let mut v = serde_json::to_vec(l).unwrap();
                    v.push(b'\n');
                    v
                })
                .collect(),
            end,
        }
    }

    /// A 200 with a chunked body of `content_type`, one chunk each, then `end`.
    pub fn stream(content_type: &str, chunks: Vec<Vec<u8>>, end: End) -> Self {
        Self::Chunked {
            status: 200,
            content_type: content_type.into(),
            chunks,
            end,
        }
    }

    pub fn sse(chunks: Vec<Vec<u8>>) -> Self {
        Self::Chunked {
            status: 200,
            content_type: "text/event-stream".into(),
            chunks,
            end: End::Terminate,
        }
    }
}

type Handler = dyn Fn(&Recorded) -> Reply + Send + Sync;

/// A scripted HTTP/1.1 upstream on 127.0.0.1:0, on its own thread and runtime.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    closed: tokio::sync::Mutex<mpsc::UnboundedReceiver<()>>,
    count: tokio::sync::watch::Receiver<usize>,
    connections: Arc<AtomicUsize>,
}

impl FakeUpstream {
    pub fn start(handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Self {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (closed_tx, closed_rx) = mpsc::unbounded_channel();
        let (count_tx, count_rx) = tokio::sync::watch::channel(0usize);
        let count_tx = Arc::new(count_tx);
        let handler: Arc<Handler> = Arc::new(handler);
        let recs = Arc::clone(&requests);
        let conns = Arc::clone(&connections);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).unwrap();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    conns.fetch_add(1, Ordering::SeqCst);
                    let handler = Arc::clone(&handler);
                    let recs = Arc::clone(&recs);
                    let closed_tx = closed_tx.clone();
                    let count_tx = Arc::clone(&count_tx);
                    tokio::spawn(async move {
                        serve_connection(stream, handler, recs, count_tx).await;
                        let _ = closed_tx.send(());
                    });
                }
            });
        });
        Self {
            addr,
            requests,
            closed: tokio::sync::Mutex::new(closed_rx),
            count: count_rx,
            connections,
        }
    }

    /// A fake Ollama that answers every request with a whole answer "ok".
    pub fn ollama_ok() -> Self {
        Self::start(|_| {
            Reply::json(
                200,
                &serde_json::json!({"model":"llama3","created_at":"2025-01-01T00:00:00Z",
                    "message":{"role":"assistant","content":"ok"},"done":true}),
            )
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    pub fn last(&self) -> Recorded {
        self.requests().pop().expect("the fake received a request")
    }

    /// Waits until a connection to the fake has been closed by the gateway.
    pub async fn wait_closed(&self, within: Duration) -> bool {
        closes(&self.closed, within).await
    }

    /// Waits until the fake has received `n` requests in all.
    pub async fn wait_requests(&self, n: usize, within: Duration) -> bool {
        reaches(&self.count, n, within).await
    }

    /// How many TCP connections the fake has accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Waits until `count` reaches `n`, at most `within`.
pub async fn reaches(
    count: &tokio::sync::watch::Receiver<usize>,
    n: usize,
    within: Duration,
) -> bool {
    let mut rx = count.clone();
    let reached = tokio::time::timeout(within, rx.wait_for(|c| *c >= n))
        .await
        .is_ok_and(|r| r.is_ok());
    reached
}

/// Waits until `closed` says a connection closed, at most `within`.
pub async fn closes(
    closed: &tokio::sync::Mutex<mpsc::UnboundedReceiver<()>>,
    within: Duration,
) -> bool {
    let mut rx = closed.lock().await;
    matches!(tokio::time::timeout(within, rx.recv()).await, Ok(Some(())))
}

async fn serve_connection(
    mut stream: TcpStream,
    handler: Arc<Handler>,
    recs: Arc<Mutex<Vec<Recorded>>>,
    count: Arc<tokio::sync::watch::Sender<usize>>,
) {
    stream.set_nodelay(true).ok();
    let mut buf = Vec::new();
    loop {
        let Some(req) = read_request(&mut stream, &mut buf).await else {
            return;
        };
        let n = {
            let mut recs = recs.lock().unwrap();
            recs.push(req.clone());
            recs.len()
        };
        count.send_replace(n);
        match handler(&req) {
            Reply::Full {
                status,
                headers,
                body,
            } => {
                let mut head = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
                for (k, v) in headers {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
                head.push_str("\r\n");
                if stream.write_all(head.as_bytes()).await.is_err()
                    || stream.write_all(&body).await.is_err()
                {
                    return;
                }
            }
            Reply::Chunked {
                status,
                content_type,
                chunks,
                end,
            } => {
                let head = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n"
                );
                if stream.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for chunk in chunks {
                    if chunk.is_empty() {
                        continue;
                    }
                    let framed =
                        [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
                    if stream.write_all(&framed).await.is_err() || stream.flush().await.is_err() {
                        return;
                    }
                }
                match end {
                    End::Terminate => {
                        if stream.write_all(b"0\r\n\r\n").await.is_err() {
                            return;
                        }
                    }
                    End::Close => return,
                    End::Reset => {
                        stream.set_zero_linger().unwrap();
                        return;
                    }
                    End::Hold => {
                        wait_for_close(&mut stream).await;
                        return;
                    }
                }
            }
            Reply::Hang => {
                wait_for_close(&mut stream).await;
                return;
            }
            Reply::Raw(bytes) => {
                let _ = stream.write_all(&bytes).await;
                return;
            }
            Reply::Gated {
                content_type,
                before,
                gate,
                after,
            } => {
                let head = format!(
                    "HTTP/1.1 200 X\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n"
                );
                if stream.write_all(head.as_bytes()).await.is_err()
                    || write_chunks(&mut stream, before).await.is_err()
                {
                    return;
                }
                gate.notified().await;
                if write_chunks(&mut stream, after).await.is_err()
                    || stream.write_all(b"0\r\n\r\n").await.is_err()
                {
                    return;
                }
            }
        }
    }
}

async fn write_chunks(stream: &mut TcpStream, chunks: Vec<Vec<u8>>) -> std::io::Result<()> {
    for chunk in chunks.into_iter().filter(|c| !c.is_empty()) {
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
        stream.write_all(&framed).await?;
        stream.flush().await?;
    }
    Ok(())
}

/// Reads (and drops) what the peer sends until it closes the connection.
pub async fn wait_for_close<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) {
    let mut sink = [0u8; 1024];
    while let Ok(n) = stream.read(&mut sink).await {
        if n == 0 {
            return;
        }
    }
}

async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Recorded> {
    let header_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        let mut tmp = [0u8; 8192];
        let n = stream.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < header_end + len {
        let mut tmp = [0u8; 65536];
        let n = stream.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let body = buf[header_end..header_end + len].to_vec();
    buf.drain(..header_end + len);
    Some(Recorded {
        method,
        path,
        headers,
        body,
    })
}

/// A gateway running in this process on 127.0.0.1:0 with a test certificate.
pub struct Gateway {
    pub addr: SocketAddr,
    pub url: String,
    pub tls: Arc<rustls::ClientConfig>,
    pub handle: ServerHandle,
    pub dir: TempDir,
    pub reloader: Arc<ollama_gateway::reload::Reloader>,
    /// The token budgets' ledger, and its flushing thread (flushes once more when dropped).
    pub ledger: Arc<ollama_gateway::budget::LocalLedger>,
    pub flusher: ollama_gateway::budget::Flusher,
    pub metrics: Arc<ollama_gateway::metrics::Metrics>,
    pub keys_file: PathBuf,
    /// `http://127.0.0.1:PORT` of the admin listener (metrics, health).
    pub admin_url: String,
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ogw-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A raw config for tests: loopback, one worker, a fresh certificate, both upstreams pointed
/// at the given fakes (or at a closed port).
pub fn test_config(
    dir: &TempDir,
    ollama: Option<&FakeUpstream>,
    openai: Option<&FakeUpstream>,
) -> RawConfig {
    let cert = dir.0.join("cert.pem");
    let key = dir.0.join("key.pem");
    if !cert.exists() {
        ollama_gateway::tls::generate_self_signed(&cert, &key).unwrap();
    }
    let keys_file = dir.0.join("keys.toml");
    if !keys_file.exists() {
        std::fs::write(&keys_file, key_entry("test-key", "test", TEST_KEY, "")).unwrap();
    }
    let mut raw = RawConfig::default();
    raw.server.listen = "127.0.0.1:0".into();
    raw.server.workers = 1;
    raw.auth.keys_file = keys_file.display().to_string();
    raw.admin.listen = "127.0.0.1:0".into();
    raw.state.dir = dir.0.join("state").display().to_string();
    // Generous defaults so limits only bite in the tests about limits.
    raw.limits.requests_per_minute = 100_000;
    raw.limits.burst = 10_000;
    raw.limits.max_in_flight = 1_000;
    raw.tls.cert = cert.display().to_string();
    raw.tls.key = key.display().to_string();
    raw.ollama.base_url = ollama.map_or_else(closed_port_url, FakeUpstream::url);
    let up = raw.upstreams.get_mut("openai").unwrap();
    up.base_url = format!(
        "{}/v1",
        openai.map_or_else(closed_port_url, FakeUpstream::url)
    );
    up.api_key = ollama_gateway::secret::Secret::new(UPSTREAM_KEY);
    raw
}

/// A URL where nothing listens. The port stays bound, without a listen, for the rest of
/// the process: a connection to it is refused, and no socket another test binds at port
/// 0 (a fake, a gateway's own listener) can be given it, as it could were it released.
pub fn closed_port_url() -> String {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    std::mem::forget(socket);
    format!("http://{addr}")
}

impl Gateway {
    /// Starts a gateway in front of the fakes; `tweak` adjusts the config first.
    pub async fn start(
        ollama: Option<&FakeUpstream>,
        openai: Option<&FakeUpstream>,
        tweak: impl FnOnce(&mut RawConfig),
    ) -> Self {
        let dir = TempDir::new("gw");
        let mut raw = test_config(&dir, ollama, openai);
        tweak(&mut raw);
        Self::start_raw(raw, dir).await
    }

    pub async fn start_raw(raw: RawConfig, dir: TempDir) -> Self {
        let cert_path = PathBuf::from(&raw.tls.cert);
        let keys_file = PathBuf::from(&raw.auth.keys_file);
        let config = Config::from_raw(raw).unwrap();
        let running = server::start(config).unwrap();
        let handle = running.server.handle();
        let admin_url = running
            .admin_addr
            .map(|a| format!("http://{a}"))
            .unwrap_or_default();
        if let Some(admin) = running.admin {
            actix_rt::spawn(admin);
        }
        actix_rt::spawn(running.server);
        let addr = running.https_addr;
        Self {
            addr,
            url: format!("https://127.0.0.1:{}", addr.port()),
            tls: client_tls(&cert_path),
            handle,
            dir,
            reloader: running.reloader,
            metrics: running.metrics,
            ledger: running.ledger,
            flusher: running.flusher,
            keys_file,
            admin_url,
        }
    }

    /// Replaces the keys file and applies it now (what the periodic check or SIGHUP does).
    pub fn set_keys(&self, text: &str) {
        std::fs::write(&self.keys_file, text).unwrap();
        self.reloader.check();
    }

    /// An HTTPS client that trusts the test certificate.
    pub fn client(&self) -> awc::Client {
        let connector = awc::Connector::new().rustls_0_23(Arc::clone(&self.tls));
        awc::Client::builder()
            .connector(connector)
            .timeout(Duration::from_secs(30))
            .finish()
    }

    /// POSTs `body` to /api/chat; returns status, headers and the whole body.
    pub async fn chat(&self, body: &Value) -> (u16, awc::http::header::HeaderMap, Vec<u8>) {
        self.post_raw("/api/chat", serde_json::to_vec(body).unwrap(), &[])
            .await
    }

    /// POSTs with the test key as a Bearer token, unless `headers` bring their own credentials.
    pub async fn post_raw(
        &self,
        path: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> (u16, awc::http::header::HeaderMap, Vec<u8>) {
        let own = headers.iter().any(|(k, _)| {
            k.eq_ignore_ascii_case("authorization") || k.eq_ignore_ascii_case("x-api-key")
        });
        let bearer = format!("Bearer {TEST_KEY}");
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if !own {
            all.push(("authorization", &bearer));
        }
        self.post_exact(path, body, &all).await
    }

    /// POSTs with exactly these headers (no key added).
    pub async fn post_exact(
        &self,
        path: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> (u16, awc::http::header::HeaderMap, Vec<u8>) {
        let mut req = self
            .client()
            .post(format!("{}{path}", self.url))
            .insert_header(("content-type", "application/json"));
        for (k, v) in headers {
            req = req.append_header((*k, *v));
        }
        let mut resp = req.send_body(body).await.expect("gateway answers");
        let bytes = resp
            .body()
            .limit(64 * 1024 * 1024)
            .await
            .expect("whole body");
        (
            resp.status().as_u16(),
            resp.headers().clone(),
            bytes.to_vec(),
        )
    }

    /// Opens a raw TLS connection (for byte-level checks and disconnects).
    pub async fn raw_tls(&self) -> tokio_rustls::client::TlsStream<TcpStream> {
        self.raw_tls_from("127.0.0.1".parse().unwrap()).await
    }

    /// A raw TLS connection from a chosen loopback source address (127.0.0.2, ...).
    pub async fn raw_tls_from(
        &self,
        source: std::net::IpAddr,
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        self.try_tls_from(source).await.unwrap()
    }

    /// A TCP connection from a chosen loopback source address, nothing sent yet.
    pub async fn tcp_from(&self, source: std::net::IpAddr) -> std::io::Result<TcpStream> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source, 0))?;
        socket.connect(self.addr).await
    }

    /// A TLS connection from `source`, or the error that ended its handshake.
    pub async fn try_tls_from(
        &self,
        source: std::net::IpAddr,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = self.tcp_from(source).await?;
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&self.tls));
        connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
    }

    /// The value of one series of the gateway's metrics, such as
    /// `gateway_upstream_errors_total{kind="connect",upstream="ollama"}`.
    pub fn metric(&self, series: &str) -> f64 {
        let text = String::from_utf8(self.metrics.render()).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
            .trim()
            .parse()
            .unwrap()
    }

    /// `gateway_upstream_errors_total` for one upstream and kind.
    pub fn upstream_errors(&self, upstream: &str, kind: &str) -> f64 {
        self.metric(&format!(
            r#"gateway_upstream_errors_total{{kind="{kind}",upstream="{upstream}"}}"#
        ))
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
    }

    /// Runs `python3 -c script` (off the test's thread) with `GW` (the gateway's URL),
    /// `GW_CA` (its certificate) and `env`; checks it succeeded; its output, parsed as JSON.
    pub async fn python(&self, script: &'static str, env: &[(&str, &str)]) -> Value {
        let mut all = vec![
            ("GW".to_string(), self.url.clone()),
            (
                "GW_CA".to_string(),
                self.dir.0.join("cert.pem").display().to_string(),
            ),
        ];
        all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        python_json(script, all).await
    }
}

/// Runs python3 on `script` against `gw` (its URL, CA file and the test key in the
/// environment as `GW`, `GW_CA`, `GW_KEY`) and parses what it prints as JSON; a failing
/// script fails the test with its stderr.
pub async fn run_python(gw: &Gateway, script: &'static str) -> Value {
    gw.python(script, &[("GW_KEY", TEST_KEY)]).await
}

/// Runs `python3 -c script` off the test's thread with `env` (and without the caller's
/// `OLLAMA_API_KEY`, which the official client would send); checks it succeeded; its
/// output, parsed as JSON.
pub async fn python_json(script: &'static str, env: Vec<(String, String)>) -> Value {
    let output = actix_rt::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args(["-c", script])
            .env_remove("OLLAMA_API_KEY")
            .envs(env)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// A rustls client config trusting exactly the certificate at `pem`.
pub fn client_tls(pem: &std::path::Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pem).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// The `error` of a JSON error answer, checking it is sent as JSON.
pub fn json_error(headers: &awc::http::header::HeaderMap, body: &[u8]) -> String {
    let content_type = headers.get("content-type").unwrap().to_str().unwrap();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let v: Value = serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("JSON error body: {:?}", String::from_utf8_lossy(body)));
    v["error"].as_str().unwrap().to_string()
}

/// Splits an NDJSON body into parsed lines, checking each ends in `\n`.
pub fn ndjson(body: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(body).expect("UTF-8 body");
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "body ends mid-line: {text:?}"
    );
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("line {l:?} is not JSON: {e}")))
        .collect()
}

/// Reads a raw HTTP/1.1 response until the chunked terminator or EOF; returns the bytes and
/// whether the terminator was seen.
pub async fn read_raw_response<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    within: Duration,
) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let read = async {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    if out.ends_with(b"\r\n0\r\n\r\n") {
                        return true;
                    }
                }
            }
        }
    };
    let terminated = tokio::time::timeout(within, read).await.unwrap_or(false);
    (out, terminated)
}

/// Ollama's answer lines for a stream of `tokens`.
pub fn ollama_stream_lines(model: &str, tokens: &[&str]) -> Vec<Value> {
    let mut lines: Vec<Value> = tokens
        .iter()
        .map(|t| {
            serde_json::json!({"model": model, "created_at": "2025-08-08T08:27:50.537Z",
                "message": {"role": "assistant", "content": t}, "done": false})
        })
        .collect();
    lines.push(serde_json::json!({"model": model, "created_at": "2025-08-08T08:27:51.000Z",
        "message": {"role": "assistant", "content": ""}, "done": true, "done_reason": "stop",
        "total_duration": 1000, "load_duration": 10, "prompt_eval_count": 5, "eval_count": tokens.len()}));
    lines
}

/// OpenAI SSE events for a stream of `tokens`, ending with finish_reason, usage and [DONE].
pub fn openai_sse(tokens: &[&str], finish: &str) -> Vec<Vec<u8>> {
    let mut out = vec![b"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n".to_vec()];
    for t in tokens {
        let chunk = serde_json::json!({"id": "c1", "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": t}, "finish_reason": null}]});
        out.push(format!("data: {chunk}\n\n").into_bytes());
    }
    out.push(format!("data: {{\"id\":\"c1\",\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"{finish}\"}}]}}\n\n").into_bytes());
    out.push(b"data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":12,\"total_tokens\":21}}\n\n".to_vec());
    out.push(b"data: [DONE]\n\n".to_vec());
    out
}

/// A raw HTTP/1.1 POST /api/chat with the test key (for raw TLS connections).
pub fn raw_chat_request(body: &str, extra_headers: &str) -> String {
    format!(
        "POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nAuthorization: Bearer {TEST_KEY}\r\n{extra_headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Sends `request` on a new raw TLS connection from `source`; returns the status code and
/// the raw response text.
pub async fn raw_exchange(gw: &Gateway, source: &str, request: &str) -> (u16, String) {
    let mut tls = gw.raw_tls_from(source.parse().unwrap()).await;
    tls.write_all(request.as_bytes()).await.unwrap();
    let (status, head, body) = read_response(&mut tls).await;
    (status, format!("{head}{}", String::from_utf8_lossy(&body)))
}

/// Reads one HTTP/1.1 response with a Content-Length body from a raw stream; returns the
/// status and the body. Leaves the connection usable for the next request.
pub async fn read_one_response<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> (u16, Vec<u8>) {
    let (status, _, body) = read_response(stream).await;
    (status, body)
}

/// Reads one HTTP/1.1 response (Content-Length, or chunked until its terminator); returns
/// the status, the head as text and the body bytes (chunk framing left in place). Whatever
/// the same reads brought after it is dropped: for pipelined answers, use
/// `read_pipelined_response`.
pub async fn read_response<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
) -> (u16, String, Vec<u8>) {
    read_pipelined_response(stream, &mut Vec::new()).await
}

/// Reads one HTTP/1.1 response as `read_response` does, starting with the bytes already in
/// `pending` and leaving there what came after it (the next pipelined answer, or part of
/// it): two answers can arrive in one read.
pub async fn read_pipelined_response<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    pending: &mut Vec<u8>,
) -> (u16, String, Vec<u8>) {
    let mut buf = std::mem::take(pending);
    let mut tmp = [0u8; 8192];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut tmp))
            .await
            .expect("response head in time")
            .unwrap();
        assert!(n > 0, "connection closed before a response");
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let lower = head.to_ascii_lowercase();
    let status = lower.split_whitespace().nth(1).unwrap().parse().unwrap();
    let len: Option<usize> = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap());
    let end_of = |buf: &[u8]| match len {
        Some(len) => (buf.len() >= head_end + len).then_some(head_end + len),
        // The last chunk: `0` on a line of its own, after the head's or a chunk's CRLF.
        None => buf[head_end - 2..]
            .windows(7)
            .position(|w| w == b"\r\n0\r\n\r\n")
            .map(|p| head_end - 2 + p + 7),
    };
    while end_of(&buf).is_none() {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut tmp))
            .await
            .expect("response body in time")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let end = end_of(&buf).unwrap_or(buf.len());
    *pending = buf.split_off(end);
    (status, head, buf[head_end..].to_vec())
}
