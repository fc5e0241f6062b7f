//! The etcd v3 wire contract, pinned.
//!
//! Expected bytes below are hand-computed protobuf encodings: a tag byte is
//! `(field_number << 3) | wire_type`, wire type 0 = varint, 2 = length-delimited.
//! A wrong field number, a wrong scalar type (int64 vs sint64, say) or a wrong
//! enum value changes the bytes and fails the test.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use ballot_proto::authpb;
use ballot_proto::etcdserverpb::{
    self as pb, compare, range_request, request_op, response_op, watch_create_request,
    watch_request,
};
use ballot_proto::mvccpb::{self, event};
use ballot_proto::{ballotpb, v3electionpb, v3lockpb};
use bytes::Bytes;
use prost::Message;
use tonic::codegen::{http, tokio_stream, Service};

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

/// Encodes `msg`, compares with `want`, and checks that decoding `want` gives `msg` back.
fn pin<M: Message + Default + PartialEq + std::fmt::Debug>(msg: &M, want: &[u8]) {
    assert_eq!(msg.encode_to_vec(), want, "encoding of {msg:?}");
    assert_eq!(
        &M::decode(want).expect("decode"),
        msg,
        "decoding of {want:02x?}"
    );
}

// ---------------------------------------------------------------------------
// KV
// ---------------------------------------------------------------------------

#[test]
fn range_request_fields() {
    pin(
        &pb::RangeRequest {
            key: b("a"),
            range_end: b("b"),
            limit: 5,
            ..Default::default()
        },
        &[0x0a, 1, b'a', 0x12, 1, b'b', 0x18, 5],
    );
    pin(
        &pb::RangeRequest {
            revision: 4,
            sort_order: range_request::SortOrder::Descend as i32,
            sort_target: range_request::SortTarget::Mod as i32,
            serializable: true,
            keys_only: true,
            count_only: true,
            min_mod_revision: 10,
            max_mod_revision: 11,
            min_create_revision: 12,
            max_create_revision: 13,
            ..Default::default()
        },
        &[
            0x20, 4, // revision = 4
            0x28, 2, // sort_order = 5, DESCEND = 2
            0x30, 3, // sort_target = 6, MOD = 3
            0x38, 1, // serializable = 7
            0x40, 1, // keys_only = 8
            0x48, 1, // count_only = 9
            0x50, 10, // min_mod_revision = 10
            0x58, 11, // max_mod_revision = 11
            0x60, 12, // min_create_revision = 12
            0x68, 13, // max_create_revision = 13
        ],
    );
    assert_eq!(range_request::SortOrder::None as i32, 0);
    assert_eq!(range_request::SortOrder::Ascend as i32, 1);
    assert_eq!(range_request::SortTarget::Key as i32, 0);
    assert_eq!(range_request::SortTarget::Version as i32, 1);
    assert_eq!(range_request::SortTarget::Create as i32, 2);
    assert_eq!(range_request::SortTarget::Value as i32, 4);
}

#[test]
fn revision_fields_are_int64_not_sint64() {
    // int64 -1 is a ten-byte varint; sint64 would be the single byte 0x01.
    pin(
        &pb::RangeRequest {
            revision: -1,
            ..Default::default()
        },
        &[
            0x20, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ],
    );
    pin(
        &pb::LeaseTimeToLiveResponse {
            ttl: -1,
            ..Default::default()
        },
        &[
            0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ],
    );
}

#[test]
fn response_header_and_key_value() {
    pin(
        &pb::ResponseHeader {
            cluster_id: 1,
            member_id: 2,
            revision: 3,
            raft_term: 4,
        },
        &[0x08, 1, 0x10, 2, 0x18, 3, 0x20, 4],
    );
    pin(
        &mvccpb::KeyValue {
            key: b("k"),
            create_revision: 2,
            mod_revision: 3,
            version: 4,
            value: b("v"),
            lease: 6,
        },
        &[
            0x0a, 1, b'k', 0x10, 2, 0x18, 3, 0x20, 4, 0x2a, 1, b'v', 0x30, 6,
        ],
    );
    pin(
        &pb::RangeResponse {
            header: Some(pb::ResponseHeader {
                revision: 7,
                ..Default::default()
            }),
            kvs: vec![mvccpb::KeyValue {
                key: b("k"),
                ..Default::default()
            }],
            more: true,
            count: 9,
        },
        &[0x0a, 2, 0x18, 7, 0x12, 3, 0x0a, 1, b'k', 0x18, 1, 0x20, 9],
    );
}

#[test]
fn put_and_delete_fields() {
    pin(
        &pb::PutRequest {
            key: b("k"),
            value: b("v"),
            lease: 7,
            prev_kv: true,
            ignore_value: true,
            ignore_lease: true,
        },
        &[
            0x0a, 1, b'k', 0x12, 1, b'v', 0x18, 7, 0x20, 1, 0x28, 1, 0x30, 1,
        ],
    );
    pin(
        &pb::PutResponse {
            header: None,
            prev_kv: Some(mvccpb::KeyValue {
                key: b("k"),
                ..Default::default()
            }),
        },
        &[0x12, 3, 0x0a, 1, b'k'],
    );
    pin(
        &pb::DeleteRangeRequest {
            key: b("a"),
            range_end: b("\0"),
            prev_kv: true,
        },
        &[0x0a, 1, b'a', 0x12, 1, 0x00, 0x18, 1],
    );
    pin(
        &pb::DeleteRangeResponse {
            header: None,
            deleted: 2,
            prev_kvs: vec![mvccpb::KeyValue {
                key: b("a"),
                ..Default::default()
            }],
        },
        &[0x10, 2, 0x1a, 3, 0x0a, 1, b'a'],
    );
    pin(
        &pb::CompactionRequest {
            revision: 5,
            physical: true,
        },
        &[0x08, 5, 0x10, 1],
    );
}

