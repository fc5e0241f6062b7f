//! The watch hub: watchers on keys, ranges and prefixes, for many client streams, with etcd v3
//! `Watch` semantics.
//!
//! It owns which watchers exist, where each one is in the history, and a bounded buffer per
//! watcher. It never blocks, reads no clock (time arrives as `now_ms`), starts no thread and does
//! no I/O except reading [`History`] when asked to poll; the server wraps it in a lock and drives
//! it from the apply loop ([`WatchHub::on_apply`]) and from each gRPC stream ([`WatchHub::poll`]).
//!
//! # How it works
//!
//! - **Synced** watchers are in an index by key, prefix and range. `on_apply(revision, events)`
//!   appends each event to the buffers of the synced watchers it matches, in time proportional to
//!   the matches. It never waits: when a watcher's buffer would exceed `events_buffered_max`
//!   events or `buffered_bytes_max` bytes, the buffer is dropped and the watcher becomes
//!   **unsynced** (etcd's victims and unsynced group in one).
//! - **Unsynced** watchers are not in the index; they cost nothing on the write path. During
//!   `poll` they read the history from their `next_revision` in chunks of `catch_up_events_max`
//!   events, at most `catch_up_reads_per_poll_max` reads per poll, and rejoin the index once they
//!   reach the hub's revision. A watcher created with a start revision in the past starts here.
//!   A watcher whose next revision has been compacted receives `compact_revision` and is
//!   canceled, as in etcd.
//! - `poll(stream, history, budget_bytes)` first finishes a revision being sent in fragments
//!   (etcd clients reassemble only consecutive fragments), then hands out control responses
//!   (creation acks, cancellations) in order, then serves the stream's watchers round-robin, one
//!   response per turn, so one busy watcher cannot starve the others. The turn order persists
//!   across polls.
//! - The hub's revision is the last one passed to `on_apply` (or `restore`). History is read only
//!   up to it, so an event is replayed or delivered live, never both.
//!
//! Memory is bounded: per stream by `watches_per_stream_max` (a canceled watch holds its slot
//! until its cancel response is polled), per watcher by the buffer limits (one revision larger
//! than the buffer is read alone, so it may exceed them while it is delivered), and in total by
//! `streams_max`.

mod index;
mod watcher;

use crate::mvcc::types::{Event, History, HistoryError, KeyRange, KeyValue, Revision};
use index::{SyncedIndex, WatcherKey};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use watcher::{Offer, Watcher};

/// A watch id, unique within its stream (etcd's `int64 watch_id`).
pub type WatchId = i64;

/// The watch id of a stream-wide progress response (etcd's `InvalidWatchID`, -1), the answer to
/// [`WatchHub::request_progress`].
pub const STREAM_PROGRESS_WATCH_ID: WatchId = -1;

/// Estimated wire bytes of a response without its events.
pub const RESPONSE_OVERHEAD_BYTES: usize = 64;
/// Estimated wire bytes of a key-value without its key and value (five numbers, tags, lengths).
pub const KEY_VALUE_OVERHEAD_BYTES: usize = 48;
/// Estimated wire bytes of an event around its key-values.
pub const EVENT_OVERHEAD_BYTES: usize = 8;

/// One client stream (one gRPC `Watch` call).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId(pub u64);

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}

/// The bounds of the hub. Every buffer and queue it holds is limited by one of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchLimits {
    pub streams_max: usize,
    /// Live watches plus canceled ones whose cancel response has not been polled yet.
    pub watches_per_stream_max: usize,
    /// Events one watcher buffers before it is unsynced and catches up from history instead.
    pub events_buffered_max: usize,
    pub buffered_bytes_max: usize,
    /// Target size of one response; a revision larger than this goes out whole, or in fragments
    /// when the watcher asked for them.
    pub response_bytes_max: usize,
    /// Events per history read while catching up (a single larger revision is read alone).
    pub catch_up_events_max: usize,
    pub catch_up_reads_per_poll_max: usize,
    /// A `progress_notify` watcher that sent nothing for this long gets an empty response with
    /// the current revision.
    pub progress_interval_ms: u64,
}

