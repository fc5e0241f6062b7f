//! The byte layout of WAL records: framing and the codecs of every record type. Pure: no I/O.
//!
//! Mirrors `docs/design/storage.md`, "Record framing":
//!
//! ```text
//! offset  size  field
//! 0       4     payload length n in bytes, u32 LE (the type byte is not counted)
//! 4       4     CRC32C of type byte + payload, u32 LE
//! 8       1     record type: 1 segment header, 2 entry, 3 hard state, 4 snapshot marker,
//!                             5 group record (the node's shared WAL only)
//! 9       n     payload
//!
//! segment header   magic "BALLOTWL" (8), format version (u32), segment number (u64), first index (u64)
//! entry            index (u64), term (u64), kind (u8: 0 no-op, 1 command, 2 membership), body
//!                    command body: the bytes, to the end of the payload
//!                    membership body: change (u8: 0 add voter, 1 add learner, 2 promote, 3 remove), node (u64)
//! hard state       term (u64), voted for (u64, 0 = nobody), commit index (u64)
//! snapshot marker  index (u64), term (u64), keep later entries (u8: 0 or 1)
//! group record     group id (u32), inner type (u8: 2 entry, 3 hard state, 4 snapshot marker,
//!                    5 the group was removed), the inner record's payload (none for 5)
//! ```
//!
//! A one-replica WAL's segments say format version 2 and hold no group records; the node's shared
//! WAL's say version 3 and hold nothing but group records after their header.
//!
//! Every integer is little endian. Decoding never trusts a length: it is bounded by
//! `record_bytes_max` and by the bytes present before anything is read or allocated.

use crate::wal::Defect;
use ballot_core::{
    Entry, EntryPayload, GroupId, HardState, LogIndex, LogPosition, MembershipChange,
};
use bytes::Bytes;

/// Length, checksum and type.
pub const RECORD_HEADER_BYTES: usize = 9;
pub const SEGMENT_MAGIC: [u8; 8] = *b"BALLOTWL";
/// 2: membership entries carry the whole membership after the change.
pub const FORMAT_VERSION: u32 = 2;
/// The node's shared WAL: every record after the segment header is a group record.
pub const SHARED_FORMAT_VERSION: u32 = 3;

const TYPE_SEGMENT_HEADER: u8 = 1;
const TYPE_ENTRY: u8 = 2;
const TYPE_HARD_STATE: u8 = 3;
const TYPE_SNAPSHOT_MARKER: u8 = 4;
const TYPE_GROUP: u8 = 5;
/// The last record type: a byte above it is not the start of a record.
pub const TYPE_MAX: u8 = TYPE_GROUP;
/// A group record's inner type for the group's removal.
const INNER_GROUP_REMOVED: u8 = 5;

const ENTRY_KIND_NOOP: u8 = 0;
const ENTRY_KIND_COMMAND: u8 = 1;
const ENTRY_KIND_MEMBERSHIP: u8 = 2;

const CHANGE_ADD_VOTER: u8 = 0;
const CHANGE_ADD_LEARNER: u8 = 1;
const CHANGE_PROMOTE_LEARNER: u8 = 2;
const CHANGE_REMOVE: u8 = 3;

const SEGMENT_HEADER_PAYLOAD_BYTES: usize = 8 + 4 + 8 + 8;
/// Index, term and kind: what every entry payload starts with.
const ENTRY_PAYLOAD_FIXED_BYTES: usize = 8 + 8 + 1;
const MEMBERSHIP_BODY_BYTES: usize = 1 + 8;
const HARD_STATE_PAYLOAD_BYTES: usize = 8 + 8 + 8;
const SNAPSHOT_MARKER_PAYLOAD_BYTES: usize = 8 + 8 + 1;
/// Group id and inner type: what a group record adds to the record it wraps.
pub const GROUP_RECORD_EXTRA_BYTES: usize = 4 + 1;

/// The largest preamble a segment can have (header, hard state, snapshot marker). A segment holding
/// no more than this has nothing but its preamble, so a record that does not fit after it must
/// extend the segment rather than open yet another one.
pub const PREAMBLE_BYTES_MAX: u64 = (3 * RECORD_HEADER_BYTES
    + SEGMENT_HEADER_PAYLOAD_BYTES
    + HARD_STATE_PAYLOAD_BYTES
    + SNAPSHOT_MARKER_PAYLOAD_BYTES) as u64;

