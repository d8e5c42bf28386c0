//! The host with every component wired: one OpenAPI document, auth in
//! front of every API, the gateway as the fallback.
#![allow(clippy::unwrap_used)]

mod common;

use jadugar_host::config::Secret;

use common::{config_in, start};

const PASSWORD: &str = "correct horse battery staple";

#[tokio::test]
async fn every_component_is_mounted_behind_auth() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_in(dir.path());
    config.admin_password = Some(Secret::new(PASSWORD));
    let host = start(config).await;
    let client = reqwest::Client::new();

    // One document with the paths of the host and of every component.
    let doc: serde_json::Value = client
        .get(host.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for prefix in [
        "/healthz",
        "/v1/auth/",
        "/v1/registry/",
        "/v1/tracking/",
        "/v1/gateway/",
    ] {
        assert!(
            paths.keys().any(|p| p.starts_with(prefix)),
            "{prefix} missing from {:?}",
            paths.keys().collect::<Vec<_>>()
        );
    }
    // The docs page is served offline.
    let docs = client.get(host.url("/docs/")).send().await.unwrap();
    assert_eq!(docs.status(), 200);

    // Anonymous callers are refused by the components, with a challenge.
    let res = client
        .get(host.url("/v1/registry/services"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert!(res.headers().contains_key("www-authenticate"));

    // The bootstrapped admin logs in; the token opens every component.
    let token = &admin_token(&client, &host).await;
    for path in ["/v1/registry/services", "/v1/gateway/routes", "/v1/auth/me"] {
        let res = client
            .get(host.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{path}");
    }

    // Paths nobody owns go to the gateway, which has no route for them.
    let res = client.get(host.url("/shop/cart")).send().await.unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(res.headers()["content-type"], "application/problem+json");

    host.shutdown().await.unwrap();
}

/// Logs in as the bootstrapped admin.
async fn admin_token(client: &reqwest::Client, host: &common::Running) -> String {
    let tokens: serde_json::Value = client
        .post(host.url("/v1/auth/login"))
        .json(&serde_json::json!({"email": "admin@localhost", "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    tokens["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_gateway_proxies_to_instances_found_in_the_registry() {
    // An upstream service.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_port = upstream.local_addr().unwrap().port();
    let app = axum::Router::new().fallback(|uri: http::Uri| async move { format!("echo {uri}") });
    let upstream_task = tokio::spawn(async move { axum::serve(upstream, app).await });

    let dir = tempfile::tempdir().unwrap();
    let mut config = config_in(dir.path());
    config.admin_password = Some(Secret::new(PASSWORD));
    let host = start(config).await;
    let client = reqwest::Client::new();
    let token = admin_token(&client, &host).await;

    // Register it in the registry...
    let res = client
        .put(host.url("/v1/registry/services/echo/instances/echo-1"))
        .bearer_auth(&token)
        .json(&serde_json::json!({
            "address": {"scheme": "http", "host": "127.0.0.1", "port": upstream_port}
        }))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.text().await.unwrap());
    // ...and route /echo to the registry service through the gateway.
    let create_route = |route: serde_json::Value| {
        let request = client
            .post(host.url("/v1/gateway/routes"))
            .bearer_auth(&token)
            .json(&route);
        async move {
            let res = request.send().await.unwrap();
            assert!(res.status().is_success(), "{}", res.text().await.unwrap());
        }
    };
    create_route(serde_json::json!({
        "id": "echo",
        "path": "/echo",
        "path_match": "prefix",
        "upstream": {"service": "echo"}
    }))
    .await;

    let res = client.get(host.url("/echo/hello")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "echo /echo/hello");

    // Auth's layer wraps the gateway too: a route asking for a principal
    // refuses the anonymous caller and lets the admin's token through.
    create_route(serde_json::json!({
        "id": "private",
        "path": "/private",
        "path_match": "prefix",
        "auth": "authenticated",
        "upstream": {"service": "echo"}
    }))
    .await;
    let res = client.get(host.url("/private/x")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    let res = client
        .get(host.url("/private/x"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "echo /private/x");

    host.shutdown().await.unwrap();
    upstream_task.abort();
}

#[tokio::test]
async fn migrate_applies_every_component_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path());
    let first = jadugar_host::commands::migrate(&config).await.unwrap();
    assert!(first >= 4, "each component has migrations: {first}");
    let second = jadugar_host::commands::migrate(&config).await.unwrap();
    assert_eq!(first, second);
}

#[tokio::test]
async fn tracking_assignees_are_auth_users_who_may_read_tracking() {
    use jadugar_auth::service::NewUser;
    use jadugar_host::components::AuthDirectory;
    use jadugar_tracking::model::ProjectId;
    use jadugar_tracking::notify::{AssigneeDirectory, AssigneeStatus};

    let auth = jadugar_auth::AuthService::memory(jadugar_auth::Config::default())
        .await
        .unwrap();
    let new_user = |email: &str, roles: Vec<String>| NewUser {
        email: email.into(),
        display_name: email.into(),
        password: None,
        roles,
        must_change_password: false,
    };
    let admin = auth
        .create_user(None, new_user("ada@example.com", vec!["admin".into()]))
        .await
        .unwrap();
    let nobody = auth
        .create_user(None, new_user("bob@example.com", vec![]))
        .await
        .unwrap();
    let directory = AuthDirectory(auth);
    let project = ProjectId::new();
    assert_eq!(
        directory.check(&admin.id.to_string(), project).await,
        AssigneeStatus::Ok
    );
    assert_eq!(
        directory.check(&nobody.id.to_string(), project).await,
        AssigneeStatus::NoAccess
    );
    assert_eq!(
        directory
            .check(&ProjectId::new().to_string(), project)
            .await,
        AssigneeStatus::Unknown
    );
    assert_eq!(
        directory.check("not-a-user-id", project).await,
        AssigneeStatus::Unknown
    );
}
