//! The client API on real `chorus` processes: round trips through every node, quorums,
//! siblings and their resolution, quorum failures with a node killed, read repair, input
//! validation, value sizes and key encodings. Anti-entropy is slowed to one round per 10
//! minutes here so that the repairs seen are read repairs.

use chorus_tests::api::{self, assert_error, Local};
use chorus_tests::cluster::{args, wait_for, ClusterOptions, TestCluster, CLUSTER_DEADLINE};

const MAX_VALUE: usize = 4096;

fn kv_cluster() -> TestCluster {
    TestCluster::start_converged(ClusterOptions {
        nodes: 3,
        extra_args: args(&["--healing-interval-ms", "600000", "--max-value", "4096"]),
        ..Default::default()
    })
}

#[test]
fn round_trip_and_read_your_writes_through_every_node() {
    let cluster = kv_cluster();
    for i in 0..3 {
        let key = format!("key-{i}");
        let value = format!("value written through n{}", i + 1);
        let r = api::call(
            &cluster.url(i),
            "PUT",
            &api::kv("rt", &key, ""),
            &[("content-type", "text/plain")],
            value.as_bytes(),
        )
        .unwrap();
        assert_eq!(r.status, 204, "{}", r.error_message());
        assert!(r.header(api::CONTEXT_HEADER).is_some_and(|c| !c.is_empty()));
        for j in 0..3 {
            let r = api::get_kv(&cluster.url(j), "rt", &key, "").unwrap();
            assert_eq!(
                r.status,
                200,
                "GET {key} through n{}: {}",
                j + 1,
                r.error_message()
            );
            assert_eq!(
                &r.body[..],
                value.as_bytes(),
                "GET {key} through n{}",
                j + 1
            );
            assert_eq!(r.header("content-type"), Some("text/plain"));
            assert!(r.header(api::CONTEXT_HEADER).is_some());
        }
    }
    // Read your writes: write through one node at w=quorum, read at once through the next
    // at r=quorum (R + W > N): the read sees exactly that write.
    let mut context: Option<String> = None;
    for round in 0..30 {
        let writer = round % 3;
        let reader = (round + 1) % 3;
        let value = format!("version {round}");
        context = Some(api::put_ok(
            &cluster.url(writer),
            "ryw",
            "counter",
            value.as_bytes(),
            "w=quorum",
            context.as_deref(),
        ));
        let r = api::get_kv(&cluster.url(reader), "ryw", "counter", "r=quorum").unwrap();
        assert_eq!(r.status, 200, "round {round}: {}", r.error_message());
        assert_eq!(
            String::from_utf8_lossy(&r.body),
            value,
            "round {round}: n{} read after n{} wrote",
            reader + 1,
            writer + 1
        );
    }
}

