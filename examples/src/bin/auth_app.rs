//! An axum app that adds only `jadugar-auth`: the memory store, the auth API,
//! `AuthLayer` on every route and `require` on its own routes.
//!
//! ```text
//! cargo run -p jadugar-examples --bin auth_app
//! # prints an admin password and an API key, then listens on 127.0.0.1:3000
//! curl -s localhost:3000/hello                                  # anonymous
//! curl -s -H "x-api-key: $KEY" localhost:3000/reports           # 200
//! curl -s -XPOST localhost:3000/v1/auth/login -H 'content-type: application/json' \
//!      -d '{"email":"admin@localhost","password":"..."}'          # tokens
//! ```

use std::net::SocketAddr;

use axum::Router;
use axum::routing::{get, post};
use jadugar_auth::layer::{AuthLayer, require};
use jadugar_auth::service::CancellationToken;
use jadugar_auth::service::{NewApiKey, NewUser};
use jadugar_auth::{AuthService, Config};
use jadugar_core::Principal;

async fn hello(principal: Option<Principal>) -> String {
    match principal {
        Some(p) => format!("hello, {} ({:?})\n", p.subject, p.kind),
        None => "hello, anonymous\n".to_owned(),
    }
}

async fn reports(principal: Principal) -> String {
    format!("quarterly reports for {}\n", principal.subject)
}

async fn publish(principal: Principal) -> String {
    format!("published by {}\n", principal.subject)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let config = Config {
        issuer: "http://127.0.0.1:3000".into(),
        // Plain-HTTP localhost: cookies without `Secure` and `__Host-`.
        cookie_secure: false,
        ..Config::default()
    };
    let auth = AuthService::memory(config).await?;

    let admin = auth
        .bootstrap(std::env::var("JADUGAR_ADMIN_PASSWORD").ok())
        .await?
        .ok_or_else(|| anyhow::anyhow!("the memory store starts empty"))?;
    if let Some(password) = &admin.generated_password {
        println!(
            "admin: {} / one-time password {password} (change it at first login)",
            admin.email
        );
    }
    auth.put_role(
        &Principal::new("example", jadugar_core::PrincipalKind::Service).with_permissions(["*"]),
        jadugar_auth::service::RoleInput {
            name: "analyst".into(),
            description: "reads reports".into(),
            permissions: vec!["reports:read".into()],
        },
    )
    .await?;
    let analyst = auth
        .create_user(
            None,
            NewUser {
                email: "analyst@example.com".into(),
                display_name: "Analyst".into(),
                password: None,
                roles: vec!["analyst".into()],
                must_change_password: false,
            },
        )
        .await?;
    let key = auth
        .create_api_key(
            None,
            NewApiKey {
                name: "example".into(),
                scopes: vec![],
                expires_in_secs: None,
                owner: Some(analyst.id),
            },
        )
        .await?;
    println!("analyst API key (shown once): {}", key.secret);

    let cancel = CancellationToken::new();
    let tasks = auth.spawn_background(cancel.clone());

    let app = Router::new()
        .route(
            "/reports",
            get(reports).route_layer(require("reports:read")),
        )
        .route(
            "/reports/publish",
            post(publish).route_layer(require("reports:write")),
        )
        .route("/hello", get(hello))
        .merge(jadugar_auth::http::router(auth.clone()))
        .layer(AuthLayer::new(auth));

    let addr: SocketAddr = std::env::var("AUTH_APP_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:3000".into())
        .parse()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let shutdown = cancel.clone();
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = tokio::signal::ctrl_c().await;
        shutdown.cancel();
    })
    .await?;
    cancel.cancel();
    for task in tasks {
        let _ = task.await;
    }
    Ok(())
}
