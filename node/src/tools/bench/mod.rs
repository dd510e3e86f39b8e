//! `chorus bench`: a load generator with latency percentiles, for chorus and, to compare
//! side by side on the same machine, etcd (v3 JSON gateway) and redis (RESP).
//!
//! Closed loop by default: `--concurrency` workers, each on its own keep-alive
//! connection, spread round-robin over `--nodes`, each issuing its next request when the
//! last one answered. With `--rate` it is open loop: every worker follows a fixed
//! schedule, and a request sent late because the previous one was slow has its latency
//! counted from its scheduled time, so a stalled server shows up in the percentiles
//! instead of silently slowing the load (coordinated omission).

//! This module owns the workload, the measurement and the report; it knows the APIs of
//! the three targets only as far as one request each.

pub mod quic_floor;

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;

use std::sync::PoisonError;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use hdrhistogram::Histogram;
use hyper::Method;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::cli::{BenchArgs, BenchTarget, CliError, CliResult, KeyDistribution};
use chorus_api::client::{self as http_client, BaseUrl, HttpClient, HttpError};

const CHORUS_DEFAULT_NODE: &str = "http://127.0.0.1:8001";
const ETCD_DEFAULT_NODE: &str = "http://127.0.0.1:2379";
const REDIS_DEFAULT_NODE: &str = "127.0.0.1:6379";
use chorus_api::CONTEXT_HEADER;
/// YCSB's default skew: rank 0 gets 1/zeta(n) of the operations, about 10% of them with
/// 10,000 keys.
const ZIPF_THETA: f64 = 0.99;
/// Latencies are recorded in microseconds up to an hour, to 3 significant digits.
const HISTOGRAM_MAX_US: u64 = 3_600_000_000;

/// Contexts remembered for all workers together.
const SHARED_CONTEXT_CACHE: usize = 1 << 20;
/// Pause after a failed connect before trying the next node, so a dead node does not
/// turn a worker into a busy loop.
const CONNECT_BACKOFF: Duration = Duration::from_millis(50);

pub fn run(args: BenchArgs) -> CliResult {
    let floor = match args.target {
        BenchTarget::QuicFloor => Some(quic_floor::Floor::Chorus),
        BenchTarget::BareQuinn => Some(quic_floor::Floor::BareQuinn),
        _ => None,
    };
    if let Some(floor) = floor {
        let duration = parse_duration_flag("--duration", &args.duration)?;
        let warmup = parse_duration_flag("--warmup", &args.warmup)?;
        if duration.is_zero() || args.concurrency == 0 {
            return Err(CliError::usage(
                "--duration and --concurrency must be more than zero",
            ));
        }
        return quic_floor::run(
            floor,
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
}

impl Config {
    fn from_args(args: BenchArgs) -> Result<Config, CliError> {
        let duration = parse_duration_flag("--duration", &args.duration)?;
        if duration.is_zero() {
            return Err(CliError::usage("--duration must be more than zero"));
        }
        let warmup = parse_duration_flag("--warmup", &args.warmup)?;
        let timeout = parse_duration_flag("--timeout", &args.timeout)?;
        if timeout.is_zero() {
            return Err(CliError::usage("--timeout must be more than zero"));
        }
        check_workload_flags(&args)?;
        let endpoints = endpoints(&args)?;
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
        })
    }

    fn target_name(&self) -> &'static str {
        match self.target {
            BenchTarget::Chorus => "chorus",
            BenchTarget::Etcd => "etcd",
            BenchTarget::Redis => "redis",
            BenchTarget::QuicFloor => "quic-floor",
            BenchTarget::BareQuinn => "bare-quinn",
        }
    }
}

/// The flags that shape the workload, other than durations and nodes.
fn check_workload_flags(args: &BenchArgs) -> CliResult {
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
    check_ratios(&[
        ("--read-ratio", args.read_ratio),
        ("--delete-ratio", args.delete_ratio),
    ])?;
    if args.read_ratio + args.delete_ratio > 1.0 + 1e-9 {
        return Err(CliError::usage(
            "--read-ratio plus --delete-ratio must not exceed 1",
        ));
    }
    if args.bucket.is_empty() {
        return Err(CliError::usage("--bucket is empty"));
    }
    if args.target != BenchTarget::Chorus && (args.r.is_some() || args.w.is_some()) {
        return Err(CliError::usage("--r and --w apply to --target chorus only"));
    }
    Ok(())
}

