//! The store against an obviously correct model: a `BTreeMap` of current keys plus the full,
//! never-compacted history, with etcd's rules written the simple way. Random sequences of puts,
//! deletes, transactions (compares, nested, ranges), compactions and lease commands are applied
//! to both, in random batches, with restarts and snapshot restores in between; every result,
//! every event, every range (now and at past revisions, with limits, sorts and filters) and every
//! history replay must agree, and the store's invariants must hold after every step.

mod mvcc_common;

use ballot_storage::mvcc::limits::validate_command;
use ballot_storage::mvcc::types::*;
use ballot_storage::mvcc::{Applied, ApplyError, MvccError, MvccOptions, MvccStore};
use bytes::Bytes;
use mvcc_common::TempDir;
use proptest::prelude::*;
use std::collections::BTreeMap;

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Model {
    current: BTreeMap<Bytes, KeyValue>,
    /// Every change of every key, in order: (revision, sub-revision, the key-value or None).
    history: BTreeMap<Bytes, Vec<(Revision, u32, Option<KeyValue>)>>,
    /// Every change, in order: (revision, sub-revision, key).
    log: Vec<(Revision, u32, Bytes)>,
    revision: Revision,
    compacted: Revision,
    /// etcd's first compaction at 0 succeeds (its compacted revision starts at -1), later ones
    /// are refused. The store remembers it in memory only, so a reopen or a restore forgets it.
    compacted_at_zero: bool,
    applied: u64,
    /// id -> (ttl_seconds, remaining_ttl_ms); attached keys are the current keys naming the id.
    leases: BTreeMap<LeaseId, (i64, i64)>,
}

struct Txn {
    revision: Revision,
    sub: u32,
    events: Vec<Event>,
}

impl Txn {
    fn seen(&self) -> Revision {
        if self.sub > 0 {
            self.revision
        } else {
            self.revision - 1
        }
    }
}

struct Path {
    succeeded: bool,
    nested: Vec<Path>,
}

impl Default for Model {
    /// An empty store: at revision 1, as in etcd.
    fn default() -> Self {
        Model {
            current: BTreeMap::new(),
            history: BTreeMap::new(),
            log: Vec::new(),
            revision: 1,
            compacted: 0,
            compacted_at_zero: false,
            applied: 0,
            leases: BTreeMap::new(),
        }
    }
}

impl Model {
    fn state_at(&self, key: &[u8], revision: Revision) -> Option<KeyValue> {
        let changes = self.history.get(key)?;
        changes
            .iter()
            .rev()
            .find(|(r, _, _)| *r <= revision)
            .and_then(|(_, _, kv)| kv.clone())
    }

    fn lease(&self, id: LeaseId) -> Option<Lease> {
        let &(ttl_seconds, remaining_ttl_ms) = self.leases.get(&id)?;
        let keys = self
            .current
            .values()
            .filter(|kv| kv.lease == id)
            .map(|kv| kv.key.clone())
            .collect();
        Some(Lease {
            id,
            ttl_seconds,
            remaining_ttl_ms,
            keys,
        })
    }

    fn apply(&mut self, index: u64, command: &Command) -> Applied {
        if index <= self.applied {
            let result = Err(ApplyError::AlreadyApplied {
                index,
                applied_index: self.applied,
            });
            return Applied {
                index,
                result,
                events: vec![],
            };
        }
        self.applied = index;
        let mut txn = Txn {
            revision: self.revision + 1,
            sub: 0,
            events: vec![],
        };
        let result = self.execute(index, command, &mut txn);
        if result.is_err() {
            assert_eq!(txn.sub, 0, "model: a refused command wrote nothing");
        }
        if txn.sub > 0 {
            self.revision = txn.revision;
        }
        Applied {
            index,
            result,
            events: txn.events,
        }
    }

