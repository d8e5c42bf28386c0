//! HTTP/1.1 to upstreams on the gateway's own connections, driven by the
//! request's own task.
//!
//! Why not hyper's client connection here: it runs every connection as a
//! task of its own, hands each request to it through a channel and a
//! oneshot, and reads each response into a fresh buffer. On a proxy, where
//! the upstream call *is* the hot path, that was about 16,000 of the 35,000
//! instructions a proxied request cost (BENCHMARKS.md). Here the task
//! serving the request writes the head (and body) on the socket itself and
//! parses the response head in place with `httparse`, the parser hyper
//! uses; the response body ([`PooledBody`]) reads the rest of the
//! response from the socket as it is polled and hands the connection back
//! when the response ends.
//!
//! What is accepted from an upstream follows RFC 9112: `Transfer-Encoding`
//! wins over `Content-Length` (and the connection is not reused); several
//! `Content-Length` values must agree; a response to `HEAD`, a `1xx`,
//! `204` or `304` has no body; a response delimited by the end of the
//! connection is relayed and the connection closed. Interim `1xx`
//! responses are skipped. Anything malformed fails the request (a `502`)
//! and closes the connection.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::{Buf as _, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;

use super::body::{BoxError, RequestBody};

/// Largest response head accepted from an upstream.
const MAX_HEAD: usize = 64 * 1024;
/// Most header fields accepted in a response head.
const MAX_HEADERS: usize = 128;
/// Longest chunk-size line (with extensions) or trailer section accepted.
const MAX_CHUNK_LINE: usize = 4 * 1024;
const MAX_TRAILERS: usize = 64 * 1024;
/// Read buffer reserved per read.
const READ_CHUNK: usize = 8 * 1024;
/// Most of a known-length body read at once.
const MAX_READ: usize = 64 * 1024;
/// Request bodies up to this size go out in the same write as the head.
const INLINE_BODY: usize = 16 * 1024;

/// The transport of an upstream connection.
pub(crate) enum Stream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS over TCP (boxed: its state is large and rare).
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Self::Tcp(s) => s,
            Self::Tls(s) => s.get_ref().0,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Tcp(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// An upstream HTTP/1.1 connection between exchanges.
pub(crate) struct Conn {
    io: Stream,
    /// Bytes read from the upstream and not yet consumed.
    read: BytesMut,
    /// The request head being written (kept for its capacity).
    write: Vec<u8>,
    /// Header offsets of the response head being parsed (kept for its
    /// capacity).
    offsets: Vec<HeaderOffsets>,
    /// When the connection was last put back idle.
    pub(crate) idle_since: Instant,
}

type HeaderOffsets = (usize, usize, usize, usize);

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("peer", &self.io.tcp().peer_addr().ok())
            .field("buffered", &self.read.len())
            .finish_non_exhaustive()
    }
}

/// Why an exchange failed.
#[derive(Debug)]
pub(crate) enum ExchangeError {
    /// Writing the request failed before any of it reached the upstream;
    /// the body is handed back for another attempt.
    NotWritten(io::Error, RequestBody),
    /// The connection ended before any byte of the response arrived.
    ClosedEarly(io::Error),
    /// The request body could not be read from the client.
    Body(BoxError),
    /// The upstream's response (or the connection) failed.
    Failed(io::Error),
}

impl std::fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotWritten(e, _) => write!(f, "writing the request failed: {e}"),
            Self::ClosedEarly(e) => write!(f, "connection closed before a response: {e}"),
            Self::Body(e) => write!(f, "reading the request body failed: {e}"),
            Self::Failed(e) => write!(f, "{e}"),
        }
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// How a request body goes out.
enum Outgoing {
    /// In the head's write (known, small).
    Inline(Option<Bytes>),
    /// Streamed after the head, `Content-Length` framed with this length.
    Length(RequestBody, u64),
    /// Streamed after the head, chunked.
    Chunked(RequestBody),
}

