//! The JSON HTTP API under `/v1/registry` and `/v1/config`.
//!
//! Permissions come from the [`Principal`] in the request extensions (put
//! there by the host's auth layer): `registry:read` / `registry:write`,
//! `config:read` / `config:write`, and `config:secrets:read` to see secret
//! values (lists always redact them). No principal gives 401.
//!
//! Blocking queries: `GET` of a service, a config key or a key list accepts
//! `?index=N&wait=30s` (`ms`, `s` or `m`; capped at `max_wait_secs`, with up
//! to 1/16 jitter) and answers as soon as what it covers changes past `N`,
//! or when the wait ends; the `X-Jadugar-Index` header and the body's
//! `index` carry the index to pass next time. `GET /v1/registry/events` and
//! `GET /v1/config/events` stream changes as server-sent events with
//! periodic `progress` events; `?index=` (or `Last-Event-ID`) older than the
//! retained history gives 410. A stream that falls behind the history, or
//! whose index stays ahead of the registry's for a progress interval (the
//! registry's state was reset), ends with a `reset` event: list again.
//!
//! ```
//! use axum::body::Body;
//! use http::Request;
//! use jadugar_core::{ManualClock, MasterKey, Principal, PrincipalKind, Sealer};
//! use jadugar_registry::{Config, Registry};
//! use tower::ServiceExt;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let registry = Registry::in_memory(
//!     Config::default(),
//!     ManualClock::default().shared(),
//!     Sealer::new(MasterKey::generate("k1"), []),
//! )
//! .await
//! .unwrap();
//! let app = jadugar_registry::http::router(registry);
//! let mut request = Request::get("/v1/registry/services").body(Body::empty()).unwrap();
//! request.extensions_mut().insert(
//!     Principal::new("ops", PrincipalKind::User).with_permissions(["registry:read"]),
//! );
//! let response = app.oneshot(request).await.unwrap();
//! assert_eq!(response.status(), 200);
//! # });
//! ```

use jadugar_core::conditional::if_match_version;
use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use futures_util::Stream;
use jadugar_core::extract::{JsonBody, QueryParams};
use jadugar_core::{FieldError, Principal, Problem};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::Registry;
use crate::model::{
    Address, Change, CheckKind, CheckSpec, ConfigEntry, ConfigPut, Instance, InstanceFilter,
    Registration, ServiceSummary, Status, Topic, ValueKind,
};

/// The header carrying the change index of a response.
pub const INDEX_HEADER: &str = "x-jadugar-index";

/// The registry's routes (absolute paths under `/v1/registry` and
/// `/v1/config`), to merge into the host's router.
pub fn router(registry: Registry) -> Router {
    let limit = registry.config().max_value_bytes.saturating_mul(2) + 64 * 1024;
    Router::new()
        .route("/v1/registry/services", get(list_services))
        .route("/v1/registry/services/{service}", get(list_instances))
        .route(
            "/v1/registry/services/{service}/instances/{id}",
            get(get_instance).put(register).delete(deregister),
        )
        .route(
            "/v1/registry/services/{service}/instances/{id}/heartbeat",
            put(heartbeat),
        )
        .route(
            "/v1/registry/services/{service}/instances/{id}/maintenance",
            put(maintenance),
        )
        .route("/v1/registry/changes", get(changes))
        .route("/v1/registry/events", get(registry_events))
        .route("/v1/config/events", get(config_events))
        .route("/v1/config/namespaces/{namespace}/keys", get(config_list))
        .route(
            "/v1/config/namespaces/{namespace}/keys/{key}",
            get(config_get).put(config_put).delete(config_delete),
        )
        .route(
            "/v1/config/namespaces/{namespace}/keys/{key}/history",
            get(config_history),
        )
        .route(
            "/v1/config/namespaces/{namespace}/keys/{key}/rollback",
            post(config_rollback),
        )
        .method_not_allowed_fallback(jadugar_core::problem::method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(registry)
}

/// The OpenAPI description of exactly the routes of [`router`].
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

#[derive(OpenApi)]
#[openapi(
    paths(
        list_services, list_instances, get_instance, register, deregister, heartbeat,
        maintenance, changes, registry_events, config_events, config_list, config_get,
        config_put, config_delete, config_history, config_rollback
    ),
    components(schemas(
        Address, CheckKind, CheckSpec, Registration, Instance, Status, ServiceSummary,
        ServicesResponse, InstancesResponse, MaintenanceRequest, Change, Topic,
        ChangesResponse, ConfigEntry, ConfigPut, ValueKind, ConfigListResponse,
        ConfigHistoryResponse, RollbackRequest, Problem, FieldError
    )),
    tags(
        (name = "registry", description = "Service registration, health and discovery"),
        (name = "config", description = "Versioned configuration")
    )
)]
struct ApiDoc;

