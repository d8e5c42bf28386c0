//! Registration, TTL, the mass-expiry guard, discovery, watch and config.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{ALL, call, call_with, sealer};
use http::StatusCode;
use jadugar_core::{Discovery, ManualClock};
use jadugar_registry::model::{Address, InstanceFilter, Registration, Status};
use jadugar_registry::{Config, Error, Registry};
use serde_json::json;

async fn registry(config: Config, clock: &ManualClock) -> Registry {
    Registry::in_memory(config, clock.shared(), sealer())
        .await
        .unwrap()
}

fn reg(port: u16) -> Registration {
    Registration::new(Address::new("http", "10.0.0.5", port))
}

#[tokio::test]
async fn ttl_expiry_makes_critical_then_removes() {
    let clock = ManualClock::default();
    let config = Config {
        deregister_critical_after_secs: 60,
        ..Config::default()
    };
    let r = registry(config, &clock).await;
    r.register("billing", "b-1", reg(80).with_ttl_secs(10))
        .await
        .unwrap();
    assert_eq!(r.endpoints("billing", &[]).len(), 1);

    // A heartbeat in time keeps it passing.
    clock.advance(Duration::from_secs(8));
    r.heartbeat("billing", "b-1").await.unwrap();
    clock.advance(Duration::from_secs(8));
    r.sweep().await.unwrap();
    assert_eq!(
        r.instance("billing", "b-1").unwrap().status,
        Status::Passing
    );

    // A missed TTL makes it critical and takes it out of discovery.
    clock.advance(Duration::from_secs(3));
    r.sweep().await.unwrap();
    assert_eq!(
        r.instance("billing", "b-1").unwrap().status,
        Status::Critical
    );
    assert!(r.endpoints("billing", &[]).is_empty());

    // A late heartbeat brings it back.
    r.heartbeat("billing", "b-1").await.unwrap();
    assert_eq!(
        r.instance("billing", "b-1").unwrap().status,
        Status::Passing
    );
    assert_eq!(r.endpoints("billing", &[]).len(), 1);

    // Critical for longer than deregister_critical_after: removed.
    clock.advance(Duration::from_secs(11));
    r.sweep().await.unwrap();
    assert_eq!(
        r.instance("billing", "b-1").unwrap().status,
        Status::Critical
    );
    clock.advance(Duration::from_secs(59));
    r.sweep().await.unwrap();
    assert!(r.instance("billing", "b-1").is_ok(), "not yet");
    clock.advance(Duration::from_secs(1));
    r.sweep().await.unwrap();
    assert!(matches!(
        r.instance("billing", "b-1"),
        Err(Error::NotFound(_))
    ));
    // The client learns it must register again.
    assert!(matches!(
        r.heartbeat("billing", "b-1").await,
        Err(Error::NotFound(_))
    ));
}

#[tokio::test]
async fn mass_expiry_guard_keeps_the_last_set() {
    let clock = ManualClock::default();
    let config = Config {
        guard_expiry_share: 0.5,
        guard_min_instances: 3,
        guard_max_secs: 300,
        ..Config::default()
    };
    let r = registry(config, &clock).await;
    for i in 0..4 {
        r.register("web", &format!("w-{i}"), reg(8000 + i).with_ttl_secs(10))
            .await
            .unwrap();
    }
    // One instance dies alone: that is an ordinary expiry.
    clock.advance(Duration::from_secs(6));
    for i in 1..4 {
        r.heartbeat("web", &format!("w-{i}")).await.unwrap();
    }
    clock.advance(Duration::from_secs(5));
    r.sweep().await.unwrap();
    assert_eq!(r.endpoints("web", &[]).len(), 3);
    assert!(!r.self_preservation("web"));

    // All three remaining fall silent together (a registry restart, a
    // network cut): the last healthy set keeps being served, flagged.
    clock.advance(Duration::from_secs(11));
    r.sweep().await.unwrap();
    assert_eq!(r.endpoints("web", &[]).len(), 3);
    assert!(r.self_preservation("web"));
    let summary = r.services().into_iter().find(|s| s.name == "web").unwrap();
    assert!(summary.self_preservation);
    assert_eq!(summary.passing, 3);

    // Heartbeats resume: the guard lifts.
    for i in 1..4 {
        r.heartbeat("web", &format!("w-{i}")).await.unwrap();
    }
    r.sweep().await.unwrap();
    assert!(!r.self_preservation("web"));

    // Silence that outlasts guard_max_secs is believed in the end.
    clock.advance(Duration::from_secs(11));
    r.sweep().await.unwrap();
    assert_eq!(r.endpoints("web", &[]).len(), 3);
    clock.advance(Duration::from_secs(300));
    r.sweep().await.unwrap();
    assert!(r.endpoints("web", &[]).is_empty());
}

