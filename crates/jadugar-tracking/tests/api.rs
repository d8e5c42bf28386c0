//! The HTTP API end to end (router + service + memory store).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use jadugar_core::{ManualClock, MasterKey, Principal, PrincipalKind, Sealer};
use jadugar_tracking::notify::{MemoryDirectory, RecordingNotifier};
use jadugar_tracking::store::MemoryStore;
use jadugar_tracking::{Config, Tracking};
use serde_json::{Value, json};
use tower::ServiceExt;

struct App {
    router: Router,
    notifier: Arc<RecordingNotifier>,
    directory: Arc<MemoryDirectory>,
}

fn user(name: &str, perms: &[&str]) -> Principal {
    Principal::new(name, PrincipalKind::User).with_permissions(perms.iter().copied())
}

fn app() -> App {
    let notifier = Arc::new(RecordingNotifier::default());
    let directory = Arc::new(
        MemoryDirectory::new()
            .with_user("ana", ["tracking:admin"])
            .with_user("bob", ["tracking:write"])
            .with_user("cy", ["tracking:read"])
            .with_user("outsider", ["auth:read"]),
    );
    let tracking = Tracking::new(
        Arc::new(MemoryStore::new()),
        ManualClock::default().shared(),
        Sealer::new(MasterKey::generate("k"), []),
        Config::default(),
    )
    .with_directory(directory.clone())
    .with_notifier(notifier.clone());
    App {
        router: jadugar_tracking::http::router(tracking),
        notifier,
        directory,
    }
}

impl App {
    async fn call(
        &self,
        who: Option<&Principal>,
        method: &str,
        uri: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut req = req
            .header("content-type", "application/json")
            .body(match body {
                Some(b) => Body::from(b.to_string()),
                None => Body::empty(),
            })
            .unwrap();
        if let Some(p) = who {
            req.extensions_mut().insert(p.clone());
        }
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        (status, headers, value)
    }

