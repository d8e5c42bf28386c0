//! Tracking benchmarks: create-task throughput and p99 (SQLite, Postgres;
//! outbox write included), a filtered task list over many tasks on Postgres
//! (p99 and the query plan), and webhook dispatcher throughput to a local
//! receiver.
//!
//! ```text
//! JADUGAR_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
//! TRACKING_BENCH_TASKS=1000000 \
//!   cargo bench -p jadugar-tracking --bench tracking
//! ```
//!
//! `TRACKING_BENCH_TASKS` is how many tasks the list benchmark seeds
//! (default 1,000,000, by one server-side `INSERT ... SELECT` from
//! `generate_series`). Without a Postgres URL the Postgres parts are skipped.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use criterion::Criterion;
use jadugar_core::storage::{Database, DatabaseOptions};
use jadugar_core::{MasterKey, Principal, PrincipalKind, Sealer, SystemClock};
use jadugar_tracking::model::*;
use jadugar_tracking::store::{SqlStore, TrackingStore, Write};
use jadugar_tracking::{Config, Tracking};

fn admin() -> Principal {
    Principal::new("bench", PrincipalKind::User).with_permissions(["tracking:admin"])
}

fn sealer() -> Sealer {
    Sealer::new(MasterKey::new("k", [3; 32]), [])
}

fn config() -> Config {
    Config {
        allow_loopback_targets: true,
        webhook_batch: 128,
        ..Config::default()
    }
}

