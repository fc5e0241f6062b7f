//! The leader's lease clock: decides when leases expire and proposes it through the log.
//!
//! It owns, while this node leads, one deadline per lease; it never holds replicated state (the
//! granted TTL and the last checkpointed remaining TTL live in the MVCC store) and it never acts
//! on a replica's own clock when applying: it only *proposes* `LeaseRevoke` and
//! `LeaseCheckpoint` commands, which every replica applies in log order (DESIGN principle 5).
//! No threads, no clock, no I/O: time arrives as `now_ms` from a monotonic clock (the server) or
//! virtual time (the simulator).
//!
//! # The clock
//!
//! Each lease has a *basis* deadline, `keep-alive time + TTL`, and expires at `basis + grace`,
//! where the grace (`leader_grace_ms`) is given only by [`Lessor::become_leader`] and dropped at
//! the next keep-alive. Checkpoints carry `basis - now` — without the grace, and negative when
//! the lease is inside it — so a new leader resumes from `now + remaining` and the grace never
//! accumulates across leader changes.
//!
//! A new leader cannot know how long ago the last checkpoint was written, so it must assume "just
//! now" (anything else may expire a lease early). Each leader change therefore extends a lease by
//! at most the time since its last checkpoint: `min(tenure, checkpoint_interval_ms)` plus the
//! election gap. Over a lease's life: it expires no earlier than `TTL` after its last
//! acknowledged keep-alive, and no later than `TTL + grace + Σ extensions` (one tick later at
//! most); with at most one leader change, that is `TTL + checkpoint interval + election + grace`.
//! `docs/design/storage.md` ("Lease clock") has the argument.

use crate::mvcc::limits::{LEASE_CHECKPOINTS_MAX, LEASE_TTL_SECONDS_MAX};
use crate::mvcc::types::{Command, Lease, LeaseId};
use std::collections::{BTreeMap, BTreeSet};

/// Settings of the lease clock. Every queue it keeps is bounded by one of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LessorConfig {
    /// Remaining TTLs of every lease are checkpointed this often; it bounds how far a leader
    /// change can extend a lease.
    pub checkpoint_interval_ms: u64,
    /// Grants below this TTL get this TTL (etcd's minimum lease TTL).
    pub min_ttl_seconds: i64,
    /// Grants above this TTL are refused.
    pub max_ttl_seconds: i64,
    /// Extra time a new leader gives every lease, so clients whose keep-alives failed during the
    /// election can reach it. Not checkpointed, so it does not add up across leader changes.
    pub leader_grace_ms: u64,
    /// A revoke not applied after this long is proposed again (the proposal may have been lost).
    pub revoke_retry_interval_ms: u64,
    /// Revokes proposed and not yet applied; further expired leases wait their turn.
    pub revokes_in_flight_max: usize,
    pub checkpoints_per_command_max: usize,
}

impl Default for LessorConfig {
    fn default() -> Self {
        Self {
            checkpoint_interval_ms: 5_000,
            min_ttl_seconds: 2,
            max_ttl_seconds: LEASE_TTL_SECONDS_MAX,
            // About one election timeout, as etcd extends leases on promotion.
            leader_grace_ms: 1_000,
            revoke_retry_interval_ms: 3_000,
            // etcd revokes at most 1000 leases per second and batches 1000 checkpoints.
            revokes_in_flight_max: 1_000,
            checkpoints_per_command_max: LEASE_CHECKPOINTS_MAX,
        }
    }
}

