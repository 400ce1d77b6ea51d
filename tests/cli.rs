//! The commands around `serve`, as an operator runs them: `check-config` fails on whatever
//! `serve` fails on before it binds, and every error is one line naming the file or the
//! variable at fault; `keys new --append` never breaks the keys file; `--config` is offered
//! only where it is read.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{repo_config, TempDir, BIN, TEST_KEY};

/// The binary with a clean environment, run in `dir` (so relative paths land there).
fn gateway(dir: &Path, args: &[&str], env: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null());
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `serve` until it exits, which it must do within 30 s (a gateway that starts is a
/// test failure here); it listens on port 0 if it gets that far.
fn serve_fails(dir: &Path, env: &[(&str, String)]) -> Output {
    let child = gateway(dir, &["serve", "--config", &repo_config()], env)
        .env("GATEWAY_LISTEN", "127.0.0.1:0")
        .env("GATEWAY_ADMIN_LISTEN", "127.0.0.1:0")
        .env("GATEWAY__SERVER__WORKERS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid]).status();
            panic!("serve started although check-config refused: {env:?}");
        }
    }
}

/// The one line an error is reported in; asserts there is exactly one, said once.
fn one_error_line(out: &Output) -> String {
    let err = text(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(lines.len(), 1, "one error line: {err}");
    assert!(!err.contains("Caused by"), "{err}");
    let line = lines[0].to_string();
    let parts: Vec<&str> = line.split(": ").collect();
    for (i, part) in parts.iter().enumerate() {
        assert!(
            !parts[i + 1..].contains(part) || part.len() < 8,
            "{part:?} said twice: {line}"
        );
    }
    line
}

#[test]
fn check_config_fails_on_what_serve_fails_on_naming_the_file() {
    let dir = TempDir::new("cli-check");
    let keys = dir.0.join("keys.toml");
    std::fs::write(&keys, common::key_entry("k", "t", TEST_KEY, "")).unwrap();
    let made = gateway(&dir.0, &["certs", "new", "--out", "pair"], &[])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", text(&made.stderr));
    let pair = |file: &str| dir.0.join("pair").join(file).display().to_string();
    let bad_keys = dir.0.join("bad-keys.toml");
    std::fs::write(&bad_keys, "[[keys]\n").unwrap();
    let keys_env = ("GATEWAY_KEYS_FILE", keys.display().to_string());
    let cases: Vec<(Vec<(&str, String)>, String)> = vec![
        (
            vec![
                keys_env.clone(),
                ("GATEWAY_TLS_CERT", pair("missing.pem")),
                ("GATEWAY_TLS_KEY", pair("missing-key.pem")),
            ],
            pair("missing.pem"),
        ),
        (
            vec![
                keys_env.clone(),
                ("GATEWAY_TLS_CERT", pair("server.pem")),
                ("GATEWAY_TLS_KEY", pair("no-such-key.pem")),
            ],
            pair("no-such-key.pem"),
        ),
        (
            vec![
                keys_env.clone(),
                ("GATEWAY_TLS_CERT", pair("server.pem")),
                ("GATEWAY_TLS_KEY", pair("ca.pem")),
            ],
            pair("ca.pem"),
        ),
        (
            vec![
                keys_env.clone(),
                ("GATEWAY_TLS_CERT", pair("server.pem")),
                ("GATEWAY_TLS_KEY", pair("ca-key.pem")),
            ],
            format!(
                "the private key in {} does not belong to the certificate in {}",
                pair("ca-key.pem"),
                pair("server.pem")
            ),
        ),
        // A directory for the self-signed certificate that cannot be made.
        (
            vec![
                keys_env.clone(),
                ("GATEWAY__TLS__SELF_SIGNED_DIR", "/proc/nope/certs".into()),
            ],
            "cannot write /proc/nope/certs".into(),
        ),
        (
            vec![("GATEWAY_KEYS_FILE", dir.0.display().to_string())],
            format!("keys file {}", dir.0.display()),
        ),
        (
            vec![("GATEWAY_KEYS_FILE", bad_keys.display().to_string())],
            bad_keys.display().to_string(),
        ),
        (
            vec![
                keys_env.clone(),
                ("RUST_LOG", "info,ollama_gateway=loud".into()),
            ],
            "environment variable RUST_LOG".into(),
        ),
    ];
    for (env, needle) in &cases {
        let check = gateway(&dir.0, &["check-config", "--config", &repo_config()], env)
            .output()
            .unwrap();
        assert!(
            !check.status.success(),
            "check-config accepted {env:?}: {}",
            text(&check.stdout)
        );
        let line = one_error_line(&check);
        assert!(line.contains(needle.as_str()), "{env:?}: {line}");
        let serve = serve_fails(&dir.0, env);
        assert!(!serve.status.success());
        let said = text(&serve.stderr);
        assert!(said.contains(needle.as_str()), "serve, {env:?}: {said}");
    }
    // What serve starts with, check-config accepts, saying what it found.
    let ok = gateway(
        &dir.0,
        &["check-config", "--config", &repo_config()],
        &[
            keys_env,
            ("GATEWAY_TLS_CERT", pair("server.pem")),
            ("GATEWAY_TLS_KEY", pair("server-key.pem")),
        ],
    )
    .output()
    .unwrap();
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    let first = text(&ok.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(
        first.contains("1 API key(s)") && first.contains("TLS certificate SHA-256 "),
        "{first}"
    );
}

#[test]
fn a_missing_keys_file_is_a_warning_not_a_silent_zero() {
    let dir = TempDir::new("cli-nokeys");
    let out = gateway(&dir.0, &["check-config", "--config", &repo_config()], &[])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("warning: keys file config/keys.toml does not exist")
            && err.contains("refused"),
        "{err}"
    );
    assert!(
        !dir.0.join("certs").exists(),
        "check-config generates no certificate"
    );
}

#[test]
fn config_errors_are_one_line_naming_the_variable_or_file() {
    let dir = TempDir::new("cli-errors");
    let check = |env: &[(&str, String)], config: &str| {
        let out = gateway(&dir.0, &["check-config", "--config", config], env)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{env:?}");
        one_error_line(&out)
    };
    let line = check(&[("GATEWAY_LISTEN", "nope".into())], &repo_config());
    assert!(
        line.contains("environment variable GATEWAY_LISTEN: invalid value for `server.listen`"),
        "{line}"
    );
    assert!(!line.contains("gateway.toml"), "{line}");
    let line = check(&[("GATEWAY_LOG_FORMAT", "xml".into())], &repo_config());
    assert!(
        line.contains("GATEWAY_LOG_FORMAT") && line.contains("use \"text\" or \"json\""),
        "{line}"
    );
    assert!(!line.contains("variant"), "{line}");
    let file = dir.0.join("bad.toml");
    std::fs::write(&file, "[server]\nlisten = \"nope\"\n").unwrap();
    let line = check(&[], &file.display().to_string());
    assert!(
        line.contains(&format!(
            "{}: invalid value for `server.listen`",
            file.display()
        )),
        "{line}"
    );
}

#[test]
fn check_config_into_a_closed_pipe_exits_quietly() {
    let dir = TempDir::new("cli-pipe");
    let keys = dir.0.join("keys.toml");
    std::fs::write(&keys, common::key_entry("k", "t", TEST_KEY, "")).unwrap();
    // `check-config | head -0`: the reader is gone before anything is written.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = gateway(
        &dir.0,
        &["check-config", "--config", &repo_config()],
        &[("GATEWAY_KEYS_FILE", keys.display().to_string())],
    )
    .stdout(writer)
    .stderr(Stdio::piped())
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "", "nothing said about the closed pipe");
}

