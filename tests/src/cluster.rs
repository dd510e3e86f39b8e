//! Multi-process test clusters: real `chorus start` processes on 127.0.0.1 free ports, in a
//! temporary directory with their own credential. Tests wait on conditions with generous
//! deadlines (CI runs on 2 busy cores) and every process is killed by its own PID when the
//! cluster is dropped.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Deadline for conditions that depend on gossip or failure detection.
pub const CLUSTER_DEADLINE: Duration = Duration::from_secs(60);

/// Path of the `chorus` binary under test: `$CHORUS_BIN`, else the one built next to this
/// test executable (target/<profile>/chorus).
pub fn chorus_bin() -> PathBuf {
    if let Ok(path) = std::env::var("CHORUS_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/chorus
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let bin = profile_dir.join("chorus");
    assert!(
        bin.exists(),
        "{} not found: run `cargo build` (or set CHORUS_BIN) before the cluster tests",
        bin.display()
    );
    bin
}

/// A port free on 127.0.0.1 for both TCP and UDP right now.
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind a TCP port");
        let port = tcp.local_addr().expect("local addr").port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 after 100 tries");
}

/// Polls `condition` every 100 ms until it holds or `deadline` passes; panics with `what`
/// and the last observation when it never holds.
pub fn wait_for<T: std::fmt::Debug>(
    what: &str,
    deadline: Duration,
    mut condition: impl FnMut() -> Result<T, String>,
) -> T {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < deadline {
        match condition() {
            Ok(value) => return value,
            Err(observed) => last = observed,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {deadline:?} waiting for {what}; last observed: {last}");
}

pub struct TestNode {
    pub name: String,
    pub listen: SocketAddr,
    pub http: SocketAddr,
    /// The Redis-protocol port (`--resp`), when the cluster was started with `resp`.
    pub resp: Option<SocketAddr>,
    pub data: PathBuf,
    pub log: PathBuf,
    seeds: Vec<SocketAddr>,
    certs: Option<PathBuf>,
    extra_args: Vec<String>,
    /// Advertise and seed by `localhost:PORT` (see `ClusterOptions::names`).
    names: bool,
    child: Option<Child>,
}

impl TestNode {
    pub fn url(&self) -> String {
        format!("http://{}", self.http)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log");
        let mut command = Command::new(chorus_bin());
        command
            .arg("start")
            .args(["--name", &self.name])
            .args(["--listen", &self.listen.to_string()])
            .args(["--http", &self.http.to_string()])
            .arg("--data")
            .arg(&self.data)
            .args(["--gossip-interval-ms", "200"]);
        if let Some(resp) = self.resp {
            command.args(["--resp", &resp.to_string()]);
        }
        let address = |a: &SocketAddr| match self.names {
            true => format!("localhost:{}", a.port()),
            false => a.to_string(),
        };
        if self.names {
            command.args(["--advertise", &address(&self.listen)]);
        }
        if !self.seeds.is_empty() {
            let seeds: Vec<String> = self.seeds.iter().map(address).collect();
            command.args(["--seeds", &seeds.join(",")]);
        }
        match &self.certs {
            Some(dir) => command.arg("--certs").arg(dir),
            None => command.arg("--insecure"),
        };
        command
            .args(&self.extra_args)
            .env(
                "RUST_LOG",
                std::env::var("CHORUS_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.child = Some(command.spawn().expect("spawn chorus"));
    }

    /// `kill -9`: the process gets no chance to flush or say goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        signal(child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    pub fn pause(&self) {
        signal(self.pid().expect("running"), "STOP");
    }

    pub fn resume(&self) {
        signal(self.pid().expect("running"), "CONT");
    }

    /// Waits for the process to exit on its own and returns its exit code.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let started = Instant::now();
        while started.elapsed() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A paused process must be resumed to die promptly from SIGKILL's reaper view.
            signal(child.id(), "CONT");
        }
        self.kill9();
        // A panic in a tokio task ends that task, not the node, so a failed assertion
        // (the `ci` profile runs them) would go unseen: any panic a node logged fails the
        // test that ran it.
        if !std::thread::panicking() {
            let log = self.log_text();
            let panics: Vec<&str> = log.lines().filter(|l| l.contains("panicked at")).collect();
            assert!(
                panics.is_empty(),
                "{} panicked ({} times; log {}):\n{}",
                self.name,
                panics.len(),
                self.log.display(),
                log.lines()
                    .skip_while(|l| !l.contains("panicked at"))
                    .take(20)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub certs: PathBuf,
    pub nodes: Vec<TestNode>,
}

impl Drop for TestCluster {
    /// The nodes go first (killed, their logs checked for panics), then the directory
    /// holding their data and logs.
    fn drop(&mut self) {
        self.nodes.clear();
    }
}

pub struct ClusterOptions {
    pub nodes: usize,
    /// Seed every node with the first node only (else with every other node).
    pub first_node_as_seed: bool,
    pub extra_args: Vec<String>,
    /// Give every node a Redis-protocol port (`--resp`).
    pub resp: bool,
    /// Name nodes by DNS: every node advertises `localhost:PORT` and is seeded with such
    /// names instead of IP addresses (every socket still binds 127.0.0.1).
    pub names: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            nodes: 3,
            first_node_as_seed: false,
            extra_args: Vec::new(),
            resp: false,
            names: false,
        }
    }
}

impl TestCluster {
    /// Creates the credential and starts every node (without waiting for them).
    pub fn start(options: ClusterOptions) -> TestCluster {
        // CHORUS_TEST_KEEP=1 keeps the data directories and logs for a post-mortem.
        let keep = std::env::var_os("CHORUS_TEST_KEEP").is_some();
        let dir = tempfile::Builder::new()
            .prefix("chorus-test-")
            .disable_cleanup(keep)
            .tempdir()
            .expect("tempdir");
        if keep {
            eprintln!("keeping {}", dir.path().display());
        }
        let certs = dir.path().join("certs");
        let status = Command::new(chorus_bin())
            .args(["certs", "init", "--dir"])
            .arg(&certs)
            .stdout(Stdio::null())
            .status()
            .expect("run certs init");
        assert!(status.success(), "chorus certs init failed");
        let listens: Vec<SocketAddr> = (0..options.nodes)
            .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
            .collect();
        let mut nodes = Vec::new();
        for i in 0..options.nodes {
            let seeds = if options.first_node_as_seed {
                if i == 0 {
                    Vec::new()
                } else {
                    vec![listens[0]]
                }
            } else {
                listens
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, a)| *a)
                    .collect()
            };
            let name = format!("n{}", i + 1);
            nodes.push(TestNode {
                data: dir.path().join(&name),
                log: dir.path().join(format!("{name}.log")),
                name,
                listen: listens[i],
                http: SocketAddr::from(([127, 0, 0, 1], free_port())),
                resp: options
                    .resp
                    .then(|| SocketAddr::from(([127, 0, 0, 1], free_port()))),
                seeds,
                certs: Some(certs.clone()),
                extra_args: options.extra_args.clone(),
                names: options.names,
                child: None,
            });
        }
        let mut cluster = TestCluster { dir, certs, nodes };
        for node in &mut cluster.nodes {
            node.start();
        }
        cluster
    }

    /// A node that is not started yet, configured to join this cluster.
    pub fn add_node(
        &mut self,
        name: &str,
        certs: Option<PathBuf>,
        extra_args: Vec<String>,
    ) -> usize {
        self.nodes.push(TestNode {
            data: self.dir.path().join(name),
            log: self.dir.path().join(format!("{name}.log")),
            name: name.to_string(),
            listen: SocketAddr::from(([127, 0, 0, 1], free_port())),
            http: SocketAddr::from(([127, 0, 0, 1], free_port())),
            resp: None,
            seeds: vec![self.nodes[0].listen],
            certs,
            extra_args,
            names: self.nodes[0].names,
            child: None,
        });
        self.nodes.len() - 1
    }

    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("---- {} ----\n{}", n.name, n.log_text()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl TestNode {
    /// Waits until `/health` answers 200.
    pub fn wait_healthy(&self) {
        let url = self.url();
        wait_for(
            &format!("{} to serve HTTP", self.name),
            CLUSTER_DEADLINE,
            || match crate::api::get(&url, "/health") {
                Ok(r) if r.status == 200 => Ok(()),
                Ok(r) => Err(format!("HTTP {}", r.status)),
                Err(e) => Err(e),
            },
        );
    }

    /// `kill -9` then start again with the same data directory.
    pub fn restart(&mut self) {
        self.kill9();
        self.start();
    }

    /// Replaces the extra `chorus start` flags used from the next start on.
    pub fn set_extra_args(&mut self, args: Vec<String>) {
        self.extra_args = args;
    }
}

impl TestCluster {
    /// Indexes of the nodes whose process is running.
    pub fn running(&mut self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_running())
            .collect()
    }

    /// Waits until every node in `observers` lists exactly the names in `alive` as `alive`
    /// (and nothing else as alive). Returns how long it took.
    pub fn wait_alive(&self, observers: &[usize], alive: &[&str]) -> Duration {
        let started = Instant::now();
        let mut want: Vec<String> = alive.iter().map(|s| s.to_string()).collect();
        want.sort();
        for &i in observers {
            let node = &self.nodes[i];
            let url = node.url();
            wait_for(
                &format!("{} to see {want:?} alive", node.name),
                CLUSTER_DEADLINE,
                || {
                    let members = crate::api::members(&url)?;
                    let mut seen: Vec<String> = members
                        .iter()
                        .filter(|(_, (s, _))| s == "alive")
                        .map(|(n, _)| n.clone())
                        .collect();
                    seen.sort();
                    if seen == want {
                        Ok(())
                    } else {
                        Err(format!("{members:?}"))
                    }
                },
            );
        }
        started.elapsed()
    }

    /// Waits until every node in `observers` shows `name` in `state` (`/status`). Returns
    /// how long it took.
    pub fn wait_state(&self, observers: &[usize], name: &str, state: &str) -> Duration {
        let started = Instant::now();
        for &i in observers {
            let url = self.url(i);
            wait_for(
                &format!("{} to see {name} {state}", self.nodes[i].name),
                CLUSTER_DEADLINE,
                || {
                    let members = crate::api::members(&url)?;
                    match members.get(name) {
                        Some((s, _)) if s == state => Ok(()),
                        other => Err(format!("{other:?}")),
                    }
                },
            );
        }
        started.elapsed()
    }

    /// Starts every node, waits for each to serve HTTP and for all to see each other alive.
    pub fn start_converged(options: ClusterOptions) -> TestCluster {
        let cluster = TestCluster::start(options);
        for node in &cluster.nodes {
            node.wait_healthy();
        }
        let names: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let all: Vec<usize> = (0..cluster.nodes.len()).collect();
        cluster.wait_alive(&all, &names);
        cluster
    }

    pub fn url(&self, i: usize) -> String {
        self.nodes[i].url()
    }

    pub fn index_of(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }
}

/// `chorus start` flags as a Vec.
pub fn args(flags: &[&str]) -> Vec<String> {
    flags.iter().map(|s| s.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_with_log(dir: &Path, text: &str) -> TestNode {
        let log = dir.join("n1.log");
        std::fs::write(&log, text).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        TestNode {
            name: "n1".into(),
            listen: addr,
            http: addr,
            resp: None,
            data: dir.join("n1"),
            log,
            seeds: Vec::new(),
            certs: None,
            extra_args: Vec::new(),
            names: false,
            child: None,
        }
    }

    #[test]
    #[should_panic(expected = "n1 panicked (1 times")]
    fn a_panic_in_a_node_log_fails_the_test_that_ran_it() {
        let dir = tempfile::tempdir().unwrap();
        drop(node_with_log(
            dir.path(),
            "INFO started\nthread 'tokio-runtime-worker' panicked at node/core/src/healing.rs:1:1:\nboom\n",
        ));
    }

    #[test]
    fn a_clean_node_log_passes() {
        let dir = tempfile::tempdir().unwrap();
        drop(node_with_log(dir.path(), "INFO started\nINFO stopped\n"));
    }
}
