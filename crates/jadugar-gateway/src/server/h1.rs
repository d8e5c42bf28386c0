//! The gateway's own HTTP/1.1 server loop for the common request; hyper
//! takes over a connection for everything else.
//!
//! Why: with the upstream side already in the request's task
//! (`proxy::h1`), hyper's server connection was the largest cost left per
//! proxied request (reading each request into a fresh buffer, its
//! dispatcher and encoder: ~11,000 instructions, BENCHMARKS.md). This loop
//! reads into one buffer per connection, parses the head in place with
//! `httparse`, and writes the response head and body with one `writev`.
//!
//! It takes only requests it fully understands: HTTP/1.1, origin-form
//! target, no `Transfer-Encoding`, `Expect` or `Upgrade`, a body of at
//! most [`MAX_BODY`] bytes by `Content-Length` (read before the request is
//! handed on, as nginx buffers request bodies). On anything else, HTTP/2's
//! preface included, the connection (with the bytes read so far) goes to
//! hyper's server for the rest of its life, so malformed input, large or
//! chunked uploads, `100-continue`, upgrades and h2c get hyper's handling.

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf as _, Bytes, BytesMut};
use futures_util::FutureExt as _;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::proxy::body::{ProxyBody, RequestBody};
use crate::proxy::h1::{hex_line, parse_decimal, trim, write_all_vectored};

/// Largest request head read here (larger ones go to hyper, which answers
/// `431`).
const MAX_HEAD: usize = 16 * 1024;
/// Most header fields read here.
const MAX_HEADERS: usize = 64;
/// Largest request body read here.
pub(crate) const MAX_BODY: u64 = 64 * 1024;
/// How long a connection may take to send a request head (as hyper's
/// `header_read_timeout`, idle keep-alive time included); checked coarsely,
/// so a silent connection is closed after one to two of these.
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
const READ_CHUNK: usize = 8 * 1024;

/// How a connection left the loop.
pub(crate) enum Outcome {
    /// Closed (by either side, on an error, or at shutdown).
    Closed,
    /// Needs hyper from here on; the bytes already read come first.
    Handoff(Rewind),
}

