//! The JSON HTTP API under `/v1/auth`, the JWKS and OIDC discovery
//! documents, and their OpenAPI description.
//!
//! The router reads the caller from the [`Principal`] in the request
//! extensions: mount [`AuthLayer`](crate::layer::AuthLayer) around it.
//!
//! A user's responses carry its version as a strong `ETag` (`"<version>"`);
//! `PATCH` and `DELETE` of a user honour `If-Match` with it (a stale tag is
//! 412 problem+json and changes nothing). Without `If-Match` a `PATCH` sets
//! the fields it names on the user as it is at the write, so a concurrent
//! change to other fields is never lost.
//!
//! Password-reset and email-verification tokens are bound to the address
//! they were mailed to. A `PATCH` that changes a user's email makes it
//! unverified, so tokens mailed to the old address are then refused (422),
//! and mails a verification token to the new one.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use jadugar_auth::{AuthService, Config, http, layer::AuthLayer};
//!
//! let auth = AuthService::memory(Config::default()).await.unwrap();
//! let app = http::router(auth.clone()).layer(AuthLayer::new(auth));
//! let doc = http::openapi();
//! assert!(doc.paths.paths.contains_key("/v1/auth/login"));
//! # let _ = app;
//! # });
//! ```

use std::net::SocketAddr;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use jadugar_core::conditional::if_match_version;
use jadugar_core::cursor::{Page, PageRequest};
use jadugar_core::extract::QueryParams;
use jadugar_core::{FieldError, Principal, Problem};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::layer::{CSRF_HEADER, CookieNames, cookie};
use crate::model::{
    ApiKey, ApiKeyId, AuditEvent, AuditFilter, Role, Session, SessionId, User, UserId,
};
use crate::service::{
    CreatedApiKey, NewApiKey, NewUser, RequestMeta, RoleInput, TokenPair, UserUpdate,
};
use crate::{AuthService, Error};

type ApiResult<T> = Result<T, Problem>;

/// JSON body extractor answering problem+json naming the field on bad
/// input (jadugar-core's, under the name this crate has always used).
pub use jadugar_core::extract::JsonBody as Json;

/// Path extractor answering problem+json (404 for an unparseable id).
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Self(v)),
            Err(PathRejection::FailedToDeserializePathParams(_)) => {
                Err(Problem::not_found("no such resource"))
            }
            Err(e) => Err(Problem::bad_request(e.body_text())),
        }
    }
}

/// Client IP (trusted-proxy aware) and user agent of the request.
#[derive(Debug, Clone)]
pub struct Meta(pub RequestMeta);

impl FromRequestParts<AuthService> for Meta {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut Parts,
        auth: &AuthService,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let xff = parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok());
        Ok(Self(RequestMeta {
            ip: auth.client_ip(peer, xff),
            user_agent: parts
                .headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        }))
    }
}

fn optional_body(bytes: &[u8]) -> ApiResult<RefreshRequest> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(RefreshRequest::default());
    }
    serde_json::from_slice(bytes)
        .map_err(|e| Problem::validation(vec![FieldError::new("body", e.to_string())]))
}

fn p(e: Error) -> Problem {
    Problem::from(e)
}

/// The version a request's `If-Match` names (`None`: absent or `*`).
///
/// The entity tag of a user is its version, `"<n>"`. A weak tag `W/"<n>"`
/// names the same version (a compressing proxy may weaken the tag it
/// passes on; the version is the same). A tag that is no version of ours
/// never matches: 412. So is a list of several tags, which we do not take:
/// a client sends back the one tag it was given.
/// A user as JSON with its version as the strong entity tag.
fn user_response(user: &User) -> Response {
    let mut response = axum::Json(user).into_response();
    if let Ok(tag) = HeaderValue::from_str(&format!("\"{}\"", user.version)) {
        response.headers_mut().insert(header::ETAG, tag);
    }
    response
}