impl Default for WatchLimits {
    fn default() -> Self {
        Self {
            streams_max: 16_384,
            watches_per_stream_max: 4_096,
            events_buffered_max: 1_024,
            buffered_bytes_max: 4 << 20,
            // etcd's default --max-request-bytes, which also bounds its fragments.
            response_bytes_max: 1536 * 1024,
            catch_up_events_max: 1_000,
            catch_up_reads_per_poll_max: 16,
            // etcd's default progress notify interval.
            progress_interval_ms: 10 * 60 * 1000,
        }
    }
}

impl WatchLimits {
    /// Every limit must allow at least one of what it counts.
    pub fn validate(&self) -> Result<(), String> {
        let counts = [
            ("streams_max", self.streams_max),
            ("watches_per_stream_max", self.watches_per_stream_max),
            ("events_buffered_max", self.events_buffered_max),
            ("buffered_bytes_max", self.buffered_bytes_max),
            ("catch_up_events_max", self.catch_up_events_max),
            (
                "catch_up_reads_per_poll_max",
                self.catch_up_reads_per_poll_max,
            ),
        ];
        if let Some((name, _)) = counts.iter().find(|(_, value)| *value == 0) {
            return Err(format!("watch limit {name} must be at least 1"));
        }
        if self.response_bytes_max <= RESPONSE_OVERHEAD_BYTES {
            return Err(format!(
                "watch limit response_bytes_max ({}) must exceed the response overhead ({RESPONSE_OVERHEAD_BYTES})",
                self.response_bytes_max
            ));
        }
        if self.progress_interval_ms == 0 {
            return Err("watch limit progress_interval_ms must be at least 1".into());
        }
        Ok(())
    }
}

/// etcd's `WatchCreateRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WatchCreate {
    pub range: KeyRange,
    /// First revision to deliver; 0: the revision after the current one.
    pub start_revision: Revision,
    pub prev_kv: bool,
    pub filter_no_put: bool,
    pub filter_no_delete: bool,
    pub progress_notify: bool,
    /// Split a revision larger than `response_bytes_max` over several responses.
    pub fragment: bool,
    /// 0: the hub assigns the lowest free id at or after the stream's counter (the first one is
    /// 0, as in etcd); otherwise an id the stream does not use yet (negative ones too, as etcd
    /// takes them).
    pub watch_id: WatchId,
}

/// etcd's `WatchResponse`, with its header reduced to the revision.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WatchResponse {
    pub watch_id: WatchId,
    /// The acknowledgement of a create; carries no events.
    pub created: bool,
    /// The last response of this watch.
    pub canceled: bool,
    pub cancel_reason: String,
    /// Set (with `canceled`) when the watch needed a revision that has been compacted.
    pub compact_revision: Revision,
    /// The hub's revision when the response was built; for an empty (progress) response, every
    /// event up to it has been delivered.
    pub header_revision: Revision,
    pub events: Vec<Event>,
    /// More fragments of the same revision follow.
    pub fragment: bool,
}

/// Why the hub refused a request. `Display` is etcd's exact message wherever etcd has one (the
/// server sends it to clients as a cancel reason, and etcd clients match on it); the fields
/// carry the detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    #[error("watch stream {0} does not exist")]
    UnknownStream(StreamId),
    #[error("watch {watch_id} does not exist on stream {stream}")]
    UnknownWatch { stream: StreamId, watch_id: WatchId },
    #[error("mvcc: duplicate watch ID provided on the WatchStream")]
    DuplicateWatchId { stream: StreamId, watch_id: WatchId },
    #[error("stream {stream} already has {limit} watches (watches_per_stream_max)")]
    TooManyWatches { stream: StreamId, limit: usize },
    #[error("{limit} watch streams are already open (streams_max)")]
    TooManyStreams { limit: usize },
    #[error("{reason}")]
    InvalidRange {
        range: KeyRange,
        reason: &'static str,
    },
}

