//! Routes with `rewrite_path` appear in the merged OpenAPI document at the
//! gateway path that reaches the documented upstream path.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;

#[tokio::test]
async fn rewritten_routes_are_documented_where_they_are_reachable() {
    // Serves its OpenAPI document and echoes every other request's path.
    let up = upstream(|req: hyper::Request<hyper::body::Incoming>| async move {
        let body = if req.uri().path() == "/openapi.json" {
            serde_json::json!({"openapi": "3.1.0", "info": {"title": "acc", "version": "1"},
            "paths": {
                "/v2/accounts/{accountId}": {"get": {"responses": {"200": {"description": "ok"}}}},
                "/v2/health": {"get": {"responses": {"200": {"description": "ok"}}}}
            }})
        } else {
            serde_json::json!({"path": req.uri().path()})
        };
        hyper::Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    })
    .await;
    let mut accounts = route("accounts", "/accounts/{id}", &[up]);
    accounts.transform.rewrite_path = Some("/v2/accounts/{param.id}".into());
    accounts.openapi_url = Some(format!("http://{up}/openapi.json"));
    let mut mine = route("mine", "/me/account", &[up]);
    mine.transform.rewrite_path = Some("/v2/accounts/{principal.subject}".into());
    mine.openapi_url = Some(format!("http://{up}/openapi.json"));
    let gw = gateway(vec![accounts, mine]).await;

    let app = jadugar_gateway::docs::router(gw.clone(), jadugar_gateway::http::openapi());
    let res = app
        .oneshot(
            http::Request::get("/openapi.json")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let doc: serde_json::Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    let documented = &paths["/accounts/{accountId}"]["get"];
    assert_eq!(documented["tags"][0], "accounts", "{doc}");
    // Not reachable through the route, and a rewrite that depends on the
    // caller: left out.
    assert!(!paths.contains_key("/v2/health") && !paths.contains_key("/accounts/{id}"));
    assert!(!paths.keys().any(|p| p.starts_with("/me")), "{doc}");

    // The documented path, filled in, reaches the documented upstream path.
    let (status, _, body) = call(&gw, get("/accounts/42")).await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["path"], "/v2/accounts/42");
}
