//! Domain behaviour: tokens, refresh families, RBAC, API keys, throttling.
#![cfg(feature = "test-support")]
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use jadugar_auth::model::{
    ApiKeyId, ApiKeyRecord, AuditEvent, AuditFilter, AuditId, OneTimeToken, Role, SigningKeyRecord,
    TokenKind, UserId, UserRecord,
};
use jadugar_auth::service::{Mailer, NewApiKey, NewUser, RequestMeta, RoleInput, UserUpdate};
use jadugar_auth::store::{AuthStore, GuardedChange, MemoryStore, SqlStore, StoreError};
use jadugar_auth::{AuthService, Config, Error};
use jadugar_core::test_support::{TestPostgres, TestSqlite};
use jadugar_core::{Clock, ManualClock, Principal, PrincipalKind};
use serde_json::json;

fn fast_config() -> Config {
    Config {
        // Tests hash often: small argon2 memory keeps them fast; the real
        // parameters are exercised by the bench and the login test below.
        argon2_memory_kib: 1024,
        argon2_iterations: 1,
        ..Config::default()
    }
}

async fn service(config: Config, clock: &ManualClock) -> AuthService {
    let store = Arc::new(MemoryStore::default());
    AuthService::builder(config, store.clone(), store)
        .clock(clock.shared())
        .build()
        .await
        .unwrap()
}

fn system() -> Principal {
    Principal::new("root", PrincipalKind::User).with_permissions(["*"])
}

async fn user(auth: &AuthService, email: &str, roles: &[&str]) -> jadugar_auth::model::User {
    auth.create_user(
        None,
        NewUser {
            email: email.into(),
            display_name: String::new(),
            password: Some("correct horse battery".into()),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            must_change_password: false,
        },
    )
    .await
    .unwrap()
}

fn meta() -> RequestMeta {
    RequestMeta::default()
}

fn unauthenticated<T: std::fmt::Debug>(r: Result<T, Error>) {
    assert!(matches!(r, Err(Error::Unauthenticated(_))), "{r:?}");
}

#[tokio::test]
async fn hostile_tokens_are_rejected() {
    let clock = ManualClock::default();
    let auth = service(fast_config(), &clock).await;
    let ada = user(&auth, "ada@example.com", &["admin"]).await;
    let now = clock.now().timestamp();
    let good = json!({"iss": auth.config().issuer, "aud": auth.config().audience, "sub": ada.id.to_string(),
        "exp": now + 60, "iat": now, "nbf": now, "jti": "j", "perms": ["*"], "roles": []});
    let token = auth.sign_claims_for_tests(&good).unwrap();
    assert!(auth.validate_token(&token).await.unwrap().can("anything"));

    // alg none.
    let kid = auth.jwks()["keys"][0]["kid"].as_str().unwrap().to_owned();
    let header =
        URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT", "kid": kid}).to_string());
    let payload = URL_SAFE_NO_PAD.encode(good.to_string());
    unauthenticated(auth.validate_token(&format!("{header}.{payload}.")).await);

    // HS256 signed with the public key (bytes and text forms).
    let x = auth.jwks()["keys"][0]["x"].as_str().unwrap().to_owned();
    let mut hs = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs.kid = Some(kid.clone());
    for secret in [URL_SAFE_NO_PAD.decode(&x).unwrap(), x.clone().into_bytes()] {
        let forged =
            jsonwebtoken::encode(&hs, &good, &jsonwebtoken::EncodingKey::from_secret(&secret))
                .unwrap();
        unauthenticated(auth.validate_token(&forged).await);
    }

    // Expired (beyond the leeway), wrong audience, wrong issuer, missing or non-numeric times.
    let mut cases = Vec::new();
    let mut c = good.clone();
    c["exp"] = json!(now - 120);
    cases.push(c);
    let mut c = good.clone();
    c["aud"] = json!("someone-else");
    cases.push(c);
    let mut c = good.clone();
    c["iss"] = json!("https://evil.example");
    cases.push(c);
    let mut c = good.clone();
    c.as_object_mut().unwrap().remove("exp");
    cases.push(c);
    let mut c = good.clone();
    c["exp"] = json!((now + 60).to_string());
    cases.push(c);
    let mut c = good.clone();
    c["nbf"] = json!("yesterday");
    cases.push(c);
    let mut c = good.clone();
    c["nbf"] = json!(now + 3600);
    cases.push(c);
    for claims in cases {
        let t = auth.sign_claims_for_tests(&claims).unwrap();
        assert!(auth.validate_token(&t).await.is_err(), "accepted {claims}");
    }

    // Unknown kid, and our kid with someone else's key.
    let other = service(fast_config(), &clock).await;
    let foreign = other.sign_claims_for_tests(&good).unwrap();
    unauthenticated(auth.validate_token(&foreign).await);
    let mut parts: Vec<String> = foreign.split('.').map(str::to_owned).collect();
    parts[0] = URL_SAFE_NO_PAD.encode(json!({"alg": "EdDSA", "kid": kid}).to_string());
    unauthenticated(auth.validate_token(&parts.join(".")).await);

    // Our kid under another algorithm, trailing garbage, bad base64, a
    // modified payload under the original signature.
    let (signed, signature) = token.rsplit_once('.').unwrap();
    let (_, payload) = signed.split_once('.').unwrap();
    let es = URL_SAFE_NO_PAD.encode(json!({"alg": "ES256", "kid": kid}).to_string());
    let mut more = good.clone();
    more["perms"] = json!(["*", "extra"]);
    let modified = URL_SAFE_NO_PAD.encode(more.to_string());
    let header = signed.split_once('.').unwrap().0;
    for bad in [
        format!("{es}.{payload}.{signature}"),
        format!("{token}x"),
        format!("{token}.x"),
        format!("{token}=="),
        format!("{header}.{payload}*.{signature}"),
        format!("{header}.{modified}.{signature}"),
    ] {
        unauthenticated(auth.validate_token(&bad).await);
    }

    // Garbage.
    for junk in ["", ".", "a.b.c", "e30.e30.e30", &"A".repeat(10_000)] {
        unauthenticated(auth.validate_token(junk).await);
    }

    // A cached token still expires.
    clock.advance(Duration::from_secs(60 + 31));
    unauthenticated(auth.validate_token(&token).await);
}

