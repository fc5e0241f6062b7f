//! Raft configuration: timeouts in ticks, batching and in-flight limits, and the test-only switches
//! that break the protocol on purpose so the simulator can show its checkers catch the damage.

use ballot_core::{NodeId, ReplicaSettings};
use std::fmt;
use std::str::FromStr;

/// The server turns one tick into this many milliseconds; every `*_ticks` default below assumes it.
pub const TICK_MILLIS_DEFAULT: u64 = 10;

#[derive(Debug, Clone)]
pub struct Config {
    pub id: NodeId,
    /// Election timeouts are drawn uniformly from `[min, max)` after every reset (default
    /// 150–300 ms at 10 ms per tick), so that split votes resolve (Raft §5.2).
    pub election_timeout_min_ticks: u32,
    pub election_timeout_max_ticks: u32,
    pub heartbeat_interval_ticks: u32,
    /// Ask for pre-votes before raising the term (dissertation §9.6).
    pub pre_vote: bool,
    /// A leader that has not heard from a quorum within an election timeout steps down, and
    /// followers that heard from a leader within the minimum election timeout ignore votes.
    pub check_quorum: bool,
    /// Append messages in flight to one follower before the leader waits for acknowledgements.
    pub inflight_messages_max: usize,
    pub entries_per_message_max: usize,
    pub bytes_per_message_max: usize,
    pub command_bytes_max: usize,
    /// Entries proposed but not yet committed on the leader; further proposals are refused with
    /// `Busy` (backpressure).
    pub uncommitted_entries_max: usize,
    /// Reads waiting for a quorum confirmation on the leader.
    pub pending_reads_max: usize,
    /// Bound on how far clocks of two nodes may drift apart during one election timeout, in ticks.
    /// A lease read is served only while `lease_start + election_timeout_min - drift` lies ahead.
    pub lease_clock_drift_ticks: u32,
    /// Ask the caller for a snapshot once this many entries have been applied since the last one.
    pub snapshot_threshold_entries: u64,
    /// Entries kept behind a snapshot so slightly lagging followers still catch up by log.
    pub snapshot_trailing_entries: u64,
    pub snapshot_chunk_bytes: usize,
    /// A quiet group sleeps until something wakes it (see `hibernation`). Off by default: a
    /// runtime that turns it on must run node liveness (`Replica::peer_down`).
    pub hibernate: bool,
    /// Seed of the replica's own random source (election timeouts). Never a global RNG.
    pub rng_seed: u64,
    /// A deliberately broken protocol, for teaching and for proving the checkers. Never set in
    /// production; the server refuses it.
    pub broken: Option<Break>,
}

impl Config {
    /// Defaults for node `id`. The membership is not configuration: it comes from the persisted
    /// state (see `ballot_core::PersistedState::bootstrap`).
    pub fn new(id: NodeId) -> Self {
        Self {
            id,
            election_timeout_min_ticks: 15,
            election_timeout_max_ticks: 30,
            heartbeat_interval_ticks: 3,
            pre_vote: true,
            check_quorum: true,
            inflight_messages_max: 64,
            entries_per_message_max: 256,
            bytes_per_message_max: 1 << 20,
            command_bytes_max: 1536 * 1024,
            uncommitted_entries_max: 8192,
            pending_reads_max: 4096,
            lease_clock_drift_ticks: 2,
            snapshot_threshold_entries: 10_000,
            snapshot_trailing_entries: 500,
            snapshot_chunk_bytes: 256 * 1024,
            hibernate: false,
            rng_seed: id,
            broken: None,
        }
    }

    /// Node `id`'s configuration as a runtime asks for it: the runtime's probe interval and
    /// leader timeouts are Raft's heartbeat interval and election timeouts; the rest are the
    /// defaults.
    pub fn from_settings(id: NodeId, rng_seed: u64, settings: &ReplicaSettings) -> Self {
        Self {
            heartbeat_interval_ticks: settings.probe_interval_ticks,
            election_timeout_min_ticks: settings.leader_timeout_min_ticks,
            election_timeout_max_ticks: settings.leader_timeout_max_ticks,
            snapshot_threshold_entries: settings.compaction_threshold_entries,
            command_bytes_max: settings.command_bytes_max,
            hibernate: settings.hibernate,
            rng_seed,
            ..Self::new(id)
        }
    }