/// Estimated wire bytes of an event, as counted against buffers, responses and poll budgets.
pub fn event_bytes(event: &Event) -> usize {
    EVENT_OVERHEAD_BYTES
        + key_value_bytes(&event.kv)
        + event.prev_kv.as_ref().map_or(0, key_value_bytes)
}

fn key_value_bytes(kv: &KeyValue) -> usize {
    KEY_VALUE_OVERHEAD_BYTES + kv.key.len() + kv.value.len()
}

/// Estimated wire bytes of a response.
pub fn response_bytes(response: &WatchResponse) -> usize {
    RESPONSE_OVERHEAD_BYTES
        + response.cancel_reason.len()
        + response.events.iter().map(event_bytes).sum::<usize>()
}

#[derive(Debug)]
struct Stream {
    watchers: BTreeMap<WatchId, Watcher>,
    /// Turn order of the round-robin; the front plays next.
    rotation: VecDeque<WatchId>,
    /// Creation acks, cancellations: delivered before any watcher's turn.
    control: VecDeque<WatchResponse>,
    /// Acks of client cancels in `control` ([`holds_slot`]); each still holds a slot of
    /// `watches_per_stream_max`.
    cancels_pending: usize,
    next_watch_id: WatchId,
    /// A watcher in the middle of a fragmented revision; it keeps the stream until done.
    fragmenting: Option<WatchId>,
    /// Progress requests not answered yet: each gets its own response, as in etcd.
    progress_requests: usize,
    /// Watches canceled because their start revision was compacted. As in etcd, the id stays
    /// taken (a create with it is a duplicate, an automatic id skips it) until the client
    /// cancels it, which is acknowledged. Each holds a slot of `watches_per_stream_max`.
    compacted: BTreeSet<WatchId>,
}

impl Stream {
    fn new() -> Self {
        Self {
            watchers: BTreeMap::new(),
            rotation: VecDeque::new(),
            control: VecDeque::new(),
            cancels_pending: 0,
            next_watch_id: 0,
            fragmenting: None,
            progress_requests: 0,
            compacted: BTreeSet::new(),
        }
    }

    fn slots_used(&self) -> usize {
        self.watchers.len() + self.cancels_pending + self.compacted.len()
    }

    fn id_taken(&self, watch_id: WatchId) -> bool {
        self.watchers.contains_key(&watch_id) || self.compacted.contains(&watch_id)
    }

    fn push_control(&mut self, response: WatchResponse) {
        if holds_slot(&response) {
            self.cancels_pending += 1;
        }
        self.control.push_back(response);
    }

    fn forget(&mut self, watch_id: WatchId) -> Option<Watcher> {
        let watcher = self.watchers.remove(&watch_id)?;
        self.rotation.retain(|id| *id != watch_id);
        if self.fragmenting == Some(watch_id) {
            self.fragmenting = None;
        }
        Some(watcher)
    }

    fn all_idle_and_synced(&self) -> bool {
        self.control.is_empty()
            && self
                .watchers
                .values()
                .all(|watcher| watcher.synced && watcher.is_idle())
    }
}

/// The work left in one `poll`.
struct PollBudget {
    responses: Vec<WatchResponse>,
    bytes_left: usize,
    reads_left: usize,
}

impl PollBudget {
    fn exhausted(&self) -> bool {
        self.bytes_left == 0
    }