/// A connection with bytes already read put back in front.
#[derive(Debug)]
pub(crate) struct Rewind {
    prefix: Bytes,
    io: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// What reading the next request gave.
#[allow(
    clippy::large_enum_variant,
    reason = "returned once per request; boxing would allocate for every one"
)]
enum Next {
    /// A request; `true` when the connection closes after its response.
    Request(Request<RequestBody>, bool),
    /// A request this loop does not take.
    Unusual,
    /// A request whose target or a header the `http` types refuse,
    /// already consumed: answered `400` and the connection closed.
    BadRequest(&'static str),
    /// The client closed the connection (or sent something unusable after
    /// its head was consumed).
    Closed,
}

struct Conn {
    io: TcpStream,
    read: BytesMut,
    write: Vec<u8>,
}

/// Serves requests on `io` with `service` until the connection closes,
/// `cancel` fires while it is idle, or a request needs hyper.
pub(crate) async fn serve_connection<F, Fut, B>(
    io: TcpStream,
    mut service: F,
    cancel: &CancellationToken,
) -> Outcome
where
    F: FnMut(Request<RequestBody>) -> Fut,
    Fut: Future<Output = Response<B>>,
    B: http_body::Body<Data = Bytes>,
{
    let mut conn = Conn {
        io,
        read: BytesMut::with_capacity(READ_CHUNK),
        write: Vec::with_capacity(1024),
    };
    // The header timeout is coarse: the timer is not re-armed per request
    // (a clock read and a timer-wheel update each); when it fires, a
    // connection that began a request since it was armed gets another
    // period. A client is cut after one to two periods without a request.
    let mut deadline = pin!(tokio::time::sleep(HEADER_TIMEOUT));
    let mut requests: u64 = 0;
    let mut requests_when_armed: u64 = 0;
    // Made once: a fresh one per request would join and leave the token's
    // waiter list each time.
    let mut cancelled = pin!(cancel.cancelled());
    loop {
        let idle = conn.read.is_empty();
        let next = tokio::select! {
            biased;
            () = &mut cancelled, if idle => return Outcome::Closed,
            () = &mut deadline => {
                if requests == requests_when_armed {
                    return Outcome::Closed;
                }
                requests_when_armed = requests;
                deadline
                    .as_mut()
                    .reset(tokio::time::Instant::now() + HEADER_TIMEOUT);
                // Reading is cancel-safe: bytes read stay in the buffer.
                continue;
            }
            next = conn.read_request() => next,
        };
        requests += 1;
        let (req, close) = match next {
            Next::Request(req, close) => (req, close),
            Next::Closed => return Outcome::Closed,
            Next::BadRequest(detail) => {
                let res = jadugar_core::Problem::bad_request(detail).to_response::<ProxyBody>();
                let _ = conn.write_response(res, false, true).await;
                return Outcome::Closed;
            }
            Next::Unusual => {
                return Outcome::Handoff(Rewind {
                    prefix: conn.read.freeze(),
                    io: conn.io,
                });
            }
        };
        let head_request = req.method() == Method::HEAD;
        // Pinned where it is made: the request's future is the largest
        // value here and is not moved again.
        let fut = pin!(service(req));
        let Some(res) = conn.run(fut).await else {
            // The client went away: dropping the future cancels the
            // upstream exchange.
            return Outcome::Closed;
        };
        let close = close || cancel.is_cancelled();
        if conn.write_response(res, head_request, close).await.is_err() || close {
            return Outcome::Closed;
        }
    }
}

impl Conn {
    async fn fill(&mut self) -> io::Result<usize> {
        if self.read.capacity() - self.read.len() < 1024 {
            self.read.reserve(READ_CHUNK);
        }
        std::future::poll_fn(|cx| {
            tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read)
        })
        .await
    }

    async fn read_request(&mut self) -> Next {
        loop {
            if !self.read.is_empty() {
                match self.parse() {
                    Parse::Done(next) => return next,
                    Parse::Partial if self.read.len() > MAX_HEAD => return Next::Unusual,
                    Parse::Partial => {}
                    Parse::NeedBody(total) => {
                        while self.read.len() < total {
                            match self.fill().await {
                                Ok(0) | Err(_) => return Next::Closed,
                                Ok(_) => {}
                            }
                        }
                        continue;
                    }
                }
            }
            match self.fill().await {
                Ok(0) | Err(_) => return Next::Closed,
                Ok(_) => {}
            }
        }
    }

    fn parse(&mut self) -> Parse {
        parse(&mut self.read)
    }

