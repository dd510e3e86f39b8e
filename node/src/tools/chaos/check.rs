//! `chorus check`: the chaos history checker. Reads the workload's history
//! (`chaos_client::HistoryLine`), the fault schedule `scripts/chaos` wrote (`faults.jsonl`)
//! and, once replicas have converged (or a deadline passed), every node's own replica of
//! every key (`GET /local/kv`). Reports, and fails (exit 1) on the first three:
//!
//! - **lost** acknowledged writes: an acked put whose value is not in the merged final
//!   state and that no write superseded *by observation* (`observed`): a write supersedes
//!   it only if its client had been shown it, directly (a read returned it, or it was the
//!   session's own write) or transitively (shown a value whose writer had been shown it).
//!   The contexts the server handed out are not taken as proof: a context that covers a
//!   value its client was never shown is exactly the bug this catches (issue 14). For
//!   each lost put the report names the write whose context covered it (the likely
//!   dropper) and what that write's client had been shown. A put whose answer context
//!   holds no version its request's did not was not minted at all (a node that acks
//!   without storing), and is lost unless its value is present.
//! - **phantom** values: read or stored, but never written by any client.
//! - **divergent** keys: primaries that still hold different states (or a fallback holding
//!   something the primaries lack) after the convergence deadline.
//!
//! and, as figures: sibling counts, unavailable requests and latency per fault phase and
//! per fault window, and read-your-writes / monotonic-reads violations per session.
//! The analysis ([`analyze`]) is a pure function of its inputs and unit-tested; `run` only
//! gathers them over HTTP and writes `report.md` and `summary.json`. Contexts are decoded
//! only to accuse (name a dropper, tell whether a read saw a write), never to excuse.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::cli::{CheckArgs, CliError, CliResult};
use crate::tools::bench::parse_duration_flag;
use crate::tools::chaos::observed;
use crate::tools::chaos::workload::{node_urls, HistoryLine};
use chorus_api::client::{self as http_client, BaseUrl, HttpClient};
use chorus_api::placement::RingBody;
use chorus_api::StatusBody;
use chorus_core::causality::Context;

/// Decodes a context token: no token (or an empty one) is the empty context, an
/// undecodable token is `None` (treated as having seen nothing).
pub fn context_of(token: Option<&str>) -> Option<Context> {
    match token {
        None | Some("") => Some(Context::default()),
        Some(t) => Context::decode(chorus_api::context_token(t)).ok(),
    }
}

/// True when `seen` covers every version the answer `out` added over its request
/// `ctx_in`: exactly the write's new dot for a dotted answer, the state's newer vector
/// entries for a whole-vector one.
fn covers_added(seen: &Context, ctx_in: &Context, out: &Context) -> bool {
    out.entries()
        .iter()
        .all(|&(actor, n)| n <= ctx_in.counter(actor) || seen.counter(actor) >= n)
        && out
            .extra_dots()
            .iter()
            .all(|&dot| ctx_in.covers(dot) || seen.covers(dot))
}

/// True when an answer context holds a version its request's did not (a write minted).
fn minted(ctx_in: &Context, out: &Context) -> bool {
    out.descends(ctx_in) && !ctx_in.descends(out)
}

/// One fault window from `faults.jsonl`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct FaultWindow {
    pub kind: String,
    pub start_ms: f64,
    pub end_ms: f64,
    #[serde(default)]
    pub targets: Vec<String>,
    #[serde(default)]
    pub detail: String,
}

/// The final state of one key across the cluster.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FinalKey {
    /// Live (not deleted) values held by any replica.
    pub values: BTreeSet<String>,
    /// The join of every replica's context.
    pub context: Context,
    /// Live siblings on the primaries (when they agree).
    pub siblings: usize,
    /// Whether the replicas agree (see the module doc).
    pub converged: bool,
    /// Why not, for the report.
    pub divergence: Option<String>,
}

/// Everything the report says, also written as `summary.json`.
#[derive(Serialize, Debug, Default, Clone, PartialEq)]
pub struct Summary {
    pub ops: usize,
    pub ops_by_kind: BTreeMap<String, usize>,
    pub acked_writes: usize,
    pub acked_puts: usize,
    pub lost: usize,
    pub lost_examples: Vec<String>,
    /// Every lost acked put, with the write that likely dropped it.
    pub lost_writes: Vec<LostWrite>,
    /// Writes whose context no earlier answer of their session had given (a workload
    /// bug: such a write is taken to have been shown nothing).
    pub unmatched_contexts: usize,
    /// Lost acked puts by the node that acknowledged them.
    pub lost_by_node: BTreeMap<String, usize>,
    pub phantom: usize,
    pub phantom_examples: Vec<String>,
    pub divergent: usize,
    pub divergent_examples: Vec<String>,
    pub keys: usize,
    /// Acked puts whose value is in the final state / superseded by an acked write / by a
    /// write of unknown outcome (a 503 or timeout that did reach a replica).
    pub present: usize,
    pub superseded_by_acked: usize,
    pub superseded_by_unknown: usize,
    /// Final live siblings per key: count -> keys.
    pub final_siblings: BTreeMap<usize, usize>,
    /// Values per successful read: count -> reads.
    pub read_siblings: BTreeMap<usize, usize>,
    pub phases: Vec<PhaseStats>,
    pub windows: Vec<WindowStats>,
    pub ryw_checked: usize,
    pub ryw_violations: usize,
    pub monotonic_checked: usize,
    pub monotonic_violations: usize,
    /// Problems gathering the final state (a node that never answered...).
    pub errors: Vec<String>,
}

impl Summary {
    pub fn passed(&self) -> bool {
        self.lost == 0 && self.phantom == 0 && self.divergent == 0 && self.errors.is_empty()
    }
}

/// One lost acknowledged put: where it was written and why the checker calls it lost.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct LostWrite {
    pub key: String,
    pub value: String,
    pub session: usize,
    pub node: String,
    pub start_ms: f64,
    /// What dropped it, and what that write's client had been shown.
    pub why: String,
}

impl std::fmt::Display for LostWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} = {} (session {} via {} at {:.0} ms): {}",
            self.key, self.value, self.session, self.node, self.start_ms, self.why
        )
    }
}

