//! What the server writes into log entries and snapshots: key-value commands for the MVCC store
//! and member commands for the registry share one log, so each entry carries a tag, and a
//! snapshot carries both states.
//!
//! ```text
//! entry     1 | mvcc Command (its own codec)   or   2 | MemberCommand
//!           or   3 | origin node id u64 LE | request id u64 LE | mvcc Command
//! snapshot  magic "BALLOTSD" | registry_len u32 | registry | mvcc snapshot
//! ```
//!
//! A record in `snap/` with no data at all is a compaction marker, not an image: the store
//! and the registry were durable through its index on their own.

use super::members::MemberCommand;
use ballot_core::codec::{DecodeError, Decoder};
use ballot_core::NodeId;
use ballot_storage::mvcc::types::Command;
use ballot_storage::mvcc::CommandCodec;
use bytes::{BufMut, Bytes};

const SNAPSHOT_MAGIC: &[u8; 8] = b"BALLOTSD";

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
            Some((tag, _)) => Err(format!("unknown log command tag {tag}")),
            None => Err("empty log command".into()),
        }
    }
}

pub fn encode_snapshot(registry: &[u8], mvcc: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(12 + registry.len() + mvcc.len());
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.put_u32_le(registry.len() as u32);
    out.extend_from_slice(registry);
    out.extend_from_slice(mvcc);
    Bytes::from(out)
}

/// Splits a snapshot into (registry, mvcc) parts.
pub fn decode_snapshot(data: &[u8]) -> Result<(&[u8], &[u8]), DecodeError> {
    if data.len() < 12 || &data[..8] != SNAPSHOT_MAGIC {
        return Err(Decoder::new(data).error("snapshot", "not a ballot node snapshot"));
    }
    let registry_len = u32::from_le_bytes(data[8..12].try_into().expect("4 bytes")) as usize;
    if data.len() < 12 + registry_len {
        return Err(Decoder::new(data).error("snapshot", "registry longer than the snapshot"));
    }
    Ok((&data[12..12 + registry_len], &data[12 + registry_len..]))
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
        let snapshot = encode_snapshot(b"reg", b"mvcc-bytes");
        assert_eq!(
            decode_snapshot(&snapshot).unwrap(),
            (&b"reg"[..], &b"mvcc-bytes"[..])
        );
        assert!(decode_snapshot(b"short").is_err());
    }
}
