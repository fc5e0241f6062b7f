//! What the server writes into log entries and snapshots: key-value commands for the MVCC store,
//! member commands for the registry and group commands for the catalog share one log, so each
//! entry carries a tag, and a snapshot carries every state.
//!
//! ```text
//! entry     1 | mvcc Command (its own codec)   or   2 | MemberCommand
//!           or   3 | origin node id u64 LE | request id u64 LE | mvcc Command
//!           or   4 | GroupCommand (group 0's log only)
//! snapshot  magic "BALLOTSD" | registry_len u32 | registry | mvcc snapshot
//!           or, once the catalog holds anything:
//!           magic "BALLOTSG" | registry_len u32 | registry | catalog_len u32 | catalog | mvcc snapshot
//! ```
//!
//! A release from before the catalog skips a tag-4 entry (with an error line) and refuses a
//! `BALLOTSG` snapshot, which is why a snapshot without groups keeps the older form.
//!
//! A record in `snap/` with no data at all is a compaction marker, not an image: the store
//! and the registry were durable through its index on their own.

use super::catalog::GroupCommand;
use super::members::MemberCommand;
use ballot_core::codec::{DecodeError, Decoder};
use ballot_core::NodeId;
use ballot_storage::mvcc::types::Command;
use ballot_storage::mvcc::CommandCodec;
use bytes::{BufMut, Bytes};

const SNAPSHOT_MAGIC: &[u8; 8] = b"BALLOTSD";
const SNAPSHOT_WITH_CATALOG_MAGIC: &[u8; 8] = b"BALLOTSG";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogCommand {
    Kv(Command),
    Member(MemberCommand),
    /// A client command a follower (`origin`) forwarded to the leader through Raft; `origin`
    /// answers its client when it applies the entry and finds its own `request` id.
    Forwarded {
        origin: NodeId,
        request: u64,
        command: Command,
    },
    /// A change to the group catalog.
    Group(GroupCommand),
}

impl LogCommand {
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::new();
        match self {
            LogCommand::Kv(command) => {
                out.put_u8(1);
                out.extend_from_slice(&command.encode());
            }
            LogCommand::Member(command) => {
                out.put_u8(2);
                command.encode(&mut out);
            }
            LogCommand::Forwarded {
                origin,
                request,
                command,
            } => {
                out.put_u8(3);
                out.put_u64_le(*origin);
                out.put_u64_le(*request);
                out.extend_from_slice(&command.encode());
            }
            LogCommand::Group(command) => {
                out.put_u8(4);
                command.encode(&mut out);
            }
        }
        Bytes::from(out)
    }

    pub fn decode(bytes: &[u8]) -> Result<LogCommand, String> {
        match bytes.split_first() {
            Some((1, rest)) => Command::decode(rest)
                .map(LogCommand::Kv)
                .map_err(|e| e.to_string()),
            Some((2, rest)) => {
                let mut input = Decoder::new(rest);
                let command = MemberCommand::decode(&mut input).map_err(|e| e.to_string())?;
                input.finish("member command").map_err(|e| e.to_string())?;
                Ok(LogCommand::Member(command))
            }
            Some((3, rest)) if rest.len() >= 16 => {
                let origin = u64::from_le_bytes(rest[0..8].try_into().expect("8 bytes"));
                let request = u64::from_le_bytes(rest[8..16].try_into().expect("8 bytes"));
                let command = Command::decode(&rest[16..]).map_err(|e| e.to_string())?;
                Ok(LogCommand::Forwarded {
                    origin,
                    request,
                    command,
                })
            }
            Some((3, _)) => Err("forwarded log command shorter than its header".into()),
            Some((4, rest)) => {
                let mut input = Decoder::new(rest);
                let command = GroupCommand::decode(&mut input).map_err(|e| e.to_string())?;
                input.finish("group command").map_err(|e| e.to_string())?;
                Ok(LogCommand::Group(command))
            }
            Some((tag, _)) => Err(format!("unknown log command tag {tag}")),
            None => Err("empty log command".into()),
        }
    }
}

