//! The official ollama-python client manages models through the gateway over TLS with an
//! admin key: pull with progress (streamed and not), push, create from an uploaded blob
//! (and the HEAD that asks for it first), copy, delete; a failed pull raises; an ordinary key gets 403. CI installs the client
//! (`pip install ollama`); elsewhere the test is skipped, with a notice, when it is missing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashSet;
use std::sync::Mutex;

use common::admin::{Answer, FakeOllama, Seen};
use common::{key_entry, End, Gateway, TEST_KEY};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

const ADMIN_KEY: &str = "ogw_test_admin_key_0123456789abcdef";

const SCRIPT: &str = r#"
import os, json, ollama
def client(key):
    return ollama.Client(host=os.environ["GW"], verify=os.environ["GW_CA"], headers={"Authorization": "Bearer " + key})
admin = client(os.environ["ADMIN_KEY"])
out = {}
out["pull"] = [p.model_dump(exclude_none=True) for p in admin.pull("llama3", stream=True)]
out["pull_whole"] = admin.pull("llama3").status
out["push"] = [p.status for p in admin.push("me/llama3", stream=True)]
digest = admin.create_blob(os.environ["BLOB"])
out["digest"] = digest
# What the Go CLI (and older ollama-python) ask before uploading; no public method for it.
out["head"] = admin._request_raw("HEAD", f"/api/blobs/{digest}").status_code
out["create"] = [p.status for p in admin.create(model="mine", files={"model.gguf": digest}, stream=True)]
out["copy"] = admin.copy("llama3", "llama3-backup").status
out["delete"] = admin.delete("llama3-backup").status
try:
    list(admin.pull("broken", stream=True))
except ollama.ResponseError as e:
    out["broken"] = e.error
try:
    client(os.environ["USER_KEY"]).pull("llama3")
except ollama.ResponseError as e:
    out["user_status"] = e.status_code
    out["user_error"] = e.error
print(json.dumps(out))
"#;

fn progress() -> Vec<Value> {
    vec![
        json!({"status": "pulling manifest"}),
        json!({"status": "pulling 6a0746a1ec1a", "digest": "sha256:6a0746a1ec1a", "total": 4661211808u64, "completed": 2330605904u64}),
        json!({"status": "pulling 6a0746a1ec1a", "digest": "sha256:6a0746a1ec1a", "total": 4661211808u64, "completed": 4661211808u64}),
        json!({"status": "verifying sha256 digest"}),
        json!({"status": "writing manifest"}),
        json!({"status": "success"}),
    ]
}

fn lines(lines: Vec<Value>) -> Answer {
    Answer::Lines {
        lines,
        pause: None,
        end: End::Terminate,
    }
}

/// Ollama as the client sees it: a blob is taken only when its bytes have its digest, and
/// is there (HEAD 200) once taken.
fn ollama(seen: &Seen, blobs: &Mutex<HashSet<String>>) -> Answer {
    match seen.path.as_str() {
        "/api/pull" if seen.json()["model"] == "broken" => lines(vec![
            json!({"status": "pulling manifest"}),
            json!({"error": "pull model manifest: file does not exist"}),
        ]),
        "/api/pull" if seen.json()["stream"] == false => {
            Answer::Json(200, json!({"status": "success"}))
        }
        "/api/pull" | "/api/push" => lines(progress()),
        "/api/create" => lines(vec![
            json!({"status": "parsing GGUF"}),
            json!({"status": "using existing layer sha256:..."}),
            json!({"status": "writing manifest"}),
            json!({"status": "success"}),
        ]),
        "/api/copy" | "/api/delete" => Answer::Empty(200),
        path if seen.method == "HEAD" => match blobs.lock().unwrap().contains(path) {
            true => Answer::Empty(200),
            false => Answer::Empty(404),
        },
        path => {
            let digest = format!("sha256:{:x}", Sha256::digest(&seen.body));
            if seen.method == "POST" && path == format!("/api/blobs/{digest}") {
                blobs.lock().unwrap().insert(path.to_string());
                Answer::Empty(201)
            } else {
                Answer::Json(
                    400,
                    json!({"error": format!("digest mismatch, got {digest:?}")}),
                )
            }
        }
    }
}

#[actix_rt::test]
async fn ollama_python_client_manages_models_through_the_gateway() {
    if !common::skip::available(
        common::skip::runs("python3", &["-c", "import ollama"]),
        "python3 module `ollama` (pip install ollama)",
    ) {
        return;
    }
    let blobs = Mutex::new(HashSet::new());
    let fake = FakeOllama::start(move |seen| ollama(seen, &blobs));
    let url = fake.url();
    let gw = Gateway::start(None, None, |raw| raw.ollama.base_url = url).await;
    gw.set_keys(
        &(key_entry("ops-admin", "ops", ADMIN_KEY, "role = \"admin\"")
            + &key_entry("test-key", "test", TEST_KEY, "")),
    );
    // A model file of 1.5 MiB, more than one read of the client's.
    let blob: Vec<u8> = (0..3 << 19).map(|i: u32| (i % 253) as u8).collect();
    let blob_path = gw.dir.0.join("model.gguf");
    std::fs::write(&blob_path, &blob).unwrap();
    let digest = format!("sha256:{:x}", Sha256::digest(&blob));

    let blob_path = blob_path.display().to_string();
    let env = [
        ("ADMIN_KEY", ADMIN_KEY),
        ("USER_KEY", TEST_KEY),
        ("BLOB", blob_path.as_str()),
    ];
    let v = gw.python(SCRIPT, &env).await;
    assert_eq!(
        v["pull"],
        Value::Array(progress()),
        "every progress line, as sent"
    );
    assert_eq!(v["pull_whole"], "success");
    assert_eq!(v["push"].as_array().unwrap().last().unwrap(), "success");
    assert_eq!(v["digest"], digest.as_str());
    assert_eq!(v["head"], 200);
    assert_eq!(
        v["create"],
        json!([
            "parsing GGUF",
            "using existing layer sha256:...",
            "writing manifest",
            "success"
        ])
    );
    assert_eq!(
        (&v["copy"], &v["delete"]),
        (&json!("success"), &json!("success"))
    );
    assert_eq!(v["broken"], "pull model manifest: file does not exist");
    assert_eq!(v["user_status"], 403);
    assert!(
        v["user_error"]
            .as_str()
            .unwrap()
            .contains("role = \"admin\""),
        "{v}"
    );

    let seen = fake.seen();
    let find = |path: &str| {
        seen.iter()
            .find(|s| s.path == path)
            .unwrap_or_else(|| panic!("{path}"))
    };
    let blob_path = format!("/api/blobs/{digest}");
    let upload = seen
        .iter()
        .find(|s| s.path == blob_path && s.method == "POST")
        .unwrap();
    assert_eq!(
        (upload.method.as_str(), upload.length),
        ("POST", blob.len() as u64)
    );
    assert_eq!(
        find("/api/create").json()["files"],
        json!({"model.gguf": digest})
    );
    assert_eq!(
        find("/api/copy").json(),
        json!({"source": "llama3", "destination": "llama3-backup"})
    );
    let delete = find("/api/delete");
    assert_eq!(
        (delete.method.as_str(), delete.json()),
        ("DELETE", json!({"model": "llama3-backup"}))
    );
    assert_eq!(
        seen.len(),
        10,
        "the ordinary key's pull never reached Ollama"
    );
    gw.stop().await;
}
