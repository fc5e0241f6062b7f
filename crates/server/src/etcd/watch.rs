//! etcd's Watch service: one bidirectional gRPC stream carries many watches. Each gRPC stream
//! owns one [`WatchStream`] of the node's watch hub, which decides everything (creation acks,
//! catch-up from history, compaction cancels, fragments, progress); this file only relays.
//!
//! Watches are served by whichever member the client talks to: every member applies every
//! revision, so there is nothing to forward. When the client's stream ends (or it goes away),
//! the task ends and dropping the `WatchStream` closes it in the hub.
//!
//! What etcd 3.4 sends, and so do we (`crates/ballot/tests/etcd_diff` compares the two): a create
//! that fails is answered `created` and `canceled` with watch id -1 and etcd's reason; a start
//! revision below the compacted revision gets its creation ack, then a cancel carrying
//! `compact_revision` (no reason, a header at revision 0), and its id stays taken until the
//! client cancels it; a cancel of an unknown watch gets no answer; each progress request gets a
//! response with watch id -1. etcd 3.4 sends that response at once; we send it once every watch
//! of the stream is caught up, so that it also says every event up to its revision was sent.

use super::{convert, status, Context};
use crate::node::{NodeError, WatchStream};
use ballot_proto::etcdserverpb as pb;
use ballot_storage::watch::STREAM_PROGRESS_WATCH_ID;
use std::pin::Pin;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// Responses queued for one client before the relay waits for the client to read.
pub const WATCH_RESPONSES_QUEUED_MAX: usize = 128;

pub struct WatchService {
    context: Context,
}

impl WatchService {
    pub fn new(context: Context) -> Self {
        Self { context }
    }
}

type WatchResponses = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::watch_server::Watch for WatchService {
    type WatchStream = WatchResponses;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let requests = request.into_inner();
        let stream = self
            .context
            .node
            .open_watch_stream()
            .await
            .map_err(|error| status::from_node(&error))?;
        let (sender, receiver) = mpsc::channel(WATCH_RESPONSES_QUEUED_MAX);
        tokio::spawn(relay(self.context.clone(), stream, requests, sender));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

type Outbound = mpsc::Sender<Result<pb::WatchResponse, Status>>;

/// Moves client requests to the hub and the hub's responses to the client until either side
/// ends.
async fn relay(
    context: Context,
    mut stream: WatchStream,
    mut requests: Streaming<pb::WatchRequest>,
    outbound: Outbound,
) {
    loop {
        tokio::select! {
            request = requests.message() => match request {
                Ok(Some(request)) => {
                    if !handle_request(&context, &stream, request, &outbound).await {
                        return;
                    }
                }
                // The client closed its side or went away.
                Ok(None) | Err(_) => return,
            },
            response = stream.responses.recv() => match response {
                Some(response) => {
                    let header = context.header(response.header_revision);
                    let response = convert::watch_response(response, header);
                    if outbound.send(Ok(response)).await.is_err() {
                        return;
                    }
                }
                None => {
                    // The hub dropped the stream: the node is stopping.
                    let _ = outbound.send(Err(Status::unavailable(status::STOPPED))).await;
                    return;
                }
            },
            () = outbound.closed() => return,
        }
    }
}

/// Returns false when the client is gone.
async fn handle_request(
    context: &Context,
    stream: &WatchStream,
    request: pb::WatchRequest,
    outbound: &Outbound,
) -> bool {
    use pb::watch_request::RequestUnion;
    match request.request_union {
        Some(RequestUnion::CreateRequest(create)) => {
            let refusal = match convert::watch_create(&create) {
                Ok(create) => match stream.create(&context.node, create).await {
                    // The hub queues the creation ack with the watch's responses.
                    Ok(_) => return true,
                    Err(NodeError::Watch(error)) => error.to_string(),
                    Err(error) => status::from_node(&error).message().to_string(),
                },
                Err(reason) => reason,
            };
            let response = pb::WatchResponse {
                header: Some(context.current_header()),
                watch_id: STREAM_PROGRESS_WATCH_ID,
                created: true,
                canceled: true,
                cancel_reason: refusal,
                ..Default::default()
            };
            outbound.send(Ok(response)).await.is_ok()
        }
        Some(RequestUnion::CancelRequest(cancel)) => {
            // etcd answers nothing when the watch does not exist; the hub sends the cancel ack.
            let _ = stream.cancel(&context.node, cancel.watch_id).await;
            true
        }
        Some(RequestUnion::ProgressRequest(_)) => {
            stream.request_progress();
            true
        }
        None => true,
    }
}
