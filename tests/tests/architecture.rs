//! The crate boundaries ARCHITECTURE.md states, checked against `cargo tree`: the protocol
//! core and the simulation never build HTTP, QUIC, TLS or CLI code.

use std::process::Command;

/// Every package in `package`'s normal (non-dev) dependency tree.
fn dependencies(package: &str) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "-e",
            "normal",
            "--prefix",
            "none",
            "-p",
            package,
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo tree");
    assert!(
        out.status.success(),
        "cargo tree -p {package} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

fn assert_free_of(package: &str, forbidden: &[&str]) {
    let deps = dependencies(package);
    assert!(
        deps.iter().any(|d| d == package),
        "cargo tree listed no {package}"
    );
    let found: Vec<&String> = deps
        .iter()
        .filter(|d| forbidden.contains(&d.as_str()))
        .collect();
    assert!(found.is_empty(), "{package} depends on {found:?}");
}

#[test]
fn core_stays_free_of_io() {
    assert_free_of(
        "chorus-core",
        &[
            "axum",
            "hyper",
            "quinn",
            "rustls",
            "rcgen",
            "clap",
            "chorus-api",
            "chorus-node",
        ],
    );
}

#[test]
fn the_simulation_and_test_harness_do_not_build_the_server() {
    assert_free_of(
        "chorus-tests",
        &["axum", "quinn", "rustls", "rcgen", "chorus-node"],
    );
}

#[test]
fn the_api_contract_knows_nothing_of_the_node() {
    assert_free_of(
        "chorus-api",
        &[
            "chorus-core",
            "chorus-node",
            "axum",
            "quinn",
            "fjall",
            "clap",
        ],
    );
}
