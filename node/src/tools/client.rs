//! The command-line client: `chorus put`, `get`, `delete`, `keys`, `status`, `ring
//! owners`, `leave` and `remove`, each one HTTP request (`keys --all`: one per page) to the node named by `--node` (or
//! `CHORUS_NODE`), rendered for a person (or raw JSON with `--json`).
//!
//! Exit codes: 0 on success, 1 when a key is not found or the node refused or could not
//! be reached, 2 for bad usage (a malformed URL, an empty key). This module only
//! translates; every rule about quorums and causality lives in the node.

use std::io::{IsTerminal, Read, Write};
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use serde_json::Value;

use crate::cli::{
    AdminArgs, BucketCommand, CliError, CliResult, ClientArgs, Command, DeleteArgs, GetArgs,
    KeysArgs, PutArgs, RemoveArgs, RingCommand,
};
use chorus_api::client::{self as http_client, BaseUrl, HttpClient, HttpError, Response};

/// Generous, because `leave` and quorum calls to a struggling cluster may take a while;
/// the node's own `timeout` answers a slow quorum with a 503 well before this.
const CLI_TIMEOUT: Duration = Duration::from_secs(30);
use chorus_api::placement::RingBody;
use chorus_api::status::RebuildStatus;
use chorus_api::{
    KeyPageBody, ListedKey, PropsAnswer, StatusBody, CONTEXT_HEADER, EXPIRES_AT_HEADER, TTL_HEADER,
};
use chorus_core::object::MAX_TTL;

pub fn run(command: Command) -> CliResult {
    // Read a `-` value before any network work: a client that dies on a bad URL should
    // not first wait for stdin.
    let stdin_value = match &command {
        Command::Put(PutArgs { value, .. }) if value == "-" => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| CliError::failed(format!("cannot read the value from stdin: {e}")))?;
            Some(buf)
        }
        _ => None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async move {
        match command {
            Command::Put(args) => put(args, stdin_value).await,
            Command::Get(args) => get(args).await,
            Command::Delete(args) => delete(args).await,
            Command::Keys(args) => keys(args).await,
            Command::Status(args) => status(args).await,
            Command::Ring(RingCommand::Owners {
                bucket,
                key,
                client,
            }) => ring_owners(&bucket, &key, client).await,
            Command::Bucket(BucketCommand::Props {
                bucket,
                set,
                client,
            }) => bucket_props(&bucket, &set, client).await,
            Command::Leave(args) => admin(args, "/admin/leave".into()).await,
            Command::Remove(RemoveArgs {
                name,
                data_lost,
                admin: args,
            }) => {
                let query = if data_lost { "?data_lost=true" } else { "" };
                admin(
                    args,
                    format!(
                        "/admin/remove/{}{query}",
                        http_client::encode_segment(&name)
                    ),
                )
                .await
            }
            other => Err(CliError::usage(format!(
                "{other:?} is not a client command"
            ))),
        }
    })
}

fn connect(args: &ClientArgs) -> Result<HttpClient, CliError> {
    let base = BaseUrl::parse(&args.node).map_err(CliError::usage)?;
    Ok(HttpClient::new(base).with_timeout(CLI_TIMEOUT))
}

fn request_failed(e: HttpError) -> CliError {
    match e {
        HttpError::Request(_) => CliError::usage(e.to_string()),
        other => CliError::failed(other.to_string()),
    }
}

/// The node's answer was an error: its sentence, exit 1.
fn refused(response: &Response) -> CliError {
    CliError::failed(response.error_message())
}

fn check_names(bucket: &str, key: &str) -> CliResult {
    if bucket.is_empty() {
        return Err(CliError::usage("the bucket is empty"));
    }
    if key.is_empty() {
        return Err(CliError::usage("the key is empty"));
    }
    Ok(())
}

fn print_context(response: &Response) {
    if let Some(context) = response.header(CONTEXT_HEADER) {
        eprintln!("context: {context}");
    }
}

