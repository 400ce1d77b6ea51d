//! Tests that need a program the machine may lack (promtool, prometheus, bash, curl, jq,
//! python's `ollama` module). Under CI a missing program fails the test; elsewhere the test
//! is skipped and says so where a plain `cargo test` shows it.

use std::io::Write as _;
use std::process::{Command, Stdio};

/// Whether this is a CI run: `CI` set to anything but empty, `0` or `false` (CI services
/// and `.ci/run` set `CI=true`).
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

/// Whether `program args...` runs here and succeeds (quietly).
pub fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether every one of `programs` answers `--version`.
pub fn all_run(programs: &[&str]) -> bool {
    programs.iter().all(|p| runs(p, &["--version"]))
}

/// `true` when what the calling test needs is `present`; otherwise the test is to be
/// skipped: under CI this panics, naming `needed`; elsewhere it writes `SKIPPED <test>:
/// <needed> is missing` on the test's stderr and returns `false`, and the caller returns.
///
/// The notice is written to the `std::io::stderr()` handle itself: libtest captures what a
/// passing test prints with the `print!`/`eprint!` macros (shown only with `--nocapture`),
/// not what is written to the handle (tests/skips.rs checks that it shows).
pub fn available(present: bool, needed: &str) -> bool {
    if present {
        return true;
    }
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    assert!(
        !under_ci(),
        "{test}: {needed} is missing, and CI must install it (CI is set)"
    );
    let notice = format!("SKIPPED {test}: {needed} is missing (under CI=true this fails)\n");
    let _ = std::io::stderr().write_all(notice.as_bytes());
    false
}
