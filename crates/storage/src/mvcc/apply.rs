//! Applying commands to the in-memory state while their records are appended to the batch that
//! will be written to the head segment: validation first (nothing changes unless the whole
//! command is valid), then the writes of one new revision. Owns the write-side rules of etcd:
//! transactions, puts and leases, deletes, revokes. Reads no clock; the same log gives the same
//! state and the same results on every replica.

use super::error::{ApplyError, MvccError};
use super::index::{key_hash, lease_hash, Change, LeaseEntry, State, Version};
use super::layout::{self, PutMeta};
use super::limits::validate_command;
use super::segments::{self, Location, SegmentId};
use super::types::*;
use super::view::{self, Records};
use ballot_core::LogIndex;
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

/// What stops a command: the request (refused, nothing written) or the store (abort the batch).
pub(crate) enum Failure {
    Refused(ApplyError),
    Broken(MvccError),
}

impl From<ApplyError> for Failure {
    fn from(error: ApplyError) -> Self {
        Failure::Refused(error)
    }
}

impl From<MvccError> for Failure {
    fn from(error: MvccError) -> Self {
        Failure::Broken(error)
    }
}

/// The records of one write to the head segment, not yet in the file: they go at `base` in
/// segment `head`, in one write, before the state they describe is visible to readers.
#[derive(Debug)]
pub(crate) struct Batch {
    pub head: SegmentId,
    pub base: u64,
    pub buffer: Vec<u8>,
}

/// Largest buffer kept for the next batch: a batch that grew past it (a restore, a GC step
/// that copied much) gives its memory back instead.
const SPARE_BUFFER_BYTES_MAX: usize = 4 * 1024 * 1024;

impl Batch {
    /// A batch writing into `buffer`'s memory (its contents are dropped).
    pub fn with_buffer(head: SegmentId, base: u64, mut buffer: Vec<u8>) -> Self {
        buffer.clear();
        Batch { head, base, buffer }
    }

    /// The buffer, emptied, for the next batch (or a new one if this one grew too large).
    pub fn into_spare_buffer(self) -> Vec<u8> {
        let mut buffer = self.buffer;
        if buffer.capacity() > SPARE_BUFFER_BYTES_MAX {
            return Vec::new();
        }
        buffer.clear();
        buffer
    }

    /// Appends one record (written by `encode`, which returns its size); where it will be.
    pub fn append(&mut self, encode: impl FnOnce(&mut Vec<u8>) -> usize) -> Location {
        let offset = self.base + self.buffer.len() as u64;
        let len = encode(&mut self.buffer);
        Location {
            segment: self.head,
            offset,
            len: u32::try_from(len).expect("records are far below 4 GiB"),
        }
    }

    /// Where the next record will be.
    pub fn end(&self) -> u64 {
        self.base + self.buffer.len() as u64
    }
}

/// Reads records of the segments and of the batch being written.
pub(crate) struct BatchRecords<'a> {
    pub state: &'a State,
    pub batch: &'a Batch,
}

impl Records for BatchRecords<'_> {
    fn read(&self, location: Location) -> Result<Bytes, MvccError> {
        if location.segment == self.batch.head && location.offset >= self.batch.base {
            let start = (location.offset - self.batch.base) as usize;
            let end = start + location.len as usize;
            let bytes = self.batch.buffer.get(start..end).ok_or_else(|| {
                MvccError::Corrupt(format!("{location:?} is past the batch being written"))
            })?;
            return Ok(Bytes::copy_from_slice(bytes));
        }
        let segment = self.state.segments.get(&location.segment).ok_or_else(|| {
            MvccError::Corrupt(format!("{location:?} is in a segment that does not exist"))
        })?;
        segments::read_record(&segment.file, location)
    }
}

/// The writes of one command: they all share `revision`, numbered by `next_sub_revision`.
struct Writes {
    revision: Revision,
    next_sub_revision: u32,
    events: Vec<Event>,
}

impl Writes {
    fn changed(&self) -> bool {
        self.next_sub_revision > 0
    }

    /// The revision a read inside the command sees as "now".
    fn seen_revision(&self) -> Revision {
        if self.changed() {
            self.revision
        } else {
            self.revision - 1
        }
    }
}

/// The branch a transaction takes and, for each nested transaction on it, its own plan. Fixed by
/// the compares against the state before the transaction (etcd's `compareToPath`).
struct Plan {
    succeeded: bool,
    nested: Vec<Plan>,
}

