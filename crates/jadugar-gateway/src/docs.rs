//! One OpenAPI document for the platform and every upstream, and a docs
//! page that works offline.
//!
//! A route may name its upstream's OpenAPI document (`openapi_url`). The
//! merged document holds the platform's paths plus each upstream's paths
//! rewritten as the route exposes them, tagged with the route id:
//!
//! - a `strip_prefix` is put back in front;
//! - a `rewrite_path` is inverted: the upstream path is matched against the
//!   template and the captured values are put in the route's path pattern
//!   (`/accounts/{id}` rewritten to `/v2/accounts/{param.id}` shows the
//!   upstream's `/v2/accounts/{accountId}` as `/accounts/{accountId}`;
//!   a prefix route's `{param.__rest}` becomes the part below its path);
//! - upstream paths a route cannot reach (outside its prefix, or not
//!   fitting its rewrite template) are left out.
//!
//! A rewrite is left out as a whole when it cannot be inverted: when it
//! uses a placeholder other than `{param.*}` and `{route.id}` (a principal,
//! header, request id or client address make the upstream path depend on
//! more than the gateway path), when a route parameter appears in it not
//! exactly once (dropped: many gateway paths per upstream path; repeated:
//! ambiguous), or when two parameters are not separated by literal text.
//! A single-segment parameter never captures a `/`; where a literal occurs
//! more than once, a parameter ends at its first occurrence. Upstream documents are fetched through the
//! outbound address policy with a timeout and a size limit, and cached.
//!
//! [`router`] serves `/openapi.json` and `/docs` (Swagger UI, its assets
//! embedded from the `swagger-ui-dist` crate: nothing is fetched from the
//! internet).
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let gateway = jadugar_gateway::Gateway::builder(Default::default()).build().await.unwrap();
//! let platform = jadugar_gateway::http::openapi();
//! let merged = gateway.openapi_document(&platform).await;
//! assert!(merged["paths"]["/v1/gateway/routes"].is_object());
//! let _app: axum::Router = jadugar_gateway::docs::router(gateway, platform);
//! # });
//! ```

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::routing::get;
use jadugar_core::outbound::AddressPolicy;
use serde_json::{Map, Value};

use crate::model::{PathMatch, RouteSpec};
use crate::{Config, Gateway};

/// Largest upstream document read.
const MAX_DOC_BYTES: usize = 8 << 20;

pub(crate) struct DocsCache {
    client: Option<reqwest::Client>,
    ttl: Duration,
    cache: tokio::sync::Mutex<HashMap<String, (Instant, Option<Value>)>>,
}

