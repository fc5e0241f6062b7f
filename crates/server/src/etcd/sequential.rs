//! Sequential keys, as ZooKeeper's sequential nodes: a Put with [`SEQUENTIAL_HEADER`] metadata
//! (`?sequential` on the native API, `ballot put --sequential`) creates `PREFIX` followed by a
//! ten-digit zero-padded number that only grows for that prefix (wider past 9,999,999,999); with
//! a lease, the key is ephemeral. The answer names the key created ([`CREATED_KEY_METADATA`]).
//!
//! The last number given is the value of the key `PREFIX` itself, the counter. Each put reads
//! it and proposes one Txn: "the counter still has the mod revision I read" then "the counter
//! is n + 1, and `PREFIX` + n + 1 holds the value". Writers racing for the same prefix retry
//! (at most [`ATTEMPTS_MAX`] times), so two puts never get the same number and a number is
//! never reused, even after its key is deleted.

use super::kv::KvService;
use super::recipe;
use ballot_proto::etcdserverpb as pb;
use ballot_proto::etcdserverpb::kv_server::Kv;
use bytes::Bytes;
use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

/// Metadata entry asking a Put for a sequential key under its key (the prefix).
pub const SEQUENTIAL_HEADER: &str = "ballot-sequential";

/// Response metadata naming the key a sequential Put created (binary metadata: a key is bytes).
pub const CREATED_KEY_METADATA: &str = "ballot-created-key-bin";

/// Rounds of read-and-propose before a put gives up under contention.
pub const ATTEMPTS_MAX: usize = 64;

/// Digits of a sequence number, as ZooKeeper pads them.
pub const DIGITS: usize = 10;

/// Whether a Put asks for a sequential key.
pub fn is_requested(metadata: &MetadataMap) -> bool {
    metadata.contains_key(SEQUENTIAL_HEADER)
}

/// `prefix` followed by `number`, zero-padded.
pub fn key_of(prefix: &[u8], number: u64) -> Bytes {
    let mut key = prefix.to_vec();
    key.extend_from_slice(format!("{number:0DIGITS$}").as_bytes());
    Bytes::from(key)
}

/// Creates the next sequential key under `put.key` with `put`'s value and lease; answers the
/// key created and the put's answer (with the txn's header).
pub async fn put(kv: &KvService, put: pb::PutRequest) -> Result<(Bytes, pb::PutResponse), Status> {
    if put.ignore_value || put.ignore_lease || put.prev_kv {
        return Err(Status::invalid_argument(
            "a sequential put creates a new key: ignore_value, ignore_lease and prev_kv do not \
             apply",
        ));
    }
    let prefix = put.key.clone();
    for _ in 0..ATTEMPTS_MAX {
        let counter = kv
            .range(Request::new(recipe::single_key(&prefix)))
            .await?
            .into_inner();
        let (last, read_at) = match counter.kvs.first() {
            None => (0, 0),
            Some(kv) => (parse_counter(&prefix, &kv.value)?, kv.mod_revision),
        };
        let number = last + 1;
        let key = key_of(&prefix, number);
        let unchanged = pb::Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Mod as i32,
            key: prefix.clone(),
            target_union: Some(TargetUnion::ModRevision(read_at)),
            ..Default::default()
        };
        let create = recipe::txn_request(
            vec![unchanged],
            vec![
                recipe::put_op(&prefix, Bytes::from(number.to_string()), 0),
                recipe::put_op(&key, put.value.clone(), put.lease),
            ],
            vec![],
        );
        let answer = kv.txn(Request::new(create)).await?.into_inner();
        if answer.succeeded {
            let response = pb::PutResponse {
                header: answer.header,
                prev_kv: None,
            };
            return Ok((key, response));
        }
    }
    Err(Status::unavailable(format!(
        "sequential put under {}: {ATTEMPTS_MAX} rounds lost to other writers of the same \
         prefix; retry",
        String::from_utf8_lossy(&prefix)
    )))
}

/// The counter's value, the last number given under `prefix`.
fn parse_counter(prefix: &[u8], value: &[u8]) -> Result<u64, Status> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.parse::<u64>().ok())
        .ok_or_else(|| {
            Status::failed_precondition(format!(
                "the key {0:?} holds {1:?}, not a sequence counter: sequential keys under \
                 {0:?} keep their last number there, so it must be left to them",
                String::from_utf8_lossy(prefix),
                String::from_utf8_lossy(value)
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_keys_are_zero_padded_and_grow_past_ten_digits() {
        assert_eq!(
            key_of(b"q/item-", 1),
            Bytes::from_static(b"q/item-0000000001")
        );
        assert_eq!(
            key_of(b"q/", 12_345_678_901),
            Bytes::from_static(b"q/12345678901")
        );
        assert!(
            key_of(b"q/", 9) < key_of(b"q/", 10),
            "byte order is number order"
        );
    }

    #[test]
    fn a_counter_that_is_not_a_number_is_refused_naming_the_key() {
        assert_eq!(parse_counter(b"q/", b"41").unwrap(), 41);
        let refused = parse_counter(b"q/", b"hello").unwrap_err();
        assert!(
            refused.message().contains("\"q/\" holds \"hello\""),
            "{refused:?}"
        );
    }
}
