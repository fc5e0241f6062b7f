//! Group commit: many threads append to one [`Wal`] and wait for durability; one `fdatasync`
//! covers everything appended before it started.
//!
//! The first waiter that finds no sync in progress becomes the syncer: it takes a ticket (the last
//! segment's file and the last appended sequence), releases the lock, runs `fdatasync`, publishes
//! the new durable sequence and wakes every waiter. Appends made meanwhile wait for the next sync,
//! which the next waiter starts at once. Plain std threads: a `Mutex` and a `Condvar`; the lock is
//! never held across an `fdatasync`.
//!
//! Never does: report an append durable before an `fdatasync` that started after it returned, or
//! go on after a failed one (the WAL stops and every waiter gets the error).

use crate::wal::{Sequence, Wal, WalError};
use ballot_core::{Entry, HardState};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Buckets of [`GroupCommitStats::appends_per_sync_histogram`]: bucket `k` counts syncs that made
/// `2^k ..= 2^(k+1) - 1` appends durable (1, 2-3, 4-7, ...); the last bucket is open-ended.
pub const BATCH_HISTOGRAM_BUCKETS: usize = 8;

/// What the syncs issued by group commit achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GroupCommitStats {
    /// `fdatasync`s run by waiters.
    pub syncs: u64,
    /// Appends those syncs made durable (including any made durable by opening a new segment in
    /// between).
    pub appends_synced: u64,
    pub entries_synced: u64,
    pub appends_per_sync_max: u64,
    pub appends_per_sync_histogram: [u64; BATCH_HISTOGRAM_BUCKETS],
}

impl GroupCommitStats {
    pub fn entries_per_sync_average(&self) -> f64 {
        if self.syncs == 0 {
            0.0
        } else {
            self.entries_synced as f64 / self.syncs as f64
        }
    }

    pub fn appends_per_sync_average(&self) -> f64 {
        if self.syncs == 0 {
            0.0
        } else {
            self.appends_synced as f64 / self.syncs as f64
        }
    }

    fn record(&mut self, appends: u64, entries: u64) {
        self.syncs += 1;
        self.appends_synced += appends;
        self.entries_synced += entries;
        self.appends_per_sync_max = self.appends_per_sync_max.max(appends);
        let bucket = (u64::BITS - appends.max(1).leading_zeros() - 1) as usize;
        self.appends_per_sync_histogram[bucket.min(BATCH_HISTOGRAM_BUCKETS - 1)] += 1;
    }
}

struct State {
    wal: Wal,
    sync_in_progress: bool,
    stats: GroupCommitStats,
    /// Sequence and entry count already counted in `stats`.
    counted_upto: (Sequence, u64),
}

struct Shared {
    state: Mutex<State>,
    durable: Condvar,
}

/// A [`Wal`] shared by threads that append and wait for durability. Cloning shares it.
#[derive(Clone)]
pub struct GroupCommit {
    shared: Arc<Shared>,
}

