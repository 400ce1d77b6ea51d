//! Metrics, request ids and health, over real sockets: counts exact after a scripted set of
//! requests, labels right, the exposition clean for promtool, no secret anywhere.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Command, Stdio};

use common::{
    key_entry, ollama_stream_lines, openai_sse, FakeUpstream, Gateway, Reply, TEST_KEY,
    UPSTREAM_KEY,
};
use serde_json::json;

fn ollama_fake() -> FakeUpstream {
    FakeUpstream::start(|req| {
        if req.path == "/api/version" {
            return Reply::json(200, &json!({"version": "0.5.1"}));
        }
        let body = req.json();
        let done = json!({"model":"llama3","created_at":"2025-01-01T00:00:00Z",
            "message":{"role":"assistant","content":""},"done":true,"done_reason":"stop",
            "load_duration":1_000_000_000u64,"prompt_eval_count":5,"eval_count":2,"eval_duration":500_000_000u64});
        if body["messages"][0]["content"] == "break" {
            let mut lines = ollama_stream_lines("llama3", &["a"]);
            lines.truncate(1);
            lines.push(json!({"error": "an error was encountered while running the model"}));
            return Reply::ndjson(&lines);
        }
        match (body["model"].as_str().unwrap(), body["stream"].as_bool()) {
            ("missing", _) => Reply::json(
                404,
                &json!({"error":"model \"missing\" not found, try pulling it first"}),
            ),
            (_, Some(false)) => Reply::json(200, &done),
            _ => {
                let mut lines = ollama_stream_lines("llama3", &["a", "b"]);
                *lines.last_mut().unwrap() = done;
                Reply::ndjson(&lines)
            }
        }
    })
}