async fn put(args: PutArgs, stdin_value: Option<Vec<u8>>) -> CliResult {
    check_names(&args.bucket, &args.key)?;
    let mut client = connect(&args.client)?;
    let value = stdin_value.unwrap_or_else(|| args.value.clone().into_bytes());
    let path = http_client::with_query(
        http_client::kv_path(&args.bucket, &args.key),
        &[
            ("w", args.w.as_deref()),
            ("pw", args.pw.as_deref()),
            ("r", args.r.as_deref()),
        ],
    );
    let mut headers = Vec::new();
    if let Some(context) = &args.context {
        headers.push((CONTEXT_HEADER, context.as_str()));
    }
    if args.if_absent {
        headers.push(("if-none-match", "*"));
    }
    if let Some(context) = &args.if_match {
        headers.push(("if-match", context.as_str()));
    }
    if let Some(content_type) = &args.content_type {
        headers.push(("content-type", content_type.as_str()));
    }
    if let Some(ttl) = &args.ttl {
        chorus_api::parse_ttl(ttl, MAX_TTL).map_err(CliError::usage)?;
        headers.push((TTL_HEADER, ttl.as_str()));
    }
    let response = client
        .request(Method::PUT, &path, &headers, Bytes::from(value))
        .await
        .map_err(request_failed)?;
    if !is_success(response.status) {
        if response.status == 412 {
            print_context(&response);
        }
        return Err(refused(&response));
    }
    print_context(&response);
    Ok(())
}

/// Shows a bucket's properties; with `--set`, reads them, applies each `key=value` and
/// writes the result (a PUT replaces the whole set, so the read keeps the others).
async fn bucket_props(bucket: &str, set: &[String], args: ClientArgs) -> CliResult {
    if bucket.is_empty() {
        return Err(CliError::usage("the bucket is empty"));
    }
    let mut client = connect(&args)?;
    let path = format!("/buckets/{}/props", http_client::encode_segment(bucket));
    let response = client
        .request(Method::GET, &path, &[], Bytes::new())
        .await
        .map_err(request_failed)?;
    if response.status != 200 || set.is_empty() {
        return match response.status {
            200 => print_json_body(&response),
            _ => Err(refused(&response)),
        };
    }
    let mut props = serde_json::from_slice::<PropsAnswer>(&response.body)
        .map_err(|e| CliError::failed(format!("not a chorus properties answer: {e}")))?
        .props;
    for assignment in set {
        let (key, value) = assignment
            .split_once('=')
            .ok_or_else(|| CliError::usage(format!("--set {assignment}: expected key=value")))?;
        let changed = match (key, value) {
            (_, "") => props.set(key, None),
            ("ttl", v) => ttl_seconds(v).map(|ttl| props.ttl = ttl),
            (_, v) => props.set(key, Some(v)),
        };
        changed.map_err(|e| CliError::usage(format!("--set {assignment}: {e}")))?;
    }
    let body = serde_json::to_vec(&props).expect("properties serialize");
    let response = client
        .request(Method::PUT, &path, &[], Bytes::from(body))
        .await
        .map_err(request_failed)?;
    match response.status {
        200 => print_json_body(&response),
        _ => Err(refused(&response)),
    }
}

/// A bucket's default TTL as the properties hold it: whole seconds (`none`: no default).
fn ttl_seconds(text: &str) -> Result<Option<u64>, String> {
    match chorus_api::parse_ttl(text, MAX_TTL)? {
        None => Ok(None),
        Some(ttl) if ttl.subsec_millis() == 0 => Ok(Some(ttl.as_secs())),
        Some(_) => Err("a bucket's ttl is whole seconds".into()),
    }
}

/// Prints a bucket's keys one per line (a key that is not UTF-8 as `base64:...`), then
/// on stderr the next page's cursor, and a warning naming uncovered partitions (exit 1).
async fn keys(args: KeysArgs) -> CliResult {
    if args.bucket.is_empty() {
        return Err(CliError::usage("the bucket is empty"));
    }
    let mut client = connect(&args.client)?;
    let limit = args.limit.to_string();
    let mut after = args.after.clone();
    let mut uncovered = Vec::new();
    loop {
        let path = http_client::with_query(
            http_client::list_path(&args.bucket),
            &[
                ("keys", Some("true")),
                ("limit", Some(&limit)),
                ("after", after.as_deref()),
            ],
        );
        let response = client
            .request(Method::GET, &path, &[], Bytes::new())
            .await
            .map_err(request_failed)?;
        if response.status != 200 {
            return Err(refused(&response));
        }
        let page: KeyPageBody = serde_json::from_slice(&response.body)
            .map_err(|e| CliError::failed(format!("not a listing page: {e}")))?;
        print_keys(&page, args.client.json)?;
        uncovered.extend(page.uncovered_partitions);
        after = page.next;
        if !args.all || after.is_none() {
            break;
        }
    }
    if let Some(next) = &after {
        eprintln!("next: {next}");
    }
    if uncovered.is_empty() {
        Ok(())
    } else {
        Err(CliError::failed(format!(
            "incomplete: no replica answered for partitions {uncovered:?}; their keys are missing"
        )))
    }
}

