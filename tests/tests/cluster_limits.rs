//! Hostile input against real `chorus` processes (issue 15): every limit the decoder
//! enforces is enforced by the writer first, so no request can store a state that is then
//! refused on read; and flags are checked against the hard limits and each other at start.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chorus_core::causality::{ActorId, Context, MAX_ACTORS};
use chorus_core::object::{Object, Sibling};
use chorus_tests::api::{self, assert_error, Local};
use chorus_tests::cluster::{chorus_bin, free_port, ClusterOptions, TestCluster};

/// A context token naming actors `1..=actors`, each at counter 1: what a hostile client
/// can send without having read anything.
fn context_naming(actors: u64) -> String {
    let state = (1..=actors).fold(Object::new(), |state, a| {
        state.sync(&Object::new().update(&Context::default(), ActorId(a), Sibling::tombstone()))
    });
    state.context().encode()
}

/// Issue 15, defect 1: one PUT whose context named the decoder's 1024 actors made the
/// coordinator store 1025, which every decoder refused: the key (and its acknowledged
/// value) became unreadable and unwritable everywhere.
#[test]
fn a_context_naming_the_actor_limit_is_refused_and_the_key_stays_readable_everywhere() {
    let cluster = TestCluster::start_converged(ClusterOptions::default());
    let urls: Vec<String> = (0..cluster.nodes.len()).map(|i| cluster.url(i)).collect();
    api::put_ok(&urls[0], "poison", "k", b"acked", "w=all", None);
    let hostile = context_naming(MAX_ACTORS as u64);
    for url in &urls {
        let r = api::put(url, "poison", "k", b"evil", "", Some(&hostile)).unwrap();
        assert_error(
            &r,
            400,
            "invalid_context",
            "a PUT whose context names 1024 actors",
        );
        let r = api::delete(url, "poison", "k", "", Some(&hostile)).unwrap();
        assert_error(
            &r,
            400,
            "invalid_context",
            "a DELETE whose context names 1024 actors",
        );
    }
    let mut context = String::new();
    for url in &urls {
        assert_eq!(
            api::local(url, "poison", "k").unwrap(),
            Some(Local::Values(vec![b"acked".to_vec()])),
            "{url}'s own replica"
        );
        let (status, ctx, values) = api::get_json(url, "poison", "k", "r=all").unwrap();
        assert_eq!((status, values), (200, vec![b"acked".to_vec()]), "{url}");
        context = ctx;
    }
    api::put_ok(&urls[1], "poison", "k", b"next", "w=all", Some(&context));
    let (_, _, values) = api::get_json(&urls[2], "poison", "k", "r=all").unwrap();
    assert_eq!(values, vec![b"next".to_vec()]);
}

/// What `chorus start` did with some flags: its exit code (None: it served `/health`, or
/// still ran after the deadline, and was killed), its stderr, and whether it created the
/// data directory.
fn start_with(flags: &[&str]) -> (Option<i32>, String, bool) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let http = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(chorus_bin())
        .args(["start", "--name", "x", "--insecure"])
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--http", &http])
        .arg("--data")
        .arg(&data)
        .args(flags)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chorus");
    let started = Instant::now();
    let code = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status.code();
        }
        let serving = api::get(&format!("http://{http}"), "/health").is_ok_and(|r| r.status == 200);
        if serving || started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (code, stderr, data.exists())
}

/// Issue 15, defects 3 and 4 and the flag concerns: `--max-siblings` over the hard limit,
/// `--max-value x --max-siblings` over a node-to-node message, and flags past any sensible
/// bound were accepted, and then corrupted keys or failed every request.
#[test]
fn start_refuses_flags_past_the_hard_limits_with_one_line_and_exit_2() {
    for (flags, names) in [
        (&["--max-siblings", "5000"][..], "--max-siblings"),
        (&["--max-siblings", "4096"][..], "--max-siblings"),
        (&["--max-siblings", "1000000"][..], "--max-siblings"),
        (
            &["--max-value", "1048576", "--max-siblings", "100"][..],
            "--max-siblings",
        ),
        (&["--max-value", "40000000"][..], "--max-value"),
        (&["--n", "100"][..], "--n"),
        (&["--timeout-ms", "99999999999"][..], "--timeout-ms"),
        (&["--cache-mb", "0"][..], "--cache-mb"),
        (&["--memtable-mb", "0"][..], "--memtable-mb"),
    ] {
        let (code, stderr, created) = start_with(flags);
        assert_eq!(code, Some(2), "{flags:?}: exit code; stderr: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{flags:?}: one line, got {stderr:?}");
        assert!(lines[0].contains(names), "{flags:?}: {stderr:?}");
        assert!(!created, "{flags:?}: the data directory was created");
    }
    // The defaults and the largest accepted settings start.
    let (code, stderr, _) = start_with(&["--max-siblings", "2048", "--max-value", "10000"]);
    assert_eq!(
        code, None,
        "the largest accepted limits must start: {stderr}"
    );
}