impl Outgoing {
    fn into_body(self) -> RequestBody {
        match self {
            Self::Inline(data) => RequestBody::Full(data),
            Self::Length(body, _) | Self::Chunked(body) => body,
        }
    }
}

/// Why writing a request head failed.
enum HeadError {
    /// Before any byte was accepted.
    NotWritten(io::Error),
    /// After a part of it was.
    Failed(io::Error),
}

/// A response head from the upstream, and how its body is framed.
pub(crate) struct ResponseHead {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    framing: Framing,
    keep_alive: bool,
}

/// How the rest of a response is delimited.
#[derive(Debug, Clone, Copy)]
enum Framing {
    /// This many bytes remain.
    Length(u64),
    /// Chunked transfer coding, in this state.
    Chunked(Chunk),
    /// Until the upstream closes the connection.
    Eof,
    /// Nothing remains.
    Done,
}

#[derive(Debug, Clone, Copy)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// This many bytes of chunk data remain.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// Reading the trailer section (this many bytes so far).
    Trailers(usize),
}

impl Conn {
    pub(crate) fn new(io: Stream) -> Self {
        Self {
            io,
            read: BytesMut::with_capacity(READ_CHUNK),
            write: Vec::with_capacity(1024),
            offsets: Vec::new(),
            idle_since: Instant::now(),
        }
    }

