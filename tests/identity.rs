//! Who a request is, over real TLS: a key as the password of `Authorization: Basic` (what
//! LangChain sends from an `https://user:KEY@host` URL), beside X-API-Key and Bearer; and
//! trusted networks (`[[networks]]`), which serve requests without a key by their client
//! address (loopback sources 127.0.0.2 against 127.0.0.1), judged by that address as the
//! allowlist resolves it. A request that carries a key is judged by its key alone.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

use base64::Engine as _;
use common::auth::{python, python_env};
use common::{json_error, key_entry, raw_exchange, FakeUpstream, Gateway, TEST_KEY};
use serde_json::{json, Value};

fn body(model: &str) -> String {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": false})
        .to_string()
}

/// A raw POST /api/chat for `model` with exactly `headers` (each line ending in CRLF).
fn chat_request(model: &str, headers: &str) -> String {
    let body = body(model);
    format!(
        "POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// The status of a chat for `model` sent from `source` with `headers`.
async fn chat_from(gw: &Gateway, source: &str, model: &str, headers: &str) -> (u16, String) {
    raw_exchange(gw, source, &chat_request(model, headers)).await
}

fn basic(user_and_password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_and_password)
    )
}

/// `gateway_requests_total` of /api/chat to Ollama for model llama3, by key id and team.
fn chats(gw: &Gateway, key_id: &str, team: &str, code: u16) -> f64 {
    gw.metric(&format!(
        r#"gateway_requests_total{{code="{code}",endpoint="/api/chat",key_id="{key_id}",model="llama3",team="{team}",upstream="ollama"}}"#
    ))
}

#[actix_rt::test]
async fn basic_auth_password_is_the_key_and_x_api_key_comes_first() {
    let ollama = FakeUpstream::ollama_ok();
    let gw = Gateway::start(Some(&ollama), None, |raw| raw.auth.max_failures = 100).await;
    let post = |headers: Vec<(&'static str, String)>| {
        let gw = &gw;
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            gw.post_exact("/api/chat", body("llama3").into_bytes(), &h)
                .await
        }
    };
    for (what, auth) in [
        ("any user name", basic(&format!("langchain:{TEST_KEY}"))),
        ("no user name", basic(&format!(":{TEST_KEY}"))),
        (
            "lower-case scheme",
            basic(&format!("u:{TEST_KEY}")).replace("Basic", "basic"),
        ),
    ] {
        let (status, _, resp) = post(vec![("authorization", auth)]).await;
        assert_eq!(status, 200, "{what}: {}", String::from_utf8_lossy(&resp));
    }
    assert_eq!(chats(&gw, "test-key", "test", 200), 3.0);

    let cases: Vec<(&str, Vec<(&'static str, String)>)> = vec![
        (
            "a wrong password",
            vec![("authorization", basic("u:ogw_wrong"))],
        ),
        (
            "the key as the user name",
            vec![("authorization", basic(&format!("{TEST_KEY}:")))],
        ),
        ("no colon", vec![("authorization", basic(TEST_KEY))]),
        (
            "invalid base64",
            vec![("authorization", "Basic %%%not-base64%%%".into())],
        ),
        (
            "X-API-Key comes first",
            vec![
                ("x-api-key", "ogw_wrong".into()),
                ("authorization", basic(&format!("u:{TEST_KEY}"))),
            ],
        ),
    ];
    for (what, headers) in cases {
        let (status, resp_headers, resp) = post(headers).await;
        assert_eq!(status, 401, "{what}");
        let msg = json_error(&resp_headers, &resp);
        assert_eq!(msg, "invalid API key", "{what}");
    }
    let (status, _, _) = post(vec![
        ("x-api-key", TEST_KEY.into()),
        ("authorization", basic("u:ogw_wrong")),
    ])
    .await;
    assert_eq!(
        status, 200,
        "a good X-API-Key wins over bad Basic credentials"
    );
    let (status, headers, resp) = post(vec![]).await;
    assert_eq!(status, 401);
    assert!(json_error(&headers, &resp).contains("password of `Authorization: Basic`"));
    assert_eq!(ollama.requests().len(), 4);
    for req in ollama.requests() {
        assert!(
            req.header("authorization").is_none(),
            "credentials stay here"
        );
    }
    gw.stop().await;
}

const PY_BASIC: &str = r#"
import os, json, httpx, ollama
url, ca, key, port = os.environ["GW"], os.environ["GW_CA"], os.environ["GW_KEY"], os.environ["GW_PORT"]
out = {}
# LangChain's way: the key in the base URL, which httpx sends as Basic credentials.
with httpx.Client(base_url=f"https://langchain:{key}@127.0.0.1:{port}", verify=ca) as c:
    r = c.post("/api/chat", json={"model": "llama3", "messages": [{"role": "user", "content": "hi"}], "stream": False})
    out["url_status"] = r.status_code
    out["url_content"] = r.json()["message"]["content"]
