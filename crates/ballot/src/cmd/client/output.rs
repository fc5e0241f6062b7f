//! Output of the client commands, as bytes, in three formats:
//!
//! - `simple`: etcdctl's default output, line for line (a key line then a value line for `get`;
//!   `OK` for `put`; `lease 32695410dcc0ca06 granted with TTL(60s)`; comma-separated rows).
//! - `json`: one line of JSON per response whose field names are those etcdctl prints (Go's
//!   encoding of etcd's types: `cluster_id`, `kvs`, `create_revision`, `peerURLs`, `dbSize`,
//!   ...), fields at their zero value left out as Go's `omitempty` does, bytes in base64.
//! - `table`: boxed tables for the commands that list things (`get`, `member list`,
//!   `lease list`, `status`).
//!
//! Every function here is pure: response in, bytes out. Writing to stdout happens in one place,
//! [`write_stdout`].

use super::ClientError;
use ballot_proto::etcdserverpb::{
    response_op, DeleteRangeResponse, LeaseGrantResponse, LeaseKeepAliveResponse,
    LeaseLeasesResponse, LeaseRevokeResponse, LeaseTimeToLiveResponse, Member, PutResponse,
    RangeResponse, ResponseHeader, StatusResponse, TxnResponse, WatchResponse,
};
use ballot_proto::mvccpb::{event::EventType, Event, KeyValue};
use base64::Engine;
use clap::ValueEnum;
use serde::{Serialize, Serializer};
use std::io::Write;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// etcdctl's default lines
    Simple,
    /// one line of JSON per response, with etcd's field names
    Json,
    /// boxed tables (get, member list, lease list, status)
    Table,
}

impl OutputFormat {
    fn name(self) -> &'static str {
        match self {
            OutputFormat::Simple => "simple",
            OutputFormat::Json => "json",
            OutputFormat::Table => "table",
        }
    }
}

/// Refuses, before anything is sent, a format the command cannot print.
pub fn require(
    format: OutputFormat,
    supported: &[OutputFormat],
    command: &str,
) -> Result<(), ClientError> {
    if supported.contains(&format) {
        return Ok(());
    }
    let names: Vec<&str> = supported.iter().map(|f| f.name()).collect();
    Err(ClientError::Usage(format!(
        "--write-out={} is not supported by `{command}`; use {}",
        format.name(),
        names.join(" or ")
    )))
}

pub const SIMPLE_JSON: &[OutputFormat] = &[OutputFormat::Simple, OutputFormat::Json];
pub const ALL: &[OutputFormat] = &[
    OutputFormat::Simple,
    OutputFormat::Json,
    OutputFormat::Table,
];

/// Writes to stdout and flushes (watch and keep-alive print as events come). A closed pipe
/// (`| head`) is not an error.
pub fn write_stdout(bytes: &[u8]) -> Result<(), ClientError> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|_| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(error) => Err(ClientError::Local(format!(
            "cannot write to stdout: {error}"
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// JSON: etcd's field names as etcdctl prints them.
// ---------------------------------------------------------------------------------------------

fn is_zero<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// Bytes as Go's encoding/json writes `[]byte`: standard base64.
#[derive(Default, PartialEq)]
struct Base64(Vec<u8>);

impl Serialize for Base64 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

#[derive(Serialize)]
struct HeaderJson {
    #[serde(skip_serializing_if = "is_zero")]
    cluster_id: u64,
    #[serde(skip_serializing_if = "is_zero")]
    member_id: u64,
    #[serde(skip_serializing_if = "is_zero")]
    revision: i64,
    #[serde(skip_serializing_if = "is_zero")]
    raft_term: u64,
}

fn header_json(header: &Option<ResponseHeader>) -> Option<HeaderJson> {
    header.as_ref().map(|h| HeaderJson {
        cluster_id: h.cluster_id,
        member_id: h.member_id,
        revision: h.revision,
        raft_term: h.raft_term,
    })
}

#[derive(Serialize)]
struct KeyValueJson {
    #[serde(skip_serializing_if = "is_zero")]
    key: Base64,
    #[serde(skip_serializing_if = "is_zero")]
    create_revision: i64,
    #[serde(skip_serializing_if = "is_zero")]
    mod_revision: i64,
    #[serde(skip_serializing_if = "is_zero")]
    version: i64,
    #[serde(skip_serializing_if = "is_zero")]
    value: Base64,
    #[serde(skip_serializing_if = "is_zero")]
    lease: i64,
}

fn kv_json(kv: &KeyValue) -> KeyValueJson {
    KeyValueJson {
        key: Base64(kv.key.to_vec()),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: Base64(kv.value.to_vec()),
        lease: kv.lease,
    }
}

#[derive(Serialize)]
struct RangeJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    header: Option<HeaderJson>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    kvs: Vec<KeyValueJson>,
    #[serde(skip_serializing_if = "is_zero")]
    more: bool,
    #[serde(skip_serializing_if = "is_zero")]
    count: i64,
}

fn range_json(r: &RangeResponse) -> RangeJson {
    RangeJson {
        header: header_json(&r.header),
        kvs: r.kvs.iter().map(kv_json).collect(),
        more: r.more,
        count: r.count,
    }
}

#[derive(Serialize)]
struct PutJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    header: Option<HeaderJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prev_kv: Option<KeyValueJson>,
}

fn put_json(r: &PutResponse) -> PutJson {
    PutJson {
        header: header_json(&r.header),
        prev_kv: r.prev_kv.as_ref().map(kv_json),
    }
}

#[derive(Serialize)]
struct DeleteJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    header: Option<HeaderJson>,
    #[serde(skip_serializing_if = "is_zero")]
    deleted: i64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    prev_kvs: Vec<KeyValueJson>,
}