    /// Whether an idle connection can take another request: the upstream
    /// has neither closed it nor sent anything unasked. Looks at the socket
    /// without waiting.
    pub(crate) fn is_usable(&self) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        let mut buf = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        // Pending: open and quiet. Anything else (EOF, bytes, an error) means
        // the connection cannot carry a new exchange.
        self.io.tcp().poll_peek(&mut cx, &mut buf).is_pending()
    }

    /// Sends one request and reads the response head. The connection
    /// travels inside the returned [`PooledBody`] until the body ends.
    pub(crate) async fn exchange(
        mut self: Box<Self>,
        head: &Head<'_>,
        body: RequestBody,
    ) -> Result<(ResponseHead, Box<Self>), ExchangeError> {
        let Head {
            method,
            path_and_query,
            headers,
            response_room: room,
        } = *head;
        let outgoing = self.encode_head(method, path_and_query, headers, body);
        if let Outgoing::Inline(Some(data)) = &outgoing {
            self.write.extend_from_slice(data);
        }
        if let Err(e) = self.write_head().await {
            return Err(match e {
                HeadError::NotWritten(e) => ExchangeError::NotWritten(e, outgoing.into_body()),
                HeadError::Failed(e) => ExchangeError::Failed(e),
            });
        }
        match outgoing {
            Outgoing::Inline(_) => {}
            // Boxed: streamed bodies are the rare case; their state would
            // otherwise sit in every request's future.
            Outgoing::Length(body, len) => Box::pin(self.write_body(body, Some(len))).await?,
            Outgoing::Chunked(body) => Box::pin(self.write_body(body, None)).await?,
        }
        let head = self.read_head(method == Method::HEAD, room).await?;
        Ok((head, self))
    }

    /// Writes the request head into `self.write`; returns how the body goes.
    fn encode_head(
        &mut self,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: RequestBody,
    ) -> Outgoing {
        let w = &mut self.write;
        w.clear();
        w.extend_from_slice(method.as_str().as_bytes());
        w.push(b' ');
        w.extend_from_slice(path_and_query.as_bytes());
        w.extend_from_slice(b" HTTP/1.1\r\n");
        let mut had_length = false;
        for (name, value) in headers {
            // The framing is this connection's own, set below.
            if name == header::CONTENT_LENGTH {
                had_length = true;
                continue;
            }
            if name == header::TRANSFER_ENCODING {
                continue;
            }
            w.extend_from_slice(name.as_str().as_bytes());
            w.extend_from_slice(b": ");
            w.extend_from_slice(value.as_bytes());
            w.extend_from_slice(b"\r\n");
        }
        let exact = body.size_hint().exact();
        let outgoing = match body {
            RequestBody::Empty => Outgoing::Inline(None),
            RequestBody::Full(data) => Outgoing::Inline(data),
            body if body.is_end_stream() => Outgoing::Inline(None),
            body => match exact {
                Some(n) => Outgoing::Length(body, n),
                None => Outgoing::Chunked(body),
            },
        };
        match &outgoing {
            Outgoing::Inline(data) => {
                let len = data.as_ref().map_or(0, Bytes::len);
                // Methods that carry a body say it is empty; others say
                // nothing unless the client did.
                if len > 0 || had_length || expects_body(method) {
                    push_content_length(w, len as u64);
                }
            }
            Outgoing::Length(_, n) => push_content_length(w, *n),
            Outgoing::Chunked(_) => w.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        }
        w.extend_from_slice(b"\r\n");
        match outgoing {
            // Too big to copy behind the head: written on its own.
            Outgoing::Inline(Some(data)) if data.len() > INLINE_BODY => {
                let len = data.len() as u64;
                Outgoing::Length(RequestBody::Full(Some(data)), len)
            }
            outgoing => outgoing,
        }
    }

    async fn write_head(&mut self) -> Result<(), HeadError> {
        // A failed first write means the upstream saw nothing of this
        // request: a write that sends a prefix reports progress, not an
        // error.
        let first = match self.io.write(&self.write).await {
            Ok(0) => return Err(HeadError::NotWritten(io::ErrorKind::WriteZero.into())),
            Ok(n) => n,
            Err(e) => return Err(HeadError::NotWritten(e)),
        };
        if first < self.write.len() {
            self.io
                .write_all(&self.write[first..])
                .await
                .map_err(HeadError::Failed)?;
        }
        self.io.flush().await.map_err(HeadError::Failed)
    }

    /// Streams `body`, framed by `length` when given (and held to it: a
    /// body longer or shorter than it declared would desynchronise the
    /// connection), chunked otherwise.
    async fn write_body(
        &mut self,
        mut body: RequestBody,
        length: Option<u64>,
    ) -> Result<(), ExchangeError> {
        use http_body_util::BodyExt as _;
        let mut written: u64 = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(ExchangeError::Body)?;
            let Ok(data) = frame.into_data() else {
                // Trailers are not forwarded over HTTP/1.1.
                continue;
            };
            if data.is_empty() {
                continue;
            }
            written += data.len() as u64;
            match length {
                Some(declared) if written > declared => {
                    return Err(ExchangeError::Body(
                        "request body longer than its length".into(),
                    ));
                }
                Some(_) => self.io.write_all(&data).await,
                None => {
                    let mut size = [0u8; 18];
                    let n = hex_line(data.len() as u64, &mut size);
                    let mut chunk = [
                        io::IoSlice::new(&size[..n]),
                        io::IoSlice::new(&data),
                        io::IoSlice::new(b"\r\n"),
                    ];
                    write_all_vectored(&mut self.io, &mut chunk).await
                }
            }
            .map_err(ExchangeError::Failed)?;
        }
        match length {
            Some(declared) if written != declared => {
                return Err(ExchangeError::Body(
                    "request body shorter than its length".into(),
                ));
            }
            Some(_) => {}
            None => self
                .io
                .write_all(b"0\r\n\r\n")
                .await
                .map_err(ExchangeError::Failed)?,
        }
        self.io.flush().await.map_err(ExchangeError::Failed)
    }

    /// Reads until a final response head is complete.
    async fn read_head(
        &mut self,
        head_request: bool,
        room: usize,
    ) -> Result<ResponseHead, ExchangeError> {
        let mut received = false;
        loop {
            if !self.read.is_empty() {
                received = true;
                match self
                    .parse_head(head_request, room)
                    .map_err(ExchangeError::Failed)?
                {
                    Some(Parsed::Final(head)) => return Ok(head),
                    // An interim response: the final one follows.
                    Some(Parsed::Interim) => continue,
                    None if self.read.len() >= MAX_HEAD => {
                        return Err(ExchangeError::Failed(invalid("response head too large")));
                    }
                    None => {}
                }
            }
            self.read.reserve(READ_CHUNK);
            let n = match std::future::poll_fn(|cx| {
                tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read)
            })
            .await
            {
                Ok(n) => n,
                Err(e) if !received => return Err(ExchangeError::ClosedEarly(e)),
                Err(e) => return Err(ExchangeError::Failed(e)),
            };
            if n == 0 {
                let e = io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "upstream closed the connection",
                );
                return Err(if received {
                    ExchangeError::Failed(e)
                } else {
                    ExchangeError::ClosedEarly(e)
                });
            }
        }
    }

    fn parse_head(&mut self, head_request: bool, room: usize) -> io::Result<Option<Parsed>> {
        parse_response_head(&mut self.read, &mut self.offsets, head_request, room)
    }
}

