//! `chorus bench`: a load generator with latency percentiles, for chorus and, to compare
//! side by side on the same machine, etcd (v3 JSON gateway) and redis (RESP).
//!
//! Closed loop by default: `--concurrency` workers, each on its own keep-alive
//! connection, spread round-robin over `--nodes`, each issuing its next request when the
//! last one answered. With `--rate` it is open loop: every worker follows a fixed
//! schedule, and a request sent late because the previous one was slow has its latency
//! counted from its scheduled time, so a stalled server shows up in the percentiles
//! instead of silently slowing the load (coordinated omission).
//!
//! With `--history FILE` every chorus operation is also written as one JSON line for the
//! chaos checker (see [`HistoryLine`]); every write then carries a globally unique value.
//! This module owns the workload, the measurement and the report; it knows the APIs of
//! the three targets only as far as one request each.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use hdrhistogram::Histogram;
use hyper::Method;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::cli::{BenchArgs, BenchTarget, CliError, CliResult, KeyDistribution};
use crate::http_client::{self, BaseUrl, HttpClient, HttpError};

const CHORUS_DEFAULT_NODE: &str = "http://127.0.0.1:8001";
const ETCD_DEFAULT_NODE: &str = "http://127.0.0.1:2379";
const REDIS_DEFAULT_NODE: &str = "127.0.0.1:6379";
const CONTEXT_HEADER: &str = "x-chorus-context";
/// YCSB's default skew: rank 0 gets 1/zeta(n) of the operations, about 10% of them with
/// 10,000 keys.
const ZIPF_THETA: f64 = 0.99;
/// Latencies are recorded in microseconds up to an hour, to 3 significant digits.
const HISTOGRAM_MAX_US: u64 = 3_600_000_000;
/// History lines waiting for the writer; when full, workers wait (backpressure) rather
/// than the queue growing without bound.
const HISTORY_QUEUE: usize = 4096;
/// Contexts remembered per worker (with `--history`); beyond it an arbitrary one is
/// forgotten (the next write of that key is then blind, which only adds a sibling).
const CONTEXT_CACHE: usize = 4096;
/// Contexts remembered for all workers together (without `--history`).
const SHARED_CONTEXT_CACHE: usize = 1 << 20;
/// Pause after a failed connect before trying the next node, so a dead node does not
/// turn a worker into a busy loop.
const CONNECT_BACKOFF: Duration = Duration::from_millis(50);

pub fn run(args: BenchArgs) -> CliResult {
    if args.target == BenchTarget::QuicFloor {
        let duration = parse_duration(&args.duration)
            .map_err(|e| CliError::usage(format!("--duration: {e}")))?;
        let warmup =
            parse_duration(&args.warmup).map_err(|e| CliError::usage(format!("--warmup: {e}")))?;
        if duration.is_zero() || args.concurrency == 0 {
            return Err(CliError::usage(
                "--duration and --concurrency must be more than zero",
            ));
        }
        return crate::quic_floor::run(
            duration,
            warmup,
            args.concurrency,
            args.value_size,
            args.json,
        );
    }
    let config = Config::from_args(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("cannot start the async runtime: {e}")))?;
    let report = runtime.block_on(bench(Arc::new(config)))?;
    report.print()?;
    if report.total_ok() == 0 && report.total_errors() > 0 {
        return Err(CliError::failed("no operation succeeded"));
    }
    Ok(())
}

/// Where a worker sends its requests, and in which protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Endpoint {
    Chorus(BaseUrl),
    Etcd(BaseUrl),
    /// `host:port`.
    Redis(String),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Chorus(url) | Endpoint::Etcd(url) => url.fmt(f),
            Endpoint::Redis(addr) => write!(f, "redis://{addr}"),
        }
    }
}

/// `redis://host:port`, `redis://host` or `host:port`.
fn parse_redis_address(node: &str) -> Result<String, String> {
    let rest = node.strip_prefix("redis://").unwrap_or(node);
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains("://") || rest.contains(['/', '@', '?']) {
        return Err(format!(
            "invalid redis address '{node}' (expected redis://host:port or host:port)"
        ));
    }
    match rest.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0) => {
            Ok(rest.to_string())
        }
        Some(_) => Err(format!("invalid redis address '{node}': bad host or port")),
        None => Ok(format!("{rest}:6379")),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Get,
    Put,
    Delete,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Put => "put",
            Op::Delete => "delete",
        }
    }
}

/// The validated command line.
struct Config {
    target: BenchTarget,
    endpoints: Vec<Endpoint>,
    duration: Duration,
    warmup: Duration,
    timeout: Duration,
    concurrency: usize,
    rate: Option<u64>,
    keys: KeyChooser,
    value_size: usize,
    read_ratio: f64,
    delete_ratio: f64,
    r: Option<String>,
    w: Option<String>,
    bucket: String,
    seed: u64,
    json: bool,
    history: Option<std::path::PathBuf>,
}

