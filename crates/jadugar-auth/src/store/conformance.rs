//! The one conformance suite every backend runs (feature `test-support`).
//!
//! A backend writes a constructor and calls [`auth_store`] and/or
//! [`session_store`]; the functions panic on the first broken contract.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::sync::Arc;
//! use jadugar_auth::store::{conformance, MemoryStore};
//!
//! conformance::auth_store(Arc::new(MemoryStore::default())).await;
//! conformance::session_store(Arc::new(MemoryStore::default())).await;
//! # });
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};

use super::{AuthStore, GuardedChange, SessionStore, StoreError};
use crate::model::{
    ApiKey, ApiKeyId, ApiKeyRecord, AuditEvent, AuditFilter, AuditId, OneTimeToken, Role, Session,
    SessionId, SigningKeyRecord, TokenKind, User, UserId, UserRecord,
};

fn t0() -> DateTime<Utc> {
    // Millisecond precision: every backend must round-trip it exactly.
    Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).unwrap() + Duration::milliseconds(123)
}

fn user(email: &str, roles: &[&str]) -> UserRecord {
    UserRecord {
        user: User {
            id: UserId::new(),
            email: email.to_owned(),
            display_name: format!("User {email}"),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            disabled: false,
            email_verified: false,
            must_change_password: false,
            created_at: t0(),
            updated_at: t0(),
            version: 1,
        },
        password_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_owned()),
    }
}

/// `record` as stored after a write of it: at the next version.
fn next(record: &UserRecord) -> UserRecord {
    let mut r = record.clone();
    r.user.version += 1;
    r
}

async fn fresh(store: &dyn AuthStore, id: UserId) -> UserRecord {
    store.get_user(id).await.unwrap().unwrap()
}

/// Runs the [`AuthStore`] contract against `store` (which must start empty).
///
/// Races guarded changes on spawned tasks: call it inside a Tokio runtime,
/// a multi-threaded one for the races to run in parallel.
pub async fn auth_store(store: Arc<dyn AuthStore>) {
    users(&*store).await;
    roles(&*store).await;
    api_keys(&*store).await;
    tokens(&*store).await;
    audit(&*store).await;
    signing_keys(&*store).await;
    role_guard(&*store).await;
    role_guard_races(store.clone()).await;
    user_versions(store).await;
}

