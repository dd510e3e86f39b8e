//! Deterministic simulation of a whole chorus cluster.
//!
//! N nodes run the production replica, coordinator, healer (hinted handoff, transfer,
//! anti-entropy, reaping), gossip membership shell and in-memory storage engine, all on one
//! single-threaded tokio runtime with paused (virtual) time, over a simulated message-level
//! network (`net`). Every random choice comes from RNGs seeded by the scenario's seed, so a
//! seed replays exactly; the event log's blake3 digest proves it.
//!
//! A scenario: start the cluster and wait for membership; run clients while a nemesis drops,
//! delays, duplicates and reorders messages, partitions nodes (symmetric and one-way),
//! crashes and restarts them and pauses them (GC-like stalls); then heal everything, wait
//! for quiescence (bounded), and check the invariants (`check`).

pub mod check;
pub mod net;
pub mod node;
pub mod props;
pub mod trace;
pub mod workload;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use chorus_core::object::Object;
use chorus_core::storage::{MemoryStorage, Storage};
use chorus_ring::Ring;

use net::{NetFaults, SimNet, MAX_INFLIGHT_PER_PEER};
use node::{Incarnation, NodeSettings, SimClock, SimNode};
use trace::Trace;
use workload::{Client, History, Outcome, Shared};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Faults {
    /// No faults at all (scripted scenarios).
    None,
    Light,
    Heavy,
}

impl std::str::FromStr for Faults {
    type Err = String;
    fn from_str(s: &str) -> Result<Faults, String> {
        match s {
            "none" => Ok(Faults::None),
            "light" => Ok(Faults::Light),
            "heavy" => Ok(Faults::Heavy),
            other => Err(format!("--faults is none, light or heavy, not {other:?}")),
        }
    }
}

impl std::fmt::Display for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Faults::None => "none",
            Faults::Light => "light",
            Faults::Heavy => "heavy",
        })
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub seed: u64,
    pub nodes: usize,
    pub faults: Faults,
    pub verbose: bool,
    /// Virtual time clients run while faults are injected.
    pub duration: Duration,
    pub clients: usize,
    pub keys: usize,
    /// In about half the scenarios the last node joins during the workload.
    pub late_join: bool,
    /// About one request in ten asks for a strict quorum (`pr`/`pw`).
    pub strict_quorums: bool,
    /// Test-only: writes answer with the first build's context (issue 14's bug); the
    /// checker must then find lost writes.
    pub old_answer_context: bool,
    /// One client following this script instead of `clients` random ones.
    pub script: Option<Vec<workload::Step>>,
    /// The nemesis also fails nodes' disks for a while (every write an I/O error), then
    /// lets them recover. Off by default, so the seeds of other runs replay unchanged.
    pub disk_faults: bool,
    /// Some writes carry a TTL, and every node's wall clock is skewed (at most
    /// [`MAX_CLOCK_SKEW_MS`] either way). Off by default, as `disk_faults`.
    pub ttl: bool,
    /// An operator changes the bucket's properties (`max_siblings`) through random nodes
    /// while clients run, and every node runs the properties reload loop. Off by default.
    pub props: bool,
}

/// With `ttl`, no node's clock is further than this from the true time.
pub const MAX_CLOCK_SKEW_MS: i64 = 500;

impl Options {
    pub fn new(seed: u64) -> Options {
        Options {
            seed,
            nodes: 5,
            faults: Faults::Light,
            verbose: false,
            duration: Duration::from_secs(30),
            clients: 4,
            keys: 6,
            late_join: true,
            strict_quorums: true,
            old_answer_context: false,
            script: None,
            disk_faults: false,
            ttl: false,
            props: false,
        }
    }

    /// The command that replays this scenario with every event printed.
    pub fn replay_command(&self) -> String {
        let mut command = format!(
            "cargo run -p chorus-tests --release --bin sim -- --seed {} --nodes {} --faults {} --duration {}",
            self.seed,
            self.nodes,
            self.faults,
            self.duration.as_secs()
        );
        if (self.clients, self.keys) != (4, 6) {
            command += &format!(" --clients {} --keys {}", self.clients, self.keys);
        }
        if !self.late_join {
            command += " --no-join";
        }
        if !self.strict_quorums {
            command += " --no-strict";
        }
        if self.old_answer_context {
            command += " --old-answer-context";
        }
        if self.disk_faults {
            command += " --disk-faults";
        }
        if self.ttl {
            command += " --ttl";
        }
        if self.props {
            command += " --props";
        }
        if self.script.is_some() {
            command += " (scripted: replay the test instead)";
        }
        command + " --verbose"
    }
}