/// First record of every segment, repeating what the file name says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub format_version: u32,
    pub segment_number: u64,
    pub first_index: LogIndex,
}

/// A snapshot covering the log through `position` is durable: entries at or below its index are no
/// longer needed. With `keep_later_entries` false the whole log was discarded (Raft §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotMarker {
    pub position: LogPosition,
    pub keep_later_entries: bool,
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    SegmentHeader(SegmentHeader),
    Entry(Entry),
    HardState(HardState),
    SnapshotMarker(SnapshotMarker),
    Group(GroupId, GroupRecord),
}

/// What a group record of the shared WAL says about its group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupRecord {
    Entry(Entry),
    HardState(HardState),
    SnapshotMarker(SnapshotMarker),
    /// The group was removed from this node: nothing before this says anything about it.
    Removed,
}

/// What a record is, for listings (`dump_segment`) and error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    SegmentHeader,
    Entry,
    HardState,
    SnapshotMarker,
    Group,
}

impl Record {
    pub fn kind(&self) -> RecordKind {
        match self {
            Record::SegmentHeader(_) => RecordKind::SegmentHeader,
            Record::Entry(_) => RecordKind::Entry,
            Record::HardState(_) => RecordKind::HardState,
            Record::SnapshotMarker(_) => RecordKind::SnapshotMarker,
            Record::Group(..) => RecordKind::Group,
        }
    }
}

/// Bytes the entry's record takes on disk, header included, without encoding it.
pub fn entry_record_bytes(entry: &Entry) -> usize {
    let body = match &entry.payload {
        EntryPayload::Noop => 0,
        EntryPayload::Command(data) => data.len(),
        EntryPayload::Membership(_, membership) => {
            MEMBERSHIP_BODY_BYTES + 8 + 8 * (membership.voters.len() + membership.learners.len())
        }
    };
    RECORD_HEADER_BYTES + ENTRY_PAYLOAD_FIXED_BYTES + body
}

pub const HARD_STATE_RECORD_BYTES: usize = RECORD_HEADER_BYTES + HARD_STATE_PAYLOAD_BYTES;
pub const SNAPSHOT_MARKER_RECORD_BYTES: usize = RECORD_HEADER_BYTES + SNAPSHOT_MARKER_PAYLOAD_BYTES;

/// Appends a framed record to `out`: reserves the header, lets `payload` write, then fills in
/// the length and the checksum. Returns the record's size in bytes.
fn frame(out: &mut Vec<u8>, record_type: u8, payload: impl FnOnce(&mut Vec<u8>)) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    out.push(record_type);
    payload(out);
    let payload_bytes = out.len() - start - RECORD_HEADER_BYTES;
    let length = u32::try_from(payload_bytes).expect("callers bound records by record_bytes_max");
    let checksum = crc32c::crc32c(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&length.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&checksum.to_le_bytes());
    out.len() - start
}

pub fn encode_segment_header(segment_number: u64, first_index: LogIndex, out: &mut Vec<u8>) {
    encode_versioned_header(FORMAT_VERSION, segment_number, first_index, out);
}

/// A shared WAL segment's header: version 3, no first index (0).
pub fn encode_shared_segment_header(segment_number: u64, out: &mut Vec<u8>) {
    encode_versioned_header(SHARED_FORMAT_VERSION, segment_number, 0, out);
}

fn encode_versioned_header(
    format_version: u32,
    segment_number: u64,
    first_index: LogIndex,
    out: &mut Vec<u8>,
) {
    frame(out, TYPE_SEGMENT_HEADER, |out| {
        out.extend_from_slice(&SEGMENT_MAGIC);
        out.extend_from_slice(&format_version.to_le_bytes());
        out.extend_from_slice(&segment_number.to_le_bytes());
        out.extend_from_slice(&first_index.to_le_bytes());
    });
}

pub fn encode_entry(entry: &Entry, out: &mut Vec<u8>) -> usize {
    frame(out, TYPE_ENTRY, |out| entry_payload(entry, out))
}

