//! Shared helpers of the integration tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use jadugar_core::{MasterKey, Principal, PrincipalKind, Sealer};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower::ServiceExt;

pub fn sealer() -> Sealer {
    Sealer::new(MasterKey::generate("test"), [])
}

pub fn principal(permissions: &[&str]) -> Principal {
    Principal::new("tester", PrincipalKind::User).with_permissions(permissions.iter().copied())
}

pub const ALL: &[&str] = &["registry:*", "config:*"];

/// Sends one request through the router as a caller with `permissions`
/// (`None`: unauthenticated).
pub async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    permissions: Option<&[&str]>,
    body: Option<Value>,
) -> (StatusCode, HeaderMap, Value) {
    call_with(app, method, uri, permissions, body, &[]).await
}

pub async fn call_with(
    app: &Router,
    method: &str,
    uri: &str,
    permissions: Option<&[&str]>,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Value) {
    let mut builder = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let body = match body {
        Some(v) => {
            builder = builder.header("content-type", "application/json");
            Body::from(serde_json::to_vec(&v).unwrap())
        }
        None => Body::empty(),
    };
    let mut request = builder.body(body).unwrap();
    if let Some(p) = permissions {
        request.extensions_mut().insert(principal(p));
    }
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    (status, headers, value)
}

/// A tiny HTTP server answering every request with a fixed response and
/// closing the connection; counts requests.
pub struct TestServer {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    response: String,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(response: impl Into<String>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut server = Self {
            addr,
            hits: Arc::new(AtomicUsize::new(0)),
            response: response.into(),
            task: None,
        };
        server.serve(listener);
        server
    }

    pub fn ok() -> String {
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok".to_owned()
    }

    pub fn redirect(location: &str) -> String {
        format!(
            "HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )
    }

    fn serve(&mut self, listener: TcpListener) {
        let hits = self.hits.clone();
        let response = self.response.clone();
        self.task = Some(tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let hits = hits.clone();
                let response = response.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 2048];
                    let mut seen = Vec::new();
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
                            .await
                        {
                            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
                            _ => break,
                        }
                    }
                    hits.fetch_add(1, Ordering::SeqCst);
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        }));
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stops accepting: connections are refused until `restart`.
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    pub async fn restart(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Polls `cond` every 20 ms for up to `within`; returns whether it held.
pub async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
