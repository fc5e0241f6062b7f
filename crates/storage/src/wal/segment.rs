//! Segment files: names, creation (temporary file, preallocation, rename, directory sync),
//! listing, and scanning a segment's bytes record by record.
//!
//! Owns the file-system side of the layout in docs/design/storage.md, "Files". Never interprets
//! what a record means for the log: that is `replay`.

use crate::wal::format::{self, Decoded, Record};
use crate::wal::{Defect, WalError};
use ballot_core::LogIndex;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const SEGMENT_SUFFIX: &str = ".wal";
const TEMPORARY_SUFFIX: &str = ".wal.tmp";

/// What a segment's file name says: `<segment number>-<first index>.wal`, 20 digits each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SegmentName {
    pub number: u64,
    pub first_index: LogIndex,
}

impl SegmentName {
    pub fn file_name(&self) -> String {
        format!(
            "{:020}-{:020}{SEGMENT_SUFFIX}",
            self.number, self.first_index
        )
    }

    pub fn parse(file_name: &str) -> Option<Self> {
        let stem = file_name.strip_suffix(SEGMENT_SUFFIX)?;
        let (number, first_index) = stem.split_once('-')?;
        let digits = |text: &str| text.len() == 20 && text.bytes().all(|b| b.is_ascii_digit());
        if !digits(number) || !digits(first_index) {
            return None;
        }
        Some(Self {
            number: number.parse().ok()?,
            first_index: first_index.parse().ok()?,
        })
    }
}

pub fn io_error<'a>(
    operation: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> WalError + 'a {
    move |source| WalError::Io {
        operation,
        path: path.to_path_buf(),
        source,
    }
}

/// Makes creates, renames and deletes in `dir` durable (assumption 5).
pub fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(io_error("sync directory", dir))
}

/// The segments in `dir`, oldest first. Deletes leftover temporary files (a segment whose creation
/// did not finish was never part of the log). Any other `.wal` file whose name does not parse is
/// an error; files with other suffixes are not ours and are left alone.
pub fn list_segments(dir: &Path) -> Result<Vec<SegmentName>, WalError> {
    let mut names = Vec::new();
    let mut removed_temporary = false;
    for item in fs::read_dir(dir).map_err(io_error("list", dir))? {
        let item = item.map_err(io_error("list", dir))?;
        let path = item.path();
        let Some(file_name) = path.file_name().and_then(|name| name.to_str()) else {
            continue;
        };
        if file_name.ends_with(TEMPORARY_SUFFIX) {
            fs::remove_file(&path).map_err(io_error("remove leftover", &path))?;
            removed_temporary = true;
        } else if file_name.ends_with(SEGMENT_SUFFIX) {
            let name = SegmentName::parse(file_name)
                .ok_or(WalError::UnexpectedFile { path: path.clone() })?;
            names.push(name);
        }
    }
    if removed_temporary {
        sync_dir(dir)?;
    }
    names.sort();
    Ok(names)
}

/// Reserves `bytes` for the file with real blocks (`fallocate`), or at least extends it with
/// zeros (`set_len`) where the file system cannot. Never shrinks.
pub fn preallocate(file: &File, path: &Path, bytes: u64) -> Result<(), WalError> {
    let length = file.metadata().map_err(io_error("stat", path))?.len();
    if length >= bytes {
        return Ok(());
    }
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, bytes) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::NOSYS) => {
            file.set_len(bytes).map_err(io_error("extend", path))
        }
        Err(errno) => Err(io_error("fallocate", path)(errno.into())),
    }
}

/// Creates a segment holding `preamble`: written to a temporary file, preallocated, synced,
/// renamed into place, and the directory synced. Returns the open file, ready for appends.
pub fn create_segment(
    dir: &Path,
    name: SegmentName,
    preamble: &[u8],
    segment_size_bytes: u64,
) -> Result<(File, PathBuf), WalError> {
    let path = dir.join(name.file_name());
    let temporary = dir.join(format!("{}.tmp", name.file_name()));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&temporary)
        .map_err(io_error("create", &temporary))?;
    preallocate(&file, &temporary, segment_size_bytes)?;
    file.write_all_at(preamble, 0)
        .map_err(io_error("write", &temporary))?;
    file.sync_all().map_err(io_error("sync", &temporary))?;
    fs::rename(&temporary, &path).map_err(io_error("rename", &temporary))?;
    sync_dir(dir)?;
    Ok((file, path))
}

