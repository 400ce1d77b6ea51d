//! The `ollama-gateway` binary as a user runs it: port 0, a self-signed certificate that is
//! generated once and reused, `check-config`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{client_tls, repo_config, FakeUpstream, Reply, TempDir, BIN};
use serde_json::json;

/// A running gateway process, killed on drop.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn start(dir: &Path, ollama_url: &str) -> Self {
        Self::start_with(dir, ollama_url, &[])
    }

    fn start_with(dir: &Path, ollama_url: &str, env: &[(&str, String)]) -> Self {
        let mut child = Command::new(BIN)
            .args(["serve", "--config", &repo_config()])
            .current_dir(dir)
            .env_clear()
            .env("GATEWAY_LISTEN", "127.0.0.1:0")
            .env("GATEWAY__TLS__SELF_SIGNED_DIR", dir.join("certs"))
            .env("GATEWAY__SERVER__WORKERS", "1")
            .env("OLLAMA_BASE_URL", ollama_url)
            .env("OPENAI_API_KEY", "sk-never-logged-42")
            .env("GATEWAY_KEYS_FILE", dir.join("keys.toml"))
            .env("GATEWAY_ADMIN_LISTEN", "127.0.0.1:0")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { return };
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
        }
        Self { child, lines }
    }

    /// Stops the process and returns every line it printed that was not read yet.
    fn finish(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.lines.iter().collect()
    }

    /// Reads log lines until one contains `needle`; returns every line read.
    fn wait_for(&self, needle: &str) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            match self.lines.recv_timeout(Duration::from_secs(30)) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    seen.push(line);
                    if hit {
                        return seen;
                    }
                }
                Err(_) => panic!("no log line with {needle:?}; saw {seen:#?}"),
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTPS client that trusts the certificate (or CA) at `ca`.
fn https_client(ca: &Path) -> awc::Client {
    awc::Client::builder()
        .connector(awc::Connector::new().rustls_0_23(client_tls(ca)))
        .timeout(Duration::from_secs(30))
        .finish()
}

fn field<'a>(lines: &'a [String], key: &str) -> &'a str {
    lines
        .iter()
        .find_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix(key)))
        .unwrap_or_else(|| panic!("no {key} in {lines:#?}"))
}

#[actix_rt::test]
async fn port_zero_self_signed_certificate_generated_then_reused() {
    let dir = TempDir::new("bin");
    let ollama = FakeUpstream::ollama_ok();

    std::fs::write(
        dir.0.join("keys.toml"),
        common::key_entry("bin", "test", common::TEST_KEY, ""),
    )
    .unwrap();
    let first = Proc::start(&dir.0, &ollama.url());
    let lines = first.wait_for("listening");
    let generated = lines
        .iter()
        .find(|l| l.contains("generated a self-signed certificate"))
        .expect("generation logged");
    let fingerprint = field(std::slice::from_ref(generated), "fingerprint=").to_string();
    assert_eq!(fingerprint.len(), 32 * 3 - 1, "{fingerprint}");
    let address = field(&lines, "address=").to_string();
    assert!(address.starts_with("https://127.0.0.1:"), "{address}");
    assert!(!address.ends_with(":0"));
    let cert = dir.0.join("certs/selfsigned-cert.pem");
    assert!(cert.exists() && dir.0.join("certs/selfsigned-key.pem").exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.0.join("certs/selfsigned-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "private key is not readable by others");
    }

    // A client trusting the generated certificate gets through, to the fake Ollama.
    let client = https_client(&cert);
    let mut resp = client
        .post(format!("{address}/api/chat"))
        .insert_header(("x-api-key", common::TEST_KEY))
        .send_json(&json!({"model":"llama3","messages":[],"stream":false}))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["message"]["content"], "ok");
    drop(first);

    let second = Proc::start(&dir.0, &ollama.url());
    let lines = second.wait_for("listening");
    let loaded = lines
        .iter()
        .find(|l| l.contains("loaded TLS certificate"))
        .expect("reuse logged");
    assert_eq!(
        field(std::slice::from_ref(loaded), "fingerprint="),
        fingerprint,
        "same certificate reused"
    );
    let all = lines.join("\n");
    assert!(!all.contains("sk-never-logged-42"));
}

