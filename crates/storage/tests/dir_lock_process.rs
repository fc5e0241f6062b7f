//! The data directory lock against another process: this test binary run again with
//! `CHILD_DIR_VARIABLE` set, selecting `child_process`, which does nothing in a normal run.

use ballot_storage::dir_lock::{DirLock, DirLockError};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const CHILD_DIR_VARIABLE: &str = "BALLOT_DIR_LOCK_CHILD_DIR";
const CHILD_MODE_VARIABLE: &str = "BALLOT_DIR_LOCK_CHILD_MODE";
/// Starts the child's reports: the test harness prints on the same line before them.
const MARKER: &str = "@dir-lock ";

/// The child: `try` reports the outcome of one acquire and exits; `hold` acquires, reports, and
/// holds the lock until killed.
#[test]
fn child_process() {
    let Ok(dir) = std::env::var(CHILD_DIR_VARIABLE) else {
        return;
    };
    let mode = std::env::var(CHILD_MODE_VARIABLE).unwrap();
    match DirLock::acquire(&dir) {
        Ok(lock) => {
            println!("{MARKER}acquired");
            if mode == "hold" {
                std::thread::sleep(Duration::from_secs(30));
            }
            drop(lock);
        }
        Err(error) => println!("{MARKER}refused: {error}"),
    }
}

fn spawn_child(dir: &Path, mode: &str) -> (Child, impl Iterator<Item = String>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_VARIABLE, dir)
        .env(CHILD_MODE_VARIABLE, mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| Some(line.split_once(MARKER)?.1.to_string()));
    (child, lines)
}

#[test]
fn another_process_cannot_take_a_held_lock_until_it_is_released() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    let lock = DirLock::acquire(&dir).unwrap();

    let (mut child, mut lines) = spawn_child(&dir, "try");
    let outcome = lines.next().expect("the child reports");
    child.wait().unwrap();
    assert_eq!(
        outcome,
        format!(
            "refused: data directory {} is already locked by process {}: one node per data \
             directory",
            dir.display(),
            std::process::id()
        )
    );

    drop(lock);
    let (mut child, mut lines) = spawn_child(&dir, "try");
    assert_eq!(lines.next().as_deref(), Some("acquired"));
    child.wait().unwrap();
}

#[test]
fn a_killed_holder_releases_the_lock() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    let (mut child, mut lines) = spawn_child(&dir, "hold");
    assert_eq!(lines.next().as_deref(), Some("acquired"));
    match DirLock::acquire(&dir) {
        Err(DirLockError::Held {
            dir: named,
            holder_pid,
        }) => {
            assert_eq!(named, dir);
            assert_eq!(holder_pid, Some(child.id()));
        }
        other => panic!("expected the lock to be held by the child, got {other:?}"),
    }
    child.kill().unwrap();
    child.wait().unwrap();
    DirLock::acquire(&dir).expect("the kernel released the dead holder's lock");
}
