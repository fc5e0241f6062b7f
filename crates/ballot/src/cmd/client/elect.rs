//! `elect NAME VALUE` and `elect NAME --observe`: campaign through the Election service under
//! a lease this process keeps alive, print the leadership once won (key, value, fencing token)
//! and hold it until interrupted; or print each leader's value in turn, as others must learn who
//! won (seed 000 §2.3).
//!
//! As with `lock`, the lease is the leadership: when renewals fail for a whole TTL, or the
//! cluster says the lease is gone, this process stops calling itself leader and exits 1.

use super::connect::{CallError, ConnectArgs, Endpoints, Retry};
use super::lease::{revoke_lease, Renewals};
use super::ClientError;
use ballot_proto::v3electionpb::election_client::ElectionClient;
use ballot_proto::v3electionpb::{CampaignRequest, LeaderRequest, ResignRequest};
use clap::Args;
use std::process::ExitCode;

#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    ballot elect scheduler worker-1      # waits, then prints the key, the value and the token\n  \
    ballot elect scheduler --observe     # prints each leader's value as it changes")]
pub struct ElectArgs {
    /// The election's name; candidates are keys under NAME/ (as etcdctl elect writes them).
    pub name: String,
    /// This candidate's value (its name or address), proclaimed once it leads.
    #[arg(required_unless_present = "observe", conflicts_with = "observe")]
    pub value: Option<String>,
    /// Do not campaign: print each leader's value as leadership changes, until interrupted.
    #[arg(long)]
    pub observe: bool,
    /// The TTL of the lease behind the candidacy, in seconds: how long the leadership outlives
    /// this process if it dies without resigning.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(i64).range(1..))]
    pub ttl: i64,
    #[command(flatten)]
    pub connection: ConnectArgs,
}

pub async fn run(args: ElectArgs) -> Result<ExitCode, ClientError> {
    let endpoints = Endpoints::from_args(&args.connection)?;
    match &args.value {
        None => observe(&endpoints, &args.name).await,
        Some(value) => campaign(&endpoints, &args, value).await,
    }
}

async fn observe(endpoints: &Endpoints, name: &str) -> Result<ExitCode, ClientError> {
    let request = LeaderRequest {
        name: name.as_bytes().to_vec().into(),
    };
    let watching = endpoints.call_with_timeout(Retry::Read, None, |channel| {
        let request = request.clone();
        async move {
            let mut leaders = ElectionClient::new(channel)
                .observe(request)
                .await?
                .into_inner();
            while let Some(leader) = leaders.message().await? {
                if let Some(kv) = leader.kv {
                    println!("{}", String::from_utf8_lossy(&kv.value));
                }
            }
            Err::<(), _>(CallError::Status(tonic::Status::unavailable(
                "the server ended the observe stream",
            )))
        }
    });
    tokio::select! {
        ended = watching => ended.map(|_| ExitCode::SUCCESS),
        _ = tokio::signal::ctrl_c() => Ok(ExitCode::SUCCESS),
    }
}

async fn campaign(
    endpoints: &Endpoints,
    args: &ElectArgs,
    value: &str,
) -> Result<ExitCode, ClientError> {
    let (lease, mut renewals) = Renewals::grant(endpoints, args.ttl).await?;
    let request = CampaignRequest {
        name: args.name.as_bytes().to_vec().into(),
        lease,
        value: value.as_bytes().to_vec().into(),
    };
    let campaigning = endpoints.call_with_timeout(Retry::Write, None, |channel| {
        let request = request.clone();
        async move {
            let won = ElectionClient::new(channel).campaign(request).await?;
            Ok::<_, CallError>(won.into_inner().leader)
        }
    });
    let leader = tokio::select! {
        won = campaigning => won?.1,
        lost = renewals.until_lost(endpoints) => {
            return Err(ClientError::Local(format!(
                "gave up campaigning in {}: lease {lease:016x}: {lost}", args.name
            )))
        }
        _ = tokio::signal::ctrl_c() => {
            revoke_lease(endpoints, lease).await;
            return Ok(ExitCode::from(130));
        }
    };
    let leader = leader.ok_or_else(|| {
        ClientError::Local("the server answered a won campaign without its leader key".into())
    })?;
    println!("{}", String::from_utf8_lossy(&leader.key));
    println!("{value}");
    println!("{}", leader.rev);
    let outcome = tokio::select! {
        lost = renewals.until_lost(endpoints) => Err(ClientError::Local(format!(
            "lost leadership of {}: lease {lease:016x}: {lost}", args.name
        ))),
        _ = tokio::signal::ctrl_c() => Ok(ExitCode::SUCCESS),
    };
    let _ = endpoints
        .call(Retry::Write, |channel| {
            let request = ResignRequest {
                leader: Some(leader.clone()),
            };
            async move { Ok::<_, CallError>(ElectionClient::new(channel).resign(request).await?) }
        })
        .await;
    revoke_lease(endpoints, lease).await;
    outcome
}
