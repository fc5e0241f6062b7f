//! One watcher: what it asked for, where it is in the history, and its bounded event buffer.
//!
//! A watcher's position is `next_revision`, the lowest revision it has neither buffered nor
//! delivered. Events of a revision reach the buffer exactly once, from one of two sources, and
//! both only take revisions `>= next_revision` and then move it past them:
//!
//! - live, from `on_apply`, while the watcher is **synced** (in the index);
//! - from `History`, in bounded chunks during `poll`, while it is **unsynced** (not in the index).
//!
//! That single rule is why replay and live delivery never overlap or leave a gap.

use super::{event_bytes, WatchCreate, WatchId, WatchResponse, RESPONSE_OVERHEAD_BYTES};
use crate::mvcc::types::{Event, EventKind, History, HistoryError, KeyRange, Revision};
use std::collections::VecDeque;

/// What happened to a revision offered live to a synced watcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offer {
    /// Nothing in it was for this watcher (filtered, or before its start revision).
    Ignored,
    Buffered,
    /// The buffer would have exceeded its limit: it was dropped and the watcher is now unsynced.
    Overflowed,
}

#[derive(Debug)]
pub(crate) struct Watcher {
    pub(crate) id: WatchId,
    pub(crate) range: KeyRange,
    prev_kv: bool,
    filter_no_put: bool,
    filter_no_delete: bool,
    pub(crate) progress_notify: bool,
    fragment: bool,
    pub(crate) next_revision: Revision,
    pub(crate) synced: bool,
    buffer: VecDeque<Event>,
    buffered_bytes: usize,
    /// While a revision goes out in fragments: that revision and how many of its events (after
    /// this watcher's filters) have been delivered. Survives a buffer drop, so the replay skips
    /// what the client already has.
    partial: Option<(Revision, usize)>,
    /// A response went out since the last progress round.
    pub(crate) active_since_progress_round: bool,
    /// The last progress round found this watcher idle; it owes the client a progress response.
    pub(crate) progress_due: bool,
}

fn revision_of(event: &Event) -> Revision {
    event.kv.mod_revision
}

impl Watcher {
    /// Whether the client asked for each event's previous key-value.
    pub(crate) fn wants_prev_kv(&self) -> bool {
        self.prev_kv
    }

    pub(crate) fn new(id: WatchId, create: &WatchCreate, next_revision: Revision) -> Self {
        Self {
            id,
            range: create.range.clone(),
            prev_kv: create.prev_kv,
            filter_no_put: create.filter_no_put,
            filter_no_delete: create.filter_no_delete,
            progress_notify: create.progress_notify,
            fragment: create.fragment,
            next_revision,
            synced: false,
            buffer: VecDeque::new(),
            buffered_bytes: 0,
            partial: None,
            active_since_progress_round: true,
            progress_due: false,
        }
    }

    pub(crate) fn buffered_events(&self) -> usize {
        self.buffer.len()
    }

    pub(crate) fn buffered_bytes(&self) -> usize {
        self.buffered_bytes
    }

    /// Nothing buffered and no revision half delivered.
    pub(crate) fn is_idle(&self) -> bool {
        self.buffer.is_empty() && self.partial.is_none()
    }

    pub(crate) fn is_fragmenting(&self) -> bool {
        self.partial.is_some()
    }

    /// The event as this watcher delivers it, or `None` when its filters drop it.
    fn shape(&self, event: &Event) -> Option<Event> {
        let dropped = match event.kind {
            EventKind::Put => self.filter_no_put,
            EventKind::Delete => self.filter_no_delete,
        };
        if dropped {
            return None;
        }
        let mut event = event.clone();
        if !self.prev_kv {
            event.prev_kv = None;
        }
        Some(event)
    }

    fn push(&mut self, event: Event) {
        self.buffered_bytes += event_bytes(&event);
        self.buffer.push_back(event);
    }

    fn pop(&mut self) -> Option<Event> {
        let event = self.buffer.pop_front()?;
        self.buffered_bytes -= event_bytes(&event);
        Some(event)
    }

