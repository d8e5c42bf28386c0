//! `https` upstreams: verification against the configured CA file, pooled
//! HTTP/1.1 over TLS, HTTP/2 negotiated by ALPN, and refusal of untrusted
//! certificates.
//!
//! The certificates in `tests/fixtures` were made with openssl:
//! `ca.crt` (a test CA), `upstream.crt` (localhost and 127.0.0.1, signed by
//! it) and `untrusted.crt` (the same names, self-signed, never trusted).
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use jadugar_core::{Endpoint, StaticDiscovery};
use jadugar_gateway::model::RouteSpec;
use jadugar_gateway::{Config, Gateway};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// An HTTPS upstream (HTTP/1.1 and HTTP/2 by ALPN) presenting `cert`;
/// answers with the protocol version, the byte count of the request body
/// and the SNI it was reached with. Returns its address and the number of
/// TLS connections it accepted.
fn acceptor(cert: &str) -> tokio_rustls::TlsAcceptor {
    let certs = CertificateDer::pem_file_iter(fixture(&format!("{cert}.crt")))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(fixture(&format!("{cert}.key"))).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

async fn tls_upstream(cert: &str) -> (SocketAddr, Arc<AtomicUsize>) {
    let acceptor = acceptor(cert);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                let sni = tls.get_ref().1.server_name().unwrap_or("-").to_owned();
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let sni = sni.clone();
                    async move {
                        let version = format!("{:?}", req.version());
                        let (parts, body) = req.into_parts();
                        let mut body = body;
                        let mut bytes = 0usize;
                        let mut frames = 0usize;
                        while let Some(frame) = body.frame().await {
                            if let Ok(data) = frame.unwrap().into_data() {
                                bytes += data.len();
                                frames += 1;
                            }
                        }
                        let out = serde_json::json!({
                            "version": version,
                            "method": parts.method.as_str(),
                            "uri": parts.uri.to_string(),
                            "host": parts.headers.get("host").and_then(|h| h.to_str().ok()),
                            "sni": sni,
                            "bytes": bytes,
                            "frames": frames,
                        });
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(out.to_string())))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, accepted)
}

async fn tls_gateway(routes: Vec<RouteSpec>) -> Gateway {
    let config = Config {
        routes,
        access_log: false,
        upstream_ca_file: Some(fixture("ca.crt")),
        ..Config::default()
    };
    Gateway::builder(config).build().await.unwrap()
}

