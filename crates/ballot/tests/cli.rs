//! The `ballot sim` command as a user runs it: summary line, exit codes, errors, help.

use std::process::Command;

fn ballot(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ballot"))
        .args(args)
        .output()
        .expect("ballot runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_clean_run_ends_with_one_summary_line_and_exit_zero() {
    let (code, stdout, _) = ballot(&[
        "sim", "raft", "--nodes", "3", "--seeds", "20", "--faults", "all",
    ]);
    assert_eq!(code, 0, "{stdout}");
    let last = stdout.lines().last().unwrap();
    assert!(
        last.starts_with("sim raft: 20 seeds (0..=19), 3 nodes, faults all"),
        "{last}"
    );
    assert!(last.contains(" 0 violations"), "{last}");
}

#[test]
fn many_groups_run_on_the_same_nodes_and_a_failing_seed_replays_with_them() {
    let (code, stdout, _) = ballot(&[
        "sim", "raft", "--nodes", "3", "--groups", "4", "--seeds", "10",
    ]);
    assert_eq!(code, 0, "{stdout}");
    let last = stdout.lines().last().unwrap();
    assert!(
        last.starts_with("sim raft: 10 seeds (0..=9), 3 nodes, 4 groups, faults all"),
        "{last}"
    );
    let (code, stdout, _) = ballot(&["sim", "raft", "--groups", "4", "--break", "stale-read"]);
    assert_eq!(code, 1, "a caught break exits 1:\n{stdout}");
    let replay = stdout
        .lines()
        .find(|l| l.starts_with("replay: "))
        .expect("a replay command");
    assert!(replay.contains("--groups 4"), "{replay}");
}

#[test]
fn a_break_is_caught_with_seed_trace_and_replay_command() {
    let (code, stdout, _) = ballot(&["sim", "raft", "--nodes", "5", "--break", "stale-read"]);
    assert_eq!(code, 1, "a caught break exits 1:\n{stdout}");
    assert!(stdout.contains("[linearizability]"), "{stdout}");
    assert!(stdout.contains("--- last"), "the trace tail is shown");
    let replay = stdout
        .lines()
        .find(|l| l.starts_with("replay: "))
        .expect("a replay command");
    assert!(
        replay.contains("--break stale-read") && replay.contains("--seed "),
        "{replay}"
    );
}

#[test]
fn one_seed_replays_with_a_trace() {
    let (code, stdout, _) = ballot(&["sim", "raft", "--seed", "3", "--trace", "--steps", "300"]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("is leader in term"),
        "role changes are traced"
    );
    assert!(stdout.contains("RequestVote"), "messages are traced");
    assert!(stdout
        .lines()
        .last()
        .unwrap()
        .starts_with("sim raft: 1 seed (3)"));
}

#[test]
fn bad_flags_get_a_clear_error_and_exit_two() {
    let (code, _, stderr) = ballot(&["sim", "raft", "--nodes", "0"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("nodes"), "{stderr}");
    let (code, _, stderr) = ballot(&["sim", "raft", "--faults", "drop,earthquake"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("unknown fault 'earthquake'"), "{stderr}");
    let (code, _, stderr) = ballot(&["sim", "raft", "--groups", "0"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("groups must be in 1..=64, got 0"),
        "{stderr}"
    );
    let (code, _, stderr) = ballot(&["sim", "raft", "--break", "everything"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("persist-vote"),
        "the error lists the valid breaks: {stderr}"
    );
}

#[test]
fn help_explains_every_fault_and_break() {
    let (code, stdout, _) = ballot(&["sim", "--help"]);
    assert_eq!(code, 0);
    for word in [
        "torn-tail",
        "isolate-leader",
        "membership",
        "transfer",
        "commit-old-term",
        "no-prevote-check",
        "stale-read",
        "persist-vote",
        "linearizability",
        "--groups",
        "groups",
    ] {
        assert!(stdout.contains(word), "--help does not mention {word}");
    }
}

#[test]
fn the_simulated_demo_tells_elections_faults_and_the_verdict() {
    let (code, stdout, _) = ballot(&["demo", "--simulated"]);
    assert_eq!(code, 0, "{stdout}");
    for expected in [
        "is elected leader for term",
        "crashes",
        "isolated from the others",
        "Linearizable: yes",
        "Violations: 0",
    ] {
        assert!(
            stdout.contains(expected),
            "demo output lacks '{expected}':\n{stdout}"
        );
    }
}

#[test]
fn a_closed_pipe_ends_the_trace_quietly() {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_ballot"))
        .args(["sim", "raft", "--seed", "1", "--trace"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 64];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    drop(child.stdout.take()); // like `| head`
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn the_demo_runs_a_real_cluster_through_a_leader_crash() {
    let (code, stdout, stderr) = ballot(&["demo"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    for expected in [
        "leader: n",
        "get /demo/ --prefix     -> /demo/color=blue, /demo/shape=circle",
        "first attempt  -> succeeded: true",
        "second attempt -> succeeded: false",
        "event: PUT /demo/size=large",
        "revoked it -> get /demo/session: []",
        "nothing acknowledged was lost: /demo/after-crash=yes, /demo/color=green",
        "caught up after",
    ] {
        assert!(
            stdout.contains(expected),
            "demo output lacks '{expected}':\n{stdout}"
        );
    }
}