#[test]
fn an_expiring_self_signed_certificate_is_made_anew_saying_how_many_days_were_left() {
    let dir = TempDir::new("renew");
    std::fs::create_dir_all(dir.0.join("certs")).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    // Half a day more, so that whole days left is 10 whenever the test runs.
    params.not_after = now + time::Duration::days(10) + time::Duration::hours(12);
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.0.join("certs/selfsigned-cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.0.join("certs/selfsigned-key.pem"), key.serialize_pem()).unwrap();
    let ollama = FakeUpstream::ollama_ok();
    let proc = Proc::start(&dir.0, &ollama.url());
    let lines = proc.wait_for("listening");
    let warned = lines
        .iter()
        .find(|l| l.contains("renewal window"))
        .unwrap_or_else(|| panic!("{lines:#?}"));
    assert!(
        warned.contains(" WARN ")
            && warned.contains("days_left=10 ")
            && warned.contains("renew_within_days=30"),
        "{warned}"
    );
    assert!(lines
        .iter()
        .any(|l| l.contains("generated a self-signed certificate")));
}

#[test]
fn check_config_redacts_secrets_and_names_unknown_keys() {
    let out = Command::new(BIN)
        .args(["check-config", "--config", &repo_config()])
        .env_clear()
        .env("OPENAI_API_KEY", "sk-very-secret-1234")
        .env("GATEWAY__TIMEOUTS__IDLE", "42s")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains("sk-very-secret-1234"), "{text}");
    assert!(text.contains("api_key = \"*****\""), "{text}");
    assert!(text.contains("idle = \"42s\""), "{text}");

    let out = Command::new(BIN)
        .args(["check-config", "--config", &repo_config()])
        .env_clear()
        .env("GATEWAY__SERVER__LISTN", "127.0.0.1:1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listn"), "{err}");
}

/// The gateway process at trace level, logging in `format`, accepting `common::TEST_KEY`,
/// in front of `ollama` and (as `openai`) `openai`, with `env` on top. Returns it, its
/// address, the log lines read so far and a client that trusts it.
fn start_traced(
    dir: &TempDir,
    format: &str,
    ollama: &FakeUpstream,
    openai: &FakeUpstream,
    env: &[(&str, String)],
) -> (Proc, String, Vec<String>, awc::Client) {
    std::fs::write(
        dir.0.join("keys.toml"),
        common::key_entry("logs", "test", common::TEST_KEY, ""),
    )
    .unwrap();
    let mut all = vec![
        ("RUST_LOG", "trace".to_string()),
        ("GATEWAY_LOG_FORMAT", format.to_string()),
        ("OPENAI_BASE_URL", format!("{}/v1", openai.url())),
    ];
    all.extend_from_slice(env);
    let proc = Proc::start_with(&dir.0, &ollama.url(), &all);
    let lines = proc.wait_for("listening");
    let address = listening_address(&lines);
    let client = https_client(&dir.0.join("certs/selfsigned-cert.pem"));
    (proc, address, lines, client)
}

/// The HTTPS address in the `listening` line (text or JSON).
fn listening_address(lines: &[String]) -> String {
    lines
        .iter()
        .find_map(|l| {
            let start = l.find("https://127.0.0.1:")?;
            let rest = &l[start..];
            let end = rest
                .find(|c: char| c == '"' || c.is_whitespace())
                .unwrap_or(rest.len());
            Some(rest[..end].to_string())
        })
        .expect("bound address logged")
}

