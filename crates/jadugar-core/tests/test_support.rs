//! Two tests running at once on the shared backends never see each other's
//! rows or keys.
#![cfg(feature = "test-support")]
#![allow(clippy::unwrap_used)]

use jadugar_core::storage::Database;
use jadugar_core::test_support::{TestPostgres, TestRedis, TestSqlite};

#[tokio::test]
async fn postgres_schemas_are_isolated() {
    let (Some(a), Some(b)) = (TestPostgres::new().await, TestPostgres::new().await) else {
        return;
    };
    assert_ne!(a.schema(), b.schema());
    for pg in [&a, &b] {
        let Database::Postgres(pool) = pg.database() else {
            panic!("not postgres")
        };
        sqlx::query("CREATE TABLE items (name TEXT)")
            .execute(pool)
            .await
            .unwrap();
    }
    let Database::Postgres(pool_a) = a.database() else {
        panic!()
    };
    let Database::Postgres(pool_b) = b.database() else {
        panic!()
    };
    sqlx::query("INSERT INTO items VALUES ('from a')")
        .execute(pool_a)
        .await
        .unwrap();
    let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM items")
        .fetch_one(pool_b)
        .await
        .unwrap();
    assert_eq!(count, 0, "b must not see a's row");

    // A second pool on the same schema, as a second host, sees it.
    let Database::Postgres(again) = a.connect_another().await else {
        panic!()
    };
    let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM items")
        .fetch_one(&again)
        .await
        .unwrap();
    assert_eq!(count, 1);

    let schema = a.schema().to_owned();
    drop(a);
    let (exists,): (bool,) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM information_schema.schemata WHERE schema_name = $1)",
    )
    .bind(&schema)
    .fetch_one(pool_b)
    .await
    .unwrap();
    assert!(!exists, "the schema is dropped with its TestPostgres");
}

#[tokio::test]
async fn redis_prefixes_are_isolated() {
    let (Some(a), Some(b)) = (TestRedis::new().await, TestRedis::new().await) else {
        return;
    };
    let mut conn_a = a.redis().connection();
    let mut conn_b = b.redis().connection();
    let _: () = redis::cmd("SET")
        .arg(a.redis().key("k"))
        .arg("a")
        .query_async(&mut conn_a)
        .await
        .unwrap();
    let seen: Option<String> = redis::cmd("GET")
        .arg(b.redis().key("k"))
        .query_async(&mut conn_b)
        .await
        .unwrap();
    assert_eq!(seen, None);
    let key = a.redis().key("k");
    drop(a);
    let left: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn_b)
        .await
        .unwrap();
    assert_eq!(left, None, "keys are deleted with their TestRedis");
}

#[tokio::test]
async fn sqlite_files_are_isolated() {
    let a = TestSqlite::new().await;
    let b = TestSqlite::new().await;
    assert_ne!(a.url(), b.url());
    let Database::Sqlite(pool) = a.database() else {
        panic!()
    };
    sqlx::query("CREATE TABLE t (x INTEGER)")
        .execute(pool)
        .await
        .unwrap();
    let Database::Sqlite(pool_b) = b.database() else {
        panic!()
    };
    assert!(
        sqlx::query("SELECT * FROM t")
            .execute(pool_b)
            .await
            .is_err()
    );
    let (mode,): (String,) = sqlx::query_as("PRAGMA journal_mode")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    let (fk,): (i64,) = sqlx::query_as("PRAGMA foreign_keys")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(fk, 1);
}
