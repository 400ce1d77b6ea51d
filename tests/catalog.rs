//! The model lists over real TLS: `/api/tags` merges Ollama's models with every
//! OpenAI-compatible upstream's (listed by it, or configured), caches the upstreams' part,
//! leaves out an upstream that fails; `/api/ps` and `/api/show`; a key sees only its models.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use awc::http::Method;
use common::{key_entry, FakeUpstream, Gateway, Reply, TEST_KEY};
use ollama_gateway::config::RawOpenAi;
use serde_json::{json, Value};

/// A fake Ollama that knows two models, one of them loaded.
fn ollama() -> FakeUpstream {
    FakeUpstream::start(|r| match (r.method.as_str(), r.path.as_str()) {
        ("GET", "/api/tags") => Reply::json(
            200,
            &json!({"models": [
                {"name": "llama3:latest", "model": "llama3:latest", "modified_at": "2025-05-04T17:37:44.706015396-07:00",
                 "size": 2019393189u64, "digest": "a80c", "details": {"format": "gguf", "family": "llama"}},
                {"name": "qwen3:8b", "model": "qwen3:8b", "modified_at": "2025-05-04T17:37:44Z",
                 "size": 5u64, "digest": "b1", "details": {"format": "gguf", "family": "qwen3"}}
            ]}),
        ),
        ("GET", "/api/ps") => Reply::json(
            200,
            &json!({"models": [{"name": "qwen3:8b", "model": "qwen3:8b", "size": 5u64, "digest": "b1",
                 "expires_at": "2024-06-04T14:38:31.83753-07:00", "size_vram": 5u64, "context_length": 4096}]}),
        ),
        ("POST", "/api/show") => {
            // Ollama takes the legacy `name` too.
            let body = r.json();
            let model = body["model"]
                .as_str()
                .or(body["name"].as_str())
                .unwrap_or("")
                .to_string();
            if model == "llama3:latest" {
                Reply::json(
                    200,
                    &json!({"modelfile": "FROM llama3", "parameters": "", "template": "{{ .Prompt }}",
                            "details": {"family": "llama"}, "model_info": {"general.architecture": "llama"},
                            "capabilities": ["completion"], "modified_at": "2025-05-04T17:37:44Z"}),
                )
            } else {
                Reply::json(404, &json!({"error": format!("model '{model}' not found")}))
            }
        }
        _ => Reply::json(404, &json!({"error": "404 page not found"})),
    })
}

/// A fake OpenAI-compatible upstream whose `/v1/models` lists two models.
fn openai() -> FakeUpstream {
    FakeUpstream::start(|r| match r.path.as_str() {
        "/v1/models" => Reply::json(
            200,
            &json!({"object": "list", "data": [
                {"id": "gpt-4o-mini", "object": "model", "created": 1721172741, "owned_by": "system"},
                {"id": "o3", "object": "model", "created": 1744225308, "owned_by": "system"}
            ]}),
        ),
        _ => Reply::json(404, &json!({"error": {"message": "not here"}})),
    })
}

async fn call(
    gw: &Gateway,
    method: Method,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let req = gw
        .client()
        .request(method, format!("{}{path}", gw.url))
        .insert_header(("Authorization", format!("Bearer {key}")));
    let mut resp = match body {
        Some(body) => req.send_json(&body).await.unwrap(),
        None => req.send().await.unwrap(),
    };
    let bytes = resp.body().await.unwrap();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("JSON: {}", String::from_utf8_lossy(&bytes)))
    };
    (resp.status().as_u16(), value)
}

/// `POST /api/show` with `body` under `key`.
async fn show(gw: &Gateway, key: &str, body: Value) -> (u16, Value) {
    call(gw, Method::POST, "/api/show", key, Some(body)).await
}

fn names(list: &Value) -> Vec<String> {
    list["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["name"], m["model"], "both name and model: {m}");
            m["model"].as_str().unwrap().to_string()
        })
        .collect()
}