#[test]
fn compare_oneof_zero_is_sent_and_range_end_is_field_64() {
    // "mod_revision == 0" (the key does not exist) is the most common guard
    // clients send. The oneof member must be on the wire even though it is 0.
    pin(
        &pb::Compare {
            result: compare::CompareResult::NotEqual as i32,
            target: compare::CompareTarget::Mod as i32,
            key: b("k"),
            target_union: Some(compare::TargetUnion::ModRevision(0)),
            range_end: b("\0"),
        },
        &[
            0x08, 3, // result = 1, NOT_EQUAL = 3
            0x10, 2, // target = 2, MOD = 2
            0x1a, 1, b'k', // key = 3
            0x30, 0, // mod_revision = 6, explicit zero
            0x82, 0x04, 1, 0x00, // range_end = 64: tag (64 << 3) | 2 = 514 = varint 82 04
        ],
    );
    // The other oneof members.
    let cases: [(compare::TargetUnion, &[u8]); 4] = [
        (compare::TargetUnion::Version(1), &[0x20, 1]),
        (compare::TargetUnion::CreateRevision(1), &[0x28, 1]),
        (compare::TargetUnion::Value(b("x")), &[0x3a, 1, b'x']),
        (compare::TargetUnion::Lease(1), &[0x40, 1]),
    ];
    for (tu, want) in cases {
        pin(
            &pb::Compare {
                target_union: Some(tu),
                ..Default::default()
            },
            want,
        );
    }
    assert_eq!(compare::CompareResult::Equal as i32, 0);
    assert_eq!(compare::CompareResult::Greater as i32, 1);
    assert_eq!(compare::CompareResult::Less as i32, 2);
    assert_eq!(compare::CompareTarget::Version as i32, 0);
    assert_eq!(compare::CompareTarget::Create as i32, 1);
    assert_eq!(compare::CompareTarget::Value as i32, 3);
    assert_eq!(compare::CompareTarget::Lease as i32, 4);
}

#[test]
fn txn_request_and_response() {
    let put = pb::PutRequest {
        key: b("k"),
        ..Default::default()
    };
    pin(
        &pb::TxnRequest {
            compare: vec![pb::Compare {
                target_union: Some(compare::TargetUnion::Version(0)),
                ..Default::default()
            }],
            success: vec![pb::RequestOp {
                request: Some(request_op::Request::RequestPut(put)),
            }],
            failure: vec![pb::RequestOp {
                request: Some(request_op::Request::RequestRange(
                    pb::RangeRequest::default(),
                )),
            }],
        },
        &[
            0x0a, 2, 0x20, 0, // compare = 1 { version = 4: 0 }
            0x12, 5, 0x12, 3, 0x0a, 1, b'k', // success = 2 { request_put = 2 { key } }
            0x1a, 2, 0x0a, 0, // failure = 3 { request_range = 1 {} }
        ],
    );
    // Nested transactions and delete ops use oneof numbers 4 and 3.
    pin(
        &pb::RequestOp {
            request: Some(request_op::Request::RequestTxn(pb::TxnRequest::default())),
        },
        &[0x22, 0],
    );
    pin(
        &pb::RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                pb::DeleteRangeRequest::default(),
            )),
        },
        &[0x1a, 0],
    );
    pin(
        &pb::TxnResponse {
            header: None,
            succeeded: true,
            responses: vec![
                pb::ResponseOp {
                    response: Some(response_op::Response::ResponseRange(Default::default())),
                },
                pb::ResponseOp {
                    response: Some(response_op::Response::ResponsePut(Default::default())),
                },
                pb::ResponseOp {
                    response: Some(response_op::Response::ResponseDeleteRange(
                        Default::default(),
                    )),
                },
                pb::ResponseOp {
                    response: Some(response_op::Response::ResponseTxn(Default::default())),
                },
            ],
        },
        &[
            0x10, 1, 0x1a, 2, 0x0a, 0, 0x1a, 2, 0x12, 0, 0x1a, 2, 0x1a, 0, 0x1a, 2, 0x22, 0,
        ],
    );
}

// ---------------------------------------------------------------------------
// Watch
// ---------------------------------------------------------------------------

#[test]
fn watch_create_request_fields_and_packed_filters() {
    let create = pb::WatchCreateRequest {
        key: b("a"),
        range_end: b("b"),
        start_revision: 10,
        progress_notify: true,
        filters: vec![
            watch_create_request::FilterType::Noput as i32,
            watch_create_request::FilterType::Nodelete as i32,
        ],
        prev_kv: true,
        watch_id: 3,
        fragment: true,
    };
    pin(
        &pb::WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(create)),
        },
        &[
            0x0a, 20, // create_request = 1, 20 bytes
            0x0a, 1, b'a', // key = 1
            0x12, 1, b'b', // range_end = 2
            0x18, 10, // start_revision = 3
            0x20, 1, // progress_notify = 4
            0x2a, 2, 0, 1, // filters = 5, packed: NOPUT = 0, NODELETE = 1
            0x30, 1, // prev_kv = 6
            0x38, 3, // watch_id = 7
            0x40, 1, // fragment = 8
        ],
    );
    // A decoder must also accept the unpacked form of a repeated enum.
    let unpacked = pb::WatchCreateRequest::decode(&[0x28, 1, 0x28, 0][..]).unwrap();
    assert_eq!(unpacked.filters, vec![1, 0]);
}

