//! Tail latency of a cheap authenticated request (AuthLayer, cached API
//! key) idle and while 50 logins with the real argon2id parameters run on
//! the same runtime and service.
//!
//! `cargo bench -p jadugar-auth --bench login_storm`
//!
//! Each request is spawned onto the runtime from a client thread outside
//! it and timed until its response comes back, as a request arriving from
//! a socket would be: the figure includes waiting for a worker thread, so
//! hashing that starves the workers shows up here. Latencies go into a
//! sorted vector (exact percentiles). The scenario runs once per hash
//! concurrency in `HASH_CONCURRENCY` (comma separated; default: the
//! configured default and the number of cores) so the cause of a tail can
//! be read from one run.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use jadugar_auth::layer::AuthLayer;
use jadugar_auth::service::{NewApiKey, NewUser, RequestMeta};
use jadugar_auth::{AuthService, Config};
use jadugar_core::Principal;
use tokio_util::sync::CancellationToken;
use tower::{Layer, ServiceExt};

const SAMPLES: usize = 20_000;
const LOGINS: usize = 50;
const EMAIL: &str = "storm@example.com";
const PASSWORD: &str = "correct horse battery";

struct Summary {
    p50: Duration,
    p99: Duration,
    p999: Duration,
    max: Duration,
}

fn summarize(mut samples: Vec<Duration>) -> Summary {
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() as f64 * q).ceil() as usize).saturating_sub(1);
        samples[i.min(samples.len() - 1)]
    };
    Summary {
        p50: at(0.50),
        p99: at(0.99),
        p999: at(0.999),
        max: at(1.0),
    }
}

fn show(label: &str, s: &Summary) {
    println!(
        "  {label:<28} p50 {:>9.2?}  p99 {:>9.2?}  p99.9 {:>9.2?}  max {:>9.2?}",
        s.p50, s.p99, s.p999, s.max
    );
}

/// Sends `SAMPLES` requests one at a time from this (non-runtime) thread.
fn drive<S>(rt: &tokio::runtime::Runtime, svc: &S, key: &str) -> Vec<Duration>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let mut samples = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let req = http::Request::get("/x")
            .header("x-api-key", key)
            .body(Body::empty())
            .unwrap();
        let svc = svc.clone();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let start = Instant::now();
        rt.spawn(async move {
            let response = svc.oneshot(req).await.unwrap();
            let _ = tx.send(response.status());
        });
        let status = rx.recv().unwrap();
        samples.push(start.elapsed());
        assert_eq!(status, http::StatusCode::OK);
        // Pace like independent clients rather than one hot loop, so the
        // client thread does not itself hold a core.
        std::thread::sleep(Duration::from_micros(100));
    }
    samples
}

/// The same requests issued by a task on the runtime, back to back: the
/// layer's own time (and any preemption of the worker running it), without
/// the wake-up of an idle worker that [`drive`] includes.
fn drive_inside<S>(rt: &tokio::runtime::Runtime, svc: &S, key: &str) -> Vec<Duration>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let svc = svc.clone();
    let key = key.to_owned();
    let task = rt.spawn(async move {
        let mut samples = Vec::with_capacity(SAMPLES);
        for _ in 0..SAMPLES {
            let req = http::Request::get("/x")
                .header("x-api-key", &key)
                .body(Body::empty())
                .unwrap();
            let start = Instant::now();
            let response = svc.clone().oneshot(req).await.unwrap();
            samples.push(start.elapsed());
            assert_eq!(response.status(), http::StatusCode::OK);
            tokio::task::yield_now().await;
        }
        samples
    });
    rt.block_on(task).unwrap()
}

struct Outcome {
    idle: Summary,
    loaded: Summary,
    idle_inside: Summary,
    loaded_inside: Summary,
    logins_per_sec: u64,
}

