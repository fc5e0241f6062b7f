//! Watch lifecycle and matching: create, cancel, close; keys, ranges and prefixes; filters;
//! prev_kv; one revision's events together; the errors that name bad requests.

mod watch_support;

use ballot_storage::mvcc::types::{EventKind, KeyRange};
use ballot_storage::watch::{WatchCreate, WatchError, WatchLimits};
use watch_support::*;

#[test]
fn create_acks_then_delivers_then_cancel_ends_the_watch() {
    let mut h = Harness::new(WatchLimits::default());
    let stream = h.hub.open_stream().unwrap();
    h.put("a", "before");
    let id = h.create(stream, watch(KeyRange::single("a")));
    assert_eq!(id, 0, "etcd assigns watch ids from 0");

    let responses = h.drain(stream);
    assert_eq!(responses.len(), 1);
    assert!(responses[0].created && responses[0].events.is_empty());
    assert_eq!(responses[0].header_revision, 1);

    h.put("a", "1");
    let responses = h.drain(stream);
    assert_eq!(responses.len(), 1);
    assert_eq!(keys_of(&responses[0].events), ["a"]);
    assert_eq!(&responses[0].events[0].kv.value[..], b"1");
    assert_eq!(responses[0].header_revision, 2);

    h.hub.cancel(stream, id).unwrap();
    h.put("a", "2");
    let responses = h.drain(stream);
    assert_eq!(responses.len(), 1);
    assert!(
        responses[0].canceled
            && responses[0].events.is_empty()
            && responses[0].compact_revision == 0
    );
    assert_eq!(
        h.hub.cancel(stream, id),
        Err(WatchError::UnknownWatch {
            stream,
            watch_id: id
        })
    );
}

#[test]
fn watch_ids_are_assigned_from_zero_and_chosen_ids_must_be_free() {
    let mut h = Harness::new(WatchLimits::default());
    let stream = h.hub.open_stream().unwrap();
    let chosen = h.create(
        stream,
        WatchCreate {
            watch_id: 1,
            ..watch(KeyRange::single("a"))
        },
    );
    assert_eq!(chosen, 1);
    assert_eq!(h.create(stream, watch(KeyRange::single("a"))), 0);
    assert_eq!(
        h.create(stream, watch(KeyRange::single("a"))),
        2,
        "the used id 1 is skipped"
    );
    let duplicate = h.hub.create_watch(
        stream,
        WatchCreate {
            watch_id: 2,
            ..watch(KeyRange::single("a"))
        },
        &h.history,
    );
    assert_eq!(
        duplicate,
        Err(WatchError::DuplicateWatchId {
            stream,
            watch_id: 2
        })
    );
    // etcd's message exactly: clients match on it.
    assert_eq!(
        duplicate.unwrap_err().to_string(),
        "mvcc: duplicate watch ID provided on the WatchStream"
    );
    let negative = h.hub.create_watch(
        stream,
        WatchCreate {
            watch_id: -3,
            ..watch(KeyRange::single("a"))
        },
        &h.history,
    );
    // etcd takes any id but 0 as the client's choice, negative ones included.
    assert_eq!(negative, Ok(-3));
    // A canceled id may be chosen again.
    h.hub.cancel(stream, 2).unwrap();
    assert_eq!(
        h.create(
            stream,
            WatchCreate {
                watch_id: 2,
                ..watch(KeyRange::single("a"))
            }
        ),
        2
    );
}

#[test]
fn keys_ranges_and_prefixes_match_exactly_their_keys() {
    let mut h = Harness::new(WatchLimits::default());
    let stream = h.hub.open_stream().unwrap();
    let key = h.create(stream, watch(KeyRange::single("a")));
    let prefix = h.create(stream, watch(KeyRange::prefix("a")));
    let range = h.create(stream, watch(KeyRange::new("b", "d")));
    let from_c = h.create(stream, watch(KeyRange::new("c", "\0")));
    let everything = h.create(stream, watch(KeyRange::new("\0", "\0")));
    let empty_prefix = h.create(stream, watch(KeyRange::prefix("")));
    for key in ["a", "ab", "b", "c", "cz", "d", "z"] {
        h.put(key, "v");
    }
    let responses = h.drain(stream);
    let seen = |id| keys_of(&events_of(&responses, id));
    assert_eq!(seen(key), ["a"]);
    assert_eq!(seen(prefix), ["a", "ab"]);
    assert_eq!(seen(range), ["b", "c", "cz"]);
    assert_eq!(seen(from_c), ["c", "cz", "d", "z"]);
    assert_eq!(seen(everything), ["a", "ab", "b", "c", "cz", "d", "z"]);
    assert_eq!(seen(empty_prefix), ["a", "ab", "b", "c", "cz", "d", "z"]);
}