fn print_keys(page: &KeyPageBody, json: bool) -> CliResult {
    let mut out = String::new();
    for key in &page.keys {
        match (json, key) {
            (true, key) => out.push_str(&serde_json::to_string(key).unwrap_or_default()),
            (false, ListedKey::Text(text)) => out.push_str(text),
            (false, ListedKey::Binary { base64 }) => {
                out.push_str("base64:");
                out.push_str(base64);
            }
        }
        out.push('\n');
    }
    write_stdout(out.as_bytes(), false)
}

async fn get(args: GetArgs) -> CliResult {
    check_names(&args.bucket, &args.key)?;
    let mut client = connect(&args.client)?;
    let path = http_client::with_query(
        http_client::kv_path(&args.bucket, &args.key),
        &[("r", args.r.as_deref()), ("pr", args.pr.as_deref())],
    );
    let headers: &[(&str, &str)] = if args.client.json {
        &[("accept", "application/json")]
    } else {
        &[]
    };
    let response = client
        .request(Method::GET, &path, headers, Bytes::new())
        .await
        .map_err(request_failed)?;
    let not_found = || CliError::failed(format!("{}/{} not found", args.bucket, args.key));
    if args.client.json {
        return match response.status {
            200 | 300 => print_json_body(&response),
            404 => {
                // The body still carries the context (of a tombstone, say): print it, exit 1.
                if response.json().is_ok() {
                    print_json_body(&response)?;
                }
                Err(CliError {
                    code: 1,
                    message: String::new(),
                })
            }
            _ => Err(refused(&response)),
        };
    }
    match response.status {
        200 => {
            write_stdout(&response.body, true)?;
            print_context(&response);
            if let Some(at) = response.header(EXPIRES_AT_HEADER) {
                eprintln!("expires at: {at} (Unix ms)");
            }
            Ok(())
        }
        300 => {
            let siblings = parse_siblings(&response.json().map_err(CliError::failed)?)
                .map_err(CliError::failed)?;
            let count = siblings.len();
            let mut out = Vec::new();
            for (i, (value, content_type)) in siblings.into_iter().enumerate() {
                out.extend_from_slice(
                    format!("--- sibling {} of {count} ({content_type}) ---\n", i + 1).as_bytes(),
                );
                out.extend_from_slice(&value);
                if !value.ends_with(b"\n") {
                    out.push(b'\n');
                }
            }
            write_stdout(&out, false)?;
            eprintln!("{count} siblings from concurrent writes; a put with this context replaces them all");
            print_context(&response);
            Ok(())
        }
        404 => {
            print_context(&response);
            Err(not_found())
        }
        _ => Err(refused(&response)),
    }
}

/// The siblings of a `300` (or JSON) answer: decoded value and content type.
fn parse_siblings(json: &Value) -> Result<Vec<(Vec<u8>, String)>, String> {
    let body: chorus_api::SiblingsBody = serde_json::from_value(json.clone())
        .map_err(|e| format!("not a chorus read answer: {e}"))?;
    Ok(body
        .siblings
        .into_iter()
        .map(|s| {
            let content_type = s
                .content_type
                .unwrap_or_else(|| "application/octet-stream".into());
            (s.value, content_type)
        })
        .collect())
}

