//! The TicTac-style hash tree of one partition, used by anti-entropy to find which keys
//! two replicas disagree on.
//!
//! Owns: the tree's shape (a fixed number of leaf segments under a fixed number of
//! branches), how a key maps to a segment, and how an entry `(key, object)` is hashed.
//! Must not: read storage or talk to peers. The engines feed it every put and remove;
//! anti-entropy compares two trees and then asks storage for the keys of the segments that
//! differ.
//!
//! Why XOR leaves (Riak's TicTac AAE): a leaf is the XOR of the hashes of the entries in its
//! segment, so a put is "XOR out the old entry, XOR in the new one" and a remove is
//! "XOR out", each O(1) and independent of the order in which entries arrived. Two
//! replicas holding the same entries therefore have bit-identical trees, with no rescan.
//! Branches and the root are recomputed on demand (32 KiB of leaves to hash), which keeps
//! writes cheap and makes comparisons the only place that pays.

/// A 32-byte blake3 digest.
pub type Hash = [u8; 32];

/// Leaf segments per partition tree. With a few million keys per partition a segment
/// still holds only a few thousand keys, so one differing key costs a small exchange.
pub const SEGMENTS: usize = 1024;
/// Middle level of the tree: replicas compare the root, then these, then the leaves of
/// the branches that differ.
pub const BRANCHES: usize = 32;
/// Leaves under one branch.
pub const SEGMENTS_PER_BRANCH: usize = SEGMENTS / BRANCHES;

const _: () = assert!(SEGMENTS == BRANCHES * SEGMENTS_PER_BRANCH);
// segment_of masks the hash, which needs a power of two.
const _: () = assert!(SEGMENTS.is_power_of_two());

/// The hash tree of one partition. Equality means "same leaves", which (up to blake3
/// collisions) means the same set of `(key, object)` entries.
#[derive(Clone, PartialEq, Eq)]
pub struct MerkleTree {
    /// Exactly `SEGMENTS` leaves; an empty segment is all zeros.
    leaves: Vec<Hash>,
}

impl Default for MerkleTree {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MerkleTree {
    // 1024 leaves are noise in a test failure; the root identifies the content.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MerkleTree")
            .field("root", &self.root_hex())
            .finish()
    }
}

impl MerkleTree {
    /// The tree of an empty partition: every leaf is zero.
    pub fn new() -> Self {
        Self {
            leaves: vec![[0; 32]; SEGMENTS],
        }
    }

    /// The segment a key belongs to; depends on the key only, so every replica puts a key
    /// in the same segment whatever its object.
    pub fn segment_of(key: &[u8]) -> usize {
        let h = blake3::hash(key);
        let b = h.as_bytes();
        (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize) & (SEGMENTS - 1)
    }

    /// The hash of one entry. The key length is hashed first so that `("ab", "c")` and
    /// `("a", "bc")` do not collide (a plain `key || object` would).
    pub fn entry_hash(key: &[u8], object: &[u8]) -> Hash {
        let mut h = blake3::Hasher::new();
        h.update(&(key.len() as u64).to_le_bytes());
        h.update(key);
        h.update(object);
        *h.finalize().as_bytes()
    }

    /// Accounts for an entry that was added.
    pub fn insert(&mut self, key: &[u8], object: &[u8]) {
        self.toggle(key, object);
    }

    /// Accounts for an entry that was removed; `object` must be what was stored.
    pub fn remove(&mut self, key: &[u8], object: &[u8]) {
        // XOR is its own inverse: removing is adding the same hash again.
        self.toggle(key, object);
    }

    /// Accounts for a put that replaced `old` (if any) with `new`.
    pub fn replace(&mut self, key: &[u8], old: Option<&[u8]>, new: &[u8]) {
        if let Some(old) = old {
            self.remove(key, old);
        }
        self.insert(key, new);
    }

    fn toggle(&mut self, key: &[u8], object: &[u8]) {
        let leaf = &mut self.leaves[Self::segment_of(key)];
        for (l, e) in leaf.iter_mut().zip(Self::entry_hash(key, object)) {
            *l ^= e;
        }
    }

    /// All leaves, in segment order.
    pub fn leaves(&self) -> &[Hash] {
        &self.leaves
    }

    /// The leaves under branch `i` (segments `i*32 .. i*32+32`).
    ///
    /// # Panics
    /// If `i >= BRANCHES`: a caller bug, since the shape is a constant.
    pub fn leaves_of_branch(&self, i: usize) -> &[Hash] {
        assert!(i < BRANCHES, "branch {i} out of range (< {BRANCHES})");
        &self.leaves[i * SEGMENTS_PER_BRANCH..(i + 1) * SEGMENTS_PER_BRANCH]
    }

