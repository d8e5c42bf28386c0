//! The admin API: `/v1/gateway/routes`, permission `gateway:admin`.
//!
//! | method | path | |
//! |---|---|---|
//! | GET | `/v1/gateway/routes?limit=&cursor=` | list (configuration and stored routes) |
//! | POST | `/v1/gateway/routes` | create (422 naming each bad field, 409 if the id exists) |
//! | GET | `/v1/gateway/routes/{id}` | one route, with `ETag: "revision"` |
//! | PUT | `/v1/gateway/routes/{id}` | replace; `If-Match` honoured (412) |
//! | DELETE | `/v1/gateway/routes/{id}` | remove; `If-Match` honoured |
//!
//! Every change is validated against the whole route set before it is
//! stored, then applied by swapping the route snapshot: requests in flight
//! finish on the routes they started with.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let gateway = jadugar_gateway::Gateway::builder(Default::default()).build().await.unwrap();
//! let app: axum::Router = jadugar_gateway::http::router(gateway);
//! let doc = jadugar_gateway::http::openapi();
//! assert!(doc.paths.paths.contains_key("/v1/gateway/routes/{id}"));
//! # });
//! ```

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use jadugar_core::conditional::if_match_version;
use jadugar_core::extract::QueryParams;
use jadugar_core::{FieldError, PageRequest, Principal, Problem};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use crate::Gateway;
use crate::model::RouteSpec;
use crate::service::{RouteSource, RouteView};

/// The permission every admin endpoint requires.
pub const ADMIN_PERMISSION: &str = "gateway:admin";

/// One page of routes.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RoutePage {
    /// The routes of this page.
    pub items: Vec<RouteView>,
    /// The cursor of the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(OpenApi)]
#[openapi(
    paths(list_routes, create_route, get_route, update_route, delete_route),
    components(schemas(RoutePage, RouteView, RouteSpec, Problem)),
    tags((name = "gateway", description = "API gateway routes"))
)]
struct AdminApi;

/// The OpenAPI description of [`router`].
pub fn openapi() -> utoipa::openapi::OpenApi {
    AdminApi::openapi()
}

/// The admin API router (absolute paths; merge it into the host's).
pub fn router(gateway: Gateway) -> axum::Router {
    axum::Router::new()
        .route("/v1/gateway/routes", get(list_routes).post(create_route))
        .route(
            "/v1/gateway/routes/{id}",
            get(get_route).put(update_route).delete(delete_route),
        )
        .method_not_allowed_fallback(jadugar_core::problem::method_not_allowed)
        .with_state(gateway)
}

fn admin(principal: &Principal) -> Result<(), Problem> {
    principal.require(ADMIN_PERMISSION)
}

fn parse_route(body: &Bytes) -> Result<RouteSpec, Problem> {
    serde_json::from_slice(body).map_err(|e| {
        Problem::validation(vec![FieldError::new(
            "body",
            format!("is not a valid route: {e}"),
        )])
    })
}

fn with_etag(status: StatusCode, view: RouteView) -> Response {
    let etag = HeaderValue::from_str(&format!("\"{}\"", view.revision)).ok();
    let mut res = (status, Json(view)).into_response();
    if let Some(etag) = etag {
        res.headers_mut().insert(header::ETAG, etag);
    }
    res
}

/// Lists routes.
#[utoipa::path(get, path = "/v1/gateway/routes", tag = "gateway", params(PageRequest),
    responses((status = 200, body = RoutePage), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn list_routes(
    State(gw): State<Gateway>,
    principal: Principal,
    QueryParams(page): QueryParams<PageRequest>,
) -> Result<Json<RoutePage>, Problem> {
    admin(&principal)?;
    let after: Option<String> = page.position(&gw.shared.cursor)?;
    let limit = page.limit() as usize;
    let all = gw.list_routes().await?;
    let start = match &after {
        Some(id) => match all.iter().position(|r| r.route.id == *id) {
            Some(i) => i + 1,
            // Deleted since the cursor was made (configuration routes
            // cannot be): stored routes are in id order, so the listing
            // goes on from where it would have been.
            None => all
                .iter()
                .position(|r| r.source == RouteSource::Store && r.route.id > *id)
                .unwrap_or(all.len()),
        },
        None => 0,
    };
    let mut items: Vec<RouteView> = all.into_iter().skip(start).take(limit + 1).collect();
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|r| gw.shared.cursor.encode(&r.route.id))
    } else {
        None
    };
    Ok(Json(RoutePage { items, next_cursor }))
}

/// Creates a route.
#[utoipa::path(post, path = "/v1/gateway/routes", tag = "gateway", request_body = RouteSpec,
    responses((status = 201, body = RouteView), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn create_route(
    State(gw): State<Gateway>,
    principal: Principal,
    body: Bytes,
) -> Result<Response, Problem> {
    admin(&principal)?;
    let route = parse_route(&body)?;
    let view = gw.create_route(route).await?;
    Ok(with_etag(StatusCode::CREATED, view))
}

/// Reads a route.
#[utoipa::path(get, path = "/v1/gateway/routes/{id}", tag = "gateway", params(("id" = String, Path)),
    responses((status = 200, body = RouteView), (status = 404, body = Problem)))]
async fn get_route(
    State(gw): State<Gateway>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    admin(&principal)?;
    Ok(with_etag(StatusCode::OK, gw.get_route(&id).await?))
}

/// Replaces a route.
#[utoipa::path(put, path = "/v1/gateway/routes/{id}", tag = "gateway", params(("id" = String, Path)), request_body = RouteSpec,
    responses((status = 200, body = RouteView), (status = 404, body = Problem), (status = 412, body = Problem), (status = 422, body = Problem)))]
async fn update_route(
    State(gw): State<Gateway>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    admin(&principal)?;
    let route = parse_route(&body)?;
    if route.id != id {
        return Err(Problem::validation(vec![FieldError::new(
            "id",
            "must match the id in the path",
        )]));
    }
    let view = gw.update_route(route, if_match_version(&headers)?).await?;
    Ok(with_etag(StatusCode::OK, view))
}

/// Removes a route.
#[utoipa::path(delete, path = "/v1/gateway/routes/{id}", tag = "gateway", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = Problem), (status = 412, body = Problem)))]
async fn delete_route(
    State(gw): State<Gateway>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, Problem> {
    admin(&principal)?;
    gw.delete_route(&id, if_match_version(&headers)?).await?;
    Ok(StatusCode::NO_CONTENT)
}
