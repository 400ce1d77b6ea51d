//! End to end with a real Prometheus (Debian's `prometheus` package; CI installs it):
//! Prometheus scrapes the gateway's admin listener on loopback while traffic runs, a
//! gateway series is read back through Prometheus' HTTP API, and every panel query of the
//! Grafana dashboard is run against it and must return data without error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{ollama_stream_lines, openai_sse, FakeUpstream, Gateway, Reply, TempDir};
use ollama_gateway::config::RawOpenAi;
use serde_json::{json, Value};

/// A key whose budget no request fits.
const TIGHT_KEY: &str = "ogw_test_tight_budget_key_0123";

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Every `expr` of every panel (rows included), with the dashboard variables filled in.
fn dashboard_queries() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/monitoring/grafana/dashboards/ollama-gateway.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    fn walk(panels: &Value, out: &mut Vec<String>) {
        for panel in panels.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push(
                        expr.replace("$__rate_interval", "1m")
                            .replace("$team", ".*")
                            .replace("$model", ".*"),
                    );
                }
            }
            walk(&panel["panels"], out);
        }
    }
    walk(&dashboard["panels"], &mut out);
    out
}

/// An instant query; `None` while Prometheus is not up yet.
async fn query(client: &awc::Client, base: &str, expr: &str) -> Option<Value> {
    let mut resp = client
        .get(format!("{base}/api/v1/query"))
        .query(&[("query", expr)])
        .unwrap()
        .send()
        .await
        .ok()?;
    resp.json::<Value>().limit(1 << 24).await.ok()
}

#[actix_rt::test]
async fn prometheus_scrapes_the_gateway_and_every_dashboard_query_returns_data() {
    if !common::skip::available(
        common::skip::runs("prometheus", &["--version"]),
        "prometheus (Debian package prometheus)",
    ) {
        return;
    }
    let queries = dashboard_queries();
    assert!(
        queries.len() >= 10,
        "the dashboard has its panels: {queries:?}"
    );

    let ollama = FakeUpstream::start(|req| {
        if req.path == "/api/version" {
            return Reply::json(200, &json!({"version":"0.5.1"}));
        }
        let mut lines = ollama_stream_lines("llama3", &["a", "b", "c"]);
        let last = lines.last_mut().unwrap();
        last["load_duration"] = json!(2_000_000_000u64);
        last["eval_duration"] = json!(100_000_000u64);
        Reply::ndjson(&lines)
    });
    let openai = FakeUpstream::start(|_| Reply::sse(openai_sse(&["x"], "stop")));
    let down = common::closed_port_url();
    let gw = Gateway::start(Some(&ollama), Some(&openai), move |raw| {
        raw.upstreams.insert(
            "down".into(),
            RawOpenAi {
                base_url: format!("{down}/v1"),
                ..RawOpenAi::default()
            },
        );
    })
    .await;
    // Budgets roomy enough for all the traffic below, so the budget panels have series; the
    // second key's minute budget is smaller than any reservation, so its requests are
    // refused with reason token_budget.
    gw.set_keys(&format!(
        "[[teams]]\nname = \"test\"\ntokens_per_minute = 10000000\ntokens_per_day = 1000000000\ntokens_per_month = 10000000000\n\n{}{}",
        common::key_entry("test-key", "test", common::TEST_KEY, "tokens_per_day = 100000000"),
        common::key_entry("tight", "test", TIGHT_KEY, "tokens_per_minute = 10"),
    ));

    let dir = TempDir::new("prom");
    let port = free_port();
    let target = gw.admin_url.trim_start_matches("http://").to_string();
    let config = dir.0.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: ollama-gateway\n    static_configs:\n      - targets: [\"{target}\"]\n"
        ),
    )
    .unwrap();
    let _prometheus = Prometheus(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish();

    // Traffic keeps running while Prometheus scrapes, until every panel has data.
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut missing: Vec<String>;
    loop {
        tick.tick().await;
        for (model, key) in [
            ("llama3", common::TEST_KEY),
            ("openai/gpt-4o-mini", common::TEST_KEY),
            ("down/x", common::TEST_KEY),
            ("llama3", "ogw_wrong"),
            ("llama3", TIGHT_KEY),
        ] {
            let body = serde_json::to_vec(&json!({"model": model, "messages": []})).unwrap();
            gw.post_exact("/api/chat", body, &[("x-api-key", key)])
                .await;
        }
        missing = Vec::new();
        let Some(series) = query(&client, &base, "gateway_requests_total").await else {
            assert!(
                tokio::time::Instant::now() < deadline,
                "Prometheus never came up"
            );
            continue;
        };
        let read_back = series["data"]["result"]
            .as_array()
            .is_some_and(|r| r.iter().any(|s| s["metric"]["job"] == "ollama-gateway"));
        if !read_back {
            missing.push("gateway_requests_total".into());
        }
        for expr in &queries {
            let answer = query(&client, &base, expr).await.unwrap_or_default();
            assert_eq!(answer["status"], "success", "{expr}: {answer}");
            if answer["data"]["result"]
                .as_array()
                .is_none_or(|r| r.is_empty())
            {
                missing.push(expr.clone());
            }
        }
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no data for: {missing:#?}"
        );
    }
    // The refusals panel shows real refusals (the tight key's), not only a zero series.
    assert!(
        gw.metric("gateway_rejections_total{reason=\"token_budget\"}") > 0.0,
        "the tight key was refused for its budget"
    );
    gw.stop().await;
}