#[actix_rt::test]
async fn logs_never_contain_a_key_even_at_trace_level() {
    const UPSTREAM_KEY: &str = "sk-never-logged-42";
    const WRONG_KEY: &str = "ogw_wrong_guess_never_logged";
    let ollama =
        FakeUpstream::start(|_| Reply::ndjson(&common::ollama_stream_lines("llama3", &["a", "b"])));
    let openai = FakeUpstream::start(|req| {
        if req.json()["model"] == "refuse" {
            return Reply::json(
                401,
                &json!({"error":{"message":format!("Incorrect API key provided: {UPSTREAM_KEY}"),"type":"invalid_request_error","param":null,"code":"invalid_api_key"}}),
            );
        }
        Reply::sse(common::openai_sse(&["x"], "stop"))
    });
    for format in ["text", "json"] {
        let dir = TempDir::new("logs");
        let (proc, address, mut lines, client) = start_traced(&dir, format, &ollama, &openai, &[]);
        let bearer = format!("Bearer {}", common::TEST_KEY);
        let wrong = format!("Bearer {WRONG_KEY}");
        for (model, header, value) in [
            ("llama3", "authorization", bearer.as_str()),
            ("llama3", "x-api-key", common::TEST_KEY),
            ("llama3", "authorization", wrong.as_str()),
            ("openai/gpt-4o-mini", "authorization", bearer.as_str()),
            ("openai/refuse", "x-api-key", common::TEST_KEY),
        ] {
            let mut resp = client
                .post(format!("{address}/api/chat"))
                .insert_header((header, value))
                .send_json(&json!({"model": model, "messages": [{"role":"user","content":"hi"}]}))
                .await
                .unwrap();
            let body = resp.body().await.unwrap();
            assert!(!String::from_utf8_lossy(&body).contains(UPSTREAM_KEY));
        }
        // A request's line is written once its answer is done, by the writer thread, in
        // either format: read until all five are there (`finish` kills the process, losing
        // what is queued; a CI run once lost all five text lines that way).
        let request_line = if format == "json" {
            "\"message\":\"request\",\"request_id\""
        } else {
            " request request_id=\""
        };
        for _ in 0..5 {
            lines.extend(proc.wait_for(request_line));
        }
        lines.extend(proc.finish());
        let all = lines.join("\n");
        assert!(
            all.contains("/api/chat"),
            "requests were logged at all: {all}"
        );
        for secret in [common::TEST_KEY, WRONG_KEY, UPSTREAM_KEY] {
            assert!(!all.contains(secret), "{format} log contains {secret}");
        }
        if format == "json" {
            // Every event, the gateway's and its libraries' at trace level, is one JSON object
            // (tracing-subscriber reports an event the formatter failed on as plain text).
            assert!(!all.contains("Unable to format"), "{all}");
            let events: Vec<serde_json::Value> = lines
                .iter()
                .filter(|l| l.starts_with('{'))
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect();
            assert!(events.len() > 10, "{all}");
            assert!(events
                .iter()
                .all(|e| e["level"].is_string() && e["timestamp"].is_string()));
            let requests: Vec<_> = events
                .iter()
                .filter(|e| e["message"] == "request" && e["status"].is_u64())
                .collect();
            assert_eq!(requests.len(), 5, "{all}");
        }
    }
}

#[actix_rt::test]
async fn upstream_keys_quoted_by_an_upstream_reach_neither_client_nor_log() {
    // The binary's OpenAI key (see `Proc::start_with`) and a second upstream's key.
    const OPENAI_KEY: &str = "sk-never-logged-42";
    const GROQ_KEY: &str = "gsk-other-upstream-key-7";
    let quote = format!("Incorrect API key provided: {OPENAI_KEY} (also tried {GROQ_KEY})");
    let openai_quote = quote.clone();
    let ollama = FakeUpstream::start(move |req| {
        if req.json()["model"] == "quote-status" {
            return Reply::json(500, &json!({ "error": quote }));
        }
        let mut lines = common::ollama_stream_lines("llama3", &["a"]);
        lines.truncate(1);
        lines.push(json!({ "error": quote }));
        Reply::ndjson(&lines)
    });
    let openai = FakeUpstream::start(move |req| {
        let quote = &openai_quote;
        let error = json!({"error":{"message":quote,"type":"invalid_request_error","param":null,"code":"invalid_api_key"}});
        let mut sse = common::openai_sse(&["a"], "stop");
        sse.truncate(2);
        match req.json()["model"].as_str().unwrap() {
            "quote-400" => Reply::json(400, &error),
            "quote-500" => Reply::json(500, &error),
            // A 200 error object where a stream was asked for.
            "quote-200" => Reply::json(200, &error),
            "quote-event" => {
                sse.push(format!("data: {error}\n\n").into_bytes());
                Reply::sse(sse)
            }
            // An event that is not a chunk, whose parse error quotes the key.
            _ => {
                sse.push(format!("data: {{\"choices\":\"{OPENAI_KEY}\"}}\n\n").into_bytes());
                Reply::sse(sse)
            }
        }
    });
    let cases = [
        ("quote-status", true),
        ("quote-line", true),
        ("openai/quote-400", true),
        ("openai/quote-500", true),
        ("openai/quote-200", true),
        ("openai/quote-event", true),
        ("openai/quote-parse", true),
    ];
    assert_scrubbed(&ollama, &openai, GROQ_KEY, &cases, &[OPENAI_KEY, GROQ_KEY]).await;
}