    fn execute(
        &mut self,
        index: u64,
        command: &Command,
        txn: &mut Txn,
    ) -> Result<CommandResult, ApplyError> {
        validate_command(command)?;
        match command {
            Command::Put(put) => {
                // etcd: a plain put's lease is checked before its key.
                if put.lease != 0 && !self.leases.contains_key(&put.lease) {
                    return Err(ApplyError::LeaseNotFound { id: put.lease });
                }
                self.check_put(put)?;
                Ok(CommandResult::Put(self.put(txn, put)))
            }
            Command::DeleteRange(delete) => {
                Ok(CommandResult::DeleteRange(self.delete(txn, delete)))
            }
            Command::Txn(request) => {
                let path = self.path(request);
                self.check_puts(request, &path)?;
                self.check_ranges(request, &path)?;
                let mut response = self.txn(txn, request, &path);
                response.revision = txn.seen();
                Ok(CommandResult::Txn(response))
            }
            Command::Compact { revision } => {
                let floor = if self.compacted == 0 && !self.compacted_at_zero {
                    -1
                } else {
                    self.compacted
                };
                if *revision <= floor {
                    return Err(ApplyError::Compacted {
                        compacted_revision: self.compacted,
                    });
                }
                if *revision > self.revision {
                    return Err(ApplyError::FutureRevision {
                        current_revision: self.revision,
                    });
                }
                self.compacted = *revision;
                self.compacted_at_zero |= *revision == 0;
                Ok(CommandResult::Compact {
                    revision: *revision,
                })
            }
            Command::LeaseGrant { id, ttl_seconds } => {
                let mut id = *id;
                if id == 0 {
                    id = index as i64;
                    while self.leases.contains_key(&id) {
                        id += 1;
                    }
                }
                if self.leases.contains_key(&id) {
                    return Err(ApplyError::LeaseExists { id });
                }
                self.leases.insert(id, (*ttl_seconds, ttl_seconds * 1000));
                Ok(CommandResult::LeaseGrant {
                    id,
                    ttl_seconds: *ttl_seconds,
                })
            }
            Command::LeaseRevoke { id } => {
                if !self.leases.contains_key(id) {
                    return Err(ApplyError::LeaseNotFound { id: *id });
                }
                let keys: Vec<Bytes> = self
                    .current
                    .values()
                    .filter(|kv| kv.lease == *id)
                    .map(|kv| kv.key.clone())
                    .collect();
                for key in keys {
                    self.delete_key(txn, &key);
                }
                self.leases.remove(id);
                Ok(CommandResult::LeaseRevoke {
                    revision: txn.seen(),
                })
            }
            Command::LeaseCheckpoint { checkpoints } => {
                for (id, remaining) in checkpoints {
                    if let Some(lease) = self.leases.get_mut(id) {
                        lease.1 = *remaining;
                    }
                }
                Ok(CommandResult::LeaseCheckpoint)
            }
        }
    }

    fn check_put(&self, put: &PutRequest) -> Result<(), ApplyError> {
        if (put.ignore_value || put.ignore_lease) && !self.current.contains_key(&put.key) {
            return Err(ApplyError::KeyNotFound {
                key: put.key.clone(),
            });
        }
        if put.lease != 0 && !self.leases.contains_key(&put.lease) {
            return Err(ApplyError::LeaseNotFound { id: put.lease });
        }
        Ok(())
    }

    fn compare(&self, compare: &Compare) -> bool {
        let kvs: Vec<&KeyValue> = self
            .current
            .values()
            .filter(|kv| compare.range.contains(&kv.key))
            .collect();
        let holds = |kv: &KeyValue| {
            let ordering = match &compare.target {
                CompareTarget::Value(v) => kv.value.cmp(v),
                CompareTarget::Version(v) => kv.version.cmp(v),
                CompareTarget::CreateRevision(v) => kv.create_revision.cmp(v),
                CompareTarget::ModRevision(v) => kv.mod_revision.cmp(v),
                CompareTarget::Lease(v) => kv.lease.cmp(v),
            };
            match compare.result {
                CompareResult::Equal => ordering.is_eq(),
                CompareResult::NotEqual => ordering.is_ne(),
                CompareResult::Greater => ordering.is_gt(),
                CompareResult::Less => ordering.is_lt(),
            }
        };
        if kvs.is_empty() {
            return !matches!(compare.target, CompareTarget::Value(_))
                && holds(&KeyValue::default());
        }
        kvs.into_iter().all(holds)
    }

    fn path(&self, request: &TxnRequest) -> Path {
        let succeeded = request.compare.iter().all(|c| self.compare(c));
        let ops = if succeeded {
            &request.success
        } else {
            &request.failure
        };
        let nested = ops
            .iter()
            .filter_map(|op| {
                if let RequestOp::Txn(t) = op {
                    Some(self.path(t))
                } else {
                    None
                }
            })
            .collect();
        Path { succeeded, nested }
    }

