#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use jadugar_core::{Principal, PrincipalKind};
use jadugar_gateway::model::{AuthPolicy, NameValue, RateKey, RateLimitSpec};

#[tokio::test]
async fn proxies_with_forwarding_headers_and_transforms() {
    let (up, _) = echo("a").await;
    let mut r = route("api", "/api", &[up]).prefix();
    r.transform.strip_prefix = Some("/api".into());
    r.transform.request_headers.set.push(NameValue {
        name: "x-user-id".into(),
        value: "{principal.subject}".into(),
    });
    r.transform.request_headers.add.push(NameValue {
        name: "x-route".into(),
        value: "{route.id}".into(),
    });
    r.transform
        .response_headers
        .remove
        .push("x-upstream".into());
    r.transform.response_headers.set.push(NameValue {
        name: "x-gw".into(),
        value: "yes".into(),
    });
    let gw = gateway(vec![r]).await;
    let mut req = get("/api/users/7?x=1");
    req.headers_mut()
        .insert("host", "public.example.com".parse().unwrap());
    req.headers_mut()
        .insert("connection", "keep-alive, x-drop".parse().unwrap());
    req.headers_mut().insert("x-drop", "1".parse().unwrap());
    req.headers_mut()
        .insert("x-request-id", "rid-1".parse().unwrap());
    req.headers_mut()
        .insert("x-user-id", "spoofed".parse().unwrap());
    req.headers_mut()
        .insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
    req.headers_mut()
        .insert("forwarded", "for=6.6.6.6;proto=https".parse().unwrap());
    req.extensions_mut()
        .insert(Principal::new("u-1", PrincipalKind::User));
    let (status, headers, body) = call(&gw, req).await;
    assert_eq!(status, 200);
    let v = json(&body);
    assert_eq!(v["uri"], "/users/7?x=1");
    let h = &v["headers"];
    assert_eq!(h["x-forwarded-for"], "10.9.8.7");
    assert!(
        h.get("forwarded").is_none(),
        "an untrusted client's Forwarded claim must not reach the upstream: {h}"
    );
    assert_eq!(h["x-forwarded-host"], "public.example.com");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-request-id"], "rid-1");
    assert_eq!(h["x-user-id"], "u-1");
    assert_eq!(h["x-route"], "api");
    assert_eq!(h["host"], up.to_string());
    assert!(h.get("x-drop").is_none() && h.get("connection").is_none());
    assert!(headers.get("x-upstream").is_none());
    assert!(headers.get("keep-alive").is_none());
    assert_eq!(headers["x-gw"], "yes");
    assert_eq!(headers["x-request-id"], "rid-1");

    let (status, headers, _) = call(&gw, get("/nowhere")).await;
    assert_eq!(status, 404);
    assert_eq!(headers["content-type"], "application/problem+json");
}

