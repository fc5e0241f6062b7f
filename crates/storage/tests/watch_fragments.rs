//! Response sizes: several revisions per response while they fit, a large revision whole or in
//! fragments, fragments never interleaved with other watches, and a buffer drop mid-revision.

mod watch_support;

use ballot_storage::mvcc::types::KeyRange;
use ballot_storage::watch::{event_bytes, WatchCreate, WatchLimits, RESPONSE_OVERHEAD_BYTES};
use watch_support::*;

const KEYS: [&str; 7] = ["k1", "k2", "k3", "k4", "k5", "k6", "k7"];

fn value() -> String {
    "v".repeat(100)
}

/// Limits where a response holds exactly `events` events of a `KEYS` key with `value()`.
fn limits_for(events: usize) -> WatchLimits {
    let one = 8 + 48 + 2 + 100;
    WatchLimits {
        response_bytes_max: RESPONSE_OVERHEAD_BYTES + events * one,
        ..small_limits()
    }
}

fn big_revision() -> Vec<Op> {
    KEYS.iter().map(|key| put(key, value())).collect()
}

#[test]
fn event_size_estimate_is_what_the_tests_assume() {
    let mut h = Harness::new(small_limits());
    let (_, events) = h.history.apply(&[put("k1", value())]);
    assert_eq!(event_bytes(&events[0]), 8 + 48 + 2 + 100);
}

#[test]
fn a_large_revision_is_split_into_fragments_and_the_next_revision_starts_fresh() {
    let mut h = Harness::new(limits_for(3));
    let stream = h.hub.open_stream().unwrap();
    let create = WatchCreate {
        fragment: true,
        ..watch(KeyRange::prefix("k"))
    };
    let id = h.create(stream, create.clone());
    h.drain(stream);
    h.apply(&big_revision());
    h.put("k1", value());
    let responses = h.drain(stream);
    let shape: Vec<(usize, bool)> = responses
        .iter()
        .map(|r| (r.events.len(), r.fragment))
        .collect();
    assert_eq!(shape, [(3, true), (3, true), (1, false), (1, false)]);
    assert_eq!(revisions_of(&responses[3].events), [2]);
    assert_eq!(events_of(&responses, id), h.history.expected(&create, 1));
}

#[test]
fn a_revision_that_fits_exactly_is_not_fragmented() {
    let mut h = Harness::new(limits_for(7));
    let stream = h.hub.open_stream().unwrap();
    h.create(
        stream,
        WatchCreate {
            fragment: true,
            ..watch(KeyRange::prefix("k"))
        },
    );
    h.drain(stream);
    h.apply(&big_revision());
    let responses = h.drain(stream);
    assert_eq!(responses.len(), 1);
    assert!(!responses[0].fragment && responses[0].events.len() == 7);

    // One event more than fits: 6 + 1 + the trailing fragment flag cleared.
    let mut h = Harness::new(limits_for(6));
    let stream = h.hub.open_stream().unwrap();
    h.create(
        stream,
        WatchCreate {
            fragment: true,
            ..watch(KeyRange::prefix("k"))
        },
    );
    h.drain(stream);
    h.apply(&big_revision());
    let shape: Vec<(usize, bool)> = h
        .drain(stream)
        .iter()
        .map(|r| (r.events.len(), r.fragment))
        .collect();
    assert_eq!(shape, [(6, true), (1, false)]);
}

#[test]
fn without_fragment_a_large_revision_goes_out_whole_and_small_ones_share_a_response() {
    let mut h = Harness::new(limits_for(3));
    let stream = h.hub.open_stream().unwrap();
    h.create(stream, watch(KeyRange::prefix("k")));
    h.drain(stream);
    h.apply(&big_revision());
    for key in ["k1", "k2", "k3", "k4"] {
        h.put(key, value());
    }
    let shape: Vec<Vec<i64>> = h
        .drain(stream)
        .iter()
        .map(|r| revisions_of(&r.events))
        .collect();
    assert_eq!(
        shape,
        [vec![1; 7], vec![2, 3, 4], vec![5]],
        "whole revision 1, then three revisions that fit, then one"
    );
}

#[test]
fn fragments_are_consecutive_on_the_stream_even_across_polls() {
    let mut h = Harness::new(limits_for(2));
    let stream = h.hub.open_stream().unwrap();
    let big = h.create(
        stream,
        WatchCreate {
            fragment: true,
            ..watch(KeyRange::prefix("k"))
        },
    );
    let other = h.create(stream, watch(KeyRange::prefix("k")));
    h.drain(stream);
    h.apply(&big_revision());
    h.put("k1", value());
    let mut sequence = Vec::new();
    for _ in 0..50 {
        // A tiny budget: one response per poll.
        sequence.extend(
            h.poll(stream, 1)
                .into_iter()
                .map(|r| (r.watch_id, r.fragment, r.events.len())),
        );
    }
    let fragments: Vec<usize> = sequence
        .iter()
        .enumerate()
        .filter(|(_, r)| r.0 == big)
        .map(|(i, _)| i)
        .collect();
    let first_of_big = fragments[0];
    assert_eq!(
        &sequence[first_of_big..first_of_big + 4],
        [
            (big, true, 2),
            (big, true, 2),
            (big, true, 2),
            (big, false, 1)
        ],
        "no other watch interleaves: {sequence:?}"
    );
    assert_eq!(
        sequence
            .iter()
            .filter(|r| r.0 == other)
            .map(|r| r.2)
            .sum::<usize>(),
        8
    );
}

#[test]
fn a_buffer_drop_in_the_middle_of_a_fragmented_revision_resumes_after_the_sent_fragments() {
    let mut limits = limits_for(2);
    limits.events_buffered_max = 8;
    let mut h = Harness::new(limits);
    let stream = h.hub.open_stream().unwrap();
    let create = WatchCreate {
        fragment: true,
        ..watch(KeyRange::prefix("k"))
    };
    let id = h.create(stream, create.clone());
    h.drain(stream);
    h.apply(&big_revision());
    let first = h.poll(stream, 1);
    assert_eq!(
        first
            .iter()
            .map(|r| (r.events.len(), r.fragment))
            .collect::<Vec<_>>(),
        [(2, true)]
    );
    // 5 events left in the buffer; 4 more overflow it (8 max).
    h.apply(&[
        put("k1", value()),
        put("k2", value()),
        put("k3", value()),
        put("k4", value()),
    ]);
    assert!(!h.hub.is_synced(stream, id).unwrap());
    let mut responses = first;
    responses.extend(h.drain(stream));
    let shape: Vec<(usize, bool)> = responses
        .iter()
        .map(|r| (r.events.len(), r.fragment))
        .collect();
    assert_eq!(
        shape,
        [
            (2, true),
            (2, true),
            (2, true),
            (1, false),
            (2, true),
            (2, false)
        ]
    );
    assert_eq!(events_of(&responses, id), h.history.expected(&create, 1));
}
