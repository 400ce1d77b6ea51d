//! scripts/llm against a gateway on loopback in front of fake upstreams: both modes, both
//! upstreams, and failures printed with a non-zero exit. Needs bash, curl and jq (CI
//! installs them); elsewhere the test is skipped, with a notice, when one is missing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{ollama_stream_lines, openai_sse, FakeUpstream, Gateway, Reply, TEST_KEY};
use serde_json::json;

async fn run(gw: &Gateway, script: &str, args: &[&str], key: &str) -> Output {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts/llm")
        .join(script);
    let mut cmd = Command::new("bash");
    cmd.arg(path)
        .args(args)
        .env_remove("CURL_CA_BUNDLE")
        .env("GATEWAY", &gw.url)
        .env("GATEWAY_API_KEY", key)
        .env("GATEWAY_CA", gw.dir.0.join("cert.pem"))
        .env("GATEWAY_ENV_FILE", "/dev/null")
        .env("DEFAULT_MODEL", "llama3:instruct")
        .env_remove("LLAMA_MODEL")
        .env_remove("OPENAI_MODEL");
    actix_rt::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

#[actix_rt::test]
async fn llm_scripts_print_answers_and_fail_loudly() {
    if !common::skip::available(
        common::skip::all_run(&["bash", "curl", "jq"]),
        "bash, curl or jq",
    ) {
        return;
    }
    let ollama = FakeUpstream::start(|req| {
        let body = req.json();
        match (
            body["messages"][0]["content"].as_str(),
            body["stream"].as_bool(),
        ) {
            (Some("break"), _) => {
                let mut lines = ollama_stream_lines("llama3:instruct", &["半"]);
                lines.truncate(1);
                lines.push(json!({"error": "an error was encountered while running the model"}));
                Reply::ndjson(&lines)
            }
            (_, Some(false)) => Reply::json(
                200,
                &json!({"model":"llama3:instruct","created_at":"2025-01-01T00:00:00Z",
                "message":{"role":"assistant","content":"我是 Llama。"},"done":true,"done_reason":"stop"}),
            ),
            _ => Reply::ndjson(&ollama_stream_lines("llama3:instruct", &["您", "好", "！"])),
        }
    });
    let openai = FakeUpstream::start(|req| {
        if req.json()["stream"] == true {
            Reply::sse(openai_sse(&["Hel", "lo"], "stop"))
        } else {
            Reply::json(
                200,
                &json!({"choices":[{"index":0,"message":{"role":"assistant","content":"Hello!"},"finish_reason":"stop"}]}),
            )
        }
    });
    let gw = Gateway::start(Some(&ollama), Some(&openai), |_| {}).await;

    let out = run(&gw, "llama.sh", &["用一句話介紹你自己"], TEST_KEY).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "我是 Llama。\n");
    let sent = ollama.last().json();
    assert_eq!(sent["model"], "llama3:instruct");
    assert_eq!(sent["messages"][0]["content"], "用一句話介紹你自己");
    assert_eq!(sent["stream"], false);

    let out = run(&gw, "llama-stream.sh", &["hi"], TEST_KEY).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "您好！\n",
        "tokens printed, not JSON lines"
    );

    let out = run(&gw, "openai.sh", &["hi"], TEST_KEY).await;
    assert_eq!(text(&out.stdout), "Hello!\n");
    assert_eq!(openai.last().json()["model"], "gpt-4o-mini");
    let out = run(&gw, "openai-stream.sh", &["hi"], TEST_KEY).await;
    assert_eq!(text(&out.stdout), "Hello\n");

    let out = run(&gw, "all.sh", &["給我三個客服問候語"], TEST_KEY).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let all = text(&out.stdout);
    for part in [
        "== llama ==",
        "我是 Llama。",
        "== llama-stream ==",
        "您好！",
        "== openai ==",
        "Hello!",
        "== openai-stream ==",
    ] {
        assert!(all.contains(part), "{part} in {all}");
    }

    // Failures: the gateway's message, and a non-zero exit.
    for script in ["llama.sh", "llama-stream.sh"] {
        let out = run(&gw, script, &["hi"], "ogw_wrong").await;
        assert!(!out.status.success(), "{script}");
        assert!(
            text(&out.stderr).contains("invalid API key"),
            "{script}: {}",
            text(&out.stderr)
        );
    }
    let out = run(&gw, "llama-stream.sh", &["break"], TEST_KEY).await;
    assert!(!out.status.success());
    assert!(text(&out.stdout).starts_with("半"));
    assert!(text(&out.stderr).contains("an error was encountered while running the model"));
    let out = run(&gw, "all.sh", &["hi"], "ogw_wrong").await;
    assert!(!out.status.success(), "all.sh fails when one fails");
    gw.stop().await;
}

