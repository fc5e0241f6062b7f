//! Replaying history: past start revisions, compaction, slow watchers that overflow their buffer
//! and catch up, fairness between watches of one stream, snapshots, and history errors.

mod watch_support;

use ballot_storage::mvcc::types::{HistoryError, KeyRange};
use ballot_storage::watch::{WatchCreate, WatchError};
use watch_support::*;

#[test]
fn a_past_start_replays_history_then_follows_live_without_gap_or_duplicate() {
    let mut h = Harness::new(small_limits());
    let stream = h.hub.open_stream().unwrap();
    for n in 1..=10 {
        h.put("a", n.to_string());
    }
    let create = WatchCreate {
        start_revision: 4,
        prev_kv: true,
        ..watch(KeyRange::single("a"))
    };
    let id = h.create(stream, create.clone());
    assert!(!h.hub.is_synced(stream, id).unwrap());
    // Writes keep arriving while the watcher replays.
    let mut responses = h.poll(stream, 200);
    h.put("a", "11");
    responses.extend(h.poll(stream, 200));
    h.put("a", "12");
    responses.extend(h.drain(stream));
    assert!(h.hub.is_synced(stream, id).unwrap());
    h.put("a", "13");
    responses.extend(h.drain(stream));
    assert!(responses[0].created);
    assert_eq!(events_of(&responses, id), h.history.expected(&create, 4));
    assert_eq!(
        revisions_of(&events_of(&responses, id)),
        (4..=13).collect::<Vec<_>>()
    );
}

#[test]
fn a_compacted_start_is_acked_then_canceled_with_the_compact_revision() {
    let mut h = Harness::new(small_limits());
    let stream = h.hub.open_stream().unwrap();
    for n in 1..=6 {
        h.put("a", n.to_string());
    }
    h.history.compact(4);
    let id = h.create(
        stream,
        WatchCreate {
            start_revision: 3,
            ..watch(KeyRange::single("a"))
        },
    );
    let responses = h.drain(stream);
    assert_eq!(responses.len(), 2);
    assert!(responses[0].created && responses[0].watch_id == id);
    assert!(responses[1].canceled && responses[1].watch_id == id);
    // As etcd 3.4 sends it: the compacted revision, no reason, a header at revision 0.
    assert_eq!(responses[1].compact_revision, 4);
    assert_eq!(responses[1].cancel_reason, "");
    assert_eq!(responses[1].header_revision, 0);
    assert_eq!(h.hub.watch_count(stream).unwrap(), 0);

    // The compaction revision itself is still readable.
    let at = h.create(
        stream,
        WatchCreate {
            start_revision: 4,
            ..watch(KeyRange::single("a"))
        },
    );
    assert_eq!(revisions_of(&events_of(&h.drain(stream), at)), [4, 5, 6]);
}

#[test]
fn a_compacted_watch_keeps_its_id_until_the_client_cancels_it_as_in_etcd() {
    let mut h = Harness::new(small_limits());
    let stream = h.hub.open_stream().unwrap();
    for n in 1..=6 {
        h.put("a", n.to_string());
    }
    h.history.compact(4);
    let compacted = WatchCreate {
        start_revision: 2,
        watch_id: 1,
        ..watch(KeyRange::single("a"))
    };
    let id = h.create(stream, compacted);
    assert!(h.drain(stream).iter().any(|r| r.compact_revision == 4));
    // The id is still taken: an automatic id skips it, a chosen one is a duplicate.
    assert_eq!(h.create(stream, watch(KeyRange::single("a"))), 0);
    assert_eq!(h.create(stream, watch(KeyRange::single("a"))), 2);
    let duplicate = WatchCreate {
        watch_id: id,
        ..watch(KeyRange::single("a"))
    };
    assert_eq!(
        h.hub.create_watch(stream, duplicate.clone(), &h.history),
        Err(WatchError::DuplicateWatchId {
            stream,
            watch_id: id
        })
    );
    // The client's cancel is acknowledged and frees the id.
    h.hub.cancel(stream, id).unwrap();
    let responses = h.drain(stream);
    assert!(
        responses
            .iter()
            .any(|r| r.watch_id == id && r.canceled && r.compact_revision == 0),
        "{responses:?}"
    );
    assert!(
        h.hub.cancel(stream, id).is_err(),
        "a second cancel is unknown"
    );
    assert_eq!(h.hub.create_watch(stream, duplicate, &h.history), Ok(id));
    h.hub.check_invariants();
}

#[test]
fn a_slow_watcher_compacted_while_behind_is_canceled_with_the_compact_revision() {
    let mut h = Harness::new(small_limits());
    let stream = h.hub.open_stream().unwrap();
    let id = h.create(stream, watch(KeyRange::single("a")));
    for n in 0..15 {
        h.put("a", n.to_string());
    }
    assert!(
        !h.hub.is_synced(stream, id).unwrap(),
        "15 events overflow a buffer of 10"
    );
    h.history.compact(12);
    let responses = h.drain(stream);
    let last = responses.last().unwrap();
    assert!(last.canceled && last.compact_revision == 12, "{last:?}");
    assert_eq!(h.hub.watch_count(stream).unwrap(), 0);
}

