//! The Redis-protocol front on real `chorus` processes, driven by tools we did not write:
//! `redis-cli` and a `redis-py` script against a 3-node cluster (each skipped with a
//! message when absent; `.ci/run` installs them), values crossing between RESP and HTTP,
//! siblings and the context commands, a bad-frame fuzz (truncated frames, huge and
//! negative lengths, a 1 MiB inline command, 100k pipelined commands) that must leave every
//! node serving and write nothing, and bucket properties applied to RESP commands.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chorus_tests::api;
use chorus_tests::cluster::{args, wait_for, ClusterOptions, TestCluster, CLUSTER_DEADLINE};

fn resp_cluster() -> TestCluster {
    TestCluster::start_converged(ClusterOptions {
        nodes: 3,
        resp: true,
        // Anti-entropy stays out of the way: what is seen is what RESP and HTTP wrote.
        extra_args: args(&["--healing-interval-ms", "600000"]),
        ..Default::default()
    })
}

fn resp_addr(cluster: &TestCluster, i: usize) -> SocketAddr {
    cluster.nodes[i].resp.expect("started with --resp")
}

fn have(program: &str, check: &[&str]) -> bool {
    Command::new(program)
        .args(check)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `redis-cli -p PORT args...`: its output without the trailing newline.
fn redis_cli(addr: SocketAddr, cli_args: &[&str]) -> String {
    redis_cli_input(addr, cli_args, "")
}

/// `redis-cli` reading commands from stdin: one connection for all of them.
fn redis_cli_input(addr: SocketAddr, cli_args: &[&str], input: &str) -> String {
    let mut child = Command::new("redis-cli")
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(cli_args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run redis-cli");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write to redis-cli");
    let out = child.wait_with_output().expect("redis-cli output");
    let text = String::from_utf8_lossy(&out.stdout).trim_end().to_string();
    println!("redis-cli {cli_args:?} {input:?} -> {text:?}");
    text
}

#[test]
fn redis_cli_and_redis_py_drive_every_node_and_see_what_http_sees() {
    if !have("redis-cli", &["--version"]) {
        println!(
            "SKIPPED: redis-cli is not installed (apt-get install redis-tools; .ci/run does it)"
        );
        return;
    }
    let cluster = resp_cluster();
    let (n1, n2, n3) = (
        resp_addr(&cluster, 0),
        resp_addr(&cluster, 1),
        resp_addr(&cluster, 2),
    );

    // Every node answers; reads see writes made through the others (R + W > N).
    assert_eq!(redis_cli(n1, &["PING"]), "PONG");
    assert_eq!(redis_cli(n1, &["SET", "a", "1"]), "OK");
    assert_eq!(redis_cli(n2, &["GET", "a"]), "1");
    assert_eq!(redis_cli(n3, &["MSET", "x", "10", "y", "20"]), "OK");
    assert_eq!(redis_cli(n1, &["MGET", "x", "y", "nothing"]), "10\n20");
    assert_eq!(redis_cli(n2, &["EXISTS", "a", "x", "nothing"]), "2");
    assert_eq!(redis_cli(n3, &["DEL", "a", "nothing"]), "1");
    assert_eq!(redis_cli(n1, &["GET", "a"]), "");
    assert_eq!(redis_cli(n1, &["EXISTS", "a"]), "0");
    let unknown = redis_cli_input(n2, &[], "FLUSHALL\nPING\n");
    assert!(
        unknown.starts_with("ERR unknown command 'FLUSHALL'") && unknown.ends_with("PONG"),
        "{unknown}"
    );

    // RESP to HTTP and back: database 0 is the bucket db0.
    let r = api::get_kv(&cluster.url(1), "db0", "x", "").unwrap();
    assert_eq!((r.status, &r.body[..]), (200, &b"10"[..]));
    api::put_ok(&cluster.url(2), "db0", "from-http", b"hello", "", None);
    assert_eq!(redis_cli(n1, &["GET", "from-http"]), "hello");
    assert_eq!(
        redis_cli_input(n1, &[], "SELECT 7\nSET s in-db7\n"),
        "OK\nOK"
    );
    let r = api::get_kv(&cluster.url(0), "db7", "s", "").unwrap();
    assert_eq!((r.status, &r.body[..]), (200, &b"in-db7"[..]));

    siblings_and_context_commands(&cluster);
    redis_py(&cluster);
}

/// A plain SET and a blind CHORUS.SET of one key through one node: two siblings. GET
/// answers the greatest dot (both are n1's, the second has the higher counter), CHORUS.GET
/// shows both with the context, CHORUS.SET with it resolves them; HTTP agrees throughout.
fn siblings_and_context_commands(cluster: &TestCluster) {
    let n1 = resp_addr(cluster, 0);
    assert_eq!(redis_cli(n1, &["SET", "cart", "apples"]), "OK");
    assert_eq!(redis_cli(n1, &["SET", "cart", "pears"]), "OK");
    assert_eq!(
        api::get_json(&cluster.url(1), "db0", "cart", "r=all")
            .unwrap()
            .2,
        vec![b"pears".to_vec()],
        "successive SETs through one node replace each other"
    );
    assert_eq!(redis_cli(n1, &["CHORUS.SET", "cart", "plums", ""]), "OK");
    let (status, _, values) = api::get_json(&cluster.url(2), "db0", "cart", "r=all").unwrap();
    assert_eq!(
        (status, values),
        (300, vec![b"pears".to_vec(), b"plums".to_vec()])
    );
    for i in 0..3 {
        let answer = redis_cli_input(
            resp_addr(cluster, i),
            &[],
            "CHORUS.CONSISTENCY r=all\nGET cart\n",
        );
        assert_eq!(
            answer,
            "OK\nplums",
            "GET through n{} picks the greatest dot",
            i + 1
        );
    }
    let read = redis_cli(resp_addr(cluster, 1), &["CHORUS.GET", "cart"]);
    let lines: Vec<&str> = read.lines().collect();
    assert_eq!(lines.len(), 3, "context and two values: {read}");
    let mut values = lines[1..].to_vec();
    values.sort();
    assert_eq!(values, ["pears", "plums"]);
    assert_eq!(
        redis_cli(
            resp_addr(cluster, 2),
            &["CHORUS.SET", "cart", "fruit salad", lines[0]]
        ),
        "OK"
    );
    let (status, _, values) = api::get_json(&cluster.url(0), "db0", "cart", "r=all").unwrap();
    assert_eq!((status, values), (200, vec![b"fruit salad".to_vec()]));
    let refused = redis_cli(n1, &["CHORUS.SET", "cart", "x", "garbage!"]);
    assert!(refused.starts_with("ERR invalid context"), "{refused}");
}

const REDIS_PY_SCRIPT: &str = r#"
import sys, redis
ports = [int(p) for p in sys.argv[1:]]
a, b, c = [redis.Redis(host="127.0.0.1", port=p) for p in ports]
resp2 = redis.Redis(host="127.0.0.1", port=ports[1], protocol=2)
assert a.ping()
assert a.set("py:k", "v1") is True
assert b.get("py:k") == b"v1"
assert a.set("py:k", "v2") is True
assert c.get("py:k") == b"v2"
assert resp2.get("py:k") == b"v2"
context, values = a.execute_command("CHORUS.GET", "py:k")
assert values == [b"v2"], values
assert a.mset({"py:m1": "1", "py:m2": "2"}) is True
assert b.mget("py:m1", "py:m2", "py:none") == [b"1", b"2", None]
assert c.exists("py:m1", "py:m2", "py:none") == 2
assert a.delete("py:m1", "py:none") == 1
assert b.get("py:m1") is None
assert c.getdel("py:m2") == b"2"
assert c.get("py:m2") is None
assert a.set("py:nx", "x", nx=True) is True
assert a.set("py:nx", "y", nx=True) is None
assert a.set("py:nx", "z", xx=True, get=True) == b"x"
p = a.pipeline(transaction=False)
for i in range(200):
    p.set(f"py:p{i}", i)
for i in range(200):
    p.get(f"py:p{i}")
res = p.execute()
assert res[:200] == [True] * 200 and res[200:] == [str(i).encode() for i in range(200)], res
try:
    a.execute_command("NO.SUCH.COMMAND")
    raise SystemExit("an unknown command was accepted")
except redis.ResponseError as e:
    assert "unknown command" in str(e), e
assert a.ping()
assert "redis_version" in b.info()
assert a.client_setname("py") and a.client_getname() in ("py", b"py")
print("redis-py ok")
"#;

fn redis_py(cluster: &TestCluster) {
    if !have("python3", &["-c", "import redis"]) {
        println!("SKIPPED: the redis-py part needs python3 with redis (pip install redis; .ci/run does it)");
        return;
    }
    let script = cluster.dir.path().join("redis_py_check.py");
    std::fs::write(&script, REDIS_PY_SCRIPT).unwrap();
    let out = Command::new("python3")
        .arg(&script)
        .args((0..3).map(|i| resp_addr(cluster, i).port().to_string()))
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("redis-py ok"),
        "redis-py script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Its values are in chorus, readable over HTTP.
    let r = api::get_kv(&cluster.url(2), "db0", "py:p199", "").unwrap();
    assert_eq!((r.status, &r.body[..]), (200, &b"199"[..]));
}

/// Sends `bytes`, closes the sending side, and returns everything the node answered until
/// it closed the connection (bounded by a read timeout).
fn exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let bytes = bytes.to_vec();
    // Written from another thread: a node that answers while we still write must not
    // find our receive buffer full.
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(&bytes);
        let _ = writer.shutdown(Shutdown::Write);
    });
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    sender.join().unwrap();
    answer
}

