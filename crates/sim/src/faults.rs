//! The fault kinds a simulation may inject, and how a set of them is named on the command line.
//!
//! This module owns the *vocabulary* of faults and the fault model written down in one place; the
//! injection itself lives in `nemesis.rs` (episodes) and `network.rs` (per-message faults). It
//! never draws randomness or touches a node.
//!
//! # Fault model
//!
//! Faults are injected only during the chaos phase. At the heal every partition is lifted, every
//! per-message fault is switched off, every crashed node is restarted and an interrupted membership
//! change is completed; liveness is checked only after that.
//!
//! Per-message faults, active during the whole chaos phase when enabled:
//!
//! - `reorder`: each message draws its latency from `[1, REORDER_LATENCY_MAX_TICKS]`, so later
//!   messages overtake earlier ones on the same link.
//! - `drop`: each message is lost with probability [`DROP_PROBABILITY`].
//! - `duplicate`: each message is delivered twice with probability [`DUPLICATE_PROBABILITY`]
//!   (the copy draws its own latency).
//!
//! Episodes, started by the nemesis every `[NEMESIS_INTERVAL_MIN_TICKS, NEMESIS_INTERVAL_MAX_TICKS]`
//! ticks, one enabled kind drawn uniformly each time:
//!
//! - `delay`: a slow period of `[EPISODE_MIN_TICKS, EPISODE_MAX_TICKS]` ticks in which every message
//!   takes `[DELAY_EXTRA_MIN_TICKS, DELAY_EXTRA_MAX_TICKS]` extra ticks.
//! - `partition`, `asymmetric`, `majority`, `bridge`, `isolate-leader`: one partition at a time (a
//!   new one replaces the old), lasting an episode. Messages across a blocked link are dropped when
//!   sent and when due for delivery.
//! - `crash`, `torn-tail`: a running node crashes and restarts after
//!   `[QUICK_REBOOT_MIN_TICKS, QUICK_REBOOT_MAX_TICKS]` ticks (half the time: a quick reboot) or
//!   `[CRASH_DOWN_MIN_TICKS, CRASH_DOWN_MAX_TICKS]` ticks. Besides these episodes, a node whose
//!   term changed 1 to 3 ticks ago (it just voted or campaigned) crashes with probability
//!   [`ELECTION_CRASH_PROBABILITY`] and reboots quickly: crashes in the middle of an election are
//!   what finds vote-persistence bugs, and random episodes rarely land there. Unsynced writes are
//!   lost; with
//!   `torn-tail` a random prefix of the unsynced records (entries and hard states, in the order
//!   written) survives instead. A hard state is never half-written; a snapshot install is
//!   durable at once, as the WAL's is. Any number of nodes may be down at once.
//! - `crash-all`: every running node crashes at the same moment (the whole cluster loses power:
//!   unsynced writes lost, or with `torn-tail` a random prefix of each node's survives), and each
//!   restarts after its own `[QUICK_REBOOT_MIN_TICKS, CRASH_DOWN_MAX_TICKS]` ticks, from its disk
//!   alone. Nothing in memory survives, so a node that kept something it needs only in memory
//!   (its starting membership, say) cannot take part again.
//! - `membership`: a random non-leader voter is removed; once the removal is committed the node is
//!   stopped and its disk wiped; later it is re-added as a learner with a fresh, empty disk (a new
//!   incarnation) and promoted once it has caught up. One change at a time; never below 2 voters.
//! - `transfer`: the leader is asked to hand leadership to a random other voter.
//! - `groups` (only in runs with more than one group): half the time a new group is created
//!   with replicas on `GROUP_REPLICAS` random nodes (bootstrapped on their disks; a node that is
//!   down starts its replica when it comes back), else a group created this way is removed
//!   (every replica stopped and wiped, its messages in flight dropped). Group 0 and the groups
//!   the run started with are never removed, nor a group in the middle of a membership cycle.
//!
//! - `sync-fail`: a running node's disk fails its next sync, as `fdatasync` fails with EIO: the
//!   records written since the last sync are lost (see `disk.rs`), and the node stops at once,
//!   every group on it, as the server's node loop does on a WAL error; it restarts after
//!   `[QUICK_REBOOT_MIN_TICKS, CRASH_DOWN_MAX_TICKS]` ticks from what its disks hold. Messages
//!   sent before the sync (which promise nothing durable) are already out; nothing that waits
//!   for durability is sent. The heal repairs every disk.
//!
//! - `bit-flip`: a running node crashes, and a bit of one synced entry of one of its groups flips
//!   (one of its last eight entries, never the last: later records follow it). At its restart
//!   that replica refuses its log, as the WAL's open refuses a damaged record that valid ones
//!   follow (`WalError::Corrupt`), and stays down; the operator's rebuild follows, etcd's
//!   procedure for a member with a damaged data directory: the replica is removed from its
//!   group, wiped, added back empty as a learner and promoted (the `membership` cycle from its
//!   removal on). One damaged replica at a time, only in a group of at least three voters, and
//!   no other membership cycle meanwhile. The node's other groups restart as after a crash.
//!
//! - `clock-skew`: one running node's clock runs fast or slow, at a rate drawn from
//!   `[CLOCK_RATE_MIN_PER_MILLE, CLOCK_RATE_MAX_PER_MILLE]` per mille of true time, for an
//!   episode: it ticks its replicas that much more or less often (all of them; a node has one
//!   clock), so its election timers, heartbeats and leader lease run at that rate. The bound is
//!   what the replicas are configured to tolerate: Raft serves a lease read only within
//!   `election_timeout_min - lease_clock_drift_ticks` of its own ticks (13 of 15), which stays
//!   inside the followers' 15 at any rate from 0.92 to 1.08. A clock outside its configured
//!   drift is an operator's broken promise, not a fault a protocol can survive (lease reads
//!   would go stale), so it is not injected.
//!
//! Never injected: a damaged *last* record (it looks like a torn write, and the real WAL cuts
//! it: the trade-off in docs/design/storage.md, "Tail repair and corruption"), a damaged hard
//! state or snapshot, a disk that reports a sync it did not do (no protocol that trusts its
//! disk survives one: a forgotten vote elects two leaders), clock drift beyond what the
//! replicas are configured to tolerate (see `clock-skew`), Byzantine messages. (The real WAL's handling of flipped bits and torn
//! records is tested on real files: `crates/storage`.)