    /// Runs the service's future while watching the connection: bytes the
    /// client pipelines are kept, its closing cancels the request.
    async fn run<Fut, B>(&mut self, mut fut: Pin<&mut Fut>) -> Option<Response<B>>
    where
        Fut: Future<Output = Response<B>>,
    {
        let mut watch = true;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(res) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(res));
            }
            while watch {
                if self.read.len() >= MAX_HEAD {
                    // Enough read ahead; the rest waits in the socket.
                    watch = false;
                    break;
                }
                if self.read.capacity() == self.read.len() {
                    self.read.reserve(READ_CHUNK);
                }
                match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read) {
                    Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(None),
                    Poll::Ready(Ok(_)) => {}
                    Poll::Pending => break,
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Writes `res`: head and (usually) the whole body in one `writev`.
    async fn write_response<B>(
        &mut self,
        res: Response<B>,
        head_request: bool,
        close: bool,
    ) -> io::Result<()>
    where
        B: http_body::Body<Data = Bytes>,
    {
        let (parts, body) = res.into_parts();
        let status = parts.status;
        let bodiless = status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let w = &mut self.write;
        w.clear();
        w.extend_from_slice(b"HTTP/1.1 ");
        w.extend_from_slice(status.as_str().as_bytes());
        w.push(b' ');
        w.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        w.extend_from_slice(b"\r\n");
        let mut has_date = false;
        // An interim response would leave the client waiting for the final
        // one: end the connection after it.
        let mut close = close || status.is_informational();
        for (name, value) in &parts.headers {
            if name == header::CONTENT_LENGTH {
                // A response to HEAD says how long the body would be.
                if !head_request {
                    continue;
                }
            } else if name == header::TRANSFER_ENCODING {
                continue;
            } else if name == header::CONNECTION {
                close |= value.as_bytes().eq_ignore_ascii_case(b"close");
                continue;
            } else if name == header::DATE {
                has_date = true;
            }
            w.extend_from_slice(name.as_str().as_bytes());
            w.extend_from_slice(b": ");
            w.extend_from_slice(value.as_bytes());
            w.extend_from_slice(b"\r\n");
        }
        if !has_date {
            w.extend_from_slice(b"date: ");
            date::write(w);
            w.extend_from_slice(b"\r\n");
        }
        let length = body.size_hint().exact();
        let send_body = !head_request && !bodiless;
        if send_body {
            match length {
                Some(n) => {
                    w.extend_from_slice(b"content-length: ");
                    w.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                    w.extend_from_slice(b"\r\n");
                }
                None => w.extend_from_slice(b"transfer-encoding: chunked\r\n"),
            }
        }
        if close {
            w.extend_from_slice(b"connection: close\r\n");
        }
        w.extend_from_slice(b"\r\n");
        // The head is written out: its map can serve a later message.
        crate::proxy::headers::spare::give(parts.headers);
        if !send_body {
            drop(body);
            return write_all_vectored(&mut self.io, &mut [io::IoSlice::new(&self.write)]).await;
        }
        let mut body = pin!(body);
        let chunked = length.is_none();
        let mut head_written = false;
        let mut sent: u64 = 0;
        // The first frame is usually ready (the upstream's response is in
        // its buffer): it goes out with the head.
        let mut ready = if body.is_end_stream() {
            Some(None)
        } else {
            // The error itself is not kept (nor needs to be `Send`).
            body.as_mut()
                .frame()
                .now_or_never()
                .map(|frame| frame.map(|r| r.map_err(drop)))
        };
        loop {
            let frame = match ready.take() {
                Some(frame) => frame,
                None => {
                    if !head_written {
                        write_all_vectored(&mut self.io, &mut [io::IoSlice::new(&self.write)])
                            .await?;
                        head_written = true;
                    }
                    body.as_mut().frame().await.map(|r| r.map_err(drop))
                }
            };
            let (data, end) = match frame {
                None => (Bytes::new(), true),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let end = body.is_end_stream();
                        (data, end)
                    }
                    // Trailers are not sent over HTTP/1.1.
                    Err(_) => continue,
                },
                Some(Err(_)) => {
                    return Err(io::Error::other("response body failed"));
                }
            };
            sent += data.len() as u64;
            if length.is_some_and(|n| sent > n || (end && sent != n)) {
                // The body broke its own length: the connection cannot go on.
                return Err(io::Error::other("response body length mismatch"));
            }
            let mut size = [0u8; 18];
            let size_len = if chunked && !data.is_empty() {
                hex_line(data.len() as u64, &mut size)
            } else {
                0
            };
            let head: &[u8] = if head_written { &[] } else { &self.write };
            let mut slices = [
                io::IoSlice::new(head),
                io::IoSlice::new(&size[..size_len]),
                io::IoSlice::new(&data),
                io::IoSlice::new(if size_len > 0 { b"\r\n" } else { b"" }),
                io::IoSlice::new(if chunked && end { b"0\r\n\r\n" } else { b"" }),
            ];
            write_all_vectored(&mut self.io, &mut slices).await?;
            head_written = true;
            if end {
                return Ok(());
            }
        }
    }
}