#[tokio::test]
async fn discovery_filters_counts_and_maintenance() {
    let clock = ManualClock::default();
    let r = registry(Config::default(), &clock).await;
    r.register(
        "api",
        "a-1",
        reg(1).with_tags(["v2", "eu"]).with_metadata("zone", "a"),
    )
    .await
    .unwrap();
    r.register(
        "api",
        "a-2",
        reg(2).with_tags(["v2"]).with_metadata("zone", "b"),
    )
    .await
    .unwrap();
    r.register("api", "a-3", reg(3).with_tags(["v1"]))
        .await
        .unwrap();
    let tags = |t: &[&str]| t.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert_eq!(r.endpoints("api", &tags(&["v2"])).len(), 2);
    assert_eq!(r.endpoints("api", &tags(&["v2", "eu"])).len(), 1);
    assert_eq!(r.endpoints("api", &tags(&["v3"])).len(), 0);
    let mut filter = InstanceFilter::default();
    filter.metadata.insert("zone".into(), "b".into());
    assert_eq!(r.instances("api", &filter).instances.len(), 1);

    // Re-registering the same thing is idempotent: no new index.
    let before = r.instance("api", "a-1").unwrap().modify_index;
    r.register(
        "api",
        "a-1",
        reg(1).with_tags(["v2", "eu"]).with_metadata("zone", "a"),
    )
    .await
    .unwrap();
    assert_eq!(r.instance("api", "a-1").unwrap().modify_index, before);

    let mut changes = r.changes();
    r.set_maintenance("api", "a-1", true, Some("deploy".into()))
        .await
        .unwrap();
    assert!(changes.has_changed().unwrap());
    changes.borrow_and_update();
    let a1 = r.instance("api", "a-1").unwrap();
    assert_eq!(a1.status, Status::Maintenance);
    assert_eq!(a1.maintenance.as_deref(), Some("deploy"));
    assert_eq!(r.endpoints("api", &tags(&["v2", "eu"])).len(), 0);
    assert_eq!(
        r.instances("api", &InstanceFilter::default())
            .instances
            .len(),
        2
    );
    let any = InstanceFilter {
        any_health: true,
        ..InstanceFilter::default()
    };
    assert_eq!(r.instances("api", &any).instances.len(), 3);
    let summary = &r.services()[0];
    assert_eq!(
        (summary.instances, summary.passing, summary.maintenance),
        (3, 2, 1)
    );
    r.set_maintenance("api", "a-1", false, None).await.unwrap();
    assert_eq!(r.endpoints("api", &tags(&["v2", "eu"])).len(), 1);

    r.deregister("api", "a-3").await.unwrap();
    assert!(matches!(
        r.deregister("api", "a-3").await,
        Err(Error::NotFound(_))
    ));
    assert_eq!(r.endpoints("api", &[]).len(), 2);
}