#[tokio::test]
async fn es256_keys_and_rotation_overlap() {
    let clock = ManualClock::default();
    let config = Config {
        jwt_algorithm: "ES256".into(),
        ..fast_config()
    };
    let auth = service(config, &clock).await;
    user(&auth, "ada@example.com", &["admin"]).await;
    let pair = auth
        .login("ada@example.com", "correct horse battery", &meta(), None)
        .await
        .unwrap();
    assert_eq!(auth.jwks()["keys"][0]["alg"], "ES256");
    auth.rotate_signing_key().await.unwrap();
    assert_eq!(auth.jwks()["keys"].as_array().unwrap().len(), 2);
    // Issued before rotation, still valid during the overlap (and not from cache).
    let other_instance_view = auth.clone();
    assert!(
        other_instance_view
            .validate_token(&pair.access_token)
            .await
            .is_ok()
    );
    let fresh = auth.refresh(&pair.refresh_token, &meta()).await.unwrap();
    assert!(auth.validate_token(&fresh.access_token).await.is_ok());
    clock.advance(Duration::from_secs(auth.config().key_overlap_secs + 1));
    assert_eq!(auth.jwks()["keys"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn refresh_rotation_grace_and_family_revocation() {
    let clock = ManualClock::default();
    let auth = service(fast_config(), &clock).await;
    user(&auth, "ada@example.com", &[]).await;
    let login = auth
        .login("ada@example.com", "correct horse battery", &meta(), None)
        .await
        .unwrap();
    let r0 = login.refresh_token.clone();
    let second = auth.refresh(&r0, &meta()).await.unwrap();
    let r1 = second.refresh_token.clone();
    assert_ne!(r0, r1);

    // Two tabs: the predecessor within the grace window gets the current token.
    clock.advance(Duration::from_secs(5));
    let tab2 = auth.refresh(&r0, &meta()).await.unwrap();
    assert_eq!(tab2.refresh_token, r1);

    // Rotate again; r0 is now two generations old: reuse revokes the family.
    let third = auth.refresh(&r1, &meta()).await.unwrap();
    let r2 = third.refresh_token.clone();
    unauthenticated(auth.refresh(&r0, &meta()).await);
    unauthenticated(auth.refresh(&r2, &meta()).await);
    unauthenticated(auth.validate_token(&third.access_token).await);
    assert!(
        auth.list_sessions(
            &Principal::new(login.user_id.to_string(), PrincipalKind::User),
            None
        )
        .await
        .unwrap()
        .is_empty()
    );

    // The predecessor after the grace window is reuse too.
    let login = auth
        .login("ada@example.com", "correct horse battery", &meta(), None)
        .await
        .unwrap();
    let next = auth.refresh(&login.refresh_token, &meta()).await.unwrap();
    clock.advance(Duration::from_secs(auth.config().refresh_grace_secs + 1));
    unauthenticated(auth.refresh(&login.refresh_token, &meta()).await);
    unauthenticated(auth.refresh(&next.refresh_token, &meta()).await);

    // A forged MAC is refused without revoking anything.
    let login = auth
        .login("ada@example.com", "correct horse battery", &meta(), None)
        .await
        .unwrap();
    let forged = format!("{}x", &login.refresh_token[..login.refresh_token.len() - 1]);
    unauthenticated(auth.refresh(&forged, &meta()).await);
    assert!(auth.refresh(&login.refresh_token, &meta()).await.is_ok());

    // Idle lifetime.
    let login = auth
        .login("ada@example.com", "correct horse battery", &meta(), None)
        .await
        .unwrap();
    clock.advance(Duration::from_secs(auth.config().session_idle_secs + 1));
    unauthenticated(auth.refresh(&login.refresh_token, &meta()).await);
}

#[tokio::test]
async fn login_rotates_previous_session_and_logout_revokes() {
    let clock = ManualClock::default();
    let auth = service(fast_config(), &clock).await;
    user(&auth, "ada@example.com", &[]).await;
    let first = auth
        .login("ada@example.com", "correct horse battery", &meta(), None)
        .await
        .unwrap();
    let second = auth
        .login(
            "ada@example.com",
            "correct horse battery",
            &meta(),
            Some(first.session_id),
        )
        .await
        .unwrap();
    unauthenticated(auth.refresh(&first.refresh_token, &meta()).await);
    let principal = auth.validate_token(&second.access_token).await.unwrap();
    auth.logout(Some(&principal), None, &meta()).await.unwrap();
    unauthenticated(auth.validate_token(&second.access_token).await);
    unauthenticated(auth.refresh(&second.refresh_token, &meta()).await);
    // Logout with only the refresh token (no cookie, no access token).
    let third = auth
        .login("ada@example.com", "correct horse battery", &meta(), None)
        .await
        .unwrap();
    auth.logout(None, Some(&third.refresh_token), &meta())
        .await
        .unwrap();
    unauthenticated(auth.validate_token(&third.access_token).await);
}

#[tokio::test]
async fn privilege_escalation_through_roles_is_refused() {
    let clock = ManualClock::default();
    let auth = service(fast_config(), &clock).await;
    auth.put_role(
        &system(),
        RoleInput {
            name: "manager".into(),
            description: String::new(),
            permissions: vec![
                "auth:roles:write".into(),
                "auth:users:write".into(),
                "registry:*".into(),
            ],
        },
    )
    .await
    .unwrap();
    auth.put_role(
        &system(),
        RoleInput {
            name: "ops".into(),
            description: String::new(),
            permissions: vec!["gateway:*".into()],
        },
    )
    .await
    .unwrap();
    let mallory = user(&auth, "mallory@example.com", &["manager"]).await;
    let pair = auth
        .login(
            "mallory@example.com",
            "correct horse battery",
            &meta(),
            None,
        )
        .await
        .unwrap();
    let me = auth.validate_token(&pair.access_token).await.unwrap();

    let forbidden = |r: Result<_, Error>| assert!(matches!(r, Err(Error::Forbidden(_))), "{r:?}");
    // Creating a role with more than one holds.
    forbidden(
        auth.put_role(
            &me,
            RoleInput {
                name: "god".into(),
                description: String::new(),
                permissions: vec!["*".into()],
            },
        )
        .await
        .map(|_| ()),
    );
    forbidden(
        auth.put_role(
            &me,
            RoleInput {
                name: "auth2".into(),
                description: String::new(),
                permissions: vec!["auth:*".into()],
            },
        )
        .await
        .map(|_| ()),
    );
    // Widening one's own role.
    forbidden(
        auth.put_role(
            &me,
            RoleInput {
                name: "manager".into(),
                description: String::new(),
                permissions: vec![
                    "auth:roles:write".into(),
                    "auth:users:write".into(),
                    "*".into(),
                ],
            },
        )
        .await
        .map(|_| ()),
    );
    // Editing a role above one's own (even to narrow it).
    forbidden(
        auth.put_role(
            &me,
            RoleInput {
                name: "ops".into(),
                description: String::new(),
                permissions: vec!["registry:read".into()],
            },
        )
        .await
        .map(|_| ()),
    );
    // Granting admin or a role with foreign permissions, to self or others.
    forbidden(auth.assign_role(&me, mallory.id, "admin").await.map(|_| ()));
    forbidden(auth.assign_role(&me, mallory.id, "ops").await.map(|_| ()));
    forbidden(
        auth.create_user(
            Some(&me),
            NewUser {
                email: "x@example.com".into(),
                display_name: String::new(),
                password: None,
                roles: vec!["admin".into()],
                must_change_password: false,
            },
        )
        .await
        .map(|_| ()),
    );
    // Built-in admin cannot be edited even by an admin.
    assert!(matches!(
        auth.put_role(
            &system(),
            RoleInput {
                name: "admin".into(),
                description: String::new(),
                permissions: vec!["registry:read".into()]
            }
        )
        .await,
        Err(Error::NotAllowed(_))
    ));
    // What one does hold can be granted.
    auth.put_role(
        &me,
        RoleInput {
            name: "reader".into(),
            description: String::new(),
            permissions: vec!["registry:read".into()],
        },
    )
    .await
    .unwrap();
    auth.assign_role(&me, mallory.id, "reader").await.unwrap();
    // API key scopes cannot exceed the owner's permissions.
    let r = auth
        .create_api_key(
            Some(&me),
            NewApiKey {
                name: "k".into(),
                scopes: vec!["gateway:*".into()],
                expires_in_secs: None,
                owner: None,
            },
        )
        .await;
    assert!(matches!(r, Err(Error::Validation(_))), "{r:?}");
}

#[tokio::test]
async fn last_admin_cannot_be_removed() {
    let clock = ManualClock::default();
    let auth = service(fast_config(), &clock).await;
    let root = user(&auth, "root@example.com", &["admin"]).await;
    let admin = system();
    let not_allowed =
        |r: Result<(), Error>| assert!(matches!(r, Err(Error::NotAllowed(_))), "{r:?}");
    not_allowed(
        auth.unassign_role(&admin, root.id, "admin")
            .await
            .map(|_| ()),
    );
    not_allowed(auth.delete_user(&admin, root.id, None).await);
    not_allowed(
        auth.update_user(
            &admin,
            root.id,
            UserUpdate {
                disabled: Some(true),
                ..UserUpdate::default()
            },
            None,
        )
        .await
        .map(|_| ()),
    );
    let second = user(&auth, "second@example.com", &["admin"]).await;
    auth.unassign_role(&admin, root.id, "admin").await.unwrap();
    not_allowed(auth.delete_user(&admin, second.id, None).await);
    auth.assign_role(&admin, root.id, "admin").await.unwrap();
    auth.delete_user(&admin, second.id, None).await.unwrap();
}

#[tokio::test]
async fn api_keys_verify_scope_revoke_and_record_use() {
    let clock = ManualClock::default();
    let auth = service(fast_config(), &clock).await;
    auth.put_role(
        &system(),
        RoleInput {
            name: "dev".into(),
            description: String::new(),
            permissions: vec!["registry:*".into(), "tracking:*".into()],
        },
    )
    .await
    .unwrap();
    let dev = user(&auth, "dev@example.com", &["dev"]).await;
    let created = auth
        .create_api_key(
            None,
            NewApiKey {
                name: "ci".into(),
                scopes: vec!["registry:*".into()],
                expires_in_secs: Some(3600),
                owner: Some(dev.id),
            },
        )
        .await
        .unwrap();
    assert!(
        created
            .secret
            .starts_with(&format!("jdg_{}_", created.key.public_id))
    );
    assert!(
        created.secret.len() >= 4 + 16 + 1 + 43,
        "at least 256 bits of secret"
    );
    let p = auth.verify_api_key(&created.secret).await.unwrap();
    assert_eq!(p.kind, PrincipalKind::ApiKey);
    assert_eq!(p.owner.as_deref(), Some(dev.id.to_string().as_str()));
    assert!(p.can("registry:service:write"));
    assert!(!p.can("tracking:task:write"), "narrowed by scope");
    assert!(auth.verify_api_key_cached(&created.secret).unwrap().is_ok());

    // Wrong secret with a real public id; unknown public id; garbage.
    let wrong = format!("{}x", &created.secret[..created.secret.len() - 1]);
    unauthenticated(auth.verify_api_key(&wrong).await);
    unauthenticated(auth.verify_api_key("jdg_0000000000000000_nope").await);
    unauthenticated(auth.verify_api_key("jdg_zz").await);

    // Last use is recorded in memory and flushed.
    clock.advance(Duration::from_secs(10));
    auth.verify_api_key(&created.secret).await.unwrap();
    assert_eq!(auth.flush_key_usage().await.unwrap(), 1);
    let stored = auth
        .store()
        .get_api_key(created.key.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.key.last_used_at.map(|t| t.timestamp()),
        Some(clock.now().timestamp())
    );

    // Expiry.
    clock.advance(Duration::from_secs(3600));
    unauthenticated(auth.verify_api_key(&created.secret).await);

    // Revocation applies at once on this host.
    let k2 = auth
        .create_api_key(
            None,
            NewApiKey {
                name: "k2".into(),
                scopes: vec![],
                expires_in_secs: None,
                owner: Some(dev.id),
            },
        )
        .await
        .unwrap();
    let owner = Principal::new(dev.id.to_string(), PrincipalKind::User);
    assert!(
        auth.verify_api_key(&k2.secret)
            .await
            .unwrap()
            .can("tracking:x")
    );
    auth.revoke_api_key(&owner, k2.key.id).await.unwrap();
    unauthenticated(auth.verify_api_key(&k2.secret).await);

    // A disabled owner's keys stop working.
    let k3 = auth
        .create_api_key(
            None,
            NewApiKey {
                name: "k3".into(),
                scopes: vec![],
                expires_in_secs: None,
                owner: Some(dev.id),
            },
        )
        .await
        .unwrap();
    auth.verify_api_key(&k3.secret).await.unwrap();
    auth.update_user(
        &system(),
        dev.id,
        UserUpdate {
            disabled: Some(true),
            ..UserUpdate::default()
        },
        None,
    )
    .await
    .unwrap();
    unauthenticated(auth.verify_api_key(&k3.secret).await);
}

#[tokio::test]
async fn brute_force_is_throttled_the_same_for_unknown_accounts() {
    let clock = ManualClock::default();
    let config = Config {
        login_attempts_per_account: 3,
        login_window_secs: 60,
        ..fast_config()
    };
    let auth = service(config, &clock).await;
    user(&auth, "ada@example.com", &[]).await;
    for email in ["ada@example.com", "ghost@example.com"] {
        for _ in 0..3 {
            assert!(matches!(
                auth.login(email, "wrong password!", &meta(), None).await,
                Err(Error::InvalidCredentials)
            ));
        }
        let r = auth
            .login(email, "correct horse battery", &meta(), None)
            .await;
        assert!(matches!(r, Err(Error::Throttled(s)) if s >= 1), "{r:?}");
    }
    // Per IP, across accounts.
    let config = Config {
        login_attempts_per_ip: 2,
        ..fast_config()
    };
    let auth = service(config, &clock).await;
    let from = RequestMeta {
        ip: Some("10.1.2.3".parse().unwrap()),
        user_agent: None,
    };
    for email in ["a@x.io", "b@x.io"] {
        let _ = auth.login(email, "nope nope nope", &from, None).await;
    }
    assert!(matches!(
        auth.login("c@x.io", "nope nope nope", &from, None).await,
        Err(Error::Throttled(_))
    ));
    let audit = auth
        .list_audit(
            &system(),
            &jadugar_auth::model::AuditFilter {
                action: Some("login.throttled".into()),
                ..Default::default()
            },
            &Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(audit.items.len(), 1);
}

#[tokio::test]
async fn login_with_real_argon2_parameters_and_dummy_hash() {
    let clock = ManualClock::default();
    let auth = service(Config::default(), &clock).await;
    user(&auth, "ada@example.com", &[]).await;
    assert!(
        auth.login("ada@example.com", "correct horse battery", &meta(), None)
            .await
            .is_ok()
    );
    for (email, pw) in [
        ("ada@example.com", "wrong"),
        ("ada@example.com", ""),
        ("nobody@example.com", "x"),
        ("not an email", "x"),
    ] {
        assert!(matches!(
            auth.login(email, pw, &meta(), None).await,
            Err(Error::InvalidCredentials)
        ));
    }
    assert!(matches!(
        auth.login("ada@example.com", &"x".repeat(100_000), &meta(), None)
            .await,
        Err(Error::InvalidCredentials)
    ));
}

#[tokio::test]
async fn bootstrap_admin_must_change_generated_password() {
    let clock = ManualClock::default();
    let auth = service(fast_config(), &clock).await;
    let boot = auth.bootstrap(None).await.unwrap().unwrap();
    let password = boot.generated_password.unwrap();
    assert!(
        auth.bootstrap(None).await.unwrap().is_none(),
        "only on an empty store"
    );
    let admin = auth
        .list_users(&system(), &Default::default())
        .await
        .unwrap();
    assert!(admin.items[0].must_change_password);
    // Created flagged in one write: a failed second write cannot leave the
    // generated password permanent and unknown.
    assert_eq!(admin.items[0].version, 1);
    let pair = auth
        .login(&boot.email, &password, &meta(), None)
        .await
        .unwrap();
    assert!(pair.must_change_password);
    let p = auth.validate_token(&pair.access_token).await.unwrap();
    assert!(!p.can("auth:users:read"));
    auth.change_password(&p, password, "a brand new passphrase".into(), &meta())
        .await
        .unwrap();
    let pair = auth
        .login(&boot.email, "a brand new passphrase", &meta(), None)
        .await
        .unwrap();
    assert!(
        auth.validate_token(&pair.access_token)
            .await
            .unwrap()
            .can("auth:users:write")
    );

    let clock = ManualClock::default();
    let auth = service(fast_config(), &clock).await;
    let boot = auth
        .bootstrap(Some("from the environment".into()))
        .await
        .unwrap()
        .unwrap();
    assert!(boot.generated_password.is_none());
    let pair = auth
        .login("admin@localhost", "from the environment", &meta(), None)
        .await
        .unwrap();
    assert!(!pair.must_change_password);
}

#[derive(Debug, Default)]
struct CaptureMailer(Mutex<Vec<String>>);

#[async_trait]
impl Mailer for CaptureMailer {
    async fn send(&self, _to: &str, _subject: &str, body: &str) -> Result<(), Error> {
        self.0
            .lock()
            .unwrap()
            .push(body.rsplit(' ').next().unwrap().to_owned());
        Ok(())
    }
}

#[tokio::test]
async fn password_reset_and_email_verification_are_single_use() {
    let clock = ManualClock::default();
    let mailer = Arc::new(CaptureMailer::default());
    let store = Arc::new(MemoryStore::default());
    let auth = AuthService::builder(fast_config(), store.clone(), store)
        .clock(clock.shared())
        .mailer(mailer.clone())
        .build()
        .await
        .unwrap();
    let ada = user(&auth, "ada@example.com", &[]).await;
    auth.request_password_reset("nobody@example.com", &meta())
        .await
        .unwrap();
    assert!(mailer.0.lock().unwrap().is_empty(), "no mail, same answer");
    auth.request_password_reset("ADA@example.com", &meta())
        .await
        .unwrap();
    let token = mailer.0.lock().unwrap().pop().unwrap();
    assert!(matches!(
        auth.confirm_password_reset(&token, "short".into(), &meta())
            .await,
        Err(Error::Validation(_))
    ));
    auth.confirm_password_reset(&token, "the reset passphrase".into(), &meta())
        .await
        .unwrap();
    assert!(
        auth.confirm_password_reset(&token, "the reset passphrase".into(), &meta())
            .await
            .is_err()
    );
    auth.login("ada@example.com", "the reset passphrase", &meta(), None)
        .await
        .unwrap();

    let me = Principal::new(ada.id.to_string(), PrincipalKind::User);
    auth.request_email_verification(&me).await.unwrap();
    let token = mailer.0.lock().unwrap().pop().unwrap();
    clock.advance(Duration::from_secs(
        auth.config().one_time_token_ttl_secs + 1,
    ));
    assert!(
        auth.confirm_email_verification(&token).await.is_err(),
        "expired"
    );
    auth.request_email_verification(&me).await.unwrap();
    let token = mailer.0.lock().unwrap().pop().unwrap();
    auth.confirm_email_verification(&token).await.unwrap();
    assert!(auth.get_user(&me, ada.id).await.unwrap().email_verified);
}

#[tokio::test]
async fn users_validate_input_and_paginate() {
    let clock = ManualClock::default();
    let auth = service(fast_config(), &clock).await;
    let r = auth
        .create_user(
            Some(&system()),
            NewUser {
                email: "bad".into(),
                display_name: String::new(),
                password: Some("short".into()),
                roles: vec!["Nope!".into()],
                must_change_password: false,
            },
        )
        .await;
    match r {
        Err(Error::Validation(fields)) => {
            let names: Vec<&str> = fields.iter().map(|f| f.field.as_str()).collect();
            assert_eq!(names, vec!["email", "password", "roles"]);
        }
        other => panic!("{other:?}"),
    }
    user(&auth, "a@example.com", &[]).await;
    let dup = auth
        .create_user(
            None,
            NewUser {
                email: "A@EXAMPLE.com".into(),
                display_name: String::new(),
                password: None,
                roles: vec![],
                must_change_password: false,
            },
        )
        .await;
    assert!(
        matches!(dup, Err(Error::Conflict(_))),
        "emails are unique case-insensitively"
    );
    for i in 0..4 {
        user(&auth, &format!("u{i}@example.com"), &[]).await;
    }
    let mut page = jadugar_core::PageRequest {
        limit: Some(2),
        cursor: None,
    };
    let mut seen = 0;
    loop {
        let p = auth.list_users(&system(), &page).await.unwrap();
        seen += p.items.len();
        match p.next_cursor {
            Some(c) => page.cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, 5);
    let bad = jadugar_core::PageRequest {
        limit: None,
        cursor: Some("forged".into()),
    };
    assert!(matches!(
        auth.list_users(&system(), &bad).await,
        Err(Error::Validation(_))
    ));
}

#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let clock = ManualClock::default();
    let config = Config {
        trusted_proxies: vec!["10.0.0.0/8".into(), "192.168.1.1".into()],
        ..fast_config()
    };
    let auth = service(config, &clock).await;
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    assert_eq!(
        auth.client_ip(Some(ip("10.0.0.5")), Some("1.2.3.4, 10.0.0.7")),
        Some(ip("1.2.3.4"))
    );
    assert_eq!(
        auth.client_ip(Some(ip("192.168.1.1")), Some("5.6.7.8")),
        Some(ip("5.6.7.8"))
    );
    assert_eq!(
        auth.client_ip(Some(ip("8.8.8.8")), Some("1.2.3.4")),
        Some(ip("8.8.8.8")),
        "untrusted peer"
    );
    assert_eq!(
        auth.client_ip(Some(ip("10.0.0.5")), Some("garbage")),
        Some(ip("10.0.0.5"))
    );
    assert_eq!(
        auth.client_ip(Some(ip("10.0.0.5")), None),
        Some(ip("10.0.0.5"))
    );
    assert_eq!(auth.client_ip(None, Some("1.2.3.4")), None);
    let store = Arc::new(MemoryStore::default());
    let bad = AuthService::builder(
        Config {
            trusted_proxies: vec!["nope".into()],
            ..fast_config()
        },
        store.clone(),
        store,
    )
    .build()
    .await;
    assert!(matches!(bad, Err(Error::Validation(_))));
}

/// A store that stops one read of one user until the test lets it go on, so
/// other writes can land between a read-modify-write's read and its write.
#[derive(Debug)]
struct PausingStore {
    inner: Arc<dyn AuthStore>,
    pause: Mutex<Option<Pause>>,
}

#[derive(Debug)]
struct Pause {
    user: UserId,
    reached: tokio::sync::oneshot::Sender<()>,
    resume: tokio::sync::oneshot::Receiver<()>,
}

impl PausingStore {
    /// Arms the pause: the next read of `user` signals the first channel
    /// and waits for the second.
    fn pause_next_read(
        &self,
        user: UserId,
    ) -> (
        tokio::sync::oneshot::Receiver<()>,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let (reached, reached_rx) = tokio::sync::oneshot::channel();
        let (resume_tx, resume) = tokio::sync::oneshot::channel();
        *self.pause.lock().unwrap() = Some(Pause {
            user,
            reached,
            resume,
        });
        (reached_rx, resume_tx)
    }
}

#[async_trait]
impl AuthStore for PausingStore {
    async fn get_user(&self, id: UserId) -> Result<Option<UserRecord>, StoreError> {
        let read = self.inner.get_user(id).await;
        let pause = {
            let mut slot = self.pause.lock().unwrap();
            match slot.take() {
                Some(p) if p.user == id => Some(p),
                other => {
                    *slot = other;
                    None
                }
            }
        };
        if let Some(p) = pause {
            p.reached.send(()).unwrap();
            p.resume.await.unwrap();
        }
        read
    }
    async fn create_user(&self, record: &UserRecord) -> Result<(), StoreError> {
        self.inner.create_user(record).await
    }
    async fn get_user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError> {
        self.inner.get_user_by_email(email).await
    }
    async fn update_user(&self, record: &UserRecord) -> Result<bool, StoreError> {
        self.inner.update_user(record).await
    }
    async fn update_user_keeping_role(
        &self,
        record: &UserRecord,
        role: &str,
    ) -> Result<GuardedChange, StoreError> {
        self.inner.update_user_keeping_role(record, role).await
    }
    async fn delete_user(&self, id: UserId) -> Result<bool, StoreError> {
        self.inner.delete_user(id).await
    }
    async fn delete_user_keeping_role(
        &self,
        id: UserId,
        role: &str,
        version: Option<i64>,
    ) -> Result<GuardedChange, StoreError> {
        self.inner.delete_user_keeping_role(id, role, version).await
    }
    async fn list_users(
        &self,
        after: Option<UserId>,
        limit: u32,
    ) -> Result<Vec<UserRecord>, StoreError> {
        self.inner.list_users(after, limit).await
    }
    async fn count_users(&self) -> Result<u64, StoreError> {
        self.inner.count_users().await
    }
    async fn users_with_role(&self, role: &str) -> Result<Vec<UserId>, StoreError> {
        self.inner.users_with_role(role).await
    }
    async fn put_role(&self, role: &Role) -> Result<(), StoreError> {
        self.inner.put_role(role).await
    }
    async fn get_role(&self, name: &str) -> Result<Option<Role>, StoreError> {
        self.inner.get_role(name).await
    }
    async fn list_roles(&self) -> Result<Vec<Role>, StoreError> {
        self.inner.list_roles().await
    }
    async fn delete_role(&self, name: &str) -> Result<bool, StoreError> {
        self.inner.delete_role(name).await
    }
    async fn create_api_key(&self, record: &ApiKeyRecord) -> Result<(), StoreError> {
        self.inner.create_api_key(record).await
    }
    async fn get_api_key(&self, id: ApiKeyId) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.inner.get_api_key(id).await
    }
    async fn get_api_key_by_public_id(
        &self,
        public_id: &str,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.inner.get_api_key_by_public_id(public_id).await
    }
    async fn list_api_keys(&self, owner: Option<UserId>) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.inner.list_api_keys(owner).await
    }
    async fn revoke_api_key(&self, id: ApiKeyId, at: DateTime<Utc>) -> Result<bool, StoreError> {
        self.inner.revoke_api_key(id, at).await
    }
    async fn record_api_key_use(
        &self,
        uses: &[(ApiKeyId, DateTime<Utc>)],
    ) -> Result<(), StoreError> {
        self.inner.record_api_key_use(uses).await
    }
    async fn create_token(&self, token: &OneTimeToken) -> Result<(), StoreError> {
        self.inner.create_token(token).await
    }
    async fn consume_token(
        &self,
        hash: &[u8; 32],
        kind: TokenKind,
        now: DateTime<Utc>,
    ) -> Result<Option<OneTimeToken>, StoreError> {
        self.inner.consume_token(hash, kind, now).await
    }
    async fn append_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        self.inner.append_audit(event).await
    }
    async fn list_audit(
        &self,
        filter: &AuditFilter,
        before: Option<AuditId>,
        limit: u32,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        self.inner.list_audit(filter, before, limit).await
    }
    async fn insert_signing_key(&self, key: &SigningKeyRecord) -> Result<(), StoreError> {
        self.inner.insert_signing_key(key).await
    }
    async fn list_signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError> {
        self.inner.list_signing_keys().await
    }
    async fn retire_signing_key(&self, kid: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
        self.inner.retire_signing_key(kid, at).await
    }
}

/// B is the only admin. An edit of C's display name reads C; meanwhile
/// admin is granted to C and taken from B; then the edit writes. It must not
/// save its stale copy of C (without admin): C keeps admin and gets the new
/// name, one admin remains. With `If-Match` of the version it read, the same
/// edit is refused and writes nothing.
async fn stale_edit_keeps_the_last_admin(inner: Arc<dyn AuthStore>) {
    let store = Arc::new(PausingStore {
        inner,
        pause: Mutex::new(None),
    });
    let auth = AuthService::builder(
        fast_config(),
        store.clone(),
        Arc::new(MemoryStore::default()),
    )
    .build()
    .await
    .unwrap();
    let root = system();
    let b = user(&auth, "b@example.com", &["admin"]).await;
    let c = user(&auth, "c@example.com", &[]).await;
    let rename = |name: &str| UserUpdate {
        display_name: Some(name.into()),
        ..UserUpdate::default()
    };

    let (reached, resume) = store.pause_next_read(c.id);
    let edit = tokio::spawn({
        let (auth, root, update) = (auth.clone(), root.clone(), rename("Cee"));
        async move { auth.update_user(&root, c.id, update, None).await }
    });
    reached.await.unwrap(); // the edit holds C without admin
    auth.assign_role(&root, c.id, "admin").await.unwrap();
    auth.unassign_role(&root, b.id, "admin").await.unwrap();
    resume.send(()).unwrap();
    let edited = edit.await.unwrap().unwrap();

    assert_eq!(edited.display_name, "Cee");
    assert_eq!(edited.roles, vec!["admin".to_owned()]);
    assert_eq!(
        auth.store().users_with_role("admin").await.unwrap(),
        vec![c.id],
        "one admin remains"
    );
    let stored = auth.get_user(&root, c.id).await.unwrap();
    assert_eq!(
        (&stored.display_name, &stored.roles, stored.version),
        (&edited.display_name, &edited.roles, edited.version)
    );
    assert_eq!(stored.version, c.version + 2, "the grant, then the edit");

    // The same interleaving when the edit names the version it saw.
    let seen = stored.version;
    let (reached, resume) = store.pause_next_read(c.id);
    let edit = tokio::spawn({
        let (auth, root, update) = (auth.clone(), root.clone(), rename("Stale"));
        async move { auth.update_user(&root, c.id, update, Some(seen)).await }
    });
    reached.await.unwrap();
    auth.update_user(&root, c.id, rename("Cecilia"), None)
        .await
        .unwrap();
    resume.send(()).unwrap();
    let r = edit.await.unwrap();
    assert!(matches!(r, Err(Error::PreconditionFailed(_))), "{r:?}");
    let now = auth.get_user(&root, c.id).await.unwrap();
    assert_eq!(now.display_name, "Cecilia");
    assert_eq!(now.version, seen + 1);
    // And a delete naming an old version deletes nothing.
    let r = auth.delete_user(&root, b.id, Some(b.version)).await;
    assert!(matches!(r, Err(Error::PreconditionFailed(_))), "{r:?}");
    let b_now = auth.get_user(&root, b.id).await.unwrap();
    auth.delete_user(&root, b.id, Some(b_now.version))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_edit_keeps_the_last_admin_memory() {
    stale_edit_keeps_the_last_admin(Arc::new(MemoryStore::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_edit_keeps_the_last_admin_sqlite() {
    let db = TestSqlite::new().await;
    let store = SqlStore::new(db.database().clone()).await.unwrap();
    stale_edit_keeps_the_last_admin(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_edit_keeps_the_last_admin_postgres() {
    let Some(db) = TestPostgres::new().await else {
        return;
    };
    let store = SqlStore::new(db.database().clone()).await.unwrap();
    stale_edit_keeps_the_last_admin(Arc::new(store)).await;
}

/// Nine concurrent edits of one user, each naming other fields (eight role
/// grants and a rename), without `If-Match`: every one is made, none lost.
async fn concurrent_edits_are_all_kept(inner: Arc<dyn AuthStore>) {
    let auth = AuthService::builder(fast_config(), inner, Arc::new(MemoryStore::default()))
        .build()
        .await
        .unwrap();
    let root = system();
    let target = user(&auth, "t@example.com", &[]).await;
    let roles: Vec<String> = (0..8).map(|i| format!("r{i}")).collect();
    for name in &roles {
        auth.put_role(
            &root,
            RoleInput {
                name: name.clone(),
                description: String::new(),
                permissions: vec!["tracking:task:read".into()],
            },
        )
        .await
        .unwrap();
    }
    let start = Arc::new(tokio::sync::Barrier::new(roles.len() + 1));
    let mut tasks = Vec::new();
    for name in roles.iter().cloned().map(Some).chain([None]) {
        let (auth, root, start) = (auth.clone(), root.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            match name {
                Some(role) => auth.assign_role(&root, target.id, &role).await,
                None => {
                    let rename = UserUpdate {
                        display_name: Some("Tee".into()),
                        ..UserUpdate::default()
                    };
                    auth.update_user(&root, target.id, rename, None).await
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let now = auth.get_user(&root, target.id).await.unwrap();
    let mut held = now.roles.clone();
    held.sort();
    assert_eq!(held, roles);
    assert_eq!(now.display_name, "Tee");
    assert_eq!(now.version, target.version + 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_edits_are_all_kept_memory() {
    concurrent_edits_are_all_kept(Arc::new(MemoryStore::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_edits_are_all_kept_sqlite() {
    let db = TestSqlite::new().await;
    let store = SqlStore::new(db.database().clone()).await.unwrap();
    concurrent_edits_are_all_kept(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_edits_are_all_kept_postgres() {
    let Some(db) = TestPostgres::new().await else {
        return;
    };
    let store = SqlStore::new(db.database().clone()).await.unwrap();
    concurrent_edits_are_all_kept(Arc::new(store)).await;
}

/// Keeps every mail's recipient and token.
#[derive(Debug, Default)]
struct AddressedMailer(Mutex<Vec<(String, String)>>);

impl AddressedMailer {
    /// The token of the last mail, which must have gone to `to`.
    fn last_to(&self, to: &str) -> String {
        let (address, token) = self.0.lock().unwrap().pop().unwrap();
        assert_eq!(address, to);
        token
    }
}

#[async_trait]
impl Mailer for AddressedMailer {
    async fn send(&self, to: &str, _subject: &str, body: &str) -> Result<(), Error> {
        let token = body.rsplit(' ').next().unwrap().to_owned();
        self.0.lock().unwrap().push((to.to_owned(), token));
        Ok(())
    }
}

/// A verified user's email changes: they are unverified, tokens mailed to
/// the old address (verification and reset) do nothing, the change is
/// audited, and the token mailed to the new address (automatically, or on
/// request) verifies it. Setting the same address again changes nothing.
async fn email_change_unverifies_and_unbinds_tokens(inner: Arc<dyn AuthStore>) {
    let mailer = Arc::new(AddressedMailer::default());
    let auth = AuthService::builder(
        fast_config(),
        inner.clone(),
        Arc::new(MemoryStore::default()),
    )
    .mailer(mailer.clone())
    .build()
    .await
    .unwrap();
    let root = system();
    let ada = user(&auth, "ada@example.com", &[]).await;
    let me = Principal::new(ada.id.to_string(), PrincipalKind::User);
    auth.request_email_verification(&me).await.unwrap();
    let first = mailer.last_to("ada@example.com");
    auth.confirm_email_verification(&first).await.unwrap();
    assert!(auth.get_user(&root, ada.id).await.unwrap().email_verified);
    // Outstanding when the address changes.
    auth.request_email_verification(&me).await.unwrap();
    let old_verify = mailer.last_to("ada@example.com");
    auth.request_password_reset("ada@example.com", &meta())
        .await
        .unwrap();
    let old_reset = mailer.last_to("ada@example.com");

    let same = UserUpdate {
        email: Some(" ADA@example.com".into()),
        ..UserUpdate::default()
    };
    let kept = auth.update_user(&root, ada.id, same, None).await.unwrap();
    assert!(
        kept.email_verified,
        "the same address, normalised, is no change"
    );
    assert!(mailer.0.lock().unwrap().is_empty(), "and mails nothing");

    let change = UserUpdate {
        email: Some("Ada@New.example".into()),
        ..UserUpdate::default()
    };
    let changed = auth.update_user(&root, ada.id, change, None).await.unwrap();
    assert_eq!(changed.email, "ada@new.example");
    assert!(!changed.email_verified, "a new address is unverified");
    let mailed_on_change = mailer.last_to("ada@new.example");

    let refused = auth.confirm_email_verification(&old_verify).await;
    assert!(matches!(&refused, Err(Error::Validation(_))), "{refused:?}");
    let refused = auth
        .confirm_password_reset(&old_reset, "a password from the old inbox".into(), &meta())
        .await;
    assert!(matches!(&refused, Err(Error::Validation(_))), "{refused:?}");
    auth.login("ada@new.example", "correct horse battery", &meta(), None)
        .await
        .unwrap();
    assert!(!auth.get_user(&root, ada.id).await.unwrap().email_verified);

    let target = AuditFilter {
        target: Some(ada.id.to_string()),
        ..AuditFilter::default()
    };
    let events = inner.list_audit(&target, None, 100).await.unwrap();
    let changes: Vec<_> = events
        .iter()
        .filter(|e| e.action == "email.change")
        .collect();
    assert_eq!(changes.len(), 1, "{events:?}");
    assert_eq!(changes[0].actor.as_deref(), Some("root"));
    assert!(
        events
            .iter()
            .any(|e| e.action == "email.verified" && !e.success)
    );
    assert!(
        events
            .iter()
            .any(|e| e.action == "password.reset" && !e.success)
    );

    // Issued after the change: both the automatic mail and a requested one work.
    auth.request_email_verification(&me).await.unwrap();
    let requested = mailer.last_to("ada@new.example");
    auth.confirm_email_verification(&mailed_on_change)
        .await
        .unwrap();
    assert!(auth.get_user(&root, ada.id).await.unwrap().email_verified);
    auth.confirm_email_verification(&requested).await.unwrap();
    assert!(auth.get_user(&root, ada.id).await.unwrap().email_verified);
}

#[tokio::test]
async fn email_change_unverifies_and_unbinds_tokens_memory() {
    email_change_unverifies_and_unbinds_tokens(Arc::new(MemoryStore::default())).await;
}

#[tokio::test]
async fn email_change_unverifies_and_unbinds_tokens_sqlite() {
    let db = TestSqlite::new().await;
    let store = SqlStore::new(db.database().clone()).await.unwrap();
    email_change_unverifies_and_unbinds_tokens(Arc::new(store)).await;
}

#[tokio::test]
async fn email_change_unverifies_and_unbinds_tokens_postgres() {
    let Some(db) = TestPostgres::new().await else {
        return;
    };
    let store = SqlStore::new(db.database().clone()).await.unwrap();
    email_change_unverifies_and_unbinds_tokens(Arc::new(store)).await;
}

/// Flagging a password change (what `jadugar user create` does after
/// generating a password) reads the user; a rename lands before it writes.
/// The flag is set on top of the rename: nothing fails Stale, nothing is lost.
async fn password_change_flag_keeps_a_concurrent_edit(inner: Arc<dyn AuthStore>) {
    let store = Arc::new(PausingStore {
        inner,
        pause: Mutex::new(None),
    });
    let auth = AuthService::builder(
        fast_config(),
        store.clone(),
        Arc::new(MemoryStore::default()),
    )
    .build()
    .await
    .unwrap();
    let root = system();
    let ada = user(&auth, "ada@example.com", &[]).await;

    let (reached, resume) = store.pause_next_read(ada.id);
    let flag = tokio::spawn({
        let auth = auth.clone();
        async move { auth.require_password_change(None, ada.id).await }
    });
    reached.await.unwrap();
    let rename = UserUpdate {
        display_name: Some("Countess".into()),
        ..UserUpdate::default()
    };
    auth.update_user(&root, ada.id, rename, None).await.unwrap();
    resume.send(()).unwrap();
    let flagged = flag.await.unwrap().unwrap();

    assert!(flagged.must_change_password);
    assert_eq!(flagged.display_name, "Countess");
    let stored = auth.get_user(&root, ada.id).await.unwrap();
    assert!(stored.must_change_password);
    assert_eq!(stored.display_name, "Countess");
    assert_eq!(stored.version, ada.version + 2, "the rename, then the flag");

    let reader =
        Principal::new("reader", PrincipalKind::User).with_permissions(["auth:users:read"]);
    let r = auth.require_password_change(Some(&reader), ada.id).await;
    assert!(matches!(r, Err(Error::Forbidden(_))), "{r:?}");
    let again = auth
        .require_password_change(Some(&root), ada.id)
        .await
        .unwrap();
    assert_eq!(again.version, stored.version, "already flagged: no write");
    let r = auth.require_password_change(None, UserId::new()).await;
    assert!(matches!(r, Err(Error::NotFound(_))), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_change_flag_keeps_a_concurrent_edit_memory() {
    password_change_flag_keeps_a_concurrent_edit(Arc::new(MemoryStore::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_change_flag_keeps_a_concurrent_edit_sqlite() {
    let db = TestSqlite::new().await;
    let store = SqlStore::new(db.database().clone()).await.unwrap();
    password_change_flag_keeps_a_concurrent_edit(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_change_flag_keeps_a_concurrent_edit_postgres() {
    let Some(db) = TestPostgres::new().await else {
        return;
    };
    let store = SqlStore::new(db.database().clone()).await.unwrap();
    password_change_flag_keeps_a_concurrent_edit(Arc::new(store)).await;
}

/// A verification token is redeemed while an email change lands between
/// the confirmation's read of the user and its write: the write is stale,
/// the retry sees the new address, and the token (mailed to the old one)
/// verifies nothing.
async fn email_change_racing_a_verification_wins(inner: Arc<dyn AuthStore>) {
    let store = Arc::new(PausingStore {
        inner,
        pause: Mutex::new(None),
    });
    let mailer = Arc::new(AddressedMailer::default());
    let auth = AuthService::builder(
        fast_config(),
        store.clone(),
        Arc::new(MemoryStore::default()),
    )
    .mailer(mailer.clone())
    .build()
    .await
    .unwrap();
    let root = system();
    let ada = user(&auth, "ada@example.com", &[]).await;
    let me = Principal::new(ada.id.to_string(), PrincipalKind::User);
    auth.request_email_verification(&me).await.unwrap();
    let old = mailer.last_to("ada@example.com");

    let (reached, resume) = store.pause_next_read(ada.id);
    let confirm = tokio::spawn({
        let auth = auth.clone();
        async move { auth.confirm_email_verification(&old).await }
    });
    reached.await.unwrap(); // holds the user with the old address
    let change = UserUpdate {
        email: Some("ada@new.example".into()),
        ..UserUpdate::default()
    };
    auth.update_user(&root, ada.id, change, None).await.unwrap();
    resume.send(()).unwrap();
    let r = confirm.await.unwrap();
    assert!(matches!(&r, Err(Error::Validation(_))), "{r:?}");
    let now = auth.get_user(&root, ada.id).await.unwrap();
    assert_eq!(now.email, "ada@new.example");
    assert!(!now.email_verified);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_change_racing_a_verification_wins_memory() {
    email_change_racing_a_verification_wins(Arc::new(MemoryStore::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_change_racing_a_verification_wins_sqlite() {
    let db = TestSqlite::new().await;
    let store = SqlStore::new(db.database().clone()).await.unwrap();
    email_change_racing_a_verification_wins(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_change_racing_a_verification_wins_postgres() {
    let Some(db) = TestPostgres::new().await else {
        return;
    };
    let store = SqlStore::new(db.database().clone()).await.unwrap();
    email_change_racing_a_verification_wins(Arc::new(store)).await;
}