    fn push(&mut self, response: WatchResponse) {
        self.bytes_left = self.bytes_left.saturating_sub(response_bytes(&response));
        self.responses.push(response);
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct WatchHub {
    limits: WatchLimits,
    revision: Revision,
    streams: BTreeMap<StreamId, Stream>,
    next_stream_id: u64,
    index: SyncedIndex,
    /// When the next progress round runs; `None` until the first call to `progress`.
    next_progress_round_ms: Option<u64>,
    /// Streams with something new to send since the last `take_woken`.
    woken: BTreeSet<StreamId>,
}

impl WatchHub {
    /// A hub whose store is at `current_revision` (the server passes the store's revision when
    /// it opens it; history up to it is read through [`History`], later revisions arrive through
    /// [`WatchHub::on_apply`]).
    ///
    /// # Panics
    /// When `limits` fail [`WatchLimits::validate`]; the server validates its configuration first.
    pub fn new(limits: WatchLimits, current_revision: Revision) -> Self {
        if let Err(problem) = limits.validate() {
            panic!("invalid watch limits: {problem}");
        }
        Self {
            limits,
            revision: current_revision,
            streams: BTreeMap::new(),
            next_stream_id: 1,
            index: SyncedIndex::default(),
            next_progress_round_ms: None,
            woken: BTreeSet::new(),
        }
    }

    pub fn limits(&self) -> &WatchLimits {
        &self.limits
    }

    /// The last revision passed to `on_apply` or `restore`.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Live watches on the stream (canceled ones waiting for their response not included).
    pub fn watch_count(&self, stream: StreamId) -> Result<usize, WatchError> {
        Ok(self.stream(stream)?.watchers.len())
    }

    /// Whether the watch is in the index and follows new revisions live.
    pub fn is_synced(&self, stream: StreamId, watch_id: WatchId) -> Result<bool, WatchError> {
        let watcher = self.stream(stream)?.watchers.get(&watch_id);
        watcher
            .map(|watcher| watcher.synced)
            .ok_or(WatchError::UnknownWatch { stream, watch_id })
    }

    /// Events and bytes the watch holds in its buffer.
    pub fn buffered(
        &self,
        stream: StreamId,
        watch_id: WatchId,
    ) -> Result<(usize, usize), WatchError> {
        let watcher = self.stream(stream)?.watchers.get(&watch_id);
        watcher
            .map(|watcher| (watcher.buffered_events(), watcher.buffered_bytes()))
            .ok_or(WatchError::UnknownWatch { stream, watch_id })
    }

    /// Whether a `poll` of the stream has anything to do: responses to hand out or history to
    /// read. A poll can return nothing while this is true (its reads found only events the
    /// watchers filter out), so the server polls while this holds.
    pub fn has_pending(&self, stream_id: StreamId) -> Result<bool, WatchError> {
        let stream = self.stream(stream_id)?;
        let watcher_pending = |watcher: &Watcher| {
            !watcher.synced || watcher.buffered_events() > 0 || watcher.progress_due
        };
        Ok(!stream.control.is_empty()
            || stream.watchers.values().any(watcher_pending)
            || stream.progress_requests > 0 && stream.all_idle_and_synced())
    }

    /// The streams that got something to send since the last call (events, acks, cancels,
    /// progress), in id order, so the server wakes only those.
    pub fn take_woken(&mut self) -> Vec<StreamId> {
        let woken: Vec<StreamId> = std::mem::take(&mut self.woken).into_iter().collect();
        woken
            .into_iter()
            .filter(|stream| self.streams.contains_key(stream))
            .collect()
    }

    fn stream(&self, stream: StreamId) -> Result<&Stream, WatchError> {
        self.streams
            .get(&stream)
            .ok_or(WatchError::UnknownStream(stream))
    }

    pub fn open_stream(&mut self) -> Result<StreamId, WatchError> {
        if self.streams.len() >= self.limits.streams_max {
            return Err(WatchError::TooManyStreams {
                limit: self.limits.streams_max,
            });
        }
        let id = StreamId(self.next_stream_id);
        self.next_stream_id += 1;
        self.streams.insert(id, Stream::new());
        Ok(id)
    }

    /// Drops the stream and every watch on it, with nothing more to deliver.
    pub fn close_stream(&mut self, stream_id: StreamId) -> Result<(), WatchError> {
        let stream = self
            .streams
            .remove(&stream_id)
            .ok_or(WatchError::UnknownStream(stream_id))?;
        for watcher in stream.watchers.values().filter(|watcher| watcher.synced) {
            self.index.remove((stream_id, watcher.id), &watcher.range);
        }
        Ok(())
    }

    /// Creates a watch. Its creation ack is the next response for it; a start revision that has
    /// been compacted gets the ack and then a cancel with `compact_revision` (as etcd does).
    pub fn create_watch(
        &mut self,
        stream_id: StreamId,
        create: WatchCreate,
        history: &dyn History,
    ) -> Result<WatchId, WatchError> {
        validate_range(&create.range)?;
        let limit = self.limits.watches_per_stream_max;
        let stream = self
            .streams
            .get_mut(&stream_id)
            .ok_or(WatchError::UnknownStream(stream_id))?;
        if stream.slots_used() >= limit {
            return Err(WatchError::TooManyWatches {
                stream: stream_id,
                limit,
            });
        }
        let watch_id = if create.watch_id == 0 {
            while stream.id_taken(stream.next_watch_id) {
                stream.next_watch_id += 1;
            }
            stream.next_watch_id += 1;
            stream.next_watch_id - 1
        } else if stream.id_taken(create.watch_id) {
            return Err(WatchError::DuplicateWatchId {
                stream: stream_id,
                watch_id: create.watch_id,
            });
        } else {
            create.watch_id
        };
        let header_revision = self.revision;
        self.woken.insert(stream_id);
        stream.control.push_back(WatchResponse {
            watch_id,
            created: true,
            header_revision,
            ..WatchResponse::default()
        });
        // A negative start revision means nothing, but etcd answers it, so we answer as etcd
        // 3.4 does: it is below its compacted revision (-1 before any compaction, see
        // `History::compaction_floor`) and treated as compacted, except -1 before any
        // compaction, which is "from the next revision".
        let compacted_revision = if create.start_revision < 0 {
            history.compaction_floor()
        } else {
            history.compacted_revision()
        };
        if create.start_revision != 0 && create.start_revision < compacted_revision {
            stream.compacted.insert(watch_id);
            stream.push_control(compacted_response(watch_id, compacted_revision));
            return Ok(watch_id);
        }
        let next_revision = if create.start_revision <= 0 {
            self.revision + 1
        } else {
            create.start_revision
        };
        let mut watcher = Watcher::new(watch_id, &create, next_revision);
        if next_revision > self.revision {
            watcher.synced = true;
            self.index.insert((stream_id, watch_id), &watcher.range);
        }
        stream.watchers.insert(watch_id, watcher);
        stream.rotation.push_back(watch_id);
        Ok(watch_id)
    }

    /// Cancels a watch at the client's request; its last response says `canceled`.
    pub fn cancel(&mut self, stream_id: StreamId, watch_id: WatchId) -> Result<(), WatchError> {
        let stream = self
            .streams
            .get_mut(&stream_id)
            .ok_or(WatchError::UnknownStream(stream_id))?;
        match stream.forget(watch_id) {
            Some(watcher) if watcher.synced => {
                self.index.remove((stream_id, watch_id), &watcher.range);
            }
            Some(_) => {}
            None if stream.compacted.remove(&watch_id) => {}
            None => {
                return Err(WatchError::UnknownWatch {
                    stream: stream_id,
                    watch_id,
                })
            }
        }
        let header_revision = self.revision;
        self.woken.insert(stream_id);
        stream.push_control(WatchResponse {
            watch_id,
            canceled: true,
            header_revision,
            ..WatchResponse::default()
        });
        Ok(())
    }

    /// Asks for a stream-wide progress response (etcd's `RequestProgress`): one response with
    /// watch id [`STREAM_PROGRESS_WATCH_ID`] and the current revision, delivered by the first
    /// poll after which every watch of the stream is synced with nothing left to send. Each
    /// request gets its own response (two requests, two responses, as etcd answers).
    pub fn request_progress(&mut self, stream_id: StreamId) -> Result<(), WatchError> {
        let stream = self
            .streams
            .get_mut(&stream_id)
            .ok_or(WatchError::UnknownStream(stream_id))?;
        stream.progress_requests += 1;
        self.woken.insert(stream_id);
        Ok(())
    }

    /// Runs a progress round once every `progress_interval_ms`: each `progress_notify` watch that
    /// sent nothing since the previous round, is synced and has nothing buffered owes its client
    /// an empty response with the current revision, delivered at its next turn.
    pub fn progress(&mut self, now_ms: u64) {
        let due = *self
            .next_progress_round_ms
            .get_or_insert(now_ms + self.limits.progress_interval_ms);
        if now_ms < due {
            return;
        }
        self.next_progress_round_ms = Some(now_ms + self.limits.progress_interval_ms);
        for (stream_id, stream) in &mut self.streams {
            for watcher in stream.watchers.values_mut() {
                if watcher.progress_notify
                    && !watcher.active_since_progress_round
                    && watcher.synced
                    && watcher.is_idle()
                {
                    watcher.progress_due = true;
                    self.woken.insert(*stream_id);
                }
                watcher.active_since_progress_round = false;
            }
        }
    }

    /// Whether any watcher asked for `prev_kv`: when none did, the store may apply without
    /// reading each changed key's previous value (`MvccStore::apply_batch_with`).
    pub fn wants_prev_kv(&self) -> bool {
        self.streams
            .values()
            .any(|stream| stream.watchers.values().any(|w| w.wants_prev_kv()))
    }

    /// The store applied `revision` with these events (each with its `prev_kv`). Buffers them
    /// for the synced watchers they match; never blocks, never reads history.
    ///
    /// # Panics
    /// When revisions do not increase or an event belongs to another revision: the apply loop
    /// is broken, and delivering would break the watch contract.
    pub fn on_apply(&mut self, revision: Revision, events: &[Event]) {
        assert!(
            revision > self.revision,
            "on_apply at revision {revision} after revision {}",
            self.revision
        );
        self.revision = revision;
        let mut matches: Vec<(WatcherKey, usize)> = Vec::new();
        let mut found = Vec::new();
        for (position, event) in events.iter().enumerate() {
            assert_eq!(
                event.kv.mod_revision, revision,
                "an event of revision {revision} has another mod revision"
            );
            found.clear();
            self.index.matches(&event.kv.key, &mut found);
            matches.extend(found.iter().map(|watcher| (*watcher, position)));
        }
        matches.sort_unstable();
        let limits = &self.limits;
        for group in matches.chunk_by(|a, b| a.0 == b.0) {
            let (stream_id, watch_id) = group[0].0;
            let watcher = self
                .streams
                .get_mut(&stream_id)
                .and_then(|stream| stream.watchers.get_mut(&watch_id))
                .expect("every indexed watcher exists");
            let offered = group.iter().map(|(_, position)| &events[*position]);
            match watcher.offer_live(
                revision,
                offered,
                limits.events_buffered_max,
                limits.buffered_bytes_max,
            ) {
                Offer::Ignored => {}
                Offer::Buffered => {
                    self.woken.insert(stream_id);
                }
                Offer::Overflowed => {
                    self.index.remove((stream_id, watch_id), &watcher.range);
                    self.woken.insert(stream_id);
                }
            }
        }
    }

    /// The store jumped to `revision` without `on_apply` for the revisions between (a snapshot
    /// was installed). Every watcher catches up from history, or learns it was compacted.
    pub fn restore(&mut self, revision: Revision) {
        assert!(
            revision >= self.revision,
            "restore to revision {revision} behind revision {}",
            self.revision
        );
        let previous_revision = self.revision;
        self.revision = revision;
        self.woken.extend(self.streams.keys().copied());
        for (stream_id, stream) in &mut self.streams {
            for watcher in stream
                .watchers
                .values_mut()
                .filter(|watcher| watcher.synced)
            {
                self.index.remove((*stream_id, watcher.id), &watcher.range);
                watcher.synced = false;
                // A synced watcher has everything up to the previous revision (its own position
                // only moves when an event matches); it replays what came after.
                watcher.next_revision = watcher.next_revision.max(previous_revision + 1);
            }
        }
    }

    /// The next responses for a stream, about `budget_bytes` of them (the last one may overshoot
    /// by up to one response). Call again while it returns responses; an empty result means the
    /// stream has nothing to send until the next `on_apply`, `progress` or request.
    pub fn poll(
        &mut self,
        stream_id: StreamId,
        history: &dyn History,
        budget_bytes: usize,
    ) -> Result<Vec<WatchResponse>, WatchError> {
        let Self {
            limits,
            revision,
            streams,
            index,
            ..
        } = self;
        let stream = streams
            .get_mut(&stream_id)
            .ok_or(WatchError::UnknownStream(stream_id))?;
        let mut budget = PollBudget {
            responses: Vec::new(),
            bytes_left: budget_bytes,
            reads_left: limits.catch_up_reads_per_poll_max,
        };
        let mut turn = Turn {
            stream_id,
            stream,
            index,
            limits,
            revision: *revision,
            history,
        };

        if !turn.finish_fragments(&mut budget) {
            return Ok(budget.responses);
        }
        while !budget.exhausted() {
            let Some(response) = turn.stream.control.pop_front() else {
                break;
            };
            if holds_slot(&response) {
                turn.stream.cancels_pending -= 1;
            }
            budget.push(response);
        }
        // Round-robin until the budget is spent or a whole round changed nothing.
        let mut idle_turns = 0;
        while !budget.exhausted() && idle_turns < turn.stream.rotation.len() {
            let Some(watch_id) = turn.stream.rotation.pop_front() else {
                break;
            };
            turn.stream.rotation.push_back(watch_id);
            if turn.play(watch_id, &mut budget) {
                idle_turns = 0;
            } else {
                idle_turns += 1;
            }
            if !turn.finish_fragments(&mut budget) {
                return Ok(budget.responses);
            }
        }
        if turn.stream.all_idle_and_synced() {
            while turn.stream.progress_requests > 0 && !budget.exhausted() {
                turn.stream.progress_requests -= 1;
                budget.push(WatchResponse {
                    watch_id: STREAM_PROGRESS_WATCH_ID,
                    header_revision: turn.revision,
                    ..WatchResponse::default()
                });
            }
        }
        Ok(budget.responses)
    }

    /// Checks the hub's internal invariants; panics with a sentence when one is broken. Tests and
    /// the simulator call it after every step.
    pub fn check_invariants(&self) {
        let mut synced = 0;
        for (stream_id, stream) in &self.streams {
            let mut turns: Vec<WatchId> = stream.rotation.iter().copied().collect();
            turns.sort_unstable();
            let ids: Vec<WatchId> = stream.watchers.keys().copied().collect();
            assert_eq!(
                turns, ids,
                "stream {stream_id}: the round-robin holds exactly the live watches"
            );
            let canceled = stream
                .control
                .iter()
                .filter(|response| holds_slot(response))
                .count();
            assert_eq!(
                canceled, stream.cancels_pending,
                "stream {stream_id}: pending cancels are counted"
            );
            assert!(
                stream.slots_used() <= self.limits.watches_per_stream_max,
                "stream {stream_id}: more watches than watches_per_stream_max"
            );
            if let Some(watch_id) = stream.fragmenting {
                let watcher = stream.watchers.get(&watch_id);
                assert!(
                    watcher.is_some_and(Watcher::is_fragmenting),
                    "stream {stream_id}: the fragmenting watch {watch_id} is mid-revision"
                );
            }
            for watcher in stream.watchers.values() {
                let indexed = self
                    .index
                    .contains((*stream_id, watcher.id), &watcher.range);
                assert_eq!(
                    indexed, watcher.synced,
                    "watch {}: indexed exactly when synced",
                    watcher.id
                );
                synced += usize::from(watcher.synced);
                if watcher.is_fragmenting() {
                    assert_eq!(
                        stream.fragmenting,
                        Some(watcher.id),
                        "watch {}: a fragmenting watch holds its stream",
                        watcher.id
                    );
                }
            }
        }
        assert_eq!(
            synced,
            self.index.len(),
            "the index holds only live synced watchers"
        );
        assert!(
            self.streams.len() <= self.limits.streams_max,
            "more streams than streams_max"
        );
    }
}

fn validate_range(range: &KeyRange) -> Result<(), WatchError> {
    let invalid = |reason| {
        Err(WatchError::InvalidRange {
            range: range.clone(),
            reason,
        })
    };
    if range.key.is_empty() && range.range_end.is_empty() {
        return invalid("watch key is empty");
    }
    if !range.range_end.is_empty() && &range.range_end[..] != b"\0" && range.range_end <= range.key
    {
        return invalid("mvcc: watcher range is empty");
    }
    Ok(())
}

/// Whether a control response is the ack of a client's cancel, which holds its watch's slot
/// until delivered. A cancel for compaction does not: its id holds the slot (`Stream::compacted`).
fn holds_slot(response: &WatchResponse) -> bool {
    response.canceled && response.compact_revision == 0
}

/// The end of a watch whose next revision was compacted away, as etcd 3.4 sends it: canceled,
/// with the compacted revision, no reason, and a header at revision 0. (etcd marks it canceled
/// when the compacted revision is not 0, which only a negative start revision can meet.)
fn compacted_response(watch_id: WatchId, compact_revision: Revision) -> WatchResponse {
    WatchResponse {
        watch_id,
        canceled: compact_revision != 0,
        compact_revision,
        header_revision: 0,
        ..WatchResponse::default()
    }
}

/// One stream's turn-taking during a `poll`.
struct Turn<'a> {
    stream_id: StreamId,
    stream: &'a mut Stream,
    index: &'a mut SyncedIndex,
    limits: &'a WatchLimits,
    revision: Revision,
    history: &'a dyn History,
}

impl Turn<'_> {
    /// Serves the fragmenting watcher until its revision is complete. False when the budget ran
    /// out first (or it could not progress), so nothing else may be sent on this stream yet.
    fn finish_fragments(&mut self, budget: &mut PollBudget) -> bool {
        while let Some(watch_id) = self.stream.fragmenting {
            if budget.exhausted() || !self.play(watch_id, budget) {
                return false;
            }
        }
        true
    }