#[derive(Clone, Debug)]
pub struct Report {
    pub seed: u64,
    pub digest: String,
    pub failures: Vec<String>,
    pub writes: usize,
    pub acked: usize,
    pub reads: u64,
    pub reads_ok: u64,
    pub events: u64,
    pub messages: u64,
    pub virtual_ms: u64,
    /// What the healing paths did, summed over every incarnation: shows a scenario
    /// exercised them.
    pub healing: Healing,
    /// Most siblings any read or final state held.
    pub max_siblings: usize,
    /// Acknowledged tombstones no longer stored anywhere at the end (reaped).
    pub tombstones_reaped: usize,
    /// Acknowledged values with a TTL gone at the end, their expiry past.
    pub expired: usize,
    /// Acknowledged writes lost (each is also a failure).
    pub lost: usize,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Healing {
    pub read_repairs: u64,
    pub hints_queued: u64,
    pub hints_delivered: u64,
    pub hints_dropped: u64,
    pub aae_keys_repaired: u64,
    pub crashes: u64,
    /// Storage errors the nodes saw (with `disk_faults`): each failed its node's storage
    /// until a healing round's probe found the disk working.
    pub storage_errors: u64,
}

impl std::ops::AddAssign for Healing {
    fn add_assign(&mut self, o: Healing) {
        self.read_repairs += o.read_repairs;
        self.hints_queued += o.hints_queued;
        self.hints_delivered += o.hints_delivered;
        self.hints_dropped += o.hints_dropped;
        self.storage_errors += o.storage_errors;
        self.aae_keys_repaired += o.aae_keys_repaired;
        self.crashes += o.crashes;
    }
}

thread_local! {
    static PANICS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Records panics per thread (tokio catches a task's panic; the scenario must still fail).
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let _ = PANICS.try_with(|p| p.borrow_mut().push(info.to_string()));
            previous(info);
        }));
    });
}

/// Runs one scenario to the end and judges it.
pub fn run(options: &Options) -> Report {
    install_panic_hook();
    PANICS.with(|p| p.borrow_mut().clear());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(scenario(options.clone()))
    }));
    drop(runtime);
    let mut report = match outcome {
        Ok(report) => report,
        Err(_) => Report {
            seed: options.seed,
            digest: String::new(),
            failures: Vec::new(),
            writes: 0,
            acked: 0,
            reads: 0,
            reads_ok: 0,
            events: 0,
            messages: 0,
            virtual_ms: 0,
            healing: Healing::default(),
            max_siblings: 0,
            tombstones_reaped: 0,
            expired: 0,
            lost: 0,
        },
    };
    for panic in PANICS.with(|p| std::mem::take(&mut *p.borrow_mut())) {
        report.failures.push(format!("panic: {panic}"));
    }
    report
}

/// Mixes the scenario seed with a purpose, so each RNG gets its own stream.
fn sub_seed(seed: u64, purpose: u64) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.update(&purpose.to_le_bytes());
    u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
}

struct Cluster {
    net: Arc<SimNet>,
    nodes: Vec<SimNode>,
    names: Vec<String>,
    settings: NodeSettings,
    seed: u64,
    incarnations: Mutex<u64>,
    started: Mutex<Vec<Arc<Incarnation>>>,
}

impl Cluster {
    fn start(self: &Arc<Self>, index: usize) -> Arc<Incarnation> {
        let id = {
            let mut next = self.incarnations.lock().expect("incarnations");
            *next += 1;
            *next
        };
        let node = self.nodes[index].start(
            &self.net,
            &self.settings,
            &self.names,
            id,
            sub_seed(self.seed, 1000 + id),
        );
        assert_eq!(
            node.duties,
            chorus_core::assembly::DUTIES,
            "a simulated node runs exactly the duties the core declares"
        );
        self.started
            .lock()
            .expect("incarnations")
            .push(node.clone());
        tokio::spawn(self.clone().supervise(index, node.clone()));
        node
    }

