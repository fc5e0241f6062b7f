//! Log entries: the unit of replication. An entry is immutable once created by a leader.

use crate::{LogIndex, Membership, MembershipChange, Term};
use bytes::Bytes;
use std::fmt;

/// Where an entry sits in the log and which term created it. Two entries with the same position
/// are the same entry (Raft's Log Matching property).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LogPosition {
    pub index: LogIndex,
    pub term: Term,
}

impl LogPosition {
    pub const fn new(index: LogIndex, term: Term) -> Self {
        Self { index, term }
    }
}

impl fmt::Display for LogPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@t{}", self.index, self.term)
    }
}

/// What an entry carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryPayload {
    /// Appended by every new leader at the start of its term so that it can commit (and so learn
    /// the commit index of) entries of earlier terms (Raft §5.4.2, dissertation §6.4).
    Noop,
    /// An opaque command for the state machine.
    Command(Bytes),
    /// A single-server membership change (dissertation §4.1) and the whole membership it
    /// creates; takes effect as soon as it is in a node's log. The entry carries the result, not
    /// only the change, so that a node which joins later and replays the log from its start
    /// learns every member, including the ones the cluster was bootstrapped with (which no
    /// entry adds).
    Membership(MembershipChange, Membership),
}

impl EntryPayload {
    /// A 64-bit FNV-1a digest of the payload, for checkers that compare what two replicas hold
    /// at one position without keeping the payloads: equal payloads give equal digests;
    /// different payloads collide with negligible probability for the sizes a run produces.
    pub fn digest(&self) -> u64 {
        const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        let mut hash = OFFSET;
        let mut feed = |bytes: &[u8]| {
            for &byte in bytes {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(PRIME);
            }
        };
        match self {
            EntryPayload::Noop => feed(&[0]),
            EntryPayload::Command(data) => {
                feed(&[1]);
                feed(data);
            }
            EntryPayload::Membership(change, membership) => {
                let (tag, id) = match change {
                    MembershipChange::AddVoter(id) => (2, id),
                    MembershipChange::AddLearner(id) => (3, id),
                    MembershipChange::PromoteLearner(id) => (4, id),
                    MembershipChange::Remove(id) => (5, id),
                };
                feed(&[tag]);
                feed(&id.to_le_bytes());
                for set in [&membership.voters, &membership.learners] {
                    feed(&(set.len() as u64).to_le_bytes());
                    for member in set {
                        feed(&member.to_le_bytes());
                    }
                }
            }
        }
        hash
    }
}

/// One slot of the replicated log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub index: LogIndex,
    pub term: Term,
    pub payload: EntryPayload,
}

/// Bytes an entry costs on the wire and in batching limits, beyond its payload.
pub const ENTRY_OVERHEAD_BYTES: usize = 24;

impl Entry {
    pub fn position(&self) -> LogPosition {
        LogPosition::new(self.index, self.term)
    }

    /// Size used by batching limits: payload plus a fixed header.
    pub fn size_bytes(&self) -> usize {
        let payload = match &self.payload {
            EntryPayload::Noop => 0,
            EntryPayload::Command(data) => data.len(),
            EntryPayload::Membership(_, membership) => {
                16 + 8 * (membership.voters.len() + membership.learners.len())
            }
        };
        ENTRY_OVERHEAD_BYTES + payload
    }

    pub fn command(&self) -> Option<&Bytes> {
        match &self.payload {
            EntryPayload::Command(data) => Some(data),
            _ => None,
        }
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.payload {
            EntryPayload::Noop => write!(f, "{} noop", self.position()),
            EntryPayload::Command(data) => write!(f, "{} cmd({}B)", self.position(), data.len()),
            EntryPayload::Membership(change, _) => write!(f, "{} {change}", self.position()),
        }
    }
}
