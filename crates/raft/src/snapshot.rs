//! Log compaction and snapshots (Raft §7), kept apart: the caller's state machine is durable on
//! its own, so compaction only needs the index it is durable through (`compact`); an image of
//! the state machine is built only when a follower's next entry was compacted away (as etcd
//! does), and sent to it in chunks (InstallSnapshot), one chunk in flight at a time.

use crate::message::MessageBody;
use crate::progress::ReplicationState;
use crate::raft::Raft;
use ballot_core::{LogIndex, LogPosition, NodeId, ReplicaError, Role, Snapshot, SnapshotMeta};
use bytes::Bytes;

/// A snapshot being received chunk by chunk.
#[derive(Debug)]
pub(crate) struct IncomingSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

impl Raft {
    /// The image held, if a follower installing it could continue from the log (it is not
    /// older than the compaction point).
    fn usable_image(&self) -> Option<&Snapshot> {
        let compacted = self.log.compacted().index;
        self.snapshot
            .as_ref()
            .filter(|image| image.meta.last_included.index >= compacted)
    }

    /// `to` needs entries the log no longer holds: send it the image, or ask the caller for one
    /// (the next attempt to replicate to `to` after it arrives sends it).
    pub(crate) fn start_snapshot(&mut self, to: NodeId) {
        let Some(snapshot) = self.usable_image() else {
            self.snapshot_wanted = true;
            return;
        };
        let last_included = snapshot.meta.last_included.index;
        if let Some(progress) = self.progress.get_mut(&to) {
            progress.become_snapshot(last_included);
        }
        self.send_snapshot_chunk(to);
    }

    pub(crate) fn send_snapshot_chunk(&mut self, to: NodeId) {
        let Some(snapshot) = self.usable_image().cloned() else {
            // A compaction since the transfer began dropped the image (`to` could not have
            // continued from it): ask for a newer one; it restarts the transfer when it comes.
            self.snapshot_wanted = true;
            return;
        };
        let Some(progress) = self.progress.get_mut(&to) else {
            return;
        };
        let ReplicationState::Snapshot {
            mut last_included,
            acked_bytes,
        } = progress.state
        else {
            return;
        };
        let mut offset = acked_bytes as usize;
        if last_included != snapshot.meta.last_included.index {
            // A newer snapshot replaced the one we were sending: start over with it.
            last_included = snapshot.meta.last_included.index;
            progress.become_snapshot(last_included);
            offset = 0;
        }
        let end = (offset + self.config.snapshot_chunk_bytes).min(snapshot.data.len());
        progress.waiting = true;
        let body = MessageBody::InstallSnapshot {
            meta: snapshot.meta,
            offset: offset as u64,
            data: snapshot.data.slice(offset.min(end)..end),
            done: end == snapshot.data.len(),
        };
        self.send(to, body);
    }

    pub(crate) fn handle_install_snapshot(
        &mut self,
        from: NodeId,
        meta: SnapshotMeta,
        offset: u64,
        data: Bytes,
        done: bool,
    ) {
        self.accept_leader(from);
        let last_included = meta.last_included;
        let reply = |received_bytes: u64, done: bool| MessageBody::InstallSnapshotResponse {
            last_included: last_included.index,
            received_bytes,
            done,
        };
        if last_included.index <= self.log.commit_index || self.log.matches(last_included) {
            // We already hold everything it covers; keeping our log loses nothing we acknowledged.
            self.incoming_snapshot = None;
            self.log.commit_to(last_included.index);
            self.send(from, reply(offset + data.len() as u64, true));
            return;
        }
        if offset == 0 {
            self.incoming_snapshot = Some(IncomingSnapshot {
                meta: meta.clone(),
                data: Vec::new(),
            });
        }
        let in_order = self
            .incoming_snapshot
            .as_ref()
            .is_some_and(|incoming| incoming.meta == meta && incoming.data.len() as u64 == offset);
        if !in_order {
            let received = match &self.incoming_snapshot {
                Some(incoming) if incoming.meta == meta => incoming.data.len() as u64,
                _ => 0,
            };
            self.send(from, reply(received, false));
            return;
        }
        let incoming = self.incoming_snapshot.as_mut().expect("checked in order");
        incoming.data.extend_from_slice(&data);
        let received = incoming.data.len() as u64;
        if !done {
            self.send(from, reply(received, false));
            return;
        }
        let incoming = self.incoming_snapshot.take().expect("checked in order");
        self.install_snapshot(Snapshot {
            meta: incoming.meta,
            data: Bytes::from(incoming.data),
        });
        self.send(from, reply(received, true));
    }

