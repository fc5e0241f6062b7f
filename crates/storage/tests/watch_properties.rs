//! Property: under any interleaving of writes, compactions, creates (live or from a past
//! revision), cancels and polls with any budget, with limits small enough that watchers overflow,
//! catch up and fragment all the time, every watch receives exactly its history: each event once,
//! in order, with no gap, fragments consecutive, and everything once drained.

mod watch_support;

use ballot_storage::mvcc::types::{Event, KeyRange, Revision};
use ballot_storage::watch::{StreamId, WatchCreate, WatchId, WatchLimits, WatchResponse};
use proptest::prelude::*;
use std::collections::BTreeMap;
use watch_support::*;

const KEYS: [&str; 5] = ["a", "ab", "b", "c", "d"];

#[derive(Debug, Clone)]
enum Step {
    Write(Vec<(bool, usize, u8)>),
    Create {
        stream: usize,
        range: usize,
        back: u8,
        prev_kv: bool,
        no_put: bool,
        no_delete: bool,
        fragment: bool,
    },
    Cancel {
        stream: usize,
        pick: usize,
    },
    Poll {
        stream: usize,
        budget: u16,
    },
    Compact {
        back: u8,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => prop::collection::vec((any::<bool>(), 0..KEYS.len(), any::<u8>()), 1..4).prop_map(Step::Write),
        1 => (0..2usize, 0..5usize, 0..8u8, any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
            |(stream, range, back, prev_kv, no_put, no_delete, fragment)| Step::Create {
                stream, range, back, prev_kv, no_put, no_delete, fragment
            }
        ),
        1 => (0..2usize, any::<usize>()).prop_map(|(stream, pick)| Step::Cancel { stream, pick }),
        3 => (0..2usize, 0..600u16).prop_map(|(stream, budget)| Step::Poll { stream, budget }),
        1 => (0..6u8).prop_map(|back| Step::Compact { back }),
    ]
}

fn range(shape: usize) -> KeyRange {
    match shape {
        0 => KeyRange::single("a"),
        1 => KeyRange::prefix("a"),
        2 => KeyRange::new("b", "d"),
        3 => KeyRange::new("c", "\0"),
        _ => KeyRange::prefix(""),
    }
}

struct Watch {
    create: WatchCreate,
    start: Revision,
    delivered: Vec<Event>,
    acked: bool,
    canceled: bool,
    /// The client canceled it; a watch already canceled for compaction still gets an ack.
    client_canceled: bool,
    cancel_acked: bool,
}

struct Model {
    h: Harness,
    streams: Vec<StreamId>,
    /// Every event ever applied (the fake's own list loses compacted ones).
    log: Vec<Event>,
    watches: BTreeMap<(StreamId, WatchId), Watch>,
    /// Per stream: the watch whose fragments are arriving.
    fragmenting: BTreeMap<StreamId, WatchId>,
}

impl Model {
    fn expected(&self, watch: &Watch) -> Vec<Event> {
        let mut history = FakeHistory::default();
        history.events = self.log.clone();
        history.expected(&watch.create, watch.start)
    }

    fn receive(&mut self, stream: StreamId, responses: Vec<WatchResponse>) {
        for response in responses {
            if let Some(&watch_id) = self.fragmenting.get(&stream) {
                assert_eq!(
                    response.watch_id, watch_id,
                    "a fragment sequence was interleaved"
                );
            }
            if response.fragment {
                self.fragmenting.insert(stream, response.watch_id);
            } else {
                self.fragmenting.remove(&stream);
            }
            let watch = self
                .watches
                .get_mut(&(stream, response.watch_id))
                .expect("response for a known watch");
            if watch.canceled {
                // A watch canceled for compaction keeps its id until the client cancels it,
                // and that cancel is acknowledged, as in etcd.
                assert!(
                    response.canceled
                        && response.compact_revision == 0
                        && watch.client_canceled
                        && !watch.cancel_acked,
                    "a response after the cancel"
                );
                watch.cancel_acked = true;
                continue;
            }
            if response.created {
                assert!(
                    !watch.acked && watch.delivered.is_empty(),
                    "the ack comes first, once"
                );
                watch.acked = true;
                continue;
            }
            assert!(watch.acked, "a response before the ack");
            if response.canceled {
                watch.canceled = true;
                watch.cancel_acked = response.compact_revision == 0;
            }
            watch.delivered.extend(response.events);
            let watch = &self.watches[&(stream, response.watch_id)];
            let expected = self.expected(watch);
            assert!(
                expected.starts_with(&watch.delivered),
                "watch {} delivered {:?}\nexpected a prefix of {:?}",
                response.watch_id,
                revisions_of(&watch.delivered),
                revisions_of(&expected)
            );
        }
    }
}

