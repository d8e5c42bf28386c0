//! JWT signing keys, JWKS, validation and external OIDC issuers.
//!
//! Tokens signed by our own keys are signed and verified here as compact
//! JWS (RFC 7515) against keys parsed once at load time: the algorithm is
//! the key's, never the header's choice, and a verify costs one signature
//! check plus one base64 and JSON pass over each part. Tokens of external
//! OIDC issuers (any algorithm their JWKS names) go through `jsonwebtoken`.

use std::borrow::Cow;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use jadugar_core::Sealer;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::config::ExternalIssuer;
use crate::model::SigningKeyRecord;

/// The longest token we look at; longer ones are refused before any decoding.
pub(crate) const MAX_TOKEN_LEN: usize = 16 * 1024;

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

/// The claims of one of our tokens after validation.
#[derive(Debug)]
pub(crate) struct VerifiedClaims {
    /// Subject (user id).
    pub(crate) sub: String,
    /// Expiry.
    pub(crate) exp: i64,
    /// Issued at.
    pub(crate) iat: i64,
    /// Not before.
    pub(crate) nbf: i64,
    /// Session id.
    pub(crate) sid: Option<String>,
    /// Roles.
    pub(crate) roles: Vec<String>,
    /// Effective permissions.
    pub(crate) perms: Vec<String>,
}

/// The payload as parsed: `iss` and `aud` borrowed, since they are only
/// compared. Every time claim must be a JSON integer (a string or a float
/// is a parse error); a duplicated member is a parse error too.
#[derive(Debug, Deserialize)]
struct RawClaims<'a> {
    #[serde(borrow)]
    iss: Cow<'a, str>,
    #[serde(borrow)]
    aud: Audience<'a>,
    sub: String,
    exp: i64,
    iat: i64,
    nbf: i64,
    #[serde(default)]
    sid: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    perms: Vec<String>,
}

/// Parses a verified payload and checks `iss` and `aud`.
fn read_claims(payload: &[u8], issuer: &str, audience: &str) -> Result<VerifiedClaims, Error> {
    let raw: RawClaims<'_> =
        serde_json::from_slice(payload).map_err(|_| Error::Unauthenticated("invalid claims"))?;
    if raw.iss != issuer {
        return Err(Error::Unauthenticated("wrong issuer"));
    }
    if !raw.aud.contains(audience) {
        return Err(Error::Unauthenticated("wrong audience"));
    }
    Ok(VerifiedClaims {
        sub: raw.sub,
        exp: raw.exp,
        iat: raw.iat,
        nbf: raw.nbf,
        sid: raw.sid,
        roles: raw.roles,
        perms: raw.perms,
    })
}

/// `aud`: one string or a list of strings (RFC 7519 §4.1.3).
#[derive(Debug)]
enum Audience<'a> {
    One(Cow<'a, str>),
    Many(Vec<Cow<'a, str>>),
}

impl Audience<'_> {
    fn contains(&self, audience: &str) -> bool {
        match self {
            Audience::One(a) => a == audience,
            Audience::Many(list) => list.iter().any(|a| a == audience),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Audience<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Audience<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Audience::One(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Audience::One(Cow::Owned(v.to_owned())))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                /// Borrows a list element when it has no escapes.
                #[derive(Deserialize)]
                struct Item<'a>(#[serde(borrow)] Cow<'a, str>);
                let mut list = Vec::new();
                while let Some(Item(a)) = seq.next_element()? {
                    list.push(a);
                }
                Ok(Audience::Many(list))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
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

/// The signature algorithms our own keys use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alg {
    /// Ed25519 (RFC 8037).
    EdDSA,
    /// ECDSA over P-256 with SHA-256.
    ES256,
}

impl Alg {
    /// The JOSE name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Alg::EdDSA => "EdDSA",
            Alg::ES256 => "ES256",
        }
    }
}

/// The parsed key pair of a signing key: verifying keys keep their
/// decompressed points, so a verify does not parse the key again.
enum KeyPair {
    Ed25519 {
        signing: Box<ed25519_dalek::SigningKey>,
        verifying: ed25519_dalek::VerifyingKey,
    },
    Es256 {
        signing: Box<p256::ecdsa::SigningKey>,
        verifying: p256::ecdsa::VerifyingKey,
    },
}

