//! The HTTP server under both listeners (webhook ingress and admin): an axum
//! router on hyper's HTTP/1 connections, with the limits `axum::serve` lacks,
//! so that slow or idle clients cannot hold the gateway's sockets and file
//! descriptors.
//!
//! - Request headers must arrive whole within [`HEADER_READ_TIMEOUT`] of the
//!   connection opening or of the previous response. This one timer ends
//!   idle sockets, half-sent headers and idle keep-alive connections alike.
//! - A request body must arrive whole within [`BODY_DEADLINE`] of its
//!   headers, however it trickles; otherwise the reply is 408 and the
//!   connection is closed.
//! - A listener holds at most [`Limits::max_connections`]. One more evicts
//!   the oldest connection that is idle (no request in flight: waiting for or
//!   reading headers); when every one is busy, the newcomer is closed at once.
//!   A flood of idle sockets thus cannot lock out a real webhook: each new
//!   connection pushes the oldest idle one out.
//!
//! On shutdown the listener stops accepting, idle connections are closed and
//! busy ones finish their request first, for up to [`Limits::drain`]; what
//! is still open then is closed, so stopping a server cannot hang on a
//! client that reads its response slowly.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use axum::response::IntoResponse;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::tasks::Tasks;

/// How long a client has to send a request's headers: from connecting, or
/// from the previous response on a kept-alive connection. Webhook senders
/// send theirs at once; 10 s is generous on a slow mobile uplink.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request body may take, counted from its headers. Webhook
/// bodies are a few KiB; 15 s ends a body trickled a byte at a time.
pub const BODY_DEADLINE: Duration = Duration::from_secs(15);

/// How long to wait before accepting again after an error that is not the
/// client's (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(250);

/// How long requests in flight may take to finish once the server stops,
/// unless the listener says otherwise ([`Limits::drain`]).
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// What one listener allows.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections at most; see the module docs for what happens past it.
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub body_deadline: Duration,
    /// After shutdown, how long busy connections may take to finish their
    /// request; then they are closed.
    pub drain: Duration,
}

impl Limits {
    /// The standard timeouts with a cap of `max_connections`.
    pub const fn with_max_connections(max_connections: usize) -> Limits {
        Limits {
            max_connections,
            header_read_timeout: HEADER_READ_TIMEOUT,
            body_deadline: BODY_DEADLINE,
            drain: DRAIN_DEADLINE,
        }
    }

    /// These limits with `drain` as the time requests in flight get at shutdown.
    pub const fn with_drain(self, drain: Duration) -> Limits {
        Limits { drain, ..self }
    }
}

/// A body that did not arrive within [`Limits::body_deadline`].
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyDeadline(Duration);

/// Serves `router` on `listener` until `tasks` is cancelled, then lets
/// requests in flight finish (for up to [`Limits::drain`]). Each connection
/// is a task on `tasks`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    tasks: Tasks,
) -> std::io::Result<()> {
    let shutdown = tasks.token().clone();
    let open = Arc::new(Mutex::new(Open::default()));
    // This listener's connections, to wait for them alone; they run on the tree.
    let connections = TaskTracker::new();
    // Cancelled when the drain deadline passes: what is still open is closed.
    let close = CancellationToken::new();
    // Refusals are logged once per run of them, not once per connection.
    let mut refusing = false;
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection failed; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        let admitted = open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(limits.max_connections);
        let Some((id, conn)) = admitted else {
            if !refusing {
                tracing::warn!(
                    max = limits.max_connections,
                    "refusing connections: every connection is busy"
                );
            }
            refusing = true;
            drop(stream);
            continue;
        };
        refusing = false;
        let slot = Slot {
            open: open.clone(),
            id,
        };
        let connection = serve_connection(
            stream,
            router.clone(),
            conn,
            limits,
            Stop {
                shutdown: shutdown.clone(),
                close: close.clone(),
            },
            slot,
        );
        tasks.spawn("http connection", connections.track_future(connection));
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(limits.drain, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            drain_ms = limits.drain.as_millis() as u64,
            "closing connections whose requests did not finish in time"
        );
        close.cancel();
        connections.wait().await;
    }
    Ok(())
}