/// Fake `docker` and `docker-compose` in `dir`, logging their arguments to `dir/calls`:
/// `FAKE_PLUGIN=1` makes `docker compose` work, `FAKE_STANDALONE=<version>` makes
/// `docker-compose` exist, `FAKE_ENGINE=0` is a Docker engine that does not answer (the
/// standalone docker-compose then ends in a traceback, as 1.29 does).
fn fake_docker(dir: &Path) {
    let docker = r#"#!/bin/sh
echo "docker $*" >> "$FAKE_DIR/calls"
if [ "$1" = compose ] && [ "$FAKE_PLUGIN" != 1 ]; then
  echo "docker: 'compose' is not a docker command." >&2
  exit 1
fi
if [ "$1" = info ] && [ "$FAKE_ENGINE" = 0 ]; then
  echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?" >&2
  exit 1
fi
"#;
    let standalone = r#"#!/bin/sh
[ -n "$FAKE_STANDALONE" ] || { echo "docker-compose: not found" >&2; exit 127; }
echo "docker-compose $*" >> "$FAKE_DIR/calls"
if [ "$1" = version ]; then echo "$FAKE_STANDALONE"; exit 0; fi
if [ "$FAKE_ENGINE" = 0 ]; then
  echo "Traceback (most recent call last):" >&2
  exit 1
fi
"#;
    for (name, text) in [("docker", docker), ("docker-compose", standalone)] {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
}

/// What the fakes of [`fake_docker`] are.
#[derive(Clone, Copy)]
struct Docker<'a> {
    /// Whether `docker` exists at all (without it, PATH holds only the fakes and the few
    /// tools the scripts need before they look for Docker).
    installed: bool,
    plugin: bool,
    /// The standalone docker-compose's version, or "" for none.
    standalone: &'a str,
    engine: bool,
}

impl<'a> Docker<'a> {
    fn compose(plugin: bool, standalone: &'a str) -> Self {
        Self {
            installed: true,
            plugin,
            standalone,
            engine: true,
        }
    }
}

/// Links the tools the scripts run besides Docker (found on PATH) into `dir`.
fn link_tools(dir: &Path) {
    let path = std::env::var("PATH").unwrap_or_default();
    for tool in [
        "bash", "sh", "dirname", "hostname", "mkdir", "grep", "tail", "cat",
    ] {
        let found = std::env::split_paths(&path)
            .map(|d| d.join(tool))
            .find(|p| p.is_file());
        if let Some(found) = found {
            #[cfg(unix)]
            std::os::unix::fs::symlink(found, dir.join(tool)).unwrap();
        }
    }
}

