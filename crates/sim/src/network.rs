//! The simulated network: messages in flight, ordered by delivery time in virtual ticks, and the
//! per-message faults (latency, loss, duplication) and partitions (blocked directed links).
//!
//! It owns only messages in transit. It never looks inside a message beyond its addressee, never
//! delivers a message before its delivery tick, and never delivers one across a link that is
//! blocked at send time or at delivery time. Ties in delivery time are broken by send order
//! (a sequence number), so a run is reproducible from its seed.

use ballot_core::{NodeId, ProtocolMessage};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// Per-message fault settings. Latency is drawn uniformly from `[min, max]` for each message, so a
/// range wider than one tick also reorders messages.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkFaults {
    pub latency_min_ticks: u64,
    pub latency_max_ticks: u64,
    pub drop_probability: f64,
    pub duplicate_probability: f64,
}

impl LinkFaults {
    /// One tick of latency, nothing lost, nothing duplicated.
    pub const RELIABLE: LinkFaults = LinkFaults {
        latency_min_ticks: 1,
        latency_max_ticks: 1,
        drop_probability: 0.0,
        duplicate_probability: 0.0,
    };
}

/// Why a message did not arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The link was blocked (a partition).
    Partitioned,
    /// Random loss.
    Lost,
}

/// What happened to a message handed to [`Network::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOutcome {
    Queued { deliver_at: u64, duplicated: bool },
    Dropped(DropReason),
}

/// A message whose delivery tick has come.
#[derive(Debug)]
pub enum Arrival<M> {
    Deliver(M),
    /// The link got blocked while the message was in flight.
    Dropped(M),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetworkStats {
    pub sent: u64,
    pub delivered: u64,
    pub dropped: u64,
    pub duplicated: u64,
}

struct InFlight<M> {
    deliver_at: u64,
    sequence: u64,
    message: M,
}

impl<M> PartialEq for InFlight<M> {
    fn eq(&self, other: &Self) -> bool {
        (self.deliver_at, self.sequence) == (other.deliver_at, other.sequence)
    }
}
impl<M> Eq for InFlight<M> {}
impl<M> PartialOrd for InFlight<M> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<M> Ord for InFlight<M> {
    /// Reversed so that `BinaryHeap` (a max-heap) pops the earliest delivery first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.deliver_at, other.sequence).cmp(&(self.deliver_at, self.sequence))
    }
}

pub struct Network<M> {
    queue: BinaryHeap<InFlight<M>>,
    next_sequence: u64,
    /// `blocked[from * stride + to]`: messages from `from` to `to` are dropped.
    blocked: Vec<bool>,
    stride: usize,
    pub faults: LinkFaults,
    rng: ChaCha8Rng,
    pub stats: NetworkStats,
}

impl<M: ProtocolMessage> Network<M> {
    /// A network for node ids `1..=max_node_id`.
    pub fn new(max_node_id: NodeId, rng: ChaCha8Rng) -> Self {
        let stride = max_node_id as usize + 1;
        Self {
            queue: BinaryHeap::new(),
            next_sequence: 0,
            blocked: vec![false; stride * stride],
            stride,
            faults: LinkFaults::RELIABLE,
            rng,
            stats: NetworkStats::default(),
        }
    }

