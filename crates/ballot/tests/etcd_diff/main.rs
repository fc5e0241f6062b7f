//! The differential test: the same seeded sequence of KV, Txn, Compact, Lease and Watch
//! requests, valid and invalid, sent to a real one-member etcd 3.4 and to a one-member
//! `ballot server`, every answer compared field by field (responses, gRPC codes and messages,
//! watch events and control responses).
//!
//! Normalised, and only these (`normalise`): member and cluster ids, `raft_term`,
//! server-assigned lease ids (mapped to each other by order of grant), remaining TTLs (within a
//! second), the arrival time of watch events (they are compared per watch, in order, not per
//! response), and the order of two lists etcd builds from Go maps (the lease list and a lease's
//! keys), sorted. After each operation both servers' watch streams are settled (`session`), so
//! a difference is reported at the operation that caused it.
//!
//! ```sh
//! cargo test -p ballot --features etcd-diff --test etcd_diff -- --nocapture
//! ETCD_DIFF_SEEDS=7 ETCD_DIFF_OPS=300 cargo test -p ballot --features etcd-diff --test etcd_diff
//! ```
//!
//! Variables: `ETCD_BIN` (default `/usr/bin/etcd`; missing is a failure, not a skip),
//! `ETCD_DIFF_SEEDS` (`1,2,3` or `1-4`; default `1-4`), `ETCD_DIFF_OPS` (per seed; default 800),
//! `ETCD_DIFF_KEEP_GOING=1` (report every difference of a seed, not only the first: later ones
//! may follow from the first), `ETCD_DIFF_TRACE=1` (print every operation and etcd's answers). A failing seed keeps both servers' directories and says where.

mod generate;
mod normalise;
mod servers;
mod session;

use generate::{Feedback, Generator, Op};
use normalise::Answer;
use servers::Server;
use session::{Session, WatchItems};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// Watch streams the operations use, per server.
const STREAMS: usize = 2;
/// Longest wait for a server's watch streams to send what an operation made due.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
const SEEDS_DEFAULT: &str = "1-4";
const OPS_DEFAULT: usize = 800;
/// Lines longer than this are cut in reports (values of several KiB).
const REPORT_LINE_CHARS_MAX: usize = 240;

fn seeds() -> Vec<u64> {
    let text = std::env::var("ETCD_DIFF_SEEDS").unwrap_or_else(|_| SEEDS_DEFAULT.into());
    let bad = || panic!("ETCD_DIFF_SEEDS is {text:?}; give seeds as 1,2,3 or a span as 1-4");
    if let Some((first, last)) = text.split_once('-') {
        let first: u64 = first.trim().parse().unwrap_or_else(|_| bad());
        let last: u64 = last.trim().parse().unwrap_or_else(|_| bad());
        return (first..=last).collect();
    }
    text.split(',')
        .map(|seed| seed.trim().parse().unwrap_or_else(|_| bad()))
        .collect()
}

fn ops_per_seed() -> usize {
    match std::env::var("ETCD_DIFF_OPS") {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("ETCD_DIFF_OPS is {text:?}; give a number of operations")),
        Err(_) => OPS_DEFAULT,
    }
}

/// `ETCD_DIFF_TRACE=1`: print every operation and etcd's transcript of it.
fn trace() -> bool {
    std::env::var("ETCD_DIFF_TRACE").is_ok_and(|v| v == "1")
}

