//! The host started through the library `run` on an ephemeral port.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use jadugar_core::storage::{Database, DatabaseOptions};
use jadugar_core::test_support::{TestPostgres, TestRedis};
use jadugar_core::{MasterKey, Sealer, SystemClock};
use jadugar_host::config::{Secret, TlsConfig};
use jadugar_host::{App, Backends, commands};

use common::{config_in, serve, start};

#[tokio::test]
async fn zero_config_sqlite_answers_health_and_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path());
    let host = start(config).await;

    let res = reqwest::get(host.url("/healthz")).await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers().contains_key("x-request-id"));
    let res = reqwest::get(host.url("/readyz")).await.unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["checks"]["database"], "up");

    let data = dir.path().join("data");
    assert!(data.join("jadugar.db").is_file(), "the SQLite file exists");
    let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the data directory is private");

    host.shutdown().await.unwrap();
}

#[tokio::test]
async fn request_ids_problems_openapi_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(config_in(dir.path())).await;
    let client = reqwest::Client::new();

    // A caller's request id is kept.
    let res = client
        .get(host.url("/healthz"))
        .header("x-request-id", "trace-me-1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "trace-me-1");

    // Unknown paths are problems carrying the request id.
    let res = client
        .get(host.url("/v1/nothing/here"))
        .header("x-request-id", "trace-me-2")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let problem: serde_json::Value = res.json().await.unwrap();
    assert_eq!(problem["request_id"], "trace-me-2");
    assert_eq!(problem["type"], "https://jadugar.dev/problems/not-found");

    // One OpenAPI 3.1 document with the host's paths.
    let doc: serde_json::Value = client
        .get(host.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert!(doc["paths"][path].is_object(), "{path} is documented");
    }

    // Requests are counted, by route pattern.
    let text = host.text("/metrics").await;
    assert!(text.contains("http_requests_total"), "{text}");
    assert!(text.contains("route=\"/healthz\""), "{text}");
    assert!(text.contains("http_request_duration_seconds"), "{text}");

    host.shutdown().await.unwrap();
}

fn sqlite_backends_config(dir: &std::path::Path) -> jadugar_host::Config {
    let mut config = config_in(dir);
    config.master_key = Some(Secret::new(MasterKey::generate("test").to_text()));
    config
}

#[tokio::test]
async fn readyz_is_503_naming_the_database_when_it_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let config = sqlite_backends_config(dir.path());
    // A Postgres nobody listens on, connected lazily: the host starts, the
    // database is down.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy("postgres://postgres@127.0.0.1:1/nowhere")
        .unwrap();
    let backends = Backends {
        database: Database::Postgres(pool),
        redis: None,
        clock: SystemClock::shared(),
        sealer: Sealer::new(MasterKey::generate("t"), []),
    };
    let host = serve(App::builder(config, backends).build()).await;
    let res = reqwest::get(host.url("/readyz")).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let problem: serde_json::Value = res.json().await.unwrap();
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("database (postgres)"), "{detail}");
    // Alive all the same.
    assert_eq!(
        reqwest::get(host.url("/healthz")).await.unwrap().status(),
        200
    );
    host.shutdown().await.unwrap();
}

#[tokio::test]
async fn readyz_turns_503_when_the_sqlite_pool_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let app = jadugar_host::build(config_in(dir.path())).await.unwrap();
    let database = app.backends().database.clone();
    let host = serve(app).await;
    assert_eq!(
        reqwest::get(host.url("/readyz")).await.unwrap().status(),
        200
    );
    database.close().await;
    let res = reqwest::get(host.url("/readyz")).await.unwrap();
    assert_eq!(res.status(), 503);
    let problem: serde_json::Value = res.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("database (sqlite)"),
        "{problem}"
    );
    host.shutdown().await.unwrap();
}