#[test]
fn concurrent_writes_are_siblings_until_a_write_with_their_context() {
    let cluster = kv_cluster();
    api::put_ok(&cluster.url(0), "cart", "bob", b"apples", "", None);
    api::put_ok(&cluster.url(1), "cart", "bob", b"pears", "", None);
    // Plain GET: 300 with every sibling, as JSON.
    let r = api::get_kv(&cluster.url(2), "cart", "bob", "").unwrap();
    assert_eq!(r.status, 300, "{}", String::from_utf8_lossy(&r.body));
    let json = r.json().unwrap();
    assert_eq!(
        api::siblings(&json),
        vec![b"apples".to_vec(), b"pears".to_vec()]
    );
    let context = json["context"].as_str().unwrap().to_string();
    assert_eq!(r.header(api::CONTEXT_HEADER), Some(context.as_str()));

    // A write with that context replaces both.
    api::put_ok(
        &cluster.url(2),
        "cart",
        "bob",
        b"apples,pears",
        "",
        Some(&context),
    );
    for i in 0..3 {
        let (status, _, values) = api::get_json(&cluster.url(i), "cart", "bob", "").unwrap();
        assert_eq!(
            (status, values),
            (200, vec![b"apples,pears".to_vec()]),
            "through n{}",
            i + 1
        );
    }
    // A delete with the latest context removes it.
    let (_, context, _) = api::get_json(&cluster.url(0), "cart", "bob", "").unwrap();
    let r = api::delete(&cluster.url(0), "cart", "bob", "", Some(&context)).unwrap();
    assert_eq!(r.status, 204, "{}", r.error_message());
    for i in 0..3 {
        let r = api::get_kv(&cluster.url(i), "cart", "bob", "").unwrap();
        assert_eq!(r.status, 404, "through n{}", i + 1);
        let (status, _, values) = api::get_json(&cluster.url(i), "cart", "bob", "").unwrap();
        assert_eq!((status, values.len()), (404, 0));
    }

    // A delete without a context removes what a read sees (siblings included), like Riak;
    // it must not leave a tombstone beside the values that keeps them visible.
    api::put_ok(&cluster.url(0), "cart", "eve", b"plums", "", None);
    api::put_ok(&cluster.url(1), "cart", "eve", b"figs", "", None);
    assert_eq!(
        api::get_kv(&cluster.url(2), "cart", "eve", "")
            .unwrap()
            .status,
        300
    );
    let r = api::delete(&cluster.url(2), "cart", "eve", "", None).unwrap();
    assert_eq!(r.status, 204, "{}", r.error_message());
    for i in 0..3 {
        let (status, _, values) = api::get_json(&cluster.url(i), "cart", "eve", "").unwrap();
        assert_eq!(
            (status, values.len()),
            (404, 0),
            "through n{} after a delete without context",
            i + 1
        );
    }
}

/// Issue 14: a PUT's answer context covers only what its client was shown. v1 is written
/// to every replica through n1; a client writes v2 blind through n2, then v3 through n2
/// with v2's answer context. It never saw v1, so v1 must stay a sibling of v3. (The first
/// build answered with n2's whole state, which covered v1, and v3 dropped it.) Then the
/// read-modify-write recipe: a write with a read's context resolves the siblings, and a
/// write with that write's answer replaces it again.
#[test]
fn a_write_with_a_put_answer_keeps_the_siblings_its_client_never_saw() {
    let cluster = kv_cluster();
    api::put_ok(&cluster.url(0), "b", "k", b"v1", "w=all", None);
    let answer = api::put_ok(&cluster.url(1), "b", "k", b"v2", "", None);
    api::put_ok(&cluster.url(1), "b", "k", b"v3", "", Some(&answer));
    let both = vec![b"v1".to_vec(), b"v3".to_vec()];
    for i in 0..3 {
        let (status, _, values) = api::get_json(&cluster.url(i), "b", "k", "r=all").unwrap();
        assert_eq!((status, &values), (300, &both), "through n{}", i + 1);
    }
    let (_, context, _) = api::get_json(&cluster.url(2), "b", "k", "r=all").unwrap();
    let answer = api::put_ok(&cluster.url(2), "b", "k", b"v1+v3", "w=all", Some(&context));
    api::put_ok(&cluster.url(0), "b", "k", b"v4", "w=all", Some(&answer));
    for i in 0..3 {
        let (status, _, values) = api::get_json(&cluster.url(i), "b", "k", "r=all").unwrap();
        assert_eq!(
            (status, values),
            (200, vec![b"v4".to_vec()]),
            "through n{}",
            i + 1
        );
    }
}