fn delete_json(r: &DeleteRangeResponse) -> DeleteJson {
    DeleteJson {
        header: header_json(&r.header),
        deleted: r.deleted,
        prev_kvs: r.prev_kvs.iter().map(kv_json).collect(),
    }
}

#[derive(Serialize)]
struct TxnJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    header: Option<HeaderJson>,
    #[serde(skip_serializing_if = "is_zero")]
    succeeded: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    responses: Vec<ResponseOpJson>,
}

/// Go's oneof encoding: `{"Response":{"response_put":{...}}}`.
#[derive(Serialize)]
struct ResponseOpJson {
    #[serde(rename = "Response", skip_serializing_if = "Option::is_none")]
    response: Option<ResponseUnionJson>,
}

#[derive(Serialize)]
enum ResponseUnionJson {
    #[serde(rename = "response_range")]
    Range(RangeJson),
    #[serde(rename = "response_put")]
    Put(PutJson),
    #[serde(rename = "response_delete_range")]
    DeleteRange(DeleteJson),
    #[serde(rename = "response_txn")]
    Txn(Box<TxnJson>),
}

fn txn_json(r: &TxnResponse) -> TxnJson {
    let responses = r
        .responses
        .iter()
        .map(|op| ResponseOpJson {
            response: op.response.as_ref().map(|response| match response {
                response_op::Response::ResponseRange(r) => ResponseUnionJson::Range(range_json(r)),
                response_op::Response::ResponsePut(r) => ResponseUnionJson::Put(put_json(r)),
                response_op::Response::ResponseDeleteRange(r) => {
                    ResponseUnionJson::DeleteRange(delete_json(r))
                }
                response_op::Response::ResponseTxn(r) => {
                    ResponseUnionJson::Txn(Box::new(txn_json(r)))
                }
            }),
        })
        .collect();
    TxnJson {
        header: header_json(&r.header),
        succeeded: r.succeeded,
        responses,
    }
}

/// clientv3's `WatchResponse` has no JSON tags, so Go prints its field names as they are.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct WatchJson {
    header: HeaderJson,
    events: Vec<EventJson>,
    compact_revision: i64,
    canceled: bool,
    created: bool,
}

#[derive(Serialize)]
struct EventJson {
    /// 0 = PUT (left out, as Go's omitempty does), 1 = DELETE.
    #[serde(rename = "type", skip_serializing_if = "is_zero")]
    kind: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    kv: Option<KeyValueJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prev_kv: Option<KeyValueJson>,
}

/// clientv3's lease responses embed the header, so its fields sit at the top level.
#[derive(Serialize)]
struct LeaseGrantJson {
    #[serde(flatten)]
    header: Option<HeaderJson>,
    #[serde(rename = "ID")]
    id: i64,
    #[serde(rename = "TTL")]
    ttl: i64,
    #[serde(rename = "Error")]
    error: String,
}

#[derive(Serialize)]
struct LeaseKeepAliveJson {
    #[serde(flatten)]
    header: Option<HeaderJson>,
    #[serde(rename = "ID")]
    id: i64,
    #[serde(rename = "TTL")]
    ttl: i64,
}

#[derive(Serialize)]
struct LeaseTimeToLiveJson {
    #[serde(flatten)]
    header: Option<HeaderJson>,
    id: i64,
    ttl: i64,
    #[serde(rename = "granted-ttl")]
    granted_ttl: i64,
    keys: Option<Vec<Base64>>,
}

#[derive(Serialize)]
struct LeaseLeasesJson {
    #[serde(flatten)]
    header: Option<HeaderJson>,
    leases: Vec<LeaseStatusJson>,
}

#[derive(Serialize)]
struct LeaseStatusJson {
    id: i64,
}

#[derive(Serialize)]
struct HeaderOnlyJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    header: Option<HeaderJson>,
}

#[derive(Serialize)]
struct MemberJson {
    #[serde(rename = "ID", skip_serializing_if = "is_zero")]
    id: u64,
    #[serde(skip_serializing_if = "is_zero")]
    name: String,
    #[serde(rename = "peerURLs", skip_serializing_if = "Vec::is_empty")]
    peer_urls: Vec<String>,
    #[serde(rename = "clientURLs", skip_serializing_if = "Vec::is_empty")]
    client_urls: Vec<String>,
    #[serde(rename = "isLearner", skip_serializing_if = "is_zero")]
    is_learner: bool,
}