#[tokio::test]
async fn postgres_and_redis_readiness() {
    let Some(pg) = TestPostgres::new().await else {
        return;
    };
    let Some(redis) = TestRedis::new().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_in(dir.path());
    config.database_url = Some(pg.url().to_owned());
    config.database_schema = Some(pg.schema().to_owned());
    config.database_max_connections = 2;
    config.redis_url = Some(redis.url().to_owned());
    config.redis_prefix = redis.redis().prefix().to_owned();
    config.master_key = Some(Secret::new(MasterKey::generate("pg").to_text()));
    let host = start(config).await;
    let res = reqwest::get(host.url("/readyz")).await.unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["checks"]["database"], "up");
    assert_eq!(body["checks"]["redis"], "up");
    assert!(
        !dir.path().join("data").exists(),
        "nothing is written locally when Postgres and the master key are configured"
    );
    host.shutdown().await.unwrap();
}

#[tokio::test]
async fn postgres_without_a_master_key_is_refused() {
    let Some(pg) = TestPostgres::new().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_in(dir.path());
    config.database_url = Some(pg.url().to_owned());
    config.database_schema = Some(pg.schema().to_owned());
    let err = jadugar_host::build(config).await.unwrap_err();
    assert!(err.to_string().contains("JADUGAR_MASTER_KEY"), "{err}");
}

#[tokio::test]
async fn a_slow_request_in_flight_at_shutdown_completes() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path());
    let backends = Backends::open(&config).await.unwrap();
    // A test-only route, mounted the way a component mounts its own.
    let slow = Router::new().route(
        "/v1/test/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            "done"
        }),
    );
    let app = App::builder(config, backends)
        .mount("test", slow, Default::default())
        .build();
    let mut host = serve(app).await;
    let url = host.url("/v1/test/slow");
    let request = tokio::spawn(async move { reqwest::get(url).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(100)).await;

    host.signal();
    let addr = host.addr;
    // Stops accepting promptly...
    let mut refused = false;
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "new connections are refused after the signal");
    // ...yet the request in flight completes.
    let res = request.await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "done");
    host.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn background_tasks_are_cancelled_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path());
    let backends = Backends::open(&config).await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let app = App::builder(config, backends)
        .background(move |token| {
            vec![tokio::spawn(async move {
                token.cancelled().await;
                let _ = tx.send("stopped");
            })]
        })
        .build();
    let host = serve(app).await;
    host.shutdown().await.unwrap();
    assert_eq!(rx.await.unwrap(), "stopped");
}

#[tokio::test]
async fn oversized_bodies_are_413_problems() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_in(dir.path());
    config.body_limit_bytes = 16;
    let backends = Backends::open(&config).await.unwrap();
    let echo = Router::new().route(
        "/v1/test/echo",
        axum::routing::post(|body: String| async move { body }),
    );
    let app = App::builder(config, backends)
        .mount("test", echo, Default::default())
        .build();
    let host = serve(app).await;
    let client = reqwest::Client::new();
    let ok = client
        .post(host.url("/v1/test/echo"))
        .body("small")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let res = client
        .post(host.url("/v1/test/echo"))
        .body("x".repeat(1000))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    // Without a declared length (chunked), the body is cut at the limit.
    let chunks = vec!["x".repeat(10).into_bytes(), "y".repeat(10).into_bytes()];
    let res = post_chunked(&client, &host.url("/v1/test/echo"), chunks).await;
    assert_eq!(res.status(), 413);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    // A wrong method is a problem too, naming what is allowed.
    let res = client.get(host.url("/v1/test/echo")).send().await.unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(res.headers()["allow"], "POST");
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    host.shutdown().await.unwrap();
}