fn keep_going() -> bool {
    std::env::var("ETCD_DIFF_KEEP_GOING").is_ok_and(|v| v == "1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_match_etcd() {
    let etcd = servers::etcd_binary();
    let ops = ops_per_seed();
    let mut failed = Vec::new();
    for seed in seeds() {
        let started = Instant::now();
        let outcome = run_seed(&etcd, seed, ops).await;
        println!(
            "seed {seed}: {} in {:.1} s",
            outcome.summary(),
            started.elapsed().as_secs_f64()
        );
        if outcome.differences > 0 {
            failed.push(seed);
        }
    }
    assert!(
        failed.is_empty(),
        "ballot's answers differ from etcd's for seeds {failed:?} (reports above; replay one \
         with ETCD_DIFF_SEEDS=<seed>)"
    );
}

/// Counts for a seed's summary line.
#[derive(Default)]
struct Outcome {
    ops: usize,
    by_kind: BTreeMap<&'static str, usize>,
    failures: usize,
    watch_items: usize,
    differences: usize,
}

impl Outcome {
    fn summary(&self) -> String {
        let kinds: Vec<String> = self
            .by_kind
            .iter()
            .map(|(kind, count)| format!("{kind} {count}"))
            .collect();
        format!(
            "{} operations ({}), {} answered with an error, {} watch items, {} differences",
            self.ops,
            kinds.join(", "),
            self.failures,
            self.watch_items,
            self.differences
        )
    }
}

fn kind(op: &Op) -> &'static str {
    match op {
        Op::Range(_) => "range",
        Op::Put(_) => "put",
        Op::DeleteRange(_) => "delete",
        Op::Txn(_) => "txn",
        Op::Compact(_) => "compact",
        Op::LeaseGrant(_) | Op::LeaseGrantShort(_) => "grant",
        Op::LeaseRevoke(_) => "revoke",
        Op::LeaseTimeToLive(_) => "ttl",
        Op::LeaseLeases => "leases",
        Op::LeaseKeepAlive(_) => "keepalive",
        Op::WatchCreate { .. } => "watch",
        Op::WatchCancel { .. } => "cancel",
        Op::WatchProgress { .. } => "progress",
    }
}

