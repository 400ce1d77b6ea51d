//! `GET /v1/models` and `GET /v1/models/{model}` over real TLS: the merged catalog of
//! `/api/tags` in OpenAI's shape, read by the official openai Python client; a key sees
//! only its models; 403 for a model it may not use, 404 for one no list holds; the reads
//! are cheap (no in-flight slot, the reads bucket).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{key_entry, FakeUpstream, Gateway, Reply, TEST_KEY};
use serde_json::{json, Value};

/// A fake Ollama that lists two models.
fn ollama() -> FakeUpstream {
    FakeUpstream::start(|r| match r.path.as_str() {
        "/api/tags" => Reply::json(
            200,
            &json!({"models": [
                {"name": "llama3:latest", "model": "llama3:latest", "modified_at": "2025-05-04T17:37:44.706015396-07:00",
                 "size": 2019393189u64, "digest": "a80c", "details": {"format": "gguf", "family": "llama"}},
                {"name": "jmorgan/qwen3:8b", "model": "jmorgan/qwen3:8b", "modified_at": "2025-05-05T00:37:44Z",
                 "size": 5u64, "digest": "b1", "details": {"format": "gguf", "family": "qwen3"}}
            ]}),
        ),
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

async fn get(gw: &Gateway, path: &str, key: &str) -> (u16, awc::http::header::HeaderMap, Value) {
    let mut resp = gw
        .client()
        .get(format!("{}{path}", gw.url))
        .insert_header(("Authorization", format!("Bearer {key}")))
        .send()
        .await
        .unwrap();
    let body = resp.body().await.unwrap();
    let v = serde_json::from_slice(&body)
        .unwrap_or_else(|_| panic!("{path}: {}", String::from_utf8_lossy(&body)));
    (resp.status().as_u16(), resp.headers().clone(), v)
}

fn ids(list: &Value) -> Vec<&str> {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect()
}

#[actix_rt::test]
async fn the_list_is_the_merged_catalog_in_openais_shape() {
    let (ollama, openai) = (ollama(), openai());
    let gw = Gateway::start(Some(&ollama), Some(&openai), |_| {}).await;
    let (status, headers, list) = get(&gw, "/v1/models", TEST_KEY).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["object"], "list");
    assert_eq!(
        list["data"],
        json!([
            // 2025-05-04T17:37:44-07:00 is 2025-05-05T00:37:44Z.
            {"id": "llama3:latest", "object": "model", "created": 1746405464, "owned_by": "library"},
            {"id": "jmorgan/qwen3:8b", "object": "model", "created": 1746405464, "owned_by": "jmorgan"},
            {"id": "openai/gpt-4o-mini", "object": "model", "created": 1721172741, "owned_by": "openai"},
            {"id": "openai/o3", "object": "model", "created": 1744225308, "owned_by": "openai"},
        ])
    );
    // A cheap read: it drew on the key's bucket of reads.
    let policy = headers.get("ratelimit-policy").unwrap().to_str().unwrap();
    assert!(policy.starts_with("\"reads\""), "{policy}");
    // The same models as /api/tags, under the same names.
    let (_, _, tags) = get(&gw, "/api/tags", TEST_KEY).await;
    let tag_names: Vec<&str> = tags["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(ids(&list), tag_names);
    // A model id with slashes is reachable, as is an untagged name (its :latest).
    let (status, _, m) = get(&gw, "/v1/models/openai/gpt-4o-mini", TEST_KEY).await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(
        m,
        json!({"id": "openai/gpt-4o-mini", "object": "model", "created": 1721172741, "owned_by": "openai"})
    );
    let (status, _, m) = get(&gw, "/v1/models/jmorgan/qwen3:8b", TEST_KEY).await;
    assert_eq!((status, &m["owned_by"]), (200, &json!("jmorgan")), "{m}");
    let (status, _, m) = get(&gw, "/v1/models/llama3", TEST_KEY).await;
    assert_eq!((status, &m["id"]), (200, &json!("llama3")), "{m}");
    for missing in [
        "/v1/models/openai/gpt-5",
        "/v1/models/mistral:7b",
        "/v1/models/llama3:8b",
    ] {
        let (status, _, err) = get(&gw, missing, TEST_KEY).await;
        assert_eq!(status, 404, "{missing}: {err}");
        assert!(err.to_string().contains("not found"), "{err}");
    }
    assert_eq!(
        gw.metric(r#"gateway_requests_total{code="200",endpoint="/v1/models/:model",key_id="test-key",model="none",team="test",upstream="none"}"#),
        3.0
    );
    gw.stop().await;
}

#[actix_rt::test]
async fn a_key_sees_only_its_models_and_is_refused_the_others() {
    let (ollama, openai) = (ollama(), openai());
    let gw = Gateway::start(Some(&ollama), Some(&openai), |_| {}).await;
    let narrow = "ogw_narrow_key_for_v1_models_0001";
    gw.set_keys(&format!(
        "{}{}",
        key_entry("test-key", "test", TEST_KEY, ""),
        key_entry(
            "narrow",
            "t",
            narrow,
            "models = [\"llama3\", \"openai/gpt-*\"]"
        )
    ));
    let (_, _, list) = get(&gw, "/v1/models", narrow).await;
    assert_eq!(ids(&list), ["llama3:latest", "openai/gpt-4o-mini"]);
    for refused in ["/v1/models/openai/o3", "/v1/models/jmorgan/qwen3:8b"] {
        let (status, _, err) = get(&gw, refused, narrow).await;
        assert_eq!(status, 403, "{refused}: {err}");
        assert!(err.to_string().contains("not allowed"), "{err}");
    }
    // Refused before any list is asked for: even a model no list holds is a 403, not a 404.
    let (status, _, _) = get(&gw, "/v1/models/openai/o4", narrow).await;
    assert_eq!(status, 403);
    gw.stop().await;
}

#[actix_rt::test]
async fn an_upstream_that_fails_leaves_its_part_out_of_the_list_but_fails_a_retrieve() {
    let ollama = ollama();
    let broken = FakeUpstream::start(|_| Reply::json(500, &json!({"error": {"message": "down"}})));
    let gw = Gateway::start(Some(&ollama), Some(&broken), |_| {}).await;
    let (status, _, list) = get(&gw, "/v1/models", TEST_KEY).await;
    assert_eq!(status, 200);
    assert_eq!(ids(&list), ["llama3:latest", "jmorgan/qwen3:8b"]);
    let (status, _, err) = get(&gw, "/v1/models/openai/gpt-4o-mini", TEST_KEY).await;
    // An upstream's 5xx is a bad gateway to the client, as everywhere.
    assert_eq!(status, 502, "{err}");
    assert_eq!(gw.upstream_errors("openai", "status"), 2.0);
    gw.stop().await;
}

const SCRIPT: &str = r#"
import os, json, httpx, openai
def client(key):
    return openai.OpenAI(base_url=os.environ["GW"] + "/v1", api_key=key, max_retries=0,
                         http_client=httpx.Client(verify=os.environ["GW_CA"]))
out = {}
c = client(os.environ["GW_KEY"])
out["ids"] = [m.id for m in c.models.list()]
m = c.models.retrieve("openai/gpt-4o-mini")
out["retrieved"] = [m.id, m.object, m.created, m.owned_by]
out["latest"] = c.models.retrieve("llama3:latest").id
n = client(os.environ["NARROW"])
out["narrow_ids"] = [m.id for m in n.models.list()]
for name, model, cl in [("denied", "openai/o3", n), ("missing", "openai/gpt-5", c)]:
    try:
        cl.models.retrieve(model)
        out[name] = "no error"
    except openai.APIStatusError as e:
        out[name] = [type(e).__name__, e.status_code]
print(json.dumps(out))
"#;

#[actix_rt::test]
async fn the_openai_python_client_lists_and_retrieves() {
    if !common::skip::available(
        common::skip::runs("python3", &["-c", "import openai, httpx"]),
        "python3 module `openai` (pip install openai)",
    ) {
        return;
    }
    let (ollama, openai) = (ollama(), openai());
    let gw = Gateway::start(Some(&ollama), Some(&openai), |_| {}).await;
    let narrow = "ogw_narrow_key_for_v1_models_0002";
    gw.set_keys(&format!(
        "{}{}",
        key_entry("test-key", "test", TEST_KEY, ""),
        key_entry("narrow", "t", narrow, "models = [\"llama3\"]")
    ));
    let v = gw
        .python(SCRIPT, &[("GW_KEY", TEST_KEY), ("NARROW", narrow)])
        .await;
    assert_eq!(
        v["ids"],
        json!([
            "llama3:latest",
            "jmorgan/qwen3:8b",
            "openai/gpt-4o-mini",
            "openai/o3"
        ])
    );
    assert_eq!(
        v["retrieved"],
        json!(["openai/gpt-4o-mini", "model", 1721172741, "openai"])
    );
    assert_eq!(v["latest"], "llama3:latest");
    assert_eq!(v["narrow_ids"], json!(["llama3:latest"]));
    assert_eq!(v["denied"], json!(["PermissionDeniedError", 403]));
    assert_eq!(v["missing"], json!(["NotFoundError", 404]));
    gw.stop().await;
}