#[test]
fn watch_cancel_and_progress_requests() {
    pin(
        &pb::WatchRequest {
            request_union: Some(watch_request::RequestUnion::CancelRequest(
                pb::WatchCancelRequest { watch_id: 5 },
            )),
        },
        &[0x12, 2, 0x08, 5],
    );
    // The progress request is an empty message; it is still on the wire as
    // field 3 with length 0, and must decode as "progress requested".
    pin(
        &pb::WatchRequest {
            request_union: Some(watch_request::RequestUnion::ProgressRequest(
                pb::WatchProgressRequest {},
            )),
        },
        &[0x1a, 0],
    );
    // Watch id 0 with a cancel request is a real request for watcher 0.
    pin(
        &pb::WatchRequest {
            request_union: Some(watch_request::RequestUnion::CancelRequest(
                pb::WatchCancelRequest { watch_id: 0 },
            )),
        },
        &[0x12, 0],
    );
}

#[test]
fn watch_response_fields_and_events_are_field_11() {
    pin(
        &pb::WatchResponse {
            header: Some(pb::ResponseHeader {
                revision: 9,
                ..Default::default()
            }),
            watch_id: 2,
            created: true,
            canceled: true,
            compact_revision: 4,
            cancel_reason: "x".into(),
            fragment: true,
            events: vec![mvccpb::Event {
                r#type: event::EventType::Delete as i32,
                kv: Some(mvccpb::KeyValue {
                    key: b("k"),
                    mod_revision: 9,
                    ..Default::default()
                }),
                prev_kv: Some(mvccpb::KeyValue {
                    value: b("v"),
                    ..Default::default()
                }),
            }],
        },
        &[
            0x0a, 2, 0x18, 9, // header = 1 { revision = 3 }
            0x10, 2, // watch_id = 2
            0x18, 1, // created = 3
            0x20, 1, // canceled = 4
            0x28, 4, // compact_revision = 5
            0x32, 1, b'x', // cancel_reason = 6
            0x38, 1, // fragment = 7
            0x5a, 14, // events = 11: tag (11 << 3) | 2 = 0x5a
            0x08, 1, // type = 1, DELETE = 1
            0x12, 5, 0x0a, 1, b'k', 0x18, 9, // kv = 2 { key, mod_revision }
            0x1a, 3, 0x2a, 1, b'v', // prev_kv = 3 { value = 5 }
        ],
    );
    assert_eq!(event::EventType::Put as i32, 0);
}

// ---------------------------------------------------------------------------
// Lease
// ---------------------------------------------------------------------------

#[test]
fn lease_fields() {
    pin(
        &pb::LeaseGrantRequest { ttl: 60, id: 7 },
        &[0x08, 60, 0x10, 7],
    );
    pin(
        &pb::LeaseGrantResponse {
            header: None,
            id: 7,
            ttl: 60,
            error: "e".into(),
        },
        &[0x10, 7, 0x18, 60, 0x22, 1, b'e'],
    );
    pin(&pb::LeaseRevokeRequest { id: 7 }, &[0x08, 7]);
    pin(&pb::LeaseKeepAliveRequest { id: 7 }, &[0x08, 7]);
    pin(
        &pb::LeaseKeepAliveResponse {
            header: None,
            id: 7,
            ttl: 10,
        },
        &[0x10, 7, 0x18, 10],
    );
    pin(
        &pb::LeaseTimeToLiveRequest { id: 7, keys: true },
        &[0x08, 7, 0x10, 1],
    );
    pin(
        &pb::LeaseTimeToLiveResponse {
            header: None,
            id: 7,
            ttl: 5,
            granted_ttl: 10,
            keys: vec![b("a"), b("b")],
        },
        &[0x10, 7, 0x18, 5, 0x20, 10, 0x2a, 1, b'a', 0x2a, 1, b'b'],
    );
    pin(
        &pb::LeaseLeasesResponse {
            header: None,
            leases: vec![pb::LeaseStatus { id: 7 }],
        },
        &[0x12, 2, 0x08, 7],
    );
}

// ---------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------

#[test]
fn member_fields() {
    let member = pb::Member {
        id: 1,
        name: "n".into(),
        peer_ur_ls: vec!["p".into()],
        client_ur_ls: vec!["c".into()],
        is_learner: true,
    };
    let member_bytes: &[u8] = &[
        0x08, 1, 0x12, 1, b'n', 0x1a, 1, b'p', 0x22, 1, b'c', 0x28, 1,
    ];
    pin(&member, member_bytes);

    pin(
        &pb::MemberAddRequest {
            peer_ur_ls: vec!["p".into()],
            is_learner: true,
        },
        &[0x0a, 1, b'p', 0x10, 1],
    );
    let mut add_resp = vec![0x12, member_bytes.len() as u8];
    add_resp.extend_from_slice(member_bytes);
    add_resp.extend_from_slice(&[0x1a, member_bytes.len() as u8]);
    add_resp.extend_from_slice(member_bytes);
    pin(
        &pb::MemberAddResponse {
            header: None,
            member: Some(member.clone()),
            members: vec![member.clone()],
        },
        &add_resp,
    );
    pin(&pb::MemberRemoveRequest { id: 1 }, &[0x08, 1]);
    pin(
        &pb::MemberUpdateRequest {
            id: 1,
            peer_ur_ls: vec!["p".into()],
        },
        &[0x08, 1, 0x12, 1, b'p'],
    );
    pin(&pb::MemberListRequest { linearizable: true }, &[0x08, 1]);
    pin(&pb::MemberPromoteRequest { id: 1 }, &[0x08, 1]);
    let mut list_resp = vec![0x12, member_bytes.len() as u8];
    list_resp.extend_from_slice(member_bytes);
    pin(
        &pb::MemberListResponse {
            header: None,
            members: vec![member],
        },
        &list_resp,
    );
}