/// A loaded signing key.
pub(crate) struct SigningKey {
    pub(crate) kid: String,
    pub(crate) alg: Alg,
    pair: KeyPair,
    /// The base64url JOSE header every token of this key carries.
    header: String,
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
pub(crate) fn parse_alg(name: &str) -> Result<Alg, Error> {
    match name {
        "EdDSA" => Ok(Alg::EdDSA),
        "ES256" => Ok(Alg::ES256),
        _ => Err(Error::field("jwt_algorithm", "must be EdDSA or ES256")),
    }
}

/// Generates a new key record, its private key sealed under `sealer`.
pub(crate) fn generate_key(
    alg: Alg,
    sealer: &Sealer,
    now: DateTime<Utc>,
) -> Result<SigningKeyRecord, Error> {
    let der = match alg {
        Alg::EdDSA => {
            use ed25519_dalek::pkcs8::EncodePrivateKey;
            let key = ed25519_dalek::SigningKey::generate(&mut OsRng);
            key.to_pkcs8_der()
                .map_err(|e| Error::Key(e.to_string()))?
                .as_bytes()
                .to_vec()
        }
        Alg::ES256 => {
            use p256::pkcs8::EncodePrivateKey;
            let key = p256::SecretKey::random(&mut OsRng);
            key.to_pkcs8_der()
                .map_err(|e| Error::Key(e.to_string()))?
                .as_bytes()
                .to_vec()
        }
    };
    let kid = hex::encode(rand::random::<[u8; 8]>());
    Ok(SigningKeyRecord {
        sealed_private: sealer.seal(&der, kid.as_bytes()),
        kid,
        alg: alg.name().to_owned(),
        created_at: now,
        retired_at: None,
    })
}

/// Opens a stored key.
pub(crate) fn load_key(record: &SigningKeyRecord, sealer: &Sealer) -> Result<SigningKey, Error> {
    let alg = parse_alg(&record.alg).map_err(|_| Error::Key(format!("bad alg {}", record.alg)))?;
    let der = sealer
        .open(&record.sealed_private, record.kid.as_bytes())
        .map_err(|e| Error::Key(e.to_string()))?;
    let (pair, jwk) = match alg {
        Alg::EdDSA => {
            use ed25519_dalek::pkcs8::DecodePrivateKey;
            let key = ed25519_dalek::SigningKey::from_pkcs8_der(&der)
                .map_err(|e| Error::Key(e.to_string()))?;
            let verifying = key.verifying_key();
            let x = URL_SAFE_NO_PAD.encode(verifying.to_bytes());
            let jwk = serde_json::json!({
                "kty": "OKP", "crv": "Ed25519", "x": x, "kid": record.kid,
                "alg": "EdDSA", "use": "sig",
            });
            let pair = KeyPair::Ed25519 {
                signing: Box::new(key),
                verifying,
            };
            (pair, jwk)
        }
        Alg::ES256 => {
            use p256::pkcs8::DecodePrivateKey;
            let key = p256::ecdsa::SigningKey::from_pkcs8_der(&der)
                .map_err(|e| Error::Key(e.to_string()))?;
            let verifying = *key.verifying_key();
            let point = verifying.to_encoded_point(false);
            let (Some(x), Some(y)) = (point.x(), point.y()) else {
                return Err(Error::Key("bad P-256 point".into()));
            };
            let jwk = serde_json::json!({
                "kty": "EC", "crv": "P-256", "x": URL_SAFE_NO_PAD.encode(x),
                "y": URL_SAFE_NO_PAD.encode(y), "kid": record.kid, "alg": "ES256", "use": "sig",
            });
            let pair = KeyPair::Es256 {
                signing: Box::new(key),
                verifying,
            };
            (pair, jwk)
        }
    };
    let header = serde_json::json!({ "typ": "JWT", "alg": alg.name(), "kid": record.kid });
    Ok(SigningKey {
        kid: record.kid.clone(),
        alg,
        pair,
        header: URL_SAFE_NO_PAD.encode(header.to_string()),
        jwk,
        created_at: record.created_at,
        retired_at: record.retired_at,
    })
}

/// The part of a JOSE header read before the key is known. Nothing in it
/// is trusted: `kid` only selects a key, whose own algorithm then rules.
#[derive(Debug, Deserialize)]
pub(crate) struct JwsHeader<'a> {
    #[serde(borrow)]
    alg: Cow<'a, str>,
    /// The key id.
    #[serde(default, borrow)]
    pub(crate) kid: Option<Cow<'a, str>>,
    /// Critical extensions: we implement none, so any is a reason to refuse
    /// (RFC 7515 §4.1.11).
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
}

