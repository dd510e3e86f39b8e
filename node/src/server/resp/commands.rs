//! What each Redis command means in chorus: a table of the commands served (arity, keys,
//! docs for `COMMAND DOCS`), per-connection session state (`HELLO`, `AUTH`, `SELECT`,
//! `CLIENT`, `CHORUS.CONSISTENCY`) and the data commands, which call the coordinator
//! exactly as the HTTP API does.
//!
//! Semantics (docs/api.md, "Redis protocol (RESP)"): a key lives in bucket `db<N>` of the `SELECT`ed
//! database (database 0: `--resp-bucket`). A context-less `SET` is minted over what the
//! minting replica holds (`Coordinator::put_over_current`), so one client's successive
//! `SET`s replace each other and only concurrently minted writes become siblings. A plain
//! `GET` of siblings answers the one with the greatest dot; `CHORUS.GET` shows them all
//! with the context, `CHORUS.SET` writes over a context. A command runs with the
//! connection's `CHORUS.CONSISTENCY`, else its bucket's properties (`r`, `w`, `pr`, `pw`,
//! `ttl`), else `--resp-r` / `--resp-w`: `request_options::resolve`, as HTTP does.
//!
//! Must not: parse frames or touch sockets (`frame`, `mod.rs`), or hold replication logic.
//! Every check of a command's input happens before its first write.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::join_all;

use chorus_core::causality::Context;
use chorus_core::coordinator::{Coordinator, CoordinatorError, Quorum};
use chorus_core::metrics::Metrics;
use chorus_core::object::{Object, Sibling, MAX_NAME_BYTES as MAX_SEGMENT_BYTES, MAX_TTL};
use chorus_core::peers::Peers;
use chorus_core::replica::Replica;
use chorus_core::request_options::{self, Defaults, Effective, Requested};
use chorus_core::storage::Storage;

use super::frame::{Protocol, Reply};

/// Keys of one multi-key command (`MGET`, `MSET`, `DEL`, `EXISTS`) that are in flight at
/// once; the rest wait for them.
pub const KEY_CONCURRENCY: usize = 64;
/// Largest `MGET` answer; a bigger one is refused (ask for fewer keys).
pub const MAX_MGET_BYTES: usize = 64 * 1024 * 1024;
/// The Redis version this front answers as (`INFO`, `HELLO`): the protocol level it speaks.
pub(super) const REDIS_VERSION: &str = "7.0.0";

/// What the front was configured with (`chorus start --resp...`).
pub struct FrontConfig {
    pub node_name: String,
    pub address: SocketAddr,
    /// `AUTH` is required when set.
    pub password: Option<Vec<u8>>,
    /// The bucket of database 0; database N > 0 is `db<N>`.
    pub default_bucket: Vec<u8>,
    /// Read and write quorums where neither the connection nor the bucket sets one.
    pub r: usize,
    pub w: usize,
    pub max_value: usize,
    pub timeout: Duration,
    pub max_connections: usize,
    /// A command whose first bytes arrived must be complete this soon (`FRAME_TIMEOUT`).
    pub frame_timeout: Duration,
    /// Keys of all connections' commands inside the coordinator at once
    /// (`--resp-max-in-flight`); the commands of further keys wait for a turn in the front
    /// instead of crowding the replicas: 1024 pipelined writes through one node cost three
    /// times the CPU per write of 64 and timed out, on a busy 2-core machine.
    pub max_in_flight: usize,
}

/// Counters for `INFO`.
#[derive(Default)]
pub struct Stats {
    pub connections_received: AtomicU64,
    pub connected: AtomicU64,
    pub rejected: AtomicU64,
    pub commands: AtomicU64,
    pub errors: AtomicU64,
}

/// The RESP front of one node: the coordinator it calls and what it counts.
pub struct Front<S: Storage, P: Peers> {
    pub coordinator: Coordinator<S, P>,
    pub replica: Arc<Replica<S>>,
    pub metrics: Arc<Metrics>,
    pub config: FrontConfig,
    pub stats: Stats,
    /// `max_in_flight` permits, one per key a command is working on.
    in_flight: tokio::sync::Semaphore,
    started: Instant,
    next_id: AtomicU64,
}

impl<S: Storage, P: Peers> Front<S, P> {
    pub fn new(
        coordinator: Coordinator<S, P>,
        replica: Arc<Replica<S>>,
        metrics: Arc<Metrics>,
        config: FrontConfig,
    ) -> Self {
        Front {
            in_flight: tokio::sync::Semaphore::new(config.max_in_flight),
            coordinator,
            replica,
            metrics,
            config,
            stats: Stats::default(),

            started: Instant::now(),
            next_id: AtomicU64::new(1),
        }
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn session(&self, peer: SocketAddr, local: SocketAddr) -> Session {
        Session {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            peer,
            local,
            protocol: Protocol::Resp2,
            authenticated: self.config.password.is_none(),
            name: None,
            lib_name: None,
            lib_ver: None,
            db: 0,
            bucket: self.config.default_bucket.clone(),
            r: None,
            w: None,
            created: Instant::now(),
            closing: false,
        }
    }
}

/// One connection's state.
pub struct Session {
    pub id: u64,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub protocol: Protocol,
    pub authenticated: bool,
    name: Option<Bytes>,
    lib_name: Option<Bytes>,
    lib_ver: Option<Bytes>,
    db: u32,
    bucket: Vec<u8>,
    /// Quorums this connection set itself (`CHORUS.CONSISTENCY`); `None` leaves them to
    /// the bucket's properties, then `--resp-r` / `--resp-w` (see [`options`]).
    r: Option<usize>,
    w: Option<usize>,
    created: Instant,
    /// Set by `QUIT`: the connection closes after this answer.
    pub closing: bool,
}

/// Whether a command changes the session (it then runs alone, in order) or only reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Session,
    Data,
}