#[tokio::test]
async fn traversal_attempts_refused() {
    let (up, hits) = echo("a").await;
    let mut admin = route("admin", "/admin", &[up]).prefix();
    admin.auth = AuthPolicy::Require("admin".into());
    let public = route("public", "/a", &[up]).prefix();
    let gw = gateway(vec![admin, public]).await;
    for path in [
        "/a/../admin",
        "/a/%2e%2e/admin",
        "/a/..%2fadmin",
        "/a%2f..%2fadmin",
        "/a/%2E%2E/admin/x",
        "/%61dmin",
        "/a/.%2e/admin",
        "/a\\..\\admin",
    ] {
        let req = http::Request::get(
            http::Uri::from_maybe_shared(Bytes::from(path.to_owned()))
                .unwrap_or_else(|_| "/".parse().unwrap()),
        )
        .body(Full::new(Bytes::new()))
        .unwrap();
        let (status, _, _) = call(&gw, req).await;
        assert!(status == 400 || status == 401, "{path}: {status}");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    let (status, _, _) = call(&gw, get("/admin/x")).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn auth_per_route() {
    let (up, _) = echo("a").await;
    let mut authn = route("authn", "/me", &[up]);
    authn.auth = AuthPolicy::Authenticated;
    let mut perm = route("perm", "/billing", &[up]);
    perm.auth = AuthPolicy::Require("billing:read".into());
    let gw = gateway(vec![authn, perm]).await;
    assert_eq!(call(&gw, get("/me")).await.0, 401);
    let mut req = get("/billing");
    req.extensions_mut()
        .insert(Principal::new("u", PrincipalKind::User));
    assert_eq!(call(&gw, req).await.0, 403);
    let mut req = get("/billing");
    req.extensions_mut()
        .insert(Principal::new("u", PrincipalKind::User).with_permissions(["billing:*"]));
    assert_eq!(call(&gw, req).await.0, 200);
}

#[tokio::test]
async fn crlf_in_templated_header_refused() {
    let (up, hits) = echo("a").await;
    let mut r = route("r", "/x", &[up]);
    r.transform.request_headers.set.push(NameValue {
        name: "x-user-id".into(),
        value: "user={principal.subject}".into(),
    });
    let gw = gateway(vec![r]).await;
    let mut req = get("/x");
    req.extensions_mut().insert(Principal::new(
        "mallory\r\nx-admin: true",
        PrincipalKind::User,
    ));
    let (status, _, body) = call(&gw, req).await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("CR"));
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn rate_limit_429_headers() {
    let (up, _) = echo("a").await;
    let mut r = route("r", "/x", &[up]);
    r.rate_limit = Some(RateLimitSpec {
        key: RateKey::ApiKey,
        requests: 2,
        per_secs: 60,
        burst: None,
        shared: false,
        fail_open: true,
    });
    let gw = gateway(vec![r]).await;
    let keyed = || {
        let mut req = get("/x");
        req.extensions_mut()
            .insert(Principal::new("key-1", PrincipalKind::ApiKey));
        req
    };
    let (s1, h1, _) = call(&gw, keyed()).await;
    assert_eq!(s1, 200);
    assert_eq!(h1["ratelimit-limit"], "2");
    assert_eq!(h1["ratelimit-remaining"], "1");
    assert!(h1.contains_key("ratelimit-reset"));
    assert_eq!(call(&gw, keyed()).await.0, 200);
    let (s3, h3, body) = call(&gw, keyed()).await;
    assert_eq!(s3, 429);
    assert_eq!(h3["ratelimit-remaining"], "0");
    let retry: u64 = h3["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    assert_eq!(json(&body)["status"], 429);
    // Another key (here: the client IP) has its own allowance.
    assert_eq!(call(&gw, get("/x")).await.0, 200);
}

#[tokio::test]
async fn retries_never_on_post_without_idempotency_marker() {
    let (bad, hits) = fixed(503).await;
    let mut r = route("r", "/x", &[bad]);
    r.resilience.retries = 2;
    r.upstream.outlier.consecutive_failures = 0;
    let gw = gateway(vec![r]).await;
    let post = |key: Option<&str>| {
        let mut b = http::Request::post("/x");
        if let Some(k) = key {
            b = b.header("idempotency-key", k);
        }
        b.body(Full::new(Bytes::new())).unwrap()
    };
    assert_eq!(call(&gw, post(None)).await.0, 503);
    assert_eq!(hits.load(Ordering::SeqCst), 1, "POST must not be retried");
    let mut with_body = post(None);
    *with_body.body_mut() = Full::new(Bytes::from_static(b"{}"));
    assert_eq!(call(&gw, with_body).await.0, 503);
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    assert_eq!(call(&gw, post(Some("k1"))).await.0, 503);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        5,
        "POST with Idempotency-Key retried twice"
    );
    assert_eq!(call(&gw, get("/x")).await.0, 503);
    assert_eq!(hits.load(Ordering::SeqCst), 8, "GET retried twice");
}

#[tokio::test]
async fn retries_reach_a_healthy_instance() {
    let (bad, bad_hits) = fixed(502).await;
    let (good, good_hits) = fixed(200).await;
    let mut r = route("r", "/x", &[bad, good]);
    r.resilience.retries = 1;
    r.upstream.outlier.consecutive_failures = 0;
    let gw = gateway(vec![r]).await;
    for _ in 0..6 {
        assert_eq!(call(&gw, get("/x")).await.0, 200);
    }
    assert_eq!(good_hits.load(Ordering::SeqCst), 6);
    assert!(bad_hits.load(Ordering::SeqCst) >= 2);
}

#[tokio::test]
async fn ejection_and_readmission() {
    let (bad, bad_hits) = fixed(503).await;
    let (good, good_hits) = fixed(200).await;
    let mut r = route("r", "/x", &[bad, good]);
    r.upstream.outlier.consecutive_failures = 2;
    r.upstream.outlier.base_ejection_ms = 300;
    r.upstream.outlier.max_ejection_ms = 10_000;
    let gw = gateway(vec![r]).await;
    for _ in 0..10 {
        call(&gw, get("/x")).await;
    }
    assert_eq!(
        bad_hits.load(Ordering::SeqCst),
        2,
        "ejected after two consecutive failures"
    );
    assert_eq!(good_hits.load(Ordering::SeqCst), 8);
    for _ in 0..10 {
        assert_eq!(call(&gw, get("/x")).await.0, 200);
    }
    assert_eq!(bad_hits.load(Ordering::SeqCst), 2);
    tokio::time::sleep(Duration::from_millis(350)).await;
    for _ in 0..6 {
        call(&gw, get("/x")).await;
    }
    let after = bad_hits.load(Ordering::SeqCst);
    assert_eq!(
        after, 4,
        "re-admitted after the back-off, then ejected again"
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    for _ in 0..6 {
        assert_eq!(call(&gw, get("/x")).await.0, 200);
    }
    assert_eq!(
        bad_hits.load(Ordering::SeqCst),
        4,
        "second ejection lasts twice as long"
    );
}

#[tokio::test]
async fn unreachable_upstream_is_a_502_problem_naming_it() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = listener.local_addr().unwrap();
    drop(listener);
    let mut r = route("r", "/x", &[dead]);
    r.upstream.name = Some("billing".into());
    let gw = gateway(vec![r]).await;
    let (status, headers, body) = call(&gw, get("/x")).await;
    assert_eq!(status, 502);
    assert_eq!(headers["content-type"], "application/problem+json");
    assert!(json(&body)["detail"].as_str().unwrap().contains("billing"));
}

#[tokio::test]
async fn slow_upstream_is_a_504() {
    let addr = upstream(|_req| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        hyper::Response::new(Full::new(Bytes::new()))
    })
    .await;
    let mut r = route("r", "/x", &[addr]);
    r.resilience.request_timeout_ms = 100;
    let gw = gateway(vec![r]).await;
    assert_eq!(call(&gw, get("/x")).await.0, 504);
}

#[tokio::test]
async fn concurrency_limit_sheds_fast() {
    let addr = upstream(|_req| async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        hyper::Response::new(Full::new(Bytes::new()))
    })
    .await;
    let mut r = route("r", "/x", &[addr]);
    r.upstream.max_concurrent = Some(1);
    let gw = gateway(vec![r]).await;
    let slow = tokio::spawn({
        let gw = gw.clone();
        async move { call(&gw, get("/x")).await.0 }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = std::time::Instant::now();
    assert_eq!(call(&gw, get("/x")).await.0, 503);
    assert!(started.elapsed() < Duration::from_millis(100));
    assert_eq!(slow.await.unwrap(), 200);
}

#[tokio::test]
async fn json_body_fields_mapped() {
    let addr = upstream(|req: hyper::Request<hyper::body::Incoming>| async move {
        use http_body_util::BodyExt;
        let body = req.into_body().collect().await.unwrap().to_bytes();
        hyper::Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(body))
            .unwrap()
    })
    .await;
    let mut r = route("r", "/x", &[addr]);
    r.transform.request_body = Some(
        serde_json::from_value(
            serde_json::json!({"rename": {"name": "full_name"}, "remove": ["password"]}),
        )
        .unwrap(),
    );
    r.transform.response_body =
        Some(serde_json::from_value(serde_json::json!({"add": {"via": "gateway"}})).unwrap());
    r.transform.max_body_bytes = Some(64);
    let gw = gateway(vec![r]).await;
    let req = http::Request::post("/x")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"name":"n","password":"p"}"#,
        )))
        .unwrap();
    let (status, _, body) = call(&gw, req).await;
    assert_eq!(status, 200);
    assert_eq!(
        json(&body),
        serde_json::json!({"full_name": "n", "via": "gateway"})
    );
    let big = http::Request::post("/x")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(format!(
            "{{\"a\":\"{}\"}}",
            "x".repeat(100)
        ))))
        .unwrap();
    assert_eq!(call(&gw, big).await.0, 413);
}

