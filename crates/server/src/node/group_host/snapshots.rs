//! Snapshots and compaction: installing a leader's image, compacting the log behind the durable
//! state machine, and building an image for a follower, the slow parts off the loop's thread.

use super::*;

/// The `snap/` directory as the driver's snapshot store, shared with the thread that saves
/// compaction markers off the loop.
pub(crate) struct SharedSnapshots(pub(super) Arc<SnapshotStore>);

impl ballot_core::SnapshotStore for SharedSnapshots {
    type Error = ballot_storage::snapshot_store::SnapshotError;

    /// A leader's image older than a compaction marker kept here is not saved (the state
    /// machine is already past it) and not an error: after a restart the replica's commit
    /// index, relearned from the leader, can lag what this node had made durable.
    fn save(&mut self, snapshot: &Snapshot) -> Result<(), Self::Error> {
        match self.0.save(snapshot) {
            Err(ballot_storage::snapshot_store::SnapshotError::Stale { offered, latest }) => {
                tracing::warn!(%offered, %latest, "ignored a stale snapshot");
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }

    fn latest(&self) -> Result<Option<Snapshot>, Self::Error> {
        self.0.latest()
    }
}

impl<R> GroupHost<R>
where
    R: Replica,
    R::Message: WireMessage,
{
    /// A leader's image, saved and installed in the log by the driver, replaces the state
    /// machine, the member registry and the group catalog.
    pub(super) fn restore_image(&mut self, snapshot: &Snapshot) -> Result<(), String> {
        let parts = decode_snapshot(&snapshot.data).map_err(|e| e.to_string())?;
        let index = snapshot.meta.last_included.index;
        self.store.restore(parts.mvcc).map_err(|e| e.to_string())?;
        self.registry.restore(parts.registry, index)?;
        if self.group == 0 {
            self.catalog.restore(parts.catalog, index)?;
            self.catalog_changed = true;
        }
        self.watch_hub.restore(self.store.revision());
        self.counters.snapshot_images_installed += 1;
        self.counters.compaction_index = snapshot.meta.last_included.index;
        tracing::info!(
            index = snapshot.meta.last_included.index,
            term = snapshot.meta.last_included.term,
            bytes = snapshot.data.len(),
            revision = self.store.revision(),
            "installed a snapshot from the leader"
        );
        Ok(())
    }

    /// The log has grown past the threshold: compact it up to what the store has made durable on
    /// its own (its flusher runs every 100 ms), with no image of the state machine at all. The
    /// registry is always durable (rewritten on every change). A marker with the compaction
    /// point's metadata is saved to `snap/` off the loop; only then may the WAL drop entries
    /// ([`Input::CompactionSaved`]).
    pub(super) fn compact(&mut self) -> Result<(), String> {
        if self.compaction_in_progress {
            return Ok(());
        }
        // After a restart the store can be durable past what the replica has applied again
        // (the WAL's commit index lags): compact no further than the replica has reached.
        let durable = self
            .store
            .durable_applied_index()
            .min(self.replica.status().applied_index);
        let meta = match self.replica.compact(durable) {
            Ok(Some(meta)) => meta,
            Ok(None) => return Ok(()),
            Err(error) => {
                tracing::warn!(%error, durable, "compaction refused");
                return Ok(());
            }
        };
        let snapshots = self.snapshots.0.clone();
        self.compaction_in_progress = true;
        self.off_the_loop("compaction-save", move || {
            let index = meta.last_included.index;
            let marker = Snapshot {
                meta,
                data: bytes::Bytes::new(),
            };
            let result = snapshots
                .save(&marker)
                .map(|_| ())
                .map_err(|e| e.to_string());
            Input::CompactionSaved { index, result }
        })
    }

    /// Runs `work` on a thread of its own and hands what it returns to this loop's queue.
    pub(super) fn off_the_loop(
        &self,
        name: &str,
        work: impl FnOnce() -> Input + Send + 'static,
    ) -> Result<(), String> {
        let loopback = self.loopback.clone();
        let group = self.group;
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let _ = loopback.blocking_send(Input::for_group(group, work()));
            })
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// The compaction marker for `index` is durable: the WAL may drop what the replica dropped
    /// (the store was durable through `index` before the marker was written).
    pub(super) fn compaction_saved(&mut self, index: LogIndex, result: Result<(), String>) {
        self.compaction_in_progress = false;
        if let Err(error) = result {
            tracing::warn!(%error, index, "compaction marker not saved; the WAL keeps its entries");
            return;
        }
        let compact_to = self
            .replica
            .status()
            .first_log_index
            .saturating_sub(1)
            .min(index);
        match ballot_core::LogStore::compact_to(&mut self.log, compact_to) {
            Ok(_) => {
                self.counters.compaction_index = index;
                tracing::info!(
                    index,
                    first_kept = compact_to + 1,
                    "compacted the log (the state machine is durable through the index)"
                );
            }
            Err(error) => tracing::error!(%error, "WAL compaction failed"),
        }
    }

    /// A follower needs entries the log no longer holds: encode an image of the state machine
    /// at its applied index, on a thread (a large history takes seconds, longer than an
    /// election timeout), and hand it to the replica ([`Input::SnapshotEncoded`]). The image
    /// lives in memory only: nothing on this node depends on it being durable.
    pub(super) fn build_image(&mut self) -> Result<(), String> {
        if self.image_in_progress {
            return Ok(());
        }
        if self.store.applied_index() > self.replica.status().applied_index {
            // Replaying after a restart: the replica would refuse an image past its applied
            // index, and it asks again at its next attempt to replicate.
            return Ok(());
        }
        let reader = self.store.begin_snapshot().map_err(|e| e.to_string())?;
        let applied = reader.applied_index();
        // The registry and catalog are changed only by this loop, so they are at `applied` too.
        let registry = self.registry.snapshot();
        let catalog = self.catalog.snapshot();
        self.image_in_progress = true;
        self.off_the_loop("snapshot-encode", move || {
            let result = reader
                .into_bytes()
                .map(|mvcc| {
                    encode_snapshot(SnapshotParts {
                        registry: &registry,
                        catalog: &catalog,
                        mvcc: &mvcc,
                    })
                })
                .map_err(|e| e.to_string());
            Input::SnapshotEncoded { applied, result }
        })
    }

    /// The image is built: the replica keeps it and starts sending it to the followers that
    /// were waiting.
    pub(super) fn image_encoded(
        &mut self,
        applied: LogIndex,
        result: Result<bytes::Bytes, String>,
    ) {
        self.image_in_progress = false;
        let data = match result {
            Ok(data) => data,
            Err(error) => {
                tracing::error!(%error, applied, "snapshot image failed");
                return;
            }
        };
        let image = Snapshot {
            meta: SnapshotMeta {
                last_included: LogPosition::new(applied, 0),
                membership: Membership::default(),
            },
            data,
        };
        match self.replica.snapshot_taken(image) {
            // The replica fills in the term; left at zero, it kept an image at least as new.
            Ok(meta) if meta.last_included.term > 0 => {
                self.counters.snapshot_images_built += 1;
                tracing::info!(
                    index = meta.last_included.index,
                    "built a snapshot image for a follower"
                )
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, applied, "snapshot image not taken"),
        }
    }
}
