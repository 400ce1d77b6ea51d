//! Errors in each API's own shape: the edge's refusals (no key, bad or disabled key,
//! allowlist, auth throttle, buckets, in-flight cap, body and header limits, upgrades) and
//! unknown paths answer `/v1/...` in OpenAI's `{"error": {"message", "type", "param",
//! "code"}}`, `/v1/messages...` in Anthropic's `{"type": "error", "error": {...}}`, and
//! everything else in Ollama's `{"error": "..."}`, with the same status and headers. `/v1`
//! answers also carry OpenAI's `x-ratelimit-*-requests`. Checked on the raw bytes, and with
//! the official `openai` and `anthropic` Python SDKs, whose exception classes depend on it.
//! Most requests here are refused before routing; the routes' own refusals (a model the
//! key may not use, a wrong method, a bad body) and a passed answer's headers are checked
//! against fake upstreams at the end.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{key_entry, FakeUpstream, Gateway, Reply, TEST_KEY};
use serde_json::{json, Value};

const DISABLED_KEY: &str = "ogw_disabled_key_for_api_errors_01";
const TIGHT_KEY: &str = "ogw_tight_key_for_api_errors_0001";
const NARROW_KEY: &str = "ogw_narrow_key_for_api_errors_001";
const MISSING_KEY: &str = "missing API key: send it as `Authorization: Bearer <key>`, as `X-API-Key: <key>`, or as the password of `Authorization: Basic`";

/// The test key (generous), a disabled key, and a key with one request a minute.
fn keys() -> String {
    [
        key_entry("test-key", "test", TEST_KEY, ""),
        key_entry("off", "test", DISABLED_KEY, "enabled = false"),
        key_entry(
            "tight",
            "test",
            TIGHT_KEY,
            "requests_per_minute = 1\nburst = 1",
        ),
        key_entry("narrow", "test", NARROW_KEY, "models = [\"qwen3:*\"]"),
    ]
    .concat()
}

/// A gateway refusing before any upstream work: no upstream is reachable.
async fn gateway(tweak: impl FnOnce(&mut ollama_gateway::config::RawConfig)) -> Gateway {
    let gw = Gateway::start(None, None, |raw| {
        raw.auth.max_failures = 1000;
        raw.server.max_body_bytes = 1024;
        tweak(raw);
    })
    .await;
    gw.set_keys(&keys());
    gw
}

type Answer = (u16, awc::http::header::HeaderMap, Value);

/// Sends `method path` with `headers` and `body`; the status, headers and JSON body
/// (checked to be sent as JSON).
async fn call(
    gw: &Gateway,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let method = awc::http::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = gw.client().request(method, format!("{}{path}", gw.url));
    for (k, v) in headers {
        req = req.append_header((*k, *v));
    }
    let mut resp = req
        .send_body(body.to_string())
        .await
        .expect("gateway answers");
    let bytes = resp.body().limit(1 << 20).await.unwrap();
    let content_type = resp
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("JSON body: {:?}", String::from_utf8_lossy(&bytes)));
    (resp.status().as_u16(), resp.headers().clone(), v)
}

fn header<'a>(headers: &'a awc::http::header::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().unwrap())
}

/// The same refusal in the three shapes: `{"error": m}` on /api, OpenAI's on /v1 with
/// `openai` = (type, code), Anthropic's on /v1/messages with `anthropic` type.
fn assert_shapes(ollama: &Value, openai: &Value, anthropic: &Value, want: (&str, Value, &str)) {
    let message = ollama["error"]
        .as_str()
        .expect("Ollama's shape")
        .to_string();
    assert_eq!(ollama, &json!({ "error": message }));
    let (kind, code, anthropic_kind) = want;
    assert_eq!(
        openai,
        &json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
    );
    assert_eq!(
        anthropic,
        &json!({"type": "error", "error": {"type": anthropic_kind, "message": message}})
    );
}

/// The three endpoints the same request is sent to.
const CHAT: [&str; 3] = ["/api/chat", "/v1/chat/completions", "/v1/messages"];
const BODY: &str =
    r#"{"model":"llama3:instruct","messages":[{"role":"user","content":"hi"}],"max_tokens":8}"#;