impl Config {
    fn from_args(args: BenchArgs) -> Result<Config, CliError> {
        let duration = parse_duration(&args.duration)
            .map_err(|e| CliError::usage(format!("--duration: {e}")))?;
        if duration.is_zero() {
            return Err(CliError::usage("--duration must be more than zero"));
        }
        let warmup =
            parse_duration(&args.warmup).map_err(|e| CliError::usage(format!("--warmup: {e}")))?;
        let timeout = parse_duration(&args.timeout)
            .map_err(|e| CliError::usage(format!("--timeout: {e}")))?;
        if timeout.is_zero() {
            return Err(CliError::usage("--timeout must be more than zero"));
        }
        if args.concurrency == 0 {
            return Err(CliError::usage("--concurrency must be at least 1"));
        }
        if args.keys == 0 {
            return Err(CliError::usage("--keys must be at least 1"));
        }
        if args.rate == Some(0) {
            return Err(CliError::usage(
                "--rate must be at least 1 request per second",
            ));
        }
        for (flag, ratio) in [
            ("--read-ratio", args.read_ratio),
            ("--delete-ratio", args.delete_ratio),
        ] {
            if !(0.0..=1.0).contains(&ratio) {
                return Err(CliError::usage(format!(
                    "{flag} must be between 0 and 1, not {ratio}"
                )));
            }
        }
        if args.read_ratio + args.delete_ratio > 1.0 + 1e-9 {
            return Err(CliError::usage(
                "--read-ratio plus --delete-ratio must not exceed 1",
            ));
        }
        if args.bucket.is_empty() {
            return Err(CliError::usage("--bucket is empty"));
        }
        if args.target != BenchTarget::Chorus {
            if args.r.is_some() || args.w.is_some() {
                return Err(CliError::usage("--r and --w apply to --target chorus only"));
            }
            if args.history.is_some() {
                return Err(CliError::usage("--history applies to --target chorus only"));
            }
        }
        // The default node list is chorus's; for the other targets it means "their usual
        // local port", so `chorus bench --target redis` works against a local redis.
        let nodes = if args.nodes == [CHORUS_DEFAULT_NODE] {
            vec![match args.target {
                BenchTarget::Chorus => CHORUS_DEFAULT_NODE,
                BenchTarget::Etcd => ETCD_DEFAULT_NODE,
                BenchTarget::Redis => REDIS_DEFAULT_NODE,
                BenchTarget::QuicFloor => unreachable!("quic-floor is handled before the config"),
            }
            .to_string()]
        } else {
            args.nodes
                .iter()
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .collect()
        };
        if nodes.is_empty() {
            return Err(CliError::usage("--nodes is empty"));
        }
        let endpoints = nodes
            .iter()
            .map(|n| match args.target {
                BenchTarget::Chorus => BaseUrl::parse(n).map(Endpoint::Chorus),
                BenchTarget::Etcd => BaseUrl::parse(n).map(Endpoint::Etcd),
                BenchTarget::Redis => parse_redis_address(n).map(Endpoint::Redis),
                BenchTarget::QuicFloor => unreachable!("quic-floor is handled before the config"),
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(CliError::usage)?;
        let keys = match args.distribution {
            KeyDistribution::Uniform => KeyChooser::Uniform(args.keys),
            KeyDistribution::Zipfian => KeyChooser::Zipf(Zipf::new(args.keys, ZIPF_THETA)),
            KeyDistribution::Sequential => {
                KeyChooser::Sequential(args.keys, std::sync::atomic::AtomicU64::new(0))
            }
        };
        Ok(Config {
            target: args.target,
            endpoints,
            duration,
            warmup,
            timeout,
            concurrency: args.concurrency,
            rate: args.rate,
            keys,
            value_size: args.value_size,
            read_ratio: args.read_ratio,
            delete_ratio: args.delete_ratio,
            r: args.r,
            w: args.w,
            bucket: args.bucket,
            seed: args.seed,
            json: args.json,
            history: args.history,
        })
    }

    fn target_name(&self) -> &'static str {
        match self.target {
            BenchTarget::Chorus => "chorus",
            BenchTarget::Etcd => "etcd",
            BenchTarget::Redis => "redis",
            BenchTarget::QuicFloor => "quic-floor",
        }
    }
}

/// `10s`, `500ms`, `1m`, `1.5h`: a number and a unit (ms, s, m, h).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration (write e.g. 10s, 500ms or 1m)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "" => {
            return Err(format!(
                "'{text}' has no unit (write e.g. {text}s or {text}ms)"
            ))
        }
        other => {
            return Err(format!(
                "unknown unit '{other}' in '{text}' (use ms, s, m or h)"
            ))
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("'{text}' is out of range"))
}

/// Which key the next operation touches.
enum KeyChooser {
    Uniform(u64),
    Zipf(Zipf),
    /// Keys 0, 1, 2, ... across all workers, wrapping at the count: loads every key once
    /// in `count` operations (for a memory or disk-size test).
    Sequential(u64, std::sync::atomic::AtomicU64),
}

impl KeyChooser {
    fn sample(&self, rng: &mut StdRng) -> u64 {
        match self {
            KeyChooser::Uniform(n) => rng.random_range(0..*n),
            KeyChooser::Zipf(z) => z.sample(rng.random::<f64>()),
            KeyChooser::Sequential(n, next) => {
                next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % n
            }
        }
    }

    fn count(&self) -> u64 {
        match self {
            KeyChooser::Uniform(n) => *n,
            KeyChooser::Zipf(z) => z.n,
            KeyChooser::Sequential(n, _) => *n,
        }
    }

    fn distribution(&self) -> &'static str {
        match self {
            KeyChooser::Uniform(_) => "uniform",
            KeyChooser::Zipf(_) => "zipfian",
            KeyChooser::Sequential(..) => "sequential",
        }
    }

    fn describe(&self) -> String {
        match self {
            KeyChooser::Uniform(n) => format!("{n} keys (uniform)"),
            KeyChooser::Zipf(z) => format!("{} keys (zipfian, theta {})", z.n, z.theta),
            KeyChooser::Sequential(n, _) => format!("{n} keys (sequential)"),
        }
    }
}

/// Zipf-distributed ranks 0..n (rank 0 hottest), by the constant-time method of Gray et
/// al., "Quickly generating billion-record synthetic databases" (SIGMOD 1994), as YCSB
/// does; only the normalising constant zeta(n) costs O(n), once.
pub(crate) struct Zipf {
    n: u64,
    theta: f64,
    alpha: f64,
    zeta_n: f64,
    eta: f64,
    /// 1 + 0.5^theta: the cumulative weight of the two hottest ranks, normalised by zeta(2).
    two_ranks: f64,
}

impl Zipf {
    pub(crate) fn new(n: u64, theta: f64) -> Zipf {
        assert!(
            n >= 1 && (0.0..1.0).contains(&theta),
            "zipf needs n >= 1 and 0 <= theta < 1"
        );
        let zeta_n: f64 = (1..=n).map(|i| (i as f64).powf(-theta)).sum();
        let two_ranks = 1.0 + 0.5f64.powf(theta);
        let eta = if n > 2 {
            (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - two_ranks / zeta_n)
        } else {
            0.0
        };
        Zipf {
            n,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zeta_n,
            eta,
            two_ranks,
        }
    }