impl Plan {
    fn ops<'r>(&self, txn: &'r TxnRequest) -> &'r [RequestOp] {
        if self.succeeded {
            &txn.success
        } else {
            &txn.failure
        }
    }
}

/// Applies commands to the state, appending their records to `batch`.
pub(crate) struct Applier<'a> {
    pub state: &'a mut State,
    pub batch: &'a mut Batch,
    /// Whether events carry the previous version's value (`prev_kv`): reading it costs a read of
    /// the previous record, which only watchers that asked for `prev_kv` need.
    pub events_with_prev_kv: bool,
}

impl Applier<'_> {
    fn records(&self) -> BatchRecords<'_> {
        BatchRecords {
            state: self.state,
            batch: self.batch,
        }
    }

    fn load(&self, key: &Bytes, version: &Version) -> Result<KeyValue, MvccError> {
        view::load(&self.records(), key, version, true)
    }

    /// Applies one command at `index` (already known to be above the applied index).
    pub fn apply(
        &mut self,
        index: LogIndex,
        command: &Command,
    ) -> Result<(Result<CommandResult, ApplyError>, Vec<Event>), MvccError> {
        assert!(
            index > self.state.position.applied_index,
            "a log index is applied at most once, in increasing order"
        );
        let mut writes = Writes {
            revision: self.state.position.current_revision + 1,
            next_sub_revision: 0,
            events: Vec::new(),
        };
        let outcome = self.execute(index, command, &mut writes);
        self.state.position.applied_index = index;
        match outcome {
            Ok(result) => {
                if writes.changed() {
                    self.state.position.current_revision = writes.revision;
                }
                Ok((Ok(result), writes.events))
            }
            Err(Failure::Refused(refused)) => {
                assert!(
                    !writes.changed(),
                    "a refused command wrote nothing (validation precedes writes): {refused}"
                );
                Ok((Err(refused), Vec::new()))
            }
            Err(Failure::Broken(broken)) => Err(broken),
        }
    }

    fn execute(
        &mut self,
        index: LogIndex,
        command: &Command,
        writes: &mut Writes,
    ) -> Result<CommandResult, Failure> {
        validate_command(command)?;
        match command {
            Command::Put(put) => {
                // etcd checks a plain put's lease first, a put in a transaction's key first.
                self.check_put_lease(put)?;
                self.check_put_key(put)?;
                Ok(CommandResult::Put(self.put(writes, put)?))
            }
            Command::DeleteRange(delete) => Ok(CommandResult::DeleteRange(
                self.delete_range(writes, delete)?,
            )),
            Command::Txn(txn) => {
                let plan = self.plan(txn)?;
                self.check_puts(txn, &plan)?;
                self.check_ranges(txn, &plan)?;
                let mut response = self.txn(writes, txn, &plan)?;
                response.revision = writes.seen_revision();
                Ok(CommandResult::Txn(response))
            }
            Command::Compact { revision } => {
                self.check_compact(*revision)?;
                if *revision == 0 {
                    // etcd's first compaction on a store never compacted: nothing to drop.
                    self.state.compacted_at_zero = true;
                } else {
                    self.compact(*revision);
                }
                Ok(CommandResult::Compact {
                    revision: *revision,
                })
            }
            Command::LeaseGrant { id, ttl_seconds } => {
                let id = self.grant(index, *id, *ttl_seconds)?;
                Ok(CommandResult::LeaseGrant {
                    id,
                    ttl_seconds: *ttl_seconds,
                })
            }
            Command::LeaseRevoke { id } => {
                self.revoke(index, writes, *id)?;
                Ok(CommandResult::LeaseRevoke {
                    revision: writes.seen_revision(),
                })
            }
            Command::LeaseCheckpoint { checkpoints } => {
                // One record per lease, with its last remaining TTL: the same as applying them in
                // order, and two records of one lease never share a change index.
                let last: BTreeMap<LeaseId, i64> = checkpoints.iter().copied().collect();
                for (id, remaining_ttl_ms) in last {
                    // A revoke may have overtaken the checkpoint: etcd ignores unknown ids.
                    if let Some(ttl_seconds) = self.state.leases.get(&id).map(|l| l.ttl_seconds) {
                        self.write_lease(index, id, ttl_seconds, remaining_ttl_ms);
                    }
                }
                Ok(CommandResult::LeaseCheckpoint)
            }
        }
    }

    // ---- checks (no writes) ----

    /// `ignore_value` and `ignore_lease` need the key to exist.
    fn check_put_key(&self, put: &PutRequest) -> Result<(), Failure> {
        if (put.ignore_value || put.ignore_lease) && self.state.current(&put.key).is_none() {
            return Err(ApplyError::KeyNotFound {
                key: put.key.clone(),
            }
            .into());
        }
        Ok(())
    }

    fn check_put_lease(&self, put: &PutRequest) -> Result<(), Failure> {
        if put.lease != 0 && !self.state.leases.contains_key(&put.lease) {
            return Err(ApplyError::LeaseNotFound { id: put.lease }.into());
        }
        Ok(())
    }

    fn plan(&self, txn: &TxnRequest) -> Result<Plan, Failure> {
        let mut succeeded = true;
        for compare in &txn.compare {
            if !self.compare(compare)? {
                succeeded = false;
                break;
            }
        }
        let mut plan = Plan {
            succeeded,
            nested: Vec::new(),
        };
        for op in plan.ops(txn) {
            if let RequestOp::Txn(nested) = op {
                let nested_plan = self.plan(nested)?;
                plan.nested.push(nested_plan);
            }
        }
        Ok(plan)
    }

    /// etcd's `applyCompare`: every existing key in the range satisfies it; an empty range
    /// compares the zero key-value, except that a value compare on it is false.
    fn compare(&self, compare: &Compare) -> Result<bool, MvccError> {
        let located = self.state.locate(&compare.range, None);
        if located.is_empty() {
            if matches!(compare.target, CompareTarget::Value(_)) {
                return Ok(false);
            }
            return Ok(compare_kv(compare, &KeyValue::default()));
        }
        let with_value = matches!(compare.target, CompareTarget::Value(_));
        let records = self.records();
        for (key, version) in &located {
            let kv = view::load(&records, key, version, with_value)?;
            if !compare_kv(compare, &kv) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn check_puts(&self, txn: &TxnRequest, plan: &Plan) -> Result<(), Failure> {
        let mut nested = plan.nested.iter();
        for op in plan.ops(txn) {
            match op {
                RequestOp::Put(put) => {
                    self.check_put_key(put)?;
                    self.check_put_lease(put)?;
                }
                RequestOp::Txn(inner) => {
                    self.check_puts(inner, nested.next().expect("a plan per nested txn"))?
                }
                RequestOp::Range(_) | RequestOp::DeleteRange(_) => {}
            }
        }
        Ok(())
    }

    fn check_ranges(&self, txn: &TxnRequest, plan: &Plan) -> Result<(), Failure> {
        let mut nested = plan.nested.iter();
        for op in plan.ops(txn) {
            match op {
                RequestOp::Range(range) => self.check_txn_read_revision(range.revision)?,
                RequestOp::Txn(inner) => {
                    self.check_ranges(inner, nested.next().expect("a plan per nested txn"))?
                }
                RequestOp::Put(_) | RequestOp::DeleteRange(_) => {}
            }
        }
        Ok(())
    }

    /// etcd's compacted revision: -1 until the first compaction (see
    /// `State::compacted_at_zero`).
    fn compaction_floor(&self) -> Revision {
        let compacted = self.state.position.compacted_revision;
        if compacted == 0 && !self.state.compacted_at_zero {
            -1
        } else {
            compacted
        }
    }

    /// etcd's check of a range inside a transaction, which differs from a plain range's for a
    /// negative revision: below the compacted revision (-1 before any compaction), so refused as
    /// compacted, where a plain range reads the current revision.
    fn check_txn_read_revision(&self, revision: Revision) -> Result<(), ApplyError> {
        let position = &self.state.position;
        if revision == 0 {
            return Ok(());
        }
        if revision > position.current_revision {
            return Err(ApplyError::FutureRevision {
                current_revision: position.current_revision,
            });
        }
        if revision < self.compaction_floor() {
            return Err(ApplyError::Compacted {
                compacted_revision: position.compacted_revision,
            });
        }
        Ok(())
    }

    fn check_compact(&self, revision: Revision) -> Result<(), ApplyError> {
        let position = &self.state.position;
        if revision <= self.compaction_floor() {
            return Err(ApplyError::Compacted {
                compacted_revision: position.compacted_revision,
            });
        }
        if revision > position.current_revision {
            return Err(ApplyError::FutureRevision {
                current_revision: position.current_revision,
            });
        }
        Ok(())
    }

    // ---- writes ----

    fn txn(
        &mut self,
        writes: &mut Writes,
        txn: &TxnRequest,
        plan: &Plan,
    ) -> Result<TxnResponse, Failure> {
        let mut responses = Vec::new();
        let mut nested = plan.nested.iter();
        for op in plan.ops(txn) {
            responses.push(match op {
                RequestOp::Range(range) => {
                    let seen = writes.seen_revision();
                    let at = (range.revision > 0).then_some(range.revision);
                    let located = self.state.locate(&range.range, at);
                    ResponseOp::Range(view::range(range, &located, seen, &self.records())?)
                }
                RequestOp::Put(put) => ResponseOp::Put(self.put(writes, put)?),
                RequestOp::DeleteRange(delete) => {
                    ResponseOp::DeleteRange(self.delete_range(writes, delete)?)
                }
                RequestOp::Txn(inner) => {
                    let mut response =
                        self.txn(writes, inner, nested.next().expect("a plan per nested txn"))?;
                    response.revision = writes.seen_revision();
                    ResponseOp::Txn(response)
                }
            });
        }
        Ok(TxnResponse {
            succeeded: plan.succeeded,
            responses,
            revision: 0,
        })
    }

    /// Stores one change of `key` at the command's revision and its next sub-revision: its record
    /// in the batch, the version in the index and the change log. Returns the stored key (shared
    /// by the index, the change log and a lease's keys).
    fn write_version(
        &mut self,
        writes: &mut Writes,
        key: &[u8],
        put: Option<(&PutMeta, &[u8])>,
    ) -> Bytes {
        let sub_revision = writes.next_sub_revision;
        writes.next_sub_revision = sub_revision
            .checked_add(1)
            .expect("fewer than 2^32 changes in one revision");
        let at = (writes.revision as u64, sub_revision);
        let location = self
            .batch
            .append(|out| layout::encode_version(key, at, put, out));
        let version = Version {
            at,
            put: put.map(|(meta, _)| *meta),
            location,
        };
        // One search of the index for the stored key and its versions together.
        let only_key = (Bound::Included(key), Bound::Included(key));
        let (stored, was_live) = match self.state.keys.range_mut::<[u8], _>(only_key).next() {
            Some((stored, versions)) => {
                assert!(
                    versions.last().is_none_or(|last| last.at < at),
                    "a key's versions are written in revision order"
                );
                let was_live = versions.last().is_some_and(Version::is_put);
                versions.push(version);
                (stored.clone(), was_live)
            }
            None => {
                // Keys are copied out of the command: a slice would pin the whole log entry in
                // memory.
                let stored = Bytes::copy_from_slice(key);
                self.state.keys.insert(stored.clone(), vec![version]);
                (stored, false)
            }
        };
        match (was_live, put.is_some()) {
            (false, true) => self.state.live_keys += 1,
            (true, false) => self.state.live_keys -= 1,
            _ => {}
        }
        assert!(
            self.state.changes.back().is_none_or(|last| last.at < at),
            "the change log is written in revision order"
        );
        self.state.changes.push_back(Change {
            at,
            key: stored.clone(),
        });
        self.state.remember(location);
        self.state
            .segments
            .get_mut(&location.segment)
            .expect("the head segment exists")
            .note_owner(key_hash(key), at);
        stored
    }

    /// The key as a watcher's `prev_kv` sees it: as of the revision before this command.
    fn before(
        &self,
        writes: &Writes,
        key: &Bytes,
        current: Option<&Version>,
    ) -> Result<Option<KeyValue>, MvccError> {
        if !self.events_with_prev_kv {
            return Ok(None);
        }
        let version = match current {
            Some(version) if (version.at.0 as Revision) < writes.revision => Some(*version),
            None => None,
            Some(_) => self.state.put_at(key, writes.revision - 1).copied(),
        };
        version.map(|v| self.load(key, &v)).transpose()
    }

    fn put(&mut self, writes: &mut Writes, put: &PutRequest) -> Result<PutResponse, Failure> {
        let previous = self.state.current(&put.key).copied();
        let previous_kv = match &previous {
            Some(version) if put.prev_kv || put.ignore_value => Some(self.load(&put.key, version)?),
            _ => None,
        };
        let previous_meta = previous.and_then(|version| version.put);
        let value = match &previous_kv {
            Some(prev) if put.ignore_value => prev.value.clone(),
            _ => put.value.clone(),
        };
        let lease = match previous_meta {
            Some(meta) if put.ignore_lease => meta.lease,
            _ => put.lease,
        };
        let meta = PutMeta {
            create_revision: previous_meta.map_or(writes.revision, |m| m.create_revision),
            version: previous_meta.map_or(1, |m| m.version + 1),
            lease,
        };
        // etcd gives a put that creates the key no previous key-value, even when a transaction
        // deleted the key and put it back.
        let event_prev = if meta.create_revision == writes.revision {
            None
        } else {
            self.before(writes, &put.key, previous.as_ref())?
        };
        let stored = self.write_version(writes, &put.key, Some((&meta, &value)));
        let previous_lease = previous_meta.map_or(0, |m| m.lease);
        if previous_lease != 0 && previous_lease != lease {
            if let Some(entry) = self.state.leases.get_mut(&previous_lease) {
                entry.keys.remove(&put.key[..]);
            }
        }
        if lease != 0 {
            self.state
                .leases
                .get_mut(&lease)
                .expect("checked: the lease exists")
                .keys
                .insert(stored);
        }
        writes.events.push(Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: put.key.clone(),
                create_revision: meta.create_revision,
                mod_revision: writes.revision,
                version: meta.version,
                value,
                lease,
            },
            prev_kv: event_prev,
        });
        Ok(PutResponse {
            revision: writes.revision,
            prev_kv: if put.prev_kv { previous_kv } else { None },
        })
    }

    fn delete_range(
        &mut self,
        writes: &mut Writes,
        delete: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, Failure> {
        let doomed = self.state.locate(&delete.range, None);
        let deleted = doomed.len() as i64;
        let mut prev_kvs = Vec::new();
        for (key, version) in &doomed {
            if delete.prev_kv {
                prev_kvs.push(self.load(key, version)?);
            }
            self.delete_key(writes, key, version)?;
        }
        Ok(DeleteRangeResponse {
            revision: writes.seen_revision(),
            deleted,
            prev_kvs,
        })
    }

    fn delete_key(
        &mut self,
        writes: &mut Writes,
        key: &Bytes,
        current: &Version,
    ) -> Result<(), MvccError> {
        let event_prev = self.before(writes, key, Some(current))?;
        self.write_version(writes, key, None);
        let lease = current.put.map_or(0, |m| m.lease);
        if lease != 0 {
            if let Some(entry) = self.state.leases.get_mut(&lease) {
                entry.keys.remove(&key[..]);
            }
        }
        writes.events.push(Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: key.clone(),
                mod_revision: writes.revision,
                ..Default::default()
            },
            prev_kv: event_prev,
        });
        Ok(())
    }

    /// Writes the lease's state as of the change at `index`; the record it had before is
    /// garbage from now on.
    fn write_lease(&mut self, index: LogIndex, id: LeaseId, ttl_seconds: i64, remaining: i64) {
        let location = self
            .batch
            .append(|out| layout::encode_lease(id, index, ttl_seconds, remaining, out));
        self.state.remember(location);
        self.state
            .segments
            .get_mut(&location.segment)
            .expect("the head segment exists")
            .note_owner(lease_hash(id), (index, 0));
        let previous = match self.state.leases.get_mut(&id) {
            Some(entry) => {
                entry.remaining_ttl_ms = remaining;
                entry.change_index = index;
                Some(std::mem::replace(&mut entry.location, location))
            }
            None => {
                self.state.leases.insert(
                    id,
                    LeaseEntry {
                        ttl_seconds,
                        remaining_ttl_ms: remaining,
                        keys: BTreeSet::new(),
                        change_index: index,
                        location,
                    },
                );
                None
            }
        };
        if let Some(previous) = previous {
            self.state.forget(previous);
        }
    }

    fn grant(
        &mut self,
        index: LogIndex,
        id: LeaseId,
        ttl_seconds: i64,
    ) -> Result<LeaseId, Failure> {
        let id = if id == 0 {
            self.pick_lease_id(index)
        } else {
            id
        };
        if self.state.leases.contains_key(&id) {
            return Err(ApplyError::LeaseExists { id }.into());
        }
        self.write_lease(index, id, ttl_seconds, ttl_seconds.saturating_mul(1000));
        Ok(id)
    }

    /// Id for a grant that asked for none: the grant's log index (unique per entry, the same on
    /// every replica), or the next free id above it if a client took that one.
    fn pick_lease_id(&self, index: LogIndex) -> LeaseId {
        let mut id = LeaseId::try_from(index).expect("log indexes stay below 2^63");
        while self.state.leases.contains_key(&id) {
            id = id.checked_add(1).expect("lease ids stay below 2^63");
        }
        id
    }

    fn revoke(&mut self, index: LogIndex, writes: &mut Writes, id: LeaseId) -> Result<(), Failure> {
        let Some(entry) = self.state.leases.get(&id) else {
            return Err(ApplyError::LeaseNotFound { id }.into());
        };
        let keys: Vec<Bytes> = entry.keys.iter().cloned().collect();
        for key in keys {
            let current = self.state.current(&key).copied().ok_or_else(|| {
                MvccError::Corrupt(format!("lease {id} holds missing key {key:?}"))
            })?;
            self.delete_key(writes, &key, &current)?;
        }
        let entry = self.state.leases.remove(&id).expect("checked above");
        self.state.forget(entry.location);
        // A tombstone for the lease: garbage at once, but kept by segment GC while an older
        // record of the lease is on disk.
        let location = self
            .batch
            .append(|out| layout::encode_lease_gone(id, index, out));
        self.state
            .segments
            .get_mut(&location.segment)
            .expect("the head segment exists")
            .note_owner(lease_hash(id), (index, 0));
        Ok(())
    }

    /// Compaction at `revision`: effective at once (reads below it fail); the sweep deletes what
    /// it makes unreachable (`compaction.rs`).
    fn compact(&mut self, revision: Revision) {
        let position = &mut self.state.position;
        assert!(
            revision > position.compacted_revision && revision <= position.current_revision,
            "compaction moves forward and not past the current revision"
        );
        position.compacted_revision = revision;
        // Changes at the previous compacted revision are visited again: a tombstone kept there
        // goes now. Visiting a change twice is harmless.
        self.state.sweep_cursor = 0;
    }

    /// Ends the batch with its commit record (the position it leaves the state at); the previous
    /// commit record is garbage from then on.
    pub fn commit(&mut self, synced_bytes: u64) {
        let position = self.state.position;
        let location = self.batch.append(|out| {
            layout::encode_commit(
                &layout::CommitRecord {
                    applied_index: position.applied_index,
                    current_revision: position.current_revision,
                    compacted_revision: position.compacted_revision,
                    synced_bytes,
                },
                out,
            )
        });
        self.state.remember(location);
        if let Some(previous) = self.state.commit_location.replace(location) {
            self.state.forget(previous);
        }
    }
}