    fn check_puts(&self, request: &TxnRequest, path: &Path) -> Result<(), ApplyError> {
        let ops = if path.succeeded {
            &request.success
        } else {
            &request.failure
        };
        let mut nested = path.nested.iter();
        for op in ops {
            match op {
                RequestOp::Put(put) => self.check_put(put)?,
                RequestOp::Txn(t) => self.check_puts(t, nested.next().unwrap())?,
                _ => {}
            }
        }
        Ok(())
    }

    fn check_ranges(&self, request: &TxnRequest, path: &Path) -> Result<(), ApplyError> {
        let ops = if path.succeeded {
            &request.success
        } else {
            &request.failure
        };
        let mut nested = path.nested.iter();
        for op in ops {
            match op {
                RequestOp::Range(range) => self.check_revision(range.revision, self.revision)?,
                RequestOp::Txn(t) => self.check_ranges(t, nested.next().unwrap())?,
                _ => {}
            }
        }
        Ok(())
    }

    fn check_revision(&self, revision: Revision, current: Revision) -> Result<(), ApplyError> {
        if revision > current {
            return Err(ApplyError::FutureRevision {
                current_revision: current,
            });
        }
        if revision > 0 && revision < self.compacted {
            return Err(ApplyError::Compacted {
                compacted_revision: self.compacted,
            });
        }
        Ok(())
    }

    fn txn(&mut self, txn: &mut Txn, request: &TxnRequest, path: &Path) -> TxnResponse {
        let ops = if path.succeeded {
            &request.success
        } else {
            &request.failure
        };
        let mut nested = path.nested.iter();
        let mut responses = vec![];
        for op in ops {
            responses.push(match op {
                RequestOp::Range(range) => ResponseOp::Range(self.range(range, txn.seen())),
                RequestOp::Put(put) => ResponseOp::Put(self.put(txn, put)),
                RequestOp::DeleteRange(delete) => ResponseOp::DeleteRange(self.delete(txn, delete)),
                RequestOp::Txn(t) => {
                    let mut response = self.txn(txn, t, nested.next().unwrap());
                    response.revision = txn.seen();
                    ResponseOp::Txn(response)
                }
            });
        }
        TxnResponse {
            succeeded: path.succeeded,
            responses,
            revision: 0,
        }
    }

    fn record(&mut self, txn: &mut Txn, key: &Bytes, kv: Option<KeyValue>) {
        self.history
            .entry(key.clone())
            .or_default()
            .push((txn.revision, txn.sub, kv.clone()));
        self.log.push((txn.revision, txn.sub, key.clone()));
        txn.sub += 1;
        match kv {
            Some(kv) => self.current.insert(key.clone(), kv),
            None => self.current.remove(key),
        };
    }

    fn put(&mut self, txn: &mut Txn, put: &PutRequest) -> PutResponse {
        let previous = self.current.get(&put.key).cloned();
        let kv = KeyValue {
            key: put.key.clone(),
            create_revision: previous
                .as_ref()
                .map_or(txn.revision, |p| p.create_revision),
            mod_revision: txn.revision,
            version: previous.as_ref().map_or(1, |p| p.version + 1),
            value: match (&previous, put.ignore_value) {
                (Some(p), true) => p.value.clone(),
                _ => put.value.clone(),
            },
            lease: match (&previous, put.ignore_lease) {
                (Some(p), true) => p.lease,
                _ => put.lease,
            },
        };
        // etcd: an event that creates the key has no previous key-value.
        let prev_kv = if kv.create_revision == txn.revision {
            None
        } else {
            self.state_at(&put.key, txn.revision - 1)
        };
        self.record(txn, &put.key, Some(kv.clone()));
        txn.events.push(Event {
            kind: EventKind::Put,
            kv,
            prev_kv,
        });
        PutResponse {
            revision: txn.revision,
            prev_kv: if put.prev_kv { previous } else { None },
        }
    }

    fn delete_key(&mut self, txn: &mut Txn, key: &Bytes) {
        let prev_kv = self.state_at(key, txn.revision - 1);
        self.record(txn, key, None);
        let kv = KeyValue {
            key: key.clone(),
            mod_revision: txn.revision,
            ..Default::default()
        };
        txn.events.push(Event {
            kind: EventKind::Delete,
            kv,
            prev_kv,
        });
    }