/// Every service with counts.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ServicesResponse {
    /// The registry's change index.
    pub index: u64,
    /// The services, by name.
    pub services: Vec<ServiceSummary>,
}

/// A service's instances.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InstancesResponse {
    /// The service's change index (pass as `?index=` to block).
    pub index: u64,
    /// Whether the mass-expiry guard is holding expiries back.
    pub self_preservation: bool,
    /// The matching instances.
    pub instances: Vec<Instance>,
}

/// Maintenance mode on or off.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceRequest {
    /// On or off.
    pub enabled: bool,
    /// Why (shown with the instance).
    #[serde(default)]
    pub reason: Option<String>,
}

/// Changes after an index.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ChangesResponse {
    /// The index to pass next time.
    pub index: u64,
    /// The changes, oldest first.
    pub changes: Vec<Change>,
}

/// Config entries under a prefix.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConfigListResponse {
    /// The index to pass next time.
    pub index: u64,
    /// The entries (secrets redacted).
    pub entries: Vec<ConfigEntry>,
}

/// Every version of a key.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConfigHistoryResponse {
    /// Oldest first.
    pub versions: Vec<ConfigEntry>,
}

/// Rolls a key back to an earlier version.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The version whose value to restore.
    pub version: u64,
    /// Compare-and-set on the current version.
    #[serde(default)]
    pub expected_version: Option<u64>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct InstancesQuery {
    /// Comma-separated tags, all required.
    tags: Option<String>,
    /// Comma-separated `key:value` metadata pairs, all required.
    meta: Option<String>,
    /// Comma-separated statuses, or `any` (default `passing`).
    health: Option<String>,
    /// Block until the service changes past this index.
    index: Option<u64>,
    /// Longest wait, e.g. `30s`.
    wait: Option<String>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct BlockingQuery {
    /// Block until a change past this index.
    index: Option<u64>,
    /// Longest wait, e.g. `30s`.
    wait: Option<String>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Key prefix.
    prefix: Option<String>,
    /// Block until a key under the prefix changes past this index.
    index: Option<u64>,
    /// Longest wait, e.g. `30s`.
    wait: Option<String>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct DeleteQuery {
    /// Compare-and-set on the current version.
    version: Option<u64>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct RegistryEventsQuery {
    /// Only this service.
    service: Option<String>,
    /// Changes after this index (default: from now).
    index: Option<u64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct ConfigEventsQuery {
    /// The namespace.
    namespace: String,
    /// Only keys with this prefix.
    prefix: Option<String>,
    /// Changes after this index (default: from now).
    index: Option<u64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct ChangesQuery {
    /// Changes after this index.
    index: u64,
    /// Longest wait if there are none yet, e.g. `30s`.
    wait: Option<String>,
    /// Only this service.
    service: Option<String>,
}

/// Path parameters whose rejection (a segment that is not UTF-8 once
/// decoded) is a 422 problem naming the parameter, not axum's plain text.
#[derive(Debug)]
struct Path<T>(T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &S,
    ) -> Result<Self, Problem> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Self(value)),
            Err(rejection @ PathRejection::FailedToDeserializePathParams(_)) => {
                let message = rejection.body_text();
                let field = message
                    .split_once('`')
                    .and_then(|(_, rest)| rest.split_once('`'))
                    .map_or("path", |(name, _)| name);
                Err(Problem::validation(vec![FieldError::new(
                    field,
                    "not valid UTF-8 once percent-decoded",
                )]))
            }
            Err(rejection) => {
                // The route and the handler disagree: our bug, not the caller's.
                tracing::error!(error = %rejection.body_text(), "registry path extraction failed");
                Err(Problem::internal())
            }
        }
    }
}

/// Parses a query string; a bad parameter is a 422 naming it.
fn parse_query<T: DeserializeOwned>(raw: Option<String>) -> Result<T, Problem> {
    // No query at all still has to pass (`/changes` requires `index`).
    match QueryParams::<T>::parse(raw.as_deref().unwrap_or_default()) {
        Ok(QueryParams(query)) => Ok(query),
        Err(mut problem) => {
            // Unknown, missing and repeated parameters are named only in
            // the message ("unknown field `limit`").
            for error in &mut problem.errors {
                if error.field == "query"
                    && let Some((_, rest)) = error.message.split_once('`')
                    && let Some((name, _)) = rest.split_once('`')
                {
                    error.field = name.to_owned();
                }
            }
            Err(problem)
        }
    }
}

/// Reads a JSON body: a bad field is a 422 naming its path, a body over
/// the limit a 413 problem, a non-JSON `Content-Type` 415.
async fn parse_body<T: DeserializeOwned>(request: Request) -> Result<T, Problem> {
    JsonBody::<T>::from_request(request, &())
        .await
        .map(|JsonBody(body)| body)
}

/// Parses `30s`, `500ms`, `5m` or a bare number of seconds.
fn parse_wait(wait: Option<&str>) -> Result<Option<Duration>, Problem> {
    let Some(text) = wait else { return Ok(None) };
    let bad = || Problem::validation(vec![FieldError::new("wait", "like 500ms, 30s or 5m")]);
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(pos) => text.split_at(pos),
        None => (text, "s"),
    };
    let n: u64 = number.parse().map_err(|_| bad())?;
    let duration = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(bad()),
    };
    Ok(Some(duration))
}

