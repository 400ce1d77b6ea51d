//! A test that cannot run for lack of a program says so in plain `cargo test` output (no
//! `--nocapture` needed), and fails under CI: `common::skip`, which every such test uses.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Command, Output};

const FIXTURE: &str = "fixture_needs_a_missing_program";

/// Run by the test below in a child process (this same test binary), with
/// `OGW_SKIP_FIXTURE` set; without it, it does nothing.
#[test]
fn fixture_needs_a_missing_program() {
    if std::env::var_os("OGW_SKIP_FIXTURE").is_none() {
        return;
    }
    let present = common::skip::runs("ogw-no-such-program", &["--version"]);
    if !common::skip::available(present, "ogw-no-such-program") {
        return;
    }
    panic!("a program that does not exist was found");
}

/// Runs the fixture as `cargo test` would, output captured, with `CI` as given.
fn run_fixture(ci: Option<&str>) -> (Output, String) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([FIXTURE, "--exact", "--test-threads=2"])
        .env("OGW_SKIP_FIXTURE", "1")
        .env_remove("CI")
        .env_remove("RUST_TEST_NOCAPTURE");
    if let Some(value) = ci {
        cmd.env("CI", value);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

#[test]
fn a_skip_shows_in_plain_test_output_and_fails_under_ci() {
    for ci in [None, Some("false"), Some("0")] {
        let (out, text) = run_fixture(ci);
        assert!(out.status.success(), "CI={ci:?}: {text}");
        assert!(
            text.contains(&format!(
                "SKIPPED {FIXTURE}: ogw-no-such-program is missing"
            )),
            "CI={ci:?}: the skip is visible: {text}"
        );
        assert!(text.contains("1 passed"), "{text}");
    }
    let (out, text) = run_fixture(Some("true"));
    assert!(
        !out.status.success(),
        "under CI a missing program fails: {text}"
    );
    assert!(
        text.contains("ogw-no-such-program is missing, and CI must install it"),
        "{text}"
    );
}
