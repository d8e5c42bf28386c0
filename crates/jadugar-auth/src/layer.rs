//! Tower layers: [`AuthLayer`] (who is calling), [`require`] (may they),
//! and [`SigningLayer`] / [`Signer`] (HMAC-signed service-to-service calls).
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use axum::{Router, routing::get};
//! use jadugar_auth::{AuthService, Config};
//! use jadugar_auth::layer::{AuthLayer, require};
//!
//! let auth = AuthService::memory(Config::default()).await.unwrap();
//! let app: Router = Router::new()
//!     .route("/reports", get(|| async { "secret reports" }))
//!     .route_layer(require("reports:read"))
//!     .route("/health", get(|| async { "ok" }))
//!     .layer(AuthLayer::new(auth));
//! # let _ = app;
//! # });
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, header};
use jadugar_core::{Principal, PrincipalKind, Problem, SharedClock};
use pin_project_lite::pin_project;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tower::{Layer, Service};

use crate::{AuthService, Config, Error};

/// Names of the browser cookies, by [`Config::cookie_secure`].
#[derive(Debug, Clone, Copy)]
pub struct CookieNames {
    /// The access token (HttpOnly).
    pub session: &'static str,
    /// The refresh token (HttpOnly, sent only to the auth API).
    pub refresh: &'static str,
    /// The CSRF double-submit value (readable by the page's script).
    pub csrf: &'static str,
}

impl CookieNames {
    /// `__Host-` names when secure, plain names for plain-HTTP localhost
    /// (browsers refuse `__Host-` cookies without `Secure`).
    pub fn for_config(config: &Config) -> Self {
        if config.cookie_secure {
            Self {
                session: "__Host-jadugar_session",
                refresh: "__Host-jadugar_refresh",
                csrf: "__Host-jadugar_csrf",
            }
        } else {
            Self {
                session: "jadugar_session",
                refresh: "jadugar_refresh",
                csrf: "jadugar_csrf",
            }
        }
    }
}

/// The header carrying the CSRF token on cookie-authenticated unsafe requests.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// The API-key header, as a constant: a name given as a string is parsed
/// on every lookup.
const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

enum Credential<'a> {
    None,
    Jwt(&'a str),
    ApiKey(&'a str),
    Cookie(&'a str),
}

fn credential<'a>(
    headers: &'a HeaderMap,
    config: &Config,
    names: &CookieNames,
) -> Result<Credential<'a>, Error> {
    let max = config.max_credential_len;
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        if value.len() > max {
            return Err(Error::Unauthenticated("credential too large"));
        }
        let text = value
            .to_str()
            .map_err(|_| Error::Unauthenticated("malformed Authorization header"))?;
        let (scheme, token) = text
            .split_once(' ')
            .ok_or(Error::Unauthenticated("malformed Authorization header"))?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(Error::Unauthenticated("unsupported authorization scheme"));
        }
        let token = token.trim();
        if token.is_empty() {
            return Err(Error::Unauthenticated("empty bearer token"));
        }
        return Ok(if token.starts_with("jdg_") {
            Credential::ApiKey(token)
        } else {
            Credential::Jwt(token)
        });
    }
    if let Some(value) = headers.get(X_API_KEY) {
        if value.len() > max {
            return Err(Error::Unauthenticated("credential too large"));
        }
        let text = value
            .to_str()
            .map_err(|_| Error::Unauthenticated("malformed x-api-key header"))?;
        return Ok(Credential::ApiKey(text.trim()));
    }
    if let Some(token) = cookie(headers, names.session) {
        if token.len() > max {
            return Err(Error::Unauthenticated("credential too large"));
        }
        return Ok(Credential::Cookie(token));
    }
    Ok(Credential::None)
}

