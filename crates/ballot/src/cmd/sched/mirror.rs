//! A local copy of every key under `sched/`, read once and then kept by a watch: what leaders
//! decide from and what workers find their runs in. It is only ever a copy: every decision
//! taken from it is a transaction whose compares fail if the copy was stale.

use super::store::{Store, StoreError};
use ballot_proto::etcdserverpb::watch_client::WatchClient;
use ballot_proto::etcdserverpb::{watch_request, WatchCreateRequest, WatchRequest};
use ballot_proto::mvccpb::event::EventType;
use ballot_storage::mvcc::types::prefix_end;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio_stream::wrappers::ReceiverStream;

/// One key as the mirror holds it.
#[derive(Clone, Debug)]
pub struct Entry {
    pub value: Bytes,
    pub mod_revision: i64,
}

/// The keys and the revision they are current at.
#[derive(Default, Debug)]
pub struct View {
    pub revision: i64,
    pub keys: BTreeMap<String, Entry>,
}

impl View {
    /// The keys under `prefix`, with the prefix cut off.
    pub fn under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a Entry)> + 'a {
        self.keys
            .range(prefix.to_string()..)
            .take_while(move |(key, _)| key.starts_with(prefix))
            .map(move |(key, entry)| (&key[prefix.len()..], entry))
    }
}

/// The copy, and a revision that changes each time it does.
#[derive(Clone)]
pub struct Mirror {
    view: Arc<Mutex<View>>,
    revision: tokio::sync::watch::Receiver<i64>,
}

impl Mirror {
    /// Reads `prefix` and keeps following it in a task until the returned mirror is dropped
    /// by everyone.
    pub async fn follow(store: Store, prefix: &'static str) -> Result<Mirror, StoreError> {
        let view = Arc::new(Mutex::new(View::default()));
        let (revision_sender, revision) = tokio::sync::watch::channel(0);
        load(&store, prefix, &view, &revision_sender).await?;
        let task_view = Arc::clone(&view);
        tokio::spawn(async move {
            keep(store, prefix, task_view, revision_sender).await;
        });
        Ok(Mirror { view, revision })
    }

    pub fn view(&self) -> MutexGuard<'_, View> {
        self.view.lock().expect("not poisoned")
    }

    /// Waits until the copy is current at `revision` or later (a write of our own has come
    /// back through the watch), or `limit` has passed.
    pub async fn caught_up(&mut self, revision: i64, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.revision.wait_for(|seen| *seen >= revision)).await;
    }

    /// Waits until the copy changes or `limit` has passed.
    pub async fn changed(&mut self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.revision.changed()).await;
    }
}

async fn load(
    store: &Store,
    prefix: &str,
    view: &Mutex<View>,
    revision: &tokio::sync::watch::Sender<i64>,
) -> Result<(), StoreError> {
    let (at, kvs) = store.range_prefix(prefix).await?;
    let mut keys = BTreeMap::new();
    for kv in kvs {
        keys.insert(
            String::from_utf8_lossy(&kv.key).into_owned(),
            Entry {
                value: kv.value,
                mod_revision: kv.mod_revision,
            },
        );
    }
    *view.lock().expect("not poisoned") = View { revision: at, keys };
    revision.send_replace(at);
    Ok(())
}

/// Follows the watch for as long as anyone holds the mirror, re-reading everything when the
/// watch cannot resume (its revision was compacted).
async fn keep(
    store: Store,
    prefix: &'static str,
    view: Arc<Mutex<View>>,
    revision: tokio::sync::watch::Sender<i64>,
) {
    loop {
        if revision.is_closed() {
            return;
        }
        let from = view.lock().expect("not poisoned").revision + 1;
        match watch_from(&store, prefix, from, &view, &revision).await {
            WatchEnd::Compacted => {
                while load(&store, prefix, &view, &revision).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            WatchEnd::Lost => tokio::time::sleep(Duration::from_millis(100)).await,
            WatchEnd::Unwatched => return,
        }
    }
}

enum WatchEnd {
    Compacted,
    Lost,
    Unwatched,
}

async fn watch_from(
    store: &Store,
    prefix: &str,
    from: i64,
    view: &Mutex<View>,
    revision: &tokio::sync::watch::Sender<i64>,
) -> WatchEnd {
    let create = WatchCreateRequest {
        key: prefix.as_bytes().to_vec().into(),
        range_end: prefix_end(prefix.as_bytes()),
        start_revision: from,
        progress_notify: true,
        ..Default::default()
    };
    let opened = store
        .call(Duration::from_secs(5), |channel| {
            let create = create.clone();
            async move {
                // The sender stays alive beside the stream: a closed request stream ends the
                // watch.
                let (sender, receiver) = tokio::sync::mpsc::channel(1);
                let request = WatchRequest {
                    request_union: Some(watch_request::RequestUnion::CreateRequest(create)),
                };
                sender.send(request).await.expect("the receiver is alive");
                let stream = WatchClient::new(channel)
                    .watch(ReceiverStream::new(receiver))
                    .await?
                    .into_inner();
                Ok((sender, stream))
            }
        })
        .await;
    let Ok((_sender, mut stream)) = opened else {
        return WatchEnd::Lost;
    };
    loop {
        let response = tokio::select! {
            message = stream.message() => match message {
                Ok(Some(response)) => response,
                Ok(None) | Err(_) => return WatchEnd::Lost,
            },
            _ = revision.closed() => return WatchEnd::Unwatched,
        };
        if response.canceled {
            return if response.compact_revision > 0 {
                WatchEnd::Compacted
            } else {
                WatchEnd::Lost
            };
        }
        let current = if response.events.is_empty() {
            if response.created {
                continue;
            }
            // A progress notification: every event up to the header's revision was sent.
            response.header.map_or(0, |header| header.revision)
        } else {
            let mut view = view.lock().expect("not poisoned");
            let mut last = view.revision;
            for event in response.events {
                let Some(kv) = event.kv else { continue };
                last = last.max(kv.mod_revision);
                let key = String::from_utf8_lossy(&kv.key).into_owned();
                if event.r#type == EventType::Delete as i32 {
                    view.keys.remove(&key);
                } else {
                    view.keys.insert(
                        key,
                        Entry {
                            value: kv.value,
                            mod_revision: kv.mod_revision,
                        },
                    );
                }
            }
            last
        };
        let mut held = view.lock().expect("not poisoned");
        if current > held.revision {
            held.revision = current;
            drop(held);
            revision.send_replace(current);
        }
    }
}