fn report(name: &str, mut lat: Vec<Duration>, total: Duration) {
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "{name}: n={} throughput={:.0}/s p50={:.2}ms p99={:.2}ms max={:.2}ms",
        lat.len(),
        lat.len() as f64 / total.as_secs_f64(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}

async fn postgres_schema(url: &str, name: &str) -> Database {
    let admin = Database::connect(url, &DatabaseOptions::default())
        .await
        .unwrap();
    if let Database::Postgres(pool) = &admin {
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
            .execute(pool)
            .await
            .unwrap();
        sqlx::query(&format!("CREATE SCHEMA {name}"))
            .execute(pool)
            .await
            .unwrap();
    }
    admin.close().await;
    Database::connect(
        url,
        &DatabaseOptions {
            schema: Some(name.into()),
            max_connections: 16,
            ..DatabaseOptions::default()
        },
    )
    .await
    .unwrap()
}

async fn tracking_with_hook(db: &Database) -> (Tracking, ProjectId) {
    let t = Tracking::from_backends(&config(), db, None, SystemClock::shared(), sealer())
        .await
        .unwrap();
    let p = t
        .create_project(
            &admin(),
            NewProject {
                name: "bench".into(),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap()
        .0;
    // One subscription, so every create also writes a delivery in the outbox.
    t.create_webhook(
        &admin(),
        p.id,
        NewWebhook {
            url: "http://127.0.0.1:9/none".into(),
            event_types: vec!["*".into()],
            description: String::new(),
        },
    )
    .await
    .unwrap();
    (t, p.id)
}

fn new_task(i: usize) -> NewTask {
    NewTask {
        title: format!("Benchmark task {i}"),
        labels: vec!["bench".into()],
        assignees: vec!["bench".into()],
        estimate: Some(3),
        ..Default::default()
    }
}

/// Create-task latency distribution with `concurrency` writers.
async fn create_load(name: &str, t: &Tracking, p: ProjectId, n: usize, concurrency: usize) {
    let start = Instant::now();
    let mut handles = Vec::new();
    for w in 0..concurrency {
        let t = t.clone();
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(n / concurrency);
            for i in 0..n / concurrency {
                let s = Instant::now();
                t.create_task(&admin(), p, new_task(w * n + i), None)
                    .await
                    .unwrap();
                lat.push(s.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    report(name, all, start.elapsed());
}

fn bench_create(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let db = rt
        .block_on(Database::connect(&url, &DatabaseOptions::default()))
        .unwrap();
    let (t, p) = rt.block_on(tracking_with_hook(&db));
    let mut i = 0usize;
    c.bench_function("create_task/sqlite", |b| {
        b.to_async(rt).iter(|| {
            i += 1;
            let t = t.clone();
            async move { t.create_task(&admin(), p, new_task(i), None).await.unwrap() }
        })
    });
    rt.block_on(create_load("create_task/sqlite/1-writer", &t, p, 2_000, 1));
    rt.block_on(create_load("create_task/sqlite/8-writers", &t, p, 2_000, 8));

    if let Ok(pg) = std::env::var("JADUGAR_TEST_POSTGRES_URL") {
        let db = rt.block_on(postgres_schema(&pg, "trk_bench_create"));
        let (t, p) = rt.block_on(tracking_with_hook(&db));
        c.bench_function("create_task/postgres", |b| {
            b.to_async(rt).iter(|| {
                i += 1;
                let t = t.clone();
                async move { t.create_task(&admin(), p, new_task(i), None).await.unwrap() }
            })
        });
        rt.block_on(create_load(
            "create_task/postgres/1-writer",
            &t,
            p,
            2_000,
            1,
        ));
        rt.block_on(create_load(
            "create_task/postgres/8-writers",
            &t,
            p,
            4_000,
            8,
        ));
    } else {
        println!("SKIPPED postgres create bench: JADUGAR_TEST_POSTGRES_URL is not set");
    }
}

/// Seeds `n` tasks over 100 projects with one server-side statement.
async fn seed(db: &Database, n: usize) -> Vec<ProjectId> {
    let Database::Postgres(pool) = db else {
        unreachable!()
    };
    let projects: Vec<ProjectId> = (0..100).map(|_| ProjectId::new()).collect();
    let mut writes = Vec::new();
    for id in &projects {
        let now = chrono::Utc::now();
        writes.push(Write::Project {
            project: Box::new(Project {
                id: *id,
                name: "seeded".into(),
                description: String::new(),
                workflow: Workflow::default(),
                created_by: "bench".into(),
                created_at: now,
                updated_at: now,
                version: 1,
            }),
            expected_version: None,
        });
    }
    SqlStore::new(db.clone()).commit(writes).await.unwrap();
    let ids: Vec<String> = projects.iter().map(ToString::to_string).collect();
    let started = Instant::now();
    sqlx::query(
        r#"
        WITH src AS (
            SELECT g,
                   gen_random_uuid()::text AS id,
                   ($1::text[])[1 + g % 100] AS project_id,
                   (ARRAY['backlog','todo','in_progress','in_review','done','canceled'])[1 + (g / 100) % 6] AS status,
                   (ARRAY['backlog','unstarted','started','started','completed','canceled'])[1 + (g / 100) % 6] AS category,
                   (g / 7) % 5 AS priority,
                   1700000000000000::bigint + g::bigint * 1000 AS created_us
            FROM generate_series(1, $2::int) AS g
        )
        INSERT INTO trk_tasks (id, project_id, milestone_id, parent_id, status, category, prio_key, estimate, due_date, title_lower, created_us, updated_us, version, doc)
        SELECT id, project_id, NULL, NULL, status, category, -priority, 0, NULL, 'seeded task ' || g, created_us, created_us, 1,
               json_build_object(
                   'id', id, 'project_id', project_id, 'milestone_id', NULL, 'parent_id', NULL,
                   'title', 'Seeded task ' || g, 'description', '',
                   'priority', (ARRAY['none','low','medium','high','urgent'])[1 + priority],
                   'estimate', NULL, 'due_date', NULL, 'labels', '[]'::json, 'blocked_by', '[]'::json,
                   'status', status, 'category', category, 'assignees', '[]'::json,
                   'created_by', 'seed', 'updated_by', 'seed',
                   'created_at', to_char(to_timestamp(created_us / 1000000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                   'updated_at', to_char(to_timestamp(created_us / 1000000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                   'version', 1
               )::text
        FROM src
        "#,
    )
    .bind(&ids)
    .bind(i32::try_from(n).unwrap())
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO trk_task_tags (kind, value, task_id) SELECT 'a', 'user' || (abs(hashtext(id)) % 1000), id FROM trk_tasks WHERE abs(hashtext(id)) % 10 = 0")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("ANALYZE").execute(pool).await.unwrap();
    println!(
        "seeded {n} tasks in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    projects
}

async fn list_load(db: &Database, n: usize) {
    let Database::Postgres(pool) = db else {
        unreachable!()
    };
    let projects = seed(db, n).await;
    let t = Tracking::new(
        Arc::new(SqlStore::new(db.clone())),
        SystemClock::shared(),
        sealer(),
        config(),
    );
    let statuses = [
        "backlog",
        "todo",
        "in_progress",
        "in_review",
        "done",
        "canceled",
    ];
    for (name, make) in [
        ("project+status", 0),
        ("project+status, page 2", 1),
        ("project+category+priority", 2),
        ("all projects, assignee", 3),
    ] {
        let mut lat = Vec::new();
        let start = Instant::now();
        for i in 0..500usize {
            let mut f = TaskFilter {
                limit: Some(50),
                ..Default::default()
            };
            match make {
                0 | 1 => {
                    f.project_id = Some(projects[i % projects.len()]);
                    f.status = Some(statuses[i % statuses.len()].into());
                }
                2 => {
                    f.project_id = Some(projects[i % projects.len()]);
                    f.category = Some(Category::Started);
                    f.priority = Some(Priority::High);
                }
                // The seed tags ~10% of tasks with user0, user10, ... user990.
                _ => f.assignee = Some(format!("user{}", (i % 100) * 10)),
            }
            if make == 1 {
                let first = t.list_tasks(&admin(), f.clone()).await.unwrap();
                f.cursor = first.next_cursor;
            }
            let s = Instant::now();
            let page = t.list_tasks(&admin(), f).await.unwrap();
            lat.push(s.elapsed());
            assert!(page.items.len() <= 50);
        }
        report(
            &format!("list_tasks/postgres/{n} tasks/{name}"),
            lat,
            start.elapsed(),
        );
    }
    // The position after the first page of (project 0, "todo"), for the
    // page-2 plan.
    let (after_key, after_id): (i64, String) = sqlx::query_as(
        "SELECT created_us, id FROM trk_tasks WHERE project_id = $1 AND status = 'todo' \
         ORDER BY created_us, id OFFSET 50 LIMIT 1",
    )
    .bind(projects[0].to_string())
    .fetch_one(pool)
    .await
    .unwrap();
    for (label, sql, arg) in [
        (
            "project+status",
            "SELECT t.doc FROM trk_tasks t WHERE 1 = 1 AND t.project_id = $1 AND t.status = $2 ORDER BY t.created_us, t.id LIMIT $3",
            "todo",
        ),
        (
            "project+status, page 2",
            "SELECT t.doc FROM trk_tasks t WHERE 1 = 1 AND t.project_id = $1 AND t.status = $2 AND (t.created_us, t.id) > ($4::bigint, $5) ORDER BY t.created_us, t.id LIMIT $3",
            "todo",
        ),
        (
            "project+category+priority",
            "SELECT t.doc FROM trk_tasks t WHERE 1 = 1 AND t.project_id = $1 AND t.category = $2 AND t.prio_key = -3 ORDER BY t.created_us, t.id LIMIT $3",
            "started",
        ),
        (
            "all projects, assignee",
            "SELECT t.doc FROM trk_tasks t WHERE 1 = 1 AND EXISTS (SELECT 1 FROM trk_task_tags g WHERE g.kind = 'a' AND g.value = $2 AND g.task_id = t.id) AND t.project_id <> $1 ORDER BY t.created_us, t.id LIMIT $3",
            "user10",
        ),
    ] {
        let text = format!("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {sql}");
        let mut q = sqlx::query_as::<_, (String,)>(&text)
            .bind(projects[0].to_string())
            .bind(arg)
            .bind(51i64);
        if sql.contains("$4") {
            q = q.bind(after_key.to_string()).bind(after_id.clone());
        }
        let rows = q.fetch_all(pool).await.unwrap();
        println!("plan ({label}):");
        for (line,) in rows {
            println!("    {line}");
        }
    }
}

async fn receiver() -> String {
    let app = Router::new().route("/hook/{n}", post(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/hook")
}

/// Queues `events` events for `endpoints` webhooks and times the
/// dispatcher(s) delivering all of them.
async fn dispatch_load(
    name: &str,
    db: &Database,
    endpoints: usize,
    events: usize,
    dispatchers: usize,
) {
    let url = receiver().await;
    let t = Tracking::from_backends(&config(), db, None, SystemClock::shared(), sealer())
        .await
        .unwrap();
    let p = t
        .create_project(
            &admin(),
            NewProject {
                name: "d".into(),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap()
        .0;
    let mut hooks = Vec::new();
    for i in 0..endpoints {
        hooks.push(
            t.create_webhook(
                &admin(),
                p.id,
                NewWebhook {
                    url: format!("{url}/{i}"),
                    event_types: vec!["*".into()],
                    description: String::new(),
                },
            )
            .await
            .unwrap()
            .webhook
            .id,
        );
    }
    let now = chrono::Utc::now();
    for chunk in 0..events / 100 {
        let mut writes = Vec::new();
        for k in 0..100 {
            let event = OutboxEvent {
                id: EventId::new(),
                project_id: p.id,
                event_type: "task.updated".into(),
                payload: format!(
                    "{{\"type\":\"task.updated\",\"data\":{{\"n\":{}}}}}",
                    chunk * 100 + k
                ),
                created_at: now,
            };
            let deliveries = hooks
                .iter()
                .map(|h| Delivery {
                    id: DeliveryId::new(),
                    webhook_id: *h,
                    event_id: event.id,
                    event_type: event.event_type.clone(),
                    state: DeliveryState::Pending,
                    attempts: 0,
                    next_attempt_at: now,
                    created_at: now,
                    log: vec![],
                })
                .collect();
            writes.push(Write::Event {
                event: Box::new(event),
                deliveries,
            });
        }
        t.store().commit(writes).await.unwrap();
    }
    let total = (events / 100) * 100 * endpoints;
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..dispatchers {
        let d = t.dispatcher().unwrap();
        handles.push(tokio::spawn(async move {
            let mut sent = 0;
            loop {
                let n = d.run_once().await.unwrap();
                if n == 0 {
                    break;
                }
                sent += n;
            }
            sent
        }));
    }
    let mut sent = 0;
    for h in handles {
        sent += h.await.unwrap();
    }
    let el = start.elapsed();
    assert_eq!(sent, total);
    println!(
        "{name}: {total} deliveries to {endpoints} endpoints by {dispatchers} dispatcher(s) in {:.2}s = {:.0} deliveries/s",
        el.as_secs_f64(),
        total as f64 / el.as_secs_f64()
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let only = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_default();
    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(20)
        .measurement_time(Duration::from_secs(5));
    if only.is_empty() || only.contains("create") {
        bench_create(&mut c, &rt);
    }
    if only.is_empty() || only.contains("dispatch") {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("d.db").display());
        let db = rt
            .block_on(Database::connect(&url, &DatabaseOptions::default()))
            .unwrap();
        rt.block_on(dispatch_load("dispatch/sqlite", &db, 64, 100, 1));
        if let Ok(pg) = std::env::var("JADUGAR_TEST_POSTGRES_URL") {
            let db = rt.block_on(postgres_schema(&pg, "trk_bench_dispatch"));
            rt.block_on(dispatch_load("dispatch/postgres", &db, 64, 100, 2));
        }
    }
    if only.is_empty() || only.contains("list") {
        match std::env::var("JADUGAR_TEST_POSTGRES_URL") {
            Ok(pg) => {
                let n = std::env::var("TRACKING_BENCH_TASKS")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1_000_000);
                let db = rt.block_on(postgres_schema(&pg, "trk_bench_list"));
                rt.block_on(async {
                    SqlStore::new(db.clone()).migrate().await.unwrap();
                    list_load(&db, n).await;
                });
            }
            Err(_) => println!("SKIPPED list bench: JADUGAR_TEST_POSTGRES_URL is not set"),
        }
    }
    c.final_summary();
}