// ---------------------------------------------------------------------------
// Maintenance
// ---------------------------------------------------------------------------

#[test]
fn status_response_fields() {
    pin(
        &pb::StatusResponse {
            header: None,
            version: "3.6".into(),
            db_size: 3,
            leader: 4,
            raft_index: 5,
            raft_term: 6,
            raft_applied_index: 7,
            errors: vec!["e".into()],
            db_size_in_use: 9,
            is_learner: true,
            storage_version: "s".into(),
            db_size_quota: 12,
            downgrade_info: Some(pb::DowngradeInfo {
                enabled: true,
                target_version: "t".into(),
            }),
        },
        &[
            0x12, 3, b'3', b'.', b'6', // version = 2
            0x18, 3, // dbSize = 3
            0x20, 4, // leader = 4
            0x28, 5, // raftIndex = 5
            0x30, 6, // raftTerm = 6
            0x38, 7, // raftAppliedIndex = 7
            0x42, 1, b'e', // errors = 8
            0x48, 9, // dbSizeInUse = 9
            0x50, 1, // isLearner = 10
            0x5a, 1, b's', // storageVersion = 11
            0x60, 12, // dbSizeQuota = 12
            0x6a, 5, 0x08, 1, 0x12, 1, b't', // downgradeInfo = 13 { enabled, targetVersion }
        ],
    );
}

#[test]
fn alarm_hash_snapshot_move_leader_downgrade_fields() {
    pin(
        &pb::AlarmRequest {
            action: pb::alarm_request::AlarmAction::Activate as i32,
            member_id: 5,
            alarm: pb::AlarmType::Nospace as i32,
        },
        &[0x08, 1, 0x10, 5, 0x18, 1],
    );
    assert_eq!(pb::alarm_request::AlarmAction::Get as i32, 0);
    assert_eq!(pb::alarm_request::AlarmAction::Deactivate as i32, 2);
    assert_eq!(pb::AlarmType::None as i32, 0);
    assert_eq!(pb::AlarmType::Corrupt as i32, 2);
    pin(
        &pb::AlarmResponse {
            header: None,
            alarms: vec![pb::AlarmMember {
                member_id: 5,
                alarm: pb::AlarmType::Corrupt as i32,
            }],
        },
        &[0x12, 4, 0x08, 5, 0x10, 2],
    );
    pin(
        &pb::HashResponse {
            header: None,
            hash: 0xffff_ffff,
        },
        &[0x10, 0xff, 0xff, 0xff, 0xff, 0x0f],
    );
    pin(&pb::HashKvRequest { revision: 3 }, &[0x08, 3]);
    pin(
        &pb::HashKvResponse {
            header: None,
            hash: 1,
            compact_revision: 2,
            hash_revision: 3,
        },
        &[0x10, 1, 0x18, 2, 0x20, 3],
    );
    pin(
        &pb::SnapshotResponse {
            header: None,
            remaining_bytes: 2,
            blob: b("z"),
            version: "v".into(),
        },
        &[0x10, 2, 0x1a, 1, b'z', 0x22, 1, b'v'],
    );
    pin(&pb::MoveLeaderRequest { target_id: 2 }, &[0x08, 2]);
    pin(
        &pb::DowngradeRequest {
            action: pb::downgrade_request::DowngradeAction::Cancel as i32,
            version: "3.5".into(),
        },
        &[0x08, 2, 0x12, 3, b'3', b'.', b'5'],
    );
    assert_eq!(pb::downgrade_request::DowngradeAction::Validate as i32, 0);
    assert_eq!(pb::downgrade_request::DowngradeAction::Enable as i32, 1);
}

// ---------------------------------------------------------------------------
// Auth
// ---------------------------------------------------------------------------

#[test]
fn auth_fields() {
    pin(
        &pb::AuthStatusResponse {
            header: None,
            enabled: true,
            auth_revision: 3,
        },
        &[0x10, 1, 0x18, 3],
    );
    pin(
        &pb::AuthenticateRequest {
            name: "u".into(),
            password: "p".into(),
        },
        &[0x0a, 1, b'u', 0x12, 1, b'p'],
    );
    pin(
        &pb::AuthenticateResponse {
            header: None,
            token: "t".into(),
        },
        &[0x12, 1, b't'],
    );
    pin(
        &pb::AuthUserAddRequest {
            name: "u".into(),
            password: "p".into(),
            options: Some(authpb::UserAddOptions { no_password: true }),
            hashed_password: "h".into(),
        },
        &[
            0x0a, 1, b'u', 0x12, 1, b'p', 0x1a, 2, 0x08, 1, 0x22, 1, b'h',
        ],
    );
    pin(
        &pb::AuthUserChangePasswordRequest {
            name: "u".into(),
            password: "p".into(),
            hashed_password: "h".into(),
        },
        &[0x0a, 1, b'u', 0x12, 1, b'p', 0x1a, 1, b'h'],
    );
    pin(
        &pb::AuthUserGrantRoleRequest {
            user: "u".into(),
            role: "r".into(),
        },
        &[0x0a, 1, b'u', 0x12, 1, b'r'],
    );
    let perm = authpb::Permission {
        perm_type: authpb::permission::Type::Readwrite as i32,
        key: b("a"),
        range_end: b("b"),
    };
    let perm_bytes: &[u8] = &[0x08, 2, 0x12, 1, b'a', 0x1a, 1, b'b'];
    pin(&perm, perm_bytes);
    let mut grant = vec![0x0a, 1, b'r', 0x12, perm_bytes.len() as u8];
    grant.extend_from_slice(perm_bytes);
    pin(
        &pb::AuthRoleGrantPermissionRequest {
            name: "r".into(),
            perm: Some(perm),
        },
        &grant,
    );
    pin(
        &pb::AuthRoleRevokePermissionRequest {
            role: "r".into(),
            key: b("a"),
            range_end: b("b"),
        },
        &[0x0a, 1, b'r', 0x12, 1, b'a', 0x1a, 1, b'b'],
    );
    pin(
        &pb::AuthUserListResponse {
            header: None,
            users: vec!["u".into()],
        },
        &[0x12, 1, b'u'],
    );
    assert_eq!(authpb::permission::Type::Read as i32, 0);
    assert_eq!(authpb::permission::Type::Write as i32, 1);
}