/// A group record wrapping `record`, which must not be a segment header or a group record.
pub fn encode_group_record(group: GroupId, record: &GroupRecord, out: &mut Vec<u8>) -> usize {
    frame(out, TYPE_GROUP, |out| {
        out.extend_from_slice(&group.to_le_bytes());
        match record {
            GroupRecord::Entry(entry) => {
                out.push(TYPE_ENTRY);
                entry_payload(entry, out);
            }
            GroupRecord::HardState(hard_state) => {
                out.push(TYPE_HARD_STATE);
                hard_state_payload(hard_state, out);
            }
            GroupRecord::SnapshotMarker(marker) => {
                out.push(TYPE_SNAPSHOT_MARKER);
                marker_payload(marker, out);
            }
            GroupRecord::Removed => out.push(INNER_GROUP_REMOVED),
        }
    })
}

fn entry_payload(entry: &Entry, out: &mut Vec<u8>) {
    out.extend_from_slice(&entry.index.to_le_bytes());
    out.extend_from_slice(&entry.term.to_le_bytes());
    match &entry.payload {
        EntryPayload::Noop => out.push(ENTRY_KIND_NOOP),
        EntryPayload::Command(data) => {
            out.push(ENTRY_KIND_COMMAND);
            out.extend_from_slice(data);
        }
        EntryPayload::Membership(change, membership) => {
            out.push(ENTRY_KIND_MEMBERSHIP);
            let (kind, node) = match *change {
                MembershipChange::AddVoter(node) => (CHANGE_ADD_VOTER, node),
                MembershipChange::AddLearner(node) => (CHANGE_ADD_LEARNER, node),
                MembershipChange::PromoteLearner(node) => (CHANGE_PROMOTE_LEARNER, node),
                MembershipChange::Remove(node) => (CHANGE_REMOVE, node),
            };
            out.push(kind);
            out.extend_from_slice(&node.to_le_bytes());
            ballot_core::codec::encode_membership(out, membership);
        }
    }
}

pub fn encode_hard_state(hard_state: &HardState, out: &mut Vec<u8>) -> usize {
    frame(out, TYPE_HARD_STATE, |out| {
        hard_state_payload(hard_state, out)
    })
}

fn hard_state_payload(hard_state: &HardState, out: &mut Vec<u8>) {
    out.extend_from_slice(&hard_state.term.to_le_bytes());
    out.extend_from_slice(&hard_state.voted_for.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&hard_state.commit_index.to_le_bytes());
}

pub fn encode_snapshot_marker(marker: &SnapshotMarker, out: &mut Vec<u8>) -> usize {
    frame(out, TYPE_SNAPSHOT_MARKER, |out| marker_payload(marker, out))
}

fn marker_payload(marker: &SnapshotMarker, out: &mut Vec<u8>) {
    out.extend_from_slice(&marker.position.index.to_le_bytes());
    out.extend_from_slice(&marker.position.term.to_le_bytes());
    out.push(u8::from(marker.keep_later_entries));
}

/// What is at the start of `bytes`.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A valid record and its size in bytes.
    Record(Record, usize),
    /// Zeros to the end: the unwritten (preallocated) rest of a segment.
    End,
}

/// Decodes the record at the start of `bytes`, which run to the end of the file. Checks, in order:
/// the header is present, the length is within `record_bytes_max` and within the file, the
/// checksum matches, the type is known, the payload decodes to exactly its length.
pub fn decode_record(bytes: &[u8], record_bytes_max: usize) -> Result<Decoded, Defect> {
    if bytes.len() < RECORD_HEADER_BYTES || bytes[..RECORD_HEADER_BYTES] == [0; 9] {
        return if bytes.iter().all(|&byte| byte == 0) {
            Ok(Decoded::End)
        } else if bytes.len() < RECORD_HEADER_BYTES {
            Err(Defect::HeaderTruncated {
                bytes_left: bytes.len(),
            })
        } else {
            Err(Defect::ZeroHeaderBeforeData)
        };
    }
    let payload_bytes = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")) as usize;
    let stored_checksum = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    let record_bytes = RECORD_HEADER_BYTES + payload_bytes;
    if record_bytes > record_bytes_max {
        return Err(Defect::RecordTooLarge {
            record_bytes: record_bytes as u64,
            record_bytes_max,
        });
    }
    if record_bytes > bytes.len() {
        return Err(Defect::PastEndOfFile {
            record_bytes: record_bytes as u64,
            bytes_left: bytes.len() as u64,
        });
    }
    let computed_checksum = crc32c::crc32c(&bytes[8..record_bytes]);
    if computed_checksum != stored_checksum {
        return Err(Defect::ChecksumMismatch {
            stored: stored_checksum,
            computed: computed_checksum,
        });
    }
    let payload = &bytes[RECORD_HEADER_BYTES..record_bytes];
    let record = decode_payload(bytes[8], payload)?;
    Ok(Decoded::Record(record, record_bytes))
}

