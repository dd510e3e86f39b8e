//! The running node as the HTTP API and the QUIC handler both see it: its coordinator,
//! replica, membership, healer, metrics and transport, and the operations on the node as a
//! whole (status, leave, remove). The wiring in `server/mod.rs` builds it; `http.rs` and
//! `peers.rs` use it; none of them imports the wiring.
//!
//! Must not: hold protocol logic (that is `chorus-core`'s), or parse flags.

use std::sync::Arc;
use std::time::Duration;

use chorus_api::status::{MemberStatus, RebuildPartition, RebuildStatus, StatusBody, Transfer};
use chorus_core::coordinator::Coordinator;
use chorus_core::healing::Healer;
use chorus_core::membership::Gossip;
use chorus_core::metrics::{Metrics, PeerLabels};
use chorus_core::replica::Replica;
use chorus_core::storage::{FjallStorage, Storage};
use chorus_gossip::{GossipError, MemberState};

use chorus_core::assembly::NodeParts;

use crate::server::peers::{NodePeers, QuicPeers};
use crate::server::transport::QuicTransport;

/// A node not ready (`/ready` 503) says why in its log this often, from this long after it
/// starts (time enough to find its peers).
const NOT_READY_WARN_EVERY: Duration = Duration::from_secs(10);

/// `leave` asked of a node that is already leaving.
#[derive(Debug, thiserror::Error)]
#[error("{0} is already leaving")]
pub struct AlreadyLeaving(pub String);

/// Limits the HTTP layer enforces.
pub struct Limits {
    pub max_value: usize,
    pub default_timeout: Duration,
    /// How long a request body may take to arrive.
    pub body_timeout: Duration,
}

/// Who may call `/admin/*` (leave, remove).
pub enum AdminAuth {
    /// Requests carrying `Authorization: Bearer <token>` (the credential's admin.token).
    Token(String),
    /// The credential has no admin token: admin calls are refused, saying how to make one.
    Missing(std::path::PathBuf),
    /// `--insecure`: anyone who reaches the QUIC port can join anyway, so admin calls are
    /// open too (a throwaway test setup).
    Open,
}

/// One running node: what the HTTP API and the QUIC handler act on.
pub struct Node {
    pub name: String,
    pub admin: AdminAuth,
    pub limits: Limits,
    pub coordinator: Coordinator<FjallStorage, NodePeers>,
    pub replica: Arc<Replica<FjallStorage>>,
    pub gossip: Arc<Gossip>,
    pub metrics: Arc<Metrics>,
    pub healer: Arc<Healer<FjallStorage, NodePeers>>,
    pub transport: Arc<QuicTransport>,
    /// Notified when the node should stop on its own (it has left the cluster).
    pub stop: tokio::sync::Notify,
    /// The dashboard's last minutes of figures, sampled by `ui::sample_loop`.
    pub history: std::sync::Mutex<crate::server::history::History>,
}

impl Node {
    /// The node the fronts act on, from the core's assembly.
    pub fn new(
        parts: NodeParts<FjallStorage, QuicPeers>,
        admin: AdminAuth,
        limits: Limits,
        transport: Arc<QuicTransport>,
    ) -> Node {
        Node {
            name: parts.name,
            admin,
            limits,
            coordinator: parts.coordinator,
            replica: parts.replica,
            gossip: parts.gossip,
            metrics: parts.metrics,
            healer: parts.healer,
            transport,
            stop: tokio::sync::Notify::new(),
            history: std::sync::Mutex::default(),
        }
    }

    /// `GET /status`: this node, every member as it sees them, its transfers and rebuild.
    pub fn status(&self) -> StatusBody {
        let view = self.coordinator.view();
        let members = self
            .gossip
            .members()
            .into_iter()
            .map(|m| MemberStatus {
                address: m.address,
                generation: m.generation,
                heartbeat: m.heartbeat,
                heartbeat_age_ms: m.heartbeat_age_ms,
                is_self: m.is_self,
                kv: m.kv,
                phi: if m.phi.is_finite() { m.phi } else { f64::MAX },
                reachable: !view.unreachable.contains(&m.name),
                removed: m.removed,
                ring_share: view.ring.share(&m.name),
                state: m.state.to_string(),
                name: m.name,
            })
            .collect();
        let transfers = self.healer.transfer_progress().into_iter();
        StatusBody {
            members,
            n: Some(view.ring.n()),
            node: self.name.clone(),
            reaping_paused: self.healer.reaping_paused(),
            rebuild: self.rebuild_status(),
            repairing: self.replica.is_repairing(),
            ring_size: Some(view.ring.ring_size()),
            storage_failure: self.replica.health().failure(),
            transfers: transfers
                .map(|(partition, keys_left)| Transfer {
                    keys_left,
                    partition,
                })
                .collect(),
        }
    }

