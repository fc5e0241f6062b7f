//! `status`: asks every endpoint (all at once) for its status and prints one row per endpoint
//! that answered. Unlike the other commands it does not stop at the first endpoint: reporting
//! each one is its purpose. Exit 1 when any endpoint did not answer, after the rows of those
//! that did.

use super::connect::{CallError, ConnectArgs, Endpoints, Retry};
use super::output;
use super::ClientError;
use ballot_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use ballot_proto::etcdserverpb::{StatusRequest, StatusResponse};
use clap::Args;

#[derive(Args, Debug)]
#[command(
    after_help = "Columns: endpoint, member id (hex), version, db size, is leader, is learner, \
    raft term, raft index, raft applied index.\n\n\
    Examples:\n  \
    ballot status --endpoints http://127.0.0.1:2379,http://127.0.0.1:22379,http://127.0.0.1:32379 -w table\n  \
    ballot status -w json"
)]
pub struct StatusArgs {
    #[command(flatten)]
    pub connection: ConnectArgs,
}

pub async fn run(args: StatusArgs) -> Result<(), ClientError> {
    let format = args.connection.write_out;
    output::require(format, output::ALL, "status")?;
    let endpoints = Endpoints::from_args(&args.connection)?;
    let mut tasks = tokio::task::JoinSet::new();
    for (index, endpoint) in endpoints.list.iter().enumerate() {
        let one = Endpoints {
            list: vec![endpoint.clone()],
            ..endpoints.clone()
        };
        tasks.spawn(async move { (index, status_of(one).await) });
    }
    let mut answers = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        answers.push(joined.expect("status tasks do not panic"));
    }
    answers.sort_by_key(|(index, _)| *index);
    let mut statuses = Vec::new();
    let mut failures = Vec::new();
    for (index, answer) in answers {
        let endpoint = endpoints.list[index].clone();
        match answer {
            Ok(status) => {
                for error in &status.errors {
                    eprintln!("warning: {endpoint} reports: {error}");
                }
                statuses.push((endpoint, status));
            }
            Err(error) => failures.push(format!("{endpoint}: {}", single_line(&error))),
        }
    }
    output::write_stdout(&output::status(format, &statuses))?;
    if failures.is_empty() {
        return Ok(());
    }
    Err(ClientError::Local(format!(
        "{} of {} endpoints did not answer:\n  {}",
        failures.len(),
        endpoints.list.len(),
        failures.join("\n  ")
    )))
}

async fn status_of(endpoint: Endpoints) -> Result<StatusResponse, ClientError> {
    let (_, status) = endpoint
        .call(Retry::Read, |channel| async move {
            Ok::<_, CallError>(
                MaintenanceClient::new(channel)
                    .status(StatusRequest {})
                    .await?
                    .into_inner(),
            )
        })
        .await?;
    Ok(status)
}

/// The reason alone, without the endpoint the error already names.
fn single_line(error: &ClientError) -> String {
    match error {
        ClientError::Unreachable(failures) => failures
            .iter()
            .map(|(_, reason)| reason.clone())
            .collect::<Vec<_>>()
            .join("; "),
        ClientError::Server { status, .. } => super::connect::status_text(status),
        other => other.to_string(),
    }
}