fn is_unsafe(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

fn origin_allowed(headers: &HeaderMap, config: &Config) -> bool {
    let source = headers
        .get(header::ORIGIN)
        .or_else(|| headers.get(header::REFERER))
        .and_then(|v| v.to_str().ok());
    let Some(source) = source else {
        // No Origin nor Referer (non-browser client): the token check decides.
        return true;
    };
    let Ok(url) = url::Url::parse(source) else {
        return false;
    };
    let origin = url.origin().ascii_serialization();
    if !config.allowed_origins.is_empty() {
        return config
            .allowed_origins
            .iter()
            .any(|o| o.trim_end_matches('/') == origin);
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let authority = match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        _ => return false,
    };
    host.is_some_and(|h| h.eq_ignore_ascii_case(&authority))
}

/// CSRF defence of a cookie-authenticated unsafe request: the Origin (or
/// Referer) is allowed, and the `x-csrf-token` header equals both the CSRF
/// cookie and the session's token.
fn check_csrf(
    auth: &AuthService,
    headers: &HeaderMap,
    principal: &Principal,
    names: &CookieNames,
) -> Result<(), Error> {
    if !origin_allowed(headers, auth.config()) {
        return Err(Error::Csrf);
    }
    let sent = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or(Error::Csrf)?;
    let cookie_value = cookie(headers, names.csrf).ok_or(Error::Csrf)?;
    let session = principal.session_id.as_deref().ok_or(Error::Csrf)?;
    let expected = auth.csrf_token(session);
    let ok =
        sent.as_bytes().ct_eq(cookie_value.as_bytes()) & sent.as_bytes().ct_eq(expected.as_bytes());
    if bool::from(ok) {
        Ok(())
    } else {
        Err(Error::Csrf)
    }
}

fn problem_response<B: From<Bytes>>(err: Error) -> Response<B> {
    Problem::from(err).to_response()
}

/// Authenticates requests and puts the [`Principal`] into the extensions.
///
/// Accepts `Authorization: Bearer <jwt>`, `Authorization: Bearer jdg_...`,
/// `x-api-key: jdg_...` and the session cookie (with CSRF checks on unsafe
/// methods). Without any credential the request passes anonymously; a bad
/// header credential is answered 401 with `WWW-Authenticate` (never 500).
/// An invalid, expired or revoked session cookie counts as no credential
/// (a browser with a stale cookie can still log in; protected routes
/// answer 401), and an oversized cookie is 401.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    auth: AuthService,
    names: CookieNames,
}

impl AuthLayer {
    /// A layer authenticating with `auth`.
    pub fn new(auth: AuthService) -> Self {
        let names = CookieNames::for_config(auth.config());
        Self { auth, names }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            auth: self.auth.clone(),
            names: self.names,
        }
    }
}

/// The service of [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    auth: AuthService,
    names: CookieNames,
}

impl<S> Auth<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