# The official client, with httpx's Basic auth passed through.
client = ollama.Client(host=url, verify=ca, auth=("anyone", key))
out["client_content"] = client.chat(model="llama3", messages=[{"role": "user", "content": "hi"}]).message.content
try:
    ollama.Client(host=url, verify=ca, auth=("anyone", "ogw_wrong")).chat(model="llama3", messages=[])
except ollama.ResponseError as e:
    out["wrong_status"] = e.status_code
    out["wrong_error"] = e.error
print(json.dumps(out))
"#;

#[actix_rt::test]
async fn basic_auth_from_a_url_and_from_the_official_client() {
    let ollama = FakeUpstream::ollama_ok();
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;
    let Some(v) = python(PY_BASIC, python_env(&gw)).await else {
        return;
    };
    assert_eq!(v["url_status"], 200, "{v}");
    assert_eq!(v["url_content"], "ok");
    assert_eq!(v["client_content"], "ok");
    assert_eq!(v["wrong_status"], 401);
    assert_eq!(v["wrong_error"], "invalid API key");
    assert_eq!(chats(&gw, "test-key", "test", 200), 2.0);
    gw.stop().await;
}

/// The keys file of the network tests: the test key, and 127.0.0.2 trusted as `lab`.
fn keys_with_lab(extra: &str) -> String {
    format!(
        "{}[[networks]]\nid = \"lab\"\nteam = \"research\"\ncidrs = [\"127.0.0.2/32\"]\nmodels = [\"llama3*\"]\n{extra}",
        key_entry("test-key", "test", TEST_KEY, "")
    )
}

#[actix_rt::test]
async fn a_trusted_network_is_served_without_a_key_and_a_key_is_judged_alone() {
    let ollama = FakeUpstream::ollama_ok();
    let gw = Gateway::start(Some(&ollama), None, |raw| raw.auth.max_failures = 100).await;
    gw.set_keys(&format!(
        "{}[[networks]]\nid = \"tight\"\nteam = \"ops\"\ncidrs = [\"127.0.0.3\"]\nburst = 2\nrequests_per_minute = 1\n",
        keys_with_lab("")
    ));

    let (status, text) = chat_from(&gw, "127.0.0.2", "llama3", "").await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(chats(&gw, "lab", "research", 200), 1.0);
    assert!(ollama.last().header("authorization").is_none());

    let (status, text) = chat_from(&gw, "127.0.0.1", "llama3", "").await;
    assert_eq!(status, 401, "not in any network: {text}");
    assert!(text.contains("missing API key"), "{text}");

    // A key sent from inside the network is judged by the key: a bad one is refused...
    for headers in [
        "Authorization: Bearer ogw_wrong\r\n".to_string(),
        "X-API-Key: ogw_wrong\r\n".to_string(),
        format!("Authorization: {}\r\n", basic("u:ogw_wrong")),
        "Authorization: Basic %%%\r\n".to_string(),
    ] {
        let (status, text) = chat_from(&gw, "127.0.0.2", "llama3", &headers).await;
        assert_eq!(status, 401, "{headers}: {text}");
        assert!(text.contains("invalid API key"), "{text}");
    }
    // ...and a good one is served as that key, not as the network.
    let bearer = format!("Authorization: Bearer {TEST_KEY}\r\n");
    let (status, _) = chat_from(&gw, "127.0.0.2", "llama3", &bearer).await;
    assert_eq!(status, 200);
    assert_eq!(chats(&gw, "test-key", "test", 200), 1.0);
    assert_eq!(chats(&gw, "lab", "research", 200), 1.0);
    // The key's models are not the network's.
    let (status, _) = chat_from(&gw, "127.0.0.2", "mistral", &bearer).await;
    assert_eq!(status, 200);

    // The network's own models and limits.
    let (status, text) = chat_from(&gw, "127.0.0.2", "mistral", "").await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("not allowed"), "{text}");
    for _ in 0..2 {
        assert_eq!(chat_from(&gw, "127.0.0.3", "llama3", "").await.0, 200);
    }
    let (status, text) = chat_from(&gw, "127.0.0.3", "llama3", "").await;
    assert_eq!(status, 429, "{text}");
    assert!(
        text.contains("rate limit exceeded for API key tight"),
        "{text}"
    );
    assert_eq!(chats(&gw, "tight", "ops", 200), 2.0);
    let refused = r#"gateway_requests_total{code="429",endpoint="/api/chat",key_id="tight",model="none",team="ops",upstream="none"}"#;
    assert_eq!(gw.metric(refused), 1.0);
    gw.stop().await;
}