    /// Maps a uniform `u` in [0, 1) to a rank.
    pub(crate) fn sample(&self, u: f64) -> u64 {
        let uz = u * self.zeta_n;
        if uz < 1.0 || self.n == 1 {
            return 0;
        }
        if uz < self.two_ranks || self.n == 2 {
            return 1;
        }
        let rank = (self.n as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        rank.min(self.n - 1)
    }
}

// ---------------------------------------------------------------------------------------
// RESP, the redis protocol: just enough for SET, GET, DEL and PING.

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Resp {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

/// A command as a RESP array of bulk strings.
pub(crate) fn resp_command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Parses one reply from the front of `buf`: `Ok(None)` when more bytes are needed,
/// else the reply and how many bytes it used.
pub(crate) fn resp_parse(buf: &[u8]) -> Result<Option<(Resp, usize)>, String> {
    resp_parse_at(buf, 0)
}

fn resp_parse_at(buf: &[u8], start: usize) -> Result<Option<(Resp, usize)>, String> {
    let Some(line_len) = buf
        .get(start..)
        .and_then(|rest| rest.windows(2).position(|w| w == b"\r\n"))
    else {
        return Ok(None);
    };
    let line = &buf[start + 1..start + line_len];
    let after_line = start + line_len + 2;
    let text = || String::from_utf8_lossy(line).into_owned();
    let number = || {
        text()
            .parse::<i64>()
            .map_err(|_| format!("bad RESP number '{}'", text()))
    };
    match buf[start] {
        b'+' => Ok(Some((Resp::Simple(text()), after_line))),
        b'-' => Ok(Some((Resp::Error(text()), after_line))),
        b':' => Ok(Some((Resp::Integer(number()?), after_line))),
        b'$' => {
            let len = number()?;
            if len < 0 {
                return Ok(Some((Resp::Bulk(None), after_line)));
            }
            let end = after_line + len as usize;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err("RESP bulk string not followed by CRLF".into());
            }
            Ok(Some((
                Resp::Bulk(Some(buf[after_line..end].to_vec())),
                end + 2,
            )))
        }
        b'*' => {
            let count = number()?;
            if count < 0 {
                return Ok(Some((Resp::Array(None), after_line)));
            }
            let mut items = Vec::with_capacity(count.min(1024) as usize);
            let mut at = after_line;
            for _ in 0..count {
                match resp_parse_at(buf, at)? {
                    None => return Ok(None),
                    Some((item, next)) => {
                        items.push(item);
                        at = next;
                    }
                }
            }
            Ok(Some((Resp::Array(Some(items)), at)))
        }
        other => Err(format!("unexpected RESP type byte 0x{other:02x}")),
    }
}

/// One redis connection, reopened after any failure.
struct RedisConn {
    address: String,
    timeout: Duration,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl RedisConn {
    async fn command(&mut self, args: &[&[u8]]) -> Result<Resp, Failure> {
        match tokio::time::timeout(self.timeout, self.exchange(args)).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(failure)) => {
                self.stream = None;
                Err(failure)
            }
            Err(_) => {
                self.stream = None;
                Err(Failure::unknown(
                    "timeout",
                    format!(
                        "redis://{} did not answer within {:?}",
                        self.address, self.timeout
                    ),
                ))
            }
        }
    }

    async fn exchange(&mut self, args: &[&[u8]]) -> Result<Resp, Failure> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(&self.address).await.map_err(|e| {
                Failure::connect(format!("cannot connect to redis://{}: {e}", self.address))
            })?;
            stream
                .set_nodelay(true)
                .map_err(|e| Failure::connect(e.to_string()))?;
            self.stream = Some(stream);
            self.buf.clear();
        }
        let stream = self.stream.as_mut().expect("connected above");
        let transport = |e: std::io::Error| Failure::unknown("transport", e.to_string());
        stream
            .write_all(&resp_command(args))
            .await
            .map_err(transport)?;
        loop {
            if let Some((reply, used)) =
                resp_parse(&self.buf).map_err(|e| Failure::unknown("protocol", e))?
            {
                self.buf.drain(..used);
                return Ok(reply);
            }
            if stream.read_buf(&mut self.buf).await.map_err(transport)? == 0 {
                return Err(Failure::unknown(
                    "transport",
                    "redis closed the connection".into(),
                ));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// One operation against one target.

/// How an operation ended, in the history's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// Certainly not applied: refused (4xx) or never sent.
    Fail,
    /// May or may not have been applied: a timeout, a broken connection, a 5xx such as 503.
    Unknown,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Fail => "fail",
            Outcome::Unknown => "unknown",
        }
    }
}

/// An operation that did not succeed.
#[derive(Debug)]
struct Failure {
    /// For the error table: an HTTP status, or `timeout`, `connect`, `transport`...
    kind: String,
    outcome: Outcome,
    message: String,
    /// The node could not be reached: the worker moves to the next one.
    connect: bool,
}

impl Failure {
    fn connect(message: String) -> Failure {
        Failure {
            kind: "connect".into(),
            outcome: Outcome::Fail,
            message,
            connect: true,
        }
    }

    fn unknown(kind: &str, message: String) -> Failure {
        Failure {
            kind: kind.into(),
            outcome: Outcome::Unknown,
            message,
            connect: false,
        }
    }

    fn from_http(e: HttpError) -> Failure {
        let connect = matches!(e, HttpError::Connect { .. });
        let outcome = if e.not_sent() {
            Outcome::Fail
        } else {
            Outcome::Unknown
        };
        Failure {
            kind: e.kind().into(),
            outcome,
            message: e.to_string(),
            connect,
        }
    }

    fn from_status(status: u16, message: String) -> Failure {
        // A 4xx was refused before anything was stored; anything else unexpected (a 503
        // above all) may have reached some replicas.
        let outcome = if (400..500).contains(&status) {
            Outcome::Fail
        } else {
            Outcome::Unknown
        };
        Failure {
            kind: status.to_string(),
            outcome,
            message,
            connect: false,
        }
    }
}

/// What a successful operation returned.
#[derive(Debug, Default)]
struct Success {
    /// For a chorus get: every sibling's value (empty when not found).
    values: Vec<String>,
    context: Option<String>,
}

struct Answer {
    /// HTTP status, 0 when there was none (transport failure, redis).
    status: u16,
    result: Result<Success, Failure>,
}

impl Answer {
    fn failed(failure: Failure) -> Answer {
        Answer {
            status: 0,
            result: Err(failure),
        }
    }
}

enum Backend {
    Chorus(HttpClient),
    Etcd(HttpClient),
    Redis(RedisConn),
}

impl Backend {
    fn new(endpoint: &Endpoint, timeout: Duration) -> Backend {
        match endpoint {
            Endpoint::Chorus(url) => {
                Backend::Chorus(HttpClient::new(url.clone()).with_timeout(timeout))
            }
            Endpoint::Etcd(url) => {
                Backend::Etcd(HttpClient::new(url.clone()).with_timeout(timeout))
            }
            Endpoint::Redis(address) => Backend::Redis(RedisConn {
                address: address.clone(),
                timeout,
                stream: None,
                buf: Vec::with_capacity(4096),
            }),
        }
    }

    /// Checks the endpoint answers before the run, so a wrong URL fails in a second
    /// instead of as a run full of errors.
    async fn ping(&mut self) -> Result<(), String> {
        let (client, path) = match self {
            Backend::Chorus(client) => (client, "/health"),
            Backend::Etcd(client) => (client, "/version"),
            Backend::Redis(conn) => {
                return match conn.command(&[b"PING"]).await {
                    Ok(Resp::Simple(s)) if s == "PONG" => Ok(()),
                    Ok(other) => Err(format!(
                        "redis://{} answered {other:?} to PING",
                        conn.address
                    )),
                    Err(f) => Err(f.message),
                }
            }
        };
        let response = client.get(path).await.map_err(|e| e.to_string())?;
        if response.status != 200 {
            return Err(format!(
                "{}{path} answered HTTP {}",
                client.base(),
                response.status
            ));
        }
        Ok(())
    }
}