    /// What a supervisor (systemd's `Restart=on-failure`) does for a node whose storage
    /// gave up: the process exits, and it is started again once its disk takes writes (a
    /// node does not start on a disk that refuses its identity).
    async fn supervise(self: Arc<Self>, index: usize, node: Arc<Incarnation>) {
        let mut gave_up = node.storage_gave_up.clone();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if !node.is_alive() {
                return;
            }
            if gave_up.borrow_and_update().is_some() {
                break;
            }
        }
        self.net.trace.log(format!(
            "{}'s storage gave up: the process exits",
            node.name
        ));
        self.crash(index);
        while self.nodes[index].disk.writes_fail() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        if self.net.current(&node.name).is_none() {
            self.start(index);
        }
    }

    fn healing(&self) -> Healing {
        let started = self.started.lock().expect("incarnations");
        let mut h = Healing {
            crashes: started.len().saturating_sub(self.nodes.len()) as u64,
            ..Healing::default()
        };
        for node in started.iter() {
            let m = &node.metrics;
            h.read_repairs += m.read_repairs.get();
            h.hints_queued += m.hints_queued.get();
            h.hints_delivered += m.hints_delivered.get();
            h.hints_dropped += m.hints_dropped.get();
            h.storage_errors += m.storage_errors.get();
            h.aae_keys_repaired += m.aae_keys_repaired.get();
        }
        h
    }

    fn crash(&self, index: usize) {
        let name = &self.names[index];
        if let Some(node) = self.net.current(name) {
            node.kill();
            self.net.set_down(name);
            self.net
                .trace
                .log(format!("{name} crashes (incarnation {})", node.id));
        }
    }

    fn disks(&self) -> Vec<(String, Arc<MemoryStorage>)> {
        self.nodes
            .iter()
            .map(|n| (n.name.clone(), n.disk.clone()))
            .collect()
    }

    /// Hint bound: no disk holds more hints for one owner than the replicas allow.
    fn check_bounds(&self, history: &Mutex<History>) {
        for node in &self.nodes {
            for (owner, count) in node.disk.hint_owners().expect("memory storage") {
                if count > self.settings.max_hints_per_owner {
                    history.lock().expect("history").violations.push(format!(
                        "{} holds {count} hints for {owner}, over the bound of {}",
                        node.name, self.settings.max_hints_per_owner
                    ));
                }
            }
        }
    }

    /// Why the cluster has not converged yet, or None when it has: everyone up and agreeing
    /// on membership, no hints left, every primary holding the same state of every key and
    /// any other copy superseded by it.
    fn divergence(&self, members: &[String], keys: &[String]) -> Option<String> {
        let mut names = members.to_vec();
        names.sort();
        for name in members {
            let Some(node) = self.net.current(name) else {
                return Some(format!("{name} is down"));
            };
            let view = node.gossip.view.read().expect("view").clone();
            if view.ring.members() != names.as_slice() {
                return Some(format!(
                    "{name} sees ring members {:?}",
                    view.ring.members()
                ));
            }
            if !view.unreachable.is_empty() {
                let mut unreachable: Vec<&String> = view.unreachable.iter().collect();
                unreachable.sort();
                return Some(format!("{name} sees {unreachable:?} unreachable"));
            }
            if let Some(m) = node
                .gossip
                .members()
                .iter()
                .find(|m| m.state != chorus_gossip::MemberState::Alive)
            {
                return Some(format!("{name} sees {} as {}", m.name, m.state));
            }
        }
        for node in self.nodes.iter().filter(|n| members.contains(&n.name)) {
            let hints = node.disk.hint_owners().expect("memory storage");
            if !hints.is_empty() {
                return Some(format!("{} still holds hints {hints:?}", node.name));
            }
        }
        let ring = Ring::new(
            self.settings.ring_size,
            self.settings.n,
            names.iter().cloned(),
        )
        .expect("ring");
        for key in keys {
            let partition = ring.partition_of(workload::BUCKET, key.as_bytes());
            let primaries = ring.primaries(partition);
            let states: BTreeMap<&str, Option<Object>> = self
                .nodes
                .iter()
                .map(|n| {
                    (
                        n.name.as_str(),
                        check::stored(&n.disk, self.settings.ring_size, key),
                    )
                })
                .collect();
            let reference = &states[primaries[0].as_str()];
            for p in primaries {
                if &states[p.as_str()] != reference {
                    return Some(format!(
                        "key {key}: primaries {} and {p} differ: {:?} vs {:?}",
                        primaries[0],
                        reference,
                        states[p.as_str()]
                    ));
                }
            }
            for (name, state) in &states {
                if primaries.iter().any(|p| p == name) {
                    continue;
                }
                if let Some(state) = state {
                    if !reference.as_ref().is_some_and(|r| r.descends(state)) {
                        return Some(format!("key {key}: non-owner {name} holds {state:?}, which the owners' {reference:?} lacks"));
                    }
                }
            }
        }
        None
    }
}

