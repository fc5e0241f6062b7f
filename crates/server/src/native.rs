//! ballot's native API: keys over HTTP/JSON with a read level per request, served next to
//! `/metrics` and `/health`. etcd's API has two read modes (linearizable, serializable); Consul
//! users expect three (seed 004 §09), so reads here take `?level=`:
//!
//! | level | served by | may return |
//! |---|---|---|
//! | `stale` | the member asked, from its store | anything it has applied, however old |
//! | `default` | the leader, inside its lease (no round trip) | the latest write, unless clocks drift past the lease margin |
//! | `consistent` | the leader, after a ReadIndex round | the latest write |
//!
//! Routes (keys are the rest of the path, percent-decoded):
//!
//! ```text
//! GET    /v1/kv/<key>[?level=stale|default|consistent][&prefix]   200 JSON, 404 when absent
//! PUT    /v1/kv/<key>[?fence=LOCK:TOKEN][&lease=HEX]   body: the value   200 {"revision": N}
//! PUT    /v1/kv/<prefix>?sequential[&lease=HEX]    body: the value   200 {"revision": N, "key": K}
//! DELETE /v1/kv/<key>[?prefix][&fence=LOCK:TOKEN]                 200 {"revision": N, "deleted": n}
//! ```
//!
//! The scheduler's records (`ballot sched`, whose keys are JSON under `sched/`), read at the
//! consistent level:
//!
//! ```text
//! GET    /v1/sched/jobs | /v1/sched/workers | /v1/sched/runs[/<job>]   200 {"revision": N, "<what>": [...]}
//! ```
//!
//! A write with `fence` is applied only while lock `LOCK` is held with `TOKEN`; otherwise it
//! answers 412 and writes nothing ([`crate::etcd::fence`]). A PUT with `sequential` creates the
//! prefix's next numbered key ([`crate::etcd::sequential`]); `lease` (in hex, as `ballot lease
//! grant` prints it) attaches the key to a lease.
//!
//! Each request runs through the etcd KV service in-process, so limits, errors and forwarding
//! to the leader are the same as over gRPC; the level travels as [`READ_LEVEL_HEADER`] metadata.

use crate::etcd::fence::{Fence, FENCE_HEADER};
use crate::etcd::kv::{KvService, ReadLevel, READ_LEVEL_HEADER};
use crate::etcd::sequential::{CREATED_KEY_METADATA, SEQUENTIAL_HEADER};
use crate::etcd::Context;
use ballot_proto::etcdserverpb as pb;
use ballot_proto::etcdserverpb::kv_server::Kv;
use ballot_storage::mvcc::types::prefix_end;
use serde_json::{json, Value};
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Status};

/// Path prefix of the key routes.
pub const KV_PATH: &str = "/v1/kv/";
/// Path prefix of the scheduler's read routes.
pub const SCHED_PATH: &str = "/v1/sched/";

/// One HTTP answer: status line, extra headers, JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Value,
}

impl Answer {
    fn ok(body: Value) -> Self {
        Answer {
            status: "200 OK",
            headers: Vec::new(),
            body,
        }
    }

    fn error(status: &'static str, message: impl Into<String>) -> Self {
        Answer {
            status,
            headers: Vec::new(),
            body: json!({ "error": message.into() }),
        }
    }
}

pub struct NativeApi {
    kv: KvService,
}

impl NativeApi {
    pub fn new(context: Context) -> Self {
        Self {
            kv: KvService::new(context),
        }
    }

    /// Answers one request; `target` is the path with its query string.
    pub async fn handle(&self, method: &str, target: &str, body: &[u8]) -> Answer {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        if let Some(what) = path.strip_prefix(SCHED_PATH) {
            if method != "GET" {
                return Answer::error(
                    "405 Method Not Allowed",
                    "the scheduler's records are read here; change them with ballot sched",
                );
            }
            return self
                .sched(what)
                .await
                .unwrap_or_else(|status| from_status(&status));
        }
        let Some(raw_key) = path.strip_prefix(KV_PATH) else {
            return Answer::error("404 Not Found", format!("no route {path}"));
        };
        let key = match percent_decode(raw_key) {
            Ok(key) if !key.is_empty() => key,
            Ok(_) => return Answer::error("400 Bad Request", "the key is empty: use /v1/kv/<key>"),
            Err(error) => return Answer::error("400 Bad Request", error),
        };
        let query = match Query::parse(query) {
            Ok(query) => query,
            Err(error) => return Answer::error("400 Bad Request", error),
        };
        let result = match method {
            "GET" => self.get(key, &query).await,
            "PUT" | "POST" => self.put(key, body, &query).await,
            "DELETE" => self.delete(key, &query).await,
            other => {
                return Answer::error(
                    "405 Method Not Allowed",
                    format!("{other} is not served; use GET, PUT or DELETE"),
                )
            }
        };
        result.unwrap_or_else(|status| from_status(&status))
    }