/// A request as the worker prepared it.
struct Request<'a> {
    op: Op,
    key: &'a str,
    value: &'a Bytes,
    context: Option<&'a str>,
}

async fn chorus(client: &mut HttpClient, config: &Config, request: &Request<'_>) -> Answer {
    let (method, quorum) = match request.op {
        Op::Get => (Method::GET, ("r", config.r.as_deref())),
        Op::Put => (Method::PUT, ("w", config.w.as_deref())),
        Op::Delete => (Method::DELETE, ("w", config.w.as_deref())),
    };
    let path =
        http_client::with_query(http_client::kv_path(&config.bucket, request.key), &[quorum]);
    let mut headers = Vec::with_capacity(1);
    if let Some(context) = request.context {
        headers.push((CONTEXT_HEADER, context));
    }
    let body = if request.op == Op::Put {
        request.value.clone()
    } else {
        Bytes::new()
    };
    let response = match client.request(method, &path, &headers, body).await {
        Ok(response) => response,
        Err(e) => return Answer::failed(Failure::from_http(e)),
    };
    let status = response.status;
    let context = response.header(CONTEXT_HEADER).map(str::to_string);
    let result = match (request.op, status) {
        (Op::Get, 200) => Ok(Success {
            values: vec![String::from_utf8_lossy(&response.body).into_owned()],
            context,
        }),
        (Op::Get, 300) => sibling_values(&response.body)
            .map(|values| Success { values, context })
            .map_err(|e| Failure::from_status(status, e)),
        // Not written yet, or deleted: a successful read of nothing.
        (Op::Get, 404) => Ok(Success {
            values: Vec::new(),
            context,
        }),
        (Op::Put | Op::Delete, 200..=299) => Ok(Success {
            values: Vec::new(),
            context,
        }),
        _ => Err(Failure::from_status(status, response.error_message())),
    };
    Answer { status, result }
}

/// The values of a `300` answer's siblings, as text (bench values are ASCII).
fn sibling_values(body: &[u8]) -> Result<Vec<String>, String> {
    let json: Value =
        serde_json::from_slice(body).map_err(|e| format!("300 with invalid JSON: {e}"))?;
    let siblings = json
        .get("siblings")
        .and_then(Value::as_array)
        .ok_or("300 without a siblings list")?;
    siblings
        .iter()
        .map(|s| {
            let encoded = s
                .get("value")
                .and_then(Value::as_str)
                .ok_or("a sibling without a value")?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|e| format!("a sibling value is not base64: {e}"))?;
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        })
        .collect()
}

async fn etcd(client: &mut HttpClient, request: &Request<'_>) -> Answer {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let (path, body) = match request.op {
        // Serializable: answered by the member the client talks to, without a round of
        // consensus, the closest etcd read to a chorus quorum read (which is not
        // linearizable either).
        Op::Get => (
            "/v3/kv/range",
            json!({"key": b64(request.key.as_bytes()), "serializable": true}),
        ),
        Op::Put => (
            "/v3/kv/put",
            json!({"key": b64(request.key.as_bytes()), "value": b64(request.value)}),
        ),
        Op::Delete => (
            "/v3/kv/deleterange",
            json!({"key": b64(request.key.as_bytes())}),
        ),
    };
    match client.post(path, Bytes::from(body.to_string())).await {
        // A range without `kvs` is a key not written yet: still a successful read.
        Ok(response) if response.status == 200 => Answer {
            status: 200,
            result: Ok(Success::default()),
        },
        Ok(response) => Answer {
            status: response.status,
            result: Err(Failure::from_status(
                response.status,
                response.error_message(),
            )),
        },
        Err(e) => Answer::failed(Failure::from_http(e)),
    }
}

async fn redis(conn: &mut RedisConn, request: &Request<'_>) -> Answer {
    let key = request.key.as_bytes();
    let reply = match request.op {
        Op::Get => conn.command(&[b"GET", key]).await,
        Op::Put => conn.command(&[b"SET", key, request.value]).await,
        Op::Delete => conn.command(&[b"DEL", key]).await,
    };
    match reply {
        Ok(Resp::Error(message)) => Answer::failed(Failure {
            kind: "redis_error".into(),
            outcome: Outcome::Fail,
            message,
            connect: false,
        }),
        Ok(_) => Answer {
            status: 0,
            result: Ok(Success::default()),
        },
        Err(failure) => Answer::failed(failure),
    }
}

// ---------------------------------------------------------------------------------------
// Measurement.

struct OpStats {
    latency: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

impl OpStats {
    fn new() -> OpStats {
        OpStats {
            latency: new_histogram(),
            errors: BTreeMap::new(),
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, 3).expect("valid histogram bounds")
}

/// Shared by all workers behind one mutex, held only to record one result (no await).
struct Recorder {
    ops: BTreeMap<Op, OpStats>,
    /// The first message seen for each error kind, to explain the counts.
    first_messages: BTreeMap<String, String>,
    /// Since the last progress line, warm-up included.
    interval: Histogram<u64>,
    interval_errors: u64,
}

impl Recorder {
    fn new(ops: &[Op]) -> Recorder {
        Recorder {
            ops: ops.iter().map(|op| (*op, OpStats::new())).collect(),
            first_messages: BTreeMap::new(),
            interval: new_histogram(),
            interval_errors: 0,
        }
    }

