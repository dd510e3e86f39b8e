//! The client port's bounds against a real `chorus` process (issue 15): malformed bodies
//! are 400s (not 413s), framing chorus would misread is refused, connections are capped
//! with a clear refusal, and slow or idle clients are cut off by timeouts. Requests are
//! written by hand on raw sockets, as a hostile client would.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use chorus_tests::api;
use chorus_tests::cluster::{args, wait_for, ClusterOptions, TestCluster, CLUSTER_DEADLINE};

fn node() -> TestCluster {
    TestCluster::start_converged(ClusterOptions {
        nodes: 1,
        extra_args: args(&[
            "--n",
            "1",
            "--http-max-connections",
            "20",
            "--http-header-timeout-ms",
            "1000",
            "--http-body-timeout-ms",
            "1000",
        ]),
        ..Default::default()
    })
}

/// Sends `request` raw (then half-closes when `close`), returns everything read until the
/// server closes (or 20 s pass).
fn raw(addr: SocketAddr, request: &[u8], close: bool) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(request).unwrap();
    if close {
        stream.shutdown(Shutdown::Write).unwrap();
    }
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code and JSON `error` of a raw response.
fn status_and_code(response: &str) -> (u16, String) {
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    let code = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|j| j["error"].as_str().map(str::to_string))
        .unwrap_or_default();
    (status, code)
}

/// Issue 15, defect 7 and the framing concerns: a body shorter than its Content-Length or
/// a broken chunked body was answered 413 value_too_large; `Transfer-Encoding: gzip,
/// chunked` was stored with the gzip ignored; a second context header was ignored; a
/// wrong method got an empty 405.
#[test]
fn malformed_bodies_and_framing_are_400s_in_the_json_shape_and_store_nothing() {
    let cluster = node();
    let addr = cluster.nodes[0].http;
    let cases: [(&str, &[u8], bool, u16, &str); 6] = [
        (
            "a body shorter than its Content-Length",
            b"PUT /kv/b/short HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc",
            true,
            400,
            "invalid_body",
        ),
        (
            "a truncated chunked body",
            b"PUT /kv/b/cut HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab",
            true,
            400,
            "invalid_body",
        ),
        (
            "a malformed chunk size",
            b"PUT /kv/b/bad HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
            true,
            400,
            "invalid_body",
        ),
        (
            "gzip before chunked",
            b"PUT /kv/b/gz HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip, chunked\r\nconnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            false,
            400,
            "unsupported_transfer_encoding",
        ),
        (
            "two context headers",
            b"PUT /kv/b/two HTTP/1.1\r\nhost: x\r\nx-chorus-context: \r\nx-chorus-context: AQ\r\ncontent-length: 1\r\nconnection: close\r\n\r\nv",
            false,
            400,
            "invalid_context",
        ),
        (
            "a method the endpoint does not take",
            b"POST /kv/b/post HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            false,
            405,
            "method_not_allowed",
        ),
    ];
    for (what, request, close, status, code) in cases {
        let response = raw(addr, request, close);
        assert_eq!(
            status_and_code(&response),
            (status, code.to_string()),
            "{what}: {response:?}"
        );
    }
    let url = cluster.url(0);
    for key in ["short", "cut", "bad", "gz", "two", "post"] {
        assert_eq!(
            api::get_kv(&url, "b", key, "").unwrap().status,
            404,
            "{key} was stored"
        );
    }
}

/// Issue 15, concerns: no connection cap and no header timeout let 20,000 idle connections
/// exhaust the node's descriptors (and crash its storage); a slow body held a request.
#[test]
fn connections_are_capped_with_a_clear_refusal_and_idle_or_slow_clients_are_cut_off() {
    let cluster = node();
    let addr = cluster.nodes[0].http;
    let url = cluster.url(0);
    // A client that sends part of a body and then nothing gets 408 after the body timeout.
    let response = raw(
        addr,
        b"PUT /kv/b/slow HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc",
        false,
    );
    assert_eq!(
        status_and_code(&response),
        (408, "request_timeout".into()),
        "{response:?}"
    );

    // Hold every connection the node allows, idle; one more is refused in JSON.
    let idle: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(addr).unwrap()).collect();
    wait_for("the cap to refuse a connection", CLUSTER_DEADLINE, || {
        let response = raw(addr, b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n", false);
        match status_and_code(&response) {
            (503, code) if code == "too_many_connections" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    // The header timeout closes the idle ones; the node serves again.
    for mut stream in idle {
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(
            stream.read(&mut buf).unwrap_or(0),
            0,
            "an idle connection stayed open"
        );
    }
    wait_for(
        "the node to serve again",
        CLUSTER_DEADLINE,
        || match api::get(&url, "/health") {
            Ok(r) if r.status == 200 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    assert!(api::metric(&url, "chorus_http_connections_refused").unwrap() >= 1.0);
}

/// Issue 15, concern: `POST /admin/leave` worked for any HTTP client.
#[test]
fn admin_calls_need_the_cluster_admin_token() {
    let mut cluster = TestCluster::start_converged(ClusterOptions::default());
    let n3 = cluster.url(2);
    for (path, headers) in [
        ("/admin/leave", vec![]),
        (
            "/admin/leave",
            vec![("authorization", "Bearer 0123456789abcdef0123456789abcdef")],
        ),
        ("/admin/remove/n2", vec![]),
    ] {
        let r = api::call(&n3, "POST", path, &headers, b"").unwrap();
        api::assert_error(&r, 401, "unauthorized", path);
    }
    let members = api::members(&cluster.url(0)).unwrap();
    assert_eq!(members["n3"].0, "alive", "{members:?}");
    assert_eq!(members["n2"].0, "alive", "{members:?}");

    // The command line sends the token of the credential it is given.
    let out = std::process::Command::new(chorus_tests::cluster::chorus_bin())
        .args(["leave", "--node", &n3, "--certs"])
        .arg(&cluster.certs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        cluster.nodes[2].wait_exit(CLUSTER_DEADLINE),
        Some(0),
        "n3 left"
    );
}