#[tokio::test]
async fn https_get_and_streamed_post_reuse_one_connection() {
    let (up, accepted) = tls_upstream("upstream").await;
    let r = RouteSpec::new("secure", "/s", [format!("https://localhost:{}", up.port())]).prefix();
    let gw = tls_gateway(vec![r]).await;
    for _ in 0..5 {
        let (status, _, body) = call(&gw, get("/s/a?b=1")).await;
        assert_eq!(status, 200, "{body:?}");
        let v = json(&body);
        assert_eq!(v["version"], "HTTP/1.1");
        assert_eq!(v["uri"], "/s/a?b=1");
        assert_eq!(v["sni"], "localhost");
        assert_eq!(v["host"], format!("localhost:{}", up.port()));
    }

    // A body sent in chunks from a channel: streamed, not buffered first.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    let body = StreamBody::new(tokio_stream_from(rx));
    let mut req = Request::post("/s/upload").body(body).unwrap();
    req.extensions_mut().insert(jadugar_gateway::ClientAddr(
        "10.9.8.7:5555".parse().unwrap(),
    ));
    let sender = tokio::spawn(async move {
        for _ in 0..64 {
            tx.send(Ok(Frame::data(Bytes::from(vec![b'x'; 16 * 1024]))))
                .await
                .unwrap();
            tokio::task::yield_now().await;
        }
    });
    let res = gw.handle(req).await;
    assert_eq!(res.status(), 200);
    let v: serde_json::Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    sender.await.unwrap();
    assert_eq!(v["method"], "POST");
    assert_eq!(v["bytes"], 64 * 16 * 1024);
    assert!(v["frames"].as_u64().unwrap() > 1, "{v}");

    // Six requests, one TLS connection.
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

/// A `Stream` of the channel's items.
fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn untrusted_upstream_certificate_gives_502_naming_the_upstream() {
    let (up, accepted) = tls_upstream("untrusted").await;
    let mut r = RouteSpec::new("evil", "/e", [format!("https://localhost:{}", up.port())]);
    r.upstream.name = Some("shady-upstream".into());
    let gw = tls_gateway(vec![r]).await;
    let (status, headers, body) = call(&gw, get("/e")).await;
    assert_eq!(status, 502);
    assert_eq!(headers["content-type"], "application/problem+json");
    let v = json(&body);
    assert!(
        v["detail"].as_str().unwrap().contains("shady-upstream"),
        "{v}"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 0);

    // Trusted by nothing: the default (webpki roots only) refuses the
    // test CA's certificate too.
    let (up, _) = tls_upstream("upstream").await;
    let r = RouteSpec::new("plain", "/p", [format!("https://localhost:{}", up.port())]);
    let gw = gateway(vec![r]).await;
    assert_eq!(call(&gw, get("/p")).await.0, 502);
}

#[tokio::test]
async fn http2_route_over_tls() {
    let (up, accepted) = tls_upstream("upstream").await;
    let mut r = RouteSpec::new("h2", "/h2", [format!("https://127.0.0.1:{}", up.port())]).prefix();
    r.upstream.http2 = true;
    let gw = tls_gateway(vec![r]).await;
    for _ in 0..3 {
        let (status, _, body) = call(&gw, get("/h2/x")).await;
        assert_eq!(status, 200, "{body:?}");
        let v = json(&body);
        assert_eq!(v["version"], "HTTP/2.0");
        assert_eq!(v["uri"], format!("https://127.0.0.1:{}/h2/x", up.port()));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn registry_instances_registered_as_https_are_reached_over_tls() {
    let (up, accepted) = tls_upstream("upstream").await;
    let discovery = Arc::new(StaticDiscovery::new());
    discovery.set(
        "svc",
        vec![Endpoint::new("i1", "https", "localhost", up.port())],
    );
    let mut r = RouteSpec::new("svc", "/svc", Vec::<String>::new());
    r.upstream.service = Some("svc".into());
    let config = Config {
        routes: vec![r],
        access_log: false,
        upstream_ca_file: Some(fixture("ca.crt")),
        ..Config::default()
    };
    let gw = Gateway::builder(config)
        .discovery(discovery)
        .build()
        .await
        .unwrap();
    let (status, _, body) = call(&gw, get("/svc")).await;
    assert_eq!(status, 200, "{body:?}");
    assert_eq!(json(&body)["sni"], "localhost");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn address_policy_applies_to_https_targets() {
    let (up, accepted) = tls_upstream("upstream").await;
    let r = RouteSpec::new("s", "/s", [format!("https://localhost:{}", up.port())]);
    let config = Config {
        routes: vec![r],
        access_log: false,
        allow_private_upstreams: false,
        upstream_ca_file: Some(fixture("ca.crt")),
        ..Config::default()
    };
    let gw = Gateway::builder(config).build().await.unwrap();
    assert_eq!(call(&gw, get("/s")).await.0, 502);
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn bad_ca_file_is_an_error_naming_the_setting() {
    for file in ["missing.pem", "upstream.key"] {
        let config = Config {
            upstream_ca_file: Some(fixture(file)),
            ..Config::default()
        };
        let err = Gateway::builder(config).build().await.unwrap_err();
        let jadugar_gateway::Error::Invalid(fields) = err else {
            panic!("{err}");
        };
        assert_eq!(fields[0].field, "upstream_ca_file", "{file}");
    }
}

#[tokio::test]
async fn https_targets_validate() {
    let ok = RouteSpec::new("a", "/a", ["https://example.com"]);
    assert!(ok.validate().is_ok());
    for bad in [
        "ftp://example.com",
        "https://user@example.com",
        "https://example.com/path",
        "https://example.com#frag",
    ] {
        let r = RouteSpec::new("a", "/a", [bad]);
        let errs = r.validate().unwrap_err();
        assert_eq!(errs[0].field, "upstream.targets[0]", "{bad}");
    }
}

#[tokio::test]
async fn websocket_upgrade_to_a_tls_upstream() {
    use futures_util::{SinkExt, StreamExt};
    let acceptor = acceptor("upstream");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let tls = acceptor.accept(stream).await.unwrap();
                let mut ws = tokio_tungstenite::accept_async(tls).await.unwrap();
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() {
                        ws.send(msg).await.unwrap();
                    }
                }
            });
        }
    });
    let r = RouteSpec::new("ws", "/ws", [format!("https://localhost:{}", up.port())]);
    let gw = serve(tls_gateway(vec![r]).await).await;
    let (mut ws, res) = tokio_tungstenite::connect_async(format!("ws://{gw}/ws"))
        .await
        .unwrap();
    assert_eq!(res.status(), 101);
    ws.send(tokio_tungstenite::tungstenite::Message::text("over tls"))
        .await
        .unwrap();
    let echoed = ws.next().await.unwrap().unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "over tls");
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn ip_literal_https_target_is_verified_against_the_ip() {
    let (up, accepted) = tls_upstream("upstream").await;
    let r = RouteSpec::new("ip", "/ip", [format!("https://127.0.0.1:{}", up.port())]);
    let gw = tls_gateway(vec![r]).await;
    for _ in 0..2 {
        let (status, _, body) = call(&gw, get("/ip")).await;
        assert_eq!(status, 200, "{body:?}");
        // No SNI for an IP address; the certificate's IP SAN is checked.
        assert_eq!(json(&body)["sni"], "-");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}
