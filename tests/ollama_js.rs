//! The official ollama-js client (Node) through the gateway over TLS: list, version and
//! chat (streamed and not). CI installs Node's `ollama` package and points `NODE_PATH` at it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::{ollama_stream_lines, FakeUpstream, Gateway, Reply};
use serde_json::{json, Value};

const SCRIPT: &str = r#"
const { Ollama } = require('ollama');
(async () => {
  const c = new Ollama({ host: process.env.GW, headers: { Authorization: 'Bearer ' + process.env.KEY } });
  const out = {};
  out.names = (await c.list()).models.map(m => m.model);
  out.version = (await c.version()).version;
  out.whole = (await c.chat({ model: 'llama3', messages: [{ role: 'user', content: 'hi' }] })).message.content;
  let streamed = '';
  let done = false;
  for await (const part of await c.chat({ model: 'llama3', messages: [{ role: 'user', content: 'hi' }], stream: true })) {
    streamed += part.message.content;
    done = done || part.done;
  }
  out.streamed = streamed;
  out.done = done;
  try {
    await c.chat({ model: 'nope', messages: [] });
  } catch (e) {
    out.error = e.error;
    out.status = e.status_code;
  }
  console.log(JSON.stringify(out));
})().catch(e => { console.error(e); process.exit(1); });
"#;

#[actix_rt::test]
async fn ollama_js_lists_reads_the_version_and_chats() {
    if !common::skip::available(
        common::skip::runs("node", &["-e", "require('ollama')"]),
        "node with the npm package ollama on NODE_PATH",
    ) {
        return;
    }
    let ollama = FakeUpstream::start(|r| match r.path.as_str() {
        "/api/tags" => Reply::json(
            200,
            &json!({"models": [{"name": "llama3:latest", "model": "llama3:latest"}]}),
        ),
        "/api/version" => Reply::json(200, &json!({"version": "0.12.6"})),
        _ if r.json()["model"] == "nope" => {
            Reply::json(404, &json!({"error": "model 'nope' not found"}))
        }
        _ if r.json()["stream"] == true => {
            Reply::ndjson(&ollama_stream_lines("llama3", &["你", "好"]))
        }
        _ => Reply::json(
            200,
            &json!({"model": "llama3", "created_at": "2025-08-08T08:27:50.537Z",
                    "message": {"role": "assistant", "content": "hello"}, "done": true, "done_reason": "stop"}),
        ),
    });
    let gw = Gateway::start(Some(&ollama), None, |_| {}).await;
    let (url, ca) = (gw.url.clone(), gw.dir.0.join("cert.pem"));
    let out = actix_rt::task::spawn_blocking(move || {
        Command::new("node")
            .args(["-e", SCRIPT])
            .env("GW", url)
            .env("KEY", common::TEST_KEY)
            .env("NODE_EXTRA_CA_CERTS", ca)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "node: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["names"], json!(["llama3:latest"]));
    assert_eq!(got["version"], "0.12.6");
    assert_eq!(got["whole"], "hello");
    assert_eq!(got["streamed"], "你好");
    assert_eq!(got["done"], true);
    assert_eq!(got["status"], 404);
    assert_eq!(got["error"], "model 'nope' not found");
    gw.stop().await;
}