/// After heal: the stored properties versions judged against the operator's changes, and
/// every node's cache on the winner within 90 s (three forced reloads).
async fn props_converge(cluster: &Cluster, changes: &props::Changes) -> Vec<String> {
    let disks: Vec<Arc<MemoryStorage>> = cluster.nodes.iter().map(|n| n.disk.clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let stored = props::stored(&disks, cluster.settings.ring_size);
        let (mut problems, expected) = props::check(&stored, &changes.lock().expect("changes"));
        let stale: Vec<String> = cluster
            .names
            .iter()
            .filter_map(|name| cluster.net.current(name))
            .filter(|n| n.coordinator.props().get(workload::BUCKET) != expected)
            .map(|n| {
                format!(
                    "{} holds {:?}",
                    n.name,
                    n.coordinator.props().get(workload::BUCKET)
                )
            })
            .collect();
        if stale.is_empty() || Instant::now() >= deadline {
            if !stale.is_empty() {
                let holders: Vec<&str> = cluster
                    .nodes
                    .iter()
                    .filter(|n| {
                        !props::stored(&[n.disk.clone()], cluster.settings.ring_size).is_empty()
                    })
                    .map(|n| n.name.as_str())
                    .collect();
                problems.push(format!(
                    "bucket properties not converged 90 s after heal on {expected:?} (stored on {holders:?}): {stale:?}"
                ));
            }
            return problems;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn scenario(options: Options) -> Report {
    let trace = Arc::new(Trace::new(options.verbose));
    let net = SimNet::new(
        StdRng::seed_from_u64(sub_seed(options.seed, 1)),
        trace.clone(),
    );
    let names: Vec<String> = (1..=options.nodes).map(|i| format!("n{i}")).collect();
    let settings = NodeSettings {
        old_answer_context: options.old_answer_context,
        ..NodeSettings::default()
    };
    // Its own stream, so runs without `ttl` draw exactly what they drew before.
    let mut skews = StdRng::seed_from_u64(sub_seed(options.seed, 7));
    let cluster = Arc::new(Cluster {
        net: net.clone(),
        nodes: names
            .iter()
            .map(|name| SimNode {
                name: name.clone(),
                disk: Arc::new(MemoryStorage::new()),
                clock: Arc::new(SimClock::new(match options.ttl {
                    true => skews.random_range(-MAX_CLOCK_SKEW_MS..=MAX_CLOCK_SKEW_MS),
                    false => 0,
                })),
            })
            .collect(),
        names: names.clone(),
        settings: settings.clone(),
        seed: options.seed,
        incarnations: Mutex::new(0),
        started: Mutex::new(Vec::new()),
    });
    trace.log(format!(
        "scenario seed {} nodes {} faults {} duration {:?}",
        options.seed, options.nodes, options.faults, options.duration
    ));
    let mut failures = Vec::new();
    // In some scenarios the last node joins later, while clients run: ownership moves to
    // it and ownership transfer runs under faults.
    let mut plan = StdRng::seed_from_u64(sub_seed(options.seed, 3));
    let late_join = (options.late_join && options.nodes > settings.n && plan.random_bool(0.5))
        .then(|| Duration::from_millis(plan.random_range(0..options.duration.as_millis() as u64)));
    let initial: Vec<String> = if late_join.is_some() {
        names[..names.len() - 1].to_vec()
    } else {
        names.clone()
    };
    for i in 0..initial.len() {
        cluster.start(i);
    }
    let keys: Vec<String> = (0..options.keys).map(|k| format!("k{k}")).collect();

    // Membership first: the cluster must form (bounded) before clients start.
    let formed = Instant::now() + Duration::from_secs(30);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        match cluster.divergence(&initial, &[]) {
            None => break,
            Some(why) if Instant::now() >= formed => {
                failures.push(format!(
                    "membership did not converge within 30 s of start: {why}"
                ));
                break;
            }
            Some(_) => {}
        }
    }
    trace.log("cluster formed".to_string());

    let disks = cluster.disks();
    let ring_size = settings.ring_size;
    let shared = Arc::new(Shared {
        net: net.clone(),
        history: Mutex::new(History::default()),
        next_id: Mutex::new(0),
        on_ack: Box::new(move |write, object, violations| {
            check::check_ack(&disks, ring_size, write, object, violations)
        }),
        on_read: Box::new(|key, object, history| {
            check::check_state(history, key, object, "a read")
        }),
    });
    let fault_end = Instant::now() + options.duration;
    let mut clients = Vec::new();
    let count = if options.script.is_some() {
        1
    } else {
        options.clients
    };
    for index in 0..count {
        let client = Client {
            index,
            rng: StdRng::seed_from_u64(sub_seed(options.seed, 100 + index as u64)),
            keys: options.keys,
            nodes: names.clone(),
            n: settings.n,
            contexts: BTreeMap::new(),
            strict_quorums: options.strict_quorums,
            ttl: options.ttl,
            script: options.script.clone(),
        };
        clients.push(tokio::spawn(client.run(shared.clone(), fault_end)));
    }
    let props_changes = props::Changes::default();
    if options.props {
        tokio::spawn(props::operate(
            net.clone(),
            names.clone(),
            sub_seed(options.seed, 9),
            fault_end,
            props_changes.clone(),
        ));
    }
    if let Some(after) = late_join {
        let cluster = cluster.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let last = cluster.names.len() - 1;
            if cluster.net.current(&cluster.names[last]).is_none() {
                cluster
                    .net
                    .trace
                    .log(format!("{} joins the cluster", cluster.names[last]));
                cluster.start(last);
            }
        });
    }
    let nemesis = tokio::spawn(nemesis(
        cluster.clone(),
        shared.clone(),
        options.clone(),
        fault_end,
    ));
    let _ = nemesis.await;
    for client in clients {
        let _ = client.await;
    }

    // Heal everything, then wait (bounded) for the cluster to converge.
    trace.log("heal: network calm, partitions removed, every node running".to_string());
    net.heal_all();
    net.set_faults(NetFaults::calm());
    for node in &cluster.nodes {
        node.disk.set_write_failure(None);
    }
    net.unpause_all();
    for i in 0..names.len() {
        if net.current(&names[i]).is_none() {
            cluster.start(i);
        }
    }
    let quiet = Instant::now();
    let bound = Duration::from_secs(300);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        match cluster.divergence(&names, &keys) {
            None => {
                trace.log(format!(
                    "converged {} ms after heal",
                    quiet.elapsed().as_millis()
                ));
                break;
            }
            Some(why) if quiet.elapsed() >= bound => {
                failures.push(format!(
                    "not converged {} s after heal: {why}",
                    bound.as_secs()
                ));
                break;
            }
            Some(_) => {}
        }
    }
    if options.props {
        failures.extend(props_converge(&cluster, &props_changes).await);
    }
    cluster.check_bounds(&shared.history);
    if net.max_inflight() > MAX_INFLIGHT_PER_PEER {
        failures.push(format!(
            "{} concurrent requests to one peer, over the bound of {MAX_INFLIGHT_PER_PEER}",
            net.max_inflight()
        ));
    }

    // Final judgement over every replica's state.
    let mut history = std::mem::take(&mut *shared.history.lock().expect("history"));
    let mut finals = BTreeMap::new();
    for key in &keys {
        let mut merged: Option<Object> = None;
        for node in &cluster.nodes {
            if let Some(state) = check::stored(&node.disk, ring_size, key) {
                check::check_state(
                    &mut history,
                    key,
                    &state,
                    &format!("{}'s storage", node.name),
                );
                merged = Some(merged.map_or(state.clone(), |m| m.sync(&state)));
            }
        }
        if let Some(m) = merged {
            finals.insert(key.clone(), m);
        }
    }
    check::check_final(&mut history, &finals, node::SIM_EPOCH_MS + trace.now_ms());
    failures.extend(history.violations.iter().cloned());
    for f in &failures {
        trace.log(format!("FAILURE: {f}"));
    }

    for node in &cluster.nodes {
        if let Some(n) = net.current(&node.name) {
            n.kill();
        }
    }
    let healing = cluster.healing();
    cluster.started.lock().expect("incarnations").clear();
    net.clear();
    let acked = history
        .writes
        .values()
        .filter(|w| matches!(w.outcome, Outcome::Acked(_)))
        .count();
    Report {
        seed: options.seed,
        digest: trace.digest(),
        failures,
        writes: history.writes.len(),
        acked,
        reads: history.reads,
        reads_ok: history.reads_ok,
        events: trace.events(),
        messages: net.messages(),
        virtual_ms: trace.now_ms(),
        healing,
        max_siblings: history.max_siblings,
        tombstones_reaped: history.tombstones_reaped,
        expired: history.expired,
        lost: history.lost,
    }
}