// ---------------------------------------------------------------------------
// Election and Lock
// ---------------------------------------------------------------------------

#[test]
fn election_and_lock_fields() {
    let leader = v3electionpb::LeaderKey {
        name: b("e"),
        key: b("k"),
        rev: 3,
        lease: 4,
    };
    let leader_bytes: &[u8] = &[0x0a, 1, b'e', 0x12, 1, b'k', 0x18, 3, 0x20, 4];
    pin(&leader, leader_bytes);
    pin(
        &v3electionpb::CampaignRequest {
            name: b("e"),
            lease: 2,
            value: b("v"),
        },
        &[0x0a, 1, b'e', 0x10, 2, 0x1a, 1, b'v'],
    );
    let mut proclaim = vec![0x0a, leader_bytes.len() as u8];
    proclaim.extend_from_slice(leader_bytes);
    proclaim.extend_from_slice(&[0x12, 1, b'v']);
    pin(
        &v3electionpb::ProclaimRequest {
            leader: Some(leader),
            value: b("v"),
        },
        &proclaim,
    );
    pin(
        &v3electionpb::LeaderResponse {
            header: None,
            kv: Some(mvccpb::KeyValue {
                key: b("k"),
                ..Default::default()
            }),
        },
        &[0x12, 3, 0x0a, 1, b'k'],
    );
    pin(
        &v3lockpb::LockRequest {
            name: b("l"),
            lease: 2,
        },
        &[0x0a, 1, b'l', 0x10, 2],
    );
    pin(
        &v3lockpb::LockResponse {
            header: None,
            key: b("k"),
        },
        &[0x12, 1, b'k'],
    );
    pin(&v3lockpb::UnlockRequest { key: b("k") }, &[0x0a, 1, b'k']);
}

// ---------------------------------------------------------------------------
// Decoding what other clients may send
// ---------------------------------------------------------------------------

#[test]
fn unknown_fields_are_skipped() {
    // A newer client may send fields we do not know yet (here field 99 as a
    // varint and field 100 as bytes); decoding must skip them.
    let mut bytes = vec![0x0a, 1, b'a'];
    bytes.extend_from_slice(&[0x98, 0x06, 1]); // (99 << 3) | 0 = 792 = varint 98 06
    bytes.extend_from_slice(&[0xa2, 0x06, 2, b'x', b'y']); // (100 << 3) | 2 = 802 = a2 06
    bytes.extend_from_slice(&[0x18, 5]);
    let req = pb::RangeRequest::decode(&bytes[..]).unwrap();
    assert_eq!(
        req,
        pb::RangeRequest {
            key: b("a"),
            limit: 5,
            ..Default::default()
        }
    );
}

#[test]
fn unknown_enum_values_are_kept() {
    // An enum value from a newer API (SortTarget 9) decodes as the raw number
    // so the server can reject it with a clear error instead of failing to parse.
    let req = pb::RangeRequest::decode(&[0x30, 9][..]).unwrap();
    assert_eq!(req.sort_target, 9);
    assert!(range_request::SortTarget::try_from(req.sort_target).is_err());
}

#[test]
fn nested_txn_round_trip() {
    let inner = pb::TxnRequest {
        compare: vec![pb::Compare {
            result: compare::CompareResult::Greater as i32,
            target: compare::CompareTarget::Create as i32,
            key: b("x"),
            target_union: Some(compare::TargetUnion::CreateRevision(3)),
            range_end: Bytes::new(),
        }],
        success: vec![pb::RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                pb::DeleteRangeRequest {
                    key: b("x"),
                    range_end: b("y"),
                    prev_kv: true,
                },
            )),
        }],
        failure: vec![],
    };
    let outer = pb::TxnRequest {
        compare: vec![],
        success: vec![pb::RequestOp {
            request: Some(request_op::Request::RequestTxn(inner)),
        }],
        failure: vec![pb::RequestOp {
            request: Some(request_op::Request::RequestPut(pb::PutRequest {
                key: b("z"),
                value: Bytes::from(vec![0u8; 300]),
                ..Default::default()
            })),
        }],
    };
    let bytes = outer.encode_to_vec();
    assert_eq!(pb::TxnRequest::decode(&bytes[..]).unwrap(), outer);
}

// ---------------------------------------------------------------------------
// Services: method paths, streaming kinds, in-process round trips
// ---------------------------------------------------------------------------

