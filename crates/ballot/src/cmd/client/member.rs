//! `member list | add | remove | promote | update`. Member ids are read and printed in
//! hexadecimal, as etcdctl does.

use super::connect::{CallError, ConnectArgs, Endpoints, Retry};
use super::output::{self, OutputFormat};
use super::ClientError;
use ballot_proto::etcdserverpb::cluster_client::ClusterClient;
use ballot_proto::etcdserverpb::{
    MemberAddRequest, MemberListRequest, MemberPromoteRequest, MemberRemoveRequest,
    MemberUpdateRequest,
};
use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct MemberArgs {
    #[command(subcommand)]
    pub command: MemberCommand,
    #[command(flatten)]
    pub connection: ConnectArgs,
}

#[derive(Subcommand, Debug)]
pub enum MemberCommand {
    /// List the members: ID, status, name, peer URLs, client URLs, is learner.
    #[command(after_help = "Examples:\n  ballot member list\n  \
        # 8211f1d0f64f3269, started, n1, http://127.0.0.1:12380, http://127.0.0.1:2379, false\n  \
        ballot member list -w table")]
    List {
        /// Ask the leader for the list after a quorum round (never a stale list).
        #[arg(long)]
        linearizable: bool,
    },
    /// Add a member (start it afterwards with --initial-cluster-state existing).
    #[command(
        after_help = "Example:\n  ballot member add n4 --peer-urls http://10.0.0.4:2380\n  \
        # Member 2be1eb8f84b7f63e added to cluster ef37ad9dc622a7c4, then the BALLOT_* settings\n  \
        # to start n4 with"
    )]
    Add {
        /// The new member's name (what it will be started with as --name).
        name: String,
        /// The new member's peer URLs, comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        peer_urls: Vec<String>,
        /// Add it as a learner: it receives the log but does not vote until promoted.
        #[arg(long)]
        learner: bool,
    },
    /// Remove a member by its hex id.
    #[command(after_help = "Example:\n  ballot member remove 2be1eb8f84b7f63e")]
    Remove {
        /// The member id, in hex (as `member list` prints it).
        #[arg(value_parser = parse_member_id)]
        id: u64,
    },
    /// Promote a learner to a voting member.
    #[command(after_help = "Example:\n  ballot member promote 2be1eb8f84b7f63e")]
    Promote {
        /// The member id, in hex.
        #[arg(value_parser = parse_member_id)]
        id: u64,
    },
    /// Change a member's peer URLs.
    #[command(
        after_help = "Example:\n  ballot member update 2be1eb8f84b7f63e --peer-urls http://10.0.0.9:2380"
    )]
    Update {
        /// The member id, in hex.
        #[arg(value_parser = parse_member_id)]
        id: u64,
        /// The new peer URLs, comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        peer_urls: Vec<String>,
    },
}

pub fn parse_member_id(text: &str) -> Result<u64, String> {
    u64::from_str_radix(text.trim_start_matches("0x"), 16)
        .map_err(|e| format!("bad member ID arg {text:?} ({e}), expecting ID in hex"))
}

fn check_urls(urls: &[String]) -> Result<Vec<String>, ClientError> {
    let urls: Vec<String> = urls
        .iter()
        .map(|url| url.trim().to_string())
        .filter(|url| !url.is_empty())
        .collect();
    if urls.is_empty() {
        return Err(ClientError::Usage("member peer urls not provided".into()));
    }
    for url in &urls {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ClientError::Usage(format!(
                "peer URL {url:?} needs a scheme, e.g. http://10.0.0.4:2380"
            )));
        }
    }
    Ok(urls)
}

