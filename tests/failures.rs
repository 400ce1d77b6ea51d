//! Every failure is reported honestly: before the first byte with a status, after it with a
//! final error line; client disconnects cancel the upstream request.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{
    ndjson, ollama_stream_lines, openai_sse, read_raw_response, End, FakeUpstream, Gateway, Reply,
    UPSTREAM_KEY,
};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

fn error_of(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("JSON error body: {:?}", String::from_utf8_lossy(body)));
    v["error"].as_str().unwrap().to_string()
}

/// An error text in words: none of Rust's Debug output (`Some(Os { code: 104, .. })`).
fn assert_words(msg: &str) {
    for debug in [
        "Some(",
        "None",
        "Os {",
        "kind:",
        "code:",
        "payload reached EOF",
    ] {
        assert!(!msg.contains(debug), "Debug output in {msg:?}");
    }
}

#[actix_rt::test]
async fn unreachable_upstreams_give_502_naming_the_upstream() {
    let gw = Gateway::start(None, None, |_| {}).await;
    for (model, name) in [("llama3", "ollama"), ("openai/gpt-4o-mini", "openai")] {
        for stream in [true, false] {
            let (status, headers, body) = gw
                .chat(&json!({"model":model,"messages":[],"stream":stream}))
                .await;
            assert_eq!(status, 502);
            assert!(headers
                .get("content-type")
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("application/json"));
            let msg = error_of(&body);
            assert_eq!(
                msg,
                format!("upstream {name} is unreachable: it refused the connection")
            );
            assert!(!msg.contains(UPSTREAM_KEY));
        }
        assert_eq!(gw.upstream_errors(name, "connect"), 2.0, "{name}");
        assert_eq!(gw.upstream_errors(name, "truncated"), 0.0, "{name}");
    }
    gw.stop().await;
}

#[actix_rt::test]
async fn a_whole_answer_cut_mid_body_is_a_broken_answer_said_in_words() {
    // The head promises 1000 bytes; 18 come, then the connection closes.
    // "sized": the head promises 1000 bytes, 18 come, then the connection closes.
    // "chunked": a chunked body closed before its terminator (awc reports no error).
    let cut = |req: &common::Recorded| {
        let partial = b"{\"model\":\"llama3\",".to_vec();
        if req.json()["model"].as_str().unwrap().ends_with("chunked") {
            return Reply::Chunked {
                status: 200,
                content_type: "application/json".into(),
                chunks: vec![partial],
                end: End::Close,
            };
        }
        let head =
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n";
        Reply::Raw([head.as_bytes(), &partial].concat())
    };
    let ollama = FakeUpstream::start(cut);
    let openai = FakeUpstream::start(cut);
    let gw = Gateway::start(Some(&ollama), Some(&openai), |_| {}).await;
    for (model, name) in [("llama3", "ollama"), ("openai/gpt-4o-mini", "openai")] {
        for (framing, what, n) in [
            (
                "sized",
                "closed the connection before the answer was complete",
                1.0,
            ),
            ("chunked", "ended the answer before it was complete", 2.0),
        ] {
            let model = format!("{model}-{framing}");
            let (status, _, body) = gw
                .chat(&json!({"model":model,"messages":[],"stream":false}))
                .await;
            assert_eq!(status, 502, "{model}");
            let msg = error_of(&body);
            assert_eq!(msg, format!("upstream {name} {what}"));
            assert_words(&msg);
            assert_eq!(gw.upstream_errors(name, "truncated"), n, "{model}");
            assert_eq!(gw.upstream_errors(name, "connect"), 0.0, "{model}");
        }
    }
    gw.stop().await;
}

#[actix_rt::test]
async fn an_upstream_that_closes_without_answering_is_not_unreachable() {
    let ollama = FakeUpstream::start(|_| Reply::Raw(Vec::new()));
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;
    let (status, _, body) = gw.chat(&json!({"model":"llama3","messages":[]})).await;
    assert_eq!(status, 502);
    assert_eq!(
        error_of(&body),
        "upstream ollama closed the connection without answering"
    );
    assert_eq!(gw.upstream_errors("ollama", "truncated"), 1.0);
    assert_eq!(gw.upstream_errors("ollama", "connect"), 0.0);
    gw.stop().await;
}

/// A streamed answer from an Ollama that sends `lines` and then resets the connection: the
/// gateway (and its fake, kept alive) and the lines the client got.
async fn lines_then_reset(lines: &[Value]) -> (Gateway, FakeUpstream, Vec<Value>) {
    let reply = Reply::ndjson_until(lines, End::Reset);
    let ollama = FakeUpstream::start(move |_| reply.clone());
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;
    let (status, _, body) = gw.chat(&json!({"model":"llama3","messages":[]})).await;
    assert_eq!(status, 200);
    (gw, ollama, ndjson(&body))
}

