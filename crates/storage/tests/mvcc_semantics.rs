//! etcd v3 behaviour, scenario by scenario, with etcd's exact error strings (the server sends
//! them to etcd clients unchanged).

mod mvcc_common;

use ballot_storage::mvcc::types::*;
use ballot_storage::mvcc::{ApplyError, MvccError, MvccStore};
use bytes::Bytes;
use mvcc_common::*;

struct Log {
    store: MvccStore,
    index: u64,
    _dir: TempDir,
}

impl Log {
    fn new() -> Self {
        let dir = TempDir::new("mvcc-semantics");
        Log {
            store: MvccStore::open(dir.file("state")).unwrap(),
            index: 0,
            _dir: dir,
        }
    }
    fn apply(&mut self, command: Command) -> ballot_storage::mvcc::Applied {
        self.index += 1;
        let applied = self.store.apply(self.index, &command).unwrap();
        self.store.invariants();
        applied
    }
    fn error(&mut self, command: Command) -> String {
        let revision = self.store.revision();
        let applied = self.apply(command);
        assert_eq!(
            self.store.revision(),
            revision,
            "a refused command creates no revision"
        );
        assert_eq!(
            self.store.applied_index(),
            self.index,
            "a refused command still advances the applied index"
        );
        assert!(applied.events.is_empty());
        applied.result.unwrap_err().to_string()
    }
}

fn kv_numbers(store: &MvccStore, key: &str) -> (i64, i64, i64) {
    let kv = &store.range(&get(key)).unwrap().kvs[0];
    (kv.create_revision, kv.mod_revision, kv.version)
}

#[test]
fn errors_carry_etcds_messages_and_change_nothing() {
    let mut log = Log::new();
    log.apply(put("a", "1"));
    let ignore_value = PutRequest {
        key: "missing".into(),
        ignore_value: true,
        ..Default::default()
    };
    assert_eq!(
        log.error(Command::Put(ignore_value)),
        "etcdserver: key not found"
    );
    assert_eq!(
        log.error(put_with_lease("a", "2", 42)),
        "etcdserver: requested lease not found"
    );
    assert_eq!(
        log.error(Command::LeaseRevoke { id: 42 }),
        "etcdserver: requested lease not found"
    );
    log.apply(Command::LeaseGrant {
        id: 42,
        ttl_seconds: 5,
    });
    assert_eq!(
        log.error(Command::LeaseGrant {
            id: 42,
            ttl_seconds: 5
        }),
        "etcdserver: lease already exists"
    );
    assert_eq!(
        log.error(Command::LeaseGrant {
            id: 43,
            ttl_seconds: 9_000_000_001
        }),
        "etcdserver: too large lease TTL"
    );
    let duplicate = TxnRequest {
        success: vec![
            RequestOp::Put(PutRequest {
                key: "k".into(),
                ..Default::default()
            });
            2
        ],
        ..Default::default()
    };
    assert_eq!(
        log.error(Command::Txn(duplicate)),
        "etcdserver: duplicate key given in txn request"
    );
    assert_eq!(
        log.error(Command::Compact { revision: 5 }),
        "mvcc: required revision is a future revision"
    );
    log.apply(Command::Compact { revision: 1 });
    assert_eq!(
        log.error(Command::Compact { revision: 1 }),
        "mvcc: required revision has been compacted"
    );
    assert_eq!(log.error(put("", "x")), "etcdserver: key is not provided");
    let range_in_txn = RangeRequest {
        range: KeyRange::single("a"),
        revision: 99,
        ..Default::default()
    };
    let txn = TxnRequest {
        success: vec![RequestOp::Range(range_in_txn)],
        ..Default::default()
    };
    assert_eq!(
        log.error(Command::Txn(txn)),
        "mvcc: required revision is a future revision"
    );
    // Reads fail the same way.
    let old = RangeRequest {
        range: KeyRange::single("a"),
        revision: 1,
        ..Default::default()
    };
    assert!(
        log.store.range(&old).is_ok(),
        "reading at the compacted revision itself is allowed"
    );
    let err = log
        .store
        .range(&RangeRequest {
            revision: 3,
            ..old.clone()
        })
        .unwrap_err();
    assert!(
        matches!(
            err,
            MvccError::Request(ApplyError::FutureRevision {
                current_revision: 2
            })
        ),
        "{err}"
    );
    assert_eq!(kv_numbers(&log.store, "a"), (2, 2, 1));
}

