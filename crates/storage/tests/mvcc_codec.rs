//! The command encoding: every command round-trips, and no input makes decode panic.

use ballot_storage::mvcc::limits::TXN_OPS_MAX;
use ballot_storage::mvcc::types::*;
use ballot_storage::mvcc::{CodecError, CommandCodec};
use bytes::Bytes;
use proptest::prelude::*;

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn range() -> impl Strategy<Value = KeyRange> {
    (bytes(6), bytes(3)).prop_map(|(key, range_end)| KeyRange { key, range_end })
}

fn put() -> impl Strategy<Value = PutRequest> {
    (bytes(6), bytes(8), any::<i64>(), any::<[bool; 3]>()).prop_map(
        |(key, value, lease, [a, b, c])| PutRequest {
            key,
            value,
            lease,
            prev_kv: a,
            ignore_value: b,
            ignore_lease: c,
        },
    )
}

fn range_request() -> impl Strategy<Value = RangeRequest> {
    let order = prop::sample::select(&[SortOrder::None, SortOrder::Ascend, SortOrder::Descend][..]);
    let target = prop::sample::select(
        &[
            SortTarget::Key,
            SortTarget::Version,
            SortTarget::Create,
            SortTarget::Mod,
            SortTarget::Value,
        ][..],
    );
    (
        range(),
        any::<[i64; 6]>(),
        order,
        target,
        any::<[bool; 2]>(),
    )
        .prop_map(|(range, n, sort_order, sort_target, [k, c])| RangeRequest {
            range,
            limit: n[0],
            revision: n[1],
            sort_order,
            sort_target,
            keys_only: k,
            count_only: c,
            min_mod_revision: n[2],
            max_mod_revision: n[3],
            min_create_revision: n[4],
            max_create_revision: n[5],
        })
}

fn compare() -> impl Strategy<Value = Compare> {
    let target = prop_oneof![
        any::<i64>().prop_map(CompareTarget::Version),
        any::<i64>().prop_map(CompareTarget::CreateRevision),
        any::<i64>().prop_map(CompareTarget::ModRevision),
        bytes(5).prop_map(CompareTarget::Value),
        any::<i64>().prop_map(CompareTarget::Lease),
    ];
    let result = prop::sample::select(
        &[
            CompareResult::Equal,
            CompareResult::Greater,
            CompareResult::Less,
            CompareResult::NotEqual,
        ][..],
    );
    (range(), target, result).prop_map(|(range, target, result)| Compare {
        range,
        target,
        result,
    })
}

fn txn() -> impl Strategy<Value = TxnRequest> {
    let leaf = prop_oneof![
        range_request().prop_map(RequestOp::Range),
        put().prop_map(RequestOp::Put),
        (range(), any::<bool>()).prop_map(|(range, prev_kv)| RequestOp::DeleteRange(
            DeleteRangeRequest { range, prev_kv }
        )),
    ];
    let op = leaf.prop_recursive(3, 16, 3, |inner| {
        (
            prop::collection::vec(compare(), 0..2),
            prop::collection::vec(inner.clone(), 0..3),
            prop::collection::vec(inner, 0..2),
        )
            .prop_map(|(compare, success, failure)| {
                RequestOp::Txn(TxnRequest {
                    compare,
                    success,
                    failure,
                })
            })
    });
    (
        prop::collection::vec(compare(), 0..3),
        prop::collection::vec(op.clone(), 0..4),
        prop::collection::vec(op, 0..3),
    )
        .prop_map(|(compare, success, failure)| TxnRequest {
            compare,
            success,
            failure,
        })
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        put().prop_map(Command::Put),
        (range(), any::<bool>()).prop_map(|(range, prev_kv)| Command::DeleteRange(
            DeleteRangeRequest { range, prev_kv }
        )),
        txn().prop_map(Command::Txn),
        any::<i64>().prop_map(|revision| Command::Compact { revision }),
        (any::<i64>(), any::<i64>())
            .prop_map(|(id, ttl_seconds)| Command::LeaseGrant { id, ttl_seconds }),
        any::<i64>().prop_map(|id| Command::LeaseRevoke { id }),
        prop::collection::vec(any::<(i64, i64)>(), 0..5)
            .prop_map(|checkpoints| Command::LeaseCheckpoint { checkpoints }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_command_round_trips(command in command()) {
        let encoded = command.encode();
        prop_assert_eq!(Command::decode(&encoded), Ok(command));
    }

    #[test]
    fn truncated_or_damaged_commands_never_panic(command in command(), cut in any::<prop::sample::Index>(), flip in any::<(prop::sample::Index, u8)>()) {
        let encoded = command.encode();
        let cut = cut.index(encoded.len());
        prop_assert!(Command::decode(&encoded[..cut]).is_err(), "a strict prefix is never a whole command");
        let mut damaged = encoded.to_vec();
        let at = flip.0.index(damaged.len());
        damaged[at] ^= flip.1 | 1;
        let _ = Command::decode(&damaged);
    }

    #[test]
    fn random_bytes_never_panic(garbage in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = Command::decode(&garbage);
        let mut framed = vec![1u8];
        framed.extend(&garbage);
        let _ = Command::decode(&framed);
    }
}

#[test]
fn over_limit_counts_are_refused_with_the_limit_named() {
    let txn = TxnRequest {
        success: (0..=TXN_OPS_MAX)
            .map(|_| {
                RequestOp::Put(PutRequest {
                    key: "k".into(),
                    ..Default::default()
                })
            })
            .collect(),
        ..Default::default()
    };
    let error = Command::decode(&Command::Txn(txn).encode()).unwrap_err();
    assert!(
        matches!(
            error,
            CodecError::OverLimit {
                limit: "txn_ops_max",
                ..
            }
        ),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains(&format!("txn_ops_max is {TXN_OPS_MAX}")),
        "{error}"
    );
}