async fn delete(args: DeleteArgs) -> CliResult {
    check_names(&args.bucket, &args.key)?;
    let mut client = connect(&args.client)?;
    // Without `--context` the node reads the current context itself and deletes what that
    // read sees; `--context` deletes exactly the versions it names.
    let context = args.context;
    let path = http_client::with_query(
        http_client::kv_path(&args.bucket, &args.key),
        &[("w", args.w.as_deref())],
    );
    let headers: Vec<(&str, &str)> = context
        .iter()
        .map(|c| (CONTEXT_HEADER, c.as_str()))
        .collect();
    let response = client
        .request(Method::DELETE, &path, &headers, Bytes::new())
        .await
        .map_err(request_failed)?;
    if !is_success(response.status) {
        return Err(refused(&response));
    }
    print_context(&response);
    Ok(())
}

async fn status(args: ClientArgs) -> CliResult {
    let mut client = connect(&args)?;
    let response = client.get("/status").await.map_err(request_failed)?;
    if !is_success(response.status) {
        return Err(refused(&response));
    }
    if args.json {
        return print_json_body(&response);
    }
    let status = StatusBody::parse(&response.body).map_err(CliError::failed)?;
    let table = render_status(&status);
    write_stdout(table.as_bytes(), false)
}

async fn ring_owners(bucket: &str, key: &str, args: ClientArgs) -> CliResult {
    check_names(bucket, key)?;
    let mut client = connect(&args)?;
    let response = client
        .get(&http_client::ring_path(bucket, key))
        .await
        .map_err(request_failed)?;
    if !is_success(response.status) {
        return Err(refused(&response));
    }
    if args.json {
        return print_json_body(&response);
    }
    let ring: RingBody = serde_json::from_slice(&response.body)
        .map_err(|e| CliError::failed(format!("not a chorus /ring answer: {e}")))?;
    let table = render_owners(&ring);
    write_stdout(table.as_bytes(), false)
}

/// `leave` and `remove`: a POST with the admin token, whose answer is `{"message": ...}`.
async fn admin(admin: AdminArgs, path: String) -> CliResult {
    let token = match &admin.certs {
        Some(dir) => crate::server::certs::load_admin_token(dir)
            .map_err(CliError::usage)?
            .ok_or_else(|| {
                CliError::usage(format!(
                    "{} has no {}: make a new credential with `chorus certs init --force`",
                    dir.display(),
                    crate::server::certs::ADMIN_TOKEN
                ))
            })
            .map(Some)?,
        None => None,
    };
    let authorization = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = authorization
        .as_deref()
        .map(|a| ("authorization", a))
        .into_iter()
        .collect();
    let args = admin.client;
    let mut client = connect(&args)?;
    let response = client
        .request(Method::POST, &path, &headers, Bytes::new())
        .await
        .map_err(request_failed)?;
    if !is_success(response.status) {
        return Err(refused(&response));
    }
    if args.json {
        return print_json_body(&response);
    }
    let message = response
        .json()
        .ok()
        .and_then(|j| j.get("message").and_then(Value::as_str).map(str::to_string));
    println!(
        "{}",
        message.unwrap_or_else(|| format!("done (HTTP {})", response.status))
    );
    Ok(())
}

fn is_success(status: u16) -> bool {
    (200..300).contains(&status)
}

/// JSON is text: always newline-terminated, for the shell and for `jq`.
fn print_json_body(response: &Response) -> CliResult {
    let mut body = response.body.to_vec();
    if !body.ends_with(b"\n") {
        body.push(b'\n');
    }
    write_stdout(&body, false)
}

/// Writes bytes as they are. `newline_on_terminal` adds a final newline only for a person
/// at a terminal, so `chorus get b k > file` stores the exact value.
fn write_stdout(bytes: &[u8], newline_on_terminal: bool) -> CliResult {
    let mut stdout = std::io::stdout().lock();
    let result = stdout.write_all(bytes).and_then(|_| {
        if newline_on_terminal && stdout.is_terminal() && !bytes.ends_with(b"\n") {
            stdout.write_all(b"\n")?;
        }
        stdout.flush()
    });
    match result {
        // `chorus get ... | head` closing the pipe early is not an error worth a message.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(CliError::failed(format!("cannot write to stdout: {e}"))),
        Ok(()) => Ok(()),
    }
}