/// `chorus_local_keys` of every node (from INFO), the keys their replicas hold.
fn local_keys(cluster: &TestCluster) -> Vec<u64> {
    (0..3)
        .map(|i| {
            let answer = exchange(resp_addr(cluster, i), b"INFO keyspace\r\nQUIT\r\n");
            let text = String::from_utf8_lossy(&answer);
            text.lines()
                .find_map(|l| l.strip_prefix("chorus_local_keys:"))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or_else(|| panic!("no chorus_local_keys in {text}"))
        })
        .collect()
}

#[test]
fn bad_frames_leave_every_node_serving_and_write_nothing() {
    let cluster = resp_cluster();
    let n1 = resp_addr(&cluster, 0);
    assert_eq!(exchange(n1, b"SET before fuzz\r\n"), b"+OK\r\n");
    // Acknowledged at w=2: the third copy may still be on its way, and would count.
    wait_for(
        "every node to hold the first key",
        CLUSTER_DEADLINE,
        || match (0..3)
            .find(|&i| !matches!(api::local(&cluster.url(i), "db0", "before"), Ok(Some(_))))
        {
            Some(i) => Err(format!("n{} does not hold it yet", i + 1)),
            None => Ok(()),
        },
    );
    let before = local_keys(&cluster);
    let mega_inline = [
        b"SET fuzz-inline ".as_slice(),
        &vec![b'x'; 1024 * 1024],
        b"\r\n",
    ]
    .concat();
    let cases: [(&str, Vec<u8>, &[u8]); 8] = [
        (
            "truncated bulk",
            b"*3\r\n$3\r\nSET\r\n$6\r\nfuzz-t\r\n$5\r\nval".to_vec(),
            b"",
        ),
        ("truncated header", b"*3\r\n$3\r\nSET\r\n$6".to_vec(), b""),
        (
            "huge bulk length",
            b"*3\r\n$3\r\nSET\r\n$6\r\nfuzz-h\r\n$99999999999\r\n".to_vec(),
            b"-ERR Protocol error: bulk length 99999999999",
        ),
        (
            "huge argument count",
            b"*99999999999\r\n$3\r\nSET\r\n".to_vec(),
            b"-ERR Protocol error: 99999999999 arguments",
        ),
        (
            "negative bulk length",
            b"*3\r\n$3\r\nSET\r\n$6\r\nfuzz-n\r\n$-5\r\nvalue\r\n".to_vec(),
            b"-ERR Protocol error: invalid bulk length",
        ),
        (
            "negative argument count",
            b"*-3\r\n$3\r\nSET\r\n".to_vec(),
            b"-ERR Protocol error: invalid multibulk length",
        ),
        (
            "1 MiB inline command",
            mega_inline,
            b"-ERR Protocol error: too big inline request",
        ),
        (
            "not a bulk string",
            b"*3\r\n$3\r\nSET\r\n:1\r\n:2\r\n".to_vec(),
            b"-ERR Protocol error: expected '$', got ':'",
        ),
    ];
    for (what, bytes, expected) in cases {
        let answer = exchange(n1, &bytes);
        assert!(
            answer.starts_with(expected),
            "{what}: answered {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(200)])
        );
        assert!(
            expected.is_empty() || crlf_count(&answer) == 1,
            "{what}: one error line, then close"
        );
    }
    pipelined_refusals_are_all_answered(n1);
    assert_eq!(
        local_keys(&cluster),
        before,
        "a refused or malformed command wrote"
    );
    for key in ["fuzz-t", "fuzz-h", "fuzz-n", "fuzz-inline", "fuzz-p1"] {
        for i in 0..3 {
            assert_eq!(
                api::local(&cluster.url(i), "db0", key).unwrap(),
                None,
                "{key} on n{}",
                i + 1
            );
        }
    }
    // Every node still serves, over RESP and HTTP.
    for i in 0..3 {
        assert_eq!(
            exchange(resp_addr(&cluster, i), b"GET before\r\nQUIT\r\n"),
            b"$4\r\nfuzz\r\n+OK\r\n"
        );
        cluster.nodes[i].wait_healthy();
    }
}

