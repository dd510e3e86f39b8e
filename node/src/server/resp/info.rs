//! The commands about the server itself: `PING`, `ECHO`, `CONFIG GET` (an empty answer:
//! redis-benchmark asks for `save` and `appendonly`), `COMMAND` (and `COUNT`, `DOCS`,
//! `INFO`, `LIST`, from the command table: enough for redis-cli's hints and redis-py's
//! `command()`), and `INFO` (server, clients, stats, cluster and keyspace figures from the
//! front's counters and the node's metrics). Must not: change any state.

use std::sync::atomic::Ordering;

use bytes::Bytes;

use chorus_core::peers::Peers;
use chorus_core::storage::Storage;

use super::commands::{lookup, Front, Spec, SPECS};
use super::frame::Reply;

/// Answers `PING`, `ECHO`, `CONFIG`, `COMMAND` and `INFO`.
pub fn run<S: Storage, P: Peers>(front: &Front<S, P>, args: &[Bytes]) -> Reply {
    match &args[0].to_ascii_lowercase()[..] {
        b"ping" => match args.len() {
            1 => Reply::simple("PONG"),
            2 => Reply::Bulk(args[1].clone()),
            _ => Reply::error("ERR wrong number of arguments for 'ping' command"),
        },
        b"echo" => Reply::Bulk(args[1].clone()),
        b"command" => command(&args[1..]),
        b"config" if args[1].eq_ignore_ascii_case(b"get") => Reply::Map(Vec::new()),
        b"config" => Reply::error(format!(
            "ERR unknown subcommand '{}'. chorus has no Redis configuration: see chorus start --help",
            String::from_utf8_lossy(&args[1][..args[1].len().min(64)]).replace(|c: char| c.is_control(), "?")
        )),
        b"info" => Reply::bulk(info(front, &args[1..])),
        other => unreachable!("{} is not a server command", String::from_utf8_lossy(other)),
    }
}

fn command(args: &[Bytes]) -> Reply {
    let Some(sub) = args.first() else {
        return Reply::Array(SPECS.iter().map(command_info).collect());
    };
    let named =
        |args: &[Bytes]| -> Vec<&'static Spec> { args.iter().filter_map(|a| lookup(a)).collect() };
    match &sub.to_ascii_uppercase()[..] {
        b"COUNT" => Reply::Integer(SPECS.len() as i64),
        b"LIST" => Reply::Array(SPECS.iter().map(|s| Reply::bulk(s.name)).collect()),
        b"INFO" => Reply::Array(
            args[1..]
                .iter()
                .map(|a| lookup(a).map_or(Reply::Null, command_info))
                .collect(),
        ),
        b"DOCS" if args.len() == 1 => Reply::Map(SPECS.iter().map(docs).collect()),
        b"DOCS" => Reply::Map(named(&args[1..]).into_iter().map(docs).collect()),
        _ => Reply::error(format!(
            "ERR unknown subcommand '{}'. Try COMMAND HELP.",
            String::from_utf8_lossy(&sub[..sub.len().min(64)])
                .replace(|c: char| c.is_control(), "?")
        )),
    }
}

/// Redis 7's `COMMAND INFO` layout: name, arity, flags, first key, last key, step, ACL
/// categories, tips, key specs, subcommands.
fn command_info(spec: &Spec) -> Reply {
    let (first, last, step) = spec.keys;
    Reply::Array(vec![
        Reply::bulk(spec.name),
        Reply::Integer(spec.arity),
        Reply::Array(spec.flags.iter().map(|f| Reply::simple(*f)).collect()),
        Reply::Integer(first),
        Reply::Integer(last),
        Reply::Integer(step),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
    ])
}