/// Login input.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Email.
    pub email: String,
    /// Password.
    pub password: String,
    /// Also set the browser cookies (session, refresh, CSRF).
    #[serde(default)]
    pub set_cookies: bool,
}

/// Refresh or logout input; the refresh token may instead come from the cookie.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    /// The refresh token.
    #[serde(default)]
    pub refresh_token: Option<String>,
}

/// Password change input.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePassword {
    /// The current password.
    pub current_password: String,
    /// The new password.
    pub new_password: String,
}

/// Admin password set input.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPassword {
    /// The new password.
    pub password: String,
}

/// Password reset request input.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    /// The account's email.
    pub email: String,
}

/// Password reset confirmation input.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetConfirm {
    /// The mailed token.
    pub token: String,
    /// The new password.
    pub password: String,
}

/// Email verification confirmation input.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyConfirm {
    /// The mailed token.
    pub token: String,
}

/// Owner filter of the API key and session lists.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OwnerQuery {
    /// Another user's id (needs the admin permission).
    #[serde(default)]
    pub user_id: Option<UserId>,
}

/// Audit log query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Exact action.
    pub action: Option<String>,
    /// Exact actor.
    pub actor: Option<String>,
    /// Exact target.
    pub target: Option<String>,
    /// RFC 3339 lower bound (inclusive).
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// RFC 3339 upper bound (exclusive).
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// Page size.
    pub limit: Option<u32>,
    /// Cursor from the previous page.
    pub cursor: Option<String>,
}

/// The caller.
#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    /// The principal as the layer saw it.
    pub principal: Principal,
    /// The user account, for users.
    pub user: Option<User>,
}

fn set_cookie(
    headers: &mut HeaderMap,
    name: &str,
    value: &str,
    max_age: u64,
    http_only: bool,
    same_site: &str,
    secure: bool,
) {
    let mut text = format!("{name}={value}; Path=/; Max-Age={max_age}; SameSite={same_site}");
    if http_only {
        text.push_str("; HttpOnly");
    }
    if secure {
        text.push_str("; Secure");
    }
    if let Ok(v) = HeaderValue::from_str(&text) {
        headers.append(header::SET_COOKIE, v);
    }
}

fn cookie_headers(auth: &AuthService, pair: Option<&TokenPair>) -> HeaderMap {
    let c = auth.config();
    let names = CookieNames::for_config(c);
    let mut headers = HeaderMap::new();
    let secure = c.cookie_secure;
    match pair {
        Some(pair) => {
            set_cookie(
                &mut headers,
                names.session,
                &pair.access_token,
                c.access_token_ttl_secs,
                true,
                "Lax",
                secure,
            );
            set_cookie(
                &mut headers,
                names.refresh,
                &pair.refresh_token,
                c.session_absolute_secs,
                true,
                "Strict",
                secure,
            );
            set_cookie(
                &mut headers,
                names.csrf,
                &pair.csrf_token,
                c.session_absolute_secs,
                false,
                "Strict",
                secure,
            );
        }
        None => {
            for name in [names.session, names.refresh, names.csrf] {
                set_cookie(&mut headers, name, "", 0, true, "Lax", secure);
            }
        }
    }
    headers
}

/// The refresh token from the body, or from the cookie after a CSRF check.
fn refresh_from(
    auth: &AuthService,
    headers: &HeaderMap,
    body: Option<String>,
) -> ApiResult<Option<(String, bool)>> {
    if let Some(t) = body.filter(|t| !t.is_empty()) {
        return Ok(Some((t, false)));
    }
    let names = CookieNames::for_config(auth.config());
    let Some(token) = cookie(headers, names.refresh) else {
        return Ok(None);
    };
    let sent = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    let jar = cookie(headers, names.csrf);
    match (sent, jar) {
        (Some(s), Some(j)) if s == j && !s.is_empty() => Ok(Some((token.to_owned(), true))),
        _ => Err(p(Error::Csrf)),
    }
}

