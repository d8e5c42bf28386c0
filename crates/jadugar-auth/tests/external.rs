//! Tokens of an external OIDC issuer, verified against its JWKS.
#![cfg(feature = "test-support")]
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use jadugar_auth::{AuthService, Config, Error, ExternalIssuer};
use serde_json::json;

#[tokio::test]
async fn external_issuer_tokens_with_rate_limited_jwks_refresh() {
    let idp = AuthService::memory(Config {
        issuer: "http://idp.test".into(),
        audience: "idp-aud".into(),
        argon2_memory_kib: 1024,
        argon2_iterations: 1,
        ..Config::default()
    })
    .await
    .unwrap();
    let fetches = Arc::new(AtomicUsize::new(0));
    let served = idp.clone();
    let counter = fetches.clone();
    let jwks = Router::new().route(
        "/jwks",
        get(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            let doc = served.jwks();
            async move { axum::Json(doc) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, jwks).await.unwrap() });

    let auth = AuthService::memory(Config {
        external_issuers: vec![ExternalIssuer {
            issuer: "http://idp.test".into(),
            jwks_url: Some(format!("http://{addr}/jwks")),
            audience: "idp-aud".into(),
            roles: vec!["sso".into()],
            permissions: vec!["reports:read".into()],
            jwks_ttl_secs: 3600,
            min_refetch_secs: 1,
        }],
        argon2_memory_kib: 1024,
        argon2_iterations: 1,
        ..Config::default()
    })
    .await
    .unwrap();

    let now = chrono::Utc::now().timestamp();
    let claims = |aud: &str, jti: &str| json!({"iss": "http://idp.test", "aud": aud, "sub": "alice", "exp": now + 300, "iat": now, "jti": jti});
    let token = idp.sign_claims_for_tests(&claims("idp-aud", "1")).unwrap();
    let p = auth.validate_token(&token).await.unwrap();
    assert_eq!(&*p.subject, "http://idp.test|alice");
    assert!(p.can("reports:read") && !p.can("reports:write"));
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
    let wrong_aud = idp.sign_claims_for_tests(&claims("other", "2")).unwrap();
    assert!(matches!(
        auth.validate_token(&wrong_aud).await,
        Err(Error::Unauthenticated(_))
    ));

    // The issuer rotates: the new kid is unknown; refetches are rate limited.
    idp.rotate_signing_key().await.unwrap();
    let rotated = idp.sign_claims_for_tests(&claims("idp-aud", "3")).unwrap();
    for _ in 0..5 {
        assert!(auth.validate_token(&rotated).await.is_err());
    }
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        1,
        "no refetch within min_refetch_secs"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(auth.validate_token(&rotated).await.is_ok());
    assert_eq!(fetches.load(Ordering::SeqCst), 2);
}