/// One command argument, for `COMMAND DOCS` (redis-cli builds its hints from these).
pub struct Arg {
    pub name: &'static str,
    /// `key`, `string`, `integer` or `pure-token`.
    pub kind: &'static str,
    pub optional: bool,
    pub multiple: bool,
}

const fn arg(name: &'static str, kind: &'static str, optional: bool, multiple: bool) -> Arg {
    Arg {
        name,
        kind,
        optional,
        multiple,
    }
}

pub struct Spec {
    /// Lower case, as `COMMAND` lists it.
    pub name: &'static str,
    /// Redis's convention: `n` exactly n arguments (the name included), `-n` at least n.
    pub arity: i64,
    pub kind: Kind,
    pub flags: &'static [&'static str],
    /// First key, last key (-1: the last argument) and step; (0, 0, 0) without keys.
    pub keys: (i64, i64, i64),
    pub group: &'static str,
    pub summary: &'static str,
    pub args: &'static [Arg],
    /// The `op` label of the request metrics.
    pub op: &'static str,
}

const KEY: Arg = arg("key", "key", false, false);
const KEYS: Arg = arg("key", "key", false, true);

pub static SPECS: &[Spec] = &[
    Spec { name: "auth", arity: -2, kind: Kind::Session, flags: &["fast", "no-auth"], keys: (0, 0, 0), group: "connection", summary: "Authenticate to the server (--resp-password)", args: &[arg("username", "string", true, false), arg("password", "string", false, false)], op: "resp_auth" },
    Spec { name: "chorus.consistency", arity: -1, kind: Kind::Session, flags: &["fast"], keys: (0, 0, 0), group: "chorus", summary: "Show or set this connection's read and write quorums, e.g. r=2 w=all (or default)", args: &[arg("setting", "string", true, true)], op: "resp_consistency" },
    Spec { name: "chorus.get", arity: 2, kind: Kind::Data, flags: &["readonly"], keys: (1, 1, 1), group: "chorus", summary: "Get every sibling of a key and its causal context: [context, [values...]]", args: &[KEY], op: "resp_chorus_get" },
    Spec { name: "chorus.set", arity: 4, kind: Kind::Data, flags: &["write"], keys: (1, 1, 1), group: "chorus", summary: "Set a key over a context from CHORUS.GET (\"\" for none): replaces exactly what that read saw", args: &[KEY, arg("value", "string", false, false), arg("context", "string", false, false)], op: "resp_chorus_set" },
    Spec { name: "client", arity: -2, kind: Kind::Session, flags: &["fast"], keys: (0, 0, 0), group: "connection", summary: "CLIENT SETNAME, GETNAME, ID, INFO, SETINFO", args: &[arg("subcommand", "string", false, false), arg("arg", "string", true, true)], op: "resp_client" },
    Spec { name: "command", arity: -1, kind: Kind::Data, flags: &["loading", "stale"], keys: (0, 0, 0), group: "server", summary: "The commands this server knows: COMMAND, COMMAND COUNT, COMMAND DOCS, COMMAND INFO, COMMAND LIST", args: &[arg("subcommand", "string", true, false), arg("command-name", "string", true, true)], op: "resp_command" },
    Spec { name: "config", arity: -2, kind: Kind::Data, flags: &["loading", "stale"], keys: (0, 0, 0), group: "server", summary: "CONFIG GET answers an empty list: chorus has no Redis configuration parameters (see chorus start --help)", args: &[arg("subcommand", "string", false, false), arg("parameter", "string", true, true)], op: "resp_config" },
    Spec { name: "del", arity: -2, kind: Kind::Data, flags: &["write"], keys: (1, -1, 1), group: "generic", summary: "Delete keys (each like an HTTP DELETE without a context); returns how many existed", args: &[KEYS], op: "resp_del" },
    Spec { name: "echo", arity: 2, kind: Kind::Data, flags: &["fast"], keys: (0, 0, 0), group: "connection", summary: "Echo the given string", args: &[arg("message", "string", false, false)], op: "resp_echo" },
    Spec { name: "exists", arity: -2, kind: Kind::Data, flags: &["readonly"], keys: (1, -1, 1), group: "generic", summary: "How many of the keys exist", args: &[KEYS], op: "resp_exists" },
    Spec { name: "get", arity: 2, kind: Kind::Data, flags: &["readonly"], keys: (1, 1, 1), group: "string", summary: "Get the value of a key (of siblings, the one with the greatest dot)", args: &[KEY], op: "resp_get" },
    Spec { name: "getdel", arity: 2, kind: Kind::Data, flags: &["write"], keys: (1, 1, 1), group: "string", summary: "Get the value of a key and delete it", args: &[KEY], op: "resp_getdel" },
    Spec { name: "hello", arity: -1, kind: Kind::Session, flags: &["fast", "no-auth"], keys: (0, 0, 0), group: "connection", summary: "Handshake: pick RESP2 or RESP3, optionally authenticate and name the connection", args: &[arg("protover", "integer", true, false), arg("AUTH", "pure-token", true, false), arg("SETNAME", "pure-token", true, false)], op: "resp_hello" },
    Spec { name: "info", arity: -1, kind: Kind::Data, flags: &["loading", "stale"], keys: (0, 0, 0), group: "server", summary: "Server, clients, stats, cluster and keyspace figures", args: &[arg("section", "string", true, true)], op: "resp_info" },
    Spec { name: "mget", arity: -2, kind: Kind::Data, flags: &["readonly"], keys: (1, -1, 1), group: "string", summary: "Get the values of keys", args: &[KEYS], op: "resp_mget" },
    Spec { name: "mset", arity: -3, kind: Kind::Data, flags: &["write"], keys: (1, -1, 2), group: "string", summary: "Set keys to values (each key independently, not atomically)", args: &[KEY, arg("value", "string", false, false), arg("key value", "string", true, true)], op: "resp_mset" },
    Spec { name: "ping", arity: -1, kind: Kind::Data, flags: &["fast"], keys: (0, 0, 0), group: "connection", summary: "Ping the server", args: &[arg("message", "string", true, false)], op: "resp_ping" },
    Spec { name: "pttl", arity: 2, kind: Kind::Data, flags: &["readonly", "fast"], keys: (1, 1, 1), group: "generic", summary: "Milliseconds until the key's value expires (-1: no TTL, -2: no such key)", args: &[KEY], op: "resp_pttl" },
    Spec { name: "quit", arity: -1, kind: Kind::Session, flags: &["fast", "no-auth"], keys: (0, 0, 0), group: "connection", summary: "Close the connection", args: &[], op: "resp_quit" },
    Spec { name: "select", arity: 2, kind: Kind::Session, flags: &["fast"], keys: (0, 0, 0), group: "connection", summary: "Change the database: database N is bucket dbN (0: --resp-bucket)", args: &[arg("index", "integer", false, false)], op: "resp_select" },
    Spec { name: "set", arity: -3, kind: Kind::Data, flags: &["write"], keys: (1, 1, 1), group: "string", summary: "Set a key, superseding what the replica that mints it holds (NX, XX: checked by a read first; EX, PX, EXAT, PXAT: a TTL)", args: &[KEY, arg("value", "string", false, false), arg("NX", "pure-token", true, false), arg("XX", "pure-token", true, false), arg("GET", "pure-token", true, false), arg("EX", "integer", true, false), arg("PX", "integer", true, false), arg("EXAT", "unix-time", true, false), arg("PXAT", "unix-time", true, false)], op: "resp_set" },
    Spec { name: "ttl", arity: 2, kind: Kind::Data, flags: &["readonly", "fast"], keys: (1, 1, 1), group: "generic", summary: "Seconds until the key's value expires (-1: no TTL, -2: no such key)", args: &[KEY], op: "resp_ttl" },
];