#[actix_rt::test]
async fn networks_match_the_address_the_allowlist_resolved() {
    let ollama = FakeUpstream::ollama_ok();
    let gw = Gateway::start(Some(&ollama), None, |raw| {
        raw.allowlist.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await;
    gw.set_keys(&format!(
        "{}[[networks]]\nid = \"office\"\nteam = \"staff\"\ncidrs = [\"10.20.0.0/16\"]\n",
        keys_with_lab("")
    ));
    // Behind a trusted proxy, the client is the forwarded address.
    let (status, text) =
        chat_from(&gw, "127.0.0.1", "llama3", "X-Forwarded-For: 10.20.3.4\r\n").await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(chats(&gw, "office", "staff", 200), 1.0);
    // The proxy itself is in no network.
    let (status, _) = chat_from(&gw, "127.0.0.1", "llama3", "").await;
    assert_eq!(status, 401);
    // A peer that is no proxy cannot claim a trusted address.
    let (status, _) = chat_from(&gw, "127.0.0.4", "llama3", "X-Forwarded-For: 10.20.3.4\r\n").await;
    assert_eq!(status, 401);
    // Nor make itself look untrusted when it is in a network: it is who it is.
    let (status, _) = chat_from(&gw, "127.0.0.2", "llama3", "X-Forwarded-For: 192.0.2.9\r\n").await;
    assert_eq!(status, 200);
    assert_eq!(chats(&gw, "lab", "research", 200), 1.0);
    gw.stop().await;
}

#[actix_rt::test]
async fn networks_reload_with_the_keys_and_a_broken_edit_keeps_them() {
    let ollama = FakeUpstream::ollama_ok();
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;
    assert_eq!(chat_from(&gw, "127.0.0.2", "llama3", "").await.0, 401);
    gw.set_keys(&keys_with_lab(""));
    assert_eq!(chat_from(&gw, "127.0.0.2", "llama3", "").await.0, 200);
    // A bad CIDR, a key and a network with one id: refused, and the table in force stays.
    for broken in [
        keys_with_lab("[[networks]]\nid = \"x\"\nteam = \"t\"\ncidrs = [\"127.0.0.0/33\"]\n"),
        keys_with_lab("[[networks]]\nid = \"test-key\"\nteam = \"t\"\ncidrs = [\"127.0.0.3\"]\n"),
    ] {
        gw.set_keys(&broken);
        assert_eq!(chat_from(&gw, "127.0.0.2", "llama3", "").await.0, 200);
        assert_eq!(chat_from(&gw, "127.0.0.3", "llama3", "").await.0, 401);
    }
    // The most specific network wins.
    gw.set_keys(&keys_with_lab(
        "[[networks]]\nid = \"loopback\"\nteam = \"all\"\ncidrs = [\"127.0.0.0/8\"]\n",
    ));
    assert_eq!(chat_from(&gw, "127.0.0.2", "llama3", "").await.0, 200);
    assert_eq!(chat_from(&gw, "127.0.0.3", "llama3", "").await.0, 200);
    assert_eq!(chats(&gw, "lab", "research", 200), 4.0);
    assert_eq!(chats(&gw, "loopback", "all", 200), 1.0);
    // Removed from the file, the network is gone.
    gw.set_keys(&key_entry("test-key", "test", TEST_KEY, ""));
    assert_eq!(chat_from(&gw, "127.0.0.2", "llama3", "").await.0, 401);
    gw.stop().await;
}

#[test]
fn check_config_counts_the_networks_and_names_a_bad_one() {
    let dir = common::TempDir::new("netcheck");
    let keys = dir.0.join("keys.toml");
    let check = |text: &str| {
        std::fs::write(&keys, text).unwrap();
        Command::new(common::BIN)
            .args(["check-config", "--config", &common::repo_config()])
            .current_dir(&dir.0)
            .env_clear()
            .env("GATEWAY_KEYS_FILE", &keys)
            .output()
            .unwrap()
    };
    let ok = check(&keys_with_lab(""));
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        out.contains("1 API key(s) and 1 trusted network(s)"),
        "{out}"
    );
    let bad = check(&keys_with_lab(
        "[[networks]]\nid = \"wide\"\nteam = \"t\"\ncidrs = [\"10.0.0.1/8\"]\n",
    ));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(
        err.contains("network #2 (\"wide\"): cidr \"10.0.0.1/8\" has host bits set"),
        "{err}"
    );
}

/// The log lines of this test binary in the gateway's JSON format (the subscriber is
/// installed on first use, for every thread of the binary).
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    Arc::clone(LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&buf);
        let subscriber = tracing_subscriber::fmt()
            .event_format(ollama_gateway::telemetry::JsonLine)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || Sink(Arc::clone(&sink)))
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        buf
    }))
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[actix_rt::test]
async fn the_log_line_names_the_network_and_its_team() {
    let logs = captured_logs();
    let ollama = FakeUpstream::ollama_ok();
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;
    gw.set_keys(&keys_with_lab(""));
    for (id, model) in [("net-log-ok", "llama3"), ("net-log-refused", "mistral")] {
        let headers = format!("X-Request-Id: {id}\r\n");
        chat_from(&gw, "127.0.0.2", model, &headers).await;
    }
    gw.stop().await;
    let text = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    for (id, status) in [("net-log-ok", 200), ("net-log-refused", 403)] {
        let line: Value = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["request_id"] == id && v["message"] == "request")
            .unwrap_or_else(|| panic!("no request line for {id} in\n{text}"));
        assert_eq!(line["key_id"], "lab", "{line}");
        assert_eq!(line["team"], "research", "{line}");
        assert_eq!(line["status"], status, "{line}");
    }
}