/// Parses a response head from the front of `read` and consumes it;
/// `None` while incomplete. `offsets` is scratch space kept by the caller;
/// the header map has `room` for fields added later.
fn parse_response_head(
    read: &mut BytesMut,
    offsets: &mut Vec<HeaderOffsets>,
    head_request: bool,
    room: usize,
) -> io::Result<Option<Parsed>> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut fields);
    let len = match response.parse(read) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => {
            return Err(invalid(&format!("invalid response head: {e}")));
        }
    };
    let code = response.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| invalid("invalid status code"))?;
    let version = if response.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    if status.is_informational() {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(invalid("unexpected 101 response"));
        }
        read.advance(len);
        return Ok(Some(Parsed::Interim));
    }
    let base = read.as_ptr() as usize;
    offsets.clear();
    for field in response.headers.iter() {
        let name = field.name.as_ptr() as usize - base;
        let value = field.value.as_ptr() as usize - base;
        offsets.push((
            name,
            name + field.name.len(),
            value,
            value + field.value.len(),
        ));
    }
    let head = read.split_to(len).freeze();
    // Room for what the gateway adds without growing, and no more: maps
    // of up to 6 fields stay in the allocator's small-block fast path.
    let mut headers = super::headers::spare::take(offsets.len() + room);
    for &(ns, ne, vs, ve) in offsets.iter() {
        let name =
            HeaderName::from_bytes(&head[ns..ne]).map_err(|_| invalid("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))
            .map_err(|_| invalid("invalid header value"))?;
        headers.append(name, value);
    }
    let (framing, framing_allows_reuse) = framing(&headers, status, head_request)?;
    let keep_alive = framing_allows_reuse && keeps_alive(&headers, version);
    Ok(Some(Parsed::Final(ResponseHead {
        status,
        version,
        headers,
        framing,
        keep_alive,
    })))
}

impl ResponseHead {
    /// The head as a response carrying `body`.
    pub(crate) fn into_response<B>(self, body: B) -> http::Response<B> {
        let mut res = http::Response::new(body);
        *res.status_mut() = self.status;
        *res.version_mut() = self.version;
        *res.headers_mut() = self.headers;
        res
    }
}

/// The head of a request to send upstream.
#[derive(Clone, Copy)]
pub(crate) struct Head<'a> {
    pub(crate) method: &'a Method,
    pub(crate) path_and_query: &'a str,
    pub(crate) headers: &'a HeaderMap,
    /// Fields the caller adds to the response: room reserved in its header
    /// map, so that it does not grow.
    pub(crate) response_room: usize,
}

enum Parsed {
    Interim,
    Final(ResponseHead),
}

