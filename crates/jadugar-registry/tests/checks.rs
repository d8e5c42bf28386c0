//! Active checks against real local servers, the address policy, and
//! several hosts sharing Postgres or Redis.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, eventually, sealer};
use jadugar_core::outbound::AddressPolicy;
use jadugar_core::storage::{Database, Redis};
use jadugar_core::test_support::{TestPostgres, TestRedis, TestSqlite};
use jadugar_core::{Discovery, SystemClock};
use jadugar_registry::checker::Prober;
use jadugar_registry::model::{Address, CheckSpec, Registration, Status};
use jadugar_registry::{Config, Registry, StoreKind};
use tokio_util::sync::CancellationToken;

fn fast_config() -> Config {
    Config {
        allow_loopback_checks: true,
        min_check_interval_ms: 20,
        check_lease_secs: 1,
        sweep_interval_ms: 100,
        ..Config::default()
    }
}

fn local(port: u16) -> Address {
    Address::new("http", "127.0.0.1", port)
}

#[tokio::test]
async fn http_check_goes_critical_after_the_threshold_and_recovers() {
    let mut server = TestServer::start(TestServer::ok()).await;
    let registry = Registry::in_memory(fast_config(), SystemClock::shared(), sealer())
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let tasks = registry.start(cancel.clone());
    let check = CheckSpec::http("/health")
        .with_timing(50, 50)
        .with_thresholds(1, 3);
    registry
        .register(
            "web",
            "w-1",
            Registration::new(local(server.addr.port())).with_check(check),
        )
        .await
        .unwrap();
    // Unknown until the first probe passes.
    assert_eq!(
        registry.instance("web", "w-1").unwrap().status,
        Status::Critical
    );
    let status = || registry.instance("web", "w-1").unwrap().status;
    assert!(eventually(Duration::from_secs(3), || status() == Status::Passing).await);
    assert_eq!(registry.endpoints("web", &[]).len(), 1);
    assert!(server.hits() >= 1);

    server.stop().await;
    let stopped = Instant::now();
    assert!(eventually(Duration::from_secs(3), || status() == Status::Critical).await);
    // Three failures at 50 ms intervals: not on the first one.
    assert!(
        stopped.elapsed() >= Duration::from_millis(90),
        "{:?}",
        stopped.elapsed()
    );
    let instance = registry.instance("web", "w-1").unwrap();
    assert_eq!(instance.check_output.as_deref(), Some("connection failed"));
    assert!(registry.endpoints("web", &[]).is_empty());

    server.restart().await;
    assert!(eventually(Duration::from_secs(3), || status() == Status::Passing).await);
    assert_eq!(
        registry
            .instance("web", "w-1")
            .unwrap()
            .check_output
            .as_deref(),
        Some("HTTP 200")
    );
    cancel.cancel();
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .unwrap()
            .unwrap();
    }
}

#[tokio::test]
async fn tcp_check() {
    let server = TestServer::start(TestServer::ok()).await;
    let prober = Prober::new(AddressPolicy::permissive()).unwrap();
    let probe = prober
        .probe(&local(server.addr.port()), &CheckSpec::tcp())
        .await;
    assert!(probe.ok, "{probe:?}");
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    assert!(!prober.probe(&local(closed), &CheckSpec::tcp()).await.ok);
}

#[tokio::test]
async fn address_policy_denies_metadata_private_names_and_redirects() {
    let prober = Prober::new(AddressPolicy::strict()).unwrap();
    // The cloud metadata address, by HTTP and TCP.
    let metadata = Address::new("http", "169.254.169.254", 80);
    let probe = prober
        .probe(&metadata, &CheckSpec::http("/latest/meta-data/"))
        .await;
    assert_eq!(
        (probe.ok, probe.output.as_str()),
        (false, "denied by the address policy")
    );
    let probe = prober.probe(&metadata, &CheckSpec::tcp()).await;
    assert_eq!(
        (probe.ok, probe.output.as_str()),
        (false, "denied by the address policy")
    );
    let v6 = Address::new("http", "fd00:ec2::254", 80);
    assert!(!prober.probe(&v6, &CheckSpec::tcp()).await.ok);

    // A DNS name that resolves to a private (loopback) address: refused
    // before any connection, so the server sees nothing.
    let server = TestServer::start(TestServer::ok()).await;
    let by_name = Address::new("http", "localhost", server.addr.port());
    let probe = prober.probe(&by_name, &CheckSpec::http("/health")).await;
    assert_eq!(
        (probe.ok, probe.output.as_str()),
        (false, "denied by the address policy")
    );
    assert!(!prober.probe(&by_name, &CheckSpec::tcp()).await.ok);
    assert_eq!(server.hits(), 0);

    // A redirect to a private address is a failed result, never followed.
    let target = TestServer::start(TestServer::ok()).await;
    let to_private = TestServer::start(TestServer::redirect(&format!(
        "http://127.0.0.1:{}/",
        target.addr.port()
    )))
    .await;
    let to_metadata = TestServer::start(TestServer::redirect(
        "http://169.254.169.254/latest/meta-data/",
    ))
    .await;
    let loopback_ok = Prober::new(AddressPolicy::strict().allow_loopback(true)).unwrap();
    for server in [&to_private, &to_metadata] {
        let probe = loopback_ok
            .probe(&local(server.addr.port()), &CheckSpec::http("/health"))
            .await;
        assert!(!probe.ok);
        assert_eq!(probe.output, "HTTP 302 (redirects are not followed)");
        assert_eq!(server.hits(), 1);
    }
    assert_eq!(target.hits(), 0, "the redirect was followed");

    // The registry refuses the same through its configuration.
    let strict = Config {
        allow_loopback_checks: false,
        ..fast_config()
    };
    let registry = Registry::in_memory(strict, SystemClock::shared(), sealer())
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let _tasks = registry.start(cancel.clone());
    let check = CheckSpec::http("/")
        .with_timing(30, 30)
        .with_thresholds(1, 1);
    registry
        .register(
            "web",
            "w-1",
            Registration::new(local(server.addr.port())).with_check(check),
        )
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(3), || {
            registry
                .instance("web", "w-1")
                .unwrap()
                .check_output
                .as_deref()
                == Some("denied by the address policy")
        })
        .await
    );
    assert_eq!(server.hits(), 0);
    cancel.cancel();
}

