//! Crash test: a writer process appends through `GroupCommit` from several threads and prints each
//! index the moment its append is reported durable; the test SIGKILLs it at a seeded random
//! moment, reopens the WAL, and checks that every printed index is there with its payload. Several
//! rounds on the same directory, so each round also recovers from the previous kill.
//!
//! The writer is this test binary run again with `WRITER_DIR_VARIABLE` set, selecting the
//! `writer_process` test, which does nothing in a normal run.

use ballot_core::{Entry, EntryPayload, HardState, LogIndex};
use ballot_storage::wal::{GroupCommit, Wal, WalOptions};
use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const WRITER_DIR_VARIABLE: &str = "BALLOT_WAL_CRASH_WRITER_DIR";
const WRITER_ROUND_VARIABLE: &str = "BALLOT_WAL_CRASH_WRITER_ROUND";
/// Starts each of the writer's reports: the test harness prints on the same line before the first.
const MARKER: &str = "@wal ";
const WRITER_THREADS: usize = 4;
/// A writer nobody kills stops by itself after this long.
const WRITER_LIFETIME: Duration = Duration::from_secs(20);
const ROUNDS: u64 = 5;
/// Small segments, so that kills also land around segment roll-overs.
const OPTIONS: WalOptions = WalOptions {
    segment_size_bytes: 8 * 1024,
    record_bytes_max: 4096,
};

fn payload(index: LogIndex, round: u64) -> Bytes {
    Bytes::from(format!("round {round} entry {index} ").repeat(4))
}

/// The child: appends until killed, printing `durable <index>` and `hard <term> <commit>` lines.
#[test]
fn writer_process() {
    let Ok(dir) = std::env::var(WRITER_DIR_VARIABLE) else {
        return;
    };
    let round: u64 = std::env::var(WRITER_ROUND_VARIABLE)
        .unwrap()
        .parse()
        .unwrap();
    let (wal, _) = Wal::open(&dir, OPTIONS).expect("writer opens the WAL");
    let group = GroupCommit::new(wal);
    let started = Instant::now();
    let threads: Vec<_> = (0..WRITER_THREADS)
        .map(|thread| {
            let group = group.clone();
            std::thread::spawn(move || {
                let term = round + 1;
                while started.elapsed() < WRITER_LIFETIME {
                    let (sequence, index, hard_state) = group.with_wal(|wal| {
                        let index = wal.last_index() + 1;
                        let hard_state = (index % 16 == thread as u64).then_some(HardState {
                            term,
                            voted_for: Some(1),
                            commit_index: index,
                        });
                        let entry = Entry {
                            index,
                            term,
                            payload: EntryPayload::Command(payload(index, round)),
                        };
                        let sequence = wal.append(&[entry], hard_state).unwrap();
                        (sequence, index, hard_state)
                    });
                    group.wait_durable(sequence).unwrap();
                    // One write per line: a kill never leaves half a line in the pipe.
                    let mut line = format!("{MARKER}durable {index}\n");
                    if let Some(hard_state) = hard_state {
                        line += &format!("{MARKER}hard {} {}\n", hard_state.term, index);
                    }
                    std::io::stdout().lock().write_all(line.as_bytes()).unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

/// Runs one writer round; returns the lines it printed before it was killed.
fn run_writer(dir: &Path, round: u64, kill_after: Duration) -> Vec<String> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "writer_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(WRITER_DIR_VARIABLE, dir)
        .env(WRITER_ROUND_VARIABLE, round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the writer");
    let stdout = child.stdout.take().unwrap();
    let (lines_sender, lines) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let Some((_, report)) = line.split_once(MARKER) else {
                continue; // the test harness's own lines
            };
            if lines_sender.send(report.to_string()).is_err() {
                break;
            }
        }
    });
    let mut printed = Vec::new();
    // Start the clock at the first durable append, so that every kill lands while writing.
    loop {
        let line = lines
            .recv_timeout(Duration::from_secs(10))
            .expect("the writer reports a durable append within 10 s");
        let first = line.starts_with("durable ");
        printed.push(line);
        if first {
            break;
        }
    }
    std::thread::sleep(kill_after);
    child.kill().expect("SIGKILL the writer");
    child.wait().unwrap();
    reader.join().unwrap();
    printed.extend(lines.try_iter());
    printed
}

#[test]
fn every_append_reported_durable_survives_sigkill() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("wal");
    let seed = 0xD1E_D1E;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Index -> round whose payload it must hold.
    let mut acknowledged: BTreeMap<LogIndex, u64> = BTreeMap::new();
    let mut acknowledged_hard_state = (0, 0);
    for round in 0..ROUNDS {
        let kill_after = Duration::from_millis(rng.random_range(20..250));
        let case = format!("seed {seed:#x} round {round} (killed after {kill_after:?})");
        for line in run_writer(&dir, round, kill_after) {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["durable", index] => {
                    acknowledged.insert(index.parse().unwrap(), round);
                }
                ["hard", term, commit] => {
                    let printed = (term.parse().unwrap(), commit.parse().unwrap());
                    acknowledged_hard_state = acknowledged_hard_state.max(printed);
                }
                _ => panic!("{case}: unexpected report {line:?}"),
            }
        }

        let (_, recovered) = Wal::open(&dir, OPTIONS).unwrap_or_else(|e| panic!("{case}: {e}"));
        let last_index = recovered.last_index();
        for (&index, &written_in) in &acknowledged {
            assert!(
                index <= last_index,
                "{case}: entry {index} was reported durable but the log ends at {last_index}"
            );
            let entry = &recovered.entries[(index - recovered.first_index) as usize];
            assert_eq!(
                entry.payload,
                EntryPayload::Command(payload(index, written_in)),
                "{case}: entry {index}"
            );
        }
        let hard_state = recovered.hard_state;
        assert!(
            (hard_state.term, hard_state.commit_index) >= acknowledged_hard_state,
            "{case}: hard state {hard_state:?} older than the acknowledged {acknowledged_hard_state:?}"
        );
    }
    eprintln!(
        "{} appends acknowledged over {ROUNDS} rounds",
        acknowledged.len()
    );
    assert!(
        acknowledged.len() >= ROUNDS as usize,
        "every round acknowledged something: {}",
        acknowledged.len()
    );
}
