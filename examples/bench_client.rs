//! The load harness's streaming client (scripts/bench.sh drives it).
//!
//! `stream`: runs `--concurrency` streams at once, `--count` in all, and reports the time
//! to the first line and the gaps between lines (p50/p99/max, microseconds), checking that
//! every answer has exactly `--lines` lines and that none arrived merged with another.
//! Lines carrying the mock's `@t<micros>` stamp are also timed from the mock's write to this
//! client's read (`line_delay`), and each gap is compared with the gap at which the mock
//! wrote the two lines (`gap_stretch`: what the path added, free of the mock's own timer
//! jitter).
//! `hold`: opens `--count` streams, waits until each has its first line, prints the RSS of
//! `--pid`, drops them all and prints the RSS again once it has settled.
//! Output is one JSON object on stdout.
#![allow(
    clippy::print_stdout,
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use futures_util::StreamExt as _;
use rustls::pki_types::pem::PemObject;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args, Clone)]
struct Target {
    /// Full URL of the chat endpoint.
    #[arg(long)]
    url: String,
    /// JSON request body.
    #[arg(long)]
    body: String,
    /// Extra header, `Name: value`; repeatable.
    #[arg(long = "header")]
    headers: Vec<String>,
    /// CA certificate (PEM) to trust for https URLs.
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    Stream {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        #[arg(long, default_value_t = 20)]
        count: usize,
        /// Lines each answer must have.
        #[arg(long)]
        lines: usize,
    },
    Hold {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        count: usize,
        /// Seconds to wait after closing the streams before reading the server's RSS
        /// (jemalloc's freed pages decay over 10 s).
        #[arg(long, default_value_t = 15)]
        settle_secs: u64,
        #[arg(long)]
        pid: u32,
    },
}