#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = TokenPair), (status = 401, body = Problem), (status = 429, body = Problem)))]
async fn login(
    State(auth): State<AuthService>,
    Meta(meta): Meta,
    principal: Option<Principal>,
    headers: HeaderMap,
    Json(body): Json<LoginRequest>,
) -> ApiResult<Response> {
    let previous = principal
        .as_ref()
        .and_then(|p| p.session_id.as_deref())
        .and_then(|s| s.parse::<SessionId>().ok());
    let pair = auth
        .login(&body.email, &body.password, &meta, previous)
        .await
        .map_err(p)?;
    // A refresh cookie the browser still holds belongs to an older session.
    if let Some(old) = cookie(&headers, CookieNames::for_config(auth.config()).refresh) {
        let _ = auth.logout(None, Some(old), &meta).await;
    }
    let cookies = if body.set_cookies {
        cookie_headers(&auth, Some(&pair))
    } else {
        HeaderMap::new()
    };
    Ok((cookies, axum::Json(pair)).into_response())
}

#[utoipa::path(post, path = "/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = TokenPair), (status = 401, body = Problem)))]
async fn refresh(
    State(auth): State<AuthService>,
    Meta(meta): Meta,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let token = optional_body(&body)?.refresh_token;
    let (token, from_cookie) = refresh_from(&auth, &headers, token)?
        .ok_or_else(|| Problem::unauthorized("refresh token required"))?;
    let pair = auth.refresh(&token, &meta).await.map_err(p)?;
    let cookies = if from_cookie {
        cookie_headers(&auth, Some(&pair))
    } else {
        HeaderMap::new()
    };
    Ok((cookies, axum::Json(pair)).into_response())
}

#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth", request_body = RefreshRequest,
    responses((status = 204), (status = 401, body = Problem)))]
async fn logout(
    State(auth): State<AuthService>,
    Meta(meta): Meta,
    principal: Option<Principal>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let token = optional_body(&body)?.refresh_token;
    let token = refresh_from(&auth, &headers, token)?.map(|(t, _)| t);
    auth.logout(principal.as_ref(), token.as_deref(), &meta)
        .await
        .map_err(p)?;
    Ok((StatusCode::NO_CONTENT, cookie_headers(&auth, None)).into_response())
}

#[utoipa::path(get, path = "/v1/auth/me", tag = "auth", responses((status = 200, body = Me), (status = 401, body = Problem)))]
async fn me(State(auth): State<AuthService>, principal: Principal) -> ApiResult<axum::Json<Me>> {
    let user = match principal.subject.parse::<UserId>() {
        Ok(id) if principal.kind == jadugar_core::PrincipalKind::User => auth
            .store()
            .get_user(id)
            .await
            .map_err(|e| p(e.into()))?
            .map(|r| r.user),
        _ => None,
    };
    Ok(axum::Json(Me { principal, user }))
}

#[utoipa::path(post, path = "/v1/auth/me/password", tag = "auth", request_body = ChangePassword,
    responses((status = 204), (status = 401, body = Problem), (status = 422, body = Problem)))]
