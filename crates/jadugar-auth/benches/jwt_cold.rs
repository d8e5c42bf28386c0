//! Cold EdDSA JWT validation against its peers, interleaved.
//!
//! `cargo bench -p jadugar-auth --bench jwt_cold`
//!
//! Each round times, on the same fresh token: a raw Ed25519 verify of its
//! signing input (ed25519-dalek, key already parsed), a cold
//! `AuthService::validate_token` (never seen, so no cache hit), and
//! jsonwebtoken 9 decoding it (header, then signature and claims). Rounds
//! interleave the three, so a change in machine load hits all of them
//! alike; the ratios of the medians are the figures to read on a shared
//! machine.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jadugar_auth::service::NewUser;
use jadugar_auth::{AuthService, Config};

const ROUNDS: usize = 20_000;

/// Polls a future that completes without waiting (validation of our own
/// token never awaits), so no executor cost is timed.
fn now_or_never<F: Future>(f: F) -> F::Output {
    match pin!(f).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("validation awaited"),
    }
}

fn quantile(v: &mut [Duration], q: f64) -> Duration {
    v.sort_unstable();
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let auth = rt
        .block_on(AuthService::memory(Config {
            token_cache_capacity: (ROUNDS * 2) as u64,
            ..Config::default()
        }))
        .unwrap();
    let user = rt
        .block_on(auth.create_user(
            None,
            NewUser {
                email: "bench@example.com".into(),
                display_name: String::new(),
                password: None,
                roles: vec!["admin".into()],
                must_change_password: false,
            },
        ))
        .unwrap();
    let now = chrono::Utc::now().timestamp();
    let tokens: Vec<String> = (0..ROUNDS)
        .map(|n| {
            let claims = serde_json::json!({"iss": auth.config().issuer, "aud": auth.config().audience,
                "sub": user.id.to_string(), "exp": now + 3600, "iat": now, "nbf": now,
                "jti": n.to_string(), "roles": ["admin"], "perms": ["*"]});
            auth.sign_claims_for_tests(&claims).unwrap()
        })
        .collect();

    let x = auth.jwks()["keys"][0]["x"].as_str().unwrap().to_owned();
    let public: [u8; 32] = URL_SAFE_NO_PAD.decode(&x).unwrap().try_into().unwrap();
    let raw_key = ed25519_dalek::VerifyingKey::from_bytes(&public).unwrap();
    let peer_key = jsonwebtoken::DecodingKey::from_ed_components(&x).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_issuer(&[&auth.config().issuer]);
    validation.set_audience(&[&auth.config().audience]);
    validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);

    let (mut raw, mut ours, mut peer) = (Vec::new(), Vec::new(), Vec::new());
    for (i, token) in tokens.iter().enumerate() {
        let (signed, signature) = token.rsplit_once('.').unwrap();
        let signature: [u8; 64] = URL_SAFE_NO_PAD
            .decode(signature)
            .unwrap()
            .try_into()
            .unwrap();
        let signature = ed25519_dalek::Signature::from_bytes(&signature);
        // Rotate the order so no one of the three always runs first.
        for step in 0..3 {
            match (i + step) % 3 {
                0 => {
                    let t = Instant::now();
                    let ok = raw_key
                        .verify_strict(black_box(signed.as_bytes()), &signature)
                        .is_ok();
                    raw.push(t.elapsed());
                    assert!(ok);
                }
                1 => {
                    let t = Instant::now();
                    let principal = now_or_never(auth.validate_token(black_box(token)));
                    ours.push(t.elapsed());
                    assert!(principal.unwrap().can("anything"));
                }
                _ => {
                    let t = Instant::now();
                    let header = jsonwebtoken::decode_header(black_box(token)).unwrap();
                    let data =
                        jsonwebtoken::decode::<serde_json::Value>(token, &peer_key, &validation);
                    peer.push(t.elapsed());
                    assert!(header.kid.is_some() && data.is_ok());
                }
            }
        }
    }

    println!("{ROUNDS} rounds, each on a fresh token, interleaved:");
    let raw_med = quantile(&mut raw, 0.5);
    for (name, v) in [
        ("raw ed25519-dalek verify_strict", &mut raw),
        ("validate_token, cold", &mut ours),
        ("jsonwebtoken 9 decode (peer)", &mut peer),
    ] {
        let (p10, med, p90) = (quantile(v, 0.1), quantile(v, 0.5), quantile(v, 0.9));
        println!(
            "  {name:<34} p10 {p10:>9.2?}  median {med:>9.2?}  p90 {p90:>9.2?}  median / raw {:.3}",
            med.as_secs_f64() / raw_med.as_secs_f64()
        );
    }
}
