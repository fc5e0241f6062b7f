//! The nemesis: injects one fault at a time into the real cluster and heals it, choosing every
//! fault, node and duration from the seeded generator. Owns the schedule and the undo of each
//! fault; records each in the history and prints a line per injection and heal.
//!
//! # Fault model
//!
//! During the chaos phase the nemesis alternates a quiet period of `[QUIET_MIN, QUIET_MAX]` and
//! one fault held for `[HOLD_MIN, HOLD_MAX]`. The kind is drawn from a deck: every enabled kind
//! once per round, in a seeded shuffled order. At most one fault is active at a time.
//!
//! - partitions (`partition`, `asymmetric`, `majority`, `bridge`, `isolate-leader`): directed
//!   links are cut in the peer proxies (`proxy.rs`); every Raft message over a cut link is lost.
//!   Client traffic is never cut, so a follower still forwards requests to the leader.
//! - `crash`: SIGKILL (the kernel keeps what was written, an fsync or not), restart from the data
//!   directory at the heal.
//! - `pause`: SIGSTOP, SIGCONT at the heal: sockets stay open, nothing is answered.
//! - `transfer`: MoveLeader from the current leader to a random other voter; instant.
//! - `membership`: a random follower is removed (MemberRemove); once that is acknowledged its
//!   process is killed and its data directory deleted. At the heal it is added back as a learner
//!   (MemberAdd), half the time at its old peer URL (the same member id), half the time at a new
//!   one (a new id), started empty with `--initial-cluster-state existing`, and promoted
//!   (MemberPromote, retried until it has caught up).
//!
//! At the end of the chaos phase the active fault is healed. A heal that fails (a node that
//! cannot be restarted, a member that cannot be re-added or promoted) is a finding: the cluster
//! did not recover, and the run fails.
//!
//! Never injected: clock changes, disk faults (corruption, lost fsyncs), message corruption,
//! duplication or reordering, partitions of client traffic.

use super::args::FaultKind;
use super::cluster::Cluster;
use super::history::{stamp, Recorder};
use super::monitor::LeaderWatch;
use super::proxy::NodeIndex;
use super::rng::Rng;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub const QUIET_MIN: Duration = Duration::from_secs(1);
pub const QUIET_MAX: Duration = Duration::from_secs(3);
pub const HOLD_MIN: Duration = Duration::from_secs(2);
pub const HOLD_MAX: Duration = Duration::from_secs(7);
/// How long a re-added member may take to be added, catch up and be promoted.
const REJOIN_DEADLINE: Duration = Duration::from_secs(30);
const REJOIN_RETRY_PAUSE: Duration = Duration::from_millis(500);
/// etcd's answers (see `crates/server/src/etcd/cluster.rs`) when a repeated member add or promote
/// finds its first attempt applied.
const PEER_URL_EXISTS: &str = "Peer URLs already exists";
/// Exactly this: "... a learner member which is in sync with leader" means not caught up yet.
const NOT_LEARNER: &str = "etcdserver: can only promote a learner member";

/// The fault in force, with what it takes to undo it.
enum Active {
    Nothing,
    Cut { record: usize },
    Crashed { record: usize, node: NodeIndex },
    Paused { record: usize, node: NodeIndex },
    Removed { record: usize, node: NodeIndex },
}

pub struct Nemesis {
    cluster: Arc<Cluster>,
    recorder: Arc<Recorder>,
    leaders: Arc<LeaderWatch>,
    rng: Rng,
    enabled: Vec<FaultKind>,
    deck: Vec<FaultKind>,
    /// Heals that failed: each means the cluster did not recover.
    failures: Vec<String>,
}

