//! The gateway as a library, in front of two local upstreams, with a rate
//! limit and a transform. Run with `cargo run -p jadugar-examples --bin gateway_alone`.
//!
//! It starts two tiny axum upstreams, puts the gateway in front of them
//! (round robin, strip `/api`, add `x-gateway` upstream and `x-served-by`
//! downstream, 5 requests per 10 s per client IP), sends a few requests and
//! prints what came back, including the 429 once the limit is reached.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::HeaderMap;
use axum::routing::get;
use jadugar_core::StaticDiscovery;
use jadugar_gateway::model::{NameValue, RateKey, RateLimitSpec, RouteSpec};
use jadugar_gateway::{Config, Gateway};

async fn start_upstream(name: &'static str) -> anyhow::Result<SocketAddr> {
    let app = Router::new().route(
        "/{*path}",
        get(move |headers: HeaderMap, uri: axum::http::Uri| async move {
            let tag = headers
                .get("x-gateway")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned();
            format!("{name} saw {uri} (x-gateway: {tag})")
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter("warn,jadugar_gateway::access=info")
        .init();
    let a = start_upstream("upstream-a").await?;
    let b = start_upstream("upstream-b").await?;

    let mut route = RouteSpec::new(
        "api",
        "/api",
        [format!("http://{a}"), format!("http://{b}")],
    )
    .prefix();
    route.transform.strip_prefix = Some("/api".into());
    route.transform.request_headers.set.push(NameValue {
        name: "x-gateway".into(),
        value: "jadugar ({client_ip})".into(),
    });
    route.transform.response_headers.set.push(NameValue {
        name: "x-served-by".into(),
        value: "{route.id}".into(),
    });
    route.rate_limit = Some(RateLimitSpec {
        key: RateKey::Ip,
        requests: 5,
        per_secs: 10,
        burst: None,
        shared: false,
        fail_open: true,
    });
    let config = Config {
        routes: vec![route],
        ..Config::default()
    };
    let gateway = Gateway::builder(config)
        .discovery(Arc::new(StaticDiscovery::new()))
        .build()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let cancel = shutdown_signal();
    let server = tokio::spawn({
        let cancel = cancel.clone();
        jadugar_gateway::serve(listener, gateway, async move { cancel.notified().await })
    });
    println!("gateway on http://{addr}");

    let client = reqwest::Client::new();
    for i in 1..=7 {
        let res = client
            .get(format!("http://{addr}/api/items/{i}"))
            .send()
            .await?;
        let status = res.status();
        let limit = res
            .headers()
            .get("ratelimit-remaining")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        let served = res
            .headers()
            .get("x-served-by")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        let body = res.text().await?;
        println!("{i}: {status} remaining={limit} served-by={served} {body}");
    }
    cancel.notify_one();
    server.await??;
    Ok(())
}

/// A one-shot shutdown signal.
fn shutdown_signal() -> Arc<tokio::sync::Notify> {
    Arc::new(tokio::sync::Notify::new())
}