#[derive(Serialize, Debug, Default, Clone, PartialEq)]
pub struct PhaseStats {
    pub phase: String,
    pub ops: usize,
    pub ok: usize,
    /// Not ok: 503, timeouts, refused connections, 5xx (404 reads are ok).
    pub unavailable: usize,
    pub unavailable_rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

#[derive(Serialize, Debug, Default, Clone, PartialEq)]
pub struct WindowStats {
    pub kind: String,
    pub targets: Vec<String>,
    pub detail: String,
    pub start_s: f64,
    pub end_s: f64,
    pub ops: usize,
    pub unavailable_rate: f64,
    pub p99_ms: f64,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// The phase an operation started in: `healthy`, or the fault kinds active then, joined by `+`.
pub fn phase_at(faults: &[FaultWindow], t: f64) -> String {
    let kinds: BTreeSet<&str> = faults
        .iter()
        .filter(|f| f.start_ms <= t && t < f.end_ms)
        .map(|f| f.kind.as_str())
        .collect();
    if kinds.is_empty() {
        "healthy".to_string()
    } else {
        kinds.into_iter().collect::<Vec<_>>().join("+")
    }
}

fn is_write(op: &str) -> bool {
    op == "put" || op == "delete"
}

/// The pure analysis: history + fault windows + final states -> summary.
pub fn analyze(
    history: &[HistoryLine],
    faults: &[FaultWindow],
    finals: &HashMap<String, FinalKey>,
) -> Summary {
    let mut s = Summary {
        ops: history.len(),
        keys: finals.len(),
        ..Summary::default()
    };
    for h in history {
        *s.ops_by_kind
            .entry(format!("{} {}", h.op, h.outcome))
            .or_insert(0) += 1;
    }
    lost_puts(history, finals, &mut s);
    s.acked_writes = history
        .iter()
        .filter(|h| is_write(&h.op) && h.outcome == "ok")
        .count();
    let phantoms = phantom_values(history, finals);
    s.phantom = phantoms.len();
    s.phantom_examples = phantoms.into_iter().take(10).collect();
    for h in acked_reads(history) {
        *s.read_siblings
            .entry(h.values.as_ref().map_or(0, Vec::len))
            .or_insert(0) += 1;
    }
    final_siblings_and_divergence(finals, &mut s);
    session_guarantees(history, &mut s);
    s.phases = phase_stats(history, faults);
    s.windows = window_stats(history, faults);
    s
}

fn acked_reads(history: &[HistoryLine]) -> impl Iterator<Item = &HistoryLine> {
    history
        .iter()
        .filter(|h| h.op == "get" && h.outcome == "ok")
}

/// Values in a read or a final state that no client ever tried to write (whatever the
/// write's outcome), described for the report.
fn phantom_values(history: &[HistoryLine], finals: &HashMap<String, FinalKey>) -> BTreeSet<String> {
    let written: HashSet<&str> = history
        .iter()
        .filter(|h| h.op == "put")
        .filter_map(|h| h.value.as_deref())
        .collect();
    let mut phantoms = BTreeSet::new();
    for h in acked_reads(history) {
        for v in h.values.iter().flatten() {
            if !written.contains(v.as_str()) {
                phantoms.insert(format!("{} = {v} (read by session {})", h.key, h.session));
            }
        }
    }
    for (key, f) in finals {
        for v in &f.values {
            if !written.contains(v.as_str()) {
                phantoms.insert(format!("{key} = {v} (in the final state)"));
            }
        }
    }
    phantoms
}

/// Sibling counts of the converged keys; the others counted as divergent, the first ten
/// (in key order) described.
fn final_siblings_and_divergence(finals: &HashMap<String, FinalKey>, s: &mut Summary) {
    let mut keys: Vec<&String> = finals.keys().collect();
    keys.sort();
    for key in keys {
        let f = &finals[key];
        if f.converged {
            *s.final_siblings.entry(f.siblings).or_insert(0) += 1;
        } else {
            s.divergent += 1;
            if s.divergent_examples.len() < 10 {
                s.divergent_examples.push(format!(
                    "{key}: {}",
                    f.divergence.as_deref().unwrap_or("replicas differ")
                ));
            }
        }
    }
}

/// Read-your-writes and monotonic reads, per (session, key), in the session's own order.
fn session_guarantees(history: &[HistoryLine], s: &mut Summary) {
    let mut by_session: BTreeMap<(usize, &str), Vec<&HistoryLine>> = BTreeMap::new();
    for h in history {
        by_session
            .entry((h.session, h.key.as_str()))
            .or_default()
            .push(h);
    }
    for ops in by_session.values_mut() {
        ops.sort_by_key(|h| h.seq);
        session_key_guarantees(ops, s);
    }
}

/// The session guarantees over one session's operations on one key, sorted by `seq`.
fn session_key_guarantees(ops: &[&HistoryLine], s: &mut Summary) {
    // This session's last acked write of the key: its value (none for a delete), its
    // request context, and its answer context (whether that holds a version the request's
    // did not tells whether the write minted one).
    let mut my_write: Option<(Option<&str>, Context, Context)> = None;
    let mut last_read: Option<Context> = None;
    for h in ops.iter().filter(|h| h.outcome == "ok") {
        if is_write(&h.op) {
            let input = context_of(h.context_in.as_deref()).unwrap_or_default();
            let output = context_of(h.context_out.as_deref()).unwrap_or_default();
            my_write = Some((h.value.as_deref(), input, output));
            continue;
        }
        let Some(seen) = context_of(h.context_out.as_deref()) else {
            continue;
        };
        if let Some((value, input, out)) = &my_write {
            s.ryw_checked += 1;
            // The read returned the write's value, or saw its version (or a successor).
            let read_it = value.is_some_and(|v| h.values.iter().flatten().any(|x| x == v));
            let saw_version = minted(input, out) && covers_added(&seen, input, out);
            if !(read_it || saw_version) {
                s.ryw_violations += 1;
            }
        }
        if let Some(r) = &last_read {
            s.monotonic_checked += 1;
            if !seen.descends(r) {
                s.monotonic_violations += 1;
            }
        }
        last_read = Some(seen);
    }
}

/// Availability and latency per fault phase (the set of faults active when a request
/// started), in phase order.
fn phase_stats(history: &[HistoryLine], faults: &[FaultWindow]) -> Vec<PhaseStats> {
    let mut phases: BTreeMap<String, (usize, usize, Vec<f64>)> = BTreeMap::new();
    for h in history {
        let e = phases.entry(phase_at(faults, h.start_ms)).or_default();
        e.0 += 1;
        if h.outcome == "ok" {
            e.1 += 1;
        }
        e.2.push(h.end_ms - h.start_ms);
    }
    phases
        .into_iter()
        .map(|(phase, (ops, ok, mut lat))| {
            lat.sort_by(f64::total_cmp);
            PhaseStats {
                phase,
                ops,
                ok,
                unavailable: ops - ok,
                unavailable_rate: round((ops - ok) as f64 / ops.max(1) as f64, 4),
                p50_ms: round(percentile(&lat, 0.5), 1),
                p99_ms: round(percentile(&lat, 0.99), 1),
                p999_ms: round(percentile(&lat, 0.999), 1),
                max_ms: round(lat.last().copied().unwrap_or(0.0), 1),
            }
        })
        .collect()
}

/// Availability and latency of the requests that started inside each fault window, the
/// windows placed in seconds from the first request.
fn window_stats(history: &[HistoryLine], faults: &[FaultWindow]) -> Vec<WindowStats> {
    let t0 = history
        .iter()
        .map(|h| h.start_ms)
        .fold(f64::INFINITY, f64::min);
    let seconds_in = |ms: f64| {
        let seconds = if t0.is_finite() {
            (ms - t0) / 1000.0
        } else {
            0.0
        };
        round(seconds, 1)
    };
    faults
        .iter()
        .map(|f| {
            let inside: Vec<&HistoryLine> = history
                .iter()
                .filter(|h| f.start_ms <= h.start_ms && h.start_ms < f.end_ms)
                .collect();
            let mut lat: Vec<f64> = inside.iter().map(|h| h.end_ms - h.start_ms).collect();
            lat.sort_by(f64::total_cmp);
            let bad = inside.iter().filter(|h| h.outcome != "ok").count();
            WindowStats {
                kind: f.kind.clone(),
                targets: f.targets.clone(),
                detail: f.detail.clone(),
                start_s: seconds_in(f.start_ms),
                end_s: seconds_in(f.end_ms),
                ops: inside.len(),
                unavailable_rate: round(bad as f64 / inside.len().max(1) as f64, 4),
                p99_ms: round(percentile(&lat, 0.99), 1),
            }
        })
        .collect()
}

/// Lost acknowledged puts, by observation (see the module doc), key by key.
fn lost_puts(history: &[HistoryLine], finals: &HashMap<String, FinalKey>, s: &mut Summary) {
    let mut by_key: BTreeMap<&str, Vec<&HistoryLine>> = BTreeMap::new();
    for h in history {
        by_key.entry(h.key.as_str()).or_default().push(h);
    }
    for (key, ops) in by_key {
        let known = observed::knowledge(&ops);
        s.unmatched_contexts += known.unmatched;
        let fin = finals.get(key);
        for (u, h) in known.writes.iter().enumerate() {
            if h.op != "put" || h.outcome != "ok" {
                continue;
            }
            s.acked_puts += 1;
            let Some(value) = h.value.as_deref() else {
                continue;
            };
            if fin.is_some_and(|f| f.values.contains(value)) {
                s.present += 1;
                continue;
            }
            let knew = |outcome: &str| {
                known
                    .writes
                    .iter()
                    .zip(&known.knew)
                    .any(|(w, k)| w.outcome == outcome && k.contains(u))
            };
            let input = context_of(h.context_in.as_deref()).unwrap_or_default();
            let out = context_of(h.context_out.as_deref()).unwrap_or_default();
            let why = if !minted(&input, &out) {
                "acknowledged without a new version (its answer context holds none its request's did not)".to_string()
            } else if knew("ok") {
                s.superseded_by_acked += 1;
                continue;
            } else if knew("unknown") {
                s.superseded_by_unknown += 1;
                continue;
            } else {
                dropped_by(&known, u, &input, &out)
            };
            s.lost += 1;
            *s.lost_by_node.entry(h.node.clone()).or_insert(0) += 1;
            let lost = LostWrite {
                key: key.to_string(),
                value: value.to_string(),
                session: h.session,
                node: h.node.clone(),
                start_ms: h.start_ms,
                why,
            };
            if s.lost_examples.len() < 10 {
                s.lost_examples.push(lost.to_string());
            }
            s.lost_writes.push(lost);
        }
    }
    if s.unmatched_contexts > 0 {
        s.errors.push(format!(
            "{} writes carried a context their session had not been given (a workload bug)",
            s.unmatched_contexts
        ));
    }
}

/// Why a put no client was shown is gone: the first later write whose request context
/// covered its version (contexts used only to accuse), and what that write's client had
/// actually been shown.
fn dropped_by(known: &observed::KeyKnowledge, u: usize, input: &Context, out: &Context) -> String {
    let put = known.writes[u];
    let dropper = known
        .writes
        .iter()
        .zip(&known.knew)
        .filter(|(w, _)| w.outcome != "fail" && w.start_ms > put.start_ms)
        .find(|(w, _)| {
            context_of(w.context_in.as_deref()).is_some_and(|ctx| covers_added(&ctx, input, out))
        });
    let Some((w, knew)) = dropper else {
        return "no client was shown it, and no write's context covered it: dropped by a replica or a merge".to_string();
    };
    let mut shown = known.names(knew);
    let more = shown.len().saturating_sub(8);
    shown.truncate(8);
    let what = match &w.value {
        Some(v) => format!("put {v}"),
        None => format!("a delete (session {} #{})", w.session, w.seq),
    };
    format!(
        "no client was shown it; dropped by {what} (session {} via {} at {:.0} ms, {}), whose context covered it though its client had been shown {}{}",
        w.session,
        w.node,
        w.start_ms,
        w.outcome,
        if shown.is_empty() { "nothing".to_string() } else { format!("only [{}]", shown.join(", ")) },
        if more > 0 { format!(" and {more} more") } else { String::new() }
    )
}

/// The report a person reads: `report.md`.
pub fn markdown(s: &Summary, faults: &[FaultWindow]) -> String {
    let mut out = String::new();
    let verdict = if s.passed() { "PASS" } else { "FAIL" };
    let _ = writeln!(out, "# Chaos run: {verdict}\n");
    markdown_checks(&mut out, s);
    markdown_examples(&mut out, s);
    markdown_phases(&mut out, s);
    if !faults.is_empty() {
        markdown_windows(&mut out, s);
    }
    out
}

/// The headline table: one row per check, then the errors.
fn markdown_checks(out: &mut String, s: &Summary) {
    let _ = writeln!(out, "| check | result |\n|---|---|");
    let _ = writeln!(
        out,
        "| operations | {} ({}) |",
        s.ops,
        counts(&s.ops_by_kind)
    );
    let _ = writeln!(out, "| acknowledged writes lost | **{}** of {} acked puts ({} present, {} superseded by an acked write, {} by a write of unknown outcome) |", s.lost, s.acked_puts, s.present, s.superseded_by_acked, s.superseded_by_unknown);
    let _ = writeln!(out, "| values no client wrote | **{}** |", s.phantom);
    let _ = writeln!(
        out,
        "| keys whose replicas differ after convergence | **{}** of {} |",
        s.divergent, s.keys
    );
    let _ = writeln!(
        out,
        "| read-your-writes violations (session, context) | {} of {} reads |",
        s.ryw_violations, s.ryw_checked
    );
    let _ = writeln!(
        out,
        "| monotonic-reads violations (session, context) | {} of {} reads |",
        s.monotonic_violations, s.monotonic_checked
    );
    let _ = writeln!(
        out,
        "| final live siblings per key | {} |",
        dist(&s.final_siblings)
    );
    let _ = writeln!(
        out,
        "| values per successful read | {} |",
        dist(&s.read_siblings)
    );
    if !s.lost_by_node.is_empty() {
        let _ = writeln!(
            out,
            "| lost writes by acknowledging node | {} |",
            counts(&s.lost_by_node)
        );
    }
    for e in &s.errors {
        let _ = writeln!(out, "| error | {e} |");
    }
}

/// Every lost write, and the first phantom values and divergent keys.
fn markdown_examples(out: &mut String, s: &Summary) {
    if !s.lost_writes.is_empty() {
        let _ = writeln!(out, "\n## Lost writes ({})\n", s.lost_writes.len());
        for l in &s.lost_writes {
            let _ = writeln!(out, "- {l}");
        }
    }
    for (title, list) in [
        ("Phantom values", &s.phantom_examples),
        ("Divergent keys", &s.divergent_examples),
    ] {
        if !list.is_empty() {
            let _ = writeln!(out, "\n## {title} (first {})\n", list.len());
            for l in list {
                let _ = writeln!(out, "- {l}");
            }
        }
    }
}

fn markdown_phases(out: &mut String, s: &Summary) {
    let _ = writeln!(out, "\n## Per fault phase\n\nA phase is the set of faults active when a request started. Unavailable: anything but a success (503, timeout, refused connection); a 404 read is a success.\n");
    let _ = writeln!(out, "| phase | ops | unavailable | rate | p50 ms | p99 ms | p99.9 ms | max ms |\n|---|---|---|---|---|---|---|---|");
    for p in &s.phases {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.2}% | {} | {} | {} | {} |",
            p.phase,
            p.ops,
            p.unavailable,
            p.unavailable_rate * 100.0,
            p.p50_ms,
            p.p99_ms,
            p.p999_ms,
            p.max_ms
        );
    }
}

