//! `chorus dev`: a local cluster in one command. It creates (or reuses) the directory and
//! the cluster credential, starts one `chorus start` child process per node on
//! 127.0.0.1 (QUIC on base+i, HTTP on base+1000+i, RESP on base+2000+i), waits until each
//! answers `/health`, prints the URLs (HTTP, the dashboard at /ui, RESP), and on Ctrl-C or
//! SIGTERM stops every child: SIGTERM, a bounded wait, then SIGKILL. A child that dies on
//! its own is reported with its log; the others keep
//! running. This module only supervises processes; it never talks QUIC or touches data.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::time::Instant;

use crate::cli::{CliError, CliResult, DevArgs, SyncArg};
use chorus_api::client::{BaseUrl, HttpClient};

/// How long every node gets to answer `/health` after it was started.
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
/// How long stopped nodes get to flush and exit after SIGTERM before SIGKILL.
const STOP_DEADLINE: Duration = Duration::from_secs(10);
const HEALTH_POLL: Duration = Duration::from_millis(200);
/// Lines of a dead node's log shown on the terminal.
const LOG_TAIL_LINES: usize = 10;
/// HTTP ports are QUIC ports plus this (the contract's layout).
const HTTP_OFFSET: u16 = 1000;
/// RESP (Redis protocol) ports are QUIC ports plus this.
const RESP_OFFSET: u16 = 2000;

/// One node of the local cluster, as planned from the flags.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NodePlan {
    name: String,
    listen: SocketAddr,
    http: SocketAddr,
    resp: SocketAddr,
    data: PathBuf,
    log: PathBuf,
}

impl NodePlan {
    fn url(&self) -> String {
        format!("http://{}", self.http)
    }
}

/// The nodes `--nodes` and `--base-port` describe, or why they cannot exist.
fn plan(nodes: usize, base_port: u16, dir: &Path) -> Result<Vec<NodePlan>, String> {
    if nodes == 0 {
        return Err("--nodes must be at least 1".into());
    }
    let highest = base_port as usize + RESP_OFFSET as usize + nodes;
    if highest > u16::MAX as usize {
        return Err(format!(
            "--base-port {base_port} with {nodes} nodes needs port {highest}, above 65535"
        ));
    }
    Ok((1..=nodes)
        .map(|i| {
            let name = format!("n{i}");
            let quic = base_port + i as u16;
            NodePlan {
                listen: SocketAddr::from(([127, 0, 0, 1], quic)),
                http: SocketAddr::from(([127, 0, 0, 1], quic + HTTP_OFFSET)),
                resp: SocketAddr::from(([127, 0, 0, 1], quic + RESP_OFFSET)),
                data: dir.join(&name),
                log: dir.join(format!("{name}.log")),
                name,
            }
        })
        .collect())
}

/// The `chorus start` arguments of `node`; every other node is a seed.
fn start_args(
    node: &NodePlan,
    nodes: &[NodePlan],
    certs: &Path,
    n: usize,
    sync: SyncArg,
) -> Vec<String> {
    let mut args = vec![
        "start".to_string(),
        "--name".into(),
        node.name.clone(),
        "--listen".into(),
        node.listen.to_string(),
        "--http".into(),
        node.http.to_string(),
        "--resp".into(),
        node.resp.to_string(),
        "--data".into(),
        node.data.display().to_string(),
    ];
    let seeds: Vec<String> = nodes
        .iter()
        .filter(|other| other.name != node.name)
        .map(|other| other.listen.to_string())
        .collect();
    if !seeds.is_empty() {
        args.push("--seeds".into());
        args.push(seeds.join(","));
    }
    args.extend([
        "--certs".into(),
        certs.display().to_string(),
        "--n".into(),
        n.to_string(),
        "--sync".into(),
        match sync {
            SyncArg::Periodic => "periodic",
            SyncArg::Always => "always",
        }
        .into(),
    ]);
    args
}

/// Every port is tried before anything is started, so a clash fails at once, by name,
/// instead of as a node that dies during startup.
fn check_ports_free(nodes: &[NodePlan]) -> Result<(), String> {
    for node in nodes {
        UdpSocket::bind(node.listen).map_err(|e| {
            format!("UDP port {} (QUIC of {}) is not free: {e}; stop what uses it or pick another --base-port", node.listen.port(), node.name)
        })?;
        TcpListener::bind(node.http).map_err(|e| {
            format!("TCP port {} (HTTP of {}) is not free: {e}; stop what uses it or pick another --base-port", node.http.port(), node.name)
        })?;
        TcpListener::bind(node.resp).map_err(|e| {
            format!("TCP port {} (RESP of {}) is not free: {e}; stop what uses it or pick another --base-port", node.resp.port(), node.name)
        })?;
    }
    Ok(())
}