pin_project! {
    /// The response future of [`Auth`] and [`Require`].
    #[project = FutProj]
    #[allow(missing_docs)]
    pub enum AuthFuture<F, B, E> {
        /// Calling the inner service.
        Inner { #[pin] fut: F },
        /// Authenticating asynchronously first (cache miss).
        Slow { fut: BoxFuture<'static, Result<Response<B>, E>> },
        /// Answered without the inner service.
        Ready { response: Option<Response<B>> },
    }
}

impl<F, B, E> Future for AuthFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            FutProj::Inner { fut } => fut.poll(cx),
            FutProj::Slow { fut } => fut.as_mut().poll(cx),
            FutProj::Ready { response } => match response.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => Poll::Pending,
            },
        }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Auth<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: From<Bytes> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = AuthFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let cred = match credential(req.headers(), self.auth.config(), &self.names) {
            Ok(c) => c,
            Err(e) => {
                return AuthFuture::Ready {
                    response: Some(problem_response(e)),
                };
            }
        };
        // Fast path: no credential, or a cache hit.
        let cached = match cred {
            Credential::None => {
                return AuthFuture::Inner {
                    fut: self.inner.call(req),
                };
            }
            Credential::ApiKey(k) => self.auth.verify_api_key_cached(k),
            Credential::Jwt(t) => self.auth.validate_token_cached(t),
            Credential::Cookie(t) => self.auth.validate_token_cached(t),
        };
        let is_cookie = matches!(cred, Credential::Cookie(_));
        if let Some(result) = cached {
            if is_cookie && result.is_err() {
                // A stale or revoked session cookie: anonymous, so the
                // browser can still reach login; protected routes answer 401.
                return AuthFuture::Inner {
                    fut: self.inner.call(req),
                };
            }
            return match result.and_then(|p| {
                if is_cookie && is_unsafe(req.method()) {
                    check_csrf(&self.auth, req.headers(), &p, &self.names)?;
                }
                Ok(p)
            }) {
                Ok(principal) => {
                    req.extensions_mut().insert(principal);
                    AuthFuture::Inner {
                        fut: self.inner.call(req),
                    }
                }
                Err(e) => AuthFuture::Ready {
                    response: Some(problem_response(e)),
                },
            };
        }
        let (kind, text) = match cred {
            Credential::ApiKey(k) => (0u8, k.to_owned()),
            Credential::Jwt(t) => (1, t.to_owned()),
            Credential::Cookie(t) => (2, t.to_owned()),
            Credential::None => (1, String::new()),
        };
        let auth = self.auth.clone();
        let names = self.names;
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        AuthFuture::Slow {
            fut: Box::pin(async move {
                let result = if kind == 0 {
                    auth.verify_api_key(&text).await
                } else {
                    auth.validate_token(&text).await
                };
                if kind == 2 && result.is_err() {
                    return inner.call(req).await;
                }
                let result = result.and_then(|p| {
                    if kind == 2 && is_unsafe(req.method()) {
                        check_csrf(&auth, req.headers(), &p, &names)?;
                    }
                    Ok(p)
                });
                match result {
                    Ok(principal) => {
                        req.extensions_mut().insert(principal);
                        inner.call(req).await
                    }
                    Err(e) => Ok(problem_response(e)),
                }
            }),
        }
    }
}

/// A layer refusing requests whose [`Principal`] lacks `permission`: 401
/// (with `WWW-Authenticate`) without a principal, 403 without the permission.
///
/// ```
/// let layer = jadugar_auth::layer::require("tracking:task:write");
/// # let _ = layer;
/// ```
pub fn require(permission: impl Into<String>) -> RequireLayer {
    RequireLayer {
        permission: permission.into().into(),
    }
}

/// See [`require`].
#[derive(Debug, Clone)]
pub struct RequireLayer {
    permission: std::sync::Arc<str>,
}

impl<S> Layer<S> for RequireLayer {
    type Service = Require<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Require {
            inner,
            permission: self.permission.clone(),
        }
    }
}

/// The service of [`RequireLayer`].
#[derive(Debug, Clone)]
pub struct Require<S> {
    inner: S,
    permission: std::sync::Arc<str>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Require<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = AuthFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let problem = match req.extensions().get::<Principal>() {
            None => Some(Problem::unauthorized("authentication required")),
            Some(p) if !p.can(&self.permission) => Some(Problem::forbidden(format!(
                "missing permission {}",
                self.permission
            ))),
            Some(_) => None,
        };
        match problem {
            Some(p) => AuthFuture::Ready {
                response: Some(p.to_response()),
            },
            None => AuthFuture::Inner {
                fut: self.inner.call(req),
            },
        }
    }
}

// ------------------------------------------------------------------ signing

type HmacSha256 = Hmac<Sha256>;

/// Header with the signing key id.
pub const SIG_KEY_ID: &str = "x-jadugar-key-id";
/// Header with the unix time (seconds) of signing.
pub const SIG_TIMESTAMP: &str = "x-jadugar-timestamp";
/// Header with a random nonce (once per request).
pub const SIG_NONCE: &str = "x-jadugar-nonce";
/// Header with the hex HMAC-SHA256 signature.
pub const SIG_SIGNATURE: &str = "x-jadugar-signature";