#[test]
fn with_a_node_killed_quorums_of_two_work_all_fails_and_a_read_repairs_it_after_restart() {
    let mut cluster = kv_cluster();
    let keys: Vec<String> = (0..5).map(|i| format!("k{i}")).collect();
    for key in &keys {
        api::put_ok(&cluster.url(0), "q", key, b"v1", "w=all", None);
        for i in 0..3 {
            assert_eq!(
                api::local(&cluster.url(i), "q", key).unwrap(),
                Some(Local::Values(vec![b"v1".to_vec()])),
                "n{}",
                i + 1
            );
        }
    }
    cluster.nodes[2].kill9();
    // r=2 and w=2 work with n3 dead (before and after the detector calls it down).
    for key in &keys {
        let (status, context, _) = api::get_json(&cluster.url(0), "q", key, "r=2").unwrap();
        assert_eq!(status, 200);
        api::put_ok(&cluster.url(0), "q", key, b"v2", "w=2", Some(&context));
        let r = api::get_kv(&cluster.url(1), "q", key, "r=2").unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"v2"[..]));
    }
    // w=all and r=all cannot be met: 503 quorum_unavailable with needed and replied.
    for (method, query) in [
        ("PUT", "w=all&timeout=1000"),
        ("GET", "r=all&timeout=1000"),
        ("DELETE", "w=3&timeout=1000"),
    ] {
        let r = api::call(
            &cluster.url(0),
            method,
            &api::kv("q", "other", query),
            &[],
            b"x",
        )
        .unwrap();
        assert_error(
            &r,
            503,
            "quorum_unavailable",
            &format!("{method} ?{query} with n3 down"),
        );
        let json = r.json().unwrap();
        assert_eq!(json["needed"], 3, "{json}");
        assert!(json["replied"].as_u64().is_some_and(|n| n < 3), "{json}");
        if method == "PUT" {
            // Once n1's detector calls n3 down the write is not tried (nothing stored);
            // before that it was tried, and is kept where it landed (n1's replica).
            let kept = match json["reachable"].as_u64() {
                Some(reachable) => {
                    assert_eq!(reachable, 2, "{json}");
                    None
                }
                None => Some(Local::Values(vec![b"x".to_vec()])),
            };
            assert_eq!(api::local(&cluster.url(0), "q", "other").unwrap(), kept);
        }
    }

    // n3 comes back with the stale v1; a read at r=all answers v2 and repairs n3.
    cluster.nodes[2].start();
    cluster.nodes[2].wait_healthy();
    cluster.wait_alive(&[0, 1, 2], &["n1", "n2", "n3"]);
    let n1 = cluster.url(0);
    let n3 = cluster.url(2);
    let mut repaired = 0;
    for key in &keys {
        // (One anti-entropy round runs at start-up and may have repaired a key already.)
        if api::local(&n3, "q", key).unwrap() != Some(Local::Values(vec![b"v1".to_vec()])) {
            continue;
        }
        let repairs_before = api::metric(&n1, "chorus_read_repairs").unwrap();
        let r = wait_for(
            "a read at r=all to succeed after the restart",
            CLUSTER_DEADLINE,
            || {
                let r = api::get_kv(&n1, "q", key, "r=all")?;
                if r.status == 200 {
                    Ok(r)
                } else {
                    Err(format!("HTTP {} {}", r.status, r.error_message()))
                }
            },
        );
        assert_eq!(&r.body[..], b"v2", "r=all returns the latest value");
        wait_for(
            "n3's replica to be repaired",
            CLUSTER_DEADLINE,
            || match api::local(&n3, "q", key)? {
                Some(Local::Values(v)) if v == vec![b"v2".to_vec()] => Ok(()),
                other => Err(format!("{other:?}")),
            },
        );
        let repairs_after = api::metric(&n1, "chorus_read_repairs").unwrap();
        assert!(
            repairs_after > repairs_before,
            "/metrics shows a read repair: {repairs_before} -> {repairs_after}"
        );
        repaired += 1;
    }
    assert!(
        repaired >= 3,
        "only {repaired} of {} keys were still stale on n3 for a read to repair",
        keys.len()
    );
}

