//! Criterion benches: discovery lookups, watcher wake-ups, register
//! throughput per backend.
//!
//! `cargo bench -p jadugar-registry --bench registry` (set
//! `JADUGAR_TEST_POSTGRES_URL` / `JADUGAR_TEST_REDIS_URL` to include those
//! backends).
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use jadugar_core::test_support::{TestPostgres, TestRedis, TestSqlite};
use jadugar_core::{Discovery, MasterKey, Sealer, SystemClock};
use jadugar_registry::model::{Address, InstanceFilter, Registration};
use jadugar_registry::store::{RedisStore, RegistryStore};
use jadugar_registry::{Config, Registry};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn sealer() -> Sealer {
    Sealer::new(MasterKey::generate("bench"), [])
}

fn reg(i: u64) -> Registration {
    let tags: &[&str] = if i % 2 == 0 { &["v2", "eu"] } else { &["v1"] };
    Registration::new(Address::new(
        "http",
        "10.0.0.1",
        1000 + u16::try_from(i % 60_000).unwrap(),
    ))
    .with_tags(tags.iter().copied())
    .with_metadata("zone", "a")
}

fn discovery(c: &mut Criterion) {
    let rt = runtime();
    let registry = rt.block_on(async {
        let r = Registry::in_memory(Config::default(), SystemClock::shared(), sealer())
            .await
            .unwrap();
        for i in 0..100 {
            r.register("web", &format!("w-{i}"), reg(i)).await.unwrap();
        }
        r
    });
    let discovery: Arc<dyn Discovery> = registry.discovery();
    let v2 = vec!["v2".to_owned()];
    assert_eq!(discovery.endpoints("web", &[]).len(), 100);
    assert_eq!(discovery.endpoints("web", &v2).len(), 50);
    let mut group = c.benchmark_group("discovery_100_instances");
    group.bench_function("endpoints_no_tags", |b| {
        b.iter(|| black_box(discovery.endpoints(black_box("web"), &[])));
    });
    group.bench_function("endpoints_tag_v2", |b| {
        b.iter(|| black_box(discovery.endpoints(black_box("web"), black_box(&v2))));
    });
    group.bench_function("endpoints_unknown_service", |b| {
        b.iter(|| black_box(discovery.endpoints(black_box("nope"), &[])));
    });
    group.finish();
}

fn watchers(c: &mut Criterion) {
    let rt = runtime();
    let registry = rt.block_on(async {
        let r = Registry::in_memory(Config::default(), SystemClock::shared(), sealer())
            .await
            .unwrap();
        r.register("web", "w-0", reg(0)).await.unwrap();
        r
    });
    let next = AtomicU64::new(1);
    let mut group = c.benchmark_group("watch");
    group.sample_size(20);
    group.bench_function("release_1000_blocked_watchers", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += rt.block_on(async {
                    let since = registry.instances("web", &InstanceFilter::default()).index;
                    let mut handles = Vec::with_capacity(1000);
                    for _ in 0..1000 {
                        let r = registry.clone();
                        handles.push(tokio::spawn(async move {
                            r.watch_instances(
                                "web",
                                &InstanceFilter::default(),
                                since,
                                Duration::from_secs(30),
                            )
                            .await
                            .index
                        }));
                    }
                    // Let every watcher block before the change (not timed).
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let started = Instant::now();
                    registry
                        .register("web", &format!("w-{i}"), reg(i))
                        .await
                        .unwrap();
                    for h in handles {
                        assert!(h.await.unwrap() > since);
                    }
                    let elapsed = started.elapsed();
                    registry.deregister("web", &format!("w-{i}")).await.unwrap();
                    elapsed
                });
            }
            total
        });
    });
    group.finish();
}

fn register_on(c: &mut Criterion, name: &str, rt: &tokio::runtime::Runtime, registry: &Registry) {
    let next = AtomicU64::new(0);
    let mut group = c.benchmark_group("register");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));
    group.bench_function(name, |b| {
        b.to_async(rt).iter(|| {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let registry = registry.clone();
            // 1,000 instances over 50 services (20 each); the port changes
            // every time, so each call is a real write, not an idempotent
            // renewal.
            async move {
                let id = i % 1000;
                registry
                    .register(&format!("svc-{}", id % 50), &format!("i-{id}"), reg(i))
                    .await
                    .unwrap();
            }
        });
    });
    group.finish();
}

fn register(c: &mut Criterion) {
    let rt = runtime();
    let sqlite = rt.block_on(TestSqlite::new());
    let registry = rt.block_on(async {
        Registry::from_backends(
            &Config::default(),
            sqlite.database(),
            None,
            SystemClock::shared(),
            sealer(),
        )
        .await
        .unwrap()
    });
    register_on(c, "sqlite", &rt, &registry);

    if let Some(pg) = rt.block_on(TestPostgres::new()) {
        let registry = rt.block_on(async {
            Registry::from_backends(
                &Config::default(),
                pg.database(),
                None,
                SystemClock::shared(),
                sealer(),
            )
            .await
            .unwrap()
        });
        register_on(c, "postgres", &rt, &registry);
    }
    if let Some(redis) = rt.block_on(TestRedis::new()) {
        let registry = rt.block_on(async {
            let store: Arc<dyn RegistryStore> = Arc::new(RedisStore::new(redis.redis().clone()));
            Registry::new(Config::default(), store, SystemClock::shared(), sealer())
                .await
                .unwrap()
        });
        register_on(c, "redis", &rt, &registry);
    }
    let memory = rt.block_on(async {
        Registry::in_memory(Config::default(), SystemClock::shared(), sealer())
            .await
            .unwrap()
    });
    register_on(c, "memory", &rt, &memory);
}

criterion_group!(benches, discovery, watchers, register);
criterion_main!(benches);
