//! JWT signing keys, JWKS, validation and external OIDC issuers.

use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use jadugar_core::Sealer;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::config::ExternalIssuer;
use crate::model::SigningKeyRecord;

/// Claims of the access tokens we issue.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Claims {
    /// Issuer.
    pub(crate) iss: String,
    /// Subject (user id).
    pub(crate) sub: String,
    /// Audience.
    pub(crate) aud: String,
    /// Expiry (seconds since the epoch).
    pub(crate) exp: i64,
    /// Issued at.
    pub(crate) iat: i64,
    /// Not before.
    pub(crate) nbf: i64,
    /// Token id.
    pub(crate) jti: String,
    /// Session id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) sid: Option<String>,
    /// Roles.
    #[serde(default)]
    pub(crate) roles: Vec<String>,
    /// Effective permissions.
    #[serde(default)]
    pub(crate) perms: Vec<String>,
}

/// The time claims every accepted token must carry as numbers.
#[derive(Debug, Deserialize)]
pub(crate) struct TimeClaims {
    pub(crate) exp: i64,
    #[serde(default)]
    pub(crate) nbf: Option<i64>,
    #[serde(default)]
    pub(crate) iat: Option<i64>,
    pub(crate) sub: String,
}

/// A loaded signing key.
pub(crate) struct SigningKey {
    pub(crate) kid: String,
    pub(crate) alg: Algorithm,
    pub(crate) encoding: EncodingKey,
    pub(crate) decoding: DecodingKey,
    pub(crate) validation: Validation,
    pub(crate) jwk: serde_json::Value,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) retired_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// Parses a configured algorithm name.
pub(crate) fn parse_alg(name: &str) -> Result<Algorithm, Error> {
    match name {
        "EdDSA" => Ok(Algorithm::EdDSA),
        "ES256" => Ok(Algorithm::ES256),
        _ => Err(Error::field("jwt_algorithm", "must be EdDSA or ES256")),
    }
}

fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::ES256 => "ES256",
        _ => "EdDSA",
    }
}

/// Generates a new key record, its private key sealed under `sealer`.
pub(crate) fn generate_key(
    alg: Algorithm,
    sealer: &Sealer,
    now: DateTime<Utc>,
) -> Result<SigningKeyRecord, Error> {
    let der = match alg {
        Algorithm::EdDSA => {
            use ed25519_dalek::pkcs8::EncodePrivateKey;
            let key = ed25519_dalek::SigningKey::generate(&mut OsRng);
            key.to_pkcs8_der()
                .map_err(|e| Error::Key(e.to_string()))?
                .as_bytes()
                .to_vec()
        }
        Algorithm::ES256 => {
            use p256::pkcs8::EncodePrivateKey;
            let key = p256::SecretKey::random(&mut OsRng);
            key.to_pkcs8_der()
                .map_err(|e| Error::Key(e.to_string()))?
                .as_bytes()
                .to_vec()
        }
        other => return Err(Error::Key(format!("unsupported algorithm {other:?}"))),
    };
    let kid = hex::encode(rand::random::<[u8; 8]>());
    Ok(SigningKeyRecord {
        sealed_private: sealer.seal(&der, kid.as_bytes()),
        kid,
        alg: alg_name(alg).to_owned(),
        created_at: now,
        retired_at: None,
    })
}