    /// `jobs`, `workers`, `runs` or `runs/<job>`: the records under `sched/` as one JSON list,
    /// each stored value parsed (the scheduler stores JSON).
    async fn sched(&self, what: &str) -> Result<Answer, Status> {
        let (list, prefix) = match what.trim_end_matches('/').split_once('/') {
            None if matches!(what, "jobs" | "workers" | "runs") => (what, format!("sched/{what}/")),
            Some(("runs", job)) if !job.is_empty() && !job.contains('/') => {
                ("runs", format!("sched/runs/{job}/"))
            }
            _ => {
                return Ok(Answer::error(
                    "404 Not Found",
                    format!("no route {SCHED_PATH}{what}: use jobs, workers, runs or runs/<job>"),
                ))
            }
        };
        let mut request = Request::new(pb::RangeRequest {
            key: prefix.clone().into_bytes().into(),
            range_end: prefix_end(prefix.as_bytes()),
            ..Default::default()
        });
        ReadLevel::Consistent.mark(request.metadata_mut());
        let response = self.kv.range(request).await?.into_inner();
        let records: Vec<Value> = response
            .kvs
            .iter()
            .map(|kv| {
                serde_json::from_slice(&kv.value)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&kv.value).into()))
            })
            .collect();
        let revision = response.header.as_ref().map_or(0, |h| h.revision);
        Ok(Answer::ok(json!({ "revision": revision, list: records })))
    }

    async fn get(&self, key: Vec<u8>, query: &Query) -> Result<Answer, Status> {
        let level = query.level.unwrap_or(ReadLevel::Default);
        let range_end = if query.prefix {
            prefix_end(&key)
        } else {
            bytes::Bytes::new()
        };
        let mut request = Request::new(pb::RangeRequest {
            key: key.into(),
            range_end,
            ..Default::default()
        });
        level.mark(request.metadata_mut());
        let response = self.kv.range(request).await?.into_inner();
        let revision = response.header.as_ref().map_or(0, |h| h.revision);
        let mut answer = if response.kvs.is_empty() && !query.prefix {
            Answer::error("404 Not Found", "key not found")
        } else {
            Answer::ok(json!({
                "level": level.name(),
                "revision": revision,
                "kvs": response.kvs.iter().map(key_value).collect::<Vec<_>>(),
            }))
        };
        answer
            .headers
            .push(("x-ballot-read-level", level.name().to_string()));
        answer
            .headers
            .push(("x-ballot-revision", revision.to_string()));
        Ok(answer)
    }

    async fn put(&self, key: Vec<u8>, value: &[u8], query: &Query) -> Result<Answer, Status> {
        if query.level.is_some() || query.prefix {
            return Ok(Answer::error(
                "400 Bad Request",
                "a put takes fence, lease and sequential; level and prefix apply to reads and \
                 deletes",
            ));
        }
        let mut request = query.fenced(Request::new(pb::PutRequest {
            key: key.into(),
            value: value.to_vec().into(),
            lease: query.lease.unwrap_or(0),
            ..Default::default()
        }))?;
        if query.sequential {
            request
                .metadata_mut()
                .insert(SEQUENTIAL_HEADER, MetadataValue::from_static("1"));
        }
        let response = self.kv.put(request).await?;
        let created = response
            .metadata()
            .get_bin(CREATED_KEY_METADATA)
            .and_then(|value| value.to_bytes().ok());
        let revision = response.into_inner().header.map_or(0, |h| h.revision);
        Ok(Answer::ok(match created {
            Some(key) => json!({ "revision": revision, "key": String::from_utf8_lossy(&key) }),
            None => json!({ "revision": revision }),
        }))
    }

    async fn delete(&self, key: Vec<u8>, query: &Query) -> Result<Answer, Status> {
        if query.level.is_some() {
            return Ok(Answer::error(
                "400 Bad Request",
                "level applies to reads only",
            ));
        }
        if query.sequential || query.lease.is_some() {
            return Ok(Answer::error(
                "400 Bad Request",
                "sequential and lease apply to puts only",
            ));
        }
        let range_end = if query.prefix {
            prefix_end(&key)
        } else {
            bytes::Bytes::new()
        };
        let request = query.fenced(Request::new(pb::DeleteRangeRequest {
            key: key.into(),
            range_end,
            ..Default::default()
        }))?;
        let response = self.kv.delete_range(request).await?.into_inner();
        let revision = response.header.map_or(0, |h| h.revision);
        Ok(Answer::ok(
            json!({ "revision": revision, "deleted": response.deleted }),
        ))
    }
}

