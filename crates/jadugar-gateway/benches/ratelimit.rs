//! In-process rate-limit check cost.
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use jadugar_gateway::model::{RateKey, RateLimitSpec};
use jadugar_gateway::ratelimit::{KeyValue, LocalLimiter};
use std::hint::black_box;
use std::net::IpAddr;

fn bench(c: &mut Criterion) {
    let spec = RateLimitSpec {
        key: RateKey::Ip,
        requests: u32::MAX / 2,
        per_secs: 1,
        burst: None,
        shared: false,
        fail_open: true,
    };
    let limiter = LocalLimiter::new(&spec, 10_000_000);
    let one = KeyValue::Ip("10.1.2.3".parse().unwrap());
    c.bench_function("rate limit check, one key", |b| {
        b.iter(|| black_box(limiter.check(black_box(&one))))
    });
    let keys: Vec<KeyValue<'static>> = (0..100_000u32)
        .map(|i| KeyValue::Ip(IpAddr::from(i.to_be_bytes())))
        .collect();
    let mut i = 0;
    c.bench_function("rate limit check, 100k keys", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(limiter.check(&keys[i]))
        })
    });
    let api = KeyValue::Text(1, "key_0123456789abcdef");
    c.bench_function("rate limit check, api key", |b| {
        b.iter(|| black_box(limiter.check(black_box(&api))))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
