//! Seeing usage: `GET /usage` on the admin listener, `ollama-gateway usage` against a
//! running gateway and against a stopped one's store, and the `check-config` warnings
//! about budgets a request can never fit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use common::{key_entry, test_config, Gateway, TempDir, BIN};
use jiff::Timestamp;
use ollama_gateway::budget::clock::Calendar;
use ollama_gateway::budget::{
    Clock, Ledger, LocalLedger, RedbStore, Scope, Subject, SystemClock, Window, WindowSpec,
};
use serde_json::Value;

/// Two teams (one without windows), a key with a day budget of its own, a key without
/// any, and a trusted network with a month budget.
fn keys_text() -> String {
    format!(
        r#"[[teams]]
name = "alpha"
tokens_per_minute = 600
tokens_per_day = 100000

[[teams]]
name = "idle"

{}{}
[[networks]]
id = "lab"
team = "alpha"
cidrs = ["10.0.0.0/8"]
tokens_per_month = 700
"#,
        key_entry(
            "alpha-ci",
            "alpha",
            "ogw_usage_alpha_ci_0123456789abcdef",
            "tokens_per_day = 5000\nmax_output_tokens = 800"
        ),
        key_entry(
            "beta-dev",
            "beta",
            "ogw_usage_beta_dev_0123456789abcdef",
            ""
        ),
    )
}

fn spec(scope: Scope, name: &str, window: Window, limit: u64) -> WindowSpec {
    WindowSpec {
        subject: Subject {
            scope,
            name: name.into(),
        },
        window,
        limit,
    }
}

/// alpha-ci's windows as the keys file above sets them: its own, then its team's.
fn alpha_ci() -> Vec<WindowSpec> {
    vec![
        spec(Scope::Key, "alpha-ci", Window::Day, 5000),
        spec(Scope::Team, "alpha", Window::Minute, 600),
        spec(Scope::Team, "alpha", Window::Day, 100_000),
    ]
}