fn with_index<T: Serialize>(index: u64, body: &T) -> Response {
    let mut response = axum::Json(body).into_response();
    if let Ok(value) = HeaderValue::from_str(&index.to_string()) {
        response.headers_mut().insert(INDEX_HEADER, value);
    }
    response
}

/// A config entry with its version as the `ETag` (what `If-Match` takes).
fn entry_response(entry: &ConfigEntry) -> Response {
    let mut response = with_index(entry.modify_index, entry);
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", entry.version)) {
        response.headers_mut().insert(http::header::ETAG, etag);
    }
    response
}

/// What a config write's conditional headers require (RFC 9110 §13.1).
enum WritePrecondition {
    /// No header, `If-Match` naming a version, or `If-None-Match: *`
    /// (version 0: create only).
    Version(Option<u64>),
    /// `If-Match: *`: any current value, but there must be one.
    Exists,
}

fn write_precondition(headers: &HeaderMap) -> Result<WritePrecondition, Problem> {
    let mut none_match = headers.get_all(http::header::IF_NONE_MATCH).iter();
    if let Some(value) = none_match.next() {
        if headers.contains_key(http::header::IF_MATCH) {
            return Err(Problem::bad_request(
                "send If-Match or If-None-Match on a write, not both",
            ));
        }
        return match (value.as_bytes().trim_ascii(), none_match.next()) {
            (b"*", None) => Ok(WritePrecondition::Version(Some(0))),
            _ => Err(Problem::precondition_failed(
                "on a write, If-None-Match supports only * (create the key only if it has no value)",
            )),
        };
    }
    let star = headers
        .get(http::header::IF_MATCH)
        .is_some_and(|v| v.as_bytes().trim_ascii() == b"*");
    if star {
        return Ok(WritePrecondition::Exists);
    }
    Ok(WritePrecondition::Version(if_match_version(headers)?))
}

