//! The Redis-protocol (RESP2/RESP3) front, `chorus start --resp ADDR`: a TCP listener and
//! one task per connection, so that redis-cli, redis-benchmark and every Redis client
//! library drive chorus unchanged. Commands (`commands`) call the same coordinator API as
//! the HTTP layer.
//!
//! Owns the connection loop and its bounds: at most `--resp-max-connections` connections
//! (one more is answered `-ERR max number of clients reached` and closed), frames within
//! `FrameLimits`, at most `MAX_PIPELINE` parsed commands per connection awaiting their
//! answer (the rest wait in the socket: TCP backpressure), a half-sent command completed
//! within `FRAME_TIMEOUT`. A pipeline's commands run concurrently in waves; a command that
//! shares a key with one before it in the wave, or changes the session, starts a new wave,
//! so every answer is what running them one by one would give, in order.
//! Must not: hold command semantics (`commands`) or frame syntax (`frame`).

pub mod commands;
pub mod frame;
mod info;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::join_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use chorus_core::coordinator::Quorum;
use chorus_core::object::MAX_NAME_BYTES as MAX_SEGMENT_BYTES;
use chorus_core::peers::Peers;
use chorus_core::storage::Storage;

use crate::server::node::Node;
use commands::{Front, FrontConfig, Kind, Plan, Session};
use frame::{FrameLimits, ProtocolError, Reply};

/// Arguments in one command (the name included): `MSET` of 2047 pairs.
pub const MAX_ARGS: usize = 4096;
/// Bytes of one inline command line (Redis's limit too).
pub const MAX_INLINE: usize = 64 * 1024;
/// A command's frame may hold this much beyond its largest bulk string.
pub const COMMAND_SLACK: usize = 1024 * 1024;
/// Commands of one connection parsed and not yet answered.
pub const MAX_PIPELINE: usize = 64;
/// A command whose first bytes arrived must be complete this soon.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(30);
const READ_CHUNK: usize = 16 * 1024;
/// After a protocol error: how long, and how many bytes, the rest of the client's input
/// is read and dropped before the socket is closed (see `close_after_error`).
const DRAIN_TIME: Duration = Duration::from_secs(1);
const DRAIN_BYTES: usize = 4 * 1024 * 1024;

/// The RESP front's settings as plain data (the `--resp*` flags of `chorus start`; see
/// `chorus start --help`), checked by `prepare`.
#[derive(Clone)]
pub struct RespSettings {
    pub listen: SocketAddr,
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    pub bucket: String,
    /// Default quorums of a new connection, as the flags give them (`quorum`, `2`, ...).
    pub r: String,
    pub w: String,
    pub max_connections: usize,
    pub max_in_flight: usize,
    pub idle_timeout_s: u64,
}

/// Without the password: the node's configuration is logged and printed in errors.
impl std::fmt::Debug for RespSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RespSettings")
            .field("listen", &self.listen)
            .field("password", &self.password.as_ref().map(|_| "(set)"))
            .field("password_file", &self.password_file)
            .field("bucket", &self.bucket)
            .field("r", &self.r)
            .field("w", &self.w)
            .field("max_connections", &self.max_connections)
            .field("max_in_flight", &self.max_in_flight)
            .field("idle_timeout_s", &self.idle_timeout_s)
            .finish()
    }
}

/// A bound listener and its checked configuration, made before the data directory is
/// touched (a busy port or a bad flag fails first).
pub struct Prepared {
    listener: TcpListener,
    config: FrontConfig,
    idle_timeout: Option<Duration>,
}

/// What the RESP front takes from the node's own settings.
pub struct NodeLimits<'a> {
    pub name: &'a str,
    pub n: usize,
    pub max_value: usize,
    pub timeout: Duration,
}

