//! docker-compose.yaml, the Dockerfile and .env.example agree with what the binary and
//! Ollama actually read. (CI also runs `docker-compose config -q`.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use ollama_gateway::config::{Config, SHORT_ENV};
use serde_json::Value;

fn repo(file: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap()
}

fn compose() -> Value {
    serde_yaml_ng::from_str(&repo("docker-compose.yaml")).unwrap()
}

/// Environment variables Ollama reads (ollama/ollama envconfig) that we may set.
const OLLAMA_ENV: [&str; 10] = [
    "OLLAMA_HOST",
    "OLLAMA_ORIGINS",
    "OLLAMA_KEEP_ALIVE",
    "OLLAMA_NUM_PARALLEL",
    "OLLAMA_MAX_LOADED_MODELS",
    "OLLAMA_MAX_QUEUE",
    "OLLAMA_MODELS",
    "OLLAMA_DEBUG",
    "OLLAMA_CONTEXT_LENGTH",
    "OLLAMA_FLASH_ATTENTION",
];

/// Variables the gateway binary reads: the short names, RUST_LOG, or a long-form key the
/// configuration accepts.
fn gateway_reads(name: &str, value: &str) -> bool {
    if name == "RUST_LOG"
        || name == "GATEWAY_CONFIG"
        || SHORT_ENV.iter().any(|(short, _)| *short == name)
    {
        return true;
    }
    name.starts_with("GATEWAY__")
        && Config::load(
            None,
            &HashMap::from([(name.to_string(), value.to_string())]),
        )
        .is_ok()
}