/// With probability 1/4, when no disk is failing: one node's disk fails every write (an
/// I/O error, as a full disk does) for `hold`, then works again. The node must refuse
/// requests meanwhile, acknowledge nothing it did not store, and recover by its healing
/// rounds' probe.
fn fail_a_disk(
    cluster: &Arc<Cluster>,
    rng: &mut StdRng,
    failing: &Arc<Mutex<Option<usize>>>,
    hold: Duration,
) {
    if !rng.random_bool(0.25) {
        return;
    }
    let index = rng.random_range(0..cluster.nodes.len());
    let node = &cluster.nodes[index];
    // A node restarted on a failing disk would not start (it writes its identity), so
    // only running nodes' disks fail, and a node whose disk fails is not crashed.
    let mut current = failing.lock().expect("disk fault");
    if current.is_some() || cluster.net.current(&node.name).is_none() {
        return;
    }
    *current = Some(index);
    drop(current);
    cluster.net.trace.log(format!(
        "{}'s disk fails every write for {hold:?}",
        node.name
    ));
    node.disk.set_write_failure(Some("simulated disk failure"));
    let (cluster, failing) = (cluster.clone(), failing.clone());
    tokio::spawn(async move {
        tokio::time::sleep(hold).await;
        let node = &cluster.nodes[index];
        cluster
            .net
            .trace
            .log(format!("{}'s disk works again", node.name));
        node.disk.set_write_failure(None);
        *failing.lock().expect("disk fault") = None;
    });
}

