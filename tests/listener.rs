//! Below HTTP, over real sockets: the allowlist and the per-address cap at accept, stalled
//! handshakes, plain HTTP on the HTTPS port, ALPN (HTTP/1.1 only, checked with curl as a
//! real HTTP/2 client), HSTS, the server's cipher order and the generated certificate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::IpAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{read_response, FakeUpstream, Gateway};
use ollama_gateway::metrics::ConnRejection;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Waits (bounded) until `cond` holds; the gateway accepts on its own workers.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A fresh connection from `source`, one GET /healthz; the status and how long it took.
async fn fresh_healthz(gw: &Gateway, source: IpAddr) -> (u16, Duration) {
    let started = Instant::now();
    let mut tls = gw.try_tls_from(source).await.expect("TLS handshake");
    tls.write_all(HEALTHZ).await.unwrap();
    let (status, _, _) = read_response(&mut tls).await;
    (status, started.elapsed())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[actix_rt::test]
async fn stalled_sockets_from_one_address_do_not_lock_out_another() {
    let ollama = FakeUpstream::ollama_ok();
    let gw = Gateway::start(Some(&ollama), None, |raw| raw.server.workers = 2).await;
    let client = ip("127.0.0.1");
    let mut before = Vec::new();
    for _ in 0..7 {
        let (status, took) = fresh_healthz(&gw, client).await;
        assert_eq!(status, 200);
        before.push(took);
    }

    // 2,000 connections from 127.0.0.2 that never send a byte.
    let per_ip = ollama_gateway::config::RawConfig::default()
        .server
        .max_connections_per_ip;
    let mut stalled = Vec::with_capacity(2_000);
    for _ in 0..2_000 {
        stalled.push(gw.tcp_from(ip("127.0.0.2")).await.unwrap());
    }
    let refused = (2_000 - per_ip) as u64;
    until("the gateway to see every stalled connection", || {
        gw.metrics.connection_rejections(ConnRejection::PerIpLimit) >= refused
    })
    .await;

    let mut during = Vec::new();
    for _ in 0..7 {
        let (status, took) = fresh_healthz(&gw, client).await;
        assert_eq!(status, 200, "a client on another address is served");
        during.push(took);
    }
    let (before, during) = (median(before), median(during));
    assert!(
        during < before + Duration::from_millis(100),
        "first answer delayed by {:?} (before {before:?}, during {during:?})",
        during.saturating_sub(before)
    );
    assert_eq!(
        gw.metrics.connection_rejections(ConnRejection::PerIpLimit),
        refused,
        "exactly the connections past the cap were closed"
    );
    drop(stalled);
    gw.stop().await;
}

#[actix_rt::test]
async fn per_address_cap_closes_extra_connections_and_frees_on_close() {
    let ollama = FakeUpstream::ollama_ok();
    let gw = Gateway::start(Some(&ollama), None, |raw| {
        raw.server.max_connections_per_ip = 2;
    })
    .await;
    let source = ip("127.0.0.3");
    let first = gw.try_tls_from(source).await.unwrap();
    let mut second = gw.try_tls_from(source).await.unwrap();
    assert!(
        gw.try_tls_from(source).await.is_err(),
        "a third connection is closed at accept"
    );
    assert_eq!(
        gw.metrics.connection_rejections(ConnRejection::PerIpLimit),
        1
    );
    // Another address is not affected; the held connections still work.
    assert_eq!(fresh_healthz(&gw, ip("127.0.0.1")).await.0, 200);
    second
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut second).await.0, 200);

    // Closing one gives its place back (once the gateway has seen the close).
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    let third = loop {
        if let Ok(tls) = gw.try_tls_from(source).await {
            break tls;
        }
        assert!(
            Instant::now() < deadline,
            "the closed connection's slot came back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    drop((second, third));
    gw.stop().await;
}

#[actix_rt::test]
async fn per_address_cap_of_zero_is_off() {
    let ollama = FakeUpstream::ollama_ok();
    let gw = Gateway::start(Some(&ollama), None, |raw| {
        raw.server.max_connections_per_ip = 0;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(gw.try_tls_from(ip("127.0.0.4")).await.unwrap());
    }
    assert_eq!(
        gw.metrics.connection_rejections(ConnRejection::PerIpLimit),
        0
    );
    drop(held);
    gw.stop().await;
}

#[actix_rt::test]
async fn a_denied_peer_costs_an_accept_and_a_close_only() {
    let ollama = FakeUpstream::ollama_ok();
    let gw = Gateway::start(Some(&ollama), None, |raw| {
        raw.allowlist.cidrs = vec!["127.0.0.1/32".into()];
    })
    .await;
    // No TLS alert, no HTTP: the connection just ends before the first byte.
    let mut tcp = gw.tcp_from(ip("127.0.0.5")).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
        .await
        .expect("closed at once")
        .unwrap_or(0);
    assert_eq!(n, 0, "nothing is sent to a denied peer");
    assert_eq!(gw.metrics.connection_rejections(ConnRejection::Ip), 1);
    assert_eq!(fresh_healthz(&gw, ip("127.0.0.1")).await.0, 200);
    gw.stop().await;
}

#[actix_rt::test]
async fn a_silent_connection_is_closed_after_the_handshake_timeout() {
    let ollama = FakeUpstream::ollama_ok();
    let gw = Gateway::start(Some(&ollama), None, |raw| {
        raw.server.tls_handshake_timeout = Duration::from_millis(200);
    })
    .await;
    let mut tcp = gw.tcp_from(ip("127.0.0.1")).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
        .await
        .expect("closed by the gateway")
        .unwrap_or(0);
    assert_eq!(n, 0);
    until("the timeout to be counted", || {
        gw.metrics
            .connection_rejections(ConnRejection::HandshakeTimeout)
            == 1
    })
    .await;
    gw.stop().await;
}

#[actix_rt::test]
async fn plain_http_on_the_https_port_gets_400_then_close() {
    let ollama = FakeUpstream::ollama_ok();
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;
    let mut tcp = gw.tcp_from(ip("127.0.0.1")).await.unwrap();
    tcp.write_all(b"GET /api/tags HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer))
        .await
        .expect("answered and closed")
        .unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(
        head.contains(&format!("content-length: {}", body.len())),
        "{text}"
    );
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert!(json["error"].as_str().unwrap().contains("HTTPS"), "{body}");
    assert_eq!(
        gw.metrics.connection_rejections(ConnRejection::PlainHttp),
        1
    );

    // curl, as a user would type it: a 400 with the JSON, exit status 0.
    if !common::skip::available(common::skip::runs("curl", &["--version"]), "curl") {
        return;
    }
    let out = Command::new("curl")
        .args([
            "-sS",
            "-w",
            "\n%{http_code}",
            &format!("http://127.0.0.1:{}/", gw.addr.port()),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.ends_with("\n400"), "{stdout}");
    assert!(stdout.contains("speaks HTTPS"), "{stdout}");
    gw.stop().await;
}

/// Requests HTTP/1.1 cannot parse, as a prober sends them over TLS.
const BAD_HTTP: [&[u8]; 4] = [
    // An HTTP/2 client with prior knowledge, ignoring ALPN.
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"GET /healthz HTTP/9.9\r\nHost: localhost\r\n\r\n",
    b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\n{}",
    b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n0\r\n\r\n",
];

#[actix_rt::test]
async fn malformed_http_over_tls_gets_400_and_is_counted() {
    let ollama = FakeUpstream::ollama_ok();
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;
    for (n, request) in BAD_HTTP.iter().enumerate() {
        let mut tls = gw.raw_tls().await;
        tls.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer))
            .await
            .expect("answered and closed")
            .unwrap_or(0);
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 400 "), "{n}: {text}");
        let done = n as u64 + 1;
        until("the bad request to be counted", || {
            gw.metrics.connection_rejections(ConnRejection::BadHttp) == done
        })
        .await;
    }
    assert_eq!(
        gw.metric("gateway_connections_rejected_total{reason=\"bad_http\"}"),
        4.0
    );
    gw.stop().await;
}

fn client_with_alpn(gw: &Gateway, protocols: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut config = (*gw.tls).clone();
    config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[actix_rt::test]
async fn alpn_offers_http_1_1_only() {
    let ollama = FakeUpstream::ollama_ok();
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;
    let name = ServerName::try_from("localhost").unwrap();

    // A client that prefers h2 gets HTTP/1.1.
    let tcp = gw.tcp_from(ip("127.0.0.1")).await.unwrap();
    let mut tls = client_with_alpn(&gw, &[b"h2", b"http/1.1"])
        .connect(name.clone(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    tls.write_all(HEALTHZ).await.unwrap();
    assert_eq!(read_response(&mut tls).await.0, 200);

    // A client that speaks only h2 is refused in the handshake (no common protocol).
    let tcp = gw.tcp_from(ip("127.0.0.1")).await.unwrap();
    assert!(client_with_alpn(&gw, &[b"h2"])
        .connect(name.clone(), tcp)
        .await
        .is_err());
    until("the failed handshake to be counted", || {
        gw.metrics
            .connection_rejections(ConnRejection::HandshakeFailed)
            == 1
    })
    .await;

    // HTTP/2 with prior knowledge (no ALPN): the HTTP/1.1 parser refuses the preface and
    // the connection ends; nothing hangs.
    let tcp = gw.tcp_from(ip("127.0.0.1")).await.unwrap();
    let mut tls = client_with_alpn(&gw, &[]).connect(name, tcp).await.unwrap();
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer))
        .await
        .expect("the connection ends");
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 4") || text.starts_with("HTTP/1.1 5"),
        "{text}"
    );

    // curl with --http2, a real HTTP/2 client, settles on HTTP/1.1 and gets its answer,
    // refusals included.
    if !common::skip::available(common::skip::runs("curl", &["--version"]), "curl") {
        return;
    }
    let cert = gw.dir.0.join("cert.pem");
    for (path, status) in [("/healthz", "200"), ("/api/chat", "401"), ("/nope", "401")] {
        let out = Command::new("curl")
            .args(["-sS", "--http2", "--cacert"])
            .arg(&cert)
            .args(["-w", "\n%{http_version} %{http_code}"])
            .arg(format!("https://localhost:{}{path}", gw.addr.port()))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "curl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.ends_with(&format!("\n1.1 {status}")),
            "{path}: {stdout}"
        );
        assert!(
            stdout.starts_with('{') || path == "/healthz",
            "{path}: JSON body: {stdout}"
        );
    }
    gw.stop().await;
}

#[actix_rt::test]
async fn hsts_on_https_answers_as_configured() {
    let ollama = FakeUpstream::ollama_ok();
    let gw = Gateway::start(Some(&ollama), None, |raw| {
        raw.server.plain_listen = "127.0.0.1:0".into();
    })
    .await;
    let mut tls = gw.try_tls_from(ip("127.0.0.1")).await.unwrap();
    // A refusal carries it too: every HTTPS answer does.
    tls.write_all(b"GET /api/chat HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (status, head, _) = read_response(&mut tls).await;
    assert_eq!(status, 401);
    assert!(
        head.to_ascii_lowercase()
            .contains("strict-transport-security: max-age=31536000\r\n"),
        "{head}"
    );
    gw.stop().await;

    let gw = Gateway::start(Some(&ollama), None, |raw| raw.tls.hsts = String::new()).await;
    let mut tls = gw.try_tls_from(ip("127.0.0.1")).await.unwrap();
    tls.write_all(HEALTHZ).await.unwrap();
    let (_, head, _) = read_response(&mut tls).await;
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("strict-transport-security"),
        "{head}"
    );
    gw.stop().await;
}

#[actix_rt::test]
async fn the_server_chooses_the_cipher_suite() {
    use rustls::crypto::ring::{cipher_suite, default_provider};
    use rustls::pki_types::pem::PemObject as _;
    let ollama = FakeUpstream::ollama_ok();
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;
    // The client lists ChaCha20 first; the server's order puts AES-GCM first.
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
            cipher_suite::TLS13_AES_128_GCM_SHA256,
        ],
        ..default_provider()
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(gw.dir.0.join("cert.pem")).unwrap()
    {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = gw.tcp_from(ip("127.0.0.1")).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.negotiated_cipher_suite().map(|s| s.suite()),
        Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
    );
    gw.stop().await;
}
