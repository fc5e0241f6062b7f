//! Golden transcripts: a scenario's every delivered message and every role change, as readable
//! text checked in under `tests/golden/`. A change in protocol behaviour shows up as a reviewed
//! diff. Regenerate with `BALLOT_BLESS=1 cargo test -p ballot-raft --test golden`.

mod common;

use ballot_core::Replica;
use common::Cluster;
use std::fmt::Write;
use std::path::PathBuf;

struct Transcript {
    text: String,
    seen: usize,
}

impl Transcript {
    fn new() -> Self {
        Self {
            text: String::new(),
            seen: 0,
        }
    }

    fn step(&mut self, title: &str, cluster: &Cluster) {
        writeln!(self.text, "## {title}").unwrap();
        for message in &cluster.delivered[self.seen..] {
            writeln!(self.text, "  {message}").unwrap();
        }
        self.seen = cluster.delivered.len();
        for (id, node) in &cluster.nodes {
            let status = node.status();
            writeln!(
                self.text,
                "  = n{id} {} term={} commit={} last={}",
                status.role, status.term, status.commit_index, status.last_log
            )
            .unwrap();
        }
    }

    fn check(self, name: &str) {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(format!("{name}.txt"));
        if std::env::var_os("BALLOT_BLESS").is_some() {
            std::fs::write(&path, &self.text).unwrap();
            return;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
            panic!(
                "{} is missing: run with BALLOT_BLESS=1 to create it",
                path.display()
            )
        });
        if expected != self.text {
            let first_difference = expected
                .lines()
                .zip(self.text.lines())
                .position(|(a, b)| a != b)
                .unwrap_or(expected.lines().count().min(self.text.lines().count()));
            panic!(
                "transcript {name} changed at line {}:\n  expected: {:?}\n  actual:   {:?}\n\
                 Review the behaviour change, then regenerate with BALLOT_BLESS=1.",
                first_difference + 1,
                expected.lines().nth(first_difference),
                self.text.lines().nth(first_difference),
            );
        }
    }
}

#[test]
fn election_replication_partition_and_recovery() {
    let mut cluster = Cluster::new(3);
    let mut transcript = Transcript::new();
    cluster.elect(1);
    transcript.step(
        "n1 times out, pre-votes, campaigns and wins; its no-op commits",
        &cluster,
    );
    cluster.propose(1, b"x=1");
    cluster.propose(1, b"y=2");
    cluster.settle();
    transcript.step("two proposals go out as one batch per follower", &cluster);
    cluster.isolate(1);
    cluster.propose(1, b"lost");
    cluster.settle();
    cluster.tick_all(35);
    transcript.step(
        "n1 cut off: its entry stays uncommitted, CheckQuorum deposes it, n2 or n3 takes over",
        &cluster,
    );
    cluster.heal();
    cluster.tick_all(6);
    transcript.step(
        "n1 rejoins: it steps down, its uncommitted entry is replaced",
        &cluster,
    );
    transcript.check("election_replication_partition_and_recovery");
}
