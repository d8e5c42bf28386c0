//! In-process rate-limit check cost, beside governor's own keyed limiter
//! (keyed by the address itself, with its default hasher) as the peer.
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use jadugar_gateway::model::{RateKey, RateLimitSpec};
use jadugar_gateway::ratelimit::{KeyValue, LocalLimiter};
use std::hint::black_box;
use std::net::IpAddr;
use std::num::NonZeroU32;

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
    let quota = governor::Quota::per_second(NonZeroU32::new(u32::MAX / 2).unwrap());
    let peer = governor::RateLimiter::keyed(quota);
    let ip: IpAddr = "10.1.2.3".parse().unwrap();
    c.bench_function("peer: governor keyed, one key", |b| {
        b.iter(|| black_box(peer.check_key(black_box(&ip))))
    });
    let ips: Vec<IpAddr> = (0..100_000u32)
        .map(|i| IpAddr::from(i.to_be_bytes()))
        .collect();
    let mut j = 0;
    c.bench_function("peer: governor keyed, 100k keys", |b| {
        b.iter(|| {
            j = (j + 1) % ips.len();
            black_box(peer.check_key(&ips[j]))
        })
    });
    let api = KeyValue::Text(1, "key_0123456789abcdef");
    c.bench_function("rate limit check, api key", |b| {
        b.iter(|| black_box(limiter.check(black_box(&api))))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
