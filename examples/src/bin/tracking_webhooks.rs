//! Embeds the tracking service alone, on SQLite, and receives its own
//! signed webhooks.
//!
//! The program serves the tracking API and a webhook receiver on one
//! ephemeral port, subscribes the receiver to its project's events over the
//! API, creates and moves a task, and prints each event as it arrives once
//! its Standard Webhooks signature verifies.
//!
//! ```text
//! cargo run -p jadugar-examples --bin tracking_webhooks
//! ```
//!
//! A real deployment puts `jadugar-auth` in front of the router; here a tiny
//! middleware makes every request an administrator's.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::post;
use jadugar_core::storage::{Database, DatabaseOptions};
use jadugar_core::{MasterKey, Principal, PrincipalKind, Sealer, SystemClock};
use jadugar_tracking::webhook::{CancellationToken, verify};
use jadugar_tracking::{Config, Tracking};
use serde_json::{Value, json};
use tokio::sync::{Mutex, mpsc};

/// What the receiver needs: the secret (known once the webhook exists) and
/// where to report verified events.
#[derive(Clone)]
struct Receiver {
    secret: Arc<Mutex<Option<String>>>,
    events: mpsc::UnboundedSender<Value>,
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let Some(secret) = r.secret.lock().await.clone() else {
        return StatusCode::SERVICE_UNAVAILABLE;
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(id), Some(ts), Some(sig)) = (
        header("webhook-id"),
        header("webhook-timestamp").and_then(|t| t.parse::<i64>().ok()),
        header("webhook-signature"),
    ) else {
        return StatusCode::BAD_REQUEST;
    };
    let fresh = (chrono_now() - ts).abs() <= 300;
    if !fresh || !verify(&secret, id, ts, &body, sig) {
        return StatusCode::UNAUTHORIZED;
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(event) => {
            let _ = r.events.send(event);
            StatusCode::NO_CONTENT
        }
        Err(_) => StatusCode::BAD_REQUEST,
    }
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

async fn as_admin(mut req: Request, next: Next) -> Response {
    req.extensions_mut().insert(
        Principal::new("example-admin", PrincipalKind::User).with_permissions(["tracking:admin"]),
    );
    next.run(req).await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();

    let path = std::env::temp_dir().join(format!(
        "jadugar-tracking-example-{}.db",
        std::process::id()
    ));
    let db = Database::connect(
        &format!("sqlite://{}", path.display()),
        &DatabaseOptions::default(),
    )
    .await?;
    let config = Config {
        // The receiver is this very process, on 127.0.0.1.
        allow_loopback_targets: true,
        webhook_poll_interval_ms: 50,
        ..Config::default()
    };
    let sealer = Sealer::new(MasterKey::generate("example"), []);
    let tracking =
        Tracking::from_backends(&config, &db, None, SystemClock::shared(), sealer).await?;

    let (tx, mut events) = mpsc::unbounded_channel();
    let receiver = Receiver {
        secret: Arc::new(Mutex::new(None)),
        events: tx,
    };
    let app = jadugar_tracking::http::router(tracking.clone())
        .layer(middleware::from_fn(as_admin))
        .merge(
            Router::new()
                .route("/receiver", post(receive))
                .with_state(receiver.clone()),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let cancel = CancellationToken::new();
    let server = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { cancel.cancelled().await })
                .await
        })
    };
    let dispatcher = tracking.dispatcher()?.start(cancel.clone());
    println!(
        "tracking API at {base}/v1/tracking, database {}",
        path.display()
    );

    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: String, body: Value| {
        let http = http.clone();
        let url = format!("{base}{path}");
        async move {
            let resp = http.request(method, &url).json(&body).send().await?;
            let status = resp.status();
            let value: Value = resp.json().await.unwrap_or(Value::Null);
            if !status.is_success() {
                bail!("{url}: {status}: {value}");
            }
            anyhow::Ok(value)
        }
    };

    let project = call(
        reqwest::Method::POST,
        "/v1/tracking/projects".into(),
        json!({"name": "Example"}),
    )
    .await?;
    let pid = project["id"].as_str().context("project id")?.to_owned();
    let hook = call(
        reqwest::Method::POST,
        format!("/v1/tracking/projects/{pid}/webhooks"),
        json!({"url": format!("{base}/receiver"), "event_types": ["*"]}),
    )
    .await?;
    *receiver.secret.lock().await = hook["secret"].as_str().map(str::to_owned);
    println!(
        "subscribed {} (secret shown once: {}...)",
        hook["url"],
        &hook["secret"].as_str().unwrap_or("")[..10]
    );

    let task = call(
        reqwest::Method::POST,
        format!("/v1/tracking/projects/{pid}/tasks"),
        json!({"title": "Try the example", "priority": "high", "labels": ["demo"]}),
    )
    .await?;
    let tid = task["id"].as_str().context("task id")?.to_owned();
    call(
        reqwest::Method::PATCH,
        format!("/v1/tracking/tasks/{tid}"),
        json!({"status": "in_progress"}),
    )
    .await?;
    call(
        reqwest::Method::POST,
        format!("/v1/tracking/tasks/{tid}/comments"),
        json!({"body": "Working on it"}),
    )
    .await?;

    for _ in 0..3 {
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .context("no webhook within 10 s")?
            .context("receiver closed")?;
        println!(
            "verified webhook: {} {}",
            event["type"], event["data"]["changes"]
        );
    }

    cancel.cancel();
    for h in dispatcher {
        h.await?;
    }
    server.await??;
    db.close().await;
    let _ = std::fs::remove_file(&path);
    println!("done");
    Ok(())
}
