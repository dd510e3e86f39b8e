//! The RESP front over real TCP connections, in one process: fronts of one or two nodes
//! whose coordinators reach each other's in-memory replicas directly (a peer can be made
//! unreachable to mint concurrent writes).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use chorus_core::bucket_props::BucketProps;
use chorus_core::causality::ActorId;
use chorus_core::coordinator::Coordinator;
use chorus_core::metrics::Metrics;
use chorus_core::peers::PeerError;
use chorus_core::replica::{Replica, ReplicaConfig};
use chorus_core::rpc::{Request, Response};
use chorus_core::storage::MemoryStorage;
use chorus_core::view::ClusterView;

use super::*;

type TestReplica = Arc<Replica<MemoryStorage>>;

/// Peers that call the named replica in this process, unless its name is in `down`;
/// each call takes `delay`, and `calls` counts those in progress and their maximum.
struct LocalPeers {
    replicas: HashMap<String, TestReplica>,
    down: Arc<Mutex<HashSet<String>>>,
    delay: Duration,
    calls: Arc<Mutex<(usize, usize)>>,
}

impl Peers for LocalPeers {
    fn call(
        &self,
        to: &str,
        request: Request,
        _timeout: Duration,
    ) -> impl std::future::Future<Output = Result<Response, PeerError>> + Send {
        let down = self.down.lock().unwrap().contains(to);
        let replica = self.replicas.get(to).cloned();
        let to = to.to_string();
        let (delay, calls) = (self.delay, self.calls.clone());
        async move {
            {
                let mut c = calls.lock().unwrap();
                c.0 += 1;
                c.1 = c.1.max(c.0);
            }
            tokio::time::sleep(delay).await;
            calls.lock().unwrap().0 -= 1;
            match replica {
                Some(r) if !down => Ok(r.handle(request)),
                _ => Err(PeerError::not_sent(&to, "unreachable in this test")),
            }
        }
    }
}

struct Cluster {
    addresses: Vec<SocketAddr>,
    replicas: Vec<TestReplica>,
    down: Arc<Mutex<HashSet<String>>>,
    /// Peer calls in progress and their maximum (see `LocalPeers`).
    calls: Arc<Mutex<(usize, usize)>>,
    /// Each node's coordinator, as its front has it (bucket properties are set here).
    coordinators: Vec<Coordinator<MemoryStorage, LocalPeers>>,
}

fn config(
    name: &str,
    password: Option<&str>,
    max_connections: usize,
    quorum: usize,
) -> FrontConfig {
    FrontConfig {
        node_name: name.into(),
        address: "127.0.0.1:0".parse().unwrap(),
        password: password.map(|p| p.as_bytes().to_vec()),
        default_bucket: b"db0".to_vec(),
        r: quorum,
        w: quorum,
        max_value: 100,
        timeout: Duration::from_secs(5),
        max_connections,
        frame_timeout: FRAME_TEST_TIMEOUT,
        max_in_flight: MAX_IN_FLIGHT,
    }
}

/// `--resp-max-in-flight` in these tests.
const MAX_IN_FLIGHT: usize = 100;

/// The frame timeout in these tests (30 s in a node).
const FRAME_TEST_TIMEOUT: Duration = Duration::from_millis(300);

/// Nodes a, b, ... with N = their number, each serving RESP on a free port; quorums of 1.
async fn cluster(nodes: usize, password: Option<&str>, max_connections: usize) -> Cluster {
    slow_cluster(nodes, password, max_connections, Duration::ZERO).await
}

/// The in-memory replica of node `i`: at most 3 siblings.
fn replica(i: usize) -> TestReplica {
    let config = ReplicaConfig {
        actor: ActorId(i as u64 + 1),
        actor_seed: i as u64,
        ring_size: 64,
        max_siblings: 3,
        max_object_bytes: chorus_core::object::WRITE_MAX_OBJECT_BYTES,
        warn_siblings: 3,
        max_hints_per_owner: 100,
        clock: chorus_core::clock::SystemClock::shared(),
    };
    let metrics = Arc::new(Metrics::default());
    Arc::new(Replica::new(Arc::new(MemoryStorage::new()), config, metrics).unwrap())
}

