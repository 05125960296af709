//! The admin HTTP endpoint of server and agent: a minimal HTTP/1.1 server on its own thread with
//! its own tokio current-thread runtime, and the handlers of each side (`server`, `agent`).
//!
//! One request per connection (`Connection: close`), `GET`/`HEAD`/`POST` with an optional
//! `Content-Length` body; the head is bounded to [`MAX_HEAD_BYTES`] and [`MAX_HEADERS`] (431
//! beyond), the body to [`MAX_BODY_BYTES`] (413 beyond, checked before any of it is read), the
//! whole request to [`READ_TIMEOUT`] (408), and at most [`MAX_CONNECTIONS`] are served at once.
//! Malformed requests get 400, unknown paths 404, wrong methods 405.
//!
//! With a token (`admin.token` / `admin.token_file`), every request except
//! [`UNAUTHENTICATED_PATHS`] must carry `Authorization: Bearer <token>` (compared in constant
//! time) or is answered 401. The token is a [`Secret`]: never logged or echoed.
//!
//! The admin must never run on a worker or on the control path, never block them (it asks the
//! control path over its command channel with a timeout) and never render a secret.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Semaphore};
use tracing::{debug, info};

use crate::secret::Secret;

mod auth;
pub use auth::{authorized, UNAUTHENTICATED_PATHS};

/// Largest request head (request line and headers) accepted, in bytes.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header lines accepted.
pub const MAX_HEADERS: usize = 64;
/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Time a client has to send its whole request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time to write the response.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Admin connections served at once; more are closed at accept.
pub const MAX_CONNECTIONS: usize = 64;

/// Why the admin endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot listen on {addr} (admin): {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot read the admin listener's address: {0}")]
    LocalAddr(io::Error),
    #[error("cannot start the admin thread: {0}")]
    Thread(io::Error),
    #[error("cannot build the admin runtime: {0}")]
    Runtime(io::Error),
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path without the query string.
    pub path: String,
    pub query: String,
    pub body: Vec<u8>,
    /// The `Authorization` header's value (redacted in `Debug`).
    pub authorization: Option<Secret>,
}

/// A response to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Methods allowed (405 answers).
    pub allow: Option<&'static str>,
    /// `WWW-Authenticate` challenge (401 answers).
    pub challenge: Option<&'static str>,
}

impl Response {
    /// A plain-text response.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into().into_bytes(),
            allow: None,
            challenge: None,
        }
    }

    /// A JSON response.
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
        body.push(b'\n');
        Self {
            status,
            content_type: "application/json",
            body,
            allow: None,
            challenge: None,
        }
    }

    /// 404.
    pub fn not_found(path: &str) -> Self {
        Self::text(404, format!("no such endpoint: {path}\n"))
    }

    /// 401 with a `WWW-Authenticate: Bearer` challenge.
    pub fn unauthorized() -> Self {
        let mut r = Self::text(
            401,
            "unauthorized: send the admin token as Authorization: Bearer <token>\n",
        );
        r.challenge = Some("Bearer realm=\"ringtun-admin\"");
        r
    }

    /// 405 with an `Allow` header.
    pub fn method_not_allowed(allow: &'static str) -> Self {
        let mut r = Self::text(405, format!("method not allowed; use {allow}\n"));
        r.allow = Some(allow);
        r
    }
}

/// Answers admin requests; runs on the admin thread only.
pub trait Handler: 'static {
    fn handle(&self, req: Request) -> impl Future<Output = Response>;
}

/// Checks the method of a known path: `GET` (and `HEAD`) only.
pub fn get_only(req: &Request) -> Option<Response> {
    match req.method.as_str() {
        "GET" | "HEAD" => None,
        _ => Some(Response::method_not_allowed("GET, HEAD")),
    }
}

