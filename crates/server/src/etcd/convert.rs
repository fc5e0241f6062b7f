//! The etcd wire types (`ballot_proto`) to the storage vocabulary (`ballot_storage`) and back.
//! Pure functions; the only refusals are enum values the proto does not define, answered with
//! `InvalidArgument` naming the field (every other check is the storage layer's, run at the edge
//! by the handlers through `limits::validate_command`).

use super::status;
use ballot_proto::etcdserverpb as pb;
use ballot_proto::mvccpb;
use ballot_storage::mvcc::types::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, DeleteRangeResponse, Event,
    EventKind, KeyRange, KeyValue, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    ResponseOp, SortOrder, SortTarget, TxnRequest, TxnResponse,
};
use ballot_storage::watch::{WatchCreate, WatchResponse};
use bytes::Bytes;
use pb::compare::{CompareResult as PbCompareResult, CompareTarget as PbCompareTarget};
use pb::range_request::{SortOrder as PbSortOrder, SortTarget as PbSortTarget};
use tonic::Status;

// ---- requests: proto -> storage ----

pub fn range_request(request: &pb::RangeRequest) -> Result<RangeRequest, Status> {
    let sort_order = match PbSortOrder::try_from(request.sort_order) {
        Ok(PbSortOrder::None) => SortOrder::None,
        Ok(PbSortOrder::Ascend) => SortOrder::Ascend,
        Ok(PbSortOrder::Descend) => SortOrder::Descend,
        Err(_) => {
            return Err(status::unknown_enum(
                "RangeRequest.sort_order",
                request.sort_order,
            ))
        }
    };
    let sort_target = match PbSortTarget::try_from(request.sort_target) {
        Ok(PbSortTarget::Key) => SortTarget::Key,
        Ok(PbSortTarget::Version) => SortTarget::Version,
        Ok(PbSortTarget::Create) => SortTarget::Create,
        Ok(PbSortTarget::Mod) => SortTarget::Mod,
        Ok(PbSortTarget::Value) => SortTarget::Value,
        Err(_) => {
            return Err(status::unknown_enum(
                "RangeRequest.sort_target",
                request.sort_target,
            ))
        }
    };
    Ok(RangeRequest {
        range: KeyRange::new(request.key.clone(), request.range_end.clone()),
        limit: request.limit,
        revision: request.revision,
        sort_order,
        sort_target,
        keys_only: request.keys_only,
        count_only: request.count_only,
        min_mod_revision: request.min_mod_revision,
        max_mod_revision: request.max_mod_revision,
        min_create_revision: request.min_create_revision,
        max_create_revision: request.max_create_revision,
    })
}

pub fn put_request(request: &pb::PutRequest) -> PutRequest {
    PutRequest {
        key: request.key.clone(),
        value: request.value.clone(),
        lease: request.lease,
        prev_kv: request.prev_kv,
        ignore_value: request.ignore_value,
        ignore_lease: request.ignore_lease,
    }
}

pub fn delete_range_request(request: &pb::DeleteRangeRequest) -> DeleteRangeRequest {
    DeleteRangeRequest {
        range: KeyRange::new(request.key.clone(), request.range_end.clone()),
        prev_kv: request.prev_kv,
    }
}

pub fn txn_request(request: &pb::TxnRequest) -> Result<TxnRequest, Status> {
    Ok(TxnRequest {
        compare: request
            .compare
            .iter()
            .map(compare)
            .collect::<Result<_, _>>()?,
        success: request
            .success
            .iter()
            .map(request_op)
            .collect::<Result<_, _>>()?,
        failure: request
            .failure
            .iter()
            .map(request_op)
            .collect::<Result<_, _>>()?,
    })
}

/// The `target` field decides what is compared; the value comes from `target_union` when it
/// holds that kind, and is the zero value otherwise (etcd reads it the same way).
fn compare(compare: &pb::Compare) -> Result<Compare, Status> {
    use pb::compare::TargetUnion;
    let result = match PbCompareResult::try_from(compare.result) {
        Ok(PbCompareResult::Equal) => CompareResult::Equal,
        Ok(PbCompareResult::Greater) => CompareResult::Greater,
        Ok(PbCompareResult::Less) => CompareResult::Less,
        Ok(PbCompareResult::NotEqual) => CompareResult::NotEqual,
        Err(_) => return Err(status::unknown_enum("Compare.result", compare.result)),
    };
    let union = compare.target_union.as_ref();
    let target = match PbCompareTarget::try_from(compare.target) {
        Ok(PbCompareTarget::Version) => CompareTarget::Version(match union {
            Some(TargetUnion::Version(version)) => *version,
            _ => 0,
        }),
        Ok(PbCompareTarget::Create) => CompareTarget::CreateRevision(match union {
            Some(TargetUnion::CreateRevision(revision)) => *revision,
            _ => 0,
        }),
        Ok(PbCompareTarget::Mod) => CompareTarget::ModRevision(match union {
            Some(TargetUnion::ModRevision(revision)) => *revision,
            _ => 0,
        }),
        Ok(PbCompareTarget::Value) => CompareTarget::Value(match union {
            Some(TargetUnion::Value(value)) => value.clone(),
            _ => Bytes::new(),
        }),
        Ok(PbCompareTarget::Lease) => CompareTarget::Lease(match union {
            Some(TargetUnion::Lease(lease)) => *lease,
            _ => 0,
        }),
        Err(_) => return Err(status::unknown_enum("Compare.target", compare.target)),
    };
    Ok(Compare {
        range: KeyRange::new(compare.key.clone(), compare.range_end.clone()),
        target,
        result,
    })
}

