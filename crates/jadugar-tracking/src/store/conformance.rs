//! The conformance suite every [`TrackingStore`] must pass (feature
//! `test-support`).
//!
//! A backend's test builds a fresh, empty store and calls [`run`]:
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use jadugar_tracking::store::{conformance, MemoryStore};
//!
//! conformance::run(Arc::new(MemoryStore::new())).await;
//! # });
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use chrono::{Duration, NaiveDate, TimeZone, Utc};

use super::*;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap()
}

fn project() -> Project {
    Project {
        id: ProjectId::new(),
        name: "P".into(),
        description: String::new(),
        workflow: Workflow::default(),
        created_by: "ana".into(),
        created_at: t0(),
        updated_at: t0(),
        version: 1,
    }
}

fn task(project: ProjectId, n: i64) -> Task {
    Task {
        id: TaskId::new(),
        project_id: project,
        milestone_id: None,
        parent_id: None,
        title: format!("Task number {n}"),
        description: String::new(),
        priority: Priority::None,
        estimate: None,
        due_date: None,
        labels: vec![],
        blocked_by: vec![],
        status: "todo".into(),
        category: Category::Unstarted,
        assignees: vec![],
        created_by: "ana".into(),
        updated_by: "ana".into(),
        created_at: t0() + Duration::seconds(n),
        updated_at: t0() + Duration::seconds(100 - n),
        version: 1,
    }
}

fn insert_task(t: &Task) -> Write {
    Write::Task {
        task: Box::new(t.clone()),
        expected_version: None,
    }
}

fn webhook(project: ProjectId, enabled: bool) -> Webhook {
    Webhook {
        id: WebhookId::new(),
        project_id: project,
        url: "https://example.com/hook".into(),
        event_types: vec!["*".into()],
        description: String::new(),
        enabled,
        disabled_reason: None,
        created_by: "ana".into(),
        created_at: t0(),
        updated_at: t0(),
        version: 1,
        secrets: vec![SealedSecret {
            sealed: "sealed-secret".into(),
            expires_at: None,
        }],
    }
}

fn event(project: ProjectId, at: DateTime<Utc>) -> OutboxEvent {
    OutboxEvent {
        id: EventId::new(),
        project_id: project,
        event_type: "task.updated".into(),
        payload: "{\"type\":\"task.updated\"}".into(),
        created_at: at,
    }
}

fn delivery(w: WebhookId, e: &OutboxEvent, at: DateTime<Utc>) -> Delivery {
    Delivery {
        id: DeliveryId::new(),
        webhook_id: w,
        event_id: e.id,
        event_type: e.event_type.clone(),
        state: DeliveryState::Pending,
        attempts: 0,
        next_attempt_at: at,
        created_at: at,
        log: vec![],
    }
}

/// Runs every check on `store`, which must be empty.
pub async fn run(store: Arc<dyn TrackingStore>) {
    versions_and_atomicity(&*store).await;
    task_queries(&*store).await;
    social(&*store).await;
    idempotency(&*store).await;
    webhooks_and_deliveries(&*store).await;
}