#[actix_rt::test]
async fn a_stream_reset_mid_answer_says_so_in_words() {
    let mut lines = ollama_stream_lines("llama3", &["a", "b"]);
    lines.pop();
    let (gw, _ollama, lines) = lines_then_reset(&lines).await;
    assert_eq!(lines.len(), 3, "{lines:?}");
    let msg = lines[2]["error"].as_str().unwrap();
    assert_eq!(
        msg,
        "upstream ollama reset the connection before the answer was complete"
    );
    assert_words(msg);
    assert_eq!(gw.upstream_errors("ollama", "truncated"), 1.0);
    assert_eq!(gw.upstream_errors("ollama", "mid_stream"), 0.0);
    gw.stop().await;
}

#[actix_rt::test]
async fn no_first_byte_in_time_gives_504() {
    let ollama = FakeUpstream::start(|_| Reply::Hang);
    let openai = FakeUpstream::start(|_| Reply::Hang);
    let gw = Gateway::start(Some(&ollama), Some(&openai), |raw| {
        raw.timeouts.first_byte = Duration::from_millis(300);
    })
    .await;
    for (model, name) in [("llama3", "ollama"), ("openai/gpt-4o-mini", "openai")] {
        let (status, _, body) = gw.chat(&json!({"model":model,"messages":[]})).await;
        assert_eq!(status, 504);
        let msg = error_of(&body);
        assert_eq!(
            msg,
            format!("upstream {name} timed out after 300ms waiting for the answer to begin (timeouts.first_byte)")
        );
        assert_eq!(gw.upstream_errors(name, "timeout"), 1.0, "{name}");
    }
    gw.stop().await;
}

#[actix_rt::test]
async fn openai_statuses_are_mapped() {
    let openai = FakeUpstream::start(|req| {
        let model = req.json()["model"].as_str().unwrap().to_string();
        let err = |status: u16, message: &str, code: &str| Reply::Full {
            status,
            headers: vec![
                ("Content-Type".into(), "application/json".into()),
                ("Retry-After".into(), "7".into()),
            ],
            body: serde_json::to_vec(
                &json!({"error":{"message":message,"type":"x","param":null,"code":code}}),
            )
            .unwrap(),
        };
        match model.as_str() {
            "unauthorized" => err(
                401,
                "Incorrect API key provided: sk-test***cdef",
                "invalid_api_key",
            ),
            "missing" => err(404, "The model `missing` does not exist", "model_not_found"),
            "limited" => err(
                429,
                "Rate limit reached for requests",
                "rate_limit_exceeded",
            ),
            "broken" => err(500, "The server had an error", "server_error"),
            _ => err(400, "bad", "bad"),
        }
    });
    let gw = Gateway::start(None, Some(&openai), |_| {}).await;
    let cases = [
        (
            "unauthorized",
            502,
            "refused the gateway's credentials",
            false,
        ),
        ("missing", 404, "does not exist", false),
        ("limited", 429, "Rate limit reached", true),
        ("broken", 502, "The server had an error", false),
    ];
    for (model, status, needle, retry_after) in cases {
        for stream in [true, false] {
            let (got, headers, body) = gw
                .chat(&json!({"model":format!("openai/{model}"),"messages":[{"role":"user","content":"x"}],"stream":stream}))
                .await;
            assert_eq!(got, status, "{model}");
            let msg = error_of(&body);
            assert!(msg.contains(needle), "{model}: {msg}");
            assert!(!msg.contains("sk-"), "{msg}");
            assert_eq!(headers.get("retry-after").is_some(), retry_after, "{model}");
        }
    }
    gw.stop().await;
}

