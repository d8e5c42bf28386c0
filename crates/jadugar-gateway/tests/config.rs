#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use jadugar_core::{Endpoint, Principal, PrincipalKind, StaticDiscovery};
use jadugar_gateway::model::NameValue;
#[cfg(feature = "redis")]
use jadugar_gateway::model::{RateKey, RateLimitSpec};
use jadugar_gateway::{Config, Gateway};
use tower::ServiceExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_change_under_load_loses_no_request() {
    let (a, _) = echo("a").await;
    let (b, _) = echo("b").await;
    let gw = gateway(vec![]).await;
    gw.create_route(route("live", "/live", &[a])).await.unwrap();
    let addr = serve(gw.clone()).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (stop, ok) = (stop.clone(), ok.clone());
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match client.get(format!("http://{addr}/live")).send().await {
                    Ok(res) if res.status() == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(res) => failures.push(res.status().to_string()),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            failures
        }));
    }
    for i in 0..30 {
        let target = if i % 2 == 0 { b } else { a };
        let mut r = route("live", "/live", &[target]);
        r.transform.request_headers.set.push(NameValue {
            name: "x-gen".into(),
            value: i.to_string(),
        });
        gw.update_route(r, None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let failures = c.await.unwrap();
        assert!(failures.is_empty(), "{failures:?}");
    }
    assert!(ok.load(Ordering::Relaxed) > 30);
}

/// Paths the embedding application answers itself are refused to the
/// admin API, whole segments only.
#[tokio::test]
async fn routes_under_reserved_paths_are_refused() {
    let (a, _) = echo("a").await;
    let gw = Gateway::builder(Config {
        access_log: false,
        ..Config::default()
    })
    .reserved_paths(["/v1", "/healthz"])
    .build()
    .await
    .unwrap();
    for path in ["/v1", "/v1/auth/x", "/healthz", "/v1/{rest}"] {
        let err = gw.create_route(route("r", path, &[a])).await.unwrap_err();
        let problem = jadugar_core::Problem::from(err);
        assert_eq!(problem.status, 422, "{path}");
        assert_eq!(problem.errors[0].field, "path", "{path}");
        assert!(problem.errors[0].message.contains("never reach"), "{path}");
    }
    gw.create_route(route("v1x", "/v1x", &[a])).await.unwrap();
    let err = gw
        .update_route(route("v1x", "/v1/x", &[a]), None)
        .await
        .unwrap_err();
    assert_eq!(jadugar_core::Problem::from(err).status, 422);
    assert_eq!(gw.route_count(), 1);
}

#[tokio::test]
async fn invalid_changes_are_rejected_with_the_reason_and_nothing_changes() {
    let (a, _) = echo("a").await;
    let gw = gateway(vec![route("cfg", "/cfg", &[a])]).await;
    gw.create_route(route("one", "/one/{id}", &[a]))
        .await
        .unwrap();
    let mut bad = route("two", "/one/{other}", &[a]);
    let err = gw.create_route(bad.clone()).await.unwrap_err();
    let problem = jadugar_core::Problem::from(err);
    assert_eq!(problem.status, 422);
    assert!(problem.errors[0].message.contains("one"), "{problem:?}");
    bad.path = "no-slash".into();
    let problem = jadugar_core::Problem::from(gw.create_route(bad).await.unwrap_err());
    assert_eq!(problem.errors[0].field, "path");
    let problem = jadugar_core::Problem::from(
        gw.update_route(route("cfg", "/x", &[a]), None)
            .await
            .unwrap_err(),
    );
    assert_eq!(problem.status, 409);
    assert_eq!(gw.route_count(), 2);
    // A transform may not set the framing the gateway writes itself.
    let mut framing = route("three", "/three", &[a]);
    framing.transform.response_headers.set.push(NameValue {
        name: "Content-Length".into(),
        value: "1".into(),
    });
    framing.transform.request_headers.add.push(NameValue {
        name: "transfer-encoding".into(),
        value: "chunked".into(),
    });
    let problem = jadugar_core::Problem::from(gw.create_route(framing).await.unwrap_err());
    assert_eq!(problem.status, 422);
    let fields: Vec<&str> = problem.errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "transform.request_headers.add[0].name",
            "transform.response_headers.set[0].name"
        ]
    );
    assert_eq!(gw.route_count(), 2);
}

