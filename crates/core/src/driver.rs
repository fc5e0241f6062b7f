//! The one `Ready` driver: the order in which a batch of a replica's outputs is sent, persisted,
//! applied and answered (the contract in [`crate::ready`]), written once for every host. The
//! server and the simulator are hosts: they give the driver their replica, their storage (the
//! [`crate::storage`] traits) and their state machine, and the driver decides nothing else.
//!
//! A batch is handled in two halves so that a host may make its write durable later than it
//! issued it (the simulator's disk has a latency; the server's WAL syncs in place):
//! [`begin`] sends, writes and, when the replica allows it, applies early; it returns the
//! [`InFlight`] rest, which [`complete`] finishes after syncing the log. [`drive`] does both for
//! every batch the replica has, for a host whose syncs finish when they return.

use crate::storage::{LogStore, SnapshotStore};
use crate::{Entry, ProtocolMessage, ReadState, Ready, Replica, Snapshot};

/// What a driver needs from whoever runs a replica. Every method is one effect of the contract;
/// the driver calls them in the contract's order.
pub trait ReadyHost {
    type Replica: Replica;
    type Log: LogStore;
    type Snapshots: SnapshotStore;
    /// The host's error, which every storage error converts into. A failed batch is not
    /// finished: the host stops (a server cannot acknowledge what it failed to write).
    type Error: From<<Self::Log as LogStore>::Error>
        + From<<Self::Snapshots as SnapshotStore>::Error>;

    fn replica(&mut self) -> &mut Self::Replica;
    fn log(&mut self) -> &mut Self::Log;
    fn snapshots(&mut self) -> &mut Self::Snapshots;

    /// Hand one message to the network.
    fn send(&mut self, message: <Self::Replica as Replica>::Message);

    /// `entries` have just been appended to the log (not yet durable). For hosts that watch
    /// what is written; nothing by default.
    fn written(&mut self, _entries: &[Entry]) {}

    /// Make the log durable. Hosts that time their syncs wrap [`LogStore::sync`] here.
    fn sync_log(&mut self) -> Result<(), Self::Error> {
        self.log().sync().map_err(Self::Error::from)
    }

    /// Replace the state machine with a snapshot's image (saved and durable already).
    fn restore(&mut self, snapshot: &Snapshot) -> Result<(), Self::Error>;

    /// Apply committed entries, in order, and answer whoever waits on them.
    fn apply(&mut self, entries: &[Entry]) -> Result<(), Self::Error>;

    /// Called after every apply (maybe of nothing): serve each waiting read whose index the
    /// state machine has reached, `confirmed` ones included (they wait until it does), and
    /// refuse the `dropped` ones, which will never be confirmed here.
    fn reads(&mut self, confirmed: &[ReadState], dropped: &[u64]);

    /// The replica asked for its log to be compacted ([`Ready::compaction_wanted`]).
    fn compaction_wanted(&mut self) -> Result<(), Self::Error>;

    /// The replica asked for an image of the state machine ([`Ready::snapshot_wanted`]).
    fn snapshot_wanted(&mut self) -> Result<(), Self::Error>;
}

/// The half of a batch that waits for the log to be durable: see [`complete`].
#[derive(Debug)]
#[must_use = "a batch in flight must be completed, or the replica never advances"]
pub struct InFlight<M> {
    must_sync: bool,
    messages_after_persist: Vec<M>,
    restore: Option<Snapshot>,
    /// Applied already, in [`begin`].
    applied_early: bool,
    committed_entries: Vec<Entry>,
    read_states: Vec<ReadState>,
    dropped_reads: Vec<u64>,
    compaction_wanted: bool,
    snapshot_wanted: bool,
}

impl<M> InFlight<M> {
    /// Whether [`complete`] syncs the log: the batch wrote something that must be durable
    /// before the rest may happen. A host whose syncs take time completes such a batch later.
    pub fn must_sync(&self) -> bool {
        self.must_sync
    }
}