    pub fn is_blocked(&self, from: NodeId, to: NodeId) -> bool {
        let (from, to) = (from as usize, to as usize);
        from < self.stride && to < self.stride && self.blocked[from * self.stride + to]
    }

    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }

    /// Queue `message` (and maybe a duplicate) unless its link is blocked or it is lost.
    pub fn send(&mut self, now: u64, message: M) -> SendOutcome {
        self.stats.sent += 1;
        if self.is_blocked(message.from(), message.to()) {
            self.stats.dropped += 1;
            return SendOutcome::Dropped(DropReason::Partitioned);
        }
        let faults = self.faults;
        if faults.drop_probability > 0.0 && self.rng.random_bool(faults.drop_probability) {
            self.stats.dropped += 1;
            return SendOutcome::Dropped(DropReason::Lost);
        }
        let duplicated = faults.duplicate_probability > 0.0
            && self.rng.random_bool(faults.duplicate_probability);
        if duplicated {
            self.stats.duplicated += 1;
            let copy_at = now + self.latency();
            self.push(copy_at, message.clone());
        }
        let deliver_at = now + self.latency();
        self.push(deliver_at, message);
        SendOutcome::Queued {
            deliver_at,
            duplicated,
        }
    }

    /// The next message due at or before `now`, in (delivery tick, send order) order.
    pub fn pop_due(&mut self, now: u64) -> Option<Arrival<M>> {
        if self.queue.peek()?.deliver_at > now {
            return None;
        }
        let message = self.queue.pop()?.message;
        if self.is_blocked(message.from(), message.to()) {
            self.stats.dropped += 1;
            return Some(Arrival::Dropped(message));
        }
        self.stats.delivered += 1;
        Some(Arrival::Deliver(message))
    }

    /// Forget every message in flight that `matches`: those to a replica replaced by a new
    /// incarnation (which must not receive what was meant for the old one), and those from one
    /// whose process is gone for good (wiped), with what its connections still carried. A member
    /// id reused while an earlier incarnation's messages can still arrive is outside what Raft
    /// (and ballot) supports: a success from the old log would make the leader count entries the
    /// new one lacks. etcd never reuses a removed id; ballot reuses one only after the old
    /// process is dead.
    pub fn purge(&mut self, matches: impl Fn(&M) -> bool) {
        let before = self.queue.len();
        self.queue.retain(|in_flight| !matches(&in_flight.message));
        self.stats.dropped += (before - self.queue.len()) as u64;
    }

    pub fn block(&mut self, from: NodeId, to: NodeId) {
        let (from, to) = (from as usize, to as usize);
        if from < self.stride && to < self.stride && from != to {
            self.blocked[from * self.stride + to] = true;
        }
    }

    /// Cut `node` off from every other node, both directions.
    pub fn isolate(&mut self, node: NodeId) {
        for other in 1..self.stride as NodeId {
            self.block(node, other);
            self.block(other, node);
        }
    }

    /// Block every link between a node of `left` and a node of `right`, both directions.
    pub fn split(&mut self, left: &[NodeId], right: &[NodeId]) {
        for &a in left {
            for &b in right {
                self.block(a, b);
                self.block(b, a);
            }
        }
    }

    /// Two halves that only `bridge` connects: `left` and `right` must not contain `bridge`.
    pub fn bridge(&mut self, left: &[NodeId], right: &[NodeId]) {
        self.split(left, right);
    }

    /// Lift every partition.
    pub fn heal(&mut self) {
        self.blocked.fill(false);
    }

    pub fn is_partitioned(&self) -> bool {
        self.blocked.iter().any(|b| *b)
    }

    fn latency(&mut self) -> u64 {
        let LinkFaults {
            latency_min_ticks: min,
            latency_max_ticks: max,
            ..
        } = self.faults;
        let min = min.max(1);
        if max <= min {
            min
        } else {
            self.rng.random_range(min..=max)
        }
    }

    fn push(&mut self, deliver_at: u64, message: M) {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        self.queue.push(InFlight {
            deliver_at,
            sequence,
            message,
        });
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::SeedableRng;
    use std::fmt;

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) struct TestMessage {
        pub from: NodeId,
        pub to: NodeId,
        pub tag: u32,
    }

    impl fmt::Display for TestMessage {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "n{}->n{} #{}", self.from, self.to, self.tag)
        }
    }

    impl ProtocolMessage for TestMessage {
        fn from(&self) -> NodeId {
            self.from
        }
        fn to(&self) -> NodeId {
            self.to
        }
        fn size_bytes(&self) -> usize {
            8
        }
    }

    fn message(from: NodeId, to: NodeId, tag: u32) -> TestMessage {
        TestMessage { from, to, tag }
    }

    fn network() -> Network<TestMessage> {
        Network::new(5, ChaCha8Rng::seed_from_u64(7))
    }

    fn drain(net: &mut Network<TestMessage>, now: u64) -> Vec<u32> {
        let mut tags = Vec::new();
        while let Some(arrival) = net.pop_due(now) {
            if let Arrival::Deliver(m) = arrival {
                tags.push(m.tag);
            }
        }
        tags
    }

    #[test]
    fn delivers_in_time_order_then_send_order() {
        let mut net = network();
        net.faults.latency_max_ticks = 10;
        let mut sent = Vec::new();
        for tag in 0..200 {
            if let SendOutcome::Queued { deliver_at, .. } = net.send(0, message(1, 2, tag)) {
                sent.push((deliver_at, tag));
            }
        }
        assert!(
            drain(&mut net, 0).is_empty(),
            "nothing is delivered before its tick"
        );
        let mut delivered = Vec::new();
        for now in 1..=10 {
            for tag in drain(&mut net, now) {
                delivered.push((now, tag));
            }
        }
        sent.sort();
        assert_eq!(delivered, sent, "delivery follows (tick, send order)");
        assert!(
            delivered.windows(2).any(|w| w[0].1 > w[1].1),
            "random latency reorders"
        );
    }

    #[test]
    fn partitions_drop_at_send_and_at_delivery() {
        let mut net = network();
        net.isolate(3);
        assert_eq!(
            net.send(0, message(1, 3, 1)),
            SendOutcome::Dropped(DropReason::Partitioned)
        );
        assert_eq!(
            net.send(0, message(3, 1, 2)),
            SendOutcome::Dropped(DropReason::Partitioned)
        );
        assert!(matches!(
            net.send(0, message(1, 2, 3)),
            SendOutcome::Queued { .. }
        ));
        net.heal();
        assert!(matches!(
            net.send(0, message(1, 3, 4)),
            SendOutcome::Queued { .. }
        ));
        net.block(1, 3);
        assert!(matches!(net.pop_due(1), Some(Arrival::Deliver(m)) if m.tag == 3));
        assert!(matches!(net.pop_due(1), Some(Arrival::Dropped(m)) if m.tag == 4));
    }

    #[test]
    fn one_way_and_split_and_bridge() {
        let mut net = network();
        net.block(1, 2);
        assert!(net.is_blocked(1, 2) && !net.is_blocked(2, 1));
        net.heal();
        net.split(&[1, 2, 3], &[4, 5]);
        assert!(net.is_blocked(1, 4) && net.is_blocked(5, 3) && !net.is_blocked(1, 2));
        net.heal();
        net.bridge(&[1, 2], &[4, 5]);
        assert!(!net.is_blocked(1, 3) && !net.is_blocked(3, 5) && net.is_blocked(2, 4));
        net.heal();
        assert!(!net.is_partitioned());
    }

    #[test]
    fn loss_and_duplication() {
        let mut net = network();
        net.faults.drop_probability = 1.0;
        assert_eq!(
            net.send(0, message(1, 2, 0)),
            SendOutcome::Dropped(DropReason::Lost)
        );
        net.faults.drop_probability = 0.0;
        net.faults.duplicate_probability = 1.0;
        net.send(0, message(1, 2, 9));
        assert_eq!(drain(&mut net, 1), vec![9, 9]);
    }

    #[test]
    fn purge_forgets_the_messages_it_matches() {
        let mut net = network();
        net.send(0, message(1, 2, 1));
        net.send(0, message(1, 3, 2));
        net.purge(|m| m.to() == 2);
        assert_eq!(drain(&mut net, 5), vec![2]);
        net.send(0, message(2, 3, 3));
        net.send(0, message(1, 3, 4));
        net.purge(|m| m.from() == 2);
        assert_eq!(drain(&mut net, 5), vec![4]);
    }
}