impl DocsCache {
    pub(crate) fn new(policy: AddressPolicy, config: &Config) -> Self {
        Self {
            client: policy
                .http_client(Duration::from_millis(config.docs_timeout_ms))
                .ok(),
            ttl: Duration::from_secs(config.docs_cache_secs),
            cache: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    async fn fetch(&self, url: &str) -> Option<Value> {
        if let Some((at, doc)) = self.cache.lock().await.get(url)
            && at.elapsed() < self.ttl
        {
            return doc.clone();
        }
        let doc = self.download(url).await;
        self.cache
            .lock()
            .await
            .insert(url.to_owned(), (Instant::now(), doc.clone()));
        doc
    }

    async fn download(&self, url: &str) -> Option<Value> {
        let client = self.client.as_ref()?;
        let mut res = client.get(url).send().await.ok()?.error_for_status().ok()?;
        let mut body = Vec::new();
        while let Some(chunk) = res.chunk().await.ok()? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_DOC_BYTES {
                tracing::warn!(url, "upstream OpenAPI document too large");
                return None;
            }
        }
        serde_json::from_slice(&body)
            .map_err(|e| tracing::warn!(url, error = %e, "upstream OpenAPI document is not JSON"))
            .ok()
    }
}

/// Where an upstream path shows on the gateway, if it can be known: the
/// route's `strip_prefix` put back in front, or the path mapped back
/// through the inverse of its `rewrite_path` (see the
/// [module docs](self)); `None` for a path the route does not reach or a
/// rewrite that cannot be inverted.
///
/// ```
/// use jadugar_gateway::docs::exposed_path;
/// use jadugar_gateway::model::RouteSpec;
///
/// let mut r = RouteSpec::new("acc", "/accounts/{id}", ["http://127.0.0.1:1"]);
/// r.transform.rewrite_path = Some("/v2/accounts/{param.id}".into());
/// assert_eq!(exposed_path(&r, "/v2/accounts/{accountId}").as_deref(), Some("/accounts/{accountId}"));
/// assert_eq!(exposed_path(&r, "/v2/users/{id}"), None);
/// ```
pub fn exposed_path(route: &RouteSpec, upstream_path: &str) -> Option<String> {
    let exposed = match (&route.transform.rewrite_path, &route.transform.strip_prefix) {
        (Some(rewrite), _) => return invert_rewrite(route, rewrite, upstream_path),
        (None, Some(prefix)) if upstream_path == "/" => prefix.clone(),
        (None, Some(prefix)) => format!("{prefix}{upstream_path}"),
        (None, None) => upstream_path.to_owned(),
    };
    let base = route.path.trim_end_matches('/');
    let inside = route.path.contains('{')
        || match route.path_match {
            PathMatch::Exact => exposed == route.path,
            PathMatch::Prefix => {
                base.is_empty() || exposed == base || exposed.starts_with(&format!("{base}/"))
            }
        };
    inside.then_some(exposed)
}

/// A piece of a `rewrite_path` template, for inversion.
#[derive(Debug, PartialEq)]
enum Piece<'a> {
    Literal(String),
    Param(&'a str),
}

/// The pieces of `rewrite`, if the rewrite can be inverted: only
/// `{param.*}` and `{route.id}` placeholders, each of the route's
/// parameters exactly once (the prefix remainder `__rest` at most once, on
/// prefix routes only), and a literal between any two parameters.
fn invertible_pieces<'a>(route: &RouteSpec, rewrite: &'a str) -> Option<Vec<Piece<'a>>> {
    let mut pieces: Vec<Piece<'a>> = Vec::new();
    let mut literal = String::new();
    let mut rest = rewrite;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix("{{") {
            literal.push('{');
            rest = after;
        } else if let Some(after) = rest.strip_prefix("}}") {
            literal.push('}');
            rest = after;
        } else if c == '{' {
            let end = rest.find('}')?;
            let name = &rest[1..end];
            rest = &rest[end + 1..];
            if name == "route.id" {
                literal.push_str(&route.id);
                continue;
            }
            // Anything else (principal, header, request id, client ip)
            // depends on more than the path: not invertible.
            let param = name.strip_prefix("param.")?;
            if !literal.is_empty() {
                pieces.push(Piece::Literal(std::mem::take(&mut literal)));
            }
            if matches!(pieces.last(), Some(Piece::Param(_))) {
                return None;
            }
            pieces.push(Piece::Param(param));
        } else {
            literal.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    if !literal.is_empty() {
        pieces.push(Piece::Literal(literal));
    }
    let used = |name: &str| {
        pieces
            .iter()
            .filter(|p| matches!(p, Piece::Param(n) if *n == name))
            .count()
    };
    let route_params = crate::router::pattern_params(&route.path);
    for name in &route_params {
        let count = used(name);
        let ok = if name == crate::router::REST_PARAM {
            count == 0 || (count == 1 && route.path_match == PathMatch::Prefix)
        } else {
            count == 1
        };
        if !ok {
            return None;
        }
    }
    // Every placeholder names a route parameter (validation checks it too).
    let known = pieces
        .iter()
        .all(|p| !matches!(p, Piece::Param(n) if !route_params.iter().any(|r| r == n)));
    known.then_some(pieces)
}

/// The gateway path whose rewrite is `upstream`, if there is one.
fn invert_rewrite(route: &RouteSpec, rewrite: &str, upstream: &str) -> Option<String> {
    let pieces = invertible_pieces(route, rewrite)?;
    let catch_alls = catch_all_params(&route.path);
    let mut captures: HashMap<&str, &str> = HashMap::new();
    let mut rest = upstream;
    for (i, piece) in pieces.iter().enumerate() {
        match piece {
            Piece::Literal(l) => rest = rest.strip_prefix(l.as_str())?,
            Piece::Param(name) => {
                let capture = match pieces.get(i + 1) {
                    None => std::mem::take(&mut rest),
                    // The last literal ends the path.
                    Some(Piece::Literal(l)) if i + 2 == pieces.len() => {
                        let cut = rest.strip_suffix(l.as_str())?;
                        rest = &rest[cut.len()..];
                        cut
                    }
                    // Otherwise the capture ends at the literal's first
                    // occurrence.
                    Some(Piece::Literal(l)) => {
                        let end = rest.find(l.as_str())?;
                        let cut = &rest[..end];
                        rest = &rest[end..];
                        cut
                    }
                    Some(Piece::Param(_)) => return None,
                };
                let fits = if *name == crate::router::REST_PARAM {
                    true
                } else if catch_alls.contains(name) {
                    !capture.is_empty()
                } else {
                    !capture.is_empty() && !capture.contains('/')
                };
                if !fits {
                    return None;
                }
                captures.insert(name, capture);
            }
        }
    }
    if !rest.is_empty() {
        return None;
    }
    let mut exposed = String::with_capacity(route.path.len() + upstream.len());
    let mut path = route.path.as_str();
    while let Some(start) = path.find('{') {
        let end = start + path[start..].find('}')?;
        let name = path[start + 1..end].trim_start_matches('*');
        exposed.push_str(&path[..start]);
        exposed.push_str(captures.get(name)?);
        path = &path[end + 1..];
    }
    exposed.push_str(path);
    match captures.get(crate::router::REST_PARAM) {
        Some(tail) if !tail.is_empty() => {
            let tail = tail.trim_start_matches('/');
            Some(format!("{}/{tail}", exposed.trim_end_matches('/')))
        }
        _ => Some(exposed),
    }
}