    /// The hash of branch `i`: blake3 over its leaves.
    pub fn branch(&self, i: usize) -> Hash {
        hash_all(self.leaves_of_branch(i))
    }

    /// All branch hashes, in order.
    pub fn branches(&self) -> Vec<Hash> {
        (0..BRANCHES).map(|i| self.branch(i)).collect()
    }

    /// The root: blake3 over the branch hashes, so a replica that sent its branches lets
    /// the other side check them against the root it sent first.
    pub fn root(&self) -> Hash {
        hash_all(&self.branches())
    }

    /// The root as lowercase hex, for logs and the admin API.
    pub fn root_hex(&self) -> String {
        to_hex(&self.root())
    }

    /// Segments whose leaves differ, ascending. Compares branches first so that trees
    /// that agree almost everywhere cost 32 branch comparisons plus the differing leaves.
    pub fn differing_segments(&self, other: &MerkleTree) -> Vec<usize> {
        let mut out = Vec::new();
        for b in differing_positions(&self.branches(), &other.branches()) {
            let first = b * SEGMENTS_PER_BRANCH;
            out.extend(
                differing_positions(self.leaves_of_branch(b), other.leaves_of_branch(b))
                    .into_iter()
                    .map(|s| first + s),
            );
        }
        out
    }
}

/// Positions at which two equally long hash lists differ, ascending. Anti-entropy uses it
/// on the branch list or a branch's leaves received from a peer.
///
/// # Panics
/// If the lists differ in length: trees of different shapes are not comparable, and a
/// peer message of the wrong length must be rejected before it gets here.
pub fn differing_positions(ours: &[Hash], theirs: &[Hash]) -> Vec<usize> {
    assert_eq!(
        ours.len(),
        theirs.len(),
        "comparing hash lists of different lengths"
    );
    ours.iter()
        .zip(theirs)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, _)| i)
        .collect()
}

fn hash_all(hashes: &[Hash]) -> Hash {
    let mut h = blake3::Hasher::new();
    for x in hashes {
        h.update(x);
    }
    *h.finalize().as_bytes()
}

fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            // Writing to a String cannot fail.
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_tree_is_well_defined() {
        let t = MerkleTree::new();
        assert!(t.leaves().iter().all(|l| *l == [0; 32]));
        assert_eq!(t.root(), MerkleTree::default().root());
        assert_eq!(t.root_hex().len(), 64);
        assert!(t.differing_segments(&MerkleTree::new()).is_empty());
    }

    #[test]
    fn insert_then_remove_returns_to_empty() {
        let mut t = MerkleTree::new();
        t.insert(b"k", b"v1");
        assert_ne!(t, MerkleTree::new());
        t.replace(b"k", Some(b"v1"), b"v2");
        t.remove(b"k", b"v2");
        assert_eq!(t, MerkleTree::new());
    }

    #[test]
    fn entry_hash_separates_key_from_object() {
        assert_ne!(
            MerkleTree::entry_hash(b"ab", b"c"),
            MerkleTree::entry_hash(b"a", b"bc")
        );
    }

    #[test]
    fn differing_segments_names_the_changed_segments() {
        let mut a = MerkleTree::new();
        for i in 0..200u32 {
            a.insert(&i.to_be_bytes(), b"x");
        }
        let mut b = a.clone();
        let changed = [7u32, 99, 150];
        for i in changed {
            b.replace(&i.to_be_bytes(), Some(b"x"), b"y");
        }
        let mut expected: Vec<usize> = changed
            .iter()
            .map(|i| MerkleTree::segment_of(&i.to_be_bytes()))
            .collect();
        expected.sort_unstable();
        expected.dedup();
        assert_eq!(a.differing_segments(&b), expected);
        assert_eq!(b.differing_segments(&a), expected);
        assert_ne!(a.root(), b.root());
    }

    #[test]
    fn branches_cover_leaves_in_order() {
        let mut t = MerkleTree::new();
        t.insert(b"key", b"object");
        let s = MerkleTree::segment_of(b"key");
        let b = s / SEGMENTS_PER_BRANCH;
        assert_ne!(t.leaves_of_branch(b)[s % SEGMENTS_PER_BRANCH], [0; 32]);
        assert_eq!(
            differing_positions(&t.branches(), &MerkleTree::new().branches()),
            vec![b]
        );
    }
}