/// A non-transitive partition (issue 25): every node reaches only its two neighbours in
/// the ring of names (with three nodes or fewer, one random pair is cut and both reach the
/// third), both ways, for 2 to 15 s. Gossip still carries every heartbeat second-hand, so
/// only a node's own failed calls can tell it whom it cannot reach. One at a time.
fn ring_partition(
    net: &Arc<SimNet>,
    names: &[String],
    rng: &mut StdRng,
    active: &Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering;
    let count = names.len();
    if count < 3 || active.swap(true, Ordering::SeqCst) {
        return;
    }
    let hold = Duration::from_millis(rng.random_range(2000..15_000));
    let mut pairs = Vec::new();
    if count <= 3 {
        let a = rng.random_range(0..count);
        let b = (a + 1 + rng.random_range(0..count - 1)) % count;
        pairs.push((names[a].clone(), names[b].clone()));
        pairs.push((names[b].clone(), names[a].clone()));
    } else {
        for (i, a) in names.iter().enumerate() {
            for (j, b) in names.iter().enumerate() {
                let apart = (i + count - j) % count;
                if i != j && apart != 1 && apart != count - 1 {
                    pairs.push((a.clone(), b.clone()));
                }
            }
        }
    }
    net.trace.log(format!(
        "ring partition: {} links cut (each node reaches only its ring neighbours) for {hold:?}",
        pairs.len()
    ));
    for (a, b) in &pairs {
        net.block(a, b);
    }
    let (net, active) = (net.clone(), active.clone());
    tokio::spawn(async move {
        tokio::time::sleep(hold).await;
        net.trace
            .log(format!("ring partition healed: {} links", pairs.len()));
        for (a, b) in &pairs {
            net.unblock(a, b);
        }
        active.store(false, Ordering::SeqCst);
    });
}