async fn two_hosts(config: Config, make: impl AsyncFn() -> (Registry, Registry)) {
    let (one, two) = make().await;
    let cancel_one = CancellationToken::new();
    let cancel_two = CancellationToken::new();
    let tasks_one = one.start(cancel_one.clone());
    let _tasks_two = two.start(cancel_two.clone());
    // Let both listeners subscribe.
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Registered on one, discovered on the other within a second.
    let started = Instant::now();
    one.register(
        "web",
        "w-1",
        Registration::new(Address::new("http", "10.1.0.1", 80)),
    )
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(1), || two.endpoints("web", &[]).len()
            == 1)
        .await
    );
    let seen_after = started.elapsed();
    assert!(seen_after < Duration::from_secs(1), "{seen_after:?}");
    let config_seen = {
        let two = two.clone();
        let since = two.hub().current();
        tokio::spawn(async move {
            two.config_watch("prod.web", "k", since, Duration::from_secs(5), false)
                .await
        })
    };
    one.config_put(
        "prod.web",
        "k",
        jadugar_registry::model::ConfigPut {
            value: serde_json::json!(1),
            kind: jadugar_registry::model::ValueKind::Json,
            secret: false,
            expected_version: None,
        },
        None,
    )
    .await
    .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(1), config_seen)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.version, 1);

    // A checked instance is probed by one host only.
    let server = TestServer::start(TestServer::ok()).await;
    let interval = 100;
    let check = CheckSpec::http("/")
        .with_timing(interval, 100)
        .with_thresholds(1, 2);
    two.register(
        "web",
        "w-2",
        Registration::new(local(server.addr.port())).with_check(check),
    )
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(3), || {
            one.instance("web", "w-2")
                .is_ok_and(|i| i.status == Status::Passing)
        })
        .await
    );
    let before = server.hits();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let probes = server.hits() - before;
    // 15 intervals: one host gives ~15, two would give ~30.
    assert!(
        (8..=20).contains(&probes),
        "{probes} probes in 1.5 s at 100 ms"
    );

    // The host holding the lease dies (tasks aborted, leases not released):
    // the other takes the checks over once the lease expires.
    let holder_is_one = one
        .store()
        .claim_checks(
            one.host_id(),
            chrono::Utc::now(),
            chrono::Utc::now() + chrono::Duration::seconds(1),
            10,
        )
        .await
        .unwrap()
        .len()
        == 1;
    if holder_is_one {
        for task in tasks_one {
            task.abort();
        }
    } else {
        cancel_two.cancel();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = server.hits();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(server.hits() - before >= 5, "checks were not taken over");
    let _ = config;
    cancel_one.cancel();
    cancel_two.cancel();
}

#[tokio::test]
async fn two_hosts_on_postgres() {
    let Some(pg) = TestPostgres::new().await else {
        return;
    };
    let config = fast_config();
    let other: Database = pg.connect_another().await;
    let c = config.clone();
    two_hosts(config, async || {
        let one = Registry::from_backends(&c, pg.database(), None, SystemClock::shared(), sealer())
            .await
            .unwrap();
        let two = Registry::from_backends(&c, &other, None, SystemClock::shared(), sealer())
            .await
            .unwrap();
        (one, two)
    })
    .await;
}

#[tokio::test]
async fn two_hosts_on_redis() {
    let Some(redis) = TestRedis::new().await else {
        return;
    };
    let db = TestSqlite::new().await;
    let config = Config {
        store: StoreKind::Redis,
        ..fast_config()
    };
    let other: Redis = redis.connect_another().await;
    let c = config.clone();
    two_hosts(config, async || {
        let one = Registry::from_backends(
            &c,
            db.database(),
            Some(redis.redis()),
            SystemClock::shared(),
            sealer(),
        )
        .await
        .unwrap();
        let two = Registry::from_backends(
            &c,
            db.database(),
            Some(&other),
            SystemClock::shared(),
            sealer(),
        )
        .await
        .unwrap();
        (one, two)
    })
    .await;
}
