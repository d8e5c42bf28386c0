//! The store conformance suite on every backend.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use jadugar_core::test_support::{TestPostgres, TestSqlite};
use jadugar_tracking::store::{MemoryStore, SqlStore, conformance};

#[tokio::test]
async fn memory() {
    conformance::run(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn sqlite() {
    let db = TestSqlite::new().await;
    let store = SqlStore::new(db.database().clone());
    store.migrate().await.unwrap();
    conformance::run(Arc::new(store)).await;
}

#[tokio::test]
async fn postgres() {
    let Some(pg) = TestPostgres::new().await else {
        return;
    };
    let store = SqlStore::new(pg.database().clone());
    store.migrate().await.unwrap();
    conformance::run(Arc::new(store)).await;
}
