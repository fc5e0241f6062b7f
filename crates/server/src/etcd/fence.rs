//! Fenced writes: a Put, DeleteRange or Txn that carries a fence `LOCKNAME:TOKEN` (the
//! [`FENCE_HEADER`] metadata, `?fence=` on the native API, `--fence` on `ballot put` / `del`) is
//! applied only while the lock `LOCKNAME` is held with that token, and otherwise fails with
//! [`NOT_HELD`] and writes nothing. A holder that lost its lock without knowing it (a pause, a
//! partition, a clock that ran slow) is refused by the store itself, which is what a lock alone
//! cannot promise (seed 000 §2.3: the downstream must refuse the duplicate).
//!
//! "Held with that token" is what etcd's mutex means: among the keys under `LOCKNAME/`, the one
//! with the lowest create revision has create revision `TOKEN` (the Lock service, `etcdctl lock`
//! and Go's `concurrency.Mutex` all take locks so, [`super::recipe`]). The write becomes a Txn
//! whose compares say exactly that, so the check and the write are one step of the replicated
//! state machine: every key under the prefix was created at `TOKEN` or later, and the key found
//! with create revision `TOKEN` (looked up just before) still has it. Only compares that every
//! release already applies are used, so a fenced write is safe in a cluster that is being
//! upgraded one member at a time.

use super::kv::{KvService, GROUP_HEADER};
use super::recipe;
use ballot_proto::etcdserverpb as pb;
use ballot_proto::etcdserverpb::kv_server::Kv;
use ballot_storage::mvcc::types::prefix_end;
use bytes::Bytes;
use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::request_op::Request as Op;
use pb::response_op::Response as OpResponse;
use std::fmt;
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

/// Metadata entry carrying a write's fence, `LOCKNAME:TOKEN`.
pub const FENCE_HEADER: &str = "ballot-fence";

/// How the message of a write whose fence does not hold begins (FailedPrecondition; the rest
/// names the fence, why, and the token the lock is held with now).
pub const NOT_HELD: &str = "ballot: the fence does not hold";

/// A lock name and the token its holder was granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub lock: Bytes,
    pub token: i64,
}

impl fmt::Display for Fence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", String::from_utf8_lossy(&self.lock), self.token)
    }
}

impl Fence {
    /// `LOCKNAME:TOKEN`; the name may itself hold colons (the token follows the last one).
    pub fn parse(text: &str) -> Result<Fence, String> {
        let (lock, token) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("fence {text:?} is not LOCKNAME:TOKEN"))?;
        if lock.is_empty() {
            return Err(format!("fence {text:?} names no lock"));
        }
        let token = token
            .parse::<i64>()
            .ok()
            .filter(|token| *token > 0)
            .ok_or_else(|| {
                format!(
                    "fence {text:?}: the token {token:?} is not a positive integer (a lock \
                     grant's create revision)"
                )
            })?;
        Ok(Fence {
            lock: Bytes::copy_from_slice(lock.as_bytes()),
            token,
        })
    }

    /// The fence a request's metadata carries, if any; a malformed one is refused.
    pub fn of_request(metadata: &MetadataMap) -> Result<Option<Fence>, Status> {
        let Some(value) = metadata.get(FENCE_HEADER) else {
            return Ok(None);
        };
        let text = value
            .to_str()
            .map_err(|_| Status::invalid_argument(format!("{FENCE_HEADER} is not ASCII")))?;
        if metadata.contains_key(GROUP_HEADER) {
            return Err(Status::invalid_argument(format!(
                "{FENCE_HEADER} with {GROUP_HEADER}: locks live in group 0, so only group 0's \
                 keys can be fenced"
            )));
        }
        Fence::parse(text)
            .map(Some)
            .map_err(Status::invalid_argument)
    }
}

/// Applies `op` only while `fence` holds; answers what `op` answered, with the fenced txn's
/// header.
pub async fn apply(
    kv: &KvService,
    fence: &Fence,
    op: Op,
) -> Result<(pb::ResponseHeader, OpResponse), Status> {
    let prefix = recipe::contenders_prefix(&fence.lock);
    let holder = kv
        .range(Request::new(pb::RangeRequest {
            key: prefix.clone(),
            range_end: prefix_end(&prefix),
            limit: 1,
            min_create_revision: fence.token,
            max_create_revision: fence.token,
            keys_only: true,
            ..Default::default()
        }))
        .await?
        .into_inner();
    let Some(holder) = holder.kvs.into_iter().next() else {
        let now = kv
            .range(Request::new(recipe::first_created_under(&prefix)))
            .await?
            .into_inner();
        let holder = now.kvs.first().map(|kv| kv.create_revision);
        return Err(not_held(
            fence,
            holder,
            "no key under the lock has that token",
        ));
    };
    let fenced = recipe::txn_request(
        vec![
            // Nothing under the lock was created before the token...
            pb::Compare {
                result: CompareResult::Greater as i32,
                target: CompareTarget::Create as i32,
                key: prefix.clone(),
                range_end: prefix_end(&prefix),
                target_union: Some(TargetUnion::CreateRevision(fence.token - 1)),
            },
            // ...and the key created at the token is still there.
            recipe::created_at(&holder.key, fence.token),
        ],
        vec![pb::RequestOp { request: Some(op) }],
        vec![recipe::get_op(recipe::first_created_under(&prefix))],
    );
    let answer = kv.txn(Request::new(fenced)).await?.into_inner();
    let header = answer.header.unwrap_or_default();
    let first = answer
        .responses
        .into_iter()
        .next()
        .and_then(|response| response.response);
    match (answer.succeeded, first) {
        (true, Some(response)) => Ok((header, response)),
        (false, Some(OpResponse::ResponseRange(range))) => {
            let holder = range.kvs.first().map(|kv| kv.create_revision);
            Err(not_held(fence, holder, "the lock changed hands"))
        }
        _ => Err(Status::internal("a fenced txn answered without its op")),
    }
}

/// The refusal, naming who holds the lock now (`holder`: its token) when that is known.
fn not_held(fence: &Fence, holder: Option<i64>, why: &str) -> Status {
    let now = match holder {
        Some(token) => format!("it is held with token {token}"),
        None => "nobody holds it".to_string(),
    };
    Status::failed_precondition(format!(
        "{NOT_HELD}: fence {fence}: {why}; {now}; nothing was written"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences_are_parsed_strictly() {
        assert_eq!(
            Fence::parse("jobs:42").unwrap(),
            Fence {
                lock: Bytes::from_static(b"jobs"),
                token: 42
            }
        );
        assert_eq!(
            Fence::parse("a:b:7").unwrap().lock,
            Bytes::from_static(b"a:b")
        );
        assert!(Fence::parse("jobs")
            .unwrap_err()
            .contains("not LOCKNAME:TOKEN"));
        assert!(Fence::parse(":7").unwrap_err().contains("names no lock"));
        for token in ["0", "-3", "x", ""] {
            assert!(
                Fence::parse(&format!("jobs:{token}"))
                    .unwrap_err()
                    .contains("not a positive integer"),
                "token {token:?}"
            );
        }
    }
}
