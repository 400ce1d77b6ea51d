//! The per-request gate on the hot path: allowlist check (with forwarded headers from a
//! trusted proxy), key lookup by hash, in-flight slot and token bucket. With 1 key and with
//! 10,000 keys (S3). Run: `cargo bench --bench gate`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::IpAddr;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ollama_gateway::allowlist::Allowlist;
use ollama_gateway::config::{AllowlistConfig, Limits};
use ollama_gateway::keys::{entry_toml, KeyTable};
use ollama_gateway::limits::{take, InFlight, LimiterPool};

fn table(n: usize, pool: &LimiterPool) -> KeyTable {
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&entry_toml(
            &format!("key-{i}"),
            "team",
            &format!("ogw_bench_key_{i}"),
        ));
    }
    let limits = Limits {
        requests_per_minute: u32::MAX / 60,
        burst: u32::MAX / 2,
        max_in_flight: 1_000_000,
        reads_per_minute: u32::MAX / 60,
        read_burst: u32::MAX / 2,
        tokens: Default::default(),
    };
    KeyTable::parse(&text, std::path::Path::new("bench"), limits, pool).unwrap()
}

fn bench(c: &mut Criterion) {
    let allowlist = Allowlist::new(&AllowlistConfig {
        cidrs: Some(
            ["127.0.0.0/8", "10.0.0.0/8", "192.168.0.0/16", "fc00::/7"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect(),
        ),
        trusted_proxies: vec!["127.0.0.2/32".parse().unwrap()],
    });
    let mut headers = HeaderMap::new();
    headers.insert(
        HeaderName::from_static("x-forwarded-for"),
        HeaderValue::from_static("10.1.2.3"),
    );
    let peer: IpAddr = "127.0.0.2".parse().unwrap();

    let mut group = c.benchmark_group("gate");
    for n in [1usize, 10_000] {
        let pool = LimiterPool::default();
        let keys = table(n, &pool);
        let presented = format!("ogw_bench_key_{}", n - 1);
        group.bench_with_input(
            BenchmarkId::new("allowlist+key+slot+bucket", n),
            &n,
            |b, _| {
                b.iter(|| {
                    let ip = allowlist.client_ip(peer, &headers);
                    assert!(allowlist.allows(ip));
                    let key = keys.lookup(black_box(&presented)).unwrap();
                    let slot = InFlight::acquire(&key.quota).unwrap();
                    let policy = take(&key.quota).unwrap();
                    drop(slot);
                    black_box(policy)
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
