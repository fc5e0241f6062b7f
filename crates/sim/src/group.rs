//! What lets many replicated groups share the simulated nodes and network: a message tagged with
//! the group it belongs to, and the nodes' own liveness pings beside them. The network moves
//! both and partitions them by node, so a partition or a lost link hits every group between the
//! same two nodes, and their liveness, as it does between two real processes.

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

/// What travels between simulated nodes: one group's protocol message, or a node liveness ping
/// (see `liveness`), which a node sends to every other whatever its groups do.
#[derive(Debug, Clone)]
pub enum NodeMessage<M> {
    Group(GroupMessage<M>),
    Ping { from: NodeId, to: NodeId },
}

/// A ping is a frame header and a node id on a real wire.
const PING_BYTES: usize = 12;

impl<M> NodeMessage<M> {
    /// The group a protocol message belongs to; `None` for a ping.
    pub fn group(&self) -> Option<GroupId> {
        match self {
            NodeMessage::Group(message) => Some(message.group),
            NodeMessage::Ping { .. } => None,
        }
    }
}

impl<M: ProtocolMessage> ProtocolMessage for NodeMessage<M> {
    fn from(&self) -> NodeId {
        match self {
            NodeMessage::Group(message) => message.from(),
            NodeMessage::Ping { from, .. } => *from,
        }
    }

    fn to(&self) -> NodeId {
        match self {
            NodeMessage::Group(message) => message.to(),
            NodeMessage::Ping { to, .. } => *to,
        }
    }

    fn size_bytes(&self) -> usize {
        match self {
            NodeMessage::Group(message) => message.size_bytes(),
            NodeMessage::Ping { .. } => PING_BYTES,
        }
    }

    fn probe(&self) -> Option<Probe> {
        match self {
            NodeMessage::Group(message) => message.probe(),
            NodeMessage::Ping { .. } => None,
        }
    }

    fn awaited_by_clients(&self) -> bool {
        match self {
            NodeMessage::Group(message) => message.awaited_by_clients(),
            NodeMessage::Ping { .. } => false,
        }
    }
}

impl<M: fmt::Display> fmt::Display for NodeMessage<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeMessage::Group(message) => message.fmt(f),
            NodeMessage::Ping { from, to } => write!(f, "ping n{from}->n{to}"),
        }
    }
}
