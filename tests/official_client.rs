//! The official ollama-python client against the gateway, over TLS, in front of both fakes:
//! what a new user does first. CI installs the client (`pip install ollama`); elsewhere the
//! test is skipped, with a notice, when the module is missing (see `common::skip`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{ollama_stream_lines, openai_sse, FakeUpstream, Gateway, Reply};
use serde_json::json;

const SCRIPT: &str = r#"
import os, sys, json, ollama
client = ollama.Client(host=os.environ["GW"], verify=os.environ["GW_CA"], headers={"Authorization": "Bearer " + os.environ["GW_KEY"]})
out = {}
r = client.chat(model="llama3:instruct", messages=[{"role": "user", "content": "用一句話介紹你自己"}])
out["ollama_whole"] = r.message.content
out["ollama_stream"] = "".join(p.message.content for p in client.chat(model="llama3:instruct", messages=[{"role": "user", "content": "hi"}], stream=True))
r = client.chat(model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], options={"num_predict": 16})
out["openai_whole"] = r.message.content
out["openai_eval_count"] = r.eval_count
parts = list(client.chat(model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True))
out["openai_stream"] = "".join(p.message.content for p in parts)
out["openai_stream_done"] = parts[-1].done
try:
    client.chat(model="openai/missing", messages=[{"role": "user", "content": "hi"}])
except ollama.ResponseError as e:
    out["error_status"] = e.status_code
    out["error_text"] = e.error
print(json.dumps(out))
"#;

#[actix_rt::test]
async fn ollama_python_client_works_through_the_gateway() {
    if !common::skip::available(
        common::skip::runs("python3", &["-c", "import ollama"]),
        "python3 module `ollama` (pip install ollama)",
    ) {
        return;
    }
    let ollama = FakeUpstream::start(|req| {
        if req.json()["stream"] == true {
            Reply::ndjson(&ollama_stream_lines("llama3:instruct", &["你", "好"]))
        } else {
            Reply::json(
                200,
                &json!({"model":"llama3:instruct","created_at":"2025-08-08T08:27:50.537Z",
                "message":{"role":"assistant","content":"我是語言模型。"},"done":true,"done_reason":"stop"}),
            )
        }
    });
    let openai = FakeUpstream::start(|req| {
        let body = req.json();
        if body["model"] == "missing" {
            return Reply::json(
                404,
                &json!({"error":{"message":"The model `missing` does not exist","type":"invalid_request_error","param":null,"code":"model_not_found"}}),
            );
        }
        if body["stream"] == true {
            Reply::sse(openai_sse(&["Hel", "lo"], "stop"))
        } else {
            Reply::json(
                200,
                &json!({"choices":[{"index":0,"message":{"role":"assistant","content":"Hello"},"finish_reason":"stop"}],
                "usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}),
            )
        }
    });
    let gw = Gateway::start(Some(&ollama), Some(&openai), |_| {}).await;
    let v = gw.python(SCRIPT, &[("GW_KEY", common::TEST_KEY)]).await;
    assert_eq!(v["ollama_whole"], "我是語言模型。");
    assert_eq!(v["ollama_stream"], "你好");
    assert_eq!(v["openai_whole"], "Hello");
    assert_eq!(v["openai_eval_count"], 1);
    assert_eq!(v["openai_stream"], "Hello");
    assert_eq!(v["openai_stream_done"], true);
    assert_eq!(v["error_status"], 404);
    assert!(
        v["error_text"].as_str().unwrap().contains("does not exist"),
        "{v}"
    );
    assert_eq!(openai.requests()[0].json()["max_tokens"], 16);
    gw.stop().await;
}
