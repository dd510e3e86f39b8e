//! chorus-ring: placement. Owns the mapping from a (bucket, key) to a partition, and from
//! a partition to its primaries and fallbacks, as a pure function of the member set.
//!
//! It must not do I/O, read a clock, draw random numbers or keep history: every node that
//! knows the same set of member names must compute the identical [`Ring`] without talking
//! to anyone. Membership (who is in the set) belongs to `chorus-gossip`; moving data when
//! the ring changes belongs to `chorus-node`.

pub mod analysis;
mod claim;

/// Partitions in a ring unless configured otherwise (Riak's default `ring_size`).
pub const DEFAULT_RING_SIZE: u32 = 64;
/// Largest ring accepted; claim cost grows with `ring_size * members`.
pub const MAX_RING_SIZE: u32 = 4096;
/// Largest member set accepted, so a ring always fits the claim's cost budget
/// (`MAX_RING_SIZE * MAX_MEMBERS` rendezvous scores).
pub const MAX_MEMBERS: usize = 1024;

/// Why a ring could not be built.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RingError {
    #[error("ring_size must be a power of two between 1 and {MAX_RING_SIZE}, got {0}")]
    BadRingSize(u32),
    #[error("n (replicas per partition) must be at least 1")]
    ZeroReplicas,
    #[error("a ring needs at least one member")]
    NoMembers,
    #[error("member names must not be empty")]
    EmptyMemberName,
    #[error("at most {MAX_MEMBERS} members are supported, got {0}")]
    TooManyMembers(usize),
}

fn check_ring_size(ring_size: u32) -> Result<(), RingError> {
    if ring_size == 0 || ring_size > MAX_RING_SIZE || !ring_size.is_power_of_two() {
        return Err(RingError::BadRingSize(ring_size));
    }
    Ok(())
}

/// 64-bit hash of a key: the first 8 bytes, read big-endian, of blake3 over
/// `len(bucket) as u64 LE ‖ bucket ‖ key`.
///
/// The length prefix keeps ("ab","c") and ("a","bc") apart. This encoding is a cluster-wide
/// contract: changing it re-homes every key.
pub fn key_hash(bucket: &[u8], key: &[u8]) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&(bucket.len() as u64).to_le_bytes());
    hasher.update(bucket);
    hasher.update(key);
    let digest = hasher.finalize();
    u64::from_be_bytes(digest.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// Partition of a key: the top `log2(ring_size)` bits of [`key_hash`], so growing the ring
/// splits every partition in place.
///
/// # Panics
/// If `ring_size` is not a power of two in `1..=MAX_RING_SIZE`; callers hold a validated
/// size (a [`Ring`] or configuration checked at startup), so a bad one is a bug.
pub fn partition_of(ring_size: u32, bucket: &[u8], key: &[u8]) -> u32 {
    assert!(
        check_ring_size(ring_size).is_ok(),
        "invalid ring_size {ring_size}"
    );
    match ring_size.trailing_zeros() {
        0 => 0,
        bits => (key_hash(bucket, key) >> (64 - bits)) as u32,
    }
}

/// Rendezvous (highest random weight) score of a member for a partition; higher wins.
/// Fallback order and the claim's preferences both come from it, so a member's score for a
/// partition never depends on who else is in the ring.
pub(crate) fn rendezvous_score(partition: u32, name: &str) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&partition.to_le_bytes());
    hasher.update(name.as_bytes());
    let digest = hasher.finalize();
    u64::from_be_bytes(digest.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// Ownership of every partition for one member set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ring {
    ring_size: u32,
    n: usize,
    members: Vec<String>,
    /// `ring_size` rows of `replicas()` names each; row `p` is partition `p`'s primaries in
    /// descending rendezvous score.
    primaries: Vec<String>,
}