fn markdown_windows(out: &mut String, s: &Summary) {
    let _ = writeln!(
        out,
        "\n## Fault schedule (seconds from the first request)\n"
    );
    let _ = writeln!(out, "| from | to | fault | targets | detail | ops | unavailable | p99 ms |\n|---|---|---|---|---|---|---|---|");
    for w in &s.windows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {:.1}% | {} |",
            w.start_s,
            w.end_s,
            w.kind,
            w.targets.join(" "),
            w.detail,
            w.ops,
            w.unavailable_rate * 100.0,
            w.p99_ms
        );
    }
}

/// `k: n, k: n, ...` in key order (empty for no entries).
fn counts<K: std::fmt::Display>(d: &BTreeMap<K, usize>) -> String {
    d.iter()
        .map(|(k, n)| format!("{k}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A distribution for the report, `-` when there is none.
fn dist(d: &BTreeMap<usize, usize>) -> String {
    if d.is_empty() {
        return "-".into();
    }
    counts(d)
}

/// The terminal summary: the headline numbers and the per-phase table.
pub fn terminal(s: &Summary) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "chorus check: {}",
        if s.passed() { "PASS" } else { "FAIL" }
    );
    let _ = writeln!(out, "  operations          {}", s.ops);
    let _ = writeln!(
        out,
        "  acked puts          {} (present {}, superseded {} + {} by unknown-outcome writes)",
        s.acked_puts, s.present, s.superseded_by_acked, s.superseded_by_unknown
    );
    let _ = writeln!(out, "  LOST acked writes   {}", s.lost);
    if !s.lost_by_node.is_empty() {
        let _ = writeln!(out, "  lost by node        {}", counts(&s.lost_by_node));
    }
    let _ = writeln!(out, "  phantom values      {}", s.phantom);
    let _ = writeln!(out, "  divergent keys      {} of {}", s.divergent, s.keys);
    let _ = writeln!(
        out,
        "  read-your-writes    {} violations in {} reads",
        s.ryw_violations, s.ryw_checked
    );
    let _ = writeln!(
        out,
        "  monotonic reads     {} violations in {} reads",
        s.monotonic_violations, s.monotonic_checked
    );
    let _ = writeln!(out, "  final siblings/key  {}", dist(&s.final_siblings));
    for e in &s.errors {
        let _ = writeln!(out, "  error: {e}");
    }
    for l in s
        .lost_examples
        .iter()
        .take(3)
        .chain(s.phantom_examples.iter().take(3))
        .chain(s.divergent_examples.iter().take(3))
    {
        let _ = writeln!(out, "    e.g. {l}");
    }
    let _ = writeln!(
        out,
        "  {:<24} {:>7} {:>8} {:>8} {:>8} {:>9}",
        "phase", "ops", "unavail", "p50 ms", "p99 ms", "max ms"
    );
    for p in &s.phases {
        let _ = writeln!(
            out,
            "  {:<24} {:>7} {:>7.2}% {:>8} {:>8} {:>9}",
            p.phase,
            p.ops,
            p.unavailable_rate * 100.0,
            p.p50_ms,
            p.p99_ms,
            p.max_ms
        );
    }
    out
}

// ---------------------------------------------------------------------------------------
// Gathering the inputs.

fn read_jsonl<T: for<'de> Deserialize<'de>>(
    path: &Path,
    required: bool,
) -> Result<Vec<T>, CliError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(CliError::usage(format!(
                "cannot read {}: {e}",
                path.display()
            )))
        }
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| CliError::usage(format!("{}:{}: {e}", path.display(), i + 1)))
        })
        .collect()
}