#[test]
fn a_slow_watcher_catches_up_from_history_with_every_event_exactly_once() {
    let limits = small_limits();
    let mut h = Harness::new(limits.clone());
    let stream = h.hub.open_stream().unwrap();
    let create = watch(KeyRange::prefix("k"));
    let id = h.create(stream, create.clone());
    let keys = ["k1", "k2", "k3", "other"];
    for n in 0..10 * limits.events_buffered_max {
        h.put(keys[n % keys.len()], n.to_string());
        let (buffered_events, _) = h.hub.buffered(stream, id).unwrap();
        assert!(
            buffered_events <= limits.events_buffered_max,
            "the buffer stays bounded while unpolled"
        );
    }
    assert!(!h.hub.is_synced(stream, id).unwrap());
    assert_eq!(
        h.hub.buffered(stream, id).unwrap().0,
        0,
        "an unsynced watcher holds no buffer"
    );
    let delivered = events_of(&h.drain(stream), id);
    assert_eq!(delivered, h.history.expected(&create, 1));
    assert_eq!(delivered.len(), 75);
    assert!(h.hub.is_synced(stream, id).unwrap());
    assert!(h.history.largest_limit.get() <= limits.catch_up_events_max);
}

#[test]
fn a_fast_watcher_keeps_getting_its_events_while_a_slow_one_catches_up() {
    let mut limits = small_limits();
    limits.catch_up_events_max = 2;
    let mut h = Harness::new(limits);
    let stream = h.hub.open_stream().unwrap();
    let slow = h.create(stream, watch(KeyRange::prefix("slow")));
    let fast = h.create(stream, watch(KeyRange::single("fast")));
    for n in 0..200 {
        h.put("slow", n.to_string());
    }
    for _ in 0..2 {
        // Control responses come first, and a budget of one byte takes exactly one response.
        let ack = h.poll(stream, 1);
        assert!(ack.len() == 1 && ack[0].created, "{ack:?}");
    }
    // A budget of roughly two small responses per poll: the slow watcher must not take it all.
    let budget = 2 * 200;
    let mut slow_events = Vec::new();
    for n in 0..20 {
        let revision = h.put("fast", n.to_string());
        let responses = h.poll(stream, budget);
        let fast_events = events_of(&responses, fast);
        assert_eq!(
            revisions_of(&fast_events),
            [revision],
            "poll {n}: the fast watcher got its event"
        );
        slow_events.extend(events_of(&responses, slow));
    }
    assert!(
        !slow_events.is_empty() && slow_events.len() < 200,
        "the slow watcher progressed but is still behind"
    );
    slow_events.extend(events_of(&h.drain(stream), slow));
    assert_eq!(
        slow_events,
        h.history.expected(&watch(KeyRange::prefix("slow")), 1)
    );
}

#[test]
fn a_revision_larger_than_a_catch_up_chunk_is_replayed_whole() {
    let mut h = Harness::new(small_limits());
    let stream = h.hub.open_stream().unwrap();
    h.put("k0", "before");
    let big: Vec<Op> = ["k1", "k2", "k3", "k4", "k5", "k6", "k7"]
        .into_iter()
        .map(|k| put(k, "v"))
        .collect();
    h.apply(&big);
    h.put("k8", "after");
    let create = WatchCreate {
        start_revision: 1,
        ..watch(KeyRange::prefix("k"))
    };
    let id = h.create(stream, create.clone());
    let responses: Vec<_> = h
        .drain(stream)
        .into_iter()
        .filter(|r| r.watch_id == id && !r.created)
        .collect();
    let per_response: Vec<Vec<i64>> = responses.iter().map(|r| revisions_of(&r.events)).collect();
    assert!(
        per_response
            .iter()
            .any(|revisions| revisions.len() == 7 && revisions.iter().all(|r| *r == 2)),
        "{per_response:?}"
    );
    assert!(responses.iter().all(|r| !r.fragment));
    assert_eq!(events_of(&responses, id), h.history.expected(&create, 1));
}

#[test]
fn after_a_snapshot_jump_watchers_catch_up_from_history() {
    let mut h = Harness::new(small_limits());
    let stream = h.hub.open_stream().unwrap();
    let create = watch(KeyRange::prefix(""));
    let id = h.create(stream, create.clone());
    let quiet = h.create(stream, watch(KeyRange::single("c")));
    h.put("a", "1");
    h.put("a", "2");
    // Revisions 3..=5 reach the store without on_apply (a snapshot was installed), and the
    // history before them is compacted: a synced watcher that saw nothing since revision 0 must
    // not be sent back there.
    for n in 3..=5 {
        h.history.apply(&[put("b", n.to_string())]);
    }
    h.history.compact(3);
    h.hub.restore(5);
    h.hub.check_invariants();
    h.put("c", "6");
    let responses = h.drain(stream);
    assert_eq!(
        revisions_of(&events_of(&responses, id)),
        (1..=6).collect::<Vec<_>>()
    );
    assert_eq!(revisions_of(&events_of(&responses, quiet)), [6]);
    assert!(responses.iter().all(|r| !r.canceled));
}

#[test]
fn a_history_error_cancels_the_catching_up_watch_with_the_reason() {
    let mut h = Harness::new(small_limits());
    let stream = h.hub.open_stream().unwrap();
    h.put("a", "1");
    let id = h.create(
        stream,
        WatchCreate {
            start_revision: 1,
            ..watch(KeyRange::single("a"))
        },
    );
    *h.history.fail_with.borrow_mut() = Some(HistoryError::Storage("disk on fire".into()));
    let responses = h.drain(stream);
    let last = responses.last().unwrap();
    assert!(last.watch_id == id && last.canceled && last.compact_revision == 0);
    assert!(last.cancel_reason.contains("disk on fire"));
}
