//! The load harness's streaming client (scripts/bench.sh drives it).
//!
//! `stream`: runs `--concurrency` streams at once, `--count` in all, and reports the time
//! to the first line and the gaps between lines (p50/p99/max, microseconds), checking that
//! every answer has exactly `--lines` lines and that none arrived merged with another.
//! With `--sse` the answer must be an OpenAI-style `text/event-stream`: a "line" is then one
//! `data:` event (its blank line included), `data: [DONE]` must end the stream and is not
//! counted, and a `data: {"error": ...}` event is counted as an error.
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
        /// Lines each answer must have (with `--sse`: `data:` events before `[DONE]`).
        #[arg(long)]
        lines: usize,
        /// The answers are SSE (`data:` events ending with `data: [DONE]`), not NDJSON.
        #[arg(long)]
        sse: bool,
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
#[derive(Default)]
struct Streamed {
    first: Duration,
    gaps: Vec<Duration>,
    lines: usize,
    merged: usize,
    /// Per stamped line (the mock's `@t<micros>`): microseconds from the mock's write to
    /// this client's read.
    delays: Vec<i64>,
    /// SSE only: `data: [DONE]` was not the last event (missing, or events after it).
    unterminated: bool,
    /// SSE only: `data: {"error": ...}` events.
    errors: usize,
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

/// Splits a body into its units as they complete: NDJSON lines, or SSE events (a blank line
/// ends an event; `\r\n` line ends are accepted, as SSE allows them).
struct Framer {
    sse: bool,
    partial: Vec<u8>,
    /// SSE: the current event's `data:` lines so far, joined with `\n`.
    data: Vec<u8>,
    /// SSE: a `data:` line was seen in the current event.
    has_data: bool,
}

/// One complete unit: an NDJSON line, or an SSE event's data.
enum Unit<'a> {
    Line(&'a [u8]),
    Event(&'a [u8]),
}

impl Framer {
    fn new(sse: bool) -> Self {
        Self {
            sse,
            partial: Vec::new(),
            data: Vec::new(),
            has_data: false,
        }
    }

    /// Feeds one read; calls `unit` for each line or event it completes.
    fn feed(&mut self, chunk: &[u8], mut unit: impl FnMut(Unit<'_>)) {
        self.partial.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(nl) = self.partial[start..].iter().position(|b| *b == b'\n') {
            let line = &self.partial[start..start + nl];
            start += nl + 1;
            if !self.sse {
                unit(Unit::Line(line));
                continue;
            }
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                if self.has_data {
                    unit(Unit::Event(&self.data));
                }
                self.data.clear();
                self.has_data = false;
            } else if let Some(value) = line.strip_prefix(b"data:") {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data
                    .extend_from_slice(value.strip_prefix(b" ").unwrap_or(value));
                self.has_data = true;
            }
            // Other fields (`event:`, `id:`, `retry:`) and `:` comments carry no token.
        }
        self.partial.drain(..start);
    }
}

async fn one_stream(c: &awc::Client, t: &Target, sse: bool) -> Streamed {
    let start = Instant::now();
    let mut resp = request(c, t)
        .send_body(t.body.clone())
        .await
        .expect("response");
    assert!(resp.status().is_success(), "status {}", resp.status());
    if sse {
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(
            content_type.starts_with("text/event-stream"),
            "content-type {content_type:?}, not an SSE stream"
        );
    }
    let mut first = None;
    let mut last = None;
    let mut s = Streamed::default();
    let mut framer = Framer::new(sse);
    let mut done = false;
    while let Some(chunk) = resp.next().await {
        let chunk = chunk.expect("body");
        let now = Instant::now();
        let now_us = now_micros();
        // Lines (or events) this read completed; `[DONE]` is the end, not a line.
        let mut complete = 0;
        framer.feed(&chunk, |u| {
            let text = match u {
                Unit::Line(line) => line,
                Unit::Event(b"[DONE]") => {
                    s.unterminated |= done;
                    done = true;
                    return;
                }
                Unit::Event(data) => {
                    s.unterminated |= done;
                    s.errors += usize::from(data.starts_with(b"{\"error\""));
                    data
                }
            };
            complete += 1;
            if let Some(sent) = stamp(text) {
                s.delays.push(now_us - sent);
            }
        });
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
    }
    s.unterminated |= sse && !done;
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
                sse,
            } => {
                let c = client(&target, concurrency);
                // Warm-up, not measured: opens (and TLS-handshakes) every connection, so the
                // figures below are about answers, not about connection set-up.
                futures_util::future::join_all((0..concurrency).map(|_| one_stream(&c, &target, sse))).await;
                let mut ttft = Vec::new();
                let mut gaps = Vec::new();
                let (mut delays, mut steps) = (Vec::new(), Vec::new());
                let (mut bad, mut merged_total, mut slow) = (0, 0, 0);
                let (mut unterminated, mut error_events) = (0, 0);
                let mut done = 0;
                while done < count {
                    let batch = concurrency.min(count - done);
                    let results = futures_util::future::join_all((0..batch).map(|_| one_stream(&c, &target, sse))).await;
                    for r in results {
                        ttft.push(r.first);
                        slow += r.gaps.iter().filter(|d| **d >= Duration::from_millis(40) + Duration::from_millis(25)).count();
                        gaps.extend(r.gaps);
                        bad += usize::from(r.lines != lines);
                        merged_total += r.merged;
                        unterminated += usize::from(r.unterminated);
                        error_events += r.errors;
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
                        "unterminated_streams": unterminated, "error_events": error_events,
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

#[cfg(test)]
mod tests {
    use super::{Framer, Unit};

    /// Every unit the framer completes for `body` fed in reads of `split` bytes.
    fn units(sse: bool, body: &[u8], split: usize) -> Vec<String> {
        let mut framer = Framer::new(sse);
        let mut out = Vec::new();
        for chunk in body.chunks(split) {
            framer.feed(chunk, |u| {
                let (kind, bytes) = match u {
                    Unit::Line(b) => ("line", b),
                    Unit::Event(b) => ("event", b),
                };
                out.push(format!("{kind}:{}", String::from_utf8_lossy(bytes)));
            });
        }
        out
    }

    #[test]
    fn sse_events_at_every_split() {
        let body = b": comment\n\ndata: {\"a\":1}\n\nevent: x\r\ndata: {\"b\":\r\ndata: 2}\r\n\r\ndata: [DONE]\n\n";
        for split in 1..=body.len() {
            assert_eq!(
                units(true, body, split),
                ["event:{\"a\":1}", "event:{\"b\":\n2}", "event:[DONE]"],
                "split {split}"
            );
        }
    }

    #[test]
    fn ndjson_lines_at_every_split() {
        let body = b"{\"a\":1}\n{\"b\":2}\npartial";
        for split in 1..=body.len() {
            assert_eq!(
                units(false, body, split),
                ["line:{\"a\":1}", "line:{\"b\":2}"],
                "split {split}"
            );
        }
    }
}