#[tokio::test]
async fn http_validation_and_permissions() {
    let clock = ManualClock::default();
    let app = jadugar_registry::http::router(registry(Config::default(), &clock).await);
    let body = json!({"address": {"scheme": "http", "host": "10.0.0.1", "port": 80}});
    let uri = "/v1/registry/services/web/instances/w-1";
    let (status, headers, problem) = call(&app, "PUT", uri, None, Some(body.clone())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(headers.contains_key("www-authenticate"));
    assert_eq!(problem["status"], 401);
    let (status, ..) = call(
        &app,
        "PUT",
        uri,
        Some(&["registry:read"]),
        Some(body.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, _, problem) = call(
        &app,
        "PUT",
        "/v1/registry/services/Bad_Name/instances/x",
        Some(ALL),
        Some(json!({
            "address": {"scheme": "ftp", "host": "10.0.0.1", "port": 80},
            "weight": 0,
            "check": {"kind": "http", "path": "//evil.example/", "interval_ms": 10}
        })),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    for field in [
        "service",
        "address.scheme",
        "weight",
        "check.path",
        "check.interval_ms",
    ] {
        assert!(fields.contains(&field), "{field} in {fields:?}");
    }
    let (status, _, problem) = call(&app, "PUT", uri, Some(ALL), Some(json!({"nope": 1}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["errors"][0]["field"], "nope");
    let (status, ..) = call(
        &app,
        "GET",
        "/v1/registry/services/web?wait=forever&index=1",
        Some(ALL),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    let (status, headers, instance) = call(&app, "PUT", uri, Some(ALL), Some(body.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "a new instance is created");
    assert!(headers.contains_key("x-jadugar-index"));
    assert_eq!(instance["status"], "passing");
    let (status, ..) = call(&app, "PUT", uri, Some(ALL), Some(body)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "registering again changes no resource"
    );
    let (status, _, list) = call(&app, "GET", "/v1/registry/services", Some(ALL), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["services"][0]["instances"], 1);
    let (status, ..) = call(&app, "DELETE", uri, Some(ALL), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, problem) =
        call(&app, "PUT", &format!("{uri}/heartbeat"), Some(ALL), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(problem["type"].as_str().unwrap().ends_with("not-found"));

    let spec = jadugar_registry::http::openapi();
    let paths: Vec<&String> = spec.paths.paths.keys().collect();
    assert!(
        paths
            .iter()
            .any(|p| p.as_str() == "/v1/registry/services/{service}")
    );
    assert!(
        paths
            .iter()
            .all(|p| p.starts_with("/v1/registry/") || p.starts_with("/v1/config/"))
    );
    // The documented statuses include the ones the handlers answer.
    let codes = |path: &str| -> Vec<String> {
        let item = &spec.paths.paths[path];
        let put = item.put.as_ref().unwrap();
        put.responses.responses.keys().cloned().collect()
    };
    let register = codes("/v1/registry/services/{service}/instances/{id}");
    assert!(register.contains(&"201".to_owned()), "{register:?}");
    let put = codes("/v1/config/namespaces/{namespace}/keys/{key}");
    for code in ["201", "409", "412", "415", "422"] {
        assert!(put.contains(&code.to_owned()), "{code} in {put:?}");
    }
}

#[tokio::test]
async fn blocking_query_returns_on_a_change_and_not_before() {
    let clock = ManualClock::default();
    let app = jadugar_registry::http::router(registry(Config::default(), &clock).await);
    let body = |port: u16| json!({"address": {"scheme": "http", "host": "10.0.0.1", "port": port}});
    call(
        &app,
        "PUT",
        "/v1/registry/services/web/instances/w-1",
        Some(ALL),
        Some(body(1)),
    )
    .await;
    let (_, headers, first) = call(&app, "GET", "/v1/registry/services/web", Some(ALL), None).await;
    let index = first["index"].as_u64().unwrap();
    assert_eq!(
        headers["x-jadugar-index"].to_str().unwrap(),
        index.to_string()
    );

    let watcher = {
        let app = app.clone();
        tokio::spawn(async move {
            call(
                &app,
                "GET",
                &format!("/v1/registry/services/web?index={index}&wait=10s"),
                Some(ALL),
                None,
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(!watcher.is_finished(), "returned before any change");
    // A change elsewhere wakes nobody watching web.
    call(
        &app,
        "PUT",
        "/v1/registry/services/other/instances/o-1",
        Some(ALL),
        Some(body(2)),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !watcher.is_finished(),
        "returned on another service's change"
    );

    call(
        &app,
        "PUT",
        "/v1/registry/services/web/instances/w-2",
        Some(ALL),
        Some(body(3)),
    )
    .await;
    let (status, _, list) = tokio::time::timeout(Duration::from_secs(2), watcher)
        .await
        .expect("the watcher must return promptly on a change")
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(list["index"].as_u64().unwrap() > index);
    assert_eq!(list["instances"].as_array().unwrap().len(), 2);

    // Without a change, the wait times out with the same index.
    let now = list["index"].as_u64().unwrap();
    let started = std::time::Instant::now();
    let (status, _, same) = call(
        &app,
        "GET",
        &format!("/v1/registry/services/web?index={now}&wait=200ms"),
        Some(ALL),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(same["index"].as_u64().unwrap(), now);
}

#[tokio::test]
async fn many_watchers_released_by_one_change() {
    let clock = ManualClock::default();
    let r = registry(Config::default(), &clock).await;
    r.register("web", "w-1", reg(1)).await.unwrap();
    let index = r.instances("web", &InstanceFilter::default()).index;
    let mut watchers = Vec::new();
    for _ in 0..200 {
        let r = r.clone();
        watchers.push(tokio::spawn(async move {
            r.watch_instances(
                "web",
                &InstanceFilter::default(),
                index,
                Duration::from_secs(10),
            )
            .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(watchers.iter().all(|w| !w.is_finished()));
    r.register("web", "w-2", reg(2)).await.unwrap();
    for w in watchers {
        let list = tokio::time::timeout(Duration::from_secs(2), w)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(list.instances.len(), 2);
    }
}

#[tokio::test]
async fn index_older_than_the_history_is_gone() {
    let clock = ManualClock::default();
    let config = Config {
        history_size: 3,
        ..Config::default()
    };
    let app = jadugar_registry::http::router(registry(config, &clock).await);
    for i in 0..5u16 {
        let body = json!({"address": {"scheme": "http", "host": "10.0.0.1", "port": 100 + i}});
        call(
            &app,
            "PUT",
            &format!("/v1/registry/services/web/instances/w-{i}"),
            Some(ALL),
            Some(body),
        )
        .await;
    }
    for uri in [
        "/v1/registry/changes?index=1",
        "/v1/registry/events?index=1",
    ] {
        let (status, headers, problem) = call(&app, "GET", uri, Some(ALL), None).await;
        assert_eq!(status, StatusCode::GONE, "{uri}");
        assert_eq!(headers["content-type"], "application/problem+json");
        assert!(problem["type"].as_str().unwrap().ends_with("gone"));
    }
    let (status, _, changes) =
        call(&app, "GET", "/v1/registry/changes?index=3", Some(ALL), None).await;
    assert_eq!(status, StatusCode::OK);
    let indexes: Vec<u64> = changes["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, [4, 5]);
    assert_eq!(changes["index"], 5);
}

#[tokio::test]
async fn event_stream_sends_changes_and_progress() {
    use futures_util::StreamExt;
    let clock = ManualClock::default();
    let config = Config {
        progress_interval_secs: 1,
        ..Config::default()
    };
    let r = registry(config, &clock).await;
    let app = jadugar_registry::http::router(r.clone());
    let mut request = http::Request::get("/v1/registry/events?service=web")
        .body(axum::body::Body::empty())
        .unwrap();
    request.extensions_mut().insert(common::principal(ALL));
    let response = tower::ServiceExt::oneshot(app, request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body().into_data_stream();
    r.register("other", "o-1", reg(1)).await.unwrap();
    r.register("web", "w-1", reg(2)).await.unwrap();
    let mut text = String::new();
    while !text.contains("event: progress") {
        let chunk = tokio::time::timeout(Duration::from_secs(3), body.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains("event: change"));
    assert!(text.contains("\"service\":\"web\""));
    assert!(!text.contains("\"service\":\"other\""));
    assert!(text.contains("id: 2"));
}

#[tokio::test]
async fn a_wrong_method_is_a_405_problem_with_allow() {
    let clock = ManualClock::default();
    let app = jadugar_registry::http::router(registry(Config::default(), &clock).await);
    let (status, headers, problem) = call(
        &app,
        "POST",
        "/v1/config/namespaces/prod/keys/flag",
        Some(ALL),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers["content-type"], "application/problem+json");
    assert!(headers["allow"].to_str().unwrap().contains("PUT"));
    assert_eq!(problem["status"], 405);
}

#[tokio::test]
async fn star_preconditions_on_config_writes() {
    let clock = ManualClock::default();
    let app = jadugar_registry::http::router(registry(Config::default(), &clock).await);
    let uri = "/v1/config/namespaces/prod/keys/flag";
    // If-Match: * needs a current value: it never creates the key.
    let (status, _, problem) = call_with(
        &app,
        "PUT",
        uri,
        Some(ALL),
        Some(json!({"value": 1})),
        &[("if-match", "*")],
    )
    .await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    assert!(problem["detail"].as_str().unwrap().contains("has none"));
    let (status, ..) = call(&app, "GET", uri, Some(ALL), None).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the failed write stored nothing"
    );
    // If-None-Match: * creates only.
    let (status, headers, _) = call_with(
        &app,
        "PUT",
        uri,
        Some(ALL),
        Some(json!({"value": 1})),
        &[("if-none-match", "*")],
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(headers["etag"], "\"1\"");
    let (status, ..) = call_with(
        &app,
        "PUT",
        uri,
        Some(ALL),
        Some(json!({"value": 2})),
        &[("if-none-match", "*")],
    )
    .await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    // Now that it has a value, If-Match: * writes over it.
    let (status, headers, entry) = call_with(
        &app,
        "PUT",
        uri,
        Some(ALL),
        Some(json!({"value": 3})),
        &[("if-match", "*")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["etag"], "\"2\"");
    assert_eq!(entry["value"], 3);
    // After a deletion the key has no value again.
    let (status, ..) = call(&app, "DELETE", uri, Some(ALL), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, ..) = call_with(
        &app,
        "PUT",
        uri,
        Some(ALL),
        Some(json!({"value": 4})),
        &[("if-match", "*")],
    )
    .await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    // Other If-None-Match values, or both headers, are refused, not ignored.
    let (status, ..) = call_with(
        &app,
        "PUT",
        uri,
        Some(ALL),
        Some(json!({"value": 5})),
        &[("if-none-match", "\"1\"")],
    )
    .await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    let (status, ..) = call_with(
        &app,
        "PUT",
        uri,
        Some(ALL),
        Some(json!({"value": 5})),
        &[("if-none-match", "*"), ("if-match", "\"3\"")],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn config_cas_conflict_is_409() {
    let clock = ManualClock::default();
    let app = jadugar_registry::http::router(registry(Config::default(), &clock).await);
    let uri = "/v1/config/namespaces/prod.billing/keys/db.pool";
    let (status, _, v1) = call(
        &app,
        "PUT",
        uri,
        Some(ALL),
        Some(json!({"value": {"size": 5}, "expected_version": 0})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(v1["version"], 1);
    let (status, _, problem) = call(
        &app,
        "PUT",
        uri,
        Some(ALL),
        Some(json!({"value": 6, "expected_version": 0})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("current version is 1")
    );
    let (status, headers, v2) = call_with(
        &app,
        "PUT",
        uri,
        Some(ALL),
        Some(json!({"value": 7})),
        &[("if-match", "\"1\"")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v2["version"], 2);
    assert_eq!(
        headers["etag"], "\"2\"",
        "a write answers with the new ETag"
    );
    // A stale If-Match is a failed precondition (412), as RFC 9110 says.
    let (status, headers, problem) = call_with(
        &app,
        "PUT",
        uri,
        Some(ALL),
        Some(json!({"value": 8})),
        &[("if-match", "\"1\"")],
    )
    .await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(headers["content-type"], "application/problem+json");
    assert!(problem["detail"].as_str().unwrap().contains("is 2"));
    let (status, ..) = call_with(
        &app,
        "DELETE",
        uri,
        Some(ALL),
        None,
        &[("if-match", "\"1\"")],
    )
    .await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    let (status, ..) = call(&app, "DELETE", &format!("{uri}?version=1"), Some(ALL), None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, headers, got) = call(&app, "GET", uri, Some(&["config:read"]), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["value"], 7);
    assert_eq!(headers["etag"], "\"2\"");

    // Size limit and text values.
    let big = "x".repeat(70 * 1024);
    let (status, ..) = call(
        &app,
        "PUT",
        uri,
        Some(ALL),
        Some(json!({"value": big, "kind": "text"})),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, _, problem) = call(
        &app,
        "PUT",
        uri,
        Some(ALL),
        Some(json!({"value": 1, "kind": "text"})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["errors"][0]["field"], "value");
    let (status, _, problem) = call(
        &app,
        "PUT",
        "/v1/config/namespaces/Bad%20NS/keys/x",
        Some(ALL),
        Some(json!({"value": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["errors"][0]["field"], "namespace");
}

#[tokio::test]
async fn config_history_and_rollback() {
    let clock = ManualClock::default();
    let app = jadugar_registry::http::router(registry(Config::default(), &clock).await);
    let uri = "/v1/config/namespaces/prod.web/keys/feature.flags";
    call(
        &app,
        "PUT",
        uri,
        Some(ALL),
        Some(json!({"value": {"beta": false}})),
    )
    .await;
    call(
        &app,
        "PUT",
        uri,
        Some(ALL),
        Some(json!({"value": {"beta": true}})),
    )
    .await;
    let (status, _, rolled) = call(
        &app,
        "POST",
        &format!("{uri}/rollback"),
        Some(ALL),
        Some(json!({"version": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(rolled["version"], 3);
    let (_, _, got) = call(&app, "GET", uri, Some(ALL), None).await;
    assert_eq!(got["value"], json!({"beta": false}));
    let (status, _, history) = call(&app, "GET", &format!("{uri}/history"), Some(ALL), None).await;
    assert_eq!(status, StatusCode::OK);
    let values: Vec<_> = history["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["value"]["beta"].clone())
        .collect();
    assert_eq!(values, [json!(false), json!(true), json!(false)]);
    let (status, ..) = call(
        &app,
        "POST",
        &format!("{uri}/rollback"),
        Some(ALL),
        Some(json!({"version": 9})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, ..) = call(
        &app,
        "POST",
        &format!("{uri}/rollback"),
        Some(ALL),
        Some(json!({"version": 1, "expected_version": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);

    // Delete keeps the history; the key can be rolled back to life.
    let (status, ..) = call(&app, "DELETE", uri, Some(ALL), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, ..) = call(&app, "GET", uri, Some(ALL), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, back) = call(
        &app,
        "POST",
        &format!("{uri}/rollback"),
        Some(ALL),
        Some(json!({"version": 2})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(back["version"], 5);
    // Writing a deleted key creates it anew.
    call(&app, "DELETE", uri, Some(ALL), None).await;
    let (status, _, again) = call(&app, "PUT", uri, Some(ALL), Some(json!({"value": 1}))).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(again["version"], 7);
}

#[tokio::test]
async fn secrets_are_sealed_and_redacted() {
    let clock = ManualClock::default();
    let r = registry(Config::default(), &clock).await;
    let app = jadugar_registry::http::router(r.clone());
    let uri = "/v1/config/namespaces/prod.billing/keys/stripe.key";
    let (status, _, put) = call(
        &app,
        "PUT",
        uri,
        Some(ALL),
        Some(json!({"value": "sk_live_123", "kind": "text", "secret": true})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(put["redacted"], true);
    let stored = r
        .store()
        .config_get("prod.billing", "stripe.key")
        .await
        .unwrap()
        .unwrap();
    assert!(!stored.value.contains("sk_live_123"), "encrypted at rest");
    let (_, _, hidden) = call(&app, "GET", uri, Some(&["config:read"]), None).await;
    assert_eq!(hidden["value"], serde_json::Value::Null);
    assert_eq!(hidden["redacted"], true);
    let (_, _, shown) = call(
        &app,
        "GET",
        uri,
        Some(&["config:read", "config:secrets:read"]),
        None,
    )
    .await;
    assert_eq!(shown["value"], "sk_live_123");
    let (_, _, list) = call(
        &app,
        "GET",
        "/v1/config/namespaces/prod.billing/keys",
        Some(ALL),
        None,
    )
    .await;
    assert_eq!(list["entries"][0]["value"], serde_json::Value::Null);
    assert_eq!(list["entries"][0]["redacted"], true);
}

#[tokio::test]
async fn config_watch_on_key_and_prefix() {
    let clock = ManualClock::default();
    let r = registry(Config::default(), &clock).await;
    let put = |v: i64| jadugar_registry::model::ConfigPut {
        value: json!(v),
        kind: jadugar_registry::model::ValueKind::Json,
        secret: false,
        expected_version: None,
    };
    let first = r.config_put("prod.web", "a.x", put(1), None).await.unwrap();
    let since = first.modify_index;
    let key_watch = {
        let r = r.clone();
        tokio::spawn(async move {
            r.config_watch("prod.web", "a.x", since, Duration::from_secs(10), false)
                .await
        })
    };
    let prefix_watch = {
        let r = r.clone();
        tokio::spawn(async move {
            r.config_watch_list("prod.web", "b.", since, Duration::from_secs(10))
                .await
        })
    };
    r.config_put("prod.web", "a.y", put(2), None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!key_watch.is_finished());
    assert!(!prefix_watch.is_finished());
    r.config_put("prod.web", "b.z", put(3), None).await.unwrap();
    let listed = tokio::time::timeout(Duration::from_secs(2), prefix_watch)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(listed.entries.len(), 1);
    assert!(!key_watch.is_finished());
    r.config_put("prod.web", "a.x", put(4), None).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(2), key_watch)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.value, json!(4));
}

#[tokio::test]
async fn sqlite_backed_registry_survives_a_restart() {
    let db = jadugar_core::test_support::TestSqlite::new().await;
    let clock = ManualClock::default();
    let r = Registry::from_backends(
        &Config::default(),
        db.database(),
        None,
        clock.shared(),
        sealer(),
    )
    .await
    .unwrap();
    r.register("web", "w-1", reg(1)).await.unwrap();
    r.config_put(
        "prod.web",
        "k",
        jadugar_registry::model::ConfigPut {
            value: json!("v"),
            kind: jadugar_registry::model::ValueKind::Json,
            secret: false,
            expected_version: Some(0),
        },
        None,
    )
    .await
    .unwrap();
    drop(r);
    let again = Registry::from_backends(
        &Config::default(),
        db.database(),
        None,
        clock.shared(),
        sealer(),
    )
    .await
    .unwrap();
    assert_eq!(again.endpoints("web", &[]).len(), 1);
    assert_eq!(
        again
            .config_get("prod.web", "k", false)
            .await
            .unwrap()
            .version,
        1
    );
    assert_eq!(again.hub().current(), 2);
}

/// A memory store that can hold a write (after it committed) or a listing
/// (after it read) until released, and can land a heartbeat between a
/// listing and whatever the caller does next: the interleavings a slow
/// database produces.
#[derive(Debug, Default)]
struct GatedStore {
    inner: jadugar_registry::store::MemoryStore,
    put: Gate,
    list: Gate,
    touch_after_list: std::sync::Mutex<Option<(String, String, chrono::DateTime<chrono::Utc>)>>,
    /// After the next read of an instance, a sweep running at this time
    /// expires it if its deadline (as stored then) has passed.
    sweep_after_get: std::sync::Mutex<Option<chrono::DateTime<chrono::Utc>>>,
    /// When set, the store is shared and these are the other hosts' changes.
    remote: std::sync::Mutex<
        Option<tokio::sync::mpsc::UnboundedReceiver<jadugar_registry::store::RemoteEvent>>,
    >,
}

#[derive(Debug, Default)]
struct Gate {
    armed: std::sync::atomic::AtomicBool,
    entered: tokio::sync::Notify,
    release: tokio::sync::Notify,
}

impl Gate {
    fn arm(&self) {
        self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    async fn pass(&self) {
        if self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            self.entered.notify_one();
            self.release.notified().await;
        }
    }
}

#[async_trait::async_trait]
impl jadugar_registry::store::RegistryStore for GatedStore {
    async fn put_instance(
        &self,
        instance: &jadugar_registry::model::Instance,
        if_index: Option<u64>,
    ) -> Result<Option<u64>, Error> {
        let written = self.inner.put_instance(instance, if_index).await?;
        self.put.pass().await;
        Ok(written)
    }
    async fn delete_instance(
        &self,
        service: &str,
        id: &str,
        if_index: Option<u64>,
    ) -> Result<Option<u64>, Error> {
        self.inner.delete_instance(service, id, if_index).await
    }
    async fn touch_instance(
        &self,
        service: &str,
        id: &str,
        deadline: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, Error> {
        self.inner.touch_instance(service, id, deadline).await
    }
    async fn get_instance(
        &self,
        service: &str,
        id: &str,
    ) -> Result<Option<jadugar_registry::model::Instance>, Error> {
        let got = self.inner.get_instance(service, id).await?;
        let sweep_at = self.sweep_after_get.lock().unwrap().take();
        if let Some(now) = sweep_at
            && let Some(mut late) = self.inner.get_instance(service, id).await?
            && late.ttl_deadline.is_some_and(|d| d < now)
        {
            late.ttl_expired = true;
            late.recompute(now);
            let expected = late.modify_index;
            self.inner.put_instance(&late, Some(expected)).await?;
        }
        Ok(got)
    }
    async fn list_instances(
        &self,
        service: Option<&str>,
    ) -> Result<Vec<jadugar_registry::model::Instance>, Error> {
        let listed = self.inner.list_instances(service).await?;
        let touch = self.touch_after_list.lock().unwrap().take();
        if let Some((service, id, deadline)) = touch {
            self.inner.touch_instance(&service, &id, deadline).await?;
        }
        self.list.pass().await;
        Ok(listed)
    }
    async fn claim_checks(
        &self,
        host: &str,
        now: chrono::DateTime<chrono::Utc>,
        until: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<Vec<(String, String)>, Error> {
        self.inner.claim_checks(host, now, until, limit).await
    }
    async fn release_checks(&self, host: &str) -> Result<(), Error> {
        self.inner.release_checks(host).await
    }
    async fn config_get(
        &self,
        namespace: &str,
        key: &str,
    ) -> Result<Option<jadugar_registry::model::StoredConfig>, Error> {
        self.inner.config_get(namespace, key).await
    }
    async fn config_version(
        &self,
        namespace: &str,
        key: &str,
        version: u64,
    ) -> Result<Option<jadugar_registry::model::StoredConfig>, Error> {
        self.inner.config_version(namespace, key, version).await
    }
    async fn config_put(
        &self,
        new: &jadugar_registry::model::NewConfig,
        expected: Option<u64>,
    ) -> Result<jadugar_registry::model::StoredConfig, Error> {
        self.inner.config_put(new, expected).await
    }
    async fn config_list(
        &self,
        namespace: &str,
        prefix: &str,
    ) -> Result<Vec<jadugar_registry::model::StoredConfig>, Error> {
        self.inner.config_list(namespace, prefix).await
    }
    async fn config_history(
        &self,
        namespace: &str,
        key: &str,
    ) -> Result<Vec<jadugar_registry::model::StoredConfig>, Error> {
        self.inner.config_history(namespace, key).await
    }
    async fn current_index(&self) -> Result<u64, Error> {
        self.inner.current_index().await
    }
    fn shared(&self) -> bool {
        self.remote.lock().unwrap().is_some()
    }
    async fn listen(
        &self,
        sink: tokio::sync::mpsc::UnboundedSender<jadugar_registry::store::RemoteEvent>,
        cancel: tokio_util::sync::CancellationToken,
    ) -> Result<(), Error> {
        let Some(mut remote) = self.remote.lock().unwrap().take() else {
            cancel.cancelled().await;
            return Ok(());
        };
        loop {
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                event = remote.recv() => match event {
                    Some(event) => { let _ = sink.send(event); }
                    None => { cancel.cancelled().await; return Ok(()); }
                },
            }
        }
    }
}

async fn gated(clock: &ManualClock) -> (std::sync::Arc<GatedStore>, Registry) {
    let store = std::sync::Arc::new(GatedStore::default());
    let registry = Registry::new(Config::default(), store.clone(), clock.shared(), sealer())
        .await
        .unwrap();
    (store, registry)
}

#[tokio::test]
async fn changes_reach_watchers_in_index_order() {
    let clock = ManualClock::default();
    let (store, r) = gated(&clock).await;
    // The first write commits (index 1) and stalls before it is announced.
    store.put.arm();
    let first = tokio::spawn({
        let r = r.clone();
        async move { r.register("api", "a-1", reg(1)).await }
    });
    store.put.entered.notified().await;
    let second = tokio::spawn({
        let r = r.clone();
        async move { r.register("api", "a-2", reg(2)).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A watcher reads the feed now and again after both writes.
    let early = r.hub().changes_since(0, |_| true).unwrap();
    let since = early.last().map_or(0, |c| c.index);
    store.put.release.notify_one();
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    let late = r.hub().changes_since(since, |_| true).unwrap();
    let seen: Vec<u64> = early.iter().chain(&late).map(|c| c.index).collect();
    assert_eq!(seen, vec![1, 2], "a watcher must see every change once");
}

#[tokio::test]
async fn a_register_whose_caller_went_away_still_reaches_discovery() {
    let clock = ManualClock::default();
    let (store, r) = gated(&clock).await;
    store.put.arm();
    let call = tokio::spawn({
        let r = r.clone();
        async move { r.register("api", "a-1", reg(1)).await }
    });
    store.put.entered.notified().await;
    // The HTTP client disconnects: its request future is dropped after the
    // store committed.
    call.abort();
    let _ = call.await;
    store.put.release.notify_one();
    let seen = common::eventually(Duration::from_secs(2), || {
        r.endpoints("api", &[]).len() == 1 && r.hub().current() == 1
    })
    .await;
    assert!(
        seen,
        "a committed registration must be served and announced"
    );
}

#[tokio::test]
async fn a_slow_reload_never_resurrects_a_deregistered_instance() {
    let clock = ManualClock::default();
    let (store, r) = gated(&clock).await;
    r.register("api", "a-1", reg(1)).await.unwrap();
    r.register("api", "a-2", reg(2)).await.unwrap();
    // Removing a-2 reloads the service and stalls with [a-1] in hand...
    store.list.arm();
    let slow = tokio::spawn({
        let r = r.clone();
        async move { r.deregister("api", "a-2").await }
    });
    store.list.entered.notified().await;
    // ...while a-1 is removed too.
    let fast = tokio::spawn({
        let r = r.clone();
        async move { r.deregister("api", "a-1").await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    store.list.release.notify_one();
    slow.await.unwrap().unwrap();
    fast.await.unwrap().unwrap();
    assert!(r.instance("api", "a-1").is_err());
    assert!(r.endpoints("api", &[]).is_empty());
}

#[tokio::test]
async fn a_heartbeat_during_a_sweep_keeps_the_instance_passing() {
    let clock = ManualClock::default();
    let (store, r) = gated(&clock).await;
    r.register("api", "a-1", reg(1).with_ttl_secs(10))
        .await
        .unwrap();
    clock.advance(Duration::from_secs(11));
    // The heartbeat lands after the sweep listed the (late) instance.
    let renewed = jadugar_core::Clock::now(&clock) + chrono::Duration::seconds(10);
    *store.touch_after_list.lock().unwrap() = Some(("api".into(), "a-1".into(), renewed));
    r.sweep().await.unwrap();
    assert_eq!(r.instance("api", "a-1").unwrap().status, Status::Passing);
    assert!(!r.instance("api", "a-1").unwrap().ttl_expired);
}

#[tokio::test]
async fn bad_input_is_a_problem_naming_the_field() {
    let clock = ManualClock::default();
    let app = jadugar_registry::http::router(registry(Config::default(), &clock).await);
    let field_of = |problem: &serde_json::Value| problem["errors"][0]["field"].clone();
    for (uri, field) in [
        ("/v1/registry/services/web?index=abc", "index"),
        ("/v1/registry/services/web?limit=5", "limit"),
        ("/v1/registry/changes", "index"),
        ("/v1/registry/changes?index=1&index=2", "index"),
        ("/v1/config/namespaces/ns/keys?prefix=a&index=-1", "index"),
    ] {
        let (status, headers, problem) = call(&app, "GET", uri, Some(ALL), None).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{uri}");
        assert_eq!(headers["content-type"], "application/problem+json");
        assert_eq!(field_of(&problem), field, "{uri}: {problem}");
    }
    let (status, _, problem) = call(
        &app,
        "DELETE",
        "/v1/config/namespaces/ns/keys/k?version=x",
        Some(ALL),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(field_of(&problem), "version");
    // A path segment that is not UTF-8 once decoded.
    for (uri, field) in [
        ("/v1/registry/services/%FF", "service"),
        ("/v1/registry/services/web/instances/%FF", "id"),
        ("/v1/config/namespaces/ns/keys/%C3", "key"),
    ] {
        let (status, headers, problem) = call(&app, "GET", uri, Some(ALL), None).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{uri}");
        assert_eq!(headers["content-type"], "application/problem+json");
        assert_eq!(field_of(&problem), field, "{uri}: {problem}");
    }

    // A wrong type deep in the body names its path.
    let uri = "/v1/registry/services/web/instances/w-1";
    let body = json!({"address": {"scheme": "http", "host": "10.0.0.1", "port": 70000}});
    let (status, _, problem) = call(&app, "PUT", uri, Some(ALL), Some(body)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(field_of(&problem), "address.port");
    let body = json!({"address": {"scheme": "http", "host": "10.0.0.1", "port": 80},
        "check": {"kind": "udp"}});
    let (status, _, problem) = call(&app, "PUT", uri, Some(ALL), Some(body)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(field_of(&problem), "check.kind");

    // A body over the limit is a problem too, not plain text.
    let huge = "x".repeat(300 * 1024);
    let (status, headers, _) = call(
        &app,
        "PUT",
        "/v1/config/namespaces/ns/keys/k",
        Some(ALL),
        Some(json!({"value": huge, "kind": "text"})),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(headers["content-type"], "application/problem+json");
}

#[tokio::test]
async fn an_index_ahead_of_a_reset_registry_is_gone() {
    use futures_util::StreamExt;
    let clock = ManualClock::default();
    let config = Config {
        progress_interval_secs: 1,
        ..Config::default()
    };
    // A memory registry restarted: a watcher still holds index 50.
    let r = registry(config, &clock).await;
    let app = jadugar_registry::http::router(r.clone());
    r.register("web", "w-1", reg(1)).await.unwrap();
    let (status, headers, problem) = call(
        &app,
        "GET",
        "/v1/registry/changes?index=50&wait=50ms",
        Some(ALL),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::GONE, "{problem}");
    assert_eq!(headers["content-type"], "application/problem+json");

    let mut request = http::Request::get("/v1/registry/events")
        .header("last-event-id", "50")
        .body(axum::body::Body::empty())
        .unwrap();
    request.extensions_mut().insert(common::principal(ALL));
    let response = tower::ServiceExt::oneshot(app, request).await.unwrap();
    let mut body = response.into_body().into_data_stream();
    let mut text = String::new();
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout(Duration::from_secs(3), body.next()).await
    {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains("event: reset"), "{text}");
    assert!(!text.contains("event: progress"), "{text}");
}

#[tokio::test]
async fn a_watch_on_a_deleted_key_blocks_instead_of_spinning() {
    let clock = ManualClock::default();
    let r = registry(Config::default(), &clock).await;
    let app = jadugar_registry::http::router(r.clone());
    let uri = "/v1/config/namespaces/prod.web/keys/flag";
    call(&app, "PUT", uri, Some(ALL), Some(json!({"value": 1}))).await;
    call(&app, "DELETE", uri, Some(ALL), None).await;
    let (status, headers, _) = call(&app, "GET", uri, Some(ALL), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let index = headers["x-jadugar-index"].to_str().unwrap().to_owned();
    assert_eq!(index, "2", "the deletion's index");
    // Blocking from that index waits (rather than answering 404 at once)...
    let started = tokio::time::Instant::now();
    let (status, ..) = call(
        &app,
        "GET",
        &format!("{uri}?index={index}&wait=200ms"),
        Some(ALL),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(started.elapsed() >= Duration::from_millis(190));
    // ...and a key never written blocks from 0 until it is created.
    let other = "/v1/config/namespaces/prod.web/keys/never";
    let (status, headers, _) = call(&app, "GET", other, Some(ALL), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(headers["x-jadugar-index"], "0");
    let watch = {
        let app = app.clone();
        tokio::spawn(async move {
            call(
                &app,
                "GET",
                &format!("{other}?index=0&wait=5s"),
                Some(ALL),
                None,
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!watch.is_finished());
    call(&app, "PUT", other, Some(ALL), Some(json!({"value": 2}))).await;
    let (status, _, got) = tokio::time::timeout(Duration::from_secs(2), watch)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["value"], 2);
}

#[tokio::test]
async fn get_instance_shows_the_latest_heartbeat() {
    let clock = ManualClock::default();
    let r = registry(Config::default(), &clock).await;
    let app = jadugar_registry::http::router(r.clone());
    r.register("api", "a-1", reg(1).with_ttl_secs(10))
        .await
        .unwrap();
    clock.advance(Duration::from_secs(8));
    let uri = "/v1/registry/services/api/instances/a-1";
    let (_, _, beat) = call(&app, "PUT", &format!("{uri}/heartbeat"), Some(ALL), None).await;
    let (status, _, got) = call(&app, "GET", uri, Some(ALL), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["ttl_deadline"], beat["ttl_deadline"]);
    let deadline: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(got["ttl_deadline"].clone()).unwrap();
    assert_eq!(
        deadline,
        jadugar_core::Clock::now(&clock) + chrono::Duration::seconds(10)
    );
}

#[tokio::test]
async fn the_guard_flag_drops_once_the_guard_stops_holding() {
    let clock = ManualClock::default();
    let config = Config {
        guard_expiry_share: 0.5,
        guard_min_instances: 3,
        ..Config::default()
    };
    let r = registry(config, &clock).await;
    for i in 0..4 {
        r.register("web", &format!("w-{i}"), reg(8000 + i).with_ttl_secs(10))
            .await
            .unwrap();
    }
    clock.advance(Duration::from_secs(11));
    r.sweep().await.unwrap();
    assert!(r.self_preservation("web"), "all four silent: held");
    // Three come back; the fourth alone is an ordinary expiry, which the
    // sweep carries out: nothing is held back any more.
    for i in 1..4 {
        r.heartbeat("web", &format!("w-{i}")).await.unwrap();
    }
    r.sweep().await.unwrap();
    assert_eq!(r.endpoints("web", &[]).len(), 3);
    assert!(
        !r.self_preservation("web"),
        "the flag must not outlive the hold"
    );
    let summary = r.services().into_iter().find(|s| s.name == "web").unwrap();
    assert!(!summary.self_preservation);
}

#[tokio::test]
async fn changes_of_other_hosts_reach_watchers_in_index_order() {
    use jadugar_registry::model::{Change, Topic};
    use jadugar_registry::store::{RegistryStore, RemoteEvent};
    let clock = ManualClock::default();
    let store = std::sync::Arc::new(GatedStore::default());
    let (to_listener, remote) = tokio::sync::mpsc::unbounded_channel();
    *store.remote.lock().unwrap() = Some(remote);
    let r = Registry::new(Config::default(), store.clone(), clock.shared(), sealer())
        .await
        .unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let tasks = r.start(cancel.clone());
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Another host commits index 1; its notification is still in flight
    // when this host commits index 2.
    let mut other = jadugar_registry::model::Instance {
        modify_index: 0,
        ..r.register("api", "probe", reg(9)).await.unwrap()
    };
    r.deregister("api", "probe").await.unwrap();
    let base = r.hub().current();
    other.id = "b-1".into();
    store.inner.put_instance(&other, None).await.unwrap();
    let mine = tokio::spawn({
        let r = r.clone();
        async move { r.register("api", "a-1", reg(1)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let early = r.hub().changes_since(base, |_| true).unwrap();
    let since = early.last().map_or(base, |c| c.index);
    let topic = Topic::Service {
        service: "api".into(),
    };
    to_listener
        .send(RemoteEvent::Change(Change {
            index: base + 1,
            topic,
        }))
        .unwrap();
    mine.await.unwrap().unwrap();
    let late = r.hub().changes_since(since, |_| true).unwrap();
    let seen: Vec<u64> = early.iter().chain(&late).map(|c| c.index).collect();
    assert_eq!(seen, vec![base + 1, base + 2]);
    assert_eq!(r.endpoints("api", &[]).len(), 2);
    cancel.cancel();
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test]
async fn a_heartbeat_racing_the_sweep_never_leaves_the_instance_expired() {
    use jadugar_registry::store::RegistryStore;
    let clock = ManualClock::default();
    let (store, r) = gated(&clock).await;
    r.register("api", "a-1", reg(1).with_ttl_secs(10))
        .await
        .unwrap();
    clock.advance(Duration::from_secs(11));
    // The sweep expires the late instance while the heartbeat is under way.
    *store.sweep_after_get.lock().unwrap() = Some(jadugar_core::Clock::now(&clock));
    let beat = r.heartbeat("api", "a-1").await.unwrap();
    assert_eq!(beat.status, Status::Passing);
    let stored = store
        .inner
        .get_instance("api", "a-1")
        .await
        .unwrap()
        .unwrap();
    assert!(!stored.ttl_expired, "a heartbeat answered 200 must count");
    assert_eq!(stored.status, Status::Passing);
}
