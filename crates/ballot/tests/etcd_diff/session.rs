//! One server's side of the comparison: the workspace's tonic clients (KV, Lease, one
//! keep-alive stream, two watch streams the operations use and an observer stream), the
//! execution of each [`Op`], and the collection of what the watch streams send.
//!
//! Watch answers arrive when they arrive; after each operation [`Session::settle`] waits (with
//! a deadline, never a fixed sleep) until this server has sent everything the operation makes
//! due, then [`Session::take_watch_items`] hands them over for comparison:
//!
//! - control responses (creation acks, cancel acks, progress responses) in arrival order: each
//!   watch operation is followed by a progress request on its stream, whose answer (watch id
//!   -1) comes after every control response before it, on etcd and on ballot;
//! - events (and a cancel for compaction) per watch, in order, whatever responses carried them.
//!   How many events a watch is due is counted from the observer's history: a watch on every
//!   key since the start, which sees each revision.

use ballot_proto::etcdserverpb as pb;
use ballot_proto::etcdserverpb::kv_client::KvClient;
use ballot_proto::etcdserverpb::lease_client::LeaseClient;
use ballot_proto::etcdserverpb::watch_client::WatchClient;
use bytes::Bytes;
use pb::watch_request::RequestUnion;
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

use super::generate::{map_request_leases, Op};
use super::normalise::{self, Answer, Failure, LeaseMap, Reply};

/// Longest wait for one answer; a loopback server answers in milliseconds.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// A key no operation writes, read after each operation to learn the revision.
const PROBE_KEY: &[u8] = b"probe";

async fn call<T>(
    future: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Reply<T> {
    match tokio::time::timeout(CALL_TIMEOUT, future).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(status.into()),
        Err(_) => Err(Failure {
            code: tonic::Code::DeadlineExceeded,
            message: format!("(the test's) no answer within {CALL_TIMEOUT:?}"),
        }),
    }
}

/// A key range as etcd's watch server reads one: an empty key is `"\0"`, an end of `"\0"` means
/// every key from the key on, no end means the key alone.
#[derive(Debug, Clone)]
struct WatchedRange {
    key: Bytes,
    range_end: Bytes,
}

impl WatchedRange {
    fn of(request: &pb::WatchCreateRequest) -> Self {
        let key = if request.key.is_empty() {
            Bytes::from_static(b"\0")
        } else {
            request.key.clone()
        };
        WatchedRange {
            key,
            range_end: request.range_end.clone(),
        }
    }

    fn contains(&self, key: &[u8]) -> bool {
        if self.range_end.is_empty() {
            return key == &self.key[..];
        }
        key >= &self.key[..] && (&self.range_end[..] == b"\0" || key < &self.range_end[..])
    }
}

/// One change in the observer's history.
#[derive(Debug, Clone)]
struct Change {
    revision: i64,
    key: Bytes,
    put: bool,
}

/// A watch this server acknowledged, as the test follows it.
#[derive(Debug)]
struct Watch {
    range: WatchedRange,
    no_put: bool,
    no_delete: bool,
    /// First revision it is due (the ack's revision + 1 for a start revision of 0).
    start_revision: i64,
    delivered: usize,
    canceled: bool,
    /// Created below the compacted revision: due a cancel, not events.
    compaction_due: bool,
    /// Created with a start revision at or below the current one: etcd catches it up in a loop
    /// that runs every 100 ms, and only an event shows that it has.
    past_start: bool,
    /// The compacted revision when it was created (-1 for none): at exactly that revision
    /// only each key's last change is replayed, and only if it is a put.
    compacted_at_start: i64,
}

impl Watch {
    fn due(&self, history: &[Change], revision: i64) -> usize {
        history
            .iter()
            .enumerate()
            .filter(|(_, c)| c.revision >= self.start_revision && c.revision <= revision)
            .filter(|(_, c)| self.range.contains(&c.key))
            .filter(|(_, c)| !(c.put && self.no_put || !c.put && self.no_delete))
            .filter(|(i, c)| {
                c.revision != self.compacted_at_start
                    || c.put
                        && !history[i + 1..]
                            .iter()
                            .any(|later| later.revision == c.revision && later.key == c.key)
            })
            .count()
    }

    fn settled(&self, history: &[Change], revision: i64) -> bool {
        self.canceled || !self.compaction_due && self.delivered >= self.due(history, revision)
    }
}

