//! A small service that registers itself with the Jadugar registry, serves a
//! health endpoint the registry probes, and reads its configuration.
//!
//! ```text
//! REGISTRY_URL=http://127.0.0.1:8080 REGISTRY_TOKEN=jdg_... \
//!   cargo run -p jadugar-examples --bin registry_service
//! ```
//!
//! Environment: `REGISTRY_URL` (default `http://127.0.0.1:8080`),
//! `REGISTRY_TOKEN` (an API key with `registry:write` and `config:read`),
//! `SERVICE_NAME` (default `hello`), `INSTANCE_ID` (default
//! `<name>-<port>`), `CONFIG_NAMESPACE` (default `dev.<name>`), `BIND`
//! (default `127.0.0.1:0`) and `ADVERTISE_HOST` (default the bound IP).
//! The greeting comes from the config key `greeting` and follows changes
//! live. Ctrl-C deregisters and exits.

use std::net::SocketAddr;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use jadugar_registry::RegistryClient;
use jadugar_registry::client::ConfigWatch;
use jadugar_registry::model::{Address, CheckSpec, Registration};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

async fn greet(State(greeting): State<ConfigWatch>) -> String {
    match greeting.get() {
        Some(entry) => match entry.value.as_str() {
            Some(text) => format!("{text}\n"),
            None => format!("{}\n", entry.value),
        },
        None => "hello (no `greeting` configured)\n".to_owned(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let registry_url = env_or("REGISTRY_URL", "http://127.0.0.1:8080");
    let service = env_or("SERVICE_NAME", "hello");
    let namespace = env_or("CONFIG_NAMESPACE", &format!("dev.{service}"));
    let bind: SocketAddr = env_or("BIND", "127.0.0.1:0").parse().context("BIND")?;

    let mut client = RegistryClient::new(&registry_url)?;
    if let Ok(token) = std::env::var("REGISTRY_TOKEN") {
        client = client.with_token(token);
    }

    let listener = tokio::net::TcpListener::bind(bind).await?;
    let local = listener.local_addr()?;
    let host = env_or("ADVERTISE_HOST", &local.ip().to_string());
    let id = env_or("INSTANCE_ID", &format!("{service}-{}", local.port()));

    let greeting = client
        .watch_config(&namespace, "greeting")
        .await
        .context("reading configuration")?;
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/", get(greet))
        .with_state(greeting);

    let me = Registration::new(Address::new("http", host, local.port()))
        .with_tags(["example"])
        .with_metadata("version", env!("CARGO_PKG_VERSION"))
        .with_ttl_secs(15)
        .with_check(CheckSpec::http("/health"));
    let registration = client
        .register(&service, &id, me)
        .await
        .context("registering with the registry")?;
    tracing::info!(%local, service, id, "registered; serving");

    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    registration.deregister().await?;
    tracing::info!("deregistered; bye");
    Ok(())
}
