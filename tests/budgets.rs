//! Token budgets over real sockets (issue 15): admission exact under concurrency, the
//! reservation replaced by the counts the upstream reports on every token-spending route
//! of both upstreams, the 429 of each route's shape, the `x-ratelimit-*-tokens` headers,
//! the output and context caps as the upstream receives them, a team budget shared by two
//! keys, a budget edited in the keys file, a client leaving mid-stream, an upstream that
//! reports no counts, and the official SDKs' own rate-limit errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::budget::{
    self as b, estimate, keys, settles_to, spec, team, EMBED_EVAL, EVAL, PROMPT_EVAL, STALL_CHUNKS,
};
use common::{key_entry, v1, FakeUpstream, Gateway, TEST_KEY};
use ollama_gateway::budget::{Scope, Window};
use serde_json::{json, Value};

const KEY_A: &str = "ogw_alpha_first_key_0123456789ab";
const KEY_B: &str = "ogw_alpha_second_key_0123456789a";

async fn post(
    gw: &Gateway,
    path: &str,
    body: &Value,
) -> (u16, awc::http::header::HeaderMap, Value) {
    post_as(gw, TEST_KEY, path, body).await
}

async fn post_as(
    gw: &Gateway,
    key: &str,
    path: &str,
    body: &Value,
) -> (u16, awc::http::header::HeaderMap, Value) {
    let bearer = format!("Bearer {key}");
    let (status, headers, bytes) = gw
        .post_exact(
            path,
            serde_json::to_vec(body).unwrap(),
            &[("authorization", &bearer)],
        )
        .await;
    let parsed = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, headers, parsed)
}

fn chat(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
}

fn header<'a>(headers: &'a awc::http::header::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().unwrap())
}

fn day(scope: Scope, name: &str, limit: u64) -> ollama_gateway::budget::WindowSpec {
    spec(scope, name, Window::Day, limit)
}

