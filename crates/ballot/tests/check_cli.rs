//! `ballot check` as a user runs it: a short run against a real cluster passes and writes its
//! history and report; the same check against deliberately unsafe (serializable) reads under
//! partitions fails and says why; bad flags get clear errors.
//!
//! The two cluster runs take some 30 s each and are serialized, so that they do not compete for
//! the machine with each other.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// One cluster at a time.
static CLUSTER: Mutex<()> = Mutex::new(());

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn ballot(args: &[&str]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_ballot"))
        .args(args)
        .output()
        .expect("ballot runs");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn out_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ballot-check-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn history(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("history.json")).expect("history.json written");
    serde_json::from_str(&text).expect("history.json is JSON")
}

#[test]
fn a_short_run_against_a_healthy_cluster_passes() {
    let _one = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let dir = out_dir("pass");
    // Two groups: the keys alternate between group 0 and a group the run creates.
    let run = ballot(&[
        "check",
        "--nodes",
        "3",
        "--duration",
        "20s",
        "--faults",
        "all",
        "--groups",
        "2",
        "--seed",
        "11",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("verdict        PASS"), "{}", run.stdout);
    let history = history(&dir);
    let operations = history["operations"].as_array().unwrap();
    let acknowledged = operations
        .iter()
        .filter(|op| !matches!(op["outcome"]["type"].as_str(), Some("failed" | "unknown")))
        .count();
    assert!(
        acknowledged > 100,
        "only {acknowledged} operations succeeded"
    );
    assert_eq!(history["meta"]["groups"].as_u64(), Some(2));
    let acknowledged_in_group_1 = operations
        .iter()
        .filter(|op| op["key"].as_u64().is_some_and(|key| key % 2 == 1))
        .filter(|op| !matches!(op["outcome"]["type"].as_str(), Some("failed" | "unknown")))
        .count();
    assert!(
        acknowledged_in_group_1 > 50,
        "only {acknowledged_in_group_1} operations on group 1's keys succeeded"
    );
    let faults = history["faults"].as_array().unwrap();
    assert!(faults.len() >= 2, "faults: {faults:?}");
    assert!(
        operations
            .iter()
            .any(|op| op["worker"].as_u64() == Some(u64::MAX)),
        "the final read is in the history"
    );
    let report = std::fs::read_to_string(dir.join("report.html")).expect("report.html written");
    assert!(
        report.contains("<svg") && report.contains("PASS"),
        "{report:.300}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serializable_reads_under_partitions_are_reported_not_linearizable() {
    let _one = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let dir = out_dir("serializable");
    // A partition comes 1-3 s in and lasts 2-7 s; the cut-off node keeps serving its pinned
    // clients' serializable reads from its frozen state while the others write.
    let run = ballot(&[
        "check",
        "--nodes",
        "3",
        "--duration",
        "15s",
        "--faults",
        "partition",
        "--serializable",
        "--seed",
        "5",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("NOT LINEARIZABLE"), "{}", run.stdout);
    assert!(run.stdout.contains("verdict        FAIL"), "{}", run.stdout);
    assert!(run.stdout.contains("partition: "), "{}", run.stdout);
    let report = std::fs::read_to_string(dir.join("report.html")).expect("report.html written");
    assert!(report.contains("is not linearizable"), "{report:.300}");
    assert!(history(&dir)["meta"]["serializable"].as_bool().unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_flags_get_a_clear_error_and_exit_two() {
    let run = ballot(&["check", "--nodes", "1"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("--nodes must be between 3 and 7, got 1"),
        "{}",
        run.stderr
    );
    let run = ballot(&["check", "--faults", "partition,earthquake"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("unknown fault 'earthquake'") && run.stderr.contains("isolate-leader"),
        "{}",
        run.stderr
    );
    let run = ballot(&["check", "--duration", "1s"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("--duration must be between"),
        "{}",
        run.stderr
    );
    let run = ballot(&["check", "--groups", "17"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr
            .contains("--groups must be between 1 and 16, got 17"),
        "{}",
        run.stderr
    );
    let run = ballot(&["check", "--keys", "0"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("--keys"), "{}", run.stderr);
    let run = ballot(&["check", "--duration", "soon"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("invalid duration"), "{}", run.stderr);
}

#[test]
fn help_names_every_fault_and_the_lost_write_definition() {
    let run = ballot(&["check", "--help"]);
    assert_eq!(run.code, 0);
    for fault in [
        "partition",
        "asymmetric",
        "majority",
        "bridge",
        "isolate-leader",
        "crash",
        "pause",
        "transfer",
        "membership",
    ] {
        assert!(
            run.stdout.contains(fault),
            "{fault} missing:\n{}",
            run.stdout
        );
    }
    assert!(
        run.stdout.contains("Lost acknowledged write"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("Exit status"), "{}", run.stdout);
}
