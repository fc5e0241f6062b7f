//! Progress notifications: per watch after an idle interval, and per stream on request.

mod watch_support;

use ballot_storage::mvcc::types::KeyRange;
use ballot_storage::watch::{WatchCreate, STREAM_PROGRESS_WATCH_ID};
use watch_support::*;

#[test]
fn an_idle_synced_progress_watch_gets_the_current_revision_each_interval() {
    let mut h = Harness::new(small_limits()); // progress every 1000 ms
    let stream = h.hub.open_stream().unwrap();
    let idle = h.create(
        stream,
        WatchCreate {
            progress_notify: true,
            ..watch(KeyRange::single("idle"))
        },
    );
    let busy = h.create(
        stream,
        WatchCreate {
            progress_notify: true,
            ..watch(KeyRange::single("busy"))
        },
    );
    let silent = h.create(stream, watch(KeyRange::single("idle")));
    h.drain(stream);

    h.hub.progress(0); // arms the clock
    h.put("busy", "1");
    h.hub.progress(999);
    let responses = h.drain(stream);
    assert_eq!(
        responses.len(),
        1,
        "nothing is due before the interval: {responses:?}"
    );

    h.hub.progress(1_000);
    assert!(
        h.drain(stream).is_empty(),
        "the first round only starts the idle clock of new watches"
    );
    h.hub.progress(2_000);
    let responses = h.drain(stream);
    assert_eq!(
        responses.len(),
        2,
        "busy was idle too in this round: {responses:?}"
    );
    h.put("busy", "2");
    h.hub.progress(3_000);
    let responses = h.drain(stream);
    let progress: Vec<_> = responses.iter().filter(|r| r.events.is_empty()).collect();
    assert_eq!(progress.len(), 1);
    assert_eq!(progress[0].watch_id, idle);
    assert_eq!(progress[0].header_revision, 2);
    assert!(responses.iter().all(|r| r.watch_id != silent));
    assert!(responses
        .iter()
        .any(|r| r.watch_id == busy && r.events.len() == 1));
}

#[test]
fn an_unsynced_progress_watch_gets_no_progress_until_caught_up() {
    let mut h = Harness::new(small_limits());
    let stream = h.hub.open_stream().unwrap();
    let id = h.create(
        stream,
        WatchCreate {
            progress_notify: true,
            ..watch(KeyRange::single("a"))
        },
    );
    for n in 0..20 {
        h.put("a", n.to_string());
    }
    assert!(!h.hub.is_synced(stream, id).unwrap());
    h.hub.progress(0);
    h.hub.progress(1_000);
    h.hub.progress(2_000);
    let responses = h.drain(stream);
    assert!(
        responses.iter().all(|r| r.created || !r.events.is_empty()),
        "no empty progress while behind"
    );
}

#[test]
fn a_requested_stream_progress_comes_after_every_pending_event() {
    let mut h = Harness::new(small_limits());
    let stream = h.hub.open_stream().unwrap();
    let id = h.create(stream, watch(KeyRange::single("a")));
    for n in 0..20 {
        h.put("a", n.to_string());
    }
    h.hub.request_progress(stream).unwrap();
    let responses = h.drain(stream);
    let last = responses.last().unwrap();
    assert_eq!(last.watch_id, STREAM_PROGRESS_WATCH_ID);
    assert_eq!(last.header_revision, 20);
    assert_eq!(
        events_of(&responses, id).len(),
        20,
        "all events came before the progress response"
    );
    assert_eq!(
        responses
            .iter()
            .filter(|r| r.watch_id == STREAM_PROGRESS_WATCH_ID)
            .count(),
        1
    );
    assert!(h.drain(stream).is_empty(), "a request is answered once");
}

#[test]
fn each_progress_request_gets_its_own_response() {
    // etcd answers every progress request; a client that sends two waits for two answers.
    let mut h = Harness::new(small_limits());
    let stream = h.hub.open_stream().unwrap();
    h.create(stream, watch(KeyRange::single("a")));
    h.put("a", "1");
    h.hub.request_progress(stream).unwrap();
    h.hub.request_progress(stream).unwrap();
    let responses = h.drain(stream);
    let progress: Vec<_> = responses
        .iter()
        .filter(|r| r.watch_id == STREAM_PROGRESS_WATCH_ID)
        .collect();
    assert_eq!(progress.len(), 2, "{responses:?}");
    assert!(progress.iter().all(|r| r.header_revision == 1));
    h.hub.request_progress(stream).unwrap();
    assert_eq!(h.drain(stream).len(), 1, "a third request, a third answer");
}