/// Opens a stored key.
pub(crate) fn load_key(
    record: &SigningKeyRecord,
    sealer: &Sealer,
    issuer: &str,
    audience: &str,
) -> Result<SigningKey, Error> {
    let alg = parse_alg(&record.alg).map_err(|_| Error::Key(format!("bad alg {}", record.alg)))?;
    let der = sealer
        .open(&record.sealed_private, record.kid.as_bytes())
        .map_err(|e| Error::Key(e.to_string()))?;
    let (encoding, decoding, jwk) = match alg {
        Algorithm::EdDSA => {
            use ed25519_dalek::pkcs8::DecodePrivateKey;
            let key = ed25519_dalek::SigningKey::from_pkcs8_der(&der)
                .map_err(|e| Error::Key(e.to_string()))?;
            let x = URL_SAFE_NO_PAD.encode(key.verifying_key().to_bytes());
            let decoding =
                DecodingKey::from_ed_components(&x).map_err(|e| Error::Key(e.to_string()))?;
            let jwk = serde_json::json!({
                "kty": "OKP", "crv": "Ed25519", "x": x, "kid": record.kid,
                "alg": "EdDSA", "use": "sig",
            });
            (EncodingKey::from_ed_der(&der), decoding, jwk)
        }
        _ => {
            use p256::elliptic_curve::sec1::ToEncodedPoint;
            use p256::pkcs8::DecodePrivateKey;
            let key =
                p256::SecretKey::from_pkcs8_der(&der).map_err(|e| Error::Key(e.to_string()))?;
            let point = key.public_key().to_encoded_point(false);
            let (Some(x), Some(y)) = (point.x(), point.y()) else {
                return Err(Error::Key("bad P-256 point".into()));
            };
            let x = URL_SAFE_NO_PAD.encode(x);
            let y = URL_SAFE_NO_PAD.encode(y);
            let decoding =
                DecodingKey::from_ec_components(&x, &y).map_err(|e| Error::Key(e.to_string()))?;
            let jwk = serde_json::json!({
                "kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": record.kid,
                "alg": "ES256", "use": "sig",
            });
            (EncodingKey::from_ec_der(&der), decoding, jwk)
        }
    };
    Ok(SigningKey {
        kid: record.kid.clone(),
        alg,
        encoding,
        decoding,
        validation: validation(alg, issuer, audience),
        jwk,
        created_at: record.created_at,
        retired_at: record.retired_at,
    })
}

/// A validation pinned to `alg`, requiring `exp`, `sub`, `iss` and `aud`.
/// Time claims are checked by the caller against its clock.
fn validation(alg: Algorithm, issuer: &str, audience: &str) -> Validation {
    let mut v = Validation::new(alg);
    v.set_issuer(&[issuer]);
    v.set_audience(&[audience]);
    v.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
    v.validate_exp = false;
    v.validate_nbf = false;
    v
}

/// The keys this instance signs and verifies with.
#[derive(Debug, Default)]
pub(crate) struct KeySet {
    pub(crate) keys: Vec<Arc<SigningKey>>,
}

impl KeySet {
    /// The newest unretired key.
    pub(crate) fn current(&self) -> Option<&Arc<SigningKey>> {
        self.keys
            .iter()
            .filter(|k| k.retired_at.is_none())
            .max_by_key(|k| k.created_at)
    }

    /// A key usable for verification at `now`.
    pub(crate) fn find(
        &self,
        kid: &str,
        now: DateTime<Utc>,
        overlap: chrono::Duration,
    ) -> Option<&Arc<SigningKey>> {
        self.keys
            .iter()
            .find(|k| k.kid == kid && k.retired_at.is_none_or(|r| now < r + overlap))
    }

    /// The JWKS document (keys still usable for verification).
    pub(crate) fn jwks(&self, now: DateTime<Utc>, overlap: chrono::Duration) -> serde_json::Value {
        let keys: Vec<&serde_json::Value> = self
            .keys
            .iter()
            .filter(|k| k.retired_at.is_none_or(|r| now < r + overlap))
            .map(|k| &k.jwk)
            .collect();
        serde_json::json!({ "keys": keys })
    }
}

/// Signs `claims` with `key`.
pub(crate) fn sign(key: &SigningKey, claims: &Claims) -> Result<String, Error> {
    let mut header = Header::new(key.alg);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, claims, &key.encoding).map_err(|e| Error::Key(e.to_string()))
}

/// Checks the time claims against `now` with `leeway` seconds.
pub(crate) fn check_times(t: &TimeClaims, now: i64, leeway: i64) -> Result<(), Error> {
    if t.exp + leeway <= now {
        return Err(Error::Unauthenticated("token expired"));
    }
    if t.nbf.is_some_and(|nbf| nbf - leeway > now) {
        return Err(Error::Unauthenticated("token not yet valid"));
    }
    if t.iat.is_some_and(|iat| iat - leeway > now) {
        return Err(Error::Unauthenticated("token issued in the future"));
    }
    Ok(())
}