    /// This node's partition streams: pending partitions with their progress, totals, and
    /// the estimated seconds left (null when nothing streams or no rate is known yet).
    fn rebuild_status(&self) -> RebuildStatus {
        let status = self.healer.rebuilder().status();
        let partitions: Vec<RebuildPartition> = status
            .partitions
            .into_iter()
            .map(|p| RebuildPartition {
                bytes_done: p.progress.bytes,
                keys_done: p.progress.keys,
                keys_total: p.progress.keys_total,
                partition: p.partition,
                peer: p.progress.peer,
                streaming: p.streaming,
            })
            .collect();
        RebuildStatus {
            bytes_done: status.bytes_done,
            eta_s: status.eta_s,
            keys_done: status.keys_done,
            partitions_pending: partitions.len() as u64,
            partitions,
        }
    }

    /// Why load balancers should not send this node client requests now (`/ready`): its
    /// storage failed, or it knows fewer ring members than a key's N replicas (a node
    /// that found no peer: wrong seeds, or an address the others cannot dial).
    pub fn not_ready(&self) -> Option<(&'static str, String)> {
        if let Some(reason) = self.replica.health().failure() {
            return Some((
                "storage_failed",
                format!("this node's storage failed: {reason}"),
            ));
        }
        let n = self.coordinator.n();
        let known = self
            .gossip
            .members()
            .iter()
            .filter(|m| !matches!(m.state, MemberState::Leaving | MemberState::Left))
            .count();
        (known < n).then(|| {
            ("too_few_members", format!(
                "this node knows {known} ring member(s), itself included, but every key needs {n} replicas: check --seeds, and that the other nodes can dial the address this node gossips"
            ))
        })
    }

    pub fn refresh_phi_metrics(&self) {
        for m in self.gossip.members() {
            if !m.is_self {
                self.metrics
                    .phi
                    .get_or_create(&PeerLabels { peer: m.name })
                    .set(m.phi.min(1e9));
            }
        }
    }

    /// Starts leaving: the node drops out of the ring, so ownership transfer hands every
    /// partition to its new owners; once nothing is left here it announces `left` and stops.
    pub async fn leave(self: &Arc<Self>) -> Result<(), AlreadyLeaving> {
        if self
            .gossip
            .members()
            .iter()
            .any(|m| m.is_self && m.state != MemberState::Alive)
        {
            return Err(AlreadyLeaving(self.name.clone()));
        }
        self.gossip.step(|m, _, _| {
            m.leave();
            Vec::new()
        });
        tracing::info!("leaving the cluster: handing data over to the new owners");
        tokio::spawn(self.clone().finish_handover(None));
        Ok(())
    }

    /// Waits until this node holds no key and no hint, announces `left`, and stops: asked
    /// to (`leave`), or as `refusal` says (removed while running, see
    /// [`hand_over_when_removed`]).
    async fn finish_handover(self: Arc<Self>, refusal: Option<String>) {
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        loop {
            ticker.tick().await;
            let storage = self.replica.storage();
            let empty = storage.partitions().map(|p| p.is_empty()).unwrap_or(false)
                && storage.hint_owners().map(|h| h.is_empty()).unwrap_or(false);
            if empty {
                break;
            }
        }
        self.gossip.step(|m, _, _| {
            m.left();
            Vec::new()
        });
        tracing::info!("handoff complete: left the cluster");
        // Let a few gossip rounds carry the news before stopping.
        tokio::time::sleep(Duration::from_secs(3)).await;
        match refusal {
            Some(reason) => {
                self.gossip.rejected.send_replace(Some(reason));
            }
            None => self.stop.notify_one(),
        }
    }

    pub fn remove(&self, name: &str, data_lost: bool) -> Result<(), GossipError> {
        let mut result = Ok(());
        self.gossip.step(|m, _, _| {
            result = m.remove(name, data_lost);
            Vec::new()
        });
        result
    }
}

/// An operator removed this node while it ran (a partition taken for a crash): the
/// membership already announced it leaving under a new generation; hand every key over,
/// so nothing it acknowledged is lost, then stop as a refused node (exit 2).
pub async fn hand_over_when_removed(node: Arc<Node>) {
    let mut handing_over = node.gossip.handing_over.subscribe();
    if handing_over.wait_for(|h| *h).await.is_err() {
        return;
    }
    let reason = format!(
        "this node ({}) was removed from the cluster by an operator while it was running; it handed every key over to the owners; start it again (same data directory) to rejoin",
        node.name
    );
    node.finish_handover(Some(reason)).await;
}

/// Logs at WARN, every [`NOT_READY_WARN_EVERY`], why the node is not ready: a node that
/// found no peer (wrong `--seeds`, an address the others cannot dial) must not sit silent
/// behind a 200 `/health`.
pub async fn warn_while_not_ready(node: Arc<Node>) {
    let first = tokio::time::Instant::now() + NOT_READY_WARN_EVERY;
    let mut ticker = tokio::time::interval_at(first, NOT_READY_WARN_EVERY);
    loop {
        ticker.tick().await;
        if let Some((code, message)) = node.not_ready() {
            tracing::warn!(code, "not ready: {message}");
        }
    }
}
