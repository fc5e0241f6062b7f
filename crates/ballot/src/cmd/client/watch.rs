//! `watch`: prints every event on a key or range until interrupted.
//!
//! When the endpoint goes away the watch resumes on the next endpoint from the revision after
//! the last event printed, so no event is lost or printed twice. It stops with an error when
//! the server cancels the watch (e.g. the start revision was compacted) or when no endpoint
//! can be reached.

use super::connect::{may_try_next, status_text, ConnectArgs, Endpoints, Reconnect, Retry};
use super::kv::key_range;
use super::output;
use super::ClientError;
use ballot_proto::etcdserverpb::watch_client::WatchClient;
use ballot_proto::etcdserverpb::{watch_request, WatchCreateRequest, WatchRequest};
use clap::Args;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

#[derive(Args, Debug)]
#[command(
    after_help = "Output (simple): for each event its type (PUT or DELETE), the previous key and \
    value with --prev-kv, then the key and value.\n\n\
    Examples:\n  \
    ballot watch foo\n  \
    ballot watch --prefix job/ --prev-kv\n  \
    ballot watch foo --rev 1            # replay history from revision 1, then follow\n  \
    ballot watch a c -w json            # keys in [a, c), one JSON line per response"
)]
pub struct WatchArgs {
    /// The key, or the start of the range.
    pub key: OsString,
    /// End of the range [KEY, RANGE_END), exclusive.
    #[arg(conflicts_with = "prefix")]
    pub range_end: Option<OsString>,
    /// Every key that starts with KEY.
    #[arg(long)]
    pub prefix: bool,
    /// Start from this revision (past events are replayed); 0: from now.
    #[arg(long, default_value_t = 0)]
    pub rev: i64,
    /// Print each key's previous value with its event.
    #[arg(long)]
    pub prev_kv: bool,
    #[command(flatten)]
    pub connection: ConnectArgs,
}

pub async fn run(args: WatchArgs) -> Result<(), ClientError> {
    output::require(args.connection.write_out, output::SIMPLE_JSON, "watch")?;
    if args.rev < 0 {
        return Err(ClientError::Usage("--rev cannot be negative".into()));
    }
    let endpoints = Endpoints::from_args(&args.connection)?;
    let (key, range_end) = key_range(
        args.key.clone().into_vec(),
        args.range_end.clone().map(OsString::into_vec),
        args.prefix,
        false,
    )?;
    let create = WatchCreateRequest {
        key: key.into(),
        range_end: range_end.into(),
        start_revision: args.rev,
        prev_kv: args.prev_kv,
        ..Default::default()
    };
    tokio::select! {
        outcome = follow(&endpoints, create, args.connection.write_out) => outcome,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

/// Why one watch stream ended.
enum StreamEnd {
    /// The endpoint went away: resume elsewhere. `established`: the watch was running there.
    Lost { reason: String, established: bool },
    /// The server refused or cancelled the watch: stop.
    Fatal(ClientError),
}

async fn follow(
    endpoints: &Endpoints,
    mut create: WatchCreateRequest,
    format: output::OutputFormat,
) -> Result<(), ClientError> {
    let mut reconnect = Reconnect::default();
    loop {
        let endpoint = reconnect.next_endpoint(endpoints);
        let outcome = match endpoints.dial(&endpoint).await {
            Ok(channel) => watch_once(channel, &endpoint, &mut create, format).await,
            Err(reason) => StreamEnd::Lost {
                reason,
                established: false,
            },
        };
        match outcome {
            StreamEnd::Fatal(error) => return Err(error),
            StreamEnd::Lost {
                reason,
                established,
            } => {
                if established {
                    reconnect.established();
                    eprintln!(
                        "watch: lost {endpoint} ({reason}); resuming from revision {} on the next endpoint",
                        create.start_revision
                    );
                }
                reconnect
                    .failed(endpoints, endpoint, reason, "watch")
                    .await?;
            }
        }
    }
}

/// One stream on one endpoint. Advances `create.start_revision` past every event printed.
async fn watch_once(
    channel: tonic::transport::Channel,
    endpoint: &str,
    create: &mut WatchCreateRequest,
    format: output::OutputFormat,
) -> StreamEnd {
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    let request = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(create.clone())),
    };
    sender.send(request).await.expect("the receiver is alive");
    let mut stream = match WatchClient::new(channel)
        .watch(ReceiverStream::new(receiver))
        .await
    {
        Ok(response) => response.into_inner(),
        Err(status) => return ended(endpoint, status, false),
    };
    let mut established = false;
    loop {
        let response = match stream.message().await {
            Ok(Some(response)) => response,
            Ok(None) => {
                return StreamEnd::Lost {
                    reason: "the server closed the watch stream".into(),
                    established,
                }
            }
            Err(status) => return ended(endpoint, status, established),
        };
        established = true;
        if response.canceled {
            let reason = if response.compact_revision > 0 {
                format!(
                    "etcdserver: mvcc: required revision has been compacted (compact revision {})",
                    response.compact_revision
                )
            } else if response.cancel_reason.is_empty() {
                "watch is canceled by the server".to_string()
            } else {
                response.cancel_reason.clone()
            };
            return StreamEnd::Fatal(ClientError::Server {
                endpoint: endpoint.to_string(),
                status: tonic::Status::new(Code::Unknown, reason),
            });
        }
        if response.events.is_empty() {
            continue; // created, or a progress notification
        }
        if let Some(last) = response.events.iter().filter_map(|e| e.kv.as_ref()).last() {
            create.start_revision = last.mod_revision + 1;
        }
        if let Err(error) = output::write_stdout(&output::watch(format, &response)) {
            return StreamEnd::Fatal(error);
        }
    }
}

/// A status ending a stream: `Unavailable` (the endpoint went away) or a refusal to serve
/// (not the leader) means resume elsewhere; anything else is the server's answer.
fn ended(endpoint: &str, status: tonic::Status, established: bool) -> StreamEnd {
    if may_try_next(Retry::Read, &status) {
        StreamEnd::Lost {
            reason: status_text(&status),
            established,
        }
    } else {
        StreamEnd::Fatal(ClientError::Server {
            endpoint: endpoint.to_string(),
            status,
        })
    }
}
