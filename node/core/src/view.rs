//! The cluster as the protocol core sees it: placement (the ring) and which members the
//! failure detector calls unreachable. The membership shell publishes it after every
//! gossip step; the coordinator and the healer read it.
//!
//! Must not: decide liveness or placement itself (gossip and `chorus-ring` do).

use std::collections::HashSet;
use std::sync::Arc;

use chorus_ring::Ring;

/// What a coordinator needs to know of the cluster: placement and who is reachable.
#[derive(Clone, Debug)]
pub struct ClusterView {
    pub ring: Arc<Ring>,
    pub unreachable: Arc<HashSet<String>>,
}