pub fn run(args: DevArgs) -> CliResult {
    let nodes = plan(args.nodes, args.base_port, &args.dir).map_err(CliError::usage)?;
    if args.n == 0 {
        return Err(CliError::usage("--n must be at least 1"));
    }
    // A cluster cannot keep more replicas than it has nodes; `chorus dev --nodes 1`
    // should just work, so cap N instead of refusing.
    let n = if args.n > nodes.len() {
        eprintln!(
            "chorus dev: replication factor capped at {0} because there are only {0} nodes",
            nodes.len()
        );
        nodes.len()
    } else {
        args.n
    };
    check_ports_free(&nodes).map_err(CliError::usage)?;
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| CliError::usage(format!("cannot create {}: {e}", args.dir.display())))?;
    let certs = cluster_credential(&args.dir)?;
    let exe = std::env::current_exe()
        .map_err(|e| CliError::failed(format!("cannot find the chorus executable: {e}")))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async {
        // Before any child exists, so a Ctrl-C during startup still stops them all.
        let signals = Signals::new()
            .map_err(|e| CliError::failed(format!("cannot listen for signals: {e}")))?;
        let mut cluster = Cluster {
            nodes: Vec::new(),
            signals,
        };
        eprintln!(
            "chorus dev: starting {} nodes; each node's log (stderr) goes to {}/<name>.log",
            nodes.len(),
            args.dir.display()
        );
        for node in &nodes {
            match spawn(&exe, node, &start_args(node, &nodes, &certs, n, args.sync)) {
                Ok(child) => cluster.nodes.push(Running {
                    plan: node.clone(),
                    child: Some(child),
                }),
                Err(e) => {
                    cluster.stop().await;
                    return Err(CliError::failed(format!("cannot start {}: {e}", node.name)));
                }
            }
        }
        cluster.supervise(&args.dir).await
    })
}

/// The cluster credential in `dir/certs`: the one already there (checked), or a new one.
fn cluster_credential(dir: &Path) -> Result<PathBuf, CliError> {
    let certs = dir.join("certs");
    if certs.exists() {
        crate::server::certs::load(&certs).map_err(|e| {
            CliError::usage(format!(
                "cannot reuse the credential in {}: {e}",
                certs.display()
            ))
        })?;
        eprintln!(
            "chorus dev: reusing the cluster credential in {}",
            certs.display()
        );
    } else {
        crate::server::certs::init(&certs, false).map_err(CliError::usage)?;
        eprintln!(
            "chorus dev: created a cluster credential in {}",
            certs.display()
        );
    }
    Ok(certs)
}

fn spawn(exe: &Path, node: &NodePlan, args: &[String]) -> std::io::Result<Child> {
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&node.log)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    writeln!(
        log,
        "=== chorus dev started {} at unix time {now}: {} {} ===",
        node.name,
        exe.display(),
        args.join(" ")
    )?;
    let stdout: File = log.try_clone()?;
    let mut command = Command::new(exe);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(log)
        // Its own process group: a Ctrl-C at the terminal reaches only `chorus dev`, which
        // then stops the nodes cleanly with SIGTERM.
        .process_group(0)
        // If this supervisor unwinds, no node is left behind.
        .kill_on_drop(true);
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe and the closure touches no memory of the parent.
    unsafe {
        // And if the supervisor is SIGKILLed, the kernel SIGTERMs the nodes.
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn()
}

struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

struct Running {
    plan: NodePlan,
    /// None once the process has exited and was reaped.
    child: Option<Child>,
}

struct Cluster {
    nodes: Vec<Running>,
    signals: Signals,
}

/// What woke the supervisor up.
enum Event {
    Stop,
    Exited(usize, std::io::Result<ExitStatus>),
    Tick,
}