/// Sends each (model, stream) of `cases` through the gateway in front of `ollama` and
/// `openai` (also as upstream `groq`, with `groq_key`); each answer, and the log, must show
/// the upstream's quote scrubbed and hold none of `secrets`.
async fn assert_scrubbed(
    ollama: &FakeUpstream,
    openai: &FakeUpstream,
    groq_key: &str,
    cases: &[(&str, bool)],
    secrets: &[&str],
) {
    let dir = TempDir::new("scrub");
    let groq = [
        (
            "GATEWAY__UPSTREAMS__GROQ__BASE_URL",
            format!("{}/v1", openai.url()),
        ),
        ("GATEWAY__UPSTREAMS__GROQ__API_KEY", groq_key.to_string()),
    ];
    let (proc, address, mut lines, client) = start_traced(&dir, "json", ollama, openai, &groq);
    for (model, stream) in cases {
        let mut resp = client
            .post(format!("{address}/api/chat"))
            .insert_header(("x-api-key", common::TEST_KEY))
            .send_json(&json!({"model": model, "stream": stream, "messages": [{"role":"user","content":"hi"}]}))
            .await
            .unwrap();
        let body = String::from_utf8_lossy(&resp.body().await.unwrap()).to_string();
        assert!(
            body.contains("[redacted]"),
            "{model}: the quote is relayed, scrubbed: {body}"
        );
        for secret in secrets {
            assert!(!body.contains(secret), "{model}: {body}");
        }
    }
    for _ in cases {
        lines.extend(proc.wait_for("\"message\":\"request\",\"request_id\""));
    }
    lines.extend(proc.finish());
    let all = lines.join("\n");
    assert!(all.contains("[redacted]"), "failures were logged: {all}");
    for secret in secrets {
        assert!(!all.contains(secret), "the log contains {secret}");
    }
}

#[actix_rt::test]
async fn json_escaped_upstream_keys_reach_neither_client_nor_log() {
    // The binary's OpenAI key (see `Proc::start_with`), written `\u0073k-...`, and a second
    // upstream's key with a `/`, written `\/` as PHP's json_encode does.
    const OPENAI_KEY: &str = "sk-never-logged-42";
    const GROQ_KEY: &str = "gsk/escaped+key-7";
    fn escaped(v: &serde_json::Value) -> Vec<u8> {
        let text = serde_json::to_string(v).unwrap();
        assert!(text.contains(OPENAI_KEY) && text.contains(GROQ_KEY));
        text.replace("gsk/", "gsk\\/")
            .replace(OPENAI_KEY, "\\u0073k-never-logged-42")
            .into_bytes()
    }
    let quote = format!("Incorrect API key provided: {OPENAI_KEY} (also tried {GROQ_KEY})");
    let json_error = |status: u16, body: Vec<u8>| Reply::Full {
        status,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body,
    };
    let ollama_quote = quote.clone();
    let ollama = FakeUpstream::start(move |req| {
        let error = json!({ "error": ollama_quote });
        if req.json()["model"] == "esc-status" {
            return json_error(500, escaped(&error));
        }
        let mut lines: Vec<Vec<u8>> = common::ollama_stream_lines("llama3", &["a"])
            .iter()
            .take(1)
            .map(|l| format!("{l}\n").into_bytes())
            .collect();
        let mut last = escaped(&error);
        last.push(b'\n');
        lines.push(last);
        Reply::stream("application/x-ndjson", lines, common::End::Terminate)
    });
    let openai = FakeUpstream::start(move |req| {
        let error = json!({"error":{"message":quote,"type":"invalid_request_error","param":null,"code":"invalid_api_key"}});
        let mut sse = common::openai_sse(&["a"], "stop");
        sse.truncate(2);
        match req.json()["model"].as_str().unwrap() {
            "esc-400" => json_error(400, escaped(&error)),
            // A 200 error object where a stream was asked for.
            "esc-200" => json_error(200, escaped(&error)),
            "esc-event" => {
                let mut event = b"data: ".to_vec();
                event.extend(escaped(&error));
                event.extend(b"\n\n");
                sse.push(event);
                Reply::sse(sse)
            }
            // An event that is not a chunk, whose parse error quotes the key decoded.
            _ => {
                let mut event = b"data: ".to_vec();
                event.extend(escaped(&json!({ "choices": quote })));
                event.extend(b"\n\n");
                sse.push(event);
                Reply::sse(sse)
            }
        }
    });
    // Every encoding of either key holds one of these.
    let tails = ["never-logged-42", "escaped+key-7"];
    let cases = [
        ("esc-status", true),
        ("esc-status", false),
        ("esc-line", true),
        ("openai/esc-400", true),
        ("openai/esc-400", false),
        ("openai/esc-200", true),
        ("openai/esc-event", true),
        ("openai/esc-parse", true),
    ];
    assert_scrubbed(&ollama, &openai, GROQ_KEY, &cases, &tails).await;
}

