//! Applying commands inside one redb write transaction: validation first (nothing is written
//! unless the whole command is valid), then the writes of one new revision. Owns the write-side
//! rules of etcd: transactions, puts and leases, deletes, revokes. Reads no clock; the same log
//! gives the same state and the same results on every replica.

use super::error::{ApplyError, MvccError};
use super::layout::{
    encode_revision_record, ChangeKey, Record, VersionKey, INDEX, LEASES, LEASE_KEYS, REVISIONS,
};
use super::limits::validate_command;
use super::types::*;
use super::view::{check_read_revision, View};
use ballot_core::LogIndex;
use bytes::Bytes;
use redb::{ReadableTable, Table, WriteTransaction};
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

impl From<redb::StorageError> for Failure {
    fn from(error: redb::StorageError) -> Self {
        Failure::Broken(error.into())
    }
}

/// The writable tables of one apply transaction.
pub(crate) struct Tables<'t> {
    pub revisions: Table<'t, ChangeKey, &'static [u8]>,
    pub index: Table<'t, VersionKey, u8>,
    pub leases: Table<'t, i64, (i64, i64)>,
    pub lease_keys: Table<'t, (i64, &'static [u8]), ()>,
}

impl<'t> Tables<'t> {
    pub fn open(txn: &'t WriteTransaction) -> Result<Self, MvccError> {
        Ok(Self {
            revisions: txn.open_table(REVISIONS)?,
            index: txn.open_table(INDEX)?,
            leases: txn.open_table(LEASES)?,
            lease_keys: txn.open_table(LEASE_KEYS)?,
        })
    }
}

/// Appends revision records, given in increasing revision order and above every stored one, at
/// the end of `mvcc_revisions` in one cursor run: redb packs such a run into full leaves, where
/// `Table::insert` splits each full leaf in half.
pub(crate) fn append_revision_records<R: AsRef<[u8]>>(
    revisions: &mut Table<'_, ChangeKey, &'static [u8]>,
    records: impl IntoIterator<Item = (ChangeKey, R)>,
) -> Result<(), MvccError> {
    let mut records = records.into_iter().peekable();
    if records.peek().is_none() {
        return Ok(());
    }
    let mut cursor = revisions.upper_bound_mut(Bound::<ChangeKey>::Unbounded)?;
    for (at, record) in records {
        match cursor.insert_before(at, record.as_ref()) {
            Ok(()) => {}
            Err(redb::CursorError::UnorderedKey) => {
                panic!("revision {at:?} is above every stored revision (revisions only grow)")
            }
            Err(error) => return Err(redb::Error::from(error).into()),
        }
    }
    cursor.close()?;
    Ok(())
}

/// The state machine's position, as stored in `mvcc_meta`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Position {
    pub applied_index: LogIndex,
    pub current_revision: Revision,
    pub compacted_revision: Revision,
    pub sweep: Sweep,
}

/// How far the sweep has come: the deletion of what compaction made unreachable. A `Compact`
/// command takes effect at once (reads below it fail); the versions it makes unreachable are
/// deleted in bounded steps, one per apply commit (see `compaction.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Sweep {
    /// Everything compaction at this revision made unreachable is deleted (invariant 4 holds
    /// here). At most the compacted revision; below it, the sweep has work left.
    pub done_revision: Revision,
    /// The next change of the log the sweep visits.
    pub resume: ChangeKey,
}

impl Sweep {
    /// Nothing left to delete for compaction at `revision`.
    pub fn finished(revision: Revision) -> Self {
        Sweep {
            done_revision: revision,
            resume: (revision as u64, 0),
        }
    }

    pub fn is_behind(&self, compacted_revision: Revision) -> bool {
        self.done_revision < compacted_revision
    }
}

/// Applies commands to the tables of one write transaction.
pub(crate) struct Applier<'t> {
    pub tables: Tables<'t>,
    pub position: Position,
    /// Revision records written but not yet in `mvcc_revisions`, in revision order: appended
    /// in one run by [`Applier::append_pending`] before the transaction commits (and before the
    /// sweep scans the table). One ordered run fills the leaves; `Table::insert` one at a
    /// time splits each full leaf in half and leaves them half empty.
    pub pending: Vec<(ChangeKey, Vec<u8>)>,
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

/// A read view over the apply transaction's own (writable) tables.
type WriteView<'a, 't> = View<'a, Table<'t, ChangeKey, &'static [u8]>, Table<'t, VersionKey, u8>>;

impl<'t> Applier<'t> {
    fn view(&self) -> WriteView<'_, 't> {
        View {
            revisions: &self.tables.revisions,
            index: &self.tables.index,
            pending: &self.pending,
        }
    }

