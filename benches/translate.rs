//! S6: SSE -> NDJSON translation throughput on a realistic OpenAI stream fed in random
//! 1-16 KiB reads, against `serde_json::from_slice::<Value>` of the same events (the
//! least any translator must do); and the same stream relayed by `/v1/chat/completions`, its
//! model rewritten event by event. Run: `cargo bench --bench translate`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Instant;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ollama_gateway::translate::openai::SseToNdjson;
use ollama_gateway::translate::v1::{event_data, Answer, EventSplitter};

/// A stream shaped like OpenAI's (PROTOCOLS.md 3.3): a role chunk, `tokens` content chunks
/// of mixed English and Chinese, a finish chunk, a usage chunk and `[DONE]`.
fn recorded_stream(tokens: usize) -> Vec<u8> {
    const WORDS: [&str; 12] = [
        "The", " gateway", " relays", " each", " token", " as", " it", " arrives", "，", "繁體",
        "中文", "。",
    ];
    let head = r#"{"id":"chatcmpl-9xKq2b7WZ3","object":"chat.completion.chunk","created":1731000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0ba0d124f1","choices":[{"index":0,"delta":"#;
    let mut out = Vec::new();
    out.extend_from_slice(format!("data: {head}{{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n").as_bytes());
    for i in 0..tokens {
        let word = serde_json::to_string(WORDS[i % WORDS.len()]).unwrap();
        out.extend_from_slice(
            format!("data: {head}{{\"content\":{word}}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n").as_bytes(),
        );
    }
    out.extend_from_slice(
        format!(
            "data: {head}{{}},\"logprobs\":null,\"finish_reason\":\"stop\"}}],\"usage\":null}}\n\n"
        )
        .as_bytes(),
    );
    out.extend_from_slice(br#"data: {"id":"chatcmpl-9xKq2b7WZ3","object":"chat.completion.chunk","created":1731000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0ba0d124f1","choices":[],"usage":{"prompt_tokens":24,"completion_tokens":1000,"total_tokens":1024,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}}"#);
    out.extend_from_slice(b"\n\ndata: [DONE]\n\n");
    out
}

/// Random read sizes between 1 and 16 KiB (a fixed seed: the same splits every run).
fn splits(len: usize) -> Vec<usize> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::new();
    let mut at = 0;
    while at < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let size = 1024 + (state % (15 * 1024 + 1)) as usize;
        at = (at + size).min(len);
        out.push(at);
    }
    out
}

fn bench(c: &mut Criterion) {
    let stream = recorded_stream(1000);
    let ends = splits(stream.len());
    let events: Vec<&[u8]> = stream
        .split(|b| *b == b'\n')
        .filter_map(|l| l.strip_prefix(b"data: "))
        .filter(|d| *d != b"[DONE]")
        .collect();

    let mut group = c.benchmark_group("sse_to_ndjson");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    group.bench_function("gateway_translate", |b| {
        let mut out = Vec::with_capacity(stream.len());
        b.iter(|| {
            let mut t = SseToNdjson::new("openai/gpt-4o-mini", Instant::now());
            out.clear();
            let mut start = 0;
            for &end in &ends {
                t.feed(&stream[start..end], &mut out).unwrap();
                start = end;
            }
            t.finish(&mut out).unwrap();
            black_box(out.len())
        });
    });
    group.bench_function("serde_json_value_baseline", |b| {
        b.iter(|| {
            let mut n = 0;
            for data in &events {
                let v: serde_json::Value = serde_json::from_slice(data).unwrap();
                n += usize::from(v.is_object());
            }
            black_box(n)
        });
    });
    group.finish();
}

/// `/v1/chat/completions` relayed from an OpenAI-compatible upstream: the same stream cut
/// into events, each read (usage, choices) and its `model` put back to the client's name;
/// the usage chunk, which the gateway asked for, dropped.
fn bench_v1(c: &mut Criterion) {
    let stream = recorded_stream(1000);
    let ends = splits(stream.len());
    let quoted = br#""openai/gpt-4o-mini-2024-07-18""#;
    let mut group = c.benchmark_group("v1_relay");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    group.bench_function("gateway_v1_model_rewrite", |b| {
        b.iter(|| {
            let mut splitter = EventSplitter::new(1 << 20);
            let (mut start, mut out) = (0, 0);
            for &end in &ends {
                let chunk = Bytes::copy_from_slice(&stream[start..end]);
                splitter
                    .push(chunk, |event| {
                        let Some(data) = event_data(&event) else {
                            return true;
                        };
                        if let Ok(answer) = Answer::read(&data) {
                            if !answer.usage_only {
                                out += answer
                                    .rewrite(&data, Some(quoted), true)
                                    .map_or(event.len(), |e| e.len());
                            }
                        }
                        true
                    })
                    .unwrap();
                start = end;
            }
            black_box(out)
        });
    });
    group.finish();
}

criterion_group!(benches, bench, bench_v1);
criterion_main!(benches);
