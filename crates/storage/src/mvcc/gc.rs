//! Segment garbage collection: how space freed by compaction (and by overwritten leases and
//! commit records) is reused without a blocking defragment. A sealed segment whose records are
//! mostly garbage is read front to back, in bounded steps that ride along with writes; the
//! records the state still refers to are copied, byte for byte, into the batch being written to
//! the head, and the index is pointed at the copies. Once every record is handled the segment is
//! retired, and the next flush deletes it after the copies are durable.
//!
//! One kind of garbage must sometimes be kept: a tombstone (of a key, or of a lease) that
//! compaction dropped still hides the older records of its key that are on disk in other
//! segments. Were it dropped first, the next open would find those older records and bring the
//! key back. So a dead tombstone is copied forward while another segment may hold an older record
//! of its owner ([`State::older_record_elsewhere`]), and dropped once none does.

use super::apply::Batch;
use super::error::MvccError;
use super::index::{key_hash, lease_hash, State};
use super::layout::{decode_record, Record, RECORD_BYTES_MAX, RECORD_HEADER_BYTES};
use super::segments::{self, Location, SegmentId};
use bytes::Bytes;
use std::os::unix::fs::FileExt;

/// Bytes of a victim read at once.
const READ_CHUNK_BYTES: u64 = 1024 * 1024;

/// A segment being collected, and how far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Collecting {
    pub victim: SegmentId,
    pub offset: u64,
}

/// When to collect.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GcPolicy {
    /// Collect while the garbage in sealed segments is above this share of the live bytes.
    pub garbage_ratio_max: f64,
    /// Below this much garbage, never collect (a tiny store is not worth the copying).
    pub garbage_bytes_min: u64,
}

impl GcPolicy {
    /// The sealed segment to collect next, if the garbage is over the policy's bound: the one
    /// with the most garbage.
    pub fn choose(&self, state: &State, head: SegmentId) -> Option<SegmentId> {
        let sealed = || {
            state
                .segments
                .iter()
                .filter(move |(&id, segment)| id != head && !segment.retired)
        };
        let garbage: u64 = sealed().map(|(_, segment)| segment.garbage_bytes()).sum();
        let live = state.live_bytes();
        if garbage < self.garbage_bytes_min
            || (garbage as f64) <= self.garbage_ratio_max * live as f64
        {
            return None;
        }
        sealed()
            .filter(|(_, segment)| segment.garbage_bytes() > 0)
            .max_by_key(|(&id, segment)| (segment.garbage_bytes(), std::cmp::Reverse(id)))
            .map(|(&id, _)| id)
    }
}

/// Handles records of the victim from `collecting.offset` until about `budget_bytes` of it are
/// done; returns where to go on, or `None` once the victim is retired.
pub(crate) fn step(
    state: &mut State,
    batch: &mut Batch,
    collecting: Collecting,
    budget_bytes: u64,
) -> Result<Option<Collecting>, MvccError> {
    let victim = collecting.victim;
    let (file, end) = {
        let segment = state
            .segments
            .get(&victim)
            .expect("a segment being collected exists");
        (segment.file.clone(), segment.bytes)
    };
    assert_ne!(victim, batch.head, "the head segment is never collected");
    let mut offset = collecting.offset;
    let stop_at = offset.saturating_add(budget_bytes).min(end);
    while offset < stop_at {
        let chunk = read_at(&file, offset, READ_CHUNK_BYTES.min(end - offset), victim)?;
        let mut at = 0usize;
        while offset + (at as u64) < stop_at && chunk.len() - at >= RECORD_HEADER_BYTES {
            let length = u32::from_le_bytes(chunk[at..at + 4].try_into().expect("4 bytes"));
            let size = RECORD_HEADER_BYTES + length as usize;
            let record_offset = offset + at as u64;
            if size > RECORD_BYTES_MAX || record_offset + size as u64 > end {
                return Err(corrupt(
                    victim,
                    record_offset,
                    "a record runs past the segment",
                ));
            }
            if at + size > chunk.len() {
                if at > 0 {
                    break; // the next chunk starts with this record
                }
                // One record larger than a chunk: read it whole.
                let whole = read_at(&file, record_offset, size as u64, victim)?;
                handle(state, batch, victim, record_offset, &whole)?;
                at = size;
                break;
            }
            handle(
                state,
                batch,
                victim,
                record_offset,
                &chunk.slice(at..at + size),
            )?;
            at += size;
        }
        if at == 0 {
            return Err(corrupt(
                victim,
                offset,
                "the segment ends inside a record header",
            ));
        }
        offset += at as u64;
    }
    if offset < end {
        return Ok(Some(Collecting { victim, offset }));
    }
    let segment = state.segments.get_mut(&victim).expect("exists");
    assert_eq!(
        segment.live_bytes, 0,
        "every record the state refers to was copied out of segment {victim}"
    );
    segment.retired = true;
    Ok(None)
}