async fn post_all(gw: &Gateway, headers: &[(&str, &str)], body: &str) -> [Answer; 3] {
    let mut out = Vec::new();
    for path in CHAT {
        out.push(call(gw, "POST", path, headers, body).await);
    }
    out.try_into().unwrap()
}

#[actix_rt::test]
async fn edge_refusals_answer_in_the_shape_of_the_path() {
    let gw = gateway(|_| {}).await;
    let json = ("content-type", "application/json");

    // No key: 401 with the same challenge in every shape.
    let [o, v1, m] = post_all(&gw, &[json], BODY).await;
    for (status, headers, _) in [&o, &v1, &m] {
        assert_eq!(*status, 401);
        assert_eq!(
            header(headers, "www-authenticate"),
            Some("Bearer realm=\"ollama-gateway\"")
        );
        assert_eq!(header(headers, "x-ratelimit-limit-requests"), None);
    }
    assert_eq!(o.2["error"], MISSING_KEY);
    assert_shapes(
        &o.2,
        &v1.2,
        &m.2,
        (
            "invalid_request_error",
            json!("invalid_api_key"),
            "authentication_error",
        ),
    );

    // A wrong key (as OpenAI's and Anthropic's SDKs send it), a disabled one.
    for auth in [
        ("authorization", "Bearer ogw_not_a_key"),
        ("x-api-key", "ogw_not_a_key"),
    ] {
        let [o, v1, m] = post_all(&gw, &[json, auth], BODY).await;
        assert_eq!((o.0, v1.0, m.0), (401, 401, 401));
        assert_eq!(o.2["error"], "invalid API key");
        assert_shapes(
            &o.2,
            &v1.2,
            &m.2,
            (
                "invalid_request_error",
                json!("invalid_api_key"),
                "authentication_error",
            ),
        );
    }
    let bearer = format!("Bearer {DISABLED_KEY}");
    let [o, v1, m] = post_all(&gw, &[json, ("authorization", &bearer)], BODY).await;
    assert_eq!((o.0, v1.0, m.0), (401, 401, 401));
    assert_eq!(o.2["error"], "API key is disabled");
    assert_shapes(
        &o.2,
        &v1.2,
        &m.2,
        (
            "invalid_request_error",
            json!("invalid_api_key"),
            "authentication_error",
        ),
    );
    assert_eq!(gw.metrics.rejections("auth"), 12);

    // Unknown paths: 404, OpenAI's code `not_found`; they passed the limits, so /v1 ones
    // carry OpenAI's rate-limit headers beside the draft's.
    let bearer = format!("Bearer {TEST_KEY}");
    let key = ("authorization", bearer.as_str());
    let o = call(&gw, "GET", "/api/nope", &[key], "").await;
    let v1 = call(&gw, "GET", "/v1/nope", &[key], "").await;
    let m = call(&gw, "GET", "/v1/messages/nope/deeper", &[key], "").await;
    assert_eq!((o.0, v1.0, m.0), (404, 404, 404));
    assert_eq!(o.2["error"], "no such endpoint: GET /api/nope");
    assert_eq!(v1.2["error"]["message"], "no such endpoint: GET /v1/nope");
    assert_eq!(v1.2["error"]["code"], "not_found");
    assert_eq!(v1.2["error"]["type"], "invalid_request_error");
    assert_eq!(
        m.2,
        json!({"type": "error", "error": {"type": "not_found_error", "message": "no such endpoint: GET /v1/messages/nope/deeper"}})
    );
    assert_eq!(
        header(&o.1, "x-ratelimit-limit-requests"),
        None,
        "/api keeps its headers"
    );
    assert!(header(&o.1, "ratelimit").is_some());
    for (_, headers, _) in [&v1, &m] {
        assert!(header(headers, "ratelimit").is_some());
        assert_eq!(
            header(headers, "x-ratelimit-limit-requests"),
            Some("100000")
        );
        let remaining: u32 = header(headers, "x-ratelimit-remaining-requests")
            .unwrap()
            .parse()
            .unwrap();
        assert!((9_990..10_000).contains(&remaining), "{remaining}");
        let reset = header(headers, "x-ratelimit-reset-requests").unwrap();
        assert!(
            reset.ends_with("ms") || reset == "0s",
            "a few tokens of 100000/min: {reset}"
        );
    }
    assert_eq!(gw.metrics.rejections("not_found"), 3);

    // A declared body over server.max_body_bytes: 413 at the edge, before any of it is
    // read, and before it costs a token (the tight key has one).
    let big = format!(
        r#"{{"model":"llama3:instruct","pad":"{}"}}"#,
        "x".repeat(2000)
    );
    let tight = format!("Bearer {TIGHT_KEY}");
    let [o, v1, m] = post_all(&gw, &[json, ("authorization", &tight)], &big).await;
    assert_eq!((o.0, v1.0, m.0), (413, 413, 413));
    assert_eq!(
        o.2["error"],
        "request body is larger than the limit of 1024 bytes"
    );
    assert_shapes(
        &o.2,
        &v1.2,
        &m.2,
        (
            "invalid_request_error",
            json!("request_too_large"),
            "request_too_large",
        ),
    );
    assert_eq!(gw.metrics.rejections("body_too_large"), 3);

    // The tight key's one token: spent on a 404, then 429 in each shape, with Retry-After
    // and the draft's headers everywhere, and OpenAI's on /v1 only.
    let tight = ("authorization", tight.as_str());
    let first = call(&gw, "GET", "/v1/nope", &[tight], "").await;
    assert_eq!(first.0, 404, "the 413s spent no token");
    assert_eq!(header(&first.1, "x-ratelimit-limit-requests"), Some("1"));
    assert_eq!(
        header(&first.1, "x-ratelimit-remaining-requests"),
        Some("0")
    );
    assert_eq!(
        header(&first.1, "x-ratelimit-reset-requests"),
        Some("1m0s"),
        "one token of one a minute spent: full again in a minute"
    );
    let [o, v1, m] = post_all(&gw, &[json, tight], BODY).await;
    for (status, headers, _) in [&o, &v1, &m] {
        assert_eq!(*status, 429);
        let retry: u64 = header(headers, "retry-after").unwrap().parse().unwrap();
        assert!((58..=60).contains(&retry), "{retry}");
        assert_eq!(
            header(headers, "ratelimit-policy"),
            Some("\"default\";q=1;w=60")
        );
        assert!(header(headers, "ratelimit")
            .unwrap()
            .starts_with("\"default\";r=0;t="));
    }
    assert_eq!(header(&o.1, "x-ratelimit-limit-requests"), None);
    for (_, headers, _) in [&v1, &m] {
        assert_eq!(header(headers, "x-ratelimit-limit-requests"), Some("1"));
        assert_eq!(header(headers, "x-ratelimit-remaining-requests"), Some("0"));
        let reset = header(headers, "x-ratelimit-reset-requests").unwrap();
        assert!(
            reset == "1m0s"
                || (reset.starts_with("59.") || reset.starts_with("58.")) && reset.ends_with('s'),
            "an empty bucket of one a minute is full again in about a minute: {reset}"
        );
    }
    assert!(o.2["error"]
        .as_str()
        .unwrap()
        .starts_with("rate limit exceeded for API key tight; retry after"));
    assert_shapes(
        &o.2,
        &v1.2,
        &m.2,
        (
            "rate_limit_exceeded",
            json!("rate_limit_exceeded"),
            "rate_limit_error",
        ),
    );
    assert_eq!(gw.metrics.rejections("rate_limit"), 3);
    gw.stop().await;
}