fn crlf_count(bytes: &[u8]) -> usize {
    bytes.windows(2).filter(|w| w == b"\r\n").count()
}

/// 100,000 pipelined commands that must each be answered and must not write: reads of
/// absent keys, refused SETs (a zero TTL, wrong arity), unknown commands and PINGs.
/// Every answer is one line, so the answers can be counted and checked in order.
fn pipelined_refusals_are_all_answered(addr: SocketAddr) {
    const COUNT: usize = 100_000;
    // Every command names its own key, so they run concurrently in waves.
    let commands = |i: usize| -> (Vec<u8>, &'static str) {
        let key = format!("fuzz-p{i}");
        match i % 5 {
            0 => (
                format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len()).into_bytes(),
                "$-1",
            ),
            1 => (
                format!("SET {key} v EX 0\r\n").into_bytes(),
                "-ERR invalid expire time in 'set' command",
            ),
            2 => (
                format!("SET {key}\r\n").into_bytes(),
                "-ERR wrong number of arguments for 'set' command",
            ),
            3 => (
                b"*1\r\n$7\r\nNOTACMD\r\n".to_vec(),
                "-ERR unknown command 'NOTACMD'",
            ),
            _ => (b"PING\r\n".to_vec(), "+PONG"),
        }
    };
    let bytes: Vec<u8> = (0..COUNT).flat_map(|i| commands(i).0).collect();
    let started = Instant::now();
    let answer = exchange(addr, &bytes);
    let lines: Vec<&[u8]> = answer
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(lines.len(), COUNT, "every pipelined command is answered");
    for (i, line) in lines.iter().enumerate() {
        let expected = commands(i).1;
        assert!(
            line.starts_with(expected.as_bytes()),
            "answer {i}: {:?}",
            String::from_utf8_lossy(line)
        );
    }
    println!(
        "FIGURE resp_pipelined_refusals count={COUNT} seconds={:.2}",
        started.elapsed().as_secs_f64()
    );
    wait_for(
        "the node to answer after the pipeline",
        CLUSTER_DEADLINE,
        || {
            let answer = exchange(addr, b"PING\r\n");
            (answer == b"+PONG\r\n")
                .then_some(())
                .ok_or_else(|| String::from_utf8_lossy(&answer).to_string())
        },
    );
}