/// The first half of the contract for `ready`: messages sent, the snapshot saved and installed,
/// entries and hard state written (not synced), and, when the replica allows it
/// ([`Ready::may_apply_before_persist`]), committed entries applied and reads answered.
pub fn begin<H: ReadyHost>(
    host: &mut H,
    mut ready: Ready<<H::Replica as Replica>::Message>,
) -> Result<InFlight<<H::Replica as Replica>::Message>, H::Error> {
    // A leader's committed entries are durable on a quorum that includes itself (its own
    // entries count towards a commit only once synced), so it may apply and answer before this
    // batch's write: its clients get their answers while the disk syncs, not after the next
    // batch's sync. A follower keeps the order: its acknowledgements, sent after the sync, are
    // what the leader's clients wait for.
    let apply_early = ready.may_apply_before_persist();
    // With no new entries and no message a client waits on (plain liveness probes), answer
    // first: every send costs the receiver's network stack on this thread, which clients need
    // not wait for. Appends and read rounds keep their place ahead of the apply.
    let answer_before_sending = apply_early
        && ready.entries.is_empty()
        && ready
            .messages
            .iter()
            .all(|message| !message.awaited_by_clients());
    if answer_before_sending {
        apply_and_read(
            host,
            &ready.committed_entries,
            &ready.read_states,
            &ready.dropped_reads,
        )?;
    }
    for message in ready.messages.drain(..) {
        host.send(message);
    }
    if let Some(snapshot) = &ready.snapshot {
        host.snapshots().save(snapshot)?;
        host.log().install_snapshot(snapshot.meta.last_included)?;
    }
    if !ready.entries.is_empty() || ready.hard_state.is_some() {
        host.log().append(&ready.entries, ready.hard_state)?;
        if !ready.entries.is_empty() {
            host.written(&ready.entries);
        }
    }
    if apply_early && !answer_before_sending {
        apply_and_read(
            host,
            &ready.committed_entries,
            &ready.read_states,
            &ready.dropped_reads,
        )?;
    }
    Ok(InFlight {
        must_sync: ready.must_persist(),
        messages_after_persist: ready.messages_after_persist,
        restore: ready.snapshot,
        applied_early: apply_early,
        committed_entries: ready.committed_entries,
        read_states: ready.read_states,
        dropped_reads: ready.dropped_reads,
        compaction_wanted: ready.compaction_wanted,
        snapshot_wanted: ready.snapshot_wanted,
    })
}

/// The second half: the log synced (if the batch needs it), then the messages that wait for it,
/// the state machine restored and applied (unless [`begin`] applied already), the replica
/// advanced, and its requests for compaction and an image passed on.
pub fn complete<H: ReadyHost>(
    host: &mut H,
    batch: InFlight<<H::Replica as Replica>::Message>,
) -> Result<(), H::Error> {
    if batch.must_sync {
        host.sync_log()?;
    }
    for message in batch.messages_after_persist {
        host.send(message);
    }
    if let Some(snapshot) = &batch.restore {
        assert!(
            !batch.applied_early,
            "a batch with a snapshot is never applied before it is persisted"
        );
        host.restore(snapshot)?;
    }
    if !batch.applied_early {
        apply_and_read(
            host,
            &batch.committed_entries,
            &batch.read_states,
            &batch.dropped_reads,
        )?;
    }
    host.replica().advance();
    if batch.compaction_wanted {
        host.compaction_wanted()?;
    }
    if batch.snapshot_wanted {
        host.snapshot_wanted()?;
    }
    Ok(())
}

/// Handles every batch the replica has, each synced in place: for hosts whose
/// [`LogStore::sync`] is durable when it returns.
pub fn drive<H: ReadyHost>(host: &mut H) -> Result<(), H::Error> {
    while host.replica().has_ready() {
        let ready = host.replica().ready();
        let batch = begin(host, ready)?;
        complete(host, batch)?;
    }
    Ok(())
}

fn apply_and_read<H: ReadyHost>(
    host: &mut H,
    committed_entries: &[Entry],
    read_states: &[ReadState],
    dropped_reads: &[u64],
) -> Result<(), H::Error> {
    if !committed_entries.is_empty() {
        host.apply(committed_entries)?;
    }
    host.reads(read_states, dropped_reads);
    Ok(())
}
