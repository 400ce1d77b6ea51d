//! Cheap reads over real TLS: `HEAD`/`GET /` and `GET`/`HEAD /api/version` answered as
//! Ollama answers them, through the same edge as chat; and the rule that a UI polling them
//! never starves inference: reads take no in-flight slot and draw on their own per-key
//! bucket (`reads_per_minute`, `read_burst`), exactly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use awc::http::Method;
use common::{json_error, key_entry, ollama_stream_lines, FakeUpstream, Gateway, Reply, TEST_KEY};
use serde_json::json;

const VERSION: &str = r#"{"version":"0.12.6"}"#;

/// A fake Ollama answering `/api/version` as Ollama does, chat with "ok".
fn ollama_fake() -> FakeUpstream {
    FakeUpstream::start(|req| {
        if req.path == "/api/version" {
            return Reply::Full {
                status: 200,
                headers: vec![(
                    "Content-Type".into(),
                    "application/json; charset=utf-8".into(),
                )],
                body: VERSION.as_bytes().to_vec(),
            };
        }
        Reply::json(
            200,
            &json!({"model":"llama3","message":{"role":"assistant","content":"ok"},"done":true}),
        )
    })
}

struct Answer {
    status: u16,
    headers: awc::http::header::HeaderMap,
    body: Vec<u8>,
}

/// `method path` with `headers` (no key unless they carry one).
async fn send(gw: &Gateway, method: Method, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = gw.client().request(method, format!("{}{path}", gw.url));
    for (k, v) in headers {
        req = req.insert_header((*k, *v));
    }
    let mut resp = req.send().await.expect("gateway answers");
    let body = resp.body().limit(1 << 20).await.unwrap().to_vec();
    Answer {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body,
    }
}

fn header<'a>(a: &'a Answer, name: &str) -> &'a str {
    a.headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", a.headers))
        .to_str()
        .unwrap()
}

const KEY: (&str, &str) = ("x-api-key", TEST_KEY);