struct KeepAliveStream {
    requests: mpsc::UnboundedSender<pb::LeaseKeepAliveRequest>,
    responses: Streaming<pb::LeaseKeepAliveResponse>,
}

/// What a watch stream sent since the last [`Session::take_watch_items`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct WatchItems {
    pub control: Vec<String>,
    pub per_watch: BTreeMap<i64, Vec<String>>,
}

struct WatchStream {
    requests: mpsc::UnboundedSender<pb::WatchRequest>,
    responses: mpsc::UnboundedReceiver<Result<pb::WatchResponse, Failure>>,
    pending_creates: VecDeque<pb::WatchCreateRequest>,
    progress_requested: usize,
    progress_answered: usize,
    watches: BTreeMap<i64, Watch>,
    items: WatchItems,
    failed: Option<Failure>,
}

impl WatchStream {
    /// Opens a stream with its first requests: etcd sends a stream's response headers with its
    /// first response, so the call completes only once a request has been answered.
    async fn open(channel: Channel, first: Vec<RequestUnion>) -> Result<WatchStream, Failure> {
        let (requests, outbound) = mpsc::unbounded_channel();
        let (sender, responses) = mpsc::unbounded_channel();
        let mut stream = WatchStream {
            requests,
            responses,
            pending_creates: VecDeque::new(),
            progress_requested: 0,
            progress_answered: 0,
            watches: BTreeMap::new(),
            items: WatchItems::default(),
            failed: None,
        };
        for request in first {
            stream.send(request);
        }
        let mut inbound =
            call(WatchClient::new(channel).watch(UnboundedReceiverStream::new(outbound))).await?;
        tokio::spawn(async move {
            loop {
                let next = inbound.message().await;
                let stop = !matches!(next, Ok(Some(_)));
                let item = match next {
                    Ok(Some(response)) => Ok(response),
                    Ok(None) => Err(Failure {
                        code: tonic::Code::Ok,
                        message: "(the test's) the stream ended".into(),
                    }),
                    Err(status) => Err(status.into()),
                };
                if sender.send(item).is_err() || stop {
                    return;
                }
            }
        });
        Ok(stream)
    }

    fn send(&mut self, request: RequestUnion) {
        match &request {
            RequestUnion::CreateRequest(create) => self.pending_creates.push_back(create.clone()),
            RequestUnion::ProgressRequest(_) => self.progress_requested += 1,
            RequestUnion::CancelRequest(_) => {}
        }
        // A send fails only when the stream is gone, which `settle` reports.
        let _ = self.requests.send(pb::WatchRequest {
            request_union: Some(request),
        });
    }

    /// Files one response; `compacted` is the server's compacted revision as etcd counts it (-1
    /// before any compaction).
    fn absorb(&mut self, mut response: pb::WatchResponse, leases: &LeaseMap, compacted: i64) {
        normalise::watch_response(&mut response, leases);
        let id = response.watch_id;
        let header_revision = response.header.as_ref().map_or(0, |h| h.revision);
        if response.created {
            let create = self.pending_creates.pop_front().unwrap_or_default();
            if !response.canceled {
                let start = create.start_revision;
                let watch = Watch {
                    range: WatchedRange::of(&create),
                    no_put: create.filters.contains(&0),
                    no_delete: create.filters.contains(&1),
                    start_revision: if start == 0 {
                        header_revision + 1
                    } else {
                        start
                    },
                    delivered: 0,
                    canceled: false,
                    compaction_due: start != 0 && start <= header_revision && start < compacted,
                    past_start: start > 0 && start <= header_revision,
                    compacted_at_start: compacted,
                };
                self.watches.insert(id, watch);
            }
            self.items.control.push(format!("{response:#?}"));
        } else if !response.events.is_empty() {
            let watch_items = self.items.per_watch.entry(id).or_default();
            for event in &response.events {
                watch_items.push(format!(
                    "event in a response at revision {header_revision}: {event:#?}"
                ));
            }
            if let Some(watch) = self.watches.get_mut(&id) {
                watch.delivered += response.events.len();
            }
            if response.canceled {
                watch_items.push(format!("and canceled: {response:#?}"));
            }
        } else if response.canceled && response.compact_revision != 0 {
            if let Some(watch) = self.watches.get_mut(&id) {
                watch.canceled = true;
            }
            let watch_items = self.items.per_watch.entry(id).or_default();
            watch_items.push(format!("{response:#?}"));
        } else {
            if response.canceled {
                if let Some(watch) = self.watches.get_mut(&id) {
                    watch.canceled = true;
                }
            } else if id == -1 {
                self.progress_answered += 1;
            }
            self.items.control.push(format!("{response:#?}"));
        }
    }