#[test]
fn keys_new_prints_the_key_then_an_entry_that_hash_agrees_with() {
    let dir = TempDir::new("keysnew");
    let file = dir.0.join("keys.toml");
    let out = Command::new(BIN)
        .args([
            "keys",
            "new",
            "--team",
            "team-a",
            "--id",
            "team-a-ci",
            "--append",
        ])
        .arg(&file)
        .env_clear()
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let key = text.lines().next().unwrap();
    assert!(key.starts_with("ogw_") && key.len() > 40, "{key}");
    assert!(
        text.contains("[[keys]]")
            && text.contains("id = \"team-a-ci\"")
            && text.contains("team = \"team-a\"")
    );
    assert!(
        !text.lines().skip(1).any(|l| l.contains(key)),
        "the key appears once, alone"
    );
    let appended = std::fs::read_to_string(&file).unwrap();
    assert!(!appended.contains(key), "the keys file holds no key");

    let mut hash = Command::new(BIN)
        .args(["keys", "hash"])
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    writeln!(hash.stdin.take().unwrap(), "{key}").unwrap();
    let digest = String::from_utf8(hash.wait_with_output().unwrap().stdout).unwrap();
    assert_eq!(digest.trim().len(), 64);
    assert!(
        appended.contains(&format!("sha256 = \"{}\"", digest.trim())),
        "{appended}"
    );

    // Without --id, ids differ; a second --append keeps the file valid.
    let out = Command::new(BIN)
        .args(["keys", "new", "--team", "team-a", "--append"])
        .arg(&file)
        .env_clear()
        .output()
        .unwrap();
    assert!(out.status.success());
    let check = Command::new(BIN)
        .args(["check-config", "--config", &repo_config()])
        .env_clear()
        .env("GATEWAY_KEYS_FILE", &file)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(String::from_utf8_lossy(&check.stdout).contains("2 API key(s)"));
}

#[actix_rt::test]
async fn no_keys_means_nothing_is_served_and_sighup_reloads() {
    let dir = TempDir::new("nokeys");
    let ollama = FakeUpstream::ollama_ok();
    // A long poll interval, so only SIGHUP can make the new key count quickly.
    let proc = Proc::start_with(
        &dir.0,
        &ollama.url(),
        &[("GATEWAY__SERVER__RELOAD_INTERVAL", "1h".into())],
    );
    let lines = proc.wait_for("listening");
    let all = lines.join("\n");
    assert!(
        all.contains("no API keys configured") && all.contains("keys new --team"),
        "{all}"
    );
    let address = field(&lines, "address=").to_string();
    let client = https_client(&dir.0.join("certs/selfsigned-cert.pem"));
    let send = || {
        client
            .post(format!("{address}/api/chat"))
            .insert_header(("x-api-key", common::TEST_KEY))
            .send_json(&json!({"model":"llama3","messages":[],"stream":false}))
    };
    assert_eq!(send().await.unwrap().status().as_u16(), 401);

    std::fs::write(
        dir.0.join("keys.toml"),
        common::key_entry("late", "test", common::TEST_KEY, ""),
    )
    .unwrap();
    let pid = proc.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    proc.wait_for("reloaded API keys");
    assert_eq!(send().await.unwrap().status().as_u16(), 200);
}

