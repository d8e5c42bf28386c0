//! The one conformance suite every [`RegistryStore`] runs (feature
//! `test-support`).
//!
//! ```no_run
//! # async fn demo() {
//! use jadugar_registry::store::{MemoryStore, conformance};
//! conformance::run(&MemoryStore::new()).await;
//! # }
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, TimeZone, Utc};

use super::RegistryStore;
use crate::Error;
use crate::model::{Address, CheckSpec, Instance, NewConfig, Status, ValueKind};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap()
}

/// A passing instance of `service` for tests.
pub fn instance(service: &str, id: &str, check: bool) -> Instance {
    Instance {
        service: service.to_owned(),
        id: id.to_owned(),
        address: Address::new("http", "10.0.0.1", 8080),
        tags: vec!["v1".to_owned()],
        metadata: BTreeMap::from([("zone".to_owned(), "a".to_owned())]),
        weight: 1,
        status: Status::Passing,
        ttl_secs: Some(10),
        check: check.then(|| CheckSpec::http("/health")),
        check_status: check.then_some(Status::Passing),
        check_output: None,
        ttl_expired: false,
        maintenance: None,
        ttl_deadline: Some(t0() + Duration::seconds(10)),
        critical_since: None,
        registered_at: t0(),
        updated_at: t0(),
        modify_index: 0,
    }
}

fn config(key: &str, value: &str, deleted: bool) -> NewConfig {
    NewConfig {
        namespace: "prod.billing".to_owned(),
        key: key.to_owned(),
        value: value.to_owned(),
        kind: ValueKind::Json,
        secret: false,
        deleted,
        at: t0(),
        by: Some("tester".to_owned()),
    }
}

/// Runs every check against a fresh, empty store.
pub async fn run(store: &dyn RegistryStore) {
    instances(store).await;
    leases(store).await;
    config_versions(store).await;
}

async fn instances(store: &dyn RegistryStore) {
    assert_eq!(store.current_index().await.unwrap(), 0);
    let a = instance("billing", "b-1", false);
    assert_eq!(store.put_instance(&a, Some(0)).await.unwrap(), Some(1));
    let got = store.get_instance("billing", "b-1").await.unwrap().unwrap();
    assert_eq!(got.modify_index, 1);
    assert_eq!(got.address, a.address);
    assert_eq!(got.metadata, a.metadata);
    assert_eq!(got.ttl_deadline, a.ttl_deadline);
    // CAS: create-only fails once it exists, a stale index fails.
    assert_eq!(store.put_instance(&a, Some(0)).await.unwrap(), None);
    assert_eq!(store.put_instance(&a, Some(7)).await.unwrap(), None);
    assert_eq!(store.put_instance(&a, Some(1)).await.unwrap(), Some(2));
    assert_eq!(store.put_instance(&a, None).await.unwrap(), Some(3));
    assert_eq!(store.current_index().await.unwrap(), 3);

    // Heartbeats move the deadline without a change index.
    let later = t0() + Duration::milliseconds(60_123);
    assert!(store.touch_instance("billing", "b-1", later).await.unwrap());
    assert!(
        !store
            .touch_instance("billing", "nope", later)
            .await
            .unwrap()
    );
    let got = store.get_instance("billing", "b-1").await.unwrap().unwrap();
    assert_eq!(got.ttl_deadline, Some(later));
    assert_eq!(got.modify_index, 3);
    assert_eq!(store.current_index().await.unwrap(), 3);

    store
        .put_instance(&instance("billing", "b-0", false), None)
        .await
        .unwrap();
    store
        .put_instance(&instance("auth", "a-1", false), None)
        .await
        .unwrap();
    let billing = store.list_instances(Some("billing")).await.unwrap();
    let ids: Vec<_> = billing.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["b-0", "b-1"]);
    let all = store.list_instances(None).await.unwrap();
    let keys: Vec<_> = all
        .iter()
        .map(|i| (i.service.as_str(), i.id.as_str()))
        .collect();
    assert_eq!(
        keys,
        [("auth", "a-1"), ("billing", "b-0"), ("billing", "b-1")]
    );

    // Deletes: conditional, then not found.
    assert_eq!(
        store
            .delete_instance("billing", "b-1", Some(1))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .delete_instance("billing", "b-1", Some(3))
            .await
            .unwrap(),
        Some(6)
    );
    assert!(
        store
            .get_instance("billing", "b-1")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store.delete_instance("billing", "b-1", None).await.unwrap(),
        None
    );
    store.delete_instance("billing", "b-0", None).await.unwrap();
    store.delete_instance("auth", "a-1", None).await.unwrap();
    assert!(store.list_instances(None).await.unwrap().is_empty());
    assert_eq!(store.current_index().await.unwrap(), 8);
}