fn request_op(op: &pb::RequestOp) -> Result<RequestOp, Status> {
    use pb::request_op::Request;
    match &op.request {
        Some(Request::RequestRange(range)) => Ok(RequestOp::Range(range_request(range)?)),
        Some(Request::RequestPut(put)) => Ok(RequestOp::Put(put_request(put))),
        Some(Request::RequestDeleteRange(delete)) => {
            Ok(RequestOp::DeleteRange(delete_range_request(delete)))
        }
        Some(Request::RequestTxn(txn)) => Ok(RequestOp::Txn(txn_request(txn)?)),
        None => Err(Status::invalid_argument(
            "RequestOp.request: an operation in a txn holds no request",
        )),
    }
}

/// etcd's watch key conventions: an empty key is `"\0"` (the smallest key), so an empty key
/// with `range_end = "\0"` watches every key. Unknown filter values are refused naming the
/// field (etcd ignores them; silently watching more than asked is worse).
pub fn watch_create(request: &pb::WatchCreateRequest) -> Result<WatchCreate, String> {
    use pb::watch_create_request::FilterType;
    let mut create = WatchCreate {
        range: KeyRange::new(
            if request.key.is_empty() {
                Bytes::from_static(b"\0")
            } else {
                request.key.clone()
            },
            request.range_end.clone(),
        ),
        start_revision: request.start_revision,
        prev_kv: request.prev_kv,
        progress_notify: request.progress_notify,
        fragment: request.fragment,
        watch_id: request.watch_id,
        ..WatchCreate::default()
    };
    for &filter in &request.filters {
        match FilterType::try_from(filter) {
            Ok(FilterType::Noput) => create.filter_no_put = true,
            Ok(FilterType::Nodelete) => create.filter_no_delete = true,
            Err(_) => {
                return Err(format!(
                    "WatchCreateRequest.filters: unknown enum value {filter}"
                ))
            }
        }
    }
    Ok(create)
}

// ---- answers: storage -> proto ----

