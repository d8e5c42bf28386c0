//! Auth hot paths: API key verification on a cache hit, EdDSA JWT
//! validation cold and repeated, the whole AuthLayer on a cached key, and
//! login with the real argon2id parameters.
//!
//! `cargo bench -p jadugar-auth --bench auth`
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use jadugar_auth::layer::AuthLayer;
use jadugar_auth::service::{NewApiKey, NewUser, RequestMeta};
use jadugar_auth::{AuthService, Config};
use jadugar_core::Principal;
use sha2::Digest;
use tower::{Layer, ServiceExt};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn benches(c: &mut Criterion) {
    let rt = runtime();
    let config = Config {
        login_attempts_per_account: 0,
        login_attempts_per_ip: 0,
        api_key_cache_ttl_secs: 3600,
        ..Config::default()
    };
    let auth = rt.block_on(AuthService::memory(config)).unwrap();
    let user = rt
        .block_on(auth.create_user(
            None,
            NewUser {
                email: "bench@example.com".into(),
                display_name: String::new(),
                password: Some("correct horse battery".into()),
                roles: vec!["admin".into()],
                must_change_password: false,
            },
        ))
        .unwrap();
    let key = rt
        .block_on(auth.create_api_key(
            None,
            NewApiKey {
                name: "b".into(),
                scopes: vec![],
                expires_in_secs: None,
                owner: Some(user.id),
            },
        ))
        .unwrap();
    rt.block_on(auth.verify_api_key(&key.secret)).unwrap();

    // Baselines on the same machine and load, to read the figures against.
    let secret = key.secret.rsplit('_').next().unwrap().to_owned();
    let stored: [u8; 32] = sha2::Sha256::digest(secret.as_bytes()).into();
    c.bench_function("baseline_sha256_ct_eq_43B", |b| {
        b.iter(|| {
            let h: [u8; 32] = sha2::Sha256::digest(black_box(secret.as_bytes())).into();
            bool::from(subtle::ConstantTimeEq::ct_eq(&h[..], &stored[..]))
        })
    });
    let signing = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let message = [1u8; 300];
    let signature = ed25519_dalek::Signer::sign(&signing, &message);
    let verifying = signing.verifying_key();
    c.bench_function("baseline_ed25519_verify_raw", |b| {
        b.iter(|| {
            verifying
                .verify_strict(black_box(&message), &signature)
                .is_ok()
        })
    });

    rt.block_on(auth.verify_api_key(&key.secret)).unwrap();
    c.bench_function("api_key_verify_cache_hit", |b| {
        b.iter(|| {
            auth.verify_api_key_cached(black_box(&key.secret))
                .unwrap()
                .unwrap()
        })
    });

    let now = chrono::Utc::now().timestamp();
    let counter = AtomicU64::new(0);
    let claims = |n: u64| {
        serde_json::json!({"iss": auth.config().issuer, "aud": auth.config().audience, "sub": user.id.to_string(),
            "exp": now + 3600, "iat": now, "nbf": now, "jti": n.to_string(), "sid": null,
            "roles": ["admin"], "perms": ["*"]})
    };
    c.bench_function("jwt_eddsa_validate_cold", |b| {
        b.to_async(&rt).iter_batched(
            || {
                auth.sign_claims_for_tests(&claims(counter.fetch_add(1, Ordering::Relaxed)))
                    .unwrap()
            },
            |token| {
                let auth = auth.clone();
                async move { auth.validate_token(&token).await.unwrap() }
            },
            BatchSize::SmallInput,
        )
    });

    let token = auth.sign_claims_for_tests(&claims(u64::MAX)).unwrap();

    // Peer: the same token through jsonwebtoken 9 (ring), header decoded
    // first as a caller must to pick the key by kid — what validation cost
    // before our keys were verified with pre-parsed dalek/p256 keys.
    let x = auth.jwks()["keys"][0]["x"].as_str().unwrap().to_owned();
    let decoding = jsonwebtoken::DecodingKey::from_ed_components(&x).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_issuer(&[&auth.config().issuer]);
    validation.set_audience(&[&auth.config().audience]);
    validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
    c.bench_function("peer_jsonwebtoken9_decode_eddsa", |b| {
        b.iter(|| {
            let header = jsonwebtoken::decode_header(black_box(&token)).unwrap();
            assert!(header.kid.is_some());
            jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &validation).unwrap()
        })
    });

    rt.block_on(auth.validate_token(&token)).unwrap();
    c.bench_function("jwt_validate_repeat_cached", |b| {
        b.iter(|| {
            auth.validate_token_cached(black_box(&token))
                .unwrap()
                .unwrap()
        })
    });

    let svc = AuthLayer::new(auth.clone()).layer(tower::service_fn(
        |req: http::Request<Body>| async move {
            let ok = req.extensions().get::<Principal>().is_some();
            Ok::<_, std::convert::Infallible>(http::Response::new(Body::from(if ok {
                "y"
            } else {
                "n"
            })))
        },
    ));
    c.bench_function("auth_layer_api_key_cache_hit", |b| {
        b.to_async(&rt).iter(|| {
            let req = http::Request::get("/x")
                .header("x-api-key", &key.secret)
                .body(Body::empty())
                .unwrap();
            let svc = svc.clone();
            async move { svc.oneshot(req).await.unwrap() }
        })
    });

    // The same cheap authenticated request while 50 logins hash at once:
    // hashing runs on the bounded blocking pool, not on the async workers.
    let storm = tokio_util::sync::CancellationToken::new();
    for _ in 0..50 {
        let auth = auth.clone();
        let stop = storm.clone();
        rt.spawn(async move {
            while !stop.is_cancelled() {
                let _ = auth
                    .login(
                        "bench@example.com",
                        "correct horse battery",
                        &RequestMeta::default(),
                        None,
                    )
                    .await;
            }
        });
    }
    c.bench_function("auth_layer_api_key_cache_hit_during_50_logins", |b| {
        b.to_async(&rt).iter(|| {
            let req = http::Request::get("/x")
                .header("x-api-key", &key.secret)
                .body(Body::empty())
                .unwrap();
            let svc = svc.clone();
            async move { svc.oneshot(req).await.unwrap() }
        })
    });
    storm.cancel();

    let mut group = c.benchmark_group("login");
    group.sample_size(10);
    group.bench_function("login_argon2id_m19456_t2_p1", |b| {
        b.to_async(&rt).iter(|| {
            let auth = auth.clone();
            async move {
                auth.login(
                    "bench@example.com",
                    "correct horse battery",
                    &RequestMeta::default(),
                    None,
                )
                .await
                .unwrap()
            }
        })
    });
    group.finish();
}

criterion_group!(auth, benches);
criterion_main!(auth);