/// One replica's state of a key as `/local/kv` shows it.
#[derive(Debug, Clone, PartialEq)]
struct LocalState {
    context: String,
    /// (value, deleted), in the replica's order.
    siblings: Vec<(String, bool)>,
}

struct Cluster {
    /// name -> client
    nodes: BTreeMap<String, HttpClient>,
}

impl Cluster {
    async fn connect(urls: &[BaseUrl], deadline: Instant) -> Result<Cluster, String> {
        let mut nodes = BTreeMap::new();
        for url in urls {
            let mut client = HttpClient::new(url.clone()).with_timeout(Duration::from_secs(5));
            loop {
                match client.get("/status").await {
                    Ok(r) if r.status == 200 => {
                        nodes.insert(StatusBody::parse(&r.body)?.node, client);
                        break;
                    }
                    _ if Instant::now() > deadline => {
                        return Err(format!("{url} did not answer /status before the deadline"))
                    }
                    _ => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
        }
        Ok(Cluster { nodes })
    }

    /// Waits until every node sees every other as alive (or the deadline passes).
    async fn wait_alive(&mut self, deadline: Instant) -> bool {
        loop {
            let mut all = true;
            for client in self.nodes.values_mut() {
                let alive = match client.get("/status").await {
                    Ok(r) if r.status == 200 => StatusBody::parse(&r.body)
                        .is_ok_and(|s| s.members.iter().all(|m| m.state == "alive" && m.reachable)),
                    _ => false,
                };
                all &= alive;
            }
            if all {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn primaries(&mut self, bucket: &str, key: &str) -> Result<Vec<String>, String> {
        let path = format!(
            "/ring/{}/{}",
            http_client::encode_segment(bucket),
            http_client::encode_segment(key)
        );
        let mut last = String::new();
        for client in self.nodes.values_mut() {
            match client.get(&path).await {
                Ok(r) if r.status == 200 => {
                    let ring: RingBody = serde_json::from_slice(&r.body)
                        .map_err(|e| format!("not a chorus /ring answer: {e}"))?;
                    return Ok(ring.primaries());
                }
                Ok(r) => last = r.error_message(),
                Err(e) => last = e.to_string(),
            }
        }
        Err(format!("no node answered {path}: {last}"))
    }

    /// Every node's replica of the key: name -> state (None when it holds nothing).
    async fn states(
        &mut self,
        bucket: &str,
        key: &str,
    ) -> Result<BTreeMap<String, Option<LocalState>>, String> {
        let path = format!(
            "/local/kv/{}/{}",
            http_client::encode_segment(bucket),
            http_client::encode_segment(key)
        );
        let mut out = BTreeMap::new();
        for (name, client) in self.nodes.iter_mut() {
            let r = client
                .get(&path)
                .await
                .map_err(|e| format!("{name}: {e}"))?;
            let state = match r.status {
                404 => None,
                200 => {
                    let body = chorus_api::SiblingsBody::parse(&r.body)
                        .map_err(|e| format!("{name}{path}: {e}"))?;
                    let siblings = body
                        .siblings
                        .iter()
                        .map(|s| {
                            let value = String::from_utf8_lossy(&s.value).into_owned();
                            (value, s.deleted.unwrap_or(false))
                        })
                        .collect();
                    Some(LocalState {
                        context: body.context,
                        siblings,
                    })
                }
                _ => return Err(format!("{name}{path}: {}", r.error_message())),
            };
            out.insert(name.clone(), state);
        }
        Ok(out)
    }
}

/// Folds every node's replica of a key into the key's final state.
fn final_key(primaries: &[String], states: &BTreeMap<String, Option<LocalState>>) -> FinalKey {
    let mut fin = FinalKey::default();
    for state in states.values().flatten() {
        fin.context = fin
            .context
            .join(&context_of(Some(&state.context)).unwrap_or_default());
        fin.values.extend(
            state
                .siblings
                .iter()
                .filter(|(_, deleted)| !deleted)
                .map(|(v, _)| v.clone()),
        );
    }
    let primary_states: Vec<&Option<LocalState>> = primaries
        .iter()
        .map(|p| states.get(p).unwrap_or(&None))
        .collect();
    let first = primary_states.first().copied().cloned().flatten();
    let agree = primary_states.iter().all(|s| **s == first);
    let primary_context = first
        .as_ref()
        .and_then(|s| context_of(Some(&s.context)))
        .unwrap_or_default();
    let stray: Vec<&String> = states
        .iter()
        .filter(|(name, s)| {
            !primaries.contains(name)
                && s.as_ref().is_some_and(|s| {
                    !primary_context.descends(&context_of(Some(&s.context)).unwrap_or_default())
                })
        })
        .map(|(name, _)| name)
        .collect();
    fin.converged = agree && stray.is_empty();
    fin.siblings = first
        .as_ref()
        .map_or(0, |s| s.siblings.iter().filter(|(_, d)| !d).count());
    if !agree {
        let shown: Vec<String> = primaries
            .iter()
            .zip(&primary_states)
            .map(|(p, s)| match s {
                None => format!("{p}: nothing"),
                Some(s) => format!("{p}: {} siblings", s.siblings.len()),
            })
            .collect();
        fin.divergence = Some(format!("primaries differ ({})", shown.join(", ")));
    } else if !stray.is_empty() {
        fin.divergence = Some(format!(
            "non-primaries {stray:?} hold versions the primaries lack"
        ));
    }
    fin
}

/// One line about the run from the `config.json` scripts/chaos writes, when there is one.
fn run_description(dir: &Path) -> Option<String> {
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).ok()?).ok()?;
    let list = |v: &Value| {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    };
    let mut line = format!(
        "Run: {} nodes, {} s, faults {}, seed {}, {} sessions over {} keys at {} ops/s{}.",
        config["nodes"],
        config["duration_s"],
        list(&config["faults"]),
        config["seed"],
        config["sessions"],
        config["keys"],
        config["rate"],
        if config["netns"].as_bool() == Some(true) {
            ", one network namespace per node"
        } else {
            ", on 127.0.0.1"
        },
    );
    let skipped = list(&config["skipped"]);
    if !skipped.is_empty() {
        line.push_str(&format!(" Skipped (need root): {skipped}."));
    }
    if config["old_answer_context"].as_bool() == Some(true) {
        line.push_str(
            " **Every node answers writes with the first build's context (issue 14's bug).**",
        );
    }
    if config["broken_node"].as_bool() == Some(true) {
        line.push_str(&format!(
            " **Broken node: n{} acknowledges writes without storing them.**",
            config["nodes"]
        ));
    }
    Some(line)
}

pub fn run(args: CheckArgs) -> CliResult {
    let history_path = args
        .history
        .clone()
        .unwrap_or_else(|| args.dir.join("history.jsonl"));
    let history: Vec<HistoryLine> = read_jsonl(&history_path, true)?;
    let faults: Vec<FaultWindow> = read_jsonl(&args.dir.join("faults.jsonl"), false)?;
    let converge = parse_duration_flag("--converge-timeout", &args.converge_timeout)?;
    let urls = node_urls(&args.nodes)?;
    let keys: BTreeSet<String> = history.iter().map(|h| h.key.clone()).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("cannot start the async runtime: {e}")))?;
    let started = Instant::now();
    let (finals, errors) = runtime.block_on(gather_finals(&urls, &args.bucket, &keys, converge));
    let mut summary = analyze(&history, &faults, &finals);
    summary.errors.extend(errors);
    let missing = keys.iter().filter(|k| !finals.contains_key(*k)).count();
    if missing > 0 {
        summary
            .errors
            .push(format!("{missing} keys' final states could not be read"));
    }
    write_report(&args.dir, &summary, &faults)?;
    write_summary(&args.dir, &summary, started)?;
    print!("{}", terminal(&summary));
    println!(
        "  (replicas read after {:.1} s; report: {})",
        started.elapsed().as_secs_f64(),
        args.dir.join("report.md").display()
    );
    if summary.passed() {
        Ok(())
    } else {
        Err(CliError::failed(
            "the checker found lost writes, phantom values, divergent replicas or errors",
        ))
    }
}

/// Connects to the cluster and reads every key's final state, again while some have not
/// converged, until they all have or the deadline passed. Returns the states read and
/// what went wrong.
async fn gather_finals(
    urls: &[BaseUrl],
    bucket: &str,
    keys: &BTreeSet<String>,
    converge: Duration,
) -> (HashMap<String, FinalKey>, Vec<String>) {
    let deadline = Instant::now() + converge;
    let mut errors = Vec::new();
    let mut cluster = match Cluster::connect(urls, deadline).await {
        Ok(c) => c,
        Err(e) => return (HashMap::new(), vec![e]),
    };
    if !cluster.wait_alive(deadline).await {
        errors.push("not every node saw every other as alive before the deadline".to_string());
    }
    let mut gathered = Gathered::default();
    let mut pending: Vec<String> = keys.iter().cloned().collect();
    loop {
        pending = match gathered.read_pass(&mut cluster, bucket, &pending).await {
            Ok(still) => still,
            Err(e) => {
                errors.push(e);
                return (gathered.finals, errors);
            }
        };
        if pending.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    errors.extend(
        gathered
            .read_errors
            .into_iter()
            .take(3)
            .map(|(k, e)| format!("reading {k}: {e}")),
    );
    (gathered.finals, errors)
}

/// What the checker has read of the keys' final states so far.
#[derive(Default)]
struct Gathered {
    /// Per key, its primaries (asked once).
    primaries: HashMap<String, Vec<String>>,
    finals: HashMap<String, FinalKey>,
    /// Per key, why its replicas could not be read the last time (none once they were).
    read_errors: BTreeMap<String, String>,
}

impl Gathered {
    /// Reads the replicas of every key in `pending` once. Returns the keys to read again
    /// (not converged, or a node did not answer), or why no key can be placed.
    async fn read_pass(
        &mut self,
        cluster: &mut Cluster,
        bucket: &str,
        pending: &[String],
    ) -> Result<Vec<String>, String> {
        let mut still = Vec::new();
        for key in pending {
            if !self.primaries.contains_key(key) {
                let primaries = cluster.primaries(bucket, key).await?;
                self.primaries.insert(key.clone(), primaries);
            }
            match cluster.states(bucket, key).await {
                Ok(states) => {
                    let fin = final_key(&self.primaries[key], &states);
                    if !fin.converged {
                        still.push(key.clone());
                    }
                    self.finals.insert(key.clone(), fin);
                    self.read_errors.remove(key);
                }
                Err(e) => {
                    // A node not answering yet: try again until the deadline.
                    self.read_errors.insert(key.clone(), e);
                    still.push(key.clone());
                }
            }
        }
        Ok(still)
    }
}

/// Writes `report.md`: the markdown report, the run's description under its title.
fn write_report(dir: &Path, summary: &Summary, faults: &[FaultWindow]) -> CliResult {
    let mut report = markdown(summary, faults);
    if let Some(line) = run_description(dir) {
        let at = report.find('\n').map_or(0, |i| i + 1);
        report.insert_str(at, &format!("\n{line}\n"));
    }
    write_output(dir, "report.md", report)
}

/// Writes `summary.json`: the summary, its verdict and how long since `started` (when the
/// checker began waiting for the replicas).
fn write_summary(dir: &Path, summary: &Summary, started: Instant) -> CliResult {
    let mut json = serde_json::to_value(summary).expect("a summary serializes");
    json["passed"] = json!(summary.passed());
    json["converge_wait_s"] = json!(round(started.elapsed().as_secs_f64(), 1));
    let text = serde_json::to_string_pretty(&json).expect("JSON");
    write_output(dir, "summary.json", text)
}

fn write_output(dir: &Path, name: &str, text: String) -> CliResult {
    let path = dir.join(name);
    std::fs::write(&path, text)
        .map_err(|e| CliError::failed(format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_core::causality::{ActorId, Context};
    use chorus_core::object::{Object, Sibling};

    fn value(v: &str) -> Sibling {
        Sibling::value(v.as_bytes().to_vec(), None)
    }

    fn line(
        session: usize,
        seq: u64,
        op: &str,
        key: &str,
        value: Option<&str>,
        outcome: &str,
        ctx_in: Option<String>,
        ctx_out: Option<String>,
    ) -> HistoryLine {
        HistoryLine {
            session,
            seq,
            op: op.into(),
            key: key.into(),
            value: value.map(str::to_string),
            node: "http://n1".into(),
            start_ms: 1000.0 + seq as f64 * 10.0,
            end_ms: 1005.0 + seq as f64 * 10.0,
            status: if outcome == "ok" { 204 } else { 503 },
            outcome: outcome.into(),
            error: None,
            context_in: ctx_in,
            context_out: ctx_out,
            values: None,
        }
    }

    fn get(session: usize, seq: u64, key: &str, values: &[&str], ctx: &Object) -> HistoryLine {
        let mut l = line(
            session,
            seq,
            "get",
            key,
            None,
            "ok",
            None,
            Some(ctx.context().encode()),
        );
        l.status = 200;
        l.values = Some(values.iter().map(|v| v.to_string()).collect());
        l
    }

    fn fin(obj: &Object) -> FinalKey {
        FinalKey {
            values: obj
                .values()
                .iter()
                .filter(|s| !s.deleted)
                .map(|s| String::from_utf8_lossy(&s.value).into_owned())
                .collect(),
            context: obj.context(),
            siblings: obj.values().iter().filter(|s| !s.deleted).count(),
            converged: true,
            divergence: None,
        }
    }

    #[test]
    fn a_present_or_superseded_write_is_not_lost() {
        let a = ActorId(7);
        let o1 = Object::new().update(&Default::default(), a, value("s0-0"));
        // Session 1 read o1, then wrote over it with its context: s0-0 is superseded.
        let o2 = o1.update(&o1.context(), a, value("s1-1"));
        let history = vec![
            line(
                0,
                0,
                "put",
                "k",
                Some("s0-0"),
                "ok",
                None,
                Some(o1.context().encode()),
            ),
            get(1, 0, "k", &["s0-0"], &o1),
            line(
                1,
                1,
                "put",
                "k",
                Some("s1-1"),
                "ok",
                Some(o1.context().encode()),
                Some(o2.context().encode()),
            ),
        ];
        let finals = HashMap::from([("k".to_string(), fin(&o2))]);
        let s = analyze(&history, &[], &finals);
        assert_eq!((s.lost, s.phantom, s.divergent), (0, 0, 0), "{s:?}");
        assert_eq!(
            (s.present, s.superseded_by_acked, s.superseded_by_unknown),
            (1, 1, 0)
        );
        assert!(s.passed());
    }

    #[test]
    fn a_write_dropped_without_a_superseding_write_is_lost() {
        let a = ActorId(7);
        let o1 = Object::new().update(&Default::default(), a, value("s0-0"));
        // The final state saw s0-0's version but holds another value, and no client write
        // carried a context that saw s0-0: it was dropped (say, by a wall-clock merge).
        let o2 = o1.update(&o1.context(), a, value("s1-1"));
        let history = vec![
            line(
                0,
                0,
                "put",
                "k",
                Some("s0-0"),
                "ok",
                None,
                Some(o1.context().encode()),
            ),
            line(
                1,
                1,
                "put",
                "k",
                Some("s1-1"),
                "ok",
                None,
                Some(o2.context().encode()),
            ),
        ];
        let s = analyze(&history, &[], &HashMap::from([("k".to_string(), fin(&o2))]));
        assert_eq!(s.lost, 1, "{s:?}");
        assert!(s.lost_examples[0]
            .contains("no client was shown it, and no write's context covered it"));
        assert!(!s.passed());
        // A superseding write of unknown outcome (a 503 that reached a replica) whose
        // client had read s0-0 excuses it.
        let mut history = history;
        history.push(get(2, 2, "k", &["s0-0"], &o1));
        history.push(line(
            2,
            3,
            "put",
            "k",
            Some("s2-3"),
            "unknown",
            Some(o1.context().encode()),
            None,
        ));
        let s = analyze(&history, &[], &HashMap::from([("k".to_string(), fin(&o2))]));
        assert_eq!((s.lost, s.superseded_by_unknown), (0, 1), "{s:?}");
        // A context the session was never given proves nothing, and is reported.
        history.remove(2);
        let s = analyze(&history, &[], &HashMap::from([("k".to_string(), fin(&o2))]));
        assert_eq!((s.lost, s.unmatched_contexts), (1, 1), "{s:?}");
        assert!(!s.passed());
    }

    /// Issue 14's trace: session 3 writes s3-9 blind; session 4 writes s4-21 blind and
    /// its answer context covers s3-9 (the first build answered with the whole state's
    /// vector); session 4 writes s4-32 with that context and s3-9 is gone, though no
    /// client was ever shown it. Contexts would call it superseded; observation does not.
    #[test]
    fn a_value_dropped_by_a_context_that_covered_it_unseen_is_lost() {
        let (a, b) = (ActorId(7), ActorId(8));
        let o1 = Object::new().update(&Default::default(), a, value("s3-9"));
        let o2 = o1.update(&Default::default(), b, value("s4-21"));
        let run = |answer: Context| {
            let o3 = o2.update(&answer, b, value("s4-32"));
            let history = vec![
                line(
                    3,
                    9,
                    "put",
                    "k",
                    Some("s3-9"),
                    "ok",
                    None,
                    Some(o1.context().encode()),
                ),
                line(
                    4,
                    21,
                    "put",
                    "k",
                    Some("s4-21"),
                    "ok",
                    None,
                    Some(answer.encode()),
                ),
                line(
                    4,
                    32,
                    "put",
                    "k",
                    Some("s4-32"),
                    "ok",
                    Some(answer.encode()),
                    Some(o3.context().encode()),
                ),
            ];
            analyze(&history, &[], &HashMap::from([("k".to_string(), fin(&o3))]))
        };
        let s = run(o2.context());
        assert_eq!(s.lost, 1, "{s:?}");
        let why = &s.lost_writes[0];
        assert_eq!((why.value.as_str(), why.session), ("s3-9", 3));
        assert!(
            why.why.contains("dropped by put s4-32 (session 4"),
            "{}",
            why.why
        );
        assert!(
            why.why.contains("had been shown only [s4-21]"),
            "{}",
            why.why
        );
        assert!(markdown(&s, &[]).contains("## Lost writes (1)"));
        // The dotted answer: s3-9 stays next to s4-32, which superseded its own s4-21.
        let s = run(o2.write_answer(&Context::default(), (b, 1)));
        assert_eq!(
            (s.lost, s.present, s.superseded_by_acked),
            (0, 2, 1),
            "{s:?}"
        );
    }

    #[test]
    fn an_ack_without_a_new_version_is_lost() {
        // A broken node answers 204 with the request's own context and stores nothing.
        let a = ActorId(7);
        let o1 = Object::new().update(&Default::default(), a, value("s0-0"));
        let history = vec![
            line(
                0,
                0,
                "put",
                "k",
                Some("s0-0"),
                "ok",
                None,
                Some(o1.context().encode()),
            ),
            line(
                1,
                1,
                "put",
                "k",
                Some("s1-1"),
                "ok",
                Some(o1.context().encode()),
                Some(o1.context().encode()),
            ),
            line(1, 2, "put", "j", Some("s1-2"), "ok", None, None),
        ];
        let finals = HashMap::from([
            ("k".to_string(), fin(&o1)),
            (
                "j".to_string(),
                FinalKey {
                    converged: true,
                    ..Default::default()
                },
            ),
        ]);
        let s = analyze(&history, &[], &finals);
        assert_eq!(s.lost, 2, "{s:?}");
        assert!(s
            .lost_examples
            .iter()
            .all(|e| e.contains("without a new version")));
        assert_eq!(s.lost_by_node.get("http://n1"), Some(&2));
        // The session reading back after the broken ack does not see its write.
        let mut history = history;
        history.push(get(1, 3, "k", &["s0-0"], &o1));
        let s = analyze(&history, &[], &finals);
        assert_eq!((s.ryw_checked, s.ryw_violations), (1, 1), "{s:?}");
    }

    #[test]
    fn phantoms_and_divergence_are_counted() {
        let a = ActorId(7);
        let o1 = Object::new().update(&Default::default(), a, value("s0-0"));
        let odd = Object::new().update(&Default::default(), ActorId(9), value("nobody-wrote-this"));
        let history = vec![
            line(
                0,
                0,
                "put",
                "k",
                Some("s0-0"),
                "ok",
                None,
                Some(o1.context().encode()),
            ),
            get(0, 1, "k", &["made-up"], &o1),
        ];
        let mut k = fin(&o1);
        k.values.insert("nobody-wrote-this".into());
        let mut j = fin(&odd);
        j.converged = false;
        j.divergence = Some("primaries differ".into());
        let s = analyze(
            &history,
            &[],
            &HashMap::from([("k".to_string(), k), ("j".to_string(), j)]),
        );
        assert_eq!((s.lost, s.phantom, s.divergent), (0, 3, 1), "{s:?}");
        assert!(!s.passed());
    }

    #[test]
    fn session_guarantees_use_contexts() {
        let a = ActorId(7);
        let o1 = Object::new().update(&Default::default(), a, value("s0-0"));
        let o2 = o1.update(&o1.context(), a, value("s0-2"));
        let history = vec![
            line(
                0,
                0,
                "put",
                "k",
                Some("s0-0"),
                "ok",
                None,
                Some(o1.context().encode()),
            ),
            get(0, 1, "k", &["s0-0"], &o1), // sees its write
            line(
                0,
                2,
                "put",
                "k",
                Some("s0-2"),
                "ok",
                Some(o1.context().encode()),
                Some(o2.context().encode()),
            ),
            get(0, 3, "k", &["s0-0"], &o1), // stale: misses its own write, and goes back in time
            get(0, 4, "k", &["s0-2"], &o2),
        ];
        let s = analyze(&history, &[], &HashMap::from([("k".to_string(), fin(&o2))]));
        assert_eq!((s.ryw_checked, s.ryw_violations), (3, 1), "{s:?}");
        assert_eq!(
            (s.monotonic_checked, s.monotonic_violations),
            (2, 0),
            "{s:?}"
        );
        let history = vec![
            get(1, 0, "k", &["s0-2"], &o2),
            get(1, 1, "k", &["s0-0"], &o1),
        ];
        let s = analyze(&history, &[], &HashMap::new());
        assert_eq!((s.monotonic_checked, s.monotonic_violations), (1, 1));
    }

    #[test]
    fn phases_split_by_active_faults() {
        let faults = vec![
            FaultWindow {
                kind: "kill".into(),
                start_ms: 1010.0,
                end_ms: 1030.0,
                targets: vec!["n1".into()],
                detail: String::new(),
            },
            FaultWindow {
                kind: "delay".into(),
                start_ms: 1020.0,
                end_ms: 1040.0,
                targets: vec![],
                detail: String::new(),
            },
        ];
        assert_eq!(phase_at(&faults, 1000.0), "healthy");
        assert_eq!(phase_at(&faults, 1015.0), "kill");
        assert_eq!(phase_at(&faults, 1025.0), "delay+kill");
        assert_eq!(phase_at(&faults, 1035.0), "delay");
        let history: Vec<HistoryLine> = (0..5)
            .map(|i| {
                line(
                    0,
                    i,
                    "get",
                    "k",
                    None,
                    if i == 1 { "unknown" } else { "ok" },
                    None,
                    None,
                )
            })
            .collect();
        let s = analyze(&history, &faults, &HashMap::new());
        let kill = s.phases.iter().find(|p| p.phase == "kill").unwrap();
        assert_eq!((kill.ops, kill.unavailable), (1, 1));
        assert_eq!(s.windows.len(), 2);
        assert_eq!(s.windows[0].ops, 2);
        assert!(markdown(&s, &faults).contains("| delay+kill |"));
    }

    #[test]
    fn final_states_converge_only_when_primaries_agree() {
        let a = ActorId(7);
        let o1 = Object::new().update(&Default::default(), a, value("v1"));
        let o2 = o1.update(&o1.context(), a, value("v2"));
        let st = |o: &Object| {
            Some(LocalState {
                context: o.context().encode(),
                siblings: o
                    .values()
                    .iter()
                    .map(|s| (String::from_utf8_lossy(&s.value).into_owned(), s.deleted))
                    .collect(),
            })
        };
        let primaries = vec!["n1".to_string(), "n2".to_string()];
        let states = BTreeMap::from([
            ("n1".to_string(), st(&o2)),
            ("n2".to_string(), st(&o2)),
            ("n3".to_string(), st(&o1)),
        ]);
        let f = final_key(&primaries, &states);
        assert!(f.converged, "an older copy on a fallback is fine");
        assert_eq!(f.siblings, 1);
        let states = BTreeMap::from([("n1".to_string(), st(&o2)), ("n2".to_string(), st(&o1))]);
        let f = final_key(&primaries, &states);
        assert!(!f.converged);
        assert!(f.values.contains("v1") && f.values.contains("v2"));
        let states = BTreeMap::from([
            ("n1".to_string(), st(&o1)),
            ("n2".to_string(), st(&o1)),
            ("n3".to_string(), st(&o2)),
        ]);
        assert!(
            !final_key(&primaries, &states).converged,
            "a fallback holding a newer version the primaries lack"
        );
    }
}