pub async fn run(args: MemberArgs) -> Result<(), ClientError> {
    let format = args.connection.write_out;
    let endpoints = Endpoints::from_args(&args.connection)?;
    match args.command {
        MemberCommand::List { linearizable } => {
            output::require(format, output::ALL, "member list")?;
            let (_, response) = endpoints
                .call(Retry::Read, |channel| async move {
                    Ok::<_, CallError>(
                        ClusterClient::new(channel)
                            .member_list(MemberListRequest { linearizable })
                            .await?
                            .into_inner(),
                    )
                })
                .await?;
            output::write_stdout(&output::member_list(
                format,
                &response.header,
                &response.members,
            ))
        }
        MemberCommand::Add {
            name,
            peer_urls,
            learner,
        } => {
            output::require(format, output::SIMPLE_JSON, "member add")?;
            let request = MemberAddRequest {
                peer_ur_ls: check_urls(&peer_urls)?,
                is_learner: learner,
            };
            let (endpoint, response) = endpoints
                .call(Retry::Write, |channel| {
                    let request = request.clone();
                    async move {
                        Ok::<_, CallError>(
                            ClusterClient::new(channel)
                                .member_add(request)
                                .await?
                                .into_inner(),
                        )
                    }
                })
                .await?;
            if format == OutputFormat::Json {
                return output::write_stdout(&output::members_json(
                    &response.header,
                    response.member.as_ref(),
                    &response.members,
                ));
            }
            let Some(member) = &response.member else {
                return Err(ClientError::Local(format!(
                    "{endpoint} answered member add without the new member"
                )));
            };
            let cluster_id = response.header.as_ref().map_or(0, |h| h.cluster_id);
            output::write_stdout(&output::member_added(
                cluster_id,
                member,
                &name,
                &response.members,
            ))
        }
        MemberCommand::Remove { id } => {
            output::require(format, output::SIMPLE_JSON, "member remove")?;
            let (_, response) = endpoints
                .call(Retry::Write, |channel| async move {
                    Ok::<_, CallError>(
                        ClusterClient::new(channel)
                            .member_remove(MemberRemoveRequest { id })
                            .await?
                            .into_inner(),
                    )
                })
                .await?;
            changed(
                format,
                id,
                "removed from",
                &response.header,
                &response.members,
            )
        }
        MemberCommand::Promote { id } => {
            output::require(format, output::SIMPLE_JSON, "member promote")?;
            let (_, response) = endpoints
                .call(Retry::Write, |channel| async move {
                    Ok::<_, CallError>(
                        ClusterClient::new(channel)
                            .member_promote(MemberPromoteRequest { id })
                            .await?
                            .into_inner(),
                    )
                })
                .await?;
            changed(
                format,
                id,
                "promoted in",
                &response.header,
                &response.members,
            )
        }
        MemberCommand::Update { id, peer_urls } => {
            output::require(format, output::SIMPLE_JSON, "member update")?;
            let request = MemberUpdateRequest {
                id,
                peer_ur_ls: check_urls(&peer_urls)?,
            };
            let (_, response) = endpoints
                .call(Retry::Write, |channel| {
                    let request = request.clone();
                    async move {
                        Ok::<_, CallError>(
                            ClusterClient::new(channel)
                                .member_update(request)
                                .await?
                                .into_inner(),
                        )
                    }
                })
                .await?;
            changed(
                format,
                id,
                "updated in",
                &response.header,
                &response.members,
            )
        }
    }
}

fn changed(
    format: OutputFormat,
    id: u64,
    verb_phrase: &str,
    header: &Option<ballot_proto::etcdserverpb::ResponseHeader>,
    members: &[ballot_proto::etcdserverpb::Member],
) -> Result<(), ClientError> {
    if format == OutputFormat::Json {
        return output::write_stdout(&output::members_json(header, None, members));
    }
    let cluster_id = header.as_ref().map_or(0, |h| h.cluster_id);
    output::write_stdout(&output::member_changed(id, verb_phrase, cluster_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Member {
        #[command(subcommand)]
        command: MemberCommand,
    }

    #[test]
    fn member_flags() {
        let parsed = Member::try_parse_from([
            "member",
            "add",
            "n4",
            "--peer-urls",
            "http://a:2380,http://b:2380",
            "--learner",
        ])
        .unwrap();
        match parsed.command {
            MemberCommand::Add {
                name,
                peer_urls,
                learner,
            } => {
                assert_eq!(name, "n4");
                assert_eq!(peer_urls, ["http://a:2380", "http://b:2380"]);
                assert!(learner);
            }
            other => panic!("{other:?}"),
        }
        let parsed = Member::try_parse_from(["member", "remove", "2be1eb8f84b7f63e"]).unwrap();
        assert!(matches!(
            parsed.command,
            MemberCommand::Remove {
                id: 0x2be1eb8f84b7f63e
            }
        ));
        for bad in [
            &["member", "add", "n4"][..],
            &["member", "remove", "not-hex"],
            &["member", "update", "abc"],
        ] {
            let error = Member::try_parse_from(bad).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{bad:?}");
        }
        assert!(check_urls(&["10.0.0.4:2380".into()])
            .unwrap_err()
            .to_string()
            .contains("scheme"));
    }
}