    /// Appends the pending revision records to `mvcc_revisions`, in one ordered run at its end.
    pub fn append_pending(&mut self) -> Result<(), MvccError> {
        append_revision_records(&mut self.tables.revisions, self.pending.drain(..))
    }

    /// Applies one command at `index` (already known to be above the applied index).
    pub fn apply(
        &mut self,
        index: LogIndex,
        command: &Command,
    ) -> Result<(Result<CommandResult, ApplyError>, Vec<Event>), MvccError> {
        assert!(
            index > self.position.applied_index,
            "a log index is applied at most once, in increasing order"
        );
        let mut writes = Writes {
            revision: self.position.current_revision + 1,
            next_sub_revision: 0,
            events: Vec::new(),
        };
        let outcome = self.execute(index, command, &mut writes);
        self.position.applied_index = index;
        match outcome {
            Ok(result) => {
                if writes.changed() {
                    self.position.current_revision = writes.revision;
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
                self.check_put(put)?;
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
                self.compact(*revision);
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
                self.revoke(writes, *id)?;
                Ok(CommandResult::LeaseRevoke {
                    revision: writes.seen_revision(),
                })
            }
            Command::LeaseCheckpoint { checkpoints } => {
                for &(id, remaining_ttl_ms) in checkpoints {
                    let ttl_seconds = self.tables.leases.get(id)?.map(|lease| lease.value().0);
                    // A revoke may have overtaken the checkpoint: etcd ignores unknown ids.
                    if let Some(ttl_seconds) = ttl_seconds {
                        self.tables
                            .leases
                            .insert(id, (ttl_seconds, remaining_ttl_ms))?;
                    }
                }
                Ok(CommandResult::LeaseCheckpoint)
            }
        }
    }

    // ---- checks (no writes) ----

    fn check_put(&self, put: &PutRequest) -> Result<(), Failure> {
        if (put.ignore_value || put.ignore_lease) && !self.view().exists(&put.key)? {
            return Err(ApplyError::KeyNotFound {
                key: put.key.clone(),
            }
            .into());
        }
        if put.lease != 0 && self.tables.leases.get(put.lease)?.is_none() {
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
        let kvs = self.view().current_range(&compare.range)?;
        if kvs.is_empty() {
            if matches!(compare.target, CompareTarget::Value(_)) {
                return Ok(false);
            }
            return Ok(compare_kv(compare, &KeyValue::default()));
        }
        Ok(kvs.iter().all(|kv| compare_kv(compare, kv)))
    }

    fn check_puts(&self, txn: &TxnRequest, plan: &Plan) -> Result<(), Failure> {
        let mut nested = plan.nested.iter();
        for op in plan.ops(txn) {
            match op {
                RequestOp::Put(put) => self.check_put(put)?,
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
                RequestOp::Range(range) => {
                    let position = &self.position;
                    check_read_revision(
                        range.revision,
                        position.current_revision,
                        position.compacted_revision,
                    )?
                }
                RequestOp::Txn(inner) => {
                    self.check_ranges(inner, nested.next().expect("a plan per nested txn"))?
                }
                RequestOp::Put(_) | RequestOp::DeleteRange(_) => {}
            }
        }
        Ok(())
    }

    fn check_compact(&self, revision: Revision) -> Result<(), ApplyError> {
        if revision <= self.position.compacted_revision {
            return Err(ApplyError::Compacted {
                compacted_revision: self.position.compacted_revision,
            });
        }
        if revision > self.position.current_revision {
            return Err(ApplyError::FutureRevision {
                current_revision: self.position.current_revision,
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
                    let response =
                        self.view()
                            .range(range, seen, self.position.compacted_revision)?;
                    ResponseOp::Range(response?)
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

    /// Stores one change of `key` at the command's revision and its next sub-revision: the index
    /// entry now, the revision record when the batch appends its pending records.
    fn write_version(
        &mut self,
        writes: &mut Writes,
        key: &[u8],
        record: &Record,
    ) -> Result<(), MvccError> {
        let sub_revision = writes.next_sub_revision;
        writes.next_sub_revision = sub_revision
            .checked_add(1)
            .expect("fewer than 2^32 changes in one revision");
        let at = (writes.revision as u64, sub_revision);
        let replaced = self.tables.index.insert((key, at.0, at.1), record.kind())?;
        assert!(
            replaced.is_none(),
            "a version (key, revision, sub-revision) is written once"
        );
        drop(replaced);
        assert!(
            self.pending.last().is_none_or(|(last, _)| *last < at),
            "revision records are written in revision order"
        );
        self.pending
            .push((at, encode_revision_record(key, &record.encode())));
        Ok(())
    }

    /// The key as a watcher's `prev_kv` sees it: as of the revision before this command.
    fn before(
        &self,
        writes: &Writes,
        key: &[u8],
        current: &Option<KeyValue>,
    ) -> Result<Option<KeyValue>, MvccError> {
        match current {
            Some(kv) if kv.mod_revision < writes.revision => Ok(Some(kv.clone())),
            None => Ok(None),
            Some(_) => self.view().at_revision(key, writes.revision - 1),
        }
    }

    fn put(&mut self, writes: &mut Writes, put: &PutRequest) -> Result<PutResponse, Failure> {
        let previous = self.view().current(&put.key)?;
        let (value, lease) = match &previous {
            Some(prev) => (
                if put.ignore_value {
                    prev.value.clone()
                } else {
                    put.value.clone()
                },
                if put.ignore_lease {
                    prev.lease
                } else {
                    put.lease
                },
            ),
            None => (put.value.clone(), put.lease),
        };
        let kv = KeyValue {
            key: put.key.clone(),
            create_revision: previous
                .as_ref()
                .map_or(writes.revision, |prev| prev.create_revision),
            mod_revision: writes.revision,
            version: previous.as_ref().map_or(1, |prev| prev.version + 1),
            value,
            lease,
        };
        let event_prev = self.before(writes, &put.key, &previous)?;
        self.write_version(writes, &put.key, &Record::put_from(&kv))?;
        let previous_lease = previous.as_ref().map_or(0, |prev| prev.lease);
        if previous_lease != 0 && previous_lease != lease {
            self.tables
                .lease_keys
                .remove((previous_lease, &put.key[..]))?;
        }
        if lease != 0 {
            self.tables.lease_keys.insert((lease, &put.key[..]), ())?;
        }
        writes.events.push(Event {
            kind: EventKind::Put,
            kv,
            prev_kv: event_prev,
        });
        Ok(PutResponse {
            revision: writes.revision,
            prev_kv: if put.prev_kv { previous } else { None },
        })
    }

    fn delete_range(
        &mut self,
        writes: &mut Writes,
        delete: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, Failure> {
        let doomed = self.view().current_range(&delete.range)?;
        let deleted = doomed.len() as i64;
        for kv in &doomed {
            self.delete_key(writes, kv)?;
        }
        Ok(DeleteRangeResponse {
            revision: writes.seen_revision(),
            deleted,
            prev_kvs: if delete.prev_kv { doomed } else { Vec::new() },
        })
    }

    fn delete_key(&mut self, writes: &mut Writes, current: &KeyValue) -> Result<(), MvccError> {
        let key = &current.key[..];
        let event_prev = self.before(writes, key, &Some(current.clone()))?;
        self.write_version(writes, key, &Record::Tombstone)?;
        if current.lease != 0 {
            self.tables.lease_keys.remove((current.lease, key))?;
        }
        let tombstone = KeyValue {
            key: current.key.clone(),
            mod_revision: writes.revision,
            ..Default::default()
        };
        writes.events.push(Event {
            kind: EventKind::Delete,
            kv: tombstone,
            prev_kv: event_prev,
        });
        Ok(())
    }

    fn grant(
        &mut self,
        index: LogIndex,
        id: LeaseId,
        ttl_seconds: i64,
    ) -> Result<LeaseId, Failure> {
        let id = if id == 0 {
            self.pick_lease_id(index)?
        } else {
            id
        };
        if self.tables.leases.get(id)?.is_some() {
            return Err(ApplyError::LeaseExists { id }.into());
        }
        let remaining_ttl_ms = ttl_seconds.saturating_mul(1000);
        self.tables
            .leases
            .insert(id, (ttl_seconds, remaining_ttl_ms))?;
        Ok(id)
    }

    /// Id for a grant that asked for none: the grant's log index (unique per entry, the same on
    /// every replica), or the next free id above it if a client took that one.
    fn pick_lease_id(&self, index: LogIndex) -> Result<LeaseId, MvccError> {
        let mut id = LeaseId::try_from(index).expect("log indexes stay below 2^63");
        while self.tables.leases.get(id)?.is_some() {
            id = id.checked_add(1).expect("lease ids stay below 2^63");
        }
        Ok(id)
    }

    fn revoke(&mut self, writes: &mut Writes, id: LeaseId) -> Result<(), Failure> {
        if self.tables.leases.get(id)?.is_none() {
            return Err(ApplyError::LeaseNotFound { id }.into());
        }
        let mut keys = Vec::new();
        for entry in self.tables.lease_keys.range((id, &b""[..])..)? {
            let (attached, _) = entry?;
            let (lease, key) = attached.value();
            if lease != id {
                break;
            }
            keys.push(Bytes::copy_from_slice(key));
        }
        for key in keys {
            let current = self.view().current(&key)?;
            let current = current.ok_or_else(|| {
                MvccError::Corrupt(format!("lease {id} holds missing key {key:?}"))
            })?;
            self.delete_key(writes, &current)?;
        }
        self.tables.leases.remove(id)?;
        Ok(())
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