/// The answers of `commands` (inline, one connection, `QUIT` added): one string per
/// answer, a bulk string as its data (`$-1` for nil), an array as `[a, b]`, anything else
/// as its line.
fn resp_answers(addr: SocketAddr, commands: &[&str]) -> Vec<String> {
    let input: String = commands.iter().map(|c| format!("{c}\r\n")).collect();
    let answer = exchange(addr, format!("{input}QUIT\r\n").as_bytes());
    let text = String::from_utf8_lossy(&answer).to_string();
    let mut lines = text.split("\r\n").filter(|l| !l.is_empty());
    let mut out = Vec::new();
    while let Some(reply) = next_reply(&mut lines) {
        out.push(reply);
    }
    println!("RESP {commands:?} -> {out:?}");
    assert_eq!(
        out.len(),
        commands.len() + 1,
        "an answer per command: {out:?}"
    );
    assert_eq!(out.pop().as_deref(), Some("+OK"), "QUIT answers +OK");
    out
}

fn next_reply<'a>(lines: &mut impl Iterator<Item = &'a str>) -> Option<String> {
    let line = lines.next()?;
    if let Some(len) = line.strip_prefix('$').filter(|len| *len != "-1") {
        return Some(
            lines
                .next()
                .unwrap_or_else(|| panic!("no data after ${len}"))
                .to_string(),
        );
    }
    match line.strip_prefix('*').and_then(|n| n.parse::<usize>().ok()) {
        Some(n) => {
            let items: Vec<String> = (0..n).filter_map(|_| next_reply(lines)).collect();
            Some(format!("[{}]", items.join(", ")))
        }
        None => Some(line.to_string()),
    }
}

/// A `TTL` answer (`:5`) as a number.
fn ttl_of(answer: &str) -> i64 {
    answer
        .strip_prefix(':')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a TTL answer: {answer}"))
}