    fn settled(&self, history: &[Change], revision: i64) -> bool {
        self.pending_creates.is_empty()
            && self.progress_answered >= self.progress_requested
            && self.watches.values().all(|w| w.settled(history, revision))
    }

    /// What the stream still owes, for a timeout's report.
    fn owed(&self, history: &[Change], revision: i64) -> String {
        let mut owed = Vec::new();
        if !self.pending_creates.is_empty() {
            owed.push(format!("{} creation acks", self.pending_creates.len()));
        }
        if self.progress_answered < self.progress_requested {
            owed.push(format!(
                "{} progress responses",
                self.progress_requested - self.progress_answered
            ));
        }
        for (id, watch) in &self.watches {
            if !watch.settled(history, revision) {
                owed.push(if watch.compaction_due {
                    format!("watch {id}: a cancel for compaction")
                } else {
                    format!(
                        "watch {id}: {} events, {} delivered",
                        watch.due(history, revision),
                        watch.delivered
                    )
                });
            }
        }
        owed.join(", ")
    }
}

pub struct Session {
    channel: Channel,
    kv: KvClient<Channel>,
    lease: LeaseClient<Channel>,
    /// Opened with its first keep-alive (see [`WatchStream::open`]).
    keep_alive: Option<KeepAliveStream>,
    /// Opened with their first request.
    streams: Vec<Option<WatchStream>>,
    observer: WatchStream,
    leases: LeaseMap,
    /// A compaction succeeded (etcd's compacted revision is -1 before).
    any_compaction: bool,
    /// Every change since the start, from the observer.
    history: Vec<Change>,
    /// The last revision the observer has seen.
    history_revision: i64,
    compacted: i64,
}

impl Session {
    /// Opens the clients and the streams, and the observer's watch (on every key, from the
    /// next revision), waiting for its ack.
    pub async fn open(name: &'static str, channel: Channel, streams: usize) -> Session {
        let mut kv = KvClient::new(channel.clone());
        let lease = LeaseClient::new(channel.clone());
        let start = call(kv.range(pb::RangeRequest {
            key: Bytes::from_static(PROBE_KEY),
            ..Default::default()
        }))
        .await
        .unwrap_or_else(|f| panic!("{name}: the first read failed: {f:?}"));
        let observe_all = pb::WatchCreateRequest {
            key: Bytes::from_static(b"\0"),
            range_end: Bytes::from_static(b"\0"),
            ..Default::default()
        };
        let observer = WatchStream::open(
            channel.clone(),
            vec![RequestUnion::CreateRequest(observe_all)],
        )
        .await
        .unwrap_or_else(|f| panic!("{name}: the observer's stream did not open: {f:?}"));
        let mut session = Session {
            channel,
            kv,
            lease,
            keep_alive: None,
            streams: (0..streams).map(|_| None).collect(),
            observer,
            leases: LeaseMap::default(),
            any_compaction: false,
            history: Vec::new(),
            history_revision: start.header.map_or(0, |h| h.revision),
            compacted: 0,
        };
        let deadline = Instant::now() + CALL_TIMEOUT;
        while !session.observer.pending_creates.is_empty() {
            let response = tokio::time::timeout_at(deadline, session.observer.responses.recv())
                .await
                .unwrap_or_else(|_| panic!("{name}: the observer's watch was not acknowledged"))
                .expect("the observer's stream is open")
                .unwrap_or_else(|f| panic!("{name}: the observer's stream failed: {f:?}"));
            session.observer.absorb(response, &session.leases, 0);
        }
        session
    }