/// A fake channel: records the path of each request and answers every call
/// with a trailers-only UNIMPLEMENTED response.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<String>>>);

impl Service<http::Request<tonic::body::Body>> for Recorder {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        self.0.lock().unwrap().push(req.uri().path().to_owned());
        let resp = http::Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", "12")
            .body(tonic::body::Body::empty())
            .unwrap();
        std::future::ready(Ok(resp))
    }
}

fn none<T: Send + 'static>() -> tokio_stream::Iter<std::vec::IntoIter<T>> {
    tokio_stream::iter(Vec::new())
}

/// Every RPC of the public etcd v3 API, as its gRPC path.
const ALL_PATHS: &[&str] = &[
    "/etcdserverpb.KV/Range",
    "/etcdserverpb.KV/Put",
    "/etcdserverpb.KV/DeleteRange",
    "/etcdserverpb.KV/Txn",
    "/etcdserverpb.KV/Compact",
    "/etcdserverpb.Watch/Watch",
    "/etcdserverpb.Lease/LeaseGrant",
    "/etcdserverpb.Lease/LeaseRevoke",
    "/etcdserverpb.Lease/LeaseKeepAlive",
    "/etcdserverpb.Lease/LeaseTimeToLive",
    "/etcdserverpb.Lease/LeaseLeases",
    "/etcdserverpb.Cluster/MemberAdd",
    "/etcdserverpb.Cluster/MemberRemove",
    "/etcdserverpb.Cluster/MemberUpdate",
    "/etcdserverpb.Cluster/MemberList",
    "/etcdserverpb.Cluster/MemberPromote",
    "/etcdserverpb.Maintenance/Alarm",
    "/etcdserverpb.Maintenance/Status",
    "/etcdserverpb.Maintenance/Defragment",
    "/etcdserverpb.Maintenance/Hash",
    "/etcdserverpb.Maintenance/HashKV",
    "/etcdserverpb.Maintenance/Snapshot",
    "/etcdserverpb.Maintenance/MoveLeader",
    "/etcdserverpb.Maintenance/Downgrade",
    "/etcdserverpb.Auth/AuthEnable",
    "/etcdserverpb.Auth/AuthDisable",
    "/etcdserverpb.Auth/AuthStatus",
    "/etcdserverpb.Auth/Authenticate",
    "/etcdserverpb.Auth/UserAdd",
    "/etcdserverpb.Auth/UserGet",
    "/etcdserverpb.Auth/UserList",
    "/etcdserverpb.Auth/UserDelete",
    "/etcdserverpb.Auth/UserChangePassword",
    "/etcdserverpb.Auth/UserGrantRole",
    "/etcdserverpb.Auth/UserRevokeRole",
    "/etcdserverpb.Auth/RoleAdd",
    "/etcdserverpb.Auth/RoleGet",
    "/etcdserverpb.Auth/RoleList",
    "/etcdserverpb.Auth/RoleDelete",
    "/etcdserverpb.Auth/RoleGrantPermission",
    "/etcdserverpb.Auth/RoleRevokePermission",
    "/v3electionpb.Election/Campaign",
    "/v3electionpb.Election/Proclaim",
    "/v3electionpb.Election/Leader",
    "/v3electionpb.Election/Observe",
    "/v3electionpb.Election/Resign",
    "/v3lockpb.Lock/Lock",
    "/v3lockpb.Lock/Unlock",
    "/ballotpb.Groups/GroupCreate",
    "/ballotpb.Groups/GroupList",
    "/ballotpb.Groups/GroupRemove",
];