#[actix_rt::test]
async fn one_structured_json_line_per_request() {
    let dir = TempDir::new("jsonlog");
    std::fs::write(
        dir.0.join("keys.toml"),
        common::key_entry("team-a-ci", "team-a", common::TEST_KEY, ""),
    )
    .unwrap();
    let ollama =
        FakeUpstream::start(|_| Reply::ndjson(&common::ollama_stream_lines("llama3", &["a", "b"])));
    let proc = Proc::start_with(
        &dir.0,
        &ollama.url(),
        &[("GATEWAY_LOG_FORMAT", "json".to_string())],
    );
    let lines = proc.wait_for("listening");
    let address = lines
        .iter()
        .find_map(|l| {
            serde_json::from_str::<serde_json::Value>(l).ok()?["address"]
                .as_str()
                .map(String::from)
        })
        .expect("bound address logged");
    let client = https_client(&dir.0.join("certs/selfsigned-cert.pem"));
    let mut resp = client
        .post(format!("{address}/api/chat"))
        .insert_header(("x-api-key", common::TEST_KEY))
        .insert_header(("x-request-id", "req-77"))
        .send_json(&json!({"model":"llama3","messages":[]}))
        .await
        .unwrap();
    let _ = resp.body().await.unwrap();
    let line = proc.wait_for("req-77");
    let v: serde_json::Value = serde_json::from_str(line.last().unwrap()).unwrap();
    assert_eq!(v["message"], "request");
    assert_eq!(v["request_id"], "req-77");
    assert_eq!(v["key_id"], "team-a-ci");
    assert_eq!(v["team"], "team-a");
    assert_eq!(v["model"], "llama3");
    assert_eq!(v["upstream"], "ollama");
    assert_eq!(v["status"], 200);
    assert_eq!(v["outcome"], "complete");
    assert_eq!(v["completion_tokens"], 2);
    assert_eq!(v["prompt_tokens"], 5);
    assert!(v["duration_ms"].as_f64().unwrap() >= v["ttfb_ms"].as_f64().unwrap());
    for field in ["duration_ms", "ttfb_ms"] {
        let text = v[field].to_string();
        assert!(decimals(&text) <= 3, "{field} to the microsecond: {text}");
    }
}