impl Cluster {
    /// Waits for a signal, a child's exit, or (when `tick` is set) that much time.
    async fn next_event(&mut self, tick: Option<Duration>) -> Event {
        let exits: Vec<_> = self
            .nodes
            .iter_mut()
            .enumerate()
            .filter_map(|(i, node)| {
                node.child
                    .as_mut()
                    .map(|child| Box::pin(async move { (i, child.wait().await) }))
            })
            .collect();
        let any_exit = async {
            if exits.is_empty() {
                std::future::pending::<()>().await;
            }
            futures::future::select_all(exits).await.0
        };
        let ticker = async {
            match tick {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.signals.next() => Event::Stop,
            (i, status) = any_exit => Event::Exited(i, status),
            _ = ticker => Event::Tick,
        }
    }

    fn mark_exited(&mut self, i: usize, status: &std::io::Result<ExitStatus>) -> String {
        self.nodes[i].child = None;
        let node = &self.nodes[i].plan;
        let how = match status {
            Ok(status) => status.to_string(),
            Err(e) => format!("cannot tell how: {e}"),
        };
        format!(
            "{} exited ({how}); its log is {}",
            node.name,
            node.log.display()
        )
    }

    async fn supervise(mut self, dir: &Path) -> CliResult {
        if let Err(e) = self.wait_healthy().await {
            self.stop().await;
            return e.map_or(Ok(()), Err);
        }
        self.print_banner(dir);
        loop {
            match self.next_event(None).await {
                Event::Stop => break,
                Event::Exited(i, status) => {
                    let message = self.mark_exited(i, &status);
                    eprintln!("chorus dev: {message}; the other nodes keep running");
                    print_log_tail(&self.nodes[i].plan.log);
                    if self.nodes.iter().all(|n| n.child.is_none()) {
                        return Err(CliError::failed("every node has exited"));
                    }
                }
                Event::Tick => {}
            }
        }
        self.stop().await;
        Ok(())
    }

    /// Polls `/health` on every node until all answer 200. `Err(None)` means a signal
    /// asked to stop; `Err(Some(e))` a node that died or never became healthy.
    async fn wait_healthy(&mut self) -> Result<(), Option<CliError>> {
        let deadline = Instant::now() + STARTUP_DEADLINE;
        let mut pending: Vec<(usize, HttpClient)> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, node)| {
                let url =
                    BaseUrl::parse(&node.plan.url()).expect("a socket address makes a valid URL");
                (i, HttpClient::new(url).with_timeout(Duration::from_secs(1)))
            })
            .collect();
        loop {
            let mut still = Vec::new();
            for (i, mut client) in pending {
                if !client.get("/health").await.is_ok_and(|r| r.status == 200) {
                    still.push((i, client));
                }
            }
            pending = still;
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let node = &self.nodes[pending[0].0].plan;
                return Err(Some(CliError::failed(format!(
                    "{} did not answer {}/health within {} s; see its log {}",
                    node.name,
                    node.url(),
                    STARTUP_DEADLINE.as_secs(),
                    node.log.display()
                ))));
            }
            match self.next_event(Some(HEALTH_POLL)).await {
                Event::Stop => return Err(None),
                Event::Exited(i, status) => {
                    let message = self.mark_exited(i, &status);
                    print_log_tail(&self.nodes[i].plan.log);
                    return Err(Some(CliError::failed(format!(
                        "{message}; it died during startup"
                    ))));
                }
                Event::Tick => {}
            }
        }
    }

    fn print_banner(&self, dir: &Path) {
        let mut out = format!(
            "chorus dev: {} nodes up; data, credential and logs in {}\n",
            self.nodes.len(),
            dir.display()
        );
        for node in &self.nodes {
            let p = &node.plan;
            out.push_str(&format!(
                "  {}  {}  dashboard {}/ui  RESP {}  (QUIC {}, log {})\n",
                p.name,
                p.url(),
                p.url(),
                p.resp,
                p.listen,
                p.log.display()
            ));
        }
        let first = self.nodes[0].plan.url();
        out.push_str("try:\n");
        if first != "http://127.0.0.1:8001" {
            out.push_str(&format!("  export CHORUS_NODE={first}\n"));
        }
        out.push_str(
            "  chorus put demo greeting hello\n  chorus get demo greeting\n  chorus status\n",
        );
        let resp = self.nodes[0].plan.resp;
        out.push_str(&format!(
            "  redis-cli -h {} -p {} SET greeting hello   (the Redis protocol; bucket db0)\n",
            resp.ip(),
            resp.port()
        ));
        out.push_str("Ctrl-C stops the cluster.\n");
        print!("{out}");
        let _ = std::io::stdout().flush();
    }

    /// SIGTERM to every live node, a bounded wait for them to exit, SIGKILL for the rest
    /// (at once if a second Ctrl-C arrives).
    async fn stop(&mut self) {
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].child.is_some())
            .collect();
        if live.is_empty() {
            return;
        }
        eprintln!(
            "chorus dev: stopping {} nodes (up to {} s; Ctrl-C again to kill them now)",
            live.len(),
            STOP_DEADLINE.as_secs()
        );
        for &i in &live {
            if let Some(pid) = self.nodes[i].child.as_ref().and_then(Child::id) {
                // SAFETY: kill(2) with a pid we spawned and have not reaped yet.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGTERM);
                }
            }
        }
        let deadline = Instant::now() + STOP_DEADLINE;
        let mut forced = false;
        while self.nodes.iter().any(|n| n.child.is_some()) {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() || forced {
                break;
            }
            match self.next_event(Some(remaining)).await {
                Event::Exited(i, status) => {
                    self.nodes[i].child = None;
                    if !status.as_ref().is_ok_and(ExitStatus::success) {
                        let how = status
                            .map(|s| s.to_string())
                            .unwrap_or_else(|e| e.to_string());
                        eprintln!(
                            "chorus dev: {} stopped with {how}; see {}",
                            self.nodes[i].plan.name,
                            self.nodes[i].plan.log.display()
                        );
                    }
                }
                Event::Stop => forced = true,
                Event::Tick => {}
            }
        }
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                eprintln!("chorus dev: killing {} (SIGKILL)", node.plan.name);
                let _ = child.kill().await;
            }
        }
        eprintln!("chorus dev: stopped");
    }
}

