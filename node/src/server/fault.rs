//! Test-only fault injection, compiled only with the `fault-injection` cargo feature (never
//! in the default build). `scripts/chaos` drives it:
//!
//! - **Delay and reordering** of node-to-node messages: every QUIC request and one-way
//!   message waits `delay_ms + uniform(0..=jitter_ms)` before it is sent (inside the
//!   caller's timeout, as network delay would be). Messages sent together get different
//!   delays, so they also arrive out of order. This stands in for `tc netem`, which this
//!   machine's kernel lacks.
//! - **A broken node** (`broken`): its HTTP API acknowledges every PUT and DELETE with
//!   `204` without storing anything. It exists to prove the chaos checker catches lost
//!   acknowledged writes.
//!
//! - **The first build's answer context** (`CHORUS_FAULT_OLD_ANSWER_CONTEXT=1`, read once
//!   at start): a write answers with the minted state's whole version vector, which covers
//!   concurrent siblings the writer never saw (issue 14). It exists to prove the chaos
//!   checker catches the writes that loses.
//!
//! Set at start from `CHORUS_FAULT_DELAY_MS`, `CHORUS_FAULT_JITTER_MS` and
//! `CHORUS_FAULT_BROKEN=1`, and at run time with `POST /admin/fault` (JSON with any of
//! `delay_ms`, `jitter_ms`, `broken`); `GET /admin/fault` shows the current setting. This
//! module holds no protocol logic and is consulted only by `transport`, `http` and, for
//! the answer context, `server` (which sets the coordinator's test switch).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// Longest delay or jitter accepted, so a typo cannot park every message for hours.
pub const MAX_DELAY_MS: u64 = 10_000;

struct Faults {
    delay_ms: AtomicU64,
    jitter_ms: AtomicU64,
    broken: AtomicBool,
}

fn faults() -> &'static Faults {
    static FAULTS: OnceLock<Faults> = OnceLock::new();
    FAULTS.get_or_init(|| {
        let env_ms = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0).min(MAX_DELAY_MS);
        let broken = std::env::var("CHORUS_FAULT_BROKEN").is_ok_and(|v| v == "1" || v == "true");
        if broken {
            tracing::warn!("fault injection: this node is BROKEN on purpose: it acknowledges writes without storing them");
        }
        Faults {
            delay_ms: AtomicU64::new(env_ms("CHORUS_FAULT_DELAY_MS")),
            jitter_ms: AtomicU64::new(env_ms("CHORUS_FAULT_JITTER_MS")),
            broken: AtomicBool::new(broken),
        }
    })
}

/// The current setting, and what `POST /admin/fault` accepts (missing fields stay as they are).
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq)]
pub struct FaultSetting {
    pub delay_ms: Option<u64>,
    pub jitter_ms: Option<u64>,
    pub broken: Option<bool>,
}

pub fn current() -> FaultSetting {
    let f = faults();
    FaultSetting {
        delay_ms: Some(f.delay_ms.load(Ordering::Relaxed)),
        jitter_ms: Some(f.jitter_ms.load(Ordering::Relaxed)),
        broken: Some(f.broken.load(Ordering::Relaxed)),
    }
}

/// Applies a change; refuses delays over [`MAX_DELAY_MS`].
pub fn set(change: &FaultSetting) -> Result<FaultSetting, String> {
    for (name, value) in [
        ("delay_ms", change.delay_ms),
        ("jitter_ms", change.jitter_ms),
    ] {
        if value.is_some_and(|v| v > MAX_DELAY_MS) {
            return Err(format!("{name} must be at most {MAX_DELAY_MS}"));
        }
    }
    let f = faults();
    if let Some(v) = change.delay_ms {
        f.delay_ms.store(v, Ordering::Relaxed);
    }
    if let Some(v) = change.jitter_ms {
        f.jitter_ms.store(v, Ordering::Relaxed);
    }
    if let Some(v) = change.broken {
        f.broken.store(v, Ordering::Relaxed);
    }
    let now = current();
    tracing::warn!(?now, "fault injection setting changed");
    Ok(now)
}

/// True when this node must acknowledge writes without storing them.
pub fn broken() -> bool {
    faults().broken.load(Ordering::Relaxed)
}

/// True when writes must answer with the first build's context (see the module doc).
pub fn old_answer_context() -> bool {
    let old =
        std::env::var("CHORUS_FAULT_OLD_ANSWER_CONTEXT").is_ok_and(|v| v == "1" || v == "true");
    if old {
        tracing::warn!("fault injection: writes answer with the whole state's context on purpose (issue 14's bug): clients will drop siblings they never saw");
    }
    old
}

/// How long the next outgoing message waits: `delay + uniform(0..=jitter)`.
pub fn next_delay() -> Duration {
    let f = faults();
    let delay = f.delay_ms.load(Ordering::Relaxed);
    let jitter = f.jitter_ms.load(Ordering::Relaxed);
    let extra = if jitter == 0 {
        0
    } else {
        rand::rng().random_range(0..=jitter)
    };
    Duration::from_millis(delay + extra)
}

/// Waits before a message is sent, when a delay is set.
pub async fn delay_message() {
    let wait = next_delay();
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_apply_partially_and_bounds_hold() {
        assert!(set(&FaultSetting {
            delay_ms: Some(MAX_DELAY_MS + 1),
            ..Default::default()
        })
        .is_err());
        let now = set(&FaultSetting {
            delay_ms: Some(20),
            jitter_ms: Some(10),
            broken: None,
        })
        .unwrap();
        assert_eq!((now.delay_ms, now.jitter_ms), (Some(20), Some(10)));
        for _ in 0..100 {
            let d = next_delay();
            assert!(
                d >= Duration::from_millis(20) && d <= Duration::from_millis(30),
                "{d:?}"
            );
        }
        let now = set(&FaultSetting {
            jitter_ms: Some(0),
            ..Default::default()
        })
        .unwrap();
        assert_eq!((now.delay_ms, now.jitter_ms), (Some(20), Some(0)));
        assert_eq!(next_delay(), Duration::from_millis(20));
        set(&FaultSetting {
            delay_ms: Some(0),
            jitter_ms: Some(0),
            broken: Some(false),
        })
        .unwrap();
        assert_eq!(next_delay(), Duration::ZERO);
        assert!(!broken());
    }
}