#[test]
fn bad_input_gets_its_status_and_json_error_and_changes_nothing() {
    let cluster = kv_cluster();
    let url = cluster.url(0);
    let context = api::put_ok(&url, "b", "k", b"original", "w=all", None);
    let unchanged = || {
        for i in 0..3 {
            let r = api::get_kv(&cluster.url(i), "b", "k", "r=all").unwrap();
            assert_eq!(
                (r.status, &r.body[..]),
                (200, &b"original"[..]),
                "through n{}",
                i + 1
            );
            assert_eq!(
                r.header(api::CONTEXT_HEADER),
                Some(context.as_str()),
                "the context changed"
            );
        }
    };
    let long = "a".repeat(1025);
    let long_path = format!("/kv/b/{long}");
    let long_bucket = format!("/kv/{long}/k");
    let cases: Vec<(&str, String, Vec<(&str, &str)>, Vec<u8>, u16, &str)> = vec![
        (
            "PUT",
            "/kv/b/k?r=0".into(),
            vec![],
            b"x".to_vec(),
            400,
            "invalid_parameter",
        ),
        (
            "PUT",
            "/kv/b/k?w=0".into(),
            vec![],
            b"x".to_vec(),
            400,
            "invalid_parameter",
        ),
        (
            "PUT",
            "/kv/b/k?w=4".into(),
            vec![],
            b"x".to_vec(),
            400,
            "invalid_parameter",
        ),
        (
            "PUT",
            "/kv/b/k?w=many".into(),
            vec![],
            b"x".to_vec(),
            400,
            "invalid_parameter",
        ),
        (
            "PUT",
            "/kv/b/k?w=-1".into(),
            vec![],
            b"x".to_vec(),
            400,
            "invalid_parameter",
        ),
        (
            "PUT",
            "/kv/b/k?pw=3&w=2".into(),
            vec![],
            b"x".to_vec(),
            400,
            "invalid_parameter",
        ),
        (
            "PUT",
            "/kv/b/k?timeout=0".into(),
            vec![],
            b"x".to_vec(),
            400,
            "invalid_parameter",
        ),
        (
            "PUT",
            "/kv/b/k?timeout=soon".into(),
            vec![],
            b"x".to_vec(),
            400,
            "invalid_parameter",
        ),
        (
            "PUT",
            "/kv/b/k?color=red".into(),
            vec![],
            b"x".to_vec(),
            400,
            "invalid_parameter",
        ),
        (
            "GET",
            "/kv/b/k?r=4".into(),
            vec![],
            vec![],
            400,
            "invalid_parameter",
        ),
        (
            "GET",
            "/kv/b/k?r=all&q=1".into(),
            vec![],
            vec![],
            400,
            "invalid_parameter",
        ),
        (
            "DELETE",
            "/kv/b/k?w=9".into(),
            vec![],
            vec![],
            400,
            "invalid_parameter",
        ),
        (
            "DELETE",
            "/kv/b/k?x=1".into(),
            vec![],
            vec![],
            400,
            "invalid_parameter",
        ),
        (
            "PUT",
            "/kv/b/%ZZ".into(),
            vec![],
            b"x".to_vec(),
            400,
            "invalid_key",
        ),
        (
            "PUT",
            "/kv/b/k%2".into(),
            vec![],
            b"x".to_vec(),
            400,
            "invalid_key",
        ),
        (
            "PUT",
            "/kv/b/%FF%FE".into(),
            vec![],
            b"x".to_vec(),
            400,
            "invalid_key",
        ),
        (
            "PUT",
            "/kv/%E2%9C/k".into(),
            vec![],
            b"x".to_vec(),
            400,
            "invalid_bucket",
        ),
        (
            "GET",
            "/kv/%G1/k".into(),
            vec![],
            vec![],
            400,
            "invalid_bucket",
        ),
        (
            "PUT",
            long_path.clone(),
            vec![],
            b"x".to_vec(),
            400,
            "invalid_key",
        ),
        ("GET", long_path, vec![], vec![], 400, "invalid_key"),
        (
            "PUT",
            long_bucket,
            vec![],
            b"x".to_vec(),
            400,
            "invalid_bucket",
        ),
        (
            "PUT",
            "/kv/b/".into(),
            vec![],
            b"x".to_vec(),
            400,
            "invalid_key",
        ),
        (
            "PUT",
            "/kv//k".into(),
            vec![],
            b"x".to_vec(),
            400,
            "invalid_bucket",
        ),
        (
            "PUT",
            "/kv/b/k".into(),
            vec![(api::CONTEXT_HEADER, "not a context!")],
            b"x".to_vec(),
            400,
            "invalid_context",
        ),
        (
            "PUT",
            "/kv/b/k".into(),
            vec![(api::CONTEXT_HEADER, "AAAA")],
            b"x".to_vec(),
            400,
            "invalid_context",
        ),
        (
            "DELETE",
            "/kv/b/k".into(),
            vec![(api::CONTEXT_HEADER, "%%%")],
            vec![],
            400,
            "invalid_context",
        ),
        (
            "PUT",
            "/kv/b/k".into(),
            vec![],
            vec![7u8; MAX_VALUE + 1],
            413,
            "value_too_large",
        ),
        (
            "PUT",
            "/kv/b/k?w=1".into(),
            vec![],
            vec![7u8; 10 * MAX_VALUE],
            413,
            "value_too_large",
        ),
    ];
    for (method, path, headers, body, status, code) in &cases {
        let r = api::call(&url, method, path, headers, body).unwrap();
        let shown = if path.len() > 60 {
            format!("{}...", &path[..60])
        } else {
            path.clone()
        };
        assert_error(
            &r,
            *status,
            code,
            &format!("{method} {shown} {headers:?} ({} bytes)", body.len()),
        );
        unchanged();
    }
    println!(
        "{} bad requests refused, each leaving the key unchanged",
        cases.len()
    );
}