fn client(target: &Target, connections: usize) -> awc::Client {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &target.ca {
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = awc::Connector::new()
        .rustls_0_23(Arc::new(tls))
        .limit(connections.max(1))
        .timeout(Duration::from_secs(30));
    awc::Client::builder()
        .connector(connector)
        .disable_timeout()
        .finish()
}

fn request(c: &awc::Client, t: &Target) -> awc::ClientRequest {
    let mut req = c
        .post(&t.url)
        .insert_header(("content-type", "application/json"));
    for h in &t.headers {
        let (k, v) = h.split_once(':').expect("Name: value");
        req = req.insert_header((k.trim().to_string(), v.trim().to_string()));
    }
    req
}

/// What one streamed answer looked like from the client.
struct Streamed {
    first: Duration,
    gaps: Vec<Duration>,
    lines: usize,
    merged: usize,
    /// Per stamped line (the mock's `@t<micros>`): microseconds from the mock's write to
    /// this client's read.
    delays: Vec<i64>,
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// The mock's stamp in a line, if it has one.
fn stamp(line: &[u8]) -> Option<i64> {
    let at = line.windows(2).position(|w| w == b"@t")? + 2;
    let digits = line[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&line[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

async fn one_stream(c: &awc::Client, t: &Target) -> Streamed {
    let start = Instant::now();
    let mut resp = request(c, t)
        .send_body(t.body.clone())
        .await
        .expect("response");
    assert!(resp.status().is_success(), "status {}", resp.status());
    let mut first = None;
    let mut last = None;
    let mut s = Streamed {
        first: Duration::ZERO,
        gaps: Vec::new(),
        lines: 0,
        merged: 0,
        delays: Vec::new(),
    };
    let mut partial = Vec::new();
    while let Some(chunk) = resp.next().await {
        let chunk = chunk.expect("body");
        let now = Instant::now();
        let now_us = now_micros();
        let complete = chunk.iter().filter(|b| **b == b'\n').count();
        if complete > 1 {
            s.merged += complete - 1;
        }
        if complete > 0 {
            if first.is_none() {
                first = Some(now - start);
            }
            if let Some(prev) = last {
                s.gaps.push(now - prev);
            }
            last = Some(now);
        }
        s.lines += complete;
        partial.extend_from_slice(&chunk);
        while let Some(end) = partial.iter().position(|b| *b == b'\n') {
            if let Some(sent) = stamp(&partial[..end]) {
                s.delays.push(now_us - sent);
            }
            partial.drain(..=end);
        }
    }
    s.first = first.unwrap_or_default();
    s
}

/// The `p` quantile of `v` (nearest rank), or the default (zero) when `v` is empty.
fn pct<T: Ord + Copy + Default>(v: &mut [T], p: f64) -> T {
    if v.is_empty() {
        return T::default();
    }
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    actix_rt::System::new().block_on(async move {
        match cli.command {
            Cmd::Stream {
                target,
                concurrency,
                count,
                lines,
            } => {
                let c = client(&target, concurrency);
                // Warm-up, not measured: opens (and TLS-handshakes) every connection, so the
                // figures below are about answers, not about connection set-up.
                futures_util::future::join_all((0..concurrency).map(|_| one_stream(&c, &target))).await;
                let mut ttft = Vec::new();
                let mut gaps = Vec::new();
                let (mut delays, mut steps) = (Vec::new(), Vec::new());
                let (mut bad, mut merged_total, mut slow) = (0, 0, 0);
                let mut done = 0;
                while done < count {
                    let batch = concurrency.min(count - done);
                    let results = futures_util::future::join_all((0..batch).map(|_| one_stream(&c, &target))).await;
                    for r in results {
                        ttft.push(r.first);
                        slow += r.gaps.iter().filter(|d| **d >= Duration::from_millis(40) + Duration::from_millis(25)).count();
                        gaps.extend(r.gaps);
                        bad += usize::from(r.lines != lines);
                        merged_total += r.merged;
                        // How much longer (or shorter) each gap was here than when the mock
                        // wrote the two lines: what the path added to it.
                        steps.extend(r.delays.windows(2).map(|w| w[1] - w[0]));
                        delays.extend(r.delays);
                    }
                    done += batch;
                }
                println!(
                    "{}",
                    serde_json::json!({
                        "streams": count,
                        "ttft_p50_us": pct(&mut ttft, 0.5).as_micros(), "ttft_p99_us": pct(&mut ttft, 0.99).as_micros(),
                        "gap_p50_us": pct(&mut gaps, 0.5).as_micros(), "gap_p99_us": pct(&mut gaps, 0.99).as_micros(),
                        "gap_max_us": gaps.iter().max().map_or(0, |d| d.as_micros()),
                        "line_delay_p50_us": pct(&mut delays, 0.5), "line_delay_p99_us": pct(&mut delays, 0.99),
                        "gap_stretch_p99_us": pct(&mut steps, 0.99), "stamped_lines": delays.len(),
                        "wrong_line_count": bad, "merged_lines": merged_total, "gaps_over_interval_plus_40ms": slow,
                    })
                );
            }
            Cmd::Hold { target, count, settle_secs, pid } => {
                let idle = rss_kib(pid);
                let c = client(&target, count);
                let mut open = Vec::with_capacity(count);
                for _ in 0..count {
                    open.push(request(&c, &target).send_body(target.body.clone()));
                }
                let mut responses = Vec::with_capacity(count);
                for chunk in open.chunks_mut(256) {
                    let batch = futures_util::future::join_all(chunk.iter_mut()).await;
                    for r in batch {
                        let mut resp = r.expect("response");
                        // Hold each stream open once its first line is in.
                        let _ = resp.next().await;
                        responses.push(resp);
                    }
                }
                let held = rss_kib(pid);
                drop(responses);
                drop(c);
                // Let the server notice the closed connections and its allocator return the
                // pages, then read its RSS once.
                actix_rt::time::sleep(Duration::from_secs(settle_secs)).await;
                let after = rss_kib(pid);
                println!("{}", serde_json::json!({"streams": count, "rss_idle_kib": idle, "rss_held_kib": held, "rss_after_kib": after}));
            }
        }
    });
}
