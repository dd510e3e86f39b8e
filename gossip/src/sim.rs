//! A deterministic in-process network of `Membership` instances, for this crate's tests,
//! its figures, and anyone wanting a gossiping cluster in a test: one virtual clock, one
//! seeded RNG, and message delivery with random latency, loss, partitions, crashes,
//! pauses and restarts. Same seed, same run.
//!
//! Owns: the scheduling of ticks and deliveries. Must not: be used by the node at run
//! time, or touch real time, sockets or threads.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::{ClusterConfig, Config};
use crate::membership::{Event, MemberState, Membership};
use crate::wire::GossipMessage;

/// The simulated network's settings.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Seeds the one RNG: same seed, same run.
    pub seed: u64,
    /// One-way latency, uniform in [min, max].
    pub latency_ms: (u64, u64),
    /// Chance that a message takes `tail_latency_ms` instead (a slow path, a retransmit).
    pub tail_probability: f64,
    /// The slow path's one-way latency, uniform in [min, max].
    pub tail_latency_ms: (u64, u64),
    /// Chance that a message is lost.
    pub drop_probability: f64,
    /// Each node's next tick comes `gossip_interval_ms` plus or minus up to this late.
    pub tick_jitter_ms: u64,
    /// Encode and decode every message through the wire format and record its size.
    pub check_wire: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            latency_ms: (1, 20),
            tail_probability: 0.0,
            tail_latency_ms: (0, 0),
            drop_probability: 0.0,
            tick_jitter_ms: 0,
            check_wire: false,
        }
    }
}

/// Message counters of a simulation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Messages sent.
    pub sent: u64,
    /// Messages lost (dropped, partitioned, or to a crashed node).
    pub dropped: u64,
    /// Messages handed to their receiver.
    pub delivered: u64,
    /// Only counted with `check_wire`.
    pub bytes: u64,
    /// Largest encoded message seen (`check_wire` only).
    pub max_message_bytes: usize,
    /// Messages over their sender's `max_message_bytes` (`check_wire` only).
    pub oversize: u64,
}

/// One simulated node.
pub struct SimNode {
    /// Its membership state machine.
    pub membership: Membership,
    /// Its configuration (the generation grows with each restart).
    pub config: Config,
    /// False once crashed, until restarted.
    pub running: bool,
    paused_until_ms: u64,
    incarnation: u64,
    /// Every event the node emitted, with the virtual time.
    pub events: Vec<(u64, Event)>,
}

enum Action {
    Tick {
        node: usize,
        incarnation: u64,
    },
    Deliver {
        to: usize,
        from: Option<usize>,
        from_address: String,
        message: GossipMessage,
    },
}

struct Scheduled {
    at: u64,
    seq: u64,
    action: Action,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// A simulated cluster: nodes, a virtual clock and the messages in flight.
pub struct Sim {
    cfg: SimConfig,
    now_ms: u64,
    rng: StdRng,
    nodes: Vec<SimNode>,
    queue: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    by_address: BTreeMap<String, usize>,
    groups: Option<Vec<usize>>,
    /// Message counters so far.
    pub stats: SimStats,
}

impl Sim {
    /// An empty network at virtual time 0.
    pub fn new(cfg: SimConfig) -> Sim {
        Sim {
            rng: StdRng::seed_from_u64(cfg.seed),
            cfg,
            now_ms: 0,
            nodes: Vec::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            by_address: BTreeMap::new(),
            groups: None,
            stats: SimStats::default(),
        }
    }

    /// The address node `i` gets from `node_config`.
    pub fn address(i: usize) -> String {
        format!("10.0.{}.{}:7000", i / 256, i % 256)
    }

    /// The name node `i` gets from `node_config`.
    pub fn name(i: usize) -> String {
        format!("n{i:03}")
    }

    /// A default config for node `i` with generation 1, seeded with the given nodes.
    pub fn node_config(i: usize, cluster: ClusterConfig, seeds: &[usize]) -> Config {
        Config::new(
            Sim::name(i),
            Sim::address(i),
            1,
            cluster,
            seeds.iter().map(|&s| Sim::address(s)).collect(),
        )
    }

    /// `n` nodes with default configs, all seeded with node 0, all started now.
    pub fn with_cluster(cfg: SimConfig, n: usize, adjust: impl Fn(&mut Config)) -> Sim {
        let mut sim = Sim::new(cfg);
        for i in 0..n {
            let mut config = Sim::node_config(i, ClusterConfig::default(), &[0]);
            adjust(&mut config);
            sim.add_node(config);
        }
        sim
    }

