//! RegistryClient against a real registry over HTTP.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use axum::extract::Request;
use axum::middleware::Next;
use common::{ALL, eventually, principal, sealer};
use jadugar_core::{Discovery, SystemClock};
use jadugar_registry::model::{Address, ConfigPut, Registration, ValueKind};
use jadugar_registry::{Config, Registry, RegistryClient};
use serde_json::json;

async fn serve(registry: Registry) -> String {
    let app = jadugar_registry::http::router(registry).layer(axum::middleware::from_fn(
        |mut request: Request, next: Next| async move {
            let ok = request
                .headers()
                .get("authorization")
                .is_some_and(|v| v == "Bearer test-key");
            if ok {
                request.extensions_mut().insert(principal(ALL));
            }
            next.run(request).await
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn put(value: serde_json::Value) -> ConfigPut {
    ConfigPut {
        value,
        kind: ValueKind::Json,
        secret: false,
        expected_version: None,
    }
}

#[tokio::test]
async fn register_heartbeat_reregister_discover_config_and_deregister() {
    let registry = Registry::in_memory(Config::default(), SystemClock::shared(), sealer())
        .await
        .unwrap();
    let base = serve(registry.clone()).await;
    let client = RegistryClient::new(&base)
        .unwrap()
        .with_token("test-key")
        .with_wait_secs(5);

    let unauthorized = RegistryClient::new(&base).unwrap();
    let err = unauthorized.instances("web", None).await.unwrap_err();
    assert_eq!(err.status(), Some(401));

    let me = Registration::new(Address::new("http", "10.0.0.9", 3000)).with_ttl_secs(1);
    let registration = client.register("web", "w-1", me).await.unwrap();
    assert_eq!(registry.endpoints("web", &[]).len(), 1);

    // The registry forgets it: the next heartbeat registers again.
    registry.deregister("web", "w-1").await.unwrap();
    assert!(
        eventually(Duration::from_secs(2), || registry
            .endpoints("web", &[])
            .len()
            == 1)
        .await
    );

    // Discovery cache kept fresh by watch.
    let mut peers = client.discovery("ledger").await.unwrap();
    assert!(peers.instances().is_empty());
    registry
        .register(
            "ledger",
            "l-1",
            Registration::new(Address::new("http", "10.0.0.10", 80)),
        )
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(2), peers.changed())
        .await
        .unwrap();
    assert_eq!(peers.instances().len(), 1);

    // Config watch.
    registry
        .config_put("prod.web", "limits", put(json!({"rps": 10})), None)
        .await
        .unwrap();
    let mut limits = client.watch_config("prod.web", "limits").await.unwrap();
    assert_eq!(limits.get().unwrap().value, json!({"rps": 10}));
    registry
        .config_put("prod.web", "limits", put(json!({"rps": 20})), None)
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(2), limits.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.unwrap().value, json!({"rps": 20}));

    // Deregister explicitly, then on drop.
    registration.deregister().await.unwrap();
    assert!(registry.endpoints("web", &[]).is_empty());
    let again = client
        .register(
            "web",
            "w-2",
            Registration::new(Address::new("http", "10.0.0.9", 3001)),
        )
        .await
        .unwrap();
    assert_eq!(registry.endpoints("web", &[]).len(), 1);
    drop(again);
    assert!(
        eventually(Duration::from_secs(2), || registry
            .endpoints("web", &[])
            .is_empty())
        .await
    );
}
