//! What lets many replicated groups share the simulated nodes and network: a message tagged with
//! the group it belongs to. The network moves tagged messages and partitions them by node, so a
//! partition or a lost link hits every group between the same two nodes, as it does between two
//! real processes.

use ballot_core::{GroupId, NodeId, Probe, ProtocolMessage};
use std::fmt;

/// A protocol message and its group.
#[derive(Debug, Clone)]
pub struct GroupMessage<M> {
    pub group: GroupId,
    pub message: M,
}

/// The group id a real frame would carry with the message.
const GROUP_TAG_BYTES: usize = 4;

impl<M: ProtocolMessage> ProtocolMessage for GroupMessage<M> {
    fn from(&self) -> NodeId {
        self.message.from()
    }

    fn to(&self) -> NodeId {
        self.message.to()
    }

    fn size_bytes(&self) -> usize {
        self.message.size_bytes() + GROUP_TAG_BYTES
    }

    fn probe(&self) -> Option<Probe> {
        self.message.probe()
    }

    fn awaited_by_clients(&self) -> bool {
        self.message.awaited_by_clients()
    }
}

/// Group 0's messages read as they always have; another group's are prefixed with it.
impl<M: fmt::Display> fmt::Display for GroupMessage<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group != 0 {
            write!(f, "g{} ", self.group)?;
        }
        self.message.fmt(f)
    }
}