#[actix_rt::test]
async fn tags_merge_every_upstream_under_its_prefix_and_cache_the_remote_part() {
    let (ollama, openai) = (ollama(), openai());
    let gw = Gateway::start(Some(&ollama), Some(&openai), |_| {}).await;
    let (status, list) = call(&gw, Method::GET, "/api/tags", TEST_KEY, None).await;
    assert_eq!(status, 200);
    assert_eq!(
        names(&list),
        [
            "llama3:latest",
            "qwen3:8b",
            "openai/gpt-4o-mini",
            "openai/o3"
        ]
    );
    // Ollama's entries pass as Ollama wrote them; the upstream's carry what clients read.
    assert_eq!(list["models"][0]["size"], 2019393189u64);
    let gpt = &list["models"][2];
    assert_eq!(gpt["details"]["family"], "gpt");
    assert_eq!(gpt["modified_at"], "2024-07-16T23:32:21Z");
    // The upstream was asked with its key.
    let asked = openai.last();
    assert_eq!(asked.path, "/v1/models");
    assert_eq!(
        asked.header("authorization"),
        Some(format!("Bearer {}", common::UPSTREAM_KEY).as_str())
    );
    // A second list within the cache time asks Ollama again, the upstream not.
    let (_, again) = call(&gw, Method::GET, "/api/tags", TEST_KEY, None).await;
    assert_eq!(names(&again).len(), 4);
    assert_eq!(openai.requests().len(), 1);
    assert_eq!(
        ollama
            .requests()
            .iter()
            .filter(|r| r.path == "/api/tags")
            .count(),
        2
    );
    // HEAD answers the same status without a body.
    let (status, body) = call(&gw, Method::HEAD, "/api/tags", TEST_KEY, None).await;
    assert_eq!((status, body), (200, Value::Null));
    gw.stop().await;
}

#[actix_rt::test]
async fn an_upstream_that_fails_leaves_its_part_out() {
    let ollama = ollama();
    let broken = FakeUpstream::start(|_| Reply::json(500, &json!({"error": {"message": "down"}})));
    let gw = Gateway::start(Some(&ollama), Some(&broken), |raw| {
        // A server that cannot list: its models come from the config.
        raw.upstreams.insert(
            "vllm".into(),
            RawOpenAi {
                base_url: format!("{}/v1", broken.url()),
                requires_api_key: Some(false),
                models: Some(vec!["Qwen/Qwen3-8B".into()]),
                ..RawOpenAi::default()
            },
        );
    })
    .await;
    let (status, list) = call(&gw, Method::GET, "/api/tags", TEST_KEY, None).await;
    assert_eq!(status, 200, "the list does not fail");
    assert_eq!(
        names(&list),
        ["llama3:latest", "qwen3:8b", "vllm/Qwen/Qwen3-8B"]
    );
    assert!(
        broken.requests().iter().all(|r| r.path == "/v1/models"),
        "a configured list is not asked for"
    );
    assert!(gw.upstream_errors("openai", "status") >= 1.0);
    // Show cannot say whether a model of that upstream exists: it says why, and never
    // describes a model that may not be there. A configured list still answers.
    let before = gw.upstream_errors("openai", "status");
    let (status, err) = show(&gw, TEST_KEY, json!({"model": "openai/gpt-4o-mini"})).await;
    assert_eq!(status, 502, "{err}");
    assert!(err["error"].as_str().unwrap().contains("down"), "{err}");
    assert_eq!(gw.upstream_errors("openai", "status"), before + 1.0);
    let (status, shown) = show(&gw, TEST_KEY, json!({"model": "vllm/Qwen/Qwen3-8B"})).await;
    assert_eq!(status, 200, "{shown}");
    gw.stop().await;

    // Ollama down: the upstreams' part still comes.
    let openai = openai();
    let gw = Gateway::start(None, Some(&openai), |_| {}).await;
    let (status, list) = call(&gw, Method::GET, "/api/tags", TEST_KEY, None).await;
    assert_eq!(status, 200);
    assert_eq!(names(&list), ["openai/gpt-4o-mini", "openai/o3"]);
    assert!(gw.upstream_errors("ollama", "connect") >= 1.0);
    gw.stop().await;
}