    fn delete(&mut self, txn: &mut Txn, delete: &DeleteRangeRequest) -> DeleteRangeResponse {
        let doomed: Vec<KeyValue> = self
            .current
            .values()
            .filter(|kv| delete.range.contains(&kv.key))
            .cloned()
            .collect();
        for kv in &doomed {
            self.delete_key(txn, &kv.key);
        }
        DeleteRangeResponse {
            revision: txn.seen(),
            deleted: doomed.len() as i64,
            prev_kvs: if delete.prev_kv { doomed } else { vec![] },
        }
    }

    /// etcd's Range, the plain way. `now` is the revision the response reports.
    fn range(&self, request: &RangeRequest, now: Revision) -> RangeResponse {
        let mut kvs: Vec<KeyValue> = if request.revision <= 0 {
            self.current
                .values()
                .filter(|kv| request.range.contains(&kv.key))
                .cloned()
                .collect()
        } else {
            self.history
                .keys()
                .filter(|key| request.range.contains(key))
                .filter_map(|key| self.state_at(key, request.revision))
                .collect()
        };
        let count = kvs.len() as i64;
        if request.count_only {
            return RangeResponse {
                kvs: vec![],
                more: false,
                count,
                revision: now,
            };
        }
        let filtered = request.max_mod_revision != 0
            || request.min_mod_revision != 0
            || request.max_create_revision != 0
            || request.min_create_revision != 0;
        if request.sort_order == SortOrder::None && !filtered && request.limit > 0 {
            // etcd reads `limit + 1` keys in key order when no order is asked for, and sorts
            // those alone.
            kvs.truncate(request.limit as usize + 1);
        }
        kvs.retain(|kv| {
            (request.max_mod_revision == 0 || kv.mod_revision <= request.max_mod_revision)
                && (request.min_mod_revision == 0 || kv.mod_revision >= request.min_mod_revision)
                && (request.max_create_revision == 0
                    || kv.create_revision <= request.max_create_revision)
                && (request.min_create_revision == 0
                    || kv.create_revision >= request.min_create_revision)
        });
        let key_of = |kv: &KeyValue| -> Vec<u8> {
            match request.sort_target {
                SortTarget::Key => kv.key.to_vec(),
                SortTarget::Version => kv.version.to_be_bytes().to_vec(),
                SortTarget::Create => kv.create_revision.to_be_bytes().to_vec(),
                SortTarget::Mod => kv.mod_revision.to_be_bytes().to_vec(),
                SortTarget::Value => kv.value.to_vec(),
            }
        };
        // Numbers here are never negative, so big-endian bytes sort like the numbers.
        match (request.sort_order, request.sort_target) {
            (SortOrder::Descend, _) => kvs.sort_by_key(|kv| std::cmp::Reverse(key_of(kv))),
            (SortOrder::None, SortTarget::Key) => {}
            _ => kvs.sort_by_key(key_of),
        }
        let mut more = false;
        if request.limit > 0 && kvs.len() > request.limit as usize {
            kvs.truncate(request.limit as usize);
            more = true;
        }
        if request.keys_only {
            kvs.iter_mut().for_each(|kv| kv.value = Bytes::new());
        }
        RangeResponse {
            kvs,
            more,
            count,
            revision: now,
        }
    }

    fn read(&self, request: &RangeRequest) -> Result<RangeResponse, ApplyError> {
        validate_command(&Command::Txn(TxnRequest {
            success: vec![RequestOp::Range(request.clone())],
            ..Default::default()
        }))?;
        self.check_revision(request.revision, self.revision)?;
        Ok(self.range(request, self.revision))
    }

