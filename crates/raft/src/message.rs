//! Raft's messages (Raft §5, dissertation §3–§6, §9.6): what one node says to another.

use ballot_core::codec::DecodeError;
use ballot_core::{
    Entry, LogIndex, LogPosition, NodeId, Probe, ProtocolMessage, SnapshotMeta, Term, WireMessage,
};
use bytes::{Bytes, BytesMut};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    /// The sender's term; for a pre-vote request, the term the sender would campaign in.
    pub term: Term,
    pub body: MessageBody,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageBody {
    PreVote {
        last_log: LogPosition,
    },
    PreVoteResponse {
        granted: bool,
    },
    /// `leadership_transfer` lets the vote through a follower's leader lease (CheckQuorum), since
    /// the current leader asked for it (dissertation §3.10).
    RequestVote {
        last_log: LogPosition,
        leadership_transfer: bool,
    },
    RequestVoteResponse {
        granted: bool,
    },
    AppendEntries {
        prev_log: LogPosition,
        entries: Vec<Entry>,
        leader_commit: LogIndex,
    },
    AppendEntriesResponse(AppendResult),
    /// Keeps followers from campaigning, carries the commit index, and (with a non-zero
    /// `read_round`) confirms leadership for ReadIndex.
    Heartbeat {
        leader_commit: LogIndex,
        read_round: u64,
    },
    HeartbeatResponse {
        read_round: u64,
    },
    /// One chunk of a snapshot; `offset` is the byte offset of `data` in the whole image.
    InstallSnapshot {
        meta: SnapshotMeta,
        offset: u64,
        data: Bytes,
        done: bool,
    },
    /// `received_bytes` is how much of the snapshot the follower now holds in order; with `done`
    /// the follower installed it.
    InstallSnapshotResponse {
        last_included: LogIndex,
        received_bytes: u64,
        done: bool,
    },
    /// Leadership transfer: start an election now, ignoring the election timer.
    TimeoutNow,
    /// The leader has nothing to do and sleeps (hibernation): a follower whose log is exactly
    /// the leader's, committed through `leader_commit`, sleeps too.
    Sleep {
        leader_commit: LogIndex,
    },
    /// Commands a follower asks the leader to append on its behalf (fire and forget: the
    /// follower learns the outcome by applying the log, like everyone else).
    ForwardProposals {
        commands: Vec<Bytes>,
    },
    /// A follower asks the leader for a read index for a batch of its own clients' reads
    /// (dissertation §6.4: followers serve linearizable reads once they have applied up to an
    /// index the leader confirmed). `lease`: the leader may answer from its lease.
    ReadIndex {
        request: u64,
        lease: bool,
    },
    /// The leader's answer: the index the follower must apply before serving the batch, or
    /// `None` when the leader cannot confirm one (not leader, not ready, busy).
    ReadIndexResponse {
        request: u64,
        index: Option<LogIndex>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendResult {
    /// The follower's log matches the leader's up to `match_index`.
    Success { match_index: LogIndex },
    /// The consistency check failed at the leader's `prev_index`. The hint lets the leader skip a
    /// whole term per round trip instead of one entry (Raft §5.3, the optimisation at its end):
    /// `conflict_term` is the follower's term at `prev_index` (None if its log is shorter), and
    /// `first_index` is the first index the follower holds in that term (or its log length + 1).
    Conflict {
        prev_index: LogIndex,
        conflict_term: Option<Term>,
        first_index: LogIndex,
    },
}

impl ProtocolMessage for Message {
    fn from(&self) -> NodeId {
        self.from
    }

    fn to(&self) -> NodeId {
        self.to
    }

    fn size_bytes(&self) -> usize {
        const HEADER_BYTES: usize = 32;
        HEADER_BYTES
            + match &self.body {
                MessageBody::AppendEntries { entries, .. } => {
                    entries.iter().map(Entry::size_bytes).sum()
                }
                MessageBody::InstallSnapshot { data, .. } => data.len(),
                MessageBody::ForwardProposals { commands } => commands.iter().map(Bytes::len).sum(),
                _ => 0,
            }
    }

    fn probe(&self) -> Option<Probe> {
        match self.body {
            MessageBody::Heartbeat { .. } => Some(Probe::Sent),
            MessageBody::HeartbeatResponse { .. } => Some(Probe::Answer),
            _ => None,
        }
    }

    /// A heartbeat that carries no read round only tells a follower the commit index, and its
    /// answer only says the follower is there: no client waits on either (a commit waits on
    /// appends' acknowledgements, a read on its round).
    fn awaited_by_clients(&self) -> bool {
        !matches!(
            self.body,
            MessageBody::Heartbeat { read_round: 0, .. }
                | MessageBody::HeartbeatResponse { read_round: 0 }
        )
    }
}

impl WireMessage for Message {
    fn encode(&self, out: &mut BytesMut) {
        crate::codec::encode(self, out);
    }

    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        crate::codec::decode(bytes)
    }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}->n{} t{} ", self.from, self.to, self.term)?;
        match &self.body {
            MessageBody::PreVote { last_log } => write!(f, "PreVote last={last_log}"),
            MessageBody::PreVoteResponse { granted } => write!(f, "PreVoteResp granted={granted}"),
            MessageBody::RequestVote {
                last_log,
                leadership_transfer,
            } => {
                write!(f, "RequestVote last={last_log}")?;
                if *leadership_transfer {
                    write!(f, " (transfer)")?;
                }
                Ok(())
            }
            MessageBody::RequestVoteResponse { granted } => write!(f, "VoteResp granted={granted}"),
            MessageBody::AppendEntries {
                prev_log,
                entries,
                leader_commit,
            } => {
                write!(f, "Append prev={prev_log} commit={leader_commit} entries=")?;
                match (entries.first(), entries.last()) {
                    (Some(first), Some(last)) => write!(f, "[{}..={}]", first.index, last.index),
                    _ => write!(f, "[]"),
                }
            }
            MessageBody::AppendEntriesResponse(AppendResult::Success { match_index }) => {
                write!(f, "AppendResp ok match={match_index}")
            }
            MessageBody::AppendEntriesResponse(AppendResult::Conflict {
                prev_index,
                conflict_term,
                first_index,
            }) => write!(
                f,
                "AppendResp conflict at={prev_index} term={conflict_term:?} first={first_index}"
            ),
            MessageBody::Heartbeat {
                leader_commit,
                read_round,
            } => {
                write!(f, "Heartbeat commit={leader_commit} round={read_round}")
            }
            MessageBody::HeartbeatResponse { read_round } => {
                write!(f, "HeartbeatResp round={read_round}")
            }
            MessageBody::InstallSnapshot {
                meta,
                offset,
                data,
                done,
            } => write!(
                f,
                "InstallSnapshot upto={} offset={offset} len={} done={done}",
                meta.last_included,
                data.len()
            ),
            MessageBody::InstallSnapshotResponse {
                last_included,
                received_bytes,
                done,
            } => write!(
                f,
                "InstallSnapshotResp upto={last_included} received={received_bytes} done={done}"
            ),
            MessageBody::TimeoutNow => write!(f, "TimeoutNow"),
            MessageBody::Sleep { leader_commit } => write!(f, "Sleep commit={leader_commit}"),
            MessageBody::ForwardProposals { commands } => {
                write!(f, "ForwardProposals count={}", commands.len())
            }
            MessageBody::ReadIndex { request, lease } => {
                write!(f, "ReadIndex request={request} lease={lease}")
            }
            MessageBody::ReadIndexResponse { request, index } => match index {
                Some(index) => write!(f, "ReadIndexResp request={request} index={index}"),
                None => write!(f, "ReadIndexResp request={request} refused"),
            },
        }
    }
}
