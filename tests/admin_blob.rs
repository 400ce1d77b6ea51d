//! A 1 GiB blob through the gateway in bounded memory: the client, the gateway and the fake
//! Ollama all run in this process, the body is made piece by piece and the fake only counts
//! it, so the process's peak resident memory says what the gateway held. Alone in its test
//! binary, so that no other test's memory is counted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bytes::Bytes;
use common::admin::{Answer, FakeOllama};
use common::{key_entry, Gateway};

const ADMIN_KEY: &str = "ogw_test_admin_key_0123456789abcdef";
const GIB: u64 = 1 << 30;

/// A `VmRSS`/`VmHWM` line of /proc/self/status, in bytes.
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kb * 1024
}

/// `n` bytes in 256 KiB pieces that all share one buffer: nothing is allocated per piece.
fn body(n: u64) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    let piece = Bytes::from(vec![0x5a; 256 * 1024]);
    let len = piece.len() as u64;
    futures_util::stream::iter((0..n.div_ceil(len)).map(move |i| {
        let rest = usize::try_from((n - i * len).min(len)).unwrap();
        Ok(piece.slice(..rest))
    }))
}

async fn upload(gw: &Gateway, n: u64) -> u16 {
    let url = format!("{}/api/blobs/sha256:{}", gw.url, "5a".repeat(32));
    let resp = gw
        .client()
        .post(url)
        .timeout(std::time::Duration::from_secs(600))
        .insert_header(("authorization", format!("Bearer {ADMIN_KEY}")))
        .send_body(actix_web::body::SizedStream::new(n, body(n)))
        .await
        .unwrap();
    resp.status().as_u16()
}

#[actix_rt::test]
async fn a_gigabyte_blob_passes_in_bounded_memory() {
    let fake = FakeOllama::start(|_| Answer::Empty(201));
    let url = fake.url();
    let gw = Gateway::start(None, None, |raw| raw.ollama.base_url = url).await;
    gw.set_keys(&key_entry(
        "ops-admin",
        "ops",
        ADMIN_KEY,
        "role = \"admin\"",
    ));
    // Warm up: connections, TLS sessions, buffers and pools exist before measuring.
    assert_eq!(upload(&gw, 8 << 20).await, 201);

    let before = status_bytes("VmRSS");
    // Start the peak over from here (Linux: "5" resets VmHWM to the current RSS).
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    assert_eq!(upload(&gw, GIB).await, 201);
    let peak = status_bytes("VmHWM");
    let seen = fake.last();
    assert!(
        seen.complete && seen.length == GIB,
        "{} bytes arrived",
        seen.length
    );
    assert_eq!(seen.header("content-length"), Some("1073741824"));
    let grown = peak.saturating_sub(before);
    assert!(
        grown < 64 << 20,
        "the peak grew by {} MiB while 1 GiB passed (before {} MiB, peak {} MiB, peak reset: {reset})",
        grown >> 20,
        before >> 20,
        peak >> 20
    );
    gw.stop().await;
}