/// As `cluster`, with every peer call taking `delay`.
async fn slow_cluster(
    nodes: usize,
    password: Option<&str>,
    max_connections: usize,
    delay: Duration,
) -> Cluster {
    let names: Vec<String> = (0..nodes)
        .map(|i| ((b'a' + i as u8) as char).to_string())
        .collect();
    let replicas: Vec<TestReplica> = (0..nodes).map(replica).collect();
    let down = Arc::new(Mutex::new(HashSet::new()));
    let calls = Arc::new(Mutex::new((0, 0)));
    let view = ClusterView {
        ring: Arc::new(
            chorus_ring::Ring::new(64, nodes, names.iter().map(String::as_str)).unwrap(),
        ),
        unreachable: Arc::new(HashSet::new()),
    };
    let mut addresses = Vec::new();
    let mut coordinators = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let peers = LocalPeers {
            replicas: names
                .iter()
                .cloned()
                .zip(replicas.iter().cloned())
                .collect(),
            down: down.clone(),
            delay,
            calls: calls.clone(),
        };
        let metrics = Arc::new(Metrics::default());
        let coordinator = Coordinator::new(
            name.clone(),
            replicas[i].clone(),
            Arc::new(peers),
            Arc::new(RwLock::new(view.clone())),
            metrics.clone(),
        );
        coordinators.push(coordinator.clone());
        let front = Front::new(
            coordinator,
            replicas[i].clone(),
            metrics,
            config(name, password, max_connections, 1),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        addresses.push(listener.local_addr().unwrap());
        tokio::spawn(accept_loop(listener, Arc::new(front), None));
    }
    Cluster {
        addresses,
        replicas,
        down,
        calls,
        coordinators,
    }
}

impl Cluster {
    fn holds(&self, node: usize, key: &[u8]) -> bool {
        self.replicas[node].get(b"db0", key).unwrap().is_some()
    }
}

/// Decodes one reply (RESP2 or RESP3) from the front of `buf`, None while incomplete.
fn decode(buf: &[u8]) -> Option<(Reply, usize)> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    let text = std::str::from_utf8(&buf[1..end]).unwrap();
    let next = end + 2;
    let items = |count: usize, mut at: usize| -> Option<(Vec<Reply>, usize)> {
        let mut out = Vec::new();
        for _ in 0..count {
            let (item, used) = decode(&buf[at..])?;
            out.push(item);
            at += used;
        }
        Some((out, at))
    };
    Some(match buf[0] {
        b'+' => (Reply::Simple(text.into()), next),
        b'-' => (Reply::Error(text.into()), next),
        b':' => (Reply::Integer(text.parse().unwrap()), next),
        b'_' => (Reply::Null, next),
        b'$' if text == "-1" => (Reply::Null, next),
        b'$' => {
            let len: usize = text.parse().unwrap();
            let data = buf.get(next..next + len)?;
            buf.get(next + len + 1)?;
            (Reply::bulk(data.to_vec()), next + len + 2)
        }
        b'*' => {
            let (list, at) = items(text.parse().unwrap(), next)?;
            (Reply::Array(list), at)
        }
        b'%' => {
            let (list, at) = items(2 * text.parse::<usize>().unwrap(), next)?;
            let pairs = list
                .chunks(2)
                .map(|p| (p[0].clone(), p[1].clone()))
                .collect();
            (Reply::Map(pairs), at)
        }
        other => panic!("unexpected reply type {}", other as char),
    })
}

struct Client {
    reader: tokio::net::tcp::OwnedReadHalf,
    /// Taken by a test that writes from another task.
    writer: Option<tokio::net::tcp::OwnedWriteHalf>,
    buf: BytesMut,
}

fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend(format!("${}\r\n", arg.len()).as_bytes());
        out.extend(*arg);
        out.extend(b"\r\n");
    }
    out
}

const DEADLINE: Duration = Duration::from_secs(20);