async fn users(store: &dyn AuthStore) {
    assert_eq!(store.count_users().await.unwrap(), 0);
    let ada = user("ada@example.com", &["admin"]);
    store.create_user(&ada).await.unwrap();
    assert_eq!(store.get_user(ada.user.id).await.unwrap().unwrap(), ada);
    assert_eq!(
        store
            .get_user_by_email("ada@example.com")
            .await
            .unwrap()
            .unwrap(),
        ada
    );
    assert!(store.get_user_by_email("nobody@x").await.unwrap().is_none());
    assert!(store.get_user(UserId::new()).await.unwrap().is_none());

    let dup = user("ada@example.com", &[]);
    assert!(matches!(
        store.create_user(&dup).await,
        Err(StoreError::Conflict(_))
    ));

    let mut bob = user("bob@example.com", &["dev", "ops"]);
    bob.password_hash = None;
    store.create_user(&bob).await.unwrap();
    let carol = user("carol@example.com", &["admin"]);
    store.create_user(&carol).await.unwrap();
    assert_eq!(store.count_users().await.unwrap(), 3);

    let mut admins = store.users_with_role("admin").await.unwrap();
    admins.sort();
    assert_eq!(admins, vec![ada.user.id, carol.user.id]);
    assert_eq!(
        store.users_with_role("ops").await.unwrap(),
        vec![bob.user.id]
    );
    assert!(store.users_with_role("op").await.unwrap().is_empty());

    let mut changed = carol.clone();
    changed.user.disabled = true;
    changed.user.display_name = "Carol C".into();
    changed.user.updated_at = t0() + Duration::seconds(5);
    assert!(store.update_user(&changed).await.unwrap());
    assert_eq!(fresh(store, carol.user.id).await, next(&changed));
    assert_eq!(
        store.users_with_role("admin").await.unwrap(),
        vec![ada.user.id],
        "disabled users do not count"
    );
    let mut steal = bob.clone();
    steal.user.email = "ada@example.com".into();
    assert!(matches!(
        store.update_user(&steal).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(!store.update_user(&user("ghost@x", &[])).await.unwrap());

    let first = store.list_users(None, 2).await.unwrap();
    assert_eq!(first.len(), 2);
    assert!(first[0].user.id < first[1].user.id);
    let rest = store.list_users(Some(first[1].user.id), 10).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert!(rest[0].user.id > first[1].user.id);

    assert!(store.delete_user(bob.user.id).await.unwrap());
    assert!(!store.delete_user(bob.user.id).await.unwrap());
    assert_eq!(store.count_users().await.unwrap(), 2);
    for u in [ada.user.id, carol.user.id] {
        store.delete_user(u).await.unwrap();
    }
}

/// The last enabled holder of a role cannot lose it (demote, disable, delete).
async fn role_guard(store: &dyn AuthStore) {
    use GuardedChange::{Done, LastHolder, NotFound};
    let role = "keeper";
    let k1 = user("k1@guard.example", &[role, "dev"]);
    let k2 = user("k2@guard.example", &[role]);
    let plain = user("plain@guard.example", &["dev"]);
    let mut off = user("off@guard.example", &[role]);
    off.user.disabled = true;
    for u in [&k1, &k2, &plain, &off] {
        store.create_user(u).await.unwrap();
    }
    let without = |u: &UserRecord| {
        let mut u = u.clone();
        u.user.roles.retain(|r| r != role);
        u
    };
    let disabled = |u: &UserRecord| {
        let mut u = u.clone();
        u.user.disabled = true;
        u
    };

    // Another enabled holder remains: allowed.
    assert_eq!(
        store
            .update_user_keeping_role(&without(&k1), role)
            .await
            .unwrap(),
        Done
    );
    assert_eq!(fresh(store, k1.user.id).await, next(&without(&k1)));
    // k2 is the last one; a disabled holder does not count.
    assert_eq!(
        store
            .update_user_keeping_role(&without(&k2), role)
            .await
            .unwrap(),
        LastHolder
    );
    assert_eq!(
        store
            .update_user_keeping_role(&disabled(&k2), role)
            .await
            .unwrap(),
        LastHolder
    );
    for version in [None, Some(1)] {
        assert_eq!(
            store
                .delete_user_keeping_role(k2.user.id, role, version)
                .await
                .unwrap(),
            LastHolder
        );
    }
    assert_eq!(fresh(store, k2.user.id).await, k2, "nothing written");
    // Changes that keep the role, and changes to non-holders, are made.
    let mut renamed = k2.clone();
    renamed.user.display_name = "K2".into();
    assert_eq!(
        store
            .update_user_keeping_role(&renamed, role)
            .await
            .unwrap(),
        Done
    );
    assert_eq!(
        store
            .update_user_keeping_role(&without(&off), role)
            .await
            .unwrap(),
        Done
    );
    assert_eq!(
        store
            .update_user_keeping_role(&disabled(&plain), role)
            .await
            .unwrap(),
        Done
    );
    assert_eq!(
        store
            .delete_user_keeping_role(plain.user.id, role, None)
            .await
            .unwrap(),
        Done
    );
    // Absent users.
    let ghost = user("ghost@guard.example", &[role]);
    assert_eq!(
        store
            .update_user_keeping_role(&without(&ghost), role)
            .await
            .unwrap(),
        NotFound
    );
    for version in [None, Some(1)] {
        assert_eq!(
            store
                .delete_user_keeping_role(ghost.user.id, role, version)
                .await
                .unwrap(),
            NotFound
        );
    }
    // With a second holder back, the first may go.
    let mut back = fresh(store, k1.user.id).await;
    back.user.roles = k1.user.roles.clone();
    assert!(store.update_user(&back).await.unwrap());
    assert_eq!(
        store
            .delete_user_keeping_role(k2.user.id, role, Some(2))
            .await
            .unwrap(),
        Done
    );
    assert_eq!(store.users_with_role(role).await.unwrap(), vec![k1.user.id]);
    for u in [k1.user.id, off.user.id] {
        store.delete_user(u).await.unwrap();
    }
}

/// Two concurrent guarded changes, each taking the role from one of its
/// last two holders: exactly one is made, one holder always remains.
async fn role_guard_races(store: Arc<dyn AuthStore>) {
    #[derive(Clone, Copy, Debug)]
    enum Op {
        Demote,
        Disable,
        Delete,
    }
    async fn run(store: &dyn AuthStore, op: Op, u: &UserRecord, role: &str) -> GuardedChange {
        let mut changed = u.clone();
        match op {
            Op::Demote => changed.user.roles.clear(),
            Op::Disable => changed.user.disabled = true,
            Op::Delete => {
                return store
                    .delete_user_keeping_role(u.user.id, role, None)
                    .await
                    .unwrap();
            }
        }
        store
            .update_user_keeping_role(&changed, role)
            .await
            .unwrap()
    }
    let pairs = [
        (Op::Demote, Op::Demote),
        (Op::Disable, Op::Disable),
        (Op::Delete, Op::Delete),
        (Op::Demote, Op::Delete),
        (Op::Disable, Op::Demote),
        (Op::Delete, Op::Disable),
    ];
    for round in 0..60 {
        let role = format!("race{round}");
        let a = user(&format!("a{round}@race.example"), &[&role]);
        let b = user(&format!("b{round}@race.example"), &[&role]);
        store.create_user(&a).await.unwrap();
        store.create_user(&b).await.unwrap();
        let (op_a, op_b) = pairs[round % pairs.len()];
        let start = Arc::new(tokio::sync::Barrier::new(2));
        let task = |op, u: UserRecord| {
            let (store, start, role) = (store.clone(), start.clone(), role.clone());
            tokio::spawn(async move {
                start.wait().await;
                run(&*store, op, &u, &role).await
            })
        };
        let (ta, tb) = (task(op_a, a.clone()), task(op_b, b.clone()));
        let mut outcomes = [ta.await.unwrap(), tb.await.unwrap()];
        outcomes.sort_by_key(|o| *o != GuardedChange::Done);
        assert_eq!(
            outcomes,
            [GuardedChange::Done, GuardedChange::LastHolder],
            "round {round}: {op_a:?} || {op_b:?}"
        );
        let left = store.users_with_role(&role).await.unwrap();
        assert_eq!(left.len(), 1, "round {round}: {op_a:?} || {op_b:?}");
        for u in [a.user.id, b.user.id] {
            store.delete_user(u).await.unwrap();
        }
    }
}

/// Every write of a user is conditional on the version it read: a write
/// from a stale copy is refused with [`StoreError::Stale`] (plain, guarded
/// and delete alike), and of two writes from one read exactly one is made.
async fn user_versions(store: Arc<dyn AuthStore>) {
    let role = "versioned";
    let a = user("a@version.example", &[role]);
    let b = user("b@version.example", &[role]);
    store.create_user(&a).await.unwrap();
    store.create_user(&b).await.unwrap();
    assert_eq!(fresh(&*store, a.user.id).await.user.version, 1);

    let mut renamed = a.clone();
    renamed.user.display_name = "A".into();
    assert!(store.update_user(&renamed).await.unwrap());
    let stored = fresh(&*store, a.user.id).await;
    assert_eq!(stored, next(&renamed));
    assert_eq!(stored.user.version, 2);

    // `a` is the copy read before the rename: every write from it is stale,
    // even one the role guard alone would allow (`b` still holds the role).
    let mut stale = a.clone();
    stale.user.roles.clear();
    assert!(matches!(
        store.update_user(&stale).await,
        Err(StoreError::Stale)
    ));
    assert!(matches!(
        store.update_user_keeping_role(&stale, role).await,
        Err(StoreError::Stale)
    ));
    assert!(matches!(
        store
            .delete_user_keeping_role(a.user.id, role, Some(1))
            .await,
        Err(StoreError::Stale)
    ));
    let mut stale_steal = a.clone();
    stale_steal.user.email = "b@version.example".into();
    assert!(
        matches!(
            store.update_user(&stale_steal).await,
            Err(StoreError::Stale)
        ),
        "stale before it can conflict"
    );
    assert_eq!(fresh(&*store, a.user.id).await, stored, "nothing written");

    // From the current version, guarded writes are made and move it on.
    let mut demoted = stored.clone();
    demoted.user.roles.clear();
    assert_eq!(
        store
            .update_user_keeping_role(&demoted, role)
            .await
            .unwrap(),
        GuardedChange::Done
    );
    assert_eq!(fresh(&*store, a.user.id).await, next(&demoted));
    assert_eq!(
        store
            .delete_user_keeping_role(a.user.id, role, Some(3))
            .await
            .unwrap(),
        GuardedChange::Done
    );
    assert!(store.get_user(a.user.id).await.unwrap().is_none());

    // Two writers read the same version and write at once: one wins.
    for round in 0..20 {
        let base = fresh(&*store, b.user.id).await;
        let start = Arc::new(tokio::sync::Barrier::new(2));
        let task = |name: String| {
            let (store, start, mut edit) = (store.clone(), start.clone(), base.clone());
            edit.user.display_name = name;
            tokio::spawn(async move {
                start.wait().await;
                store.update_user(&edit).await
            })
        };
        let (t1, t2) = (task(format!("one{round}")), task(format!("two{round}")));
        let (r1, r2) = (t1.await.unwrap(), t2.await.unwrap());
        let now = fresh(&*store, b.user.id).await;
        assert_eq!(now.user.version, base.user.version + 1, "round {round}");
        match (r1, r2) {
            (Ok(true), Err(StoreError::Stale)) => {
                assert_eq!(now.user.display_name, format!("one{round}"))
            }
            (Err(StoreError::Stale), Ok(true)) => {
                assert_eq!(now.user.display_name, format!("two{round}"))
            }
            other => panic!("round {round}: {other:?}"),
        }
    }
    store.delete_user(b.user.id).await.unwrap();
}

async fn roles(store: &dyn AuthStore) {
    let role = Role {
        name: "deployer".into(),
        description: "ships".into(),
        permissions: vec!["registry:*".into(), "tracking:task:read".into()],
        builtin: false,
        created_at: t0(),
    };
    store.insert_role(&role).await.unwrap();
    assert_eq!(store.get_role("deployer").await.unwrap().unwrap(), role);
    // A second insert of the name is refused and changes nothing.
    let mut other = role.clone();
    other.permissions = vec!["*".into()];
    assert!(matches!(
        store.insert_role(&other).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.get_role("deployer").await.unwrap().unwrap(), role);
    let mut edited = role.clone();
    edited.permissions.push("gateway:read".into());
    store.put_role(&edited).await.unwrap();
    assert_eq!(store.get_role("deployer").await.unwrap().unwrap(), edited);
    let admin = Role {
        name: "admin".into(),
        description: String::new(),
        permissions: vec!["*".into()],
        builtin: true,
        created_at: t0(),
    };
    store.put_role(&admin).await.unwrap();
    let names: Vec<String> = store
        .list_roles()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, vec!["admin", "deployer"]);
    assert!(store.delete_role("deployer").await.unwrap());
    assert!(!store.delete_role("deployer").await.unwrap());
    assert!(store.get_role("deployer").await.unwrap().is_none());
}

async fn api_keys(store: &dyn AuthStore) {
    let owner = user("keys@example.com", &[]);
    store.create_user(&owner).await.unwrap();
    let record = ApiKeyRecord {
        key: ApiKey {
            id: ApiKeyId::new(),
            public_id: "0123456789abcdef".into(),
            owner: owner.user.id,
            name: "ci".into(),
            scopes: vec!["registry:*".into()],
            created_at: t0(),
            expires_at: Some(t0() + Duration::days(30)),
            revoked_at: None,
            last_used_at: None,
        },
        secret_hash: [7; 32],
    };
    store.create_api_key(&record).await.unwrap();
    let mut clash = record.clone();
    clash.key.id = ApiKeyId::new();
    assert!(matches!(
        store.create_api_key(&clash).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store
            .get_api_key_by_public_id("0123456789abcdef")
            .await
            .unwrap()
            .unwrap(),
        record
    );
    assert_eq!(
        store.get_api_key(record.key.id).await.unwrap().unwrap(),
        record
    );
    assert!(
        store
            .get_api_key_by_public_id("nope")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store
            .list_api_keys(Some(owner.user.id))
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        store
            .list_api_keys(Some(UserId::new()))
            .await
            .unwrap()
            .len(),
        0
    );
    assert_eq!(store.list_api_keys(None).await.unwrap().len(), 1);

    let later = t0() + Duration::seconds(10);
    store
        .record_api_key_use(&[(record.key.id, later)])
        .await
        .unwrap();
    store
        .record_api_key_use(&[(record.key.id, t0())])
        .await
        .unwrap();
    let used = store.get_api_key(record.key.id).await.unwrap().unwrap();
    assert_eq!(
        used.key.last_used_at,
        Some(later),
        "last use only moves forward"
    );

    assert!(store.revoke_api_key(record.key.id, later).await.unwrap());
    assert!(!store.revoke_api_key(record.key.id, later).await.unwrap());
    let revoked = store.get_api_key(record.key.id).await.unwrap().unwrap();
    assert_eq!(revoked.key.revoked_at, Some(later));

    assert!(store.delete_user(owner.user.id).await.unwrap());
    assert!(
        store.get_api_key(record.key.id).await.unwrap().is_none(),
        "deleting a user deletes their keys"
    );
}

async fn tokens(store: &dyn AuthStore) {
    let owner = user("tokens@example.com", &[]);
    store.create_user(&owner).await.unwrap();
    let token = OneTimeToken {
        hash: [1; 32],
        kind: TokenKind::PasswordReset,
        user_id: owner.user.id,
        email_hash: [7; 32],
        expires_at: t0() + Duration::minutes(30),
    };
    store.create_token(&token).await.unwrap();
    assert_eq!(
        store
            .consume_token(&[1; 32], TokenKind::EmailVerification, t0())
            .await
            .unwrap(),
        None,
        "wrong kind"
    );
    assert_eq!(
        store
            .consume_token(&[1; 32], TokenKind::PasswordReset, t0())
            .await
            .unwrap(),
        Some(token.clone()),
        "the token comes back whole, with the address it is bound to"
    );
    assert_eq!(
        store
            .consume_token(&[1; 32], TokenKind::PasswordReset, t0())
            .await
            .unwrap(),
        None,
        "single use"
    );
    let expiring = OneTimeToken {
        hash: [2; 32],
        ..token
    };
    store.create_token(&expiring).await.unwrap();
    assert_eq!(
        store
            .consume_token(
                &[2; 32],
                TokenKind::PasswordReset,
                t0() + Duration::hours(1)
            )
            .await
            .unwrap(),
        None,
        "expired"
    );
    store.delete_user(owner.user.id).await.unwrap();
}

async fn audit(store: &dyn AuthStore) {
    let mut ids = Vec::new();
    for i in 0..5 {
        let event = AuditEvent {
            id: AuditId::new(),
            at: t0() + Duration::seconds(i),
            action: if i % 2 == 0 {
                "login.success"
            } else {
                "login.failure"
            }
            .into(),
            actor: Some(format!("user-{}", i % 2)),
            target: Some("ada@example.com".into()),
            ip: Some("10.0.0.1".into()),
            user_agent: Some("test".into()),
            success: i % 2 == 0,
            detail: None,
        };
        store.append_audit(&event).await.unwrap();
        ids.push(event.id);
    }
    let all = store
        .list_audit(&AuditFilter::default(), None, 10)
        .await
        .unwrap();
    assert_eq!(all.len(), 5);
    assert_eq!(all[0].id, ids[4], "newest first");
    let page = store
        .list_audit(&AuditFilter::default(), Some(ids[2]), 10)
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![ids[1], ids[0]]
    );
    let failures = AuditFilter {
        action: Some("login.failure".into()),
        ..AuditFilter::default()
    };
    assert_eq!(
        store.list_audit(&failures, None, 10).await.unwrap().len(),
        2
    );
    let window = AuditFilter {
        actor: Some("user-0".into()),
        since: Some(t0() + Duration::seconds(1)),
        until: Some(t0() + Duration::seconds(4)),
        ..AuditFilter::default()
    };
    let found = store.list_audit(&window, None, 10).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, ids[2]);
    assert_eq!(
        store
            .list_audit(&AuditFilter::default(), None, 2)
            .await
            .unwrap()
            .len(),
        2
    );
}

async fn signing_keys(store: &dyn AuthStore) {
    assert!(store.list_signing_keys().await.unwrap().is_empty());
    let a = SigningKeyRecord {
        kid: "k1".into(),
        alg: "EdDSA".into(),
        sealed_private: "jdg1.x.y".into(),
        created_at: t0(),
        retired_at: None,
    };
    let b = SigningKeyRecord {
        kid: "k2".into(),
        created_at: t0() + Duration::seconds(1),
        ..a.clone()
    };
    store.insert_signing_key(&b).await.unwrap();
    store.insert_signing_key(&a).await.unwrap();
    assert!(matches!(
        store.insert_signing_key(&a).await,
        Err(StoreError::Conflict(_))
    ));
    let keys = store.list_signing_keys().await.unwrap();
    assert_eq!(keys, vec![a.clone(), b.clone()]);
    let at = t0() + Duration::seconds(2);
    assert!(store.retire_signing_key("k1", at).await.unwrap());
    assert!(!store.retire_signing_key("k1", at).await.unwrap());
    assert!(!store.retire_signing_key("nope", at).await.unwrap());
    assert_eq!(
        store.list_signing_keys().await.unwrap()[0].retired_at,
        Some(at)
    );
}

fn session(user: UserId) -> Session {
    Session {
        id: SessionId::new(),
        user_id: user,
        generation: 0,
        salt: "salt".into(),
        created_at: t0(),
        refreshed_at: t0(),
        idle_expires_at: t0() + Duration::hours(1),
        absolute_expires_at: t0() + Duration::days(1),
        revoked_at: None,
        ip: Some("10.0.0.1".into()),
        user_agent: None,
    }
}

/// Runs the [`SessionStore`] contract against `store` (which must start empty).
pub async fn session_store(store: Arc<dyn SessionStore>) {
    let alice = UserId::new();
    let s = session(alice);
    store.create_session(&s).await.unwrap();
    assert_eq!(store.get_session(s.id).await.unwrap().unwrap(), s);
    assert!(store.get_session(SessionId::new()).await.unwrap().is_none());

    // Compare-and-set: exactly one of two concurrent advances wins.
    let at = t0() + Duration::minutes(1);
    let idle = at + Duration::hours(1);
    let (a, b) = tokio::join!(
        store.advance_session(s.id, 0, at, idle),
        store.advance_session(s.id, 0, at, idle)
    );
    assert!(a.unwrap() ^ b.unwrap(), "exactly one advance wins");
    let now = store.get_session(s.id).await.unwrap().unwrap();
    assert_eq!(now.generation, 1);
    assert_eq!(now.refreshed_at, at);
    assert_eq!(now.idle_expires_at, idle);
    assert!(!store.advance_session(s.id, 0, at, idle).await.unwrap());
    assert!(
        !store
            .advance_session(SessionId::new(), 0, at, idle)
            .await
            .unwrap()
    );

    let s2 = session(alice);
    let other = session(UserId::new());
    store.create_session(&s2).await.unwrap();
    store.create_session(&other).await.unwrap();
    let listed = store.list_user_sessions(alice, t0()).await.unwrap();
    let mut want = vec![s.id, s2.id];
    want.sort();
    assert_eq!(listed.iter().map(|x| x.id).collect::<Vec<_>>(), want);
    assert!(
        store
            .list_user_sessions(alice, t0() + Duration::days(2))
            .await
            .unwrap()
            .is_empty(),
        "expired sessions are not listed"
    );

    assert!(store.revoke_session(s.id, at).await.unwrap());
    assert!(!store.revoke_session(s.id, at).await.unwrap());
    assert!(
        !store.advance_session(s.id, 1, at, idle).await.unwrap(),
        "revoked"
    );
    assert_eq!(
        store.get_session(s.id).await.unwrap().unwrap().revoked_at,
        Some(at)
    );
    assert_eq!(
        store.list_user_sessions(alice, t0()).await.unwrap().len(),
        1
    );

    let revoked = store.revoke_user_sessions(alice, at).await.unwrap();
    assert_eq!(revoked, vec![s2.id]);
    assert!(
        store
            .list_user_sessions(alice, t0())
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .get_session(other.id)
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_none()
    );

    let purged = store
        .purge_sessions(at + Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(purged, 2);
    assert!(store.get_session(s.id).await.unwrap().is_none());
    assert!(store.get_session(other.id).await.unwrap().is_some());
}