    /// Starts a node now; its first tick comes at a random point of its first interval.
    pub fn add_node(&mut self, config: Config) -> usize {
        let i = self.nodes.len();
        let previous = self.by_address.insert(config.address.clone(), i);
        assert!(previous.is_none(), "address {} used twice", config.address);
        self.nodes.push(SimNode {
            membership: Membership::new(config.clone(), self.now_ms),
            config,
            running: true,
            paused_until_ms: 0,
            incarnation: 0,
            events: Vec::new(),
        });
        self.schedule_first_tick(i);
        i
    }

    /// Nodes added so far (crashed ones included).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node was added.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The virtual time.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &SimNode {
        &self.nodes[i]
    }

    /// Node `i`, to change.
    pub fn node_mut(&mut self, i: usize) -> &mut SimNode {
        &mut self.nodes[i]
    }

    /// The simulation's RNG, for callers that draw from the same seeded stream.
    pub fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }

    /// Stops node `i` dead: no ticks, messages to it are lost.
    pub fn crash(&mut self, i: usize) {
        self.nodes[i].running = false;
    }

    /// Starts node `i` again, same name and address, a generation past any it had
    /// (including one it took in-process), empty view.
    pub fn restart(&mut self, i: usize) {
        let node = &self.nodes[i];
        let generation = node
            .config
            .generation
            .max(node.membership.config().generation)
            + 1;
        self.restart_as(i, generation);
    }

    /// Starts node `i` again with the given generation (a node with a broken
    /// generation source may reuse one).
    pub fn restart_as(&mut self, i: usize, generation: u64) {
        let now = self.now_ms;
        let node = &mut self.nodes[i];
        node.config.generation = generation;
        node.membership = Membership::new(node.config.clone(), now);
        node.running = true;
        node.paused_until_ms = 0;
        node.incarnation += 1;
        self.schedule_first_tick(i);
    }

    /// Freezes node `i` for `ms` (a GC pause, SIGSTOP): its ticks and the messages that
    /// reach it wait until it resumes.
    pub fn pause(&mut self, i: usize, ms: u64) {
        self.nodes[i].paused_until_ms = self.now_ms + ms;
    }

    /// Only nodes in the same group can talk; nodes in no group are each alone.
    pub fn partition(&mut self, groups: &[&[usize]]) {
        let mut of: Vec<usize> = (0..self.nodes.len()).map(|i| groups.len() + i).collect();
        for (g, members) in groups.iter().enumerate() {
            for &i in members.iter() {
                of[i] = g;
            }
        }
        self.groups = Some(of);
    }

    /// Ends the partition: every node can talk to every other.
    pub fn heal(&mut self) {
        self.groups = None;
    }

    /// Delivers `message` to node `to` now, as if sent from `from_address`.
    pub fn inject(&mut self, to: usize, from_address: &str, message: GossipMessage) {
        let at = self.now_ms;
        self.push(
            at,
            Action::Deliver {
                to,
                from: None,
                from_address: from_address.to_string(),
                message,
            },
        );
    }

    /// Runs ticks and deliveries for `ms` of virtual time.
    pub fn run_for(&mut self, ms: u64) {
        self.run_until(self.now_ms + ms);
    }

    /// Runs ticks and deliveries up to virtual time `t`.
    pub fn run_until(&mut self, t: u64) {
        while self.queue.peek().is_some_and(|Reverse(s)| s.at <= t) {
            let Reverse(s) = self.queue.pop().expect("peeked");
            self.now_ms = s.at;
            self.process(s.action);
        }
        self.now_ms = self.now_ms.max(t);
    }

    /// Runs in steps of `step_ms` until `done` holds (checked after every step) or
    /// `limit_ms` passed; the time it took.
    pub fn run_until_true(
        &mut self,
        limit_ms: u64,
        step_ms: u64,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> Option<u64> {
        let start = self.now_ms;
        while self.now_ms - start < limit_ms {
            self.run_for(step_ms);
            if done(self) {
                return Some(self.now_ms - start);
            }
        }
        None
    }

    /// Whether every running node of `nodes` sees every node of `nodes` in `state`.
    pub fn all_see(&self, nodes: &[usize], state: MemberState) -> bool {
        nodes
            .iter()
            .filter(|&&i| self.nodes[i].running)
            .all(|&i| self.sees(i, nodes, state))
    }

    /// Whether node `observer` sees every node of `subjects` (other than itself) in `state`
    /// at its current generation.
    pub fn sees(&self, observer: usize, subjects: &[usize], state: MemberState) -> bool {
        let m = &self.nodes[observer].membership;
        subjects.iter().filter(|&&j| j != observer).all(|&j| {
            let name = &self.nodes[j].config.name;
            m.state_of(name, self.now_ms) == Some(state)
                && m.members(self.now_ms)
                    .iter()
                    .any(|v| v.name == *name && v.generation == self.nodes[j].config.generation)
        })
    }

    /// Whether every running node sees all the others alive, checked cheaply enough for
    /// large clusters.
    pub fn converged(&self) -> bool {
        let all: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].running)
            .collect();
        all.iter().all(|&i| {
            let m = &self.nodes[i].membership;
            all.iter().all(|&j| {
                m.state_of(&self.nodes[j].config.name, self.now_ms) == Some(MemberState::Alive)
            })
        })
    }

    fn schedule_first_tick(&mut self, i: usize) {
        let interval = self.nodes[i].config.gossip_interval_ms;
        let at = self.now_ms + self.rng.random_range(0..interval);
        let incarnation = self.nodes[i].incarnation;
        self.push(
            at,
            Action::Tick {
                node: i,
                incarnation,
            },
        );
    }

    fn push(&mut self, at: u64, action: Action) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            action,
        }));
    }

    fn process(&mut self, action: Action) {
        let now = self.now_ms;
        match action {
            Action::Tick { node, incarnation } => {
                let n = &mut self.nodes[node];
                if !n.running || n.incarnation != incarnation {
                    return;
                }
                if n.paused_until_ms > now {
                    let at = n.paused_until_ms;
                    self.push(at, Action::Tick { node, incarnation });
                    return;
                }
                let out = n.membership.tick(now, &mut self.rng);
                n.events
                    .extend(n.membership.drain_events().into_iter().map(|e| (now, e)));
                let jitter = self.cfg.tick_jitter_ms;
                let interval = n.config.gossip_interval_ms;
                let next =
                    (now + interval + self.rng.random_range(0..=2 * jitter)).saturating_sub(jitter);
                self.push(next.max(now + 1), Action::Tick { node, incarnation });
                self.send(node, out);
            }
            Action::Deliver {
                to,
                from,
                from_address,
                message,
            } => {
                if !self.nodes[to].running || from.is_some_and(|f| !self.connected(f, to)) {
                    self.stats.dropped += 1;
                    return;
                }
                if self.nodes[to].paused_until_ms > now {
                    let at = self.nodes[to].paused_until_ms;
                    self.push(
                        at,
                        Action::Deliver {
                            to,
                            from,
                            from_address,
                            message,
                        },
                    );
                    return;
                }
                self.stats.delivered += 1;
                let n = &mut self.nodes[to];
                let out = n
                    .membership
                    .handle(now, &from_address, message, &mut self.rng);
                n.events
                    .extend(n.membership.drain_events().into_iter().map(|e| (now, e)));
                self.send(to, out);
            }
        }
    }

    fn connected(&self, a: usize, b: usize) -> bool {
        self.groups.as_ref().is_none_or(|g| g[a] == g[b])
    }

    fn send(&mut self, from: usize, out: Vec<crate::membership::Outgoing>) {
        let from_address = self.nodes[from].config.address.clone();
        let bound = self.nodes[from].config.max_message_bytes;
        for o in out {
            self.stats.sent += 1;
            let mut message = o.message;
            if self.cfg.check_wire {
                let bytes = message.encode();
                self.stats.bytes += bytes.len() as u64;
                self.stats.max_message_bytes = self.stats.max_message_bytes.max(bytes.len());
                if bytes.len() > bound {
                    self.stats.oversize += 1;
                }
                message = GossipMessage::decode(&bytes).expect("what we encode decodes");
            }
            let Some(&to) = self.by_address.get(&o.to) else {
                self.stats.dropped += 1;
                continue;
            };
            if !self.connected(from, to) || self.rng.random_bool(self.cfg.drop_probability) {
                self.stats.dropped += 1;
                continue;
            }
            let (lo, hi) = if self.rng.random_bool(self.cfg.tail_probability) {
                self.cfg.tail_latency_ms
            } else {
                self.cfg.latency_ms
            };
            let at = self.now_ms + self.rng.random_range(lo..=hi);
            self.push(
                at,
                Action::Deliver {
                    to,
                    from: Some(from),
                    from_address: from_address.clone(),
                    message,
                },
            );
        }
    }
}