#[tokio::test]
async fn generated_clients_use_the_etcd_method_paths() {
    use pb::{
        auth_client::AuthClient, cluster_client::ClusterClient, kv_client::KvClient,
        lease_client::LeaseClient, maintenance_client::MaintenanceClient,
        watch_client::WatchClient,
    };
    use v3electionpb::election_client::ElectionClient;
    use v3lockpb::lock_client::LockClient;

    let rec = Recorder::default();
    // Every call fails (the recorder answers UNIMPLEMENTED); only the path matters.
    let mut kv = KvClient::new(rec.clone());
    let _ = kv.range(pb::RangeRequest::default()).await;
    let _ = kv.put(pb::PutRequest::default()).await;
    let _ = kv.delete_range(pb::DeleteRangeRequest::default()).await;
    let _ = kv.txn(pb::TxnRequest::default()).await;
    let _ = kv.compact(pb::CompactionRequest::default()).await;
    let _ = WatchClient::new(rec.clone())
        .watch(none::<pb::WatchRequest>())
        .await;
    let mut lease = LeaseClient::new(rec.clone());
    let _ = lease.lease_grant(pb::LeaseGrantRequest::default()).await;
    let _ = lease.lease_revoke(pb::LeaseRevokeRequest::default()).await;
    let _ = lease
        .lease_keep_alive(none::<pb::LeaseKeepAliveRequest>())
        .await;
    let _ = lease
        .lease_time_to_live(pb::LeaseTimeToLiveRequest::default())
        .await;
    let _ = lease.lease_leases(pb::LeaseLeasesRequest::default()).await;
    let mut cluster = ClusterClient::new(rec.clone());
    let _ = cluster.member_add(pb::MemberAddRequest::default()).await;
    let _ = cluster
        .member_remove(pb::MemberRemoveRequest::default())
        .await;
    let _ = cluster
        .member_update(pb::MemberUpdateRequest::default())
        .await;
    let _ = cluster.member_list(pb::MemberListRequest::default()).await;
    let _ = cluster
        .member_promote(pb::MemberPromoteRequest::default())
        .await;
    let mut m = MaintenanceClient::new(rec.clone());
    let _ = m.alarm(pb::AlarmRequest::default()).await;
    let _ = m.status(pb::StatusRequest::default()).await;
    let _ = m.defragment(pb::DefragmentRequest::default()).await;
    let _ = m.hash(pb::HashRequest::default()).await;
    let _ = m.hash_kv(pb::HashKvRequest::default()).await;
    let _ = m.snapshot(pb::SnapshotRequest::default()).await;
    let _ = m.move_leader(pb::MoveLeaderRequest::default()).await;
    let _ = m.downgrade(pb::DowngradeRequest::default()).await;
    let mut a = AuthClient::new(rec.clone());
    let _ = a.auth_enable(pb::AuthEnableRequest::default()).await;
    let _ = a.auth_disable(pb::AuthDisableRequest::default()).await;
    let _ = a.auth_status(pb::AuthStatusRequest::default()).await;
    let _ = a.authenticate(pb::AuthenticateRequest::default()).await;
    let _ = a.user_add(pb::AuthUserAddRequest::default()).await;
    let _ = a.user_get(pb::AuthUserGetRequest::default()).await;
    let _ = a.user_list(pb::AuthUserListRequest::default()).await;
    let _ = a.user_delete(pb::AuthUserDeleteRequest::default()).await;
    let _ = a
        .user_change_password(pb::AuthUserChangePasswordRequest::default())
        .await;
    let _ = a
        .user_grant_role(pb::AuthUserGrantRoleRequest::default())
        .await;
    let _ = a
        .user_revoke_role(pb::AuthUserRevokeRoleRequest::default())
        .await;
    let _ = a.role_add(pb::AuthRoleAddRequest::default()).await;
    let _ = a.role_get(pb::AuthRoleGetRequest::default()).await;
    let _ = a.role_list(pb::AuthRoleListRequest::default()).await;
    let _ = a.role_delete(pb::AuthRoleDeleteRequest::default()).await;
    let _ = a
        .role_grant_permission(pb::AuthRoleGrantPermissionRequest::default())
        .await;
    let _ = a
        .role_revoke_permission(pb::AuthRoleRevokePermissionRequest::default())
        .await;
    let mut e = ElectionClient::new(rec.clone());
    let _ = e.campaign(v3electionpb::CampaignRequest::default()).await;
    let _ = e.proclaim(v3electionpb::ProclaimRequest::default()).await;
    let _ = e.leader(v3electionpb::LeaderRequest::default()).await;
    let _ = e.observe(v3electionpb::LeaderRequest::default()).await;
    let _ = e.resign(v3electionpb::ResignRequest::default()).await;
    let mut l = LockClient::new(rec.clone());
    let _ = l.lock(v3lockpb::LockRequest::default()).await;
    let _ = l.unlock(v3lockpb::UnlockRequest::default()).await;
    let mut g = ballotpb::groups_client::GroupsClient::new(rec.clone());
    let _ = g
        .group_create(ballotpb::GroupCreateRequest::default())
        .await;
    let _ = g.group_list(ballotpb::GroupListRequest::default()).await;
    let _ = g
        .group_remove(ballotpb::GroupRemoveRequest::default())
        .await;

    let seen = rec.0.lock().unwrap().clone();
    assert_eq!(seen, ALL_PATHS);
}

#[test]
fn generated_servers_are_named_as_etcd_services() {
    use tonic::server::NamedService;
    struct Never;
    assert_eq!(pb::kv_server::SERVICE_NAME, "etcdserverpb.KV");
    assert_eq!(pb::watch_server::SERVICE_NAME, "etcdserverpb.Watch");
    assert_eq!(pb::lease_server::SERVICE_NAME, "etcdserverpb.Lease");
    assert_eq!(pb::cluster_server::SERVICE_NAME, "etcdserverpb.Cluster");
    assert_eq!(
        pb::maintenance_server::SERVICE_NAME,
        "etcdserverpb.Maintenance"
    );
    assert_eq!(pb::auth_server::SERVICE_NAME, "etcdserverpb.Auth");
    assert_eq!(
        v3electionpb::election_server::SERVICE_NAME,
        "v3electionpb.Election"
    );
    assert_eq!(v3lockpb::lock_server::SERVICE_NAME, "v3lockpb.Lock");
    // The router uses NamedService::NAME; it must agree.
    assert_eq!(
        <pb::kv_server::KvServer<Never> as NamedService>::NAME,
        "etcdserverpb.KV"
    );
}