    fn events(
        &self,
        range: &KeyRange,
        start: Revision,
        end: Revision,
        limit: usize,
        with_prev_kv: bool,
    ) -> Result<Vec<Event>, HistoryError> {
        if start < self.compacted {
            return Err(HistoryError::Compacted {
                compact_revision: self.compacted,
            });
        }
        if end > self.revision {
            return Err(HistoryError::FutureRevision {
                current_revision: self.revision,
            });
        }
        let limit = if limit == 0 { usize::MAX } else { limit };
        let mut by_revision: BTreeMap<Revision, Vec<Event>> = BTreeMap::new();
        for (i, (revision, sub, key)) in self.log.iter().enumerate() {
            if *revision < start || *revision > end || !range.contains(key) {
                continue;
            }
            // At the compacted revision itself only each key's last change there is kept, and
            // only if it is a put (etcd drops a tombstone at the compacted revision).
            let superseded_at_compacted = *revision == self.compacted
                && self.log[i + 1..]
                    .iter()
                    .any(|(r, _, k)| r == revision && k == key);
            if superseded_at_compacted {
                continue;
            }
            let kv = self.history[key]
                .iter()
                .find(|(r, s, _)| r == revision && s == sub)
                .unwrap()
                .2
                .clone();
            if *revision == self.compacted && kv.is_none() {
                continue;
            }
            let event = match kv {
                Some(kv) => Event {
                    kind: EventKind::Put,
                    kv,
                    prev_kv: None,
                },
                None => Event {
                    kind: EventKind::Delete,
                    kv: KeyValue {
                        key: key.clone(),
                        mod_revision: *revision,
                        ..Default::default()
                    },
                    prev_kv: None,
                },
            };
            let creates = event.kind == EventKind::Put && event.kv.create_revision == *revision;
            let prev_kv = (with_prev_kv && *revision > self.compacted && !creates)
                .then(|| self.state_at(key, revision - 1))
                .flatten();
            by_revision
                .entry(*revision)
                .or_default()
                .push(Event { prev_kv, ..event });
        }
        let mut events = vec![];
        for (_, batch) in by_revision {
            if events.len() + batch.len() <= limit {
                events.extend(batch);
                if events.len() == limit {
                    break;
                }
            } else {
                if events.is_empty() {
                    events.extend(batch.into_iter().take(limit));
                }
                break;
            }
        }
        Ok(events)
    }
}

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

const KEYS: &[&str] = &["a", "aa", "ab", "b", "ba", "c", "d"];
const VALUES: &[&str] = &["", "x", "y", "zz"];

fn key() -> impl Strategy<Value = Bytes> {
    prop::sample::select(KEYS).prop_map(|k| Bytes::from_static(k.as_bytes()))
}

fn key_range() -> impl Strategy<Value = KeyRange> {
    prop_oneof![
        4 => key().prop_map(KeyRange::single),
        2 => prop::sample::select(&["a", "b", "c"][..]).prop_map(KeyRange::prefix),
        2 => (key(), key()).prop_map(|(a, b)| KeyRange::new(a, b)),
        1 => key().prop_map(|a| KeyRange::new(a, "\0")),
        1 => Just(KeyRange::new("\0", "\0")),
    ]
}

/// A lease reference: 0 (none), one of the first leases granted, or a missing one.
fn lease_ref() -> impl Strategy<Value = LeaseId> {
    prop_oneof![6 => Just(0i64), 3 => 1i64..4, 1 => Just(55i64)]
}

fn put_request() -> impl Strategy<Value = PutRequest> {
    (
        key(),
        prop::sample::select(VALUES),
        lease_ref(),
        any::<bool>(),
        0u8..10,
    )
        .prop_map(|(key, value, lease, prev_kv, mode)| {
            let mut put = PutRequest {
                key,
                value: Bytes::from_static(value.as_bytes()),
                lease,
                prev_kv,
                ..Default::default()
            };
            match mode {
                0 => {
                    put.ignore_value = true;
                    put.value = Bytes::new();
                }
                1 => {
                    put.ignore_lease = true;
                    put.lease = 0;
                }
                2 => put.ignore_value = true, // usually "value is provided"
                _ => {}
            }
            put
        })
}

fn delete_request() -> impl Strategy<Value = DeleteRangeRequest> {
    (key_range(), any::<bool>()).prop_map(|(range, prev_kv)| DeleteRangeRequest { range, prev_kv })
}

fn range_request() -> impl Strategy<Value = RangeRequest> {
    let sort = (
        prop::sample::select(&[SortOrder::None, SortOrder::Ascend, SortOrder::Descend][..]),
        prop::sample::select(
            &[
                SortTarget::Key,
                SortTarget::Version,
                SortTarget::Create,
                SortTarget::Mod,
                SortTarget::Value,
            ][..],
        ),
    );
    let filters = prop_oneof![8 => Just([0i64; 4]), 2 => prop::array::uniform4(0i64..12)];
    (
        key_range(),
        0i64..4,
        prop_oneof![3 => Just(0i64), 1 => 0i64..14],
        sort,
        0u8..8,
        filters,
    )
        .prop_map(
            |(range, limit, revision, (sort_order, sort_target), flags, [a, b, c, d])| {
                RangeRequest {
                    range,
                    limit,
                    revision,
                    sort_order,
                    sort_target,
                    keys_only: flags == 1,
                    count_only: flags == 2,
                    min_mod_revision: a,
                    max_mod_revision: b,
                    min_create_revision: c,
                    max_create_revision: d,
                }
            },
        )
}