/// `If-Match: *`: writes over whatever value the key has, and fails the
/// precondition when it has none. The version read is the write's
/// compare-and-set, so a value deleted in between is not recreated; a value
/// only replaced in between is written over, as `*` allows.
async fn put_if_exists(
    registry: &Registry,
    namespace: &str,
    key: &str,
    mut put: ConfigPut,
    by: Option<String>,
) -> Result<ConfigEntry, Problem> {
    const ATTEMPTS: usize = 3;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let current = registry.store().config_get(namespace, key).await?;
        let Some(current) = current.filter(|c| !c.deleted) else {
            return Err(Problem::precondition_failed(
                "If-Match: * needs a current value, and this key has none",
            ));
        };
        put.expected_version = Some(current.version);
        match registry
            .config_put(namespace, key, put.clone(), by.clone())
            .await
        {
            Err(crate::Error::Conflict { .. }) if attempt < ATTEMPTS => continue,
            Err(crate::Error::Conflict { current }) => {
                return Err(Problem::precondition_failed(format!(
                    "the key kept changing while this write waited; its version is now {current}"
                )));
            }
            other => return other.map_err(Problem::from),
        }
    }
}

/// A lost compare-and-set is 412 when the caller stated the version in
/// `If-Match` (RFC 9110 §13.1.1), 409 when in the body or the query.
fn cas_problem(err: crate::Error, from_if_match: bool) -> Problem {
    match err {
        crate::Error::Conflict { current } if from_if_match => Problem::precondition_failed(
            format!("If-Match does not name the current version, which is {current}"),
        ),
        other => Problem::from(other),
    }
}

fn filter_from(query: &InstancesQuery) -> Result<InstanceFilter, Problem> {
    let mut filter = InstanceFilter::default();
    if let Some(tags) = &query.tags {
        filter.tags = tags
            .split(',')
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect();
    }
    if let Some(meta) = &query.meta {
        let mut pairs = BTreeMap::new();
        for pair in meta.split(',').filter(|p| !p.is_empty()) {
            let Some((k, v)) = pair.split_once(':') else {
                return Err(Problem::validation(vec![FieldError::new(
                    "meta",
                    "comma-separated key:value pairs",
                )]));
            };
            pairs.insert(k.to_owned(), v.to_owned());
        }
        filter.metadata = pairs;
    }
    if let Some(health) = &query.health {
        for part in health.split(',').filter(|p| !p.is_empty()) {
            if part == "any" {
                filter.any_health = true;
            } else if let Some(status) = Status::parse(part) {
                filter.health.push(status);
            } else {
                return Err(Problem::validation(vec![FieldError::new(
                    "health",
                    "passing, warning, critical, maintenance or any",
                )]));
            }
        }
    }
    Ok(filter)
}

fn subject(principal: &Principal) -> Option<String> {
    Some(principal.subject.to_string())
}

/// Lists services with instance counts.
#[utoipa::path(get, path = "/v1/registry/services", tag = "registry",
    responses((status = 200, body = ServicesResponse), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn list_services(
    State(registry): State<Registry>,
    principal: Principal,
) -> Result<Response, Problem> {
    principal.require("registry:read")?;
    let index = registry.hub().current();
    let services = registry.services();
    Ok(with_index(index, &ServicesResponse { index, services }))
}

/// Lists a service's instances (passing only by default), optionally as a
/// blocking query.
#[utoipa::path(get, path = "/v1/registry/services/{service}", tag = "registry",
    params(("service" = String, Path, description = "Service name"), InstancesQuery),
    responses((status = 200, body = InstancesResponse), (status = 422, body = Problem)))]
async fn list_instances(
    State(registry): State<Registry>,
    principal: Principal,
    Path(service): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    principal.require("registry:read")?;
    crate::model::validate_service_name(&service).map_err(|e| Problem::validation(vec![e]))?;
    let query: InstancesQuery = parse_query(raw)?;
    let filter = filter_from(&query)?;
    let list = match query.index {
        Some(since) => {
            let wait = registry.blocking_wait(parse_wait(query.wait.as_deref())?);
            registry
                .watch_instances(&service, &filter, since, wait)
                .await
        }
        None => registry.instances(&service, &filter),
    };
    let body = InstancesResponse {
        index: list.index,
        self_preservation: registry.self_preservation(&service),
        instances: list.instances,
    };
    Ok(with_index(body.index, &body))
}