/// Every service, method and streaming kind, read back from the compiled
/// descriptor set: the contract as a table.
#[test]
fn descriptor_set_lists_every_rpc_with_its_streaming_kind() {
    let fds = prost_types::FileDescriptorSet::decode(ballot_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut rpcs = Vec::new();
    let mut files = BTreeSet::new();
    for file in &fds.file {
        files.insert(file.name().to_owned());
        for dep in &file.dependency {
            assert!(
                dep.starts_with("etcd/api/"),
                "{} imports {dep}",
                file.name()
            );
        }
        for svc in &file.service {
            for m in &svc.method {
                let kind = match (m.client_streaming(), m.server_streaming()) {
                    (false, false) => "unary",
                    (false, true) => "server-stream",
                    (true, false) => "client-stream",
                    (true, true) => "bidi",
                };
                rpcs.push((
                    format!("/{}.{}/{}", file.package(), svc.name(), m.name()),
                    kind,
                ));
            }
        }
    }
    assert_eq!(files.len(), 6, "{files:?}");
    let paths: Vec<&str> = rpcs.iter().map(|(p, _)| p.as_str()).collect();
    let mut want: Vec<&str> = ALL_PATHS.to_vec();
    let mut got = paths.clone();
    want.sort_unstable();
    got.sort_unstable();
    assert_eq!(got, want);
    let streaming: Vec<_> = rpcs
        .iter()
        .filter(|(_, k)| *k != "unary")
        .cloned()
        .collect();
    assert_eq!(
        streaming,
        vec![
            ("/etcdserverpb.Watch/Watch".to_owned(), "bidi"),
            ("/etcdserverpb.Lease/LeaseKeepAlive".to_owned(), "bidi"),
            (
                "/etcdserverpb.Maintenance/Snapshot".to_owned(),
                "server-stream"
            ),
            ("/v3electionpb.Election/Observe".to_owned(), "server-stream"),
        ]
    );
}

// In-process client -> server round trips (no network): the generated client
// and server agree on paths, framing and messages.

struct EchoKv;

#[tonic::async_trait]
impl pb::kv_server::Kv for EchoKv {
    async fn range(
        &self,
        req: tonic::Request<pb::RangeRequest>,
    ) -> Result<tonic::Response<pb::RangeResponse>, tonic::Status> {
        let req = req.into_inner();
        Ok(tonic::Response::new(pb::RangeResponse {
            header: Some(pb::ResponseHeader {
                revision: 42,
                ..Default::default()
            }),
            kvs: vec![mvccpb::KeyValue {
                key: req.key,
                value: req.range_end,
                ..Default::default()
            }],
            more: false,
            count: req.limit,
        }))
    }
    async fn put(
        &self,
        _: tonic::Request<pb::PutRequest>,
    ) -> Result<tonic::Response<pb::PutResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("put"))
    }
    async fn delete_range(
        &self,
        _: tonic::Request<pb::DeleteRangeRequest>,
    ) -> Result<tonic::Response<pb::DeleteRangeResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("delete_range"))
    }
    async fn txn(
        &self,
        _: tonic::Request<pb::TxnRequest>,
    ) -> Result<tonic::Response<pb::TxnResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("txn"))
    }
    async fn compact(
        &self,
        _: tonic::Request<pb::CompactionRequest>,
    ) -> Result<tonic::Response<pb::CompactionResponse>, tonic::Status> {
        Err(tonic::Status::failed_precondition("compact"))
    }
}

#[tokio::test]
async fn unary_round_trip_through_generated_client_and_server() {
    let mut client = pb::kv_client::KvClient::new(pb::kv_server::KvServer::new(EchoKv));
    let resp = client
        .range(pb::RangeRequest {
            key: b("a"),
            range_end: b("b"),
            limit: 5,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.header.unwrap().revision, 42);
    assert_eq!(resp.kvs[0].key, b("a"));
    assert_eq!(resp.kvs[0].value, b("b"));
    assert_eq!(resp.count, 5);
    let err = client
        .compact(pb::CompactionRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
}

/// Answers each create request with `created`, echoing the requested watch
/// id, and each cancel request with `canceled`.
struct EchoWatch;

type WatchStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::WatchResponse, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl pb::watch_server::Watch for EchoWatch {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: tonic::Request<tonic::Streaming<pb::WatchRequest>>,
    ) -> Result<tonic::Response<WatchStream>, tonic::Status> {
        use tokio_stream::StreamExt;
        let out = req.into_inner().map(|r| {
            let r = r?;
            Ok(match r.request_union {
                Some(watch_request::RequestUnion::CreateRequest(c)) => pb::WatchResponse {
                    watch_id: c.watch_id,
                    created: true,
                    ..Default::default()
                },
                Some(watch_request::RequestUnion::CancelRequest(c)) => pb::WatchResponse {
                    watch_id: c.watch_id,
                    canceled: true,
                    ..Default::default()
                },
                Some(watch_request::RequestUnion::ProgressRequest(_)) => pb::WatchResponse {
                    watch_id: -1,
                    header: Some(pb::ResponseHeader {
                        revision: 7,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                None => return Err(tonic::Status::invalid_argument("empty watch request")),
            })
        });
        Ok(tonic::Response::new(Box::pin(out)))
    }
}

#[tokio::test]
async fn bidi_round_trip_through_generated_client_and_server() {
    let mut client =
        pb::watch_client::WatchClient::new(pb::watch_server::WatchServer::new(EchoWatch));
    let reqs = vec![
        pb::WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: b("k"),
                    watch_id: 3,
                    ..Default::default()
                },
            )),
        },
        pb::WatchRequest {
            request_union: Some(watch_request::RequestUnion::ProgressRequest(
                pb::WatchProgressRequest {},
            )),
        },
        pb::WatchRequest {
            request_union: Some(watch_request::RequestUnion::CancelRequest(
                pb::WatchCancelRequest { watch_id: 3 },
            )),
        },
    ];
    let mut stream = client
        .watch(tokio_stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    let r1 = stream.message().await.unwrap().unwrap();
    assert!(r1.created && r1.watch_id == 3);
    let r2 = stream.message().await.unwrap().unwrap();
    assert_eq!((r2.watch_id, r2.header.unwrap().revision), (-1, 7));
    let r3 = stream.message().await.unwrap().unwrap();
    assert!(r3.canceled && r3.watch_id == 3);
    assert!(stream.message().await.unwrap().is_none());
}