fn string_to_sign(
    method: &str,
    path_and_query: &str,
    timestamp: i64,
    nonce: &str,
    body: &[u8],
) -> String {
    format!(
        "{method}\n{path_and_query}\n{timestamp}\n{nonce}\n{}",
        hex::encode(Sha256::digest(body))
    )
}

fn mac(secret: &[u8], text: &str) -> [u8; 32] {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(text.as_bytes());
    mac.finalize().into_bytes().into()
}

/// Signs outgoing service-to-service requests for a [`SigningLayer`].
///
/// The signature is HMAC-SHA256 over method, path and query, timestamp,
/// nonce and the SHA-256 of the body.
///
/// ```
/// use jadugar_auth::layer::Signer;
///
/// let signer = Signer::new("billing", b"a shared secret of 32+ bytes....".to_vec());
/// let mut request = http::Request::post("/v1/charge").body(()).unwrap();
/// signer.sign(&mut request, b"{\"amount\":5}", 1_700_000_000);
/// assert!(request.headers().contains_key("x-jadugar-signature"));
/// ```
#[derive(Clone)]
pub struct Signer {
    key_id: String,
    secret: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer for key `key_id` with `secret`.
    pub fn new(key_id: impl Into<String>, secret: Vec<u8>) -> Self {
        Self {
            key_id: key_id.into(),
            secret,
        }
    }

    /// Adds the signature headers to `request` whose body is `body`, signed
    /// at `unix_time` seconds.
    pub fn sign<B>(&self, request: &mut Request<B>, body: &[u8], unix_time: i64) {
        let nonce = hex::encode(rand::random::<[u8; 16]>());
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let text = string_to_sign(request.method().as_str(), &path, unix_time, &nonce, body);
        let signature = hex::encode(mac(&self.secret, &text));
        let headers = request.headers_mut();
        for (name, value) in [
            (SIG_KEY_ID, self.key_id.clone()),
            (SIG_TIMESTAMP, unix_time.to_string()),
            (SIG_NONCE, nonce),
            (SIG_SIGNATURE, signature),
        ] {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), v);
            }
        }
    }
}

/// A key a [`SigningLayer`] accepts.
#[derive(Clone)]
pub struct SigningKey {
    /// Key id (also the principal's subject).
    pub key_id: String,
    /// Shared secret.
    pub secret: Vec<u8>,
    /// Permissions of requests signed with it.
    pub permissions: Vec<String>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.key_id)
            .field("permissions", &self.permissions)
            .finish_non_exhaustive()
    }
}

/// Verifies HMAC-signed requests (see [`Signer`]) and puts a
/// [`PrincipalKind::Service`] principal into the extensions. Requests without
/// the signature headers pass untouched; a bad, stale or replayed signature is
/// 401. The body is buffered (up to `max_body` bytes) to check its digest.
#[derive(Clone)]
pub struct SigningLayer {
    state: std::sync::Arc<SigningState>,
}

struct SigningState {
    keys: std::collections::HashMap<String, SigningKey>,
    window: i64,
    clock: SharedClock,
    nonces: moka::sync::Cache<String, ()>,
    max_body: usize,
}

impl std::fmt::Debug for SigningLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningLayer")
            .field("keys", &self.state.keys.keys().collect::<Vec<_>>())
            .field("window", &self.state.window)
            .finish_non_exhaustive()
    }
}

impl SigningLayer {
    /// Accepts `keys`; a timestamp more than `window_secs` from `clock`'s
    /// now is refused, and each nonce is accepted once within twice the window.
    pub fn new(
        keys: impl IntoIterator<Item = SigningKey>,
        window_secs: u64,
        clock: SharedClock,
    ) -> Self {
        let window = i64::try_from(window_secs.max(1)).unwrap_or(300);
        Self {
            state: std::sync::Arc::new(SigningState {
                keys: keys.into_iter().map(|k| (k.key_id.clone(), k)).collect(),
                window,
                clock,
                nonces: moka::sync::Cache::builder()
                    .max_capacity(1_000_000)
                    .time_to_live(Duration::from_secs(window_secs.max(1) * 2 + 1))
                    .build(),
                max_body: 1024 * 1024,
            }),
        }
    }

