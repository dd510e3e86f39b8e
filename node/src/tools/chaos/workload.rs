//! `chorus chaos-client` (hidden): the workload `scripts/chaos` runs against a cluster
//! while it injects faults. Each of `--sessions` sessions is one sequential client that
//! sends random gets, puts and deletes over `--keys` keys, each to a node chosen at random,
//! and records every operation, with its outcome, as one JSON line ([`HistoryLine`]).
//!
//! Every put writes a value unique in the run (`s{session}-{seq}`), so the checker can tell
//! exactly which write a read or a final replica state holds. A session remembers, per
//! key, the context of its last successful read or write; a write carries it with
//! probability `--context-ratio` (read-modify-write, superseding what the session saw) and
//! is blind otherwise (concurrent, making siblings). The history is what the checker
//! (`check.rs`) judges; this module decides nothing about correctness.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::Method;
use rand::rngs::StdRng;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinError;

use crate::cli::{ChaosClientArgs, CliError, CliResult};
use crate::tools::bench::{check_ratios, parse_duration_flag, stream_rng};
use chorus_api::client::{self as http_client, BaseUrl, HttpClient, HttpError, Response};
use chorus_api::CONTEXT_HEADER;
/// History lines waiting for the writer; when full, sessions wait.
const HISTORY_QUEUE: usize = 4096;
/// Pause after a request that could not even connect, so a dead node is not a busy loop.
const CONNECT_BACKOFF: Duration = Duration::from_millis(50);

/// One line of the history: one operation, from invocation to outcome.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct HistoryLine {
    pub session: usize,
    pub seq: u64,
    /// `get`, `put` or `delete`.
    pub op: String,
    pub key: String,
    /// The value a put wrote; null for gets and deletes.
    pub value: Option<String>,
    /// The node URL that coordinated the request.
    pub node: String,
    /// Wall-clock milliseconds since the Unix epoch (so faults can be lined up with it).
    pub start_ms: f64,
    pub end_ms: f64,
    /// HTTP status, 0 when there was none (timeout, refused or broken connection).
    pub status: u16,
    /// `ok`; `fail`: certainly not applied (4xx, never sent); `unknown`: may have been
    /// applied (timeout, broken connection, 5xx such as 503 quorum_unavailable).
    pub outcome: String,
    #[serde(default)]
    pub error: Option<String>,
    /// The context the request carried (null for a blind write and for gets).
    #[serde(default)]
    pub context_in: Option<String>,
    /// The context the answer carried.
    #[serde(default)]
    pub context_out: Option<String>,
    /// For a successful get: every live sibling's value (empty when not found).
    #[serde(default)]
    pub values: Option<Vec<String>>,
}

struct Config {
    nodes: Vec<BaseUrl>,
    duration: Duration,
    keys: u64,
    read_ratio: f64,
    delete_ratio: f64,
    context_ratio: f64,
    timeout: Duration,
    r: Option<String>,
    w: Option<String>,
    bucket: String,
    rate: u64,
    sessions: usize,
}

impl Config {
    /// The validated command line.
    fn from_args(args: &ChaosClientArgs) -> Result<Config, CliError> {
        let duration = parse_duration_flag("--duration", &args.duration)?;
        let timeout = parse_duration_flag("--timeout", &args.timeout)?;
        if args.sessions == 0 || args.keys == 0 || timeout.is_zero() {
            return Err(CliError::usage(
                "--sessions, --keys and --timeout must be more than zero",
            ));
        }
        check_ratios(&[
            ("--read-ratio", args.read_ratio),
            ("--delete-ratio", args.delete_ratio),
            ("--context-ratio", args.context_ratio),
        ])?;
        if args.read_ratio + args.delete_ratio > 1.0 {
            return Err(CliError::usage(
                "--read-ratio plus --delete-ratio must not exceed 1",
            ));
        }
        let nodes = node_urls(&args.nodes)?;
        if nodes.is_empty() {
            return Err(CliError::usage("--nodes is empty"));
        }
        Ok(Config {
            nodes,
            duration,
            keys: args.keys,
            read_ratio: args.read_ratio,
            delete_ratio: args.delete_ratio,
            context_ratio: args.context_ratio,
            timeout,
            r: args.r.clone(),
            w: args.w.clone(),
            bucket: args.bucket.clone(),
            rate: args.rate,
            sessions: args.sessions,
        })
    }
}

