//! The edge, over real TLS sockets: API keys, per-key limits, the brute-force throttle,
//! the IP allowlist with trusted proxies, hostile-input limits, and reloads.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{
    key_entry, ollama_stream_lines, raw_chat_request, raw_exchange, read_one_response,
    FakeUpstream, Gateway, Reply, TEST_KEY,
};
use ollama_gateway::metrics::ConnRejection;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BODY: &str =
    r#"{"model":"llama3","messages":[{"role":"user","content":"hi"}],"stream":false}"#;

fn error_of(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("JSON body: {:?}", String::from_utf8_lossy(body)));
    v["error"].as_str().unwrap().to_string()
}

async fn post_with(
    gw: &Gateway,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, awc::http::header::HeaderMap, Vec<u8>) {
    gw.post_exact(path, BODY.as_bytes().to_vec(), headers).await
}

#[actix_rt::test]
async fn keys_from_either_header_everything_else_is_401() {
    let ollama = FakeUpstream::ollama_ok();
    let gw = Gateway::start(Some(&ollama), None, |raw| raw.auth.max_failures = 100).await;
    gw.set_keys(&format!(
        "{}{}",
        key_entry("test-key", "test", TEST_KEY, ""),
        key_entry("off", "test", "ogw_disabled_key", "enabled = false")
    ));
    let bearer = format!("Bearer {TEST_KEY}");
    assert_eq!(
        post_with(&gw, "/api/chat", &[("authorization", &bearer)])
            .await
            .0,
        200
    );
    assert_eq!(
        post_with(&gw, "/api/chat", &[("x-api-key", TEST_KEY)])
            .await
            .0,
        200
    );
    assert_eq!(
        post_with(
            &gw,
            "/api/chat",
            &[("Authorization", &format!("bearer {TEST_KEY}"))]
        )
        .await
        .0,
        200,
        "scheme is case-insensitive"
    );

    type Case = (String, Vec<(&'static str, String)>, &'static str);
    let cases: Vec<Case> = vec![
        ("/api/chat".into(), vec![], "missing API key"),
        (
            "/api/chat".into(),
            vec![("authorization", "Bearer ogw_wrong".into())],
            "invalid API key",
        ),
        (
            "/api/chat".into(),
            vec![("x-api-key", "ogw_wrong".into())],
            "invalid API key",
        ),
        (
            "/api/chat".into(),
            vec![("authorization", "Basic dXNlcjpwYXNz".into())],
            "invalid API key",
        ),
        (
            "/api/chat".into(),
            vec![("x-api-key", "ogw_disabled_key".into())],
            "disabled",
        ),
        (
            format!("/api/chat?api_key={TEST_KEY}&key={TEST_KEY}"),
            vec![],
            "missing API key",
        ),
        ("/api/tags".into(), vec![], "missing API key"),
        ("/metrics".into(), vec![], "missing API key"),
    ];
    for (path, headers, needle) in &cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, resp_headers, body) = post_with(&gw, path, &headers).await;
        assert_eq!(status, 401, "{path} {headers:?}");
        assert_eq!(
            resp_headers.get("www-authenticate").unwrap(),
            "Bearer realm=\"ollama-gateway\""
        );
        let msg = error_of(&body);
        assert!(msg.contains(needle), "{path}: {msg}");
        assert!(!msg.contains(TEST_KEY));
    }
    let mut resp = gw
        .client()
        .get(format!("{}/healthz", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "liveness needs no key");
    let _ = resp.body().await;
    assert_eq!(
        ollama.requests().len(),
        3,
        "no rejected request reached the upstream"
    );
    assert_eq!(gw.metrics.rejections("auth"), cases.len() as u64);
    gw.stop().await;
}

