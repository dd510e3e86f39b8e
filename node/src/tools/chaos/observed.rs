//! What each write of a chaos history had been shown: the observation `chorus check`
//! judges lost writes by (issue 14). A write may supersede a value only if its client
//! had been shown that value, directly (a read returned it to the session, or it was the
//! session's own write) or transitively (it was shown a value whose writer had been
//! shown it, and so on).
//!
//! Owns: that knowledge, computed from the history alone. A write's knowledge is what
//! the context it carried stood for: the session's last successful operation on the key
//! that answered with that very token (the chaos workload carries the context of its last
//! read or write of the key), and what that operation had shown: a read its values and
//! what their writers knew; a write itself and what it knew.
//!
//! Must not: look inside the contexts. What a context *covers* is the server's claim,
//! and the checker must not take the system it judges as the proof.

use std::collections::HashMap;

use crate::tools::chaos::workload::HistoryLine;

/// A set of writes of one key, by their index in that key's list of writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Writes(Vec<u64>);

impl Writes {
    pub fn insert(&mut self, i: usize) {
        if self.0.len() <= i / 64 {
            self.0.resize(i / 64 + 1, 0);
        }
        self.0[i / 64] |= 1 << (i % 64);
    }

    pub fn contains(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// Adds every write of `other`; true when that changed anything.
    fn extend(&mut self, other: &Writes) -> bool {
        if self.0.len() < other.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        let mut changed = false;
        for (mine, theirs) in self.0.iter_mut().zip(&other.0) {
            changed |= *mine | theirs != *mine;
            *mine |= theirs;
        }
        changed
    }

    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.0.len() * 64).filter(|&i| self.contains(i))
    }
}

/// The knowledge of every write of one key.
pub struct KeyKnowledge<'a> {
    /// The key's puts and deletes, whatever their outcome, in history order.
    pub writes: Vec<&'a HistoryLine>,
    /// Per write: what its request context stood for (empty for a blind write).
    pub knew: Vec<Writes>,
    /// Writes that carried a context no earlier answer of their session had given (a
    /// workload bug: their knowledge is taken as empty).
    pub unmatched: usize,
}

impl KeyKnowledge<'_> {
    /// The index of the put that wrote `value`.
    pub fn writer_of(&self, value: &str) -> Option<usize> {
        self.writes
            .iter()
            .position(|w| w.value.as_deref() == Some(value))
    }

    /// Short names of the writes in `set`, for reports: a put's value, a delete as
    /// `delete s{session}#{seq}`.
    pub fn names(&self, set: &Writes) -> Vec<String> {
        set.iter()
            .filter_map(|i| self.writes.get(i))
            .map(|w| match &w.value {
                Some(v) => v.clone(),
                None => format!("delete s{}#{}", w.session, w.seq),
            })
            .collect()
    }
}

/// Computes, for one key's operations (every session's, any order), what each write
/// knew. Knowledge flows from a write to a read that returned its value and on to that
/// session's next write, so the history is replayed in start order until nothing
/// changes (a read can return a write that started after the read did).
pub fn knowledge<'a>(ops: &[&'a HistoryLine]) -> KeyKnowledge<'a> {
    let mut ops: Vec<&HistoryLine> = ops.to_vec();
    ops.sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms).then(a.seq.cmp(&b.seq)));
    let writes: Vec<&HistoryLine> = ops.iter().copied().filter(|h| is_write(h)).collect();
    let index: HashMap<(usize, u64), usize> = writes
        .iter()
        .enumerate()
        .map(|(i, w)| ((w.session, w.seq), i))
        .collect();
    let by_value: HashMap<&str, usize> = writes
        .iter()
        .enumerate()
        .filter_map(|(i, w)| w.value.as_deref().map(|v| (v, i)))
        .collect();
    let mut knew = vec![Writes::default(); writes.len()];
    // Each pass can only add knowledge, and a pass that adds nothing is the fixpoint.
    let unmatched = loop {
        let mut changed = false;
        let mut unmatched = 0;
        let mut held: HashMap<usize, (&str, Writes)> = HashMap::new();
        for op in &ops {
            let write = index.get(&(op.session, op.seq)).copied();
            if let (Some(w), Some(token)) = (write, op.context_in.as_deref()) {
                match held.get(&op.session) {
                    Some((t, shown)) if *t == token => changed |= knew[w].extend(shown),
                    _ => unmatched += 1,
                }
            }
            if op.outcome != "ok" {
                continue;
            }
            let mut shown = Writes::default();
            match write {
                Some(w) => {
                    shown.extend(&knew[w]);
                    shown.insert(w);
                }
                None => {
                    for v in op.values.iter().flatten() {
                        if let Some(&w) = by_value.get(v.as_str()) {
                            shown.extend(&knew[w]);
                            shown.insert(w);
                        }
                    }
                }
            }
            match op.context_out.as_deref() {
                Some(token) => held.insert(op.session, (token, shown)),
                None => held.remove(&op.session),
            };
        }
        if !changed {
            break unmatched;
        }
    };
    KeyKnowledge {
        writes,
        knew,
        unmatched,
    }
}