    /// Sends `op` (its lease labels mapped to this server's ids) and returns the answers,
    /// normalised: one per request (two for a short grant, which is revoked at once), or
    /// [`Answer::Sent`] for a watch request.
    pub async fn execute(&mut self, op: &Op) -> Vec<Answer> {
        let mut op = op.clone();
        map_request_leases(&mut op, &mut |label| self.leases.to_server(label));
        let mut answers = match op {
            Op::Range(request) => vec![Answer::Range(call(self.kv.range(request)).await)],
            Op::Put(request) => vec![Answer::Put(call(self.kv.put(request)).await)],
            Op::DeleteRange(request) => {
                vec![Answer::DeleteRange(
                    call(self.kv.delete_range(request)).await,
                )]
            }
            Op::Txn(request) => vec![Answer::Txn(call(self.kv.txn(request)).await)],
            Op::Compact(request) => {
                let revision = request.revision;
                let answer = call(self.kv.compact(request)).await;
                if answer.is_ok() {
                    self.compacted = self.compacted.max(revision);
                    self.any_compaction = true;
                }
                vec![Answer::Compact(answer)]
            }
            Op::LeaseGrant(request) => vec![self.grant(request).await],
            Op::LeaseGrantShort(request) => {
                let grant = self.grant(request).await;
                let mut answers = vec![grant];
                if let Answer::LeaseGrant(Ok(granted)) = &answers[0] {
                    let id = granted.id;
                    let revoke = call(self.lease.lease_revoke(pb::LeaseRevokeRequest { id }));
                    answers.push(Answer::LeaseRevoke(revoke.await));
                }
                answers
            }
            Op::LeaseRevoke(request) => {
                vec![Answer::LeaseRevoke(
                    call(self.lease.lease_revoke(request)).await,
                )]
            }
            Op::LeaseTimeToLive(request) => vec![Answer::LeaseTimeToLive(
                call(self.lease.lease_time_to_live(request)).await,
            )],
            Op::LeaseLeases => vec![Answer::LeaseLeases(
                call(self.lease.lease_leases(pb::LeaseLeasesRequest {})).await,
            )],
            Op::LeaseKeepAlive(request) => {
                vec![Answer::LeaseKeepAlive(self.keep_alive(request).await)]
            }
            Op::WatchCreate { stream, request } => {
                self.watch_request(stream, RequestUnion::CreateRequest(request))
                    .await
            }
            Op::WatchCancel { stream, watch_id } => {
                let cancel = pb::WatchCancelRequest { watch_id };
                self.watch_request(stream, RequestUnion::CancelRequest(cancel))
                    .await
            }
            Op::WatchProgress { stream } => {
                let progress = pb::WatchProgressRequest {};
                self.watch_request(stream, RequestUnion::ProgressRequest(progress))
                    .await
            }
        };
        for answer in &mut answers {
            normalise::answer(answer, &self.leases);
        }
        answers
    }

    async fn grant(&mut self, request: pb::LeaseGrantRequest) -> Answer {
        let auto = request.id == 0;
        let answer = call(self.lease.lease_grant(request)).await;
        if let (true, Ok(granted)) = (auto, &answer) {
            self.leases.granted_auto(granted.id);
        }
        Answer::LeaseGrant(answer)
    }

    async fn keep_alive(
        &mut self,
        request: pb::LeaseKeepAliveRequest,
    ) -> Reply<pb::LeaseKeepAliveResponse> {
        let gone = || Failure {
            code: tonic::Code::Unavailable,
            message: "(the test's) the keep-alive stream is closed".into(),
        };
        let stream = match &mut self.keep_alive {
            Some(stream) => {
                stream.requests.send(request).map_err(|_| gone())?;
                stream
            }
            None => {
                let (requests, outbound) = mpsc::unbounded_channel();
                requests.send(request).map_err(|_| gone())?;
                let responses = call(
                    self.lease
                        .lease_keep_alive(UnboundedReceiverStream::new(outbound)),
                )
                .await?;
                self.keep_alive.insert(KeepAliveStream {
                    requests,
                    responses,
                })
            }
        };
        match tokio::time::timeout(CALL_TIMEOUT, stream.responses.message()).await {
            Ok(Ok(Some(response))) => Ok(response),
            Ok(Ok(None)) => Err(Failure {
                code: tonic::Code::Ok,
                message: "(the test's) the keep-alive stream ended".into(),
            }),
            Ok(Err(status)) => Err(status.into()),
            Err(_) => Err(Failure {
                code: tonic::Code::DeadlineExceeded,
                message: format!("(the test's) no keep-alive answer within {CALL_TIMEOUT:?}"),
            }),
        }
    }

