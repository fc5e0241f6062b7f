//! The binary encoding of the types every protocol, the WAL and the transport share: entries,
//! hard state, membership, snapshot metadata. Fixed-width little-endian integers and
//! length-prefixed byte strings: simple to read in a hex dump, and decoding checks every length
//! against what is left, so garbage yields a [`DecodeError`] naming the offset, never a panic.
//!
//! Layouts (all integers little-endian):
//!
//! ```text
//! Entry        index u64 | term u64 | kind u8 | body
//!                kind 0 no-op:      (no body)
//!                kind 1 command:    len u32 | bytes
//!                kind 2 membership: change u8 (0 add-voter, 1 add-learner, 2 promote, 3 remove) | node u64
//!                                   | Membership (the whole membership after the change)
//! HardState    term u64 | voted_for u64 (0 = none) | commit_index u64
//! Membership   voter_count u32 | voter u64 * n | learner_count u32 | learner u64 * m
//! SnapshotMeta last_index u64 | last_term u64 | Membership
//! ```

use crate::{
    Entry, EntryPayload, HardState, LogPosition, Membership, MembershipChange, SnapshotMeta,
};
use bytes::{Buf, BufMut, Bytes};
use thiserror::Error;

/// Largest byte string accepted when decoding (a command, a snapshot chunk).
pub const BYTES_FIELD_MAX: usize = 64 << 20;
/// Largest member list accepted when decoding.
pub const MEMBERS_MAX: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("cannot decode {what} at byte {offset}: {reason}")]
pub struct DecodeError {
    pub what: &'static str,
    pub offset: usize,
    pub reason: String,
}

/// A cursor over bytes being decoded that knows its offset for error messages.
pub struct Decoder<'a> {
    input: &'a [u8],
    offset: usize,
}

impl<'a> Decoder<'a> {
    pub fn new(input: &'a [u8]) -> Self {
        Self { input, offset: 0 }
    }

    pub fn offset(&self) -> usize {
        self.offset
    }

    pub fn is_empty(&self) -> bool {
        self.input.is_empty()
    }

    pub fn error(&self, what: &'static str, reason: impl Into<String>) -> DecodeError {
        DecodeError {
            what,
            offset: self.offset,
            reason: reason.into(),
        }
    }

    fn take(&mut self, what: &'static str, len: usize) -> Result<&'a [u8], DecodeError> {
        if self.input.len() < len {
            return Err(self.error(
                what,
                format!("needs {len} bytes, {} left", self.input.len()),
            ));
        }
        let (head, tail) = self.input.split_at(len);
        self.input = tail;
        self.offset += len;
        Ok(head)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(what, 1)?[0])
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(self.take(what, 4)?.get_u32_le())
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(self.take(what, 8)?.get_u64_le())
    }

    pub fn bool(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(self.error(what, format!("{other} is not a boolean"))),
        }
    }

    /// A `len u32 | bytes` field, copied out.
    pub fn bytes(&mut self, what: &'static str) -> Result<Bytes, DecodeError> {
        let len = self.u32(what)? as usize;
        if len > BYTES_FIELD_MAX {
            return Err(self.error(what, format!("length {len} exceeds {BYTES_FIELD_MAX}")));
        }
        Ok(Bytes::copy_from_slice(self.take(what, len)?))
    }

    pub fn finish(&self, what: &'static str) -> Result<(), DecodeError> {
        if self.input.is_empty() {
            Ok(())
        } else {
            Err(self.error(what, format!("{} trailing bytes", self.input.len())))
        }
    }
}

pub fn put_bytes(out: &mut impl BufMut, bytes: &[u8]) {
    out.put_u32_le(u32::try_from(bytes.len()).expect("byte fields are bounded far below 4 GiB"));
    out.put_slice(bytes);
}

pub fn encode_entry(out: &mut impl BufMut, entry: &Entry) {
    out.put_u64_le(entry.index);
    out.put_u64_le(entry.term);
    match &entry.payload {
        EntryPayload::Noop => out.put_u8(0),
        EntryPayload::Command(data) => {
            out.put_u8(1);
            put_bytes(out, data);
        }
        EntryPayload::Membership(change, membership) => {
            out.put_u8(2);
            let (kind, node) = match *change {
                MembershipChange::AddVoter(node) => (0, node),
                MembershipChange::AddLearner(node) => (1, node),
                MembershipChange::PromoteLearner(node) => (2, node),
                MembershipChange::Remove(node) => (3, node),
            };
            out.put_u8(kind);
            out.put_u64_le(node);
            encode_membership(out, membership);
        }
    }
}

pub fn decode_entry(input: &mut Decoder<'_>) -> Result<Entry, DecodeError> {
    let index = input.u64("entry index")?;
    let term = input.u64("entry term")?;
    let payload = match input.u8("entry kind")? {
        0 => EntryPayload::Noop,
        1 => EntryPayload::Command(input.bytes("entry command")?),
        2 => {
            let kind = input.u8("membership change")?;
            let node = input.u64("membership node")?;
            let change = match kind {
                0 => MembershipChange::AddVoter(node),
                1 => MembershipChange::AddLearner(node),
                2 => MembershipChange::PromoteLearner(node),
                3 => MembershipChange::Remove(node),
                other => {
                    return Err(input.error("membership change", format!("unknown kind {other}")))
                }
            };
            EntryPayload::Membership(change, decode_membership(input)?)
        }
        other => return Err(input.error("entry kind", format!("unknown kind {other}"))),
    };
    Ok(Entry {
        index,
        term,
        payload,
    })
}