/// One instance, whatever its health, with the deadline of its latest
/// heartbeat.
#[utoipa::path(get, path = "/v1/registry/services/{service}/instances/{id}", tag = "registry",
    params(("service" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = Instance), (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn get_instance(
    State(registry): State<Registry>,
    principal: Principal,
    Path((service, id)): Path<(String, String)>,
) -> Result<Response, Problem> {
    principal.require("registry:read")?;
    let instance = registry.instance_latest(&service, &id).await?;
    Ok(with_index(instance.modify_index, &instance))
}

/// Registers an instance (idempotent by id): 201 when it is new, 200 when
/// it was already registered.
#[utoipa::path(put, path = "/v1/registry/services/{service}/instances/{id}", tag = "registry",
    params(("service" = String, Path), ("id" = String, Path)),
    request_body = Registration,
    responses((status = 200, body = Instance), (status = 201, body = Instance),
        (status = 413, body = Problem), (status = 415, body = Problem),
        (status = 422, body = Problem)))]
async fn register(
    State(registry): State<Registry>,
    principal: Principal,
    Path((service, id)): Path<(String, String)>,
    request: Request,
) -> Result<Response, Problem> {
    principal.require("registry:write")?;
    let registration: Registration = parse_body(request).await?;
    let (instance, created) = registry
        .register_created(&service, &id, registration)
        .await?;
    let mut response = with_index(instance.modify_index, &instance);
    if created {
        *response.status_mut() = StatusCode::CREATED;
    }
    Ok(response)
}