    fn record(&mut self, op: Op, latency: Duration, failure: Option<&Failure>, measured: bool) {
        let us = (latency.as_micros() as u64).max(1);
        match failure {
            None => {
                self.interval.saturating_record(us);
                if measured {
                    self.ops
                        .entry(op)
                        .or_insert_with(OpStats::new)
                        .latency
                        .saturating_record(us);
                }
            }
            Some(failure) => {
                self.interval_errors += 1;
                if measured {
                    *self
                        .ops
                        .entry(op)
                        .or_insert_with(OpStats::new)
                        .errors
                        .entry(failure.kind.clone())
                        .or_default() += 1;
                }
                self.first_messages
                    .entry(failure.kind.clone())
                    .or_insert_with(|| failure.message.clone());
            }
        }
    }
}

/// Everything the workers share.
struct Shared {
    config: Arc<Config>,
    recorder: Mutex<Recorder>,
    /// Time zero of the run (and of the history's microseconds).
    start: Instant,
    measure_start: Instant,
    measure_end: Instant,
    /// Without `--history`: for each key, the join of the contexts the workers got (the
    /// workers act as one application sharing what it was shown). A write carries it,
    /// like an application that reads (or remembers) before it writes, so a key's
    /// siblings are only the writes that were truly concurrent. With per-worker contexts,
    /// 64 workers writing the same keys left about 11 siblings per key, and every write
    /// then read, merged and stored all of them: a workload no real client makes. Joined
    /// rather than replaced because a write's answer covers only its request and itself:
    /// the latest answer alone would leave a concurrent worker's write as a sibling.
    contexts: Mutex<ContextCache>,
}

impl Shared {
    fn micros(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.start).as_micros() as u64
    }
}

/// Remembered causal contexts, by key index, bounded.
struct ContextCache {
    map: HashMap<u64, String>,
    limit: usize,
}

impl ContextCache {
    fn new(limit: usize) -> ContextCache {
        ContextCache {
            map: HashMap::new(),
            limit,
        }
    }

    fn insert(&mut self, key: u64, context: String) {
        if self.map.len() >= self.limit && !self.map.contains_key(&key) {
            if let Some(victim) = self.map.keys().next().copied() {
                self.map.remove(&victim);
            }
        }
        self.map.insert(key, context);
    }
}

/// The join of two chorus context tokens: everything either says its client was shown
/// (the newer token alone when the other does not decode, e.g. another target's).
fn join_tokens(known: Option<&str>, new: &str) -> String {
    use crate::causality::Context;
    match known.map(Context::decode) {
        Some(Ok(known)) => match Context::decode(new) {
            Ok(new) => known.join(&new).encode(),
            Err(_) => new.to_string(),
        },
        _ => new.to_string(),
    }
}

/// One line of `--history`: a complete record of one operation, in the order the client
/// issued them. Times are microseconds since the bench started; `start_us` is when the
/// request was sent (not the open-loop schedule).
#[derive(Serialize, Debug)]
pub(crate) struct HistoryLine<'a> {
    pub client: usize,
    pub seq: u64,
    pub op: &'static str,
    pub bucket: &'a str,
    pub key: &'a str,
    /// The value written, for a put; null otherwise.
    pub value: Option<&'a str>,
    pub context_in: Option<&'a str>,
    pub start_us: u64,
    pub end_us: u64,
    /// HTTP status, 0 for a transport error or timeout.
    pub status: u16,
    /// `ok`, `fail` (certainly not applied) or `unknown` (may have been applied).
    pub outcome: &'static str,
    /// For a successful get: every sibling's value (empty when not found); null otherwise.
    pub values: Option<&'a [String]>,
    pub context_out: Option<&'a str>,
    /// The node that coordinated the request (workers move on when one is unreachable).
    pub node: &'a str,
}

/// The value a put writes under `--history`: unique across workers and operations, so the
/// checker can tell exactly which write a read returned.
pub(crate) fn history_value(worker: usize, seq: u64, size: usize) -> String {
    let mut value = format!("w{worker}-{seq}-");
    if value.len() < size {
        value.push_str(&".".repeat(size - value.len()));
    }
    value
}

/// The history writer: drains the bounded queue into the file on a blocking thread,
/// flushing whenever the queue runs dry so the file stays close to current.
fn spawn_history_writer(
    path: &Path,
) -> Result<
    (
        mpsc::Sender<String>,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ),
    CliError,