#[tokio::test]
async fn upstreams_follow_discovery_without_restart() {
    let (a, _) = echo("a").await;
    let (b, _) = echo("b").await;
    let discovery = Arc::new(StaticDiscovery::new());
    discovery.set(
        "svc",
        vec![Endpoint::new("a", "http", "127.0.0.1", a.port()).with_tags(["v1"])],
    );
    let mut r = route("svc", "/svc", &[]);
    r.upstream.targets.clear();
    r.upstream.service = Some("svc".into());
    r.upstream.tags = vec!["v1".into()];
    let config = Config {
        routes: vec![r],
        access_log: false,
        ..Config::default()
    };
    let gw = Gateway::builder(config)
        .discovery(discovery.clone())
        .build()
        .await
        .unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let tasks = gw.spawn_background(cancel.clone());
    let upstream_of = |body: Bytes| json(&body)["upstream"].as_str().unwrap().to_owned();
    assert_eq!(upstream_of(call(&gw, get("/svc")).await.2), "a");
    discovery.set(
        "svc",
        vec![
            Endpoint::new("b", "http", "127.0.0.1", b.port()).with_tags(["v1"]),
            Endpoint::new("a", "http", "127.0.0.1", a.port()).with_tags(["old"]),
        ],
    );
    let mut seen_b = false;
    for _ in 0..50 {
        if upstream_of(call(&gw, get("/svc")).await.2) == "b" {
            seen_b = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(seen_b);
    for _ in 0..5 {
        assert_eq!(upstream_of(call(&gw, get("/svc")).await.2), "b");
    }
    discovery.set("svc", vec![]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(call(&gw, get("/svc")).await.0, 503);
    cancel.cancel();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(1), t)
            .await
            .unwrap()
            .unwrap();
    }
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn a_change_on_one_host_reaches_the_other() {
    let (a, _) = echo("a").await;
    let db = jadugar_core::test_support::TestSqlite::new().await;
    let config = Config {
        sync_interval_ms: 50,
        access_log: false,
        ..Config::default()
    };
    let clock = jadugar_core::SystemClock::shared();
    let sealer = jadugar_core::Sealer::new(jadugar_core::MasterKey::generate("k"), []);
    let host1 = Gateway::from_backends(
        &config,
        db.database(),
        None,
        clock.clone(),
        sealer.clone(),
        Arc::new(StaticDiscovery::new()),
    )
    .await
    .unwrap();
    let host2 = Gateway::from_backends(
        &config,
        &db.connect_another().await,
        None,
        clock,
        sealer,
        Arc::new(StaticDiscovery::new()),
    )
    .await
    .unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let _tasks = host2.spawn_background(cancel.clone());
    assert_eq!(call(&host2, get("/shared")).await.0, 404);
    host1
        .create_route(route("shared", "/shared", &[a]))
        .await
        .unwrap();
    let mut status = 0;
    for _ in 0..100 {
        status = call(&host2, get("/shared")).await.0;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 200);
    cancel.cancel();
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn two_gateways_sharing_redis_admit_no_more_than_the_quota() {
    let Some(redis) = jadugar_core::test_support::TestRedis::new().await else {
        return;
    };
    let (a, hits) = echo("a").await;
    let mut r = route("limited", "/limited", &[a]);
    r.rate_limit = Some(RateLimitSpec {
        key: RateKey::Header("x-client".into()),
        requests: 5,
        per_secs: 60,
        burst: None,
        shared: true,
        fail_open: false,
    });
    let config = Config {
        routes: vec![r],
        access_log: false,
        ..Config::default()
    };
    let gw1 = Gateway::builder(config.clone())
        .redis(redis.redis().clone())
        .build()
        .await
        .unwrap();
    let gw2 = Gateway::builder(config)
        .redis(redis.connect_another().await)
        .build()
        .await
        .unwrap();
    let mut allowed = 0;
    let mut handles = Vec::new();
    for i in 0..20 {
        let gw = if i % 2 == 0 { gw1.clone() } else { gw2.clone() };
        handles.push(tokio::spawn(async move {
            let mut req = get("/limited");
            req.headers_mut().insert("x-client", "c1".parse().unwrap());
            call(&gw, req).await
        }));
    }
    for h in handles {
        let (status, headers, _) = h.await.unwrap();
        match status {
            200 => allowed += 1,
            429 => assert!(headers.contains_key("retry-after")),
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(allowed, 5);
    assert_eq!(hits.load(Ordering::SeqCst), 5);
    let mut other = get("/limited");
    other
        .headers_mut()
        .insert("x-client", "c2".parse().unwrap());
    assert_eq!(call(&gw1, other).await.0, 200);
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn unreachable_redis_fails_as_configured() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(test_redis) = jadugar_core::test_support::TestRedis::new().await else {
        return;
    };
    // A proxy in front of the real Redis that can be made to swallow traffic.
    let real: std::net::SocketAddr = test_redis
        .url()
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let blackhole = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = listener.local_addr().unwrap();
    let bh = blackhole.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(real).await.unwrap();
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let (b1, b2) = (bh.clone(), bh.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16384];
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    if !b1.load(Ordering::SeqCst) && sw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16384];
                while let Ok(n) = sr.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    if !b2.load(Ordering::SeqCst) && cw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let (a, hits) = echo("a").await;
    for fail_open in [true, false] {
        // A fresh connection each time: a swallowed command leaves the old one waiting.
        blackhole.store(false, Ordering::SeqCst);
        let redis = jadugar_core::storage::Redis::connect(
            &format!("redis://{proxy_addr}"),
            test_redis.redis().prefix(),
        )
        .await
        .unwrap();
        let mut r = route("limited", "/limited", &[a]);
        r.rate_limit = Some(RateLimitSpec {
            key: RateKey::Ip,
            requests: 5,
            per_secs: 60,
            burst: None,
            shared: true,
            fail_open,
        });
        let config = Config {
            routes: vec![r],
            access_log: false,
            redis_timeout_ms: 50,
            ..Config::default()
        };
        let gw = Gateway::builder(config).redis(redis).build().await.unwrap();
        let (status, headers, _) = call(&gw, get("/limited")).await;
        assert_eq!(status, 200);
        assert!(headers.contains_key("ratelimit-remaining"));
        blackhole.store(true, Ordering::SeqCst);
        let started = std::time::Instant::now();
        let (status, headers, _) = call(&gw, get("/limited")).await;
        assert!(started.elapsed() < Duration::from_secs(1));
        if fail_open {
            assert_eq!(status, 200);
            assert!(!headers.contains_key("ratelimit-remaining"));
        } else {
            assert_eq!(status, 503);
        }
    }
    assert_eq!(hits.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn admin_api_enforces_permissions_and_validates() {
    let (a, _) = echo("a").await;
    let gw = gateway(vec![]).await;
    let app = jadugar_gateway::http::router(gw.clone());
    let send = |method: &str,
                uri: &str,
                principal: Option<Principal>,
                body: Option<serde_json::Value>,
                if_match: Option<&str>| {
        let mut req = http::Request::builder().method(method).uri(uri);
        if let Some(m) = if_match {
            req = req.header("if-match", m);
        }
        let mut req = req
            .header("content-type", "application/json")
            .body(axum::body::Body::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            ))
            .unwrap();
        if let Some(p) = principal {
            req.extensions_mut().insert(p);
        }
        let app = app.clone();
        async move {
            let res = app.oneshot(req).await.unwrap();
            let status = res.status().as_u16();
            let headers = res.headers().clone();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            (
                status,
                headers,
                if body.is_empty() {
                    serde_json::Value::Null
                } else {
                    serde_json::from_slice(&body).unwrap()
                },
            )
        }
    };
    let admin =
        || Some(Principal::new("root", PrincipalKind::User).with_permissions(["gateway:admin"]));
    let nobody = || Some(Principal::new("u", PrincipalKind::User));
    let r = serde_json::to_value(route("r1", "/r1", &[a])).unwrap();

    // A wrong method is a problem naming what is allowed, not an empty 405.
    let (s, h, v) = send("PATCH", "/v1/gateway/routes", admin(), None, None).await;
    assert_eq!(s, 405);
    assert_eq!(h["content-type"], "application/problem+json");
    assert_eq!(h["allow"], "GET,HEAD,POST");
    assert_eq!(v["status"], 405);

    let (s, h, _) = send("GET", "/v1/gateway/routes", None, None, None).await;
    assert_eq!(s, 401);
    assert!(h.contains_key("www-authenticate"));
    assert_eq!(
        send("GET", "/v1/gateway/routes", nobody(), None, None)
            .await
            .0,
        403
    );
    let (s, h, v) = send("POST", "/v1/gateway/routes", admin(), Some(r.clone()), None).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(h["etag"], "\"1\"");
    assert_eq!(v["source"], "store");
    assert_eq!(
        send("POST", "/v1/gateway/routes", admin(), Some(r.clone()), None)
            .await
            .0,
        409
    );
    let mut bad = r.clone();
    bad["id"] = "r2".into();
    bad["upstream"]["targets"] = serde_json::json!(["ftp://x"]);
    bad["resilience"] = serde_json::json!({"retries": 99});
    let (s, _, v) = send("POST", "/v1/gateway/routes", admin(), Some(bad), None).await;
    assert_eq!(s, 422);
    let fields: Vec<&str> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert!(
        fields.contains(&"upstream.targets[0]") && fields.contains(&"resilience.retries"),
        "{fields:?}"
    );
    let (s, _, v) = send(
        "POST",
        "/v1/gateway/routes",
        admin(),
        Some(serde_json::json!({"id": "x"})),
        None,
    )
    .await;
    assert_eq!(s, 422);
    assert_eq!(v["errors"][0]["field"], "body");

    let mut changed = r.clone();
    changed["priority"] = 5.into();
    assert_eq!(
        send(
            "PUT",
            "/v1/gateway/routes/r1",
            admin(),
            Some(changed.clone()),
            Some("\"7\"")
        )
        .await
        .0,
        412
    );
    let (s, h, _) = send(
        "PUT",
        "/v1/gateway/routes/r1",
        admin(),
        Some(changed.clone()),
        Some("\"1\""),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(h["etag"], "\"2\"");
    assert_eq!(
        send(
            "PUT",
            "/v1/gateway/routes/other",
            admin(),
            Some(changed),
            None
        )
        .await
        .0,
        422
    );
    assert_eq!(call(&gw, get("/r1")).await.0, 200);

    for i in 2..5 {
        let mut more = r.clone();
        more["id"] = format!("r{i}").into();
        more["path"] = format!("/r{i}").into();
        assert_eq!(
            send("POST", "/v1/gateway/routes", admin(), Some(more), None)
                .await
                .0,
            201
        );
    }
    let (_, _, page1) = send("GET", "/v1/gateway/routes?limit=3", admin(), None, None).await;
    assert_eq!(page1["items"].as_array().unwrap().len(), 3);
    let cursor = page1["next_cursor"].as_str().unwrap();
    let (_, _, page2) = send(
        "GET",
        &format!("/v1/gateway/routes?limit=3&cursor={cursor}"),
        admin(),
        None,
        None,
    )
    .await;
    assert_eq!(page2["items"].as_array().unwrap().len(), 1);
    assert!(page2.get("next_cursor").is_none());
    // The route a cursor points at is deleted between pages: the listing
    // goes on after where it was, not to an empty last page.
    let (_, _, page1) = send("GET", "/v1/gateway/routes?limit=2", admin(), None, None).await;
    assert_eq!(page1["items"][1]["route"]["id"], "r2");
    let cursor = page1["next_cursor"].as_str().unwrap();
    assert_eq!(
        send("DELETE", "/v1/gateway/routes/r2", admin(), None, None)
            .await
            .0,
        204
    );
    let (_, _, page2) = send(
        "GET",
        &format!("/v1/gateway/routes?limit=2&cursor={cursor}"),
        admin(),
        None,
        None,
    )
    .await;
    let ids: Vec<&str> = page2["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["route"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["r3", "r4"], "{page2}");
    // A malformed parameter is a problem naming it, not axum's plain text.
    let (status, _, problem) = send("GET", "/v1/gateway/routes?limit=x", admin(), None, None).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "limit", "{problem}");
    assert_eq!(
        send(
            "GET",
            "/v1/gateway/routes?cursor=garbage",
            admin(),
            None,
            None
        )
        .await
        .0,
        400
    );

    assert_eq!(
        send("DELETE", "/v1/gateway/routes/r1", admin(), None, None)
            .await
            .0,
        204
    );
    assert_eq!(
        send("GET", "/v1/gateway/routes/r1", admin(), None, None)
            .await
            .0,
        404
    );
    assert_eq!(call(&gw, get("/r1")).await.0, 404);
    let _ = Full::new(Bytes::new());
}

#[tokio::test]
async fn docs_are_served_offline_and_merged() {
    let doc = upstream(|_req| async {
        let body = serde_json::json!({"openapi": "3.1.0", "info": {"title": "b", "version": "1"},
            "paths": {"/invoices": {"get": {"responses": {"200": {"description": "ok"}}}}}});
        hyper::Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    })
    .await;
    let mut r = route("billing", "/billing", &[doc]).prefix();
    r.transform.strip_prefix = Some("/billing".into());
    r.openapi_url = Some(format!("http://{doc}/openapi.json"));
    let gw = gateway(vec![r]).await;
    let app = jadugar_gateway::docs::router(gw, jadugar_gateway::http::openapi());
    let res = app
        .clone()
        .oneshot(
            http::Request::get("/openapi.json")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert!(v["paths"]["/billing/invoices"]["get"].is_object(), "{v}");
    assert!(v["paths"]["/v1/gateway/routes"].is_object());
    let page = app
        .clone()
        .oneshot(
            http::Request::get("/docs")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = String::from_utf8(
        page.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(html.contains("swagger-ui-bundle.js") && !html.contains("https://"));
    let js = app
        .oneshot(
            http::Request::get("/docs/swagger-ui-bundle.js")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(js.status(), 200);
}