impl Nemesis {
    /// A joined member must know the membership it joined: ask it for its own member list and
    /// compare with the cluster's. A node that believes in fewer voters than there are can
    /// elect itself with too small a quorum.
    async fn check_joined_view(&self, node: NodeIndex, deadline: Instant) -> Result<(), String> {
        let name = self.cluster.name(node).to_string();
        loop {
            let cluster = self.cluster.members(node).await;
            let seen = self.cluster.members_seen_by(node).await;
            let (cluster, seen) = match (cluster, seen) {
                (Ok(cluster), Ok(seen)) if cluster == seen => return Ok(()),
                (Ok(cluster), Ok(seen)) => (cluster, seen),
                (Err(error), _) | (_, Err(error)) if Instant::now() < deadline => {
                    let _ = error;
                    tokio::time::sleep(REJOIN_RETRY_PAUSE).await;
                    continue;
                }
                (Err(error), _) | (_, Err(error)) => {
                    return Err(format!(
                        "membership: cannot compare {name}'s view of the membership with the \
                         cluster's: {error}"
                    ))
                }
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "membership: {name} joined and was promoted, but its own view of the \
                     membership is {} while the cluster has {}. A member started with \
                     --initial-cluster-state existing learns the membership from the log it \
                     receives; without a snapshot the log holds only the changes since the \
                     bootstrap, not the bootstrap membership, so the joined node counts the \
                     wrong voters (it can elect itself with a quorum of its own). Server bug; \
                     see docs/testing.md",
                    self.cluster.names_of_members(&seen),
                    self.cluster.names_of_members(&cluster)
                ));
            }
            tokio::time::sleep(REJOIN_RETRY_PAUSE).await;
        }
    }

    pub fn new(
        cluster: Arc<Cluster>,
        recorder: Arc<Recorder>,
        leaders: Arc<LeaderWatch>,
        rng: Rng,
        enabled: &[FaultKind],
    ) -> Nemesis {
        Nemesis {
            cluster,
            recorder,
            leaders,
            rng,
            enabled: enabled.to_vec(),
            deck: Vec::new(),
            failures: Vec::new(),
        }
    }

    /// Injects and heals faults until `stop` turns true, then heals what is in force. Returns
    /// the heals that failed.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) -> Vec<String> {
        if self.enabled.is_empty() {
            let _ = stop.wait_for(|stopped| *stopped).await;
            return self.failures;
        }
        loop {
            let quiet = self.rng.duration(QUIET_MIN, QUIET_MAX);
            if sleep_or_stop(quiet, &mut stop).await {
                break;
            }
            let kind = self.next_kind();
            let active = self.inject(kind).await;
            let hold = self.rng.duration(HOLD_MIN, HOLD_MAX);
            let stopped = sleep_or_stop(hold, &mut stop).await;
            self.heal(active).await;
            if stopped {
                break;
            }
        }
        self.cluster.links.heal();
        self.failures
    }

    fn next_kind(&mut self) -> FaultKind {
        if self.deck.is_empty() {
            self.deck = self.enabled.clone();
            self.rng.shuffle(&mut self.deck);
        }
        self.deck.pop().expect("the deck was refilled")
    }

    fn say(&self, line: &str) {
        println!("{} {line}", stamp(self.recorder.now_ns()));
    }

    fn running_nodes(&self) -> Vec<NodeIndex> {
        (0..self.cluster.len())
            .filter(|&n| self.cluster.is_running(n))
            .collect()
    }

    fn pick(&mut self, nodes: &[NodeIndex]) -> Option<NodeIndex> {
        (!nodes.is_empty()).then(|| nodes[self.rng.index(nodes.len())])
    }

    fn started(&self, kind: FaultKind, targets: &[NodeIndex], description: &str) -> usize {
        self.say(&format!("{kind}: {description}"));
        self.recorder
            .fault_started(kind.name(), &self.cluster.names_of(targets), description)
    }

    async fn inject(&mut self, kind: FaultKind) -> Active {
        match kind {
            FaultKind::Crash => self.crash(),
            FaultKind::Pause => self.pause(),
            FaultKind::Transfer => {
                self.transfer().await;
                Active::Nothing
            }
            FaultKind::Membership => self.remove_member().await,
            partition => self.cut(partition),
        }
    }

    fn cut(&mut self, kind: FaultKind) -> Active {
        let (cut, targets, description) = self.plan_cut(kind);
        self.cluster.links.set_cut(cut);
        Active::Cut {
            record: self.started(kind, &targets, &description),
        }
    }

    /// The links a partition cuts, the nodes it is aimed at, and a description.
    fn plan_cut(
        &mut self,
        kind: FaultKind,
    ) -> (HashSet<(NodeIndex, NodeIndex)>, Vec<NodeIndex>, String) {
        let all: Vec<NodeIndex> = (0..self.cluster.len()).collect();
        let names = |nodes: &[NodeIndex]| self.cluster.names_of(nodes).join(", ");
        match kind {
            FaultKind::Partition | FaultKind::IsolateLeader => {
                let leader = self.leaders.leader();
                let node = match (kind, leader) {
                    (FaultKind::IsolateLeader, Some(leader)) => leader,
                    _ => all[self.rng.index(all.len())],
                };
                let others: Vec<NodeIndex> = all.iter().copied().filter(|&n| n != node).collect();
                let role = if Some(node) == leader { "leader " } else { "" };
                let description = format!(
                    "{role}{} cut off from {}",
                    self.cluster.name(node),
                    names(&others)
                );
                (cut_between(&[node], &others), vec![node], description)
            }
            FaultKind::Asymmetric => {
                let node = all[self.rng.index(all.len())];
                let others: Vec<NodeIndex> = all.iter().copied().filter(|&n| n != node).collect();
                let name = self.cluster.name(node);
                if self.rng.chance(50) {
                    let cut = others.iter().map(|&o| (o, node)).collect();
                    (
                        cut,
                        vec![node],
                        format!("{name} receives nothing, its sends arrive"),
                    )
                } else {
                    let cut = others.iter().map(|&o| (node, o)).collect();
                    (
                        cut,
                        vec![node],
                        format!("{name} hears the others, its sends are lost"),
                    )
                }
            }
            FaultKind::Majority => {
                let mut shuffled = all.clone();
                self.rng.shuffle(&mut shuffled);
                let (minority, majority) = shuffled.split_at((all.len() - 1) / 2);
                let description = format!(
                    "minority {} | majority {}",
                    names(minority),
                    names(majority)
                );
                (
                    cut_between(minority, majority),
                    minority.to_vec(),
                    description,
                )
            }
            FaultKind::Bridge => {
                let mut shuffled = all.clone();
                self.rng.shuffle(&mut shuffled);
                let bridge = shuffled[0];
                let (left, right) = shuffled[1..].split_at((all.len() - 1) / 2);
                let description = format!(
                    "{} | {} (bridge, sees both) | {}",
                    names(left),
                    self.cluster.name(bridge),
                    names(right)
                );
                (cut_between(left, right), vec![bridge], description)
            }
            other => unreachable!("{other} is not a partition"),
        }
    }

    fn crash(&mut self) -> Active {
        let Some(node) = self.pick(&self.running_nodes()) else {
            return Active::Nothing;
        };
        self.cluster.kill(node);
        let description = format!("SIGKILL {}", self.cluster.name(node));
        Active::Crashed {
            record: self.started(FaultKind::Crash, &[node], &description),
            node,
        }
    }

    fn pause(&mut self) -> Active {
        let Some(node) = self.pick(&self.running_nodes()) else {
            return Active::Nothing;
        };
        let description = format!("SIGSTOP {}", self.cluster.name(node));
        let record = self.started(FaultKind::Pause, &[node], &description);
        if let Err(error) = self.cluster.pause(node) {
            self.recorder.fault_error(record, &error);
            self.say(&format!("pause failed: {error}"));
            return Active::Nothing;
        }
        Active::Paused { record, node }
    }

    async fn transfer(&mut self) {
        let Some(leader) = self.leaders.leader() else {
            self.say("transfer: skipped, no leader known");
            return;
        };
        let candidates: Vec<NodeIndex> = self
            .running_nodes()
            .into_iter()
            .filter(|&n| n != leader)
            .collect();
        let Some(target) = self.pick(&candidates) else {
            return;
        };
        let description = format!(
            "MoveLeader {} -> {}",
            self.cluster.name(leader),
            self.cluster.name(target)
        );
        let record = self.started(FaultKind::Transfer, &[target], &description);
        let started = Instant::now();
        match self.cluster.move_leader(leader, target).await {
            Ok(()) => {
                let done = format!(
                    "{} leads after {:.2} s",
                    self.cluster.name(target),
                    started.elapsed().as_secs_f64()
                );
                self.say(&format!("transfer done: {done}"));
                self.recorder.fault_healed(record, &done);
            }
            Err(error) => {
                self.say(&format!("transfer refused: {error}"));
                self.recorder
                    .fault_error(record, &format!("refused: {error}"));
                self.recorder.fault_healed(record, "not transferred");
            }
        }
    }

    async fn remove_member(&mut self) -> Active {
        let leader = self.leaders.leader();
        let followers: Vec<NodeIndex> = self
            .running_nodes()
            .into_iter()
            .filter(|&n| Some(n) != leader)
            .collect();
        let Some(node) = self.pick(&followers) else {
            return Active::Nothing;
        };
        let name = self.cluster.name(node).to_string();
        let id = self.cluster.member_id(node);
        let description = format!("member remove {name} ({id:x}), then SIGKILL and wipe its data");
        let record = self.started(FaultKind::Membership, &[node], &description);
        // A removed member may stop on its own: that exit is expected from here on.
        self.cluster.expect_down(node, true);
        if let Err(error) = self.cluster.remove_member(node).await {
            self.cluster.expect_down(node, false);
            self.say(&format!("membership: remove of {name} refused: {error}"));
            self.recorder
                .fault_error(record, &format!("member remove refused: {error}"));
            self.recorder.fault_healed(record, "not removed");
            return Active::Nothing;
        }
        self.cluster.kill(node);
        if let Err(error) = self.cluster.wipe_data(node) {
            self.recorder.fault_error(record, &error);
        }
        Active::Removed { record, node }
    }

    async fn heal(&mut self, active: Active) {
        let (record, outcome) = match active {
            Active::Nothing => return,
            Active::Cut { record } => {
                self.cluster.links.heal();
                (record, Ok("links restored".to_string()))
            }
            Active::Crashed { record, node } => {
                let name = self.cluster.name(node).to_string();
                let outcome = self
                    .cluster
                    .restart(node)
                    .map(|()| format!("{name} restarted"))
                    .map_err(|e| format!("crash: restarting {name} failed: {e}"));
                (record, outcome)
            }
            Active::Paused { record, node } => {
                let name = self.cluster.name(node).to_string();
                let outcome = self
                    .cluster
                    .resume(node)
                    .map(|()| format!("SIGCONT {name}"))
                    .map_err(|e| format!("pause: SIGCONT to {name} failed: {e}"));
                (record, outcome)
            }
            Active::Removed { record, node } => (record, self.rejoin(node).await),
        };
        let kind = self.recorder.fault_kind(record);
        match outcome {
            Ok(healed) => {
                self.say(&format!("healed {kind}: {healed}"));
                self.recorder.fault_healed(record, &healed);
            }
            Err(error) => {
                self.say(&format!("NOT HEALED {kind}: {error}"));
                self.recorder.fault_error(record, &error);
                self.recorder.fault_healed(record, "not healed");
                self.failures.push(error);
            }
        }
    }

    /// Adds a removed node back as a new, empty member and promotes it once it caught up.
    async fn rejoin(&mut self, node: NodeIndex) -> Result<String, String> {
        let name = self.cluster.name(node).to_string();
        let same_url = self.rng.chance(50);
        let url = if same_url {
            self.cluster.peer_url(node)
        } else {
            self.cluster.new_peer_url(node).await?
        };
        let deadline = Instant::now() + REJOIN_DEADLINE;
        let derived = self.cluster.member_id_for(&url);
        let cluster = self.cluster.clone();
        let id = retry_until(deadline, || async {
            match cluster.add_learner(node, &url).await {
                // An earlier attempt was applied although its answer was lost.
                Err(error) if error.contains(PEER_URL_EXISTS) => Ok(derived),
                other => other,
            }
        })
        .await
        .map_err(|e| format!("membership: member add of {name} at {url} failed: {e}"))?;
        if id != derived {
            return Err(format!(
                "membership: member add of {name} answered id {id:x}, but its peer URL {url} \
                 derives {derived:x}"
            ));
        }
        self.cluster
            .start_joining(node, id)
            .map_err(|e| format!("membership: starting {name} again failed: {e}"))?;
        retry_until(deadline, || async {
            match cluster.promote(id, node).await {
                Err(error) if error.ends_with(NOT_LEARNER) => Ok(()), // promoted already
                other => other,
            }
        })
        .await
        .map_err(|e| {
            format!(
                "membership: {name} ({id:x}) joined as a learner but was not promoted within \
                     {REJOIN_DEADLINE:?}: {e}\n{}",
                self.cluster.log_tail(node)
            )
        })?;
        self.check_joined_view(node, deadline).await?;
        let how = if same_url { "its old" } else { "a new" };
        Ok(format!(
            "{name} re-added empty at {how} peer URL {url} ({id:x}), caught up, promoted"
        ))
    }
}

/// Both directions of every link between `left` and `right`.
fn cut_between(left: &[NodeIndex], right: &[NodeIndex]) -> HashSet<(NodeIndex, NodeIndex)> {
    let mut cut = HashSet::new();
    for &a in left {
        for &b in right {
            cut.insert((a, b));
            cut.insert((b, a));
        }
    }
    cut
}

/// Sleeps for `duration`; `true` if `stop` turned true first.
async fn sleep_or_stop(duration: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(duration) => false,
        _ = stop.wait_for(|stopped| *stopped) => true,
    }
}

/// Calls `attempt` until it succeeds or `deadline` passes; the last error then.
async fn retry_until<T, F, Fut>(deadline: Instant, mut attempt: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) if Instant::now() >= deadline => return Err(error),
            Err(_) => tokio::time::sleep(REJOIN_RETRY_PAUSE).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_go_both_ways_between_the_sides_only() {
        let cut = cut_between(&[0], &[1, 2]);
        assert_eq!(cut.len(), 4);
        assert!(cut.contains(&(0, 2)) && cut.contains(&(2, 0)));
        assert!(!cut.contains(&(1, 2)), "the majority side stays connected");
    }
}