fn scenario(hash_concurrency: usize) -> Outcome {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = Config {
        login_attempts_per_account: 0,
        login_attempts_per_ip: 0,
        api_key_cache_ttl_secs: 3600,
        hash_concurrency,
        ..Config::default()
    };
    let auth = rt.block_on(AuthService::memory(config)).unwrap();
    let user = rt
        .block_on(auth.create_user(
            None,
            NewUser {
                email: EMAIL.into(),
                display_name: String::new(),
                password: Some(PASSWORD.into()),
                roles: vec!["admin".into()],
                must_change_password: false,
            },
        ))
        .unwrap();
    let key = rt
        .block_on(auth.create_api_key(
            None,
            NewApiKey {
                name: "storm".into(),
                scopes: vec![],
                expires_in_secs: None,
                owner: Some(user.id),
            },
        ))
        .unwrap()
        .secret;
    rt.block_on(auth.verify_api_key(&key)).unwrap();
    let svc = AuthLayer::new(auth.clone()).layer(tower::service_fn(
        |req: http::Request<Body>| async move {
            let status = if req.extensions().get::<Principal>().is_some() {
                http::StatusCode::OK
            } else {
                http::StatusCode::UNAUTHORIZED
            };
            let mut response = http::Response::new(Body::empty());
            *response.status_mut() = status;
            Ok::<_, Infallible>(response)
        },
    ));

    // Warm up (allocator, caches, thread pool), then idle.
    let _ = drive(&rt, &svc, &key);
    let idle = summarize(drive(&rt, &svc, &key));
    let idle_inside = summarize(drive_inside(&rt, &svc, &key));

    let stop = CancellationToken::new();
    let done = Arc::new(AtomicU64::new(0));
    for _ in 0..LOGINS {
        let auth = auth.clone();
        let stop = stop.clone();
        let done = done.clone();
        rt.spawn(async move {
            while !stop.is_cancelled() {
                auth.login(EMAIL, PASSWORD, &RequestMeta::default(), None)
                    .await
                    .unwrap();
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    // Let the storm reach its steady state before measuring.
    while done.load(Ordering::Relaxed) < 4 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let before = done.load(Ordering::Relaxed);
    let started = Instant::now();
    let loaded = summarize(drive(&rt, &svc, &key));
    let loaded_inside = summarize(drive_inside(&rt, &svc, &key));
    let logins_per_sec = (done.load(Ordering::Relaxed) - before) * 1000
        / started.elapsed().as_millis().max(1) as u64;
    stop.cancel();
    rt.shutdown_timeout(Duration::from_secs(10));
    Outcome {
        idle,
        loaded,
        idle_inside,
        loaded_inside,
        logins_per_sec,
    }
}

fn main() {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let default = Config::default().hash_concurrency;
    let runs: Vec<usize> = match std::env::var("HASH_CONCURRENCY") {
        Ok(list) => list
            .split(',')
            .map(|n| n.trim().parse().expect("HASH_CONCURRENCY: numbers"))
            .collect(),
        Err(_) if default == cores => vec![default],
        Err(_) => vec![default, cores],
    };
    println!(
        "cheap AuthLayer request (cached API key), {SAMPLES} samples each; {LOGINS} concurrent logins (argon2id m=19456 t=2 p=1); {cores} cores, default hash_concurrency {default}"
    );
    for hash_concurrency in runs {
        let o = scenario(hash_concurrency);
        println!("hash_concurrency = {hash_concurrency}:");
        println!(" request spawned from outside the runtime (includes worker wake-up):");
        show("idle", &o.idle);
        let during = format!("during {LOGINS} logins ({}/s)", o.logins_per_sec);
        show(&during, &o.loaded);
        println!(
            "  p99 loaded / idle = {:.2}",
            o.loaded.p99.as_secs_f64() / o.idle.p99.as_secs_f64()
        );
        println!(" request issued by a task on the runtime:");
        show("idle", &o.idle_inside);
        show(&during, &o.loaded_inside);
        println!(
            "  p99 loaded / idle = {:.2}",
            o.loaded_inside.p99.as_secs_f64() / o.idle_inside.p99.as_secs_f64()
        );
    }
}