/// Removes an instance.
#[utoipa::path(delete, path = "/v1/registry/services/{service}/instances/{id}", tag = "registry",
    params(("service" = String, Path), ("id" = String, Path)),
    responses((status = 204), (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn deregister(
    State(registry): State<Registry>,
    principal: Principal,
    Path((service, id)): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    principal.require("registry:write")?;
    registry.deregister(&service, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Renews an instance's TTL; 404 means "register again".
#[utoipa::path(put, path = "/v1/registry/services/{service}/instances/{id}/heartbeat", tag = "registry",
    params(("service" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = Instance), (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn heartbeat(
    State(registry): State<Registry>,
    principal: Principal,
    Path((service, id)): Path<(String, String)>,
) -> Result<Response, Problem> {
    principal.require("registry:write")?;
    let instance = registry.heartbeat(&service, &id).await?;
    Ok(with_index(instance.modify_index, &instance))
}

/// Turns maintenance mode on or off.
#[utoipa::path(put, path = "/v1/registry/services/{service}/instances/{id}/maintenance", tag = "registry",
    params(("service" = String, Path), ("id" = String, Path)),
    request_body = MaintenanceRequest,
    responses((status = 200, body = Instance), (status = 404, body = Problem),
        (status = 415, body = Problem), (status = 422, body = Problem)))]
async fn maintenance(
    State(registry): State<Registry>,
    principal: Principal,
    Path((service, id)): Path<(String, String)>,
    request: Request,
) -> Result<Response, Problem> {
    principal.require("registry:write")?;
    let request: MaintenanceRequest = parse_body(request).await?;
    let instance = registry
        .set_maintenance(&service, &id, request.enabled, request.reason)
        .await?;
    Ok(with_index(instance.modify_index, &instance))
}

/// Registry changes after an index (blocking while there are none); 410
/// when the index is older than the retained history, or still ahead of
/// the registry's index when the wait ends (its state was reset).
#[utoipa::path(get, path = "/v1/registry/changes", tag = "registry",
    params(ChangesQuery),
    responses((status = 200, body = ChangesResponse), (status = 410, body = Problem), (status = 422, body = Problem)))]
async fn changes(
    State(registry): State<Registry>,
    principal: Principal,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    principal.require("registry:read")?;
    let query: ChangesQuery = parse_query(raw)?;
    let filter = EventFilter::Service(query.service);
    let hub = registry.hub();
    let wait = registry.blocking_wait(parse_wait(query.wait.as_deref())?);
    hub.changes_since(query.index, |t| filter.matches(t))
        .map_err(Problem::from)?;
    hub.wait_until(tokio::time::Instant::now() + wait, || {
        hub.changes_since(query.index, |t| filter.matches(t))
            .map_or(true, |c| !c.is_empty())
    })
    .await;
    let current = hub.current();
    // Still ahead after the wait (a host lagging behind another catches up
    // well within it): the registry was reset, and answering "no changes"
    // would let the caller skip every change up to its index.
    if query.index > current {
        return Err(crate::Error::IndexAhead {
            requested: query.index,
            current,
        }
        .into());
    }
    let changes = hub
        .changes_since(query.index, |t| filter.matches(t))
        .map_err(Problem::from)?;
    let index = changes.last().map_or(current, |c| c.index.max(current));
    Ok(with_index(index, &ChangesResponse { index, changes }))
}

#[derive(Debug, Clone)]
enum EventFilter {
    Service(Option<String>),
    Config { namespace: String, prefix: String },
}

impl EventFilter {
    fn matches(&self, topic: &Topic) -> bool {
        match (self, topic) {
            (Self::Service(None), Topic::Service { .. }) => true,
            (Self::Service(Some(want)), Topic::Service { service }) => want == service,
            (Self::Config { namespace, prefix }, Topic::Config { namespace: ns, key }) => {
                ns == namespace && key.starts_with(prefix.as_str())
            }
            _ => false,
        }
    }
}

struct StreamState {
    registry: Registry,
    filter: EventFilter,
    since: u64,
    pending: VecDeque<Change>,
    rx: watch::Receiver<u64>,
    progress: Duration,
    done: bool,
}

fn event_stream(
    registry: Registry,
    filter: EventFilter,
    since: Option<u64>,
    headers: &HeaderMap,
) -> Result<impl Stream<Item = Result<Event, Infallible>> + Send + 'static, Problem> {
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let rx = registry.subscribe();
    let since = since
        .or(last_event_id)
        .unwrap_or_else(|| registry.hub().current());
    registry
        .hub()
        .changes_since(since, |t| filter.matches(t))
        .map_err(Problem::from)?;
    let progress = Duration::from_secs(registry.config().progress_interval_secs.max(1));
    let state = StreamState {
        registry,
        filter,
        since,
        pending: VecDeque::new(),
        rx,
        progress,
        done: false,
    };
    Ok(futures_util::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            if let Some(change) = st.pending.pop_front() {
                st.since = change.index;
                let data = serde_json::to_string(&change).unwrap_or_default();
                let event = Event::default()
                    .event("change")
                    .id(change.index.to_string())
                    .data(data);
                return Some((Ok(event), st));
            }
            let current = st.registry.hub().current();
            let filter = st.filter.clone();
            match st
                .registry
                .hub()
                .changes_since(st.since, |t| filter.matches(t))
            {
                Ok(changes) if !changes.is_empty() => {
                    st.pending.extend(changes);
                    continue;
                }
                Ok(_) => {}
                Err(_) => {
                    st.done = true;
                    let event = Event::default()
                        .event("reset")
                        .data(format!("{{\"index\":{current}}}"));
                    return Some((Ok(event), st));
                }
            }
            tokio::select! {
                changed = st.rx.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                () = tokio::time::sleep(st.progress) => {
                    if st.since > current {
                        // Ahead of the registry for a whole progress
                        // interval: it was reset (see `changes`).
                        st.done = true;
                        let event = Event::default()
                            .event("reset")
                            .data(format!("{{\"index\":{current}}}"));
                        return Some((Ok(event), st));
                    }
                    st.since = st.since.max(current);
                    let event = Event::default()
                        .event("progress")
                        .data(format!("{{\"index\":{current}}}"));
                    return Some((Ok(event), st));
                }
            }
        }
    }))
}

/// Server-sent events of registry changes (`change`, `progress`, and
/// `reset` when the stream fell behind the history or is ahead of a reset
/// registry).
#[utoipa::path(get, path = "/v1/registry/events", tag = "registry",
    params(RegistryEventsQuery),
    responses((status = 200, description = "text/event-stream"), (status = 410, body = Problem), (status = 422, body = Problem)))]
async fn registry_events(
    State(registry): State<Registry>,
    principal: Principal,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    principal.require("registry:read")?;
    let query: RegistryEventsQuery = parse_query(raw)?;
    let stream = event_stream(
        registry,
        EventFilter::Service(query.service),
        query.index,
        &headers,
    )?;
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Server-sent events of config changes in a namespace.
#[utoipa::path(get, path = "/v1/config/events", tag = "config",
    params(ConfigEventsQuery),
    responses((status = 200, description = "text/event-stream"), (status = 410, body = Problem), (status = 422, body = Problem)))]