#[test]
fn filters_drop_puts_or_deletes() {
    let mut h = Harness::new(WatchLimits::default());
    let stream = h.hub.open_stream().unwrap();
    let no_put = h.create(
        stream,
        WatchCreate {
            filter_no_put: true,
            ..watch(KeyRange::prefix("k"))
        },
    );
    let no_delete = h.create(
        stream,
        WatchCreate {
            filter_no_delete: true,
            ..watch(KeyRange::prefix("k"))
        },
    );
    h.put("k1", "v");
    h.apply(&[Op::Delete("k1")]);
    h.put("k2", "v");
    let responses = h.drain(stream);
    let kinds = |id| {
        events_of(&responses, id)
            .iter()
            .map(|e| e.kind)
            .collect::<Vec<_>>()
    };
    assert_eq!(kinds(no_put), [EventKind::Delete]);
    assert_eq!(kinds(no_delete), [EventKind::Put, EventKind::Put]);
    assert_eq!(
        responses
            .iter()
            .filter(|r| r.watch_id == no_put && !r.created)
            .count(),
        1,
        "a filtered revision sends nothing"
    );
}

#[test]
fn prev_kv_only_for_watchers_that_ask() {
    let mut h = Harness::new(WatchLimits::default());
    let stream = h.hub.open_stream().unwrap();
    let with = h.create(
        stream,
        WatchCreate {
            prev_kv: true,
            ..watch(KeyRange::single("a"))
        },
    );
    let without = h.create(stream, watch(KeyRange::single("a")));
    h.put("a", "1");
    h.put("a", "2");
    h.apply(&[Op::Delete("a")]);
    let responses = h.drain(stream);
    let with_events = events_of(&responses, with);
    let prevs: Vec<_> = with_events
        .iter()
        .map(|e| e.prev_kv.as_ref().map(|kv| kv.value.clone()))
        .collect();
    assert_eq!(prevs, [None, Some("1".into()), Some("2".into())]);
    assert!(events_of(&responses, without)
        .iter()
        .all(|e| e.prev_kv.is_none()));
    assert_eq!(events_of(&responses, without).len(), 3);
}

#[test]
fn a_revision_arrives_whole_in_one_response_in_apply_order() {
    let mut h = Harness::new(WatchLimits::default());
    let stream = h.hub.open_stream().unwrap();
    let id = h.create(stream, watch(KeyRange::prefix("")));
    h.drain(stream);
    h.apply(&[put("c", "1"), put("a", "1"), put("b", "1")]);
    let responses = h.drain(stream);
    assert_eq!(responses.len(), 1);
    assert_eq!(keys_of(&responses[0].events), ["c", "a", "b"]);
    assert_eq!(revisions_of(&events_of(&responses, id)), [1, 1, 1]);
}

#[test]
fn a_future_start_revision_waits_for_it() {
    let mut h = Harness::new(WatchLimits::default());
    let stream = h.hub.open_stream().unwrap();
    let id = h.create(
        stream,
        WatchCreate {
            start_revision: 3,
            ..watch(KeyRange::single("a"))
        },
    );
    for n in 0..4 {
        h.put("a", n.to_string());
    }
    assert_eq!(revisions_of(&events_of(&h.drain(stream), id)), [3, 4]);
}