/// Comma-separated `--nodes` as URLs.
pub fn node_urls(nodes: &[String]) -> Result<Vec<BaseUrl>, CliError> {
    nodes
        .iter()
        .map(|n| BaseUrl::parse(n.trim()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(CliError::usage)
}

pub fn run(args: ChaosClientArgs) -> CliResult {
    let config = Arc::new(Config::from_args(&args)?);
    let file = std::fs::File::create(&args.history).map_err(|e| {
        CliError::usage(format!(
            "cannot create the history file {}: {e}",
            args.history.display()
        ))
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("cannot start the async runtime: {e}")))?;
    let counts = runtime.block_on(run_sessions(config, args.seed, file));
    let counts = counts
        .map_err(|e| CliError::failed(format!("the history writer failed: {e}")))?
        .map_err(|e| {
            CliError::failed(format!(
                "cannot write the history file {}: {e}",
                args.history.display()
            ))
        })?;
    let mut lines: Vec<_> = counts.into_iter().collect();
    lines.sort();
    let total: u64 = lines.iter().map(|(_, n)| n).sum();
    eprintln!(
        "chaos-client: {total} operations ({})",
        lines
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// Runs every session until the duration is over, their history lines written to `file`
/// as they come. Returns the operations by `op outcome`.
async fn run_sessions(
    config: Arc<Config>,
    seed: u64,
    file: std::fs::File,
) -> Result<std::io::Result<HashMap<String, u64>>, JoinError> {
    let (tx, rx) = mpsc::channel::<HistoryLine>(HISTORY_QUEUE);
    let writer = tokio::task::spawn_blocking(move || write_history(file, rx));
    let deadline = Instant::now() + config.duration;
    let mut sessions = tokio::task::JoinSet::new();
    for id in 0..config.sessions {
        let session = Session::new(id, config.clone(), seed, tx.clone());
        sessions.spawn(session.run(deadline));
    }
    drop(tx);
    while sessions.join_next().await.is_some() {}
    writer.await
}

/// Writes every line `rx` receives to `file`, flushed whenever no line is waiting and
/// synced at the end. Returns the lines by `op outcome`.
fn write_history(
    file: std::fs::File,
    mut rx: mpsc::Receiver<HistoryLine>,
) -> std::io::Result<HashMap<String, u64>> {
    let mut out = BufWriter::new(file);
    let mut counts = HashMap::new();
    while let Some(line) = rx.blocking_recv() {
        *counts
            .entry(format!("{} {}", line.op, line.outcome))
            .or_insert(0) += 1;
        serde_json::to_writer(&mut out, &line)?;
        out.write_all(b"\n")?;
        if rx.is_empty() {
            out.flush()?;
        }
    }
    out.flush()?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(counts)
}

pub fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

struct Session {
    id: usize,
    config: Arc<Config>,
    rng: StdRng,
    clients: Vec<HttpClient>,
    /// Per key: the context of this session's last successful read or write of it.
    contexts: HashMap<String, String>,
    seq: u64,
    history: mpsc::Sender<HistoryLine>,
}

impl Session {
    fn new(
        id: usize,
        config: Arc<Config>,
        seed: u64,
        history: mpsc::Sender<HistoryLine>,
    ) -> Session {
        Session {
            id,
            rng: stream_rng(seed, id),
            clients: config
                .nodes
                .iter()
                .map(|n| HttpClient::new(n.clone()).with_timeout(config.timeout))
                .collect(),
            config,
            contexts: HashMap::new(),
            seq: 0,
            history,
        }
    }

    async fn run(mut self, deadline: Instant) {
        // Paced: this session's share of --rate; a slow answer is not made up for later.
        let interval = (self.config.rate > 0).then(|| {
            Duration::from_secs_f64(self.config.sessions as f64 / self.config.rate as f64)
        });
        let mut next = Instant::now()
            + interval.map_or(Duration::ZERO, |i| {
                i.mul_f64(self.id as f64 / self.config.sessions as f64)
            });
        while Instant::now() < deadline {
            if let Some(interval) = interval {
                let now = Instant::now();
                if next > now {
                    tokio::time::sleep(next - now).await;
                }
                next = next.max(now) + interval;
            }
            let line = self.one_operation().await;
            let backoff = line.status == 0
                && line
                    .error
                    .as_deref()
                    .is_some_and(|e| e.starts_with("connect"));
            if self.history.send(line).await.is_err() {
                return;
            }
            if backoff {
                tokio::time::sleep(CONNECT_BACKOFF).await;
            }
        }
    }

    async fn one_operation(&mut self) -> HistoryLine {
        let (mut line, node) = self.draw_operation();
        let (method, quorum) = match line.op.as_str() {
            "get" => (Method::GET, ("r", self.config.r.as_deref())),
            "put" => (Method::PUT, ("w", self.config.w.as_deref())),
            _ => (Method::DELETE, ("w", self.config.w.as_deref())),
        };
        let path = http_client::with_query(
            http_client::kv_path(&self.config.bucket, &line.key),
            &[quorum],
        );
        let mut headers = vec![("accept", "application/json")];
        match (&line.context_in, line.op.as_str()) {
            (Some(ctx), _) => headers.push((CONTEXT_HEADER, ctx.as_str())),
            // Without the header a node reads the key and deletes what that read saw, which
            // the history could not show; an empty context is an explicitly blind delete.
            (None, "delete") => headers.push((CONTEXT_HEADER, "")),
            (None, _) => {}
        }
        let body = line.value.clone().map(Bytes::from).unwrap_or_default();
        line.start_ms = now_ms();
        let result = self.clients[node]
            .request(method, &path, &headers, body)
            .await;
        line.end_ms = now_ms();
        record_outcome(&mut line, result);
        if line.outcome == "ok" {
            match &line.context_out {
                Some(ctx) => {
                    self.contexts.insert(line.key.clone(), ctx.clone());
                }
                None => {
                    self.contexts.remove(&line.key);
                }
            }
        }
        line
    }

    /// Draws the next operation: its history line, not yet sent (no outcome), and the
    /// index of the client (node) to send it to.
    fn draw_operation(&mut self) -> (HistoryLine, usize) {
        let config = self.config.clone();
        let draw: f64 = self.rng.random();
        let op = if draw < config.read_ratio {
            "get"
        } else if draw < config.read_ratio + config.delete_ratio {
            "delete"
        } else {
            "put"
        };
        let key = format!("k{}", self.rng.random_range(0..config.keys));
        let node = self.rng.random_range(0..self.clients.len());
        let seq = self.seq;
        self.seq += 1;
        let value = (op == "put").then(|| format!("s{}-{seq}", self.id));
        let context_in = match op {
            "get" => None,
            _ if self.rng.random_bool(config.context_ratio) => self.contexts.get(&key).cloned(),
            _ => None,
        };
        let line = HistoryLine {
            session: self.id,
            seq,
            op: op.to_string(),
            key,
            value,
            node: self.clients[node].base().to_string(),
            start_ms: 0.0,
            end_ms: 0.0,
            status: 0,
            outcome: "unknown".into(),
            error: None,
            context_in,
            context_out: None,
            values: None,
        };
        (line, node)
    }
}

/// Fills in `line`'s status, outcome, error, answer context and (for a get) values from
/// what its request returned.
fn record_outcome(line: &mut HistoryLine, result: Result<Response, HttpError>) {
    let response = match result {
        Ok(response) => response,
        Err(e) => {
            line.outcome = if e.not_sent() { "fail" } else { "unknown" }.into();
            line.error = Some(match &e {
                HttpError::Connect { .. } => format!("connect: {e}"),
                _ => format!("{}: {e}", e.kind()),
            });
            return;
        }
    };
    line.status = response.status;
    let context_out = response
        .header(CONTEXT_HEADER)
        .filter(|c| !c.is_empty())
        .map(str::to_string);
    match (line.op.as_str(), response.status) {
        ("get", 200 | 300 | 404) => match sibling_values(&response.body) {
            Ok(values) => {
                line.outcome = "ok".into();
                line.values = Some(values);
                line.context_out = context_out;
            }
            Err(e) => {
                line.outcome = "fail".into();
                line.error = Some(e);
            }
        },
        (_, 200..=299) => {
            line.outcome = "ok".into();
            line.context_out = context_out;
        }
        (_, status) => {
            // A 4xx was refused before anything was stored; a 503 may have
            // reached some replicas.
            line.outcome = if (400..500).contains(&status) {
                "fail"
            } else {
                "unknown"
            }
            .into();
            line.error = Some(response.error_message());
        }
    }
}

/// The live values of a JSON get answer (a 404 of an absent key may carry an error body
/// instead, meaning no values).
pub fn sibling_values(body: &[u8]) -> Result<Vec<String>, String> {
    chorus_api::SiblingsBody::parse(body).map(|b| b.text_values())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sibling_values_read_json_answers() {
        let body = br#"{"context":"x","siblings":[{"value":"czEtMQ==","content_type":"a"},{"value":"czItNQ==","content_type":"a"}]}"#;
        assert_eq!(
            sibling_values(body).unwrap(),
            vec!["s1-1".to_string(), "s2-5".to_string()]
        );
        assert_eq!(
            sibling_values(br#"{"context":"","siblings":[]}"#).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            sibling_values(br#"{"error":"not_found","message":"m"}"#).unwrap(),
            Vec::<String>::new()
        );
        assert!(sibling_values(b"not json").is_err());
        assert!(sibling_values(br#"{"siblings":[{"value":"!!"}]}"#).is_err());
    }

    #[test]
    fn history_lines_round_trip() {
        let line = HistoryLine {
            session: 1,
            seq: 2,
            op: "put".into(),
            key: "k1".into(),
            value: Some("s1-2".into()),
            node: "http://127.0.0.1:1".into(),
            start_ms: 1.5,
            end_ms: 2.5,
            status: 204,
            outcome: "ok".into(),
            error: None,
            context_in: None,
            context_out: Some("abc".into()),
            values: None,
        };
        let text = serde_json::to_string(&line).unwrap();
        assert_eq!(serde_json::from_str::<HistoryLine>(&text).unwrap(), line);
    }
}