impl GroupCommit {
    pub fn new(wal: Wal) -> Self {
        let counted_upto = (wal.synced_sequence(), wal.entries_appended());
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    wal,
                    sync_in_progress: false,
                    stats: GroupCommitStats::default(),
                    counted_upto,
                }),
                durable: Condvar::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .expect("a thread panicked while holding the WAL")
    }

    /// [`Wal::append`] under the lock. Not durable until [`GroupCommit::wait_durable`] returns.
    pub fn append(
        &self,
        entries: &[Entry],
        hard_state: Option<HardState>,
    ) -> Result<Sequence, WalError> {
        self.lock().wal.append(entries, hard_state)
    }

    /// Runs `f` with the WAL locked: to choose indexes from [`Wal::last_index`] and append in one
    /// step, or to compact. Do not block in `f`: every other appender waits.
    pub fn with_wal<R>(&self, f: impl FnOnce(&mut Wal) -> R) -> R {
        f(&mut self.lock().wal)
    }

    /// Every append up to here is durable.
    pub fn durable_sequence(&self) -> Sequence {
        self.lock().wal.synced_sequence()
    }

    pub fn stats(&self) -> GroupCommitStats {
        self.lock().stats
    }

    /// Appends, then waits until the append is durable.
    pub fn append_durable(
        &self,
        entries: &[Entry],
        hard_state: Option<HardState>,
    ) -> Result<Sequence, WalError> {
        let sequence = self.append(entries, hard_state)?;
        self.wait_durable(sequence)?;
        Ok(sequence)
    }

    /// Blocks until every append up to `sequence` is durable, running the `fdatasync` itself if no
    /// other thread is.
    pub fn wait_durable(&self, sequence: Sequence) -> Result<(), WalError> {
        let mut state = self.lock();
        assert!(
            sequence <= state.wal.appended_sequence(),
            "waiting for sequence {sequence:?}, which was never appended"
        );
        loop {
            if state.wal.synced_sequence() >= sequence {
                return Ok(());
            }
            if state.sync_in_progress {
                state = self
                    .shared
                    .durable
                    .wait(state)
                    .expect("a thread panicked while holding the WAL");
                continue;
            }
            let Some(ticket) = state.wal.sync_ticket()? else {
                continue;
            };
            state.sync_in_progress = true;
            drop(state);
            let result = ticket.file.sync_data();
            state = self.lock();
            state.sync_in_progress = false;
            let outcome = state.wal.sync_finished(ticket.upto, &ticket.path, result);
            if outcome.is_ok() {
                let (counted_sequence, counted_entries) = state.counted_upto;
                if ticket.upto > counted_sequence {
                    let appends = ticket.upto.0 - counted_sequence.0;
                    let entries = ticket.entries_upto - counted_entries;
                    state.stats.record(appends, entries);
                    state.counted_upto = (ticket.upto, ticket.entries_upto);
                }
            }
            self.shared.durable.notify_all();
            outcome?;
        }
    }

    /// The WAL back, if this is the last handle.
    pub fn into_inner(self) -> Result<Wal, GroupCommit> {
        match Arc::try_unwrap(self.shared) {
            Ok(shared) => Ok(shared
                .state
                .into_inner()
                .expect("a thread panicked while holding the WAL")
                .wal),
            Err(shared) => Err(GroupCommit { shared }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::WalOptions;
    use ballot_core::EntryPayload;

    #[test]
    fn concurrent_appenders_share_syncs_and_each_wait_covers_its_append() {
        const THREADS: u64 = 8;
        const APPENDS_PER_THREAD: u64 = 25;
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
        let group = GroupCommit::new(wal);
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let group = group.clone();
                std::thread::spawn(move || {
                    for _ in 0..APPENDS_PER_THREAD {
                        let sequence = group.with_wal(|wal| {
                            let entry = Entry {
                                index: wal.last_index() + 1,
                                term: 1,
                                payload: EntryPayload::Noop,
                            };
                            wal.append(&[entry], None).unwrap()
                        });
                        group.wait_durable(sequence).unwrap();
                        assert!(group.durable_sequence() >= sequence);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let total = THREADS * APPENDS_PER_THREAD;
        let stats = group.stats();
        assert_eq!(
            stats.appends_synced, total,
            "every append was made durable by a sync"
        );
        assert_eq!(stats.entries_synced, total);
        assert!(stats.syncs >= 1 && stats.syncs <= total);
        assert_eq!(
            stats.appends_per_sync_histogram.iter().sum::<u64>(),
            stats.syncs
        );
        let wal = group.into_inner().ok().expect("the last handle");
        assert_eq!(wal.synced_sequence(), wal.appended_sequence());
        drop(wal);
        let (_, recovered) = Wal::open(dir.path(), WalOptions::default()).unwrap();
        assert_eq!(recovered.last_index(), total);
    }

    #[test]
    fn histogram_buckets_are_powers_of_two() {
        let mut stats = GroupCommitStats::default();
        for appends in [1, 2, 3, 4, 7, 8, 200] {
            stats.record(appends, appends * 2);
        }
        assert_eq!(stats.appends_per_sync_histogram, [1, 2, 2, 1, 0, 0, 0, 1]);
        assert_eq!(stats.appends_per_sync_max, 200);
        assert_eq!(stats.entries_synced, 2 * 225);
    }
}
