//! The client subcommands (`put`, `get`, `del`, `txn`, `watch`, `lease`, `member`, `status`,
//! `snapshot`): etcdctl's commands and output over the etcd v3 gRPC API, so they work against
//! ballot and against etcd alike; `group` (groups beside group 0), `lock` (a lock with a
//! fencing token, around a command) and `elect`, ballot's own, which work against ballot only.
//!
//! Each file owns one command group: it parses flags into a request, sends it through
//! [`connect::Endpoints`] (endpoint order, timeouts, failover) and hands the response to
//! [`output`] (simple, json, table). Nothing here keeps state between invocations.
//!
//! Exit status: 0 on success, 1 when a server answered with an error or no endpoint answered,
//! 2 on bad usage (bad flags, unparsable `txn` input, an unsupported output format).

pub mod connect;
pub mod elect;
pub mod group;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod member;
pub mod output;
pub mod snapshot;
pub mod status;
pub mod txn;
pub mod watch;

use clap::Subcommand;
use std::fmt;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Put a key (etcdctl put): prints OK, then the previous key and value with --prev-kv.
    Put(kv::PutArgs),
    /// Get a key or a range of keys (etcdctl get): prints each key, then its value.
    Get(kv::GetArgs),
    /// Delete a key or a range of keys (etcdctl del): prints how many were deleted.
    Del(kv::DelArgs),
    /// Run a transaction read from standard input: compares, then success ops, then failure ops.
    Txn(txn::TxnArgs),
    /// Watch a key or range and print every event until interrupted (Ctrl-C).
    Watch(watch::WatchArgs),
    /// Leases: grant, revoke, keep-alive, timetolive, list.
    Lease(lease::LeaseArgs),
    /// Cluster membership: list, add, remove, promote, update.
    Member(member::MemberArgs),
    /// One row per endpoint: id, version, db size, leader, learner, raft term and indexes.
    Status(status::StatusArgs),
    /// Snapshots of the state machine: `snapshot save FILE`.
    Snapshot(snapshot::SnapshotArgs),
    /// Replicated groups beside group 0 (ballot only): create, list, remove.
    Group(group::GroupArgs),
    /// Take a lock and hold it until Ctrl-C, or run a command while holding it (ballot only):
    /// the command gets the lock's fencing token in BALLOT_FENCING_TOKEN and is killed if the
    /// lock's lease is lost.
    Lock(lock::LockArgs),
    /// Campaign to lead an election and hold leadership until Ctrl-C, or print each leader as
    /// it changes with --observe (ballot only; etcdctl elect's keys).
    Elect(elect::ElectArgs),
    /// The job scheduler (ballot only): jobs with cron or periodic schedules, run by
    /// `ballot worker` processes; status and run history.
    Sched(crate::cmd::sched::SchedArgs),
    /// Run a scheduler worker (ballot only): registers under a lease, campaigns to lead the
    /// scheduler, executes the runs handed to it.
    Worker(crate::cmd::sched::WorkerArgs),
}

/// Everything a client command can fail with, each with its exit status.
#[derive(Debug)]
pub enum ClientError {
    /// Bad flags or input: nothing was sent. Exit 2.
    Usage(String),
    /// A server answered with an error. Exit 1.
    Server {
        endpoint: String,
        status: tonic::Status,
    },
    /// No endpoint could serve the request: each with why. Exit 1.
    Unreachable(Vec<(String, String)>),
    /// Connected, but the request took longer than --command-timeout. Exit 1.
    Timeout { endpoint: String, limit: Duration },
    /// A failure on our side (reading standard input, writing a file). Exit 1.
    Local(String),
}

impl ClientError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Usage(_) => 2,
            _ => 1,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Usage(message) | ClientError::Local(message) => write!(f, "{message}"),
            ClientError::Server { endpoint, status } => {
                write!(
                    f,
                    "{} (endpoint {endpoint})",
                    connect::status_text(status)
                )
            }
            ClientError::Unreachable(failures) => {
                write!(f, "no endpoint answered:")?;
                for (endpoint, reason) in failures {
                    write!(f, "\n  {endpoint}: {reason}")?;
                }
                Ok(())
            }
            ClientError::Timeout { endpoint, limit } => write!(
                f,
                "context deadline exceeded: {endpoint} did not answer within --command-timeout {limit:?}"
            ),
        }
    }
}

pub fn run(command: ClientCommand) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("Error: cannot start the tokio runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let outcome = runtime.block_on(async {
        let group = match &command {
            ClientCommand::Watch(args) => args.connection.group,
            ClientCommand::Lease(args) => args.connection.group,
            ClientCommand::Lock(args) => args.connection.group,
            ClientCommand::Elect(args) => args.connection.group,
            ClientCommand::Sched(args) => args.connection.group,
            ClientCommand::Worker(args) => args.connection.group,
            _ => 0,
        };
        if group != 0 {
            return Err(ClientError::Usage(format!(
                "--group {group}: watches, leases, locks and the scheduler are group 0's for now; --group \
                 applies to put, get, del and txn"
            )));
        }
        let done = |outcome: Result<(), ClientError>| outcome.map(|()| ExitCode::SUCCESS);
        match command {
            ClientCommand::Put(args) => done(kv::put(args).await),
            ClientCommand::Get(args) => done(kv::get(args).await),
            ClientCommand::Del(args) => done(kv::del(args).await),
            ClientCommand::Txn(args) => done(txn::run(args).await),
            ClientCommand::Watch(args) => done(watch::run(args).await),
            ClientCommand::Lease(args) => done(lease::run(args).await),
            ClientCommand::Member(args) => done(member::run(args).await),
            ClientCommand::Status(args) => done(status::run(args).await),
            ClientCommand::Snapshot(args) => done(snapshot::run(args).await),
            ClientCommand::Group(args) => done(group::run(args).await),
            ClientCommand::Lock(args) => lock::run(args).await,
            ClientCommand::Elect(args) => elect::run(args).await,
            ClientCommand::Sched(args) => done(crate::cmd::sched::run(args).await),
            ClientCommand::Worker(args) => done(crate::cmd::sched::run_worker(args).await),
        }
    });
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("Error: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}