use std::fmt;
use std::str::FromStr;

pub const DROP_PROBABILITY: f64 = 0.03;
pub const DUPLICATE_PROBABILITY: f64 = 0.02;
pub const REORDER_LATENCY_MAX_TICKS: u64 = 6;
pub const DELAY_EXTRA_MIN_TICKS: u64 = 3;
pub const DELAY_EXTRA_MAX_TICKS: u64 = 12;
pub const NEMESIS_INTERVAL_MIN_TICKS: u64 = 20;
pub const NEMESIS_INTERVAL_MAX_TICKS: u64 = 100;
pub const EPISODE_MIN_TICKS: u64 = 20;
pub const EPISODE_MAX_TICKS: u64 = 250;
pub const QUICK_REBOOT_MIN_TICKS: u64 = 1;
pub const QUICK_REBOOT_MAX_TICKS: u64 = 10;
pub const ELECTION_CRASH_PROBABILITY: f64 = 0.1;
pub const CRASH_DOWN_MIN_TICKS: u64 = 10;
pub const CRASH_DOWN_MAX_TICKS: u64 = 150;
/// The slowest and fastest clocks `clock-skew` gives a node, per mille of true time.
pub const CLOCK_RATE_MIN_PER_MILLE: u32 = 920;
pub const CLOCK_RATE_MAX_PER_MILLE: u32 = 1080;
/// Replicas of a group the `groups` fault creates (fewer when the cluster is smaller).
pub const GROUP_REPLICAS: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    Delay,
    Drop,
    Duplicate,
    Reorder,
    Partition,
    Asymmetric,
    Majority,
    Bridge,
    IsolateLeader,
    Crash,
    TornTail,
    CrashAll,
    Membership,
    Transfer,
    Groups,
    SyncFail,
    BitFlip,
    ClockSkew,
}