/// A running admin endpoint; stops when dropped.
pub struct AdminServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Binds the admin listener (so a bad address fails the start of server or agent).
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, AdminError> {
    let listener =
        std::net::TcpListener::bind(addr).map_err(|source| AdminError::Bind { addr, source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| AdminError::Bind { addr, source })?;
    Ok(listener)
}

impl AdminServer {
    /// Serves `handler` on `listener` from a new thread named `thread_name`; with `token`, every
    /// request but [`UNAUTHENTICATED_PATHS`] must present it (see [`authorized`]).
    pub fn start<H: Handler + Send>(
        thread_name: &str,
        listener: std::net::TcpListener,
        handler: H,
        token: Option<Secret>,
    ) -> Result<Self, AdminError> {
        let addr = listener.local_addr().map_err(AdminError::LocalAddr)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(AdminError::Runtime)?;
        let (stop_tx, stop_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(thread_name.into())
            .spawn(move || {
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, serve(listener, Rc::new(handler), token, stop_rx));
            })
            .map_err(AdminError::Thread)?;
        info!(admin = %addr, "admin endpoint listening");
        Ok(Self {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The bound address (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and waits for the thread (in-flight requests are dropped).
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve<H: Handler>(
    listener: std::net::TcpListener,
    handler: Rc<H>,
    token: Option<Secret>,
    mut stop: oneshot::Receiver<()>,
) {
    let token = Rc::new(token);
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot adopt the admin listener");
            return;
        }
    };
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        debug!(%peer, "too many admin connections; closing");
                        continue;
                    };
                    let handler = handler.clone();
                    let token = token.clone();
                    tokio::task::spawn_local(async move {
                        if let Err(e) = connection(stream, peer, &*handler, token.as_ref().as_ref()).await {
                            debug!(%peer, error = %e, "admin connection failed");
                        }
                        drop(permit);
                    });
                }
                Err(e) => {
                    crate::log_limited!(warn!(error = %e, "admin accept failed"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Why a request could not be read.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("request head larger than {MAX_HEAD_BYTES} bytes or {MAX_HEADERS} headers")]
    HeadTooLarge,
    #[error("request body larger than {MAX_BODY_BYTES} bytes")]
    BodyTooLarge,
    #[error("request not received within {} s", READ_TIMEOUT.as_secs())]
    Timeout,
    #[error("connection closed before the request was complete")]
    Closed,
    #[error("read failed: {0}")]
    Io(#[from] io::Error),
}

async fn connection<H: Handler>(
    mut stream: TcpStream,
    peer: SocketAddr,
    handler: &H,
    token: Option<&Secret>,
) -> io::Result<()> {
    let read = tokio::time::timeout(READ_TIMEOUT, read_request(&mut stream))
        .await
        .unwrap_or(Err(ReadError::Timeout));
    let (response, head_only) = match read {
        Ok(req) if !authorized(token, &req) => {
            crate::log_limited!(warn!(%peer, path = %req.path, method = %req.method,
                "admin request refused (401): missing or wrong bearer token"));
            (Response::unauthorized(), req.method == "HEAD")
        }
        Ok(req) => {
            let head_only = req.method == "HEAD";
            (handler.handle(req).await, head_only)
        }
        Err(ReadError::Closed) => return Ok(()),
        Err(ReadError::Io(e)) => return Err(e),
        Err(e @ ReadError::Malformed(_)) => (Response::text(400, format!("{e}\n")), false),
        Err(e @ ReadError::HeadTooLarge) => (Response::text(431, format!("{e}\n")), false),
        Err(e @ ReadError::BodyTooLarge) => (Response::text(413, format!("{e}\n")), false),
        Err(e @ ReadError::Timeout) => (Response::text(408, format!("{e}\n")), false),
    };
    let bytes = encode_response(&response, head_only);
    tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "response write timed out"))?
}

async fn read_request(stream: &mut TcpStream) -> Result<Request, ReadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() >= MAX_HEAD_BYTES {
            return Err(ReadError::HeadTooLarge);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(if buf.is_empty() {
                ReadError::Closed
            } else {
                ReadError::Malformed("incomplete request head")
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    if head_end > MAX_HEAD_BYTES {
        return Err(ReadError::HeadTooLarge);
    }
    let (mut req, content_length) = parse_head(&buf[..head_end])?;
    // `parse_head` bounds the length, so the end cannot overflow; checked all the same.
    let body_start = head_end + 4;
    let body_end = body_start
        .checked_add(content_length)
        .ok_or(ReadError::BodyTooLarge)?;
    while buf.len() < body_end {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(ReadError::Malformed("body shorter than Content-Length"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    req.body = buf
        .get(body_start..body_end)
        .ok_or(ReadError::Malformed("body shorter than Content-Length"))?
        .to_vec();
    Ok(req)
}

/// Parses the request line and headers; returns the request (without body) and the body length.
fn parse_head(head: &[u8]) -> Result<(Request, usize), ReadError> {
    let head = std::str::from_utf8(head).map_err(|_| ReadError::Malformed("not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Malformed("bad request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(ReadError::Malformed("not HTTP/1.x"));
    }
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(ReadError::Malformed("bad method"));
    }
    if !target.starts_with('/') {
        return Err(ReadError::Malformed("target is not an absolute path"));
    }
    let mut content_length: Option<usize> = None;
    let mut authorization = None;
    for (i, line) in lines.enumerate() {
        if i >= MAX_HEADERS {
            return Err(ReadError::HeadTooLarge);
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(ReadError::Malformed("header without a colon"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            if content_length.is_some() {
                return Err(ReadError::Malformed("more than one Content-Length"));
            }
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ReadError::Malformed("bad Content-Length"));
            }
            // Digits only: a value too long for u64 is too large, not malformed.
            let length = value.parse::<u64>().unwrap_or(u64::MAX);
            if length > MAX_BODY_BYTES as u64 {
                return Err(ReadError::BodyTooLarge);
            }
            content_length = usize::try_from(length).ok();
        } else if name.eq_ignore_ascii_case("authorization") {
            if authorization.is_some() {
                return Err(ReadError::Malformed("more than one Authorization"));
            }
            authorization = Some(Secret::new(value));
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ReadError::Malformed("Transfer-Encoding is not supported"));
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Ok((
        Request {
            method: method.to_string(),
            path: path.to_string(),
            query: query.to_string(),
            body: Vec::new(),
            authorization,
        },
        content_length.unwrap_or(0),
    ))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

fn encode_response(r: &Response, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    );
    if let Some(allow) = r.allow {
        out.push_str("Allow: ");
        out.push_str(allow);
        out.push_str("\r\n");
    }
    if let Some(challenge) = r.challenge {
        out.push_str("WWW-Authenticate: ");
        out.push_str(challenge);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !head_only {
        bytes.extend_from_slice(&r.body);
    }
    bytes
}

#[cfg(test)]
mod tests;