/// The unverified `iss` and `kid`-less payload peek used only to route a
/// token to the right issuer; nothing from it is trusted.
pub(crate) fn peek_issuer(token: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Iss {
        iss: String,
    }
    let payload = token.split('.').nth(1)?;
    if payload.len() > 16 * 1024 {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice::<Iss>(&bytes).ok().map(|i| i.iss)
}

/// Verifies tokens of one external OIDC issuer against its JWKS.
#[derive(Debug)]
pub(crate) struct ExternalVerifier {
    pub(crate) config: ExternalIssuer,
    client: reqwest::Client,
    jwks: RwLock<Option<(Arc<JwkSet>, Instant)>>,
    last_fetch: Mutex<Option<Instant>>,
    fetch_lock: tokio::sync::Mutex<()>,
}

impl ExternalVerifier {
    pub(crate) fn new(config: ExternalIssuer) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        Self {
            config,
            client,
            jwks: RwLock::new(None),
            last_fetch: Mutex::new(None),
            fetch_lock: tokio::sync::Mutex::new(()),
        }
    }

    fn url(&self) -> String {
        self.config.jwks_url.clone().unwrap_or_else(|| {
            format!(
                "{}/.well-known/jwks.json",
                self.config.issuer.trim_end_matches('/')
            )
        })
    }

    fn cached(&self) -> Option<(Arc<JwkSet>, Instant)> {
        self.jwks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Fetches the JWKS unless one was fetched within `min_refetch_secs`.
    async fn refetch(&self) -> Result<(), Error> {
        let _guard = self.fetch_lock.lock().await;
        {
            let mut last = self
                .last_fetch
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if last.is_some_and(|t| {
                t.elapsed() < Duration::from_secs(self.config.min_refetch_secs.max(1))
            }) {
                return Ok(());
            }
            *last = Some(Instant::now());
        }
        let response = self
            .client
            .get(self.url())
            .send()
            .await
            .map_err(|e| Error::Internal(format!("jwks fetch: {e}")))?;
        let set: JwkSet = response
            .json()
            .await
            .map_err(|e| Error::Internal(format!("jwks parse: {e}")))?;
        *self.jwks.write().unwrap_or_else(PoisonError::into_inner) =
            Some((Arc::new(set), Instant::now()));
        Ok(())
    }

    /// Verifies `token`; returns its subject and expiry.
    pub(crate) async fn verify(
        &self,
        token: &str,
        kid: &str,
        now: i64,
        leeway: i64,
    ) -> Result<(String, i64), Error> {
        let ttl = Duration::from_secs(self.config.jwks_ttl_secs.max(1));
        let fresh = self.cached().filter(|(_, at)| at.elapsed() < ttl);
        let set = match fresh {
            Some((set, _)) if set.find(kid).is_some() => set,
            _ => {
                if let Err(e) = self.refetch().await {
                    tracing::warn!(issuer = %self.config.issuer, error = %e, "external JWKS fetch failed");
                }
                self.cached()
                    .map(|(s, _)| s)
                    .ok_or(Error::Unauthenticated("unknown signing key"))?
            }
        };
        let jwk = set
            .find(kid)
            .ok_or(Error::Unauthenticated("unknown signing key"))?;
        let alg = match &jwk.algorithm {
            AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
            AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P384 => {
                Algorithm::ES384
            }
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            _ => return Err(Error::Unauthenticated("unsupported key type")),
        };
        let key =
            DecodingKey::from_jwk(jwk).map_err(|_| Error::Unauthenticated("bad issuer key"))?;
        let v = validation(alg, &self.config.issuer, &self.config.audience);
        let data = jsonwebtoken::decode::<TimeClaims>(token, &key, &v)
            .map_err(|_| Error::Unauthenticated("invalid token"))?;
        check_times(&data.claims, now, leeway)?;
        Ok((data.claims.sub, data.claims.exp))
    }
}
