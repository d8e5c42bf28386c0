#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};

static CHUNK: [u8; 256 * 1024] = [7u8; 256 * 1024];
const GIB: u64 = 1 << 30;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse()
                    .unwrap_or(0)
            })
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_body_streams_through_with_flat_memory() {
    let received = Arc::new(AtomicU64::new(0));
    let peak_chunk = Arc::new(AtomicU64::new(0));
    let (r, p) = (received.clone(), peak_chunk.clone());
    let up = upstream(move |req: hyper::Request<hyper::body::Incoming>| {
        let (r, p) = (r.clone(), p.clone());
        async move {
            let mut body = req.into_body();
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.unwrap().into_data() {
                    r.fetch_add(data.len() as u64, Ordering::Relaxed);
                    p.fetch_max(data.len() as u64, Ordering::Relaxed);
                }
            }
            hyper::Response::new(Full::new(Bytes::from(
                r.load(Ordering::Relaxed).to_string(),
            )))
        }
    })
    .await;
    let gw = serve(gateway(vec![route("up", "/upload", &[up])]).await).await;
    let before = rss_kib();
    let chunks = (GIB / CHUNK.len() as u64) as usize;
    let stream = futures_util::stream::iter(
        (0..chunks).map(|_| Ok::<_, std::io::Error>(Bytes::from_static(&CHUNK))),
    );
    let client = reqwest::Client::new();
    let res = client
        .post(format!("http://{gw}/upload"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), GIB.to_string());
    assert_eq!(received.load(Ordering::Relaxed), GIB);
    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    assert!(
        grown_mib < 64,
        "memory grew by {grown_mib} MiB while streaming 1 GiB"
    );
    assert!(peak_chunk.load(Ordering::Relaxed) <= 4 << 20);
}

#[tokio::test]
async fn websocket_echo_through_the_gateway() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        ws.send(msg).await.unwrap();
                    }
                }
            });
        }
    });
    let gw = serve(gateway(vec![route("ws", "/ws", &[up])]).await).await;
    let (mut ws, res) = tokio_tungstenite::connect_async(format!("ws://{gw}/ws"))
        .await
        .unwrap();
    assert_eq!(res.status(), 101);
    for text in ["hello", "through", "the gateway"] {
        ws.send(tokio_tungstenite::tungstenite::Message::text(text))
            .await
            .unwrap();
        let echoed = ws.next().await.unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn http2_clients_and_upstreams() {
    let (up, _) = echo("h2").await;
    let mut r = route("h2", "/h2", &[up]);
    r.upstream.http2 = true;
    let gw = serve(gateway(vec![r]).await).await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let res = client.get(format!("http://{gw}/h2")).send().await.unwrap();
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(res.status(), 200);
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["upstream"], "h2");
}