fn compare() -> impl Strategy<Value = Compare> {
    let target = prop_oneof![
        (0i64..4).prop_map(CompareTarget::Version),
        (0i64..10).prop_map(CompareTarget::CreateRevision),
        (0i64..10).prop_map(CompareTarget::ModRevision),
        prop::sample::select(VALUES)
            .prop_map(|v| CompareTarget::Value(Bytes::from_static(v.as_bytes()))),
        lease_ref().prop_map(CompareTarget::Lease),
    ];
    let result = prop::sample::select(
        &[
            CompareResult::Equal,
            CompareResult::Greater,
            CompareResult::Less,
            CompareResult::NotEqual,
        ][..],
    );
    (
        prop_oneof![3 => key().prop_map(KeyRange::single), 1 => key_range()],
        target,
        result,
    )
        .prop_map(|(range, target, result)| Compare {
            range,
            target,
            result,
        })
}

fn txn_request() -> impl Strategy<Value = TxnRequest> {
    let leaf = prop_oneof![
        range_request().prop_map(RequestOp::Range),
        put_request().prop_map(RequestOp::Put),
        delete_request().prop_map(RequestOp::DeleteRange),
    ];
    let op = leaf.prop_recursive(2, 12, 3, |inner| {
        prop_oneof![
            3 => inner.clone(),
            1 => (prop::collection::vec(compare(), 0..2), prop::collection::vec(inner.clone(), 0..3), prop::collection::vec(inner, 0..2))
                .prop_map(|(compare, success, failure)| RequestOp::Txn(TxnRequest { compare, success, failure })),
        ]
    });
    (
        prop::collection::vec(compare(), 0..3),
        prop::collection::vec(op.clone(), 0..4),
        prop::collection::vec(op, 0..3),
    )
        .prop_map(|(compare, success, failure)| TxnRequest {
            compare,
            success,
            failure,
        })
}

/// A command, some parts of it chosen relative to the state when it is applied.
#[derive(Debug, Clone)]
enum Gen {
    Command(Command),
    /// Compact at `selector % (current revision + 2)`: below, at, above the compacted revision.
    Compact(u8),
    /// Revoke the `selector`-th lease (or a missing one).
    Revoke(u8),
    Checkpoint(u8, i64),
}

fn gen_command() -> impl Strategy<Value = Gen> {
    prop_oneof![
        8 => put_request().prop_map(|p| Gen::Command(Command::Put(p))),
        3 => delete_request().prop_map(|d| Gen::Command(Command::DeleteRange(d))),
        5 => txn_request().prop_map(|t| Gen::Command(Command::Txn(t))),
        2 => any::<u8>().prop_map(Gen::Compact),
        2 => (0i64..4, 1i64..50).prop_map(|(id, ttl_seconds)| Gen::Command(Command::LeaseGrant { id, ttl_seconds })),
        1 => any::<u8>().prop_map(Gen::Revoke),
        1 => (any::<u8>(), 0i64..50_000).prop_map(|(s, ms)| Gen::Checkpoint(s, ms)),
    ]
}

#[derive(Debug, Clone)]
enum Step {
    /// Apply these commands in one batch; `gap` leaves log indexes unused (non-command entries);
    /// `replay` re-applies an old index first (it must be skipped).
    Apply {
        commands: Vec<Gen>,
        gap: bool,
        replay: bool,
    },
    Range(RangeRequest, u8),
    Events {
        range: KeyRange,
        start: u8,
        span: u8,
        limit: usize,
        with_prev_kv: bool,
    },
    Reopen,
    SnapshotRestore,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        10 => (prop::collection::vec(gen_command(), 1..5), prop::bool::weighted(0.1), prop::bool::weighted(0.1))
            .prop_map(|(commands, gap, replay)| Step::Apply { commands, gap, replay }),
        4 => (range_request(), any::<u8>()).prop_map(|(r, at)| Step::Range(r, at)),
        3 => (key_range(), any::<u8>(), any::<u8>(), 0usize..6, any::<bool>())
            .prop_map(|(range, start, span, limit, with_prev_kv)| Step::Events { range, start, span, limit, with_prev_kv }),
        1 => Just(Step::Reopen),
        1 => Just(Step::SnapshotRestore),
    ]
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