pub fn encode_hard_state(out: &mut impl BufMut, hard_state: &HardState) {
    out.put_u64_le(hard_state.term);
    out.put_u64_le(hard_state.voted_for.unwrap_or(0));
    out.put_u64_le(hard_state.commit_index);
}

pub fn decode_hard_state(input: &mut Decoder<'_>) -> Result<HardState, DecodeError> {
    let term = input.u64("hard state term")?;
    let voted_for = input.u64("hard state vote")?;
    let commit_index = input.u64("hard state commit")?;
    Ok(HardState {
        term,
        voted_for: (voted_for != 0).then_some(voted_for),
        commit_index,
    })
}

pub fn encode_membership(out: &mut impl BufMut, membership: &Membership) {
    for set in [&membership.voters, &membership.learners] {
        out.put_u32_le(set.len() as u32);
        for &id in set {
            out.put_u64_le(id);
        }
    }
}

pub fn decode_membership(input: &mut Decoder<'_>) -> Result<Membership, DecodeError> {
    let mut membership = Membership::default();
    for set in [&mut membership.voters, &mut membership.learners] {
        let count = input.u32("member count")? as usize;
        if count > MEMBERS_MAX {
            return Err(input.error("member count", format!("{count} exceeds {MEMBERS_MAX}")));
        }
        for _ in 0..count {
            set.insert(input.u64("member id")?);
        }
    }
    Ok(membership)
}

pub fn encode_snapshot_meta(out: &mut impl BufMut, meta: &SnapshotMeta) {
    out.put_u64_le(meta.last_included.index);
    out.put_u64_le(meta.last_included.term);
    encode_membership(out, &meta.membership);
}

pub fn decode_snapshot_meta(input: &mut Decoder<'_>) -> Result<SnapshotMeta, DecodeError> {
    let index = input.u64("snapshot index")?;
    let term = input.u64("snapshot term")?;
    let membership = decode_membership(input)?;
    Ok(SnapshotMeta {
        last_included: LogPosition::new(index, term),
        membership,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(entry: Entry) {
        let mut buf = Vec::new();
        encode_entry(&mut buf, &entry);
        let mut input = Decoder::new(&buf);
        assert_eq!(decode_entry(&mut input).unwrap(), entry);
        input.finish("entry").unwrap();
    }

    #[test]
    fn entries_round_trip() {
        round_trip(Entry {
            index: 7,
            term: 3,
            payload: EntryPayload::Noop,
        });
        round_trip(Entry {
            index: 8,
            term: 3,
            payload: EntryPayload::Command(Bytes::from_static(b"put x")),
        });
        round_trip(Entry {
            index: 9,
            term: 4,
            payload: EntryPayload::Membership(
                MembershipChange::PromoteLearner(5),
                Membership::with_voters([1, 5]),
            ),
        });
    }

    #[test]
    fn layout_is_as_documented() {
        let mut buf = Vec::new();
        encode_entry(
            &mut buf,
            &Entry {
                index: 1,
                term: 2,
                payload: EntryPayload::Command(Bytes::from_static(b"ab")),
            },
        );
        assert_eq!(
            buf,
            [1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0, b'a', b'b']
        );
    }

    #[test]
    fn truncated_or_garbage_input_names_the_offset() {
        let mut buf = Vec::new();
        encode_entry(
            &mut buf,
            &Entry {
                index: 1,
                term: 1,
                payload: EntryPayload::Command(Bytes::from_static(b"abc")),
            },
        );
        let error = decode_entry(&mut Decoder::new(&buf[..buf.len() - 1])).unwrap_err();
        assert_eq!((error.what, error.offset), ("entry command", 21));
        let mut bad_kind = buf.clone();
        bad_kind[16] = 9;
        let error = decode_entry(&mut Decoder::new(&bad_kind)).unwrap_err();
        assert!(error.to_string().contains("unknown kind 9"), "{error}");
        let mut huge = buf.clone();
        huge[17..21].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_entry(&mut Decoder::new(&huge))
            .unwrap_err()
            .reason
            .contains("exceeds"));
    }

    #[test]
    fn hard_state_and_snapshot_meta_round_trip() {
        let hard_state = HardState {
            term: 9,
            voted_for: Some(2),
            commit_index: 40,
        };
        let mut buf = Vec::new();
        encode_hard_state(&mut buf, &hard_state);
        assert_eq!(
            decode_hard_state(&mut Decoder::new(&buf)).unwrap(),
            hard_state
        );
        let mut membership = Membership::with_voters([1, 2, 3]);
        membership.learners.insert(4);
        let meta = SnapshotMeta {
            last_included: LogPosition::new(100, 7),
            membership,
        };
        let mut buf = Vec::new();
        encode_snapshot_meta(&mut buf, &meta);
        assert_eq!(decode_snapshot_meta(&mut Decoder::new(&buf)).unwrap(), meta);
    }
}