async fn leases(store: &dyn RegistryStore) {
    let base = store.current_index().await.unwrap();
    store
        .put_instance(&instance("pay", "p-1", true), None)
        .await
        .unwrap();
    store
        .put_instance(&instance("pay", "p-2", true), None)
        .await
        .unwrap();
    store
        .put_instance(&instance("pay", "p-3", false), None)
        .await
        .unwrap();
    assert_eq!(store.current_index().await.unwrap(), base + 3);
    let now = t0();
    let until = now + Duration::seconds(15);
    let key = |id: &str| ("pay".to_owned(), id.to_owned());

    let a = store.claim_checks("host-a", now, until, 1).await.unwrap();
    assert_eq!(a.len(), 1, "the limit is respected");
    let a = store.claim_checks("host-a", now, until, 10).await.unwrap();
    assert_eq!(
        a,
        vec![key("p-1"), key("p-2")],
        "only instances with checks"
    );
    let b = store.claim_checks("host-b", now, until, 10).await.unwrap();
    assert!(b.is_empty(), "held leases are not shared");

    // A re-registration keeps the lease.
    store
        .put_instance(&instance("pay", "p-1", true), None)
        .await
        .unwrap();
    let b = store.claim_checks("host-b", now, until, 10).await.unwrap();
    assert!(b.is_empty());

    // host-a stops renewing: host-b takes over after expiry.
    let later = until + Duration::seconds(1);
    let b = store
        .claim_checks("host-b", later, later + Duration::seconds(15), 10)
        .await
        .unwrap();
    assert_eq!(b, vec![key("p-1"), key("p-2")]);
    let a = store
        .claim_checks("host-a", later, later + Duration::seconds(15), 10)
        .await
        .unwrap();
    assert!(a.is_empty());

    store.release_checks("host-b").await.unwrap();
    let a = store
        .claim_checks("host-a", later, later + Duration::seconds(15), 10)
        .await
        .unwrap();
    assert_eq!(a.len(), 2, "released leases are free at once");

    // Deleted instances drop out of the leases.
    store.delete_instance("pay", "p-2", None).await.unwrap();
    let a = store
        .claim_checks("host-a", later, later + Duration::seconds(15), 10)
        .await
        .unwrap();
    assert_eq!(a, vec![key("p-1")]);
    for id in ["p-1", "p-3"] {
        store.delete_instance("pay", id, None).await.unwrap();
    }
}

async fn config_versions(store: &dyn RegistryStore) {
    let base = store.current_index().await.unwrap();
    let v1 = store
        .config_put(&config("db.url", "\"one\"", false), Some(0))
        .await
        .unwrap();
    assert_eq!(v1.version, 1);
    assert_eq!(v1.modify_index, base + 1);
    assert_eq!(v1.updated_by.as_deref(), Some("tester"));
    match store
        .config_put(&config("db.url", "\"x\"", false), Some(0))
        .await
    {
        Err(Error::Conflict { current: 1 }) => {}
        other => panic!("create-only on an existing key must conflict: {other:?}"),
    }
    match store
        .config_put(&config("db.url", "\"x\"", false), Some(5))
        .await
    {
        Err(Error::Conflict { current: 1 }) => {}
        other => panic!("a stale version must conflict: {other:?}"),
    }
    let v2 = store
        .config_put(&config("db.url", "\"two\"", false), Some(1))
        .await
        .unwrap();
    assert_eq!(v2.version, 2);
    let v3 = store
        .config_put(&config("db.pool", "5", false), None)
        .await
        .unwrap();
    assert_eq!(v3.version, 1);
    store
        .config_put(&config("other", "1", false), None)
        .await
        .unwrap();

    let latest = store
        .config_get("prod.billing", "db.url")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((latest.version, latest.value.as_str()), (2, "\"two\""));
    assert_eq!(latest.updated_at, t0());
    let old = store
        .config_version("prod.billing", "db.url", 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(old.value, "\"one\"");
    assert!(
        store
            .config_version("prod.billing", "db.url", 9)
            .await
            .unwrap()
            .is_none()
    );
    let listed = store.config_list("prod.billing", "db.").await.unwrap();
    let keys: Vec<_> = listed.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["db.pool", "db.url"]);
    assert_eq!(listed[1].version, 2);
    assert_eq!(
        store.config_list("prod.billing", "").await.unwrap().len(),
        3
    );
    assert!(store.config_list("other.ns", "").await.unwrap().is_empty());

    // Deletion is a tombstone version; history stays.
    match store.config_put(&config("db.url", "", true), Some(1)).await {
        Err(Error::Conflict { current: 2 }) => {}
        other => panic!("a stale delete must conflict: {other:?}"),
    }
    let tomb = store
        .config_put(&config("db.url", "", true), Some(2))
        .await
        .unwrap();
    assert!(tomb.deleted);
    assert_eq!(tomb.version, 3);
    assert!(matches!(
        store.config_put(&config("db.url", "", true), None).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        store.config_put(&config("never", "", true), None).await,
        Err(Error::NotFound(_))
    ));
    let got = store
        .config_get("prod.billing", "db.url")
        .await
        .unwrap()
        .unwrap();
    assert!(got.deleted);
    let keys: Vec<_> = store
        .config_list("prod.billing", "db.")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(keys, ["db.pool"]);
    // After a delete the current version is 0 again: create-only works.
    let again = store
        .config_put(&config("db.url", "\"three\"", false), Some(0))
        .await
        .unwrap();
    assert_eq!(again.version, 4);
    let history = store
        .config_history("prod.billing", "db.url")
        .await
        .unwrap();
    let versions: Vec<_> = history.iter().map(|e| (e.version, e.deleted)).collect();
    assert_eq!(versions, [(1, false), (2, false), (3, true), (4, false)]);
    assert!(
        history
            .windows(2)
            .all(|w| w[0].modify_index < w[1].modify_index)
    );
    assert!(
        store
            .config_history("prod.billing", "nope")
            .await
            .unwrap()
            .is_empty()
    );
}