struct Run {
    dir: TempDir,
    store: Option<MvccStore>,
    model: Model,
    next_index: u64,
    generation: u32,
    options: MvccOptions,
}

impl Run {
    fn store(&self) -> &MvccStore {
        self.store.as_ref().unwrap()
    }

    fn concrete(&self, generated: &Gen) -> Command {
        match generated {
            Gen::Command(command) => command.clone(),
            Gen::Compact(selector) => Command::Compact {
                revision: *selector as i64 % (self.model.revision + 2),
            },
            Gen::Revoke(selector) => {
                let ids: Vec<LeaseId> = self.model.leases.keys().copied().collect();
                let pick = *selector as usize % (ids.len() + 1);
                Command::LeaseRevoke {
                    id: ids.get(pick).copied().unwrap_or(77),
                }
            }
            Gen::Checkpoint(selector, remaining) => {
                let ids: Vec<LeaseId> = self.model.leases.keys().copied().collect();
                let pick = *selector as usize % (ids.len() + 1);
                Command::LeaseCheckpoint {
                    checkpoints: vec![(ids.get(pick).copied().unwrap_or(78), *remaining), (79, 1)],
                }
            }
        }
    }

    fn past_revision(&self, selector: u8) -> Revision {
        // Mostly within [compacted, current], sometimes outside.
        let span = self.model.revision - self.model.compacted + 3;
        self.model.compacted - 1 + (selector as i64 % span)
    }

    fn step(&mut self, step: &Step) -> Result<(), TestCaseError> {
        match step {
            Step::Apply {
                commands,
                gap,
                replay,
            } => {
                let mut batch = vec![];
                if *replay && self.next_index > 1 {
                    batch.push((self.next_index / 2, Command::LeaseRevoke { id: 1 }));
                }
                if *gap {
                    self.next_index += 2;
                    self.store().mark_applied(self.next_index - 1).unwrap();
                    self.model.applied = self.next_index - 1;
                }
                for generated in commands {
                    // Relative commands see the model as of the batch start; fine for both sides.
                    batch.push((self.next_index, self.concrete(generated)));
                    self.next_index += 1;
                }
                let applied = self.store().apply_batch(&batch).unwrap();
                let expected: Vec<Applied> = batch
                    .iter()
                    .map(|(index, command)| self.model.apply(*index, command))
                    .collect();
                for (got, want) in applied.iter().zip(&expected) {
                    prop_assert_eq!(
                        got,
                        want,
                        "command at index {}: {:?}",
                        want.index,
                        batch.iter().find(|(i, _)| *i == want.index)
                    );
                }
                prop_assert_eq!(applied.len(), expected.len());
            }
            Step::Range(request, at) => {
                let mut request = request.clone();
                if *at % 2 == 1 {
                    request.revision = self.past_revision(*at / 2);
                }
                let got = self.store().range(&request).map_err(|e| match e {
                    MvccError::Request(refused) => refused,
                    other => panic!("store failed: {other}"),
                });
                prop_assert_eq!(got, self.model.read(&request), "range {:?}", request);
            }
            Step::Events {
                range,
                start,
                span,
                limit,
                with_prev_kv,
            } => {
                let start = self.past_revision(*start);
                let end = start + (*span as i64 % 6) - 1;
                let got = self
                    .store()
                    .events(range, start, end, *limit, *with_prev_kv);
                let want = self.model.events(range, start, end, *limit, *with_prev_kv);
                prop_assert_eq!(
                    got,
                    want,
                    "events {} {}..={} limit {} prev {}",
                    range,
                    start,
                    end,
                    limit,
                    with_prev_kv
                );
            }
            Step::Reopen => {
                self.store = None;
                self.store = Some(
                    MvccStore::open_with(
                        self.dir.file(&format!("state-{}", self.generation)),
                        self.options,
                    )
                    .unwrap(),
                );
                prop_assert_eq!(self.store().applied_index(), self.model.applied);
                self.model.compacted_at_zero = false;
            }
            Step::SnapshotRestore => {
                let snapshot = self.store().snapshot().unwrap();
                let hash_before = self.store().hash_kv(0).unwrap();
                self.generation += 1;
                let fresh = MvccStore::open_with(
                    self.dir.file(&format!("state-{}", self.generation)),
                    self.options,
                )
                .unwrap();
                fresh.apply(1, &super_put()).unwrap(); // something to be replaced
                fresh.restore(&snapshot).unwrap();
                self.store = Some(fresh);
                prop_assert_eq!(self.store().hash_kv(0).unwrap(), hash_before);
                prop_assert_eq!(self.store().snapshot().unwrap(), snapshot);
                self.model.compacted_at_zero = false;
            }
        }
        // The common state, after every step.
        let store = self.store();
        store.invariants();
        prop_assert_eq!(store.applied_index(), self.model.applied);
        prop_assert_eq!(store.revision(), self.model.revision);
        prop_assert_eq!(store.compacted_revision(), self.model.compacted);
        let leases: Vec<Lease> = self
            .model
            .leases
            .keys()
            .map(|id| self.model.lease(*id).unwrap())
            .collect();
        prop_assert_eq!(store.leases().unwrap(), leases);
        let all = RangeRequest {
            range: KeyRange::new("\0", "\0"),
            ..Default::default()
        };
        prop_assert_eq!(store.range(&all).unwrap(), self.model.read(&all).unwrap());
        Ok(())
    }
}