/// The `chorus status` table, like `nodetool status`: one row per member, this node marked.
pub(crate) fn render_status(status: &StatusBody) -> String {
    let mut out = format!("node {}", status.node);
    if let (Some(n), Some(ring_size)) = (status.n, status.ring_size) {
        out.push_str(&format!(", n={n}, {ring_size} partitions"));
    }
    out.push_str(&format!(", {} members\n", status.members.len()));
    let mut rows: Vec<Vec<String>> = status
        .members
        .iter()
        .map(|m| {
            let is_self = m.is_self || m.name == status.node;
            vec![
                if is_self {
                    format!("{}*", m.name)
                } else {
                    m.name.clone()
                },
                m.address.clone(),
                m.state.clone(),
                format_phi(m.phi),
                m.generation.to_string(),
                m.heartbeat_age_ms.map_or("-".into(), format_age),
                format!("{:.1}%", m.ring_share * 100.0),
            ]
        })
        .collect();
    rows.sort();
    out.push_str(&render_table(
        &[
            "NAME",
            "ADDRESS",
            "STATE",
            "PHI",
            "GENERATION",
            "HEARTBEAT AGE",
            "RING SHARE",
        ],
        &rows,
        3,
    ));
    out.push_str("* = the node that answered\n");
    out.push_str(&render_rebuild(&status.rebuild));
    out
}

/// The answering node's partition streams (`/status` `rebuild`), when it has pulled or
/// queued any: totals, the estimate, and a row per partition being streamed.
fn render_rebuild(rebuild: &RebuildStatus) -> String {
    let (pending, keys) = (rebuild.partitions_pending, rebuild.keys_done);
    if pending == 0 && keys == 0 {
        return String::new();
    }
    let mb = rebuild.bytes_done as f64 / 1e6;
    if pending == 0 {
        return format!("rebuild: done, {keys} keys ({mb:.1} MB) pulled\n");
    }
    let eta = rebuild.eta_s.map_or("time left unknown".into(), |s| {
        format!("about {s:.0} s left")
    });
    let mut out =
        format!("rebuild: {pending} partitions pending, {keys} keys ({mb:.1} MB) pulled, {eta}\n");
    let rows: Vec<Vec<String>> = rebuild
        .partitions
        .iter()
        .filter(|p| p.streaming)
        .map(|p| {
            vec![
                p.partition.to_string(),
                p.peer.clone().unwrap_or_else(|| "-".into()),
                p.keys_done.to_string(),
                p.keys_total.to_string(),
                p.bytes_done.to_string(),
            ]
        })
        .collect();
    if !rows.is_empty() {
        let header = ["PARTITION", "FROM", "KEYS DONE", "KEYS THERE", "BYTES DONE"];
        out.push_str(&render_table(&header, &rows, 2));
    }
    out
}

fn format_phi(phi: f64) -> String {
    // The node reports an infinite phi as f64::MAX (JSON has no infinity).
    if phi >= 1e300 {
        "inf".into()
    } else {
        format!("{phi:.1}")
    }
}

fn format_age(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}

/// The `chorus ring owners` table: the preference list in order, primaries first.
pub(crate) fn render_owners(ring: &RingBody) -> String {
    let mut out = format!("partition {}\n", ring.partition);
    let rows: Vec<Vec<String>> = ring
        .preference_list
        .iter()
        .enumerate()
        .map(|(i, owner)| {
            let mut role = if owner.primary { "primary" } else { "fallback" }.to_string();
            if !owner.reachable {
                role.push_str(" (unreachable)");
            }
            vec![
                (i + 1).to_string(),
                owner.name.clone(),
                owner.address.clone(),
                role,
            ]
        })
        .collect();
    out.push_str(&render_table(
        &["#", "NAME", "ADDRESS", "ROLE"],
        &rows,
        usize::MAX,
    ));
    out
}

