//! An in-memory `History` (a list of events with a compacted revision) and helpers that drive a
//! `WatchHub` the way the server will: apply a revision to the store, then `on_apply` it.
#![allow(dead_code)]

use ballot_storage::mvcc::types::{
    Event, EventKind, History, HistoryError, KeyRange, KeyValue, Revision,
};
use ballot_storage::watch::{StreamId, WatchCreate, WatchHub, WatchId, WatchLimits, WatchResponse};
use bytes::Bytes;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
pub enum Op {
    Put(&'static str, String),
    Delete(&'static str),
}

pub fn put(key: &'static str, value: impl Into<String>) -> Op {
    Op::Put(key, value.into())
}

#[derive(Debug, Default)]
pub struct FakeHistory {
    /// Every event, in revision order, with its prev_kv.
    pub events: Vec<Event>,
    pub current: Revision,
    pub compacted: Revision,
    live: BTreeMap<Bytes, KeyValue>,
    /// Calls to `events`, and the largest `limit` passed other than `usize::MAX`.
    pub reads: Cell<usize>,
    pub largest_limit: Cell<usize>,
    pub fail_with: RefCell<Option<HistoryError>>,
}

impl FakeHistory {
    /// Applies one revision; returns it and its events (as the store hands them to `on_apply`).
    pub fn apply(&mut self, ops: &[Op]) -> (Revision, Vec<Event>) {
        let revision = self.current + 1;
        let mut events = Vec::new();
        for op in ops {
            match op {
                Op::Put(key, value) => {
                    let key = Bytes::from_static(key.as_bytes());
                    let prev = self.live.get(&key).cloned();
                    let kv = KeyValue {
                        key: key.clone(),
                        create_revision: prev.as_ref().map_or(revision, |kv| kv.create_revision),
                        mod_revision: revision,
                        version: prev.as_ref().map_or(1, |kv| kv.version + 1),
                        value: Bytes::from(value.clone()),
                        lease: 0,
                    };
                    self.live.insert(key, kv.clone());
                    events.push(Event {
                        kind: EventKind::Put,
                        kv,
                        prev_kv: prev,
                    });
                }
                Op::Delete(key) => {
                    let key = Bytes::from_static(key.as_bytes());
                    if let Some(prev) = self.live.remove(&key) {
                        let kv = KeyValue {
                            key,
                            mod_revision: revision,
                            ..KeyValue::default()
                        };
                        events.push(Event {
                            kind: EventKind::Delete,
                            kv,
                            prev_kv: Some(prev),
                        });
                    }
                }
            }
        }
        self.current = revision;
        self.events.extend(events.iter().cloned());
        (revision, events)
    }

    pub fn compact(&mut self, revision: Revision) {
        assert!(revision <= self.current);
        self.compacted = self.compacted.max(revision);
        let compacted = self.compacted;
        self.events
            .retain(|event| event.kv.mod_revision >= compacted);
    }

    /// What a watcher on `range` from `start` must see, in order.
    pub fn expected(&self, create: &WatchCreate, start: Revision) -> Vec<Event> {
        self.events
            .iter()
            .filter(|event| event.kv.mod_revision >= start && create.range.contains(&event.kv.key))
            .filter(|event| match event.kind {
                EventKind::Put => !create.filter_no_put,
                EventKind::Delete => !create.filter_no_delete,
            })
            .map(|event| strip(event, create.prev_kv))
            .collect()
    }
}

pub fn strip(event: &Event, prev_kv: bool) -> Event {
    let mut event = event.clone();
    if !prev_kv {
        event.prev_kv = None;
    }
    event
}

impl History for FakeHistory {
    fn current_revision(&self) -> Revision {
        self.current
    }

    fn compacted_revision(&self) -> Revision {
        self.compacted
    }

    fn events(
        &self,
        range: &KeyRange,
        start_revision: Revision,
        end_revision: Revision,
        limit: usize,
        with_prev_kv: bool,
    ) -> Result<Vec<Event>, HistoryError> {
        self.reads.set(self.reads.get() + 1);
        if limit != usize::MAX {
            self.largest_limit.set(self.largest_limit.get().max(limit));
        }
        if let Some(error) = self.fail_with.borrow().clone() {
            return Err(error);
        }
        if start_revision < self.compacted {
            return Err(HistoryError::Compacted {
                compact_revision: self.compacted,
            });
        }
        if end_revision > self.current {
            return Err(HistoryError::FutureRevision {
                current_revision: self.current,
            });
        }
        let matching: Vec<Event> = self
            .events
            .iter()
            .filter(|event| (start_revision..=end_revision).contains(&event.kv.mod_revision))
            .filter(|event| range.contains(&event.kv.key))
            .map(|event| strip(event, with_prev_kv))
            .collect();
        // Whole revisions while they fit; a first revision larger than the limit is cut.
        let mut out: Vec<Event> = Vec::new();
        for group in matching.chunk_by(|a, b| a.kv.mod_revision == b.kv.mod_revision) {
            if out.len() + group.len() > limit {
                if out.is_empty() {
                    out.extend(group[..limit].iter().cloned());
                }
                break;
            }
            out.extend(group.iter().cloned());
        }
        Ok(out)
    }
}

/// A hub and a store, driven together.
pub struct Harness {
    pub hub: WatchHub,
    pub history: FakeHistory,
}

impl Harness {
    pub fn new(limits: WatchLimits) -> Self {
        Self {
            hub: WatchHub::new(limits, 0),
            history: FakeHistory::default(),
        }
    }

    pub fn apply(&mut self, ops: &[Op]) -> Revision {
        let (revision, events) = self.history.apply(ops);
        self.hub.on_apply(revision, &events);
        self.hub.check_invariants();
        revision
    }

    pub fn put(&mut self, key: &'static str, value: impl Into<String>) -> Revision {
        self.apply(&[put(key, value)])
    }

    pub fn create(&mut self, stream: StreamId, create: WatchCreate) -> WatchId {
        let id = self
            .hub
            .create_watch(stream, create, &self.history)
            .expect("create watch");
        self.hub.check_invariants();
        id
    }

    pub fn poll(&mut self, stream: StreamId, budget_bytes: usize) -> Vec<WatchResponse> {
        let responses = self
            .hub
            .poll(stream, &self.history, budget_bytes)
            .expect("poll");
        self.hub.check_invariants();
        responses
    }

    /// Polls until the stream has nothing more to send.
    pub fn drain(&mut self, stream: StreamId) -> Vec<WatchResponse> {
        let mut all = Vec::new();
        for _ in 0..10_000 {
            if !self.hub.has_pending(stream).unwrap() {
                assert!(
                    self.poll(stream, usize::MAX).is_empty(),
                    "nothing pending means nothing to send"
                );
                return all;
            }
            all.extend(self.poll(stream, usize::MAX));
        }
        panic!("stream {stream} never ran dry");
    }
}

pub fn watch(range: KeyRange) -> WatchCreate {
    WatchCreate {
        range,
        ..WatchCreate::default()
    }
}

/// The events delivered to one watch, in order.
pub fn events_of(responses: &[WatchResponse], watch_id: WatchId) -> Vec<Event> {
    responses
        .iter()
        .filter(|r| r.watch_id == watch_id)
        .flat_map(|r| r.events.iter().cloned())
        .collect()
}

pub fn keys_of(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|event| String::from_utf8_lossy(&event.kv.key).into_owned())
        .collect()
}

pub fn revisions_of(events: &[Event]) -> Vec<Revision> {
    events.iter().map(|event| event.kv.mod_revision).collect()
}

/// Limits small enough that tests reach every one of them.
pub fn small_limits() -> WatchLimits {
    WatchLimits {
        streams_max: 8,
        watches_per_stream_max: 8,
        events_buffered_max: 10,
        buffered_bytes_max: 1 << 20,
        response_bytes_max: 64 * 1024,
        catch_up_events_max: 4,
        catch_up_reads_per_poll_max: 64,
        progress_interval_ms: 1_000,
    }
}