/// 50 concurrent requests on two workers, against a team budget of exactly seven
/// reservations, each of which the fake answers with a count equal to its reservation
/// (so that no settlement frees room): seven 200s, 43 429s, seven requests upstream.
#[actix_rt::test]
async fn fifty_concurrent_requests_against_room_for_seven_admit_exactly_seven() {
    let ollama = b::ollama();
    let gw = Gateway::start(Some(&ollama), None, |raw| raw.server.workers = 2).await;
    let body = json!({"model": "exact-100", "stream": false,
        "messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": 98}});
    // "user" and "hi": 6 bytes, 2 tokens; plus the 98 asked for.
    assert_eq!(estimate(&body) + 98, 100);
    gw.set_keys(&keys("", &team("test", "tokens_per_day = 700")));
    let requests = (0..50).map(|_| post(&gw, "/api/chat", &body));
    let results = futures_util::future::join_all(requests).await;
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let refused = results.iter().filter(|r| r.0 == 429).count();
    assert_eq!(
        (ok, refused),
        (7, 43),
        "{:?}",
        results.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    assert_eq!(ollama.requests().len(), 7);
    settles_to(&gw, &day(Scope::Team, "test", 700), 700, "team day").await;
    assert_eq!(
        gw.metric(r#"gateway_rejections_total{reason="token_budget"}"#),
        43.0
    );
    gw.stop().await;
}

/// Each route, whole and streamed, to Ollama: the key's day window goes up by exactly
/// what the fake reported.
#[actix_rt::test]
async fn every_route_to_ollama_is_charged_the_counts_it_reports() {
    let ollama = b::ollama();
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;
    gw.set_keys(&keys("tokens_per_day = 1000000", ""));
    let window = day(Scope::Key, "test-key", 1_000_000);
    let m = "llama3";
    let legacy = json!({"model": m, "prompt": "hello world!"});
    let cases: Vec<(&str, Value, u64)> = vec![
        ("/api/chat", chat(m, false), PROMPT_EVAL + EVAL),
        ("/api/chat", chat(m, true), PROMPT_EVAL + EVAL),
        (
            "/api/generate",
            json!({"model": m, "prompt": "hi", "stream": false}),
            PROMPT_EVAL + EVAL,
        ),
        (
            "/api/generate",
            json!({"model": m, "prompt": "hi"}),
            PROMPT_EVAL + EVAL,
        ),
        ("/api/embed", json!({"model": m, "input": "hi"}), EMBED_EVAL),
        // The legacy route reports no count: its prompt estimate is charged.
        ("/api/embeddings", legacy.clone(), estimate(&legacy)),
        ("/v1/chat/completions", chat(m, false), 11 + 7),
        ("/v1/chat/completions", chat(m, true), 11 + 7),
        (
            "/v1/completions",
            json!({"model": m, "prompt": "def"}),
            4 + 2,
        ),
        (
            "/v1/completions",
            json!({"model": m, "prompt": "def", "stream": true}),
            4 + 2,
        ),
        ("/v1/embeddings", json!({"model": m, "input": "hi"}), 3),
        (
            "/v1/messages",
            json!({"model": m, "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}),
            11 + 2,
        ),
        (
            "/v1/messages",
            json!({"model": m, "max_tokens": 64, "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
            11 + 2,
        ),
    ];
    let mut total = 0;
    for (path, body, charged) in cases {
        let (status, _, got) = post(&gw, path, &body).await;
        assert_eq!(status, 200, "{path} {body}: {got}");
        total += charged;
        settles_to(&gw, &window, total, &format!("{path} {body}")).await;
    }
    gw.stop().await;
}

/// The same routes with an OpenAI model: Ollama's routes translated, `/v1` relayed; the
/// OpenAI fake reports chat 11 + 7, completions 4 + 2, embeddings 3.
#[actix_rt::test]
async fn every_route_to_openai_is_charged_the_counts_it_reports() {
    let openai = v1::openai();
    let gw = Gateway::start(None, Some(&openai), |_| {}).await;
    gw.set_keys(&keys("tokens_per_day = 1000000", ""));
    let window = day(Scope::Key, "test-key", 1_000_000);
    let m = "openai/gpt-4o-mini";
    let cases: Vec<(&str, Value, u64)> = vec![
        ("/api/chat", chat(m, false), 18),
        ("/api/chat", chat(m, true), 18),
        (
            "/api/generate",
            json!({"model": m, "prompt": "hi", "stream": false}),
            18,
        ),
        ("/api/generate", json!({"model": m, "prompt": "hi"}), 18),
        ("/api/embed", json!({"model": m, "input": "hi"}), 3),
        ("/api/embeddings", json!({"model": m, "prompt": "hi"}), 3),
        ("/v1/chat/completions", chat(m, false), 18),
        ("/v1/chat/completions", chat(m, true), 18),
        ("/v1/completions", json!({"model": m, "prompt": "def"}), 6),
        (
            "/v1/completions",
            json!({"model": m, "prompt": "def", "stream": true}),
            6,
        ),
        ("/v1/embeddings", json!({"model": m, "input": "hi"}), 3),
    ];
    let mut total = 0;
    for (path, body, charged) in cases {
        let (status, _, got) = post(&gw, path, &body).await;
        assert_eq!(status, 200, "{path} {body}: {got}");
        total += charged;
        settles_to(&gw, &window, total, &format!("{path} {body}")).await;
    }
    let text = b::scrape(&gw.admin_url).await;
    let reported = b::metric_in(
        &text,
        "gateway_budget_charged_tokens_total",
        &[
            ("key_id", "test-key"),
            ("team", "test"),
            ("basis", "reported"),
        ],
    );
    assert_eq!(reported, Some(total as f64), "{text}");
    gw.stop().await;
}

/// A day window used up: every route answers 429 in its own shape, naming the key, the
/// window's field and when it resets, with Retry-After, and sends nothing upstream.
#[actix_rt::test]
async fn an_exhausted_day_is_a_429_in_each_routes_shape_and_nothing_goes_upstream() {
    let ollama = b::ollama();
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;
    gw.set_keys(&keys("tokens_per_day = 1000", ""));
    // A small reservation that the fake's report of 1000 overruns: the day is spent.
    let spend = json!({"model": "exact-1000", "stream": false,
        "messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": 8}});
    assert_eq!(post(&gw, "/api/chat", &spend).await.0, 200);
    settles_to(&gw, &day(Scope::Key, "test-key", 1000), 1000, "spent").await;
    let sent = ollama.requests().len();
    let want = "token budget of key test-key exhausted (tokens_per_day); resets in ";
    let msg = json!([{"role": "user", "content": "hi"}]);
    // Small reservations (an output limit asked for), so that each is refused for want of
    // room, not as one that can never fit.
    let few = json!({"num_predict": 8});
    let mut small_chat = chat("llama3", false);
    small_chat["options"] = few.clone();
    let ollama_routes = [
        ("/api/chat", small_chat),
        (
            "/api/generate",
            json!({"model": "llama3", "prompt": "hi", "options": few}),
        ),
        ("/api/embed", json!({"model": "llama3", "input": "hi"})),
        (
            "/api/embeddings",
            json!({"model": "llama3", "prompt": "hi"}),
        ),
    ];
    let openai_routes = [
        (
            "/v1/chat/completions",
            json!({"model": "llama3", "stream": true, "max_tokens": 8,
            "messages": msg}),
        ),
        (
            "/v1/completions",
            json!({"model": "llama3", "prompt": "hi", "max_tokens": 8}),
        ),
        ("/v1/embeddings", json!({"model": "llama3", "input": "hi"})),
    ];
    let mut answers = Vec::new();
    for (path, body) in &ollama_routes {
        let (status, headers, got) = post(&gw, path, body).await;
        assert_eq!(status, 429, "{path}: {got}");
        let text = got["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{path}: {got}"));
        assert!(text.starts_with(want), "{path}: {text}");
        answers.push((path.to_string(), headers, text.to_string()));
    }
    for (path, body) in &openai_routes {
        let (status, headers, got) = post(&gw, path, body).await;
        assert_eq!(status, 429, "{path}: {got}");
        let e = &got["error"];
        assert_eq!(e["type"], "tokens", "{path}: {got}");
        assert_eq!(e["code"], "rate_limit_exceeded", "{path}: {got}");
        let text = e["message"].as_str().unwrap();
        assert!(text.starts_with(want), "{path}: {text}");
        answers.push((path.to_string(), headers, text.to_string()));
    }
    let (status, headers, got) = post(
        &gw,
        "/v1/messages",
        &json!({"model": "llama3", "max_tokens": 8, "messages": msg}),
    )
    .await;
    assert_eq!(status, 429, "{got}");
    assert_eq!(got["type"], "error", "{got}");
    assert_eq!(got["error"]["type"], "rate_limit_error", "{got}");
    let text = got["error"]["message"].as_str().unwrap();
    assert!(text.starts_with(want), "{text}");
    answers.push(("/v1/messages".into(), headers, text.to_string()));
    for (path, headers, text) in &answers {
        let retry: u64 = header(headers, "retry-after")
            .unwrap_or_else(|| panic!("{path}: no Retry-After"))
            .parse()
            .unwrap();
        assert!((1..=86_400).contains(&retry), "{path}: Retry-After {retry}");
        // "resets in 3h12m": the same time as Retry-After, in words.
        let when = text.strip_prefix(want).unwrap();
        assert!(when.ends_with('m') || when.ends_with('s'), "{path}: {when}");
        assert_eq!(
            header(headers, "x-ratelimit-limit-tokens"),
            Some("1000"),
            "{path}"
        );
        assert_eq!(
            header(headers, "x-ratelimit-remaining-tokens"),
            Some("0"),
            "{path}"
        );
    }
    assert_eq!(ollama.requests().len(), sent, "nothing went upstream");
    assert_eq!(
        gw.metric(r#"gateway_rejections_total{reason="token_budget"}"#),
        8.0
    );
    gw.stop().await;
}

/// A reservation larger than the window's whole limit: 429 saying it can never fit,
/// with the window's field and its limit, at once (nothing spent before it).
#[actix_rt::test]
async fn a_reservation_that_can_never_fit_says_so() {
    let ollama = b::ollama();
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;
    gw.set_keys(&keys("tokens_per_minute = 100", ""));
    let body = json!({"model": "llama3", "stream": false,
        "messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": 500}});
    let (status, headers, got) = post(&gw, "/api/chat", &body).await;
    assert_eq!(status, 429, "{got}");
    let text = got["error"].as_str().unwrap();
    assert!(
        text.starts_with(&format!(
            "token budget of key test-key is too small for this request (tokens_per_minute = 100): it reserves an estimated {} tokens",
            estimate(&body) + 500
        )),
        "{text}"
    );
    assert!(header(&headers, "retry-after").is_some());
    // No request asked for: the default reservation of 1024 cannot fit either.
    let asked_none = chat("llama3", false);
    let (status, _, got) = post(&gw, "/v1/chat/completions", &asked_none).await;
    assert_eq!(status, 429, "{got}");
    let reserves = format!(
        "reserves an estimated {} tokens",
        estimate(&asked_none) + 1024
    );
    assert!(
        got["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&reserves),
        "{got}"
    );
    // One that fits goes through.
    let small = json!({"model": "llama3", "stream": false,
        "messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": 50}});
    assert_eq!(post(&gw, "/api/chat", &small).await.0, 200);
    assert_eq!(ollama.requests().len(), 1);
    gw.stop().await;
}

/// The headers describe the window with the least room: the key's minute bucket while it
/// is the tightest, the team's day once that is.
#[actix_rt::test]
async fn answers_carry_the_tightest_windows_ratelimit_token_headers() {
    let ollama = b::ollama();
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;
    gw.set_keys(&keys(
        "tokens_per_minute = 1000",
        &team("test", "tokens_per_day = 100000"),
    ));
    let body = |n: u64, stream: bool| {
        json!({"model": format!("exact-{n}"), "stream": stream,
            "messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": 8}})
    };
    let (status, headers, _) = post(&gw, "/api/chat", &body(600, false)).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-ratelimit-limit-tokens"), Some("1000"));
    let remaining: u64 = header(&headers, "x-ratelimit-remaining-tokens")
        .unwrap()
        .parse()
        .unwrap();
    assert!(remaining <= 1000, "{remaining}");
    let reset = header(&headers, "x-ratelimit-reset-tokens").unwrap();
    assert!(b::go_duration(reset), "{reset}");
    settles_to(&gw, &day(Scope::Team, "test", 100_000), 600, "team day").await;
    // 600 spent from a bucket refilling 1000 a minute: well under 1000 left, and it is
    // full again in under a minute.
    let (status, headers, _) = post(&gw, "/api/chat", &body(10, true)).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-ratelimit-limit-tokens"), Some("1000"));
    let remaining: u64 = header(&headers, "x-ratelimit-remaining-tokens")
        .unwrap()
        .parse()
        .unwrap();
    assert!(remaining < 600, "{remaining}");
    let reset = header(&headers, "x-ratelimit-reset-tokens").unwrap();
    assert!(b::go_duration(reset) && !reset.contains('h'), "{reset}");
    // Now a team day smaller than the key's minute: it is the tightest, and resets in hours.
    gw.set_keys(&keys(
        "tokens_per_minute = 1000",
        &team("test", "tokens_per_day = 900"),
    ));
    let (status, headers, _) = post(&gw, "/api/chat", &body(10, false)).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-ratelimit-limit-tokens"), Some("900"));
    let remaining: u64 = header(&headers, "x-ratelimit-remaining-tokens")
        .unwrap()
        .parse()
        .unwrap();
    assert!(remaining <= 900 - 610, "{remaining}");
    let reset = header(&headers, "x-ratelimit-reset-tokens").unwrap();
    assert!(b::go_duration(reset), "{reset}");
    // An identity without budgets gets none of them.
    gw.set_keys(&keys("", ""));
    let (_, headers, _) = post(&gw, "/api/chat", &chat("llama3", false)).await;
    assert_eq!(header(&headers, "x-ratelimit-limit-tokens"), None);
    gw.stop().await;
}

/// `max_output_tokens` and `max_context` as the upstreams receive them: added when absent,
/// clamped when larger, left when smaller; in Ollama's options and in OpenAI's and
/// Anthropic's `max_tokens`.
#[actix_rt::test]
async fn caps_are_written_into_what_the_upstreams_receive() {
    let ollama = b::ollama();
    let openai = v1::openai();
    let gw = Gateway::start(Some(&ollama), Some(&openai), |_| {}).await;
    gw.set_keys(&keys("max_output_tokens = 50\nmax_context = 2048", ""));
    let options = |o: Value| {
        json!({"model": "llama3", "stream": false, "messages": [{"role": "user", "content": "hi"}],
            "options": o})
    };
    let last_options = |fake: &FakeUpstream| fake.last().json()["options"].clone();
    let cases = [
        (chat("llama3", false), json!(50), Value::Null),
        (options(json!({"num_predict": 500})), json!(50), Value::Null),
        (
            options(json!({"num_predict": 10, "num_ctx": 1024})),
            json!(10),
            json!(1024),
        ),
        (
            options(json!({"num_ctx": 8192, "temperature": 0.5})),
            json!(50),
            json!(2048),
        ),
    ];
    for (body, predict, ctx) in cases {
        assert_eq!(post(&gw, "/api/chat", &body).await.0, 200, "{body}");
        let got = last_options(&ollama);
        assert_eq!(got["num_predict"], predict, "{body} -> {got}");
        assert_eq!(got["num_ctx"], ctx, "{body} -> {got}");
    }
    assert_eq!(last_options(&ollama)["temperature"], 0.5);
    assert_eq!(
        post(
            &gw,
            "/api/generate",
            &json!({"model": "llama3", "prompt": "hi"})
        )
        .await
        .0,
        200
    );
    assert_eq!(last_options(&ollama)["num_predict"], 50);
    // Embeddings generate nothing: no num_predict, but num_ctx is clamped.
    let embed = json!({"model": "llama3", "input": "hi", "options": {"num_ctx": 4096}});
    assert_eq!(post(&gw, "/api/embed", &embed).await.0, 200);
    assert_eq!(last_options(&ollama)["num_ctx"], 2048);
    // Ollama's /v1 and /v1/messages.
    assert_eq!(
        post(&gw, "/v1/chat/completions", &chat("llama3", false))
            .await
            .0,
        200
    );
    assert_eq!(ollama.last().json()["max_tokens"], 50);
    let mut asked = chat("llama3", true);
    asked["max_completion_tokens"] = json!(500);
    assert_eq!(post(&gw, "/v1/chat/completions", &asked).await.0, 200);
    let sent = ollama.last().json();
    assert_eq!(sent["max_completion_tokens"], 50, "{sent}");
    assert!(sent.get("max_tokens").is_none(), "{sent}");
    let mut asked = json!({"model": "llama3", "prompt": "def", "max_tokens": 20});
    assert_eq!(post(&gw, "/v1/completions", &asked).await.0, 200);
    assert_eq!(ollama.last().json()["max_tokens"], 20);
    asked["max_tokens"] = json!(5000);
    assert_eq!(post(&gw, "/v1/completions", &asked).await.0, 200);
    assert_eq!(ollama.last().json()["max_tokens"], 50);
    let messages = json!({"model": "llama3", "max_tokens": 4096,
        "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(post(&gw, "/v1/messages", &messages).await.0, 200);
    assert_eq!(ollama.last().json()["max_tokens"], 50);
    // Translated to the OpenAI upstream: the chat it receives has max_tokens of the cap.
    assert_eq!(
        post(&gw, "/api/chat", &chat("openai/gpt-4o-mini", false))
            .await
            .0,
        200
    );
    let sent = openai.last().json();
    let limit = sent
        .get("max_tokens")
        .or_else(|| sent.get("max_completion_tokens"))
        .unwrap_or_else(|| panic!("no output limit in {sent}"));
    assert_eq!(limit, &json!(50), "{sent}");
    assert_eq!(
        post(
            &gw,
            "/v1/chat/completions",
            &chat("openai/gpt-4o-mini", true)
        )
        .await
        .0,
        200
    );
    assert_eq!(openai.last().json()["max_tokens"], 50);
    gw.stop().await;
}

fn team_keys(team_day: u64, b_extra: &str) -> String {
    format!(
        "{}{}{}",
        key_entry("alpha-a", "alpha", KEY_A, ""),
        key_entry("alpha-b", "alpha", KEY_B, b_extra),
        team("alpha", &format!("tokens_per_day = {team_day}"))
    )
}

/// Two keys of team alpha spend from one day budget; once it is spent, either is refused,
/// the message naming the team.
#[actix_rt::test]
async fn one_team_budget_is_shared_by_its_two_keys() {
    let ollama = b::ollama();
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;
    gw.set_keys(&team_keys(100, "tokens_per_day = 1000"));
    let body = |n: u64| {
        json!({"model": format!("exact-{n}"), "stream": false,
            "messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": 1}})
    };
    let team_day = day(Scope::Team, "alpha", 100);
    assert_eq!(post_as(&gw, KEY_A, "/api/chat", &body(60)).await.0, 200);
    settles_to(&gw, &team_day, 60, "after a").await;
    assert_eq!(post_as(&gw, KEY_B, "/api/chat", &body(40)).await.0, 200);
    settles_to(&gw, &team_day, 100, "after b").await;
    settles_to(&gw, &day(Scope::Key, "alpha-b", 1000), 40, "b's own").await;
    let sent = ollama.requests().len();
    for key in [KEY_A, KEY_B] {
        let (status, _, got) = post_as(&gw, key, "/api/chat", &body(1)).await;
        assert_eq!(status, 429, "{got}");
        let text = got["error"].as_str().unwrap();
        assert!(
            text.starts_with("token budget of team alpha exhausted (tokens_per_day); resets in "),
            "{text}"
        );
    }
    assert_eq!(ollama.requests().len(), sent);
    let text = b::scrape(&gw.admin_url).await;
    let team = [("team", "alpha"), ("window", "tokens_per_day")];
    assert_eq!(
        b::metric_in(&text, "gateway_team_budget_used_tokens", &team),
        Some(100.0),
        "{text}"
    );
    assert_eq!(
        b::metric_in(&text, "gateway_team_budget_limit_tokens", &team),
        Some(100.0)
    );
    assert_eq!(
        b::metric_in(&text, "gateway_team_budget_remaining_tokens", &team),
        Some(0.0)
    );
    let key_b = [
        ("key_id", "alpha-b"),
        ("team", "alpha"),
        ("window", "tokens_per_day"),
    ];
    assert_eq!(
        b::metric_in(&text, "gateway_key_budget_used_tokens", &key_b),
        Some(40.0)
    );
    assert_eq!(
        b::metric_in(&text, "gateway_key_budget_remaining_tokens", &key_b),
        Some(960.0)
    );
    gw.stop().await;
}

/// A budget edited in the keys file applies without a restart, both ways, and the usage
/// so far is kept across the edit.
#[actix_rt::test]
async fn a_budget_edited_in_the_keys_file_applies_without_a_restart() {
    let ollama = b::ollama();
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;
    gw.set_keys(&keys("tokens_per_day = 50", ""));
    let body = json!({"model": "exact-50", "stream": false,
        "messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": 4}});
    assert_eq!(post(&gw, "/api/chat", &body).await.0, 200);
    settles_to(&gw, &day(Scope::Key, "test-key", 50), 50, "spent").await;
    assert_eq!(post(&gw, "/api/chat", &body).await.0, 429);
    gw.set_keys(&keys("tokens_per_day = 10000", ""));
    let (status, headers, _) = post(&gw, "/api/chat", &body).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-ratelimit-limit-tokens"), Some("10000"));
    settles_to(&gw, &day(Scope::Key, "test-key", 10_000), 100, "kept").await;
    // 100 used and 6 to reserve: 105 has no room for it.
    gw.set_keys(&keys("tokens_per_day = 105", ""));
    let (status, _, got) = post(&gw, "/api/chat", &body).await;
    assert_eq!(status, 429, "{got}");
    // Removing the budget removes the refusal.
    gw.set_keys(&keys("", ""));
    assert_eq!(post(&gw, "/api/chat", &body).await.0, 200);
    gw.stop().await;
}

/// A client that reads part of a stream and leaves is charged its prompt estimate plus
/// what the upstream generated (one token a content chunk; no count was reported), and
/// the reservation does not stay held.
#[actix_rt::test]
async fn a_client_leaving_mid_stream_is_charged_what_was_generated() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ollama = b::ollama();
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;
    gw.set_keys(&keys("tokens_per_day = 100000", ""));
    let window = day(Scope::Key, "test-key", 100_000);
    let body = json!({"model": "stall", "messages": [{"role": "user", "content": "tell me a story"}],
        "options": {"num_predict": 500}});
    let text = body.to_string();
    let mut tls = gw.raw_tls().await;
    tls.write_all(common::raw_chat_request(&text, "").as_bytes())
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    // Until the last content chunk arrived (as `leave_sse` does): the stream is held
    // open after it, and every chunk the gateway relayed counts. Leaving after the first
    // two raced the gateway's relay of the rest.
    while !String::from_utf8_lossy(&seen).contains("t4 ") {
        let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
            .await
            .expect("stream in time")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    // While the stream runs, its reservation (estimate + 500) is held.
    assert!(b::used(&gw, &window) >= 500, "{}", b::used(&gw, &window));
    assert!(ollama.wait_requests(1, Duration::from_secs(5)).await);
    drop(tls);
    assert!(
        ollama.wait_closed(Duration::from_secs(10)).await,
        "upstream dropped"
    );
    settles_to(&gw, &window, estimate(&body) + STALL_CHUNKS as u64, "left").await;
    gw.stop().await;
}

/// An upstream that reports no counts is charged the estimate (prompt estimate plus one
/// token a streamed content chunk), counted as `basis="estimated"`: Ollama's stream whose
/// last line has no counts (three content chunks).
#[actix_rt::test]
async fn an_ollama_stream_without_counts_is_charged_the_estimate_labelled_estimated() {
    let ollama = b::ollama();
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;
    gw.set_keys(&keys("tokens_per_day = 100000", ""));
    let window = day(Scope::Key, "test-key", 100_000);
    let noisy = chat("noisy", true);
    assert_eq!(post(&gw, "/api/chat", &noisy).await.0, 200);
    let total = estimate(&noisy) + 3;
    settles_to(&gw, &window, total, "ollama without counts").await;
    assert_charged(&gw, total, 0).await;
    // A whole answer without counts (the legacy embeddings): its reservation.
    let legacy = json!({"model": "llama3", "prompt": "hello world!"});
    assert_eq!(post(&gw, "/api/embeddings", &legacy).await.0, 200);
    settles_to(&gw, &window, total + estimate(&legacy), "legacy embeddings").await;
    assert_charged(&gw, total + estimate(&legacy), 0).await;
    gw.stop().await;
}

/// `stream_usage = false`: the OpenAI upstream is not asked for usage and sends none; the
/// stream is charged its prompt estimate plus its two content chunks ("Hel", "lo"; the
/// role chunk and the finish chunk carry no content).
#[actix_rt::test]
async fn stream_usage_false_is_charged_the_estimate_labelled_estimated() {
    let openai = v1::openai();
    let gw = Gateway::start(None, Some(&openai), |raw| {
        raw.upstreams.get_mut("openai").unwrap().stream_usage = Some(false);
    })
    .await;
    gw.set_keys(&keys("tokens_per_day = 100000", ""));
    let window = day(Scope::Key, "test-key", 100_000);
    let body = chat("openai/gpt-4o-mini", true);
    assert_eq!(post(&gw, "/v1/chat/completions", &body).await.0, 200);
    let sent = openai.last().json();
    assert!(!v1::asks_usage(&sent), "stream_usage = false: {sent}");
    let want = estimate(&body) + 2;
    settles_to(&gw, &window, want, "openai without usage").await;
    assert_charged(&gw, want, 0).await;
    gw.stop().await;
}

/// `gateway_budget_charged_tokens_total` of the test key: `estimated` and `reported`.
async fn assert_charged(gw: &Gateway, estimated: u64, reported: u64) {
    let text = b::scrape(&gw.admin_url).await;
    let labels = |basis| [("key_id", "test-key"), ("team", "test"), ("basis", basis)];
    let at = |basis| {
        b::metric_in(&text, "gateway_budget_charged_tokens_total", &labels(basis)).unwrap_or(0.0)
    };
    assert_eq!(
        (at("estimated"), at("reported")),
        (estimated as f64, reported as f64),
        "{text}"
    );
}

const SDKS: &str = r#"
import os, json
gw, ca, key = os.environ["GW"], os.environ["GW_CA"], os.environ["GW_KEY"]
out = {}
import openai
try:
    c = openai.OpenAI(base_url=gw + "/v1", api_key=key, max_retries=0, http_client=openai.DefaultHttpxClient(verify=ca))
    c.chat.completions.create(model="llama3", messages=[{"role": "user", "content": "hi"}], max_tokens=8)
    out["openai"] = "no error"
except openai.APIStatusError as e:
    out["openai"] = {"raised": type(e).__name__, "status": e.status_code, "type": e.type, "code": e.code,
        "message": e.message, "retry_after": e.response.headers.get("retry-after")}
import anthropic
try:
    c = anthropic.Anthropic(base_url=gw, api_key=key, max_retries=0, http_client=anthropic.DefaultHttpxClient(verify=ca))
    c.messages.create(model="llama3", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    out["anthropic"] = "no error"
except anthropic.APIStatusError as e:
    out["anthropic"] = {"raised": type(e).__name__, "status": e.status_code, "body": e.body}
import ollama
try:
    c = ollama.Client(host=gw, headers={"Authorization": "Bearer " + key}, verify=ca)
    c.chat(model="llama3", messages=[{"role": "user", "content": "hi"}], options={"num_predict": 8})
    out["ollama"] = "no error"
except ollama.ResponseError as e:
    out["ollama"] = {"raised": type(e).__name__, "status": e.status_code, "error": e.error}
print(json.dumps(out))
"#;

/// The official clients raise their own rate-limit errors on a spent budget.
#[actix_rt::test]
async fn the_official_sdks_raise_their_rate_limit_errors() {
    for module in ["openai", "anthropic", "ollama"] {
        if !common::skip::available(
            common::skip::runs("python3", &["-c", &format!("import {module}")]),
            "python3 modules openai, anthropic, ollama",
        ) {
            return;
        }
    }
    let ollama = b::ollama();
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;
    gw.set_keys(&keys("tokens_per_day = 1000", ""));
    let spend = json!({"model": "exact-1000", "stream": false,
        "messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": 8}});
    assert_eq!(post(&gw, "/api/chat", &spend).await.0, 200);
    settles_to(&gw, &day(Scope::Key, "test-key", 1000), 1000, "spent").await;
    let sent = ollama.requests().len();
    let v = common::run_python(&gw, SDKS).await;
    let want = "token budget of key test-key exhausted (tokens_per_day); resets in ";
    let e = &v["openai"];
    assert_eq!(e["raised"], "RateLimitError", "{v}");
    assert_eq!(e["status"], 429);
    assert_eq!(e["type"], "tokens");
    assert_eq!(e["code"], "rate_limit_exceeded");
    assert!(e["message"].as_str().unwrap().contains(want), "{v}");
    assert!(e["retry_after"].as_str().is_some(), "{v}");
    let e = &v["anthropic"];
    assert_eq!(e["raised"], "RateLimitError", "{v}");
    assert_eq!(e["status"], 429);
    assert_eq!(e["body"]["error"]["type"], "rate_limit_error", "{v}");
    let e = &v["ollama"];
    assert_eq!(e["raised"], "ResponseError", "{v}");
    assert_eq!(e["status"], 429);
    assert!(e["error"].as_str().unwrap().starts_with(want), "{v}");
    assert_eq!(ollama.requests().len(), sent);
    gw.stop().await;
}

/// Opens an SSE stream of the `stall` model on `path`, reads until its last content
/// chunk arrived, leaves; checks the fake saw the gateway drop it and the key's day window
/// settles to the prompt estimate plus the `STALL_CHUNKS` content chunks.
async fn leave_sse(path: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ollama = b::ollama();
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;
    gw.set_keys(&keys("tokens_per_day = 100000", ""));
    let window = day(Scope::Key, "test-key", 100_000);
    let body = json!({"model": "stall", "stream": true, "max_tokens": 500,
        "messages": [{"role": "user", "content": "tell me a story"}]});
    let text = body.to_string();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nAuthorization: Bearer {TEST_KEY}\r\nContent-Length: {}\r\n\r\n{text}",
        text.len()
    );
    let mut tls = gw.raw_tls().await;
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("t4 ") {
        let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
            .await
            .expect("stream in time")
            .unwrap();
        assert!(
            n > 0,
            "{path} closed early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    drop(tls);
    assert!(
        ollama.wait_closed(Duration::from_secs(10)).await,
        "{path}: upstream dropped"
    );
    // Anthropic's stream reports its input tokens in its first event (the fake's 11):
    // that replaces the estimate; OpenAI's reports nothing before its end.
    let prompt = if path == "/v1/messages" {
        11
    } else {
        estimate(&body)
    };
    let want = prompt + STALL_CHUNKS as u64;
    settles_to(&gw, &window, want, path).await;
    gw.stop().await;
}

/// A client leaving OpenAI's chat stream (on Ollama's `/v1`) mid-way is charged its prompt
/// estimate plus the content chunks generated (the role chunk carries no content).
#[actix_rt::test]
async fn a_client_leaving_a_v1_chat_stream_is_charged_what_was_generated() {
    leave_sse("/v1/chat/completions").await;
}

/// A client leaving Anthropic's messages stream mid-way is charged the input tokens its
/// first event reported plus the text deltas generated.
#[actix_rt::test]
async fn a_client_leaving_a_messages_stream_is_charged_what_was_generated() {
    leave_sse("/v1/messages").await;
}

/// An upstream error status, or no upstream at all, charges nothing, and the
/// reservation is released.
#[actix_rt::test]
async fn failed_answers_charge_nothing() {
    let ollama = b::ollama();
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;
    gw.set_keys(&keys("tokens_per_day = 100000", ""));
    let window = day(Scope::Key, "test-key", 100_000);
    let msg = json!([{"role": "user", "content": "hi"}]);
    for (path, body) in [
        (
            "/api/chat",
            json!({"model": "fail", "stream": false, "messages": msg}),
        ),
        ("/api/chat", json!({"model": "fail", "messages": msg})),
        ("/api/generate", json!({"model": "fail", "prompt": "hi"})),
        ("/api/embed", json!({"model": "fail", "input": "hi"})),
        (
            "/v1/chat/completions",
            json!({"model": "fail", "messages": msg}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "fail", "stream": true, "messages": msg}),
        ),
        (
            "/v1/messages",
            json!({"model": "fail", "max_tokens": 8, "messages": msg}),
        ),
        // No OpenAI upstream listening: a connect failure.
        (
            "/v1/chat/completions",
            json!({"model": "openai/gpt-4o-mini", "messages": msg}),
        ),
        (
            "/api/chat",
            json!({"model": "openai/gpt-4o-mini", "messages": msg}),
        ),
    ] {
        let (status, _, got) = post(&gw, path, &body).await;
        assert!(status >= 500, "{path} {body}: {status} {got}");
        settles_to(&gw, &window, 0, &format!("{path} {body}")).await;
    }
    gw.stop().await;
}

/// The minute bucket: spent, it refuses naming `tokens_per_minute` and when there is room
/// again (Retry-After within the minute), then admits once that time has passed.
#[actix_rt::test]
async fn a_spent_minute_bucket_says_when_it_has_room_again() {
    let ollama = b::ollama();
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;
    gw.set_keys(&keys("tokens_per_minute = 600", ""));
    let body = |n: u64| {
        json!({"model": format!("exact-{n}"), "stream": false,
            "messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": 8}})
    };
    assert_eq!(post(&gw, "/api/chat", &body(600)).await.0, 200);
    let (status, headers, got) = post(&gw, "/api/chat", &body(1)).await;
    assert_eq!(status, 429, "{got}");
    let text = got["error"].as_str().unwrap();
    assert!(
        text.starts_with("token budget of key test-key exhausted (tokens_per_minute); resets in "),
        "{text}"
    );
    // 10 tokens at 10 a second: about a second.
    let retry: u64 = header(&headers, "retry-after").unwrap().parse().unwrap();
    assert!((1..=3).contains(&retry), "Retry-After {retry}");
    let reset = header(&headers, "x-ratelimit-reset-tokens").unwrap();
    assert!(b::go_duration(reset), "{reset}");
    let deadline = std::time::Instant::now() + Duration::from_secs(retry + 5);
    loop {
        let (status, _, _) = post(&gw, "/api/chat", &body(1)).await;
        if status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no room after Retry-After"
        );
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    gw.stop().await;
}

/// `[limits]` token defaults apply to keys that name none; a key's own field wins.
#[actix_rt::test]
async fn limits_defaults_apply_to_keys_naming_no_budget() {
    let ollama = b::ollama();
    let gw = Gateway::start(Some(&ollama), None, |raw| {
        raw.limits.tokens_per_day = Some(50);
        raw.limits.max_output_tokens = Some(30);
    })
    .await;
    gw.set_keys(&format!(
        "{}{}",
        keys("", ""),
        key_entry("own", "test", KEY_A, "tokens_per_day = 5000")
    ));
    let body = json!({"model": "exact-50", "stream": false,
        "messages": [{"role": "user", "content": "hi"}]});
    let (status, headers, _) = post(&gw, "/api/chat", &body).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-ratelimit-limit-tokens"), Some("50"));
    assert_eq!(ollama.last().json()["options"]["num_predict"], 30);
    settles_to(&gw, &day(Scope::Key, "test-key", 50), 50, "default day").await;
    let (status, _, got) = post(&gw, "/api/chat", &body).await;
    assert_eq!(status, 429, "{got}");
    assert!(
        got["error"].as_str().unwrap().contains("(tokens_per_day)"),
        "{got}"
    );
    let (status, headers, _) = post_as(&gw, KEY_A, "/api/chat", &body).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-ratelimit-limit-tokens"), Some("5000"));
    gw.stop().await;
}

/// `check-config` warns about an output cap larger than a budget (issue 15: "check-config
/// warns about a cap larger than a budget").
#[test]
fn check_config_warns_about_a_cap_larger_than_a_budget() {
    let dir = common::TempDir::new("cap-warning");
    let keys_file = dir.0.join("keys.toml");
    std::fs::write(
        &keys_file,
        keys("tokens_per_minute = 1000\nmax_output_tokens = 4096", ""),
    )
    .unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["check-config", "--config", &common::repo_config()])
        .current_dir(&dir.0)
        .env_clear()
        .env("GATEWAY_KEYS_FILE", &keys_file)
        .env("GATEWAY__TLS__SELF_SIGNED_DIR", dir.0.join("certs"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let all = format!("{}{stderr}", String::from_utf8_lossy(&out.stdout));
    let warning = all
        .lines()
        .find(|l| l.contains("warning") && l.contains("max_output_tokens"))
        .unwrap_or_else(|| panic!("no warning about the cap in:\n{all}"));
    assert!(
        warning.contains("test-key") && warning.contains("tokens_per_minute"),
        "{warning}"
    );
}