/// Parses the request at the front of `read`, consuming it when complete.
fn parse(read: &mut BytesMut) -> Parse {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut fields);
    let len = match parsed.parse(read) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parse::Partial,
        // Malformed, or more fields than read here: hyper answers.
        Err(_) => return Parse::Done(Next::Unusual),
    };
    if parsed.version != Some(1) {
        return Parse::Done(Next::Unusual);
    }
    let (Some(method), Some(path)) = (parsed.method, parsed.path) else {
        return Parse::Done(Next::Unusual);
    };
    if !path.starts_with('/') || method == "CONNECT" {
        return Parse::Done(Next::Unusual);
    }
    let mut body_len: u64 = 0;
    let mut has_length = false;
    let mut close = false;
    let mut offsets = [(0usize, 0usize, 0usize, 0usize); MAX_HEADERS];
    let base = read.as_ptr() as usize;
    let count = parsed.headers.len();
    for (field, slot) in parsed.headers.iter().zip(offsets.iter_mut()) {
        let name = field.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            match parse_decimal(trim(field.value)) {
                // A second Content-Length, even an equal one, is hyper's
                // to judge.
                Some(n) if n <= MAX_BODY && !has_length => {
                    body_len = n;
                    has_length = true;
                }
                _ => return Parse::Done(Next::Unusual),
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"upgrade")
        {
            return Parse::Done(Next::Unusual);
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in field.value.split(|b| *b == b',') {
                let token = trim(token);
                if token.eq_ignore_ascii_case(b"upgrade") {
                    return Parse::Done(Next::Unusual);
                }
                close |= token.eq_ignore_ascii_case(b"close");
            }
        }
        let n = field.name.as_ptr() as usize - base;
        let v = field.value.as_ptr() as usize - base;
        *slot = (n, n + field.name.len(), v, v + field.value.len());
    }
    let path_start = path.as_ptr() as usize - base;
    let path_end = path_start + path.len();
    let method = match Method::from_bytes(method.as_bytes()) {
        Ok(m) => m,
        Err(_) => return Parse::Done(Next::Unusual),
    };
    let total = len + usize::try_from(body_len).unwrap_or(usize::MAX);
    if read.len() < total {
        return Parse::NeedBody(total);
    }
    let head = read.split_to(len).freeze();
    let body = if body_len > 0 {
        RequestBody::Full(Some(read.split_to(total - len).freeze()))
    } else {
        RequestBody::Empty
    };
    let Ok(uri) = Uri::from_maybe_shared(head.slice(path_start..path_end)) else {
        return Parse::Done(Next::BadRequest("invalid request target"));
    };
    // Room for what the gateway adds (three forwarding headers, the
    // request id) without growing, and no more: maps of up to 6 fields
    // stay in the allocator's small-block fast path.
    let mut headers = crate::proxy::headers::spare::take(count + 4);
    for &(ns, ne, vs, ve) in &offsets[..count] {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&head[ns..ne]),
            HeaderValue::from_maybe_shared(head.slice(vs..ve)),
        ) else {
            return Parse::Done(Next::BadRequest("invalid header field"));
        };
        headers.append(name, value);
    }
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Parse::Done(Next::Request(req, close))
}

#[allow(
    clippy::large_enum_variant,
    reason = "returned once per request; boxing would allocate for every one"
)]
enum Parse {
    Done(Next),
    Partial,
    /// The head is complete; the body needs the buffer to hold this many
    /// bytes.
    NeedBody(usize),
}