    /// Sets the largest body verified (default 1 MiB); larger is refused.
    pub fn with_max_body(mut self, bytes: usize) -> Self {
        if let Some(state) = std::sync::Arc::get_mut(&mut self.state) {
            state.max_body = bytes;
        }
        self
    }
}

impl SigningState {
    fn verify(
        &self,
        method: &str,
        path: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Principal, Error> {
        let get = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .filter(|v| v.len() <= 256)
        };
        let bad = Error::Unauthenticated("invalid request signature");
        let (Some(kid), Some(ts), Some(nonce), Some(sig)) = (
            get(SIG_KEY_ID),
            get(SIG_TIMESTAMP),
            get(SIG_NONCE),
            get(SIG_SIGNATURE),
        ) else {
            return Err(bad);
        };
        let key = self
            .keys
            .get(kid)
            .ok_or(Error::Unauthenticated("invalid request signature"))?;
        let ts: i64 = ts
            .parse()
            .map_err(|_| Error::Unauthenticated("invalid request signature"))?;
        if (self.clock.now().timestamp() - ts).abs() > self.window {
            return Err(Error::Unauthenticated(
                "request signature outside the time window",
            ));
        }
        let expected = mac(&key.secret, &string_to_sign(method, path, ts, nonce, body));
        let given =
            hex::decode(sig).map_err(|_| Error::Unauthenticated("invalid request signature"))?;
        if !bool::from(given.as_slice().ct_eq(&expected)) {
            return Err(bad);
        }
        let fresh = self
            .nonces
            .entry(format!("{kid}\n{nonce}"))
            .or_insert(())
            .is_fresh();
        if !fresh {
            return Err(Error::Unauthenticated("replayed request"));
        }
        Ok(Principal::new(kid, PrincipalKind::Service).with_permissions(key.permissions.clone()))
    }
}

impl<S> Layer<S> for SigningLayer {
    type Service = Signed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Signed {
            inner,
            state: self.state.clone(),
        }
    }
}

/// The service of [`SigningLayer`].
#[derive(Clone)]
pub struct Signed<S> {
    inner: S,
    state: std::sync::Arc<SigningState>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Signed<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signed")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody> Service<Request<ReqBody>> for Signed<S>
where
    S: Service<
            Request<axum::body::Body>,
            Response = Response<axum::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    ReqBody: http_body::Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: std::fmt::Display,
{
    type Response = Response<axum::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let state = self.state.clone();
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            let body = axum::body::Body::new(body.map_err_display());
            if !parts.headers.contains_key(SIG_SIGNATURE) {
                return inner.call(Request::from_parts(parts, body)).await;
            }
            let limited = http_body_util::Limited::new(body, state.max_body);
            let bytes = match http_body_util::BodyExt::collect(limited).await {
                Ok(c) => c.to_bytes(),
                Err(_) => {
                    return Ok(
                        Problem::payload_too_large("signed body too large or unreadable")
                            .to_response(),
                    );
                }
            };
            let path = parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            match state.verify(parts.method.as_str(), &path, &parts.headers, &bytes) {
                Ok(principal) => {
                    parts.extensions.insert(principal);
                    inner
                        .call(Request::from_parts(parts, axum::body::Body::from(bytes)))
                        .await
                }
                Err(e) => Ok(problem_response(e)),
            }
        })
    }
}

trait MapErrDisplay: http_body::Body<Data = Bytes> + Sized {
    fn map_err_display(
        self,
    ) -> http_body_util::combinators::MapErr<Self, fn(Self::Error) -> std::io::Error>;
}

impl<B> MapErrDisplay for B
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    fn map_err_display(
        self,
    ) -> http_body_util::combinators::MapErr<Self, fn(Self::Error) -> std::io::Error> {
        let f: fn(Self::Error) -> std::io::Error = |e| std::io::Error::other(e.to_string());
        http_body_util::BodyExt::map_err(self, f)
    }
}