impl Client {
    async fn connect(address: SocketAddr) -> Client {
        let (reader, writer) = TcpStream::connect(address).await.unwrap().into_split();
        Client {
            reader,
            writer: Some(writer),
            buf: BytesMut::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.writer
            .as_mut()
            .expect("writer")
            .write_all(bytes)
            .await
            .unwrap();
    }

    /// Reads `count` replies; panics on EOF or after `DEADLINE`.
    async fn replies(&mut self, count: usize) -> Vec<Reply> {
        let mut out = Vec::new();
        while out.len() < count {
            if let Some((reply, used)) = decode(&self.buf) {
                let _ = self.buf.split_to(used);
                out.push(reply);
                continue;
            }
            let n = tokio::time::timeout(DEADLINE, self.reader.read_buf(&mut self.buf))
                .await
                .expect("reply in time")
                .unwrap();
            assert!(
                n > 0,
                "connection closed after {} of {count} replies: {out:?}",
                out.len()
            );
        }
        out
    }

    /// Sends the commands pipelined in one write and reads their replies.
    async fn call(&mut self, commands: &[&[&str]]) -> Vec<Reply> {
        let bytes: Vec<u8> = commands
            .iter()
            .flat_map(|c| command(&c.iter().map(|a| a.as_bytes()).collect::<Vec<_>>()))
            .collect();
        self.send(&bytes).await;
        self.replies(commands.len()).await
    }

    async fn one(&mut self, args: &[&str]) -> Reply {
        self.call(&[args]).await.remove(0)
    }

    /// True when the server closed the connection (after any replies still buffered).
    async fn closed(&mut self) -> bool {
        loop {
            match tokio::time::timeout(DEADLINE, self.reader.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }
}

fn bulk(s: &str) -> Reply {
    Reply::bulk(s.as_bytes().to_vec())
}

fn ok() -> Reply {
    Reply::ok()
}

fn error_starts(reply: &Reply, prefix: &str) -> bool {
    matches!(reply, Reply::Error(e) if e.starts_with(prefix))
}

/// CHORUS.GET's values.
fn siblings(reply: &Reply) -> Vec<Reply> {
    match reply {
        Reply::Array(parts) => match &parts[1] {
            Reply::Array(values) => values.clone(),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
}

fn context(reply: &Reply) -> String {
    match reply {
        Reply::Array(parts) => match &parts[0] {
            Reply::Bulk(b) => String::from_utf8(b.to_vec()).unwrap(),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn pipelined_commands_answer_in_order_and_sets_replace_each_other() {
    let c = cluster(1, None, 16).await;
    let mut client = Client::connect(c.addresses[0]).await;
    let replies = client
        .call(&[
            &["SET", "k", "1"],
            &["GET", "k"],
            &["SET", "k", "2"],
            &["GET", "k"],
            &["CHORUS.GET", "k"],
            &["DEL", "k", "k", "absent"],
            &["GET", "k"],
            &["PING"],
            &["ECHO", "hi"],
            &["CONFIG", "GET", "save"],
        ])
        .await;
    assert_eq!(&replies[..4], &[ok(), bulk("1"), ok(), bulk("2")]);
    // A second plain SET superseded the first: one sibling, not two.
    assert_eq!(siblings(&replies[4]), vec![bulk("2")]);
    assert_eq!(
        &replies[5..],
        &[
            Reply::Integer(1),
            Reply::Null,
            Reply::simple("PONG"),
            bulk("hi"),
            // What redis-benchmark asks first: no Redis configuration, no error.
            Reply::Array(Vec::new()),
        ]
    );
}

#[tokio::test]
async fn concurrent_sets_become_siblings_and_context_commands_resolve_them() {
    let c = cluster(2, None, 16).await;
    let mut a = Client::connect(c.addresses[0]).await;
    let mut b = Client::connect(c.addresses[1]).await;
    // Partitioned: each node mints its SETs without seeing the other's.
    c.down
        .lock()
        .unwrap()
        .extend(["a".to_string(), "b".to_string()]);
    assert_eq!(
        a.call(&[&["SET", "k", "from-a"], &["SET", "k", "from-a2"]])
            .await,
        vec![ok(), ok()]
    );
    assert_eq!(b.one(&["SET", "k", "from-b"]).await, ok());
    c.down.lock().unwrap().clear();
    assert_eq!(a.one(&["CHORUS.CONSISTENCY", "r=2"]).await, ok());
    let read = a.one(&["CHORUS.GET", "k"]).await;
    let mut values = siblings(&read);
    values.sort_by_key(|v| format!("{v:?}"));
    // a's second SET replaced its first; b's concurrent one is kept beside it.
    assert_eq!(values, vec![bulk("from-a2"), bulk("from-b")]);
    // A plain GET picks the greatest dot, counter first: a's second write has (a, 2),
    // b's has (b, 1).
    assert_eq!(a.one(&["GET", "k"]).await, bulk("from-a2"));
    assert_eq!(
        a.one(&["CHORUS.SET", "k", "merged", &context(&read)]).await,
        ok()
    );
    assert_eq!(
        siblings(&a.one(&["CHORUS.GET", "k"]).await),
        vec![bulk("merged")]
    );
    // A blind CHORUS.SET (empty context) is a sibling of what it did not see.
    assert_eq!(a.one(&["CHORUS.SET", "k", "blind", ""]).await, ok());
    assert_eq!(siblings(&a.one(&["CHORUS.GET", "k"]).await).len(), 2);
    let refused = a.one(&["CHORUS.SET", "k", "x", "not-a-context"]).await;
    assert!(error_starts(&refused, "ERR invalid context"), "{refused:?}");
}

#[tokio::test]
async fn the_sibling_bound_and_quorum_failures_have_redis_style_errors() {
    let c = cluster(2, None, 16).await;
    let mut a = Client::connect(c.addresses[0]).await;
    // max_siblings is 3 in these tests: the fourth blind write is refused.
    for _ in 0..3 {
        assert_eq!(a.one(&["CHORUS.SET", "k", "v", ""]).await, ok());
    }
    let refused = a.one(&["CHORUS.SET", "k", "v", ""]).await;
    assert!(error_starts(&refused, "TOOMANYSIBLINGS"), "{refused:?}");
    c.down.lock().unwrap().insert("b".into());
    assert_eq!(a.one(&["CHORUS.CONSISTENCY", "w=2"]).await, ok());
    let failed = a.one(&["SET", "other", "v"]).await;
    assert!(
        error_starts(&failed, "QUORUM needed 2 replied 1"),
        "{failed:?}"
    );
}

#[tokio::test]
async fn set_options_multi_key_commands_and_getdel_follow_redis() {
    let c = cluster(1, None, 16).await;
    let mut client = Client::connect(c.addresses[0]).await;
    let replies = client
        .call(&[
            &["SET", "k", "1", "XX"],
            &["SET", "k", "1", "NX"],
            &["SET", "k", "2", "NX"],
            &["SET", "k", "3", "xx", "get"],
            &["SET", "k", "4", "GET"],
            &["MSET", "a", "x", "b", "y"],
            &["MGET", "a", "k", "nothing", "b"],
            &["EXISTS", "a", "a", "nothing", "k"],
            &["GETDEL", "k"],
            &["GETDEL", "k"],
            &["EXISTS", "k"],
        ])
        .await;
    assert_eq!(
        replies,
        vec![
            Reply::Null,
            ok(),
            Reply::Null,
            bulk("1"),
            bulk("3"),
            ok(),
            Reply::Array(vec![bulk("x"), bulk("4"), Reply::Null, bulk("y")]),
            Reply::Integer(3),
            bulk("4"),
            Reply::Null,
            Reply::Integer(0),
        ]
    );
}

/// A TTL travels with the value: `TTL`/`PTTL` read it back, a value whose expiry is past
/// (`EXAT 1`) is gone at once, and a bad expiry is Redis's error with nothing written.
#[tokio::test]
async fn set_with_a_ttl_expires_and_ttl_pttl_report_it_like_redis() {
    let c = cluster(1, None, 16).await;
    let mut client = Client::connect(c.addresses[0]).await;
    let replies = client
        .call(&[
            &["SET", "t", "v", "EX", "100"],
            &["TTL", "t"],
            &["SET", "p", "v", "PX", "100000", "GET"],
            &["SET", "gone", "v", "EXAT", "1"],
            &["GET", "gone"],
            &["EXISTS", "gone", "t"],
            &["TTL", "gone"],
            &["SET", "plain", "v"],
            &["TTL", "plain"],
            &["TTL", "nothing"],
            &["SET", "bad", "v", "EX", "0"],
            &["SET", "bad", "v", "EX", "1", "PX", "1"],
            &["SET", "bad", "v", "PX"],
            &["SET", "bad", "v", "EX", "999999999999"],
            &["SET", "bad", "v", "KEEPTTL"],
            &["EXISTS", "bad"],
        ])
        .await;
    assert_eq!(replies[..3], [ok(), Reply::Integer(100), Reply::Null]);
    assert_eq!(
        replies[3..10],
        [
            ok(),
            Reply::Null,
            Reply::Integer(1),
            Reply::Integer(-2),
            ok(),
            Reply::Integer(-1),
            Reply::Integer(-2),
        ]
    );
    for (reply, prefix) in replies[10..15].iter().zip([
        "ERR invalid expire time",
        "ERR syntax error",
        "ERR invalid expire time",
        "ERR invalid expire time",
        "ERR chorus cannot keep a TTL",
    ]) {
        assert!(
            error_starts(reply, prefix),
            "{reply:?} should start with {prefix}"
        );
    }
    assert_eq!(
        replies[15],
        Reply::Integer(0),
        "a refused SET wrote nothing"
    );
    match client.one(&["PTTL", "p"]).await {
        Reply::Integer(ms) => assert!((1..=100_000).contains(&ms), "PTTL {ms}"),
        other => panic!("PTTL answered {other:?}"),
    }
}

#[tokio::test]
async fn refused_commands_keep_the_connection_and_write_nothing() {
    let c = cluster(1, None, 16).await;
    let mut client = Client::connect(c.addresses[0]).await;
    // Over --max-value (100 here) but within a bulk string's limit (1024, a key's size).
    let long_value = "v".repeat(101);
    let replies = client
        .call(&[
            &["FLUSHALL", "now"],
            &["GET"],
            &["SET", "t", "v", "EX", "0"],
            &["SET", "t", "v", "NX", "XX"],
            &["SET", "t", &long_value],
            &["MSET", "t", "v", "u"],
            &["MSET", "t", "v", "u", &long_value],
            &["SET", "", "v"],
            &["CLIENT", "KILL"],
            &["COMMAND", "NOPE"],
            &["PING"],
        ])
        .await;
    let expected = [
        "ERR unknown command 'FLUSHALL', with args beginning with: 'now'",
        "ERR wrong number of arguments for 'get' command",
        "ERR invalid expire time in 'set' command",
        "ERR syntax error",
        "ERR the value is 101 bytes",
        "ERR wrong number of arguments for 'mset'",
        "ERR the value is 101 bytes",
        "ERR the key is empty",
        "ERR unknown subcommand 'KILL'",
        "ERR unknown subcommand 'NOPE'",
    ];
    for (reply, prefix) in replies.iter().zip(expected) {
        assert!(
            error_starts(reply, prefix),
            "{reply:?} should start with {prefix}"
        );
    }
    assert_eq!(replies[10], Reply::simple("PONG"));
    assert!(!c.holds(0, b"t"), "a refused command wrote");
}

#[tokio::test]
async fn a_malformed_frame_is_answered_then_the_connection_closes_having_written_nothing() {
    let c = cluster(1, None, 16).await;
    let frames: [&[u8]; 6] = [
        b"*3\r\n$3\r\nSET\r\n$1\r\nb\r\n$99999999999\r\n",
        b"*3\r\n$3\r\nSET\r\n$1\r\nb\r\n$1025\r\n",
        b"*3\r\n$3\r\nSET\r\n$1\r\nb\r\n$-7\r\n",
        b"*-2\r\n",
        b"*3\r\n$3\r\nSET\r\n$1\r\nb\r\n:1\r\n",
        b"*3\r\n$3\r\nSET\r\n$1\r\nb\r\n$1\r\nvXY",
    ];
    for bad in frames {
        let mut client = Client::connect(c.addresses[0]).await;
        // A good command before the bad frame is still answered (and done).
        let mut bytes = command(&[b"SET", b"a", b"1"]);
        bytes.extend(bad);
        client.send(&bytes).await;
        let replies = client.replies(2).await;
        assert_eq!(replies[0], ok());
        assert!(
            error_starts(&replies[1], "ERR Protocol error"),
            "{replies:?}"
        );
        assert!(
            client.closed().await,
            "the connection stays open after {:?}",
            String::from_utf8_lossy(bad)
        );
        assert!(!c.holds(0, b"b"), "a malformed frame wrote");
    }
    // A megabyte inline line without a newline: refused at 64 KiB.
    let mut client = Client::connect(c.addresses[0]).await;
    client.send(&vec![b'x'; 100 * 1024]).await;
    let reply = client.replies(1).await.remove(0);
    assert!(
        error_starts(&reply, "ERR Protocol error: too big inline request"),
        "{reply:?}"
    );
    assert!(client.closed().await);
    // The node still serves.
    assert_eq!(
        Client::connect(c.addresses[0])
            .await
            .one(&["GET", "a"])
            .await,
        bulk("1")
    );
}

#[tokio::test]
async fn thousands_of_pipelined_commands_are_all_answered_in_order() {
    let c = cluster(1, None, 16).await;
    let mut client = Client::connect(c.addresses[0]).await;
    let mut writer = client.writer.take().unwrap();
    const COUNT: usize = 20_000;
    // Written from another task while this one reads: the server answers as it goes, and
    // a client that only wrote would fill both socket buffers.
    tokio::spawn(async move {
        let mut bytes = Vec::new();
        for i in 0..COUNT {
            let key = format!("k{}", i % 100);
            bytes.extend(command(&[b"SET", key.as_bytes(), i.to_string().as_bytes()]));
            bytes.extend(command(&[b"GET", key.as_bytes()]));
        }
        writer.write_all(&bytes).await.unwrap();
        writer
    });
    let replies = client.replies(2 * COUNT).await;
    for (i, pair) in replies.chunks(2).enumerate() {
        // Each GET follows its own key's SET: it sees that value, not a later one.
        assert_eq!(pair, &[ok(), bulk(&i.to_string())], "command pair {i}");
    }
}

#[tokio::test]
async fn connections_over_the_cap_are_refused_clearly() {
    let c = cluster(1, None, 1).await;
    let mut first = Client::connect(c.addresses[0]).await;
    assert_eq!(first.one(&["PING"]).await, Reply::simple("PONG"));
    let mut second = Client::connect(c.addresses[0]).await;
    assert_eq!(
        second.replies(1).await,
        vec![Reply::error("ERR max number of clients reached")]
    );
    assert!(second.closed().await);
    drop(first);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let mut next = Client::connect(c.addresses[0]).await;
        next.send(&command(&[b"PING"])).await;
        if next.replies(1).await == vec![Reply::simple("PONG")] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot was never freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_password_makes_auth_required_and_hello_3_speaks_resp3() {
    let c = cluster(1, Some("s3cret"), 16).await;
    let mut client = Client::connect(c.addresses[0]).await;
    let replies = client
        .call(&[
            &["SET", "k", "v"],
            &["AUTH", "wrong"],
            &["HELLO", "3"],
            &["AUTH", "someone", "s3cret"],
            &["HELLO", "4"],
        ])
        .await;
    assert!(error_starts(&replies[0], "NOAUTH"), "{replies:?}");
    assert!(error_starts(&replies[1], "WRONGPASS"), "{replies:?}");
    assert!(error_starts(&replies[2], "NOAUTH"), "{replies:?}");
    assert!(error_starts(&replies[3], "WRONGPASS"), "{replies:?}");
    assert!(error_starts(&replies[4], "NOPROTO"), "{replies:?}");
    assert!(!c.holds(0, b"k"));
    client
        .send(&command(&[
            b"HELLO", b"3", b"AUTH", b"default", b"s3cret", b"SETNAME", b"me",
        ]))
        .await;
    let Reply::Map(hello) = client.replies(1).await.remove(0) else {
        panic!("HELLO 3 answers a map")
    };
    assert!(
        hello.contains(&(bulk("proto"), Reply::Integer(3))),
        "{hello:?}"
    );
    // RESP3 on the wire: a missing key is `_`.
    client.send(&command(&[b"GET", b"missing"])).await;
    let mut raw = [0u8; 3];
    client.reader.read_exact(&mut raw).await.unwrap();
    assert_eq!(&raw, b"_\r\n");
    assert_eq!(
        client
            .call(&[&["SET", "k", "v"], &["CLIENT", "GETNAME"]])
            .await,
        vec![ok(), bulk("me")]
    );
    let mut other = Client::connect(c.addresses[0]).await;
    assert_eq!(
        other.call(&[&["AUTH", "s3cret"], &["GET", "k"]]).await,
        vec![ok(), bulk("v")]
    );
}

#[tokio::test]
async fn select_client_consistency_command_and_info_answer_what_clients_expect() {
    let c = cluster(2, None, 16).await;
    let mut client = Client::connect(c.addresses[0]).await;
    let replies = client
        .call(&[
            &["SELECT", "3"],
            &["SET", "k", "in db3"],
            &["SELECT", "0"],
            &["GET", "k"],
            &["SELECT", "x"],
            &["CLIENT", "SETNAME", "has space"],
            &["CLIENT", "SETINFO", "LIB-NAME", "redis-py"],
            &["CHORUS.CONSISTENCY", "r=3"],
            &["CHORUS.CONSISTENCY", "r=one", "w=all"],
            &["CHORUS.CONSISTENCY"],
            &["COMMAND", "COUNT"],
        ])
        .await;
    assert_eq!(replies[..4], [ok(), ok(), ok(), Reply::Null]);
    assert!(
        c.replicas[0].get(b"db3", b"k").unwrap().is_some(),
        "SELECT 3 writes to bucket db3"
    );
    assert!(error_starts(&replies[4], "ERR value is not an integer"));
    assert!(error_starts(
        &replies[5],
        "ERR Client names cannot contain spaces"
    ));
    assert_eq!(replies[6], ok());
    assert!(
        error_starts(&replies[7], "ERR CHORUS.CONSISTENCY 'r=3'"),
        "{:?}",
        replies[7]
    );
    assert_eq!(replies[8..10], [ok(), bulk("r=1 w=2")]);
    assert_eq!(replies[10], Reply::Integer(commands::SPECS.len() as i64));
    let Reply::Bulk(info) = client.one(&["CLIENT", "INFO"]).await else {
        panic!()
    };
    let info = String::from_utf8_lossy(&info).to_string();
    assert!(
        info.contains("db=0") && info.contains("lib-name=redis-py"),
        "{info}"
    );
    let Reply::Array(docs) = client.one(&["COMMAND", "DOCS"]).await else {
        panic!("RESP2 maps are flat arrays")
    };
    assert_eq!(docs.len(), 2 * commands::SPECS.len());
    let Reply::Bulk(info) = client.one(&["INFO"]).await else {
        panic!()
    };
    let info = String::from_utf8_lossy(&info).to_string();
    for line in [
        "# Server",
        "redis_version:",
        "connected_clients:1",
        "total_commands_processed:",
        "chorus_local_keys:1",
        "chorus_n:2",
    ] {
        assert!(info.contains(line), "INFO lacks {line}: {info}");
    }
    assert_eq!(client.one(&["QUIT"]).await, ok());
    assert!(client.closed().await);
}

#[tokio::test]
async fn a_half_sent_command_is_closed_at_its_deadline_even_while_bytes_trickle_in() {
    let c = cluster(1, None, 16).await;
    let mut client = Client::connect(c.addresses[0]).await;
    let started = tokio::time::Instant::now();
    // A SET whose value never completes, one byte every 50 ms: progress, but no command.
    client
        .send(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1000\r\n")
        .await;
    let mut writer = client.writer.take().unwrap();
    let trickle = tokio::spawn(async move {
        while writer.write_all(b"x").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let reply = client.replies(1).await.remove(0);
    assert!(
        error_starts(&reply, "ERR Protocol error: a command was not completed"),
        "{reply:?}"
    );
    assert!(client.closed().await);
    let took = started.elapsed();
    assert!(
        took >= FRAME_TEST_TIMEOUT && took < FRAME_TEST_TIMEOUT * 10,
        "closed after {took:?}"
    );
    trickle.abort();
    assert!(!c.holds(0, b"k"));
    // An idle connection (nothing half-sent) is not closed by the frame timeout.
    let mut idle = Client::connect(c.addresses[0]).await;
    tokio::time::sleep(FRAME_TEST_TIMEOUT * 2).await;
    assert_eq!(idle.one(&["PING"]).await, Reply::simple("PONG"));
}

#[tokio::test]
async fn pipelines_of_many_connections_keep_at_most_max_in_flight_keys_in_the_coordinator() {
    let c = slow_cluster(2, None, 16, Duration::from_millis(20)).await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(Client::connect(c.addresses[0]).await);
    }
    // Four connections of 100 pipelined writes of distinct keys at w=2: up to 4 x 64 of
    // them would be in flight without the bound, each waiting 20 ms for the peer.
    let runs = clients
        .iter_mut()
        .enumerate()
        .map(|(n, client)| async move {
            let mut bytes = command(&[b"CHORUS.CONSISTENCY", b"w=2"]);
            for i in 0..100 {
                bytes.extend(command(&[b"SET", format!("c{n}k{i}").as_bytes(), b"v"]));
            }
            client.send(&bytes).await;
            client.replies(101).await
        });
    for replies in futures::future::join_all(runs).await {
        assert!(replies.iter().all(|r| *r == ok()), "{replies:?}");
    }
    let (now, max) = *c.calls.lock().unwrap();
    assert!(max <= MAX_IN_FLIGHT, "{max} peer calls at once");
    assert!(
        max > MAX_IN_FLIGHT / 2,
        "only {max} at once: the test does not load the bound"
    );
    assert_eq!(now, 0);
}

/// A bucket's properties apply to RESP commands as to HTTP (`request_options`): its `ttl`
/// to a write without one, its `w` to SET, MSET, DEL and CHORUS.SET, its `r` to reads; a
/// command's own `EX` and the connection's `CHORUS.CONSISTENCY` win over them.
#[tokio::test]
async fn bucket_properties_apply_unless_the_command_or_connection_sets_its_own() {
    let c = cluster(2, None, 16).await;
    let props = BucketProps {
        w: Some("all".into()),
        ttl: Some(5),
        ..Default::default()
    };
    c.coordinators[0].props().set(b"db0", props);
    let mut a = Client::connect(c.addresses[0]).await;
    assert_eq!(a.one(&["SET", "k", "v"]).await, ok());
    let ttl = a.one(&["TTL", "k"]).await;
    assert!(matches!(ttl, Reply::Integer(1..=5)), "{ttl:?}");
    assert_eq!(a.one(&["MSET", "m", "v"]).await, ok());
    let ttl = a.one(&["PTTL", "m"]).await;
    assert!(matches!(ttl, Reply::Integer(1..=5000)), "{ttl:?}");
    assert_eq!(a.one(&["SET", "own", "v", "EX", "100"]).await, ok());
    assert_eq!(a.one(&["TTL", "own"]).await, Reply::Integer(100));
    assert_eq!(a.one(&["CHORUS.CONSISTENCY"]).await, bulk("r=1 w=2"));
    // w=all: with b down every write in db0 fails; in db1 (no properties) w=1 writes.
    c.down.lock().unwrap().insert("b".into());
    for command in [
        &["SET", "k2", "v"][..],
        &["MSET", "k2", "v"],
        &["DEL", "k"],
        &["CHORUS.SET", "k2", "v", ""],
    ] {
        let failed = a.one(command).await;
        assert!(
            error_starts(&failed, "QUORUM needed 2"),
            "{command:?}: {failed:?}"
        );
    }
    assert_eq!(
        a.call(&[&["SELECT", "1"], &["SET", "k2", "v"]]).await,
        [ok(), ok()]
    );
    assert_eq!(a.one(&["TTL", "k2"]).await, Reply::Integer(-1));
    // The connection's own w wins over the bucket's.
    let own = a
        .call(&[
            &["SELECT", "0"],
            &["CHORUS.CONSISTENCY", "w=1"],
            &["SET", "k2", "v"],
        ])
        .await;
    assert_eq!(own, [ok(), ok(), ok()]);
    reads_take_the_buckets_r(&c, &mut a).await;
}

/// With b down and the bucket's r=all, reads fail unless the connection sets its own r.
async fn reads_take_the_buckets_r(c: &Cluster, a: &mut Client) {
    let props = BucketProps {
        r: Some("all".into()),
        ..Default::default()
    };
    c.coordinators[0].props().set(b"db0", props);
    for command in [
        &["GET", "own"][..],
        &["MGET", "own"],
        &["EXISTS", "own"],
        &["TTL", "own"],
    ] {
        let failed = a.one(command).await;
        assert!(
            error_starts(&failed, "QUORUM needed 2"),
            "{command:?}: {failed:?}"
        );
    }
    assert_eq!(
        a.call(&[&["CHORUS.CONSISTENCY", "r=1"], &["GET", "own"]])
            .await,
        [ok(), bulk("v")]
    );
}