async fn config_events(
    State(registry): State<Registry>,
    principal: Principal,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    principal.require("config:read")?;
    let query: ConfigEventsQuery = parse_query(raw)?;
    crate::model::validate_namespace(&query.namespace).map_err(|e| Problem::validation(vec![e]))?;
    let filter = EventFilter::Config {
        namespace: query.namespace,
        prefix: query.prefix.unwrap_or_default(),
    };
    let stream = event_stream(registry, filter, query.index, &headers)?;
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Lists keys of a namespace (secrets redacted), optionally blocking.
#[utoipa::path(get, path = "/v1/config/namespaces/{namespace}/keys", tag = "config",
    params(("namespace" = String, Path), ListQuery),
    responses((status = 200, body = ConfigListResponse), (status = 422, body = Problem)))]
async fn config_list(
    State(registry): State<Registry>,
    principal: Principal,
    Path(namespace): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    principal.require("config:read")?;
    let query: ListQuery = parse_query(raw)?;
    let prefix = query.prefix.unwrap_or_default();
    let list = match query.index {
        Some(since) => {
            let wait = registry.blocking_wait(parse_wait(query.wait.as_deref())?);
            registry
                .config_watch_list(&namespace, &prefix, since, wait)
                .await?
        }
        None => registry.config_list(&namespace, &prefix).await?,
    };
    let body = ConfigListResponse {
        index: list.index,
        entries: list.entries,
    };
    Ok(with_index(body.index, &body))
}

/// Gets a key (secret values need `config:secrets:read`), optionally
/// blocking. A 404 also carries `X-Jadugar-Index`, to block on the key's
/// creation.
#[utoipa::path(get, path = "/v1/config/namespaces/{namespace}/keys/{key}", tag = "config",
    params(("namespace" = String, Path), ("key" = String, Path), BlockingQuery),
    responses((status = 200, body = ConfigEntry), (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn config_get(
    State(registry): State<Registry>,
    principal: Principal,
    Path((namespace, key)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    principal.require("config:read")?;
    let query: BlockingQuery = parse_query(raw)?;
    let reveal = Registry::may_reveal(&principal);
    let result = match query.index {
        Some(since) => {
            let wait = registry.blocking_wait(parse_wait(query.wait.as_deref())?);
            registry
                .config_watch(&namespace, &key, since, wait, reveal)
                .await
        }
        None => registry.config_get(&namespace, &key, reveal).await,
    };
    match result {
        Ok(entry) => Ok(entry_response(&entry)),
        Err(err @ crate::Error::NotFound(_)) => {
            // A 404 carries an index too, so a watcher of a deleted or
            // absent key blocks next time instead of spinning on 404s: the
            // deletion's index, 0 for a key never written, and one less
            // than a version written since (so the next query returns it).
            let index = match registry.store().config_get(&namespace, &key).await? {
                Some(latest) if latest.deleted => latest.modify_index,
                Some(latest) => latest.modify_index.saturating_sub(1),
                None => 0,
            };
            let mut response = Problem::from(err).into_response();
            if let Ok(value) = HeaderValue::from_str(&index.to_string()) {
                response.headers_mut().insert(INDEX_HEADER, value);
            }
            Ok(response)
        }
        Err(err) => Err(err.into()),
    }
}

/// Writes a key: 201 when it had no current value, 200 otherwise; the
/// `ETag` is the new version. `expected_version` makes it a compare-and-set
/// (409 when the current version differs, 0 = create only); so does
/// `If-Match` (412 when it differs; `*` needs a current value), and
/// `If-None-Match: *` creates only (412 when the key has a value).
#[utoipa::path(put, path = "/v1/config/namespaces/{namespace}/keys/{key}", tag = "config",
    params(("namespace" = String, Path), ("key" = String, Path)),
    request_body = ConfigPut,
    responses((status = 200, body = ConfigEntry), (status = 201, body = ConfigEntry),
        (status = 400, body = Problem),
        (status = 409, body = Problem), (status = 412, body = Problem),
        (status = 413, body = Problem), (status = 415, body = Problem),
        (status = 422, body = Problem)))]
async fn config_put(
    State(registry): State<Registry>,
    principal: Principal,
    Path((namespace, key)): Path<(String, String)>,
    headers: HeaderMap,
    request: Request,
) -> Result<Response, Problem> {
    principal.require("config:write")?;
    let mut put: ConfigPut = parse_body(request).await?;
    let entry = if put.expected_version.is_some() {
        registry
            .config_put(&namespace, &key, put, subject(&principal))
            .await
            .map_err(|e| cas_problem(e, false))?
    } else {
        match write_precondition(&headers)? {
            WritePrecondition::Version(version) => {
                put.expected_version = version;
                registry
                    .config_put(&namespace, &key, put, subject(&principal))
                    .await
                    .map_err(|e| cas_problem(e, version.is_some()))?
            }
            WritePrecondition::Exists => {
                put_if_exists(&registry, &namespace, &key, put, subject(&principal)).await?
            }
        }
    };
    // Created when there was no current value: no earlier version, or a
    // deletion (versions are immutable, so reading it afterwards is exact).
    let created = match entry.version.checked_sub(1).filter(|v| *v > 0) {
        None => true,
        Some(previous) => registry
            .store()
            .config_version(&namespace, &key, previous)
            .await?
            .is_none_or(|p| p.deleted),
    };
    let mut response = entry_response(&entry);
    if created {
        *response.status_mut() = StatusCode::CREATED;
    }
    Ok(response)
}

/// Deletes a key (history stays). `?version=` makes it a compare-and-set
/// (409 when the current version differs); so does `If-Match` (412).
#[utoipa::path(delete, path = "/v1/config/namespaces/{namespace}/keys/{key}", tag = "config",
    params(("namespace" = String, Path), ("key" = String, Path), DeleteQuery),
    responses((status = 200, body = ConfigEntry), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 412, body = Problem),
        (status = 422, body = Problem)))]
