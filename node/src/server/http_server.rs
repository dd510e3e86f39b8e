//! The client HTTP port's accept loop and its resource bounds: at most `max_connections`
//! open connections (one more is answered `503 too_many_connections` and closed), a
//! header read timeout that also closes idle keep-alive connections, a bounded read buffer
//! per connection, and a graceful shutdown. Each connection is served by hyper's HTTP/1.1
//! server with the axum router as its service.
//!
//! Must not: know any route or API semantics (`http.rs` does). Why not `axum::serve`: it
//! has no connection cap and no header timeout, and 20,000 idle connections exhausted the
//! node's file descriptors, which crashed its storage engine (issue 15).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use chorus_core::metrics::Metrics;

/// Largest read buffer of one connection (request line and headers must fit).
const MAX_READ_BUFFER: usize = 64 * 1024;
/// Refusals written at once; beyond it a connection over the cap is closed unanswered.
const MAX_REFUSALS_IN_FLIGHT: usize = 64;
/// How long a refusal may take to write.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);
/// How long shutdown waits for open connections to finish their requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// After an accept error (EMFILE: no descriptor left) the loop waits this long.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Clone, Debug)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

const REFUSAL_BODY: &str = r#"{"error":"too_many_connections","message":"this node has as many client connections open as it allows (--http-max-connections); retry later or use another node"}"#;

/// Serves `router` on `listener` until `shutdown` completes, then lets open connections
/// finish (up to a grace period).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT));
    let graceful = GracefulShutdown::new();
    let mut accept_errors: u64 = 0;
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_errors += 1;
                    if accept_errors % 1000 == 1 {
                        tracing::warn!(errors = accept_errors, "cannot accept an HTTP connection: {e}");
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                metrics.http_connections.inc();
                let connection = builder(&limits).serve_connection(
                    TokioIo::new(stream),
                    TowerToHyperService::new(router.clone()),
                );
                let connection = graceful.watch(connection);
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    // Errors are the client's (a malformed request, a timeout, a reset):
                    // hyper already answered what could be answered.
                    let _ = connection.await;
                    metrics.http_connections.dec();
                    drop(permit);
                });
            }
            Err(_) => {
                metrics.http_connections_refused.inc();
                if let Ok(slot) = refusals.clone().try_acquire_owned() {
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(REFUSAL_TIMEOUT, refuse(stream)).await;
                        drop(slot);
                    });
                }
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("HTTP connections still open after {SHUTDOWN_GRACE:?}; closing them");
    }
}

fn builder(limits: &HttpLimits) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_READ_BUFFER);
    builder
}

/// Answers a connection over the cap without reading its request.
async fn refuse(mut stream: TcpStream) {
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{REFUSAL_BODY}",
        REFUSAL_BODY.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Raises this process's file descriptor limit to its hard limit and returns how many
/// client connections fit while `reserve` descriptors stay for storage, QUIC and logs.
pub fn connection_budget(reserve: u64) -> Result<u64, String> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(format!(
                "cannot read the file descriptor limit: {}",
                std::io::Error::last_os_error()
            ));
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    Ok(limit.rlim_cur.saturating_sub(reserve))
}