pub fn key_value(kv: KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

pub fn range_response(response: RangeResponse, header: pb::ResponseHeader) -> pb::RangeResponse {
    pb::RangeResponse {
        header: Some(header),
        kvs: response.kvs.into_iter().map(key_value).collect(),
        more: response.more,
        count: response.count,
    }
}

pub fn put_response(response: PutResponse, header: pb::ResponseHeader) -> pb::PutResponse {
    pb::PutResponse {
        header: Some(header),
        prev_kv: response.prev_kv.map(key_value),
    }
}

pub fn delete_range_response(
    response: DeleteRangeResponse,
    header: pb::ResponseHeader,
) -> pb::DeleteRangeResponse {
    pb::DeleteRangeResponse {
        header: Some(header),
        deleted: response.deleted,
        prev_kvs: response.prev_kvs.into_iter().map(key_value).collect(),
    }
}

/// The top-level response carries `header`. Inside, as etcd 3.4 answers: a range, put or
/// delete response carries a header with only the revision it saw (a read before the
/// transaction's first write sees the revision before it, anything after sees the new one); a
/// nested transaction's header is present but empty.
pub fn txn_response(response: TxnResponse, header: pb::ResponseHeader) -> pb::TxnResponse {
    let mut top = nested_txn_response(response);
    top.header = Some(header);
    top
}

fn nested_txn_response(response: TxnResponse) -> pb::TxnResponse {
    use pb::response_op::Response;
    let at = |revision| pb::ResponseHeader {
        revision,
        ..Default::default()
    };
    let responses = response
        .responses
        .into_iter()
        .map(|op| {
            let response = match op {
                ResponseOp::Range(range) => {
                    let header = at(range.revision);
                    Response::ResponseRange(range_response(range, header))
                }
                ResponseOp::Put(put) => {
                    let header = at(put.revision);
                    Response::ResponsePut(put_response(put, header))
                }
                ResponseOp::DeleteRange(delete) => {
                    let header = at(delete.revision);
                    Response::ResponseDeleteRange(delete_range_response(delete, header))
                }
                ResponseOp::Txn(txn) => Response::ResponseTxn(nested_txn_response(txn)),
            };
            pb::ResponseOp {
                response: Some(response),
            }
        })
        .collect();
    pb::TxnResponse {
        header: Some(pb::ResponseHeader::default()),
        succeeded: response.succeeded,
        responses,
    }
}

pub fn event(event: Event) -> mvccpb::Event {
    let kind = match event.kind {
        EventKind::Put => mvccpb::event::EventType::Put,
        EventKind::Delete => mvccpb::event::EventType::Delete,
    };
    mvccpb::Event {
        r#type: kind as i32,
        kv: Some(key_value(event.kv)),
        prev_kv: event.prev_kv.map(key_value),
    }
}

pub fn watch_response(response: WatchResponse, header: pb::ResponseHeader) -> pb::WatchResponse {
    pb::WatchResponse {
        header: Some(header),
        watch_id: response.watch_id,
        created: response.created,
        canceled: response.canceled,
        compact_revision: response.compact_revision,
        cancel_reason: response.cancel_reason,
        fragment: response.fragment,
        events: response.events.into_iter().map(event).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_enum_values_are_refused_naming_the_field() {
        let request = pb::RangeRequest {
            key: "a".into(),
            sort_order: 9,
            ..Default::default()
        };
        let error = range_request(&request).unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        assert!(error.message().contains("RangeRequest.sort_order"));
        let txn = pb::TxnRequest {
            compare: vec![pb::Compare {
                key: "a".into(),
                target: 42,
                ..Default::default()
            }],
            ..Default::default()
        };
        let error = txn_request(&txn).unwrap_err();
        assert!(error.message().contains("Compare.target"), "{error}");
        let watch = pb::WatchCreateRequest {
            key: "a".into(),
            filters: vec![5],
            ..Default::default()
        };
        assert!(watch_create(&watch).unwrap_err().contains("filters"));
    }

    #[test]
    fn sub_responses_carry_etcds_headers() {
        // A read before the txn's write (revision 4), a put and a read after it (revision 5),
        // a nested txn: only the top level has a full header.
        let response = TxnResponse {
            succeeded: true,
            revision: 5,
            responses: vec![
                ResponseOp::Range(RangeResponse {
                    revision: 4,
                    ..Default::default()
                }),
                ResponseOp::Put(PutResponse {
                    revision: 5,
                    prev_kv: None,
                }),
                ResponseOp::Range(RangeResponse {
                    revision: 5,
                    ..Default::default()
                }),
                ResponseOp::Txn(TxnResponse {
                    succeeded: false,
                    revision: 5,
                    responses: vec![ResponseOp::DeleteRange(DeleteRangeResponse {
                        revision: 5,
                        ..Default::default()
                    })],
                }),
            ],
        };
        let top = pb::ResponseHeader {
            cluster_id: 7,
            member_id: 8,
            revision: 5,
            raft_term: 9,
        };
        let converted = txn_response(response, top);
        assert_eq!(converted.header, Some(top));
        let revision_only = |revision| {
            Some(pb::ResponseHeader {
                revision,
                ..Default::default()
            })
        };
        use pb::response_op::Response;
        let headers: Vec<_> = converted
            .responses
            .iter()
            .map(|op| match op.response.as_ref().unwrap() {
                Response::ResponseRange(r) => r.header,
                Response::ResponsePut(r) => r.header,
                Response::ResponseDeleteRange(r) => r.header,
                Response::ResponseTxn(r) => r.header,
            })
            .collect();
        assert_eq!(
            headers,
            [
                revision_only(4),
                revision_only(5),
                revision_only(5),
                Some(pb::ResponseHeader::default())
            ]
        );
        let Some(Response::ResponseTxn(nested)) = &converted.responses[3].response else {
            panic!("a nested txn response");
        };
        let Some(Response::ResponseDeleteRange(delete)) = &nested.responses[0].response else {
            panic!("a delete response");
        };
        assert_eq!(delete.header, revision_only(5));
    }

    #[test]
    fn compare_values_follow_the_target() {
        let txn = pb::TxnRequest {
            compare: vec![pb::Compare {
                key: "a".into(),
                target: PbCompareTarget::Value as i32,
                result: PbCompareResult::NotEqual as i32,
                target_union: Some(pb::compare::TargetUnion::Value("v".into())),
                ..Default::default()
            }],
            ..Default::default()
        };
        let converted = txn_request(&txn).unwrap();
        assert_eq!(
            converted.compare[0].target,
            CompareTarget::Value(Bytes::from("v"))
        );
        assert_eq!(converted.compare[0].result, CompareResult::NotEqual);
    }
}
