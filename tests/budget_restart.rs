//! The day's token usage survives `kill -9`: the real binary with `GATEWAY_STATE_DIR` in a
//! temp dir spends tokens, its store write is seen in /metrics, it is killed with SIGKILL
//! and started again on the same directory, and its usage goes on from what was stored.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::budget::{self as b, keys, metric_in, scrape, team};
use common::{client_tls, repo_config, TempDir, BIN, TEST_KEY};
use serde_json::json;

/// A gateway process, killed on drop; its HTTPS and admin URLs from its log.
struct Proc {
    child: Child,
    url: String,
    admin: String,
}

impl Proc {
    fn start(dir: &Path, state: &Path, ollama_url: &str) -> Self {
        let mut child = Command::new(BIN)
            .args(["serve", "--config", &repo_config()])
            .current_dir(dir)
            .env_clear()
            .env("GATEWAY_LISTEN", "127.0.0.1:0")
            .env("GATEWAY__TLS__SELF_SIGNED_DIR", dir.join("certs"))
            .env("GATEWAY__SERVER__WORKERS", "1")
            .env("OLLAMA_BASE_URL", ollama_url)
            .env("GATEWAY_KEYS_FILE", dir.join("keys.toml"))
            .env("GATEWAY_ADMIN_LISTEN", "127.0.0.1:0")
            .env("GATEWAY_STATE_DIR", state)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { return };
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
        }
        let (mut url, mut admin) = (None, None);
        let mut seen = Vec::new();
        while url.is_none() || admin.is_none() {
            let line = lines
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("no listening lines; saw {seen:#?}"));
            url = url.or_else(|| address(&line, "https://127.0.0.1:"));
            admin = admin.or_else(|| address(&line, "http://127.0.0.1:"));
            seen.push(line);
        }
        // Keep draining the pipes so the process never blocks on a full one.
        std::thread::spawn(move || while lines.recv().is_ok() {});
        Self {
            child,
            url: url.unwrap(),
            admin: admin.unwrap(),
        }
    }

    /// SIGKILL: no flush on the way out.
    fn kill_9(mut self) {
        let status = Command::new("kill")
            .args(["-9", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        assert!(!exit.success(), "killed: {exit:?}");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The URL starting with `prefix` in a log line.
fn address(line: &str, prefix: &str) -> Option<String> {
    let start = line.find(prefix)?;
    let rest = &line[start..];
    let end = rest
        .find(|c: char| c == '"' || c.is_whitespace())
        .unwrap_or(rest.len());
    Some(rest[..end].to_string())
}

const DAY: [(&str, &str); 3] = [
    ("key_id", "test-key"),
    ("team", "test"),
    ("window", "tokens_per_day"),
];
const TEAM_DAY: [(&str, &str); 2] = [("team", "test"), ("window", "tokens_per_day")];

async fn chat(client: &awc::Client, url: &str, model: &str) -> u16 {
    let body = json!({"model": model, "stream": false,
        "messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": 8}});
    let mut resp = client
        .post(format!("{url}/api/chat"))
        .insert_header(("authorization", format!("Bearer {TEST_KEY}")))
        .send_json(&body)
        .await
        .expect("gateway answers");
    let _ = resp.body().await;
    resp.status().as_u16()
}

#[actix_rt::test]
async fn kill_9_and_restart_keeps_the_days_usage() {
    let ollama = b::ollama();
    let dir = TempDir::new("budget-restart");
    let state = dir.0.join("state");
    std::fs::write(
        dir.0.join("keys.toml"),
        keys(
            "tokens_per_day = 100000\ntokens_per_minute = 50000",
            &team("test", "tokens_per_day = 1000000"),
        ),
    )
    .unwrap();
    let first = Proc::start(&dir.0, &state, &ollama.url());
    let client = awc::Client::builder()
        .connector(
            awc::Connector::new().rustls_0_23(client_tls(&dir.0.join("certs/selfsigned-cert.pem"))),
        )
        .timeout(Duration::from_secs(30))
        .finish();
    let before = metric_in(
        &scrape(&first.admin).await,
        "gateway_budget_store_writes_total",
        &[],
    )
    .unwrap_or(0.0);
    assert_eq!(chat(&client, &first.url, "exact-300").await, 200);
    assert_eq!(chat(&client, &first.url, "exact-34").await, 200);
    // Settled in the running gateway, then written to the store (seen, not slept for).
    let admin = first.admin.clone();
    b::poll_async(Duration::from_secs(10), "the day's usage settled", || {
        let admin = admin.clone();
        async move {
            let text = scrape(&admin).await;
            (metric_in(&text, "gateway_key_budget_used_tokens", &DAY) == Some(334.0)).then_some(())
        }
    })
    .await;
    let settled_writes = metric_in(
        &scrape(&first.admin).await,
        "gateway_budget_store_writes_total",
        &[],
    )
    .unwrap_or(0.0);
    b::poll_async(
        Duration::from_secs(10),
        "a store write after settling",
        || {
            let admin = admin.clone();
            async move {
                let text = scrape(&admin).await;
                let writes = metric_in(&text, "gateway_budget_store_writes_total", &[])?;
                (writes > settled_writes.max(before)).then_some(())
            }
        },
    )
    .await;
    first.kill_9();
    assert!(
        state.join("usage.redb").exists(),
        "store under GATEWAY_STATE_DIR"
    );

    let second = Proc::start(&dir.0, &state, &ollama.url());
    let text = scrape(&second.admin).await;
    assert_eq!(
        metric_in(&text, "gateway_key_budget_used_tokens", &DAY),
        Some(334.0),
        "{text}"
    );
    assert_eq!(
        metric_in(&text, "gateway_team_budget_used_tokens", &TEAM_DAY),
        Some(334.0),
        "{text}"
    );
    // And it goes on from there.
    assert_eq!(chat(&client, &second.url, "exact-66").await, 200);
    let admin = second.admin.clone();
    b::poll_async(
        Duration::from_secs(10),
        "usage going on from the store",
        || {
            let admin = admin.clone();
            async move {
                let text = scrape(&admin).await;
                (metric_in(&text, "gateway_key_budget_used_tokens", &DAY) == Some(400.0))
                    .then_some(())
            }
        },
    )
    .await;
    drop(second);
}
