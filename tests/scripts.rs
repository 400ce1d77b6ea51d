//! scripts/llm against a gateway on loopback in front of fake upstreams: both modes, both
//! upstreams, and failures printed with a non-zero exit. Needs bash, curl and jq (CI
//! installs them); elsewhere the test is skipped, with a notice, when one is missing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{ollama_stream_lines, openai_sse, FakeUpstream, Gateway, Reply, TEST_KEY};
use serde_json::json;

async fn run(gw: &Gateway, script: &str, args: &[&str], key: &str) -> Output {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts/llm")
        .join(script);
    let mut cmd = Command::new("bash");
    cmd.arg(path)
        .args(args)
        .env_remove("CURL_CA_BUNDLE")
        .env("GATEWAY", &gw.url)
        .env("GATEWAY_API_KEY", key)
        .env("GATEWAY_CA", gw.dir.0.join("cert.pem"))
        .env("GATEWAY_ENV_FILE", "/dev/null")
        .env("DEFAULT_MODEL", "llama3:instruct")
        .env_remove("LLAMA_MODEL")
        .env_remove("OPENAI_MODEL");
    actix_rt::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

#[actix_rt::test]
async fn llm_scripts_print_answers_and_fail_loudly() {
    if !common::skip::available(
        common::skip::all_run(&["bash", "curl", "jq"]),
        "bash, curl or jq",
    ) {
        return;
    }
    let ollama = FakeUpstream::start(|req| {
        let body = req.json();
        match (
            body["messages"][0]["content"].as_str(),
            body["stream"].as_bool(),
        ) {
            (Some("break"), _) => {
                let mut lines = ollama_stream_lines("llama3:instruct", &["半"]);
                lines.truncate(1);
                lines.push(json!({"error": "an error was encountered while running the model"}));
                Reply::ndjson(&lines)
            }
            (_, Some(false)) => Reply::json(
                200,
                &json!({"model":"llama3:instruct","created_at":"2025-01-01T00:00:00Z",
                "message":{"role":"assistant","content":"我是 Llama。"},"done":true,"done_reason":"stop"}),
            ),
            _ => Reply::ndjson(&ollama_stream_lines("llama3:instruct", &["您", "好", "！"])),
        }
    });
    let openai = FakeUpstream::start(|req| {
        if req.json()["stream"] == true {
            Reply::sse(openai_sse(&["Hel", "lo"], "stop"))
        } else {
            Reply::json(
                200,
                &json!({"choices":[{"index":0,"message":{"role":"assistant","content":"Hello!"},"finish_reason":"stop"}]}),
            )
        }
    });
    let gw = Gateway::start(Some(&ollama), Some(&openai), |_| {}).await;

    let out = run(&gw, "llama.sh", &["用一句話介紹你自己"], TEST_KEY).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "我是 Llama。\n");
    let sent = ollama.last().json();
    assert_eq!(sent["model"], "llama3:instruct");
    assert_eq!(sent["messages"][0]["content"], "用一句話介紹你自己");
    assert_eq!(sent["stream"], false);

    let out = run(&gw, "llama-stream.sh", &["hi"], TEST_KEY).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "您好！\n",
        "tokens printed, not JSON lines"
    );

    let out = run(&gw, "openai.sh", &["hi"], TEST_KEY).await;
    assert_eq!(text(&out.stdout), "Hello!\n");
    assert_eq!(openai.last().json()["model"], "gpt-4o-mini");
    let out = run(&gw, "openai-stream.sh", &["hi"], TEST_KEY).await;
    assert_eq!(text(&out.stdout), "Hello\n");

    let out = run(&gw, "all.sh", &["給我三個客服問候語"], TEST_KEY).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let all = text(&out.stdout);
    for part in [
        "== llama ==",
        "我是 Llama。",
        "== llama-stream ==",
        "您好！",
        "== openai ==",
        "Hello!",
        "== openai-stream ==",
    ] {
        assert!(all.contains(part), "{part} in {all}");
    }

    // Failures: the gateway's message, and a non-zero exit.
    for script in ["llama.sh", "llama-stream.sh"] {
        let out = run(&gw, script, &["hi"], "ogw_wrong").await;
        assert!(!out.status.success(), "{script}");
        assert!(
            text(&out.stderr).contains("invalid API key"),
            "{script}: {}",
            text(&out.stderr)
        );
    }
    let out = run(&gw, "llama-stream.sh", &["break"], TEST_KEY).await;
    assert!(!out.status.success());
    assert!(text(&out.stdout).starts_with("半"));
    assert!(text(&out.stderr).contains("an error was encountered while running the model"));
    let out = run(&gw, "all.sh", &["hi"], "ogw_wrong").await;
    assert!(!out.status.success(), "all.sh fails when one fails");
    gw.stop().await;
}