    async fn project(&self, who: &Principal) -> String {
        let (s, _, v) = self
            .call(
                Some(who),
                "POST",
                "/v1/tracking/projects",
                Some(json!({"name": "Apollo"})),
                &[],
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["id"].as_str().unwrap().to_owned()
    }

    async fn task(&self, who: &Principal, project: &str, body: Value) -> Value {
        let (s, _, v) = self
            .call(
                Some(who),
                "POST",
                &format!("/v1/tracking/projects/{project}/tasks"),
                Some(body),
                &[],
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v
    }

    async fn patch(&self, who: &Principal, task: &str, body: Value) -> (StatusCode, Value) {
        let (s, _, v) = self
            .call(
                Some(who),
                "PATCH",
                &format!("/v1/tracking/tasks/{task}"),
                Some(body),
                &[],
            )
            .await;
        (s, v)
    }
}

#[tokio::test]
async fn authentication_and_permissions() {
    let app = app();
    let (s, h, v) = app
        .call(None, "GET", "/v1/tracking/projects", None, &[])
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(h.contains_key("www-authenticate"));
    assert_eq!(h["content-type"], "application/problem+json");
    assert_eq!(v["status"], 401);

    let reader = user("cy", &["tracking:read"]);
    let (s, _, _) = app
        .call(
            Some(&reader),
            "POST",
            "/v1/tracking/projects",
            Some(json!({"name": "x"})),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    let ana = user("ana", &["tracking:admin"]);
    let pid = app.project(&ana).await;
    // Per-project grants: visible only where granted.
    let scoped = user("dee", &[&format!("tracking:project:{pid}:write")]);
    let (s, _, v) = app
        .call(Some(&scoped), "GET", "/v1/tracking/projects", None, &[])
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    app.task(&scoped, &pid, json!({"title": "scoped write"}))
        .await;
    let other = app.project(&ana).await;
    let (s, _, _) = app
        .call(
            Some(&scoped),
            "GET",
            &format!("/v1/tracking/projects/{other}"),
            None,
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Webhooks need project admin.
    let (s, _, _) = app
        .call(
            Some(&scoped),
            "POST",
            &format!("/v1/tracking/projects/{pid}/webhooks"),
            Some(json!({"url": "https://example.com/h", "event_types": ["*"]})),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Garbage ids are 404, not 400/500.
    let (s, _, _) = app
        .call(
            Some(&ana),
            "GET",
            "/v1/tracking/tasks/not-a-uuid",
            None,
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn validation_lists_every_bad_field() {
    let app = app();
    let ana = user("ana", &["tracking:admin"]);
    let pid = app.project(&ana).await;
    let (s, h, v) = app
        .call(
            Some(&ana),
            "POST",
            &format!("/v1/tracking/projects/{pid}/tasks"),
            Some(json!({
                "title": "",
                "estimate": 99999,
                "labels": ["ok", ""],
                "status": "nope",
                "assignees": ["ghost", "outsider"],
                "blocked_by": ["0190f0f0-0000-7000-8000-000000000000"],
            })),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(h["content-type"], "application/problem+json");
    let fields: Vec<&str> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    for f in [
        "title",
        "estimate",
        "labels[1]",
        "status",
        "assignees[0]",
        "assignees[1]",
        "blocked_by[0]",
    ] {
        assert!(fields.contains(&f), "{f} missing from {fields:?}");
    }
    // Type errors name the field too.
    let (s, _, v) = app
        .call(
            Some(&ana),
            "POST",
            &format!("/v1/tracking/projects/{pid}/tasks"),
            Some(json!({"title": "x", "due_date": "tomorrow"})),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["errors"][0]["field"], "due_date");
    let (s, _, v) = app
        .call(
            Some(&ana),
            "GET",
            "/v1/tracking/tasks?priority=huge",
            None,
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["errors"][0]["field"], "priority");
}

#[tokio::test]
async fn null_for_a_field_that_cannot_be_cleared_is_422_and_changes_nothing() {
    let app = app();
    let ana = user("ana", &["tracking:admin"]);
    let pid = app.project(&ana).await;
    let uri = format!("/v1/tracking/projects/{pid}");
    let (s, _, v) = app
        .call(Some(&ana), "PATCH", &uri, Some(json!({"name": null})), &[])
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(fields(&v), ["name"]);
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("may not be null"),
        "{v}"
    );
    let (s, _, v) = app.call(Some(&ana), "GET", &uri, None, &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["name"], "Apollo");

    let task = app.task(&ana, &pid, json!({"title": "Launch"})).await;
    let id = task["id"].as_str().unwrap();
    for field in ["title", "priority", "labels", "status", "assignees"] {
        let (s, v) = app.patch(&ana, id, json!({ field: null })).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{field}: {v}");
        assert_eq!(fields(&v), [field]);
    }
    // Fields that can be cleared still take null.
    let (s, v) = app
        .patch(&ana, id, json!({"due_date": "2030-01-01", "estimate": 3}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = app
        .patch(&ana, id, json!({"due_date": null, "estimate": null}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v.get("due_date").is_none_or(Value::is_null), "{v}");
    assert!(v.get("estimate").is_none_or(Value::is_null), "{v}");
    assert_eq!(v["title"], "Launch");
}

#[tokio::test]
async fn disallowed_transition_is_422_naming_both_states() {
    let app = app();
    let ana = user("ana", &["tracking:admin"]);
    let pid = app.project(&ana).await;
    let t = app
        .task(&ana, &pid, json!({"title": "t", "status": "backlog"}))
        .await;
    let tid = t["id"].as_str().unwrap();
    let (s, v) = app.patch(&ana, tid, json!({"status": "done"})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let detail = v["detail"].as_str().unwrap();
    assert!(
        detail.contains("backlog") && detail.contains("done"),
        "{detail}"
    );
    assert_eq!(v["errors"][0]["field"], "status");
    let (s, v) = app.patch(&ana, tid, json!({"status": "todo"})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["category"], "unstarted");
}

#[tokio::test]
async fn custom_workflow_needs_admin_and_applies() {
    let app = app();
    let ana = user("ana", &["tracking:admin"]);
    let bob = user("bob", &["tracking:write"]);
    let pid = app.project(&ana).await;
    let wf = json!({"workflow": {
        "statuses": [
            {"key": "open", "name": "Open", "category": "unstarted"},
            {"key": "shipped", "name": "Shipped", "category": "completed"}
        ],
        "transitions": [{"from": "open", "to": "shipped"}],
        "initial": "open"
    }});
    let uri = format!("/v1/tracking/projects/{pid}");
    let (s, _, _) = app
        .call(Some(&bob), "PATCH", &uri, Some(wf.clone()), &[])
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _, v) = app.call(Some(&ana), "PATCH", &uri, Some(wf), &[]).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let t = app.task(&bob, &pid, json!({"title": "t"})).await;
    assert_eq!(t["status"], "open");
    let tid = t["id"].as_str().unwrap();
    let (s, v) = app.patch(&bob, tid, json!({"status": "shipped"})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _) = app.patch(&bob, tid, json!({"status": "open"})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn stale_if_match_is_412() {
    let app = app();
    let ana = user("ana", &["tracking:admin"]);
    let pid = app.project(&ana).await;
    let t = app.task(&ana, &pid, json!({"title": "t"})).await;
    let tid = t["id"].as_str().unwrap();
    let uri = format!("/v1/tracking/tasks/{tid}");
    let (s, h, _) = app.call(Some(&ana), "GET", &uri, None, &[]).await;
    assert_eq!(s, StatusCode::OK);
    let etag = h["etag"].to_str().unwrap().to_owned();
    assert_eq!(etag, "\"1\"");
    let (s, h, _) = app
        .call(
            Some(&ana),
            "PATCH",
            &uri,
            Some(json!({"title": "v2"})),
            &[("if-match", &etag)],
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["etag"], "\"2\"");
    let (s, _, v) = app
        .call(
            Some(&ana),
            "PATCH",
            &uri,
            Some(json!({"title": "v3"})),
            &[("if-match", &etag)],
        )
        .await;
    assert_eq!(s, StatusCode::PRECONDITION_FAILED);
    assert_eq!(v["status"], 412);
    let (_, _, v) = app.call(Some(&ana), "GET", &uri, None, &[]).await;
    assert_eq!(v["title"], "v2");
}

#[tokio::test]
async fn blocked_by_cycles_are_refused_and_blockers_block() {
    let app = app();
    let ana = user("ana", &["tracking:admin"]);
    let bob = user("bob", &["tracking:write"]);
    let pid = app.project(&ana).await;
    let a = app.task(&bob, &pid, json!({"title": "a"})).await;
    let a = a["id"].as_str().unwrap();
    let b = app
        .task(&bob, &pid, json!({"title": "b", "blocked_by": [a]}))
        .await;
    let b = b["id"].as_str().unwrap();
    let c = app
        .task(&bob, &pid, json!({"title": "c", "blocked_by": [b]}))
        .await;
    let c = c["id"].as_str().unwrap();
    // a blocked by c would close the loop a <- b <- c <- a.
    let (s, v) = app.patch(&bob, a, json!({"blocked_by": [c]})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["errors"][0]["field"], "blocked_by[0]");
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("cycle")
    );
    let (s, _) = app.patch(&bob, a, json!({"blocked_by": [a]})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    // Parent cycles too.
    let (s, _) = app.patch(&bob, a, json!({"parent_id": c})).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = app.patch(&bob, c, json!({"parent_id": a})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");

    // b cannot complete while a is open...
    app.patch(&bob, b, json!({"status": "in_progress"})).await;
    let (s, v) = app.patch(&bob, b, json!({"status": "done"})).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(v["detail"].as_str().unwrap().contains(a));
    // ...forcing needs admin...
    let (s, _) = app
        .patch(&bob, b, json!({"status": "done", "force": true}))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v) = app
        .patch(&ana, b, json!({"status": "done", "force": true}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // ...and once the blocker is closed nobody needs to force.
    app.patch(&bob, a, json!({"status": "canceled"})).await;
    app.patch(&bob, c, json!({"status": "in_progress"})).await;
    let (s, _) = app.patch(&bob, c, json!({"status": "done"})).await;
    assert_eq!(s, StatusCode::OK, "c's only blocker, b, is closed");
}

#[tokio::test]
async fn activity_log_holds_field_diffs_and_comments() {
    let app = app();
    let ana = user("ana", &["tracking:admin"]);
    let pid = app.project(&ana).await;
    let t = app
        .task(&ana, &pid, json!({"title": "first", "priority": "low"}))
        .await;
    let tid = t["id"].as_str().unwrap();
    let (s, _) = app
        .patch(
            &ana,
            tid,
            json!({"title": "second", "priority": "high", "labels": ["ui"]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, v) = app
        .call(
            Some(&ana),
            "POST",
            &format!("/v1/tracking/tasks/{tid}/comments"),
            Some(json!({"body": "<script>alert(1)</script>"})),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(v["body"], "<script>alert(1)</script>");
    let (_, _, v) = app
        .call(
            Some(&ana),
            "GET",
            &format!("/v1/tracking/tasks/{tid}/activity"),
            None,
            &[],
        )
        .await;
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[0]["action"], "task.created");
    assert_eq!(items[1]["action"], "task.updated");
    assert_eq!(items[1]["actor"], "ana");
    let changes = items[1]["changes"].as_array().unwrap();
    let title = changes.iter().find(|c| c["field"] == "title").unwrap();
    assert_eq!(title["from"], "first");
    assert_eq!(title["to"], "second");
    let prio = changes.iter().find(|c| c["field"] == "priority").unwrap();
    assert_eq!(
        (prio["from"].as_str(), prio["to"].as_str()),
        (Some("low"), Some("high"))
    );
    let labels = changes.iter().find(|c| c["field"] == "labels").unwrap();
    assert_eq!(labels["from"], json!([]));
    assert_eq!(labels["to"], json!(["ui"]));
    assert_eq!(changes.len(), 3, "only changed fields: {changes:?}");
    assert_eq!(items[2]["action"], "task.commented");
    let (_, _, v) = app
        .call(
            Some(&ana),
            "GET",
            &format!("/v1/tracking/projects/{pid}/activity"),
            None,
            &[],
        )
        .await;
    assert_eq!(v["items"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn bulk_dry_run_changes_nothing_and_reports_per_item() {
    let app = app();
    let ana = user("ana", &["tracking:admin"]);
    let pid = app.project(&ana).await;
    let a = app.task(&ana, &pid, json!({"title": "a"})).await;
    let b = app
        .task(&ana, &pid, json!({"title": "b", "status": "backlog"}))
        .await;
    let ids = [
        a["id"].clone(),
        b["id"].clone(),
        json!("0190f0f0-0000-7000-8000-000000000000"),
    ];
    let body = json!({"task_ids": ids, "changes": {"status": "in_progress", "labels": ["x"]}, "dry_run": true});
    let (s, _, v) = app
        .call(
            Some(&ana),
            "POST",
            "/v1/tracking/tasks/bulk",
            Some(body.clone()),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["succeeded"], 2);
    assert_eq!(v["failed"], 1);
    assert_eq!(v["items"][0]["task"]["status"], "in_progress");
    assert_eq!(v["items"][2]["status"], 404);
    for t in [&a, &b] {
        let (_, _, now) = app
            .call(
                Some(&ana),
                "GET",
                &format!("/v1/tracking/tasks/{}", t["id"].as_str().unwrap()),
                None,
                &[],
            )
            .await;
        assert_eq!(now, *t, "dry run changed a task");
    }
    // For real: one item fails its transition, the others apply.
    let body = json!({"task_ids": ids, "changes": {"status": "done"}});
    let (_, _, v) = app
        .call(
            Some(&ana),
            "POST",
            "/v1/tracking/tasks/bulk",
            Some(body),
            &[],
        )
        .await;
    assert_eq!(
        v["items"][0]["status"], 422,
        "todo -> done is not allowed: {v}"
    );
    let body = json!({"task_ids": [a["id"], b["id"]], "changes": {"status": "in_progress", "assignees": ["bob"]}});
    let (_, _, v) = app
        .call(
            Some(&ana),
            "POST",
            "/v1/tracking/tasks/bulk",
            Some(body),
            &[],
        )
        .await;
    assert_eq!(v["succeeded"], 2, "{v}");
    let (_, _, v) = app
        .call(
            Some(&user("bob", &["tracking:write"])),
            "GET",
            "/v1/tracking/me/tasks",
            None,
            &[],
        )
        .await;
    assert_eq!(v["items"].as_array().unwrap().len(), 2);
    let (s, _, _) = app
        .call(
            Some(&ana),
            "POST",
            "/v1/tracking/tasks/bulk",
            Some(json!({"task_ids": [], "changes": {}})),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn idempotency_key_replays_creates() {
    let app = app();
    let ana = user("ana", &["tracking:admin"]);
    let pid = app.project(&ana).await;
    let uri = format!("/v1/tracking/projects/{pid}/tasks");
    let key = [("idempotency-key", "create-1")];
    let (s1, _, v1) = app
        .call(
            Some(&ana),
            "POST",
            &uri,
            Some(json!({"title": "once"})),
            &key,
        )
        .await;
    let (s2, h2, v2) = app
        .call(
            Some(&ana),
            "POST",
            &uri,
            Some(json!({"title": "once"})),
            &key,
        )
        .await;
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::CREATED));
    assert_eq!(v1, v2);
    assert_eq!(h2["idempotent-replayed"], "true");
    let (_, _, list) = app.call(Some(&ana), "GET", &uri, None, &[]).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let (s, _, _) = app
        .call(
            Some(&ana),
            "POST",
            &uri,
            Some(json!({"title": "other"})),
            &key,
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    // Keys are per caller.
    let bob = user("bob", &["tracking:write"]);
    let (s, h, _) = app
        .call(
            Some(&bob),
            "POST",
            &uri,
            Some(json!({"title": "once"})),
            &key,
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert!(!h.contains_key("idempotent-replayed"));
}

#[tokio::test]
async fn lists_filter_sort_and_paginate_across_projects() {
    let app = app();
    let ana = user("ana", &["tracking:admin"]);
    let p1 = app.project(&ana).await;
    let p2 = app.project(&ana).await;
    for i in 0..5 {
        app.task(&ana, &p1, json!({"title": format!("Alpha {i}"), "labels": ["l1"], "priority": "high", "due_date": format!("2025-02-0{}", i + 1)})).await;
        app.task(
            &ana,
            &p2,
            json!({"title": format!("Beta {i}"), "assignees": ["bob"]}),
        )
        .await;
    }
    let get = |q: String| {
        let app = &app;
        let ana = ana.clone();
        async move {
            let (s, _, v) = app
                .call(
                    Some(&ana),
                    "GET",
                    &format!("/v1/tracking/tasks?{q}"),
                    None,
                    &[],
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{v}");
            v
        }
    };
    assert_eq!(
        get(String::new()).await["items"].as_array().unwrap().len(),
        10
    );
    assert_eq!(
        get("label=l1".into()).await["items"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    assert_eq!(
        get("assignee=bob".into()).await["items"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    assert_eq!(
        get(format!("project_id={p2}")).await["items"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    assert_eq!(
        get("q=alpha".into()).await["items"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    assert_eq!(
        get("priority=high&due_before=2025-02-02".into()).await["items"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        get("due_after=2025-02-04".into()).await["items"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        get("category=unstarted&status=todo".into()).await["items"]
            .as_array()
            .unwrap()
            .len(),
        10
    );
    // Pages of 3 cover everything once, in order.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("limit=3&sort=priority&cursor={c}"),
            None => "limit=3&sort=priority".into(),
        };
        let v = get(q).await;
        for t in v["items"].as_array().unwrap() {
            seen.push(t["id"].as_str().unwrap().to_owned());
        }
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 10);
    let mut dedup = seen.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), 10);
    let (s, _, _) = app
        .call(
            Some(&ana),
            "GET",
            "/v1/tracking/tasks?cursor=forged",
            None,
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // A cursor is for the list it came from: another order or other filters
    // would read its position wrongly, so they are refused; another page
    // size is the same list.
    let first = get("limit=3&sort=priority".into()).await;
    let c = first["next_cursor"].as_str().unwrap();
    for other in [
        format!("limit=3&sort=updated&cursor={c}"),
        format!("limit=3&sort=priority&priority=high&cursor={c}"),
        format!("limit=3&cursor={c}"),
    ] {
        let (s, _, v) = app
            .call(
                Some(&ana),
                "GET",
                &format!("/v1/tracking/tasks?{other}"),
                None,
                &[],
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{other}: {v}");
        assert!(
            v["detail"].as_str().unwrap().contains("other filters"),
            "{v}"
        );
    }
    let v = get(format!("limit=7&sort=priority&cursor={c}")).await;
    assert_eq!(v["items"].as_array().unwrap().len(), 7);
    assert_eq!(v["items"][0]["id"].as_str().unwrap(), seen[3]);
    // A reader of p1 only sees p1's tasks across projects.
    let scoped = user("cy", &[&format!("tracking:project:{p1}:read")]);
    let (_, _, v) = app
        .call(Some(&scoped), "GET", "/v1/tracking/tasks", None, &[])
        .await;
    assert_eq!(v["items"].as_array().unwrap().len(), 5);
}

#[tokio::test]
async fn milestones_progress_excludes_canceled_and_flags_overdue() {
    let app = app();
    let ana = user("ana", &["tracking:admin"]);
    let pid = app.project(&ana).await;
    let (s, _, m) = app
        .call(
            Some(&ana),
            "POST",
            &format!("/v1/tracking/projects/{pid}/milestones"),
            Some(json!({"title": "M1", "start_date": "2024-12-01", "due_date": "2024-12-20"})),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{m}");
    let mid = m["id"].as_str().unwrap();
    let done = app
        .task(
            &ana,
            &pid,
            json!({"title": "d", "milestone_id": mid, "estimate": 3, "status": "in_progress"}),
        )
        .await;
    app.patch(
        &ana,
        done["id"].as_str().unwrap(),
        json!({"status": "done"}),
    )
    .await;
    app.task(
        &ana,
        &pid,
        json!({"title": "o", "milestone_id": mid, "estimate": 1}),
    )
    .await;
    app.task(
        &ana,
        &pid,
        json!({"title": "c", "milestone_id": mid, "estimate": 50, "status": "canceled"}),
    )
    .await;
    let (_, _, v) = app
        .call(
            Some(&ana),
            "GET",
            &format!("/v1/tracking/milestones/{mid}"),
            None,
            &[],
        )
        .await;
    assert_eq!(v["progress"]["total"], 2);
    assert_eq!(v["progress"]["canceled"], 1);
    assert_eq!(v["progress"]["percent_by_count"], 50.0);
    assert_eq!(v["progress"]["percent_by_estimate"], 75.0);
    assert_eq!(v["overdue"], true, "clock is 2025-01-01, due 2024-12-20");
    let (s, _, v) = app
        .call(
            Some(&ana),
            "PATCH",
            &format!("/v1/tracking/milestones/{mid}"),
            Some(json!({"state": "closed"})),
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["overdue"], false);
    let (s, _, v) = app
        .call(
            Some(&ana),
            "PATCH",
            &format!("/v1/tracking/milestones/{mid}"),
            Some(json!({"due_date": "2024-11-01"})),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
}

#[tokio::test]
async fn watchers_get_notifications() {
    let app = app();
    let ana = user("ana", &["tracking:admin"]);
    let bob = user("bob", &["tracking:write"]);
    let cy = user("cy", &["tracking:read"]);
    let pid = app.project(&ana).await;
    let t = app
        .task(&ana, &pid, json!({"title": "t", "assignees": ["bob"]}))
        .await;
    let tid = t["id"].as_str().unwrap();
    let (s, _, _) = app
        .call(
            Some(&cy),
            "PUT",
            &format!("/v1/tracking/tasks/{tid}/watchers"),
            None,
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, _, w) = app
        .call(
            Some(&cy),
            "GET",
            &format!("/v1/tracking/tasks/{tid}/watchers"),
            None,
            &[],
        )
        .await;
    assert_eq!(w, json!(["ana", "bob", "cy"]));
    app.patch(&ana, tid, json!({"title": "renamed"})).await;
    let (_, _, c) = app
        .call(
            Some(&bob),
            "GET",
            "/v1/tracking/me/notifications/unread-count",
            None,
            &[],
        )
        .await;
    assert_eq!(c["unread"], 2, "created + updated");
    let (_, _, c) = app
        .call(
            Some(&cy),
            "GET",
            "/v1/tracking/me/notifications/unread-count",
            None,
            &[],
        )
        .await;
    assert_eq!(c["unread"], 1);
    let (_, _, c) = app
        .call(
            Some(&ana),
            "GET",
            "/v1/tracking/me/notifications/unread-count",
            None,
            &[],
        )
        .await;
    assert_eq!(c["unread"], 0, "no notification for one's own change");
    let (_, _, list) = app
        .call(
            Some(&bob),
            "GET",
            "/v1/tracking/me/notifications?unread=true",
            None,
            &[],
        )
        .await;
    let first = list["items"][0]["id"].clone();
    assert!(
        list["items"][0]["summary"]
            .as_str()
            .unwrap()
            .contains("title")
    );
    let (_, _, m) = app
        .call(
            Some(&bob),
            "POST",
            "/v1/tracking/me/notifications/read",
            Some(json!({"ids": [first]})),
            &[],
        )
        .await;
    assert_eq!(m["marked"], 1);
    let (_, _, c) = app
        .call(
            Some(&bob),
            "GET",
            "/v1/tracking/me/notifications/unread-count",
            None,
            &[],
        )
        .await;
    assert_eq!(c["unread"], 1);
    app.call(
        Some(&cy),
        "DELETE",
        &format!("/v1/tracking/tasks/{tid}/watchers"),
        None,
        &[],
    )
    .await;
    app.patch(&ana, tid, json!({"title": "again"})).await;
    let (_, _, c) = app
        .call(
            Some(&cy),
            "GET",
            "/v1/tracking/me/notifications/unread-count",
            None,
            &[],
        )
        .await;
    assert_eq!(c["unread"], 1, "unwatched");
    assert_eq!(
        app.notifier.sent().len(),
        4,
        "the Notifier saw every in-app notification"
    );
    // A watcher whose access is taken away hears nothing more of the task.
    let (s, _, _) = app
        .call(
            Some(&cy),
            "PUT",
            &format!("/v1/tracking/tasks/{tid}/watchers"),
            None,
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    app.directory.set_user("cy", ["auth:read"]);
    app.patch(&ana, tid, json!({"title": "secret plans"})).await;
    let new: Vec<String> = app.notifier.sent()[4..]
        .iter()
        .map(|n| n.recipient.clone())
        .collect();
    assert_eq!(new, ["bob"], "cy lost access");
}

fn fields(v: &Value) -> Vec<&str> {
    v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn field_errors_name_the_index_the_caller_sent() {
    let app = app();
    let ana = user("ana", &["tracking:admin"]);
    let pid = app.project(&ana).await;
    let blocker = app.task(&ana, &pid, json!({"title": "b"})).await;
    let b = blocker["id"].as_str().unwrap();
    let ghost_a = "01900000-0000-7000-8000-00000000000a";
    let ghost_b = "01900000-0000-7000-8000-00000000000b";
    let uri = format!("/v1/tracking/projects/{pid}/tasks");
    // Sorted, "ghost" would come first and the later ghost task ids before
    // the real blocker: the errors must still name the positions sent.
    let (s, _, v) = app
        .call(
            Some(&ana),
            "POST",
            &uri,
            Some(json!({
                "title": "t",
                "assignees": ["zed-unknown", "bob", "ghost"],
                "blocked_by": [b, ghost_b, b, ghost_a],
            })),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(
        fields(&v),
        [
            "blocked_by[1]",
            "blocked_by[3]",
            "assignees[0]",
            "assignees[2]"
        ],
        "{v}"
    );
    let t = app.task(&ana, &pid, json!({"title": "t"})).await;
    let (s, v) = app
        .patch(
            &ana,
            t["id"].as_str().unwrap(),
            json!({"assignees": ["bob", "zed-unknown"], "blocked_by": [ghost_b, b]}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(fields(&v), ["blocked_by[0]", "assignees[1]"], "{v}");
}

#[tokio::test]
async fn a_workflow_change_moves_categories_and_strands_no_task() {
    let app = app();
    let ana = user("ana", &["tracking:admin"]);
    let pid = app.project(&ana).await;
    let (s, _, m) = app
        .call(
            Some(&ana),
            "POST",
            &format!("/v1/tracking/projects/{pid}/milestones"),
            Some(json!({"title": "m"})),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{m}");
    let mid = m["id"].as_str().unwrap();
    let reviewing = app
        .task(
            &ana,
            &pid,
            json!({"title": "r", "status": "in_review", "milestone_id": mid}),
        )
        .await;
    let verified = app
        .task(
            &ana,
            &pid,
            json!({"title": "v", "status": "in_progress", "milestone_id": mid}),
        )
        .await;
    // The new workflow drops `in_review` and makes `in_progress` a completed
    // status ("verified").
    let wf = json!({"workflow": {
        "statuses": [
            {"key": "todo", "name": "To do", "category": "unstarted"},
            {"key": "in_progress", "name": "Verified", "category": "completed"},
            {"key": "done", "name": "Done", "category": "completed"}
        ],
        "transitions": [{"from": "todo", "to": "done"}],
        "initial": "todo"
    }});
    let (s, _, v) = app
        .call(
            Some(&ana),
            "PATCH",
            &format!("/v1/tracking/projects/{pid}"),
            Some(wf),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    let vid = verified["id"].as_str().unwrap();
    let (_, h, v) = app
        .call(
            Some(&ana),
            "GET",
            &format!("/v1/tracking/tasks/{vid}"),
            None,
            &[],
        )
        .await;
    assert_eq!(v["category"], "completed", "{v}");
    assert_eq!(v["version"], verified["version"].as_i64().unwrap() + 1);
    assert_eq!(h["etag"], format!("\"{}\"", v["version"]));
    let (_, _, v) = app
        .call(
            Some(&ana),
            "GET",
            &format!("/v1/tracking/milestones/{mid}"),
            None,
            &[],
        )
        .await;
    assert_eq!(v["progress"]["completed"], 1, "{v}");
    let (_, _, v) = app
        .call(
            Some(&ana),
            "GET",
            &format!("/v1/tracking/projects/{pid}/tasks?category=completed"),
            None,
            &[],
        )
        .await;
    assert_eq!(v["items"].as_array().unwrap().len(), 1, "{v}");

    // The task left in the dropped status can still be moved out of it.
    let rid = reviewing["id"].as_str().unwrap();
    let (s, v) = app.patch(&ana, rid, json!({"status": "done"})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["category"], "completed");
    // Back into a workflow status, the workflow's transitions apply again.
    let (s, _) = app.patch(&ana, rid, json!({"status": "todo"})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn webhook_writes_honour_if_match() {
    let app = app();
    let ana = user("ana", &["tracking:admin"]);
    let pid = app.project(&ana).await;
    let (s, _, created) = app
        .call(
            Some(&ana),
            "POST",
            &format!("/v1/tracking/projects/{pid}/webhooks"),
            Some(json!({"url": "https://hooks.example.com/in", "event_types": ["*"]})),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let uri = format!("/v1/tracking/webhooks/{}", created["id"].as_str().unwrap());
    let (s, h, _) = app.call(Some(&ana), "GET", &uri, None, &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["etag"], "\"1\"");
    let patch = |d: &str| Some(json!({ "description": d }));
    let (s, h, v) = app
        .call(
            Some(&ana),
            "PATCH",
            &uri,
            patch("first"),
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(h["etag"], "\"2\"");
    assert_eq!(v["version"], 2);
    // A writer that saw version 1 loses: 412, nothing written.
    let (s, h, _) = app
        .call(
            Some(&ana),
            "PATCH",
            &uri,
            patch("stale"),
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_eq!(s, StatusCode::PRECONDITION_FAILED);
    assert_eq!(h["content-type"], "application/problem+json");
    let (_, _, v) = app.call(Some(&ana), "GET", &uri, None, &[]).await;
    assert_eq!(v["description"], "first");
    // Every write takes a version, a secret rotation too.
    let (s, _, rotated) = app
        .call(
            Some(&ana),
            "POST",
            &format!("{uri}/rotate-secret"),
            None,
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{rotated}");
    assert_eq!(rotated["version"], 3);
}

#[tokio::test]
async fn a_wrong_method_is_a_405_problem_with_allow() {
    let app = app();
    let ana = user("ana", &["tracking:admin"]);
    let (s, h, v) = app
        .call(Some(&ana), "DELETE", "/v1/tracking/projects", None, &[])
        .await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(h["content-type"], "application/problem+json");
    assert!(h["allow"].to_str().unwrap().contains("POST"), "{h:?}");
    assert_eq!(v["status"], 405);
}

#[test]
fn openapi_describes_every_route() {
    let doc = jadugar_tracking::http::openapi();
    let paths: Vec<&String> = doc.paths.paths.keys().collect();
    assert_eq!(paths.len(), 23, "{paths:?}");
    assert!(paths.iter().all(|p| p.starts_with("/v1/tracking/")));
    let json = serde_json::to_value(&doc).unwrap();
    assert!(json["paths"]["/v1/tracking/tasks/{task_id}"]["patch"].is_object());
}
