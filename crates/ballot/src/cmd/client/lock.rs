//! `lock NAME [-- COMMAND...]`: takes a lock through the Lock service under a lease this
//! process keeps alive, then either holds it until interrupted (printing the lock's key and its
//! fencing token) or runs COMMAND while holding it, with the token in `BALLOT_FENCING_TOKEN`.
//!
//! The lease is the lock: when renewals stop succeeding (the cluster is unreachable, or says the
//! lease is gone) for as long as its TTL, the lock must be taken to be lost, so COMMAND is
//! killed and the exit status is 1 (seed 001 §3.7: the holder stops using a lease when it
//! expires). A holder that still runs past that moment (paused, its clock slow) is what fenced
//! writes refuse: COMMAND passes its token to `ballot put --fence NAME:TOKEN`.

use super::connect::{CallError, ConnectArgs, Endpoints, Retry};
use super::lease::{revoke_lease, Renewals};
use super::ClientError;
use ballot_proto::v3lockpb::lock_client::LockClient;
use ballot_proto::v3lockpb::{LockRequest, UnlockRequest};
use ballot_server::etcd::lock::FENCING_TOKEN_METADATA;
use clap::Args;
use std::ffi::OsString;
use std::process::ExitCode;

/// The environment variable COMMAND finds its fencing token in.
pub const FENCING_TOKEN_ENV: &str = "BALLOT_FENCING_TOKEN";
/// The environment variable COMMAND finds the lock's key in.
pub const LOCK_KEY_ENV: &str = "BALLOT_LOCK_KEY";

#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    ballot lock jobs/nightly -- sh -c 'ballot put --fence jobs/nightly:$BALLOT_FENCING_TOKEN out done'\n  \
    ballot lock jobs/nightly        # prints the key and the token, holds until Ctrl-C")]
pub struct LockArgs {
    /// The lock's name; contenders are keys under NAME/ (as etcdctl lock writes them).
    pub name: String,
    /// Run this while holding the lock, then release it and exit with its status.
    #[arg(last = true)]
    pub command: Vec<OsString>,
    /// The TTL of the lease behind the lock, in seconds: how long the lock outlives this
    /// process if it dies without releasing it.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(i64).range(1..))]
    pub ttl: i64,
    #[command(flatten)]
    pub connection: ConnectArgs,
}

pub async fn run(args: LockArgs) -> Result<ExitCode, ClientError> {
    let endpoints = Endpoints::from_args(&args.connection)?;
    let (lease, mut renewals) = Renewals::grant(&endpoints, args.ttl).await?;
    let name = args.name.clone();
    let acquire = endpoints.call_with_timeout(Retry::Write, None, |channel| {
        let request = LockRequest {
            name: name.clone().into_bytes().into(),
            lease,
        };
        async move {
            let response = LockClient::new(channel).lock(request).await?;
            let token = response
                .metadata()
                .get(FENCING_TOKEN_METADATA)
                .and_then(|value| value.to_str().ok()?.parse::<i64>().ok());
            Ok::<_, CallError>((response.into_inner().key, token))
        }
    });
    let (key, token) = tokio::select! {
        acquired = acquire => acquired?.1,
        lost = renewals.until_lost(&endpoints) => {
            return Err(lost_before_grant(&args.name, lease, lost))
        }
        _ = tokio::signal::ctrl_c() => {
            revoke_lease(&endpoints, lease).await;
            return Ok(ExitCode::from(130));
        }
    };
    let token = token.ok_or_else(|| {
        ClientError::Local(format!(
            "the server granted {} without a fencing token: it is not a ballot server (use \
             etcdctl lock against etcd)",
            String::from_utf8_lossy(&key)
        ))
    })?;
    let key_text = String::from_utf8_lossy(&key).into_owned();
    let outcome = if args.command.is_empty() {
        println!("{key_text}");
        println!("{token}");
        tokio::select! {
            lost = renewals.until_lost(&endpoints) => Err(lost_lock(&args.name, lease, &lost, None)),
            _ = tokio::signal::ctrl_c() => Ok(ExitCode::SUCCESS),
        }
    } else {
        run_holding(&args, &key_text, token, lease, &endpoints, &mut renewals).await
    };
    // Released either way: deleting the key hands the lock on at once, and the lease's
    // revocation deletes anything else it kept.
    let _ = endpoints
        .call(Retry::Write, |channel| {
            let request = UnlockRequest { key: key.clone() };
            async move { Ok::<_, CallError>(LockClient::new(channel).unlock(request).await?) }
        })
        .await;
    revoke_lease(&endpoints, lease).await;
    outcome
}

/// Runs the command with the token in its environment until it exits (its status), the lease
/// is lost (killed; 1) or this process is interrupted (killed; 130).
async fn run_holding(
    args: &LockArgs,
    key: &str,
    token: i64,
    lease: i64,
    endpoints: &Endpoints,
    renewals: &mut Renewals,
) -> Result<ExitCode, ClientError> {
    let program = &args.command[0];
    let mut child = tokio::process::Command::new(program)
        .args(&args.command[1..])
        .env(FENCING_TOKEN_ENV, token.to_string())
        .env(LOCK_KEY_ENV, key)
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| {
            ClientError::Local(format!("cannot run {}: {error}", program.to_string_lossy()))
        })?;
    tokio::select! {
        status = child.wait() => {
            let status = status.map_err(|error| {
                ClientError::Local(format!("waiting for {}: {error}", program.to_string_lossy()))
            })?;
            // A command killed by a signal has no code: 128 + the signal, as shells report it.
            let code = status.code().unwrap_or_else(|| {
                use std::os::unix::process::ExitStatusExt;
                128 + status.signal().unwrap_or(0)
            });
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
        lost = renewals.until_lost(endpoints) => {
            let _ = child.kill().await;
            Err(lost_lock(&args.name, lease, &lost, Some(program)))
        }
        _ = tokio::signal::ctrl_c() => {
            let _ = child.kill().await;
            Ok(ExitCode::from(130))
        }
    }
}

fn lost_lock(name: &str, lease: i64, why: &str, killed: Option<&OsString>) -> ClientError {
    let killed = killed
        .map(|program| format!("; killed {}", program.to_string_lossy()))
        .unwrap_or_default();
    ClientError::Local(format!(
        "lost lock {name}: lease {lease:016x}: {why}{killed}"
    ))
}

fn lost_before_grant(name: &str, lease: i64, why: String) -> ClientError {
    ClientError::Local(format!(
        "gave up waiting for lock {name}: lease {lease:016x}: {why}"
    ))
}