#[actix_rt::test]
async fn upstream_faults_are_logged_under_their_outcome_naming_the_upstream() {
    let dir = TempDir::new("faultlog");
    std::fs::write(
        dir.0.join("keys.toml"),
        common::key_entry("k", "t", common::TEST_KEY, ""),
    )
    .unwrap();
    let ollama = FakeUpstream::start(|_| {
        Reply::json(
            404,
            &json!({"error": "model \"nope\" not found, try pulling it first"}),
        )
    });
    // Ignores `stream: true` and answers a whole completion.
    let openai = FakeUpstream::start(|_| {
        Reply::json(
            200,
            &json!({"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}),
        )
    });
    let proc = Proc::start_with(
        &dir.0,
        &ollama.url(),
        &[
            ("GATEWAY_LOG_FORMAT", "json".to_string()),
            ("OPENAI_BASE_URL", format!("{}/v1", openai.url())),
        ],
    );
    let address = listening_address(&proc.wait_for("listening"));
    let client = https_client(&dir.0.join("certs/selfsigned-cert.pem"));
    for (id, model, status, outcome, error) in [
        ("req-404", "nope", 404, "upstream_status", "upstream ollama answered 404"),
        (
            "req-json",
            "openai/gpt-4o-mini",
            502,
            "upstream_protocol",
            "upstream openai sent an invalid response: it answered a streamed request with application/json instead of an event stream",
        ),
    ] {
        let mut resp = client
            .post(format!("{address}/api/chat"))
            .insert_header(("x-api-key", common::TEST_KEY))
            .insert_header(("x-request-id", id))
            .send_json(&json!({"model": model, "messages": [{"role":"user","content":"hi"}]}))
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "{model}");
        let _ = resp.body().await.unwrap();
        let line = proc.wait_for(id);
        let v: serde_json::Value = serde_json::from_str(line.last().unwrap()).unwrap();
        assert_eq!(v["status"], status, "{v}");
        assert_eq!(v["outcome"], outcome, "{v}");
        assert_eq!(v["error"], error, "{v}");
    }
}

#[actix_rt::test]
async fn malformed_http_is_one_rate_limited_line_naming_the_client_and_no_error() {
    let dir = TempDir::new("badhttp");
    std::fs::write(
        dir.0.join("keys.toml"),
        common::key_entry("k", "t", common::TEST_KEY, ""),
    )
    .unwrap();
    let ollama = FakeUpstream::ollama_ok();
    let proc = Proc::start(&dir.0, &ollama.url());
    let mut lines = proc.wait_for("listening");
    let address = field(&lines, "address=").to_string();
    let port: u16 = address.rsplit(':').next().unwrap().parse().unwrap();
    let tls =
        tokio_rustls::TlsConnector::from(client_tls(&dir.0.join("certs/selfsigned-cert.pem")));
    for _ in 0..3 {
        for request in [
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
            b"GET /healthz HTTP/9.9\r\nHost: localhost\r\n\r\n",
        ] {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let mut stream = tls.connect(name, tcp).await.unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut stream, request)
                .await
                .unwrap();
            let (status, _, _) = common::read_response(&mut stream).await;
            assert_eq!(status, 400);
        }
    }
    // One worker: whatever the six connections logged is written before this request's line.
    let mut resp = https_client(&dir.0.join("certs/selfsigned-cert.pem"))
        .post(format!("{address}/api/chat"))
        .insert_header(("x-api-key", common::TEST_KEY))
        .insert_header(("x-request-id", "req-after"))
        .send_json(&json!({"model":"llama3","messages":[],"stream":false}))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let _ = resp.body().await.unwrap();
    lines.extend(proc.wait_for("req-after"));
    let notes: Vec<&String> = lines.iter().filter(|l| l.contains("bad_http")).collect();
    assert_eq!(notes.len(), 1, "{lines:#?}");
    assert!(
        notes[0].contains(" INFO ") && notes[0].contains("client=127.0.0.1"),
        "{}",
        notes[0]
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("ERROR") || l.contains("stream error")),
        "{lines:#?}"
    );
}

/// Digits after the decimal point.
fn decimals(number: &str) -> usize {
    number.split_once('.').map_or(0, |(_, frac)| frac.len())
}

#[actix_rt::test]
async fn every_refusal_is_one_line_naming_the_client() {
    let dir = TempDir::new("refusals");
    std::fs::write(
        dir.0.join("keys.toml"),
        common::key_entry("k", "t", common::TEST_KEY, "models = [\"llama3\"]"),
    )
    .unwrap();
    let ollama = FakeUpstream::ollama_ok();
    let proc = Proc::start_with(
        &dir.0,
        &ollama.url(),
        &[("GATEWAY__ALLOWLIST__TRUSTED_PROXIES", "127.0.0.1".into())],
    );
    let lines = proc.wait_for("listening");
    let address = field(&lines, "address=").to_string();
    let client = https_client(&dir.0.join("certs/selfsigned-cert.pem"));
    let key = ("x-api-key", common::TEST_KEY);
    let none = ("x-none", "");
    // id, extra headers, model, expected status; the last one is answered normally.
    let cases = [
        ("r-no-key", none, none, "llama3", 401),
        ("r-bad-key", ("x-api-key", "ogw_wrong"), none, "llama3", 401),
        (
            "r-denied",
            key,
            ("x-forwarded-for", "203.0.113.7"),
            "llama3",
            403,
        ),
        ("r-model", key, none, "mistral", 403),
        ("r-done", key, none, "llama3", 200),
    ];
    for (id, first, second, model, status) in cases {
        let resp = client
            .post(format!("{address}/api/chat"))
            .insert_header(("x-request-id", id))
            .insert_header(first)
            .insert_header(second)
            .send_json(&json!({"model": model, "messages": [], "stream": false}))
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "{id}");
    }
    let lines = proc.wait_for("\"r-done\"");
    let first = lines
        .iter()
        .position(|l| l.contains("\"r-no-key\""))
        .expect("the first refusal is logged");
    let requests = &lines[first..];
    assert_eq!(
        requests.len(),
        cases.len(),
        "one line per request, nothing else: {requests:#?}"
    );
    for ((id, _, second, _, _), line) in cases.iter().zip(requests) {
        assert!(line.contains(&format!("request_id=\"{id}\"")), "{line}");
        let expected = if second.0 == "x-forwarded-for" {
            second.1
        } else {
            "127.0.0.1"
        };
        if *id != "r-done" {
            assert!(line.contains(&format!("client={expected} ")), "{line}");
        }
        let ms = field(std::slice::from_ref(line), "duration_ms=");
        assert!(ms.parse::<f64>().is_ok() && decimals(ms) <= 3, "{line}");
    }
}

