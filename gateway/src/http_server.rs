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
//! busy ones finish their request first (bounded by the limits above).

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
use tower::ServiceExt as _;

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

/// What one listener allows.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections at most; see the module docs for what happens past it.
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub body_deadline: Duration,
}

impl Limits {
    /// The standard timeouts with a cap of `max_connections`.
    pub const fn with_max_connections(max_connections: usize) -> Limits {
        Limits {
            max_connections,
            header_read_timeout: HEADER_READ_TIMEOUT,
            body_deadline: BODY_DEADLINE,
        }
    }
}

/// A body that did not arrive within [`Limits::body_deadline`].
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyDeadline(Duration);

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets
/// requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let open = Arc::new(Mutex::new(Open::default()));
    let tasks = TaskTracker::new();
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
        tasks.spawn(serve_connection(
            stream,
            router.clone(),
            conn,
            limits,
            shutdown.clone(),
            slot,
        ));
    }
    drop(listener);
    tasks.close();
    tasks.wait().await;
    Ok(())
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
    shutdown: CancellationToken,
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
        () = shutdown.cancelled() => {
            if conn.idle() {
                return;
            }
            connection.as_mut().graceful_shutdown();
            connection.await
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
    let response = match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
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
