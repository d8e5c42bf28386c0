//! The store conformance suites on every backend.
#![cfg(feature = "test-support")]
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use jadugar_auth::store::{MemoryStore, RedisSessionStore, SqlStore, conformance};
use jadugar_core::test_support::{TestPostgres, TestRedis, TestSqlite};

// Multi-threaded: the conformance suite races guarded changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_auth_store() {
    conformance::auth_store(Arc::new(MemoryStore::default())).await;
}

#[tokio::test]
async fn memory_session_store() {
    conformance::session_store(Arc::new(MemoryStore::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_auth_store() {
    let db = TestSqlite::new().await;
    let store = SqlStore::new(db.database().clone()).await.unwrap();
    conformance::auth_store(Arc::new(store)).await;
}

#[tokio::test]
async fn sqlite_session_store() {
    let db = TestSqlite::new().await;
    let store = SqlStore::new(db.database().clone()).await.unwrap();
    conformance::session_store(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_auth_store() {
    let Some(db) = TestPostgres::new().await else {
        return;
    };
    let store = SqlStore::new(db.database().clone()).await.unwrap();
    conformance::auth_store(Arc::new(store)).await;
}

#[tokio::test]
async fn postgres_session_store() {
    let Some(db) = TestPostgres::new().await else {
        return;
    };
    let store = SqlStore::new(db.database().clone()).await.unwrap();
    conformance::session_store(Arc::new(store)).await;
}

#[tokio::test]
async fn redis_session_store() {
    let Some(redis) = TestRedis::new().await else {
        return;
    };
    conformance::session_store(Arc::new(RedisSessionStore::new(redis.redis().clone()))).await;
}

#[tokio::test]
async fn audit_log_is_append_only_in_sql() {
    let db = TestSqlite::new().await;
    let _store = SqlStore::new(db.database().clone()).await.unwrap();
    let jadugar_core::storage::Database::Sqlite(pool) = db.database() else {
        unreachable!()
    };
    sqlx::query("INSERT INTO auth_audit (id, at, action, success) VALUES ('a', 1, 'x', 1)")
        .execute(pool)
        .await
        .unwrap();
    assert!(
        sqlx::query("UPDATE auth_audit SET action = 'y'")
            .execute(pool)
            .await
            .is_err()
    );
    assert!(
        sqlx::query("DELETE FROM auth_audit")
            .execute(pool)
            .await
            .is_err()
    );
}
