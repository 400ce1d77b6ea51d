//! Open WebUI's calls on an Ollama connection, replayed in its order over TLS (from its
//! `routers/ollama.py`), asserting the fields it reads: version, tags, ps, chat streamed
//! and not, show, embed, and the unload through generate. An `openai/...` model must be in
//! the list to be chattable at all, so the list and the chat are checked for it too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use awc::http::Method;
use common::{ollama_stream_lines, openai_sse, FakeUpstream, Gateway, Reply, TEST_KEY};
use serde_json::{json, Value};

fn ollama() -> FakeUpstream {
    FakeUpstream::start(|r| match (r.method.as_str(), r.path.as_str()) {
        ("GET", "/api/version") => Reply::json(200, &json!({"version": "0.12.6"})),
        ("GET", "/api/tags") => Reply::json(
            200,
            &json!({"models": [{"name": "llama3:latest", "model": "llama3:latest",
                "modified_at": "2025-05-04T17:37:44Z", "size": 1u64, "digest": "d",
                "details": {"family": "llama"}}]}),
        ),
        ("GET", "/api/ps") => Reply::json(200, &json!({"models": []})),
        ("POST", "/api/show") => Reply::json(
            200,
            &json!({"modelfile": "FROM llama3", "parameters": "", "template": "", "details": {},
                    "model_info": {}, "capabilities": ["completion"]}),
        ),
        ("POST", "/api/embed") => Reply::json(
            200,
            &json!({"model": "llama3:latest", "embeddings": [[0.1, 0.2]], "prompt_eval_count": 2}),
        ),
        ("POST", "/api/generate") => Reply::json(
            200,
            &json!({"model": "llama3:latest", "created_at": "2025-05-04T17:37:44Z", "response": "",
                    "done": true, "done_reason": "unload"}),
        ),
        ("POST", "/api/chat") if r.json()["stream"] == true => {
            Reply::ndjson(&ollama_stream_lines("llama3:latest", &["Hel", "lo"]))
        }
        ("POST", "/api/chat") => Reply::json(
            200,
            &json!({"model": "llama3:latest", "created_at": "2025-05-04T17:37:44Z",
                    "message": {"role": "assistant", "content": "A title"}, "done": true, "done_reason": "stop"}),
        ),
        _ => Reply::json(404, &json!({"error": "404 page not found"})),
    })
}

fn openai() -> FakeUpstream {
    FakeUpstream::start(|r| match r.path.as_str() {
        "/v1/models" => Reply::json(
            200,
            &json!({"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model", "created": 1721172741}]}),
        ),
        _ => Reply::sse(openai_sse(&["Hi", "!"], "stop")),
    })
}

async fn call(
    gw: &Gateway,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, String, Vec<u8>) {
    let req = gw
        .client()
        .request(method, format!("{}{path}", gw.url))
        .insert_header(("Authorization", format!("Bearer {TEST_KEY}")));
    let mut resp = match body {
        Some(body) => req.send_json(&body).await.unwrap(),
        None => req.send().await.unwrap(),
    };
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let bytes = resp.body().limit(1 << 20).await.unwrap();
    (resp.status().as_u16(), content_type, bytes.to_vec())
}

fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("JSON: {}", String::from_utf8_lossy(body)))
}

#[actix_rt::test]
async fn open_webui_sequence_on_an_ollama_connection() {
    let (ollama, openai) = (ollama(), openai());
    let gw = Gateway::start(Some(&ollama), Some(&openai), |_| {}).await;

    // Adding the connection: the version must parse as dotted integers.
    let (status, _, body) = call(&gw, Method::GET, "/api/version", None).await;
    assert_eq!(status, 200);
    let version = json_of(&body)["version"].as_str().unwrap().to_string();
    let numbers: Vec<u32> = version
        .trim_start_matches('v')
        .split('-')
        .next()
        .unwrap()
        .split('.')
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(numbers, [0, 12, 6]);

    // The model list: `.get('models', [])`, keyed on `model`, matched to ps by `name`.
    let (status, _, body) = call(&gw, Method::GET, "/api/tags", None).await;
    assert_eq!(status, 200);
    let models: Vec<String> = json_of(&body)["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert!(m["name"].is_string(), "{m}");
            m["model"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(models, ["llama3:latest", "openai/gpt-4o-mini"]);
    let (status, _, body) = call(&gw, Method::GET, "/api/ps", None).await;
    assert_eq!(status, 200);
    assert!(json_of(&body)["models"].is_array());

    // A chat, streamed: NDJSON, every line ending in \n, the last one done.
    for model in ["llama3:latest", "openai/gpt-4o-mini"] {
        let (status, content_type, body) = call(
            &gw,
            Method::POST,
            "/api/chat",
            Some(json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": true})),
        )
        .await;
        assert_eq!(status, 200, "{model}");
        assert!(
            content_type.starts_with("application/x-ndjson"),
            "{content_type}"
        );
        let lines = common::ndjson(&body);
        assert_eq!(lines.last().unwrap()["done"], true, "{model}");
        let text: String = lines
            .iter()
            .filter_map(|l| l["message"]["content"].as_str())
            .collect();
        assert!(!text.is_empty(), "{model}");
    }

    // A task (title) chat, not streamed.
    let (status, _, body) = call(
        &gw,
        Method::POST,
        "/api/chat",
        Some(json!({"model": "llama3:latest", "messages": [{"role": "user", "content": "title?"}], "stream": false})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(json_of(&body)["message"]["content"], "A title");

    // The model editor, RAG and the unload.
    let (status, _, body) = call(
        &gw,
        Method::POST,
        "/api/show",
        Some(json!({"model": "llama3:latest"})),
    )
    .await;
    assert_eq!(status, 200);
    assert!(json_of(&body).get("model_info").is_some());
    let (status, _, body) = call(
        &gw,
        Method::POST,
        "/api/embed",
        Some(json!({"model": "llama3:latest", "input": ["a chunk"]})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(json_of(&body)["embeddings"][0].as_array().unwrap().len(), 2);
    let (status, _, _) = call(
        &gw,
        Method::POST,
        "/api/generate",
        Some(json!({"model": "llama3:latest", "keep_alive": 0, "prompt": ""})),
    )
    .await;
    assert_eq!(status, 200);
    let unload = ollama
        .requests()
        .into_iter()
        .find(|r| r.path == "/api/generate")
        .expect("the unload reached Ollama");
    assert_eq!(
        unload.json(),
        json!({"model": "llama3:latest", "keep_alive": 0, "prompt": ""})
    );
    gw.stop().await;
}
