//! Size limits and the checks a command must pass before it touches the state (principle 8: bad
//! input gets a clear error and changes nothing). The checks here need no state, so the server
//! runs them at the API edge and the store runs them again when applying (a command in the log
//! may come from an older or a faulty proposer).

use super::error::ApplyError;
use super::types::{
    Command, DeleteRangeRequest, KeyRange, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use bytes::Bytes;
use std::collections::BTreeSet;

/// Longest key (also bounds `range_end`): bbolt's key limit, which etcd users never hit.
pub const KEY_BYTES_MAX: usize = 32 * 1024;
/// Longest value the store applies: the ceiling for the server's `--max-request-bytes` (default
/// 1.5 MiB as in etcd), which is the policy and is checked before proposing.
pub const VALUE_BYTES_MAX: usize = 32 * 1024 * 1024;
/// Most compares, success ops or failure ops in one transaction that the store applies. This is
/// the ceiling, not the policy: the server refuses transactions above its `--max-txn-ops`
/// (default [`TXN_OPS_DEFAULT`]) before proposing them, and that flag may be raised up to here.
/// Every replica applies with the same ceiling, so a command's fate does not depend on which
/// node's configuration proposed it.
pub const TXN_OPS_MAX: usize = 16 * 1024;
/// etcd's default `--max-txn-ops`.
pub const TXN_OPS_DEFAULT: usize = 128;
/// Deepest nesting of transactions (1: a transaction with no nested one).
pub const TXN_DEPTH_MAX: usize = 8;
/// Most leases in one `LeaseCheckpoint`: etcd's checkpoint batch size.
pub const LEASE_CHECKPOINTS_MAX: usize = 1000;
/// Longest encoded command: the longest value plus room for its key and a transaction's framing.
pub const COMMAND_BYTES_MAX: usize = VALUE_BYTES_MAX + 8 * 1024 * 1024;
/// Longest lease TTL: etcd's `MaxLeaseTTL`.
pub const LEASE_TTL_SECONDS_MAX: i64 = 9_000_000_000;

/// The stateless checks of a command, in etcd's order; the first failure wins.
pub fn validate_command(command: &Command) -> Result<(), ApplyError> {
    match command {
        Command::Put(put) => check_put(put),
        Command::DeleteRange(delete) => check_delete(delete),
        Command::Txn(txn) => {
            check_txn(txn, TXN_OPS_MAX, 1)?;
            check_duplicates(&txn.success)?;
            check_duplicates(&txn.failure).map(|_| ())
        }
        Command::Compact { .. } | Command::LeaseRevoke { .. } => Ok(()),
        Command::LeaseGrant { ttl_seconds, .. } => {
            if *ttl_seconds > LEASE_TTL_SECONDS_MAX {
                return Err(ApplyError::LeaseTtlTooLarge {
                    ttl_seconds: *ttl_seconds,
                    max: LEASE_TTL_SECONDS_MAX,
                });
            }
            Ok(())
        }
        Command::LeaseCheckpoint { checkpoints } => {
            if checkpoints.len() > LEASE_CHECKPOINTS_MAX {
                return Err(ApplyError::TooManyCheckpoints {
                    count: checkpoints.len(),
                    max: LEASE_CHECKPOINTS_MAX,
                });
            }
            Ok(())
        }
    }
}

/// A range request's own checks (also for `MvccStore::range`).
pub fn check_range_request(range: &RangeRequest) -> Result<(), ApplyError> {
    check_key_range(&range.range)
}

fn check_key(key: &[u8]) -> Result<(), ApplyError> {
    if key.is_empty() {
        return Err(ApplyError::EmptyKey);
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(ApplyError::KeyTooLarge {
            bytes: key.len(),
            max: KEY_BYTES_MAX,
        });
    }
    Ok(())
}

fn check_key_range(range: &KeyRange) -> Result<(), ApplyError> {
    check_key(&range.key)?;
    if range.range_end.len() > KEY_BYTES_MAX {
        return Err(ApplyError::KeyTooLarge {
            bytes: range.range_end.len(),
            max: KEY_BYTES_MAX,
        });
    }
    Ok(())
}

fn check_put(put: &PutRequest) -> Result<(), ApplyError> {
    check_key(&put.key)?;
    if put.value.len() > VALUE_BYTES_MAX {
        return Err(ApplyError::ValueTooLarge {
            bytes: put.value.len(),
            max: VALUE_BYTES_MAX,
        });
    }
    if put.ignore_value && !put.value.is_empty() {
        return Err(ApplyError::ValueProvided);
    }
    if put.ignore_lease && put.lease != 0 {
        return Err(ApplyError::LeaseProvided);
    }
    Ok(())
}

fn check_delete(delete: &DeleteRangeRequest) -> Result<(), ApplyError> {
    check_key_range(&delete.range)
}

/// etcd's `checkTxnRequest`: the op budget shrinks with nesting (`ops_max - ops at this level`).
fn check_txn(txn: &TxnRequest, ops_max: usize, depth: usize) -> Result<(), ApplyError> {
    if depth > TXN_DEPTH_MAX {
        return Err(ApplyError::TxnTooDeep {
            depth,
            max: TXN_DEPTH_MAX,
        });
    }
    let ops = txn
        .compare
        .len()
        .max(txn.success.len())
        .max(txn.failure.len());
    if ops > ops_max {
        return Err(ApplyError::TooManyOps {
            count: ops,
            max: ops_max,
        });
    }
    for compare in &txn.compare {
        check_key_range(&compare.range)?;
        if let super::types::CompareTarget::Value(value) = &compare.target {
            if value.len() > VALUE_BYTES_MAX {
                return Err(ApplyError::ValueTooLarge {
                    bytes: value.len(),
                    max: VALUE_BYTES_MAX,
                });
            }
        }
    }
    for op in txn.success.iter().chain(&txn.failure) {
        match op {
            RequestOp::Range(range) => check_range_request(range)?,
            RequestOp::Put(put) => check_put(put)?,
            RequestOp::DeleteRange(delete) => check_delete(delete)?,
            RequestOp::Txn(nested) => check_txn(nested, ops_max - ops, depth + 1)?,
        }
    }
    Ok(())
}

/// etcd's `checkIntervals`: within one list of ops (and the nested transactions it may run), a
/// key is put at most once and never put inside a range deleted at the same level or in a nested
/// transaction checked before it. The two branches of one nested transaction may put the same key
/// (only one runs). As in etcd, a delete with `range_end = "\0"` (every key from `key` on) puts
/// no key off limits: etcd builds the interval `[key, "\0")` for it, which is empty, so such a
/// transaction may delete a key and put it (the put and the delete both happen, in order, at
/// the transaction's revision). Returns the keys put by `ops`, and their deleted ranges.
fn check_duplicates(ops: &[RequestOp]) -> Result<(BTreeSet<Bytes>, Vec<KeyRange>), ApplyError> {
    let mut deletes: Vec<KeyRange> = ops
        .iter()
        .filter_map(|op| match op {
            RequestOp::DeleteRange(d) if &d.range.range_end[..] != b"\0" => Some(d.range.clone()),
            _ => None,
        })
        .collect();
    let deleted =
        |deletes: &[KeyRange], key: &[u8]| deletes.iter().any(|range| range.contains(key));
    let mut puts = BTreeSet::new();
    for op in ops {
        let RequestOp::Txn(nested) = op else { continue };
        let (puts_then, deletes_then) = check_duplicates(&nested.success)?;
        let (puts_else, deletes_else) = check_duplicates(&nested.failure)?;
        for key in &puts_then {
            if puts.contains(key) || deleted(&deletes, key) {
                return Err(ApplyError::DuplicateKey { key: key.clone() });
            }
            puts.insert(key.clone());
        }
        for key in &puts_else {
            if (puts.contains(key) && !puts_then.contains(key)) || deleted(&deletes, key) {
                return Err(ApplyError::DuplicateKey { key: key.clone() });
            }
            puts.insert(key.clone());
        }
        deletes.extend(deletes_then);
        deletes.extend(deletes_else);
    }
    for op in ops {
        let RequestOp::Put(put) = op else { continue };
        if puts.contains(&put.key) || deleted(&deletes, &put.key) {
            return Err(ApplyError::DuplicateKey {
                key: put.key.clone(),
            });
        }
        puts.insert(put.key.clone());
    }
    Ok((puts, deletes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::types::{Compare, CompareResult, CompareTarget};

    fn put(key: &str) -> RequestOp {
        RequestOp::Put(PutRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
            ..Default::default()
        })
    }
    fn delete(key: &str, end: &str) -> RequestOp {
        RequestOp::DeleteRange(DeleteRangeRequest {
            range: KeyRange::new(key.to_owned(), end.to_owned()),
            prev_kv: false,
        })
    }
    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare: vec![],
            success,
            failure,
        }
    }
    fn check(t: TxnRequest) -> Result<(), ApplyError> {
        validate_command(&Command::Txn(t))
    }

    #[test]
    fn duplicate_keys_follow_etcd_check_intervals() {
        assert!(matches!(
            check(txn(vec![put("a"), put("a")], vec![])),
            Err(ApplyError::DuplicateKey { .. })
        ));
        assert!(matches!(
            check(txn(vec![delete("a", "c"), put("b")], vec![])),
            Err(ApplyError::DuplicateKey { .. })
        ));
        // etcd's interval for a delete to the end of the key space is empty: no conflict.
        assert_eq!(
            check(txn(vec![delete("a", "\0"), put("z")], vec![])),
            Ok(())
        );
        assert_eq!(
            check(txn(
                vec![
                    RequestOp::Txn(txn(vec![delete("a", "\0")], vec![])),
                    put("b")
                ],
                vec![]
            )),
            Ok(())
        );
        // Success and failure lists are checked apart; only one runs.
        assert_eq!(check(txn(vec![put("a")], vec![put("a")])), Ok(()));
        // Deletes may overlap deletes.
        assert_eq!(
            check(txn(vec![delete("a", "c"), delete("b", "")], vec![])),
            Ok(())
        );
        // Both branches of one nested transaction may put the same key...
        assert_eq!(
            check(txn(
                vec![RequestOp::Txn(txn(vec![put("a")], vec![put("a")]))],
                vec![]
            )),
            Ok(())
        );
        // ...but not together with the outer level.
        assert!(matches!(
            check(txn(
                vec![RequestOp::Txn(txn(vec![put("a")], vec![])), put("a")],
                vec![]
            )),
            Err(ApplyError::DuplicateKey { .. })
        ));
        assert!(matches!(
            check(txn(
                vec![
                    delete("a", "b"),
                    RequestOp::Txn(txn(vec![], vec![put("a")]))
                ],
                vec![]
            )),
            Err(ApplyError::DuplicateKey { .. })
        ));
    }

    #[test]
    fn limits_name_the_limit_and_the_value() {
        let long = Command::Put(PutRequest {
            key: Bytes::from(vec![b'k'; KEY_BYTES_MAX + 1]),
            ..Default::default()
        });
        let error = validate_command(&long).unwrap_err();
        assert_eq!(
            error,
            ApplyError::KeyTooLarge {
                bytes: KEY_BYTES_MAX + 1,
                max: KEY_BYTES_MAX
            }
        );
        assert!(error.to_string().contains("key_bytes_max is 32768"));
        let at_limit = Command::Put(PutRequest {
            key: Bytes::from(vec![b'k'; KEY_BYTES_MAX]),
            ..Default::default()
        });
        assert_eq!(validate_command(&at_limit), Ok(()));
        let ops = txn(
            (0..TXN_OPS_MAX + 1)
                .map(|i| put(&format!("k{i}")))
                .collect(),
            vec![],
        );
        assert_eq!(
            check(ops),
            Err(ApplyError::TooManyOps {
                count: TXN_OPS_MAX + 1,
                max: TXN_OPS_MAX
            })
        );
        let mut deep = txn(vec![], vec![]);
        for _ in 0..TXN_DEPTH_MAX {
            deep = txn(vec![RequestOp::Txn(deep)], vec![]);
        }
        assert_eq!(
            check(deep),
            Err(ApplyError::TxnTooDeep {
                depth: TXN_DEPTH_MAX + 1,
                max: TXN_DEPTH_MAX
            })
        );
        let empty = Compare {
            range: KeyRange::single(""),
            target: CompareTarget::Version(0),
            result: CompareResult::Equal,
        };
        assert_eq!(
            check(TxnRequest {
                compare: vec![empty],
                ..Default::default()
            }),
            Err(ApplyError::EmptyKey)
        );
        let ignore = Command::Put(PutRequest {
            key: "k".into(),
            value: "v".into(),
            ignore_value: true,
            ..Default::default()
        });
        assert_eq!(validate_command(&ignore), Err(ApplyError::ValueProvided));
    }
}
