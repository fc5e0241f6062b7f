//! `ballot sched` and `ballot worker` as a user runs them, against a real three-node cluster:
//! job definitions checked before anything is written, runs dispatched once per slot, a
//! dependent job on its upstream's worker, a paused leader fenced off, and a run whose worker
//! stopped handed on after its lease expired, with the stopped execution's late writes refused.

use ballot::dev_cluster::RunningCluster;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BALLOT: &str = env!("CARGO_BIN_EXE_ballot");

struct Fixture {
    cluster: RunningCluster,
    dir: PathBuf,
    workers: Vec<(String, Child)>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for (_, child) in &mut self.workers {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.cluster.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Fixture {
    fn start(test: &str) -> Fixture {
        let dir = std::env::temp_dir().join(format!("ballot-sched-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cluster = RunningCluster::start(BALLOT.as_ref(), 3, &dir.join("cluster"), true)
            .expect("the cluster starts");
        Fixture {
            cluster,
            dir,
            workers: Vec::new(),
        }
    }

    fn endpoints(&self) -> String {
        self.cluster.plan.client_urls().join(",")
    }

    /// `ballot ARGS`: exit code, stdout, stderr.
    fn ballot(&self, args: &[&str]) -> (i32, String, String) {
        let output = Command::new(BALLOT)
            .args(args)
            .env("BALLOT_ENDPOINTS", self.endpoints())
            .output()
            .expect("ballot runs");
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    fn ballot_ok(&self, args: &[&str]) -> String {
        let (code, stdout, stderr) = self.ballot(args);
        assert_eq!(code, 0, "ballot {args:?}: {stdout}{stderr}");
        stdout
    }

    /// Starts `ballot worker --name NAME EXTRA...` (a 2 s lease unless EXTRA says) with the `ballot` binary on its PATH (job
    /// commands call it), logging to NAME.log.
    fn worker(&mut self, name: &str, extra: &[&str]) {
        let bin_dir = Path::new(BALLOT).parent().unwrap();
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        let child = Command::new(BALLOT)
            .args(["worker", "--name", name])
            .args(if extra.contains(&"--ttl") {
                &[][..]
            } else {
                &["--ttl", "2"][..]
            })
            .args(extra)
            .env("BALLOT_ENDPOINTS", self.endpoints())
            .env("PATH", path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the worker starts");
        self.workers.push((name.to_string(), child));
    }

    fn worker_pid(&self, name: &str) -> i32 {
        self.workers
            .iter()
            .find(|(n, _)| n == name)
            .expect("a worker of that name")
            .1
            .id() as i32
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    fn logs(&self) -> String {
        self.workers
            .iter()
            .map(|(name, _)| format!("--- {name}.log\n{}", self.log(name)))
            .collect()
    }

    fn runs(&self, job: &str) -> Vec<Value> {
        let text = self.ballot_ok(&["sched", "runs", job, "--limit", "1000", "-w", "json"]);
        match serde_json::from_str(&text) {
            Ok(Value::Array(runs)) => runs,
            _ => panic!("not a JSON list: {text}"),
        }
    }

    /// `job`'s run for `slot`, if it exists.
    fn run(&self, job: &str, slot: &str) -> Option<Value> {
        self.runs(job).into_iter().find(|run| run["slot"] == slot)
    }

    /// Waits for a run of `job` to be running: its slot and its worker.
    fn started_run(&self, job: &str) -> (String, String) {
        self.wait_for("the run to start", || {
            let runs = self.runs(job);
            let run = runs.iter().find(|run| state(run) == "running")?;
            Some((
                run["slot"].as_str()?.to_string(),
                run["worker"].as_str()?.to_string(),
            ))
        })
    }

    fn status(&self) -> Value {
        serde_json::from_str(&self.ballot_ok(&["sched", "status", "-w", "json"])).unwrap()
    }

    /// Polls `check` until it returns Some, for at most 30 s.
    fn wait_for<T>(&self, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(value) = check() {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn get(&self, key: &str) -> Option<String> {
        let text = self.ballot_ok(&["get", key, "--print-value-only"]);
        text.lines().next().map(str::to_string)
    }
}

fn signal(pid: i32, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {pid}");
}

fn state(run: &Value) -> &str {
    run["state"].as_str().unwrap_or("")
}

#[test]
fn jobs_are_checked_before_anything_is_written() {
    let fixture = Fixture::start("jobs");
    let refusals: [(&[&str], &str); 6] = [
        (&["--cron", "61 * * * * *"], "is not a cron expression"),
        (
            &["--cron", "* * * * *", "--tz", "Mars/Olympus"],
            "Mars/Olympus",
        ),
        (&["--every", "1500ms"], "whole seconds"),
        (&["--after", "ghost"], "do not exist: ghost"),
        (
            &["--every", "1s", "--after", "a"],
            "takes no --cron or --every",
        ),
        (
            &[],
            "give the job --cron EXPR, --every DURATION or --after JOB",
        ),
    ];
    fixture.ballot_ok(&[
        "sched",
        "job",
        "add",
        "a",
        "--every",
        "60s",
        "--command",
        "true",
    ]);
    fixture.ballot_ok(&[
        "sched",
        "job",
        "add",
        "z",
        "--every",
        "5s",
        "--command",
        "true",
    ]);
    for (flags, why) in refusals {
        let mut args = vec!["sched", "job", "add", "new", "--command", "true"];
        args.extend_from_slice(flags);
        let (code, stdout, stderr) = fixture.ballot(&args);
        assert_eq!(code, 2, "{flags:?}: {stdout}{stderr}");
        assert!(stderr.contains(why), "{flags:?}: {stderr}");
    }
    fixture.ballot_ok(&[
        "sched",
        "job",
        "add",
        "b",
        "--after",
        "a",
        "--command",
        "true",
    ]);
    let (code, _, stderr) = fixture.ballot(&[
        "sched",
        "job",
        "add",
        "c",
        "--after",
        "b,z",
        "--command",
        "x",
    ]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("scheduled by different jobs (a, z)"),
        "{stderr}"
    );
    let (code, _, stderr) = fixture.ballot(&[
        "sched",
        "job",
        "add",
        "a",
        "--every",
        "1s",
        "--command",
        "x",
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("a job named a exists"), "{stderr}");
    let (code, _, stderr) = fixture.ballot(&["sched", "job", "rm", "a"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("jobs run after a: b"), "{stderr}");

    let list = fixture.ballot_ok(&["sched", "job", "list"]);
    let names: Vec<&str> = list
        .lines()
        .map(|line| line.split('\t').next().unwrap())
        .collect();
    assert_eq!(
        names,
        ["a", "b", "z"],
        "nothing refused was written: {list}"
    );
    fixture.ballot_ok(&["sched", "job", "pause", "z"]);
    let shown: Value =
        serde_json::from_str(&fixture.ballot_ok(&["sched", "job", "show", "z"])).unwrap();
    assert_eq!(shown["paused"], true);
    assert_eq!(shown["schedule"]["seconds"], 5);
    fixture.ballot_ok(&["sched", "job", "resume", "z"]);
    fixture.ballot_ok(&["sched", "job", "rm", "b"]);
    fixture.ballot_ok(&["sched", "job", "rm", "a"]);
    let (code, _, stderr) = fixture.ballot(&["sched", "job", "show", "a"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("no job named a"), "{stderr}");
    let (code, _, stderr) = fixture.ballot(&["sched", "runs", "--state", "done"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("not a run state"), "{stderr}");
}

#[test]
fn each_slot_runs_once_and_a_paused_leader_is_fenced_off() {
    let mut fixture = Fixture::start("slots");
    fixture.ballot_ok(&[
        "sched",
        "job",
        "add",
        "tick",
        "--every",
        "1s",
        "--command",
        "ballot put --fence \"$BALLOT_FENCE\" out/tick/$BALLOT_SLOT $BALLOT_WORKER",
    ]);
    fixture.ballot_ok(&[
        "sched",
        "job",
        "add",
        "tock",
        "--after",
        "tick",
        "--command",
        "ballot put --fence \"$BALLOT_FENCE\" out/tock/$BALLOT_SLOT $BALLOT_WORKER",
    ]);
    for name in ["w1", "w2", "w3"] {
        fixture.worker(name, &[]);
    }
    let leader = fixture.wait_for("a leader", || {
        let status = fixture.status();
        let leader = status["leader"]["worker"].as_str()?.to_string();
        (status["workers"].as_array()?.len() == 3).then_some(leader)
    });
    fixture.wait_for("three dependent runs", || {
        (fixture
            .runs("tock")
            .iter()
            .filter(|run| state(run) == "succeeded")
            .count()
            >= 3)
            .then_some(())
    });

    // Stop the leader past its lease: another worker is elected, and the stopped one, when it
    // comes back, finds its lease gone rather than dispatching as a second leader.
    signal(fixture.worker_pid(&leader), "-STOP");
    let next = fixture.wait_for("another leader", || {
        let next = fixture.status()["leader"]["worker"].as_str()?.to_string();
        (next != leader).then_some(next)
    });
    signal(fixture.worker_pid(&leader), "-CONT");
    fixture.wait_for("the old leader to notice", || {
        fixture
            .log(&leader)
            .contains("lost its lease")
            .then_some(())
    });
    let resumed_at = fixture.runs("tick").len();
    fixture.wait_for("runs under the new leader", || {
        (fixture
            .runs("tock")
            .iter()
            .filter(|run| state(run) == "succeeded")
            .count()
            >= resumed_at + 2)
            .then_some(())
    });

    let ticks = fixture.runs("tick");
    let tocks = fixture.runs("tock");
    let mut slots: Vec<&str> = ticks
        .iter()
        .map(|run| run["slot"].as_str().unwrap())
        .collect();
    slots.dedup();
    assert_eq!(slots.len(), ticks.len(), "one run per slot");
    for run in ticks.iter().filter(|run| state(run) == "succeeded") {
        let slot = run["slot"].as_str().unwrap();
        let worker = run["worker"].as_str().unwrap();
        assert_eq!(
            fixture.get(&format!("out/tick/{slot}")).as_deref(),
            Some(worker),
            "the run's fenced write is its worker's"
        );
        assert!(run["token"].as_i64().unwrap() > 0, "{run}");
        let tock = tocks
            .iter()
            .find(|t| t["slot"] == run["slot"] && state(t) == "succeeded");
        if let Some(tock) = tock {
            assert_eq!(
                tock["worker"], run["worker"],
                "a dependent run goes where its upstream ran"
            );
        }
    }
    let dispatched_by_new: Vec<&Value> = ticks
        .iter()
        .filter(|run| run["leader_rev"].as_i64() > ticks[0]["leader_rev"].as_i64())
        .collect();
    assert!(
        !dispatched_by_new.is_empty(),
        "the new leader ({next}) dispatched: {ticks:?}"
    );
    assert!(
        ticks.iter().all(|run| state(run) != "failed"),
        "{ticks:?}\n{}",
        fixture.logs()
    );
}

#[test]
fn a_stopped_workers_run_is_handed_on_and_its_late_writes_are_refused() {
    let mut fixture = Fixture::start("handover");
    // Yearly, so that only run-now runs it.
    fixture.ballot_ok(&[
        "sched",
        "job",
        "add",
        "slow",
        "--cron",
        "0 0 0 1 1 *",
        "--command",
        "sleep 4; ballot put --fence \"$BALLOT_FENCE\" result/$BALLOT_SLOT $BALLOT_WORKER",
    ]);
    fixture.worker("leader", &[]);
    fixture.wait_for("a leader", || {
        fixture.status()["leader"]["worker"].as_str().map(|_| ())
    });
    fixture.worker("e1", &["--no-campaign"]);
    fixture.worker("e2", &["--no-campaign"]);
    fixture.wait_for("three workers", || {
        (fixture.status()["workers"].as_array()?.len() == 3).then_some(())
    });
    fixture.ballot_ok(&["sched", "job", "run-now", "slow"]);
    let (slot, first) = fixture.started_run("slow");
    assert_ne!(first, "leader");
    signal(fixture.worker_pid(&first), "-STOP");
    let second = fixture.wait_for("the run handed on", || {
        let run = fixture.run("slow", &slot)?;
        let worker = run["worker"].as_str()?;
        (worker != first && run["attempt"].as_u64()? >= 2).then(|| worker.to_string())
    });
    let done = fixture.wait_for("the handed-on run to finish", || {
        let run = fixture.run("slow", &slot)?;
        (state(&run) == "succeeded").then_some(run)
    });
    signal(fixture.worker_pid(&first), "-CONT");
    assert_eq!(done["worker"], second.as_str());
    assert!(done["note"].as_str().unwrap_or("").is_empty() || state(&done) == "succeeded");
    // The stopped worker's command kept running (its own process group) and wrote after its
    // worker's lease had expired: refused, so the result is the second execution's.
    assert_eq!(
        fixture.get(&format!("result/{slot}")).as_deref(),
        Some(second.as_str()),
        "{}",
        fixture.logs()
    );
    fixture.wait_for("the stopped worker to notice", || {
        fixture.log(&first).contains("lost its lease").then_some(())
    });
    let runs = fixture.runs("slow");
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(
        state(&runs[0]),
        "succeeded",
        "the late execution did not overwrite it: {runs:?}"
    );
}

/// The fences themselves, without the lease's help: a lease revoked behind a worker's back is
/// noticed only at its next renewal (a third of the 60 s TTL), so until then the executor and
/// the leader act on a stale belief. The store refuses what they write. (Both are caught when
/// the workers run with BALLOT_SCHED_BREAK_UNFENCED, the deliberate bug of `ballot check`.)
#[test]
fn revoked_leases_fence_off_an_executor_and_a_leader_that_have_not_noticed() {
    let mut fixture = Fixture::start("revoked");
    fixture.ballot_ok(&[
        "sched",
        "job",
        "add",
        "tick",
        "--every",
        "1s",
        "--command",
        "true",
    ]);
    fixture.ballot_ok(&[
        "sched",
        "job",
        "add",
        "slow",
        "--cron",
        "0 0 0 1 1 *",
        "--command",
        "sleep 2",
    ]);
    fixture.worker("l1", &["--ttl", "60"]);
    fixture.wait_for("l1 to lead", || {
        (fixture.status()["leader"]["worker"] == "l1").then_some(())
    });
    fixture.worker("e1", &["--ttl", "60", "--no-campaign"]);
    fixture.worker("e2", &["--ttl", "60", "--no-campaign"]);
    let lease_of = |fixture: &Fixture, name: &str| -> Option<String> {
        let status = fixture.status();
        let workers = status["workers"].as_array()?.clone();
        let worker = workers.iter().find(|w| w["name"] == name)?;
        Some(worker["lease"].as_str()?.to_string())
    };
    fixture.wait_for("three workers", || {
        (fixture.status()["workers"].as_array()?.len() == 3).then_some(())
    });

    fixture.ballot_ok(&["sched", "job", "run-now", "slow"]);
    let (slot, first) = fixture.started_run("slow");
    let lease = lease_of(&fixture, &first).expect("the executor is registered");
    fixture.ballot_ok(&["lease", "revoke", &lease]);
    let done = fixture.wait_for("the run handed on and finished", || {
        let run = fixture.run("slow", &slot)?;
        (state(&run) == "succeeded" && run["worker"] != first.as_str()).then_some(run)
    });
    fixture.wait_for("the first execution's result to be refused", || {
        fixture
            .log(&first)
            .contains("the store refused this execution's write")
            .then_some(())
    });
    assert!(
        !fixture
            .log(&first)
            .contains(&format!("slow/{slot} succeeded")),
        "a second result was accepted: {done}\n{}",
        fixture.logs()
    );

    fixture.worker("l2", &["--ttl", "60"]);
    fixture.wait_for("l2 to register", || lease_of(&fixture, "l2"));
    let lease = lease_of(&fixture, "l1").expect("the leader is registered");
    fixture.ballot_ok(&["lease", "revoke", &lease]);
    fixture.wait_for("l2 to lead", || {
        (fixture.status()["leader"]["worker"] == "l2").then_some(())
    });
    fixture.wait_for("l1's writes to be refused", || {
        let log = fixture.log("l1");
        (log.contains("no longer leads") && log.contains("the fence does not hold")).then_some(())
    });
}