fn openai_fake() -> FakeUpstream {
    FakeUpstream::start(|req| {
        if req.json()["stream"] == true {
            Reply::sse(openai_sse(&["x", "y"], "stop"))
        } else {
            Reply::json(
                200,
                &json!({"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],
                "usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21}}),
            )
        }
    })
}

async fn scrape(gw: &Gateway) -> String {
    let mut resp = gw
        .client()
        .get(format!("{}/metrics", gw.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    String::from_utf8(resp.body().limit(1 << 24).await.unwrap().to_vec()).unwrap()
}

/// The value of the series whose name and labels are exactly these (labels sorted by name,
/// as the prometheus crate writes them).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Runs `promtool check metrics` when promtool is installed (CI installs it).
fn promtool_check(text: &str) {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        common::skip::available(false, "promtool (Debian package prometheus)");
        return;
    };
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {said}"
    );
}

#[actix_rt::test]
async fn metrics_move_exactly_after_a_scripted_set_of_requests() {
    let ollama = ollama_fake();
    let openai = openai_fake();
    let gw = Gateway::start(Some(&ollama), Some(&openai), |_| {}).await;
    gw.set_keys(&key_entry("team-a-ci", "team-a", TEST_KEY, ""));
    let chat = |model: &str, stream: bool| json!({"model": model, "messages": [{"role":"user","content":"hi"}], "stream": stream});
    for (model, stream, status) in [
        ("llama3", true, 200),
        ("llama3", true, 200),
        ("llama3", false, 200),
        ("missing", false, 404),
        ("openai/gpt-4o-mini", true, 200),
        ("openai/gpt-4o-mini", false, 200),
    ] {
        let (got, _, body) = gw.chat(&chat(model, stream)).await;
        assert_eq!(got, status, "{model}: {}", String::from_utf8_lossy(&body));
    }
    let (got, _, _) = gw
        .post_raw(
            "/api/chat",
            serde_json::to_vec(&chat("llama3", false)).unwrap(),
            &[("x-api-key", "ogw_wrong")],
        )
        .await;
    assert_eq!(got, 401);
    // Ollama's own error line in a stream: a failed answer, not a complete one.
    let broken = json!({"model": "llama3", "messages": [{"role":"user","content":"break"}]});
    let (got, _, body) = gw.chat(&broken).await;
    assert_eq!(got, 200);
    assert!(String::from_utf8_lossy(&body).contains("an error was encountered"));
    let mut health = gw
        .client()
        .get(format!("{}/healthz", gw.url))
        .send()
        .await
        .unwrap();
    let _ = health.body().await;

    let text = scrape(&gw).await;
    let ok_llama = r#"{code="200",endpoint="/api/chat",key_id="team-a-ci",model="llama3",team="team-a",upstream="ollama"}"#;
    assert_eq!(
        value(&text, &format!("gateway_requests_total{ok_llama}")),
        4.0
    );
    assert_eq!(
        value(
            &text,
            r#"gateway_upstream_errors_total{kind="mid_stream",upstream="ollama"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            r#"gateway_requests_total{code="404",endpoint="/api/chat",key_id="team-a-ci",model="other",team="team-a",upstream="ollama"}"#
        ),
        1.0,
        "a model the upstream did not know does not become a label"
    );
    assert_eq!(
        value(
            &text,
            r#"gateway_requests_total{code="200",endpoint="/api/chat",key_id="team-a-ci",model="openai/gpt-4o-mini",team="team-a",upstream="openai"}"#
        ),
        2.0
    );
    assert_eq!(
        value(
            &text,
            r#"gateway_requests_total{code="401",endpoint="/api/chat",key_id="none",model="none",team="none",upstream="none"}"#
        ),
        1.0
    );
    assert_eq!(
        value(&text, r#"gateway_rejections_total{reason="auth"}"#),
        1.0
    );
    let tokens = |kind: &str, model: &str, upstream: &str| {
        value(
            &text,
            &format!(
                r#"gateway_tokens_total{{key_id="team-a-ci",kind="{kind}",model="{model}",team="team-a",upstream="{upstream}"}}"#
            ),
        )
    };
    assert_eq!(tokens("prompt", "llama3", "ollama"), 15.0);
    assert_eq!(tokens("completion", "llama3", "ollama"), 6.0);
    assert_eq!(tokens("prompt", "openai/gpt-4o-mini", "openai"), 18.0);
    assert_eq!(tokens("completion", "openai/gpt-4o-mini", "openai"), 24.0);
    assert_eq!(
        value(
            &text,
            r#"gateway_upstream_errors_total{kind="status",upstream="ollama"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            r#"gateway_upstream_errors_total{kind="connect",upstream="openai"}"#
        ),
        0.0
    );
    assert_eq!(
        value(
            &text,
            r#"gateway_time_to_first_token_seconds_count{model="llama3",upstream="ollama"}"#
        ),
        3.0
    );
    assert_eq!(
        value(
            &text,
            r#"gateway_time_to_first_token_seconds_count{model="openai/gpt-4o-mini",upstream="openai"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            r#"gateway_request_duration_seconds_count{model="llama3",upstream="ollama"}"#
        ),
        4.0
    );
    assert_eq!(
        value(
            &text,
            r#"gateway_ollama_load_duration_seconds_count{model="llama3"}"#
        ),
        3.0
    );
    assert_eq!(
        value(
            &text,
            r#"gateway_ollama_load_duration_seconds_sum{model="llama3"}"#
        ),
        3.0
    );
    assert_eq!(
        value(
            &text,
            r#"gateway_ollama_generation_tokens_per_second_sum{model="llama3"}"#
        ),
        12.0
    );
    assert_eq!(
        value(&text, r#"gateway_requests_in_flight{upstream="ollama"}"#),
        0.0
    );
    assert_eq!(value(&text, r#"gateway_build_info{version="0.1.0"}"#), 1.0);
    assert!(text.contains("process_resident_memory_bytes"));
    assert!(
        !text.contains("healthz") && !text.contains("/metrics"),
        "probes are not traffic"
    );
    for secret in [TEST_KEY, UPSTREAM_KEY, "ogw_wrong"] {
        assert!(!text.contains(secret));
    }
    promtool_check(&text);
    gw.stop().await;
}

#[actix_rt::test]
async fn request_ids_are_echoed_generated_and_passed_upstream() {
    let ollama = ollama_fake();
    let openai = openai_fake();
    let gw = Gateway::start(Some(&ollama), Some(&openai), |_| {}).await;
    let body = |model: &str| {
        serde_json::to_vec(&json!({"model": model, "messages": [], "stream": false})).unwrap()
    };
    let (_, headers, _) = gw
        .post_raw(
            "/api/chat",
            body("llama3"),
            &[("x-request-id", "trace-42.a_b:c")],
        )
        .await;
    assert_eq!(headers.get("x-request-id").unwrap(), "trace-42.a_b:c");
    assert_eq!(ollama.last().header("x-request-id"), Some("trace-42.a_b:c"));
    let (_, headers, _) = gw
        .post_raw(
            "/api/chat",
            body("openai/m"),
            &[("x-request-id", "bad id with spaces")],
        )
        .await;
    let id = headers
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert_ne!(id, "bad id with spaces");
    assert!(!id.is_empty());
    assert_eq!(openai.last().header("x-request-id"), Some(id.as_str()));
    // Rejections carry one too.
    let (status, headers, _) = gw.post_exact("/api/chat", body("llama3"), &[]).await;
    assert_eq!(status, 401);
    assert!(headers.contains_key("x-request-id"));
    gw.stop().await;
}

#[actix_rt::test]
async fn health_readiness_and_where_metrics_are_served() {
    let ollama = ollama_fake();
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;
    let get = |gw: &Gateway, url: String, key: bool| {
        let mut req = gw.client().get(url);
        if key {
            req = req.insert_header(("x-api-key", TEST_KEY));
        }
        async move {
            let mut resp = req.send().await.unwrap();
            let body = resp.body().await.unwrap();
            (
                resp.status().as_u16(),
                String::from_utf8_lossy(&body).to_string(),
            )
        }
    };
    assert_eq!(get(&gw, format!("{}/healthz", gw.url), false).await.0, 200);
    let mut head = gw
        .client()
        .head(format!("{}/readyz", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status().as_u16(), 200);
    let _ = head.body().await;
    let (status, _, _) = gw
        .post_exact("/readyz", Vec::new(), &[("x-api-key", TEST_KEY)])
        .await;
    assert_eq!(status, 405);
    assert_eq!(
        get(&gw, format!("{}/readyz", gw.url), false).await,
        (200, r#"{"status":"ready"}"#.to_string())
    );
    assert_eq!(
        get(&gw, format!("{}/healthz", gw.admin_url), false).await.0,
        200
    );
    assert_eq!(
        get(&gw, format!("{}/readyz", gw.admin_url), false).await.0,
        200
    );
    assert_eq!(
        get(&gw, format!("{}/metrics", gw.url), false).await.0,
        401,
        "not public by default"
    );
    assert_eq!(get(&gw, format!("{}/metrics", gw.url), true).await.0, 404);
    gw.stop().await;

    // Ollama down: not ready, and the answer names it.
    let gw = Gateway::start(None, None, |raw| raw.metrics.public = true).await;
    let (status, body) = get(&gw, format!("{}/readyz", gw.url), false).await;
    assert_eq!(status, 503);
    assert!(body.contains("upstream ollama is not ready"), "{body}");
    assert!(
        body.contains("it refused the connection"),
        "in words: {body}"
    );
    assert_eq!(
        body.matches("upstream ollama").count(),
        1,
        "said once: {body}"
    );
    assert_eq!(
        get(&gw, format!("{}/metrics", gw.url), false).await.0,
        401,
        "public metrics need a key"
    );
    let (status, body) = get(&gw, format!("{}/metrics", gw.url), true).await;
    assert_eq!(status, 200);
    assert!(body.contains("gateway_build_info"));
    gw.stop().await;
}