/// One `COMMAND DOCS` entry. redis-cli asserts on the types here: strings are bulk
/// strings, argument flags simple strings, and every argument has a name and a type.
fn docs(spec: &'static Spec) -> (Reply, Reply) {
    let arguments = spec
        .args
        .iter()
        .map(|a| {
            let mut fields = vec![
                (Reply::bulk("name"), Reply::bulk(a.name)),
                (Reply::bulk("type"), Reply::bulk(a.kind)),
            ];
            if a.kind == "pure-token" {
                fields.push((Reply::bulk("token"), Reply::bulk(a.name)));
            }
            let flags: Vec<Reply> = [(a.optional, "optional"), (a.multiple, "multiple")]
                .into_iter()
                .filter(|(on, _)| *on)
                .map(|(_, f)| Reply::simple(f))
                .collect();
            if !flags.is_empty() {
                fields.push((Reply::bulk("flags"), Reply::Array(flags)));
            }
            Reply::Map(fields)
        })
        .collect();
    let doc = Reply::Map(vec![
        (Reply::bulk("summary"), Reply::bulk(spec.summary)),
        (Reply::bulk("since"), Reply::bulk("chorus 0.1.0")),
        (Reply::bulk("group"), Reply::bulk(spec.group)),
        (Reply::bulk("arguments"), Reply::Array(arguments)),
    ]);
    (Reply::bulk(spec.name), doc)
}

/// `INFO [section...]`: `key:value` lines under `# Section` headers, as Redis prints them.
fn info<S: Storage, P: Peers>(front: &Front<S, P>, sections: &[Bytes]) -> String {
    let wanted = |name: &str| {
        sections.is_empty()
            || sections.iter().any(|s| {
                s.eq_ignore_ascii_case(name.as_bytes())
                    || [&b"all"[..], b"default", b"everything"]
                        .iter()
                        .any(|all| s.eq_ignore_ascii_case(all))
            })
    };
    let mut out = String::new();
    for (name, lines) in info_sections(front, &wanted) {
        let title = format!("{}{}", name[..1].to_ascii_uppercase(), &name[1..]);
        out.push_str(&format!("# {title}\r\n"));
        for (key, value) in lines {
            out.push_str(&format!("{key}:{value}\r\n"));
        }
        out.push_str("\r\n");
    }
    out
}

type Lines = Vec<(&'static str, String)>;
type Section = (&'static str, Lines);

/// The sections `wanted` asks for, each computed only then (the keyspace reads storage).
fn info_sections<S: Storage, P: Peers>(
    front: &Front<S, P>,
    wanted: &dyn Fn(&str) -> bool,
) -> Vec<Section> {
    let count = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed).to_string();
    let (stats, metrics) = (&front.stats, &front.metrics);
    let builders: [(&'static str, &dyn Fn() -> Lines); 5] = [
        ("server", &|| {
            vec![
                ("redis_version", super::commands::REDIS_VERSION.to_string()),
                ("chorus_version", env!("CARGO_PKG_VERSION").to_string()),
                ("redis_mode", "standalone".into()),
                ("chorus_node", front.config.node_name.clone()),
                ("process_id", std::process::id().to_string()),
                ("tcp_port", front.config.address.port().to_string()),
                ("uptime_in_seconds", front.uptime().as_secs().to_string()),
            ]
        }),
        ("clients", &|| {
            vec![
                ("connected_clients", count(&stats.connected)),
                ("maxclients", front.config.max_connections.to_string()),
            ]
        }),
        ("stats", &|| {
            vec![
                (
                    "total_connections_received",
                    count(&stats.connections_received),
                ),
                ("total_commands_processed", count(&stats.commands)),
                ("total_error_replies", count(&stats.errors)),
                ("rejected_connections", count(&stats.rejected)),
                (
                    "chorus_read_repairs",
                    metrics.read_repairs.get().to_string(),
                ),
                (
                    "chorus_hints_queued",
                    metrics.hints_queued.get().to_string(),
                ),
                (
                    "chorus_hints_delivered",
                    metrics.hints_delivered.get().to_string(),
                ),
                (
                    "chorus_aae_keys_repaired",
                    metrics.aae_keys_repaired.get().to_string(),
                ),
            ]
        }),
        ("cluster", &|| {
            let view = front.coordinator.view();
            vec![
                ("chorus_n", view.ring.n().to_string()),
                ("chorus_members", view.ring.members().len().to_string()),
                ("chorus_unreachable", view.unreachable.len().to_string()),
            ]
        }),
        ("keyspace", &|| {
            let storage = front.replica.storage();
            let keys: u64 = storage
                .partitions()
                .map(|ps| {
                    ps.into_iter()
                        .filter_map(|p| storage.key_count(p).ok())
                        .sum()
                })
                .unwrap_or(0);
            vec![("chorus_local_keys", keys.to_string())]
        }),
    ];
    builders
        .into_iter()
        .filter(|(name, _)| wanted(name))
        .map(|(name, build)| (name, build()))
        .collect()
}