#[actix_rt::test]
async fn model_allowlist_is_403() {
    let ollama = FakeUpstream::ollama_ok();
    let openai = FakeUpstream::start(|_| {
        Reply::json(
            200,
            &json!({"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}),
        )
    });
    let gw = Gateway::start(Some(&ollama), Some(&openai), |_| {}).await;
    gw.set_keys(&key_entry(
        "team-a-ci",
        "team-a",
        TEST_KEY,
        r#"models = ["llama3:*", "openai/gpt-4o-mini"]"#,
    ));
    for (model, status) in [
        ("llama3:instruct", 200),
        ("openai/gpt-4o-mini", 200),
        ("mistral:7b", 403),
        ("openai/gpt-4o", 403),
        ("llama3.1", 403),
        // A name without a tag is its :latest, which llama3:* allows (as Ollama names it).
        ("llama3", 200),
    ] {
        let (got, _, body) = gw
            .chat(&json!({"model": model, "messages":[{"role":"user","content":"x"}], "stream": false}))
            .await;
        assert_eq!(got, status, "{model}: {}", String::from_utf8_lossy(&body));
        if status == 403 {
            assert!(error_of(&body).contains("not allowed"));
        }
    }
    assert_eq!(ollama.requests().len() + openai.requests().len(), 3);
    assert_eq!(gw.metrics.rejections("model_not_allowed"), 3);
    gw.stop().await;
}

#[actix_rt::test]
async fn bucket_is_exact_under_50_concurrent_requests_across_workers() {
    let ollama = FakeUpstream::ollama_ok();
    let gw = Gateway::start(Some(&ollama), None, |raw| raw.server.workers = 2).await;
    gw.set_keys(&key_entry(
        "burst",
        "t",
        TEST_KEY,
        "requests_per_minute = 1\nburst = 20",
    ));
    let client = gw.client();
    let bearer = format!("Bearer {TEST_KEY}");
    let requests = (0..50).map(|_| {
        client
            .post(format!("{}/api/chat", gw.url))
            .insert_header(("authorization", bearer.as_str()))
            .send_body(BODY)
    });
    let results = futures_util::future::join_all(requests).await;
    let mut ok = 0;
    let mut limited = Vec::new();
    for r in results {
        let resp = r.unwrap();
        match resp.status().as_u16() {
            200 => {
                ok += 1;
                assert_eq!(
                    resp.headers().get("ratelimit-policy").unwrap(),
                    "\"default\";q=1;w=60"
                );
                assert!(resp
                    .headers()
                    .get("ratelimit")
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .starts_with("\"default\";r="));
            }
            429 => limited.push(resp),
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(ok, 20, "exactly the bucket passes");
    assert_eq!(limited.len(), 30);
    let mut resp = limited.pop().unwrap();
    assert_eq!(
        resp.headers().get("retry-after").unwrap(),
        "60",
        "one request a minute: a minute's wait"
    );
    assert_eq!(
        resp.headers().get("ratelimit").unwrap(),
        "\"default\";r=0;t=60"
    );
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"]
        .as_str()
        .unwrap()
        .contains("rate limit exceeded for API key burst"));
    assert_eq!(ollama.requests().len(), 20);
    assert_eq!(gw.metrics.rejections("rate_limit"), 30);
    gw.stop().await;
}

#[actix_rt::test]
async fn retry_after_follows_the_rate() {
    let ollama = FakeUpstream::ollama_ok();
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;
    gw.set_keys(&key_entry(
        "slow",
        "t",
        TEST_KEY,
        "requests_per_minute = 6\nburst = 1",
    ));
    assert_eq!(gw.post_raw("/api/chat", BODY.into(), &[]).await.0, 200);
    let (status, headers, _) = gw.post_raw("/api/chat", BODY.into(), &[]).await;
    assert_eq!(status, 429);
    let secs: u64 = headers
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (9..=10).contains(&secs),
        "six a minute: about ten seconds, got {secs}"
    );
    gw.stop().await;
}

/// Opens a stream on a raw TLS connection and reads until its first line arrived.
async fn open_stream(gw: &Gateway) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut tls = gw.raw_tls().await;
    let body = r#"{"model":"hold","messages":[]}"#;
    tls.write_all(raw_chat_request(body, "").as_bytes())
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("\"done\":false") {
        let n = tls.read(&mut buf).await.unwrap();
        assert!(n > 0, "stream started: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    tls
}

#[actix_rt::test]
async fn in_flight_cap_is_held_by_open_streams() {
    let first_line = format!("{}\n", ollama_stream_lines("hold", &["a"])[0]).into_bytes();
    let ollama = FakeUpstream::start(move |req| {
        if req.json()["model"] == "hold" {
            Reply::Chunked {
                status: 200,
                content_type: "application/x-ndjson".into(),
                chunks: vec![first_line.clone()],
                end: common::End::Hold,
            }
        } else {
            Reply::json(
                200,
                &json!({"model":"quick","message":{"role":"assistant","content":"ok"},"done":true}),
            )
        }
    });
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;
    gw.set_keys(&key_entry("pair", "t", TEST_KEY, "max_in_flight = 2"));
    let quick = r#"{"model":"quick","messages":[],"stream":false}"#;

    let one = open_stream(&gw).await;
    let _two = open_stream(&gw).await;
    let (status, headers, body) = gw.post_raw("/api/chat", quick.into(), &[]).await;
    assert_eq!(status, 429);
    assert_eq!(headers.get("retry-after").unwrap(), "1");
    assert!(error_of(&body).contains("in flight"), "{}", error_of(&body));
    assert_eq!(gw.metrics.rejections("in_flight"), 1);

    drop(one);
    assert!(ollama.wait_closed(Duration::from_secs(10)).await);
    // The slot is released as the stream's body is dropped; wait for that, bounded.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, _) = gw.post_raw("/api/chat", quick.into(), &[]).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 429);
        assert!(
            tokio::time::Instant::now() < deadline,
            "slot never released"
        );
        tokio::task::yield_now().await;
    }
    gw.stop().await;
}

#[actix_rt::test]
async fn repeated_bad_keys_ban_the_address_even_for_good_keys() {
    let ollama = FakeUpstream::ollama_ok();
    let gw = Gateway::start(Some(&ollama), None, |raw| {
        raw.auth.max_failures = 3;
        raw.auth.ban = Duration::from_secs(120);
    })
    .await;
    let bad = raw_chat_request(BODY, "").replace(TEST_KEY, "ogw_guess");
    for _ in 0..3 {
        assert_eq!(raw_exchange(&gw, "127.0.0.3", &bad).await.0, 401);
    }
    let (status, text) = raw_exchange(&gw, "127.0.0.3", &bad).await;
    assert_eq!(status, 429, "{text}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 60"),
        "{text}"
    );
    // Banned: even the right key gets 429, so a correct guess is not revealed.
    let (status, _) = raw_exchange(&gw, "127.0.0.3", &raw_chat_request(BODY, "")).await;
    assert_eq!(status, 429);
    // Other addresses are unaffected.
    assert_eq!(
        raw_exchange(&gw, "127.0.0.4", &raw_chat_request(BODY, ""))
            .await
            .0,
        200
    );
    assert_eq!(gw.metrics.rejections("auth_throttled"), 2);
    assert_eq!(gw.metrics.rejections("auth"), 3);
    gw.stop().await;
}

#[actix_rt::test]
async fn allowlist_checks_the_peer_and_ignores_spoofed_headers() {
    let ollama = FakeUpstream::ollama_ok();
    let gw = Gateway::start(Some(&ollama), None, |raw| {
        raw.allowlist.cidrs = vec!["127.0.0.1/32".into()];
    })
    .await;
    let good = raw_chat_request(BODY, "");
    assert_eq!(raw_exchange(&gw, "127.0.0.1", &good).await.0, 200);
    // A peer outside the allowlist is closed at accept: no handshake, so no header it
    // could send (a spoofed X-Forwarded-For, a key) is ever read.
    for _ in 0..3 {
        let refused = gw.try_tls_from("127.0.0.2".parse().unwrap()).await;
        assert!(refused.is_err(), "closed before the TLS handshake");
    }
    assert_eq!(gw.metrics.connection_rejections(ConnRejection::Ip), 3);
    assert_eq!(ollama.requests().len(), 1);
    gw.stop().await;
}

#[actix_rt::test]
async fn forwarded_headers_count_only_from_trusted_proxies() {
    let ollama = FakeUpstream::ollama_ok();
    let gw = Gateway::start(Some(&ollama), None, |raw| {
        raw.allowlist.cidrs = vec!["10.0.0.0/8".into()];
        raw.allowlist.trusted_proxies = vec!["127.0.0.2".into()];
    })
    .await;
    let with = |h: &str| raw_chat_request(BODY, h);
    for (source, headers, status) in [
        ("127.0.0.2", "X-Forwarded-For: 10.1.2.3\r\n", 200),
        ("127.0.0.2", "X-Forwarded-For: 203.0.113.9\r\n", 403),
        (
            "127.0.0.2",
            "X-Forwarded-For: 10.9.9.9, 203.0.113.9\r\n",
            403,
        ),
        (
            "127.0.0.2",
            "X-Forwarded-For: 203.0.113.9, 10.1.2.3\r\n",
            200,
        ),
        ("127.0.0.2", "Forwarded: for=\"10.4.4.4:5000\"\r\n", 200),
        ("127.0.0.2", "", 403),
    ] {
        let (got, text) = raw_exchange(&gw, source, &with(headers)).await;
        assert_eq!(got, status, "{source} {headers:?}: {text}");
        if status == 403 {
            assert!(text.contains(r#"{"error":"access denied"}"#), "{text}");
            assert!(
                !text.to_ascii_lowercase().contains("www-authenticate"),
                "a denied address learns nothing else"
            );
        }
    }
    // An untrusted peer outside the allowlist is closed at accept, whatever it would claim.
    assert!(gw.try_tls_from("127.0.0.1".parse().unwrap()).await.is_err());
    assert_eq!(gw.metrics.rejections("ip"), 3);
    assert_eq!(gw.metrics.connection_rejections(ConnRejection::Ip), 1);
    gw.stop().await;
}

#[actix_rt::test]
async fn header_limits_are_431() {
    let ollama = FakeUpstream::ollama_ok();
    let gw = Gateway::start(Some(&ollama), None, |raw| {
        raw.server.max_headers = 20;
        raw.server.max_header_bytes = 2048;
    })
    .await;
    let many: String = (0..25).map(|i| format!("X-Filler-{i}: x\r\n")).collect();
    let (status, text) = raw_exchange(&gw, "127.0.0.1", &raw_chat_request(BODY, &many)).await;
    assert_eq!(status, 431, "{text}");
    assert!(text.contains("header fields, at most 20"), "{text}");
    let big = format!("X-Big: {}\r\n", "y".repeat(3000));
    let (status, text) = raw_exchange(&gw, "127.0.0.1", &raw_chat_request(BODY, &big)).await;
    assert_eq!(status, 431, "{text}");
    assert!(text.contains("bytes of headers"), "{text}");
    assert_eq!(gw.metrics.rejections("header_too_large"), 2);
    assert!(ollama.requests().is_empty());
    gw.stop().await;
}

#[actix_rt::test]
async fn slow_clients_are_cut_off() {
    let ollama = FakeUpstream::ollama_ok();
    let gw = Gateway::start(Some(&ollama), None, |raw| {
        raw.server.request_header_timeout = Duration::from_millis(300);
    })
    .await;
    // Slowloris: a request head that never ends.
    let mut tls = gw.raw_tls().await;
    tls.write_all(b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nX-Slow: 1\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the connection was not closed");
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    gw.stop().await;

    // A body that stops halfway.
    let gw = Gateway::start(Some(&ollama), None, |raw| {
        raw.server.request_header_timeout = Duration::from_secs(5);
        raw.server.request_body_timeout = Duration::from_millis(300);
    })
    .await;
    let mut tls = gw.raw_tls().await;
    let head = raw_chat_request("", "").replace("Content-Length: 0", "Content-Length: 100");
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(br#"{"model":"#).await.unwrap();
    let (status, body) = read_one_response(&mut tls).await;
    assert_eq!(status, 408);
    assert!(
        error_of(&body).contains("did not arrive"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert!(ollama.requests().is_empty());
    gw.stop().await;
}

#[actix_rt::test]
async fn keys_file_reloads_without_restart_or_dropping_streams() {
    let gate = Arc::new(tokio::sync::Notify::new());
    let lines = ollama_stream_lines("hold", &["before", "after"]);
    let as_chunks = |ls: &[Value]| {
        ls.iter()
            .map(|l| format!("{l}\n").into_bytes())
            .collect::<Vec<_>>()
    };
    let (before, after) = (as_chunks(&lines[..1]), as_chunks(&lines[1..]));
    let fake_gate = Arc::clone(&gate);
    let ollama = FakeUpstream::start(move |req| {
        if req.json()["model"] == "hold" {
            Reply::Gated {
                content_type: "application/x-ndjson".into(),
                before: before.clone(),
                gate: Arc::clone(&fake_gate),
                after: after.clone(),
            }
        } else {
            Reply::json(
                200,
                &json!({"model":"m","message":{"role":"assistant","content":"ok"},"done":true}),
            )
        }
    });
    let gw = Gateway::start(Some(&ollama), None, |raw| {
        raw.server.reload_interval = Duration::from_millis(50);
        raw.auth.max_failures = 100;
    })
    .await;
    let new_key = "ogw_second_key_abcdef";
    let with_key = |k: &str| vec![("authorization", format!("Bearer {k}"))];
    let post = |k: &'static str| {
        let headers = with_key(k);
        let gw = &gw;
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(a, b)| (*a, b.as_str())).collect();
            gw.post_exact("/api/chat", BODY.into(), &h).await.0
        }
    };

    // A stream started with the old key...
    let mut stream = open_stream(&gw).await;
    // ...survives the old key being replaced.
    gw.set_keys(&key_entry("second", "t", new_key, ""));
    assert_eq!(post(new_key).await, 200);
    assert_eq!(post(TEST_KEY).await, 401);
    gate.notify_one();
    let (raw, terminated) = common::read_raw_response(&mut stream, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&raw);
    assert!(
        terminated && text.contains("\"done\":true"),
        "stream finished normally: {text}"
    );

    // A broken edit is rejected and the keys in force stay.
    gw.set_keys("[[keys]\nthis is not toml");
    assert_eq!(post(new_key).await, 200);
    gw.set_keys(&key_entry("bad", "t", "x", "burst = 0"));
    assert_eq!(post(new_key).await, 200);

    // The periodic check picks up an edit by itself.
    std::fs::write(&gw.keys_file, key_entry("test-key", "test", TEST_KEY, "")).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while post(TEST_KEY).await != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "edit never picked up"
        );
        tokio::task::yield_now().await;
    }
    assert_eq!(post(new_key).await, 401);
    gw.stop().await;
}

#[actix_rt::test]
async fn certificate_reloads_without_dropping_connections() {
    let ollama = FakeUpstream::ollama_ok();
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;
    let cert = gw.dir.0.join("cert.pem");
    let key = gw.dir.0.join("key.pem");
    let old_tls = common::client_tls(&cert);

    // A keep-alive connection made with the old certificate.
    let mut kept = gw.raw_tls().await;
    kept.write_all(raw_chat_request(BODY, "").as_bytes())
        .await
        .unwrap();
    assert_eq!(read_one_response(&mut kept).await.0, 200);

    ollama_gateway::tls::generate_self_signed(&cert, &key).unwrap();
    gw.reloader.check();
    let new_tls = common::client_tls(&cert);

    // New handshakes get the new certificate.
    let connect = |tls: Arc<rustls::ClientConfig>| async move {
        let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        tokio_rustls::TlsConnector::from(tls)
            .connect(
                rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                tcp,
            )
            .await
    };
    assert!(
        connect(Arc::clone(&new_tls)).await.is_ok(),
        "new certificate served"
    );
    assert!(
        connect(old_tls).await.is_err(),
        "old certificate no longer served"
    );

    // The old connection keeps working.
    kept.write_all(raw_chat_request(BODY, "").as_bytes())
        .await
        .unwrap();
    assert_eq!(read_one_response(&mut kept).await.0, 200);

    // A broken certificate file is rejected; the current one stays in force.
    std::fs::write(&cert, "not a certificate").unwrap();
    gw.reloader.check();
    assert!(
        connect(new_tls).await.is_ok(),
        "still served after a broken edit"
    );
    gw.stop().await;
}