#[tokio::test]
async fn slow_handlers_time_out_as_problems() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_in(dir.path());
    config.request_timeout_secs = 1;
    let backends = Backends::open(&config).await.unwrap();
    let stuck = Router::new().route(
        "/v1/test/stuck",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            "never"
        }),
    );
    // A component with waits of its own (a blocking query) asks for more.
    let patient = Router::new().route(
        "/v1/patient/wait",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(1200)).await;
            "waited"
        }),
    );
    let app = App::builder(config, backends)
        .mount("test", stuck, Default::default())
        .mount_with_timeout(
            "patient",
            patient,
            Default::default(),
            Duration::from_secs(5),
        )
        .build();
    let call = |path: &'static str| {
        tower::ServiceExt::oneshot(
            app.service(),
            http::Request::get(path)
                .body(axum::body::Body::empty())
                .unwrap(),
        )
    };
    let (stuck, patient) = tokio::join!(call("/v1/test/stuck"), call("/v1/patient/wait"));
    let stuck = stuck.unwrap();
    assert_eq!(stuck.status(), 503);
    assert_eq!(stuck.headers()["content-type"], "application/problem+json");
    assert_eq!(patient.unwrap().status(), 200);
}

#[tokio::test]
async fn the_gateway_fallback_never_sees_reserved_paths() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path());
    let backends = Backends::open(&config).await.unwrap();
    // The gateway's own responses (here an upstream's bare 413) pass
    // through untouched.
    let gateway = Router::new()
        .route(
            "/upload",
            axum::routing::post(|| async {
                (http::StatusCode::PAYLOAD_TOO_LARGE, "upstream says no")
            }),
        )
        .fallback(|| async { "from the gateway" });
    let app = App::builder(config, backends)
        .fallback(tower::util::BoxCloneSyncService::new(gateway))
        .build();
    let host = serve(app).await;
    let res = reqwest::get(host.url("/shop/cart")).await.unwrap();
    assert_eq!(res.text().await.unwrap(), "from the gateway");
    let res = reqwest::Client::new()
        .post(host.url("/upload"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    assert_eq!(res.text().await.unwrap(), "upstream says no");
    for path in ["/v1/unknown", "/.well-known/nothing", "/docs/x"] {
        let res = reqwest::get(host.url(path)).await.unwrap();
        assert_eq!(res.status(), 404, "{path}");
    }
    host.shutdown().await.unwrap();
}

/// A handler with a bug.
async fn boom() -> &'static str {
    panic!("handler bug")
}

#[tokio::test]
async fn panics_become_500_problems_and_requests_are_counted_by_route() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path());
    let backends = Backends::open(&config).await.unwrap();
    let component = Router::new()
        .route("/v1/demo/items/{id}", get(|| async { "item" }))
        .route("/v1/demo/boom", get(boom));
    let gateway = Router::new()
        .route("/shop/boom", get(boom))
        .fallback(|| async { "from the gateway" });
    let app = App::builder(config, backends)
        .mount("demo", component, Default::default())
        .fallback(tower::util::BoxCloneSyncService::new(gateway))
        .build();
    let host = serve(app).await;
    let client = reqwest::Client::new();

    for path in ["/v1/demo/boom", "/shop/boom"] {
        let res = client
            .get(host.url(path))
            .header("x-request-id", "boom-1")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 500, "{path}");
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        assert_eq!(res.headers()["x-request-id"], "boom-1");
    }
    // The connection and the host live on.
    for _ in 0..2 {
        let res = client
            .get(host.url("/v1/demo/items/7"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.text().await.unwrap(), "item");
        let res = client.get(host.url("/shop/cart")).send().await.unwrap();
        assert_eq!(res.text().await.unwrap(), "from the gateway");
    }

    // Component routes are labelled by pattern, proxied requests
    // `unmatched` (never by raw path: the label set stays bounded).
    let text = host.text("/metrics").await;
    let count = |route: &str, status: &str| {
        text.lines()
            .find(|line| {
                line.starts_with("http_requests_total{")
                    && line.contains(&format!("route=\"{route}\""))
                    && line.contains(&format!("status=\"{status}\""))
            })
            .and_then(|line| line.rsplit(' ').next())
            .map(|n| n.parse::<u64>().unwrap())
    };
    assert_eq!(count("/v1/demo/items/{id}", "200"), Some(2), "{text}");
    assert_eq!(count("/v1/demo/boom", "500"), Some(1), "{text}");
    assert!(count("unmatched", "200").is_some_and(|n| n >= 2), "{text}");
    assert!(!text.contains("/shop/cart"), "{text}");
    assert!(!text.contains("/v1/demo/items/7"), "{text}");

    host.shutdown().await.unwrap();
}

