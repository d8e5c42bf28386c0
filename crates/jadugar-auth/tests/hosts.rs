//! Several hosts sharing one database (and Redis): revocations propagate.
#![cfg(feature = "test-support")]
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use jadugar_auth::service::{NewApiKey, NewUser};
use jadugar_auth::{AuthService, Config, Error};
use jadugar_core::storage::{Database, Redis};
use jadugar_core::test_support::{TestPostgres, TestRedis, TestSqlite};
use jadugar_core::{MasterKey, Principal, PrincipalKind, Sealer, SystemClock};
use tokio_util::sync::CancellationToken;

fn config() -> Config {
    Config {
        argon2_memory_kib: 1024,
        argon2_iterations: 1,
        api_key_cache_ttl_secs: 1,
        ..Config::default()
    }
}

async fn host(db: &Database, redis: Option<&Redis>, sealer: &Sealer) -> AuthService {
    AuthService::from_backends(&config(), db, redis, SystemClock::shared(), sealer.clone())
        .await
        .unwrap()
}

/// Creates a key on host A, warms host B's cache, revokes on A and returns
/// how long B took to refuse it.
async fn revoke_across(a: &AuthService, b: &AuthService) -> Duration {
    let owner = a
        .create_user(
            None,
            NewUser {
                email: "ops@example.com".into(),
                display_name: String::new(),
                password: None,
                roles: vec!["admin".into()],
                must_change_password: false,
            },
        )
        .await
        .unwrap();
    let key = a
        .create_api_key(
            None,
            NewApiKey {
                name: "ci".into(),
                scopes: vec![],
                expires_in_secs: None,
                owner: Some(owner.id),
            },
        )
        .await
        .unwrap();
    assert!(b.verify_api_key(&key.secret).await.unwrap().can("anything"));
    assert!(
        b.verify_api_key_cached(&key.secret).is_some(),
        "cached on B"
    );
    let revoked_at = Instant::now();
    a.revoke_api_key(
        &Principal::new(owner.id.to_string(), PrincipalKind::User),
        key.key.id,
    )
    .await
    .unwrap();
    loop {
        match b.verify_api_key(&key.secret).await {
            Err(Error::Unauthenticated(_)) => return revoked_at.elapsed(),
            Ok(_) if revoked_at.elapsed() < Duration::from_secs(5) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => panic!("still accepted after 5 s: {other:?}"),
        }
    }
}

#[tokio::test]
async fn key_revoked_on_one_host_is_refused_by_another_via_postgres_and_redis() {
    let (Some(pg), Some(redis)) = (TestPostgres::new().await, TestRedis::new().await) else {
        return;
    };
    let sealer = Sealer::new(MasterKey::generate("test"), []);
    let a = host(pg.database(), Some(redis.redis()), &sealer).await;
    let other_db = pg.connect_another().await;
    let other_redis = redis.connect_another().await;
    let b = host(&other_db, Some(&other_redis), &sealer).await;
    // The hosts share signing keys through the database.
    assert_eq!(a.jwks(), b.jwks());
    let cancel = CancellationToken::new();
    let tasks = b.spawn_background(cancel.clone());
    tokio::time::sleep(Duration::from_millis(200)).await; // let B subscribe
    let took = revoke_across(&a, &b).await;
    assert!(
        took < Duration::from_millis(900),
        "pub/sub should beat the 1 s cache TTL, took {took:?}"
    );

    // A session revoked on A is refused by B, whose token cache held it.
    a.create_user(
        None,
        NewUser {
            email: "ada@example.com".into(),
            display_name: String::new(),
            password: Some("correct horse battery".into()),
            roles: vec![],
            must_change_password: false,
        },
    )
    .await
    .unwrap();
    let pair = a
        .login(
            "ada@example.com",
            "correct horse battery",
            &Default::default(),
            None,
        )
        .await
        .unwrap();
    let principal = b.validate_token(&pair.access_token).await.unwrap();
    a.logout(Some(&principal), None, &Default::default())
        .await
        .unwrap();
    let start = Instant::now();
    while b.validate_token(&pair.access_token).await.is_ok() {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "session revocation did not reach B"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Refresh works on either host (sessions live in Redis).
    let pair = a
        .login(
            "ada@example.com",
            "correct horse battery",
            &Default::default(),
            None,
        )
        .await
        .unwrap();
    let next = b
        .refresh(&pair.refresh_token, &Default::default())
        .await
        .unwrap();
    assert!(a.validate_token(&next.access_token).await.is_ok());

    cancel.cancel();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(2), t)
            .await
            .unwrap()
            .unwrap();
    }
}