    fn install_snapshot(&mut self, snapshot: Snapshot) {
        self.log.install_snapshot(snapshot.meta.last_included);
        self.memberships.reset(snapshot.meta.membership.clone());
        self.compaction_index = snapshot.meta.last_included.index;
        self.compaction_requested_at = None;
        self.snapshot = Some(snapshot.clone());
        self.snapshot_to_install = Some(snapshot);
    }

    pub(crate) fn handle_install_snapshot_response(
        &mut self,
        from: NodeId,
        last_included: u64,
        received_bytes: u64,
        done: bool,
    ) {
        if self.role != Role::Leader {
            return;
        }
        let Some(progress) = self.progress.get_mut(&from) else {
            return;
        };
        progress.recent_active = true;
        let ReplicationState::Snapshot {
            last_included: sending,
            ..
        } = progress.state
        else {
            return;
        };
        if sending != last_included {
            return;
        }
        if done {
            progress.acknowledge(last_included);
            progress.become_probe();
            self.maybe_commit();
            self.send_append(from);
        } else {
            progress.state = ReplicationState::Snapshot {
                last_included,
                acked_bytes: received_bytes,
            };
            progress.waiting = false;
            self.send_snapshot_chunk(from);
        }
    }

    /// What a cut of the state machine at `index` records: the term and membership there,
    /// which the protocol, not the caller, knows for certain. `index` must be applied and
    /// still in the log (or its compaction point).
    fn meta_at(&self, index: LogIndex) -> Result<SnapshotMeta, ReplicaError> {
        let invalid = |reason: String| Err(ReplicaError::InvalidSnapshot { reason });
        if index > self.log.applied_index {
            return invalid(format!(
                "index {index} is beyond the applied index {}",
                self.log.applied_index
            ));
        }
        let Some(term) = self.log.term_at(index) else {
            return invalid(format!("index {index} is no longer in the log"));
        };
        Ok(SnapshotMeta {
            last_included: LogPosition::new(index, term),
            membership: self.memberships.at(index).clone(),
        })
    }

    /// The caller's state machine is durable through `index`: drop the log behind it, keeping a
    /// few trailing entries so slightly lagging followers still catch up from the log.
    pub(crate) fn compact_to_durable(
        &mut self,
        index: LogIndex,
    ) -> Result<Option<SnapshotMeta>, ReplicaError> {
        if index <= self.compaction_index || index <= self.log.compacted().index {
            // The caller's durable point has not moved past the last compaction: ask again one
            // threshold from now, not at once (that would hand out requests in a loop).
            self.compaction_requested_at = Some(self.log.applied_index);
            return Ok(None);
        }
        let meta = self.meta_at(index)?;
        self.compaction_index = index;
        self.compaction_requested_at = None;
        // Asleep, every follower held the whole log when the group fell asleep (it sleeps only
        // so), so none needs trailing entries: the log is given back whole.
        let trailing = if self.asleep {
            0
        } else {
            self.config.snapshot_trailing_entries
        };
        let compact_to = index.saturating_sub(trailing);
        if compact_to > self.log.compacted().index {
            self.log.compact_to(compact_to);
            self.memberships.compact_to(compact_to);
        }
        if self.usable_image().is_none() {
            self.snapshot = None; // no follower could continue from it
        }
        Ok(Some(meta))
    }

    /// The caller built the image a follower needed: keep it, and start sending it to every
    /// follower that was waiting for one.
    pub(crate) fn keep_image(
        &mut self,
        mut snapshot: Snapshot,
    ) -> Result<SnapshotMeta, ReplicaError> {
        let index = snapshot.meta.last_included.index;
        let current = self
            .snapshot
            .as_ref()
            .map_or(0, |s| s.meta.last_included.index);
        if index <= current {
            return Ok(snapshot.meta); // not newer than the one we have: nothing to do
        }
        let meta = self.meta_at(index)?;
        snapshot.meta = meta.clone();
        self.snapshot = Some(snapshot);
        if self.role == Role::Leader {
            let compacted = self.log.compacted().index;
            let waiting: Vec<NodeId> = self
                .progress
                .iter()
                .filter(|(&peer, progress)| {
                    let needs_image = match progress.state {
                        // Sending an image a compaction made useless (see send_snapshot_chunk).
                        ReplicationState::Snapshot { last_included, .. } => {
                            last_included < compacted
                        }
                        _ => progress.next_index <= compacted,
                    };
                    peer != self.id && needs_image
                })
                .map(|(&peer, _)| peer)
                .collect();
            for peer in waiting {
                if let Some(progress) = self.progress.get_mut(&peer) {
                    if matches!(progress.state, ReplicationState::Snapshot { .. }) {
                        progress.become_snapshot(index);
                    }
                }
                self.send_append(peer);
            }
        }
        Ok(meta)
    }
}