#[actix_rt::test]
async fn a_json_answer_to_a_streamed_request_is_a_protocol_fault_said_in_words() {
    let openai = FakeUpstream::start(|req| {
        let json = |body: Vec<u8>| Reply::Full {
            status: 200,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body,
        };
        match req.json()["model"].as_str().unwrap() {
            // Ignores `stream` and answers a whole completion.
            "ignores" => json(
                serde_json::to_vec(&json!({"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}))
                    .unwrap(),
            ),
            "error" => json(br#"{"error":{"message":"quota exceeded"}}"#.to_vec()),
            "big" => json(vec![b' '; 70_000]),
            _ => Reply::Full {
                status: 200,
                headers: vec![],
                body: b"junk".to_vec(),
            },
        }
    });
    let gw = Gateway::start(None, Some(&openai), |_| {}).await;
    let what = "upstream openai sent an invalid response: it answered a streamed request with";
    for (model, message) in [
        ("ignores", format!("{what} application/json instead of an event stream")),
        (
            "error",
            format!("{what} application/json instead of an event stream; its message: quota exceeded"),
        ),
        (
            "big",
            format!("{what} application/json instead of an event stream, of more than the 65536 bytes the gateway reads of one"),
        ),
        (
            "junk",
            format!("{what} a body without a Content-Type instead of an event stream"),
        ),
    ] {
        let (status, _, body) = gw
            .chat(&json!({"model":format!("openai/{model}"),"messages":[{"role":"user","content":"x"}],"stream":true}))
            .await;
        assert_eq!(status, 502, "{model}");
        assert_eq!(error_of(&body), message);
    }
    assert_eq!(gw.upstream_errors("openai", "protocol"), 4.0);
    assert_eq!(gw.upstream_errors("openai", "status"), 0.0);
    gw.stop().await;
}

#[actix_rt::test]
async fn an_ollama_error_status_with_a_huge_body_keeps_its_status() {
    let ollama = FakeUpstream::start(|_| Reply::json(500, &json!({ "error": "x".repeat(70_000) })));
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;
    let (status, _, body) = gw
        .chat(&json!({"model":"llama3","messages":[],"stream":false}))
        .await;
    assert_eq!(status, 500);
    assert_eq!(
        error_of(&body),
        "upstream ollama answered 500 with an error body larger than the 65536 bytes the gateway reads of one"
    );
    assert_eq!(gw.upstream_errors("ollama", "status"), 1.0);
    gw.stop().await;
}

#[actix_rt::test]
async fn truncated_streams_end_with_an_error_line_never_done() {
    // OpenAI: tokens, then the connection closes without finish_reason or [DONE].
    let mut sse = openai_sse(&["a", "b"], "stop");
    sse.truncate(3);
    let openai_reply = Reply::Chunked {
        status: 200,
        content_type: "text/event-stream".into(),
        chunks: sse,
        end: End::Close,
    };
    let openai = FakeUpstream::start(move |_| openai_reply.clone());
    // Ollama: two tokens, then a clean end of body without a done line.
    let mut lines = ollama_stream_lines("llama3", &["a", "b"]);
    lines.pop();
    let ollama_reply = Reply::ndjson(&lines);
    let ollama = FakeUpstream::start(move |_| ollama_reply.clone());
    let gw = Gateway::start(Some(&ollama), Some(&openai), |_| {}).await;
    for (model, name) in [("openai/gpt-4o-mini", "openai"), ("llama3", "ollama")] {
        let (status, _, body) = gw
            .chat(&json!({"model":model,"messages":[{"role":"user","content":"x"}]}))
            .await;
        assert_eq!(status, 200);
        let lines = ndjson(&body);
        let contents: Vec<&str> = lines[..2]
            .iter()
            .map(|l| l["message"]["content"].as_str().unwrap())
            .collect();
        assert_eq!(contents, ["a", "b"], "{model}");
        let last = lines.last().unwrap();
        let msg = last["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{model}: last line {last}"));
        assert!(msg.contains(&format!("upstream {name}")), "{msg}");
        assert!(
            lines.iter().all(|l| l["done"] != true),
            "{model}: no done:true on a failed stream"
        );
    }
    gw.stop().await;
}

#[actix_rt::test]
async fn openai_error_event_mid_stream_becomes_error_line() {
    let mut sse = openai_sse(&["a"], "stop");
    sse.truncate(2);
    sse.push(b"data: {\"error\":{\"message\":\"The server is overloaded\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n".to_vec());
    let reply = Reply::sse(sse);
    let openai = FakeUpstream::start(move |_| reply.clone());
    let gw = Gateway::start(None, Some(&openai), |_| {}).await;
    let (_, _, body) = gw
        .chat(&json!({"model":"openai/m","messages":[{"role":"user","content":"x"}]}))
        .await;
    let lines = ndjson(&body);
    assert_eq!(lines.len(), 2);
    assert_eq!(
        lines[1]["error"],
        "upstream openai: The server is overloaded"
    );
    gw.stop().await;
}

#[actix_rt::test]
async fn idle_gap_timeout_mid_stream_ends_with_error_line_and_terminator() {
    let mut sse = openai_sse(&["a"], "stop");
    sse.truncate(2);
    let reply = Reply::Chunked {
        status: 200,
        content_type: "text/event-stream".into(),
        chunks: sse,
        end: End::Hold,
    };
    let openai = FakeUpstream::start(move |_| reply.clone());
    let gw = Gateway::start(None, Some(&openai), |raw| {
        raw.timeouts.idle = Duration::from_millis(300);
    })
    .await;
    // Raw socket: the response must end with a proper chunked terminator (no curl error 18).
    let mut tls = gw.raw_tls().await;
    let body = r#"{"model":"openai/m","messages":[{"role":"user","content":"x"}]}"#;
    let req = common::raw_chat_request(body, "");
    tls.write_all(req.as_bytes()).await.unwrap();
    let (raw, terminated) = read_raw_response(&mut tls, Duration::from_secs(20)).await;
    let text = String::from_utf8_lossy(&raw);
    assert!(terminated, "chunked terminator present: {text}");
    assert!(text.contains("idle time limit"), "{text}");
    assert!(!text.contains("\"done\":true"));
    assert!(
        openai.wait_closed(Duration::from_secs(10)).await,
        "upstream connection dropped"
    );
    gw.stop().await;
}

#[actix_rt::test]
async fn total_timeout_ends_stream_with_error_line() {
    let mut lines = ollama_stream_lines("llama3", &["a"]);
    lines.truncate(1);
    let reply = Reply::Chunked {
        status: 200,
        content_type: "application/x-ndjson".into(),
        chunks: lines
            .iter()
            .map(|l| format!("{l}\n").into_bytes())
            .collect(),
        end: End::Hold,
    };
    let ollama = FakeUpstream::start(move |_| reply.clone());
    let gw = Gateway::start(Some(&ollama), None, |raw| {
        raw.timeouts.total = Duration::from_millis(400);
    })
    .await;
    let (status, _, body) = gw.chat(&json!({"model":"llama3","messages":[]})).await;
    assert_eq!(status, 200);
    let lines = ndjson(&body);
    assert_eq!(lines.len(), 2);
    assert!(lines[1]["error"]
        .as_str()
        .unwrap()
        .contains("total time limit"));
    gw.stop().await;
}

/// Sends a request on a raw TLS connection, waits for `ready`, then vanishes.
async fn send_and_disconnect(gw: &Gateway, body: &str, read_first: bool, upstream: &FakeUpstream) {
    let mut tls = gw.raw_tls().await;
    let req = common::raw_chat_request(body, "");
    tls.write_all(req.as_bytes()).await.unwrap();
    if read_first {
        // Wait for the first streamed line, then vanish.
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains("\"done\":false") {
            use tokio::io::AsyncReadExt;
            let n = tls.read(&mut buf).await.unwrap();
            assert!(n > 0, "stream started");
            seen.extend_from_slice(&buf[..n]);
        }
    } else {
        // Leave only once the request is upstream, waiting on the gateway's answer.
        assert!(upstream.wait_requests(1, Duration::from_secs(10)).await);
    }
    drop(tls);
}

#[actix_rt::test]
async fn client_disconnect_mid_stream_drops_the_upstream_request() {
    for kind in ["ollama", "openai"] {
        let ollama_lines = ollama_stream_lines("llama3", &["first"]);
        let ollama_reply = Reply::Chunked {
            status: 200,
            content_type: "application/x-ndjson".into(),
            chunks: vec![format!("{}\n", ollama_lines[0]).into_bytes()],
            end: End::Hold,
        };
        let mut sse = openai_sse(&["first"], "stop");
        sse.truncate(2);
        let openai_reply = Reply::Chunked {
            status: 200,
            content_type: "text/event-stream".into(),
            chunks: sse,
            end: End::Hold,
        };
        let ollama = FakeUpstream::start(move |_| ollama_reply.clone());
        let openai = FakeUpstream::start(move |_| openai_reply.clone());
        let gw = Gateway::start(Some(&ollama), Some(&openai), |_| {}).await;
        let (model, fake) = if kind == "ollama" {
            ("llama3", &ollama)
        } else {
            ("openai/m", &openai)
        };
        send_and_disconnect(
            &gw,
            &format!(r#"{{"model":"{model}","messages":[]}}"#),
            true,
            fake,
        )
        .await;
        assert!(
            fake.wait_closed(Duration::from_secs(10)).await,
            "{kind}: upstream connection closed after client left"
        );
        gw.stop().await;
    }
}

#[actix_rt::test]
async fn client_disconnect_before_first_byte_drops_the_upstream_request() {
    let ollama = FakeUpstream::start(|_| Reply::Hang);
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;
    send_and_disconnect(&gw, r#"{"model":"llama3","messages":[]}"#, false, &ollama).await;
    assert!(
        ollama.wait_closed(Duration::from_secs(10)).await,
        "upstream connection closed after client left"
    );
    gw.stop().await;
}

#[actix_rt::test]
async fn successful_stream_has_chunked_terminator() {
    let reply = Reply::ndjson(&ollama_stream_lines("llama3", &["a", "b"]));
    let ollama = FakeUpstream::start(move |_| reply.clone());
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;
    let mut tls = gw.raw_tls().await;
    let body = r#"{"model":"llama3","messages":[]}"#;
    let req = common::raw_chat_request(body, "");
    tls.write_all(req.as_bytes()).await.unwrap();
    let (raw, terminated) = read_raw_response(&mut tls, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&raw);
    assert!(terminated, "{text}");
    assert!(text.contains("transfer-encoding: chunked"), "{text}");
    assert!(text.contains("\"done\":true"));
    gw.stop().await;
}

#[actix_rt::test]
async fn a_complete_ollama_stream_then_a_reset_is_a_complete_answer() {
    // The whole stream, `done` line included, then a reset instead of the chunked end.
    let (gw, _ollama, lines) = lines_then_reset(&ollama_stream_lines("llama3", &["a", "b"])).await;
    assert_eq!(lines.len(), 3, "nothing after the done line: {lines:?}");
    assert_eq!(lines[2]["done"], true);
    assert!(lines.iter().all(|l| l.get("error").is_none()), "{lines:?}");
    for kind in ["truncated", "mid_stream", "protocol", "timeout"] {
        assert_eq!(gw.upstream_errors("ollama", kind), 0.0, "{kind}");
    }
    assert_eq!(
        gw.metric(r#"gateway_requests_total{code="200",endpoint="/api/chat",key_id="test-key",model="llama3",team="test",upstream="ollama"}"#),
        1.0,
        "counted complete, under its model"
    );
    gw.stop().await;
}

#[actix_rt::test]
async fn a_stream_line_over_the_limit_ends_the_stream_and_drops_the_upstream() {
    const LIMIT: usize = 4096;
    // One good line, then a line of 16 x LIMIT bytes in 64 pieces, and the connection held
    // open: only the gateway can close it.
    let huge = |head: &str, tail: &str| {
        let mut line = head.as_bytes().to_vec();
        line.resize(16 * LIMIT, b'x');
        line.extend_from_slice(tail.as_bytes());
        line.chunks(LIMIT / 4)
            .map(<[u8]>::to_vec)
            .collect::<Vec<_>>()
    };
    let mut ollama_chunks =
        vec![format!("{}\n", ollama_stream_lines("llama3", &["a"])[0]).into_bytes()];
    ollama_chunks.extend(huge(r#"{"message":{"content":""#, "\"},\"done\":false}\n"));
    let ollama_reply = Reply::stream("application/x-ndjson", ollama_chunks, End::Hold);
    let mut sse = openai_sse(&["a"], "stop");
    sse.truncate(2);
    sse.extend(huge(
        r#"data: {"choices":[{"index":0,"delta":{"content":""#,
        "\"}}]}\n\n",
    ));
    let openai_reply = Reply::stream("text/event-stream", sse, End::Hold);
    let ollama = FakeUpstream::start(move |_| ollama_reply.clone());
    let openai = FakeUpstream::start(move |_| openai_reply.clone());
    let gw = Gateway::start(Some(&ollama), Some(&openai), |raw| {
        raw.upstream.max_stream_line_bytes = LIMIT;
    })
    .await;
    for (model, name, fake, what) in [
        ("llama3", "ollama", &ollama, "line longer"),
        ("openai/m", "openai", &openai, "event larger"),
    ] {
        let (status, _, body) = gw
            .chat(&json!({"model":model,"messages":[{"role":"user","content":"x"}]}))
            .await;
        assert_eq!(status, 200);
        assert!(
            body.len() < LIMIT,
            "{name}: nothing of the long line is relayed"
        );
        let lines = ndjson(&body);
        assert_eq!(lines.len(), 2, "{name}: {lines:?}");
        assert_eq!(lines[0]["message"]["content"], "a");
        assert_eq!(
            lines[1]["error"],
            format!("upstream {name} sent a stream {what} than the limit of {LIMIT} bytes (upstream.max_stream_line_bytes)")
        );
        assert!(lines.iter().all(|l| l["done"] != true));
        assert!(
            fake.wait_closed(Duration::from_secs(10)).await,
            "{name}: the upstream connection is dropped, not kept for reuse"
        );
        assert_eq!(gw.upstream_errors(name, "too_large"), 1.0, "{name}");
    }
    gw.stop().await;
}