#[tokio::test]
async fn without_redis_a_revocation_is_bounded_by_the_cache_ttl() {
    let db = TestSqlite::new().await;
    let sealer = Sealer::new(MasterKey::generate("test"), []);
    let a = host(db.database(), None, &sealer).await;
    let other = db.connect_another().await;
    let b = host(&other, None, &sealer).await;
    let took = revoke_across(&a, &b).await;
    assert!(
        took <= Duration::from_millis(1500),
        "bounded by the 1 s TTL, took {took:?}"
    );
}

/// Two hosts each take admin from one of the last two admins at the same
/// moment (unassign, disable, delete): exactly one wins, an admin remains.
async fn last_admin_race(a: &AuthService, b: &AuthService) {
    let root = Principal::new("root", PrincipalKind::User).with_permissions(["*"]);
    let admin = |host: &AuthService, email: String| {
        let host = host.clone();
        async move {
            host.create_user(
                None,
                NewUser {
                    email,
                    display_name: String::new(),
                    password: None,
                    roles: vec!["admin".into()],
                    must_change_password: false,
                },
            )
            .await
            .unwrap()
        }
    };
    let mut survivor = None;
    for round in 0..30 {
        let x = admin(a, format!("x{round}@race.example")).await;
        let y = admin(b, format!("y{round}@race.example")).await;
        if let Some(previous) = survivor.take() {
            a.delete_user(&root, previous, None).await.unwrap();
        }
        let start = std::sync::Arc::new(tokio::sync::Barrier::new(2));
        let on_a = {
            let (a, root, start) = (a.clone(), root.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                a.unassign_role(&root, x.id, "admin").await.map(|_| ())
            })
        };
        let on_b = {
            let (b, root, start) = (b.clone(), root.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                if round % 2 == 0 {
                    let disable = jadugar_auth::service::UserUpdate {
                        disabled: Some(true),
                        ..Default::default()
                    };
                    b.update_user(&root, y.id, disable, None).await.map(|_| ())
                } else {
                    b.delete_user(&root, y.id, None).await
                }
            })
        };
        let (ra, rb) = (on_a.await.unwrap(), on_b.await.unwrap());
        match (&ra, &rb) {
            (Ok(()), Err(Error::NotAllowed(_))) => survivor = Some(y.id),
            (Err(Error::NotAllowed(_)), Ok(())) => survivor = Some(x.id),
            _ => panic!("round {round}: exactly one must win, got {ra:?} and {rb:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_cannot_remove_the_last_two_admins_at_once_sqlite() {
    let db = TestSqlite::new().await;
    let sealer = Sealer::new(MasterKey::generate("test"), []);
    let a = host(db.database(), None, &sealer).await;
    let other = db.connect_another().await;
    let b = host(&other, None, &sealer).await;
    last_admin_race(&a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_cannot_remove_the_last_two_admins_at_once_postgres() {
    let Some(pg) = TestPostgres::new().await else {
        return;
    };
    let sealer = Sealer::new(MasterKey::generate("test"), []);
    let a = host(pg.database(), None, &sealer).await;
    let other = pg.connect_another().await;
    let b = host(&other, None, &sealer).await;
    last_admin_race(&a, &b).await;
}