async fn config_delete(
    State(registry): State<Registry>,
    principal: Principal,
    Path((namespace, key)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    principal.require("config:write")?;
    let query: DeleteQuery = parse_query(raw)?;
    let (expected, from_if_match) = match query.version {
        Some(v) => (Some(v), false),
        None => {
            let v = if_match_version(&headers)?;
            (v, v.is_some())
        }
    };
    let entry = registry
        .config_delete(&namespace, &key, expected, subject(&principal))
        .await
        .map_err(|e| cas_problem(e, from_if_match))?;
    Ok(with_index(entry.modify_index, &entry))
}

/// Every version of a key, oldest first.
#[utoipa::path(get, path = "/v1/config/namespaces/{namespace}/keys/{key}/history", tag = "config",
    params(("namespace" = String, Path), ("key" = String, Path)),
    responses((status = 200, body = ConfigHistoryResponse), (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn config_history(
    State(registry): State<Registry>,
    principal: Principal,
    Path((namespace, key)): Path<(String, String)>,
) -> Result<Response, Problem> {
    principal.require("config:read")?;
    let reveal = Registry::may_reveal(&principal);
    let versions = registry.config_history(&namespace, &key, reveal).await?;
    Ok(axum::Json(ConfigHistoryResponse { versions }).into_response())
}

/// Writes the value of an earlier version as a new version.
#[utoipa::path(post, path = "/v1/config/namespaces/{namespace}/keys/{key}/rollback", tag = "config",
    params(("namespace" = String, Path), ("key" = String, Path)),
    request_body = RollbackRequest,
    responses((status = 200, body = ConfigEntry), (status = 404, body = Problem), (status = 409, body = Problem),
        (status = 415, body = Problem), (status = 422, body = Problem)))]
async fn config_rollback(
    State(registry): State<Registry>,
    principal: Principal,
    Path((namespace, key)): Path<(String, String)>,
    request: Request,
) -> Result<Response, Problem> {
    principal.require("config:write")?;
    let request: RollbackRequest = parse_body(request).await?;
    let entry = registry
        .config_rollback(
            &namespace,
            &key,
            request.version,
            request.expected_version,
            subject(&principal),
        )
        .await?;
    Ok(entry_response(&entry))
}