    /// Sends a watch request, then a progress request whose answer marks the end of what the
    /// first one causes on the control path.
    async fn watch_request(&mut self, index: usize, request: RequestUnion) -> Vec<Answer> {
        let progress = RequestUnion::ProgressRequest(pb::WatchProgressRequest {});
        match &mut self.streams[index] {
            Some(stream) => {
                stream.send(request);
                stream.send(progress);
            }
            None => {
                // Both at once: a cancel of an unknown watch gets no answer.
                let opened = WatchStream::open(self.channel.clone(), vec![request, progress]);
                match opened.await {
                    Ok(stream) => self.streams[index] = Some(stream),
                    Err(failure) => panic!("watch stream {index} did not open: {failure:?}"),
                }
            }
        }
        vec![Answer::Sent]
    }

    /// Reads the probe key: the answer (compared too) and the revision it reports.
    pub async fn probe(&mut self) -> (Answer, i64) {
        let mut answer = call(self.kv.range(pb::RangeRequest {
            key: Bytes::from_static(PROBE_KEY),
            ..Default::default()
        }))
        .await;
        let revision = answer
            .as_ref()
            .ok()
            .and_then(|r| r.header.map(|h| h.revision))
            .unwrap_or(0);
        if let Ok(response) = &mut answer {
            normalise::range(response, &self.leases);
        }
        (Answer::Range(answer), revision)
    }

    /// Waits until the observer has seen `revision` and each stream has sent what is due up to
    /// it. `Err` says what is still missing when the deadline passes.
    pub async fn settle(&mut self, revision: i64, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        while self.history_revision < revision {
            let response = self.next_response(None, deadline).await.map_err(|e| {
                format!(
                    "the observer saw revision {}, not {revision}: {e}",
                    self.history_revision
                )
            })?;
            for event in &response.events {
                let kv = event.kv.clone().unwrap_or_default();
                self.history_revision = self.history_revision.max(kv.mod_revision);
                self.history.push(Change {
                    revision: kv.mod_revision,
                    key: kv.key,
                    put: event.r#type == 0,
                });
            }
            let compacted = self.compaction_floor();
            self.observer.absorb(response, &self.leases, compacted);
        }
        for index in 0..self.streams.len() {
            while let Some(stream) = &self.streams[index] {
                if stream.settled(&self.history, revision) {
                    break;
                }
                if let Some(failure) = &stream.failed {
                    return Err(format!("watch stream {index} failed: {failure:?}"));
                }
                let owed = stream.owed(&self.history, revision);
                let response = self
                    .next_response(Some(index), deadline)
                    .await
                    .map_err(|e| format!("watch stream {index} still owes {owed}: {e}"))?;
                let compacted = self.compaction_floor();
                if let Some(stream) = &mut self.streams[index] {
                    stream.absorb(response, &self.leases, compacted);
                }
            }
        }
        Ok(())
    }

    async fn next_response(
        &mut self,
        stream: Option<usize>,
        deadline: Instant,
    ) -> Result<pb::WatchResponse, String> {
        let stream = match stream {
            Some(index) => self.streams[index].as_mut().expect("an open stream"),
            None => &mut self.observer,
        };
        match tokio::time::timeout_at(deadline, stream.responses.recv()).await {
            Err(_) => Err("deadline passed".into()),
            Ok(None) => Err("the stream's reader ended".into()),
            Ok(Some(Err(failure))) => {
                stream.failed = Some(failure.clone());
                Err(format!("the stream failed: {failure:?}"))
            }
            Ok(Some(Ok(response))) => Ok(response),
        }
    }

    /// The compacted revision as etcd counts it: -1 before any compaction.
    fn compaction_floor(&self) -> i64 {
        if self.any_compaction {
            self.compacted
        } else {
            -1
        }
    }

    /// The lowest start revision of a watch created in the past that has sent no event yet:
    /// etcd may not have caught it up (it does every 100 ms, and only an event shows it).
    pub fn unsynced_floor(&self) -> Option<i64> {
        self.streams
            .iter()
            .flatten()
            .flat_map(|stream| stream.watches.values())
            .filter(|w| w.past_start && w.delivered == 0 && !w.canceled)
            .map(|w| w.start_revision)
            .min()
    }

    /// What each watch stream sent since the last call (the observer's events as stream
    /// `observer`).
    pub fn take_watch_items(&mut self) -> Vec<(String, WatchItems)> {
        let mut taken = Vec::new();
        for (index, stream) in self.streams.iter_mut().enumerate() {
            if let Some(stream) = stream {
                taken.push((format!("stream {index}"), std::mem::take(&mut stream.items)));
            }
        }
        taken.push((
            "observer".to_string(),
            std::mem::take(&mut self.observer.items),
        ));
        taken
    }
}