impl FaultKind {
    pub const ALL: [FaultKind; 18] = [
        FaultKind::Delay,
        FaultKind::Drop,
        FaultKind::Duplicate,
        FaultKind::Reorder,
        FaultKind::Partition,
        FaultKind::Asymmetric,
        FaultKind::Majority,
        FaultKind::Bridge,
        FaultKind::IsolateLeader,
        FaultKind::Crash,
        FaultKind::TornTail,
        FaultKind::CrashAll,
        FaultKind::Membership,
        FaultKind::Transfer,
        FaultKind::Groups,
        FaultKind::SyncFail,
        FaultKind::BitFlip,
        FaultKind::ClockSkew,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Delay => "delay",
            FaultKind::Drop => "drop",
            FaultKind::Duplicate => "duplicate",
            FaultKind::Reorder => "reorder",
            FaultKind::Partition => "partition",
            FaultKind::Asymmetric => "asymmetric",
            FaultKind::Majority => "majority",
            FaultKind::Bridge => "bridge",
            FaultKind::IsolateLeader => "isolate-leader",
            FaultKind::Crash => "crash",
            FaultKind::TornTail => "torn-tail",
            FaultKind::CrashAll => "crash-all",
            FaultKind::Membership => "membership",
            FaultKind::Transfer => "transfer",
            FaultKind::Groups => "groups",
            FaultKind::SyncFail => "sync-fail",
            FaultKind::BitFlip => "bit-flip",
            FaultKind::ClockSkew => "clock-skew",
        }
    }

    /// One line for `--help`.
    pub fn description(self) -> &'static str {
        match self {
            FaultKind::Delay => "slow periods: every message takes 3-12 extra ticks",
            FaultKind::Drop => "each message is lost with probability 3%",
            FaultKind::Duplicate => "each message is delivered twice with probability 2%",
            FaultKind::Reorder => "random latency of 1-6 ticks per message, so messages overtake",
            FaultKind::Partition => "one node cut off from all others, both directions",
            FaultKind::Asymmetric => "one node can send but not receive, or receive but not send",
            FaultKind::Majority => "the cluster splits into a majority and a minority",
            FaultKind::Bridge => "two halves that only one bridge node connects",
            FaultKind::IsolateLeader => "the current leader is cut off from all others",
            FaultKind::Crash => "a node crashes (losing unsynced writes) and restarts later",
            FaultKind::TornTail => {
                "a crash after which a random prefix of unsynced records survives"
            }
            FaultKind::CrashAll => {
                "every node crashes at once and each restarts later from its disk alone"
            }
            FaultKind::Membership => {
                "a follower is removed, then re-added empty as a learner and promoted"
            }
            FaultKind::Transfer => "the leader is asked to transfer leadership to another voter",
            FaultKind::Groups => {
                "with --groups above 1: a group is created on 3 of the nodes, or a created one is \
                 removed"
            }
            FaultKind::SyncFail => {
                "a node's next fsync fails (EIO): its unsynced writes are lost, it stops, and it \
                 restarts later"
            }
            FaultKind::ClockSkew => {
                "a node's clock runs fast or slow (0.92x to 1.08x) for a while: its timers and \
                 lease with it"
            }
            FaultKind::BitFlip => {
                "a node crashes with a bit flipped in a synced entry of one group; that replica \
                 refuses its log and is rebuilt (removed, wiped, added back)"
            }
        }
    }

    /// Whether this kind is an episode started by the nemesis (the others act on every message).
    pub fn is_episode(self) -> bool {
        !matches!(
            self,
            FaultKind::Drop | FaultKind::Duplicate | FaultKind::Reorder
        )
    }

    /// Whether this kind is a network partition (at most one is active at a time).
    pub fn is_partition(self) -> bool {
        matches!(
            self,
            FaultKind::Partition
                | FaultKind::Asymmetric
                | FaultKind::Majority
                | FaultKind::Bridge
                | FaultKind::IsolateLeader
        )
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FaultKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FaultKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = FaultKind::ALL.iter().map(|k| k.name()).collect();
                format!(
                    "unknown fault '{s}'; expected `all`, `none` or a comma list of: {}",
                    names.join(", ")
                )
            })
    }
}

/// A set of fault kinds, e.g. parsed from `"drop,partition,crash"` or `"all"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct FaultSet {
    bits: u32,
}

impl FaultSet {
    pub const fn none() -> Self {
        Self { bits: 0 }
    }

    pub fn all() -> Self {
        FaultKind::ALL.into_iter().collect()
    }

    pub fn contains(self, kind: FaultKind) -> bool {
        self.bits & kind.bit() != 0
    }

    pub fn insert(&mut self, kind: FaultKind) {
        self.bits |= kind.bit();
    }

    pub fn remove(&mut self, kind: FaultKind) {
        self.bits &= !kind.bit();
    }

    pub fn with(mut self, kind: FaultKind) -> Self {
        self.insert(kind);
        self
    }

    pub fn is_empty(self) -> bool {
        self.bits == 0
    }

    pub fn iter(self) -> impl Iterator<Item = FaultKind> {
        FaultKind::ALL
            .into_iter()
            .filter(move |k| self.contains(*k))
    }

    /// Whether any partition kind is enabled (the leader-stability scenario runs then).
    pub fn has_partition(self) -> bool {
        self.iter().any(FaultKind::is_partition)
    }
}

impl FromIterator<FaultKind> for FaultSet {
    fn from_iter<I: IntoIterator<Item = FaultKind>>(iter: I) -> Self {
        let mut set = FaultSet::none();
        for kind in iter {
            set.insert(kind);
        }
        set
    }
}

impl FromStr for FaultSet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        match s {
            "all" => return Ok(FaultSet::all()),
            "" | "none" => return Ok(FaultSet::none()),
            _ => {}
        }
        s.split(',')
            .map(|part| part.trim().parse::<FaultKind>())
            .collect()
    }
}

impl fmt::Display for FaultSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        if *self == FaultSet::all() {
            return f.write_str("all");
        }
        let names: Vec<_> = self.iter().map(FaultKind::name).collect();
        f.write_str(&names.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_all_and_none() {
        let set: FaultSet = "drop, partition,torn-tail".parse().unwrap();
        assert!(set.contains(FaultKind::Drop));
        assert!(set.contains(FaultKind::TornTail));
        assert!(!set.contains(FaultKind::Crash));
        assert_eq!(set.to_string(), "drop,partition,torn-tail");
        assert_eq!(
            "all".parse::<FaultSet>().unwrap().iter().count(),
            FaultKind::ALL.len()
        );
        assert!("none".parse::<FaultSet>().unwrap().is_empty());
        let err = "drop,flood".parse::<FaultSet>().unwrap_err();
        assert!(
            err.contains("flood") && err.contains("isolate-leader"),
            "{err}"
        );
    }

    #[test]
    fn every_kind_round_trips_and_is_described() {
        for kind in FaultKind::ALL {
            assert_eq!(kind.name().parse::<FaultKind>().unwrap(), kind);
            assert!(!kind.description().is_empty());
        }
    }
}
