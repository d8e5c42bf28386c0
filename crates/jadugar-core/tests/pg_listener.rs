//! A listener keeps its connection outside the pool queries share.

use std::time::Duration;

use jadugar_core::storage::{Database, DatabaseOptions, pg_listener};
use jadugar_core::test_support::TestPostgres;

#[tokio::test]
async fn listeners_do_not_take_the_pools_connections() {
    let Some(pg) = TestPostgres::new().await else {
        return;
    };
    let options = DatabaseOptions {
        max_connections: 1,
        acquire_timeout: Duration::from_millis(500),
        schema: Some(pg.schema().to_owned()),
    };
    let Database::Postgres(pool) = Database::connect(pg.url(), &options).await.unwrap() else {
        panic!("a postgres URL gives a Postgres pool");
    };
    let mut first = pg_listener(&pool).await.unwrap();
    let mut second = pg_listener(&pool).await.unwrap();
    first.listen("jadugar_listener_test").await.unwrap();
    second.listen("jadugar_listener_test").await.unwrap();

    // The one pooled connection is still free for queries, which notify.
    sqlx::query("SELECT pg_notify('jadugar_listener_test', current_schema())")
        .execute(&pool)
        .await
        .unwrap();
    for listener in [&mut first, &mut second] {
        let note = tokio::time::timeout(Duration::from_secs(5), listener.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(note.payload(), pg.schema());
    }
}