#[derive(Debug, Default, PartialEq)]
struct Query {
    level: Option<ReadLevel>,
    prefix: bool,
    fence: Option<Fence>,
    sequential: bool,
    lease: Option<i64>,
}

impl Query {
    fn parse(query: &str) -> Result<Query, String> {
        let mut parsed = Query::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "level" => {
                    parsed.level =
                        Some(ReadLevel::parse(value).ok_or_else(|| {
                            format!("level is {value:?}; use {}", ReadLevel::NAMES)
                        })?)
                }
                "prefix" if value.is_empty() || value == "true" => parsed.prefix = true,
                "prefix" => return Err(format!("prefix takes no value, got {value:?}")),
                "sequential" if value.is_empty() || value == "true" => parsed.sequential = true,
                "sequential" => return Err(format!("sequential takes no value, got {value:?}")),
                "lease" => {
                    let lease = i64::from_str_radix(value, 16)
                        .ok()
                        .filter(|lease| *lease > 0)
                        .ok_or_else(|| {
                            format!("lease is {value:?}; use a lease id in hex, as `ballot lease grant` prints it")
                        })?;
                    parsed.lease = Some(lease);
                }
                "fence" => {
                    let text = String::from_utf8(percent_decode(value)?)
                        .map_err(|_| "the fence is not UTF-8".to_string())?;
                    parsed.fence = Some(Fence::parse(&text)?);
                }
                other => {
                    return Err(format!(
                    "unknown query parameter {other:?}; known: level, prefix, fence, sequential, \
                         lease"
                ))
                }
            }
        }
        Ok(parsed)
    }

    /// `request` carrying this query's fence, if it has one.
    fn fenced<T>(&self, mut request: Request<T>) -> Result<Request<T>, Status> {
        if let Some(fence) = &self.fence {
            let value = MetadataValue::try_from(fence.to_string()).map_err(|_| {
                Status::invalid_argument(format!("fence {fence}: the lock name must be ASCII"))
            })?;
            request.metadata_mut().insert(FENCE_HEADER, value);
        }
        Ok(request)
    }
}

fn key_value(kv: &ballot_proto::mvccpb::KeyValue) -> Value {
    let mut out = json!({
        "key": String::from_utf8_lossy(&kv.key),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
        "lease": kv.lease,
    });
    // Text stays readable; anything else is passed as numbers rather than mangled.
    match std::str::from_utf8(&kv.value) {
        Ok(text) => out["value"] = json!(text),
        Err(_) => out["value_bytes"] = json!(kv.value.to_vec()),
    }
    out
}

fn percent_decode(text: &str) -> Result<Vec<u8>, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent escape at byte {i} of {text:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// gRPC status -> HTTP status, keeping etcd's message.
fn from_status(status: &Status) -> Answer {
    let http = match status.code() {
        Code::InvalidArgument | Code::OutOfRange => "400 Bad Request",
        Code::NotFound => "404 Not Found",
        Code::FailedPrecondition => "412 Precondition Failed",
        Code::ResourceExhausted => "429 Too Many Requests",
        Code::Unavailable => "503 Service Unavailable",
        Code::DeadlineExceeded => "504 Gateway Timeout",
        _ => "500 Internal Server Error",
    };
    let mut answer = Answer::error(http, status.message());
    if status.message().contains(READ_LEVEL_HEADER) {
        answer.status = "400 Bad Request";
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_parsed_strictly() {
        assert_eq!(
            Query::parse("level=stale&prefix").unwrap(),
            Query {
                level: Some(ReadLevel::Stale),
                prefix: true,
                fence: None,
                sequential: false,
                lease: None,
            }
        );
        assert_eq!(
            Query::parse("fence=locks%2Fjobs:42").unwrap().fence,
            Some(Fence::parse("locks/jobs:42").unwrap())
        );
        assert!(Query::parse("fence=jobs")
            .unwrap_err()
            .contains("not LOCKNAME:TOKEN"));
        assert!(Query::parse("level=fast")
            .unwrap_err()
            .contains("stale, default or consistent"));
        assert!(Query::parse("limit=3")
            .unwrap_err()
            .contains("unknown query parameter"));
    }

    #[test]
    fn keys_are_percent_decoded() {
        assert_eq!(percent_decode("a%2Fb%20c").unwrap(), b"a/b c");
        assert!(percent_decode("a%zz").is_err());
    }
}
