//! The fsync thread of the disk engine: group commit for [`SyncMode::Always`], a timer
//! for [`SyncMode::Periodic`], and explicit waits for `meta_put` and `flush`.
//!
//! Owns: when fsync happens and who waits for it. Must not: write data (writers append
//! to the journal themselves, then ask this thread to make it durable), or hold any lock
//! of ours across an fsync; only the state below is locked, and only to read or bump
//! counters.
//!
//! Group commit: a writer whose data is already in the journal takes a ticket (`requested
//! += 1`) and sleeps until `synced` reaches it. The thread takes every ticket issued so far
//! as one batch, fsyncs once, and wakes them all. Because a ticket is taken only after its
//! write reached the journal, one fsync covers every write of the batch. Writers that
//! arrive during an fsync form the next batch, so the batch size grows with load and the
//! fsync rate stays bounded by the disk, not by the number of writers.

use super::{lock, StorageError, SyncMode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Makes written data durable: fsyncs the journal. The flag is set on the last call, at
/// clean shutdown, which must leave a record that everything written is durable (see
/// `journal_mark`), even if nothing was written since the previous fsync.
pub(super) type Persist = Box<dyn FnMut(bool) -> Result<(), StorageError> + Send>;

pub(super) struct Syncer {
    shared: Arc<Shared>,
    always: bool,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the thread: a ticket was issued or shutdown began.
    work: Condvar,
    /// Wakes waiters: `synced` advanced or an fsync failed.
    done: Condvar,
    /// Something was written since the last fsync started; lets the periodic timer and
    /// skip fsyncs that have nothing to do.
    dirty: AtomicBool,
    /// An fsync failed. The engine is unusable from then on: after a failed fsync the
    /// kernel may have dropped the dirty pages, so what is on disk is unknown until a
    /// restart replays the journal. Set under `state`'s lock so waiters cannot miss it;
    /// read without it on the write path.
    failed: AtomicBool,
}

#[derive(Default)]
struct State {
    /// Tickets issued so far.
    requested: u64,
    /// Every ticket up to this one is durable.
    synced: u64,
    shutdown: bool,
}

impl Syncer {
    pub(super) fn start(mode: SyncMode, persist: Persist) -> Result<Self, StorageError> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            done: Condvar::new(),
            dirty: AtomicBool::new(false),
            failed: AtomicBool::new(false),
        });
        let interval = match mode {
            // A zero interval would spin; 1 ms is already far more fsyncs than useful.
            SyncMode::Periodic { interval_ms } => Some(Duration::from_millis(interval_ms.max(1))),
            SyncMode::Always => None,
        };
        let thread = std::thread::Builder::new()
            .name("chorus-fsync".into())
            .spawn({
                let shared = shared.clone();
                move || run(&shared, interval, persist)
            })?;
        Ok(Self {
            shared,
            always: mode == SyncMode::Always,
            thread: Some(thread),
        })
    }

    /// Called before a write: refuses it once an fsync failed.
    pub(super) fn check(&self) -> Result<(), StorageError> {
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(StorageError::Closed);
        }
        Ok(())
    }

    /// Whether a write waits for its fsync (`Always` mode).
    pub(super) fn waits_for_fsync(&self) -> bool {
        self.always
    }

    /// Called after each data write reached the journal: in `Always` mode waits until it
    /// is fsynced; in `Periodic` mode only notes that the next tick has work (no lock, so
    /// periodic writers never contend here).
    pub(super) fn after_write(&self) -> Result<(), StorageError> {
        self.shared.dirty.store(true, Ordering::Release);
        if self.always {
            self.wait_durable()
        } else {
            self.check()
        }
    }

    /// Waits until everything written before this call is fsynced.
    pub(super) fn wait_durable(&self) -> Result<(), StorageError> {
        let failed = || self.shared.failed.load(Ordering::Acquire);
        let mut st = lock(&self.shared.state);
        if failed() || st.shutdown {
            return Err(StorageError::Closed);
        }
        st.requested += 1;
        let ticket = st.requested;
        self.shared.work.notify_one();
        while st.synced < ticket && !failed() {
            st = self.shared.done.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        if st.synced >= ticket {
            Ok(())
        } else {
            Err(StorageError::Closed)
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        lock(&self.shared.state).shutdown = true;
        self.shared.work.notify_one();
        if let Some(t) = self.thread.take() {
            // The thread only ends by returning; a panic there was already reported.
            let _ = t.join();
        }
    }
}

fn run(shared: &Shared, interval: Option<Duration>, mut persist: Persist) {
    let mut next_tick = interval.map(|i| Instant::now() + i);
    let mut st = lock(&shared.state);
    loop {
        // Wait for a ticket, a periodic tick with data to sync, or shutdown. Tickets are
        // served at once rather than after a delay to let a batch fill: writers keep
        // appending during an fsync, so the next batch fills by itself, and measured with
        // 64 writers a delay (up to half an fsync) did not raise throughput.
        let target = loop {
            if st.requested > st.synced {
                break Some(st.requested);
            }
            if st.shutdown {
                break None;
            }
            let now = Instant::now();
            match next_tick {
                Some(tick) if now >= tick => {
                    next_tick = interval.map(|i| now + i);
                    if shared.dirty.load(Ordering::Acquire) {
                        break Some(st.requested);
                    }
                }
                Some(tick) => st = wait_timeout(&shared.work, st, tick - now),
                None => st = shared.work.wait(st).unwrap_or_else(|e| e.into_inner()),
            }
        };
        let shutting_down = target.is_none();
        if shared.failed.load(Ordering::Acquire) {
            return;
        }
        let target = target.unwrap_or(st.requested);
        drop(st);

        // Cleared before the fsync: a write landing during it sets the flag again and is
        // picked up by the next tick.
        shared.dirty.store(false, Ordering::Release);
        let result = persist(shutting_down);

        st = lock(&shared.state);
        match result {
            Ok(()) => st.synced = target,
            Err(e) => {
                tracing::error!(error = %e, "fsync failed; storage refuses further writes");
                shared.failed.store(true, Ordering::Release);
            }
        }
        shared.done.notify_all();
        if shutting_down {
            return;
        }
    }
}

fn wait_timeout<'a>(
    cv: &Condvar,
    guard: std::sync::MutexGuard<'a, State>,
    timeout: Duration,
) -> std::sync::MutexGuard<'a, State> {
    cv.wait_timeout(guard, timeout)
        .unwrap_or_else(|e| e.into_inner())
        .0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    fn counting(mode: SyncMode) -> (Syncer, Arc<AtomicU64>) {
        let n = Arc::new(AtomicU64::new(0));
        let c = n.clone();
        let persist: Persist = Box::new(move |_| {
            // Long enough that concurrent waiters pile up into one batch.
            std::thread::sleep(Duration::from_millis(2));
            c.fetch_add(1, Ordering::SeqCst);
            Ok(())
        });
        (Syncer::start(mode, persist).unwrap(), n)
    }

    #[test]
    fn always_mode_batches_concurrent_writers() {
        let (s, fsyncs) = counting(SyncMode::Always);
        let writes = 8 * 50;
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..50 {
                        s.after_write().unwrap();
                    }
                });
            }
        });
        let n = fsyncs.load(Ordering::SeqCst);
        assert!(
            n >= 1 && n < writes,
            "{n} fsyncs for {writes} writes: no batching"
        );
    }

    #[test]
    fn periodic_mode_does_not_wait_but_flush_does() {
        let (s, fsyncs) = counting(SyncMode::Periodic {
            interval_ms: 3_600_000,
        });
        s.after_write().unwrap();
        assert_eq!(fsyncs.load(Ordering::SeqCst), 0);
        s.wait_durable().unwrap();
        assert_eq!(fsyncs.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn periodic_tick_syncs_dirty_data() {
        let (s, fsyncs) = counting(SyncMode::Periodic { interval_ms: 1 });
        s.after_write().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while fsyncs.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "no periodic fsync within 10 s");
            std::thread::yield_now();
        }
    }

    #[test]
    fn shutdown_syncs_dirty_data() {
        let (s, fsyncs) = counting(SyncMode::Periodic {
            interval_ms: 3_600_000,
        });
        s.after_write().unwrap();
        drop(s);
        assert_eq!(fsyncs.load(Ordering::SeqCst), 1);
    }

    /// The journal mark relies on it: a clean close marks the end of the journal even when
    /// the last write was already fsynced.
    #[test]
    fn shutdown_persists_once_with_the_last_flag_even_when_clean() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let seen = calls.clone();
        let persist: Persist = Box::new(move |last| {
            seen.lock().unwrap().push(last);
            Ok(())
        });
        let s = Syncer::start(
            SyncMode::Periodic {
                interval_ms: 3_600_000,
            },
            persist,
        )
        .unwrap();
        s.after_write().unwrap();
        s.wait_durable().unwrap();
        drop(s);
        assert_eq!(*calls.lock().unwrap(), vec![false, true]);
    }

    #[test]
    fn failed_fsync_fails_waiters_and_later_writes() {
        let persist: Persist =
            Box::new(|_| Err(StorageError::Io(std::io::Error::other("disk gone"))));
        let s = Syncer::start(SyncMode::Always, persist).unwrap();
        assert!(matches!(s.after_write(), Err(StorageError::Closed)));
        assert!(matches!(s.after_write(), Err(StorageError::Closed)));
        assert!(matches!(s.wait_durable(), Err(StorageError::Closed)));
        assert!(matches!(s.check(), Err(StorageError::Closed)));
    }
}