/// A compact JWS split into its parts, header decoded, nothing verified.
#[derive(Debug)]
pub(crate) struct Compact<'t> {
    /// `header.payload`, the signing input.
    signed: &'t str,
    payload: &'t str,
    signature: &'t str,
    header_json: Vec<u8>,
}

impl<'t> Compact<'t> {
    /// Splits `token` into exactly three non-empty base64url parts and
    /// decodes the header bytes.
    pub(crate) fn parse(token: &'t str) -> Result<Self, Error> {
        const MALFORMED: Error = Error::Unauthenticated("malformed token");
        if token.len() > MAX_TOKEN_LEN {
            return Err(MALFORMED);
        }
        let (signed, signature) = token.rsplit_once('.').ok_or(MALFORMED)?;
        let (header, payload) = signed.split_once('.').ok_or(MALFORMED)?;
        if header.is_empty() || payload.is_empty() || signature.is_empty() {
            return Err(MALFORMED);
        }
        // A fourth part (JWE has five) leaves a '.' inside the payload;
        // base64url has no '.', so decoding refuses it below.
        let header_json = URL_SAFE_NO_PAD.decode(header).map_err(|_| MALFORMED)?;
        Ok(Self {
            signed,
            payload,
            signature,
            header_json,
        })
    }

    /// The decoded JOSE header.
    pub(crate) fn header(&self) -> Result<JwsHeader<'_>, Error> {
        let header: JwsHeader<'_> = serde_json::from_slice(&self.header_json)
            .map_err(|_| Error::Unauthenticated("malformed token"))?;
        if header.crit.is_some() {
            return Err(Error::Unauthenticated("unsupported critical header"));
        }
        Ok(header)
    }
}

impl SigningKey {
    /// Verifies `jws` (whose header is `header`) with this key and reads its
    /// claims, checking `iss` and `aud`. Time claims are the caller's.
    pub(crate) fn verify(
        &self,
        jws: &Compact<'_>,
        header: &JwsHeader<'_>,
        issuer: &str,
        audience: &str,
    ) -> Result<VerifiedClaims, Error> {
        const INVALID: Error = Error::Unauthenticated("invalid token");
        // The key decides the algorithm: `none`, HS*, or the other curve
        // under our kid are refused before any cryptography.
        if header.alg != self.alg.name() {
            return Err(Error::Unauthenticated("algorithm not allowed for this key"));
        }
        // Both algorithms sign with 64 bytes: 86 base64url characters.
        let mut signature = [0u8; 64];
        if jws.signature.len() != 86
            || !matches!(
                URL_SAFE_NO_PAD.decode_slice(jws.signature, &mut signature),
                Ok(64)
            )
        {
            return Err(INVALID);
        }
        let ok = match &self.pair {
            KeyPair::Ed25519 { verifying, .. } => verifying
                .verify_strict(
                    jws.signed.as_bytes(),
                    &ed25519_dalek::Signature::from_bytes(&signature),
                )
                .is_ok(),
            KeyPair::Es256 { verifying, .. } => {
                use p256::ecdsa::signature::Verifier;
                p256::ecdsa::Signature::from_slice(&signature)
                    .is_ok_and(|s| verifying.verify(jws.signed.as_bytes(), &s).is_ok())
            }
        };
        if !ok {
            return Err(INVALID);
        }
        let payload = URL_SAFE_NO_PAD.decode(jws.payload).map_err(|_| INVALID)?;
        read_claims(&payload, issuer, audience)
    }
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

/// Signs `claims` with `key` as a compact JWS carrying the key's `alg` and `kid`.
pub(crate) fn sign<C: Serialize>(key: &SigningKey, claims: &C) -> Result<String, Error> {
    let payload = serde_json::to_vec(claims).map_err(|e| Error::Key(e.to_string()))?;
    let mut token = String::with_capacity(key.header.len() + payload.len() * 4 / 3 + 90);
    token.push_str(&key.header);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
    let signature: [u8; 64] = match &key.pair {
        KeyPair::Ed25519 { signing, .. } => {
            use ed25519_dalek::Signer;
            signing.sign(token.as_bytes()).to_bytes()
        }
        KeyPair::Es256 { signing, .. } => {
            use p256::ecdsa::signature::Signer;
            let s: p256::ecdsa::Signature = signing.sign(token.as_bytes());
            s.to_bytes().into()
        }
    };
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut token);
    Ok(token)
}