/// A plain-text table: columns padded to their widest cell, two spaces apart; columns
/// from `right_from` on are right-aligned (numbers).
pub(crate) fn render_table(headers: &[&str], rows: &[Vec<String>], right_from: usize) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = " ".repeat(width - cell.chars().count());
            if i >= right_from {
                line.push_str(&pad);
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&pad);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_table_renders_every_member() {
        let status = json!({
            "node": "n1", "n": 3, "ring_size": 64,
            "members": [
                {"name": "n2", "address": "127.0.0.1:7002", "state": "suspect", "phi": 9.25, "generation": 1714000000002u64,
                 "heartbeat_age_ms": 4200, "ring_share": 0.328125, "is_self": false},
                {"name": "n1", "address": "127.0.0.1:7001", "state": "alive", "phi": 0.0, "generation": 3,
                 "heartbeat_age_ms": null, "ring_share": 0.34375, "is_self": true},
                {"name": "n3", "address": "127.0.0.1:7003", "state": "down", "phi": f64::MAX, "generation": 7,
                 "heartbeat_age_ms": 312, "ring_share": 0.328125}
            ]
        });
        let table = render_status(&serde_json::from_value(status).unwrap());
        let expected = "\
node n1, n=3, 64 partitions, 3 members
NAME  ADDRESS         STATE    PHI     GENERATION  HEARTBEAT AGE  RING SHARE
n1*   127.0.0.1:7001  alive    0.0              3              -       34.4%
n2    127.0.0.1:7002  suspect  9.2  1714000000002           4.2s       32.8%
n3    127.0.0.1:7003  down     inf              7          312ms       32.8%
* = the node that answered
";
        assert_eq!(table, expected);
    }

    #[test]
    fn status_shows_the_rebuild_under_way_and_when_done() {
        let mut status = json!({"node": "n3", "members": [], "rebuild": {
        "partitions_pending": 3, "keys_done": 1200, "bytes_done": 2_500_000, "eta_s": 4.2,
        "partitions": [
            {"partition": 7, "streaming": true, "peer": "n1", "keys_done": 100, "keys_total": 312, "bytes_done": 20000},
            {"partition": 9, "streaming": false, "peer": null, "keys_done": 0, "keys_total": 0, "bytes_done": 0}
        ]}});
        let parse = |v: &Value| serde_json::from_value::<StatusBody>(v.clone()).unwrap();
        let text = render_status(&parse(&status));
        assert!(
            text.contains(
                "rebuild: 3 partitions pending, 1200 keys (2.5 MB) pulled, about 4 s left"
            ),
            "{text}"
        );
        assert!(
            text.ends_with(
                "PARTITION  FROM  KEYS DONE  KEYS THERE  BYTES DONE\n7          n1          100         312       20000\n"
            ),
            "{text}"
        );
        assert!(!text.contains("\n9 "), "{text}");
        status["rebuild"] = json!({"partitions_pending": 0, "keys_done": 1200, "bytes_done": 2_500_000, "partitions": []});
        assert!(
            render_status(&parse(&status)).ends_with("rebuild: done, 1200 keys (2.5 MB) pulled\n")
        );
    }

    #[test]
    fn status_without_members_is_an_error() {
        assert!(StatusBody::parse(br#"{"node": "n1"}"#)
            .unwrap_err()
            .contains("members"));
    }

    #[test]
    fn owners_table_marks_primaries() {
        let ring = json!({"partition": 17, "preference_list": [
            {"name": "n2", "address": "127.0.0.1:7002", "primary": true},
            {"name": "n3", "address": "127.0.0.1:7003", "primary": true, "reachable": false},
            {"name": "n1", "address": "127.0.0.1:7001", "primary": false}
        ]});
        let expected = "\
partition 17
#  NAME  ADDRESS         ROLE
1  n2    127.0.0.1:7002  primary
2  n3    127.0.0.1:7003  primary (unreachable)
3  n1    127.0.0.1:7001  fallback
";
        assert_eq!(
            render_owners(&serde_json::from_value(ring).unwrap()),
            expected
        );
    }

    #[test]
    fn siblings_decode_from_base64() {
        let body = json!({"context": "x", "siblings": [
            {"value": "aGVsbG8=", "content_type": "text/plain"},
            {"value": ""}
        ]});
        let siblings = parse_siblings(&body).unwrap();
        assert_eq!(
            siblings,
            vec![
                (b"hello".to_vec(), "text/plain".into()),
                (vec![], "application/octet-stream".into())
            ]
        );
        assert!(parse_siblings(&json!({"siblings": [{"value": "!!"}]}))
            .unwrap_err()
            .contains("base64"));
    }

    #[test]
    fn empty_names_are_usage_errors() {
        assert_eq!(check_names("", "k").unwrap_err().code, 2);
        assert_eq!(check_names("b", "").unwrap_err().code, 2);
        assert!(check_names("b", "k").is_ok());
    }
}