impl Ring {
    /// Builds the ring for `members` (order and duplicates do not matter) with `n` replicas
    /// per partition.
    pub fn new(
        ring_size: u32,
        n: usize,
        members: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<Ring, RingError> {
        check_ring_size(ring_size)?;
        if n == 0 {
            return Err(RingError::ZeroReplicas);
        }
        let mut members: Vec<String> = members.into_iter().map(Into::into).collect();
        members.sort_unstable();
        members.dedup();
        if members.is_empty() {
            return Err(RingError::NoMembers);
        }
        if members.iter().any(String::is_empty) {
            return Err(RingError::EmptyMemberName);
        }
        if members.len() > MAX_MEMBERS {
            return Err(RingError::TooManyMembers(members.len()));
        }
        let owners = claim::claim(ring_size, n, &members);
        let primaries = owners
            .iter()
            .map(|&i| members[i as usize].clone())
            .collect();
        let ring = Ring {
            ring_size,
            n,
            members,
            primaries,
        };
        for p in 0..ring_size {
            let row = ring.primaries(p);
            assert_eq!(row.len(), ring.replicas());
            debug_assert!(
                row.iter()
                    .enumerate()
                    .all(|(i, a)| row[..i].iter().all(|b| a != b)),
                "partition {p} has a repeated primary: {row:?}"
            );
        }
        Ok(ring)
    }

    pub fn ring_size(&self) -> u32 {
        self.ring_size
    }

    /// Configured replicas per partition; a ring with fewer members holds fewer.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Replicas each partition actually has: `min(n, members)`.
    pub fn replicas(&self) -> usize {
        self.n.min(self.members.len())
    }

    /// Most partition-replicas any member holds: `max(ceil(fair), floor(1.1 * fair))` with
    /// `fair = ring_size * replicas() / members`.
    pub fn capacity(&self) -> usize {
        claim::capacity(self.primaries.len(), self.members.len())
    }

    /// Member names, sorted and distinct.
    pub fn members(&self) -> &[String] {
        &self.members
    }

    pub fn partition_of(&self, bucket: &[u8], key: &[u8]) -> u32 {
        partition_of(self.ring_size, bucket, key)
    }

    /// The `replicas()` distinct owners of `partition`, highest rendezvous score first.
    ///
    /// # Panics
    /// If `partition >= ring_size`.
    pub fn primaries(&self, partition: u32) -> &[String] {
        assert!(
            partition < self.ring_size,
            "partition {partition} out of range"
        );
        let k = self.replicas();
        let start = partition as usize * k;
        &self.primaries[start..start + k]
    }

    /// Every member once: the primaries, then the others in descending rendezvous score.
    /// A fallback's position among the other fallbacks depends only on its own name, so a
    /// member joining or leaving never reorders the rest.
    pub fn preference_list(&self, partition: u32) -> Vec<&str> {
        let primaries = self.primaries(partition);
        let mut fallbacks: Vec<(u64, &str)> = self
            .members
            .iter()
            .filter(|m| !primaries.contains(m))
            .map(|m| (rendezvous_score(partition, m), m.as_str()))
            .collect();
        // Score ties are broken by name so the order stays a function of the set.
        fallbacks.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
        let list: Vec<&str> = primaries
            .iter()
            .map(String::as_str)
            .chain(fallbacks.into_iter().map(|(_, m)| m))
            .collect();
        debug_assert_eq!(list.len(), self.members.len());
        list
    }

    pub fn is_primary(&self, partition: u32, name: &str) -> bool {
        self.primaries(partition).iter().any(|m| m == name)
    }

    /// Partitions `name` is a primary of, ascending.
    pub fn primary_partitions(&self, name: &str) -> Vec<u32> {
        (0..self.ring_size)
            .filter(|&p| self.is_primary(p, name))
            .collect()
    }

    /// Fraction of all partition-replicas (`ring_size * replicas()`) held by `name`.
    pub fn share(&self, name: &str) -> f64 {
        let held = self.primaries.iter().filter(|m| *m == name).count();
        held as f64 / self.primaries.len() as f64
    }
}