    /// Checks the relations between settings that Raft's safety or liveness relies on.
    pub fn validate(&self) -> Result<(), String> {
        if self.id == 0 {
            return Err("node id 0 is reserved".into());
        }
        if self.heartbeat_interval_ticks == 0 {
            return Err("heartbeat interval must be at least 1 tick".into());
        }
        if self.election_timeout_min_ticks <= self.heartbeat_interval_ticks {
            return Err(format!(
                "election timeout ({} ticks) must exceed the heartbeat interval ({} ticks)",
                self.election_timeout_min_ticks, self.heartbeat_interval_ticks
            ));
        }
        if self.election_timeout_max_ticks <= self.election_timeout_min_ticks {
            return Err(format!(
                "election timeout range [{}, {}) is empty",
                self.election_timeout_min_ticks, self.election_timeout_max_ticks
            ));
        }
        if self.lease_clock_drift_ticks >= self.election_timeout_min_ticks {
            return Err("clock drift bound must be below the minimum election timeout".into());
        }
        if self.inflight_messages_max == 0 || self.entries_per_message_max == 0 {
            return Err("in-flight and per-message entry limits must be at least 1".into());
        }
        if self.snapshot_chunk_bytes == 0 {
            return Err("snapshot chunk size must be at least 1 byte".into());
        }
        Ok(())
    }
}

/// A deliberate bug. Each one violates a rule the simulator's checkers must catch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Break {
    /// Votes are not persisted (and a restarted node votes at once): after a crash a node may
    /// vote twice in one term, so two leaders can be elected in one term (Election Safety).
    PersistVote,
    /// The leader commits entries of earlier terms by counting replicas, and appends no no-op at
    /// the start of its term (Raft §5.4.2, figure 8): a committed entry can be overwritten.
    CommitOldTerm,
    /// Pre-votes are granted without checking for a live leader or an up-to-date log, so a node
    /// returning from a partition raises its term and deposes a healthy leader.
    NoPrevoteCheck,
    /// Reads are served from the local state at once, on any node, with neither ReadIndex nor a
    /// lease: reads can be stale (linearizability).
    StaleRead,
    /// A leader answers a follower's ReadIndex request at once with its commit index, without
    /// confirming with a quorum that it still leads: a deposed leader hands out stale indexes.
    UnconfirmedFollowerRead,
    /// A hibernating leader keeps its lease while it sleeps: its clock stops, so after a long
    /// sleep (and an election it slept through) it serves lease reads it no longer may.
    SleepingLease,
}

impl Break {
    pub const ALL: [Break; 6] = [
        Break::PersistVote,
        Break::CommitOldTerm,
        Break::NoPrevoteCheck,
        Break::StaleRead,
        Break::UnconfirmedFollowerRead,
        Break::SleepingLease,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Break::PersistVote => "persist-vote",
            Break::CommitOldTerm => "commit-old-term",
            Break::NoPrevoteCheck => "no-prevote-check",
            Break::StaleRead => "stale-read",
            Break::UnconfirmedFollowerRead => "unconfirmed-follower-read",
            Break::SleepingLease => "sleeping-lease",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Break::PersistVote => {
                "votes are not persisted; a node restarted mid-election may vote twice in one term"
            }
            Break::CommitOldTerm => {
                "old-term entries are committed by counting replicas, no no-op per term"
            }
            Break::NoPrevoteCheck => {
                "pre-votes granted without checking leader liveness or log freshness"
            }
            Break::StaleRead => "reads served from local state without ReadIndex or lease",
            Break::UnconfirmedFollowerRead => {
                "a follower's read index answered from the commit index, leadership unconfirmed"
            }
            Break::SleepingLease => {
                "a hibernating leader keeps its lease through a sleep its clock did not count"
            }
        }
    }
}

impl fmt::Display for Break {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Break {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Break::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Break::ALL.iter().map(|b| b.name()).collect();
                format!("unknown break '{s}'; expected one of: {}", names.join(", "))
            })
    }
}