/// The end of a node's log, so the reason it died is on the terminal.
fn print_log_tail(log: &Path) {
    let Ok(text) = std::fs::read_to_string(log) else {
        return;
    };
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
    if !tail.is_empty() {
        eprintln!("--- last lines of {} ---", log.display());
        for line in tail {
            eprintln!("  {line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_follow_the_port_layout() {
        let nodes = plan(3, 7000, Path::new("d")).unwrap();
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[0].name, "n1");
        assert_eq!(nodes[0].listen, "127.0.0.1:7001".parse().unwrap());
        assert_eq!(nodes[2].http, "127.0.0.1:8003".parse().unwrap());
        assert_eq!(nodes[2].resp, "127.0.0.1:9003".parse().unwrap());
        assert_eq!(nodes[1].data, Path::new("d/n2"));
        assert_eq!(nodes[1].log, Path::new("d/n2.log"));
        assert_eq!(nodes[0].url(), "http://127.0.0.1:8001");
    }

    #[test]
    fn plans_refuse_impossible_layouts() {
        assert!(plan(0, 7000, Path::new("d"))
            .unwrap_err()
            .contains("at least 1"));
        assert!(plan(3, 63534, Path::new("d"))
            .unwrap_err()
            .contains("above 65535"));
        assert!(plan(1, 63534, Path::new("d")).is_ok());
    }

    #[test]
    fn start_arguments_name_the_other_nodes_as_seeds() {
        let nodes = plan(3, 7000, Path::new("d")).unwrap();
        let args =
            start_args(&nodes[1], &nodes, Path::new("d/certs"), 3, SyncArg::Always).join(" ");
        assert_eq!(
            args,
            "start --name n2 --listen 127.0.0.1:7002 --http 127.0.0.1:8002 --resp 127.0.0.1:9002 --data d/n2 \
             --seeds 127.0.0.1:7001,127.0.0.1:7003 --certs d/certs --n 3 --sync always"
        );
        let single = plan(1, 7000, Path::new("d")).unwrap();
        assert!(
            !start_args(&single[0], &single, Path::new("c"), 1, SyncArg::Periodic)
                .contains(&"--seeds".to_string())
        );
    }

    #[test]
    fn busy_ports_are_named() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let http_port = held.local_addr().unwrap().port();
        let Some(base) = http_port.checked_sub(HTTP_OFFSET + 1) else {
            return;
        };
        let nodes = plan(1, base, Path::new("d")).unwrap();
        let err = check_ports_free(&nodes).unwrap_err();
        assert!(
            err.contains(&format!("TCP port {http_port} (HTTP of n1)")),
            "{err}"
        );
    }
}
