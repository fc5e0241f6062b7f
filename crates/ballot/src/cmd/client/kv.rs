//! `put`, `get`, `del`: their flags, the requests they make, and how keys and range ends are
//! derived from `--prefix` / `--from-key` exactly as etcdctl and Go's clientv3 derive them.
//!
//! The flag structs ([`PutOp`], [`GetOp`], [`DelOp`]) are shared with `txn`, whose then / else
//! lines are these same commands.

use super::connect::{CallError, ConnectArgs, Endpoints, Retry};
use super::output::{self, GetStyle, OutputFormat};
use super::ClientError;
use ballot_proto::etcdserverpb::kv_client::KvClient;
use ballot_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use ballot_proto::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest};
use ballot_server::etcd::fence::{Fence, FENCE_HEADER};
use ballot_server::etcd::sequential::{CREATED_KEY_METADATA, SEQUENTIAL_HEADER};
use clap::{Args, ValueEnum};
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::ffi::OsStringExt;

// ---------------------------------------------------------------------------------------------
// Keys and ranges.
// ---------------------------------------------------------------------------------------------

/// The end of the range that holds exactly the keys starting with `prefix` (clientv3's
/// `GetPrefixRangeEnd`): the prefix with its last byte below 0xff incremented and what follows
/// dropped. A prefix of only 0xff bytes has no such end; `\0` then means "to the last key".
pub fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(&last) = end.last() {
        if last < 0xff {
            *end.last_mut().expect("not empty") = last + 1;
            return end;
        }
        end.pop();
    }
    vec![0]
}

/// The (key, range_end) a command sends, from its key, optional range end and flags, as
/// etcdctl computes them:
///
/// - `--prefix KEY`: [KEY, prefix end); an empty KEY means every key: ["\0", "\0").
/// - `--from-key KEY`: [KEY, "\0"), every key >= KEY; an empty KEY becomes "\0".
/// - `KEY RANGE_END`: [KEY, RANGE_END).
/// - `KEY`: that one key (empty range end).
pub fn key_range(
    key: Vec<u8>,
    range_end: Option<Vec<u8>>,
    prefix: bool,
    from_key: bool,
) -> Result<(Vec<u8>, Vec<u8>), ClientError> {
    if prefix && from_key {
        return Err(ClientError::Usage(
            "`--prefix` and `--from-key` cannot be set at the same time, choose one".into(),
        ));
    }
    if range_end.is_some() && (prefix || from_key) {
        return Err(ClientError::Usage(
            "too many arguments, only accept one argument when `--prefix` or `--from-key` is set"
                .into(),
        ));
    }
    if prefix {
        if key.is_empty() {
            return Ok((vec![0], vec![0]));
        }
        let end = prefix_range_end(&key);
        return Ok((key, end));
    }
    if from_key {
        let key = if key.is_empty() { vec![0] } else { key };
        return Ok((key, vec![0]));
    }
    Ok((key, range_end.unwrap_or_default()))
}

/// Lease ids are written in hexadecimal, as `lease grant` prints them.
pub fn parse_lease_id(text: &str) -> Result<i64, String> {
    let digits = text.trim_start_matches("0x");
    i64::from_str_radix(digits, 16)
        .map_err(|e| format!("bad lease ID {text:?} ({e}), expecting the ID in hex"))
}

fn bytes(text: OsString) -> Vec<u8> {
    text.into_vec()
}

// ---------------------------------------------------------------------------------------------
// put
// ---------------------------------------------------------------------------------------------

/// The flags of `put`, also a `txn` line.
#[derive(Args, Debug, Clone)]
pub struct PutOp {
    /// The key.
    pub key: OsString,
    /// The value; read from standard input when omitted (not in `txn`).
    pub value: Option<OsString>,
    /// Attach the key to this lease (hex id, as `lease grant` prints it); 0 for none.
    #[arg(long, value_parser = parse_lease_id)]
    pub lease: Option<i64>,
    /// Print the key's previous value.
    #[arg(long)]
    pub prev_kv: bool,
}