async fn change_password(
    State(auth): State<AuthService>,
    Meta(meta): Meta,
    principal: Principal,
    Json(body): Json<ChangePassword>,
) -> ApiResult<StatusCode> {
    auth.change_password(&principal, body.current_password, body.new_password, &meta)
        .await
        .map_err(p)?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/auth/users", tag = "users", params(PageRequest),
    responses((status = 200, body = Page<User>), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn list_users(
    State(auth): State<AuthService>,
    principal: Principal,
    QueryParams(page): QueryParams<PageRequest>,
) -> ApiResult<axum::Json<Page<User>>> {
    Ok(axum::Json(
        auth.list_users(&principal, &page).await.map_err(p)?,
    ))
}

#[utoipa::path(post, path = "/v1/auth/users", tag = "users", request_body = NewUser,
    responses((status = 201, body = User), (status = 403, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn create_user(
    State(auth): State<AuthService>,
    principal: Principal,
    Json(body): Json<NewUser>,
) -> ApiResult<(StatusCode, axum::Json<User>)> {
    Ok((
        StatusCode::CREATED,
        axum::Json(auth.create_user(Some(&principal), body).await.map_err(p)?),
    ))
}

#[utoipa::path(get, path = "/v1/auth/users/{id}", tag = "users", params(("id" = UserId, Path, description = "user id")),
    responses(
        (status = 200, body = User, headers(("ETag" = String, description = "the user's version, `\"<version>\"`; send it back in `If-Match`"))),
        (status = 404, body = Problem)))]
async fn get_user(
    State(auth): State<AuthService>,
    principal: Principal,
    Path(id): Path<UserId>,
) -> ApiResult<Response> {
    Ok(user_response(
        &auth.get_user(&principal, id).await.map_err(p)?,
    ))
}

#[utoipa::path(patch, path = "/v1/auth/users/{id}", tag = "users",
    description = "Sets the fields the body names. A new `email` is unverified: `email_verified` becomes false, password-reset and verification tokens mailed to the old address stop working, and an enabled user is mailed a verification token at the new address.",
    params(
        ("id" = UserId, Path, description = "user id"),
        ("If-Match" = Option<String>, Header, description = "one `ETag` as last seen (or `*`): the change is made only if the user is still at that version, else 412. Without it, the named fields are set on the user as it is, keeping concurrent changes to other fields"),
    ),
    request_body = UserUpdate,
    responses(
        (status = 200, body = User, headers(("ETag" = String, description = "the user's new version"))),
        (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 412, body = Problem, description = "the user changed since the version in If-Match"),
        (status = 422, body = Problem)))]
async fn update_user(
    State(auth): State<AuthService>,
    principal: Principal,
    Path(id): Path<UserId>,
    headers: HeaderMap,
    Json(body): Json<UserUpdate>,
) -> ApiResult<Response> {
    let expected = if_match_version(&headers)?;
    let user = auth
        .update_user(&principal, id, body, expected)
        .await
        .map_err(p)?;
    Ok(user_response(&user))
}

#[utoipa::path(delete, path = "/v1/auth/users/{id}", tag = "users",
    params(
        ("id" = UserId, Path, description = "user id"),
        ("If-Match" = Option<String>, Header, description = "one `ETag` as last seen (or `*`): the user is deleted only if still at that version, else 412"),
    ),
    responses(
        (status = 204), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 412, body = Problem, description = "the user changed since the version in If-Match")))]
async fn delete_user(
    State(auth): State<AuthService>,
    principal: Principal,
    Path(id): Path<UserId>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let expected = if_match_version(&headers)?;
    auth.delete_user(&principal, id, expected)
        .await
        .map_err(p)?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(put, path = "/v1/auth/users/{id}/password", tag = "users", params(("id" = UserId, Path, description = "user id")), request_body = SetPassword,
    responses((status = 204), (status = 403, body = Problem), (status = 422, body = Problem)))]