fn decode_payload(record_type: u8, payload: &[u8]) -> Result<Record, Defect> {
    let mut reader = PayloadReader { bytes: payload };
    let record = match record_type {
        TYPE_SEGMENT_HEADER => {
            reader.expect_bytes("segment header", SEGMENT_HEADER_PAYLOAD_BYTES)?;
            let magic = reader.take(8);
            if magic != SEGMENT_MAGIC {
                return Err(Defect::BadMagic);
            }
            Record::SegmentHeader(SegmentHeader {
                format_version: reader.u32(),
                segment_number: reader.u64(),
                first_index: reader.u64(),
            })
        }
        TYPE_ENTRY => Record::Entry(decode_entry(&mut reader)?),
        TYPE_HARD_STATE => {
            reader.expect_bytes("hard state", HARD_STATE_PAYLOAD_BYTES)?;
            let term = reader.u64();
            let voted_for = reader.u64();
            Record::HardState(HardState {
                term,
                voted_for: (voted_for != 0).then_some(voted_for),
                commit_index: reader.u64(),
            })
        }
        TYPE_SNAPSHOT_MARKER => {
            reader.expect_bytes("snapshot marker", SNAPSHOT_MARKER_PAYLOAD_BYTES)?;
            let index = reader.u64();
            let term = reader.u64();
            let keep_later_entries = match reader.u8() {
                0 => false,
                1 => true,
                other => {
                    return Err(Defect::BadPayload {
                        record: "snapshot marker",
                        reason: format!("keep flag is {other}, not 0 or 1"),
                    })
                }
            };
            Record::SnapshotMarker(SnapshotMarker {
                position: LogPosition::new(index, term),
                keep_later_entries,
            })
        }
        TYPE_GROUP => {
            reader.expect_at_least("group record", GROUP_RECORD_EXTRA_BYTES)?;
            let group = reader.u32();
            let inner_type = reader.u8();
            let inner = match inner_type {
                INNER_GROUP_REMOVED => {
                    reader.expect_bytes("group removal", 0)?;
                    GroupRecord::Removed
                }
                TYPE_ENTRY | TYPE_HARD_STATE | TYPE_SNAPSHOT_MARKER => {
                    match decode_payload(inner_type, reader.rest())? {
                        Record::Entry(entry) => GroupRecord::Entry(entry),
                        Record::HardState(hard_state) => GroupRecord::HardState(hard_state),
                        Record::SnapshotMarker(marker) => GroupRecord::SnapshotMarker(marker),
                        _ => unreachable!("the inner type was one of the three"),
                    }
                }
                other => {
                    return Err(Defect::BadPayload {
                        record: "group record",
                        reason: format!("inner record type {other}, not 2, 3, 4 or 5"),
                    })
                }
            };
            Record::Group(group, inner)
        }
        other => return Err(Defect::UnknownRecordType(other)),
    };
    Ok(record)
}

