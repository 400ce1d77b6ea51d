//! Token-budget helpers: a fake Ollama whose every route reports known counts, keys files
//! with `[[teams]]`, the documented prompt estimate computed independently of the
//! gateway's, reads of the ledger's windows, metrics by label set, and polling with a
//! deadline (never a sleep as synchronisation).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ollama_gateway::budget::{Ledger, Scope, Subject, Window, WindowSpec};
use serde_json::{json, Value};

use super::v1::{self, Flavour};
use super::{anthropic, key_entry, End, FakeUpstream, Gateway, Recorded, Reply, TEST_KEY};

/// What the fake Ollama reports for every whole or streamed chat and generate answer.
pub const PROMPT_EVAL: u64 = 13;
pub const EVAL: u64 = 21;
/// What it reports for `/api/embed`.
pub const EMBED_EVAL: u64 = 6;
/// The content chunks of its streamed answers (their count differs from `EVAL`, so a
/// charge tells reported counts from counted chunks).
pub const TOKENS: [&str; 3] = ["Hel", "lo", "!"];
/// Chunks a `stall` model streams before it stops sending (and holds the connection).
pub const STALL_CHUNKS: usize = 5;
const STALL_TEXT: [&str; STALL_CHUNKS] = ["t0 ", "t1 ", "t2 ", "t3 ", "t4 "];

/// The `done` line of an Ollama stream, reporting `prompt` and `eval` tokens.
fn done_line(model: &str, generate: bool, prompt: u64, eval: u64) -> Value {
    let mut line = json!({"model": model, "created_at": "2025-08-08T08:27:51Z", "done": true,
        "done_reason": "stop", "total_duration": 1000, "prompt_eval_count": prompt,
        "eval_count": eval});
    if generate {
        line["response"] = json!("");
    } else {
        line["message"] = json!({"role": "assistant", "content": ""});
    }
    line
}

fn part_line(model: &str, generate: bool, text: &str) -> Value {
    if generate {
        json!({"model": model, "created_at": "2025-08-08T08:27:50Z", "response": text, "done": false})
    } else {
        json!({"model": model, "created_at": "2025-08-08T08:27:50Z",
            "message": {"role": "assistant", "content": text}, "done": false})
    }
}

/// A fake Ollama answering `/api/chat`, `/api/generate` (whole or streamed, reporting
/// `PROMPT_EVAL` + `EVAL`), `/api/embed` (`EMBED_EVAL`), the legacy `/api/embeddings`
/// (no count, as Ollama), `/v1/messages` (11 + 2) and `/v1/*` (as `v1::answer`: chat
/// 11 + 7, completions 4 + 2, embeddings 3). Models named for a behaviour:
/// `exact-N` reports N tokens in all; `stall` streams `STALL_CHUNKS` content chunks and
/// then sends nothing more; `noisy` streams `TOKENS` with no counts in its last line.
pub fn ollama() -> FakeUpstream {
    FakeUpstream::start(answer)
}

fn answer(req: &Recorded) -> Reply {
    let body = req.json();
    let model = body["model"].as_str().unwrap_or("").to_string();
    if model == "fail" {
        return Reply::json(
            500,
            &json!({"error": "model runner has unexpectedly stopped"}),
        );
    }
    if model == "stall" && req.path == "/v1/chat/completions" {
        let chunks = v1::chat_chunks(Flavour::Ollama, &model, &STALL_TEXT, false, false, false);
        // The role chunk and the content chunks; no finish chunk, no [DONE].
        return Reply::stream(
            "text/event-stream",
            chunks[..1 + STALL_CHUNKS].to_vec(),
            End::Hold,
        );
    }
    if model == "stall" && req.path == "/v1/messages" {
        let events = anthropic::stream_events(&model, &STALL_TEXT, 11, 0);
        // message_start, content_block_start, ping, then the deltas.
        return Reply::stream(
            "text/event-stream",
            events[..3 + STALL_CHUNKS].to_vec(),
            End::Hold,
        );
    }
    if req.path.starts_with("/v1/messages") {
        return if body["stream"] == true {
            Reply::sse(anthropic::stream_events(&model, &["你", "好"], 11, 2))
        } else {
            Reply::json(200, &anthropic::message(&model, "你好", 11, 2))
        };
    }
    if req.path.starts_with("/v1/") {
        return v1::answer(Flavour::Ollama, "/v1", req);
    }
    // Ollama streams unless told not to.
    let stream = body["stream"] != false;
    let (prompt, eval) = match model.strip_prefix("exact-") {
        Some(n) => {
            let n: u64 = n.parse().unwrap();
            (n / 2, n - n / 2)
        }
        None => (PROMPT_EVAL, EVAL),
    };
    match req.path.as_str() {
        "/api/embed" => Reply::json(
            200,
            &json!({"model": model, "embeddings": [[0.25, -0.5, 1.0]],
                "total_duration": 1000, "load_duration": 10, "prompt_eval_count": EMBED_EVAL}),
        ),
        "/api/embeddings" => Reply::json(200, &json!({"embedding": [0.25, -0.5, 1.0]})),
        path @ ("/api/chat" | "/api/generate") => {
            let generate = path == "/api/generate";
            if model == "stall" {
                let lines: Vec<Value> = (0..STALL_CHUNKS)
                    .map(|i| part_line(&model, generate, &format!("t{i} ")))
                    .collect();
                return Reply::ndjson_until(&lines, End::Hold);
            }
            if !stream {
                let mut whole = done_line(&model, generate, prompt, eval);
                let text = TOKENS.concat();
                if generate {
                    whole["response"] = json!(text);
                } else {
                    whole["message"]["content"] = json!(text);
                }
                return Reply::json(200, &whole);
            }
            let mut lines: Vec<Value> = TOKENS
                .iter()
                .map(|t| part_line(&model, generate, t))
                .collect();
            let mut last = done_line(&model, generate, prompt, eval);
            if model == "noisy" {
                let o = last.as_object_mut().unwrap();
                o.remove("prompt_eval_count");
                o.remove("eval_count");
            }
            lines.push(last);
            Reply::ndjson(&lines)
        }
        _ => Reply::json(404, &json!({"error": "404 page not found"})),
    }
}