> {
    let file = File::create(path).map_err(|e| {
        CliError::usage(format!(
            "cannot create the history file {}: {e}",
            path.display()
        ))
    })?;
    let (tx, mut rx) = mpsc::channel::<String>(HISTORY_QUEUE);
    let handle = tokio::task::spawn_blocking(move || {
        let mut out = BufWriter::new(file);
        loop {
            let line = match rx.try_recv() {
                Ok(line) => line,
                Err(mpsc::error::TryRecvError::Empty) => {
                    out.flush()?;
                    match rx.blocking_recv() {
                        Some(line) => line,
                        None => break,
                    }
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            };
            out.write_all(line.as_bytes())?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()
    });
    Ok((tx, handle))
}

struct Worker {
    id: usize,
    shared: Arc<Shared>,
    rng: StdRng,
    node: usize,
    backend: Backend,
    contexts: ContextCache,
    seq: u64,
    /// The value every put writes when there is no history (content does not matter).
    value: Bytes,
    history: Option<mpsc::Sender<String>>,
}

impl Worker {
    async fn run(mut self) {
        let shared = self.shared.clone();
        let config = &shared.config;
        // Open loop: this worker's share of the rate, its slots interleaved with the others'.
        let schedule = config.rate.map(|rate| {
            let interval = Duration::from_secs_f64(config.concurrency as f64 / rate as f64);
            let first = shared.start + Duration::from_secs_f64(self.id as f64 / rate as f64);
            (first, interval)
        });
        let mut slot: u32 = 0;
        loop {
            let latency_from = match schedule {
                None => Instant::now(),
                Some((first, interval)) => {
                    let slot_time = first + interval * slot;
                    slot += 1;
                    if slot_time >= shared.measure_end {
                        break;
                    }
                    if Instant::now() < slot_time {
                        // On time: the timer wakes us up to a millisecond late, which is
                        // our own slack, not the server's; count from the actual start.
                        tokio::time::sleep_until(slot_time).await;
                        Instant::now()
                    } else {
                        // Behind schedule because the server was slow: the wait counts.
                        slot_time
                    }
                }
            };
            if latency_from >= shared.measure_end {
                break;
            }
            if !self.one_operation(latency_from).await {
                break;
            }
        }
    }

    /// Runs, measures and logs one operation whose latency counts from `latency_from`;
    /// false when the history writer is gone.
    async fn one_operation(&mut self, latency_from: Instant) -> bool {
        let shared = self.shared.clone();
        let config = &shared.config;
        let draw: f64 = self.rng.random();
        let op = if draw < config.read_ratio {
            Op::Get
        } else if draw < config.read_ratio + config.delete_ratio {
            Op::Delete
        } else {
            Op::Put
        };
        let key_index = config.keys.sample(&mut self.rng);
        let key = match config.target {
            BenchTarget::Chorus => format!("k{key_index}"),
            _ => format!("{}/k{key_index}", config.bucket),
        };
        let history = self.history.is_some();
        let value = if history && op == Op::Put {
            Bytes::from(history_value(self.id, self.seq, config.value_size))
        } else {
            self.value.clone()
        };
        // With a history, a write carries the context of this worker's last read of the
        // key, once: later blind writes are concurrent with it, so the run creates both
        // superseding and concurrent versions. Without one, the latest context any worker
        // saw for the key is reused, which keeps siblings few, as a real read-modify-write
        // client would.
        let context = match (op, history) {
            (Op::Get, _) => None,
            (_, true) => self.contexts.map.remove(&key_index),
            (_, false) => shared
                .contexts
                .lock()
                .expect("context lock")
                .map
                .get(&key_index)
                .cloned(),
        };
        let request = Request {
            op,
            key: &key,
            value: &value,
            context: context.as_deref(),
        };
        let node = if history {
            config.endpoints[self.node].to_string()
        } else {
            String::new()
        };
        let sent = Instant::now();
        let answer = match &mut self.backend {
            Backend::Chorus(client) => chorus(client, config, &request).await,
            Backend::Etcd(client) => etcd(client, &request).await,
            Backend::Redis(conn) => redis(conn, &request).await,
        };
        let done = Instant::now();
        let measured = latency_from >= shared.measure_start && done <= shared.measure_end;
        shared.recorder.lock().expect("recorder lock").record(
            op,
            done - latency_from,
            answer.result.as_ref().err(),
            measured,
        );
        match &answer.result {
            Ok(success) => {
                if let Some(ctx) = &success.context {
                    if history {
                        if op == Op::Get {
                            self.contexts.insert(key_index, ctx.clone());
                        }
                    } else {
                        let known = shared
                            .contexts
                            .lock()
                            .expect("context lock")
                            .map
                            .get(&key_index)
                            .cloned();
                        // Joined outside the lock; a join lost to a concurrent one only
                        // makes the next write cover less (a sibling, never a loss).
                        let joined = join_tokens(known.as_deref(), ctx);
                        shared
                            .contexts
                            .lock()
                            .expect("context lock")
                            .insert(key_index, joined);
                    }
                }
            }
            Err(failure) if failure.connect => {
                // Try the next node, as a client of a leaderless store would.
                self.node = (self.node + 1) % config.endpoints.len();
                self.backend = Backend::new(&config.endpoints[self.node], config.timeout);
                tokio::time::sleep(CONNECT_BACKOFF).await;
            }
            Err(_) => {}
        }
        let seq = self.seq;
        self.seq += 1;
        let Some(tx) = &self.history else { return true };
        let (outcome, values, context_out) = match &answer.result {
            Ok(s) => (
                Outcome::Ok,
                (op == Op::Get).then_some(s.values.as_slice()),
                s.context.as_deref(),
            ),
            Err(f) => (f.outcome, None, None),
        };
        let line = HistoryLine {
            client: self.id,
            seq,
            op: op.name(),
            bucket: &config.bucket,
            key: &key,
            value: (op == Op::Put)
                .then(|| std::str::from_utf8(&value).expect("history values are ASCII")),
            context_in: context.as_deref(),
            start_us: shared.micros(sent),
            end_us: shared.micros(done),
            status: answer.status,
            outcome: outcome.name(),
            values,
            context_out,
            node: &node,
        };
        let line = serde_json::to_string(&line).expect("a history line serializes");
        tx.send(line).await.is_ok()
    }
}

async fn bench(config: Arc<Config>) -> Result<Report, CliError> {
    for endpoint in &config.endpoints {
        let mut backend = Backend::new(endpoint, config.timeout);
        backend
            .ping()
            .await
            .map_err(|e| CliError::failed(format!("{endpoint} is not usable: {e}")))?;
    }
    let (history_tx, history_writer) = match &config.history {
        Some(path) => {
            let (tx, handle) = spawn_history_writer(path)?;
            (Some(tx), Some(handle))
        }
        None => (None, None),
    };
    let mut ops = vec![Op::Get, Op::Put];
    if config.delete_ratio > 0.0 {
        ops.push(Op::Delete);
    }
    let start = Instant::now();
    let shared = Arc::new(Shared {
        config: config.clone(),
        recorder: Mutex::new(Recorder::new(&ops)),
        start,
        measure_start: start + config.warmup,
        measure_end: start + config.warmup + config.duration,
        contexts: Mutex::new(ContextCache::new(SHARED_CONTEXT_CACHE)),
    });
    let value = Bytes::from(vec![b'x'; config.value_size]);
    let mut workers = tokio::task::JoinSet::new();
    for id in 0..config.concurrency {
        let node = id % config.endpoints.len();
        let worker = Worker {
            id,
            shared: shared.clone(),
            // Distinct, reproducible streams per worker from one seed.
            rng: StdRng::seed_from_u64(
                config
                    .seed
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    .wrapping_add(id as u64),
            ),
            node,
            backend: Backend::new(&config.endpoints[node], config.timeout),
            contexts: ContextCache::new(CONTEXT_CACHE),
            seq: 0,
            value: value.clone(),
            history: history_tx.clone(),
        };
        workers.spawn(worker.run());
    }
    // Only the workers hold senders now: the writer ends when the last worker does.
    drop(history_tx);
    let progress = tokio::spawn(progress(shared.clone()));
    while let Some(result) = workers.join_next().await {
        if let Err(e) = result {
            progress.abort();
            return Err(CliError::failed(format!("a bench worker failed: {e}")));
        }
    }
    progress.abort();
    if let Some(writer) = history_writer {
        let path = config.history.as_ref().expect("a writer implies a path");
        match writer.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(CliError::failed(format!(
                    "cannot write the history file {}: {e}",
                    path.display()
                )))
            }
            Err(e) => return Err(CliError::failed(format!("the history writer failed: {e}"))),
        }
    }
    let recorder = std::mem::replace(
        &mut *shared.recorder.lock().expect("recorder lock"),
        Recorder::new(&[]),
    );
    Ok(Report { config, recorder })
}