/// Runs `script` (under scripts/) with the fakes first on PATH; returns its output and the
/// commands the fakes saw (version and engine probes left out).
fn with_fake_docker(script: &str, args: &[&str], docker: Docker<'_>) -> (Output, String) {
    let dir = common::TempDir::new("fake-docker");
    fake_docker(&dir.0);
    let path = if docker.installed {
        format!(
            "{}:{}",
            dir.0.display(),
            std::env::var("PATH").unwrap_or_default()
        )
    } else {
        std::fs::remove_file(dir.0.join("docker")).unwrap();
        link_tools(&dir.0);
        dir.0.display().to_string()
    };
    let out = Command::new("bash")
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("scripts")
                .join(script),
        )
        .args(args)
        .env("PATH", path)
        .env("FAKE_DIR", &dir.0)
        .env("FAKE_PLUGIN", if docker.plugin { "1" } else { "0" })
        .env("FAKE_STANDALONE", docker.standalone)
        .env("FAKE_ENGINE", if docker.engine { "1" } else { "0" })
        .env_remove("MAKE_CERTS_LOCAL")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let calls = std::fs::read_to_string(dir.0.join("calls")).unwrap_or_default();
    let calls = calls
        .lines()
        .filter(|l| !l.contains(" version") && *l != "docker info")
        .collect::<Vec<_>>()
        .join("\n");
    (out, calls)
}

#[test]
fn compose_scripts_use_the_compose_this_machine_has_or_say_what_is_missing() {
    if !common::skip::available(common::skip::runs("bash", &["--version"]), "bash") {
        return;
    }
    // The plugin when it works, else the standalone docker-compose (Debian's 1.29).
    for (plugin, standalone, compose) in [
        (true, "1.29.2", "docker compose"),
        (false, "1.29.2", "docker-compose"),
        (false, "2.24.6", "docker-compose"),
    ] {
        let docker = Docker::compose(plugin, standalone);
        let (out, calls) = with_fake_docker("pull-model.sh", &["qwen2.5:7b"], docker);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(
            calls,
            format!("{compose} exec -T ollama ollama pull qwen2.5:7b"),
            "plugin={plugin} standalone={standalone}"
        );
        let (out, calls) = with_fake_docker("make-certs.sh", &[], docker);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let calls: Vec<&str> = calls.lines().collect();
        assert_eq!(calls[0], format!("{compose} build gateway"), "{calls:?}");
        assert!(
            calls[1].starts_with(&format!("{compose} run --rm --no-deps --user 0 -v ")),
            "{calls:?}"
        );
    }
    // Neither, a docker-compose too old for docker-compose.yaml, no docker at all, or an
    // engine that does not answer (with either Compose): a clear error, no call.
    let down = |plugin| Docker {
        engine: false,
        ..Docker::compose(plugin, "1.29.2")
    };
    let engine_down = "error: the Docker engine is not running (or this user cannot reach it): 'docker info' failed: Cannot connect to the Docker daemon";
    for (docker, needle) in [
        (Docker::compose(false, ""), "neither 'docker compose'"),
        (
            Docker::compose(false, "1.25.0"),
            "docker-compose 1.25.0 is too old",
        ),
        (
            Docker {
                installed: false,
                ..Docker::compose(false, "1.29.2")
            },
            "error: Docker is not installed: there is no 'docker' command here",
        ),
        (down(false), engine_down),
        (down(true), engine_down),
    ] {
        for script in ["pull-model.sh", "make-certs.sh"] {
            let (out, calls) = with_fake_docker(script, &["m"], docker);
            assert!(!out.status.success(), "{script}");
            assert!(
                text(&out.stderr).contains(needle),
                "{script}: {}",
                text(&out.stderr)
            );
            assert_eq!(calls, "", "{script} ran nothing");
        }
    }
}

#[test]
fn shell_scripts_are_shellcheck_clean() {
    if !common::skip::available(
        common::skip::runs("shellcheck", &["--version"]),
        "shellcheck",
    ) {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut scripts: Vec<std::path::PathBuf> = vec![root.join(".ci/run")];
    for dir in ["scripts", "scripts/llm"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "sh") {
                scripts.push(path);
            }
        }
    }
    let out = Command::new("shellcheck")
        .arg("-x")
        .args(&scripts)
        .current_dir(root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stdout));
}