#[test]
fn values_from_empty_to_the_limit_binary_values_and_unusual_keys() {
    let cluster = kv_cluster();
    let sizes = [0, 1, MAX_VALUE - 1, MAX_VALUE];
    for (i, size) in sizes.into_iter().enumerate() {
        let value: Vec<u8> = (0..size).map(|b| (b * 7 + 3) as u8).collect();
        let key = format!("size-{size}");
        api::put_ok(&cluster.url(i % 3), "sizes", &key, &value, "w=all", None);
        let r = api::get_kv(&cluster.url((i + 1) % 3), "sizes", &key, "").unwrap();
        assert_eq!(r.status, 200, "{size} bytes: {}", r.error_message());
        assert_eq!(r.body.len(), size);
        assert_eq!(&r.body[..], &value[..], "{size} bytes");
    }
    let r = api::put(
        &cluster.url(0),
        "sizes",
        "over",
        &vec![1u8; MAX_VALUE + 1],
        "",
        None,
    )
    .unwrap();
    assert_error(&r, 413, "value_too_large", "limit + 1");
    assert_eq!(
        api::get_kv(&cluster.url(1), "sizes", "over", "")
            .unwrap()
            .status,
        404,
        "nothing was written"
    );

    // Every byte value, through JSON (base64) too.
    let binary: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    let r = api::call(
        &cluster.url(0),
        "PUT",
        &api::kv("bin", "all-bytes", ""),
        &[("content-type", "application/x-raw")],
        &binary,
    )
    .unwrap();
    assert_eq!(r.status, 204);
    let r = api::get_kv(&cluster.url(2), "bin", "all-bytes", "").unwrap();
    assert_eq!(
        (&r.body[..], r.header("content-type")),
        (&binary[..], Some("application/x-raw"))
    );
    let (_, _, values) = api::get_json(&cluster.url(1), "bin", "all-bytes", "").unwrap();
    assert_eq!(values, vec![binary.clone()]);

    // Keys and buckets that need escaping are one segment each, decoded exactly once.
    let max_key = "é".repeat(512); // 1024 bytes of UTF-8
    let keys: Vec<(&str, String)> = vec![
        ("b", "a/b/c".to_string()),
        ("b", "a%2Fb".to_string()), // a literal percent sign, not a slash
        ("b", "%41".to_string()),   // not "A"
        ("b", "A".to_string()),
        ("b", "100%".to_string()),
        ("b", "ключ ✓ 🦀".to_string()),
        ("b", "?x=1&y#z".to_string()),
        ("b", ".".to_string()),
        ("b", "..".to_string()),
        ("b", " ".to_string()),
        ("b", "+".to_string()),
        ("b/with/slashes", "k".to_string()),
        ("ведро", "k".to_string()),
        ("b", max_key.clone()),
        (&max_key, "k".to_string()),
    ];
    for (i, (bucket, key)) in keys.iter().enumerate() {
        let value = format!("value {i}");
        api::put_ok(
            &cluster.url(i % 3),
            bucket,
            key,
            value.as_bytes(),
            "w=all",
            None,
        );
    }
    for (i, (bucket, key)) in keys.iter().enumerate() {
        let value = format!("value {i}");
        for j in 0..3 {
            let r = api::get_kv(&cluster.url(j), bucket, key, "").unwrap();
            assert_eq!(
                r.status,
                200,
                "{bucket:?}/{key:?} through n{}: {}",
                j + 1,
                r.error_message()
            );
            assert_eq!(
                String::from_utf8_lossy(&r.body),
                value,
                "{bucket:?}/{key:?} through n{}",
                j + 1
            );
            assert_eq!(
                api::local(&cluster.url(j), bucket, key).unwrap(),
                Some(Local::Values(vec![value.as_bytes().to_vec()]))
            );
        }
    }
    // The same key sent with a slash escaped in lower case is the same key.
    let r = api::get(&cluster.url(0), "/kv/b/a%2fb%2fc").unwrap();
    assert_eq!(
        (r.status, String::from_utf8_lossy(&r.body).to_string()),
        (200, "value 0".to_string())
    );
    // One byte over the segment limit is refused, for keys and buckets.
    let too_long = format!("{max_key}x");
    let r = api::put(&cluster.url(0), "b", &too_long, b"v", "", None).unwrap();
    assert_error(&r, 400, "invalid_key", "1025-byte key");
    let r = api::put(&cluster.url(0), &too_long, "k", b"v", "", None).unwrap();
    assert_error(&r, 400, "invalid_bucket", "1025-byte bucket");
}