impl LessorConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.checkpoint_interval_ms == 0 || self.revoke_retry_interval_ms == 0 {
            return Err("lessor intervals (checkpoint_interval_ms, revoke_retry_interval_ms) must be at least 1".into());
        }
        if self.revokes_in_flight_max == 0 || self.checkpoints_per_command_max == 0 {
            return Err("lessor limits (revokes_in_flight_max, checkpoints_per_command_max) must be at least 1".into());
        }
        if self.checkpoints_per_command_max > LEASE_CHECKPOINTS_MAX {
            return Err(format!(
                "lessor checkpoints_per_command_max ({}) exceeds what the store applies ({LEASE_CHECKPOINTS_MAX})",
                self.checkpoints_per_command_max
            ));
        }
        if self.max_ttl_seconds > LEASE_TTL_SECONDS_MAX {
            return Err(format!(
                "lessor max_ttl_seconds ({}) exceeds what the store grants ({LEASE_TTL_SECONDS_MAX})",
                self.max_ttl_seconds
            ));
        }
        if self.min_ttl_seconds < 1 || self.max_ttl_seconds < self.min_ttl_seconds {
            return Err(format!(
                "lessor TTL bounds must satisfy 1 <= min_ttl_seconds ({}) <= max_ttl_seconds ({})",
                self.min_ttl_seconds, self.max_ttl_seconds
            ));
        }
        Ok(())
    }

    /// The TTL a grant request gets: raised to the minimum, refused above the maximum. The
    /// server calls it before proposing `LeaseGrant`, so the log carries the effective TTL.
    pub fn grant_ttl_seconds(&self, requested_ttl_seconds: i64) -> Result<i64, LessorError> {
        if requested_ttl_seconds > self.max_ttl_seconds {
            return Err(LessorError::TtlTooLarge {
                ttl_seconds: requested_ttl_seconds,
                max_ttl_seconds: self.max_ttl_seconds,
            });
        }
        Ok(requested_ttl_seconds.max(self.min_ttl_seconds))
    }
}

/// A lease as a new leader needs it: from the replicated state, not from anyone's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTtl {
    pub id: LeaseId,
    pub ttl_seconds: i64,
    /// The last checkpointed remaining TTL (the full TTL right after grant); may be negative.
    pub remaining_ttl_ms: i64,
}