/// Checks the RESP flags and binds the port; `None` without `--resp`.
pub async fn prepare(
    resp: Option<&RespSettings>,
    node: NodeLimits<'_>,
) -> Result<Option<Prepared>, String> {
    let Some(resp) = resp else {
        return Ok(None);
    };
    let address = resp.listen;
    let password = match (&resp.password, &resp.password_file) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(file)) => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("--resp-password-file {}: {e}", file.display()))?;
            Some(text.lines().next().unwrap_or_default().to_string())
        }
        (None, None) => None,
    };
    if password.as_ref().is_some_and(String::is_empty) {
        return Err("the RESP password is empty".into());
    }
    if resp.bucket.is_empty() || resp.bucket.len() > MAX_SEGMENT_BYTES {
        return Err(format!(
            "--resp-bucket must be 1..={MAX_SEGMENT_BYTES} bytes"
        ));
    }
    if resp.max_connections == 0 || resp.max_in_flight == 0 {
        return Err("--resp-max-connections and --resp-max-in-flight must be at least 1".into());
    }
    let count = |flag: &str, value: &str| {
        Quorum::parse(value)
            .and_then(|q| q.resolve(node.n, false))
            .map_err(|e| format!("--{flag}: {e}"))
    };
    let config = FrontConfig {
        node_name: node.name.to_string(),
        address,
        password: password.map(String::into_bytes),
        default_bucket: resp.bucket.clone().into_bytes(),
        r: count("resp-r", &resp.r)?,
        w: count("resp-w", &resp.w)?,
        max_value: node.max_value,
        timeout: node.timeout,
        max_connections: resp.max_connections,
        frame_timeout: FRAME_TIMEOUT,
        max_in_flight: resp.max_in_flight,
    };
    let listener = TcpListener::bind(address)
        .await
        .map_err(|e| format!("cannot listen on {address} (RESP): {e}"))?;
    if config.password.is_none() && !address.ip().is_loopback() {
        tracing::warn!(%address, "the RESP port is reachable beyond this machine and has no --resp-password: anyone who reaches it can read and write data");
    }
    let idle_timeout = (resp.idle_timeout_s > 0).then(|| Duration::from_secs(resp.idle_timeout_s));
    Ok(Some(Prepared {
        listener,
        config,
        idle_timeout,
    }))
}

/// Serves the RESP front of `node` until the process stops.
pub async fn serve(prepared: Prepared, node: Arc<Node>) {
    tracing::info!("serving RESP on {}", prepared.config.address);
    let front = Front::new(
        node.coordinator.clone(),
        node.replica.clone(),
        node.metrics.clone(),
        prepared.config,
    );
    accept_loop(prepared.listener, Arc::new(front), prepared.idle_timeout).await;
}

/// Accepts connections within the cap; one over it gets Redis's refusal and is closed.
pub async fn accept_loop<S: Storage, P: Peers>(
    listener: TcpListener,
    front: Arc<Front<S, P>>,
    idle_timeout: Option<Duration>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(front.config.max_connections));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, typically: wait instead of spinning.
                tracing::warn!("RESP accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        front
            .stats
            .connections_received
            .fetch_add(1, Ordering::Relaxed);
        match slots.clone().try_acquire_owned() {
            Ok(permit) => {
                let front = front.clone();
                tokio::spawn(async move {
                    front.stats.connected.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = connection(&front, stream, peer, idle_timeout).await {
                        tracing::debug!(%peer, "RESP connection ended: {e}");
                    }
                    front.stats.connected.fetch_sub(1, Ordering::Relaxed);
                    drop(permit);
                });
            }
            Err(_) => {
                front.stats.rejected.fetch_add(1, Ordering::Relaxed);
                // A fresh socket's send buffer is empty, so this never blocks the loop.
                let _ = stream.try_write(b"-ERR max number of clients reached\r\n");
            }
        }
    }
}

fn limits(config: &FrontConfig) -> FrameLimits {
    let max_bulk = config.max_value.max(MAX_SEGMENT_BYTES);
    FrameLimits {
        max_args: MAX_ARGS,
        max_bulk,
        max_inline: MAX_INLINE,
        max_command: max_bulk + COMMAND_SLACK,
    }
}

/// One connection: parse what has arrived, answer it, read more. A protocol error is
/// answered after the commands before it, then the connection is closed.
async fn connection<S: Storage, P: Peers>(
    front: &Front<S, P>,
    mut stream: TcpStream,
    peer: SocketAddr,
    idle_timeout: Option<Duration>,
) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().unwrap_or(front.config.address);
    let mut session = front.session(peer, local);
    let limits = limits(&front.config);
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut out = BytesMut::new();
    let mut partial_since = None;
    loop {
        let (batch, fatal) = take_batch(&mut buf, &limits);
        let full = batch.len() == MAX_PIPELINE;
        run_batch(front, &mut session, &batch, &mut out).await;
        if let Some(e) = &fatal {
            emit(
                front,
                &session,
                &Reply::error(format!("ERR Protocol error: {e}")),
                &mut out,
            );
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if fatal.is_some() {
            return close_after_error(&mut stream).await;
        }
        if session.closing {
            return stream.shutdown().await;
        }
        if full {
            continue;
        }
        // A frame's deadline runs from its first bytes, however slowly the rest trickles in.
        if !batch.is_empty() || buf.is_empty() {
            partial_since = None;
        }
        let deadline = if buf.is_empty() {
            idle_timeout.map(|idle| Instant::now() + idle)
        } else {
            Some(*partial_since.get_or_insert_with(Instant::now) + front.config.frame_timeout)
        };
        let Some(n) = read_before(&mut stream, &mut buf, deadline).await? else {
            if !buf.is_empty() {
                let late = Reply::error(format!(
                    "ERR Protocol error: a command was not completed within {} s",
                    front.config.frame_timeout.as_secs_f64()
                ));
                emit(front, &session, &late, &mut out);
                stream.write_all(&out).await?;
            }
            return stream.shutdown().await;
        };
        if n == 0 {
            return Ok(());
        }
    }
}