#[test]
fn revisions_versions_and_recreation() {
    let mut log = Log::new();
    log.apply(put("a", "1"));
    log.apply(put("a", "2"));
    assert_eq!(kv_numbers(&log.store, "a"), (2, 3, 2));
    let deleted = log.apply(delete("a", ""));
    assert_eq!(deleted.events[0].kind, EventKind::Delete);
    assert_eq!(
        deleted.events[0].kv,
        KeyValue {
            key: "a".into(),
            mod_revision: 4,
            ..Default::default()
        }
    );
    assert_eq!(deleted.events[0].prev_kv.as_ref().unwrap().value, "2");
    log.apply(put("a", "3"));
    assert_eq!(
        kv_numbers(&log.store, "a"),
        (5, 5, 1),
        "a put after a delete creates the key again"
    );
    // A delete that finds nothing creates no revision.
    let nothing = log.apply(delete("zzz", ""));
    assert_eq!(
        nothing.result,
        Ok(CommandResult::DeleteRange(DeleteRangeResponse {
            revision: 5,
            deleted: 0,
            prev_kvs: vec![]
        }))
    );
    assert_eq!(log.store.revision(), 5);
}

#[test]
fn a_transaction_writes_at_one_revision_and_compares_before_writing() {
    let mut log = Log::new();
    log.apply(put("a", "1"));
    log.apply(put("b", "1"));
    let put_op = |k: &str, v: &str| {
        RequestOp::Put(PutRequest {
            key: Bytes::copy_from_slice(k.as_bytes()),
            value: Bytes::copy_from_slice(v.as_bytes()),
            ..Default::default()
        })
    };
    let txn = TxnRequest {
        compare: vec![Compare {
            range: KeyRange::single("a"),
            target: CompareTarget::Value("1".into()),
            result: CompareResult::Equal,
        }],
        success: vec![
            put_op("a", "2"),
            RequestOp::DeleteRange(DeleteRangeRequest {
                range: KeyRange::single("b"),
                prev_kv: false,
            }),
            // Nested compares see the state before the transaction: "a" is still "1" here.
            RequestOp::Txn(TxnRequest {
                compare: vec![Compare {
                    range: KeyRange::single("a"),
                    target: CompareTarget::Value("1".into()),
                    result: CompareResult::Equal,
                }],
                success: vec![put_op("c", "nested")],
                failure: vec![],
            }),
            // Ranges see the transaction's own writes.
            RequestOp::Range(RangeRequest {
                range: everything(),
                ..Default::default()
            }),
        ],
        failure: vec![],
    };
    let applied = log.apply(Command::Txn(txn));
    let Ok(CommandResult::Txn(response)) = &applied.result else {
        panic!("{:?}", applied.result)
    };
    assert!(response.succeeded);
    assert_eq!(response.revision, 4);
    assert_eq!(
        applied
            .events
            .iter()
            .map(|e| (e.kind, e.kv.mod_revision))
            .collect::<Vec<_>>(),
        vec![
            (EventKind::Put, 4),
            (EventKind::Delete, 4),
            (EventKind::Put, 4)
        ]
    );
    let ResponseOp::Range(seen) = &response.responses[3] else {
        panic!()
    };
    let keys: Vec<&[u8]> = seen.kvs.iter().map(|kv| &kv.key[..]).collect();
    assert_eq!(keys, vec![&b"a"[..], b"c"]);
    assert_eq!(log.store.revision(), 4);
    // A value compare on a missing key is false (etcd), a version compare sees version 0.
    let missing_value = Compare {
        range: KeyRange::single("nope"),
        target: CompareTarget::Value("".into()),
        result: CompareResult::Equal,
    };
    let missing_version = Compare {
        range: KeyRange::single("nope"),
        target: CompareTarget::Version(0),
        result: CompareResult::Equal,
    };
    for (compare, expected) in [(missing_value, false), (missing_version, true)] {
        let applied = log.apply(Command::Txn(TxnRequest {
            compare: vec![compare],
            ..Default::default()
        }));
        let Ok(CommandResult::Txn(response)) = applied.result else {
            panic!()
        };
        assert_eq!(response.succeeded, expected);
        assert_eq!(
            response.revision, 4,
            "a read-only transaction creates no revision"
        );
    }
}