#[test]
fn config_is_an_option_only_of_the_commands_that_read_it() {
    let dir = TempDir::new("cli-flags");
    let help = |args: &[&str]| {
        let out = gateway(&dir.0, args, &[]).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        text(&out.stdout)
    };
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["check-config", "--help"],
        &["health", "--help"],
    ] {
        assert!(help(args).contains("--config <PATH>"), "{args:?}");
    }
    for args in [
        &["keys", "--help"][..],
        &["keys", "new", "--help"],
        &["keys", "hash", "--help"],
        &["certs", "new", "--help"],
    ] {
        assert!(!help(args).contains("--config"), "{args:?}");
    }
    let config = repo_config();
    for args in [
        &["keys", "new", "--team", "t", "--config", &config][..],
        &["--config", &config, "keys", "hash"],
        &["--config", &config, "check-config"],
    ] {
        let out = gateway(&dir.0, args, &[]).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(text(&out.stderr).contains("--config"), "{args:?}");
    }
    // The image sets GATEWAY_CONFIG for every command; those that do not read it run.
    let out = gateway(
        &dir.0,
        &["keys", "new", "--team", "t"],
        &[("GATEWAY_CONFIG", config.clone())],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn keys_new_append_refuses_an_id_already_in_the_file() {
    let dir = TempDir::new("cli-dup");
    let file = dir.0.join("keys.toml");
    let file_arg = file.display().to_string();
    let new_key = |id: &str| {
        gateway(
            &dir.0,
            &[
                "keys", "new", "--team", "t", "--id", id, "--append", &file_arg,
            ],
            &[],
        )
        .output()
        .unwrap()
    };
    assert!(new_key("team-a-ci").status.success());
    let before = std::fs::read(&file).unwrap();
    let again = new_key("team-a-ci");
    assert!(!again.status.success(), "a repeated id is refused");
    let line = one_error_line(&again);
    assert!(
        line.contains(&file_arg)
            && line.contains("\"team-a-ci\"")
            && line.contains("nothing written"),
        "{line}"
    );
    assert_eq!(
        text(&again.stdout),
        "",
        "no key is printed for an entry not written"
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        before,
        "the file is unchanged"
    );

    // A file that is already invalid is not appended to either.
    let broken = dir.0.join("broken.toml");
    std::fs::write(&broken, "[[keys]\n").unwrap();
    let out = gateway(
        &dir.0,
        &[
            "keys",
            "new",
            "--team",
            "t",
            "--append",
            &broken.display().to_string(),
        ],
        &[],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    assert_eq!(std::fs::read_to_string(&broken).unwrap(), "[[keys]\n");

    assert!(new_key("team-a-ci-2").status.success());
    let check = gateway(
        &dir.0,
        &["check-config", "--config", &repo_config()],
        &[("GATEWAY_KEYS_FILE", file_arg.clone())],
    )
    .output()
    .unwrap();
    assert!(check.status.success(), "{}", text(&check.stderr));
    assert!(text(&check.stdout).contains("2 API key(s)"));
}

#[test]
fn health_probes_the_admin_listener_the_configuration_names() {
    use common::{FakeUpstream, Reply};
    let dir = TempDir::new("cli-health");
    // Stands in for the admin listener's /healthz.
    let admin = FakeUpstream::start(|_| Reply::json(200, &serde_json::json!({"status": "ok"})));
    let file = dir.0.join("gateway.toml");
    let write = |listen: &str| {
        std::fs::write(&file, format!("[admin]\nlisten = \"{listen}\"\n")).unwrap();
    };
    let health = |args: &[&str], env: &[(&str, String)]| {
        gateway(&dir.0, &[&["health"], args].concat(), env)
            .output()
            .unwrap()
    };
    let file_arg = file.display().to_string();
    let unspecified = format!("0.0.0.0:{}", admin.addr.port());
    for listen in [admin.addr.to_string(), unspecified] {
        write(&listen);
        let out = health(&["--config", &file_arg], &[]);
        assert!(out.status.success(), "{listen}: {}", text(&out.stderr));
        let out = health(&[], &[("GATEWAY_CONFIG", file_arg.clone())]);
        assert!(out.status.success(), "{listen}: {}", text(&out.stderr));
    }
    assert_eq!(admin.requests().len(), 4);
    assert!(admin.requests().iter().all(|r| r.path == "/healthz"));

    // The environment wins over the file, as for serve.
    let closed = common::closed_port_url();
    let closed = closed.trim_start_matches("http://");
    let out = health(
        &["--config", &file_arg],
        &[("GATEWAY_ADMIN_LISTEN", closed.to_string())],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(&format!("http://{closed}/healthz")),
        "{}",
        text(&out.stderr)
    );
    // A configuration that switches the admin listener off says so.
    write("");
    let out = health(&["--config", &file_arg], &[]);
    assert!(!out.status.success());
    assert!(
        one_error_line(&out).contains("the admin listener is off"),
        "{}",
        text(&out.stderr)
    );
    // `--url` needs no configuration.
    let url = format!("http://{}/healthz", admin.addr);
    let out = health(&["--url", &url], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}