/// etcd's `compareKV`.
pub(crate) fn compare_kv(compare: &Compare, kv: &KeyValue) -> bool {
    use std::cmp::Ordering;
    let ordering: Ordering = match &compare.target {
        CompareTarget::Value(value) => kv.value[..].cmp(&value[..]),
        CompareTarget::Version(version) => kv.version.cmp(version),
        CompareTarget::CreateRevision(revision) => kv.create_revision.cmp(revision),
        CompareTarget::ModRevision(revision) => kv.mod_revision.cmp(revision),
        CompareTarget::Lease(lease) => kv.lease.cmp(lease),
    };
    match compare.result {
        CompareResult::Equal => ordering == Ordering::Equal,
        CompareResult::NotEqual => ordering != Ordering::Equal,
        CompareResult::Greater => ordering == Ordering::Greater,
        CompareResult::Less => ordering == Ordering::Less,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recycled_buffer_starts_empty_at_its_base_and_an_oversized_one_is_not_kept() {
        let mut first = Batch::with_buffer(1, 100, Vec::new());
        let location = first.append(|out| {
            out.extend_from_slice(b"record");
            6
        });
        assert_eq!((location.offset, location.len), (100, 6));
        let spare = first.into_spare_buffer();
        assert!(spare.is_empty() && spare.capacity() >= 6);

        let mut second = Batch::with_buffer(1, 106, spare);
        assert_eq!(
            second.end(),
            106,
            "the recycled buffer's old bytes are not counted"
        );
        let location = second.append(|out| {
            out.extend_from_slice(b"next");
            4
        });
        assert_eq!(location.offset, 106);
        assert_eq!(second.buffer, b"next");

        let mut large = Batch::with_buffer(1, 0, Vec::new());
        large.buffer.resize(SPARE_BUFFER_BYTES_MAX + 1, 0);
        assert_eq!(large.into_spare_buffer().capacity(), 0);
    }
}