impl SimConfig {
    /// A rough network: 1-100 ms latency, 1% of messages 0.2-1 s late, 1% lost, ticks
    /// ±100 ms off schedule.
    pub fn jittery(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            latency_ms: (1, 100),
            tail_probability: 0.01,
            tail_latency_ms: (200, 1000),
            drop_probability: 0.01,
            tick_jitter_ms: 100,
            check_wire: false,
        }
    }
}

/// Outcome of [`convergence`].
#[derive(Clone, Copy, Debug)]
pub struct Convergence {
    /// Gossip intervals until every node saw every other alive; None past the limit.
    pub rounds: Option<u64>,
    /// The run's message counters.
    pub stats: SimStats,
}

/// Starts `n` nodes at once, all seeded with node 0 only, and counts the rounds until
/// everyone knows everyone alive (checked every interval, up to `limit_rounds`).
pub fn convergence(
    n: usize,
    cfg: SimConfig,
    adjust: impl Fn(&mut Config),
    limit_rounds: u64,
) -> Convergence {
    let mut sim = Sim::with_cluster(cfg, n, adjust);
    let interval = sim.node(0).config.gossip_interval_ms;
    let took = sim.run_until_true(limit_rounds * interval, interval, Sim::converged);
    Convergence {
        rounds: took.map(|ms| ms / interval),
        stats: sim.stats,
    }
}

