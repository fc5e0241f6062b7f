//! Watches the cluster while the check runs: which node leads (asked of every node every
//! 200 ms; the answer with the highest term wins, so a cut-off former leader does not count),
//! and whether a node died on its own. Records both; never injects anything. A node that exited
//! unexpectedly is an incident (a finding), and is restarted so the run can go on.

use super::cluster::Cluster;
use super::history::{stamp, Recorder};
use super::proxy::NodeIndex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// The leader as last seen.
#[derive(Debug, Default)]
pub struct LeaderWatch {
    current: Mutex<Option<(u64, NodeIndex)>>,
}

impl LeaderWatch {
    /// The leader of the highest term any node reported, if any.
    pub fn leader(&self) -> Option<NodeIndex> {
        self.current
            .lock()
            .expect("leader lock")
            .map(|(_, node)| node)
    }

    pub fn term(&self) -> u64 {
        self.current
            .lock()
            .expect("leader lock")
            .map_or(0, |(term, _)| term)
    }
}

pub async fn run(
    cluster: Arc<Cluster>,
    recorder: Arc<Recorder>,
    watch: Arc<LeaderWatch>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        poll_leader(&cluster, &recorder, &watch).await;
        restart_unexpected_exits(&cluster, &recorder);
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

async fn poll_leader(cluster: &Arc<Cluster>, recorder: &Recorder, watch: &LeaderWatch) {
    let mut polls = tokio::task::JoinSet::new();
    for node in 0..cluster.len() {
        let cluster = cluster.clone();
        polls.spawn(async move { cluster.status(node).await });
    }
    let mut best: Option<(u64, u64)> = None;
    while let Some(joined) = polls.join_next().await {
        if let Ok(Ok(status)) = joined {
            if status.leader != 0 && best.is_none_or(|(term, _)| status.raft_term > term) {
                best = Some((status.raft_term, status.leader));
            }
        }
    }
    let Some((term, leader_id)) = best else {
        return;
    };
    let Some(leader) = cluster.links.node_of(leader_id) else {
        return;
    };
    let mut current = watch.current.lock().expect("leader lock");
    if let Some((known_term, known_leader)) = *current {
        if term == known_term && leader != known_leader {
            // Each node clears its leader when its term moves, so two names for one term is
            // two leaders in a term: Election Safety (Raft figure 3) is broken.
            let description = format!(
                "two leaders reported for term {term}: {} and {}",
                cluster.name(known_leader),
                cluster.name(leader)
            );
            println!("{} INCIDENT: {description}", stamp(recorder.now_ns()));
            recorder.incident(cluster.name(leader), &description);
        }
    }
    let changed = current.is_none_or(|(known_term, known_leader)| {
        term > known_term || (term == known_term && leader != known_leader)
    });
    if changed {
        *current = Some((term, leader));
        drop(current);
        recorder.leader(term, cluster.name(leader));
    }
}

fn restart_unexpected_exits(cluster: &Cluster, recorder: &Recorder) {
    for (node, status) in cluster.reap_unexpected_exits() {
        let name = cluster.name(node);
        let tail = cluster.log_tail(node);
        println!(
            "{} INCIDENT: {name} exited on its own ({status}); its log ends with:\n{tail}",
            stamp(recorder.now_ns())
        );
        let restarted = match cluster.restart(node) {
            Ok(()) => "restarted".to_string(),
            Err(error) => format!("could not be restarted: {error}"),
        };
        recorder.incident(
            name,
            &format!("exited on its own ({status}); {restarted}. Log tail:\n{tail}"),
        );
    }
}