pub fn lookup(name: &[u8]) -> Option<&'static Spec> {
    SPECS
        .iter()
        .find(|spec| name.eq_ignore_ascii_case(spec.name.as_bytes()))
}

/// The keys a command touches, from its spec: two commands of a pipeline that share a
/// key run one after the other.
pub fn keys_of<'a>(spec: &Spec, args: &'a [Bytes]) -> impl Iterator<Item = &'a [u8]> {
    let (first, last, step) = spec.keys;
    let last = if last < 0 {
        args.len() as i64 + last
    } else {
        last
    };
    // Commands without keys have first = 0: an empty range.
    let end = if first > 0 { last.max(0) as usize } else { 0 };
    let range = (first.max(1) as usize..=end).step_by(step.max(1) as usize);
    range.filter_map(|i| args.get(i).map(|a| &a[..]))
}

/// How a command is to run, or its answer when it cannot run at all.
pub enum Plan {
    Reply(Reply),
    Run(&'static Spec),
}

pub fn plan(session: &Session, args: &[Bytes]) -> Plan {
    let Some(spec) = lookup(&args[0]) else {
        return Plan::Reply(unknown_command(args));
    };
    let n = args.len() as i64;
    if (spec.arity >= 0 && n != spec.arity) || n < spec.arity.abs() {
        return Plan::Reply(wrong_arity(spec.name));
    }
    if !session.authenticated && !spec.flags.contains(&"no-auth") {
        return Plan::Reply(Reply::error("NOAUTH Authentication required."));
    }
    Plan::Run(spec)
}

fn wrong_arity(name: &str) -> Reply {
    Reply::error(format!(
        "ERR wrong number of arguments for '{name}' command"
    ))
}

/// Redis's wording, with the (shortened, printable) name and first arguments.
fn unknown_command(args: &[Bytes]) -> Reply {
    let mut message = format!(
        "ERR unknown command '{}', with args beginning with: ",
        printable(&args[0])
    );
    for arg in args.iter().skip(1).take(8) {
        message.push_str(&format!("'{}' ", printable(arg)));
    }
    Reply::error(message)
}

fn printable(bytes: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(&bytes[..bytes.len().min(64)])
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    text
}

fn syntax_error() -> Reply {
    Reply::error("ERR syntax error")
}

fn upper(arg: &[u8]) -> String {
    String::from_utf8_lossy(arg).to_ascii_uppercase()
}

/// Runs a session command: it may change `session` (and set `closing`).
pub fn run_session<S: Storage, P: Peers>(
    front: &Front<S, P>,
    session: &mut Session,
    spec: &Spec,
    args: &[Bytes],
) -> Reply {
    match spec.name {
        "auth" if args.len() > 3 => syntax_error(),
        "auth" => match auth(
            front,
            args.get(2).map(|_| &args[1][..]),
            args.last().expect("arity"),
        ) {
            Ok(()) => {
                session.authenticated = true;
                Reply::ok()
            }
            Err(e) => e,
        },
        "hello" => hello(front, session, args),
        "select" => select(front, session, &args[1]),
        "client" => client(session, args),
        "chorus.consistency" => consistency(front, session, &args[1..]),
        "quit" => {
            session.closing = true;
            Reply::ok()
        }
        other => unreachable!("{other} is not a session command"),
    }
}

/// Checks a password the way `requirepass` does: only the user `default` exists.
fn auth<S: Storage, P: Peers>(
    front: &Front<S, P>,
    user: Option<&[u8]>,
    password: &[u8],
) -> Result<(), Reply> {
    let wrong = || Reply::error("WRONGPASS invalid username-password pair or user is disabled.");
    if user.is_some_and(|u| u != b"default") {
        return Err(wrong());
    }
    match &front.config.password {
        // Without a password every client is in; only the one-argument form is an error,
        // as in Redis, because it shows a client that expects a password.
        None if user.is_none() => Err(Reply::error("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?")),
        None => Ok(()),
        // Compared as hashes, so the time taken says nothing about the password.
        Some(expected) if blake3::hash(expected) == blake3::hash(password) => Ok(()),
        Some(_) => Err(wrong()),
    }
}

fn hello<S: Storage, P: Peers>(
    front: &Front<S, P>,
    session: &mut Session,
    args: &[Bytes],
) -> Reply {
    let mut protocol = session.protocol;
    let mut i = 1;
    if let Some(version) = args.get(1) {
        protocol = match &version[..] {
            b"2" => Protocol::Resp2,
            b"3" => Protocol::Resp3,
            _ => return Reply::error("NOPROTO unsupported protocol version"),
        };
        i = 2;
    }
    let (mut credentials, mut name) = (None, None);
    while i < args.len() {
        match upper(&args[i]).as_str() {
            "AUTH" if i + 2 < args.len() => {
                credentials = Some((&args[i + 1][..], &args[i + 2][..]));
                i += 3;
            }
            "SETNAME" if i + 1 < args.len() => {
                name = Some(args[i + 1].clone());
                i += 2;
            }
            _ => {
                return Reply::error(format!(
                    "ERR Syntax error in HELLO option '{}'",
                    printable(&args[i])
                ))
            }
        }
    }
    let authenticated = match credentials {
        Some((user, password)) => match auth(front, Some(user), password) {
            Ok(()) => true,
            Err(e) => return e,
        },
        None if !session.authenticated => {
            return Reply::error("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time")
        }
        None => true,
    };
    if let Some(name) = &name {
        if let Err(e) = valid_name(name) {
            return e;
        }
    }
    session.authenticated = authenticated;
    session.protocol = protocol;
    if let Some(name) = name {
        session.name = (!name.is_empty()).then_some(name);
    }
    let pair = |k: &str, v: Reply| (Reply::bulk(k.to_string()), v);
    Reply::Map(vec![
        pair("server", Reply::bulk("chorus")),
        pair("version", Reply::bulk(REDIS_VERSION)),
        pair("chorus_version", Reply::bulk(env!("CARGO_PKG_VERSION"))),
        pair("proto", Reply::Integer(protocol.version())),
        pair("id", Reply::Integer(session.id as i64)),
        pair("mode", Reply::bulk("standalone")),
        pair("role", Reply::bulk("master")),
        pair("modules", Reply::Array(Vec::new())),
    ])
}

fn select<S: Storage, P: Peers>(front: &Front<S, P>, session: &mut Session, index: &[u8]) -> Reply {
    let Some(db) = std::str::from_utf8(index)
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
    else {
        return Reply::error("ERR value is not an integer or out of range");
    };
    session.db = db;
    session.bucket = bucket_of(front, db);
    Reply::ok()
}

/// Database 0 is the configured default bucket, database N > 0 the bucket `db<N>`.
pub fn bucket_of<S: Storage, P: Peers>(front: &Front<S, P>, db: u32) -> Vec<u8> {
    if db == 0 {
        front.config.default_bucket.clone()
    } else {
        format!("db{db}").into_bytes()
    }
}

/// Client names and library names: printable ASCII without spaces, as Redis requires.
fn valid_name(name: &[u8]) -> Result<(), Reply> {
    if name.iter().all(|b| (b'!'..=b'~').contains(b)) {
        Ok(())
    } else {
        Err(Reply::error(
            "ERR Client names cannot contain spaces, newlines or special characters.",
        ))
    }
}

fn client(session: &mut Session, args: &[Bytes]) -> Reply {
    let sub = upper(&args[1]);
    let arity = match sub.as_str() {
        "SETNAME" => 3,
        "GETNAME" | "ID" | "INFO" => 2,
        "SETINFO" => 4,
        _ => {
            return Reply::error(format!(
                "ERR unknown subcommand '{}'. Try CLIENT HELP.",
                printable(&args[1])
            ))
        }
    };
    if args.len() != arity {
        return wrong_arity(&format!("client|{}", sub.to_ascii_lowercase()));
    }
    match sub.as_str() {
        "SETNAME" => match valid_name(&args[2]) {
            Ok(()) => {
                session.name = (!args[2].is_empty()).then(|| args[2].clone());
                Reply::ok()
            }
            Err(e) => e,
        },
        "GETNAME" => session.name.clone().map_or(Reply::Null, Reply::Bulk),
        "ID" => Reply::Integer(session.id as i64),
        "INFO" => Reply::bulk(client_info(session)),
        _ => {
            let slot = match upper(&args[2]).as_str() {
                "LIB-NAME" => &mut session.lib_name,
                "LIB-VER" => &mut session.lib_ver,
                _ => {
                    return Reply::error(format!(
                        "ERR Unrecognized option '{}'",
                        printable(&args[2])
                    ))
                }
            };
            match valid_name(&args[3]) {
                Ok(()) => {
                    *slot = Some(args[3].clone());
                    Reply::ok()
                }
                Err(e) => e,
            }
        }
    }
}

fn client_info(session: &Session) -> String {
    let text = |b: &Option<Bytes>| b.as_deref().map(printable).unwrap_or_default();
    format!(
        "id={} addr={} laddr={} name={} age={} db={} resp={} lib-name={} lib-ver={}\n",
        session.id,
        session.peer,
        session.local,
        text(&session.name),
        session.created.elapsed().as_secs(),
        session.db,
        session.protocol.version(),
        text(&session.lib_name),
        text(&session.lib_ver),
    )
}

/// `CHORUS.CONSISTENCY [r=R] [w=W] | default`: counts as in the HTTP API's `r` and `w`;
/// without an argument, the quorums this connection's commands use in its bucket now.
fn consistency<S: Storage, P: Peers>(
    front: &Front<S, P>,
    session: &mut Session,
    settings: &[Bytes],
) -> Reply {
    if settings.is_empty() {
        return match options(front, session, None) {
            Ok(o) => Reply::bulk(format!("r={} w={}", o.r, o.w)),
            Err(e) => e,
        };
    }
    let n = front.coordinator.n();
    let (mut r, mut w) = (session.r, session.w);
    for setting in settings {
        let text = String::from_utf8_lossy(setting);
        if text.eq_ignore_ascii_case("default") {
            (r, w) = (None, None);
            continue;
        }
        let parsed = text
            .split_once('=')
            .ok_or_else(|| "expected r=<count> or w=<count>".to_string())
            .and_then(|(name, value)| {
                let count = Quorum::parse(value).and_then(|q| q.resolve(n, false))?;
                match name {
                    "r" => r = Some(count),
                    "w" => w = Some(count),
                    _ => return Err(format!("unknown setting '{name}': use r or w")),
                }
                Ok(())
            });
        if let Err(e) = parsed {
            return Reply::error(format!(
                "ERR CHORUS.CONSISTENCY '{}': {e}",
                printable(setting)
            ));
        }
    }
    (session.r, session.w) = (r, w);
    Reply::ok()
}

/// Runs a command that only reads the session, and records it in the request metrics.
pub async fn run_data<S: Storage, P: Peers>(
    front: &Front<S, P>,
    session: &Session,
    spec: &'static Spec,
    args: &[Bytes],
) -> Reply {
    let started = Instant::now();
    // One permit per key the command works on at once (multi-key commands: a chunk).
    let keys = keys_of(spec, args)
        .count()
        .min(KEY_CONCURRENCY)
        .min(front.config.max_in_flight) as u32;
    let _permits = match keys {
        0 => None,
        n => Some(
            front
                .in_flight
                .acquire_many(n)
                .await
                .expect("the semaphore is never closed"),
        ),
    };
    let result = match spec.name {
        "get" => get(front, session, &args[1]).await,
        "set" => set(front, session, args).await,
        "del" => delete_keys(front, session, &args[1..]).await,
        "exists" => exists(front, session, &args[1..]).await,
        "mget" => mget(front, session, &args[1..]).await,
        "mset" => mset(front, session, &args[1..]).await,
        "getdel" => getdel(front, session, &args[1]).await,
        "ttl" => ttl(front, session, &args[1], 1_000).await,
        "pttl" => ttl(front, session, &args[1], 1).await,
        "chorus.get" => chorus_get(front, session, &args[1]).await,
        "chorus.set" => chorus_set(front, session, args).await,
        _ => Ok(super::info::run(front, args)),
    };
    let reply = result.unwrap_or_else(|e| e);
    if spec.keys.0 > 0 {
        record(&front.metrics, spec.op, &reply, started);
    }
    reply
}

/// The request metrics the HTTP API keeps, with the RESP command as `op` and the HTTP
/// status the answer corresponds to (200, 400, 409, 503).
fn record(metrics: &Metrics, op: &'static str, reply: &Reply, started: Instant) {
    let status = match reply {
        Reply::Error(e) if e.starts_with("QUORUM") || e.starts_with("TRYAGAIN") => 503,
        Reply::Error(e) if e.starts_with("TOOMANYSIBLINGS") => 409,
        Reply::Error(_) => 400,
        _ => 200,
    };
    metrics.record_request(op, status, started.elapsed().as_secs_f64());
}

fn coordinator_error(e: CoordinatorError) -> Reply {
    match &e {
        CoordinatorError::Unavailable { needed, replied, .. } => Reply::error(format!(
            "QUORUM needed {needed} replied {replied}: {e}; a write that failed so may still have reached some replicas"
        )),
        CoordinatorError::Unreachable { needed, .. } => {
            Reply::error(format!("QUORUM needed {needed} replied 0: {e}"))
        }
        // A limit refused at the minting replica, nothing stored: the sibling bound has
        // its own code; the others (an over-large object, too many actors) are bad input.
        CoordinatorError::Refused { code, message } if code == "too_many_siblings" => {
            Reply::error(format!("TOOMANYSIBLINGS {message}"))
        }
        CoordinatorError::Refused { code, message } => Reply::error(format!("ERR {code}: {message}")),
        CoordinatorError::PreconditionFailed { .. } => Reply::error(format!("ERR {e}")),
        // Redis's word for "not now, not here": another node can serve it.
        CoordinatorError::StorageFailed(_) => Reply::error(format!("TRYAGAIN {e}")),
    }
}

fn check_key(key: &[u8]) -> Result<(), Reply> {
    if key.is_empty() {
        return Err(Reply::error(
            "ERR the key is empty; chorus keys are 1..=1024 bytes",
        ));
    }
    if key.len() > MAX_SEGMENT_BYTES {
        return Err(Reply::error(format!(
            "ERR the key is {} bytes, over the limit of {MAX_SEGMENT_BYTES}",
            key.len()
        )));
    }
    Ok(())
}

fn check_value<S: Storage, P: Peers>(front: &Front<S, P>, value: &[u8]) -> Result<(), Reply> {
    let max = front.config.max_value;
    if value.len() > max {
        return Err(Reply::error(format!(
            "ERR the value is {} bytes, over the limit of {max} (--max-value)",
            value.len()
        )));
    }
    Ok(())
}

/// What a command of this connection runs with in its bucket (`request_options`, as for
/// HTTP): the connection's `CHORUS.CONSISTENCY`, else the bucket's properties, else
/// `--resp-r` / `--resp-w`; a write's expiry is its own (`SET ... EX`), else the bucket's
/// `ttl`.
fn options<S: Storage, P: Peers>(
    front: &Front<S, P>,
    session: &Session,
    expires_at_ms: Option<Option<u64>>,
) -> Result<Effective, Reply> {
    let requested = Requested {
        r: session.r,
        w: session.w,
        pr: None,
        pw: None,
        expires_at_ms,
    };
    let defaults = Defaults {
        r: front.config.r,
        w: front.config.w,
    };
    let props = front.coordinator.props().get(&session.bucket);
    let (n, now_ms) = (front.coordinator.n(), front.coordinator.now_ms());
    request_options::resolve(n, defaults, props.as_ref(), &requested, now_ms)
        .map_err(|e| Reply::error(format!("ERR {e}")))
}

/// Reads a key at `r` replicas, `pr` of them primaries.
async fn read<S: Storage, P: Peers>(
    front: &Front<S, P>,
    session: &Session,
    key: &[u8],
    (r, pr): (usize, usize),
) -> Result<Object, Reply> {
    check_key(key)?;
    front
        .coordinator
        .get(&session.bucket, key, r, pr, front.config.timeout)
        .await
        .map_err(coordinator_error)
}

/// Siblings live at `now_ms` (no tombstone, not expired) with their dots, in the state's
/// deterministic order.
fn live(object: &Object, now_ms: u64) -> Vec<(u64, u64, &Sibling)> {
    object
        .dotted_values()
        .into_iter()
        .filter(|(_, _, s)| s.is_live(now_ms))
        .map(|(actor, counter, s)| (counter, actor.0, s))
        .collect()
}

/// The version a plain `GET` answers when a key has siblings: the live one with the
/// greatest dot (counter first, then actor id), the same on every node for the same state.
fn chosen_sibling(object: &Object, now_ms: u64) -> Option<&Sibling> {
    live(object, now_ms)
        .into_iter()
        .max_by_key(|(counter, actor, _)| (*counter, *actor))
        .map(|(_, _, s)| s)
}

/// The value of [`chosen_sibling`].
fn chosen(object: &Object, now_ms: u64) -> Option<Bytes> {
    chosen_sibling(object, now_ms).map(|s| Bytes::from(s.value.clone()))
}

async fn get<S: Storage, P: Peers>(
    front: &Front<S, P>,
    session: &Session,
    key: &[u8],
) -> Result<Reply, Reply> {
    let o = options(front, session, None)?;
    let object = read(front, session, key, (o.r, o.pr)).await?;
    Ok(chosen(&object, front.coordinator.now_ms()).map_or(Reply::Null, Reply::Bulk))
}

/// `TTL` (`unit_ms` 1000) and `PTTL` (1): time left until the chosen value expires,
/// rounded up, -1 when it has no TTL, -2 when there is no live value.
async fn ttl<S: Storage, P: Peers>(
    front: &Front<S, P>,
    session: &Session,
    key: &[u8],
    unit_ms: u64,
) -> Result<Reply, Reply> {
    let o = options(front, session, None)?;
    let object = read(front, session, key, (o.r, o.pr)).await?;
    let now = front.coordinator.now_ms();
    Ok(Reply::Integer(match chosen_sibling(&object, now) {
        None => -2,
        Some(Sibling {
            expires_at_ms: None,
            ..
        }) => -1,
        Some(Sibling {
            expires_at_ms: Some(at),
            ..
        }) => (at - now).div_ceil(unit_ms) as i64,
    }))
}

async fn write_over_current<S: Storage, P: Peers>(
    front: &Front<S, P>,
    session: &Session,
    key: &[u8],
    value: &[u8],
    o: &Effective,
) -> Result<(), Reply> {
    let value = Sibling::value(value.to_vec(), None).expiring_at(o.expires_at_ms);
    front
        .coordinator
        .put_over_current(&session.bucket, key, value, o.w, o.pw, front.config.timeout)
        .await
        .map(|_| ())
        .map_err(coordinator_error)
}

/// When a `SET`'s value expires (Unix ms at `now_ms`) for its `EX`, `PX`, `EXAT` or
/// `PXAT` and that option's number. A relative TTL is bounded by `object::MAX_TTL`.
fn set_expiry(option: &str, number: Option<&Bytes>, now_ms: u64) -> Result<u64, Reply> {
    let invalid = || Reply::error("ERR invalid expire time in 'set' command");
    let n: u64 = number
        .and_then(|n| std::str::from_utf8(n).ok()?.parse().ok())
        .filter(|&n| n > 0)
        .ok_or_else(invalid)?;
    let max_ms = MAX_TTL.as_millis() as u64;
    let ms = match option {
        "EX" | "EXAT" => n.checked_mul(1_000).ok_or_else(invalid)?,
        _ => n,
    };
    match option {
        "EX" | "PX" if ms <= max_ms => Ok(now_ms + ms),
        "EXAT" | "PXAT" if ms <= now_ms.saturating_add(max_ms) => Ok(ms),
        _ => Err(invalid()),
    }
}

/// `SET key value [NX|XX] [GET] [EX s|PX ms|EXAT t|PXAT t]`. NX, XX and GET read the key
/// first (at r): the check is not atomic with the write, which supersedes what the
/// minting replica holds then. A TTL is fixed by this node's clock; without one, the
/// bucket's `ttl` applies.
async fn set<S: Storage, P: Peers>(
    front: &Front<S, P>,
    session: &Session,
    args: &[Bytes],
) -> Result<Reply, Reply> {
    let (key, value) = (&args[1], &args[2]);
    let (mut nx, mut xx, mut want_old) = (false, false, false);
    let mut expires_at = None;
    let mut given = args[3..].iter();
    while let Some(option) = given.next() {
        match upper(option).as_str() {
            "NX" if !xx => nx = true,
            "XX" if !nx => xx = true,
            "GET" => want_old = true,
            unit @ ("EX" | "PX" | "EXAT" | "PXAT") if expires_at.is_none() => {
                let now = front.coordinator.now_ms();
                expires_at = Some(set_expiry(unit, given.next(), now)?);
            }
            "KEEPTTL" => {
                return Err(Reply::error(
                    "ERR chorus cannot keep a TTL across a SET (KEEPTTL): give EX or PX again",
                ))
            }
            _ => return Err(syntax_error()),
        }
    }
    check_key(key)?;
    check_value(front, value)?;
    let o = options(front, session, expires_at.map(Some))?;
    if !(nx || xx || want_old) {
        write_over_current(front, session, key, value, &o).await?;
        return Ok(Reply::ok());
    }
    let old = chosen(
        &read(front, session, key, (o.r, o.pr)).await?,
        front.coordinator.now_ms(),
    );
    let skip = (nx && old.is_some()) || (xx && old.is_none());
    if !skip {
        write_over_current(front, session, key, value, &o).await?;
    }
    Ok(match (want_old, skip) {
        (true, _) => old.map_or(Reply::Null, Reply::Bulk),
        (false, true) => Reply::Null,
        (false, false) => Reply::ok(),
    })
}

/// Deletes one key like an HTTP DELETE without a context: reads it (`DEL` at r = w, so
/// the delete is as available as asked for) and writes a tombstone over what that read
/// saw, at `o`'s w and pw. Returns the value deleted, None when there was none (and
/// nothing is written).
async fn delete<S: Storage, P: Peers>(
    front: &Front<S, P>,
    session: &Session,
    key: &[u8],
    read_at: (usize, usize),
    o: &Effective,
) -> Result<Option<Bytes>, Reply> {
    let object = read(front, session, key, read_at).await?;
    let Some(old) = chosen(&object, front.coordinator.now_ms()) else {
        return Ok(None);
    };
    front
        .coordinator
        .put(
            &session.bucket,
            key,
            object.context(),
            Sibling::tombstone(),
            o.w,
            o.pw,
            front.config.timeout,
        )
        .await
        .map_err(coordinator_error)?;
    Ok(Some(old))
}

async fn getdel<S: Storage, P: Peers>(
    front: &Front<S, P>,
    session: &Session,
    key: &[u8],
) -> Result<Reply, Reply> {
    let o = options(front, session, None)?;
    Ok(delete(front, session, key, (o.r, o.pr), &o)
        .await?
        .map_or(Reply::Null, Reply::Bulk))
}

/// Runs `each(i)` for i in 0..count, `KEY_CONCURRENCY` at a time; answers in order, and
/// stops after the first chunk with an error.
async fn chunked<T, Fut>(count: usize, each: impl Fn(usize) -> Fut) -> Result<Vec<T>, Reply>
where
    Fut: std::future::Future<Output = Result<T, Reply>>,
{
    let mut out = Vec::with_capacity(count);
    for start in (0..count).step_by(KEY_CONCURRENCY) {
        for result in join_all((start..count.min(start + KEY_CONCURRENCY)).map(&each)).await {
            out.push(result?);
        }
    }
    Ok(out)
}

fn distinct(keys: &[Bytes]) -> Vec<Bytes> {
    let mut seen = std::collections::HashSet::new();
    keys.iter()
        .filter(|k| seen.insert(&k[..]))
        .cloned()
        .collect()
}

async fn delete_keys<S: Storage, P: Peers>(
    front: &Front<S, P>,
    session: &Session,
    keys: &[Bytes],
) -> Result<Reply, Reply> {
    keys.iter().try_for_each(|k| check_key(k))?;
    let o = &options(front, session, None)?;
    let unique = &distinct(keys);
    let deleted = chunked(unique.len(), |i| {
        delete(front, session, &unique[i], (o.w, 0), o)
    })
    .await?;
    Ok(Reply::Integer(
        deleted.iter().filter(|d| d.is_some()).count() as i64,
    ))
}

async fn exists<S: Storage, P: Peers>(
    front: &Front<S, P>,
    session: &Session,
    keys: &[Bytes],
) -> Result<Reply, Reply> {
    keys.iter().try_for_each(|k| check_key(k))?;
    let o = options(front, session, None)?;
    let unique = &distinct(keys);
    let found = chunked(unique.len(), |i| async move {
        Ok(chosen(
            &read(front, session, &unique[i], (o.r, o.pr)).await?,
            front.coordinator.now_ms(),
        )
        .is_some())
    })
    .await?;
    let present: std::collections::HashSet<&[u8]> = unique
        .iter()
        .zip(found)
        .filter(|(_, f)| *f)
        .map(|(k, _)| &k[..])
        .collect();
    Ok(Reply::Integer(
        keys.iter().filter(|k| present.contains(&k[..])).count() as i64,
    ))
}

async fn mget<S: Storage, P: Peers>(
    front: &Front<S, P>,
    session: &Session,
    keys: &[Bytes],
) -> Result<Reply, Reply> {
    keys.iter().try_for_each(|k| check_key(k))?;
    let o = options(front, session, None)?;
    let mut values = Vec::with_capacity(keys.len());
    let mut bytes = 0;
    for chunk in keys.chunks(KEY_CONCURRENCY) {
        let read_all = join_all(chunk.iter().map(|k| async {
            Ok::<_, Reply>(chosen(
                &read(front, session, k, (o.r, o.pr)).await?,
                front.coordinator.now_ms(),
            ))
        }));
        for value in read_all.await {
            let value = value?;
            bytes += value.as_ref().map_or(0, Bytes::len);
            values.push(value.map_or(Reply::Null, Reply::Bulk));
        }
        if bytes > MAX_MGET_BYTES {
            return Err(Reply::error(format!(
                "ERR the MGET answer would be over {MAX_MGET_BYTES} bytes; ask for fewer keys"
            )));
        }
    }
    Ok(Reply::Array(values))
}

async fn mset<S: Storage, P: Peers>(
    front: &Front<S, P>,
    session: &Session,
    pairs: &[Bytes],
) -> Result<Reply, Reply> {
    if !pairs.len().is_multiple_of(2) {
        return Err(wrong_arity("mset"));
    }
    for pair in pairs.chunks(2) {
        check_key(&pair[0])?;
        check_value(front, &pair[1])?;
    }
    let o = &options(front, session, None)?;
    chunked(pairs.len() / 2, |i| {
        write_over_current(front, session, &pairs[2 * i], &pairs[2 * i + 1], o)
    })
    .await?;
    Ok(Reply::ok())
}

async fn chorus_get<S: Storage, P: Peers>(
    front: &Front<S, P>,
    session: &Session,
    key: &[u8],
) -> Result<Reply, Reply> {
    let o = options(front, session, None)?;
    let object = read(front, session, key, (o.r, o.pr)).await?;
    let values = live(&object, front.coordinator.now_ms())
        .into_iter()
        .map(|(_, _, s)| Reply::bulk(s.value.clone()))
        .collect();
    Ok(Reply::Array(vec![
        Reply::bulk(chorus_api::bind_context(
            &object.context().encode(),
            &session.bucket,
            key,
        )),
        Reply::Array(values),
    ]))
}

async fn chorus_set<S: Storage, P: Peers>(
    front: &Front<S, P>,
    session: &Session,
    args: &[Bytes],
) -> Result<Reply, Reply> {
    let (key, value, token) = (&args[1], &args[2], &args[3]);
    check_key(key)?;
    check_value(front, value)?;
    let context = match std::str::from_utf8(token) {
        Ok("") => Context::default(),
        Ok(text) => chorus_api::bound_token(text, &session.bucket, key)
            .map_err(|e| e.to_string())
            .and_then(|token| Context::decode(token).map_err(|e| e.to_string()))
            .map_err(|e| Reply::error(format!("ERR invalid context: {e}")))?,
        Err(_) => return Err(Reply::error("ERR invalid context: not ASCII")),
    };
    let o = options(front, session, None)?;
    let value = Sibling::value(value.to_vec(), None).expiring_at(o.expires_at_ms);
    front
        .coordinator
        .put(
            &session.bucket,
            key,
            context,
            value,
            o.w,
            o.pw,
            front.config.timeout,
        )
        .await
        .map_err(coordinator_error)?;
    Ok(Reply::ok())
}