/// The names of `{*name}` parameters in a route pattern.
fn catch_all_params(path: &str) -> Vec<&str> {
    path.split('{')
        .skip(1)
        .filter_map(|s| s.strip_prefix('*'))
        .filter_map(|s| s.split('}').next())
        .collect()
}

impl Gateway {
    /// The merged OpenAPI document; see the [module docs](crate::docs).
    pub async fn openapi_document(&self, platform: &utoipa::openapi::OpenApi) -> Value {
        let mut merged =
            serde_json::to_value(platform).unwrap_or_else(|_| Value::Object(Map::new()));
        let specs: Vec<RouteSpec> = self
            .shared
            .snapshot
            .load()
            .specs()
            .filter(|r| r.openapi_url.is_some())
            .cloned()
            .collect();
        for route in &specs {
            let Some(url) = &route.openapi_url else {
                continue;
            };
            let Some(doc) = self.shared.docs.fetch(url).await else {
                continue;
            };
            merge(&mut merged, route, &doc);
        }
        merged
    }
}

fn merge(merged: &mut Value, route: &RouteSpec, doc: &Value) {
    let Some(root) = merged.as_object_mut() else {
        return;
    };
    if let Some(paths) = doc.get("paths").and_then(Value::as_object) {
        let target = root
            .entry("paths")
            .or_insert_with(|| Value::Object(Map::new()));
        for (path, item) in paths {
            let Some(exposed) = exposed_path(route, path) else {
                continue;
            };
            let mut item = item.clone();
            if let Some(ops) = item.as_object_mut() {
                for op in ops.values_mut().filter_map(Value::as_object_mut) {
                    let tags = op.entry("tags").or_insert_with(|| Value::Array(Vec::new()));
                    if let Some(tags) = tags.as_array_mut() {
                        tags.push(Value::String(route.id.clone()));
                    }
                }
            }
            if let Some(t) = target.as_object_mut() {
                t.entry(exposed).or_insert(item);
            }
        }
    }
    if let Some(schemas) = doc
        .pointer("/components/schemas")
        .and_then(Value::as_object)
    {
        let components = root
            .entry("components")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(c) = components.as_object_mut() {
            let target = c
                .entry("schemas")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Some(t) = target.as_object_mut() {
                for (name, schema) in schemas {
                    t.entry(name.clone()).or_insert_with(|| schema.clone());
                }
            }
        }
    }
}

#[derive(Clone)]
struct DocsState {
    gateway: Gateway,
    platform: std::sync::Arc<utoipa::openapi::OpenApi>,
}

/// Serves `/openapi.json` (the merged document) and `/docs` (Swagger UI,
/// offline).
pub fn router(gateway: Gateway, platform: utoipa::openapi::OpenApi) -> axum::Router {
    let state = DocsState {
        gateway,
        platform: std::sync::Arc::new(platform),
    };
    let openapi = axum::Router::new()
        .route("/openapi.json", get(openapi_json))
        .with_state(state);
    let ui = swagger_ui_dist::generate_routes(swagger_ui_dist::ApiDefinition {
        uri_prefix: "/docs",
        api_definition: swagger_ui_dist::OpenApiSource::Uri("/openapi.json"),
        title: Some("Jadugar API"),
    });
    openapi.merge(ui)
}

