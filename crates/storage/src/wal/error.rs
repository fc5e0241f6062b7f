//! The WAL's errors. Three groups, which callers handle differently:
//!
//! - bad input ([`WalError::RecordTooLarge`], [`WalError::InvalidAppend`],
//!   [`WalError::CompactBeyondLog`], [`WalError::InvalidOption`]): the call changed nothing; fix
//!   the caller;
//! - the files are damaged ([`WalError::Corrupt`], [`WalError::MissingEntries`],
//!   [`WalError::UnexpectedFile`]): open refuses; an operator must act (rebuild the node);
//! - the disk failed ([`WalError::Io`], then [`WalError::Stopped`]): the WAL accepts nothing more
//!   and must be reopened.

use ballot_core::{LogIndex, Term};
use std::io;
use std::path::PathBuf;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum WalError {
    #[error("WAL: {operation} {path}: {source}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("WAL segment {file} is corrupt at byte offset {offset}: {defect}")]
    Corrupt {
        file: PathBuf,
        offset: u64,
        defect: Defect,
    },
    #[error(
        "WAL in {dir} is missing entries {first_missing}..={last_missing} between its snapshot \
         marker and its oldest segment (were segment files deleted by hand?)"
    )]
    MissingEntries {
        dir: PathBuf,
        first_missing: LogIndex,
        last_missing: LogIndex,
    },
    #[error(
        "shared WAL in {dir} is missing entries {first_missing}..={last_missing} of group {group} \
         between its snapshot marker and the oldest segment (were segment files deleted by hand?)"
    )]
    MissingGroupEntries {
        dir: PathBuf,
        group: ballot_core::GroupId,
        first_missing: LogIndex,
        last_missing: LogIndex,
    },
    #[error(
        "WAL directory holds {path}, whose name is not a segment's (<number>-<first index>.wal)"
    )]
    UnexpectedFile { path: PathBuf },
    #[error(
        "WAL record of {record_bytes} bytes (entry {index:?}) exceeds record_bytes_max of \
         {record_bytes_max} bytes; nothing was written"
    )]
    RecordTooLarge {
        /// The entry whose record is too large, or `None` for a hard state record.
        index: Option<LogIndex>,
        record_bytes: u64,
        record_bytes_max: usize,
    },
    #[error("WAL append rejected, nothing was written: {violation}")]
    InvalidAppend { violation: Violation },
    #[error("cannot compact the WAL to index {index}: its last index is {last_index}")]
    CompactBeyondLog {
        index: LogIndex,
        last_index: LogIndex,
    },
    #[error("WAL option {name} = {value} is invalid: {reason}")]
    InvalidOption {
        name: &'static str,
        value: u64,
        reason: &'static str,
    },
    #[error(
        "the WAL in {dir} stopped after a failed write or sync ({cause}); reopen it to recover \
         what is durable"
    )]
    Stopped { dir: PathBuf, cause: String },
}

/// What is wrong at a position of a segment: bytes that are not a valid record, or a valid record
/// that breaks a replay invariant.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Defect {
    #[error("record header cut short ({bytes_left} bytes left in the file)")]
    HeaderTruncated { bytes_left: usize },
    #[error("zeroed record header followed by non-zero bytes")]
    ZeroHeaderBeforeData,
    #[error(
        "zeros before the end of a segment that is not the last (it was cut to its last record)"
    )]
    ZerosBeforeEnd,
    #[error("record of {record_bytes} bytes exceeds record_bytes_max of {record_bytes_max} bytes")]
    RecordTooLarge {
        record_bytes: u64,
        record_bytes_max: usize,
    },
    #[error(
        "record of {record_bytes} bytes runs past the end of the file ({bytes_left} bytes left)"
    )]
    PastEndOfFile { record_bytes: u64, bytes_left: u64 },
    #[error("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    ChecksumMismatch { stored: u32, computed: u32 },
    #[error("unknown record type {0}")]
    UnknownRecordType(u8),
    #[error("bad {record} payload: {reason}")]
    BadPayload {
        record: &'static str,
        reason: String,
    },
    #[error("segment header magic is not \"BALLOTWL\"")]
    BadMagic,
    #[error("a valid record that breaks a replay invariant: {0}")]
    Invariant(Violation),
}

/// A replay invariant, checked before every write and again on every read (docs/design/storage.md,
/// "Replay").
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Violation {
    #[error("segment does not start with a segment header")]
    MissingSegmentHeader,
    #[error("segment header found after the start of the segment")]
    SegmentHeaderNotFirst,
    #[error(
        "segment format version {found} is not supported (this build reads version {supported})"
    )]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error("segment header says {field} {in_header}, the file name says {in_name}")]
    HeaderDisagreesWithName {
        field: &'static str,
        in_header: u64,
        in_name: u64,
    },
    #[error("segment number {found} follows segment number {previous}: segments are missing")]
    SegmentNumberGap { previous: u64, found: u64 },
    #[error("segment starts at index {first_index} but the log before it ends at {last_index}")]
    SegmentStartMismatch {
        first_index: LogIndex,
        last_index: LogIndex,
    },
    #[error(
        "a group record (of the node's shared WAL) in a one-replica WAL segment, or a record \
         without a group in a shared WAL segment"
    )]
    WrongLogKind,
    #[error("entry index 0 (the first entry has index 1)")]
    IndexZero,
    #[error("entry {index} leaves a gap after the last index {last_index}")]
    IndexGap {
        index: LogIndex,
        last_index: LogIndex,
    },
    #[error("entries not consecutive: {index} follows {previous_index}")]
    NotConsecutive {
        index: LogIndex,
        previous_index: LogIndex,
    },
    #[error("entry {index} is covered by the snapshot through {snapshot_index}")]
    BelowSnapshot {
        index: LogIndex,
        snapshot_index: LogIndex,
    },
    #[error("entry {index} has term {term}, lower than term {previous_term} before it")]
    TermDecreased {
        index: LogIndex,
        term: Term,
        previous_term: Term,
    },
    #[error("hard state votes for node 0, which is reserved (it would read back as no vote)")]
    VoteForNodeZero,
    #[error("hard state term {term} is lower than the previous hard state's term {previous_term}")]
    HardStateTermDecreased { term: Term, previous_term: Term },
    #[error("snapshot marker at {index} is older than the marker at {previous_index}")]
    MarkerBackwards {
        index: LogIndex,
        previous_index: LogIndex,
    },
    #[error("snapshot marker at {index} keeps later entries but the log ends at {last_index}")]
    MarkerBeyondLog {
        index: LogIndex,
        last_index: LogIndex,
    },
    #[error(
        "snapshot marker at {index} says term {marker_term}, the log has term {log_term} there"
    )]
    MarkerTermMismatch {
        index: LogIndex,
        marker_term: Term,
        log_term: Term,
    },
}