fn member_json(m: &Member) -> MemberJson {
    MemberJson {
        id: m.id,
        name: m.name.clone(),
        peer_urls: m.peer_ur_ls.clone(),
        client_urls: m.client_ur_ls.clone(),
        is_learner: m.is_learner,
    }
}

#[derive(Serialize)]
struct MembersJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    header: Option<HeaderJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    member: Option<MemberJson>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    members: Vec<MemberJson>,
}

#[derive(Serialize)]
struct EndpointStatusJson {
    #[serde(rename = "Endpoint")]
    endpoint: String,
    #[serde(rename = "Status")]
    status: StatusJson,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    header: Option<HeaderJson>,
    #[serde(skip_serializing_if = "is_zero")]
    version: String,
    #[serde(skip_serializing_if = "is_zero")]
    db_size: i64,
    #[serde(skip_serializing_if = "is_zero")]
    leader: u64,
    #[serde(skip_serializing_if = "is_zero")]
    raft_index: u64,
    #[serde(skip_serializing_if = "is_zero")]
    raft_term: u64,
    #[serde(skip_serializing_if = "is_zero")]
    raft_applied_index: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<String>,
    #[serde(skip_serializing_if = "is_zero")]
    db_size_in_use: i64,
    #[serde(skip_serializing_if = "is_zero")]
    is_learner: bool,
    #[serde(skip_serializing_if = "is_zero")]
    storage_version: String,
    #[serde(skip_serializing_if = "is_zero")]
    db_size_quota: i64,
}

pub fn json_line<T: Serialize>(value: &T) -> Vec<u8> {
    let mut line =
        serde_json::to_vec(value).expect("response JSON has no maps with non-string keys");
    line.push(b'\n');
    line
}

// ---------------------------------------------------------------------------------------------
// Simple: etcdctl's lines.
// ---------------------------------------------------------------------------------------------

fn push_line(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(bytes);
    out.push(b'\n');
}

/// etcdctl's printKV: the key line (unless value-only), then the value line, bytes as stored.
fn push_kv(out: &mut Vec<u8>, kv: &KeyValue, value_only: bool) {
    if !value_only {
        push_line(out, &kv.key);
    }
    push_line(out, &kv.value);
}

fn put_simple(out: &mut Vec<u8>, r: &PutResponse) {
    push_line(out, b"OK");
    if let Some(prev) = &r.prev_kv {
        push_kv(out, prev, false);
    }
}

fn get_simple(out: &mut Vec<u8>, r: &RangeResponse, value_only: bool) {
    for kv in &r.kvs {
        push_kv(out, kv, value_only);
    }
}

fn del_simple(out: &mut Vec<u8>, r: &DeleteRangeResponse) {
    push_line(out, r.deleted.to_string().as_bytes());
    for kv in &r.prev_kvs {
        push_kv(out, kv, false);
    }
}

