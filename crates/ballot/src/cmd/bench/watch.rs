//! The `watch` workload's watchers: `--watchers` watch streams on the key space, opened (and
//! confirmed created) before the first put. Each put carries its send time in its value, so
//! each watcher measures put-to-event delivery latency for every event it receives.
//!
//! When the puts are done every watcher is told how many succeeded and waits for that many
//! events, for at most [`DRAIN_TIMEOUT`]; what did not arrive is reported as missing.

use super::histogram::LatencyHistogram;
use super::keys::{stamp_of, KeySpace};
use super::stats::error_kind;
use ballot_proto::etcdserverpb::watch_client::WatchClient;
use ballot_proto::etcdserverpb::{watch_request, WatchCreateRequest, WatchRequest, WatchResponse};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

/// How long watchers wait for the last events once every put has been answered.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default, Clone)]
pub struct WatcherStats {
    pub delivery: LatencyHistogram,
    pub events: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
}

impl WatcherStats {
    pub fn merge(&mut self, other: &WatcherStats) {
        self.delivery.merge(&other.delivery);
        self.events += other.events;
        for (kind, count) in &other.errors_by_kind {
            *self.errors_by_kind.entry(kind.clone()).or_default() += count;
        }
    }

    fn failed(&mut self, kind: String) {
        *self.errors_by_kind.entry(kind).or_default() += 1;
    }
}

/// A created watch stream. The request sender is kept: dropping it would end the stream.
pub struct OpenWatch {
    responses: Streaming<WatchResponse>,
    _requests: mpsc::Sender<WatchRequest>,
}

/// Opens one watch on the whole key space on `channel` and waits until the server says it is
/// created, so no put of the run can precede it.
pub async fn open(channel: Channel, keys: &KeySpace, limit: Duration) -> Result<OpenWatch, String> {
    let (start, end) = keys.range();
    let create = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: start,
                range_end: end,
                ..Default::default()
            },
        )),
    };
    let (requests, receiver) = mpsc::channel(1);
    requests.send(create).await.expect("the receiver is alive");
    let opened = async {
        let mut responses = WatchClient::new(channel)
            .watch(ReceiverStream::new(receiver))
            .await
            .map_err(|status| error_kind(&status))?
            .into_inner();
        match responses.message().await {
            Ok(Some(response)) if response.created && !response.canceled => Ok(responses),
            Ok(Some(response)) => Err(format!(
                "the server did not create the watch: {}",
                response.cancel_reason
            )),
            Ok(None) => Err("the server closed the watch stream".to_string()),
            Err(status) => Err(error_kind(&status)),
        }
    };
    match tokio::time::timeout(limit, opened).await {
        Ok(Ok(responses)) => Ok(OpenWatch {
            responses,
            _requests: requests,
        }),
        Ok(Err(reason)) => Err(format!("cannot open a watch: {reason}")),
        Err(_) => Err(format!("cannot open a watch: no answer within {limit:?}")),
    }
}

/// Receives events until `expected` says how many puts succeeded and that many have arrived,
/// or [`DRAIN_TIMEOUT`] after that.
pub async fn follow(
    mut open: OpenWatch,
    epoch: Instant,
    mut expected: watch::Receiver<Option<u64>>,
) -> WatcherStats {
    let mut stats = WatcherStats::default();
    let mut target: Option<u64> = None;
    // Armed once the number of puts is known.
    let drain = tokio::time::sleep(Duration::from_secs(365 * 24 * 3600));
    tokio::pin!(drain);
    loop {
        if target.is_some_and(|target| stats.events >= target) {
            break;
        }
        tokio::select! {
            message = open.responses.message() => match message {
                Ok(Some(response)) => {
                    if response.canceled {
                        stats.failed(format!("watch canceled: {}", response.cancel_reason));
                        break;
                    }
                    record(&mut stats, &response, epoch);
                }
                Ok(None) => {
                    stats.failed("the server closed the watch stream".into());
                    break;
                }
                Err(status) => {
                    stats.failed(error_kind(&status));
                    break;
                }
            },
            changed = expected.changed(), if target.is_none() => {
                if changed.is_err() {
                    break;
                }
                target = *expected.borrow();
                drain.as_mut().reset((Instant::now() + DRAIN_TIMEOUT).into());
            }
            _ = &mut drain, if target.is_some() => break,
        }
    }
    stats
}

fn record(stats: &mut WatcherStats, response: &WatchResponse, epoch: Instant) {
    let received = epoch.elapsed();
    for event in &response.events {
        stats.events += 1;
        if let Some(sent_ns) = event.kv.as_ref().and_then(|kv| stamp_of(&kv.value)) {
            stats
                .delivery
                .record(received.saturating_sub(Duration::from_nanos(sent_ns)));
        }
    }
}