/// One line a second on stderr: throughput, p99 and errors over the last second.
async fn progress(shared: Arc<Shared>) {
    let mut ticks = tokio::time::interval_at(
        shared.start + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let mut last = shared.start;
    loop {
        let now = ticks.tick().await;
        let (count, p99_us, errors) = {
            let mut recorder = shared.recorder.lock().expect("recorder lock");
            let stats = (
                recorder.interval.len(),
                recorder.interval.value_at_quantile(0.99),
                recorder.interval_errors,
            );
            recorder.interval.reset();
            recorder.interval_errors = 0;
            stats
        };
        let seconds = (now - last).as_secs_f64();
        last = now;
        let phase = if now <= shared.measure_start {
            "warm-up".to_string()
        } else {
            format!("{:>5.0}s", (now - shared.measure_start).as_secs_f64())
        };
        eprintln!(
            "[{phase}] {:>9.0} ops/s  p99 {:>8.2} ms  errors {errors}",
            count as f64 / seconds,
            p99_us as f64 / 1000.0
        );
    }
}

// ---------------------------------------------------------------------------------------
// The report.

struct Report {
    config: Arc<Config>,
    recorder: Recorder,
}

impl Report {
    fn total_ok(&self) -> u64 {
        self.recorder.ops.values().map(|s| s.latency.len()).sum()
    }

    fn total_errors(&self) -> u64 {
        self.recorder
            .ops
            .values()
            .flat_map(|s| s.errors.values())
            .sum()
    }

    fn per_second(&self, count: u64) -> f64 {
        count as f64 / self.config.duration.as_secs_f64()
    }

    fn print(&self) -> CliResult {
        let text = if self.config.json {
            format!("{}\n", self.to_json())
        } else {
            self.to_table()
        };
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(text.as_bytes())
            .and_then(|_| stdout.flush())
            .map_err(|e| CliError::failed(format!("cannot write to stdout: {e}")))
    }

    fn to_json(&self) -> Value {
        let ms = |us: u64| us as f64 / 1000.0;
        let ops: serde_json::Map<String, Value> = self
            .recorder
            .ops
            .iter()
            .map(|(op, stats)| {
                let h = &stats.latency;
                let value = json!({
                    "count": h.len(),
                    "ops_per_s": self.per_second(h.len()),
                    "p50_ms": ms(h.value_at_quantile(0.5)),
                    "p90_ms": ms(h.value_at_quantile(0.9)),
                    "p99_ms": ms(h.value_at_quantile(0.99)),
                    "p999_ms": ms(h.value_at_quantile(0.999)),
                    "max_ms": ms(h.max()),
                    "errors": stats.errors,
                });
                (op.name().to_string(), value)
            })
            .collect();
        json!({
            "target": self.config.target_name(),
            "nodes": self.config.endpoints.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            "duration_s": self.config.duration.as_secs_f64(),
            "warmup_s": self.config.warmup.as_secs_f64(),
            "concurrency": self.config.concurrency,
            "rate": self.config.rate,
            "keys": self.config.keys.count(),
            "distribution": self.config.keys.distribution(),
            "value_size": self.config.value_size,
            "read_ratio": self.config.read_ratio,
            "total_ops_per_s": self.per_second(self.total_ok()),
            "total_errors": self.total_errors(),
            "ops": ops,
        })
    }

    fn to_table(&self) -> String {
        let c = &self.config;
        let mode = match c.rate {
            None => "closed loop".to_string(),
            Some(rate) => format!("open loop at {rate} req/s"),
        };
        let mut out = format!(
            "{} at {}: {} clients, {mode}, {:.0}% reads, {}, {} B values\nmeasured {:.1} s after {:.1} s warm-up; latency in ms, successful operations only\n\n",
            c.target_name(),
            c.endpoints.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(","),
            c.concurrency,
            c.read_ratio * 100.0,
            c.keys.describe(),
            c.value_size,
            c.duration.as_secs_f64(),
            c.warmup.as_secs_f64(),
        );
        let ms = |us: u64| format!("{:.3}", us as f64 / 1000.0);
        let row = |name: &str, h: &Histogram<u64>, errors: u64| {
            vec![
                name.to_string(),
                h.len().to_string(),
                format!("{:.1}", self.per_second(h.len())),
                ms(h.value_at_quantile(0.5)),
                ms(h.value_at_quantile(0.9)),
                ms(h.value_at_quantile(0.99)),
                ms(h.value_at_quantile(0.999)),
                ms(h.max()),
                errors.to_string(),
            ]
        };
        let mut total = new_histogram();
        let mut rows = Vec::new();
        for (op, stats) in &self.recorder.ops {
            total
                .add(&stats.latency)
                .expect("histograms with the same bounds add");
            rows.push(row(op.name(), &stats.latency, stats.errors.values().sum()));
        }
        rows.push(row("total", &total, self.total_errors()));
        out.push_str(&crate::client::render_table(
            &[
                "op", "count", "ops/s", "p50", "p90", "p99", "p99.9", "max", "errors",
            ],
            &rows,
            1,
        ));
        if self.total_errors() > 0 {
            out.push_str("\nerrors by kind (with the first message seen):\n");
            for (op, stats) in &self.recorder.ops {
                for (kind, count) in &stats.errors {
                    let message = self
                        .recorder
                        .first_messages
                        .get(kind)
                        .map(String::as_str)
                        .unwrap_or("");
                    out.push_str(&format!("  {} {kind}: {count}  ({message})\n", op.name()));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert!(parse_duration("10").unwrap_err().contains("no unit"));
        assert!(parse_duration("10x")
            .unwrap_err()
            .contains("unknown unit 'x'"));
        assert!(parse_duration("s").unwrap_err().contains("not a duration"));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn zipf_is_skewed_like_zipf() {
        let n = 1000;
        let zipf = Zipf::new(n, ZIPF_THETA);
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = vec![0u64; n as usize];
        let samples = 400_000;
        for _ in 0..samples {
            let rank = zipf.sample(rng.random::<f64>());
            assert!(rank < n);
            counts[rank as usize] += 1;
        }
        // P(rank 0) = 1/zeta(n); rank 0 against rank 1 is 2^theta.
        let p0 = counts[0] as f64 / samples as f64;
        assert!(
            (p0 - 1.0 / zipf.zeta_n).abs() < 0.01,
            "p0 {p0} vs {}",
            1.0 / zipf.zeta_n
        );
        let ratio = counts[0] as f64 / counts[1] as f64;
        assert!(
            (ratio - 2f64.powf(ZIPF_THETA)).abs() < 0.15,
            "ratio {ratio}"
        );
        // The top 10 ranks get far more than 1% of the traffic; the tail is still reached.
        let top10: u64 = counts[..10].iter().sum();
        assert!(top10 as f64 / samples as f64 > 0.3);
        assert!(counts[500..].iter().sum::<u64>() > 0);
        assert!(counts[0] > counts[10] && counts[10] > counts[100]);
    }

    #[test]
    fn zipf_handles_tiny_key_spaces() {
        for n in [1, 2, 3] {
            let zipf = Zipf::new(n, ZIPF_THETA);
            for u in [0.0, 0.3, 0.6, 0.999_999] {
                assert!(zipf.sample(u) < n);
            }
        }
    }

    #[test]
    fn resp_encodes_commands() {
        assert_eq!(
            resp_command(&[b"SET", b"k", b"v v"]),
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv v\r\n"
        );
        assert_eq!(
            resp_command(&[b"GET", b""]),
            b"*2\r\n$3\r\nGET\r\n$0\r\n\r\n"
        );
    }

    #[test]
    fn resp_parses_replies() {
        assert_eq!(
            resp_parse(b"+OK\r\n").unwrap(),
            Some((Resp::Simple("OK".into()), 5))
        );
        assert_eq!(
            resp_parse(b"-ERR wrong\r\n").unwrap(),
            Some((Resp::Error("ERR wrong".into()), 12))
        );
        assert_eq!(
            resp_parse(b":42\r\n").unwrap(),
            Some((Resp::Integer(42), 5))
        );
        assert_eq!(resp_parse(b"$-1\r\n").unwrap(), Some((Resp::Bulk(None), 5)));
        assert_eq!(
            resp_parse(b"$5\r\nhe\r\no\r\n+next").unwrap(),
            Some((Resp::Bulk(Some(b"he\r\no".to_vec())), 11))
        );
        assert_eq!(
            resp_parse(b"*2\r\n$1\r\na\r\n:1\r\n").unwrap(),
            Some((
                Resp::Array(Some(vec![
                    Resp::Bulk(Some(b"a".to_vec())),
                    Resp::Integer(1)
                ])),
                15
            ))
        );
        assert_eq!(
            resp_parse(b"*-1\r\n").unwrap(),
            Some((Resp::Array(None), 5))
        );
    }

    #[test]
    fn resp_waits_for_complete_replies() {
        for partial in [
            &b""[..],
            b"+OK",
            b"+OK\r",
            b"$5\r\nhel",
            b"$5\r\nhello",
            b"$5\r\nhello\r",
            b"*2\r\n:1\r\n",
        ] {
            assert_eq!(
                resp_parse(partial).unwrap(),
                None,
                "{:?}",
                String::from_utf8_lossy(partial)
            );
        }
        assert!(resp_parse(b"?x\r\n").is_err());
        assert!(resp_parse(b":abc\r\n").is_err());
        assert!(resp_parse(b"$2\r\nabcd\r\n").is_err());
    }

    #[test]
    fn redis_addresses_parse() {
        assert_eq!(
            parse_redis_address("redis://127.0.0.1:6380").unwrap(),
            "127.0.0.1:6380"
        );
        assert_eq!(
            parse_redis_address("127.0.0.1:6380").unwrap(),
            "127.0.0.1:6380"
        );
        assert_eq!(
            parse_redis_address("redis://localhost").unwrap(),
            "localhost:6379"
        );
        assert!(parse_redis_address("http://127.0.0.1:6379").is_err());
        assert!(parse_redis_address("redis://h:x").is_err());
        assert!(parse_redis_address("redis://").is_err());
    }

    #[test]
    fn history_values_are_unique_and_padded() {
        assert_eq!(history_value(3, 17, 12), "w3-17-......");
        assert_eq!(history_value(3, 17, 2), "w3-17-");
        assert_ne!(history_value(1, 23, 100), history_value(12, 3, 100));
        assert_eq!(history_value(0, 0, 100).len(), 100);
    }

    #[test]
    fn history_lines_have_the_documented_shape() {
        let values = vec!["w1-4-..".to_string(), "w2-9-..".to_string()];
        let get = HistoryLine {
            client: 1,
            seq: 5,
            op: "get",
            bucket: "bench",
            key: "k42",
            value: None,
            context_in: None,
            start_us: 1000,
            end_us: 2500,
            status: 300,
            outcome: "ok",
            values: Some(&values),
            context_out: Some("Y3R4"),
            node: "http://127.0.0.1:8001",
        };
        assert_eq!(
            serde_json::to_string(&get).unwrap(),
            r#"{"client":1,"seq":5,"op":"get","bucket":"bench","key":"k42","value":null,"context_in":null,"start_us":1000,"end_us":2500,"status":300,"outcome":"ok","values":["w1-4-..","w2-9-.."],"context_out":"Y3R4","node":"http://127.0.0.1:8001"}"#
        );
        let put = HistoryLine {
            op: "put",
            value: Some("w1-6-.."),
            context_in: Some("Y3R4"),
            status: 0,
            outcome: "unknown",
            values: None,
            context_out: None,
            seq: 6,
            ..get
        };
        assert_eq!(
            serde_json::to_string(&put).unwrap(),
            r#"{"client":1,"seq":6,"op":"put","bucket":"bench","key":"k42","value":"w1-6-..","context_in":"Y3R4","start_us":1000,"end_us":2500,"status":0,"outcome":"unknown","values":null,"context_out":null,"node":"http://127.0.0.1:8001"}"#
        );
    }

    #[test]
    fn statuses_classify_into_outcomes() {
        assert_eq!(
            Failure::from_status(503, String::new()).outcome,
            Outcome::Unknown
        );
        assert_eq!(
            Failure::from_status(500, String::new()).outcome,
            Outcome::Unknown
        );
        assert_eq!(
            Failure::from_status(409, String::new()).outcome,
            Outcome::Fail
        );
        assert_eq!(Failure::from_status(400, String::new()).kind, "400");
    }

    #[test]
    fn three_hundred_bodies_give_every_sibling() {
        let body = br#"{"context":"c","siblings":[{"value":"dzEtMS0=","content_type":"x"},{"value":"dzItMi0="}]}"#;
        assert_eq!(sibling_values(body).unwrap(), vec!["w1-1-", "w2-2-"]);
        assert!(sibling_values(b"{}").is_err());
    }

    #[test]
    fn shared_contexts_join_what_the_workers_were_shown() {
        use crate::causality::{ActorId, Context};
        let (a, b) = (ActorId(1), ActorId(2));
        let one = Context::default().with_dot((a, 4)).encode();
        let two = Context::default().with_dot((b, 9)).encode();
        let joined = Context::decode(&join_tokens(Some(&one), &two)).unwrap();
        assert!(joined.covers((a, 4)) && joined.covers((b, 9)) && !joined.covers((a, 3)));
        assert_eq!(join_tokens(None, &two), two);
        assert_eq!(join_tokens(Some("not a token"), &two), two);
    }

    #[test]
    fn context_cache_is_bounded() {
        let mut cache = ContextCache::new(CONTEXT_CACHE);
        for k in 0..(CONTEXT_CACHE as u64 + 100) {
            cache.insert(k, format!("c{k}"));
        }
        assert_eq!(cache.map.len(), CONTEXT_CACHE);
        cache.insert(CONTEXT_CACHE as u64 + 99, "again".into());
        assert_eq!(cache.map.len(), CONTEXT_CACHE);
    }
}