fn txn_simple(out: &mut Vec<u8>, r: &TxnResponse) {
    push_line(out, if r.succeeded { b"SUCCESS" } else { b"FAILURE" });
    for op in &r.responses {
        out.push(b'\n');
        match &op.response {
            Some(response_op::Response::ResponseRange(r)) => get_simple(out, r, false),
            Some(response_op::Response::ResponsePut(r)) => put_simple(out, r),
            Some(response_op::Response::ResponseDeleteRange(r)) => del_simple(out, r),
            Some(response_op::Response::ResponseTxn(r)) => txn_simple(out, r),
            None => push_line(out, b"unexpected empty response"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Per-command output.
// ---------------------------------------------------------------------------------------------

pub fn put(format: OutputFormat, r: &PutResponse) -> Vec<u8> {
    match format {
        OutputFormat::Json => json_line(&put_json(r)),
        OutputFormat::Simple | OutputFormat::Table => {
            let mut out = Vec::new();
            put_simple(&mut out, r);
            out
        }
    }
}

/// How `get` prints: `value_only` drops the key lines (simple only); `count_only` prints the
/// count alone (simple) or a one-cell table.
#[derive(Clone, Copy, Debug, Default)]
pub struct GetStyle {
    pub value_only: bool,
    pub count_only: bool,
}

pub fn get(format: OutputFormat, r: &RangeResponse, style: GetStyle) -> Vec<u8> {
    match format {
        OutputFormat::Json => json_line(&range_json(r)),
        OutputFormat::Simple if style.count_only => format!("{}\n", r.count).into_bytes(),
        OutputFormat::Simple => {
            let mut out = Vec::new();
            get_simple(&mut out, r, style.value_only);
            out
        }
        OutputFormat::Table if style.count_only => {
            table(&["count"], &[vec![r.count.to_string()]]).into_bytes()
        }
        OutputFormat::Table => {
            let rows: Vec<Vec<String>> = r
                .kvs
                .iter()
                .map(|kv| {
                    vec![
                        String::from_utf8_lossy(&kv.key).into_owned(),
                        String::from_utf8_lossy(&kv.value).into_owned(),
                        kv.create_revision.to_string(),
                        kv.mod_revision.to_string(),
                        kv.version.to_string(),
                        lease_text(kv.lease),
                    ]
                })
                .collect();
            table(
                &[
                    "key",
                    "value",
                    "create revision",
                    "mod revision",
                    "version",
                    "lease",
                ],
                &rows,
            )
            .into_bytes()
        }
    }
}

fn lease_text(lease: i64) -> String {
    if lease == 0 {
        String::new()
    } else {
        format!("{lease:016x}")
    }
}

pub fn del(format: OutputFormat, r: &DeleteRangeResponse) -> Vec<u8> {
    match format {
        OutputFormat::Json => json_line(&delete_json(r)),
        OutputFormat::Simple | OutputFormat::Table => {
            let mut out = Vec::new();
            del_simple(&mut out, r);
            out
        }
    }
}

pub fn txn(format: OutputFormat, r: &TxnResponse) -> Vec<u8> {
    match format {
        OutputFormat::Json => json_line(&txn_json(r)),
        OutputFormat::Simple | OutputFormat::Table => {
            let mut out = Vec::new();
            txn_simple(&mut out, r);
            out
        }
    }
}

/// One watch response: for each event its type, the previous key-value if asked for, then
/// the key-value (simple); or the whole response on one line (json).
pub fn watch(format: OutputFormat, r: &WatchResponse) -> Vec<u8> {
    match format {
        OutputFormat::Json => json_line(&WatchJson {
            header: header_json(&r.header).unwrap_or(HeaderJson {
                cluster_id: 0,
                member_id: 0,
                revision: 0,
                raft_term: 0,
            }),
            events: r.events.iter().map(event_json).collect(),
            compact_revision: r.compact_revision,
            canceled: r.canceled,
            created: r.created,
        }),
        OutputFormat::Simple | OutputFormat::Table => {
            let mut out = Vec::new();
            for event in &r.events {
                let kind =
                    EventType::try_from(event.r#type).map_or("UNKNOWN", |kind| kind.as_str_name());
                push_line(&mut out, kind.as_bytes());
                if let Some(prev) = &event.prev_kv {
                    push_kv(&mut out, prev, false);
                }
                if let Some(kv) = &event.kv {
                    push_kv(&mut out, kv, false);
                }
            }
            out
        }
    }
}

fn event_json(event: &Event) -> EventJson {
    EventJson {
        kind: event.r#type,
        kv: event.kv.as_ref().map(kv_json),
        prev_kv: event.prev_kv.as_ref().map(kv_json),
    }
}

pub fn lease_grant(format: OutputFormat, r: &LeaseGrantResponse) -> Vec<u8> {
    match format {
        OutputFormat::Json => json_line(&LeaseGrantJson {
            header: header_json(&r.header),
            id: r.id,
            ttl: r.ttl,
            error: r.error.clone(),
        }),
        _ => format!("lease {:016x} granted with TTL({}s)\n", r.id, r.ttl).into_bytes(),
    }
}

pub fn lease_revoke(format: OutputFormat, id: i64, r: &LeaseRevokeResponse) -> Vec<u8> {
    match format {
        OutputFormat::Json => json_line(&HeaderOnlyJson {
            header: header_json(&r.header),
        }),
        _ => format!("lease {id:016x} revoked\n").into_bytes(),
    }
}

pub fn lease_keep_alive(format: OutputFormat, r: &LeaseKeepAliveResponse) -> Vec<u8> {
    match format {
        OutputFormat::Json => json_line(&LeaseKeepAliveJson {
            header: header_json(&r.header),
            id: r.id,
            ttl: r.ttl,
        }),
        _ => format!("lease {:016x} keepalived with TTL({})\n", r.id, r.ttl).into_bytes(),
    }
}

pub fn lease_gone(id: i64) -> Vec<u8> {
    format!("lease {id:016x} expired or revoked.\n").into_bytes()
}

pub fn lease_time_to_live(
    format: OutputFormat,
    r: &LeaseTimeToLiveResponse,
    with_keys: bool,
) -> Vec<u8> {
    if format == OutputFormat::Json {
        let keys =
            (!r.keys.is_empty()).then(|| r.keys.iter().map(|k| Base64(k.to_vec())).collect());
        return json_line(&LeaseTimeToLiveJson {
            header: header_json(&r.header),
            id: r.id,
            ttl: r.ttl,
            granted_ttl: r.granted_ttl,
            keys,
        });
    }
    if r.granted_ttl == 0 && r.ttl == -1 {
        return format!("lease {:016x} already expired\n", r.id).into_bytes();
    }
    let mut text = format!(
        "lease {:016x} granted with TTL({}s), remaining({}s)",
        r.id, r.granted_ttl, r.ttl
    );
    if with_keys {
        let keys: Vec<String> = r
            .keys
            .iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        text.push_str(&format!(", attached keys([{}])", keys.join(" ")));
    }
    text.push('\n');
    text.into_bytes()
}

pub fn lease_list(format: OutputFormat, r: &LeaseLeasesResponse) -> Vec<u8> {
    match format {
        OutputFormat::Json => json_line(&LeaseLeasesJson {
            header: header_json(&r.header),
            leases: r
                .leases
                .iter()
                .map(|l| LeaseStatusJson { id: l.id })
                .collect(),
        }),
        OutputFormat::Table => {
            let rows: Vec<Vec<String>> = r
                .leases
                .iter()
                .map(|l| vec![format!("{:016x}", l.id)])
                .collect();
            table(&["id"], &rows).into_bytes()
        }
        OutputFormat::Simple => {
            let mut text = format!("found {} leases\n", r.leases.len());
            for lease in &r.leases {
                text.push_str(&format!("{:016x}\n", lease.id));
            }
            text.into_bytes()
        }
    }
}

/// etcdctl's member rows: ID (hex), status, name, peer URLs, client URLs, is learner.
pub fn member_rows(members: &[Member]) -> Vec<Vec<String>> {
    members
        .iter()
        .map(|m| {
            vec![
                format!("{:x}", m.id),
                if m.name.is_empty() {
                    "unstarted"
                } else {
                    "started"
                }
                .to_string(),
                m.name.clone(),
                m.peer_ur_ls.join(","),
                m.client_ur_ls.join(","),
                m.is_learner.to_string(),
            ]
        })
        .collect()
}

pub fn member_list(
    format: OutputFormat,
    header: &Option<ResponseHeader>,
    members: &[Member],
) -> Vec<u8> {
    match format {
        OutputFormat::Json => members_json(header, None, members),
        OutputFormat::Table => table(
            &[
                "id",
                "status",
                "name",
                "peer addrs",
                "client addrs",
                "is learner",
            ],
            &member_rows(members),
        )
        .into_bytes(),
        OutputFormat::Simple => simple_rows(&member_rows(members)),
    }
}

pub fn members_json(
    header: &Option<ResponseHeader>,
    member: Option<&Member>,
    members: &[Member],
) -> Vec<u8> {
    json_line(&MembersJson {
        header: header_json(header),
        member: member.map(member_json),
        members: members.iter().map(member_json).collect(),
    })
}

/// `member add`: etcdctl's lines, with the settings the new member starts with (`BALLOT_*`
/// variables `ballot server` reads).
pub fn member_added(
    cluster_id: u64,
    new_member: &Member,
    name: &str,
    members: &[Member],
) -> Vec<u8> {
    let mut initial_cluster = Vec::new();
    for member in members {
        let member_name = if member.id == new_member.id {
            name
        } else {
            member.name.as_str()
        };
        if member_name.is_empty() {
            continue; // added but never started: not part of the cluster the new member joins
        }
        for url in &member.peer_ur_ls {
            initial_cluster.push(format!("{member_name}={url}"));
        }
    }
    format!(
        "Member {:16x} added to cluster {:16x}\n\nBALLOT_NAME=\"{name}\"\nBALLOT_INITIAL_CLUSTER=\"{}\"\nBALLOT_INITIAL_ADVERTISE_PEER_URLS=\"{}\"\nBALLOT_INITIAL_CLUSTER_STATE=\"existing\"\n",
        new_member.id,
        cluster_id,
        initial_cluster.join(","),
        new_member.peer_ur_ls.join(",")
    )
    .into_bytes()
}

/// `member remove|update|promote` in simple format: `Member <id> <verb> cluster <cluster id>`.
pub fn member_changed(id: u64, verb_phrase: &str, cluster_id: u64) -> Vec<u8> {
    format!("Member {id:16x} {verb_phrase} cluster {cluster_id:16x}\n").into_bytes()
}

/// Go's humanize.Bytes (SI units), as etcdctl prints db sizes: `25 kB`, `1.2 MB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if bytes < 10 {
        return format!("{bytes} B");
    }
    let exponent = ((bytes as f64).ln() / 1000f64.ln()).floor() as usize;
    let exponent = exponent.min(UNITS.len() - 1);
    let value = (bytes as f64 / 1000f64.powi(exponent as i32) * 10.0 + 0.5).floor() / 10.0;
    if value < 10.0 {
        format!("{value:.1} {}", UNITS[exponent])
    } else {
        format!("{value:.0} {}", UNITS[exponent])
    }
}

pub fn status_row(endpoint: &str, s: &StatusResponse) -> Vec<String> {
    let member_id = s.header.as_ref().map_or(0, |h| h.member_id);
    vec![
        endpoint.to_string(),
        format!("{member_id:x}"),
        s.version.clone(),
        human_bytes(s.db_size.max(0) as u64),
        (s.leader != 0 && s.leader == member_id).to_string(),
        s.is_learner.to_string(),
        s.raft_term.to_string(),
        s.raft_index.to_string(),
        s.raft_applied_index.to_string(),
    ]
}

pub fn status(format: OutputFormat, statuses: &[(String, StatusResponse)]) -> Vec<u8> {
    let rows: Vec<Vec<String>> = statuses.iter().map(|(e, s)| status_row(e, s)).collect();
    match format {
        OutputFormat::Json => {
            let list: Vec<EndpointStatusJson> = statuses
                .iter()
                .map(|(endpoint, s)| EndpointStatusJson {
                    endpoint: endpoint.clone(),
                    status: StatusJson {
                        header: header_json(&s.header),
                        version: s.version.clone(),
                        db_size: s.db_size,
                        leader: s.leader,
                        raft_index: s.raft_index,
                        raft_term: s.raft_term,
                        raft_applied_index: s.raft_applied_index,
                        errors: s.errors.clone(),
                        db_size_in_use: s.db_size_in_use,
                        is_learner: s.is_learner,
                        storage_version: s.storage_version.clone(),
                        db_size_quota: s.db_size_quota,
                    },
                })
                .collect();
            json_line(&list)
        }
        OutputFormat::Table => table(
            &[
                "endpoint",
                "id",
                "version",
                "db size",
                "is leader",
                "is learner",
                "raft term",
                "raft index",
                "raft applied index",
            ],
            &rows,
        )
        .into_bytes(),
        OutputFormat::Simple => simple_rows(&rows),
    }
}

pub fn simple_rows(rows: &[Vec<String>]) -> Vec<u8> {
    let mut text = String::new();
    for row in rows {
        text.push_str(&row.join(", "));
        text.push('\n');
    }
    text.into_bytes()
}

/// A boxed table as etcdctl (3.4 and later) draws it: upper-case centred headers, cells
/// right-aligned.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let border: String = widths
        .iter()
        .map(|w| format!("+{}", "-".repeat(w + 2)))
        .collect::<String>()
        + "+\n";
    let mut text = border.clone();
    for (header, width) in headers.iter().zip(&widths) {
        let header = header.to_uppercase();
        let free = width - header.chars().count();
        let left = free / 2;
        text.push_str(&format!(
            "| {}{}{} ",
            " ".repeat(left),
            header,
            " ".repeat(free - left)
        ));
    }
    text.push_str("|\n");
    text.push_str(&border);
    for row in rows {
        for (cell, width) in row.iter().zip(&widths) {
            text.push_str(&format!("| {cell:>width$} "));
        }
        text.push_str("|\n");
    }
    if !rows.is_empty() {
        text.push_str(&border);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballot_proto::etcdserverpb::{LeaseStatus, ResponseOp};

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.as_bytes().to_vec().into(),
            value: value.as_bytes().to_vec().into(),
            create_revision: 2,
            mod_revision: 3,
            version: 1,
            lease: 0,
        }
    }

    fn header() -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: 14841639068965178418,
            member_id: 10276657743932975437,
            revision: 3,
            raft_term: 2,
        })
    }

    fn text(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn get_prints_key_line_then_value_line() {
        let r = RangeResponse {
            header: header(),
            kvs: vec![kv("foo", "bar"), kv("foo1", "bar1")],
            count: 2,
            more: false,
        };
        let style = GetStyle::default();
        assert_eq!(
            text(get(OutputFormat::Simple, &r, style)),
            "foo\nbar\nfoo1\nbar1\n"
        );
        let value_only = GetStyle {
            value_only: true,
            ..style
        };
        assert_eq!(
            text(get(OutputFormat::Simple, &r, value_only)),
            "bar\nbar1\n"
        );
        let count_only = GetStyle {
            count_only: true,
            ..style
        };
        assert_eq!(text(get(OutputFormat::Simple, &r, count_only)), "2\n");
    }

    #[test]
    fn get_json_uses_etcd_field_names_base64_and_omitempty() {
        let r = RangeResponse {
            header: header(),
            kvs: vec![kv("foo", "bar")],
            count: 1,
            more: false,
        };
        assert_eq!(
            text(get(OutputFormat::Json, &r, GetStyle::default())),
            "{\"header\":{\"cluster_id\":14841639068965178418,\"member_id\":10276657743932975437,\
             \"revision\":3,\"raft_term\":2},\"kvs\":[{\"key\":\"Zm9v\",\"create_revision\":2,\
             \"mod_revision\":3,\"version\":1,\"value\":\"YmFy\"}],\"count\":1}\n"
        );
    }

    #[test]
    fn put_and_del_print_as_etcdctl() {
        let put_response = PutResponse {
            header: header(),
            prev_kv: Some(kv("foo", "old")),
        };
        assert_eq!(
            text(put(OutputFormat::Simple, &put_response)),
            "OK\nfoo\nold\n"
        );
        let deleted = DeleteRangeResponse {
            header: header(),
            deleted: 1,
            prev_kvs: vec![kv("key", "val")],
        };
        assert_eq!(text(del(OutputFormat::Simple, &deleted)), "1\nkey\nval\n");
        assert!(text(del(OutputFormat::Json, &deleted)).contains("\"deleted\":1,\"prev_kvs\":["));
    }

    #[test]
    fn txn_prints_the_branch_then_each_response_after_a_blank_line() {
        let r = TxnResponse {
            header: header(),
            succeeded: false,
            responses: vec![
                ResponseOp {
                    response: Some(response_op::Response::ResponsePut(PutResponse::default())),
                },
                ResponseOp {
                    response: Some(response_op::Response::ResponseRange(RangeResponse {
                        kvs: vec![kv("k", "v")],
                        ..Default::default()
                    })),
                },
            ],
        };
        assert_eq!(
            text(txn(OutputFormat::Simple, &r)),
            "FAILURE\n\nOK\n\nk\nv\n"
        );
        let json = text(txn(OutputFormat::Json, &r));
        assert!(
            json.contains("\"responses\":[{\"Response\":{\"response_put\":{}}},{\"Response\":{\"response_range\":{\"kvs\":"),
            "{json}"
        );
        assert!(!json.contains("succeeded"), "false is omitted: {json}");
    }

    #[test]
    fn watch_prints_event_type_prev_kv_and_kv() {
        let r = WatchResponse {
            header: header(),
            events: vec![
                Event {
                    r#type: EventType::Put as i32,
                    kv: Some(kv("foo", "new")),
                    prev_kv: Some(kv("foo", "old")),
                },
                Event {
                    r#type: EventType::Delete as i32,
                    kv: Some(KeyValue {
                        key: "foo".into(),
                        ..Default::default()
                    }),
                    prev_kv: None,
                },
            ],
            ..Default::default()
        };
        assert_eq!(
            text(watch(OutputFormat::Simple, &r)),
            "PUT\nfoo\nold\nfoo\nnew\nDELETE\nfoo\n\n"
        );
        let json = text(watch(OutputFormat::Json, &r));
        assert!(json.starts_with("{\"Header\":{\"cluster_id\""), "{json}");
        assert!(
            json.contains("{\"type\":1,\"kv\":{\"key\":\"Zm9v\"}}"),
            "{json}"
        );
        assert!(json.ends_with("\"CompactRevision\":0,\"Canceled\":false,\"Created\":false}\n"));
    }

    #[test]
    fn lease_lines_use_sixteen_hex_digits() {
        let grant = LeaseGrantResponse {
            header: header(),
            id: 0x32695410dcc0ca06,
            ttl: 60,
            error: String::new(),
        };
        assert_eq!(
            text(lease_grant(OutputFormat::Simple, &grant)),
            "lease 32695410dcc0ca06 granted with TTL(60s)\n"
        );
        let json = text(lease_grant(OutputFormat::Json, &grant));
        assert!(
            json.starts_with("{\"cluster_id\":14841639068965178418,"),
            "{json}"
        );
        assert!(
            json.contains("\"ID\":3632527005850847750,\"TTL\":60"),
            "{json}"
        );
        let small = LeaseKeepAliveResponse {
            header: None,
            id: 0xab,
            ttl: 10,
        };
        assert_eq!(
            text(lease_keep_alive(OutputFormat::Simple, &small)),
            "lease 00000000000000ab keepalived with TTL(10)\n"
        );
        let ttl = LeaseTimeToLiveResponse {
            header: header(),
            id: 0x2d8257079fa1bc0c,
            ttl: 472,
            granted_ttl: 500,
            keys: vec!["foo2".into(), "foo1".into()],
        };
        assert_eq!(
            text(lease_time_to_live(OutputFormat::Simple, &ttl, true)),
            "lease 2d8257079fa1bc0c granted with TTL(500s), remaining(472s), attached keys([foo2 foo1])\n"
        );
        assert!(text(lease_time_to_live(OutputFormat::Json, &ttl, true))
            .contains("\"ttl\":472,\"granted-ttl\":500,\"keys\":[\"Zm9vMg==\",\"Zm9vMQ==\"]"));
        let expired = LeaseTimeToLiveResponse {
            id: 0x2d8257079fa1bc0c,
            ttl: -1,
            ..Default::default()
        };
        assert_eq!(
            text(lease_time_to_live(OutputFormat::Simple, &expired, false)),
            "lease 2d8257079fa1bc0c already expired\n"
        );
        let list = LeaseLeasesResponse {
            header: None,
            leases: vec![LeaseStatus {
                id: 0x32695410dcc0ca06,
            }],
        };
        assert_eq!(
            text(lease_list(OutputFormat::Simple, &list)),
            "found 1 leases\n32695410dcc0ca06\n"
        );
    }

    fn members() -> Vec<Member> {
        vec![
            Member {
                id: 0x8211f1d0f64f3269,
                name: "infra1".into(),
                peer_ur_ls: vec!["http://127.0.0.1:12380".into()],
                client_ur_ls: vec!["http://127.0.0.1:2379".into()],
                is_learner: false,
            },
            Member {
                id: 0x91bc3c398fb3c146,
                name: String::new(),
                peer_ur_ls: vec!["http://127.0.0.1:22380".into()],
                client_ur_ls: vec![],
                is_learner: true,
            },
        ]
    }

    #[test]
    fn member_list_in_three_formats() {
        let members = members();
        assert_eq!(
            text(member_list(OutputFormat::Simple, &None, &members)),
            "8211f1d0f64f3269, started, infra1, http://127.0.0.1:12380, http://127.0.0.1:2379, false\n\
             91bc3c398fb3c146, unstarted, , http://127.0.0.1:22380, , true\n"
        );
        let json = text(member_list(OutputFormat::Json, &header(), &members));
        assert!(json.contains(
            "\"members\":[{\"ID\":9372538179322589801,\"name\":\"infra1\",\"peerURLs\":[\"http://127.0.0.1:12380\"],\"clientURLs\":[\"http://127.0.0.1:2379\"]}"
        ), "{json}");
        assert!(json.contains("\"isLearner\":true"), "{json}");
        let table_text = text(member_list(OutputFormat::Table, &None, &members));
        let lines: Vec<&str> = table_text.lines().collect();
        assert_eq!(lines.len(), 6, "{table_text}");
        assert!(
            lines[1].starts_with("|        ID        |  STATUS   |"),
            "{table_text}"
        );
        assert!(
            lines[3].starts_with("| 8211f1d0f64f3269 |   started | infra1 |"),
            "{table_text}"
        );
    }

    #[test]
    fn member_add_prints_the_settings_for_the_new_member() {
        let mut members = members();
        let new_member = members[1].clone();
        members.push(Member {
            id: 7,
            name: String::new(),
            peer_ur_ls: vec!["http://other".into()],
            ..Default::default()
        });
        let out = text(member_added(
            0xef37ad9dc622a7c4,
            &new_member,
            "n4",
            &members,
        ));
        assert_eq!(
            out,
            "Member 91bc3c398fb3c146 added to cluster ef37ad9dc622a7c4\n\n\
             BALLOT_NAME=\"n4\"\n\
             BALLOT_INITIAL_CLUSTER=\"infra1=http://127.0.0.1:12380,n4=http://127.0.0.1:22380\"\n\
             BALLOT_INITIAL_ADVERTISE_PEER_URLS=\"http://127.0.0.1:22380\"\n\
             BALLOT_INITIAL_CLUSTER_STATE=\"existing\"\n"
        );
        assert_eq!(
            text(member_changed(0xab, "removed from", 0xcd)),
            "Member               ab removed from cluster               cd\n",
            "etcdctl's %16x pads with spaces"
        );
    }

    #[test]
    fn db_sizes_read_as_go_humanize_writes_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(9), "9 B");
        assert_eq!(human_bytes(24576), "25 kB");
        assert_eq!(human_bytes(1234), "1.2 kB");
        assert_eq!(human_bytes(20_000_000), "20 MB");
    }

    #[test]
    fn status_row_marks_the_leader() {
        let s = StatusResponse {
            header: Some(ResponseHeader {
                member_id: 0xfd422379fda50e48,
                ..Default::default()
            }),
            version: "3.5.0".into(),
            db_size: 24576,
            leader: 0xfd422379fda50e48,
            raft_index: 8,
            raft_term: 2,
            raft_applied_index: 8,
            ..Default::default()
        };
        let statuses = vec![("http://127.0.0.1:32379".to_string(), s)];
        assert_eq!(
            text(status(OutputFormat::Simple, &statuses)),
            "http://127.0.0.1:32379, fd422379fda50e48, 3.5.0, 25 kB, true, false, 2, 8, 8\n"
        );
        let json = text(status(OutputFormat::Json, &statuses));
        assert!(
            json.starts_with(
                "[{\"Endpoint\":\"http://127.0.0.1:32379\",\"Status\":{\"header\":{\"member_id\":"
            ),
            "{json}"
        );
        assert!(json.contains("\"dbSize\":24576,\"leader\":18249187646912138824,\"raftIndex\":8,\"raftTerm\":2,\"raftAppliedIndex\":8"), "{json}");
        let table_text = text(status(OutputFormat::Table, &statuses));
        assert!(
            table_text.contains("| IS LEADER | IS LEARNER |"),
            "{table_text}"
        );
        assert!(
            table_text.contains("|      true |      false |"),
            "{table_text}"
        );
    }

    #[test]
    fn table_is_refused_before_sending_where_it_makes_no_sense() {
        let error = require(OutputFormat::Table, SIMPLE_JSON, "put").unwrap_err();
        assert_eq!(error.exit_code(), 2);
        assert_eq!(
            error.to_string(),
            "--write-out=table is not supported by `put`; use simple or json"
        );
        assert!(require(OutputFormat::Table, ALL, "get").is_ok());
    }
}