#[test]
fn bad_requests_get_errors_that_name_the_problem() {
    let mut h = Harness::new(WatchLimits::default());
    let stream = h.hub.open_stream().unwrap();
    let create = |h: &mut Harness, create| h.hub.create_watch(stream, create, &h.history);
    let empty = create(&mut h, watch(KeyRange::new("b", "a"))).unwrap_err();
    assert!(matches!(empty, WatchError::InvalidRange { .. }));
    assert_eq!(empty.to_string(), "mvcc: watcher range is empty");
    assert!(matches!(
        create(&mut h, watch(KeyRange::new("a", "a"))),
        Err(WatchError::InvalidRange { .. })
    ));
    let no_key = create(&mut h, watch(KeyRange::single(""))).unwrap_err();
    assert!(no_key.to_string().contains("key is empty"), "{no_key}");

    h.hub.close_stream(stream).unwrap();
    let gone = h
        .hub
        .create_watch(stream, watch(KeyRange::single("a")), &h.history)
        .unwrap_err();
    assert_eq!(gone, WatchError::UnknownStream(stream));
    assert!(gone.to_string().contains("does not exist"));
    assert!(h.hub.poll(stream, &h.history, 1).is_err());
    assert!(h.hub.cancel(stream, 0).is_err());
    assert!(h.hub.close_stream(stream).is_err());
    assert!(h.hub.request_progress(stream).is_err());
}

#[test]
fn closing_a_stream_unindexes_its_watches() {
    let mut h = Harness::new(WatchLimits::default());
    let kept = h.hub.open_stream().unwrap();
    let closed = h.hub.open_stream().unwrap();
    let id = h.create(kept, watch(KeyRange::prefix("")));
    for range in [
        KeyRange::single("a"),
        KeyRange::prefix("a"),
        KeyRange::new("a", "c"),
    ] {
        h.create(closed, watch(range));
    }
    h.hub.close_stream(closed).unwrap();
    h.hub.check_invariants();
    h.put("a", "v");
    assert_eq!(keys_of(&events_of(&h.drain(kept), id)), ["a"]);
    assert_eq!(h.hub.stream_count(), 1);
}

#[test]
fn only_streams_with_something_new_are_woken() {
    let mut h = Harness::new(WatchLimits::default());
    let a = h.hub.open_stream().unwrap();
    let b = h.hub.open_stream().unwrap();
    h.create(a, watch(KeyRange::single("a")));
    h.create(b, watch(KeyRange::single("b")));
    assert_eq!(
        h.hub.take_woken(),
        [a, b],
        "creation acks wake their streams"
    );
    h.drain(a);
    h.drain(b);
    assert!(!h.hub.has_pending(a).unwrap());
    h.put("a", "1");
    h.put("z", "1");
    assert_eq!(h.hub.take_woken(), [a]);
    assert!(h.hub.take_woken().is_empty(), "taken once");
    assert!(h.hub.has_pending(a).unwrap() && !h.hub.has_pending(b).unwrap());
}

#[test]
fn negative_start_revisions_are_answered_as_etcd_answers_them() {
    // etcd's compacted revision is -1 before any compaction: -1 then means "from the next
    // revision", anything lower is below it and canceled as compacted.
    let mut h = Harness::new(WatchLimits::default());
    let stream = h.hub.open_stream().unwrap();
    h.put("a", "1");
    let from_next = h.create(
        stream,
        WatchCreate {
            start_revision: -1,
            ..watch(KeyRange::single("a"))
        },
    );
    h.put("a", "2");
    let responses = h.drain(stream);
    assert_eq!(revisions_of(&events_of(&responses, from_next)), [2]);
    let below = h.create(
        stream,
        WatchCreate {
            start_revision: -2,
            ..watch(KeyRange::single("a"))
        },
    );
    let canceled = h.drain(stream);
    assert!(
        canceled
            .iter()
            .any(|r| r.watch_id == below && r.canceled && r.compact_revision == -1),
        "{canceled:?}"
    );
    // After a compaction every negative start is below it.
    h.history.compact(2);
    let after = h.create(
        stream,
        WatchCreate {
            start_revision: -1,
            ..watch(KeyRange::single("a"))
        },
    );
    let canceled = h.drain(stream);
    assert!(
        canceled
            .iter()
            .any(|r| r.watch_id == after && r.canceled && r.compact_revision == 2),
        "{canceled:?}"
    );
    h.hub.check_invariants();
}