fn lab() -> Vec<WindowSpec> {
    vec![
        spec(Scope::Key, "lab", Window::Month, 700),
        spec(Scope::Team, "alpha", Window::Minute, 600),
        spec(Scope::Team, "alpha", Window::Day, 100_000),
    ]
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The binary with a clean environment, run in `dir`, off the test's thread (the gateway
/// it may ask runs in this process).
async fn cli(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .env_clear()
        .stdin(Stdio::null());
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn ok(out: &Output) -> (String, String) {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    (stdout, stderr)
}

/// The table row of one window, split on whitespace.
fn row(table: &str, scope: &str, name: &str, window: &str) -> Vec<String> {
    table
        .lines()
        .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
        .find(|cells| {
            cells.len() == 7 && cells[0] == scope && cells[1] == name && cells[2] == window
        })
        .unwrap_or_else(|| panic!("no row {scope} {name} {window} in\n{table}"))
}

fn field_names(v: &Value) -> Vec<&str> {
    v.as_object().unwrap().keys().map(String::as_str).collect()
}

fn resets_at(v: &Value) -> Timestamp {
    v["resets_at"].as_str().unwrap().parse().unwrap()
}

async fn get_usage(gw: &Gateway) -> (u16, String, Value) {
    let mut resp = awc::Client::default()
        .get(format!("{}/usage", gw.admin_url))
        .send()
        .await
        .unwrap();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = resp.body().await.unwrap();
    (
        resp.status().as_u16(),
        content_type,
        serde_json::from_slice(&body).unwrap(),
    )
}

#[actix_rt::test]
async fn admin_usage_shows_every_configured_window_and_what_is_spent() {
    let dir = TempDir::new("usage");
    std::fs::write(dir.0.join("keys.toml"), keys_text()).unwrap();
    let raw = test_config(&dir, None, None);
    let gw = Gateway::start_raw(raw, dir).await;
    let utc = Calendar::named("UTC").unwrap();
    let before = utc.period_end(Window::Day, Timestamp::now());

    let (status, content_type, body) = get_usage(&gw).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    assert_eq!(field_names(&body), ["keys", "teams"]);
    assert_eq!(field_names(&body["teams"]), ["alpha", "idle"]);
    assert_eq!(
        field_names(&body["teams"]["alpha"]),
        ["tokens_per_day", "tokens_per_minute"]
    );
    assert_eq!(body["teams"]["idle"], serde_json::json!({}));
    assert_eq!(field_names(&body["keys"]), ["alpha-ci", "beta-dev", "lab"]);
    // A key shows only its own windows; its team's are under the team.
    assert_eq!(field_names(&body["keys"]["alpha-ci"]), ["tokens_per_day"]);
    assert_eq!(body["keys"]["beta-dev"], serde_json::json!({}));
    assert_eq!(field_names(&body["keys"]["lab"]), ["tokens_per_month"]);
    let day = &body["keys"]["alpha-ci"]["tokens_per_day"];
    assert_eq!(
        (day["used"].as_u64(), day["limit"].as_u64()),
        (Some(0), Some(5000))
    );
    let after = utc.period_end(Window::Day, Timestamp::now());
    assert!([before, after].contains(&resets_at(day)), "{day}");
    let minute = &body["teams"]["alpha"]["tokens_per_minute"];
    assert_eq!(minute["limit"].as_u64(), Some(600));
    assert_eq!(minute["used"].as_u64(), Some(0));
    assert_eq!(
        body["keys"]["lab"]["tokens_per_month"]["limit"].as_u64(),
        Some(700)
    );

    // Reservations in flight count as used; settling replaces them by the real count.
    let hold = gw.ledger.reserve(&alpha_ci(), 300).unwrap();
    let (_, _, body) = get_usage(&gw).await;
    assert_eq!(body["keys"]["alpha-ci"]["tokens_per_day"]["used"], 300);
    assert_eq!(body["teams"]["alpha"]["tokens_per_day"]["used"], 300);
    let minute = body["teams"]["alpha"]["tokens_per_minute"]["used"]
        .as_u64()
        .unwrap();
    // The bucket refills at 10 tokens a second meanwhile.
    assert!((250..=300).contains(&minute), "{minute}");
    gw.ledger.settle(hold, 120);
    let hold = gw.ledger.reserve(&lab(), 50).unwrap();
    gw.ledger.settle(hold, 45);
    let (_, _, body) = get_usage(&gw).await;
    assert_eq!(body["keys"]["alpha-ci"]["tokens_per_day"]["used"], 120);
    assert_eq!(body["teams"]["alpha"]["tokens_per_day"]["used"], 165);
    assert_eq!(body["keys"]["lab"]["tokens_per_month"]["used"], 45);
    let minute = &body["teams"]["alpha"]["tokens_per_minute"];
    let used = minute["used"].as_u64().unwrap();
    assert!((100..=165).contains(&used), "{used}");
    // The bucket is full again once it has regained what it lacks.
    let full_in = resets_at(minute).duration_since(Timestamp::now());
    assert!(
        full_in.as_secs_f64() <= 16.5 && full_in.as_secs_f64() > 0.0,
        "{minute}"
    );

    // Other methods are refused.
    let resp = awc::Client::default()
        .post(format!("{}/usage", gw.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);

    // The CLI asks the running gateway: the same report, as JSON or as a table.
    let cwd = TempDir::new("usage-cli");
    let out = cli(&cwd.0, &["usage", "--url", &gw.admin_url, "--json"]).await;
    let (stdout, stderr) = ok(&out);
    assert!(
        stderr.contains(&format!("running gateway at {}/usage", gw.admin_url)),
        "{stderr}"
    );
    let printed: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(printed["keys"], body["keys"]);
    assert_eq!(
        printed["teams"]["alpha"]["tokens_per_day"],
        body["teams"]["alpha"]["tokens_per_day"]
    );
    let url = format!("{}/usage/", gw.admin_url);
    let out = cli(&cwd.0, &["usage", "--url", &url]).await;
    let (table, _) = ok(&out);
    assert_eq!(
        table
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        [
            "SCOPE",
            "NAME",
            "WINDOW",
            "USED",
            "LIMIT",
            "REMAINING",
            "RESETS_AT"
        ]
    );
    let day_reset = resets_at(&body["teams"]["alpha"]["tokens_per_day"]).to_string();
    assert_eq!(
        row(&table, "team", "alpha", "tokens_per_day"),
        [
            "team",
            "alpha",
            "tokens_per_day",
            "165",
            "100000",
            "99835",
            day_reset.as_str()
        ]
    );
    assert_eq!(
        row(&table, "key", "lab", "tokens_per_month")[3..6],
        ["45", "700", "655"]
    );
    assert_eq!(
        row(&table, "key", "beta-dev", "-"),
        ["key", "beta-dev", "-", "-", "-", "-", "-"]
    );
    gw.stop().await;
}

/// A config for the CLI: the keys file and state directory in `dir`, the admin listener
/// at `admin` (nothing listens there), days in Taipei.
fn write_config(dir: &Path, admin: &str) -> String {
    let file = dir.join("gateway.toml");
    std::fs::write(
        &file,
        format!(
            "[auth]\nkeys_file = {:?}\n\n[state]\ndir = {:?}\n\n[admin]\nlisten = {admin:?}\n\n[budgets]\ntimezone = \"Asia/Taipei\"\n",
            dir.join("keys.toml").display().to_string(),
            dir.join("state").display().to_string(),
        ),
    )
    .unwrap();
    file.display().to_string()
}

#[actix_rt::test]
async fn the_cli_reads_a_stopped_gateways_store() {
    let dir = TempDir::new("usage-stored");
    std::fs::write(dir.0.join("keys.toml"), keys_text()).unwrap();
    let taipei = Calendar::named("Asia/Taipei").unwrap();
    // What a gateway on this state directory left behind.
    {
        let store = Arc::new(RedbStore::open(&dir.0.join("state")).unwrap());
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let ledger = LocalLedger::open(clock, taipei.clone(), store).unwrap();
        let hold = ledger.reserve(&alpha_ci(), 500).unwrap();
        ledger.settle(hold, 400);
        let hold = ledger.reserve(&lab(), 60).unwrap();
        ledger.settle(hold, 50);
        // The key's day, the team's day, the network's month (minute buckets are not stored).
        assert_eq!(ledger.flush().unwrap(), 3);
    }
    let closed = common::closed_port_url();
    let closed = closed.trim_start_matches("http://").to_string();
    let config = write_config(&dir.0, &closed);

    let before = taipei.period_end(Window::Day, Timestamp::now());
    let out = cli(&dir.0, &["usage", "--config", &config, "--json"]).await;
    let after = taipei.period_end(Window::Day, Timestamp::now());
    let (stdout, stderr) = ok(&out);
    let store_file = dir.0.join("state").join("usage.redb");
    assert!(
        stderr.contains(&format!(
            "usage from the store file {}",
            store_file.display()
        )) && stderr.contains(&format!("nothing listens at http://{closed}/usage")),
        "{stderr}"
    );
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["teams"]["alpha"]["tokens_per_day"]["used"], 450);
    assert_eq!(report["keys"]["alpha-ci"]["tokens_per_day"]["used"], 400);
    assert_eq!(report["keys"]["lab"]["tokens_per_month"]["used"], 50);
    // Minute buckets are not stored: a stopped gateway's are full.
    assert_eq!(report["teams"]["alpha"]["tokens_per_minute"]["used"], 0);
    assert_eq!(report["keys"]["beta-dev"], serde_json::json!({}));
    // Days end at midnight in the configured time zone.
    let day = resets_at(&report["keys"]["alpha-ci"]["tokens_per_day"]);
    assert!([before, after].contains(&day), "{day}");
    assert_eq!(
        day.to_zoned_datetime(taipei.time_zone().clone()).time(),
        jiff::civil::time(0, 0, 0, 0)
    );

    // The admin listener switched off: straight to the store, as a table.
    let config = write_config(&dir.0, "");
    let out = cli(&dir.0, &["usage", "--config", &config]).await;
    let (table, stderr) = ok(&out);
    assert!(stderr.contains("the admin listener is off"), "{stderr}");
    assert_eq!(
        row(&table, "key", "alpha-ci", "tokens_per_day")[3..6],
        ["400", "5000", "4600"]
    );
    assert_eq!(
        row(&table, "team", "alpha", "tokens_per_minute")[3..6],
        ["0", "600", "600"]
    );

    // --url without a gateway there falls back to the store of --config.
    let out = cli(
        &dir.0,
        &[
            "usage",
            "--url",
            &format!("http://{closed}"),
            "--config",
            &config,
        ],
    )
    .await;
    let (table, _) = ok(&out);
    assert_eq!(
        row(&table, "key", "lab", "tokens_per_month")[3..6],
        ["50", "700", "650"]
    );

    // A gateway still running on the directory (its admin listener off) holds the store:
    // the CLI says so and how to ask it instead.
    let held = RedbStore::open(&dir.0.join("state")).unwrap();
    let out = cli(&dir.0, &["usage", "--config", &config]).await;
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let error: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(error.len(), 1, "{stderr}");
    assert!(
        error[0].contains("ask that gateway with --url")
            && error[0].contains(&store_file.display().to_string()),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    drop(held);
}

#[actix_rt::test]
async fn check_config_warns_about_a_cap_no_budget_can_hold() {
    let dir = TempDir::new("usage-check");
    let cert = dir.0.join("cert.pem");
    let key = dir.0.join("key.pem");
    ollama_gateway::tls::generate_self_signed(&cert, &key).unwrap();
    let keys = format!(
        "[[teams]]\nname = \"alpha\"\ntokens_per_minute = 500\n\n{}{}",
        key_entry(
            "x",
            "alpha",
            "ogw_usage_x_key_0123456789abcdef",
            "tokens_per_minute = 5000\nmax_output_tokens = 1024"
        ),
        key_entry(
            "roomy",
            "solo",
            "ogw_usage_roomy_0123456789abcdef",
            "tokens_per_minute = 5000\nmax_output_tokens = 1024"
        ),
    );
    std::fs::write(dir.0.join("keys.toml"), keys).unwrap();
    let file = dir.0.join("gateway.toml");
    let write = |limits: &str| {
        std::fs::write(
            &file,
            format!(
                "[tls]\ncert = {:?}\nkey = {:?}\n\n[auth]\nkeys_file = {:?}\n\n[limits]\n{limits}\n",
                cert.display().to_string(),
                key.display().to_string(),
                dir.0.join("keys.toml").display().to_string(),
            ),
        )
        .unwrap();
    };
    let file_arg = file.display().to_string();
    write("max_output_tokens = 2000\ntokens_per_day = 1500");
    let out = cli(&dir.0, &["check-config", "--config", &file_arg]).await;
    let (_, stderr) = ok(&out);
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .collect();
    assert_eq!(
        warnings,
        [
            "warning: [limits]: a request asking for its whole output cap (max_output_tokens = 2000) can never fit tokens_per_day = 1500 of a key that names neither",
            "warning: a request asking for its whole output cap (max_output_tokens = 1024) can never fit tokens_per_minute = 500 of team alpha (key x)",
        ],
        "{stderr}"
    );
    // Defaults that hold their cap: only the key's warning is left.
    write("max_output_tokens = 1000\ntokens_per_day = 1500");
    let out = cli(&dir.0, &["check-config", "--config", &file_arg]).await;
    let (_, stderr) = ok(&out);
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.starts_with("warning: "))
            .count(),
        1,
        "{stderr}"
    );
}