/// The documented prompt estimate (README "Token budgets"), computed here on its own: the
/// UTF-8 bytes of every string value except the model's name, `images` and `data` values
/// and `data:` URLs, divided by 4, rounded up.
pub fn estimate(body: &Value) -> u64 {
    fn text(v: &Value) -> u64 {
        match v {
            Value::String(s) if s.starts_with("data:") => 0,
            Value::String(s) => s.len() as u64,
            Value::Array(a) => a.iter().map(text).sum(),
            Value::Object(o) => o
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "model" | "images" | "data"))
                .map(|(_, v)| text(v))
                .sum(),
            _ => 0,
        }
    }
    text(body).div_ceil(4)
}

/// A `[[teams]]` entry with the given window lines (`tokens_per_day = 100`, ...).
pub fn team(name: &str, windows: &str) -> String {
    format!("[[teams]]\nname = \"{name}\"\n{windows}\n")
}

/// The keys file of the test key (team `test`) with `key_extra` lines, then `rest`.
pub fn keys(key_extra: &str, rest: &str) -> String {
    format!(
        "{}{rest}",
        key_entry("test-key", "test", TEST_KEY, key_extra)
    )
}

/// One window of a key or team, as the gateway's ledger holds it.
pub fn spec(scope: Scope, name: &str, window: Window, limit: u64) -> WindowSpec {
    WindowSpec {
        subject: Subject {
            scope,
            name: Arc::from(name),
        },
        window,
        limit,
    }
}

/// The used tokens of one window now.
pub fn used(gw: &Gateway, spec: &WindowSpec) -> u64 {
    gw.ledger.read(std::slice::from_ref(spec))[0].used
}

/// Polls `check` until it holds or `within` passes; whether it held.
pub async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls `used` of `spec` until it equals `want` (settlement follows the answer's end);
/// fails naming the value last seen.
pub async fn settles_to(gw: &Gateway, spec: &WindowSpec, want: u64, what: &str) {
    let mut last = 0;
    let ok = eventually(Duration::from_secs(5), || {
        last = used(gw, spec);
        last == want
    })
    .await;
    assert!(ok, "{what}: used {last}, expected {want}");
}

/// Polls an async `check` until it gives `Some`, or fails after `within` naming `what`.
pub async fn poll_async<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The labels of a Prometheus text line's series, and its value.
fn series(line: &str) -> Option<(&str, BTreeMap<String, String>, f64)> {
    if line.starts_with('#') || line.is_empty() {
        return None;
    }
    let (head, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match head.split_once('{') {
        Some((name, rest)) => (name, rest.strip_suffix('}')?),
        None => (head, ""),
    };
    let labels = labels
        .split(',')
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            Some((k.to_string(), v.trim_matches('"').to_string()))
        })
        .collect();
    Some((name, labels, value))
}

/// The value of the series `name` whose labels include `labels`, in Prometheus `text`.
pub fn metric_in(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter_map(series).find_map(|(n, have, v)| {
        (n == name
            && labels
                .iter()
                .all(|(k, want)| have.get(*k).is_some_and(|h| h == want)))
        .then_some(v)
    })
}

/// The gateway's metrics as its admin listener serves them.
pub async fn scrape(admin_url: &str) -> String {
    let mut resp = awc::Client::default()
        .get(format!("{admin_url}/metrics"))
        .send()
        .await
        .expect("admin answers");
    assert_eq!(resp.status().as_u16(), 200);
    String::from_utf8(resp.body().limit(16 << 20).await.unwrap().to_vec()).unwrap()
}

/// Whether `s` is a duration in OpenAI's (Go's) form: `1s`, `6m0s`, `1h2m3s`, `1.5s`,
/// `250ms`.
pub fn go_duration(s: &str) -> bool {
    let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
    let seconds = |d: &str| !d.is_empty() && !d.starts_with('.') && d.parse::<f64>().is_ok();
    if let Some(ms) = s.strip_suffix("ms") {
        return seconds(ms);
    }
    let Some(mut rest) = s.strip_suffix('s') else {
        return false;
    };
    if let Some((h, after)) = rest.split_once('h') {
        if !digits(h) {
            return false;
        }
        rest = after;
    }
    if let Some((m, after)) = rest.split_once('m') {
        if !digits(m) {
            return false;
        }
        rest = after;
    }
    seconds(rest)
}
