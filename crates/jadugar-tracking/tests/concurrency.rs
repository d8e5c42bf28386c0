//! Changes each valid alone that must not both commit, run in parallel on
//! the SQL backends.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use jadugar_core::test_support::{TestPostgres, TestSqlite};
use jadugar_core::{MasterKey, Principal, PrincipalKind, Sealer, SystemClock};
use jadugar_tracking::model::*;
use jadugar_tracking::store::{SqlStore, TrackingStore};
use jadugar_tracking::{Config, Error, Tracking};

/// Rounds of the race: enough that a missing guard shows within a run.
const ROUNDS: usize = 40;

fn admin() -> Principal {
    Principal::new("ana", PrincipalKind::User).with_permissions(["tracking:admin"])
}

fn tracking(store: Arc<dyn TrackingStore>) -> Arc<Tracking> {
    Arc::new(Tracking::new(
        store,
        SystemClock::shared(),
        Sealer::new(MasterKey::new("k1", [9; 32]), []),
        Config::default(),
    ))
}

async fn task(t: &Tracking, project: ProjectId, title: &str) -> TaskId {
    let new = NewTask {
        title: title.into(),
        ..Default::default()
    };
    t.create_task(&admin(), project, new, None)
        .await
        .unwrap()
        .0
        .id
}

fn blocked_by(blocker: TaskId) -> TaskPatch {
    TaskPatch {
        blocked_by: Some(vec![blocker]),
        ..Default::default()
    }
}

/// Two tasks made to block each other at the same moment: one change may
/// commit, the other must fail (a cycle, or a conflict when it committed
/// first), never both.
async fn opposite_blockers_never_both_commit(t: Arc<Tracking>) {
    let new = NewProject {
        name: "P".into(),
        ..Default::default()
    };
    let project = t.create_project(&admin(), new, None).await.unwrap().0.id;
    for round in 0..ROUNDS {
        let a = task(&t, project, &format!("a{round}")).await;
        let b = task(&t, project, &format!("b{round}")).await;
        let (ta, tb) = (Arc::clone(&t), Arc::clone(&t));
        let first =
            tokio::spawn(async move { ta.update_task(&admin(), a, blocked_by(b), None).await });
        let second =
            tokio::spawn(async move { tb.update_task(&admin(), b, blocked_by(a), None).await });
        let (first, second) = (first.await.unwrap(), second.await.unwrap());
        for result in [&first, &second] {
            if let Err(e) = result {
                assert!(
                    matches!(e, Error::Conflict(_) | Error::Validation(_)),
                    "round {round}: {e:?}"
                );
            }
        }
        assert!(
            first.is_err() || second.is_err(),
            "round {round}: both committed, a cycle"
        );
        let a_now = t.get_task(&admin(), a).await.unwrap();
        let b_now = t.get_task(&admin(), b).await.unwrap();
        assert!(a_now.blocked_by.is_empty() || b_now.blocked_by.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opposite_blockers_on_sqlite() {
    let db = TestSqlite::new().await;
    let store = SqlStore::new(db.database().clone());
    store.migrate().await.unwrap();
    opposite_blockers_never_both_commit(tracking(Arc::new(store))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opposite_blockers_on_postgres() {
    let Some(pg) = TestPostgres::new().await else {
        return;
    };
    let store = SqlStore::new(pg.database().clone());
    store.migrate().await.unwrap();
    opposite_blockers_never_both_commit(tracking(Arc::new(store))).await;
}