/// How a connection is told to stop.
struct Stop {
    /// The server stops: idle connections close, busy ones finish.
    shutdown: CancellationToken,
    /// The drain deadline passed: close now.
    close: CancellationToken,
}

/// Errors of one client's connection, not of the listener.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// One open connection, as the accept loop sees it.
#[derive(Debug, Default)]
struct Conn {
    /// Requests in flight (a request counts until its response is written).
    busy: AtomicUsize,
    /// Cancelled to evict the connection: its socket is closed at once.
    evict: CancellationToken,
}

impl Conn {
    fn idle(&self) -> bool {
        self.busy.load(Ordering::SeqCst) == 0
    }
}

/// The open connections of one listener, oldest first.
#[derive(Debug, Default)]
struct Open {
    next_id: u64,
    conns: BTreeMap<u64, Arc<Conn>>,
}

impl Open {
    /// Makes room for one more connection if it can: at the cap, the oldest
    /// idle one is evicted; `None` when every one is busy.
    fn admit(&mut self, max: usize) -> Option<(u64, Arc<Conn>)> {
        if self.conns.len() >= max {
            let oldest_idle = self
                .conns
                .iter()
                .find(|(_, c)| c.idle())
                .map(|(id, _)| *id)?;
            if let Some(evicted) = self.conns.remove(&oldest_idle) {
                tracing::debug!(max, "connection cap reached; closing the oldest idle one");
                evicted.evict.cancel();
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let conn = Arc::new(Conn::default());
        self.conns.insert(id, conn.clone());
        Some((id, conn))
    }
}

/// Frees a connection's place when its task ends, however it ends.
struct Slot {
    open: Arc<Mutex<Open>>,
    id: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .conns
            .remove(&self.id);
    }
}

async fn serve_connection(
    stream: TcpStream,
    router: Router,
    conn: Arc<Conn>,
    limits: Limits,
    stop: Stop,
    _slot: Slot,
) {
    let service = {
        let conn = conn.clone();
        hyper::service::service_fn(move |request| {
            handle(router.clone(), conn.clone(), limits.body_deadline, request)
        })
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        // Dropping the connection closes the socket.
        () = conn.evict.cancelled() => return,
        () = stop.shutdown.cancelled() => {
            if conn.idle() {
                return;
            }
            connection.as_mut().graceful_shutdown();
            tokio::select! {
                result = connection => result,
                () = stop.close.cancelled() => return,
            }
        }
    };
    if let Err(e) = result {
        // Timeouts and clients that hang up: theirs, not ours.
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// One request: counted as busy until its response is written; its body
/// given [`Limits::body_deadline`] to arrive.
async fn handle(
    router: Router,
    conn: Arc<Conn>,
    body_deadline: Duration,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let busy = Busy::enter(conn);
    let expired = Arc::new(AtomicBool::new(false));
    let request = request.map(|body| {
        Body::new(DeadlineBody {
            inner: body,
            deadline: Box::pin(tokio::time::sleep(body_deadline)),
            limit: body_deadline,
            expired: expired.clone(),
        })
    });
    let response = call(router, request).await;
    let response = if expired.load(Ordering::SeqCst) {
        body_timed_out()
    } else {
        response
    };
    Ok(response.map(|body| {
        Body::new(Guarded {
            inner: body,
            _busy: busy,
        })
    }))
}

/// What `router` answers to `request`, without a socket (axum's router is
/// a tower service; hyper-util adapts it to hyper's, so the gateway needs
/// no tower of its own).
pub async fn call<B>(router: Router, request: Request<B>) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    use hyper::service::Service as _;
    match hyper_util::service::TowerToHyperService::new(router)
        .call(request)
        .await
    {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// The reply to a body that took too long, whatever the handler made of
/// the failed read; the connection is closed after it.
fn body_timed_out() -> Response<Body> {
    let body = serde_json::json!({
        "error": "request_timeout",
        "reason": "the request body took too long to arrive",
    });
    let mut response = (StatusCode::REQUEST_TIMEOUT, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Marks its connection busy while alive.
struct Busy(Arc<Conn>);

impl Busy {
    fn enter(conn: Arc<Conn>) -> Busy {
        conn.busy.fetch_add(1, Ordering::SeqCst);
        Busy(conn)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its connection busy until hyper has written
/// it (and dropped it), so eviction never cuts a reply short.
struct Guarded {
    inner: Body,
    _busy: Busy,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that fails once its deadline passes, and says so in
/// `expired`.
struct DeadlineBody {
    inner: Incoming,
    deadline: Pin<Box<Sleep>>,
    limit: Duration,
    expired: Arc<AtomicBool>,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        // The deadline first: a body trickled fast enough to always have a
        // frame ready must still end.
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.expired.store(true, Ordering::SeqCst);
            return Poll::Ready(Some(Err(Box::new(BodyDeadline(this.limit)))));
        }
        Pin::new(&mut this.inner)
            .poll_frame(cx)
            .map_err(|e| Box::new(e) as Self::Error)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// On tokio's paused clock over real loopback sockets: the clock moves
    /// only when every task waits and no socket is ready, so the sleep below
    /// lets the server take the slow request in, and the drain's 300 ms pass
    /// at once.
    #[tokio::test(start_paused = true)]
    async fn at_shutdown_a_request_that_outlasts_the_drain_is_cut_off() {
        let router = Router::new()
            .route(
                "/slow",
                axum::routing::get(std::future::pending::<&'static str>),
            )
            .route("/fast", axum::routing::get(|| async { "ok" }));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let tasks = Tasks::new();
        let limits = Limits::with_max_connections(8).with_drain(Duration::from_millis(300));
        let server = tokio::spawn(serve(listener, router, limits, tasks.clone()));

        let mut fast = tokio::net::TcpStream::connect(addr).await.expect("connect");
        fast.write_all(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut reply = [0u8; 64];
        let n = fast.read(&mut reply).await.expect("read");
        assert!(reply[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &reply[..n]);
        let mut slow = tokio::net::TcpStream::connect(addr).await.expect("connect");
        slow.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_millis(100)).await;

        let stopping = tokio::time::Instant::now();
        tasks.cancel();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the server stops after its drain deadline")
            .expect("server task")
            .expect("serve");
        assert!(stopping.elapsed() >= Duration::from_millis(300));
        let n = slow.read(&mut reply).await.expect("read");
        assert_eq!(
            n, 0,
            "the slow request's connection is closed without a reply"
        );
        assert!(
            tasks.shut_down(Duration::from_secs(1)).await,
            "{}",
            tasks.running()
        );
    }

    #[test]
    fn at_the_cap_the_oldest_idle_connection_is_evicted() {
        let mut open = Open::default();
        let (_, first) = open.admit(2).expect("room");
        let (_, second) = open.admit(2).expect("room");
        let _busy = Busy::enter(first.clone());
        let (_, third) = open.admit(2).expect("the idle one makes room");
        assert!(!first.evict.is_cancelled(), "busy connections stay");
        assert!(second.evict.is_cancelled(), "the oldest idle one goes");
        assert!(!third.evict.is_cancelled());
        assert_eq!(open.conns.len(), 2);
    }

    #[test]
    fn when_every_connection_is_busy_the_new_one_is_refused() {
        let mut open = Open::default();
        let (_, only) = open.admit(1).expect("room");
        let busy = Busy::enter(only.clone());
        assert!(open.admit(1).is_none());
        drop(busy);
        assert!(open.admit(1).is_some(), "idle again, so it can be evicted");
        assert!(only.evict.is_cancelled());
    }
}