/// The `--nodes` of the target, in its protocol.
fn endpoints(args: &BenchArgs) -> Result<Vec<Endpoint>, CliError> {
    // The default node list is chorus's; for the other targets it means "their usual
    // local port", so `chorus bench --target redis` works against a local redis.
    let nodes = if args.nodes == [CHORUS_DEFAULT_NODE] {
        vec![match args.target {
            BenchTarget::Chorus => CHORUS_DEFAULT_NODE,
            BenchTarget::Etcd => ETCD_DEFAULT_NODE,
            BenchTarget::Redis => REDIS_DEFAULT_NODE,
            BenchTarget::QuicFloor | BenchTarget::BareQuinn => {
                unreachable!("the floors are handled before the config")
            }
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
    nodes
        .iter()
        .map(|n| match args.target {
            BenchTarget::Chorus => BaseUrl::parse(n).map(Endpoint::Chorus),
            BenchTarget::Etcd => BaseUrl::parse(n).map(Endpoint::Etcd),
            BenchTarget::Redis => parse_redis_address(n).map(Endpoint::Redis),
            BenchTarget::QuicFloor | BenchTarget::BareQuinn => {
                unreachable!("the floors are handled before the config")
            }
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(CliError::usage)
}

/// A duration flag's value, or a usage error naming the flag.
pub(crate) fn parse_duration_flag(flag: &str, text: &str) -> Result<Duration, CliError> {
    parse_duration(text).map_err(|e| CliError::usage(format!("{flag}: {e}")))
}

/// Every `(flag, value)` must be a fraction, from 0 to 1.
pub(crate) fn check_ratios(ratios: &[(&str, f64)]) -> CliResult {
    for &(flag, ratio) in ratios {
        if !(0.0..=1.0).contains(&ratio) {
            return Err(CliError::usage(format!(
                "{flag} must be between 0 and 1, not {ratio}"
            )));
        }
    }
    Ok(())
}

/// The random stream of worker (or session) `id`: distinct per id, reproducible from one
/// seed.
pub(crate) fn stream_rng(seed: u64, id: usize) -> StdRng {
    StdRng::seed_from_u64(
        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(id as u64),
    )
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

/// An operation that did not succeed.
#[derive(Debug)]
struct Failure {
    /// For the error table: an HTTP status, or `timeout`, `connect`, `transport`...
    kind: String,
    message: String,
    /// The node could not be reached: the worker moves to the next one.
    connect: bool,
}

impl Failure {
    fn connect(message: String) -> Failure {
        Failure {
            kind: "connect".into(),
            message,
            connect: true,
        }
    }

    fn unknown(kind: &str, message: String) -> Failure {
        Failure {
            kind: kind.into(),
            message,
            connect: false,
        }
    }

    fn from_http(e: HttpError) -> Failure {
        let connect = matches!(e, HttpError::Connect { .. });
        Failure {
            kind: e.kind().into(),
            message: e.to_string(),
            connect,
        }
    }

    fn from_status(status: u16, message: String) -> Failure {
        Failure {
            kind: status.to_string(),
            message,
            connect: false,
        }
    }
}

/// What a successful operation returned.
#[derive(Debug, Default)]
struct Success {
    context: Option<String>,
}

struct Answer {
    result: Result<Success, Failure>,
}

impl Answer {
    fn failed(failure: Failure) -> Answer {
        Answer {
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
        // 404: not written yet, or deleted: a successful read of nothing.
        (Op::Get, 200 | 404) | (Op::Put | Op::Delete, 200..=299) => Ok(Success { context }),
        (Op::Get, 300) => sibling_values(&response.body)
            .map(|_| Success { context })
            .map_err(|e| Failure::from_status(status, e)),
        _ => Err(Failure::from_status(status, response.error_message())),
    };
    Answer { result }
}

/// The values of a `300` answer's siblings, as text (bench values are ASCII).
fn sibling_values(body: &[u8]) -> Result<Vec<String>, String> {
    let values = chorus_api::SiblingsBody::parse(body)?.text_values();
    match values.is_empty() {
        true => Err("300 without siblings".into()),
        false => Ok(values),
    }
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
            result: Ok(Success::default()),
        },
        Ok(response) => Answer {
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
            message,
            connect: false,
        }),
        Ok(_) => Answer {
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
    /// Time zero of the run.
    start: Instant,
    measure_start: Instant,
    measure_end: Instant,
    /// For each key, the join of the contexts the workers got (the workers act as one
    /// application sharing what it was shown). A write carries it, like an application
    /// that reads (or remembers) before it writes, so a key's siblings are only the writes
    /// that were truly concurrent. With per-worker contexts, 64 workers writing the same
    /// keys left about 11 siblings per key, and every write then read, merged and stored
    /// all of them: a workload no real client makes. Joined rather than replaced because a
    /// write's answer covers only its request and itself: the latest answer alone would
    /// leave a concurrent worker's write as a sibling.
    contexts: Mutex<ContextCache>,
}

impl Shared {
    /// The join of the contexts the workers were given for key `key_index`.
    fn known_context(&self, key_index: u64) -> Option<String> {
        self.contexts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map
            .get(&key_index)
            .cloned()
    }

    /// Joins `context`, just given for key `key_index`, into what the workers know.
    fn learn_context(&self, key_index: u64, context: &str) {
        let known = self.known_context(key_index);
        // Joined outside the lock; a join lost to a concurrent one only makes the next
        // write cover less (a sibling, never a loss).
        let joined = join_tokens(known.as_deref(), context);
        self.contexts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key_index, joined);
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
    use chorus_core::causality::Context;
    match known.map(Context::decode) {
        Some(Ok(known)) => match Context::decode(new) {
            Ok(new) => known.join(&new).encode(),
            Err(_) => new.to_string(),
        },
        _ => new.to_string(),
    }
}

struct Worker {
    id: usize,
    shared: Arc<Shared>,
    rng: StdRng,
    node: usize,
    backend: Backend,
    /// The value every put writes (its content does not matter).
    value: Bytes,
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
            self.one_operation(latency_from).await;
        }
    }

    /// Runs and measures one operation whose latency counts from `latency_from`.
    async fn one_operation(&mut self, latency_from: Instant) {
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
        // A write carries the latest context any worker saw for the key, as a
        // read-modify-write client would, which keeps siblings to the truly concurrent.
        let context = match op {
            Op::Get => None,
            _ => shared.known_context(key_index),
        };
        let value = self.value.clone();
        let request = Request {
            op,
            key: &key,
            value: &value,
            context: context.as_deref(),
        };
        let answer = match &mut self.backend {
            Backend::Chorus(client) => chorus(client, config, &request).await,
            Backend::Etcd(client) => etcd(client, &request).await,
            Backend::Redis(conn) => redis(conn, &request).await,
        };
        let done = Instant::now();
        let measured = latency_from >= shared.measure_start && done <= shared.measure_end;
        shared
            .recorder
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(
                op,
                done - latency_from,
                answer.result.as_ref().err(),
                measured,
            );
        match &answer.result {
            Ok(success) => {
                if let Some(ctx) = &success.context {
                    shared.learn_context(key_index, ctx);
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
            rng: stream_rng(config.seed, id),
            node,
            backend: Backend::new(&config.endpoints[node], config.timeout),
            value: value.clone(),
        };
        workers.spawn(worker.run());
    }
    let progress = tokio::spawn(progress(shared.clone()));
    while let Some(result) = workers.join_next().await {
        if let Err(e) = result {
            progress.abort();
            return Err(CliError::failed(format!("a bench worker failed: {e}")));
        }
    }
    progress.abort();
    let recorder = std::mem::replace(
        &mut *shared
            .recorder
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
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
            let mut recorder = shared
                .recorder
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
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
        out.push_str(&crate::tools::client::render_table(
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
    fn three_hundred_bodies_give_every_sibling() {
        let body = br#"{"context":"c","siblings":[{"value":"dzEtMS0=","content_type":"x"},{"value":"dzItMi0="}]}"#;
        assert_eq!(sibling_values(body).unwrap(), vec!["w1-1-", "w2-2-"]);
        assert!(sibling_values(b"{}").is_err());
    }

    #[test]
    fn shared_contexts_join_what_the_workers_were_shown() {
        use chorus_core::causality::{ActorId, Context};
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
        let mut cache = ContextCache::new(4096);
        for k in 0..(4096 as u64 + 100) {
            cache.insert(k, format!("c{k}"));
        }
        assert_eq!(cache.map.len(), 4096);
        cache.insert(4096 as u64 + 99, "again".into());
        assert_eq!(cache.map.len(), 4096);
    }
}