/// How a scan of a segment's bytes ended.
#[derive(Debug, PartialEq, Eq)]
pub enum ScanEnd {
    /// Every byte up to `end` is records; after it, nothing or zeros to the end of the file.
    Clean { end: u64 },
    /// The bytes at `offset` are not a valid record.
    Defect { offset: u64, defect: Defect },
}

/// Decodes the records of a segment's bytes in order, handing each to `visit` with its offset.
/// Stops at the first defect or at the zeroed end; an error from `visit` stops it at once.
pub fn scan(
    bytes: &[u8],
    record_bytes_max: usize,
    mut visit: impl FnMut(u64, usize, Record) -> Result<(), WalError>,
) -> Result<ScanEnd, WalError> {
    let mut offset = 0usize;
    loop {
        match format::decode_record(&bytes[offset..], record_bytes_max) {
            Ok(Decoded::End) => return Ok(ScanEnd::Clean { end: offset as u64 }),
            Ok(Decoded::Record(record, size)) => {
                visit(offset as u64, size, record)?;
                offset += size;
            }
            Err(defect) => {
                return Ok(ScanEnd::Defect {
                    offset: offset as u64,
                    defect,
                })
            }
        }
    }
}

/// The first offset after `from` at which a valid record starts, if any: evidence that a defect is
/// not a torn tail. Tries every byte offset (the defect may have corrupted a length, so record
/// boundaries after it are unknown). Runs only on the error path of open.
pub fn valid_record_after(bytes: &[u8], from: u64, record_bytes_max: usize) -> Option<u64> {
    let header = format::RECORD_HEADER_BYTES;
    let candidates =
        (from as usize..bytes.len()).take_while(|offset| offset + header <= bytes.len());
    candidates.into_iter().find_map(|offset| {
        // Cheap filters first: a known type byte and a length that fits.
        let record_type = bytes[offset + 8];
        if !(1..=format::TYPE_MAX).contains(&record_type) {
            return None;
        }
        let length = u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"));
        if length as usize + header > (bytes.len() - offset).min(record_bytes_max) {
            return None;
        }
        match format::decode_record(&bytes[offset..], record_bytes_max) {
            Ok(Decoded::Record(..)) => Some(offset as u64),
            _ => None,
        }
    })
}

/// Bytes from `offset` to the last non-zero byte: what a tail repair discards.
pub fn nonzero_bytes_after(bytes: &[u8], offset: u64) -> u64 {
    let tail = &bytes[offset as usize..];
    tail.iter()
        .rposition(|&byte| byte != 0)
        .map_or(0, |last| last as u64 + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_in_log_order_and_round_trip() {
        let name = SegmentName {
            number: 12,
            first_index: 4077,
        };
        assert_eq!(
            name.file_name(),
            "00000000000000000012-00000000000000004077.wal"
        );
        assert_eq!(SegmentName::parse(&name.file_name()), Some(name));
        assert_eq!(SegmentName::parse("12-4077.wal"), None);
        assert_eq!(
            SegmentName::parse("00000000000000000012-0000000000000000407x.wal"),
            None
        );
        let later = SegmentName {
            number: 100,
            first_index: 5,
        };
        assert!(name.file_name() < later.file_name());
    }

    #[test]
    fn a_valid_record_is_found_after_garbage() {
        let mut bytes = vec![0xAB; 37];
        let start = bytes.len() as u64;
        format::encode_hard_state(&Default::default(), &mut bytes);
        bytes.extend_from_slice(&[0; 100]);
        assert_eq!(valid_record_after(&bytes, 1, 1 << 20), Some(start));
        assert_eq!(valid_record_after(&bytes, start + 1, 1 << 20), None);
        assert_eq!(nonzero_bytes_after(&[0, 1, 0, 2, 0, 0], 1), 3);
    }
}