fn super_put() -> Command {
    Command::Put(PutRequest {
        key: "zz-replaced".into(),
        value: "v".into(),
        ..Default::default()
    })
}

proptest! {
    // MVCC_MODEL_CASES=5000 for a soak run.
    #![proptest_config(ProptestConfig { cases: model_cases(), max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn store_agrees_with_the_model(steps in prop::collection::vec(step(), 1..60)) {
        run_model(&steps, MvccOptions::default())?;
    }

    /// The same with segments of a few hundred bytes, GC at any garbage and a sweep of a few
    /// changes per write: segment GC and the sweep run during almost every step.
    #[test]
    fn store_with_tiny_segments_agrees_with_the_model(steps in prop::collection::vec(step(), 1..60)) {
        let options = MvccOptions {
            segment_bytes_min: 512,
            segment_bytes_max: 512,
            garbage_percent_max: 5,
            garbage_bytes_min: 0,
            sweep_changes_per_write: 3,
            non_durable_commits_max: 2,
        };
        run_model(&steps, options)?;
    }
}

fn model_cases() -> u32 {
    std::env::var("MVCC_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
}

fn run_model(steps: &[Step], options: MvccOptions) -> Result<(), TestCaseError> {
    let dir = TempDir::new("mvcc-model");
    let store = MvccStore::open_with(dir.file("state-0"), options).unwrap();
    let mut run = Run {
        dir,
        store: Some(store),
        model: Model::default(),
        next_index: 1,
        generation: 0,
        options,
    };
    for step in steps {
        run.step(step)?;
    }
    Ok(())
}

/// The model's own sanity on a hand-written etcd scenario, so a bug shared by both sides in the
/// basics would still show.
#[test]
fn model_follows_etcd_on_the_basics() {
    let mut model = Model::default();
    let put = |k: &str, v: &str| {
        Command::Put(PutRequest {
            key: Bytes::copy_from_slice(k.as_bytes()),
            value: Bytes::copy_from_slice(v.as_bytes()),
            ..Default::default()
        })
    };
    model.apply(1, &put("a", "1"));
    model.apply(2, &put("a", "2"));
    model.apply(
        3,
        &Command::DeleteRange(DeleteRangeRequest {
            range: KeyRange::single("a"),
            prev_kv: false,
        }),
    );
    model.apply(4, &put("a", "3"));
    let now = model
        .read(&RangeRequest {
            range: KeyRange::single("a"),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        (
            now.kvs[0].create_revision,
            now.kvs[0].mod_revision,
            now.kvs[0].version
        ),
        (5, 5, 1),
        "the first write is revision 2, as in etcd"
    );
    let past = model
        .read(&RangeRequest {
            range: KeyRange::single("a"),
            revision: 3,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        (
            past.kvs[0].create_revision,
            past.kvs[0].version,
            past.revision
        ),
        (2, 2, 5)
    );
}