impl From<&Lease> for LeaseTtl {
    fn from(lease: &Lease) -> Self {
        Self {
            id: lease.id,
            ttl_seconds: lease.ttl_seconds,
            remaining_ttl_ms: lease.remaining_ttl_ms,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LessorError {
    /// Redirect: only the leader keeps lease clocks.
    #[error("lessor: this node is not the leader; lease keep-alives and time-to-live queries go to the leader")]
    NotLeader,
    /// Unknown, revoked, or expired and being revoked (etcd's exact message; clients match it).
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound { id: LeaseId },
    /// Bad input (etcd's exact message).
    #[error("etcdserver: too large lease TTL")]
    TtlTooLarge {
        ttl_seconds: i64,
        max_ttl_seconds: i64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LeaseClock {
    ttl_seconds: i64,
    /// Last keep-alive (or the replicated remaining TTL at takeover) plus the TTL.
    basis_ms: i64,
    grace_ms: i64,
}

impl LeaseClock {
    fn expiry_ms(&self) -> i64 {
        self.basis_ms + self.grace_ms
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct Lessor {
    config: LessorConfig,
    leader: bool,
    leases: BTreeMap<LeaseId, LeaseClock>,
    /// (expiry, lease) for every lease not being revoked.
    expiries: BTreeSet<(i64, LeaseId)>,
    /// Lease -> when its revoke was last proposed.
    revoking: BTreeMap<LeaseId, i64>,
    /// Leases kept alive since the last tick; their checkpoint goes out at the next one.
    keep_alive_checkpoints: BTreeSet<LeaseId>,
    next_checkpoint_round_ms: i64,
}

fn millis(now_ms: u64) -> i64 {
    i64::try_from(now_ms).expect("a monotonic clock in milliseconds fits in i64")
}

impl Lessor {
    /// # Panics
    /// When `config` fails [`LessorConfig::validate`]; the server validates its configuration first.
    pub fn new(config: LessorConfig) -> Self {
        if let Err(problem) = config.validate() {
            panic!("invalid lessor config: {problem}");
        }
        Self {
            config,
            leader: false,
            leases: BTreeMap::new(),
            expiries: BTreeSet::new(),
            revoking: BTreeMap::new(),
            keep_alive_checkpoints: BTreeSet::new(),
            next_checkpoint_round_ms: 0,
        }
    }

    pub fn config(&self) -> &LessorConfig {
        &self.config
    }

    pub fn is_leader(&self) -> bool {
        self.leader
    }

    /// Leases with a clock (0 unless leader).
    pub fn lease_count(&self) -> usize {
        self.leases.len()
    }

    pub fn revokes_in_flight(&self) -> usize {
        self.revoking.len()
    }

    /// This node became leader; `leases` is every lease in the store with its last checkpointed
    /// remaining TTL. Each expires at `now + remaining + leader_grace_ms`: never earlier than
    /// the previous leader would have expired it, and never reset to the full TTL.
    pub fn become_leader(&mut self, now_ms: u64, leases: impl IntoIterator<Item = LeaseTtl>) {
        self.step_down();
        self.leader = true;
        let now = millis(now_ms);
        let grace_ms = millis(self.config.leader_grace_ms);
        for lease in leases {
            let ttl_ms = self.effective_ttl_seconds(lease.ttl_seconds) * 1000;
            let clock = LeaseClock {
                ttl_seconds: lease.ttl_seconds,
                basis_ms: now + lease.remaining_ttl_ms.min(ttl_ms),
                grace_ms,
            };
            self.insert(lease.id, clock);
        }
        self.next_checkpoint_round_ms = now + millis(self.config.checkpoint_interval_ms);
    }

    /// This node is no longer leader: forget every deadline (the next leader resumes from the
    /// checkpoints in the store).
    pub fn step_down(&mut self) {
        self.leader = false;
        self.leases.clear();
        self.expiries.clear();
        self.revoking.clear();
        self.keep_alive_checkpoints.clear();
    }

    /// The store applied a grant. Ignored unless leader (a future leader reads it from the store).
    pub fn on_granted(&mut self, id: LeaseId, ttl_seconds: i64, now_ms: u64) {
        if !self.leader {
            return;
        }
        self.remove(id);
        let basis_ms = millis(now_ms) + self.effective_ttl_seconds(ttl_seconds) * 1000;
        self.insert(
            id,
            LeaseClock {
                ttl_seconds,
                basis_ms,
                grace_ms: 0,
            },
        );
    }

    /// The store applied a revoke (a client's, or the one this lessor proposed).
    pub fn on_revoked(&mut self, id: LeaseId) {
        self.remove(id);
    }

    /// Renews a lease to its full TTL and queues a checkpoint of it for the next `tick`. Returns
    /// the TTL in seconds. The keep-alive is durable once that checkpoint is applied; the server
    /// answers the client then, so a keep-alive acknowledged to a client survives a leader change.
    pub fn keep_alive(&mut self, id: LeaseId, now_ms: u64) -> Result<i64, LessorError> {
        if !self.leader {
            return Err(LessorError::NotLeader);
        }
        let now = millis(now_ms);
        let clock = match self.leases.get(&id) {
            Some(clock) if !self.revoking.contains_key(&id) && clock.expiry_ms() > now => *clock,
            // Expired: its revoke is decided, even if not yet proposed.
            _ => return Err(LessorError::LeaseNotFound { id }),
        };
        let renewed = LeaseClock {
            basis_ms: now + self.effective_ttl_seconds(clock.ttl_seconds) * 1000,
            grace_ms: 0,
            ..clock
        };
        self.remove(id);
        self.insert(id, renewed);
        self.keep_alive_checkpoints.insert(id);
        Ok(self.effective_ttl_seconds(clock.ttl_seconds))
    }

    /// Milliseconds until the lease expires (0 once expired), for `LeaseTimeToLive`.
    pub fn remaining_ttl_ms(&self, id: LeaseId, now_ms: u64) -> Result<u64, LessorError> {
        if !self.leader {
            return Err(LessorError::NotLeader);
        }
        let clock = self
            .leases
            .get(&id)
            .ok_or(LessorError::LeaseNotFound { id })?;
        Ok(u64::try_from(clock.expiry_ms() - millis(now_ms)).unwrap_or(0))
    }

    /// The commands to propose now: a `LeaseRevoke` for each newly expired lease (at most
    /// `revokes_in_flight_max` unapplied at a time) and again for each revoke unapplied after
    /// `revoke_retry_interval_ms`; then `LeaseCheckpoint`s of at most
    /// `checkpoints_per_command_max` entries for the leases kept alive since the last tick and,
    /// once per `checkpoint_interval_ms`, for every lease. Nothing unless leader.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Command> {
        if !self.leader {
            return Vec::new();
        }
        let now = millis(now_ms);
        let mut commands = Vec::new();
        let retry_ms = millis(self.config.revoke_retry_interval_ms);
        for (id, proposed_ms) in &mut self.revoking {
            if now - *proposed_ms >= retry_ms {
                *proposed_ms = now;
                commands.push(Command::LeaseRevoke { id: *id });
            }
        }
        while self.revoking.len() < self.config.revokes_in_flight_max {
            let Some(&(expiry_ms, id)) = self
                .expiries
                .first()
                .filter(|(expiry_ms, _)| *expiry_ms <= now)
            else {
                break;
            };
            self.expiries.remove(&(expiry_ms, id));
            self.revoking.insert(id, now);
            commands.push(Command::LeaseRevoke { id });
        }
        let mut due = std::mem::take(&mut self.keep_alive_checkpoints);
        if now >= self.next_checkpoint_round_ms {
            due.extend(self.leases.keys().copied());
            self.next_checkpoint_round_ms = now + millis(self.config.checkpoint_interval_ms);
        }
        let checkpoints: Vec<(LeaseId, i64)> = due
            .into_iter()
            .filter(|id| !self.revoking.contains_key(id))
            .filter_map(|id| self.leases.get(&id).map(|clock| (id, clock.basis_ms - now)))
            .collect();
        for batch in checkpoints.chunks(self.config.checkpoints_per_command_max) {
            commands.push(Command::LeaseCheckpoint {
                checkpoints: batch.to_vec(),
            });
        }
        commands
    }

    /// Checks the lessor's internal invariants; panics with a sentence when one is broken.
    pub fn check_invariants(&self) {
        assert!(
            self.leader || self.leases.is_empty(),
            "only a leader keeps lease clocks"
        );
        assert!(
            self.revoking.len() <= self.config.revokes_in_flight_max,
            "more revokes in flight than revokes_in_flight_max"
        );
        for (id, clock) in &self.leases {
            let queued = self.expiries.contains(&(clock.expiry_ms(), *id));
            assert!(
                queued != self.revoking.contains_key(id),
                "lease {id} is either waiting to expire or being revoked"
            );
        }
        assert_eq!(
            self.expiries.len() + self.revoking.len(),
            self.leases.len(),
            "every expiry and revoke belongs to a known lease"
        );
        assert!(
            self.keep_alive_checkpoints
                .iter()
                .all(|id| self.leases.contains_key(id)),
            "checkpoints only for known leases"
        );
    }

    fn effective_ttl_seconds(&self, ttl_seconds: i64) -> i64 {
        ttl_seconds.max(self.config.min_ttl_seconds)
    }

    fn insert(&mut self, id: LeaseId, clock: LeaseClock) {
        self.expiries.insert((clock.expiry_ms(), id));
        self.leases.insert(id, clock);
    }

    fn remove(&mut self, id: LeaseId) {
        if let Some(clock) = self.leases.remove(&id) {
            self.expiries.remove(&(clock.expiry_ms(), id));
        }
        self.revoking.remove(&id);
        self.keep_alive_checkpoints.remove(&id);
    }
}
