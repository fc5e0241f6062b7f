//! Every limit of the watch hub at its edge: the last allowed is accepted, one more is refused
//! (or, for buffers, turns the watcher unsynced).

mod watch_support;

use ballot_storage::mvcc::types::KeyRange;
use ballot_storage::watch::{event_bytes, response_bytes, WatchCreate, WatchError, WatchLimits};
use watch_support::*;

#[test]
fn streams_max_refuses_one_more_stream_and_closing_frees_a_slot() {
    let mut h = Harness::new(small_limits());
    let streams: Vec<_> = (0..8).map(|_| h.hub.open_stream().unwrap()).collect();
    let refused = h.hub.open_stream().unwrap_err();
    assert_eq!(refused, WatchError::TooManyStreams { limit: 8 });
    assert!(refused.to_string().contains("streams_max"));
    h.hub.close_stream(streams[3]).unwrap();
    assert!(h.hub.open_stream().is_ok());
}

#[test]
fn watches_per_stream_max_counts_canceled_watches_until_their_response_is_polled() {
    let mut h = Harness::new(small_limits());
    let stream = h.hub.open_stream().unwrap();
    for _ in 0..8 {
        h.create(stream, watch(KeyRange::single("a")));
    }
    let refused = h
        .hub
        .create_watch(stream, watch(KeyRange::single("a")), &h.history)
        .unwrap_err();
    assert_eq!(refused, WatchError::TooManyWatches { stream, limit: 8 });
    assert!(refused.to_string().contains("watches_per_stream_max"));
    h.hub.cancel(stream, 0).unwrap();
    assert!(
        h.hub
            .create_watch(stream, watch(KeyRange::single("a")), &h.history)
            .is_err(),
        "the cancel response still holds the slot"
    );
    h.drain(stream);
    assert!(h
        .hub
        .create_watch(stream, watch(KeyRange::single("a")), &h.history)
        .is_ok());
    // Another stream has its own slots.
    let other = h.hub.open_stream().unwrap();
    assert!(h
        .hub
        .create_watch(other, watch(KeyRange::single("a")), &h.history)
        .is_ok());
}

#[test]
fn events_buffered_max_is_the_last_count_that_stays_synced() {
    let mut h = Harness::new(small_limits()); // 10 events
    let stream = h.hub.open_stream().unwrap();
    let id = h.create(stream, watch(KeyRange::single("a")));
    for n in 0..10 {
        h.put("a", n.to_string());
    }
    assert!(h.hub.is_synced(stream, id).unwrap());
    assert_eq!(h.hub.buffered(stream, id).unwrap().0, 10);
    h.put("a", "one too many");
    assert!(!h.hub.is_synced(stream, id).unwrap());
    assert_eq!(h.hub.buffered(stream, id).unwrap(), (0, 0));
    assert_eq!(
        revisions_of(&events_of(&h.drain(stream), id)),
        (1..=11).collect::<Vec<_>>()
    );
}

#[test]
fn buffered_bytes_max_is_the_last_size_that_stays_synced() {
    let mut h = Harness::new(small_limits());
    let (_, events) = h.history.apply(&[put("a", "0")]);
    let one = event_bytes(&events[0]);
    let mut limits = small_limits();
    limits.buffered_bytes_max = 3 * one;
    let mut h = Harness::new(limits);
    let stream = h.hub.open_stream().unwrap();
    let id = h.create(stream, watch(KeyRange::single("a")));
    for n in 0..3 {
        h.put("a", n.to_string());
    }
    assert!(h.hub.is_synced(stream, id).unwrap());
    assert_eq!(h.hub.buffered(stream, id).unwrap(), (3, 3 * one));
    h.put("a", "3");
    assert!(!h.hub.is_synced(stream, id).unwrap());
    assert_eq!(events_of(&h.drain(stream), id).len(), 4);
}

#[test]
fn catch_up_reads_ask_for_at_most_catch_up_events_max_and_at_most_the_read_limit_per_poll() {
    let mut limits = small_limits();
    limits.catch_up_events_max = 3;
    limits.catch_up_reads_per_poll_max = 2;
    let mut h = Harness::new(limits);
    let stream = h.hub.open_stream().unwrap();
    for n in 0..30 {
        h.put("a", n.to_string());
    }
    let id = h.create(
        stream,
        WatchCreate {
            start_revision: 1,
            ..watch(KeyRange::single("a"))
        },
    );
    let responses = h.poll(stream, usize::MAX);
    assert_eq!(h.history.reads.get(), 2);
    assert_eq!(h.history.largest_limit.get(), 3);
    // A full chunk's last revision may be cut, so it is read again with the next chunk.
    assert_eq!(
        events_of(&responses, id).len(),
        4,
        "two reads of three events, two kept of each"
    );
    let mut all = responses;
    all.extend(h.drain(stream));
    assert_eq!(events_of(&all, id).len(), 30);
    assert_eq!(
        h.history.reads.get(),
        15,
        "fourteen full chunks, then one short read that ends at the hub's revision"
    );
}

#[test]
fn the_poll_budget_stops_after_the_response_that_spends_it() {
    let mut h = Harness::new(small_limits());
    let stream = h.hub.open_stream().unwrap();
    let a = h.create(stream, watch(KeyRange::single("a")));
    let b = h.create(stream, watch(KeyRange::single("b")));
    h.drain(stream);
    h.put("a", "1");
    h.put("b", "1");
    let all = {
        let mut probe = Harness::new(small_limits());
        let s = probe.hub.open_stream().unwrap();
        probe.create(s, watch(KeyRange::single("a")));
        probe.drain(s);
        probe.put("a", "1");
        probe.drain(s)
    };
    let one = response_bytes(&all[0]);
    let responses = h.poll(stream, one);
    assert_eq!(
        responses.len(),
        1,
        "exactly one response's bytes buys one response"
    );
    assert_eq!(responses[0].watch_id, a);
    let responses = h.poll(stream, one + 1);
    assert_eq!(responses.len(), 1);
    assert_eq!(responses[0].watch_id, b);
    assert!(h.poll(stream, 0).is_empty());
}

#[test]
fn limits_of_zero_are_refused_by_name() {
    let limits = WatchLimits {
        catch_up_events_max: 0,
        ..WatchLimits::default()
    };
    assert!(limits
        .validate()
        .unwrap_err()
        .contains("catch_up_events_max"));
    let limits = WatchLimits {
        response_bytes_max: 10,
        ..WatchLimits::default()
    };
    assert!(limits
        .validate()
        .unwrap_err()
        .contains("response_bytes_max"));
    assert!(WatchLimits::default().validate().is_ok());
}