/// Reads more into `buf`; `None` when `deadline` passed first.
async fn read_before(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    deadline: Option<Instant>,
) -> std::io::Result<Option<usize>> {
    buf.reserve(READ_CHUNK);
    let read = stream.read_buf(buf);
    match deadline {
        None => read.await.map(Some),
        Some(deadline) => match tokio::time::timeout_at(deadline, read).await {
            Ok(n) => n.map(Some),
            Err(_) => Ok(None),
        },
    }
}

/// Closes after a protocol error without a reset: closing a socket with unread input
/// sends a TCP RST, which can destroy the error answer before the client reads it. So it
/// stops sending first, then reads and drops what the client still sends, within bounds.
async fn close_after_error(stream: &mut TcpStream) -> std::io::Result<()> {
    stream.shutdown().await?;
    let deadline = tokio::time::Instant::now() + DRAIN_TIME;
    let mut scratch = vec![0u8; READ_CHUNK];
    let mut left = DRAIN_BYTES;
    while left > 0 {
        match tokio::time::timeout_at(deadline, stream.read(&mut scratch)).await {
            Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
            _ => break,
        }
    }
    Ok(())
}

/// Up to `MAX_PIPELINE` complete commands from the front of `buf`, and the protocol error
/// that stopped parsing, if any.
fn take_batch(
    buf: &mut BytesMut,
    limits: &FrameLimits,
) -> (Vec<Vec<Bytes>>, Option<ProtocolError>) {
    let mut batch = Vec::new();
    while batch.len() < MAX_PIPELINE {
        match frame::parse(buf, limits) {
            Ok(Some(args)) if args.is_empty() => {}
            Ok(Some(args)) => batch.push(args),
            Ok(None) => break,
            Err(e) => return (batch, Some(e)),
        }
    }
    (batch, None)
}

/// Answers a batch in order: data commands in concurrent waves of distinct keys, session
/// commands alone; nothing after a `QUIT` runs.
async fn run_batch<S: Storage, P: Peers>(
    front: &Front<S, P>,
    session: &mut Session,
    batch: &[Vec<Bytes>],
    out: &mut BytesMut,
) {
    let mut wave: Vec<(Plan, &[Bytes])> = Vec::new();
    let mut keys: HashSet<&[u8]> = HashSet::new();
    for args in batch {
        let plan = commands::plan(session, args);
        if let Plan::Run(spec) = plan {
            if spec.kind == Kind::Session {
                run_wave(front, session, &mut wave, out).await;
                keys.clear();
                let reply = commands::run_session(front, session, spec, args);
                emit(front, session, &reply, out);
                if session.closing {
                    return;
                }
                continue;
            }
        }
        let touched: Vec<&[u8]> = match &plan {
            Plan::Run(spec) => commands::keys_of(spec, args).collect(),
            Plan::Reply(_) => Vec::new(),
        };
        if touched.iter().any(|k| keys.contains(k)) {
            run_wave(front, session, &mut wave, out).await;
            keys.clear();
        }
        keys.extend(touched);
        wave.push((plan, args));
    }
    run_wave(front, session, &mut wave, out).await;
}

async fn run_wave<S: Storage, P: Peers>(
    front: &Front<S, P>,
    session: &Session,
    wave: &mut Vec<(Plan, &[Bytes])>,
    out: &mut BytesMut,
) {
    let replies = join_all(wave.drain(..).map(|(plan, args)| async move {
        match plan {
            Plan::Reply(reply) => reply,
            Plan::Run(spec) => commands::run_data(front, session, spec, args).await,
        }
    }))
    .await;
    for reply in &replies {
        emit(front, session, reply, out);
    }
}

fn emit<S: Storage, P: Peers>(
    front: &Front<S, P>,
    session: &Session,
    reply: &Reply,
    out: &mut BytesMut,
) {
    front.stats.commands.fetch_add(1, Ordering::Relaxed);
    if reply.is_error() {
        front.stats.errors.fetch_add(1, Ordering::Relaxed);
    }
    reply.encode(session.protocol, out);
}

#[cfg(test)]
mod tests;