/// Checks the time claims against `now` with `leeway` seconds.
pub(crate) fn check_times(t: &TimeClaims, now: i64, leeway: i64) -> Result<(), Error> {
    // Saturating: the claims are numbers a peer chose.
    if t.exp.saturating_add(leeway) <= now {
        return Err(Error::Unauthenticated("token expired"));
    }
    if t.nbf.is_some_and(|nbf| nbf.saturating_sub(leeway) > now) {
        return Err(Error::Unauthenticated("token not yet valid"));
    }
    if t.iat.is_some_and(|iat| iat.saturating_sub(leeway) > now) {
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
    if payload.len() > MAX_TOKEN_LEN {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice::<Iss>(&bytes).ok().map(|i| i.iss)
}

/// A validation of an external issuer's token pinned to `alg` (from the
/// issuer's JWK, not the token), requiring `exp`, `sub`, `iss` and `aud`.
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use jadugar_core::MasterKey;
    use serde_json::json;

    use super::*;

    const ISS: &str = "https://issuer.example";
    const AUD: &str = "jadugar";

    fn key(alg: Alg) -> SigningKey {
        let sealer = Sealer::new(MasterKey::generate("test"), []);
        let record = generate_key(alg, &sealer, Utc::now()).unwrap();
        load_key(&record, &sealer).unwrap()
    }

    fn claims() -> serde_json::Value {
        json!({"iss": ISS, "aud": AUD, "sub": "u1", "exp": 2_000_000_000i64, "iat": 1, "nbf": 1,
            "jti": "j", "sid": null, "roles": ["admin"], "perms": ["*"]})
    }

    fn check(key: &SigningKey, token: &str) -> Result<VerifiedClaims, Error> {
        let jws = Compact::parse(token)?;
        let header = jws.header()?;
        key.verify(&jws, &header, ISS, AUD)
    }

    /// A token with any header, carrying a valid signature of `key`: only
    /// the header's content can make it fail.
    fn signed_with_header(key: &SigningKey, header: &serde_json::Value) -> String {
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims().to_string())
        );
        let signature: [u8; 64] = match &key.pair {
            KeyPair::Ed25519 { signing, .. } => {
                ed25519_dalek::Signer::sign(&**signing, signed.as_bytes()).to_bytes()
            }
            KeyPair::Es256 { signing, .. } => {
                let s: p256::ecdsa::Signature =
                    p256::ecdsa::signature::Signer::sign(&**signing, signed.as_bytes());
                s.to_bytes().into()
            }
        };
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    #[test]
    fn round_trip_both_algorithms() {
        for alg in [Alg::EdDSA, Alg::ES256] {
            let key = key(alg);
            let token = sign(&key, &claims()).unwrap();
            let c = check(&key, &token).unwrap();
            assert_eq!(
                (c.sub.as_str(), c.exp, c.roles.len()),
                ("u1", 2_000_000_000, 1)
            );
            // A token of one key does not verify under another of the same kind.
            assert!(check(&self::key(alg), &token).is_err());
        }
    }

    #[test]
    fn a_standard_library_verifies_our_tokens_from_the_jwk() {
        for (alg, name) in [
            (Alg::EdDSA, Algorithm::EdDSA),
            (Alg::ES256, Algorithm::ES256),
        ] {
            let key = key(alg);
            let token = sign(&key, &claims()).unwrap();
            let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.jwk.clone()).unwrap();
            let decoding = DecodingKey::from_jwk(&jwk).unwrap();
            let header = jsonwebtoken::decode_header(&token).unwrap();
            assert_eq!(header.kid.as_deref(), Some(key.kid.as_str()));
            let data = jsonwebtoken::decode::<serde_json::Value>(
                &token,
                &decoding,
                &validation(name, ISS, AUD),
            )
            .unwrap();
            assert_eq!(data.claims["sub"], "u1");
        }
    }

    #[test]
    fn the_key_pins_the_algorithm() {
        for (alg, other) in [(Alg::EdDSA, "ES256"), (Alg::ES256, "EdDSA")] {
            let key = key(alg);
            let kid = key.kid.clone();
            // Control: the same construction with the key's own alg passes.
            let own = signed_with_header(&key, &json!({"alg": alg.name(), "kid": kid}));
            check(&key, &own).unwrap();
            for bad in [other, "none", "HS256", "RS256", "eddsa", ""] {
                let token = signed_with_header(&key, &json!({"alg": bad, "kid": kid}));
                let e = check(&key, &token).unwrap_err();
                assert!(
                    matches!(
                        e,
                        Error::Unauthenticated("algorithm not allowed for this key")
                    ),
                    "{bad}: {e:?}"
                );
            }
            let no_alg = signed_with_header(&key, &json!({"kid": kid}));
            assert!(check(&key, &no_alg).is_err());
            let crit = signed_with_header(
                &key,
                &json!({"alg": alg.name(), "kid": kid, "crit": ["b64"]}),
            );
            assert!(check(&key, &crit).is_err());
        }
    }

    #[test]
    fn malformed_compact_forms_are_refused() {
        let key = key(Alg::EdDSA);
        let token = sign(&key, &claims()).unwrap();
        let (signed, signature) = token.rsplit_once('.').unwrap();
        let (header, payload) = signed.split_once('.').unwrap();
        let modified = URL_SAFE_NO_PAD.encode(claims().to_string().replace("\"u1\"", "\"u2\""));
        let mut flipped = URL_SAFE_NO_PAD.decode(signature).unwrap();
        flipped[10] ^= 1;
        let flipped = URL_SAFE_NO_PAD.encode(flipped);
        let cases = [
            format!("{token}x"),
            format!("{token}."),
            format!("{token}.x"),
            format!("{token}="),
            format!("{header}.{payload}.{signature}.{signature}"),
            format!("{header}.{payload}"),
            format!("{header}.{payload}."),
            format!("{header}..{signature}"),
            format!(".{payload}.{signature}"),
            format!("{header}=.{payload}.{signature}"),
            format!("{header}.{payload}=.{signature}"),
            format!("{header}.{payload}.{signature}=="),
            format!("{header}.{payload}!.{signature}"),
            format!("{header}.{modified}.{signature}"),
            format!("{header}.{payload}.{flipped}"),
            format!("{header}.{payload}.{}", &signature[..85]),
            format!("{header}.{payload}.{signature}AA"),
            format!("{} {header}.{payload}.{signature}", ""),
            "A".repeat(MAX_TOKEN_LEN + 1),
        ];
        for bad in &cases {
            assert!(check(&key, bad).is_err(), "accepted {bad}");
        }
        check(&key, &token).unwrap();
    }

    #[test]
    fn claims_are_typed_and_checked() {
        let key = key(Alg::EdDSA);
        let with = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut c = claims();
            f(&mut c);
            sign(&key, &c).unwrap()
        };
        check(&key, &with(&|c| c["aud"] = json!(["other", AUD]))).unwrap();
        let refused = [
            with(&|c| c["aud"] = json!(["other"])),
            with(&|c| c["aud"] = json!("other")),
            with(&|c| c["aud"] = json!(7)),
            with(&|c| c["iss"] = json!("https://evil.example")),
            with(&|c| c["exp"] = json!(2.0e9)),
            with(&|c| c["exp"] = json!("2000000000")),
            with(&|c| c["nbf"] = json!(null)),
            with(&|c| c["iat"] = json!("1")),
            with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            with(&|c| {
                c.as_object_mut().unwrap().remove("sub");
            }),
        ];
        for token in &refused {
            assert!(check(&key, token).is_err(), "accepted {token}");
        }
        // A duplicated claim is ambiguous: refused, not first- or last-wins.
        let dup = format!(
            "{{\"iss\":\"{ISS}\",\"aud\":\"{AUD}\",\"sub\":\"u1\",\"exp\":1,\"exp\":2000000000,\"iat\":1,\"nbf\":1}}"
        );
        let signed = format!("{}.{}", key.header, URL_SAFE_NO_PAD.encode(&dup));
        let KeyPair::Ed25519 { signing, .. } = &key.pair else {
            unreachable!()
        };
        let s = ed25519_dalek::Signer::sign(&**signing, signed.as_bytes());
        let token = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(s.to_bytes()));
        assert!(check(&key, &token).is_err());
    }

    #[test]
    fn extreme_times_do_not_overflow() {
        let t = TimeClaims {
            exp: i64::MAX,
            nbf: Some(i64::MIN),
            iat: Some(i64::MIN),
            sub: String::new(),
        };
        assert!(check_times(&t, 0, 30).is_ok());
        let t = TimeClaims {
            exp: i64::MIN,
            nbf: Some(i64::MAX),
            iat: None,
            sub: String::new(),
        };
        assert!(check_times(&t, 0, 30).is_err());
    }
}