#[actix_rt::test]
async fn a_missing_keys_file_is_reported_once_and_its_arrival_noticed() {
    let dir = TempDir::new("reload-nokeys");
    let ollama = FakeUpstream::ollama_ok();
    let proc = Proc::start_with(
        &dir.0,
        &ollama.url(),
        &[
            ("GATEWAY__SERVER__RELOAD_INTERVAL", "20ms".into()),
            ("RUST_LOG", "info,ollama_gateway::reload=debug".into()),
        ],
    );
    let check = "checking the keys file and the TLS certificate";
    let mut lines = proc.wait_for("listening");
    for _ in 0..5 {
        lines.extend(proc.wait_for(check));
    }
    let about_keys: Vec<&String> = lines
        .iter()
        .filter(|l| (l.contains("keys file") || l.contains("API keys")) && !l.contains(check))
        .collect();
    assert_eq!(about_keys.len(), 1, "said once: {about_keys:#?}");
    assert!(
        about_keys[0].contains("WARN") && about_keys[0].contains("no API keys configured"),
        "{about_keys:#?}"
    );
    assert!(!lines.iter().any(|l| l.contains("ERROR")), "{lines:#?}");

    std::fs::write(
        dir.0.join("keys.toml"),
        common::key_entry("late", "test", common::TEST_KEY, ""),
    )
    .unwrap();
    let arrived = proc.wait_for("reloaded API keys");
    let line = arrived.last().unwrap();
    assert!(line.contains("INFO") && line.contains("keys=1"), "{line}");
    let mut after = Vec::new();
    for _ in 0..3 {
        after.extend(proc.wait_for(check));
    }
    assert!(
        after.iter().all(|l| l.contains(check)),
        "an unchanged file is not reloaded again: {after:#?}"
    );
}

#[actix_rt::test]
async fn certs_new_makes_a_ca_that_clients_trust_for_the_served_chain() {
    let dir = TempDir::new("certsnew");
    let out = Command::new(BIN)
        .args(["certs", "new", "--out"])
        .arg(dir.0.join("certs"))
        .args(["--name", "localhost", "--name", "127.0.0.1"])
        .env_clear()
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = Command::new(BIN)
        .args(["certs", "new", "--out"])
        .arg(dir.0.join("certs"))
        .env_clear()
        .output()
        .unwrap();
    assert!(
        !again.status.success(),
        "existing files are not overwritten without --force"
    );

    std::fs::write(
        dir.0.join("keys.toml"),
        common::key_entry("c", "t", common::TEST_KEY, ""),
    )
    .unwrap();
    let ollama = FakeUpstream::ollama_ok();
    let proc = Proc::start_with(
        &dir.0,
        &ollama.url(),
        &[
            (
                "GATEWAY_TLS_CERT",
                dir.0.join("certs/server.pem").display().to_string(),
            ),
            (
                "GATEWAY_TLS_KEY",
                dir.0.join("certs/server-key.pem").display().to_string(),
            ),
        ],
    );
    let lines = proc.wait_for("listening");
    let address = field(&lines, "address=").to_string();
    let client = https_client(&dir.0.join("certs/ca.pem"));
    let resp = client
        .post(format!("{address}/api/chat"))
        .insert_header(("x-api-key", common::TEST_KEY))
        .send_json(&json!({"model":"m","messages":[],"stream":false}))
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        200,
        "a client trusting only the CA accepts the chain"
    );
}
