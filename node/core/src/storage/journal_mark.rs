//! Detects a damaged or truncated journal. fjall replays its journal at open and stops,
//! without an error, at the first batch it cannot read, so a few flipped bytes or a cut
//! file silently drop every later write (issue 15 measured 233 of 300 keys gone).
//!
//! Owns: the write mark. Before each fsync (at most every [`MARK_EVERY`]) the syncer writes
//! a growing number into the journal itself (meta key [`MARK_KEY`]); once that fsync
//! returned, it writes the same number to a small file next to the database
//! ([`MARK_FILE`]). At open, a journal that replays to a mark below the file's lost writes
//! that were durable. The file is replaced without fsync: after a machine crash it may
//! hold an older mark, which only weakens the check, never raises a false alarm.
//!
//! Must not: decide what a damaged store means for the node (the server refuses to start
//! unless told `--repair`), or write the file before the fsync that covers its mark.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fjall::Keyspace;

use super::StorageError;

/// The mark's file in the store directory (outside fjall's).
pub const MARK_FILE: &str = "JOURNAL_MARK";
/// The mark's key in the meta keyspace.
pub const MARK_KEY: &str = "journal_mark";
/// Marks are written at most this often: writes after the last mark are not covered.
pub const MARK_EVERY: Duration = Duration::from_millis(100);

pub(super) struct JournalMark {
    file: PathBuf,
    meta: Keyspace,
    next: u64,
    written_at: Option<Instant>,
}

impl JournalMark {
    /// Reads both marks; returns the marker and, when the journal lost marked writes, why.
    pub(super) fn open(
        dir: &Path,
        meta: &Keyspace,
    ) -> Result<(JournalMark, Option<String>), StorageError> {
        let file = dir.join(MARK_FILE);
        let replayed = meta
            .get(MARK_KEY)
            .map_err(|e| StorageError::Engine(format!("{e:?}")))?
            .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
            .map_or(0, u64::from_be_bytes);
        let noted = std::fs::read_to_string(&file)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let damage = (noted > replayed).then(|| {
            format!("the journal replays only to write mark {replayed}, but mark {noted} was fsynced before the node stopped: it is truncated or damaged, and writes acknowledged before that fsync are missing")
        });
        let mark = JournalMark {
            file,
            meta: meta.clone(),
            next: noted.max(replayed) + 1,
            written_at: None,
        };
        Ok((mark, damage))
    }

    /// Before an fsync: puts the next mark into the journal, unless one went in less than
    /// [`MARK_EVERY`] ago and this is not the `last` fsync before a clean close (which
    /// always marks, so that a cut anywhere in a cleanly closed journal is found).
    /// Returns the mark the fsync will cover.
    pub(super) fn before_fsync(&mut self, last: bool) -> Result<Option<u64>, StorageError> {
        if !last && self.written_at.is_some_and(|t| t.elapsed() < MARK_EVERY) {
            return Ok(None);
        }
        let mark = self.next;
        self.meta
            .insert(MARK_KEY, mark.to_be_bytes())
            .map_err(|e| StorageError::Engine(format!("{e:?}")))?;
        self.next += 1;
        self.written_at = Some(Instant::now());
        Ok(Some(mark))
    }

    /// After the fsync covering `mark` returned: notes it outside the journal.
    pub(super) fn after_fsync(&self, mark: u64) {
        let tmp = self.file.with_extension("tmp");
        let result = std::fs::write(&tmp, format!("{mark}\n"))
            .and_then(|()| std::fs::rename(&tmp, &self.file));
        if let Err(e) = result {
            // Only weakens the check at the next open; the data is durable either way.
            tracing::warn!("cannot note journal mark {mark}: {e}");
        }
    }
}
