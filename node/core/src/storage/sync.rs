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
//!
//! A writer on an async runtime must not sleep on the condition variable (it would hold a
//! worker, or cost a hop to the blocking pool and back per write: measured, that hop was
//! most of the CPU of a durable put). It runs its writes inside [`deferring_durability`]:
//! there a write takes its ticket and returns at once, and the caller awaits the returned
//! [`PendingDurability`] before it acknowledges anything. The fsync thread publishes
//! `synced` on a `watch` channel, which wakes those tasks without a thread of their own.

use super::{lock, StorageError, SyncMode};
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Makes written data durable: fsyncs the journal.
pub(super) type Persist = Box<dyn FnMut(Fsync) -> Result<(), StorageError> + Send>;

/// Why [`Persist`] is called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fsync {
    /// Writes are waiting (a ticket, or the periodic tick found data).
    Data,
    /// The last call, at a clean close; `dirty`: something was written since the previous
    /// fsync. The close must leave a record that everything written is durable (see
    /// `journal_mark`) even when it was already fsynced, and must write nothing when
    /// nothing was ever written (a node refusing to start keeps the evidence of damage).
    Close { dirty: bool },
}

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
    /// `synced`, published to async waiters ([`PendingDurability`]) after every fsync and
    /// on failure.
    published: tokio::sync::watch::Sender<u64>,
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
            published: tokio::sync::watch::Sender::new(0),
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

    /// Called after each data write reached the journal: in `Always` mode waits until it
    /// is fsynced (inside [`deferring_durability`]: takes a ticket for the caller to await
    /// instead); in `Periodic` mode only notes that the next tick has work (no lock, so
    /// periodic writers never contend here).
    pub(super) fn after_write(&self) -> Result<(), StorageError> {
        self.shared.dirty.store(true, Ordering::Release);
        if !self.always {
            return self.check();
        }
        if DEFERRED.with(|d| d.borrow().is_some()) {
            let pending = PendingDurability {
                ticket: self.take_ticket()?,
                shared: self.shared.clone(),
            };
            DEFERRED.with(|d| d.borrow_mut().as_mut().map(|slot| slot.push(pending)));
            return Ok(());
        }
        self.wait_durable()
    }

    /// Issues a ticket for everything written so far and wakes the fsync thread.
    fn take_ticket(&self) -> Result<u64, StorageError> {
        let mut st = lock(&self.shared.state);
        if self.shared.failed.load(Ordering::Acquire) || st.shutdown {
            return Err(StorageError::Closed);
        }
        st.requested += 1;
        self.shared.work.notify_one();
        Ok(st.requested)
    }

    /// Waits until everything written before this call is fsynced.
    pub(super) fn wait_durable(&self) -> Result<(), StorageError> {
        let failed = || self.shared.failed.load(Ordering::Acquire);
        let ticket = self.take_ticket()?;
        let mut st = lock(&self.shared.state);
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

thread_local! {
    /// Inside [`deferring_durability`]: the tickets this thread's writes took.
    static DEFERRED: RefCell<Option<Vec<PendingDurability>>> = const { RefCell::new(None) };
}

/// Runs `work` (synchronous storage calls) so that its writes in `Always` mode do not wait
/// for their fsync: each takes a ticket and returns. The caller must await every returned
/// [`PendingDurability`] before it tells anyone the writes happened. Outside this scope,
/// or in `Periodic` mode, writes behave as always.
pub fn deferring_durability<R>(work: impl FnOnce() -> R) -> (R, Vec<PendingDurability>) {
    /// Ends the scope even when `work` panics, so a later write on this thread waits again.
    struct Scope(Option<Vec<PendingDurability>>);
    impl Drop for Scope {
        fn drop(&mut self) {
            DEFERRED.with(|d| *d.borrow_mut() = self.0.take());
        }
    }
    let outer = DEFERRED.with(|d| d.borrow_mut().replace(Vec::new()));
    let scope = Scope(outer);
    let result = work();
    let mut pending = DEFERRED.with(|d| d.borrow_mut().take()).unwrap_or_default();
    // Tickets of one engine are ordered: its newest covers the rest (a batch merge takes
    // one per object).
    pending.dedup_by(|newer, older| {
        Arc::ptr_eq(&newer.shared, &older.shared) && {
            older.ticket = older.ticket.max(newer.ticket);
            true
        }
    });
    drop(scope);
    (result, pending)
}

/// What an engine whose fsync fails does after a write reached its journal (the memory
/// engine's fault switch, `MemoryStorage::set_sync_failure`): inside
/// [`deferring_durability`] the write returns with a [`PendingDurability`] that fails, as
/// a group commit that failed; outside it the call fails with [`StorageError::Unsettled`].
pub(super) fn fsync_failed(reason: &str) -> Result<(), StorageError> {
    let deferred = DEFERRED.with(|d| {
        d.borrow_mut()
            .as_mut()
            .map(|slot| slot.push(PendingDurability::failed()))
            .is_some()
    });
    match deferred {
        true => Ok(()),
        false => Err(StorageError::unsettled(StorageError::Io(
            std::io::Error::other(reason.to_string()),
        ))),
    }
}

/// A write that reached the journal and is not yet known to be fsynced.
#[must_use = "a deferred write is durable only once this is awaited"]
pub struct PendingDurability {
    ticket: u64,
    shared: Arc<Shared>,
}

impl PendingDurability {
    /// A ticket of an engine whose fsync already failed: never durable.
    fn failed() -> PendingDurability {
        let shared = Shared {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            done: Condvar::new(),
            published: tokio::sync::watch::Sender::new(0),
            dirty: AtomicBool::new(true),
            failed: AtomicBool::new(true),
        };
        PendingDurability {
            ticket: 1,
            shared: Arc::new(shared),
        }
    }

    /// Resolves once the write is fsynced; `Closed` when an fsync failed or the engine shut
    /// down first (the write may then be lost, or replayed at the next open: it must not
    /// be acknowledged, nor reported as not written).
    pub async fn durable(self) -> Result<(), StorageError> {
        let mut synced = self.shared.published.subscribe();
        let failed = || self.shared.failed.load(Ordering::Acquire);
        let reached = synced
            .wait_for(|&synced| synced >= self.ticket || failed())
            .await
            .map(|synced| *synced >= self.ticket);
        match reached {
            Ok(true) => Ok(()),
            _ => Err(StorageError::Closed),
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
        let dirty = shared.dirty.swap(false, Ordering::AcqRel);
        let result = persist(match shutting_down {
            true => Fsync::Close { dirty },
            false => Fsync::Data,
        });

        st = lock(&shared.state);
        match result {
            Ok(()) => st.synced = target,
            Err(e) => {
                tracing::error!(error = %e, "fsync failed; storage refuses further writes");
                shared.failed.store(true, Ordering::Release);
            }
        }
        shared.done.notify_all();
        shared.published.send_replace(st.synced);
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
    fn shutdown_persists_once_as_the_close_even_when_clean() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let seen = calls.clone();
        let persist: Persist = Box::new(move |fsync| {
            seen.lock().unwrap().push(fsync);
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
        assert_eq!(
            *calls.lock().unwrap(),
            vec![Fsync::Data, Fsync::Close { dirty: false }]
        );
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

    /// Opened by the test to let fsyncs proceed.
    type Gate = Arc<(Mutex<bool>, Condvar)>;

    /// A persist that fsyncs only when the test opens the gate, counting calls.
    fn gated() -> (Syncer, Gate, Arc<AtomicU64>) {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let n = Arc::new(AtomicU64::new(0));
        let (g, c) = (gate.clone(), n.clone());
        let persist: Persist = Box::new(move |_| {
            let mut open = g.0.lock().unwrap();
            while !*open {
                open = g.1.wait(open).unwrap();
            }
            c.fetch_add(1, Ordering::SeqCst);
            Ok(())
        });
        (Syncer::start(SyncMode::Always, persist).unwrap(), gate, n)
    }

    fn open_gate(gate: &(Mutex<bool>, Condvar)) {
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
    }

    #[tokio::test]
    async fn a_deferred_write_returns_before_its_fsync_and_is_durable_only_after_it() {
        let (s, gate, fsyncs) = gated();
        let (result, pending) = deferring_durability(|| (s.after_write(), s.after_write()));
        assert!(result.0.is_ok() && result.1.is_ok());
        assert_eq!(
            pending.len(),
            1,
            "two tickets of one engine fold into the newest"
        );
        assert_eq!(
            fsyncs.load(Ordering::SeqCst),
            0,
            "returned before any fsync"
        );
        let mut durable = Box::pin(pending.into_iter().next().unwrap().durable());
        assert!(
            futures_poll_once(durable.as_mut()).await.is_none(),
            "durable before its fsync"
        );
        open_gate(&gate);
        durable.await.unwrap();
        assert!(fsyncs.load(Ordering::SeqCst) >= 1);
    }

    #[tokio::test]
    async fn a_deferred_write_whose_fsync_fails_is_never_durable() {
        let persist: Persist =
            Box::new(|_| Err(StorageError::Io(std::io::Error::other("disk gone"))));
        let s = Syncer::start(SyncMode::Always, persist).unwrap();
        let (result, pending) = deferring_durability(|| s.after_write());
        // The ticket may be refused outright when the failure came first; either way no
        // write is reported durable.
        if result.is_ok() {
            for p in pending {
                assert!(matches!(p.durable().await, Err(StorageError::Closed)));
            }
        }
        assert!(matches!(s.after_write(), Err(StorageError::Closed)));
    }

    #[test]
    fn outside_the_scope_and_after_a_panic_in_it_writes_wait_again() {
        let (s, fsyncs) = counting(SyncMode::Always);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            deferring_durability(|| panic!("a request handler panicked"))
        }));
        assert!(caught.is_err());
        s.after_write().unwrap();
        assert_eq!(
            fsyncs.load(Ordering::SeqCst),
            1,
            "the write returned before its fsync"
        );
    }

    #[test]
    fn periodic_mode_defers_nothing() {
        let (s, _) = counting(SyncMode::Periodic {
            interval_ms: 3_600_000,
        });
        let (result, pending) = deferring_durability(|| s.after_write());
        assert!(result.is_ok() && pending.is_empty());
    }

    /// Polls a future once: `Some` if it is ready.
    async fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> Option<F::Output> {
        let mut f = f;
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut f).poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