#[tokio::test]
async fn master_key_is_generated_private_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path());
    let first = Backends::open(&config).await.unwrap();
    let sealed = first.sealer.seal(b"webhook secret", b"row-1");
    first.close().await;

    let path = config.master_key_path();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let second = Backends::open(&config).await.unwrap();
    assert_eq!(second.sealer.primary_id(), first.sealer.primary_id());
    assert_eq!(
        second.sealer.open(&sealed, b"row-1").unwrap(),
        b"webhook secret"
    );
    second.close().await;

    // Rotation: a new primary key from the environment, the generated one
    // listed as old, still opens what it sealed.
    let old = std::fs::read_to_string(&path).unwrap();
    let mut rotated = config.clone();
    rotated.master_key = Some(Secret::new(MasterKey::generate("k-new").to_text()));
    rotated.old_master_keys = vec![Secret::new(old.trim())];
    let third = Backends::open(&rotated).await.unwrap();
    assert_eq!(third.sealer.primary_id(), "k-new");
    assert!(third.sealer.needs_reseal(&sealed));
    assert_eq!(
        third.sealer.open(&sealed, b"row-1").unwrap(),
        b"webhook secret"
    );
    third.close().await;
}

#[tokio::test]
async fn backup_while_serving_is_a_valid_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path());
    let host = start(config.clone()).await;

    let Database::Sqlite(pool) = Database::connect(
        &config.effective_database_url(),
        &DatabaseOptions::default(),
    )
    .await
    .unwrap() else {
        panic!("not sqlite")
    };
    sqlx::query("CREATE TABLE notes (body TEXT)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO notes VALUES ('kept')")
        .execute(&pool)
        .await
        .unwrap();

    let dest = dir.path().join("backup.db");
    let bytes = commands::backup(&config, &dest).await.unwrap();
    assert!(bytes > 0);
    // The host kept serving throughout.
    assert_eq!(
        reqwest::get(host.url("/readyz")).await.unwrap().status(),
        200
    );
    // A second backup to the same file is refused, not overwritten.
    assert!(commands::backup(&config, &dest).await.is_err());

    let copy = Database::connect(
        &format!("sqlite://{}", dest.display()),
        &DatabaseOptions::default(),
    )
    .await
    .unwrap();
    let Database::Sqlite(copy) = copy else {
        panic!()
    };
    let (check,): (String,) = sqlx::query_as("PRAGMA integrity_check")
        .fetch_one(&copy)
        .await
        .unwrap();
    assert_eq!(check, "ok");
    let (body,): (String,) = sqlx::query_as("SELECT body FROM notes")
        .fetch_one(&copy)
        .await
        .unwrap();
    assert_eq!(body, "kept");
    pool.close().await;
    host.shutdown().await.unwrap();
}