#[actix_rt::test]
async fn head_limits_and_upgrades_answer_in_the_shape_of_the_path() {
    let gw = gateway(|raw| raw.server.max_headers = 8).await;
    let bearer = format!("Bearer {TEST_KEY}");
    let key = ("authorization", bearer.as_str());
    let many: Vec<(String, &str)> = (0..10).map(|i| (format!("x-pad-{i}"), "1")).collect();
    let mut headers: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    headers.push(key);
    let [o, v1, m] = post_all(&gw, &headers, BODY).await;
    assert_eq!((o.0, v1.0, m.0), (431, 431, 431));
    assert_shapes(
        &o.2,
        &v1.2,
        &m.2,
        (
            "invalid_request_error",
            json!("headers_too_large"),
            "invalid_request_error",
        ),
    );

    let [o, v1, m] = post_all(
        &gw,
        &[key, ("upgrade", "h2c"), ("connection", "upgrade")],
        BODY,
    )
    .await;
    assert_eq!((o.0, v1.0, m.0), (400, 400, 400));
    assert!(o.2["error"].as_str().unwrap().contains("Upgrade: h2c"));
    assert_shapes(
        &o.2,
        &v1.2,
        &m.2,
        (
            "invalid_request_error",
            json!("upgrade_not_supported"),
            "invalid_request_error",
        ),
    );
    assert_eq!(gw.metrics.rejections("header_too_large"), 3);
    assert_eq!(gw.metrics.rejections("upgrade"), 3);
    gw.stop().await;
}