#[actix_rt::test]
async fn root_says_ollama_is_running_to_a_key_or_a_network_only() {
    let ollama = ollama_fake();
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;
    gw.set_keys(&format!(
        "{}[[networks]]\nid = \"lab\"\nteam = \"research\"\ncidrs = [\"127.0.0.2\"]\n",
        key_entry("test-key", "test", TEST_KEY, "")
    ));
    let get = send(&gw, Method::GET, "/", &[KEY]).await;
    assert_eq!(get.status, 200);
    assert_eq!(get.body, b"Ollama is running");
    assert_eq!(header(&get, "content-type"), "text/plain; charset=utf-8");
    assert!(header(&get, "ratelimit-policy").starts_with("\"reads\";"));
    let head = send(&gw, Method::HEAD, "/", &[KEY]).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(header(&head, "content-length"), "17");
    assert_eq!(header(&head, "content-type"), "text/plain; charset=utf-8");

    // Deny by default: without a key, only a trusted network hears it (the CLI's heartbeat).
    let refused = send(&gw, Method::HEAD, "/", &[]).await;
    assert_eq!(refused.status, 401);
    let refused = send(&gw, Method::GET, "/", &[]).await;
    assert_eq!(refused.status, 401);
    assert!(json_error(&refused.headers, &refused.body).contains("missing API key"));
    // (Closed after the answer: a HEAD answer's Content-Length announces no body.)
    let heartbeat = "HEAD / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let mut tls = gw.raw_tls_from("127.0.0.2".parse().unwrap()).await;
    tokio::io::AsyncWriteExt::write_all(&mut tls, heartbeat.as_bytes())
        .await
        .unwrap();
    let (raw, _) = common::read_raw_response(&mut tls, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(
        text.contains("content-length: 17") && text.ends_with("\r\n\r\n"),
        "{text}"
    );

    let wrong = send(&gw, Method::POST, "/", &[KEY]).await;
    assert_eq!(wrong.status, 405);
    assert_eq!(header(&wrong, "allow"), "GET, HEAD");
    assert_eq!(
        gw.metric(r#"gateway_requests_total{code="200",endpoint="/",key_id="test-key",model="none",team="test",upstream="none"}"#),
        2.0
    );
    assert_eq!(
        gw.metric(r#"gateway_requests_total{code="200",endpoint="/",key_id="lab",model="none",team="research",upstream="none"}"#),
        1.0
    );
    assert!(ollama.requests().is_empty(), "answered by the gateway");
    gw.stop().await;
}

#[actix_rt::test]
async fn version_is_ollamas_own_relayed_as_it_is() {
    let ollama = ollama_fake();
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;
    let get = send(
        &gw,
        Method::GET,
        "/api/version",
        &[KEY, ("x-request-id", "v-1")],
    )
    .await;
    assert_eq!(get.status, 200);
    assert_eq!(get.body, VERSION.as_bytes(), "the bytes Ollama sent");
    assert_eq!(
        header(&get, "content-type"),
        "application/json; charset=utf-8"
    );
    let sent = ollama.last();
    assert_eq!(
        (sent.method.as_str(), sent.path.as_str()),
        ("GET", "/api/version")
    );
    assert_eq!(sent.header("x-request-id"), Some("v-1"));
    assert!(sent.header("authorization").is_none());

    let head = send(
        &gw,
        Method::HEAD,
        "/api/version",
        &[("x-api-key", TEST_KEY)],
    )
    .await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(header(&head, "content-length"), VERSION.len().to_string());
    assert_eq!(
        send(&gw, Method::GET, "/api/version", &[]).await.status,
        401
    );
    assert_eq!(ollama.requests().len(), 2, "refused before reaching Ollama");
    assert_eq!(
        gw.metric(r#"gateway_requests_total{code="200",endpoint="/api/version",key_id="test-key",model="none",team="test",upstream="ollama"}"#),
        2.0
    );
    gw.stop().await;
}

#[actix_rt::test]
async fn version_failures_are_honest() {
    let down = Gateway::start(None, None, |_| {}).await;
    let a = send(&down, Method::GET, "/api/version", &[KEY]).await;
    assert_eq!(a.status, 502);
    let msg = json_error(&a.headers, &a.body);
    assert!(msg.starts_with("upstream ollama is unreachable"), "{msg}");
    assert_eq!(down.upstream_errors("ollama", "connect"), 1.0);
    down.stop().await;

    let hang = FakeUpstream::start(|_| Reply::Hang);
    let slow = Gateway::start(Some(&hang), None, |raw| {
        raw.timeouts.first_byte = Duration::from_millis(200);
    })
    .await;
    let a = send(&slow, Method::GET, "/api/version", &[KEY]).await;
    assert_eq!(a.status, 504);
    assert!(json_error(&a.headers, &a.body).contains("timed out"));
    slow.stop().await;
    // A version is a cheap read: `catalog.timeout` bounds it even when inference may wait
    // minutes for its first byte.
    let slow = Gateway::start(Some(&hang), None, |raw| {
        raw.timeouts.first_byte = Duration::from_secs(300);
        raw.catalog.timeout = Duration::from_millis(200);
    })
    .await;
    let asked = std::time::Instant::now();
    let a = send(&slow, Method::GET, "/api/version", &[KEY]).await;
    assert_eq!(a.status, 504);
    assert!(json_error(&a.headers, &a.body).contains("timed out"));
    assert!(
        asked.elapsed() < Duration::from_secs(30),
        "bounded by catalog.timeout"
    );
    slow.stop().await;

    let odd = FakeUpstream::start(|req| match req.header("x-request-id") {
        Some("garbage") => Reply::Full {
            status: 200,
            headers: vec![],
            body: b"Ollama is running".to_vec(),
        },
        Some("number") => Reply::json(200, &json!({"version": 12})),
        _ => Reply::json(500, &json!({"error": "something broke"})),
    });
    let gw = Gateway::start(Some(&odd), None, |_| {}).await;
    for id in ["garbage", "number"] {
        let a = send(
            &gw,
            Method::GET,
            "/api/version",
            &[KEY, ("x-request-id", id)],
        )
        .await;
        assert_eq!(a.status, 502, "{id}");
        let msg = json_error(&a.headers, &a.body);
        assert!(msg.contains("sent an invalid response"), "{id}: {msg}");
    }
    let a = send(&gw, Method::GET, "/api/version", &[KEY]).await;
    assert_eq!(a.status, 500, "Ollama's own error status");
    assert_eq!(json_error(&a.headers, &a.body), "something broke");
    assert_eq!(gw.upstream_errors("ollama", "protocol"), 2.0);
    assert_eq!(gw.upstream_errors("ollama", "status"), 1.0);
    gw.stop().await;
}

/// A UI polls version while the same key runs its maximum of chats, with a small chat
/// bucket: the polls neither wait for a slot nor spend chat tokens, and exactly
/// `read_burst` of them pass a burst; the chats never see the polls.
#[actix_rt::test]
async fn polls_never_starve_chats_and_exactly_read_burst_reads_pass() {
    const READ_BURST: usize = 5;
    // One gate per stream: a permit given before its stream waits is kept.
    let gates = [(); 2].map(|()| Arc::new(tokio::sync::Notify::new()));
    let fake_gates = gates.clone();
    let lines: Vec<Vec<u8>> = ollama_stream_lines("llama3", &["a", "b"])
        .iter()
        .map(|l| format!("{l}\n").into_bytes())
        .collect();
    let ollama = FakeUpstream::start(move |req| {
        if req.path == "/api/version" {
            return Reply::json(200, &json!({"version": "0.12.6"}));
        }
        if req.path == "/api/tags" {
            return Reply::json(
                200,
                &json!({"models": [{"name": "llama3", "model": "llama3"}]}),
            );
        }
        let hold = match req.json()["model"].as_str() {
            Some("hold-0") => Some(0),
            Some("hold-1") => Some(1),
            _ => None,
        };
        if let Some(n) = hold {
            return Reply::Gated {
                content_type: "application/x-ndjson".into(),
                before: lines[..1].to_vec(),
                gate: Arc::clone(&fake_gates[n]),
                after: lines[1..].to_vec(),
            };
        }
        Reply::json(
            200,
            &json!({"model":"llama3","message":{"role":"assistant","content":"ok"},"done":true}),
        )
    });
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;
    gw.set_keys(&key_entry(
        "ui",
        "web",
        TEST_KEY,
        &format!(
            "max_in_flight = 2\nburst = 3\nrequests_per_minute = 1\nread_burst = {READ_BURST}\nreads_per_minute = 1"
        ),
    ));
    let chat = |model: &'static str| {
        let gw = &gw;
        async move {
            let body = json!({"model": model, "messages": [], "stream": true}).to_string();
            let mut tls = gw.raw_tls().await;
            let request = common::raw_chat_request(&body, "");
            tokio::io::AsyncWriteExt::write_all(&mut tls, request.as_bytes())
                .await
                .unwrap();
            tls
        }
    };
    // Two streams hold both of the key's slots.
    let mut held = vec![chat("hold-0").await, chat("hold-1").await];
    assert!(ollama.wait_requests(2, Duration::from_secs(10)).await);
    let mut statuses = Vec::new();
    // A UI refreshing its model list and its connection: tags and version, in turn.
    for i in 0..READ_BURST + 3 {
        let path = if i % 2 == 0 {
            "/api/tags"
        } else {
            "/api/version"
        };
        let a = send(&gw, Method::GET, path, &[KEY]).await;
        if a.status == 429 {
            let msg = json_error(&a.headers, &a.body);
            assert!(
                msg.starts_with("rate limit for cheap reads exceeded for API key ui"),
                "{msg}"
            );
            assert_eq!(header(&a, "ratelimit-policy"), "\"reads\";q=1;w=60");
        }
        statuses.push(a.status);
    }
    let mut expected = vec![200; READ_BURST];
    expected.extend([429; 3]);
    assert_eq!(statuses, expected, "exactly read_burst polls pass");
    let busy = gw
        .post_raw(
            "/api/chat",
            br#"{"model":"llama3","messages":[]}"#.to_vec(),
            &[],
        )
        .await;
    assert_eq!(busy.0, 429, "the slots are still held");
    assert!(json_error(&busy.1, &busy.2).contains("in flight"));

    for gate in &gates {
        gate.notify_one();
    }
    for tls in &mut held {
        let (raw, terminated) = common::read_raw_response(tls, Duration::from_secs(10)).await;
        let text = String::from_utf8_lossy(&raw);
        assert!(terminated && text.contains("\"done\":true"), "{text}");
    }
    // Two chat tokens went to the streams; the polls spent none: the third passes.
    let body = br#"{"model":"llama3","messages":[],"stream":false}"#.to_vec();
    let (status, headers, _) = gw.post_raw("/api/chat", body.clone(), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(headers.get("ratelimit").unwrap(), "\"default\";r=0;t=60");
    let (status, headers, resp) = gw.post_raw("/api/chat", body, &[]).await;
    assert_eq!(status, 429);
    assert!(json_error(&headers, &resp).starts_with("rate limit exceeded for API key ui"));
    gw.stop().await;
}

const PY_NETWORK: &str = r#"
import os, json, httpx, ollama
url, ca = os.environ["GW"], os.environ["GW_CA"]
def client(source):
    return ollama.Client(host=url, transport=httpx.HTTPTransport(verify=ca, local_address=source))
out = {}
lab = client("127.0.0.2")
# ollama-python has no version(): its httpx client, as a raw call.
r = lab._client.get("/api/version")
out["version_status"] = r.status_code
out["version"] = r.json()["version"]
out["head_status"] = lab._client.head("/").status_code
out["chat"] = lab.chat(model="llama3", messages=[{"role": "user", "content": "hi"}]).message.content
outside = client("127.0.0.1")
out["outside_version"] = outside._client.get("/api/version").status_code
try:
    outside.chat(model="llama3", messages=[{"role": "user", "content": "hi"}])
except ollama.ResponseError as e:
    out["outside_status"] = e.status_code
print(json.dumps(out))
"#;

#[actix_rt::test]
async fn the_official_client_without_a_key_from_a_trusted_network() {
    let ollama = ollama_fake();
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;
    gw.set_keys("[[networks]]\nid = \"lab\"\nteam = \"research\"\ncidrs = [\"127.0.0.2/32\"]\n");
    let Some(v) = common::auth::python(PY_NETWORK, common::auth::python_env(&gw)).await else {
        return;
    };
    assert_eq!(v["version_status"], 200, "{v}");
    assert_eq!(v["version"], "0.12.6");
    assert_eq!(v["head_status"], 200);
    assert_eq!(v["chat"], "ok");
    assert_eq!(v["outside_version"], 401);
    assert_eq!(v["outside_status"], 401);
    for req in ollama.requests() {
        assert!(req.header("authorization").is_none());
    }
    assert_eq!(
        gw.metric(r#"gateway_requests_total{code="200",endpoint="/api/version",key_id="lab",model="none",team="research",upstream="ollama"}"#),
        1.0
    );
    gw.stop().await;
}
