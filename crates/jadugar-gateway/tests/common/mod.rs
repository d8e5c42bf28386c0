#![allow(clippy::unwrap_used, dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use jadugar_gateway::model::RouteSpec;
use jadugar_gateway::{Config, Gateway};

/// Starts an HTTP/1+2 server answering with `handler`; returns its address.
pub async fn upstream<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let h = handler.clone();
                    async move { Ok::<_, Infallible>(h(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// An upstream echoing method, path and headers as JSON, counting requests.
pub async fn echo(name: &'static str) -> (SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let addr = upstream(move |req: Request<Incoming>| {
        let h = h.clone();
        async move {
            h.fetch_add(1, Ordering::SeqCst);
            let headers: serde_json::Map<String, serde_json::Value> = req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        serde_json::Value::String(v.to_str().unwrap_or("").to_owned()),
                    )
                })
                .collect();
            let body = serde_json::json!({
                "upstream": name,
                "method": req.method().as_str(),
                "uri": req.uri().to_string(),
                "headers": headers,
            });
            Response::builder()
                .header("content-type", "application/json")
                .header("x-upstream", name)
                .header("keep-alive", "timeout=5")
                .body(Full::new(Bytes::from(body.to_string())))
                .unwrap()
        }
    })
    .await;
    (addr, hits)
}

/// An upstream always answering `status`, counting requests.
pub async fn fixed(status: u16) -> (SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let addr = upstream(move |_req| {
        let h = h.clone();
        async move {
            h.fetch_add(1, Ordering::SeqCst);
            Response::builder()
                .status(status)
                .body(Full::new(Bytes::from_static(b"x")))
                .unwrap()
        }
    })
    .await;
    (addr, hits)
}

pub fn route(id: &str, path: &str, addrs: &[SocketAddr]) -> RouteSpec {
    RouteSpec::new(id, path, addrs.iter().map(|a| format!("http://{a}")))
}

pub async fn gateway(routes: Vec<RouteSpec>) -> Gateway {
    let config = Config {
        routes,
        access_log: false,
        ..Config::default()
    };
    Gateway::builder(config).build().await.unwrap()
}

/// Serves the gateway on an ephemeral port.
pub async fn serve(gateway: Gateway) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(jadugar_gateway::serve(
        listener,
        gateway,
        std::future::pending(),
    ));
    addr
}

/// Sends a request straight into the gateway service.
pub async fn call(gw: &Gateway, req: Request<Full<Bytes>>) -> (u16, http::HeaderMap, Bytes) {
    let res = gw.handle(req).await;
    let status = res.status().as_u16();
    let (parts, body) = res.into_parts();
    (
        status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

pub fn get(uri: &str) -> Request<Full<Bytes>> {
    let mut req = Request::get(uri).body(Full::new(Bytes::new())).unwrap();
    req.extensions_mut().insert(jadugar_gateway::ClientAddr(
        "10.9.8.7:5555".parse().unwrap(),
    ));
    req
}

pub fn json(body: &Bytes) -> serde_json::Value {
    serde_json::from_slice(body).unwrap()
}