async fn set_password(
    State(auth): State<AuthService>,
    principal: Principal,
    Path(id): Path<UserId>,
    Json(body): Json<SetPassword>,
) -> ApiResult<StatusCode> {
    auth.set_password(&principal, id, body.password)
        .await
        .map_err(p)?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(put, path = "/v1/auth/users/{id}/roles/{role}", tag = "users",
    params(("id" = UserId, Path, description = "user id"), ("role" = String, Path, description = "role name")),
    responses((status = 200, body = User, headers(("ETag" = String, description = "the user's version"))), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn assign_role(
    State(auth): State<AuthService>,
    principal: Principal,
    Path((id, role)): Path<(UserId, String)>,
) -> ApiResult<Response> {
    Ok(user_response(
        &auth.assign_role(&principal, id, &role).await.map_err(p)?,
    ))
}

#[utoipa::path(delete, path = "/v1/auth/users/{id}/roles/{role}", tag = "users",
    params(("id" = UserId, Path, description = "user id"), ("role" = String, Path, description = "role name")),
    responses((status = 200, body = User, headers(("ETag" = String, description = "the user's version"))), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn unassign_role(
    State(auth): State<AuthService>,
    principal: Principal,
    Path((id, role)): Path<(UserId, String)>,
) -> ApiResult<Response> {
    Ok(user_response(
        &auth.unassign_role(&principal, id, &role).await.map_err(p)?,
    ))
}

#[utoipa::path(get, path = "/v1/auth/roles", tag = "roles", responses((status = 200, body = Vec<Role>), (status = 403, body = Problem)))]
async fn list_roles(
    State(auth): State<AuthService>,
    principal: Principal,
) -> ApiResult<axum::Json<Vec<Role>>> {
    Ok(axum::Json(auth.list_roles(&principal).await.map_err(p)?))
}

#[utoipa::path(post, path = "/v1/auth/roles", tag = "roles", request_body = RoleInput,
    responses((status = 201, body = Role), (status = 403, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn create_role(
    State(auth): State<AuthService>,
    principal: Principal,
    Json(body): Json<RoleInput>,
) -> ApiResult<(StatusCode, axum::Json<Role>)> {
    Ok((
        StatusCode::CREATED,
        axum::Json(auth.create_role(&principal, body).await.map_err(p)?),
    ))
}

/// Role edit input (the name comes from the path).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleEdit {
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Permission patterns.
    pub permissions: Vec<String>,
}

#[utoipa::path(put, path = "/v1/auth/roles/{name}", tag = "roles", params(("name" = String, Path, description = "role name")), request_body = RoleEdit,
    responses((status = 200, body = Role), (status = 403, body = Problem), (status = 422, body = Problem)))]
async fn put_role(
    State(auth): State<AuthService>,
    principal: Principal,
    Path(name): Path<String>,
    Json(body): Json<RoleEdit>,
) -> ApiResult<axum::Json<Role>> {
    let input = RoleInput {
        name,
        description: body.description,
        permissions: body.permissions,
    };
    Ok(axum::Json(
        auth.put_role(&principal, input).await.map_err(p)?,
    ))
}

#[utoipa::path(delete, path = "/v1/auth/roles/{name}", tag = "roles", params(("name" = String, Path, description = "role name")),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn delete_role(
    State(auth): State<AuthService>,
    principal: Principal,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    auth.delete_role(&principal, &name).await.map_err(p)?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/auth/api-keys", tag = "api-keys", params(OwnerQuery),
    responses((status = 200, body = Vec<ApiKey>), (status = 403, body = Problem)))]
async fn list_keys(
    State(auth): State<AuthService>,
    principal: Principal,
    QueryParams(q): QueryParams<OwnerQuery>,
) -> ApiResult<axum::Json<Vec<ApiKey>>> {
    Ok(axum::Json(
        auth.list_api_keys(&principal, q.user_id).await.map_err(p)?,
    ))
}

#[utoipa::path(post, path = "/v1/auth/api-keys", tag = "api-keys", request_body = NewApiKey,
    responses((status = 201, body = CreatedApiKey), (status = 403, body = Problem), (status = 422, body = Problem)))]
async fn create_key(
    State(auth): State<AuthService>,
    principal: Principal,
    Json(body): Json<NewApiKey>,
) -> ApiResult<(StatusCode, axum::Json<CreatedApiKey>)> {
    Ok((
        StatusCode::CREATED,
        axum::Json(
            auth.create_api_key(Some(&principal), body)
                .await
                .map_err(p)?,
        ),
    ))
}