async fn run_seed(etcd_binary: &Path, seed: u64, ops: usize) -> Outcome {
    let root = servers::scratch_root().join(format!(
        "ballot-etcd-diff-{}-seed{seed}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&root);
    let ports = servers::free_ports(5);
    let mut etcd_server = Server::etcd(etcd_binary, root.join("etcd"), [ports[0], ports[1]]);
    let mut ballot_server = Server::ballot(root.join("ballot"), [ports[2], ports[3], ports[4]]);
    let (etcd_channel, ballot_channel) = tokio::join!(etcd_server.ready(), ballot_server.ready());
    let (mut etcd, mut ballot) = tokio::join!(
        Session::open("etcd", etcd_channel, STREAMS),
        Session::open("ballot", ballot_channel, STREAMS)
    );
    let mut generator = Generator::new(seed, STREAMS);
    let mut outcome = Outcome::default();
    for index in 0..ops {
        let op = generator.next_op();
        outcome.ops += 1;
        *outcome.by_kind.entry(kind(&op)).or_default() += 1;
        let (etcd_answers, mut ballot_answers) =
            tokio::join!(etcd.execute(&op), ballot.execute(&op));
        normalise::reconcile(&etcd_answers, &mut ballot_answers);
        outcome.failures += etcd_answers.iter().filter(|a| !a.succeeded()).count();
        let ((etcd_probe, etcd_revision), (ballot_probe, ballot_revision)) =
            tokio::join!(etcd.probe(), ballot.probe());
        let (etcd_settled, ballot_settled) = tokio::join!(
            etcd.settle(etcd_revision, SETTLE_TIMEOUT),
            ballot.settle(ballot_revision, SETTLE_TIMEOUT)
        );
        let etcd_items = etcd.take_watch_items();
        let ballot_items = ballot.take_watch_items();
        outcome.watch_items += etcd_items
            .iter()
            .map(|(_, items)| {
                items.control.len() + items.per_watch.values().map(Vec::len).sum::<usize>()
            })
            .sum::<usize>();
        let etcd_lines = transcript(&etcd_answers, &etcd_probe, &etcd_items, &etcd_settled);
        let ballot_lines = transcript(
            &ballot_answers,
            &ballot_probe,
            &ballot_items,
            &ballot_settled,
        );
        if trace() {
            println!("--- operation {index}: {op:?}");
            for line in &etcd_lines {
                println!("{}", cut(line));
            }
        }
        if etcd_lines != ballot_lines || etcd_settled.is_err() {
            outcome.differences += 1;
            report(seed, index, &op, &etcd_lines, &ballot_lines);
            etcd_server.keep();
            ballot_server.keep();
            println!(
                "kept both servers' directories (data, server.log) in {}",
                root.display()
            );
            if !keep_going() {
                break;
            }
        }
        generator.observe(
            &op,
            &Feedback {
                revision: etcd_revision,
                succeeded: etcd_answers.first().is_some_and(Answer::succeeded),
                unsynced_floor: etcd.unsynced_floor(),
            },
        );
    }
    drop((etcd, ballot));
    drop((etcd_server, ballot_server));
    if outcome.differences == 0 {
        let _ = std::fs::remove_dir_all(&root);
    }
    outcome
}

/// Everything one server said about one operation, as lines to compare.
fn transcript(
    answers: &[Answer],
    probe: &Answer,
    items: &[(String, WatchItems)],
    settled: &Result<(), String>,
) -> Vec<String> {
    let mut lines = Vec::new();
    let mut section = |title: String, text: &str| {
        lines.push(title);
        lines.extend(text.lines().map(|line| format!("    {line}")));
    };
    for (i, answer) in answers.iter().enumerate() {
        section(format!("answer {}:", i + 1), &format!("{answer:#?}"));
    }
    section(
        "probe (a read of a key no one writes):".into(),
        &format!("{probe:#?}"),
    );
    for (stream, items) in items {
        for item in &items.control {
            section(format!("{stream}, control:"), item);
        }
        for (watch_id, watch_items) in &items.per_watch {
            for item in watch_items {
                section(format!("{stream}, watch {watch_id}:"), item);
            }
        }
    }
    if let Err(missing) = settled {
        section("the watch streams did not settle:".into(), missing);
    }
    lines
}

fn cut(line: &str) -> String {
    if line.chars().count() <= REPORT_LINE_CHARS_MAX {
        return line.to_string();
    }
    let head: String = line.chars().take(REPORT_LINE_CHARS_MAX).collect();
    format!("{head}... ({} chars)", line.chars().count())
}

/// Prints the seed, the operation, the request and both transcripts' differing lines (with
/// three lines of context), etcd's as `-`, ballot's as `+`.
fn report(seed: u64, index: usize, op: &Op, etcd: &[String], ballot: &[String]) {
    let mut text = format!(
        "\n=== DIFFERENCE: seed {seed}, operation {index} (replay: ETCD_DIFF_SEEDS={seed} \
         ETCD_DIFF_OPS={})\n--- request\n",
        index + 1
    );
    for line in format!("{op:#?}").lines() {
        text.push_str(&format!("    {}\n", cut(line)));
    }
    text.push_str("--- answers: '-' etcd only, '+' ballot only\n");
    let diff = line_diff(etcd, ballot);
    let shown: Vec<bool> = (0..diff.len())
        .map(|i| {
            let from = i.saturating_sub(3);
            let to = (i + 3).min(diff.len() - 1);
            diff[from..=to].iter().any(|(mark, _)| *mark != ' ')
        })
        .collect();
    let mut skipped = false;
    for ((mark, line), show) in diff.iter().zip(shown) {
        if show {
            if skipped {
                text.push_str("  ...\n");
                skipped = false;
            }
            text.push_str(&format!("{mark} {}\n", cut(line)));
        } else {
            skipped = true;
        }
    }
    println!("{text}");
}

/// A longest-common-subsequence line diff: `' '` both, `'-'` left only, `'+'` right only.
fn line_diff<'a>(left: &'a [String], right: &'a [String]) -> Vec<(char, &'a str)> {
    let (n, m) = (left.len(), right.len());
    let mut common = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            common[i][j] = if left[i] == right[j] {
                common[i + 1][j + 1] + 1
            } else {
                common[i + 1][j].max(common[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut diff = Vec::new();
    while i < n || j < m {
        if i < n && j < m && left[i] == right[j] {
            diff.push((' ', left[i].as_str()));
            i += 1;
            j += 1;
        } else if j < m && (i == n || common[i][j + 1] >= common[i + 1][j]) {
            diff.push(('+', right[j].as_str()));
            j += 1;
        } else {
            diff.push(('-', left[i].as_str()));
            i += 1;
        }
    }
    diff
}