#[tokio::test]
async fn backup_of_postgres_points_to_pg_dump() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_in(dir.path());
    config.database_url = Some("postgres://app:hunter2@db.internal/jadugar".into());
    let err = commands::backup(&config, &dir.path().join("b.db"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("pg_dump"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[tokio::test]
async fn migrate_on_sqlite_and_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path());
    commands::migrate(&config).await.unwrap();
    assert!(config.default_database_path().is_file());

    let Some(pg) = TestPostgres::new().await else {
        return;
    };
    let mut config = config_in(dir.path());
    config.database_url = Some(pg.url().to_owned());
    config.database_schema = Some(pg.schema().to_owned());
    config.database_max_connections = 2;
    // Idempotent: twice is fine.
    let first = commands::migrate(&config).await.unwrap();
    let second = commands::migrate(&config).await.unwrap();
    assert_eq!(first, second);
}

#[tokio::test]
async fn https_when_tls_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut config = config_in(dir.path());
    config.tls = TlsConfig {
        cert: Some(fixtures.join("localhost.crt")),
        key: Some(fixtures.join("localhost.key")),
    };
    let app = jadugar_host::build(config).await.unwrap();
    let host = serve(app).await;
    let ca =
        reqwest::Certificate::from_pem(&std::fs::read(fixtures.join("localhost.crt")).unwrap())
            .unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/healthz", host.addr.port());
    let res = client.get(&url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    // Plain HTTP on the TLS port gets nowhere.
    assert!(reqwest::get(host.url("/healthz")).await.is_err());
    host.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_tls_files_are_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_in(dir.path());
    config.tls = TlsConfig {
        cert: Some(dir.path().join("missing.crt")),
        key: Some(dir.path().join("missing.key")),
    };
    let app = jadugar_host::build(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = app.serve(listener, async {}).await.unwrap_err().to_string();
    assert!(err.starts_with("TLS: certificate"), "{err}");
    assert!(err.contains("missing.crt"), "{err}");
}

#[tokio::test]
async fn handlers_see_the_peer_address() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path());
    let backends = Backends::open(&config).await.unwrap();
    let peer =
        Router::new().route(
            "/v1/test/peer",
            get(
                |axum::extract::ConnectInfo(addr): axum::extract::ConnectInfo<
                    std::net::SocketAddr,
                >| async move { addr.ip().to_string() },
            ),
        );
    let app = App::builder(config, backends)
        .mount("test", peer, Default::default())
        .build();
    let host = serve(app).await;
    let res = reqwest::get(host.url("/v1/test/peer")).await.unwrap();
    assert_eq!(res.text().await.unwrap(), "127.0.0.1");
    host.shutdown().await.unwrap();
}

#[tokio::test]
async fn plain_http_serves_keep_alive_h2c_and_large_uploads() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_in(dir.path());
    config.body_limit_bytes = 1 << 20;
    let backends = Backends::open(&config).await.unwrap();
    let echo = Router::new().route(
        "/v1/test/echo",
        axum::routing::post(|body: axum::body::Bytes| async move { body.len().to_string() }),
    );
    let app = App::builder(config, backends)
        .mount("test", echo, Default::default())
        .build();
    let host = serve(app).await;

    // HTTP/1.1 keep-alive: several requests on one connection, peer known.
    let mut stream = tokio::net::TcpStream::connect(host.addr).await.unwrap();
    for _ in 0..3 {
        let head = b"GET /healthz HTTP/1.1\r\nhost: test\r\n\r\n";
        tokio::io::AsyncWriteExt::write_all(&mut stream, head)
            .await
            .unwrap();
        let response = read_response(&mut stream).await;
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.contains("x-request-id: "), "{response}");
    }

    // HTTP/2 with prior knowledge is handed to hyper.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let res = h2.get(host.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), reqwest::Version::HTTP_2);

    // A body above what the own loop buffers (64 KiB) and a chunked one
    // reach the handler whole.
    let client = reqwest::Client::new();
    let large = vec![b'x'; 200 * 1024];
    let res = client
        .post(host.url("/v1/test/echo"))
        .body(large)
        .send()
        .await
        .unwrap();
    assert_eq!(res.text().await.unwrap(), (200 * 1024).to_string());
    let chunks = (0..100).map(|_| vec![b'a'; 1000]).collect();
    let res = post_chunked(&client, &host.url("/v1/test/echo"), chunks).await;
    assert_eq!(res.text().await.unwrap(), "100000");
    host.shutdown().await.unwrap();
}

/// Reads one HTTP/1.1 response with a `content-length` from `stream`.
async fn read_response(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt as _;
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "connection closed early");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse::<usize>().unwrap());
            if buf.len() >= end + 4 + length {
                return text;
            }
        }
    }
}

/// POSTs `chunks` to `url` as a body of unknown length (chunked).
async fn post_chunked(
    client: &reqwest::Client,
    url: &str,
    chunks: Vec<Vec<u8>>,
) -> reqwest::Response {
    let stream = futures_util::stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>));
    client
        .post(url)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap()
}