pub(crate) async fn write_all_vectored<W: AsyncWrite + Unpin>(
    io: &mut W,
    mut bufs: &mut [io::IoSlice<'_>],
) -> io::Result<()> {
    while bufs.iter().any(|b| !b.is_empty()) {
        let n = io.write_vectored(bufs).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        io::IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

fn expects_body(method: &Method) -> bool {
    *method == Method::POST || *method == Method::PUT || *method == Method::PATCH
}

fn push_content_length(w: &mut Vec<u8>, len: u64) {
    w.extend_from_slice(b"content-length: ");
    w.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
    w.extend_from_slice(b"\r\n");
}

/// Writes `len` in hex followed by CRLF; returns the length written.
pub(crate) fn hex_line(len: u64, out: &mut [u8; 18]) -> usize {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digits = (64 - len.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, slot) in out[..digits].iter_mut().enumerate() {
        let shift = 4 * (digits - 1 - i);
        *slot = DIGITS[((len >> shift) & 0xf) as usize];
    }
    out[digits] = b'\r';
    out[digits + 1] = b'\n';
    digits + 2
}

/// The body framing of a response (RFC 9112 §6.3), and whether the
/// connection may carry another exchange after it.
fn framing(
    headers: &HeaderMap,
    status: StatusCode,
    head_request: bool,
) -> io::Result<(Framing, bool)> {
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((Framing::Done, true));
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        let last = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .rfind(|t| !t.is_empty());
        let chunked = last.is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
        // With Content-Length as well, the message may have been meant to
        // smuggle: relay it by Transfer-Encoding and close afterwards.
        let reuse = chunked && !headers.contains_key(header::CONTENT_LENGTH);
        return Ok(if chunked {
            (Framing::Chunked(Chunk::Size), reuse)
        } else {
            (Framing::Eof, false)
        });
    }
    let mut length: Option<u64> = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|b| *b == b',') {
            let n = parse_decimal(trim(part)).ok_or_else(|| invalid("invalid content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(invalid("conflicting content-length values"));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(0) => (Framing::Done, true),
        Some(n) => (Framing::Length(n), true),
        None => (Framing::Eof, false),
    })
}

fn keeps_alive(headers: &HeaderMap, version: Version) -> bool {
    let mut close = false;
    let mut keep_alive = false;
    for value in headers.get_all(header::CONNECTION) {
        for token in value.as_bytes().split(|b| *b == b',') {
            let token = trim(token);
            close |= token.eq_ignore_ascii_case(b"close");
            keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
        }
    }
    !close && (version == Version::HTTP_11 || keep_alive)
}

pub(crate) fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

pub(crate) fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

/// Where a finished connection goes: back to its instance's idle list.
pub(crate) trait Release: Send + Sync {
    /// Takes back a connection whose exchange completed cleanly.
    fn release(&self, conn: Box<Conn>);
}

/// A response body read from an upstream connection as it is polled; the
/// connection is released when the body has been read to its end on a
/// connection that stays open, and closed otherwise (including when the
/// body is dropped early, which is how the upstream learns the client went
/// away).
pub struct PooledBody {
    conn: Option<Box<Conn>>,
    framing: Framing,
    keep_alive: bool,
    release: Option<std::sync::Arc<dyn Release>>,
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody")
            .field("framing", &self.framing)
            .finish_non_exhaustive()
    }
}

impl PooledBody {
    pub(crate) fn new(
        head: &ResponseHead,
        conn: Box<Conn>,
        release: std::sync::Arc<dyn Release>,
    ) -> Self {
        let mut this = Self {
            conn: Some(conn),
            framing: head.framing,
            keep_alive: head.keep_alive,
            release: Some(release),
        };
        if matches!(this.framing, Framing::Done) {
            this.finish();
        }
        this
    }

    /// The body is complete: the connection goes back if it can.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        let conn = self.conn.take();
        let release = self.release.take();
        if let (Some(conn), Some(release)) = (conn, release)
            && self.keep_alive
            && conn.read.is_empty()
        {
            release.release(conn);
        }
    }

    fn fail(&mut self, e: io::Error) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        self.release = None;
        self.framing = Framing::Done;
        Poll::Ready(Some(Err(Box::new(e))))
    }

    /// Reads more of a body that is not complete: the upstream closing
    /// the connection now is an error.
    fn poll_more(conn: &mut Conn, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<()>> {
        match ready!(Self::poll_fill(conn, cx, want)) {
            Ok(0) => Poll::Ready(Err(invalid("upstream closed the connection mid-body"))),
            Ok(_) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    /// Reads more from the upstream; `Ok(0)` at its end.
    fn poll_fill(conn: &mut Conn, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        conn.read.reserve(want.clamp(READ_CHUNK, MAX_READ));
        tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.read)
    }

    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match self.framing {
                Framing::Done => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(remaining) => {
                    if conn.read.is_empty() {
                        let want = usize::try_from(remaining).unwrap_or(MAX_READ);
                        if let Err(e) = ready!(Self::poll_more(conn, cx, want)) {
                            return self.fail(e);
                        }
                    }
                    let take = conn
                        .read
                        .len()
                        .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    let data = conn.read.split_to(take).freeze();
                    let left = remaining - take as u64;
                    self.framing = Framing::Length(left);
                    if left == 0 {
                        self.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Eof => {
                    if conn.read.is_empty() {
                        match ready!(Self::poll_fill(conn, cx, MAX_READ)) {
                            Ok(0) => {
                                self.keep_alive = false;
                                self.finish();
                                return Poll::Ready(None);
                            }
                            Ok(_) => {}
                            Err(e) => return self.fail(e),
                        }
                    }
                    let data = conn.read.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked(state) => match decode_chunk(&mut conn.read, state) {
                    Ok(Decoded::Data(data, next)) => {
                        self.framing = Framing::Chunked(next);
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Ok(Decoded::Next(next)) => self.framing = Framing::Chunked(next),
                    Ok(Decoded::End) => self.framing = Framing::Done,
                    Ok(Decoded::NeedMore(next)) => {
                        self.framing = Framing::Chunked(next);
                        let want = match next {
                            Chunk::Data(n) => usize::try_from(n).unwrap_or(MAX_READ),
                            _ => READ_CHUNK,
                        };
                        if let Err(e) = ready!(Self::poll_more(conn, cx, want)) {
                            return self.fail(e);
                        }
                    }
                    Err(e) => return self.fail(e),
                },
            }
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.get_mut().poll_data(cx)
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Done | Framing::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// One step of chunked decoding.
enum Decoded {
    /// Chunk data, then the state after it.
    Data(Bytes, Chunk),
    /// Framing consumed; go on in this state.
    Next(Chunk),
    /// Not enough buffered; read more, then go on in this state.
    NeedMore(Chunk),
    /// The last chunk and the trailers are consumed.
    End,
}

/// Decodes the front of `buf` in `state` (RFC 9112 §7.1).
fn decode_chunk(buf: &mut BytesMut, state: Chunk) -> io::Result<Decoded> {
    match state {
        Chunk::Size => {
            let Some(eol) = buf.iter().position(|b| *b == b'\n') else {
                if buf.len() > MAX_CHUNK_LINE {
                    return Err(invalid("chunk-size line too long"));
                }
                return Ok(Decoded::NeedMore(Chunk::Size));
            };
            if eol > MAX_CHUNK_LINE {
                return Err(invalid("chunk-size line too long"));
            }
            let line = &buf[..eol];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let digits_end = line
                .iter()
                .position(|b| !b.is_ascii_hexdigit())
                .unwrap_or(line.len());
            let rest = &line[digits_end..];
            // After the size only whitespace and extensions may follow.
            if digits_end == 0
                || digits_end > 16
                || !(rest.is_empty() || matches!(rest[0], b';' | b' ' | b'\t'))
            {
                return Err(invalid("invalid chunk size"));
            }
            let size = line[..digits_end].iter().fold(0u64, |n, d| {
                (n << 4) | u64::from(char::from(*d).to_digit(16).unwrap_or(0))
            });
            buf.advance(eol + 1);
            Ok(Decoded::Next(if size == 0 {
                Chunk::Trailers(0)
            } else {
                Chunk::Data(size)
            }))
        }
        Chunk::Data(remaining) => {
            if buf.is_empty() {
                return Ok(Decoded::NeedMore(state));
            }
            let take = buf
                .len()
                .min(usize::try_from(remaining).unwrap_or(usize::MAX));
            let data = buf.split_to(take).freeze();
            let left = remaining - take as u64;
            Ok(Decoded::Data(
                data,
                if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                },
            ))
        }
        Chunk::DataEnd => {
            if buf.len() < 2 {
                if buf.first().is_some_and(|b| *b != b'\r') {
                    return Err(invalid("chunk data not followed by CRLF"));
                }
                return Ok(Decoded::NeedMore(state));
            }
            if &buf[..2] != b"\r\n" {
                return Err(invalid("chunk data not followed by CRLF"));
            }
            buf.advance(2);
            Ok(Decoded::Next(Chunk::Size))
        }
        Chunk::Trailers(seen) => {
            // Trailer fields are read and dropped, up to the empty line.
            let Some(eol) = buf.iter().position(|b| *b == b'\n') else {
                if seen + buf.len() > MAX_TRAILERS {
                    return Err(invalid("trailer section too large"));
                }
                return Ok(Decoded::NeedMore(state));
            };
            let line_len = eol + 1;
            let empty = buf[..eol]
                .strip_suffix(b"\r")
                .unwrap_or(&buf[..eol])
                .is_empty();
            buf.advance(line_len);
            if empty {
                return Ok(Decoded::End);
            }
            let seen = seen + line_len;
            if seen > MAX_TRAILERS {
                return Err(invalid("trailer section too large"));
            }
            Ok(Decoded::Next(Chunk::Trailers(seen)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> io::Result<Vec<u8>> {
        let mut buf = BytesMut::from(input);
        let mut state = Chunk::Size;
        let mut out = Vec::new();
        loop {
            match decode_chunk(&mut buf, state)? {
                Decoded::Data(d, next) => {
                    out.extend_from_slice(&d);
                    state = next;
                }
                Decoded::Next(next) => state = next,
                Decoded::NeedMore(_) => return Err(invalid("incomplete")),
                Decoded::End => return Ok(out),
            }
        }
    }

    #[test]
    fn chunked_decoding() {
        assert_eq!(decode_all(b"5\r\nhello\r\n0\r\n\r\n").unwrap(), b"hello");
        assert_eq!(
            decode_all(b"3;ext=1\r\nabc\r\nA\r\n0123456789\r\n0\r\nx-t: 1\r\n\r\n").unwrap(),
            b"abc0123456789"
        );
        assert!(decode_all(b"zz\r\n").is_err());
        assert!(decode_all(b"5\r\nhelloXX0\r\n\r\n").is_err());
        assert!(
            decode_all(b"11111111111111111\r\n").is_err(),
            "size overflow"
        );
        assert!(decode_all(b"-1\r\n").is_err());
    }

    #[test]
    fn hex_lines() {
        for n in [0u64, 1, 15, 16, 255, 4096, u64::MAX] {
            let mut out = [0u8; 18];
            let len = hex_line(n, &mut out);
            assert_eq!(&out[..len], format!("{n:x}\r\n").as_bytes());
        }
    }

    #[test]
    fn response_framing() {
        let h = |pairs: &[(&str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.append(
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            m
        };
        let ok = StatusCode::OK;
        assert!(matches!(
            framing(&h(&[("content-length", "5")]), ok, false).unwrap(),
            (Framing::Length(5), true)
        ));
        assert!(matches!(
            framing(&h(&[("content-length", "5, 5")]), ok, false).unwrap(),
            (Framing::Length(5), true)
        ));
        assert!(
            framing(
                &h(&[("content-length", "5"), ("content-length", "6")]),
                ok,
                false
            )
            .is_err()
        );
        assert!(framing(&h(&[("content-length", "+5")]), ok, false).is_err());
        assert!(matches!(
            framing(
                &h(&[
                    ("transfer-encoding", "gzip, chunked"),
                    ("content-length", "5")
                ]),
                ok,
                false
            )
            .unwrap(),
            (Framing::Chunked(_), false)
        ));
        assert!(matches!(
            framing(&h(&[("transfer-encoding", "gzip")]), ok, false).unwrap(),
            (Framing::Eof, false)
        ));
        assert!(matches!(
            framing(&h(&[]), ok, false).unwrap(),
            (Framing::Eof, false)
        ));
        assert!(matches!(
            framing(&h(&[("content-length", "5")]), ok, true).unwrap(),
            (Framing::Done, true)
        ));
        assert!(matches!(
            framing(&h(&[]), StatusCode::NO_CONTENT, false).unwrap(),
            (Framing::Done, true)
        ));
        assert!(keeps_alive(&h(&[]), Version::HTTP_11));
        assert!(!keeps_alive(
            &h(&[("connection", "Close")]),
            Version::HTTP_11
        ));
        assert!(!keeps_alive(&h(&[]), Version::HTTP_10));
        assert!(keeps_alive(
            &h(&[("connection", "keep-alive")]),
            Version::HTTP_10
        ));
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Chunked data, however it is cut into chunks and however the
        /// reads split it, decodes to what was sent.
        #[test]
        fn chunked_round_trip(
            data in proptest::collection::vec(any::<u8>(), 0..2000),
            sizes in proptest::collection::vec(1usize..300, 1..20),
            cuts in proptest::collection::vec(1usize..64, 1..50),
        ) {
            let mut wire = Vec::new();
            let mut rest = &data[..];
            let mut i = 0;
            while !rest.is_empty() {
                let n = sizes[i % sizes.len()].min(rest.len());
                wire.extend_from_slice(format!("{n:X}\r\n").as_bytes());
                wire.extend_from_slice(&rest[..n]);
                wire.extend_from_slice(b"\r\n");
                rest = &rest[n..];
                i += 1;
            }
            wire.extend_from_slice(b"0\r\nx-t: 1\r\n\r\n");
            let mut buf = BytesMut::new();
            let mut fed = 0;
            let mut cut = 0;
            let mut state = Chunk::Size;
            let mut out = Vec::new();
            loop {
                match decode_chunk(&mut buf, state).map_err(|e| TestCaseError::fail(e.to_string()))? {
                    Decoded::Data(d, next) => { out.extend_from_slice(&d); state = next; }
                    Decoded::Next(next) => state = next,
                    Decoded::NeedMore(next) => {
                        prop_assert!(fed < wire.len(), "decoder wants more than was sent");
                        let n = cuts[cut % cuts.len()].min(wire.len() - fed);
                        buf.extend_from_slice(&wire[fed..fed + n]);
                        fed += n;
                        cut += 1;
                        state = next;
                    }
                    Decoded::End => break,
                }
            }
            prop_assert_eq!(out, data);
            prop_assert_eq!(fed, wire.len());
            prop_assert!(buf.is_empty());
        }

        /// Whatever an upstream sends, parsing it never panics.
        #[test]
        fn arbitrary_response_heads_never_panic(
            line in "HTTP/1\\.[01] [0-9]{3} [ -~]{0,20}\r\n",
            rest in proptest::collection::vec(any::<u8>(), 0..512),
            head_request in any::<bool>(),
        ) {
            let mut bytes = line.into_bytes();
            bytes.extend_from_slice(&rest);
            bytes.extend_from_slice(b"\r\n\r\n");
            let _ = parse_response_head(&mut BytesMut::from(&bytes[..]), &mut Vec::new(), head_request, 1);
            let _ = parse_response_head(&mut BytesMut::from(&rest[..]), &mut Vec::new(), head_request, 1);
        }

        /// Arbitrary chunked framing never panics either.
        #[test]
        fn arbitrary_chunked_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut buf = BytesMut::from(&bytes[..]);
            let mut state = Chunk::Size;
            for _ in 0..1000 {
                match decode_chunk(&mut buf, state) {
                    Ok(Decoded::Data(_, next) | Decoded::Next(next)) => state = next,
                    Ok(Decoded::NeedMore(_) | Decoded::End) | Err(_) => break,
                }
            }
        }
    }
}