fn decode_entry(reader: &mut PayloadReader<'_>) -> Result<Entry, Defect> {
    if reader.bytes.len() < ENTRY_PAYLOAD_FIXED_BYTES {
        return Err(Defect::BadPayload {
            record: "entry",
            reason: format!(
                "{} bytes, at least {ENTRY_PAYLOAD_FIXED_BYTES} expected",
                reader.bytes.len()
            ),
        });
    }
    let index = reader.u64();
    let term = reader.u64();
    let payload = match reader.u8() {
        ENTRY_KIND_NOOP => {
            reader.expect_bytes("no-op entry body", 0)?;
            EntryPayload::Noop
        }
        ENTRY_KIND_COMMAND => EntryPayload::Command(Bytes::copy_from_slice(reader.rest())),
        ENTRY_KIND_MEMBERSHIP => {
            reader.expect_at_least("membership entry body", MEMBERSHIP_BODY_BYTES)?;
            let kind = reader.u8();
            let node = reader.u64();
            let mut members = ballot_core::codec::Decoder::new(reader.rest());
            let membership = ballot_core::codec::decode_membership(&mut members)
                .and_then(|membership| members.finish("membership entry").map(|_| membership))
                .map_err(|error| Defect::BadPayload {
                    record: "entry",
                    reason: error.to_string(),
                })?;
            let change = match kind {
                CHANGE_ADD_VOTER => MembershipChange::AddVoter(node),
                CHANGE_ADD_LEARNER => MembershipChange::AddLearner(node),
                CHANGE_PROMOTE_LEARNER => MembershipChange::PromoteLearner(node),
                CHANGE_REMOVE => MembershipChange::Remove(node),
                other => {
                    return Err(Defect::BadPayload {
                        record: "entry",
                        reason: format!("unknown membership change kind {other}"),
                    })
                }
            };
            EntryPayload::Membership(change, membership)
        }
        other => {
            return Err(Defect::BadPayload {
                record: "entry",
                reason: format!("unknown entry kind {other}"),
            })
        }
    };
    Ok(Entry {
        index,
        term,
        payload,
    })
}

/// Reads fixed-size fields after the caller has checked (with `expect_bytes`) that they are there.
struct PayloadReader<'a> {
    bytes: &'a [u8],
}

impl<'a> PayloadReader<'a> {
    fn expect_bytes(&self, what: &'static str, expected: usize) -> Result<(), Defect> {
        if self.bytes.len() == expected {
            Ok(())
        } else {
            Err(Defect::BadPayload {
                record: what,
                reason: format!("{} bytes, {expected} expected", self.bytes.len()),
            })
        }
    }

    fn expect_at_least(&self, what: &'static str, expected: usize) -> Result<(), Defect> {
        if self.bytes.len() >= expected {
            Ok(())
        } else {
            Err(Defect::BadPayload {
                record: what,
                reason: format!("{} bytes, at least {expected} expected", self.bytes.len()),
            })
        }
    }