    /// Offers the events of `revision` that fell in this (synced) watcher's range.
    pub(crate) fn offer_live<'a>(
        &mut self,
        revision: Revision,
        events: impl Iterator<Item = &'a Event>,
        events_buffered_max: usize,
        buffered_bytes_max: usize,
    ) -> Offer {
        assert!(
            self.synced,
            "watch {}: live events offered to an unsynced watcher",
            self.id
        );
        if revision < self.next_revision {
            // Created with a start revision in the future, or already replayed from history.
            return Offer::Ignored;
        }
        let shaped: Vec<Event> = events.filter_map(|event| self.shape(event)).collect();
        let bytes: usize = shaped.iter().map(event_bytes).sum();
        let fits = self.buffer.len() + shaped.len() <= events_buffered_max
            && self.buffered_bytes + bytes <= buffered_bytes_max;
        if !fits {
            // Resume from the oldest revision the client does not have yet; `partial` still says
            // how much of it was delivered.
            self.next_revision = self.buffer.front().map_or(revision, revision_of);
            self.buffer.clear();
            self.buffered_bytes = 0;
            self.synced = false;
            return Offer::Overflowed;
        }
        let offer = if shaped.is_empty() {
            Offer::Ignored
        } else {
            Offer::Buffered
        };
        for event in shaped {
            self.push(event);
        }
        self.next_revision = revision + 1;
        offer
    }

    /// Reads the next chunk of history into the (empty) buffer of an unsynced watcher: events in
    /// `[next_revision, through_revision]`, at most `chunk_events` of them except that one
    /// revision is never split (a revision larger than a chunk is read alone and whole). The
    /// watcher has caught up when `next_revision` passes `through_revision` (an answer that is
    /// short of the chunk ends at its last revision, so that may take a read that finds nothing). Returns how many events were read.
    pub(crate) fn catch_up(
        &mut self,
        history: &dyn History,
        through_revision: Revision,
        chunk_events: usize,
    ) -> Result<usize, HistoryError> {
        assert!(
            !self.synced && self.buffer.is_empty(),
            "watch {}: catch-up needs an unsynced, empty watcher",
            self.id
        );
        assert!(
            chunk_events > 0,
            "a catch-up chunk holds at least one event"
        );
        let start = self.next_revision;
        let mut events = history.events(
            &self.range,
            start,
            through_revision,
            chunk_events,
            self.prev_kv,
        )?;
        // `History` may stop early without saying so; only an empty answer proves the end.
        let next_revision = match (events.first(), events.last()) {
            (Some(first), Some(last)) if events.len() >= chunk_events => {
                // A full chunk: its last revision may be cut.
                let (first, last) = (revision_of(first), revision_of(last));
                if first != last {
                    events.retain(|event| revision_of(event) < last);
                    last
                } else {
                    events = history.events(&self.range, first, first, usize::MAX, self.prev_kv)?;
                    first + 1
                }
            }
            (_, Some(last)) => revision_of(last) + 1,
            _ => through_revision + 1,
        };
        let read = events.len();
        let mut skip =
            match self.partial {
                Some((revision, delivered)) => {
                    assert!(
                    events.first().is_some_and(|event| revision_of(event) == revision),
                    "watch {}: replay of half-delivered revision {revision} did not start with it",
                    self.id
                );
                    delivered
                }
                None => 0,
            };
        for event in &events {
            let revision = revision_of(event);
            assert!(
                (start..=through_revision).contains(&revision) && self.range.contains(&event.kv.key),
                "watch {}: history returned an event at revision {revision} outside [{start}, {through_revision}] or outside {}",
                self.id,
                self.range
            );
            let Some(shaped) = self.shape(event) else {
                continue;
            };
            if skip > 0 {
                skip -= 1;
                continue;
            }
            self.push(shaped);
        }
        self.next_revision = next_revision;
        Ok(read)
    }

    /// The next response from the buffer, at most `response_bytes_max` unless one revision is
    /// larger and this watcher did not ask for fragments (then that revision goes out whole).
    pub(crate) fn next_response(
        &mut self,
        response_bytes_max: usize,
        header_revision: Revision,
    ) -> Option<WatchResponse> {
        let head = revision_of(self.buffer.front()?);
        let head_bytes: usize = self
            .buffer
            .iter()
            .take_while(|event| revision_of(event) == head)
            .map(event_bytes)
            .sum();
        let budget = response_bytes_max.saturating_sub(RESPONSE_OVERHEAD_BYTES);
        let mut events = Vec::new();
        let mut bytes = 0;
        let mut fragment = false;
        if self.fragment && (self.partial.is_some() || head_bytes > budget) {
            while let Some(event) = self
                .buffer
                .front()
                .filter(|event| revision_of(event) == head)
            {
                let event_size = event_bytes(event);
                if !events.is_empty() && bytes + event_size > budget {
                    break;
                }
                bytes += event_size;
                events.extend(self.pop());
            }
            let delivered_before = self.partial.map_or(0, |(revision, delivered)| {
                assert_eq!(
                    revision, head,
                    "watch {}: fragments of two revisions interleaved",
                    self.id
                );
                delivered
            });
            fragment = self
                .buffer
                .front()
                .is_some_and(|event| revision_of(event) == head);
            self.partial = fragment.then_some((head, delivered_before + events.len()));
        } else {
            // Whole revisions while they fit; always at least the first.
            while let Some(revision) = self.buffer.front().map(revision_of) {
                let revision_bytes: usize = self
                    .buffer
                    .iter()
                    .take_while(|event| revision_of(event) == revision)
                    .map(event_bytes)
                    .sum();
                if !events.is_empty() && bytes + revision_bytes > budget {
                    break;
                }
                bytes += revision_bytes;
                while self
                    .buffer
                    .front()
                    .is_some_and(|event| revision_of(event) == revision)
                {
                    events.extend(self.pop());
                }
            }
        }
        self.active_since_progress_round = true;
        self.progress_due = false;
        Some(WatchResponse {
            watch_id: self.id,
            header_revision,
            events,
            fragment,
            ..WatchResponse::default()
        })
    }
}