fn is_write(h: &HistoryLine) -> bool {
    h.op == "put" || h.op == "delete"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(
        session: usize,
        seq: u64,
        what: &str,
        ctx_in: Option<&str>,
        ctx_out: &str,
    ) -> HistoryLine {
        let (name, value, values) = match what.split_once(':') {
            Some(("get", list)) => (
                "get",
                None,
                Some(
                    list.split(',')
                        .filter(|v| !v.is_empty())
                        .map(str::to_string)
                        .collect(),
                ),
            ),
            Some(("put", v)) => ("put", Some(v.to_string()), None),
            _ => ("delete", None, None),
        };
        HistoryLine {
            session,
            seq,
            op: name.into(),
            key: "k".into(),
            value,
            node: "n".into(),
            start_ms: seq as f64 * 10.0,
            end_ms: seq as f64 * 10.0 + 5.0,
            status: 200,
            outcome: "ok".into(),
            error: None,
            context_in: ctx_in.map(str::to_string),
            context_out: Some(ctx_out.to_string()),
            values,
        }
    }

    #[test]
    fn knowledge_follows_contexts_reads_and_writers() {
        let history = [
            op(0, 0, "put:a", None, "t0"),          // a, blind
            op(1, 1, "put:b", None, "t1"),          // b, blind
            op(1, 2, "put:c", Some("t1"), "t2"),    // c knew b (its own write), not a
            op(2, 3, "get:c", None, "t3"),          // shown c, and what c knew: b
            op(2, 4, "delete", Some("t3"), "t4"),   // knew c and b
            op(0, 5, "put:d", Some("stale"), "t5"), // a context its session never got
        ];
        let refs: Vec<&HistoryLine> = history.iter().collect();
        let k = knowledge(&refs);
        let names = |i: usize| k.names(&k.knew[i]);
        assert_eq!(k.writes.len(), 5);
        assert!(names(0).is_empty() && names(1).is_empty());
        assert_eq!(names(2), vec!["b"]);
        assert_eq!(names(3), vec!["b", "c"]);
        assert!(names(4).is_empty());
        assert_eq!(k.unmatched, 1);
        assert_eq!(k.writer_of("c"), Some(2));
    }

    #[test]
    fn a_read_of_a_write_that_started_after_it_still_passes_knowledge_on() {
        // Session 1's read starts before session 0's write of b and returns it.
        let mut read = op(1, 1, "get:b", None, "r");
        read.start_ms = 0.0;
        read.end_ms = 100.0;
        let history = [
            op(0, 2, "put:a", None, "t0"),
            op(0, 3, "put:b", Some("t0"), "t1"), // knew a
            read,
            op(1, 20, "put:c", Some("r"), "t2"), // shown b, and through b, a
        ];
        let refs: Vec<&HistoryLine> = history.iter().collect();
        let k = knowledge(&refs);
        let c = k.writer_of("c").unwrap();
        assert_eq!(k.names(&k.knew[c]), vec!["a", "b"]);
    }

    #[test]
    fn write_sets_grow_and_report_changes() {
        let mut a = Writes::default();
        a.insert(3);
        a.insert(130);
        let mut b = Writes::default();
        assert!(b.extend(&a));
        assert!(!b.extend(&a));
        assert_eq!(b.iter().collect::<Vec<_>>(), vec![3, 130]);
        assert!(b.contains(130) && !b.contains(4) && !b.contains(100_000));
    }
}