    /// One watcher's turn: catch up from history if it needs to, then send at most one response.
    /// True when it sent something or moved forward.
    fn play(&mut self, watch_id: WatchId, budget: &mut PollBudget) -> bool {
        let key = (self.stream_id, watch_id);
        let watcher = self
            .stream
            .watchers
            .get_mut(&watch_id)
            .expect("a watch in the rotation exists");
        let mut progressed = false;
        if !watcher.synced && watcher.buffered_events() == 0 {
            if watcher.next_revision <= self.revision && budget.reads_left > 0 {
                budget.reads_left -= 1;
                progressed = true;
                let read =
                    watcher.catch_up(self.history, self.revision, self.limits.catch_up_events_max);
                if let Err(error) = read {
                    let response = match error {
                        HistoryError::Compacted { compact_revision } => {
                            self.stream.compacted.insert(watch_id);
                            compacted_response(watch_id, compact_revision)
                        }
                        other => WatchResponse {
                            watch_id,
                            canceled: true,
                            cancel_reason: other.to_string(),
                            header_revision: self.revision,
                            ..WatchResponse::default()
                        },
                    };
                    self.stream.forget(watch_id);
                    budget.push(response);
                    return true;
                }
            }
            if watcher.next_revision > self.revision {
                watcher.synced = true;
                self.index.insert(key, &watcher.range);
            }
        }
        if let Some(response) = watcher.next_response(self.limits.response_bytes_max, self.revision)
        {
            self.stream.fragmenting = response.fragment.then_some(watch_id);
            budget.push(response);
            return true;
        }
        if watcher.progress_due && watcher.synced {
            // Not activity: an idle watch keeps getting one per interval, as in etcd.
            watcher.progress_due = false;
            budget.push(WatchResponse {
                watch_id,
                header_revision: self.revision,
                ..WatchResponse::default()
            });
            return true;
        }
        progressed
    }
}
