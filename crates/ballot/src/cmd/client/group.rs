//! `group create | list | remove`: the replicated groups beside group 0, through ballot's own
//! Groups service (etcd's API has no such thing, so this works against ballot only). Member
//! ids are printed in hexadecimal, as `member list` prints them.

use super::connect::{CallError, ConnectArgs, Endpoints, Retry};
use super::output::{self, OutputFormat};
use super::ClientError;
use ballot_proto::ballotpb::groups_client::GroupsClient;
use ballot_proto::ballotpb::{Group, GroupCreateRequest, GroupListRequest, GroupRemoveRequest};
use clap::{Args, Subcommand};
use serde_json::json;

#[derive(Args, Debug)]
pub struct GroupArgs {
    #[command(subcommand)]
    pub command: GroupCommand,
    #[command(flatten)]
    pub connection: ConnectArgs,
}

#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    /// Create a group: its replicas go to the voting members hosting the fewest groups, it
    /// elects a leader, and `--group ID` on put, get, del and txn then reads and writes its
    /// keys.
    #[command(after_help = "Examples:\n  ballot group create --replicas 3\n  \
        # group 1 created on 8211f1d0f64f3269,91bc3c398fb3c146,fd422379fda50e48\n  \
        ballot put --group 1 greeting hello")]
    Create {
        /// Replicas, between 1 and the number of voting members.
        #[arg(long, default_value_t = 3)]
        replicas: u32,
        /// The group's id; the next free one if not given. Ids are never reused.
        #[arg(long, conflicts_with = "count")]
        id: Option<u32>,
        /// Create this many groups, one after another over one connection (each placed as if
        /// created alone); one line each. Stops at the first refusal.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        count: u32,
    },
    /// List the groups beyond group 0: id, replicas, and (where the answering member hosts
    /// one) the leader, term and commit index it sees.
    #[command(after_help = "Examples:\n  ballot group list\n  \
        # 1, 8211f1d0f64f3269,91bc3c398fb3c146,fd422379fda50e48, hosted, leader 91bc3c398fb3c146, term 2, commit 3\n  \
        ballot group list -w table")]
    List,
    /// Remove a group: its replicas stop and delete their storage; its keys are gone.
    #[command(after_help = "Example:\n  ballot group remove 1")]
    Remove {
        /// The group id (as `group list` prints it).
        id: u32,
    },
}

pub async fn run(args: GroupArgs) -> Result<(), ClientError> {
    let format = args.connection.write_out;
    let endpoints = Endpoints::from_args(&args.connection)?;
    match args.command {
        GroupCommand::Create {
            replicas,
            id,
            count,
        } => {
            output::require(format, output::SIMPLE_JSON, "group create")?;
            if id == Some(0) {
                return Err(ClientError::Usage(
                    "--id 0 is group 0, every cluster's default group: leave --id out to take \
                     the next free id"
                        .into(),
                ));
            }
            let request = GroupCreateRequest {
                replicas,
                id: id.unwrap_or(0),
            };
            // Only a first create that failed is retried elsewhere: after one succeeded, a
            // retry could not tell which of the rest had been applied. --command-timeout
            // bounds each create.
            let limit = endpoints.command_timeout;
            let (endpoint, (created, failure)) = endpoints
                .call_with_timeout(Retry::Write, None, |channel| async move {
                    let mut client = GroupsClient::new(channel);
                    let mut created = Vec::new();
                    for _ in 0..count {
                        let answer = tokio::time::timeout(limit, client.group_create(request))
                            .await
                            .unwrap_or_else(|_| {
                                Err(tonic::Status::deadline_exceeded(format!(
                                    "no answer within --command-timeout {limit:?}"
                                )))
                            });
                        match answer {
                            Ok(response) => created.push(response.into_inner().group),
                            Err(status) if created.is_empty() => return Err(status.into()),
                            Err(status) => return Ok((created, Some(status))),
                        }
                    }
                    Ok::<_, CallError>((created, None))
                })
                .await?;
            let mut text = Vec::new();
            for group in &created {
                let group = group.as_ref().ok_or_else(|| {
                    ClientError::Local(format!(
                        "{endpoint} answered group create without the group"
                    ))
                })?;
                text.extend(changed(format, "created", group));
            }
            output::write_stdout(&text)?;
            match failure {
                None => Ok(()),
                Some(status) => Err(ClientError::Local(format!(
                    "{} of {count} groups created; then {endpoint} refused: {}",
                    created.len(),
                    status.message()
                ))),
            }
        }
        GroupCommand::List => {
            output::require(format, output::ALL, "group list")?;
            let (_, response) = endpoints
                .call(Retry::Read, |channel| async move {
                    Ok::<_, CallError>(
                        GroupsClient::new(channel)
                            .group_list(GroupListRequest {})
                            .await?
                            .into_inner(),
                    )
                })
                .await?;
            output::write_stdout(&list(format, response.member_id, &response.groups))
        }
        GroupCommand::Remove { id } => {
            output::require(format, output::SIMPLE_JSON, "group remove")?;
            let (endpoint, response) = endpoints
                .call(Retry::Write, |channel| async move {
                    Ok::<_, CallError>(
                        GroupsClient::new(channel)
                            .group_remove(GroupRemoveRequest { id })
                            .await?
                            .into_inner(),
                    )
                })
                .await?;
            let group = response.group.ok_or_else(|| {
                ClientError::Local(format!(
                    "{endpoint} answered group remove without the group"
                ))
            })?;
            output::write_stdout(&changed(format, "removed", &group))
        }
    }
}

fn replicas(group: &Group) -> String {
    let ids: Vec<String> = group.replicas.iter().map(|id| format!("{id:x}")).collect();
    ids.join(",")
}

fn group_json(group: &Group) -> serde_json::Value {
    let mut value = json!({
        "id": group.id,
        "replicas": group.replicas.iter().map(|id| format!("{id:x}")).collect::<Vec<_>>(),
        "hosted": group.hosted,
    });
    if group.hosted {
        value["leader"] = json!(format!("{:x}", group.leader));
        value["term"] = json!(group.term);
        value["commit_index"] = json!(group.commit_index);
        value["applied_index"] = json!(group.applied_index);
    }
    value
}

fn changed(format: OutputFormat, verb: &str, group: &Group) -> Vec<u8> {
    match format {
        OutputFormat::Json => output::json_line(&json!({ verb: group_json(group) })),
        _ => format!("group {} {verb} on {}\n", group.id, replicas(group)).into_bytes(),
    }
}

fn rows(groups: &[Group]) -> Vec<Vec<String>> {
    groups
        .iter()
        .map(|group| {
            let mut row = vec![group.id.to_string(), replicas(group)];
            if group.hosted {
                row.push("hosted".into());
                row.push(match group.leader {
                    0 => "no leader".into(),
                    leader => format!("leader {leader:x}"),
                });
                row.push(format!("term {}", group.term));
                row.push(format!("commit {}", group.commit_index));
            } else {
                row.extend(["elsewhere".into(), "-".into(), "-".into(), "-".into()]);
            }
            row
        })
        .collect()
}

fn list(format: OutputFormat, member: u64, groups: &[Group]) -> Vec<u8> {
    match format {
        OutputFormat::Json => output::json_line(&json!({
            "member_id": format!("{member:x}"),
            "groups": groups.iter().map(group_json).collect::<Vec<_>>(),
        })),
        OutputFormat::Table => output::table(
            &["id", "replicas", "here", "leader", "term", "commit"],
            &rows(groups),
        )
        .into_bytes(),
        OutputFormat::Simple => output::simple_rows(&rows(groups)),
    }
}