#[utoipa::path(delete, path = "/v1/auth/api-keys/{id}", tag = "api-keys", params(("id" = ApiKeyId, Path, description = "key id")),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn revoke_key(
    State(auth): State<AuthService>,
    principal: Principal,
    Path(id): Path<ApiKeyId>,
) -> ApiResult<StatusCode> {
    auth.revoke_api_key(&principal, id).await.map_err(p)?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/auth/sessions", tag = "sessions", params(OwnerQuery),
    responses((status = 200, body = Vec<Session>), (status = 403, body = Problem)))]
async fn list_sessions(
    State(auth): State<AuthService>,
    principal: Principal,
    QueryParams(q): QueryParams<OwnerQuery>,
) -> ApiResult<axum::Json<Vec<Session>>> {
    Ok(axum::Json(
        auth.list_sessions(&principal, q.user_id).await.map_err(p)?,
    ))
}

#[utoipa::path(delete, path = "/v1/auth/sessions/{id}", tag = "sessions", params(("id" = SessionId, Path, description = "session id")),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn revoke_session(
    State(auth): State<AuthService>,
    Meta(meta): Meta,
    principal: Principal,
    Path(id): Path<SessionId>,
) -> ApiResult<StatusCode> {
    auth.revoke_session(&principal, id, &meta)
        .await
        .map_err(p)?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/auth/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, body = Page<AuditEvent>), (status = 403, body = Problem)))]
async fn audit(
    State(auth): State<AuthService>,
    principal: Principal,
    QueryParams(q): QueryParams<AuditQuery>,
) -> ApiResult<axum::Json<Page<AuditEvent>>> {
    let filter = AuditFilter {
        action: q.action,
        actor: q.actor,
        target: q.target,
        since: q.since,
        until: q.until,
    };
    let page = PageRequest {
        limit: q.limit,
        cursor: q.cursor,
    };
    Ok(axum::Json(
        auth.list_audit(&principal, &filter, &page)
            .await
            .map_err(p)?,
    ))
}

#[utoipa::path(post, path = "/v1/auth/password-reset", tag = "auth", request_body = ResetRequest,
    responses((status = 202), (status = 429, body = Problem)))]
async fn reset_request(
    State(auth): State<AuthService>,
    Meta(meta): Meta,
    Json(body): Json<ResetRequest>,
) -> ApiResult<StatusCode> {
    auth.request_password_reset(&body.email, &meta)
        .await
        .map_err(p)?;
    Ok(StatusCode::ACCEPTED)
}

#[utoipa::path(post, path = "/v1/auth/password-reset/confirm", tag = "auth", request_body = ResetConfirm,
    description = "Sets a new password with a reset token (single use). A token mailed to an address that is no longer the user's email is invalid (422).",
    responses((status = 204), (status = 422, body = Problem)))]
async fn reset_confirm(
    State(auth): State<AuthService>,
    Meta(meta): Meta,
    Json(body): Json<ResetConfirm>,
) -> ApiResult<StatusCode> {
    auth.confirm_password_reset(&body.token, body.password, &meta)
        .await
        .map_err(p)?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/auth/email-verification", tag = "auth",
    responses((status = 202), (status = 401, body = Problem)))]
async fn verify_request(
    State(auth): State<AuthService>,
    principal: Principal,
) -> ApiResult<StatusCode> {
    auth.request_email_verification(&principal)
        .await
        .map_err(p)?;
    Ok(StatusCode::ACCEPTED)
}

#[utoipa::path(post, path = "/v1/auth/email-verification/confirm", tag = "auth", request_body = VerifyConfirm,
    description = "Marks the user's email verified with a token (single use). A token mailed to an address that is no longer the user's email is invalid (422) and verifies nothing.",
    responses((status = 204), (status = 422, body = Problem)))]
async fn verify_confirm(
    State(auth): State<AuthService>,
    Json(body): Json<VerifyConfirm>,
) -> ApiResult<StatusCode> {
    auth.confirm_email_verification(&body.token)
        .await
        .map_err(p)?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "oidc", responses((status = 200, description = "JSON Web Key Set")))]