fn env_of(service: &Value) -> Vec<(String, String)> {
    service["environment"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str()
                            .map(String::from)
                            .unwrap_or_else(|| v.to_string()),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `${NAME:-default}` -> default, for checking values.
fn default_of(value: &str) -> String {
    match value.strip_prefix("${").and_then(|v| v.strip_suffix('}')) {
        Some(inner) => inner
            .split_once(":-")
            .map(|(_, d)| d.to_string())
            .unwrap_or_default(),
        None => value.to_string(),
    }
}

#[test]
fn services_healthchecks_and_profile() {
    let c = compose();
    let services = c["services"].as_object().unwrap();
    let names: BTreeSet<&str> = services.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from(["ollama", "models_init", "gateway", "prometheus", "grafana"])
    );
    for name in ["ollama", "gateway", "prometheus"] {
        assert!(
            services[name]["healthcheck"]["test"].is_array(),
            "{name} has a healthcheck"
        );
    }
    for name in ["prometheus", "grafana"] {
        assert_eq!(
            services[name]["profiles"],
            serde_json::json!(["monitoring"]),
            "{name}"
        );
    }
    for name in ["ollama", "models_init", "gateway"] {
        assert!(
            services[name].get("profiles").is_none(),
            "{name} runs by default"
        );
    }
    assert!(
        services["ollama"].get("ports").is_none(),
        "Ollama is not published"
    );
    let gw = &services["gateway"];
    assert_eq!(gw["depends_on"]["ollama"]["condition"], "service_healthy");
    assert_eq!(
        gw["depends_on"]["models_init"]["condition"],
        "service_completed_successfully"
    );
    assert_eq!(
        services["models_init"]["depends_on"]["ollama"]["condition"],
        "service_healthy"
    );
    let ports: Vec<&str> = gw["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(
        ports,
        ["${GATEWAY_PORT:-8443}:8443"],
        "only HTTPS is published; the admin port stays internal"
    );
    let mounts: Vec<&str> = gw["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(mounts.contains(&"./config:/etc/ollama-gateway:ro"));
    assert!(mounts.contains(&"./certs:/certs:ro"));
    assert!(services["ollama"]["volumes"][0]
        .as_str()
        .unwrap()
        .starts_with("./ollama:"));
    for name in ["ollama", "gateway", "prometheus", "grafana"] {
        assert!(
            services[name]["restart"].is_string(),
            "{name} has a restart policy"
        );
    }
}

#[test]
fn every_env_variable_passed_is_read_by_someone() {
    let c = compose();
    let services = &c["services"];
    for (name, value) in env_of(&services["gateway"]) {
        assert!(
            gateway_reads(&name, &default_of(&value)),
            "gateway does not read {name}"
        );
    }
    for (name, _) in env_of(&services["ollama"]) {
        assert!(
            OLLAMA_ENV.contains(&name.as_str()),
            "Ollama does not read {name}"
        );
    }
    let init = &services["models_init"];
    let script = init["command"].to_string();
    for (name, _) in env_of(init) {
        let used = OLLAMA_ENV.contains(&name.as_str()) || script.contains(&format!("$${name}"));
        assert!(used, "models_init does not use {name}");
    }
    // The image's own defaults are read by the binary too.
    for line in repo("Dockerfile").lines().map(str::trim) {
        let line = line.strip_prefix("ENV ").unwrap_or(line);
        if let Some((name, value)) = line.trim_end_matches('\\').trim().split_once('=') {
            if name.starts_with("GATEWAY") {
                assert!(
                    gateway_reads(name, value),
                    "the image sets {name}, which the gateway does not read"
                );
            }
        }
    }
}

#[test]
fn every_variable_the_compose_file_uses_is_in_env_example() {
    let compose_text = repo("docker-compose.yaml");
    let example = repo(".env.example");
    let documented: BTreeSet<&str> = example
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
        .collect();
    let mut rest = compose_text.as_str();
    while let Some(start) = rest.find("${") {
        let inner = &rest[start + 2..];
        let end = inner.find(['}', ':', '-']).unwrap();
        let name = &inner[..end];
        assert!(
            documented.contains(name),
            "{name} is used by docker-compose.yaml but not in .env.example"
        );
        rest = &inner[end..];
    }
    for seed in [
        "OPENAI_API_KEY",
        "OLLAMA_BASE_URL",
        "DEFAULT_MODEL",
        "OLLAMA_ORIGINS",
        "GATEWAY",
    ] {
        assert!(
            documented.contains(seed),
            "the seed's {seed} is in .env.example"
        );
    }
}

/// The Dockerfile needs no BuildKit: the classic builder (Debian's docker.io, docker-compose
/// 1.29) knows no `# syntax=` frontends, heredocs, `RUN --mount`/`--network`, or `COPY`
/// flags other than `--from` and `--chown`.
#[test]
fn the_dockerfile_builds_without_buildkit() {
    let dockerfile = repo("Dockerfile");
    for line in dockerfile.lines().map(str::trim) {
        assert!(
            !line.to_ascii_lowercase().starts_with("# syntax="),
            "{line}"
        );
        assert!(!line.contains("<<"), "heredoc: {line}");
        let mut words = line.split_whitespace();
        let instruction = words.next().unwrap_or_default();
        let flags: Vec<&str> = words.take_while(|w| w.starts_with("--")).collect();
        let allowed: &[&str] = match instruction {
            "COPY" | "ADD" => &["--from", "--chown"],
            "FROM" => &["--platform"],
            "RUN" => &[],
            _ => continue,
        };
        for flag in flags {
            let name = flag.split('=').next().unwrap_or(flag);
            assert!(allowed.contains(&name), "BuildKit-only {name}: {line}");
        }
    }
}

/// Token usage survives restarts under compose: a named volume at the gateway's state
/// directory, which GATEWAY_STATE_DIR names, and which the image creates for its user (a
/// fresh named volume takes the owner of the directory it is mounted on).
#[test]
fn the_usage_store_lives_on_a_named_volume() {
    const STATE: &str = "/var/lib/ollama-gateway/state";
    let c = compose();
    let gw = &c["services"]["gateway"];
    let env: HashMap<String, String> = env_of(gw).into_iter().collect();
    assert_eq!(
        env.get("GATEWAY_STATE_DIR").map(String::as_str),
        Some(STATE)
    );
    let volume = gw["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .find_map(|m| m.strip_suffix(&format!(":{STATE}")))
        .expect("a volume is mounted at the state directory");
    assert!(
        c["volumes"].as_object().unwrap().contains_key(volume),
        "{volume} is a named volume"
    );
    let dockerfile = repo("Dockerfile");
    assert!(
        dockerfile.contains(&format!("GATEWAY_STATE_DIR={STATE} ")),
        "the image points GATEWAY_STATE_DIR there too"
    );
    // The runtime stage: after the last FROM.
    let runtime = dockerfile.rsplit_once("\nFROM ").unwrap().1;
    let mkdir = runtime.lines().find(|l| l.contains("mkdir -p")).unwrap();
    assert!(mkdir.contains(STATE), "the image creates {STATE}: {mkdir}");
    assert!(
        runtime.contains("chown -R gateway:gateway /var/lib/ollama-gateway"),
        "owned by the runtime user"
    );
    let user = runtime
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .unwrap();
    assert_eq!(user.trim(), "gateway");
}
