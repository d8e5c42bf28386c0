//! One OpenAPI document for the platform and every upstream, and a docs
//! page that works offline.
//!
//! A route may name its upstream's OpenAPI document (`openapi_url`). The
//! merged document holds the platform's paths plus each upstream's paths
//! rewritten as the route exposes them (a `strip_prefix` is put back in
//! front; routes with `rewrite_path` cannot be inverted and are left out),
//! tagged with the route id. Upstream documents are fetched through the
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

/// Where an upstream path shows on the gateway, if it can be known.
pub fn exposed_path(route: &RouteSpec, upstream_path: &str) -> Option<String> {
    if route.transform.rewrite_path.is_some() {
        return None;
    }
    let exposed = match &route.transform.strip_prefix {
        Some(prefix) if upstream_path == "/" => prefix.clone(),
        Some(prefix) => format!("{prefix}{upstream_path}"),
        None => upstream_path.to_owned(),
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
}