/// Concurrent writes and reads through one node share messages to its peers
/// (`Request::Batch`): each write is on every replica with its own value, and each read at
/// r=all shows exactly its own key's value (a request dropped from a batch, or a peer's
/// answer handed to the wrong caller, would show here).
#[test]
fn concurrent_writes_and_reads_share_replica_messages_and_each_gets_its_own_answer() {
    // Four nodes, so n1 holds only some keys: the others it reads only from its peers.
    // (Every key's first write has the same dot, so an object of another key sent in its
    // place would not show as a sibling; only its value tells it apart.)
    let cluster = TestCluster::start_converged(ClusterOptions {
        nodes: 4,
        extra_args: args(&["--healing-interval-ms", "600000"]),
        ..Default::default()
    });
    let url = cluster.url(0);
    let writers = 32;
    let mut rounds = 0;
    wait_for(
        "writes through n1 to go out in batches",
        CLUSTER_DEADLINE,
        || {
            rounds += 1;
            std::thread::scope(|scope| {
                for t in 0..writers {
                    let (url, key) = (&url, format!("r{rounds}-w{t}"));
                    scope.spawn(move || {
                        api::put_ok(url, "batch", &key, key.as_bytes(), "w=all", None)
                    });
                }
            });
            match api::metric(&url, "chorus_rpc_batched_requests")? {
                n if n > 0.0 => Ok(()),
                n => Err(format!("{n} requests batched after {rounds} rounds")),
            }
        },
    );
    for round in 1..=rounds {
        for t in 0..writers {
            let key = format!("r{round}-w{t}");
            let holders: Vec<Option<Local>> = (0..4)
                .map(|i| api::local(&cluster.url(i), "batch", &key).unwrap())
                .filter(Option::is_some)
                .collect();
            let own = Some(Local::Values(vec![key.clone().into_bytes()]));
            assert_eq!(holders, vec![own; 3], "{key}");
        }
    }
    let batched_by_writes = api::metric(&url, "chorus_rpc_batched_requests").unwrap();
    std::thread::scope(|scope| {
        for t in 0..writers {
            let url = &url;
            scope.spawn(move || {
                for round in 1..=rounds {
                    let key = format!("r{round}-w{t}");
                    let r = api::get_kv(url, "batch", &key, "r=all").unwrap();
                    assert_eq!(r.status, 200, "GET {key}: {}", r.error_message());
                    assert_eq!(String::from_utf8_lossy(&r.body), key);
                }
            });
        }
    });
    let batched = api::metric(&url, "chorus_rpc_batched_requests").unwrap();
    println!("{rounds} rounds of {writers} writers; requests batched: {batched_by_writes} by the writes, {batched} after the reads");
}
