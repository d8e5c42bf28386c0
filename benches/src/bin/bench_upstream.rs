//! The upstream of the load benchmark: a small, fast hyper 1 server.
//!
//! It answers every request with a fixed body: 64 KiB when the path ends in
//! `/64k`, 1 KiB otherwise. It speaks HTTP/1.1 and HTTP/2 (h2c, prior
//! knowledge) on the same port. It counts the TCP connections it accepted and
//! the requests it answered, and reports them at `GET /stats` as
//! `{"connections":N,"requests":M}` so the load harness can prove that a proxy
//! reuses its upstream connections. `/stats` itself is not counted.
//!
//! It runs on one thread (tokio `current_thread`): the harness pins it to the
//! core it shares with the load generator.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use clap::Parser;
use http::header::{CONTENT_TYPE, HeaderValue};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// 1 KiB response body.
static BODY_1K: [u8; 1024] = [b'a'; 1024];
/// 64 KiB response body.
static BODY_64K: [u8; 64 * 1024] = [b'b'; 64 * 1024];

/// Command line of the upstream.
#[derive(Debug, Parser)]
#[command(about = "Fixed-response HTTP/1.1 + h2c upstream for the Jadugar load benchmark")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18080")]
    listen: SocketAddr,
}

/// Counters exposed at `/stats`.
#[derive(Debug, Default)]
struct Stats {
    connections: AtomicU64,
    requests: AtomicU64,
}

fn answer(stats: &Stats, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let (body, content_type) = if path == "/stats" {
        let text = format!(
            "{{\"connections\":{},\"requests\":{}}}",
            stats.connections.load(Ordering::Relaxed),
            stats.requests.load(Ordering::Relaxed)
        );
        (Bytes::from(text), "application/json")
    } else {
        stats.requests.fetch_add(1, Ordering::Relaxed);
        if path.ends_with("/64k") {
            (Bytes::from_static(&BODY_64K), "application/octet-stream")
        } else {
            (Bytes::from_static(&BODY_1K), "text/plain")
        }
    };
    let mut response = Response::new(Full::new(body));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen).await?;
    println!("bench_upstream listening on {}", listener.local_addr()?);
    let stats = Arc::new(Stats::default());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .max_concurrent_streams(1024)
        .initial_stream_window_size(1024 * 1024)
        .initial_connection_window_size(4 * 1024 * 1024);
    let builder = Arc::new(builder);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors or similar: report and keep serving.
                eprintln!("bench_upstream: accept failed: {error}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        stats.connections.fetch_add(1, Ordering::Relaxed);
        let stats = Arc::clone(&stats);
        let builder = Arc::clone(&builder);
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let response = answer(&stats, &req);
                async move { Ok::<_, Infallible>(response) }
            });
            // A client closing its connection mid-request is normal under load.
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
