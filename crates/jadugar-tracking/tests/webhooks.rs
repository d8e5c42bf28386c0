//! Webhook delivery against real local HTTP receivers.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use jadugar_core::test_support::{TestPostgres, TestSqlite};
use jadugar_core::{
    Clock, ManualClock, MasterKey, Principal, PrincipalKind, Sealer, SharedClock, SystemClock,
};
use jadugar_tracking::model::*;
use jadugar_tracking::service::MAX_WEBHOOK_SECRETS;
use jadugar_tracking::store::{MemoryStore, SqlStore, TrackingStore};
use jadugar_tracking::{Config, Tracking};

// ----- an independent Standard Webhooks verifier, written from the spec ----

/// Verifies per https://www.standardwebhooks.com/ : the signed content is
/// `{webhook-id}.{webhook-timestamp}.{body}`, the key is the base64 part of
/// `whsec_...`, the signature header is space-separated `v1,<base64>`.
fn spec_verify(secret: &str, headers: &HeaderMap, body: &[u8], now: Option<i64>) -> bool {
    use base64::Engine;
    use hmac::Mac;
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64.decode(&secret["whsec_".len()..]).unwrap();
    let id = headers["webhook-id"].to_str().unwrap();
    let ts = headers["webhook-timestamp"].to_str().unwrap();
    if let Some(now) = now {
        let ts: i64 = ts.parse().unwrap();
        if (now - ts).abs() > 300 {
            return false;
        }
    }
    let mut content = format!("{id}.{ts}.").into_bytes();
    content.extend_from_slice(body);
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(&content);
    let expected = b64.encode(mac.finalize().into_bytes());
    headers["webhook-signature"]
        .to_str()
        .unwrap()
        .split(' ')
        .filter_map(|s| s.split_once(','))
        .any(|(v, sig)| v == "v1" && sig == expected)
}

// ----- a local receiver ----------------------------------------------------

#[derive(Clone, Debug)]
struct Received {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
    /// Fail this many requests first (500, then 503 with Retry-After: 0).
    fail_first: Arc<AtomicUsize>,
    /// Fail every request while > 0.
    always_fail: Arc<AtomicUsize>,
}

async fn receive(
    State(r): State<Receiver>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, HeaderMap, &'static str) {
    let mut out = HeaderMap::new();
    if r.always_fail.load(Ordering::SeqCst) > 0 {
        return (StatusCode::INTERNAL_SERVER_ERROR, out, "down");
    }
    let left = r.fail_first.load(Ordering::SeqCst);
    if left > 0 {
        r.fail_first.store(left - 1, Ordering::SeqCst);
        if left == 1 {
            out.insert("retry-after", "0".parse().unwrap());
            return (StatusCode::SERVICE_UNAVAILABLE, out, "busy");
        }
        return (StatusCode::INTERNAL_SERVER_ERROR, out, "boom");
    }
    r.got.lock().unwrap().push(Received {
        path,
        headers,
        body,
    });
    (StatusCode::OK, out, "thanks")
}

impl Receiver {
    async fn start() -> (Self, String) {
        let r = Receiver::default();
        let app = Router::new()
            .route("/hook/{name}", post(receive))
            .with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (r, format!("http://{addr}/hook"))
    }