async fn versions_and_atomicity(s: &dyn TrackingStore) {
    let p = project();
    s.commit(vec![Write::Project {
        project: Box::new(p.clone()),
        expected_version: None,
    }])
    .await
    .unwrap();
    assert_eq!(s.get_project(p.id).await.unwrap(), Some(p.clone()));
    assert!(s.get_project(ProjectId::new()).await.unwrap().is_none());
    // Duplicate insert.
    let dup = s
        .commit(vec![Write::Project {
            project: Box::new(p.clone()),
            expected_version: None,
        }])
        .await;
    assert!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");
    // Stale version.
    let mut p2 = p.clone();
    p2.version = 2;
    p2.name = "renamed".into();
    let stale = s
        .commit(vec![Write::Project {
            project: Box::new(p2.clone()),
            expected_version: Some(7),
        }])
        .await;
    assert!(matches!(stale, Err(StoreError::Conflict(_))));
    // All or nothing: a good task insert with a stale project write.
    let t = task(p.id, 1);
    let r = s
        .commit(vec![
            insert_task(&t),
            Write::Project {
                project: Box::new(p2.clone()),
                expected_version: Some(5),
            },
        ])
        .await;
    assert!(r.is_err());
    assert!(
        s.get_task(t.id).await.unwrap().is_none(),
        "commit was not atomic"
    );
    s.commit(vec![Write::Project {
        project: Box::new(p2.clone()),
        expected_version: Some(1),
    }])
    .await
    .unwrap();
    assert_eq!(s.get_project(p.id).await.unwrap().unwrap().name, "renamed");
    let listed = s.list_projects(None, None, 10).await.unwrap();
    assert!(listed.iter().any(|x| x.id == p.id));
    assert!(
        s.list_projects(Some(&[]), None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.list_projects(Some(&[p.id]), None, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(s.project_ids().await.unwrap().contains(&p.id));

    // A task guarded as unchanged: at its version the commit goes through
    // and the guard writes nothing; at another, nothing of the commit does.
    let guarded = task(p.id, 2);
    s.commit(vec![insert_task(&guarded)]).await.unwrap();
    let other = task(p.id, 3);
    s.commit(vec![
        insert_task(&other),
        Write::TaskUnchanged {
            id: guarded.id,
            version: guarded.version,
        },
    ])
    .await
    .unwrap();
    assert_eq!(s.get_task(guarded.id).await.unwrap(), Some(guarded.clone()));
    let third = task(p.id, 4);
    let stale = s
        .commit(vec![
            insert_task(&third),
            Write::TaskUnchanged {
                id: guarded.id,
                version: guarded.version + 1,
            },
        ])
        .await;
    assert!(matches!(stale, Err(StoreError::Conflict(_))), "{stale:?}");
    assert!(s.get_task(third.id).await.unwrap().is_none());
}

async fn task_queries(s: &dyn TrackingStore) {
    let p = project();
    let other = project();
    let m = Milestone {
        id: MilestoneId::new(),
        project_id: p.id,
        title: "M".into(),
        description: String::new(),
        start_date: None,
        due_date: None,
        state: MilestoneState::Open,
        created_by: "ana".into(),
        created_at: t0(),
        updated_at: t0(),
        version: 1,
    };
    let mut writes = vec![
        Write::Project {
            project: Box::new(p.clone()),
            expected_version: None,
        },
        Write::Project {
            project: Box::new(other.clone()),
            expected_version: None,
        },
        Write::Milestone {
            milestone: Box::new(m.clone()),
            expected_version: None,
        },
    ];
    let mut tasks = Vec::new();
    for n in 0..6 {
        let mut t = task(p.id, n);
        if n % 2 == 0 {
            t.milestone_id = Some(m.id);
            t.estimate = Some(2);
        }
        if n == 1 {
            t.assignees = vec!["bob".into(), "cy".into()];
            t.labels = vec!["bug".into()];
            t.priority = Priority::Urgent;
            t.due_date = NaiveDate::from_ymd_opt(2025, 3, 1);
            t.title = "Fix the LOGIN page".into();
        }
        if n == 2 {
            t.status = "done".into();
            t.category = Category::Completed;
            t.due_date = NaiveDate::from_ymd_opt(2025, 5, 1);
            t.priority = Priority::High;
        }
        if n == 4 {
            t.status = "canceled".into();
            t.category = Category::Canceled;
        }
        writes.push(insert_task(&t));
        tasks.push(t);
    }
    let mut child = task(p.id, 10);
    child.parent_id = Some(tasks[0].id);
    writes.push(insert_task(&child));
    let foreign = task(other.id, 3);
    writes.push(insert_task(&foreign));
    s.commit(writes).await.unwrap();

    let q = |f: &dyn Fn(&mut TaskQuery)| {
        let mut q = TaskQuery {
            projects: Some(vec![p.id]),
            limit: 100,
            ..TaskQuery::default()
        };
        f(&mut q);
        q
    };
    let ids = |v: Vec<Task>| v.into_iter().map(|t| t.id).collect::<Vec<_>>();

    let all = s.list_tasks(&q(&|_| {})).await.unwrap();
    assert_eq!(all.len(), 7);
    assert_eq!(all[0].id, tasks[0].id, "created order");
    assert_eq!(all[6].id, child.id);
    let everywhere = s
        .list_tasks(&TaskQuery {
            limit: 1000,
            ..TaskQuery::default()
        })
        .await
        .unwrap();
    assert!(everywhere.iter().any(|t| t.id == foreign.id));
    assert!(
        s.list_tasks(&q(&|q| q.projects = Some(vec![])))
            .await
            .unwrap()
            .is_empty()
    );
    let two = s
        .list_tasks(&q(&|q| q.projects = Some(vec![p.id, other.id])))
        .await
        .unwrap();
    assert_eq!(two.len(), 8);

    let r = s
        .list_tasks(&q(&|q| q.assignee = Some("bob".into())))
        .await
        .unwrap();
    assert_eq!(ids(r), vec![tasks[1].id]);
    let r = s
        .list_tasks(&q(&|q| q.label = Some("bug".into())))
        .await
        .unwrap();
    assert_eq!(ids(r), vec![tasks[1].id]);
    let r = s
        .list_tasks(&q(&|q| q.label = Some("bu".into())))
        .await
        .unwrap();
    assert!(r.is_empty(), "label match must be exact");
    let r = s
        .list_tasks(&q(&|q| q.status = Some("done".into())))
        .await
        .unwrap();
    assert_eq!(ids(r), vec![tasks[2].id]);
    let r = s
        .list_tasks(&q(&|q| q.category = Some(Category::Canceled)))
        .await
        .unwrap();
    assert_eq!(ids(r), vec![tasks[4].id]);
    let r = s
        .list_tasks(&q(&|q| q.priority = Some(Priority::Urgent)))
        .await
        .unwrap();
    assert_eq!(ids(r), vec![tasks[1].id]);
    let r = s
        .list_tasks(&q(&|q| q.due_before = NaiveDate::from_ymd_opt(2025, 4, 1)))
        .await
        .unwrap();
    assert_eq!(ids(r), vec![tasks[1].id]);
    let r = s
        .list_tasks(&q(&|q| q.due_after = NaiveDate::from_ymd_opt(2025, 3, 1)))
        .await
        .unwrap();
    assert_eq!(ids(r), vec![tasks[1].id, tasks[2].id]);
    let r = s
        .list_tasks(&q(&|q| q.title_contains = Some("login".into())))
        .await
        .unwrap();
    assert_eq!(ids(r), vec![tasks[1].id]);
    let r = s
        .list_tasks(&q(&|q| q.milestone_id = Some(m.id)))
        .await
        .unwrap();
    assert_eq!(ids(r), vec![tasks[0].id, tasks[2].id, tasks[4].id]);
    let r = s
        .list_tasks(&q(&|q| q.parent_id = Some(tasks[0].id)))
        .await
        .unwrap();
    assert_eq!(ids(r), vec![child.id]);

    // Sorting and keyset pagination.
    for sort in [TaskSort::Created, TaskSort::Updated, TaskSort::Priority] {
        let full = s.list_tasks(&q(&|q| q.sort = sort)).await.unwrap();
        let keys: Vec<(i64, TaskId)> = full.iter().map(|t| (sort_key(t, sort), t.id)).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted, "{sort:?} order");
        let mut paged = Vec::new();
        let mut after = None;
        loop {
            let page = s
                .list_tasks(&q(&|q| {
                    q.sort = sort;
                    q.after = after;
                    q.limit = 2;
                }))
                .await
                .unwrap();
            if page.is_empty() {
                break;
            }
            after = page.last().map(|t| (sort_key(t, sort), t.id));
            paged.extend(page.into_iter().map(|t| t.id));
        }
        assert_eq!(
            paged,
            full.iter().map(|t| t.id).collect::<Vec<_>>(),
            "{sort:?} pages"
        );
    }
    let updated = s
        .list_tasks(&q(&|q| q.sort = TaskSort::Updated))
        .await
        .unwrap();
    assert_eq!(updated[0].id, child.id, "least recently updated first");
    let prio = s
        .list_tasks(&q(&|q| q.sort = TaskSort::Priority))
        .await
        .unwrap();
    assert_eq!(prio[0].id, tasks[1].id, "most urgent first");

    // Tallies exclude nothing; the service excludes canceled.
    let mut tallies = s.milestone_tallies(m.id).await.unwrap();
    tallies.sort_by_key(|t| t.category);
    assert_eq!(
        tallies,
        vec![
            CategoryTally {
                category: Category::Unstarted,
                count: 1,
                estimate: 2
            },
            CategoryTally {
                category: Category::Completed,
                count: 1,
                estimate: 2
            },
            CategoryTally {
                category: Category::Canceled,
                count: 1,
                estimate: 2
            },
        ]
    );

    // Versioned task update replaces tags.
    let mut t1 = tasks[1].clone();
    t1.assignees = vec!["dee".into()];
    t1.version = 2;
    s.commit(vec![Write::Task {
        task: Box::new(t1.clone()),
        expected_version: Some(1),
    }])
    .await
    .unwrap();
    assert!(
        s.list_tasks(&q(&|q| q.assignee = Some("bob".into())))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.get_task(t1.id).await.unwrap().unwrap().version, 2);
    let stale = s
        .commit(vec![Write::Task {
            task: Box::new(t1.clone()),
            expected_version: Some(1),
        }])
        .await;
    assert!(matches!(stale, Err(StoreError::Conflict(_))));
}

async fn social(s: &dyn TrackingStore) {
    let p = project();
    let t = task(p.id, 1);
    s.commit(vec![
        Write::Project {
            project: Box::new(p.clone()),
            expected_version: None,
        },
        insert_task(&t),
        Write::Watch {
            task_id: t.id,
            subject: "bob".into(),
        },
        Write::Watch {
            task_id: t.id,
            subject: "ana".into(),
        },
        Write::Watch {
            task_id: t.id,
            subject: "bob".into(),
        },
    ])
    .await
    .unwrap();
    assert_eq!(s.watchers(t.id).await.unwrap(), vec!["ana", "bob"]);
    s.commit(vec![Write::Unwatch {
        task_id: t.id,
        subject: "ana".into(),
    }])
    .await
    .unwrap();
    assert_eq!(s.watchers(t.id).await.unwrap(), vec!["bob"]);

    let mut acts = Vec::new();
    for i in 0..3 {
        let a = Activity {
            id: ActivityId::new(),
            project_id: p.id,
            task_id: if i == 2 { None } else { Some(t.id) },
            actor: "ana".into(),
            at: t0(),
            action: "task.updated".into(),
            changes: vec![FieldChange {
                field: "title".into(),
                from: serde_json::json!("a"),
                to: serde_json::json!(i),
            }],
        };
        acts.push(a.clone());
        s.commit(vec![Write::Activity(Box::new(a))]).await.unwrap();
    }
    let by_task = s
        .list_activity(ActivityScope::Task(t.id), None, 10)
        .await
        .unwrap();
    assert_eq!(by_task, acts[..2].to_vec());
    let by_project = s
        .list_activity(ActivityScope::Project(p.id), Some(acts[0].id), 10)
        .await
        .unwrap();
    assert_eq!(by_project, acts[1..].to_vec());

    let c = Comment {
        id: CommentId::new(),
        task_id: t.id,
        project_id: p.id,
        author: "bob".into(),
        body: "<b>hi</b>".into(),
        created_at: t0(),
    };
    s.commit(vec![Write::Comment(Box::new(c.clone()))])
        .await
        .unwrap();
    assert_eq!(
        s.list_comments(t.id, None, 10).await.unwrap(),
        vec![c.clone()]
    );
    assert!(
        s.list_comments(t.id, Some(c.id), 10)
            .await
            .unwrap()
            .is_empty()
    );

    let mut notes = Vec::new();
    for i in 0..3 {
        let n = Notification {
            id: NotificationId::new(),
            recipient: "bob".into(),
            project_id: p.id,
            task_id: Some(t.id),
            kind: "task.updated".into(),
            summary: format!("n{i}"),
            actor: "ana".into(),
            created_at: t0(),
            read_at: None,
        };
        notes.push(n.clone());
        s.commit(vec![Write::Notification(Box::new(n))])
            .await
            .unwrap();
    }
    let listed = s.list_notifications("bob", false, None, 10).await.unwrap();
    assert_eq!(listed[0].id, notes[2].id, "newest first");
    let before = s
        .list_notifications("bob", false, Some(notes[2].id), 10)
        .await
        .unwrap();
    assert_eq!(before.len(), 2);
    assert_eq!(s.unread_count("bob").await.unwrap(), 3);
    assert_eq!(s.unread_count("nobody").await.unwrap(), 0);
    assert_eq!(
        s.mark_read("bob", Some(&[notes[0].id]), t0())
            .await
            .unwrap(),
        1
    );
    assert_eq!(s.mark_read("ana", None, t0()).await.unwrap(), 0);
    assert_eq!(s.unread_count("bob").await.unwrap(), 2);
    let unread = s.list_notifications("bob", true, None, 10).await.unwrap();
    assert_eq!(unread.len(), 2);
    let all = s.list_notifications("bob", false, None, 10).await.unwrap();
    assert_eq!(
        all.iter().find(|n| n.id == notes[0].id).unwrap().read_at,
        Some(t0())
    );
    assert_eq!(s.mark_read("bob", None, t0()).await.unwrap(), 2);
    assert_eq!(s.unread_count("bob").await.unwrap(), 0);
}

async fn idempotency(s: &dyn TrackingStore) {
    let rec = |body: &str, at: DateTime<Utc>| IdempotencyRecord {
        subject: "ana".into(),
        key: "k-1".into(),
        fingerprint: "fp".into(),
        status: 201,
        body: body.into(),
        created_at: at,
    };
    s.commit(vec![Write::Idempotency {
        record: rec("first", t0()),
        expired_before: t0() - Duration::days(1),
    }])
    .await
    .unwrap();
    let again = s
        .commit(vec![Write::Idempotency {
            record: rec("second", t0()),
            expired_before: t0() - Duration::days(1),
        }])
        .await;
    assert!(matches!(again, Err(StoreError::Conflict(_))));
    assert_eq!(
        s.get_idempotency("ana", "k-1").await.unwrap().unwrap().body,
        "first"
    );
    assert!(s.get_idempotency("bob", "k-1").await.unwrap().is_none());
    // Expired records are replaced.
    s.commit(vec![Write::Idempotency {
        record: rec("third", t0() + Duration::days(2)),
        expired_before: t0() + Duration::days(1),
    }])
    .await
    .unwrap();
    let got = s.get_idempotency("ana", "k-1").await.unwrap().unwrap();
    assert_eq!(got.body, "third");
    assert_eq!(got.created_at, t0() + Duration::days(2));
}

async fn webhooks_and_deliveries(s: &dyn TrackingStore) {
    let p = project();
    s.commit(vec![Write::Project {
        project: Box::new(p.clone()),
        expected_version: None,
    }])
    .await
    .unwrap();
    let a = webhook(p.id, true);
    let b = webhook(p.id, true);
    let off = webhook(p.id, false);
    for w in [&a, &b, &off] {
        s.put_webhook(w, None).await.unwrap();
    }
    assert!(matches!(
        s.put_webhook(&a, None).await,
        Err(StoreError::Conflict(_))
    ));
    let absent = webhook(p.id, true);
    assert!(matches!(
        s.put_webhook(&absent, Some(&absent)).await,
        Err(StoreError::NotFound(_))
    ));
    // A replacement applies only over the version it was made from.
    let mut renamed = a.clone();
    renamed.description = "renamed".into();
    s.put_webhook(&renamed, Some(&a)).await.unwrap();
    let mut lost = a.clone();
    lost.url = "https://lost.example.com/hook".into();
    assert!(matches!(
        s.put_webhook(&lost, Some(&a)).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.get_webhook(a.id).await.unwrap(), Some(renamed.clone()));
    s.put_webhook(&a, Some(&renamed)).await.unwrap();
    // modify_webhook applies a change to what is stored.
    let changed = crate::store::modify_webhook(s, b.id, |w| {
        w.description = "changed".into();
        Ok::<_, StoreError>(())
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(changed.description, "changed");
    let b = s.get_webhook(b.id).await.unwrap().unwrap();
    assert_eq!(b, changed);
    assert_eq!(s.get_webhook(a.id).await.unwrap(), Some(a.clone()));
    assert_eq!(s.list_webhooks(p.id).await.unwrap().len(), 3);

    let now = t0();
    let e1 = event(p.id, now);
    let e2 = event(p.id, now + Duration::seconds(1));
    let a1 = delivery(a.id, &e1, now);
    let b1 = delivery(b.id, &e1, now);
    let off1 = delivery(off.id, &e1, now);
    let a2 = delivery(a.id, &e2, now);
    s.commit(vec![Write::Event {
        event: Box::new(e1.clone()),
        deliveries: vec![a1.clone(), b1.clone(), off1.clone()],
    }])
    .await
    .unwrap();
    s.commit(vec![Write::Event {
        event: Box::new(e2.clone()),
        deliveries: vec![a2.clone()],
    }])
    .await
    .unwrap();
    assert_eq!(s.oldest_due().await.unwrap(), Some(now));
    assert_eq!(
        s.events_since(p.id, now, 10).await.unwrap(),
        vec![e1.clone(), e2.clone()]
    );
    assert_eq!(
        s.events_since(p.id, now + Duration::seconds(1), 10)
            .await
            .unwrap(),
        vec![e2.clone()]
    );

    let lease = now + Duration::seconds(60);
    // Not yet due.
    assert!(
        s.claim_deliveries(now - Duration::seconds(1), lease, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let claimed = s.claim_deliveries(now, lease, 10).await.unwrap();
    let mut got: Vec<DeliveryId> = claimed.iter().map(|c| c.delivery.id).collect();
    got.sort();
    let mut want = vec![a1.id, b1.id];
    want.sort();
    assert_eq!(got, want, "one head per enabled webhook");
    assert!(claimed.iter().all(|c| c.delivery.attempts == 1));
    assert!(claimed.iter().all(|c| c.event.id == e1.id));
    // Leased: nobody else gets them, and a2 waits behind a1.
    assert!(s.claim_deliveries(now, lease, 10).await.unwrap().is_empty());

    let ca = claimed.iter().find(|c| c.delivery.id == a1.id).unwrap();
    let cb = claimed.iter().find(|c| c.delivery.id == b1.id).unwrap();
    let attempt = Attempt {
        at: now,
        status: Some(500),
        latency_ms: 3,
        excerpt: "boom".into(),
    };
    let retry = AttemptOutcome {
        state: DeliveryState::Pending,
        next_attempt_at: now + Duration::seconds(30),
        attempt: attempt.clone(),
    };
    assert!(
        !s.finish_delivery(a1.id, "not-the-lease", &retry)
            .await
            .unwrap()
    );
    let ok = AttemptOutcome {
        state: DeliveryState::Succeeded,
        next_attempt_at: now,
        attempt: Attempt {
            status: Some(204),
            ..attempt.clone()
        },
    };
    // One batch finishes both; a forged lease in a batch changes nothing.
    let mut forged = cb.clone();
    forged.lease = "not-the-lease".into();
    assert_eq!(
        s.finish_deliveries(&[(forged, retry.clone())])
            .await
            .unwrap(),
        vec![false]
    );
    assert_eq!(
        s.finish_deliveries(&[(ca.clone(), retry.clone()), (cb.clone(), ok.clone())])
            .await
            .unwrap(),
        vec![true, true]
    );
    assert!(
        !s.finish_delivery(a1.id, &ca.lease, &retry).await.unwrap(),
        "lease is freed"
    );
    assert_eq!(
        s.finish_deliveries(&[(cb.clone(), retry.clone())])
            .await
            .unwrap(),
        vec![false],
        "lease is freed (batch)"
    );

    // a1 is retrying in 30 s: a2 stays behind it (order per endpoint).
    assert!(s.claim_deliveries(now, lease, 10).await.unwrap().is_empty());
    // a2 has been due since `now`, waiting behind a1: that is lag.
    assert_eq!(s.oldest_due().await.unwrap(), Some(now));
    let later = now + Duration::seconds(30);
    let again = s
        .claim_deliveries(later, later + Duration::seconds(60), 10)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].delivery.id, a1.id);
    assert_eq!(again[0].delivery.attempts, 2);
    // A claimer that died: after the lease the delivery is claimable again.
    let after_lease = later + Duration::seconds(61);
    let retaken = s
        .claim_deliveries(after_lease, after_lease + Duration::seconds(60), 10)
        .await
        .unwrap();
    assert_eq!(retaken.len(), 1);
    assert_eq!(retaken[0].delivery.id, a1.id);
    assert!(
        !s.finish_delivery(a1.id, &again[0].lease, &ok)
            .await
            .unwrap(),
        "the dead claimer's lease is void"
    );
    assert!(
        s.finish_delivery(a1.id, &retaken[0].lease, &ok)
            .await
            .unwrap()
    );
    let next = s
        .claim_deliveries(after_lease, after_lease + Duration::seconds(60), 10)
        .await
        .unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].delivery.id, a2.id);

    let stored = s.get_delivery(a1.id).await.unwrap().unwrap();
    assert_eq!(stored.state, DeliveryState::Succeeded);
    assert_eq!(stored.attempts, 3);
    assert_eq!(stored.log.len(), 2);
    assert_eq!(stored.log[0].excerpt, "boom");
    let listed = s.list_deliveries(a.id, None, 10).await.unwrap();
    assert_eq!(
        listed.iter().map(|d| d.id).collect::<Vec<_>>(),
        vec![a2.id, a1.id],
        "newest first"
    );
    assert_eq!(
        s.list_deliveries(a.id, Some(a2.id), 10)
            .await
            .unwrap()
            .len(),
        1
    );

    // Redelivery and enabling.
    let re = delivery(b.id, &e1, after_lease);
    s.insert_deliveries(std::slice::from_ref(&re))
        .await
        .unwrap();
    let mut enabled = off.clone();
    enabled.enabled = true;
    s.put_webhook(&enabled, Some(&off)).await.unwrap();
    let mut got: Vec<DeliveryId> = s
        .claim_deliveries(after_lease, after_lease + Duration::seconds(60), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.delivery.id)
        .collect();
    got.sort();
    let mut want = vec![re.id, off1.id];
    want.sort();
    assert_eq!(got, want);

    assert!(s.delete_webhook(a.id).await.unwrap());
    assert!(!s.delete_webhook(a.id).await.unwrap());
    assert!(s.get_webhook(a.id).await.unwrap().is_none());
    assert!(s.list_deliveries(a.id, None, 10).await.unwrap().is_empty());
}