#[actix_rt::test]
async fn auth_throttle_and_in_flight_cap_answer_in_the_shape_of_the_path() {
    // Ollama never answers: a request to it holds the key's only in-flight slot.
    let ollama = FakeUpstream::start(|_| Reply::Hang);
    let gw = Gateway::start(Some(&ollama), None, |raw| {
        raw.auth.max_failures = 1;
        raw.limits.max_in_flight = 1;
    })
    .await;
    let bearer = format!("Bearer {TEST_KEY}");
    let client = gw.client();
    let held = client
        .post(format!("{}/api/chat", gw.url))
        .insert_header(("authorization", bearer.as_str()))
        .insert_header(("content-type", "application/json"))
        .send_body(BODY);
    let held = actix_rt::spawn(held);
    assert!(ollama.wait_requests(1, Duration::from_secs(10)).await);
    let key = [
        ("authorization", bearer.as_str()),
        ("content-type", "application/json"),
    ];
    let [o, v1, m] = post_all(&gw, &key, BODY).await;
    for (status, headers, _) in [&o, &v1, &m] {
        assert_eq!(*status, 429);
        assert_eq!(header(headers, "retry-after"), Some("1"));
    }
    assert!(o.2["error"]
        .as_str()
        .unwrap()
        .starts_with("too many requests in flight"));
    assert_shapes(
        &o.2,
        &v1.2,
        &m.2,
        (
            "rate_limit_exceeded",
            json!("rate_limit_exceeded"),
            "rate_limit_error",
        ),
    );
    assert_eq!(gw.metrics.rejections("in_flight"), 3);
    held.abort();

    // One failed authentication allowed; the next bans the address, in every shape.
    let wrong = [
        ("authorization", "Bearer ogw_wrong"),
        ("content-type", "application/json"),
    ];
    let first = call(&gw, "POST", "/v1/chat/completions", &wrong, BODY).await;
    assert_eq!(first.0, 401);
    let [o, v1, m] = post_all(&gw, &wrong, BODY).await;
    for (status, headers, _) in [&o, &v1, &m] {
        assert_eq!(*status, 429);
        let retry: u64 = header(headers, "retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
    }
    assert_shapes(
        &o.2,
        &v1.2,
        &m.2,
        (
            "rate_limit_exceeded",
            json!("rate_limit_exceeded"),
            "rate_limit_error",
        ),
    );
    gw.stop().await;
}

/// The openai SDK against the gateway's edge: each refusal raises its class.
const OPENAI_SCRIPT: &str = r#"
import os, json, openai
ca, base = os.environ["GW_CA"], os.environ["GW"] + "/v1"

def strip_auth(request):
    for name in ("authorization", "x-api-key"):
        if name in request.headers:
            del request.headers[name]

def client(key, hooks=None):
    http = openai.DefaultHttpxClient(verify=ca, event_hooks={"request": hooks or []})
    return openai.OpenAI(base_url=base, api_key=key, max_retries=0, http_client=http)

def chat(c):
    return c.chat.completions.create(model="llama3:instruct", messages=[{"role": "user", "content": "hi"}])

out = {}
def attempt(name, call):
    try:
        call()
        out[name] = {"raised": None}
    except openai.APIStatusError as e:
        h = e.response.headers
        out[name] = {"raised": type(e).__name__, "status": e.status_code, "type": e.type,
                     "code": e.code, "param": e.param, "message": e.message, "body": e.body,
                     "request_id": e.request_id, "retry_after": h.get("retry-after"),
                     "limit": h.get("x-ratelimit-limit-requests"),
                     "remaining": h.get("x-ratelimit-remaining-requests"),
                     "reset": h.get("x-ratelimit-reset-requests")}

attempt("no_key", lambda: chat(client("unused", [strip_auth])))
attempt("wrong_key", lambda: chat(client("ogw_not_a_key")))
attempt("disabled_key", lambda: chat(client(os.environ["DISABLED_KEY"])))
attempt("unknown_path", lambda: client(os.environ["GW_KEY"]).get("/no/such/thing", cast_to=object))
tight = client(os.environ["TIGHT_KEY"])
attempt("spends_the_token", lambda: tight.get("/no/such/thing", cast_to=object))
attempt("bucket_empty", lambda: chat(tight))
print(json.dumps(out))
"#;

/// The anthropic SDK against the gateway's edge: each refusal raises its class.
const ANTHROPIC_SCRIPT: &str = r#"
import os, json, anthropic
ca, base = os.environ["GW_CA"], os.environ["GW"]

def strip_auth(request):
    for name in ("authorization", "x-api-key"):
        if name in request.headers:
            del request.headers[name]

def client(key, hooks=None):
    http = anthropic.DefaultHttpxClient(verify=ca, event_hooks={"request": hooks or []})
    return anthropic.Anthropic(base_url=base, api_key=key, max_retries=0, http_client=http)

def message(c):
    return c.messages.create(model="llama3:instruct", max_tokens=8, messages=[{"role": "user", "content": "hi"}])

out = {}
def attempt(name, call):
    try:
        call()
        out[name] = {"raised": None}
    except anthropic.APIStatusError as e:
        h = e.response.headers
        out[name] = {"raised": type(e).__name__, "status": e.status_code, "body": e.body,
                     "retry_after": h.get("retry-after"),
                     "limit": h.get("x-ratelimit-limit-requests")}

attempt("no_key", lambda: message(client("unused", [strip_auth])))
attempt("wrong_key", lambda: message(client("ogw_not_a_key")))
attempt("disabled_key", lambda: message(client(os.environ["DISABLED_KEY"])))
attempt("unknown_path", lambda: client(os.environ["GW_KEY"]).get("/v1/messages/no/such/thing", cast_to=object))
tight = client(os.environ["TIGHT_KEY"])
attempt("spends_the_token", lambda: tight.get("/v1/messages/no/such/thing", cast_to=object))
attempt("bucket_empty", lambda: message(tight))
print(json.dumps(out))
"#;

fn has_module(module: &str) -> bool {
    common::skip::available(
        common::skip::runs("python3", &["-c", &format!("import {module}")]),
        &format!("python3 module `{module}` (pip install {module})"),
    )
}

async fn run(gw: &Gateway, script: &'static str) -> Value {
    gw.python(
        script,
        &[
            ("GW_KEY", TEST_KEY),
            ("DISABLED_KEY", DISABLED_KEY),
            ("TIGHT_KEY", TIGHT_KEY),
        ],
    )
    .await
}

#[actix_rt::test]
async fn openai_sdk_raises_the_matching_class_for_each_refusal() {
    if !has_module("openai") {
        return;
    }
    let gw = gateway(|_| {}).await;
    let v = run(&gw, OPENAI_SCRIPT).await;
    for case in ["no_key", "wrong_key", "disabled_key"] {
        let e = &v[case];
        assert_eq!(e["raised"], "AuthenticationError", "{case}: {v}");
        assert_eq!(e["status"], 401);
        assert_eq!(e["type"], "invalid_request_error");
        assert_eq!(e["code"], "invalid_api_key");
        assert!(
            e["request_id"].as_str().is_some_and(|id| !id.is_empty()),
            "{e}"
        );
    }
    // The SDK's message: the status, then the error's own message.
    assert_eq!(
        v["no_key"]["message"],
        format!("Error code: 401 - {MISSING_KEY}")
    );
    assert_eq!(v["no_key"]["body"]["message"], MISSING_KEY);
    let e = &v["unknown_path"];
    assert_eq!(e["raised"], "NotFoundError", "{v}");
    assert_eq!(e["code"], "not_found");
    assert_eq!(
        e["message"],
        "Error code: 404 - no such endpoint: GET /v1/no/such/thing"
    );
    assert_eq!(e["limit"], "100000");
    assert_eq!(v["spends_the_token"]["raised"], "NotFoundError");
    assert_eq!(v["spends_the_token"]["remaining"], "0");
    let e = &v["bucket_empty"];
    assert_eq!(e["raised"], "RateLimitError", "{v}");
    assert_eq!(e["status"], 429);
    assert_eq!(e["type"], "rate_limit_exceeded");
    assert_eq!(e["code"], "rate_limit_exceeded");
    assert_eq!(e["param"], Value::Null);
    let retry: u64 = e["retry_after"].as_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{e}");
    assert_eq!(e["limit"], "1");
    assert_eq!(e["remaining"], "0");
    let reset = e["reset"].as_str().unwrap();
    assert!(reset == "1m0s" || reset.starts_with("59."), "{e}");
    assert_eq!(gw.metrics.rejections("auth"), 3);
    assert_eq!(gw.metrics.rejections("rate_limit"), 1);
    gw.stop().await;
}

#[actix_rt::test]
async fn anthropic_sdk_raises_the_matching_class_for_each_refusal() {
    if !has_module("anthropic") {
        return;
    }
    let gw = gateway(|_| {}).await;
    let v = run(&gw, ANTHROPIC_SCRIPT).await;
    for case in ["no_key", "wrong_key", "disabled_key"] {
        let e = &v[case];
        assert_eq!(e["raised"], "AuthenticationError", "{case}: {v}");
        assert_eq!(e["status"], 401);
        assert_eq!(e["body"]["type"], "error");
        assert_eq!(e["body"]["error"]["type"], "authentication_error");
    }
    assert_eq!(v["no_key"]["body"]["error"]["message"], MISSING_KEY);
    let e = &v["unknown_path"];
    assert_eq!(e["raised"], "NotFoundError", "{v}");
    assert_eq!(e["body"]["error"]["type"], "not_found_error");
    assert_eq!(v["spends_the_token"]["raised"], "NotFoundError");
    let e = &v["bucket_empty"];
    assert_eq!(e["raised"], "RateLimitError", "{v}");
    assert_eq!(e["body"]["error"]["type"], "rate_limit_error");
    let retry: u64 = e["retry_after"].as_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{e}");
    assert_eq!(e["limit"], "1");
    assert_eq!(gw.metrics.rejections("auth"), 3);
    assert_eq!(gw.metrics.rejections("rate_limit"), 1);
    gw.stop().await;
}

/// Both SDKs refused by the allowlist: the TCP peer (loopback) is a trusted proxy, so the
/// connection is let in, but the client address it stands for is in no allowed network.
const ALLOWLIST_SCRIPT: &str = r#"
import os, json, openai, anthropic
ca, gw, key = os.environ["GW_CA"], os.environ["GW"], os.environ["GW_KEY"]
out = {}
try:
    c = openai.OpenAI(base_url=gw + "/v1", api_key=key, max_retries=0, http_client=openai.DefaultHttpxClient(verify=ca))
    c.chat.completions.create(model="llama3:instruct", messages=[{"role": "user", "content": "hi"}])
except openai.APIStatusError as e:
    out["openai"] = {"raised": type(e).__name__, "status": e.status_code, "type": e.type, "code": e.code, "message": e.message}
try:
    c = anthropic.Anthropic(base_url=gw, api_key=key, max_retries=0, http_client=anthropic.DefaultHttpxClient(verify=ca))
    c.messages.create(model="llama3:instruct", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
except anthropic.APIStatusError as e:
    out["anthropic"] = {"raised": type(e).__name__, "status": e.status_code, "body": e.body}
print(json.dumps(out))
"#;

#[actix_rt::test]
async fn allowlist_refusal_is_permission_denied_in_both_sdks() {
    if !has_module("openai") || !has_module("anthropic") {
        return;
    }
    let gw = gateway(|raw| {
        raw.allowlist.cidrs = vec!["192.0.2.0/24".into()];
        raw.allowlist.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await;
    let v = run(&gw, ALLOWLIST_SCRIPT).await;
    let e = &v["openai"];
    assert_eq!(e["raised"], "PermissionDeniedError", "{v}");
    assert_eq!(e["status"], 403);
    assert_eq!(e["code"], "permission_denied");
    assert_eq!(e["message"], "Error code: 403 - access denied");
    let e = &v["anthropic"];
    assert_eq!(e["raised"], "PermissionDeniedError", "{v}");
    assert_eq!(
        e["body"],
        json!({"type": "error", "error": {"type": "permission_error", "message": "access denied"}})
    );
    // And on /api: Ollama's shape.
    let (status, _, body) = call(&gw, "GET", "/api/tags", &[], "").await;
    assert_eq!(status, 403);
    assert_eq!(body, json!({"error": "access denied"}));
    assert_eq!(gw.metrics.rejections("ip"), 3);
    gw.stop().await;
}

/// The routes' own refusals take their API's shape too, and an answer that passed the
/// limits carries OpenAI's request headers on /v1.
#[actix_rt::test]
async fn route_refusals_and_passed_answers_on_v1() {
    let openai_side = common::v1::ollama();
    let gw = Gateway::start(Some(&openai_side), None, |_| {}).await;
    gw.set_keys(&keys());
    let bearer = format!("Bearer {TEST_KEY}");
    let narrow = format!("Bearer {NARROW_KEY}");
    let json_type = ("content-type", "application/json");

    // A wrong method: 405 with Allow, in each shape.
    let (status, headers, v) = call(
        &gw,
        "GET",
        "/v1/chat/completions",
        &[("authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(status, 405, "{v}");
    assert_eq!(header(&headers, "allow"), Some("POST"));
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    assert_eq!(v["error"]["code"], "method_not_allowed", "{v}");
    let (status, _, v) = call(
        &gw,
        "GET",
        "/v1/messages",
        &[("authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(status, 405, "{v}");
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    let (status, _, v) = call(&gw, "POST", "/v1/models", &[("authorization", &bearer)], "").await;
    assert_eq!(status, 405, "{v}");
    assert_eq!(v["error"]["code"], "method_not_allowed", "{v}");

    // A model the key may not use: 403, OpenAI's permission error / Anthropic's.
    let [_, (status, _, openai), (a_status, _, anthropic)] =
        post_all(&gw, &[("authorization", &narrow), json_type], BODY).await;
    assert_eq!((status, a_status), (403, 403), "{openai} {anthropic}");
    assert_eq!(openai["error"]["code"], "permission_denied", "{openai}");
    assert!(
        openai["error"]["message"]
            .as_str()
            .unwrap()
            .contains("llama3:instruct"),
        "{openai}"
    );
    assert_eq!(
        anthropic["error"]["type"], "permission_error",
        "{anthropic}"
    );

    // A body that is not JSON: 400 invalid_request_error.
    let (status, _, v) = call(
        &gw,
        "POST",
        "/v1/chat/completions",
        &[("authorization", &bearer), json_type],
        "{not json",
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    let (status, _, v) = call(
        &gw,
        "POST",
        "/v1/embeddings",
        &[("authorization", &bearer), json_type],
        r#"{"input":"x"}"#,
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["param"], "model", "{v}");
    assert!(
        openai_side.requests().is_empty(),
        "no refusal reached the upstream"
    );

    // A passed answer carries the x-ratelimit headers beside RateLimit.
    let mut resp = gw
        .client()
        .post(format!("{}/v1/chat/completions", gw.url))
        .insert_header(("authorization", bearer.as_str()))
        .insert_header(json_type)
        .send_body(BODY)
        .await
        .unwrap();
    let body = resp.body().await.unwrap();
    assert_eq!(resp.status(), 200, "{}", String::from_utf8_lossy(&body));
    let h = resp.headers();
    assert_eq!(
        header(h, "x-ratelimit-limit-requests"),
        Some("100000"),
        "{h:?}"
    );
    assert!(
        header(h, "x-ratelimit-remaining-requests").is_some(),
        "{h:?}"
    );
    assert!(
        header(h, "x-ratelimit-reset-requests").is_some_and(|r| r.ends_with('s')),
        "{h:?}"
    );
    assert!(header(h, "ratelimit").is_some(), "{h:?}");
    gw.stop().await;
}