#[tokio::test]
async fn mounts_as_the_fallback_of_an_axum_app() {
    use tower::ServiceExt;
    let (up, _) = echo("a").await;
    let gw = gateway(vec![route("svc", "/svc", &[up]).prefix()]).await;
    let app: axum::Router = axum::Router::new()
        .route("/v1/health", axum::routing::get(|| async { "ok" }))
        .fallback_service(gw);
    let res = app
        .clone()
        .oneshot(
            http::Request::get("/svc/x")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = app
        .clone()
        .oneshot(
            http::Request::get("/v1/health")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = app
        .oneshot(
            http::Request::get("/none")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

/// A client whose body fails mid-way (it went away, say) is no fault of
/// the upstream's: however many do so, the instance is never ejected.
#[tokio::test]
async fn failing_client_bodies_never_eject_an_instance() {
    let (up, hits) = echo("a").await;
    let mut r = route("r", "/x", &[up]);
    r.upstream.outlier.consecutive_failures = 2;
    let gw = gateway(vec![r]).await;
    for _ in 0..5 {
        let chunks = futures_util::stream::iter([
            Ok(http_body::Frame::data(Bytes::from_static(b"partial"))),
            Err(std::io::Error::other("client went away")),
        ]);
        let mut req = http::Request::post("/x")
            .body(http_body_util::StreamBody::new(chunks))
            .unwrap();
        req.extensions_mut().insert(jadugar_gateway::ClientAddr(
            "10.9.8.7:5555".parse().unwrap(),
        ));
        let res = gw.handle(req).await;
        assert_eq!(res.status(), 400);
    }
    for _ in 0..3 {
        assert_eq!(
            call(&gw, get("/x")).await.0,
            200,
            "the instance is still in"
        );
    }
    assert!(hits.load(Ordering::SeqCst) >= 3);
}

#[tokio::test]
async fn connection_cannot_remove_headers_the_gateway_sets() {
    let (up, _) = echo("a").await;
    let mut r = route("api", "/api", &[up]).prefix();
    r.transform.request_headers.set.push(NameValue {
        name: "x-user-id".into(),
        value: "{principal.subject}".into(),
    });
    r.transform.request_headers.set.push(NameValue {
        name: "x-gateway-secret".into(),
        value: "s3cret".into(),
    });
    let gw = gateway(vec![r]).await;
    let mut req = get("/api/x");
    req.headers_mut().insert(
        "connection",
        "x-user-id, x-gateway-secret, x-forwarded-for, x-drop"
            .parse()
            .unwrap(),
    );
    req.headers_mut().insert("x-drop", "1".parse().unwrap());
    req.extensions_mut()
        .insert(Principal::new("u-1", PrincipalKind::User));
    let (status, _, body) = call(&gw, req).await;
    assert_eq!(status, 200);
    let h = &json(&body)["headers"];
    assert_eq!(h["x-user-id"], "u-1");
    assert_eq!(h["x-gateway-secret"], "s3cret");
    assert_eq!(h["x-forwarded-for"], "10.9.8.7");
    assert!(h.get("x-drop").is_none() && h.get("connection").is_none());
}

#[tokio::test]
async fn forwarding_headers_of_an_unknown_client_are_not_passed_on() {
    let (up, _) = echo("a").await;
    let gw = gateway(vec![route("api", "/api", &[up]).prefix()]).await;
    // No client address (an embedder calling `handle` directly) and no
    // `Host`: the client's own claims must not reach the upstream.
    let mut req = http::Request::get("/api/x")
        .body(Full::new(Bytes::new()))
        .unwrap();
    req.headers_mut()
        .insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
    req.headers_mut()
        .insert("x-forwarded-host", "evil.example".parse().unwrap());
    let (status, _, body) = call(&gw, req).await;
    assert_eq!(status, 200);
    let h = &json(&body)["headers"];
    assert!(h.get("x-forwarded-for").is_none(), "{h}");
    assert!(h.get("x-forwarded-host").is_none(), "{h}");

    // An absolute URI (HTTP/2's authority) names the host.
    let mut req = http::Request::get("http://public.example.com/api/x")
        .body(Full::new(Bytes::new()))
        .unwrap();
    req.headers_mut()
        .insert("x-forwarded-host", "evil.example".parse().unwrap());
    let (status, _, body) = call(&gw, req).await;
    assert_eq!(status, 200);
    assert_eq!(
        json(&body)["headers"]["x-forwarded-host"],
        "public.example.com"
    );
}