#[test]
fn leases_attach_move_checkpoint_and_revoke_at_one_revision() {
    let mut log = Log::new();
    log.index = 99;
    let granted = log.apply(Command::LeaseGrant {
        id: 0,
        ttl_seconds: 10,
    });
    assert_eq!(
        granted.result,
        Ok(CommandResult::LeaseGrant {
            id: 100,
            ttl_seconds: 10
        }),
        "id 0: the grant's log index"
    );
    log.apply(Command::LeaseGrant {
        id: 102,
        ttl_seconds: 5,
    });
    log.index = 101;
    let next = log.apply(Command::LeaseGrant {
        id: 0,
        ttl_seconds: 1,
    });
    assert_eq!(
        next.result,
        Ok(CommandResult::LeaseGrant {
            id: 103,
            ttl_seconds: 1
        }),
        "the next free id above a taken one"
    );
    log.apply(put_with_lease("x", "1", 100));
    log.apply(put_with_lease("y", "1", 100));
    log.apply(put_with_lease("z", "1", 102));
    log.apply(put_with_lease("z", "2", 100)); // moves z
    log.apply(put("y", "2")); // detaches y
    let keep = PutRequest {
        key: "x".into(),
        value: "3".into(),
        ignore_lease: true,
        ..Default::default()
    };
    log.apply(Command::Put(keep));
    assert_eq!(
        log.store.lease(100).unwrap().unwrap().keys,
        vec![Bytes::from("x"), Bytes::from("z")]
    );
    assert!(log.store.lease(102).unwrap().unwrap().keys.is_empty());
    log.apply(Command::LeaseCheckpoint {
        checkpoints: vec![(100, 4_321), (555, 1)],
    });
    assert_eq!(
        log.store.lease(100).unwrap().unwrap().remaining_ttl_ms,
        4_321
    );
    let revision = log.store.revision();
    let revoked = log.apply(Command::LeaseRevoke { id: 100 });
    assert_eq!(
        revoked.result,
        Ok(CommandResult::LeaseRevoke {
            revision: revision + 1
        })
    );
    assert_eq!(revoked.events.len(), 2);
    assert!(revoked
        .events
        .iter()
        .all(|e| e.kind == EventKind::Delete && e.kv.mod_revision == revision + 1));
    assert_eq!(log.store.lease(100).unwrap(), None);
    assert_eq!(
        log.store
            .range(&RangeRequest {
                range: everything(),
                ..Default::default()
            })
            .unwrap()
            .count,
        1
    );
    assert_eq!(
        log.store
            .leases()
            .unwrap()
            .iter()
            .map(|l| l.id)
            .collect::<Vec<_>>(),
        vec![102, 103]
    );
}

#[test]
fn compaction_keeps_the_newest_version_and_history_replays() {
    let mut log = Log::new();
    for i in 1..=4 {
        log.apply(put("a", &i.to_string())); // revisions 2..=5
    }
    log.apply(put("b", "1")); // 6
    log.apply(delete("b", "")); // 7
    log.apply(put("c", "1")); // 8
    log.apply(Command::Compact { revision: 7 });
    let at = |revision| RangeRequest {
        range: everything(),
        revision,
        ..Default::default()
    };
    let at_compacted = log.store.range(&at(7)).unwrap();
    assert_eq!(
        at_compacted
            .kvs
            .iter()
            .map(|kv| (&kv.key[..], kv.mod_revision))
            .collect::<Vec<_>>(),
        vec![(&b"a"[..], 5)]
    );
    assert!(matches!(
        log.store.range(&at(6)),
        Err(MvccError::Request(ApplyError::Compacted {
            compacted_revision: 7
        }))
    ));
    // A replay from the compacted revision does not see the delete at it: etcd's compaction
    // drops a tombstone at the compacted revision with its generation.
    let kinds = |events: Vec<Event>| {
        events
            .iter()
            .map(|e| (e.kind, e.kv.mod_revision))
            .collect::<Vec<_>>()
    };
    let events = log.store.events(&everything(), 7, 8, 0, true).unwrap();
    assert_eq!(kinds(events), vec![(EventKind::Put, 8)]);
    assert_eq!(
        log.store.events(&everything(), 6, 8, 0, false),
        Err(HistoryError::Compacted {
            compact_revision: 7
        })
    );
    assert_eq!(
        log.store.events(&everything(), 7, 9, 0, false),
        Err(HistoryError::FutureRevision {
            current_revision: 8
        })
    );
    // A put at the compacted revision is its key's newest version there, and is replayed.
    log.apply(Command::Compact { revision: 8 });
    let events = log.store.events(&everything(), 8, 8, 0, true).unwrap();
    assert_eq!(kinds(events), vec![(EventKind::Put, 8)]);
}

