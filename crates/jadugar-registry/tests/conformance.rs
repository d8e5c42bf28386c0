//! The store conformance suite on every backend.
#![cfg(feature = "test-support")]
#![allow(clippy::unwrap_used)]

use jadugar_core::test_support::{TestPostgres, TestRedis, TestSqlite};
use jadugar_registry::store::{MemoryStore, RedisStore, SqlStore, conformance};

#[tokio::test]
async fn memory() {
    conformance::run(&MemoryStore::new()).await;
}

#[tokio::test]
async fn sqlite() {
    let db = TestSqlite::new().await;
    let store = SqlStore::new(db.database().clone()).await.unwrap();
    conformance::run(&store).await;
}

#[tokio::test]
async fn postgres() {
    let Some(pg) = TestPostgres::new().await else {
        return;
    };
    let store = SqlStore::new(pg.database().clone()).await.unwrap();
    conformance::run(&store).await;
}

#[tokio::test]
async fn redis() {
    let Some(redis) = TestRedis::new().await else {
        return;
    };
    conformance::run(&RedisStore::new(redis.redis().clone())).await;
}
