//! The dashboard's endpoints on real `chorus` processes: `GET /ui` is an HTML page that
//! loads nothing from outside, and `GET /ui/state` has the shape the page reads (members
//! with their states and links, the ring with fallbacks standing in, health, traffic), for
//! a healthy 3-node cluster and with one node killed. The rendered page itself is tested
//! in a browser by `scripts/ui-test`.

use std::collections::HashMap;

use serde_json::Value;

use chorus_tests::api;
use chorus_tests::cluster::{args, wait_for, ClusterOptions, TestCluster, CLUSTER_DEADLINE};

fn ui_state(base: &str) -> Result<Value, String> {
    let r = api::get(base, "/ui/state")?;
    if r.status != 200 {
        return Err(format!("/ui/state: HTTP {}", r.status));
    }
    r.json()
}

/// name -> state, from `/ui/state`.
fn states(state: &Value) -> HashMap<String, String> {
    state["members"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let field = |f: &str| m[f].as_str().unwrap_or_default().to_string();
            (field("name"), field("state"))
        })
        .collect()
}

fn assert_page(base: &str) {
    let r = api::get(base, "/ui").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let csp = r.header("content-security-policy").unwrap_or_default();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    let page = String::from_utf8_lossy(&r.body);
    assert!(
        page.contains("fetch(\"/ui/state\""),
        "the page polls /ui/state"
    );
    assert!(
        !page.contains("https://") && !page.contains("<script src"),
        "self-contained"
    );
}

/// Every member's fields, and a link to the same page on its own HTTP port.
fn assert_members(cluster: &TestCluster, state: &Value) {
    let members = state["members"].as_array().expect("members");
    assert_eq!(members.len(), cluster.nodes.len());
    for m in members {
        let node = &cluster.nodes[cluster.index_of(m["name"].as_str().unwrap())];
        assert_eq!(m["address"], node.listen.to_string());
        assert_eq!(m["ui_url"], format!("{}/ui", node.url()));
        assert!(m["generation"].as_u64().unwrap() > 0);
        assert!(m["phi"].is_number() && m["ring_share"].is_number(), "{m}");
        assert!(m["hints_held_here"].is_u64(), "{m}");
        assert_eq!(m["is_self"], m["name"] == state["node"]);
        assert_eq!(m["heartbeat_age_ms"].is_null(), m["is_self"] == true, "{m}");
    }
}

fn assert_shape(state: &Value, n: usize) {
    let partitions = state["ring"]["partitions"].as_array().expect("partitions");
    assert_eq!(
        partitions.len() as u64,
        state["ring_size"].as_u64().unwrap()
    );
    for p in partitions {
        assert_eq!(p["owners"].as_array().unwrap().len(), n, "{p}");
        assert!(p["standing_in"].is_array(), "{p}");
    }
    for field in [
        "hints_held",
        "disagreeing_partitions",
        "tombstones_awaiting_reap",
        "aae_exchanges_total",
        "aae_keys_repaired_total",
    ] {
        assert!(!state["health"][field].is_null(), "health.{field}");
    }
    assert_eq!(
        state["traffic"]["ops"],
        serde_json::json!(["get", "put", "delete"])
    );
    assert!(state["phi_threshold"].as_f64().unwrap() > 0.0);
}

#[test]
fn ui_state_shows_members_ring_and_a_dead_node_with_hints_for_it() {
    // N=2 of 3 nodes, so a dead node's partitions get a fallback, which stores hints.
    let mut cluster = TestCluster::start_converged(ClusterOptions {
        extra_args: args(&["--n", "2"]),
        ..Default::default()
    });
    for i in 0..3 {
        let base = cluster.url(i);
        assert_page(&base);
        let state = ui_state(&base).unwrap();
        assert_eq!(state["node"], cluster.nodes[i].name);
        assert!(states(&state).values().all(|s| s == "alive"), "{state}");
        assert_members(&cluster, &state);
        assert_shape(&state, 2);
    }

    cluster.nodes[2].kill9();
    let n1 = cluster.url(0);
    // The member state is evaluated when asked and the ring's unreachable set at the next
    // gossip step, so the fallbacks may appear a moment after "down".
    wait_for(
        "n1's /ui/state to show n3 down and fallbacks standing in for it",
        CLUSTER_DEADLINE,
        || {
            let state = ui_state(&n1)?;
            let n3 = states(&state).get("n3").cloned();
            let standing_for_n3 = state["ring"]["partitions"]
                .as_array()
                .ok_or("no partitions")?
                .iter()
                .flat_map(|p| p["standing_in"].as_array().into_iter().flatten())
                .filter(|f| f["for"] == "n3")
                .count();
            match n3.as_deref() {
                Some("down") if standing_for_n3 > 0 => Ok(standing_for_n3),
                other => Err(format!("n3 {other:?}, {standing_for_n3} fallbacks for it")),
            }
        },
    );

    // Writes at w=1 through n1: n1 is the fallback for some of n3's partitions.
    let mut round = 0;
    wait_for("n1 to show hints it holds for n3", CLUSTER_DEADLINE, || {
        round += 1;
        for i in 0..20 {
            api::put(&n1, "ui", &format!("k{round}-{i}"), b"v", "w=1", None)?;
        }
        let state = ui_state(&n1)?;
        let n3 = &state["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "n3")
            .cloned();
        let hints = n3
            .as_ref()
            .and_then(|m| m["hints_held_here"].as_u64())
            .unwrap_or(0);
        let listed = state["health"]["hints_held"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["owner"] == "n3" && h["hints"].as_u64() == Some(hints));
        let puts: f64 = state["traffic"]["series"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["put"]["rps"].as_f64().unwrap_or(0.0))
            .sum();
        if hints > 0 && listed && puts > 0.0 {
            Ok(hints)
        } else {
            Err(format!("hints {hints}, listed {listed}, put rps {puts}"))
        }
    });
}