#[test]
fn range_options_follow_etcd() {
    let mut log = Log::new();
    for (key, value) in [("p/a", "3"), ("p/b", "1"), ("p/c", "2"), ("q", "0")] {
        log.apply(put(key, value));
    }
    log.apply(put("p/b", "9"));
    let base = RangeRequest {
        range: KeyRange::prefix("p/"),
        ..Default::default()
    };
    let keys = |r: RangeResponse| {
        r.kvs
            .iter()
            .map(|kv| String::from_utf8(kv.key.to_vec()).unwrap())
            .collect::<Vec<_>>()
    };
    let limited = log
        .store
        .range(&RangeRequest {
            limit: 2,
            ..base.clone()
        })
        .unwrap();
    assert_eq!((limited.count, limited.more), (3, true));
    assert_eq!(keys(limited), ["p/a", "p/b"]);
    let by_value = log
        .store
        .range(&RangeRequest {
            sort_target: SortTarget::Value,
            sort_order: SortOrder::Descend,
            ..base.clone()
        })
        .unwrap();
    assert_eq!(keys(by_value), ["p/b", "p/a", "p/c"]);
    let by_mod = log
        .store
        .range(&RangeRequest {
            sort_target: SortTarget::Mod,
            ..base.clone()
        })
        .unwrap();
    assert_eq!(
        keys(by_mod),
        ["p/a", "p/c", "p/b"],
        "another target with no order sorts ascending"
    );
    let filtered = log
        .store
        .range(&RangeRequest {
            min_mod_revision: 4,
            ..base.clone()
        })
        .unwrap();
    assert_eq!(
        (filtered.count, keys(filtered)),
        (3, vec!["p/b".to_owned(), "p/c".to_owned()]),
        "count is before the filters"
    );
    let count_only = log
        .store
        .range(&RangeRequest {
            count_only: true,
            ..base.clone()
        })
        .unwrap();
    assert_eq!((count_only.count, count_only.kvs.len()), (3, 0));
    let keys_only = log
        .store
        .range(&RangeRequest {
            keys_only: true,
            ..base.clone()
        })
        .unwrap();
    assert!(keys_only
        .kvs
        .iter()
        .all(|kv| kv.value.is_empty() && kv.version > 0));
    let from_key = log
        .store
        .range(&RangeRequest {
            range: KeyRange::new("p/c", "\0"),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(keys(from_key), ["p/c", "q"]);
    let past = log
        .store
        .range(&RangeRequest {
            revision: 3,
            ..base
        })
        .unwrap();
    assert_eq!(
        (keys(past.clone()), past.revision),
        (vec!["p/a".to_owned(), "p/b".to_owned()], 6)
    );
}

#[test]
fn a_first_compaction_at_zero_succeeds_and_changes_nothing_as_in_etcd() {
    // etcd starts with compacted revision -1: compacting at 0 once succeeds, then 0 is compacted.
    let mut log = Log::new();
    log.apply(put("a", "1"));
    assert_eq!(
        log.error(Command::Compact { revision: -1 }),
        "mvcc: required revision has been compacted"
    );
    use ballot_storage::mvcc::types::History;
    assert_eq!(
        log.store.compaction_floor(),
        -1,
        "etcd's compacted revision, never compacted"
    );
    let first = log.apply(Command::Compact { revision: 0 });
    assert_eq!(first.result, Ok(CommandResult::Compact { revision: 0 }));
    assert_eq!(log.store.compaction_floor(), 0);
    assert_eq!(log.store.compacted_revision(), 0);
    assert_eq!(log.store.revision(), 2, "a compaction creates no revision");
    assert_eq!(
        log.error(Command::Compact { revision: 0 }),
        "mvcc: required revision has been compacted"
    );
    // Reads at every revision are still served.
    let at_one = RangeRequest {
        range: KeyRange::single("a"),
        revision: 1,
        ..Default::default()
    };
    assert!(log.store.range(&at_one).unwrap().kvs.is_empty());
    log.apply(Command::Compact { revision: 2 });
    assert_eq!(log.store.compaction_floor(), 2);
    assert_eq!(
        log.error(Command::Compact { revision: 0 }),
        "mvcc: required revision has been compacted"
    );
}

#[test]
fn a_negative_revision_is_compacted_inside_a_txn_and_current_outside_as_in_etcd() {
    let mut log = Log::new();
    log.apply(put("a", "1"));
    let read_at = |revision| RangeRequest {
        range: KeyRange::single("a"),
        revision,
        ..Default::default()
    };
    let txn_reading_at = |revision| {
        Command::Txn(TxnRequest {
            success: vec![RequestOp::Range(read_at(revision))],
            ..Default::default()
        })
    };
    // A plain range reads the current revision.
    assert_eq!(log.store.range(&read_at(-5)).unwrap().kvs.len(), 1);
    // Inside a transaction etcd compares with its compacted revision, -1 before any compaction.
    assert!(log.apply(txn_reading_at(-1)).result.is_ok());
    assert_eq!(
        log.error(txn_reading_at(-2)),
        "mvcc: required revision has been compacted"
    );
    log.apply(Command::Compact { revision: 2 });
    assert_eq!(
        log.error(txn_reading_at(-1)),
        "mvcc: required revision has been compacted"
    );
    assert_eq!(
        log.error(txn_reading_at(1)),
        "mvcc: required revision has been compacted"
    );
    assert!(log.apply(txn_reading_at(2)).result.is_ok());
}

#[test]
fn a_put_checks_its_lease_before_its_key_and_a_txn_the_other_way_as_in_etcd() {
    let mut log = Log::new();
    let put = PutRequest {
        key: "missing".into(),
        ignore_value: true,
        lease: 99,
        ..Default::default()
    };
    assert_eq!(
        log.error(Command::Put(put.clone())),
        "etcdserver: requested lease not found"
    );
    let txn = TxnRequest {
        success: vec![RequestOp::Put(put)],
        ..Default::default()
    };
    assert_eq!(log.error(Command::Txn(txn)), "etcdserver: key not found");
}

#[test]
fn a_txn_may_delete_to_the_end_and_put_back_and_the_put_creates_the_key_as_in_etcd() {
    use ballot_storage::mvcc::types::History;
    let mut log = Log::new();
    log.apply(put("b", "old"));
    // etcd's interval for a delete to the end of the key space is empty: no duplicate key.
    let txn = TxnRequest {
        success: vec![
            RequestOp::DeleteRange(DeleteRangeRequest {
                range: KeyRange::new("a", "\0"),
                prev_kv: true,
            }),
            RequestOp::Put(PutRequest {
                key: "b".into(),
                value: "new".into(),
                ..Default::default()
            }),
        ],
        ..Default::default()
    };
    let applied = log.apply(Command::Txn(txn));
    assert!(applied.result.is_ok(), "{:?}", applied.result);
    assert_eq!(kv_numbers(&log.store, "b"), (3, 3, 1), "a new generation");
    // The delete's event has the old value; the put creates the key, so it has none.
    let prev = |events: &[Event]| -> Vec<Option<Bytes>> {
        events
            .iter()
            .map(|e| e.prev_kv.as_ref().map(|kv| kv.value.clone()))
            .collect()
    };
    assert_eq!(prev(&applied.events), [Some(Bytes::from("old")), None]);
    let replayed = log
        .store
        .events(&KeyRange::single("b"), 3, 3, 10, true)
        .unwrap();
    assert_eq!(prev(&replayed), [Some(Bytes::from("old")), None]);
}

#[test]
fn another_target_without_an_order_sorts_only_the_page_as_in_etcd() {
    // With a limit and no order etcd reads `limit + 1` keys in key order and sorts only those.
    let mut log = Log::new();
    for key in ["p/d", "p/a", "p/b", "p/c"] {
        log.apply(put(key, "v")); // mod revisions 2, 3, 4, 5
    }
    let read = |log: &Log, limit, sort_order| {
        let response = log
            .store
            .range(&RangeRequest {
                range: KeyRange::prefix("p/"),
                sort_target: SortTarget::Mod,
                sort_order,
                limit,
                ..Default::default()
            })
            .unwrap();
        let keys: Vec<String> = response
            .kvs
            .iter()
            .map(|kv| String::from_utf8(kv.key.to_vec()).unwrap())
            .collect();
        (keys, response.more, response.count)
    };
    assert_eq!(
        read(&log, 1, SortOrder::None),
        (vec!["p/a".to_owned()], true, 4),
        "p/a and p/b read, p/d (the lowest mod revision) never"
    );
    assert_eq!(
        read(&log, 1, SortOrder::Ascend),
        (vec!["p/d".to_owned()], true, 4),
        "an order asked for sorts every key"
    );
    assert_eq!(
        read(&log, 0, SortOrder::None).0,
        ["p/d", "p/a", "p/b", "p/c"],
        "without a limit, every key"
    );
}