    fn got(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
}

// ----- helpers -------------------------------------------------------------

fn admin() -> Principal {
    Principal::new("ana", PrincipalKind::User).with_permissions(["tracking:admin"])
}

fn config() -> Config {
    Config {
        allow_loopback_targets: true,
        webhook_retry_base_ms: 20,
        webhook_poll_interval_ms: 10,
        webhook_request_timeout_ms: 2_000,
        ..Config::default()
    }
}

fn sealer() -> Sealer {
    Sealer::new(MasterKey::new("k1", [9; 32]), [])
}

fn service(store: Arc<dyn TrackingStore>, clock: SharedClock, config: Config) -> Tracking {
    Tracking::new(store, clock, sealer(), config)
}

async fn setup(t: &Tracking, url: &str) -> (ProjectId, WebhookWithSecret) {
    let p = t
        .create_project(
            &admin(),
            NewProject {
                name: "P".into(),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap()
        .0;
    let hook = t
        .create_webhook(
            &admin(),
            p.id,
            NewWebhook {
                url: url.into(),
                event_types: vec!["task.created".into(), "task.updated".into()],
                description: String::new(),
            },
        )
        .await
        .unwrap();
    (p.id, hook)
}

async fn new_task(t: &Tracking, p: ProjectId, title: &str) -> Task {
    t.create_task(
        &admin(),
        p,
        NewTask {
            title: title.into(),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap()
    .0
}

/// Runs the dispatcher until `done` or 10 s.
async fn pump(d: &jadugar_tracking::webhook::Dispatcher, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for deliveries"
        );
        if d.run_once().await.unwrap() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn payload(r: &Received) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap()
}

// ----- tests ---------------------------------------------------------------

#[tokio::test]
async fn receiver_gets_signed_events_in_order_on_sqlite() {
    let (rx, base) = Receiver::start().await;
    let db = TestSqlite::new().await;
    let t = Tracking::from_backends(
        &config(),
        db.database(),
        None,
        SystemClock::shared(),
        sealer(),
    )
    .await
    .unwrap();
    let (p, hook) = setup(&t, &format!("{base}/a")).await;
    assert!(hook.secret.starts_with("whsec_"));
    let task = new_task(&t, p, "first").await;
    t.update_task(
        &admin(),
        task.id,
        TaskPatch {
            title: Some("second".into()),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    // Not subscribed: comments.
    t.add_comment(&admin(), task.id, NewComment { body: "hi".into() })
        .await
        .unwrap();
    let d = t.dispatcher().unwrap();
    pump(&d, || rx.got().len() >= 2).await;
    let got = rx.got();
    let now = chrono::Utc::now().timestamp();
    for r in &got {
        assert!(
            spec_verify(&hook.secret, &r.headers, &r.body, Some(now)),
            "signature must verify"
        );
        assert!(!spec_verify(
            "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            &r.headers,
            &r.body,
            None
        ));
        assert_eq!(r.headers["content-type"], "application/json");
    }
    assert_eq!(payload(&got[0])["type"], "task.created");
    assert_eq!(payload(&got[1])["type"], "task.updated");
    assert_eq!(payload(&got[1])["data"]["changes"][0]["field"], "title");
    assert_ne!(got[0].headers["webhook-id"], got[1].headers["webhook-id"]);

    // Rotation: during the overlap both secrets sign.
    let rotated = t.rotate_secret(&admin(), hook.webhook.id).await.unwrap();
    // Dispatchers cache a webhook's settings for up to a second.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    t.update_task(
        &admin(),
        task.id,
        TaskPatch {
            title: Some("third".into()),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    pump(&d, || rx.got().len() >= 3).await;
    let third = &rx.got()[2];
    assert_eq!(
        third.headers["webhook-signature"]
            .to_str()
            .unwrap()
            .split(' ')
            .count(),
        2
    );
    assert!(spec_verify(
        &hook.secret,
        &third.headers,
        &third.body,
        Some(now)
    ));
    assert!(spec_verify(
        &rotated.secret,
        &third.headers,
        &third.body,
        Some(now)
    ));

    // Manual redelivery re-sends the same message id; replay queues history.
    let log = t
        .list_deliveries(&admin(), hook.webhook.id, &Default::default())
        .await
        .unwrap();
    assert_eq!(log.items.len(), 3);
    let oldest = log.items.last().unwrap();
    assert_eq!(oldest.state, DeliveryState::Succeeded);
    assert_eq!(oldest.log[0].status, Some(200));
    assert_eq!(oldest.log[0].excerpt, "thanks");
    t.redeliver(&admin(), hook.webhook.id, oldest.id)
        .await
        .unwrap();
    pump(&d, || rx.got().len() >= 4).await;
    assert_eq!(
        rx.got()[3].headers["webhook-id"],
        got[0].headers["webhook-id"]
    );
    let since = chrono::Utc::now() - chrono::Duration::hours(1);
    let queued = t
        .replay(&admin(), hook.webhook.id, ReplayRequest { since })
        .await
        .unwrap();
    assert_eq!(
        queued, 3,
        "created, updated, updated; the comment is not subscribed"
    );
    pump(&d, || rx.got().len() >= 7).await;
}

#[tokio::test]
async fn failing_receiver_gets_the_event_after_retries() {
    let (rx, base) = Receiver::start().await;
    rx.fail_first.store(2, Ordering::SeqCst);
    let t = service(
        Arc::new(MemoryStore::new()),
        SystemClock::shared(),
        config(),
    );
    let (p, hook) = setup(&t, &format!("{base}/flaky")).await;
    new_task(&t, p, "retry me").await;
    let d = t.dispatcher().unwrap();
    pump(&d, || !rx.got().is_empty()).await;
    assert!(spec_verify(
        &hook.secret,
        &rx.got()[0].headers,
        &rx.got()[0].body,
        None
    ));
    let log = t
        .list_deliveries(&admin(), hook.webhook.id, &Default::default())
        .await
        .unwrap();
    let delivery = &log.items[0];
    assert_eq!(delivery.state, DeliveryState::Succeeded);
    assert_eq!(delivery.attempts, 3);
    let statuses: Vec<Option<u16>> = delivery.log.iter().map(|a| a.status).collect();
    assert_eq!(statuses, vec![Some(500), Some(503), Some(200)]);
    assert_eq!(delivery.log[0].excerpt, "boom");
}

#[tokio::test]
async fn a_dispatcher_dying_between_claim_and_send_is_redelivered_after_the_lease() {
    let (rx, base) = Receiver::start().await;
    let db = TestSqlite::new().await;
    let clock = ManualClock::at(chrono::Utc::now());
    let t = Tracking::from_backends(&config(), db.database(), None, clock.shared(), sealer())
        .await
        .unwrap();
    let (p, _hook) = setup(&t, &format!("{base}/lease")).await;
    new_task(&t, p, "survive a crash").await;
    // "Host A" claims and dies before sending.
    let now = clock.now();
    let claimed = t
        .store()
        .claim_deliveries(now, now + chrono::Duration::seconds(60), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    // "Host B" (another pool on the same file) restarts the work.
    let other = SqlStore::new(db.connect_another().await);
    let b = service(Arc::new(other), clock.shared(), config());
    let d = b.dispatcher().unwrap();
    assert_eq!(
        d.run_once().await.unwrap(),
        0,
        "still leased to the dead host"
    );
    clock.advance(Duration::from_secs(61));
    assert_eq!(d.run_once().await.unwrap(), 1);
    assert_eq!(rx.got().len(), 1);
    assert_eq!(d.run_once().await.unwrap(), 0, "delivered once");
    assert_eq!(rx.got().len(), 1);
}

#[tokio::test]
async fn persistent_failure_disables_the_endpoint_until_reenabled() {
    let (rx, base) = Receiver::start().await;
    rx.always_fail.store(1, Ordering::SeqCst);
    let clock = ManualClock::at(chrono::Utc::now());
    let cfg = Config {
        webhook_retry_base_ms: 1_000,
        webhook_retry_max_backoff_secs: 60,
        webhook_retry_window_secs: 300,
        webhook_lag_warn_secs: 1,
        ..config()
    };
    let t = service(Arc::new(MemoryStore::new()), clock.shared(), cfg);
    let (p, hook) = setup(&t, &format!("{base}/down")).await;
    new_task(&t, p, "one").await;
    new_task(&t, p, "two").await;
    let d = t.dispatcher().unwrap();
    let mut rounds = 0;
    while t
        .get_webhook(&admin(), hook.webhook.id)
        .await
        .unwrap()
        .enabled
    {
        d.run_once().await.unwrap();
        clock.advance(Duration::from_secs(61));
        rounds += 1;
        assert!(rounds < 50, "never disabled");
    }
    let w = t.get_webhook(&admin(), hook.webhook.id).await.unwrap();
    assert!(w.disabled_reason.unwrap().contains("re-enable"));
    let log = t
        .list_deliveries(&admin(), hook.webhook.id, &Default::default())
        .await
        .unwrap();
    let first = log.items.last().unwrap();
    assert_eq!(first.state, DeliveryState::Failed);
    assert!(first.attempts >= 5, "{}", first.attempts);
    assert_eq!(
        log.items[0].state,
        DeliveryState::Pending,
        "the next event waits, in order"
    );
    assert_eq!(log.items[0].attempts, 0);
    // Disabled endpoints do not count as lag and get nothing.
    assert!(d.report_lag().await.is_none());
    assert_eq!(d.run_once().await.unwrap(), 0);
    // Re-enabled, the queue resumes.
    rx.always_fail.store(0, Ordering::SeqCst);
    t.enable_webhook(&admin(), hook.webhook.id).await.unwrap();
    let lag = d.report_lag().await.unwrap();
    assert!(lag.num_seconds() > 60, "{lag}");
    assert_eq!(d.run_once().await.unwrap(), 1);
    let got = rx.got();
    assert_eq!(got.len(), 1);
    assert_eq!(payload(&got[0])["data"]["task"]["title"], "two");
}

#[tokio::test]
async fn repeated_rotations_keep_at_most_three_secrets_signing() {
    let t = service(
        Arc::new(MemoryStore::new()),
        SystemClock::shared(),
        config(),
    );
    let (_, hook) = setup(&t, "http://127.0.0.1:9/hook").await;
    let mut issued = vec![hook.secret];
    let mut last = hook.webhook;
    for _ in 0..5 {
        let rotated = t.rotate_secret(&admin(), last.id).await.unwrap();
        issued.push(rotated.secret);
        last = rotated.webhook;
        assert!(last.secrets.len() <= MAX_WEBHOOK_SECRETS);
    }
    let aad = last.id.to_string();
    let signing: Vec<String> = last
        .secrets
        .iter()
        .map(|s| String::from_utf8(sealer().open(&s.sealed, aad.as_bytes()).unwrap()).unwrap())
        .collect();
    // The newest three, newest first; the older ones are retired.
    let newest: Vec<String> = issued.iter().rev().take(3).cloned().collect();
    assert_eq!(signing, newest);
}

#[tokio::test]
async fn ssrf_targets_are_refused() {
    let strict = Config::default();
    let t = service(Arc::new(MemoryStore::new()), SystemClock::shared(), strict);
    let p = t
        .create_project(
            &admin(),
            NewProject {
                name: "P".into(),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap()
        .0;
    for url in [
        "http://169.254.169.254/latest",
        "http://127.0.0.1:9/x",
        "http://[::1]/",
        "ftp://example.com/",
    ] {
        let err = t
            .create_webhook(
                &admin(),
                p.id,
                NewWebhook {
                    url: url.into(),
                    event_types: vec!["*".into()],
                    description: String::new(),
                },
            )
            .await
            .unwrap_err();
        let problem = jadugar_core::Problem::from(err);
        assert_eq!(problem.status, 422, "{url}");
        assert_eq!(problem.errors[0].field, "url");
    }
    // A name that resolves to loopback passes creation but never gets a request.
    let hook = t
        .create_webhook(
            &admin(),
            p.id,
            NewWebhook {
                url: "http://localhost:9/x".into(),
                event_types: vec!["*".into()],
                description: String::new(),
            },
        )
        .await
        .unwrap();
    new_task(&t, p.id, "x").await;
    let d = t.dispatcher().unwrap();
    assert_eq!(d.run_once().await.unwrap(), 1);
    let log = t
        .list_deliveries(&admin(), hook.webhook.id, &Default::default())
        .await
        .unwrap();
    assert_eq!(log.items[0].log[0].status, None);
    assert_eq!(log.items[0].state, DeliveryState::Pending);
}

#[tokio::test]
async fn two_dispatchers_on_one_postgres_never_both_deliver() {
    let Some(pg) = TestPostgres::new().await else {
        return;
    };
    let (rx, base) = Receiver::start().await;
    let a = Tracking::from_backends(
        &config(),
        pg.database(),
        None,
        SystemClock::shared(),
        sealer(),
    )
    .await
    .unwrap();
    let b = service(
        Arc::new(SqlStore::new(pg.connect_another().await)),
        SystemClock::shared(),
        config(),
    );
    let p = a
        .create_project(
            &admin(),
            NewProject {
                name: "P".into(),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap()
        .0;
    for i in 0..4 {
        a.create_webhook(
            &admin(),
            p.id,
            NewWebhook {
                url: format!("{base}/e{i}"),
                event_types: vec!["*".into()],
                description: String::new(),
            },
        )
        .await
        .unwrap();
    }
    let n = 30;
    for i in 0..n {
        new_task(&a, p.id, &format!("t{i:03}")).await;
    }
    let total = n * 4;
    let (da, db) = (a.dispatcher().unwrap(), b.dispatcher().unwrap());
    let rx2 = rx.clone();
    let run = |d: jadugar_tracking::webhook::Dispatcher, rx: Receiver| async move {
        pump(&d, || rx.got().len() >= total).await;
    };
    tokio::join!(run(da, rx.clone()), run(db, rx2));
    let got = rx.got();
    assert_eq!(got.len(), total, "every delivery exactly once");
    let mut per_endpoint: HashMap<String, Vec<String>> = HashMap::new();
    for r in &got {
        per_endpoint.entry(r.path.clone()).or_default().push(
            payload(r)["data"]["task"]["title"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(per_endpoint.len(), 4);
    for (endpoint, titles) in per_endpoint {
        let mut sorted = titles.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(titles.len(), n, "{endpoint} got duplicates or gaps");
        assert_eq!(titles, sorted, "{endpoint} got events out of order");
    }
}

#[tokio::test]
async fn slow_receivers_time_out() {
    let app = Router::new().route(
        "/slow",
        post(|| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            "late"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let cfg = Config {
        webhook_request_timeout_ms: 100,
        ..config()
    };
    let t = service(Arc::new(MemoryStore::new()), SystemClock::shared(), cfg);
    let (p, hook) = setup(&t, &format!("http://{addr}/slow")).await;
    new_task(&t, p, "slow").await;
    let started = std::time::Instant::now();
    assert_eq!(t.dispatcher().unwrap().run_once().await.unwrap(), 1);
    assert!(started.elapsed() < Duration::from_secs(2));
    let log = t
        .list_deliveries(&admin(), hook.webhook.id, &Default::default())
        .await
        .unwrap();
    assert_eq!(log.items[0].state, DeliveryState::Pending);
    assert_eq!(log.items[0].log[0].excerpt, "timed out");
}

#[tokio::test]
async fn dispatcher_stops_when_cancelled() {
    let t = service(
        Arc::new(MemoryStore::new()),
        SystemClock::shared(),
        config(),
    );
    let cancel = tokio_util::sync::CancellationToken::new();
    let handles = t.dispatcher().unwrap().start(cancel.clone());
    tokio::time::sleep(Duration::from_millis(30)).await;
    cancel.cancel();
    for h in handles {
        tokio::time::timeout(Duration::from_secs(2), h)
            .await
            .unwrap()
            .unwrap();
    }
}