#[actix_rt::test]
async fn a_key_sees_only_its_models_in_every_list_and_show() {
    let (ollama, openai) = (ollama(), openai());
    let gw = Gateway::start(Some(&ollama), Some(&openai), |_| {}).await;
    let narrow = "ogw_narrow_key_for_catalog_tests_0001";
    gw.set_keys(&format!(
        "{}{}",
        key_entry("test-key", "test", TEST_KEY, ""),
        key_entry(
            "narrow",
            "t",
            narrow,
            "models = [\"qwen3:*\", \"openai/gpt-*\"]"
        )
    ));
    let (_, list) = call(&gw, Method::GET, "/api/tags", narrow, None).await;
    assert_eq!(names(&list), ["qwen3:8b", "openai/gpt-4o-mini"]);
    let (_, ps) = call(&gw, Method::GET, "/api/ps", narrow, None).await;
    assert_eq!(names(&ps), ["qwen3:8b"]);
    gw.set_keys(&format!(
        "{}{}",
        key_entry("test-key", "test", TEST_KEY, ""),
        key_entry("narrow", "t", narrow, "models = [\"llama3:*\"]")
    ));
    let (_, ps) = call(&gw, Method::GET, "/api/ps", narrow, None).await;
    assert_eq!(
        names(&ps),
        Vec::<String>::new(),
        "a loaded model the key may not use"
    );
    let (status, err) = show(&gw, narrow, json!({"model": "qwen3:8b"})).await;
    assert_eq!(status, 403, "{err}");
    assert!(err["error"].as_str().unwrap().contains("not allowed"));
    // A pattern without a tag is the model's `:latest`, as Ollama names it: the list shows
    // `llama3:latest`, and both spellings may be used.
    gw.set_keys(&format!(
        "{}{}",
        key_entry("test-key", "test", TEST_KEY, ""),
        key_entry("narrow", "t", narrow, "models = [\"llama3\"]")
    ));
    let (_, list) = call(&gw, Method::GET, "/api/tags", narrow, None).await;
    assert_eq!(names(&list), ["llama3:latest"]);
    for model in ["llama3", "llama3:latest"] {
        let (status, body) = show(&gw, narrow, json!({ "model": model })).await;
        assert_ne!(status, 403, "{model}: {body}");
    }
    gw.stop().await;
}

#[actix_rt::test]
async fn show_relays_ollama_and_describes_an_upstream_model() {
    let (ollama, openai) = (ollama(), openai());
    let gw = Gateway::start(Some(&ollama), Some(&openai), |_| {}).await;
    let (status, shown) = show(&gw, TEST_KEY, json!({"model": "llama3:latest"})).await;
    assert_eq!(status, 200);
    assert_eq!(shown["modelfile"], "FROM llama3");
    assert_eq!(
        ollama.last().json(),
        json!({"model": "llama3:latest"}),
        "relayed as sent"
    );
    // Ollama's own 404, relayed; the legacy `name` field works too.
    let (status, err) = show(&gw, TEST_KEY, json!({"name": "nope"})).await;
    assert_eq!(status, 404);
    assert_eq!(err["error"], "model 'nope' not found");

    let (status, shown) = show(&gw, TEST_KEY, json!({"model": "openai/gpt-4o-mini"})).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["details"]["family"], "gpt");
    assert_eq!(shown["capabilities"], json!(["completion", "tools"]));
    assert!(shown.get("model_info").is_some());
    let (status, err) = show(&gw, TEST_KEY, json!({"model": "openai/gpt-9"})).await;
    assert_eq!(status, 404, "{err}");
    assert_eq!(err["error"], "model 'openai/gpt-9' not found");
    let (status, _) = show(&gw, TEST_KEY, json!({})).await;
    assert_eq!(status, 400);
    gw.stop().await;
}

#[actix_rt::test]
async fn the_official_client_lists_shows_and_reads_ps() {
    if !common::skip::available(
        common::skip::runs("python3", &["-c", "import ollama"]),
        "python3 with the ollama package (pip install ollama)",
    ) {
        return;
    }
    let (ollama, openai) = (ollama(), openai());
    let gw = Gateway::start(Some(&ollama), Some(&openai), |_| {}).await;
    const SCRIPT: &str = r#"
import json, os, ollama
c = ollama.Client(host=os.environ["GW"], headers={"Authorization": "Bearer " + os.environ["GW_KEY"]}, verify=os.environ["GW_CA"])
names = [m.model for m in c.list().models]
shown = c.show("openai/gpt-4o-mini")
local = c.show("llama3:latest")
ps = [m.model for m in c.ps().models]
print(json.dumps({"names": names, "family": shown.details.family, "caps": shown.capabilities, "local": local.modelfile, "ps": ps}))
"#;
    let got = gw.python(SCRIPT, &[("GW_KEY", TEST_KEY)]).await;
    assert_eq!(
        got["names"],
        json!([
            "llama3:latest",
            "qwen3:8b",
            "openai/gpt-4o-mini",
            "openai/o3"
        ])
    );
    assert_eq!(got["family"], "gpt");
    assert_eq!(got["caps"], json!(["completion", "tools"]));
    assert_eq!(got["local"], "FROM llama3");
    assert_eq!(got["ps"], json!(["qwen3:8b"]));
    gw.stop().await;
}
