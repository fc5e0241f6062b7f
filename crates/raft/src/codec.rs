//! Wire encoding of Raft messages for the peer transport. Pure functions over bytes (no I/O),
//! built on the shared layouts of `ballot_core::codec`:
//!
//! ```text
//! Message  version u8 (= 1) | from u64 | to u64 | term u64 | kind u8 | body
//!   1 PreVote                 last_index u64 | last_term u64
//!   2 PreVoteResponse         granted u8
//!   3 RequestVote             last_index u64 | last_term u64 | leadership_transfer u8
//!   4 RequestVoteResponse     granted u8
//!   5 AppendEntries           prev_index u64 | prev_term u64 | leader_commit u64 | count u32 | Entry * count
//!   6 AppendEntriesResponse   0 | match_index u64
//!                             1 | prev_index u64 | has_conflict_term u8 | conflict_term u64 | first_index u64
//!   7 Heartbeat               leader_commit u64 | read_round u64
//!   8 HeartbeatResponse       read_round u64
//!   9 InstallSnapshot         SnapshotMeta | offset u64 | data (len u32 | bytes) | done u8
//!  10 InstallSnapshotResponse last_included u64 | received_bytes u64 | done u8
//!  11 TimeoutNow
//!  12 ForwardProposals        count u32 | (len u32 | bytes) * count
//!  13 ReadIndex               request u64 | lease u8
//!  14 ReadIndexResponse       request u64 | 0   or   request u64 | 1 | index u64
//!  15 Sleep                   leader_commit u64      (hibernating groups only: never group 0,
//!                                                     so no release before it meets one)
//! ```

use crate::message::{AppendResult, Message, MessageBody};
use ballot_core::codec::{
    decode_entry, decode_snapshot_meta, encode_entry, encode_snapshot_meta, put_bytes, DecodeError,
    Decoder,
};
use ballot_core::LogPosition;
use bytes::BufMut;

pub const WIRE_VERSION: u8 = 1;
/// Most entries accepted in one decoded AppendEntries (the sender's limit is far lower).
pub const ENTRIES_PER_MESSAGE_DECODE_MAX: usize = 1 << 16;

pub fn encode(message: &Message, out: &mut impl BufMut) {
    out.put_u8(WIRE_VERSION);
    out.put_u64_le(message.from);
    out.put_u64_le(message.to);
    out.put_u64_le(message.term);
    let position = |out: &mut dyn BufMut, at: &LogPosition| {
        out.put_u64_le(at.index);
        out.put_u64_le(at.term);
    };
    match &message.body {
        MessageBody::PreVote { last_log } => {
            out.put_u8(1);
            position(out, last_log);
        }
        MessageBody::PreVoteResponse { granted } => {
            out.put_u8(2);
            out.put_u8(*granted as u8);
        }
        MessageBody::RequestVote {
            last_log,
            leadership_transfer,
        } => {
            out.put_u8(3);
            position(out, last_log);
            out.put_u8(*leadership_transfer as u8);
        }
        MessageBody::RequestVoteResponse { granted } => {
            out.put_u8(4);
            out.put_u8(*granted as u8);
        }
        MessageBody::AppendEntries {
            prev_log,
            entries,
            leader_commit,
        } => {
            out.put_u8(5);
            position(out, prev_log);
            out.put_u64_le(*leader_commit);
            out.put_u32_le(entries.len() as u32);
            for entry in entries {
                encode_entry(out, entry);
            }
        }
        MessageBody::AppendEntriesResponse(AppendResult::Success { match_index }) => {
            out.put_u8(6);
            out.put_u8(0);
            out.put_u64_le(*match_index);
        }
        MessageBody::AppendEntriesResponse(AppendResult::Conflict {
            prev_index,
            conflict_term,
            first_index,
        }) => {
            out.put_u8(6);
            out.put_u8(1);
            out.put_u64_le(*prev_index);
            out.put_u8(conflict_term.is_some() as u8);
            out.put_u64_le(conflict_term.unwrap_or(0));
            out.put_u64_le(*first_index);
        }
        MessageBody::Heartbeat {
            leader_commit,
            read_round,
        } => {
            out.put_u8(7);
            out.put_u64_le(*leader_commit);
            out.put_u64_le(*read_round);
        }
        MessageBody::HeartbeatResponse { read_round } => {
            out.put_u8(8);
            out.put_u64_le(*read_round);
        }
        MessageBody::InstallSnapshot {
            meta,
            offset,
            data,
            done,
        } => {
            out.put_u8(9);
            encode_snapshot_meta(out, meta);
            out.put_u64_le(*offset);
            put_bytes(out, data);
            out.put_u8(*done as u8);
        }
        MessageBody::InstallSnapshotResponse {
            last_included,
            received_bytes,
            done,
        } => {
            out.put_u8(10);
            out.put_u64_le(*last_included);
            out.put_u64_le(*received_bytes);
            out.put_u8(*done as u8);
        }
        MessageBody::TimeoutNow => out.put_u8(11),
        MessageBody::ForwardProposals { commands } => {
            out.put_u8(12);
            out.put_u32_le(commands.len() as u32);
            for command in commands {
                put_bytes(out, command);
            }
        }
        MessageBody::ReadIndex { request, lease } => {
            out.put_u8(13);
            out.put_u64_le(*request);
            out.put_u8(*lease as u8);
        }
        MessageBody::ReadIndexResponse { request, index } => {
            out.put_u8(14);
            out.put_u64_le(*request);
            match index {
                None => out.put_u8(0),
                Some(index) => {
                    out.put_u8(1);
                    out.put_u64_le(*index);
                }
            }
        }
        MessageBody::Sleep { leader_commit } => {
            out.put_u8(15);
            out.put_u64_le(*leader_commit);
        }
    }
}

pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
    let mut input = Decoder::new(bytes);
    let version = input.u8("message version")?;
    if version != WIRE_VERSION {
        return Err(input.error(
            "message version",
            format!("version {version}, expected {WIRE_VERSION}"),
        ));
    }
    let from = input.u64("message from")?;
    let to = input.u64("message to")?;
    let term = input.u64("message term")?;
    let position = |input: &mut Decoder<'_>| -> Result<LogPosition, DecodeError> {
        Ok(LogPosition::new(
            input.u64("log index")?,
            input.u64("log term")?,
        ))
    };
    let body = match input.u8("message kind")? {
        1 => MessageBody::PreVote {
            last_log: position(&mut input)?,
        },
        2 => MessageBody::PreVoteResponse {
            granted: input.bool("granted")?,
        },
        3 => MessageBody::RequestVote {
            last_log: position(&mut input)?,
            leadership_transfer: input.bool("leadership transfer")?,
        },
        4 => MessageBody::RequestVoteResponse {
            granted: input.bool("granted")?,
        },
        5 => {
            let prev_log = position(&mut input)?;
            let leader_commit = input.u64("leader commit")?;
            let count = input.u32("entry count")? as usize;
            if count > ENTRIES_PER_MESSAGE_DECODE_MAX {
                return Err(input.error(
                    "entry count",
                    format!("{count} exceeds {ENTRIES_PER_MESSAGE_DECODE_MAX}"),
                ));
            }
            let entries = (0..count)
                .map(|_| decode_entry(&mut input))
                .collect::<Result<_, _>>()?;
            MessageBody::AppendEntries {
                prev_log,
                entries,
                leader_commit,
            }
        }
        6 => match input.u8("append result")? {
            0 => MessageBody::AppendEntriesResponse(AppendResult::Success {
                match_index: input.u64("match index")?,
            }),
            1 => {
                let prev_index = input.u64("prev index")?;
                let has_term = input.bool("has conflict term")?;
                let conflict_term = input.u64("conflict term")?;
                let first_index = input.u64("first index")?;
                MessageBody::AppendEntriesResponse(AppendResult::Conflict {
                    prev_index,
                    conflict_term: has_term.then_some(conflict_term),
                    first_index,
                })
            }
            other => return Err(input.error("append result", format!("unknown result {other}"))),
        },
        7 => MessageBody::Heartbeat {
            leader_commit: input.u64("leader commit")?,
            read_round: input.u64("read round")?,
        },
        8 => MessageBody::HeartbeatResponse {
            read_round: input.u64("read round")?,
        },
        9 => MessageBody::InstallSnapshot {
            meta: decode_snapshot_meta(&mut input)?,
            offset: input.u64("snapshot offset")?,
            data: input.bytes("snapshot data")?,
            done: input.bool("snapshot done")?,
        },
        10 => MessageBody::InstallSnapshotResponse {
            last_included: input.u64("snapshot index")?,
            received_bytes: input.u64("received bytes")?,
            done: input.bool("snapshot done")?,
        },
        11 => MessageBody::TimeoutNow,
        12 => {
            let count = input.u32("proposal count")? as usize;
            if count > ENTRIES_PER_MESSAGE_DECODE_MAX {
                return Err(input.error(
                    "proposal count",
                    format!("{count} exceeds {ENTRIES_PER_MESSAGE_DECODE_MAX}"),
                ));
            }
            let commands = (0..count)
                .map(|_| input.bytes("forwarded command"))
                .collect::<Result<_, _>>()?;
            MessageBody::ForwardProposals { commands }
        }
        13 => MessageBody::ReadIndex {
            request: input.u64("read request")?,
            lease: input.bool("lease")?,
        },
        14 => {
            let request = input.u64("read request")?;
            let index = match input.u8("has index")? {
                0 => None,
                1 => Some(input.u64("read index")?),
                other => {
                    return Err(input.error("has index", format!("{other} is neither 0 nor 1")))
                }
            };
            MessageBody::ReadIndexResponse { request, index }
        }
        15 => MessageBody::Sleep {
            leader_commit: input.u64("leader commit")?,
        },
        other => return Err(input.error("message kind", format!("unknown kind {other}"))),
    };
    input.finish("message")?;
    Ok(Message {
        from,
        to,
        term,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballot_core::{Entry, EntryPayload, Membership, MembershipChange, SnapshotMeta};
    use bytes::Bytes;

    fn every_kind() -> Vec<MessageBody> {
        let last_log = LogPosition::new(10, 3);
        vec![
            MessageBody::PreVote { last_log },
            MessageBody::PreVoteResponse { granted: true },
            MessageBody::RequestVote {
                last_log,
                leadership_transfer: true,
            },
            MessageBody::RequestVoteResponse { granted: false },
            MessageBody::AppendEntries {
                prev_log: last_log,
                leader_commit: 9,
                entries: vec![
                    Entry {
                        index: 11,
                        term: 3,
                        payload: EntryPayload::Command(Bytes::from_static(b"v")),
                    },
                    Entry {
                        index: 12,
                        term: 3,
                        payload: EntryPayload::Membership(
                            MembershipChange::Remove(2),
                            ballot_core::Membership::with_voters([1, 3]),
                        ),
                    },
                ],
            },
            MessageBody::AppendEntriesResponse(AppendResult::Success { match_index: 12 }),
            MessageBody::AppendEntriesResponse(AppendResult::Conflict {
                prev_index: 9,
                conflict_term: Some(2),
                first_index: 4,
            }),
            MessageBody::AppendEntriesResponse(AppendResult::Conflict {
                prev_index: 9,
                conflict_term: None,
                first_index: 4,
            }),
            MessageBody::Heartbeat {
                leader_commit: 5,
                read_round: 77,
            },
            MessageBody::HeartbeatResponse { read_round: 77 },
            MessageBody::InstallSnapshot {
                meta: SnapshotMeta {
                    last_included: last_log,
                    membership: Membership::with_voters([1, 2, 3]),
                },
                offset: 4096,
                data: Bytes::from_static(b"chunk"),
                done: false,
            },
            MessageBody::InstallSnapshotResponse {
                last_included: 10,
                received_bytes: 4101,
                done: true,
            },
            MessageBody::TimeoutNow,
            MessageBody::Sleep { leader_commit: 12 },
            MessageBody::ForwardProposals {
                commands: vec![Bytes::from_static(b"a"), Bytes::new()],
            },
            MessageBody::ReadIndex {
                request: u64::MAX,
                lease: true,
            },
            MessageBody::ReadIndexResponse {
                request: 7,
                index: Some(99),
            },
            MessageBody::ReadIndexResponse {
                request: 8,
                index: None,
            },
        ]
    }

    #[test]
    fn every_message_kind_round_trips() {
        for body in every_kind() {
            let message = Message {
                from: 1,
                to: 2,
                term: 3,
                body,
            };
            let mut buf = Vec::new();
            encode(&message, &mut buf);
            assert_eq!(decode(&buf).unwrap(), message);
        }
    }

    #[test]
    fn truncations_and_corruptions_never_panic() {
        for body in every_kind() {
            let mut buf = Vec::new();
            encode(
                &Message {
                    from: 1,
                    to: 2,
                    term: 3,
                    body,
                },
                &mut buf,
            );
            for cut in 0..buf.len() {
                assert!(
                    decode(&buf[..cut]).is_err(),
                    "a message cut at {cut} bytes must not decode"
                );
            }
            for at in 0..buf.len() {
                let mut flipped = buf.clone();
                flipped[at] ^= 0xa5;
                let _ = decode(&flipped); // may decode to another valid message, must not panic
            }
        }
        let error = decode(&[2]).unwrap_err();
        assert!(error.to_string().contains("version 2"), "{error}");
    }
}