async fn openapi_json(State(state): State<DocsState>) -> Json<Value> {
    Json(state.gateway.openapi_document(&state.platform).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_rewritten_as_exposed() {
        let mut r = RouteSpec::new("billing", "/billing", ["http://127.0.0.1:1"]).prefix();
        r.transform.strip_prefix = Some("/billing".into());
        assert_eq!(
            exposed_path(&r, "/invoices/{id}").as_deref(),
            Some("/billing/invoices/{id}")
        );
        assert_eq!(exposed_path(&r, "/").as_deref(), Some("/billing"));
        let plain = RouteSpec::new("api", "/api", ["http://127.0.0.1:1"]).prefix();
        assert_eq!(exposed_path(&plain, "/api/x").as_deref(), Some("/api/x"));
        assert_eq!(exposed_path(&plain, "/other"), None);
        let mut doc = serde_json::json!({"paths": {}});
        merge(
            &mut doc,
            &r,
            &serde_json::json!({
                "paths": {"/invoices": {"get": {"responses": {}}}},
                "components": {"schemas": {"Invoice": {"type": "object"}}}
            }),
        );
        assert_eq!(
            doc["paths"]["/billing/invoices"]["get"]["tags"][0],
            "billing"
        );
        assert!(doc["components"]["schemas"]["Invoice"].is_object());
    }

    fn rewritten(path: &str, rewrite: &str) -> RouteSpec {
        let mut r = RouteSpec::new("rw", path, ["http://127.0.0.1:1"]);
        r.transform.rewrite_path = Some(rewrite.into());
        r
    }

    #[test]
    fn rewrites_are_inverted_where_they_can_be() {
        let r = rewritten("/accounts/{id}", "/v2/accounts/{param.id}");
        assert_eq!(
            exposed_path(&r, "/v2/accounts/{accountId}").as_deref(),
            Some("/accounts/{accountId}")
        );
        assert_eq!(exposed_path(&r, "/v2/accounts/{a}/x"), None);
        assert_eq!(exposed_path(&r, "/v1/accounts/{a}"), None);

        // Parameters in another order, with a suffix literal.
        let r = rewritten(
            "/orgs/{org}/repos/{repo}",
            "/r/{param.repo}/o/{param.org}.json",
        );
        assert_eq!(
            exposed_path(&r, "/r/{name}/o/{owner}.json").as_deref(),
            Some("/orgs/{owner}/repos/{name}")
        );
        assert_eq!(exposed_path(&r, "/r/{name}/o/{owner}"), None);

        // A prefix route's remainder.
        let mut r = rewritten("/api", "/internal/{param.__rest}");
        r.path_match = PathMatch::Prefix;
        assert_eq!(
            exposed_path(&r, "/internal/users/{id}").as_deref(),
            Some("/api/users/{id}")
        );
        assert_eq!(exposed_path(&r, "/internal/").as_deref(), Some("/api"));
        assert_eq!(exposed_path(&r, "/elsewhere/users"), None);

        // A catch-all parameter spans segments.
        let r = rewritten("/files/{*path}", "/store/{param.path}");
        assert_eq!(
            exposed_path(&r, "/store/a/b/c").as_deref(),
            Some("/files/a/b/c")
        );

        // A fixed rewrite: one upstream path, the route's own.
        let r = rewritten("/health", "/internal/{route.id}/status");
        assert_eq!(
            exposed_path(&r, "/internal/rw/status").as_deref(),
            Some("/health")
        );
        assert_eq!(exposed_path(&r, "/internal/other/status"), None);
    }

    #[test]
    fn rewrites_that_cannot_be_inverted_are_left_out() {
        for (path, rewrite, upstream) in [
            // Depends on the caller.
            ("/me", "/users/{principal.subject}", "/users/{id}"),
            ("/h", "/by/{header.x-tenant}", "/by/t"),
            // A parameter dropped or repeated.
            ("/a/{id}", "/static", "/static"),
            ("/a/{id}", "/x/{param.id}/{param.id}", "/x/1/1"),
            // Two parameters with nothing between them.
            ("/a/{x}/{y}", "/b/{param.x}{param.y}", "/b/12"),
        ] {
            let r = rewritten(path, rewrite);
            assert_eq!(exposed_path(&r, upstream), None, "{rewrite}");
        }
    }

    #[test]
    fn merged_document_holds_rewritten_routes() {
        let r = rewritten("/accounts/{id}", "/v2/accounts/{param.id}");
        let mut doc = serde_json::json!({"paths": {}});
        merge(
            &mut doc,
            &r,
            &serde_json::json!({"paths": {
                "/v2/accounts/{accountId}": {"get": {"responses": {}}},
                "/v2/admin": {"get": {"responses": {}}}
            }}),
        );
        let paths = doc["paths"].as_object().unwrap();
        assert_eq!(paths.len(), 1, "{paths:?}");
        assert_eq!(paths["/accounts/{accountId}"]["get"]["tags"][0], "rw");
    }
}