impl PutOp {
    /// The request; `value` is the value given or read from stdin.
    pub fn request(&self, value: Vec<u8>) -> PutRequest {
        PutRequest {
            key: bytes(self.key.clone()).into(),
            value: value.into(),
            lease: self.lease.unwrap_or(0),
            prev_kv: self.prev_kv,
            ..Default::default()
        }
    }
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    ballot put greeting hello\n  \
    ballot put greeting hi --prev-kv        # prints OK, then greeting and hello\n  \
    ballot put session/42 alive --lease 32695410dcc0ca06\n  \
    cat config.json | ballot put config     # the value from standard input\n  \
    ballot put -- key -value-starting-with-dash")]
pub struct PutArgs {
    #[command(flatten)]
    pub op: PutOp,
    #[command(flatten)]
    pub fence: FenceArg,
    /// Create the next of KEY's numbered keys (KEY then a 10-digit number that only grows, as
    /// ZooKeeper's sequential nodes; ephemeral with --lease) and print its name. KEY itself
    /// keeps the last number.
    #[arg(long, conflicts_with_all = ["fence", "prev_kv"])]
    pub sequential: bool,
    #[command(flatten)]
    pub connection: ConnectArgs,
}

pub async fn put(args: PutArgs) -> Result<(), ClientError> {
    let format = args.connection.write_out;
    output::require(format, output::SIMPLE_JSON, "put")?;
    let endpoints = Endpoints::from_args(&args.connection)?;
    let value = match &args.op.value {
        Some(value) => bytes(value.clone()),
        None => {
            let mut value = Vec::new();
            std::io::stdin().read_to_end(&mut value).map_err(|e| {
                ClientError::Local(format!("cannot read the value from stdin: {e}"))
            })?;
            value
        }
    };
    let request = args.op.request(value);
    let sequential = args.sequential;
    let (_, (response, created)) = endpoints
        .call(Retry::Write, |channel| {
            let mut request = args.fence.on(endpoints.key_request(request.clone()));
            if sequential {
                request.metadata_mut().insert(
                    SEQUENTIAL_HEADER,
                    tonic::metadata::MetadataValue::from_static("1"),
                );
            }
            async move {
                let response = KvClient::new(channel).put(request).await?;
                let created = response
                    .metadata()
                    .get_bin(CREATED_KEY_METADATA)
                    .and_then(|key| key.to_bytes().ok());
                Ok::<_, CallError>((response.into_inner(), created))
            }
        })
        .await?;
    if sequential {
        let created = created.ok_or_else(|| {
            ClientError::Local(
                "the server created no sequential key: it is not a ballot server".into(),
            )
        })?;
        let mut line = created.to_vec();
        line.push(b'\n');
        return output::write_stdout(&line);
    }
    output::write_stdout(&output::put(format, &response))
}

/// `--fence` of `put` and `del`.
#[derive(Args, Debug, Clone)]
pub struct FenceArg {
    /// Write only while lock LOCK is held with TOKEN (the lock's fencing token, its key's
    /// create revision; `ballot lock` prints it), checked by the store in the same step as the
    /// write: otherwise fail and write nothing.
    #[arg(long, value_name = "LOCK:TOKEN", value_parser = parse_fence)]
    pub fence: Option<Fence>,
}

impl FenceArg {
    /// `request` carrying the fence, if one was given.
    pub fn on<T>(&self, mut request: tonic::Request<T>) -> tonic::Request<T> {
        if let Some(fence) = &self.fence {
            let value = tonic::metadata::MetadataValue::try_from(fence.to_string())
                .expect("parse_fence accepts ASCII only");
            request.metadata_mut().insert(FENCE_HEADER, value);
        }
        request
    }
}

fn parse_fence(text: &str) -> Result<Fence, String> {
    if !text.is_ascii() {
        return Err("the lock name must be ASCII (it travels as gRPC metadata)".into());
    }
    Fence::parse(text)
}

// ---------------------------------------------------------------------------------------------
// get
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SortBy {
    Key,
    Version,
    Create,
    Modify,
    Value,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Order {
    Ascend,
    Descend,
}

/// The flags of `get`, also a `txn` line.
#[derive(Args, Debug, Clone)]
pub struct GetOp {
    /// The key, or the start of the range ('' with --prefix or --from-key: every key).
    pub key: OsString,
    /// End of the range [KEY, RANGE_END), exclusive.
    #[arg(conflicts_with_all = ["prefix", "from_key"])]
    pub range_end: Option<OsString>,
    /// Every key that starts with KEY.
    #[arg(long, conflicts_with = "from_key")]
    pub prefix: bool,
    /// Every key greater than or equal to KEY (byte order).
    #[arg(long)]
    pub from_key: bool,
    /// At most this many keys (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub limit: i64,
    /// Read as of this revision (0: the latest).
    #[arg(long, default_value_t = 0)]
    pub rev: i64,
    /// Serve from the local replica without a quorum round (may be stale).
    #[arg(long)]
    pub serializable: bool,
    /// Keys only, no values.
    #[arg(long, conflicts_with = "count_only")]
    pub keys_only: bool,
    /// Only the number of keys.
    #[arg(long)]
    pub count_only: bool,
    /// Print only the values (simple output).
    #[arg(long)]
    pub print_value_only: bool,
    /// Sort by this field [default: key].
    #[arg(long, value_enum, ignore_case = true)]
    pub sort_by: Option<SortBy>,
    /// Sort order [default: ascend].
    #[arg(long, value_enum, ignore_case = true)]
    pub order: Option<Order>,
}

impl GetOp {
    pub fn request(&self) -> Result<RangeRequest, ClientError> {
        let (key, range_end) = key_range(
            bytes(self.key.clone()),
            self.range_end.clone().map(bytes),
            self.prefix,
            self.from_key,
        )?;
        if self.limit < 0 || self.rev < 0 {
            return Err(ClientError::Usage(
                "--limit and --rev cannot be negative".into(),
            ));
        }
        let sort_target = match self.sort_by.unwrap_or(SortBy::Key) {
            SortBy::Key => SortTarget::Key,
            SortBy::Version => SortTarget::Version,
            SortBy::Create => SortTarget::Create,
            SortBy::Modify => SortTarget::Mod,
            SortBy::Value => SortTarget::Value,
        };
        let mut sort_order = match self.order {
            None => SortOrder::None,
            Some(Order::Ascend) => SortOrder::Ascend,
            Some(Order::Descend) => SortOrder::Descend,
        };
        // clientv3's WithSort: keys already come in ascending order; asking for that sort
        // would make the server read the whole range before applying the limit.
        if sort_target == SortTarget::Key && sort_order == SortOrder::Ascend {
            sort_order = SortOrder::None;
        }
        Ok(RangeRequest {
            key: key.into(),
            range_end: range_end.into(),
            limit: self.limit,
            revision: self.rev,
            sort_order: sort_order as i32,
            sort_target: sort_target as i32,
            serializable: self.serializable,
            keys_only: self.keys_only,
            count_only: self.count_only,
            ..Default::default()
        })
    }

    pub fn style(&self) -> GetStyle {
        GetStyle {
            value_only: self.print_value_only,
            count_only: self.count_only,
        }
    }
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    ballot get foo                          # foo, then its value\n  \
    ballot get foo1 foo3                    # keys in [foo1, foo3)\n  \
    ballot get --prefix foo --keys-only\n  \
    ballot get --from-key ''                # every key\n  \
    ballot get --prefix '' --count-only\n  \
    ballot get --prefix job/ --sort-by modify --order descend --limit 10\n  \
    ballot get foo --rev 4 -w json\n  \
    ballot get foo --level stale            # ballot's read levels: stale, default (leader lease), consistent")]
pub struct GetArgs {
    #[command(flatten)]
    pub op: GetOp,
    /// ballot's read level: `stale` (the member's own store, like --serializable), `default`
    /// (the leader answers inside its lease, no round trip) or `consistent` (a ReadIndex round;
    /// what a plain get does). Other etcd servers ignore it.
    #[arg(long, value_parser = ["stale", "default", "consistent"], conflicts_with = "serializable")]
    pub level: Option<String>,
    #[command(flatten)]
    pub connection: ConnectArgs,
}

pub async fn get(args: GetArgs) -> Result<(), ClientError> {
    let format = args.connection.write_out;
    output::require(format, output::ALL, "get")?;
    if args.op.print_value_only && format != OutputFormat::Simple {
        return Err(ClientError::Usage(
            "--print-value-only is only for --write-out=simple".into(),
        ));
    }
    let endpoints = Endpoints::from_args(&args.connection)?;
    let request = args.op.request()?;
    let (_, response) =
        endpoints
            .call(Retry::Read, |channel| {
                let mut request = endpoints.key_request(request.clone());
                if let Some(level) = &args.level {
                    let level = ballot_server::etcd::kv::ReadLevel::parse(level)
                        .expect("clap checked the level");
                    level.mark(request.metadata_mut());
                }
                async move {
                    Ok::<_, CallError>(KvClient::new(channel).range(request).await?.into_inner())
                }
            })
            .await?;
    output::write_stdout(&output::get(format, &response, args.op.style()))
}

// ---------------------------------------------------------------------------------------------
// del
// ---------------------------------------------------------------------------------------------

/// The flags of `del`, also a `txn` line.
#[derive(Args, Debug, Clone)]
pub struct DelOp {
    /// The key, or the start of the range.
    pub key: OsString,
    /// End of the range [KEY, RANGE_END), exclusive.
    #[arg(conflicts_with_all = ["prefix", "from_key"])]
    pub range_end: Option<OsString>,
    /// Every key that starts with KEY.
    #[arg(long, conflicts_with = "from_key")]
    pub prefix: bool,
    /// Every key greater than or equal to KEY (byte order).
    #[arg(long)]
    pub from_key: bool,
    /// Print the deleted keys and values.
    #[arg(long)]
    pub prev_kv: bool,
}

impl DelOp {
    pub fn request(&self) -> Result<DeleteRangeRequest, ClientError> {
        let (key, range_end) = key_range(
            bytes(self.key.clone()),
            self.range_end.clone().map(bytes),
            self.prefix,
            self.from_key,
        )?;
        Ok(DeleteRangeRequest {
            key: key.into(),
            range_end: range_end.into(),
            prev_kv: self.prev_kv,
        })
    }
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    ballot del foo                          # 1\n  \
    ballot del --prev-kv key                # 1, then key and its value\n  \
    ballot del --prefix zoo\n  \
    ballot del --from-key a                 # every key >= a\n  \
    ballot del a c                          # keys in [a, c)")]
pub struct DelArgs {
    #[command(flatten)]
    pub op: DelOp,
    #[command(flatten)]
    pub fence: FenceArg,
    #[command(flatten)]
    pub connection: ConnectArgs,
}

pub async fn del(args: DelArgs) -> Result<(), ClientError> {
    let format = args.connection.write_out;
    output::require(format, output::SIMPLE_JSON, "del")?;
    let endpoints = Endpoints::from_args(&args.connection)?;
    let request = args.op.request()?;
    let (_, response) = endpoints
        .call(Retry::Write, |channel| {
            let request = args.fence.on(endpoints.key_request(request.clone()));
            async move {
                Ok::<_, CallError>(
                    KvClient::new(channel)
                        .delete_range(request)
                        .await?
                        .into_inner(),
                )
            }
        })
        .await?;
    output::write_stdout(&output::del(format, &response))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn prefix_end_increments_the_last_byte_below_ff() {
        assert_eq!(prefix_range_end(b"foo"), b"fop");
        assert_eq!(prefix_range_end(b"a\xff"), b"b");
        assert_eq!(prefix_range_end(b"a\xfe\xff\xff"), b"a\xff");
        assert_eq!(
            prefix_range_end(b"\xff\xff"),
            b"\0",
            "no end: to the last key"
        );
    }

    #[test]
    fn key_and_range_end_as_etcdctl_derives_them() {
        let range = |key: &[u8], end: Option<&[u8]>, prefix, from_key| {
            key_range(key.to_vec(), end.map(<[u8]>::to_vec), prefix, from_key).unwrap()
        };
        assert_eq!(range(b"foo", None, false, false), (b"foo".to_vec(), vec![]));
        assert_eq!(
            range(b"foo1", Some(b"foo3"), false, false),
            (b"foo1".to_vec(), b"foo3".to_vec())
        );
        assert_eq!(
            range(b"foo", None, true, false),
            (b"foo".to_vec(), b"fop".to_vec())
        );
        assert_eq!(
            range(b"", None, true, false),
            (vec![0], vec![0]),
            "--prefix '': all"
        );
        assert_eq!(range(b"a", None, false, true), (b"a".to_vec(), vec![0]));
        assert_eq!(
            range(b"", None, false, true),
            (vec![0], vec![0]),
            "--from-key ''"
        );
        let both = key_range(b"a".to_vec(), None, true, true).unwrap_err();
        assert_eq!(both.exit_code(), 2);
        let extra = key_range(b"a".to_vec(), Some(b"b".to_vec()), true, false).unwrap_err();
        assert!(extra.to_string().contains("too many arguments"), "{extra}");
    }

    #[test]
    fn lease_ids_are_hex() {
        assert_eq!(parse_lease_id("32695410dcc0ca06"), Ok(0x32695410dcc0ca06));
        assert_eq!(parse_lease_id("0x1f"), Ok(0x1f));
        assert!(parse_lease_id("xyz").unwrap_err().contains("hex"));
    }

    #[derive(Parser, Debug)]
    struct Get {
        #[command(flatten)]
        op: GetOp,
    }

    fn parse_get(args: &[&str]) -> Result<GetOp, clap::Error> {
        Get::try_parse_from(std::iter::once("get").chain(args.iter().copied())).map(|g| g.op)
    }

    #[test]
    fn get_flags_become_the_range_request_etcdctl_sends() {
        let request = parse_get(&["--prefix", "job/", "--limit", "10", "--sort-by", "MODIFY"])
            .unwrap()
            .request()
            .unwrap();
        assert_eq!(&request.key[..], b"job/");
        assert_eq!(&request.range_end[..], b"job0");
        assert_eq!(request.limit, 10);
        assert_eq!(request.sort_target, SortTarget::Mod as i32);
        assert_eq!(
            request.sort_order,
            SortOrder::None as i32,
            "server picks ascend"
        );

        let request = parse_get(&["a", "--sort-by", "key", "--order", "ascend"])
            .unwrap()
            .request()
            .unwrap();
        assert_eq!(
            request.sort_order,
            SortOrder::None as i32,
            "clientv3 WithSort"
        );

        let request = parse_get(&["a", "--order", "descend", "--rev", "4", "--serializable"])
            .unwrap()
            .request()
            .unwrap();
        assert_eq!(request.sort_order, SortOrder::Descend as i32);
        assert_eq!(request.revision, 4);
        assert!(request.serializable);

        let request = parse_get(&["--count-only", "--from-key", ""])
            .unwrap()
            .request()
            .unwrap();
        assert!(request.count_only);
        assert_eq!(
            (&request.key[..], &request.range_end[..]),
            (&[0u8][..], &[0u8][..])
        );
    }

    #[test]
    fn conflicting_get_flags_are_usage_errors() {
        for args in [
            &["a", "--prefix", "--from-key"][..],
            &["a", "b", "--prefix"],
            &["a", "--keys-only", "--count-only"],
            &["a", "--sort-by", "size"],
            &[],
        ] {
            let error = parse_get(args).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{args:?}: {error}");
        }
    }
}