    fn take(&mut self, count: usize) -> &'a [u8] {
        let (head, tail) = self.bytes.split_at(count);
        self.bytes = tail;
        head
    }

    fn rest(&mut self) -> &'a [u8] {
        self.take(self.bytes.len())
    }

    fn u8(&mut self) -> u8 {
        self.take(1)[0]
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().expect("4 bytes"))
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().expect("8 bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 1 << 20;

    fn decode_one(bytes: &[u8]) -> Record {
        match decode_record(bytes, MAX) {
            Ok(Decoded::Record(record, size)) => {
                assert_eq!(size, bytes.len(), "the record is the whole buffer");
                record
            }
            other => panic!("expected a record, got {other:?}"),
        }
    }

    fn arb_change() -> impl Strategy<Value = MembershipChange> {
        prop_oneof![
            any::<u64>().prop_map(MembershipChange::AddVoter),
            any::<u64>().prop_map(MembershipChange::AddLearner),
            any::<u64>().prop_map(MembershipChange::PromoteLearner),
            any::<u64>().prop_map(MembershipChange::Remove),
        ]
    }

    fn arb_entry() -> impl Strategy<Value = Entry> {
        let payload = prop_oneof![
            Just(EntryPayload::Noop),
            proptest::collection::vec(any::<u8>(), 0..300)
                .prop_map(|data| EntryPayload::Command(Bytes::from(data))),
            (
                arb_change(),
                proptest::collection::btree_set(any::<u64>(), 0..5),
                proptest::collection::btree_set(any::<u64>(), 0..3)
            )
                .prop_map(|(change, voters, learners)| EntryPayload::Membership(
                    change,
                    ballot_core::Membership { voters, learners }
                )),
        ];
        (any::<u64>(), any::<u64>(), payload).prop_map(|(index, term, payload)| Entry {
            index,
            term,
            payload,
        })
    }

    proptest! {
        #[test]
        fn entries_round_trip(entry in arb_entry()) {
            let mut out = Vec::new();
            let size = encode_entry(&entry, &mut out);
            prop_assert_eq!(size, out.len());
            prop_assert_eq!(size, entry_record_bytes(&entry));
            prop_assert_eq!(decode_one(&out), Record::Entry(entry));
        }

        #[test]
        fn hard_states_round_trip(term: u64, vote in proptest::option::of(1..u64::MAX), commit: u64) {
            let hard_state = HardState { term, voted_for: vote, commit_index: commit };
            let mut out = Vec::new();
            prop_assert_eq!(encode_hard_state(&hard_state, &mut out), HARD_STATE_RECORD_BYTES);
            prop_assert_eq!(decode_one(&out), Record::HardState(hard_state));
        }

        #[test]
        fn markers_and_headers_round_trip(index: u64, term: u64, keep: bool, number: u64) {
            let marker = SnapshotMarker { position: LogPosition::new(index, term), keep_later_entries: keep };
            let mut out = Vec::new();
            prop_assert_eq!(encode_snapshot_marker(&marker, &mut out), SNAPSHOT_MARKER_RECORD_BYTES);
            prop_assert_eq!(decode_one(&out), Record::SnapshotMarker(marker));
            out.clear();
            encode_segment_header(number, index, &mut out);
            prop_assert_eq!(decode_one(&out), Record::SegmentHeader(SegmentHeader {
                format_version: FORMAT_VERSION, segment_number: number, first_index: index,
            }));
        }

        /// Any single flipped bit is caught: by the checksum, or by a length check.
        #[test]
        fn a_flipped_bit_is_a_defect(entry in arb_entry(), bit in any::<prop::sample::Index>()) {
            let mut out = Vec::new();
            encode_entry(&entry, &mut out);
            let bit = bit.index(out.len() * 8);
            out[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(decode_record(&out, MAX).is_err());
        }
    }

    #[test]
    fn framing_layout_is_length_checksum_type_payload() {
        let mut out = Vec::new();
        let marker = SnapshotMarker {
            position: LogPosition::new(7, 3),
            keep_later_entries: true,
        };
        encode_snapshot_marker(&marker, &mut out);
        assert_eq!(&out[0..4], &17u32.to_le_bytes(), "payload length");
        assert_eq!(&out[4..8], &crc32c::crc32c(&out[8..]).to_le_bytes());
        assert_eq!(out[8], TYPE_SNAPSHOT_MARKER);
        assert_eq!(&out[9..17], &7u64.to_le_bytes());
        assert_eq!(&out[17..25], &3u64.to_le_bytes());
        assert_eq!(out[25], 1);
    }

    #[test]
    fn zeros_are_the_end_and_anything_else_is_a_defect() {
        assert_eq!(decode_record(&[0; 40], MAX), Ok(Decoded::End));
        assert_eq!(decode_record(&[], MAX), Ok(Decoded::End));
        assert_eq!(
            decode_record(&[0, 0, 1], MAX),
            Err(Defect::HeaderTruncated { bytes_left: 3 })
        );
        let mut zero_header_then_data = [0u8; 20];
        zero_header_then_data[15] = 1;
        assert_eq!(
            decode_record(&zero_header_then_data, MAX),
            Err(Defect::ZeroHeaderBeforeData)
        );
    }

    #[test]
    fn lengths_are_bounded_before_reading() {
        let entry = Entry {
            index: 1,
            term: 1,
            payload: EntryPayload::Command(Bytes::from(vec![7; 100])),
        };
        let mut out = Vec::new();
        let size = encode_entry(&entry, &mut out);
        assert_eq!(
            decode_record(&out, size - 1),
            Err(Defect::RecordTooLarge {
                record_bytes: size as u64,
                record_bytes_max: size - 1
            })
        );
        assert!(matches!(
            decode_record(&out[..size - 1], MAX),
            Err(Defect::PastEndOfFile { .. })
        ));
    }
}