/// The `Date` header, formatted once a second.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static CACHED: RefCell<(u64, [u8; 29])> = const { RefCell::new((0, [0; 29])) };
    }

    pub(super) fn write(out: &mut Vec<u8>) {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        CACHED.with(|cached| {
            let mut cached = cached.borrow_mut();
            if cached.0 != secs {
                let formatted = httpdate::fmt_http_date(now);
                if formatted.len() == 29 {
                    cached.1.copy_from_slice(formatted.as_bytes());
                    cached.0 = secs;
                } else {
                    out.extend_from_slice(formatted.as_bytes());
                    return;
                }
            }
            out.extend_from_slice(&cached.1);
        });
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;
    use proptest::prelude::*;

    use super::*;

    fn parse_all(bytes: &[u8]) -> Parse {
        parse(&mut BytesMut::from(bytes))
    }

    proptest! {
        /// Whatever arrives, parsing classifies it; it never panics.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse_all(&bytes);
        }

        /// Arbitrary bytes behind a plausible request line, likewise.
        #[test]
        fn arbitrary_heads_never_panic(
            line in "(GET|POST|HEAD|PUT) /[ -~]{0,40} HTTP/1\\.[01]\r\n",
            rest in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let mut bytes = line.into_bytes();
            bytes.extend_from_slice(&rest);
            bytes.extend_from_slice(b"\r\n\r\n");
            let _ = parse_all(&bytes);
        }

        /// A well-formed request comes out as sent.
        #[test]
        fn requests_round_trip(
            method in "(GET|POST|DELETE|PATCH)",
            path in "/[a-zA-Z0-9/._~-]{0,30}(\\?[a-z0-9=&]{0,20})?",
            fields in proptest::collection::vec(("x-[a-z]{1,12}", "[ -~]{0,40}"), 0..12),
            body in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut wire = format!("{method} {path} HTTP/1.1\r\nhost: example.test\r\n");
            for (n, v) in &fields {
                wire.push_str(&format!("{n}: {v}\r\n"));
            }
            wire.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
            let mut bytes = wire.into_bytes();
            bytes.extend_from_slice(&body);
            bytes.extend_from_slice(b"GET /next HTTP/1.1\r\n\r\n");
            let mut read = BytesMut::from(&bytes[..]);
            let Parse::Done(Next::Request(req, close)) = parse(&mut read) else {
                panic!("not parsed as a request");
            };
            prop_assert!(!close);
            prop_assert_eq!(req.method().as_str(), method.as_str());
            prop_assert_eq!(req.uri().to_string(), path);
            for (n, v) in &fields {
                prop_assert!(req.headers().get_all(n.as_str()).iter().any(|h| h.as_bytes() == v.trim().as_bytes()));
            }
            let got = futures_util::FutureExt::now_or_never(req.into_body().collect())
                .expect("a buffered body is ready")
                .map(|c| c.to_bytes())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&got[..], &body[..]);
            // The pipelined request stays in the buffer.
            prop_assert_eq!(&read[..], b"GET /next HTTP/1.1\r\n\r\n");
        }
    }

    #[test]
    fn requests_it_does_not_take() {
        for wire in [
            &b"GET / HTTP/1.0\r\n\r\n"[..],
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nconnection: Upgrade\r\n\r\n",
            b"POST / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 1\r\n\r\nx",
            b"POST / HTTP/1.1\r\ncontent-length: 99999999\r\n\r\n",
            b"POST / HTTP/1.1\r\ncontent-length: +1\r\n\r\nx",
            b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
        ] {
            assert!(
                matches!(parse_all(wire), Parse::Done(Next::Unusual)),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
        assert!(matches!(
            parse_all(b"GET / HTTP/1.1\r\nhost: a\r\n"),
            Parse::Partial
        ));
        assert!(matches!(
            parse_all(b"POST / HTTP/1.1\r\ncontent-length: 10\r\n\r\nabc"),
            Parse::NeedBody(49)
        ));
        assert!(matches!(
            parse_all(b"GET / HTTP/1.1\r\nconnection: keep-alive, close\r\n\r\n"),
            Parse::Done(Next::Request(_, true))
        ));
    }
}
