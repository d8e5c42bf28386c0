//! A route change made on one host applies on the others at once, through
//! Postgres `LISTEN/NOTIFY` or Redis pub/sub, not at their next poll (the
//! poll interval here is ten minutes).
#![cfg(any(feature = "postgres", all(feature = "sqlite", feature = "redis")))]
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use jadugar_core::storage::Database;
use jadugar_gateway::model::RouteSpec;
use jadugar_gateway::store::SqlRouteStore;
use jadugar_gateway::{Config, Gateway};
use tokio_util::sync::CancellationToken;

async fn host(db: Database, redis: Option<jadugar_core::storage::Redis>) -> Gateway {
    let config = Config {
        access_log: false,
        sync_interval_ms: 600_000,
        ..Config::default()
    };
    let mut builder =
        Gateway::builder(config).store(Arc::new(SqlRouteStore::new(db).await.unwrap()));
    if let Some(redis) = redis {
        builder = builder.redis(redis);
    }
    builder.build().await.unwrap()
}

/// How long since `start` until `check` holds; panics after 3 s.
async fn until<F, Fut>(what: &str, start: Instant, check: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    while !check().await {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{what}: not applied within 3 s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    start.elapsed()
}

/// Creates, changes and deletes a route on `a`; `b` follows each change.
async fn changes_follow(a: &Gateway, b: &Gateway) -> Vec<Duration> {
    let (up, _) = echo("up").await;
    let mut timings = Vec::new();
    // Let both listeners subscribe (a change before that is caught by the
    // check each listener makes when it starts, but not timed fairly).
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Timed from before each call on `a`: the change, its commit and
    // `a`'s own reload included.
    let start = Instant::now();
    a.create_route(route("r", "/r", &[up])).await.unwrap();
    timings.push(until("create", start, || async { b.route_count() == 1 }).await);
    let changed: RouteSpec = route("r", "/moved", &[up]);
    let start = Instant::now();
    a.update_route(changed, None).await.unwrap();
    timings.push(
        until("update", start, || async {
            call(b, get("/moved")).await.0 == 200
        })
        .await,
    );
    let start = Instant::now();
    a.delete_route("r", None).await.unwrap();
    timings.push(until("delete", start, || async { b.route_count() == 0 }).await);
    timings
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn two_gateways_on_one_postgres_follow_each_other_at_once() {
    let Some(pg) = jadugar_core::test_support::TestPostgres::new().await else {
        return;
    };
    let a = host(pg.database().clone(), None).await;
    let b = host(pg.connect_another().await, None).await;
    let cancel = CancellationToken::new();
    let _ta = a.spawn_background(cancel.clone());
    let _tb = b.spawn_background(cancel.clone());
    let timings = changes_follow(&a, &b).await;
    eprintln!("postgres notify: applied on the other host after {timings:?}");
    cancel.cancel();
}

#[cfg(all(feature = "sqlite", feature = "redis"))]
#[tokio::test]
async fn two_gateways_sharing_redis_follow_each_other_at_once() {
    let Some(redis) = jadugar_core::test_support::TestRedis::new().await else {
        return;
    };
    // SQLite pushes nothing: here the hint comes from Redis.
    let sqlite = jadugar_core::test_support::TestSqlite::new().await;
    let a = host(sqlite.database().clone(), Some(redis.redis().clone())).await;
    let b = host(
        sqlite.connect_another().await,
        Some(redis.connect_another().await),
    )
    .await;
    let cancel = CancellationToken::new();
    let _ta = a.spawn_background(cancel.clone());
    let _tb = b.spawn_background(cancel.clone());
    let timings = changes_follow(&a, &b).await;
    eprintln!("redis pub/sub: applied on the other host after {timings:?}");
    cancel.cancel();
}
