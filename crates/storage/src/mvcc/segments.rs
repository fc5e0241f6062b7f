//! The files of the state directory: one append-only segment file per number, named
//! `<segment number, 20 digits>.seg`, only the last one (the head) written to. Creating a segment
//! is atomic (a synced `.tmp` renamed into place, then the directory synced), so a segment that
//! exists always starts with its header. Reads are positioned reads of whole records.

use super::error::MvccError;
use super::layout::{self, Defect, Record, RECORD_HEADER_BYTES};
use bytes::Bytes;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub(crate) type SegmentId = u32;

/// Where a record is: the segment, its offset there, and its size (header included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Location {
    pub segment: SegmentId,
    pub len: u32,
    pub offset: u64,
}

const SUFFIX: &str = ".seg";
const TMP_SUFFIX: &str = ".seg.tmp";

pub(crate) fn io_error(what: &str, path: &Path, error: std::io::Error) -> MvccError {
    MvccError::Storage(format!("{what} {}: {error}", path.display()))
}

pub(crate) fn segment_path(dir: &Path, segment: SegmentId) -> PathBuf {
    dir.join(format!("{segment:020}{SUFFIX}"))
}

/// Makes creates, renames and deletes in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), MvccError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("cannot sync directory", dir, e))
}

/// Creates `dir` (and makes its entry in the parent durable) if it does not exist.
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), MvccError> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| io_error("cannot create", dir, e))?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    Ok(())
}

/// The segment numbers in `dir`, ascending. Leftover `.tmp` files (a creation that did not finish)
/// are deleted; any other file that is not a segment is an error, so nothing is silently ignored.
pub(crate) fn list(dir: &Path) -> Result<Vec<SegmentId>, MvccError> {
    let mut segments = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| io_error("cannot list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_error("cannot list", dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(TMP_SUFFIX) {
            std::fs::remove_file(entry.path())
                .map_err(|e| io_error("cannot delete", &entry.path(), e))?;
            continue;
        }
        let number = name
            .strip_suffix(SUFFIX)
            .filter(|digits| digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|digits| digits.parse::<SegmentId>().ok());
        match number {
            Some(number) => segments.push(number),
            None => {
                return Err(MvccError::Corrupt(format!(
                    "unexpected file {} in the state directory {}",
                    name,
                    dir.display()
                )))
            }
        }
    }
    segments.sort_unstable();
    Ok(segments)
}

/// Creates segment `segment` holding only its header, durably; returns it open for appending and
/// its length.
pub(crate) fn create(dir: &Path, segment: SegmentId) -> Result<(File, u64), MvccError> {
    let path = segment_path(dir, segment);
    let tmp = path.with_extension("seg.tmp");
    let mut header = Vec::new();
    layout::encode_segment_header(u64::from(segment), &mut header);
    {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| io_error("cannot create", &tmp, e))?;
        file.write_all_at(&header, 0)
            .and_then(|()| file.sync_all())
            .map_err(|e| io_error("cannot write", &tmp, e))?;
    }
    std::fs::rename(&tmp, &path).map_err(|e| io_error("cannot rename", &tmp, e))?;
    sync_dir(dir)?;
    let file = open(&path)?;
    Ok((file, header.len() as u64))
}

/// Opens an existing segment for reading and appending.
pub(crate) fn open(path: &Path) -> Result<File, MvccError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| io_error("cannot open", path, e))
}

/// Reads the whole record at `location`.
pub(crate) fn read_record(file: &File, location: Location) -> Result<Bytes, MvccError> {
    let mut buffer = vec![0u8; location.len as usize];
    file.read_exact_at(&mut buffer, location.offset)
        .map_err(|e| {
            MvccError::Storage(format!(
                "cannot read {} bytes at offset {} of segment {}: {e}",
                location.len, location.offset, location.segment
            ))
        })?;
    Ok(Bytes::from(buffer))
}

/// A record that [`scan`] found, with its offset and size.
pub(crate) struct Scanned {
    pub record: Record,
    pub offset: u64,
    pub len: u32,
}

/// Where a scan stopped short of the end of the bytes.
#[derive(Debug)]
pub(crate) struct Stop {
    pub offset: u64,
    pub defect: Defect,
}

/// Decodes the records of one segment's bytes in order, from offset 0, until the end or the first
/// defect. The first record must be the header of segment `segment` in our format.
pub(crate) fn scan(
    bytes: &Bytes,
    segment: SegmentId,
    path: &Path,
    mut each: impl FnMut(Scanned) -> Result<(), MvccError>,
) -> Result<Option<Stop>, MvccError> {
    let mut offset = 0usize;
    while offset < bytes.len() {
        let (record, len) = match layout::decode_record(&bytes.slice(offset..)) {
            Ok(decoded) => decoded,
            Err(defect) => {
                return Ok(Some(Stop {
                    offset: offset as u64,
                    defect,
                }))
            }
        };
        match (&record, offset) {
            (
                Record::SegmentHeader {
                    format,
                    segment: number,
                },
                0,
            ) => {
                if *format != layout::FORMAT_VERSION {
                    return Err(MvccError::Corrupt(format!(
                        "{} has format {format}; this build reads format {}",
                        path.display(),
                        layout::FORMAT_VERSION
                    )));
                }
                if *number != u64::from(segment) {
                    return Err(MvccError::Corrupt(format!(
                        "{} says it is segment {number}",
                        path.display()
                    )));
                }
            }
            (_, 0) | (Record::SegmentHeader { .. }, _) => {
                return Err(MvccError::Corrupt(format!(
                "{} at offset {offset}: the segment header must be the first record and only there",
                path.display()
            )))
            }
            _ => {}
        }
        each(Scanned {
            record,
            offset: offset as u64,
            len: len as u32,
        })?;
        offset += len;
    }
    Ok(None)
}

/// Whether any valid record starts after `from` (checked at every byte offset): tells a torn tail
/// (nothing valid follows) from damage in the middle (something does).
pub(crate) fn valid_record_after(bytes: &Bytes, from: u64) -> Option<u64> {
    let first = from as usize + 1;
    (first..bytes.len().saturating_sub(RECORD_HEADER_BYTES - 1))
        .find(|&at| layout::decode_record(&bytes.slice(at..)).is_ok())
        .map(|at| at as u64)
}