fn run(steps: Vec<Step>) {
    let limits = WatchLimits {
        streams_max: 2,
        watches_per_stream_max: 4,
        events_buffered_max: 3,
        buffered_bytes_max: 400,
        response_bytes_max: 64 + 150,
        catch_up_events_max: 2,
        catch_up_reads_per_poll_max: 3,
        progress_interval_ms: 1_000,
    };
    let mut h = Harness::new(limits);
    let streams = vec![h.hub.open_stream().unwrap(), h.hub.open_stream().unwrap()];
    let mut model = Model {
        h,
        streams,
        log: Vec::new(),
        watches: BTreeMap::new(),
        fragmenting: BTreeMap::new(),
    };
    for step in steps {
        match step {
            Step::Write(ops) => {
                let ops: Vec<Op> = ops
                    .into_iter()
                    .map(|(is_put, key, value)| {
                        if is_put {
                            put(KEYS[key], value.to_string())
                        } else {
                            Op::Delete(KEYS[key])
                        }
                    })
                    .collect();
                let (revision, events) = model.h.history.apply(&ops);
                model.h.hub.on_apply(revision, &events);
                model.log.extend(events);
            }
            Step::Create {
                stream,
                range: shape,
                back,
                prev_kv,
                no_put,
                no_delete,
                fragment,
            } => {
                let stream = model.streams[stream];
                let current = model.h.history.current;
                let start_revision = if back == 0 {
                    0
                } else {
                    (current + 1 - Revision::from(back)).max(1)
                };
                let create = WatchCreate {
                    range: range(shape),
                    start_revision,
                    prev_kv,
                    filter_no_put: no_put,
                    filter_no_delete: no_delete,
                    fragment,
                    ..WatchCreate::default()
                };
                if let Ok(id) = model
                    .h
                    .hub
                    .create_watch(stream, create.clone(), &model.h.history)
                {
                    let start = if start_revision == 0 {
                        current + 1
                    } else {
                        start_revision
                    };
                    let watch = Watch {
                        create,
                        start,
                        delivered: Vec::new(),
                        acked: false,
                        canceled: false,
                        client_canceled: false,
                        cancel_acked: false,
                    };
                    model.watches.insert((stream, id), watch);
                }
            }
            Step::Cancel { stream, pick } => {
                let stream = model.streams[stream];
                let live: Vec<WatchId> = model
                    .watches
                    .iter()
                    .filter(|((s, _), w)| *s == stream && !w.canceled)
                    .map(|((_, id), _)| *id)
                    .collect();
                if !live.is_empty() {
                    let id = live[pick % live.len()];
                    // It may already have been canceled by a compaction not yet polled. A client
                    // that cancels a watch mid-fragments drops the fragments it holds.
                    let canceled = model.h.hub.cancel(stream, id).is_ok();
                    if canceled {
                        if let Some(watch) = model.watches.get_mut(&(stream, id)) {
                            watch.client_canceled = true;
                        }
                    }
                    if canceled && model.fragmenting.get(&stream) == Some(&id) {
                        model.fragmenting.remove(&stream);
                    }
                }
            }
            Step::Poll { stream, budget } => {
                let stream = model.streams[stream];
                let responses = model
                    .h
                    .hub
                    .poll(stream, &model.h.history, usize::from(budget))
                    .unwrap();
                model.receive(stream, responses);
            }
            Step::Compact { back } => {
                let target = model.h.history.current - Revision::from(back);
                if target > model.h.history.compacted {
                    model.h.history.compact(target);
                }
            }
        }
        model.h.hub.check_invariants();
        // A canceled watch whose cancel was received is gone; its id may be reused. One canceled
        // for compaction that the client canceled too still has that cancel's ack to come.
        model
            .watches
            .retain(|_, watch| !watch.canceled || watch.client_canceled && !watch.cancel_acked);
    }
    // Heal: drain every stream; each live watch must now have exactly its history.
    for stream in model.streams.clone() {
        let responses = model.h.drain(stream);
        model.receive(stream, responses);
    }
    for ((_, id), watch) in &model.watches {
        if watch.canceled {
            continue;
        }
        assert!(watch.acked, "watch {id} was never acknowledged");
        assert_eq!(
            watch.delivered,
            model.expected(watch),
            "watch {id} is missing events after the drain"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_watch_gets_its_history_exactly_once_in_order(steps in prop::collection::vec(step(), 1..120)) {
        run(steps);
    }
}