/// Outcome of [`crash_detection`]: per observer, the time from the crash to its first
/// `Suspect` and `Down` event for the victim (None if it never came).
#[derive(Clone, Debug)]
pub struct Detection {
    /// Per observer, crash to first `Suspect`.
    pub suspect_ms: Vec<Option<u64>>,
    /// Per observer, crash to first `Down`.
    pub down_ms: Vec<Option<u64>>,
}

/// Runs an `n`-node cluster for `warmup_ms`, crashes node `n / 2`, and times its
/// detection by every other node (giving up `limit_ms` after the crash).
pub fn crash_detection(
    n: usize,
    cfg: SimConfig,
    adjust: impl Fn(&mut Config),
    warmup_ms: u64,
    limit_ms: u64,
) -> Detection {
    let mut sim = Sim::with_cluster(cfg, n, adjust);
    sim.run_for(warmup_ms);
    assert!(sim.converged(), "cluster converged before the crash");
    let victim = n / 2;
    let name = sim.node(victim).config.name.clone();
    let crashed_at = sim.now_ms();
    sim.crash(victim);
    let observers: Vec<usize> = (0..n).filter(|&i| i != victim).collect();
    sim.run_until_true(limit_ms, 100, |s| {
        observers.iter().all(|&i| {
            s.node(i)
                .events
                .iter()
                .any(|(t, e)| *t >= crashed_at && *e == Event::Down { name: name.clone() })
        })
    });
    let first = |i: usize, pick: fn(&Event) -> Option<&String>| {
        sim.node(i)
            .events
            .iter()
            .find(|(t, e)| *t >= crashed_at && pick(e) == Some(&name))
            .map(|(t, _)| t - crashed_at)
    };
    Detection {
        suspect_ms: observers
            .iter()
            .map(|&i| {
                first(i, |e| {
                    if let Event::Suspect { name } = e {
                        Some(name)
                    } else {
                        None
                    }
                })
            })
            .collect(),
        down_ms: observers
            .iter()
            .map(|&i| {
                first(i, |e| {
                    if let Event::Down { name } = e {
                        Some(name)
                    } else {
                        None
                    }
                })
            })
            .collect(),
    }
}

/// Outcome of [`false_suspicions`].
#[derive(Clone, Copy, Debug)]
pub struct FalseSuspicions {
    /// Virtual node-hours observed (nodes times hours).
    pub node_hours: f64,
    /// `Suspect` events seen (every one false).
    pub suspects: usize,
    /// `Down` events seen (every one false).
    pub downs: usize,
    /// Pauses injected.
    pub pauses: usize,
}

/// Runs a healthy `n`-node cluster for `hours` of virtual time in which every node
/// pauses for `pause_ms` on average once every `mean_pause_every_ms`, and counts the
/// `Suspect` and `Down` events (all false: nobody fails).
pub fn false_suspicions(
    n: usize,
    cfg: SimConfig,
    adjust: impl Fn(&mut Config),
    hours: f64,
    pause_ms: u64,
    mean_pause_every_ms: u64,
) -> FalseSuspicions {
    let mut sim = Sim::with_cluster(cfg, n, adjust);
    sim.run_for(30_000);
    assert!(sim.converged(), "cluster converged before measuring");
    for i in 0..n {
        sim.node_mut(i).events.clear();
    }
    let step = 1000;
    let end = sim.now_ms() + (hours * 3_600_000.0) as u64;
    let mut pauses = 0;
    while sim.now_ms() < end {
        for i in 0..n {
            let paused = sim.node(i).paused_until_ms > sim.now_ms();
            if !paused
                && sim
                    .rng()
                    .random_bool(step as f64 / mean_pause_every_ms as f64)
            {
                sim.pause(i, pause_ms);
                pauses += 1;
            }
        }
        sim.run_for(step);
    }
    let count = |pick: fn(&Event) -> bool| {
        (0..n)
            .map(|i| sim.node(i).events.iter().filter(|(_, e)| pick(e)).count())
            .sum()
    };
    FalseSuspicions {
        node_hours: n as f64 * hours,
        suspects: count(|e| matches!(e, Event::Suspect { .. })),
        downs: count(|e| matches!(e, Event::Down { .. })),
        pauses,
    }
}