async fn jwks(State(auth): State<AuthService>) -> Response {
    (
        [(header::CACHE_CONTROL, "public, max-age=300")],
        axum::Json(auth.jwks()),
    )
        .into_response()
}

#[utoipa::path(get, path = "/.well-known/openid-configuration", tag = "oidc", responses((status = 200, description = "OpenID Connect discovery document")))]
async fn openid_configuration(State(auth): State<AuthService>) -> Response {
    (
        [(header::CACHE_CONTROL, "public, max-age=300")],
        axum::Json(auth.openid_configuration()),
    )
        .into_response()
}

async fn meta_scope(
    Meta(meta): Meta,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    crate::service::with_request_meta(meta, next.run(req)).await
}

/// The auth API: `/v1/auth/...` plus `/.well-known/jwks.json` and
/// `/.well-known/openid-configuration`. Bodies are limited to 64 KiB.
pub fn router(auth: AuthService) -> Router {
    Router::new()
        .route("/v1/auth/login", post(login))
        .route("/v1/auth/refresh", post(refresh))
        .route("/v1/auth/logout", post(logout))
        .route("/v1/auth/me", get(me))
        .route("/v1/auth/me/password", post(change_password))
        .route("/v1/auth/users", get(list_users).post(create_user))
        .route(
            "/v1/auth/users/{id}",
            get(get_user).patch(update_user).delete(delete_user),
        )
        .route("/v1/auth/users/{id}/password", put(set_password))
        .route(
            "/v1/auth/users/{id}/roles/{role}",
            put(assign_role).delete(unassign_role),
        )
        .route("/v1/auth/roles", get(list_roles).post(create_role))
        .route("/v1/auth/roles/{name}", put(put_role).delete(delete_role))
        .route("/v1/auth/api-keys", get(list_keys).post(create_key))
        .route("/v1/auth/api-keys/{id}", axum::routing::delete(revoke_key))
        .route("/v1/auth/sessions", get(list_sessions))
        .route(
            "/v1/auth/sessions/{id}",
            axum::routing::delete(revoke_session),
        )
        .route("/v1/auth/audit", get(audit))
        .route("/v1/auth/password-reset", post(reset_request))
        .route("/v1/auth/password-reset/confirm", post(reset_confirm))
        .route("/v1/auth/email-verification", post(verify_request))
        .route("/v1/auth/email-verification/confirm", post(verify_confirm))
        .route("/.well-known/jwks.json", get(jwks))
        .route(
            "/.well-known/openid-configuration",
            get(openid_configuration),
        )
        .method_not_allowed_fallback(jadugar_core::problem::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            auth.clone(),
            meta_scope,
        ))
        .layer(DefaultBodyLimit::max(64 * 1024))
        .with_state(auth)
}

#[derive(OpenApi)]
#[openapi(
    paths(
        login, refresh, logout, me, change_password, list_users, create_user, get_user, update_user,
        delete_user, set_password, assign_role, unassign_role, list_roles, create_role, put_role,
        delete_role, list_keys, create_key, revoke_key, list_sessions, revoke_session, audit,
        reset_request, reset_confirm, verify_request, verify_confirm, jwks, openid_configuration
    ),
    components(schemas(Problem, Principal, User, Role, ApiKey, Session, AuditEvent, TokenPair, CreatedApiKey)),
    tags(
        (name = "auth", description = "Login, tokens, password and email flows"),
        (name = "users", description = "User accounts and their roles"),
        (name = "roles", description = "Roles and permissions"),
        (name = "api-keys", description = "API keys"),
        (name = "sessions", description = "Login sessions"),
        (name = "audit", description = "The audit log"),
        (name = "oidc", description = "JWKS and OpenID Connect discovery"),
    )
)]
struct ApiDoc;

/// The OpenAPI description of exactly the routes of [`router`].
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