/// Issue 24: a bucket's properties apply to RESP commands as they do to HTTP. Bucket db1
/// (`SELECT 1`) gets `{"ttl": 5, "w": 3}`, numbers as the README documents them: a `SET`
/// without a TTL of its own expires within 5 s on every node, one with `EX` keeps its own;
/// with n3 stopped, `SET`, `MSET` and `DEL` there need 3 replicas and fail, while the same
/// commands in db0 (no properties: w=quorum) and a connection's own `w` succeed. Bucket
/// db2 gets `{"r": "all"}`: its reads fail with n3 stopped.
#[test]
fn bucket_properties_apply_to_resp_commands_as_to_http() {
    let mut cluster = resp_cluster();
    let r = api::put_props(&cluster.url(0), "db1", r#"{"ttl": 5, "w": 3}"#).unwrap();
    assert_eq!(r.status, 200, "{}", r.error_message());
    let shown = api::props(&cluster.url(0), "db1").unwrap();
    assert_eq!(
        (shown.props.w.as_deref(), shown.props.ttl),
        (Some("3"), Some(5))
    );
    let r = api::put_props(&cluster.url(0), "db2", r#"{"r": "all"}"#).unwrap();
    assert_eq!(r.status, 200, "{}", r.error_message());
    every_node_applies_the_ttl(&cluster);
    let n1 = resp_addr(&cluster, 0);
    let a = resp_answers(
        n1,
        &[
            "SELECT 1",
            "SET t2 v EX 600",
            "TTL t2",
            "SELECT 0",
            "SET t3 v",
            "TTL t3",
        ],
    );
    assert_eq!(a[..2], ["+OK", "+OK"]);
    let own = ttl_of(&a[2]);
    assert!(own > 500, "SET's own EX wins over the bucket's ttl: {a:?}");
    assert_eq!(a[3..5], ["+OK", "+OK"]);
    assert_eq!(ttl_of(&a[5]), -1, "db0 has no ttl: {a:?}");
    writes_and_reads_take_the_buckets_quorums(&mut cluster);
}

/// Every node applies db1's ttl to a SET without one, once it has the change: n1, which
/// took it, at once (unless a reload it began before the change ends after it and puts the
/// older table back until the next), n2 and n3 when they reload (gossiped digests; seconds).
fn every_node_applies_the_ttl(cluster: &TestCluster) {
    for i in 0..3 {
        let addr = resp_addr(cluster, i);
        wait_for(
            &format!("n{} to apply db1's ttl", i + 1),
            CLUSTER_DEADLINE,
            || {
                let a = resp_answers(addr, &["SELECT 1", "SET probe v", "TTL probe"]);
                match ttl_of(&a[2]) {
                    1..=5 => Ok(()),
                    other => Err(format!("TTL {other}")),
                }
            },
        );
    }
}

/// w=3 from db1's properties: with n3 stopped, writes there fail; db0's w=quorum and a
/// connection's own w still write. r=all from db2's: its reads fail, db0's do not.
fn writes_and_reads_take_the_buckets_quorums(cluster: &mut TestCluster) {
    let n1 = resp_addr(cluster, 0);
    api::put_ok(&cluster.url(0), "db1", "keep", b"v", "ttl=600", None);
    cluster.nodes[2].stop();
    let at_w3 = ["SELECT 1", "SET w v", "MSET w1 v w2 v", "DEL keep"];
    wait_for("n1 to refuse db1's writes at w=3", CLUSTER_DEADLINE, || {
        let a = resp_answers(n1, &at_w3);
        match a[1..].iter().all(|a| a.starts_with("-QUORUM needed 3")) {
            true => Ok(()),
            false => Err(format!("{a:?}")),
        }
    });
    let a = resp_answers(
        n1,
        &[
            "SELECT 0",
            "SET w v",
            "MSET w1 v w2 v",
            "SELECT 1",
            "CHORUS.CONSISTENCY w=2",
            "SET w v",
        ],
    );
    assert_eq!(a, ["+OK", "+OK", "+OK", "+OK", "+OK", "+OK"]);
    wait_for("n1 to refuse db2's reads at r=3", CLUSTER_DEADLINE, || {
        let a = resp_answers(n1, &["SELECT 2", "GET x", "MGET x y"]);
        match a[1..].iter().all(|a| a.starts_with("-QUORUM needed 3")) {
            true => Ok(()),
            false => Err(format!("{a:?}")),
        }
    });
    assert_eq!(resp_answers(n1, &["GET t3"]), ["v"]);
}