/// Injects faults until `end`: message loss, duplication, delay and slow paths; symmetric
/// and one-way partitions; (heavy) non-transitive ring partitions; crashes with restarts;
/// pauses; with `disk_faults`, failing disks.
async fn nemesis(cluster: Arc<Cluster>, shared: Arc<Shared>, options: Options, end: Instant) {
    if options.faults == Faults::None {
        return;
    }
    let mut rng = StdRng::seed_from_u64(sub_seed(options.seed, 2));
    let heavy = options.faults == Faults::Heavy;
    let net = cluster.net.clone();
    let names = cluster.names.clone();
    let max_down = if heavy { (names.len() - 1).max(1) } else { 1 };
    // Disk faults draw from their own stream, so the other faults of a seed stay the same.
    let mut disk_rng = StdRng::seed_from_u64(sub_seed(options.seed, 9));
    let disk_failing: Arc<Mutex<Option<usize>>> = Arc::default();
    // So do non-transitive partitions (heavy only), so the other faults of a seed stay the
    // same as before they existed.
    let mut ring_rng = StdRng::seed_from_u64(sub_seed(options.seed, 10));
    let ring_cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
    loop {
        let wait = if heavy {
            rng.random_range(300..2500)
        } else {
            rng.random_range(2000..6000)
        };
        tokio::time::sleep(Duration::from_millis(wait)).await;
        cluster.check_bounds(&shared.history);
        if Instant::now() >= end {
            return;
        }
        let hold = Duration::from_millis(if heavy {
            rng.random_range(500..12_000)
        } else {
            rng.random_range(1000..6000)
        });
        if options.disk_faults {
            fail_a_disk(&cluster, &mut disk_rng, &disk_failing, hold);
        }
        if heavy && ring_rng.random_bool(0.12) {
            ring_partition(&net, &names, &mut ring_rng, &ring_cut);
        }
        match rng.random_range(0..6) {
            0 => {
                let max_drop = if heavy { 0.2 } else { 0.03 };
                let faults = NetFaults {
                    drop: rng.random_range(0.0..max_drop),
                    duplicate: rng.random_range(0.0..if heavy { 0.1 } else { 0.02 }),
                    delay_ms: (
                        1,
                        if heavy {
                            rng.random_range(2..150)
                        } else {
                            rng.random_range(2..20)
                        },
                    ),
                    slow: rng.random_range(0.0..if heavy { 0.05 } else { 0.01 }),
                    slow_ms: if heavy {
                        rng.random_range(100..3000)
                    } else {
                        rng.random_range(50..500)
                    },
                };
                net.set_faults(faults);
            }
            1 | 2 => {
                // A partition: one side against the rest, both ways or one way.
                let mut side: Vec<&String> =
                    names.iter().filter(|_| rng.random_bool(0.4)).collect();
                if side.is_empty() || side.len() == names.len() {
                    side = vec![&names[rng.random_range(0..names.len())]];
                }
                let one_way = rng.random_bool(0.35);
                let mut pairs = Vec::new();
                for a in &side {
                    for b in names.iter().filter(|b| !side.contains(b)) {
                        pairs.push(((*a).clone(), b.clone()));
                        if !one_way {
                            pairs.push((b.clone(), (*a).clone()));
                        }
                    }
                }
                net.trace.log(format!(
                    "partition {side:?} {} the rest for {hold:?}",
                    if one_way {
                        "cannot send to"
                    } else {
                        "cut from"
                    }
                ));
                for (a, b) in &pairs {
                    net.block(a, b);
                }
                let net = net.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(hold).await;
                    net.trace
                        .log(format!("partition healed: {} links", pairs.len()));
                    for (a, b) in &pairs {
                        net.unblock(a, b);
                    }
                });
            }
            3 | 4 => {
                let down = names.iter().filter(|n| net.current(n).is_none()).count();
                let index = rng.random_range(0..names.len());
                if down >= max_down
                    || net.current(&names[index]).is_none()
                    || *disk_failing.lock().expect("disk fault") == Some(index)
                {
                    continue;
                }
                cluster.crash(index);
                let cluster = cluster.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(hold).await;
                    if cluster.net.current(&cluster.names[index]).is_none() {
                        cluster.start(index);
                    }
                });
            }
            _ => {
                let name = &names[rng.random_range(0..names.len())];
                net.trace.log(format!("{name} pauses for {hold:?}"));
                net.pause(name, Instant::now() + hold);
            }
        }
    }
}
