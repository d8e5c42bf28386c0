#![allow(clippy::unwrap_used, missing_docs)]

//! HTTP/1.1 on the wire, both sides of the gateway: its own server loop
//! (and the hand-off to hyper for what that loop does not take), and its
//! own upstream connections, against scripted raw-socket peers.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{gateway, route, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// A request as a scripted upstream read it.
#[derive(Debug, Clone)]
struct Seen {
    head: String,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

/// Reads one request (head, then a `Content-Length` or chunked body) from
/// `stream`, with what was already buffered in `buf`; `None` at EOF.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Seen> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end);
    let mut seen = Seen {
        head,
        body: Vec::new(),
    };
    if let Some(len) = seen.header("content-length") {
        let len: usize = len.parse().unwrap();
        while buf.len() < len {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        seen.body = buf.drain(..len).collect();
    } else if seen
        .header("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        // Reads to the terminal chunk; enough for these tests.
        loop {
            if let Some(i) = buf.windows(5).position(|w| w == b"0\r\n\r\n")
                && (i == 0 || buf[i - 1] == b'\n')
            {
                let raw: Vec<u8> = buf.drain(..i + 5).collect();
                seen.body = dechunk(&raw);
                break;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    Some(seen)
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = raw.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(
            std::str::from_utf8(&raw[..eol])
                .unwrap()
                .split(';')
                .next()
                .unwrap(),
            16,
        )
        .unwrap();
        raw = &raw[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// What a scripted upstream does after reading a request.
enum Reply {
    /// Writes these bytes and keeps the connection.
    Bytes(Vec<u8>),
    /// Writes these bytes and closes the connection.
    BytesThenClose(Vec<u8>),
    /// Waits this long, then answers 200 (the wait is cut short if the
    /// gateway closes the connection: reported as `None` on `closed`).
    Slow(Duration),
}

/// A scripted upstream: `script` answers each request; every request is
/// sent on the returned channel; accepted connections are counted.
async fn scripted<F>(
    script: F,
) -> (
    SocketAddr,
    mpsc::UnboundedReceiver<Seen>,
    Arc<AtomicUsize>,
    mpsc::UnboundedReceiver<()>,
)
where
    F: Fn(&Seen) -> Reply + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let (closed_tx, closed_rx) = mpsc::unbounded_channel();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let script = Arc::new(script);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            let tx = tx.clone();
            let closed_tx = closed_tx.clone();
            let script = script.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(seen) = read_request(&mut stream, &mut buf).await {
                    let reply = script(&seen);
                    let _ = tx.send(seen);
                    match reply {
                        Reply::Bytes(b) => {
                            if stream.write_all(&b).await.is_err() {
                                return;
                            }
                        }
                        Reply::BytesThenClose(b) => {
                            let _ = stream.write_all(&b).await;
                            drop(stream);
                            let _ = closed_tx.send(());
                            return;
                        }
                        Reply::Slow(wait) => {
                            let mut probe = [0u8; 1];
                            tokio::select! {
                                () = tokio::time::sleep(wait) => {
                                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nslow").await;
                                }
                                n = stream.read(&mut probe) => {
                                    if matches!(n, Ok(0) | Err(_)) {
                                        let _ = closed_tx.send(());
                                        return;
                                    }
                                }
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, rx, accepted, closed_rx)
}

fn ok(body: &str) -> Reply {
    Reply::Bytes(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

/// Sends raw bytes to the gateway and reads until `responses` complete
/// responses (by `Content-Length`, chunked, or no body for HEAD/1xx) or EOF.
async fn raw(gw: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(gw).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_to_end_or_idle(&mut stream).await
}

/// Reads until the peer closes, or is quiet for 500 ms after answering
/// (up to 10 s for the first byte, for slow CI machines).
async fn read_to_end_or_idle(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    loop {
        let mut chunk = [0u8; 8192];
        let wait = if out.is_empty() {
            Duration::from_secs(10)
        } else {
            Duration::from_millis(500)
        };
        match tokio::time::timeout(wait, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn gw_for(up: SocketAddr) -> SocketAddr {
    serve(gateway(vec![route("r", "/r", &[up]).prefix()]).await).await
}

#[tokio::test]
async fn chunked_upstream_responses_are_decoded_and_the_connection_reused() {
    let (up, mut seen, accepted, _) = scripted(|_| {
        Reply::Bytes(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n"
                .to_vec(),
        )
    })
    .await;
    let gw = gw_for(up).await;
    let http = client().await;
    for _ in 0..3 {
        let res = http.get(format!("http://{gw}/r")).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.text().await.unwrap(), "hello world");
        seen.recv().await.unwrap();
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one upstream connection for all three"
    );
}

#[tokio::test]
async fn malformed_upstream_framing_is_a_502_and_the_connection_dropped() {
    for reply in [
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
        "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 5x\r\n\r\nhello",
        "HTTP/1.1 2000 OK\r\ncontent-length: 0\r\n\r\n",
        "NOT HTTP AT ALL\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n",
    ] {
        let (up, _seen, accepted, _) =
            scripted(move |_| Reply::Bytes(reply.as_bytes().to_vec())).await;
        let gw = gw_for(up).await;
        let http = client().await;
        for _ in 0..2 {
            let res = http.get(format!("http://{gw}/r")).send().await.unwrap();
            assert_eq!(res.status(), 502, "{reply:?}");
            assert_eq!(
                res.headers()["content-type"],
                "application/problem+json",
                "{reply:?}"
            );
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "not reused after {reply:?}"
        );
    }
}

#[tokio::test]
async fn chunked_wins_over_content_length_and_the_connection_is_not_reused() {
    let (up, _seen, accepted, _) = scripted(|_| {
        Reply::Bytes(
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n".to_vec(),
        )
    })
    .await;
    let gw = gw_for(up).await;
    let http = client().await;
    for _ in 0..2 {
        let res = http.get(format!("http://{gw}/r")).send().await.unwrap();
        assert_eq!(res.text().await.unwrap(), "ok");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn close_delimited_responses_are_relayed_whole() {
    let body = "x".repeat(100_000);
    let reply = format!("HTTP/1.1 200 OK\r\n\r\n{body}");
    let (up, _seen, accepted, _) =
        scripted(move |_| Reply::BytesThenClose(reply.clone().into_bytes())).await;
    let gw = gw_for(up).await;
    let http = client().await;
    for _ in 0..2 {
        let res = http.get(format!("http://{gw}/r")).send().await.unwrap();
        assert_eq!(res.text().await.unwrap().len(), 100_000);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn interim_responses_are_skipped() {
    let (up, _seen, _, _) = scripted(|_| {
        Reply::Bytes(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                .to_vec(),
        )
    })
    .await;
    let gw = gw_for(up).await;
    let res = client()
        .await
        .get(format!("http://{gw}/r"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "ok");
}

#[tokio::test]
async fn head_and_no_content_responses_have_no_body_and_keep_the_connection() {
    let (up, _seen, accepted, _) = scripted(|req| {
        if req.head.starts_with("HEAD") {
            Reply::Bytes(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n".to_vec())
        } else if req.head.starts_with("DELETE") {
            Reply::Bytes(b"HTTP/1.1 204 No Content\r\n\r\n".to_vec())
        } else {
            ok("hello")
        }
    })
    .await;
    let gw = gw_for(up).await;
    // Raw, to see exactly what the gateway writes.
    let out = raw(
        gw,
        b"HEAD /r HTTP/1.1\r\nhost: a\r\n\r\nDELETE /r HTTP/1.1\r\nhost: a\r\n\r\nGET /r HTTP/1.1\r\nhost: a\r\n\r\n",
    )
    .await;
    let responses: Vec<&str> = out.split("HTTP/1.1 ").filter(|s| !s.is_empty()).collect();
    assert_eq!(responses.len(), 3, "{out}");
    assert!(responses[0].starts_with("200"), "{out}");
    assert!(
        responses[0]
            .to_ascii_lowercase()
            .contains("content-length: 5"),
        "{out}"
    );
    assert!(
        responses[0].ends_with("\r\n\r\n"),
        "HEAD has no body: {out}"
    );
    assert!(responses[1].starts_with("204"), "{out}");
    assert!(
        !responses[1].to_ascii_lowercase().contains("content-length"),
        "{out}"
    );
    assert!(
        responses[2].starts_with("200") && responses[2].ends_with("hello"),
        "{out}"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn idle_connections_closed_by_the_upstream_are_not_used() {
    // The upstream closes every connection right after its response,
    // without saying so.
    let (up, mut seen, accepted, mut closed) = scripted(|_| {
        Reply::BytesThenClose(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec())
    })
    .await;
    let gw = gw_for(up).await;
    let http = client().await;
    for method in ["GET", "POST", "GET", "PATCH"] {
        let res = http
            .request(method.parse().unwrap(), format!("http://{gw}/r"))
            .body("data")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{method}");
        assert_eq!(res.text().await.unwrap(), "ok");
        let req = seen.recv().await.unwrap();
        assert!(req.head.starts_with(method));
        assert_eq!(req.body, b"data");
        // The upstream has closed the connection the gateway now keeps idle
        // (the non-idempotent requests would fail if it were used).
        closed.recv().await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn request_bodies_reach_the_upstream_framed() {
    let (up, mut seen, _, _) = scripted(|_| ok("done")).await;
    let gw = gw_for(up).await;
    // Small body by length: the gateway's own loop.
    let out = raw(
        gw,
        b"POST /r HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nhello",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let req = seen.recv().await.unwrap();
    assert_eq!(req.body, b"hello");
    assert_eq!(req.header("content-length").as_deref(), Some("5"));
    // Chunked body: hyper's server, streamed upstream chunked.
    let out = raw(
        gw,
        b"POST /r HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let req = seen.recv().await.unwrap();
    assert_eq!(req.body, b"abcde");
    assert_eq!(req.header("transfer-encoding").as_deref(), Some("chunked"));
    // A body larger than the own loop reads: hyper, by length.
    let big = vec![b'z'; 200_000];
    let res = client()
        .await
        .post(format!("http://{gw}/r"))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let req = seen.recv().await.unwrap();
    assert_eq!(req.body.len(), big.len());
    // Empty POST says so.
    let out = raw(gw, b"POST /r HTTP/1.1\r\nhost: a\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let req = seen.recv().await.unwrap();
    assert_eq!(req.header("content-length").as_deref(), Some("0"));
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let (up, _seen, _, _) = scripted(|req| {
        let path = req.head.split(' ').nth(1).unwrap_or("").to_owned();
        ok(&path)
    })
    .await;
    let gw = gw_for(up).await;
    let out = raw(
        gw,
        b"GET /r/1 HTTP/1.1\r\nhost: a\r\n\r\nGET /r/2 HTTP/1.1\r\nhost: a\r\n\r\nGET /r/3 HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
    )
    .await;
    let bodies: Vec<&str> = out
        .split("HTTP/1.1 200 OK")
        .filter(|s| !s.is_empty())
        .map(|r| r.rsplit("\r\n\r\n").next().unwrap())
        .collect();
    assert_eq!(bodies, ["/r/1", "/r/2", "/r/3"], "{out}");
    assert!(
        out.to_ascii_lowercase().contains("connection: close"),
        "{out}"
    );
}

#[tokio::test]
async fn unusual_requests_go_to_hyper() {
    let (up, _seen, _, _) = scripted(|_| ok("fine")).await;
    let gw = gw_for(up).await;
    // Expect: 100-continue gets its interim response.
    let mut stream = TcpStream::connect(gw).await.unwrap();
    stream
        .write_all(
            b"POST /r HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    let mut first = [0u8; 25];
    stream.read_exact(&mut first).await.unwrap();
    assert!(
        first.starts_with(b"HTTP/1.1 100 Continue"),
        "{:?}",
        String::from_utf8_lossy(&first)
    );
    stream.write_all(b"body").await.unwrap();
    let rest = read_to_end_or_idle(&mut stream).await;
    assert!(
        rest.contains("HTTP/1.1 200 OK") && rest.ends_with("fine"),
        "{rest}"
    );
    // HTTP/1.0.
    let out = raw(gw, b"GET /r HTTP/1.0\r\n\r\n").await;
    assert!(
        out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"),
        "{out}"
    );
    assert!(out.ends_with("fine"), "{out}");
    // Malformed.
    let out = raw(gw, b"GET /r HTTP/1.1\r\nbad header\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    // Two Content-Length fields (a smuggling attempt): hyper refuses them.
    let out = raw(
        gw,
        b"POST /r HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\ncontent-length: 5\r\n\r\nhello",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    // Both Content-Length and Transfer-Encoding: hyper decides.
    let out = raw(
        gw,
        b"POST /r HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /r HTTP/1.1\r\nhost: a\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 "), "{out}");
    // A target the `http` types refuse, after the head was read.
    for target in [&b"/r/\x7f"[..], b"/r/`", b"/r/{x}\"", b"/r/\xff"] {
        let mut request = b"GET ".to_vec();
        request.extend_from_slice(target);
        request.extend_from_slice(b" HTTP/1.1\r\nhost: a\r\n\r\n");
        let out = raw(gw, &request).await;
        assert!(
            out.starts_with("HTTP/1.1 400") || out.starts_with("HTTP/1.1 200"),
            "{target:?}: {out}"
        );
    }
}

#[tokio::test]
async fn a_client_going_away_cancels_the_upstream_request() {
    let (up, _seen, _, mut closed) = scripted(|_| Reply::Slow(Duration::from_secs(20))).await;
    let gw = gw_for(up).await;
    let mut stream = TcpStream::connect(gw).await.unwrap();
    stream
        .write_all(b"GET /r HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(stream);
    tokio::time::timeout(Duration::from_secs(5), closed.recv())
        .await
        .expect("the upstream connection is closed when the client leaves")
        .unwrap();
}

#[tokio::test]
async fn responses_carry_date_and_exact_framing() {
    let (up, _seen, _, _) = scripted(|_| ok("abc")).await;
    let gw = gw_for(up).await;
    let out = raw(gw, b"GET /r HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .to_ascii_lowercase();
    assert!(out.contains("\r\ndate: "), "{out}");
    assert!(out.contains("\r\ncontent-length: 3\r\n"), "{out}");
    assert_eq!(out.matches("content-length").count(), 1, "{out}");
    // No route: the gateway's own problem, framed.
    let out = raw(gw, b"GET /nothing HTTP/1.1\r\nhost: a\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    let body = out.split("\r\n\r\n").nth(1).unwrap();
    let length: usize = out
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap();
    assert_eq!(body.len(), length);
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests_and_closes_idle_connections() {
    let (up, _seen, _, _) = scripted(|req| {
        if req.head.contains("/r/slow") {
            Reply::Slow(Duration::from_millis(300))
        } else {
            ok("quick")
        }
    })
    .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(jadugar_gateway::serve(
        listener,
        gateway(vec![route("r", "/r", &[up]).prefix()]).await,
        async {
            let _ = stop_rx.await;
        },
    ));
    // An idle keep-alive connection.
    let mut idle = TcpStream::connect(gw).await.unwrap();
    idle.write_all(b"GET /r HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let first = read_to_end_or_idle(&mut idle).await;
    assert!(first.ends_with("quick"), "{first}");
    // A request in flight.
    let mut busy = TcpStream::connect(gw).await.unwrap();
    busy.write_all(b"GET /r/slow HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop_tx.send(()).unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), busy.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    let rest = String::from_utf8_lossy(&rest).to_ascii_lowercase();
    assert!(
        rest.starts_with("http/1.1 200") && rest.ends_with("slow"),
        "{rest}"
    );
    assert!(rest.contains("connection: close"), "{rest}");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "the idle connection is closed");
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// `serve_service` calls a connection's service directly when it is ready
/// at once; one that is not (here a concurrency limit of one, shared by
/// every connection) must still be driven to readiness with a real waker,
/// or requests on other connections would wait forever.
#[tokio::test]
async fn serve_service_keeps_a_concurrency_limit_without_stalling_connections() {
    use http_body_util::Full;
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (tx, mut forwarded_for) = mpsc::unbounded_channel::<String>();
    let up = common::upstream({
        let (in_flight, peak) = (in_flight.clone(), peak.clone());
        move |req: hyper::Request<hyper::body::Incoming>| {
            let (in_flight, peak, tx) = (in_flight.clone(), peak.clone(), tx.clone());
            async move {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                let xff = req
                    .headers()
                    .get("x-forwarded-for")
                    .map(|v| v.to_str().unwrap().to_owned());
                let _ = tx.send(xff.unwrap_or_default());
                tokio::time::sleep(Duration::from_millis(20)).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                hyper::Response::new(Full::new(bytes::Bytes::from_static(b"ok")))
            }
        }
    })
    .await;
    let gateway = gateway(vec![route("r", "/r", &[up]).prefix()]).await;
    let service = tower::ServiceBuilder::new()
        .concurrency_limit(1)
        .service(gateway);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = listener.local_addr().unwrap();
    tokio::spawn(jadugar_gateway::serve_service(
        listener,
        service,
        std::future::pending(),
    ));

    // Six connections, two requests each, all at once.
    let rounds = (0..6).map(|_| async move {
        let mut stream = TcpStream::connect(gw).await.unwrap();
        let mut answers = Vec::new();
        for _ in 0..2 {
            stream
                .write_all(b"GET /r HTTP/1.1\r\nhost: a\r\n\r\n")
                .await
                .unwrap();
            let mut got = Vec::new();
            while !got.ends_with(b"ok") {
                let mut chunk = [0u8; 1024];
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "connection closed early");
                got.extend_from_slice(&chunk[..n]);
            }
            answers.push(String::from_utf8_lossy(&got).into_owned());
        }
        answers
    });
    let answers = tokio::time::timeout(
        Duration::from_secs(20),
        futures_util::future::join_all(rounds),
    )
    .await
    .expect("every connection is served");
    for answer in answers.iter().flatten() {
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    assert_eq!(peak.load(Ordering::SeqCst), 1, "the limit held");
    // The client address reaches the gateway through the request extensions.
    for _ in 0..12 {
        assert_eq!(forwarded_for.recv().await.unwrap(), "127.0.0.1");
    }
}

/// The header timeout (30 s, checked coarsely): a connection that sends
/// no complete request head is closed after one to two periods; one that
/// keeps sending requests is not.
#[tokio::test(start_paused = true)]
async fn silent_connections_are_closed_and_busy_ones_kept() {
    // No upstream: the requests here are answered 404 by the gateway.
    let gw = serve(gateway(vec![]).await).await;

    let started = tokio::time::Instant::now();
    let mut partial = TcpStream::connect(gw).await.unwrap();
    partial
        .write_all(b"GET /r HTTP/1.1\r\nhost: a\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(partial.read(&mut buf).await.unwrap(), 0, "closed");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(30) && waited <= Duration::from_secs(61),
        "closed after {waited:?}"
    );

    let started = tokio::time::Instant::now();
    let mut busy = TcpStream::connect(gw).await.unwrap();
    for _ in 0..5 {
        busy.write_all(b"GET /r HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"\r\n\r\n") || !got.ends_with(b"}") {
            let n = busy.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "a busy connection was closed after {:?}",
                started.elapsed()
            );
            got.extend_from_slice(&buf[..n]);
        }
        tokio::time::sleep(Duration::from_secs(20)).await;
    }
    assert!(started.elapsed() >= Duration::from_secs(100));
}