/// A node snapshot's parts, each in its own codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotParts<'a> {
    pub registry: &'a [u8],
    /// Empty in a snapshot of a cluster that never created a group (and in older ones).
    pub catalog: &'a [u8],
    pub mvcc: &'a [u8],
}

pub fn encode_snapshot(parts: SnapshotParts<'_>) -> Bytes {
    let SnapshotParts {
        registry,
        catalog,
        mvcc,
    } = parts;
    let mut out = Vec::with_capacity(16 + registry.len() + catalog.len() + mvcc.len());
    if catalog.is_empty() {
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.put_u32_le(registry.len() as u32);
        out.extend_from_slice(registry);
    } else {
        out.extend_from_slice(SNAPSHOT_WITH_CATALOG_MAGIC);
        out.put_u32_le(registry.len() as u32);
        out.extend_from_slice(registry);
        out.put_u32_le(catalog.len() as u32);
        out.extend_from_slice(catalog);
    }
    out.extend_from_slice(mvcc);
    Bytes::from(out)
}

/// Splits a snapshot into its parts.
pub fn decode_snapshot(data: &[u8]) -> Result<SnapshotParts<'_>, DecodeError> {
    let with_catalog = match data.get(..8) {
        Some(magic) if magic == SNAPSHOT_MAGIC => false,
        Some(magic) if magic == SNAPSHOT_WITH_CATALOG_MAGIC => true,
        _ => return Err(Decoder::new(data).error("snapshot", "not a ballot node snapshot")),
    };
    let mut rest = &data[8..];
    let mut part = |what: &'static str| -> Result<&[u8], DecodeError> {
        let Some((length, tail)) = rest.split_first_chunk::<4>() else {
            return Err(Decoder::new(data).error("snapshot", format!("{what} length missing")));
        };
        let length = u32::from_le_bytes(*length) as usize;
        if tail.len() < length {
            return Err(
                Decoder::new(data).error("snapshot", format!("{what} longer than the snapshot"))
            );
        }
        let (part, tail) = tail.split_at(length);
        rest = tail;
        Ok(part)
    };
    let registry = part("registry")?;
    let catalog = if with_catalog { part("catalog")? } else { &[] };
    Ok(SnapshotParts {
        registry,
        catalog,
        mvcc: rest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballot_storage::mvcc::types::PutRequest;

    #[test]
    fn entries_and_snapshots_round_trip() {
        let put = LogCommand::Kv(Command::Put(PutRequest {
            key: Bytes::from("k"),
            ..Default::default()
        }));
        assert_eq!(LogCommand::decode(&put.encode()).unwrap(), put);
        let forwarded = LogCommand::Forwarded {
            origin: 3,
            request: u64::MAX - 1,
            command: Command::Compact { revision: 5 },
        };
        assert_eq!(LogCommand::decode(&forwarded.encode()).unwrap(), forwarded);
        assert!(LogCommand::decode(&[3, 1, 2]).is_err());
        let forget = LogCommand::Member(MemberCommand::Forget(7));
        assert_eq!(LogCommand::decode(&forget.encode()).unwrap(), forget);
        assert!(LogCommand::decode(&[9])
            .unwrap_err()
            .contains("unknown log command tag 9"));
        let group = LogCommand::Group(GroupCommand::Remove(4));
        assert_eq!(LogCommand::decode(&group.encode()).unwrap(), group);
        let without = SnapshotParts {
            registry: b"reg",
            catalog: b"",
            mvcc: b"mvcc-bytes",
        };
        let encoded = encode_snapshot(without);
        assert!(
            encoded.starts_with(SNAPSHOT_MAGIC),
            "no catalog: the older form, which a release before catalogs installs"
        );
        assert_eq!(decode_snapshot(&encoded).unwrap(), without);
        let with = SnapshotParts {
            catalog: b"cat",
            ..without
        };
        let encoded = encode_snapshot(with);
        assert_eq!(decode_snapshot(&encoded).unwrap(), with);
        assert!(
            decode_snapshot(&encoded[..14]).is_err(),
            "cut in the catalog"
        );
        assert!(decode_snapshot(b"short").is_err());
    }
}
