//! Wall-clock time, as an input: the one place chorus reads the time of day. It is used to
//! fix and judge expiry (TTL) only, never to order writes (version vectors do that), so a
//! skewed clock can make a value vanish early or late by the skew, never lose or reorder a
//! write. Deterministic code takes a [`WallClock`], so the simulation gives every node its
//! own virtual, skewed clock and replays it from the seed.
//!
//! Must not: be used for timeouts or intervals (tokio's monotonic clock does those).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, as this node believes them.
pub trait WallClock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

/// The operating system's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl SystemClock {
    pub fn shared() -> Arc<dyn WallClock> {
        Arc::new(SystemClock)
    }
}

impl WallClock for SystemClock {
    fn now_ms(&self) -> u64 {
        // A clock set before 1970 reads as the epoch: nothing then looks expired early.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}