fn corrupt(segment: SegmentId, offset: u64, what: &str) -> MvccError {
    MvccError::Corrupt(format!(
        "segment {segment} at offset {offset}: {what} (found while collecting it)"
    ))
}

fn read_at(
    file: &std::fs::File,
    offset: u64,
    len: u64,
    segment: SegmentId,
) -> Result<Bytes, MvccError> {
    let mut buffer = vec![0u8; len as usize];
    file.read_exact_at(&mut buffer, offset).map_err(|e| {
        MvccError::Storage(format!(
            "cannot read {len} bytes at offset {offset} of segment {segment}: {e}"
        ))
    })?;
    Ok(Bytes::from(buffer))
}

/// One record of the victim: copied if the state refers to it or if it is a tombstone that still
/// hides older records elsewhere; dropped otherwise.
fn handle(
    state: &mut State,
    batch: &mut Batch,
    victim: SegmentId,
    offset: u64,
    bytes: &Bytes,
) -> Result<(), MvccError> {
    let here = Location {
        segment: victim,
        offset,
        len: bytes.len() as u32,
    };
    let (record, _) =
        decode_record(bytes).map_err(|defect| corrupt(victim, offset, &defect.to_string()))?;
    let copy = |batch: &mut Batch| {
        batch.append(|out| {
            out.extend_from_slice(bytes);
            bytes.len()
        })
    };
    match record {
        Record::SegmentHeader { .. } => {}
        Record::Commit(_) => {
            // The latest one is at the end of the segment sealed last, until this write's own
            // commit record supersedes it: move it like any live record.
            if state.commit_location == Some(here) {
                let moved = copy(batch);
                state.commit_location = Some(moved);
                state.forget(here);
                state.remember(moved);
            }
        }
        Record::Version(version) => {
            let owner = key_hash(&version.key);
            let live = state.keys.get_mut(&version.key[..]).and_then(|versions| {
                versions
                    .iter_mut()
                    .find(|v| v.at == version.at && v.location == here)
            });
            if let Some(live) = live {
                let moved = copy(batch);
                live.location = moved;
                state.forget(here);
                state.remember(moved);
                note(state, moved, owner, version.at);
            } else if version.put.is_none()
                && state.older_record_elsewhere(owner, version.at, victim)
            {
                let moved = copy(batch);
                note(state, moved, owner, version.at);
            }
        }
        Record::Lease {
            id, change_index, ..
        } => {
            let live = state
                .leases
                .get_mut(&id)
                .filter(|lease| lease.location == here);
            if let Some(lease) = live {
                let moved = copy(batch);
                lease.location = moved;
                state.forget(here);
                state.remember(moved);
                note(state, moved, lease_hash(id), (change_index, 0));
            }
        }
        Record::LeaseGone { id, change_index } => {
            let owner = lease_hash(id);
            if state.older_record_elsewhere(owner, (change_index, 0), victim) {
                let moved = copy(batch);
                note(state, moved, owner, (change_index, 0));
            }
        }
    }
    Ok(())
}

fn note(state: &mut State, location: Location, owner: u64, at: (u64, u32)) {
    state
        .segments
        .get_mut(&location.segment)
        .expect("the head segment exists")
        .note_owner(owner, at);
}

/// Deletes a retired segment's file (its copies are durable: the caller synced the head).
pub(crate) fn delete_retired(dir: &std::path::Path, state: &mut State) -> Result<usize, MvccError> {
    let retired: Vec<SegmentId> = state
        .segments
        .iter()
        .filter(|(_, segment)| segment.retired)
        .map(|(&id, _)| id)
        .collect();
    for &id in &retired {
        let path = segments::segment_path(dir, id);
        std::fs::remove_file(&path).map_err(|e| segments::io_error("cannot delete", &path, e))?;
        state.segments.remove(&id);
    }
    if !retired.is_empty() {
        segments::sync_dir(dir)?;
    }
    Ok(retired.len())
}
