//! The official ollama-python client's `generate` (streamed and not, and the empty load
//! `ollama run` sends first), `embed` and `embeddings`, over TLS through the gateway, in
//! front of a fake Ollama and a fake OpenAI-compatible upstream (models `openai/...`). CI
//! installs the client; elsewhere the test is skipped, with a notice (see `common::skip`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Gateway;
use serde_json::{json, Value};

const SCRIPT: &str = r#"
import os, json, ollama
client = ollama.Client(host=os.environ["GW"], verify=os.environ["GW_CA"], headers={"Authorization": "Bearer " + os.environ["GW_KEY"]})
out = {}
for kind, model, embedder in (("ollama", "llama3:instruct", "nomic-embed-text"), ("openai", "openai/gpt-4o-mini", "openai/text-embedding-3-small")):
    r = client.generate(model=model, prompt="用一句話介紹你自己", system="簡短", options={"num_predict": 16})
    out[kind + "_whole"] = [r.response, r.done, r.done_reason, r.prompt_eval_count, r.eval_count,
                            r.load_duration is not None, r.prompt_eval_duration is not None, r.eval_duration is not None]
    parts = list(client.generate(model=model, prompt="hi", stream=True))
    last = parts[-1]
    out[kind + "_stream"] = ["".join(p.response for p in parts), last.done, last.done_reason, last.eval_count,
                             last.load_duration is not None, last.eval_duration is not None]
    out[kind + "_load"] = client.generate(model=model).done_reason
    r = client.embed(model=embedder, input=["第一段", "second"])
    out[kind + "_embed"] = [len(r.embeddings), r.prompt_eval_count]
    out[kind + "_embed_one"] = client.embed(model=embedder, input="one", dimensions=3).embeddings
    out[kind + "_embeddings"] = list(client.embeddings(model=embedder, prompt="legacy").embedding)
try:
    client.generate(model="openai/gpt-4o-mini", prompt="x", raw=True)
except ollama.ResponseError as e:
    out["raw"] = [e.status_code, e.error]
print(json.dumps(out))
"#;

#[actix_rt::test]
async fn ollama_python_generate_and_embeddings_work_through_the_gateway() {
    if !common::skip::available(
        common::skip::runs("python3", &["-c", "import ollama"]),
        "python3 module `ollama` (pip install ollama)",
    ) {
        return;
    }
    let ollama = common::gen::ollama();
    let openai = common::gen::openai();
    let gw = Gateway::start(Some(&ollama), Some(&openai), |_| {}).await;
    let v = common::run_python(&gw, SCRIPT).await;
    let expect = |kind: &str, field: &str, value: Value| {
        assert_eq!(v[format!("{kind}_{field}")], value, "{kind} {field}: {v}");
    };
    for (kind, (prompt_tokens, completion_tokens), per_input) in
        [("ollama", (5, 2), 4), ("openai", (9, 12), 3)]
    {
        expect(
            kind,
            "whole",
            json!([
                "你好",
                true,
                "stop",
                prompt_tokens,
                completion_tokens,
                true,
                true,
                true
            ]),
        );
        expect(
            kind,
            "stream",
            json!(["你好", true, "stop", completion_tokens, true, true]),
        );
        expect(kind, "load", json!("load"));
        expect(kind, "embed", json!([2, 2 * per_input]));
    }
    expect("ollama", "embed_one", json!([[0.1, -0.2, 0.3]]));
    expect("openai", "embed_one", json!([[0.25, -0.5, 0.0]]));
    expect("ollama", "embeddings", json!([0.5, 0.25]));
    expect("openai", "embeddings", json!([0.25, -0.5, 0.0]));
    assert_eq!(v["raw"][0], 400, "{v}");
    assert!(
        v["raw"][1]
            .as_str()
            .unwrap()
            .contains("\"raw\" is not supported"),
        "{v}"
    );

    // What the client sent: ollama-python leaves out what is unset.
    let generate = ollama
        .requests()
        .into_iter()
        .find(|r| r.path == "/api/generate")
        .unwrap()
        .json();
    assert_eq!(
        generate,
        json!({"model":"llama3:instruct","prompt":"用一句話介紹你自己","system":"簡短","stream":false,"options":{"num_predict":16}})
    );
    let sent: Vec<Value> = openai.requests().iter().map(|r| r.json()).collect();
    assert_eq!(
        sent[0]["messages"],
        json!([{"role":"system","content":"簡短"},{"role":"user","content":"用一句話介紹你自己"}])
    );
    assert_eq!(sent[0]["max_tokens"], 16);
    assert!(
        sent.iter()
            .any(|b| b == &json!({"model":"text-embedding-3-small","input":"one","dimensions":3})),
        "{sent:?}"
    );
    gw.stop().await;
}
