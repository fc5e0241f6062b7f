//! State machine snapshots on disk: written atomically (temporary file, `fsync`, rename, directory
//! `fsync`), checksummed, the newest `retain` kept.
//!
//! Mirrors `docs/design/storage.md`, "Snapshots":
//!
//! ```text
//! offset      size  field
//! 0           8     magic "BALLOTSN"
//! 8           4     format version, u32 LE (1)
//! 12          4     meta length m, u32 LE (at most META_BYTES_MAX)
//! 16          8     data length d, u64 LE
//! 24          m     meta: last included index (u64), term (u64),
//!                         voter count (u32), voter ids (u64 each),
//!                         learner count (u32), learner ids (u64 each)
//! 24 + m      d     data (opaque state machine image)
//! 24 + m + d  4     CRC32C of every byte before it, u32 LE
//! ```
//!
//! Files are named `<last included index>-<last included term>.snap`, 20 digits each.
//!
//! Never does: fall back to an older snapshot when the newest is damaged (that would silently roll
//! the state machine back; [`SnapshotStore::list`] and [`SnapshotStore::load`] let an operator's
//! tool choose), or delete an old snapshot before the new one is durable.

use crate::dir_lock::create_dir_durably;
use ballot_core::{LogPosition, Membership, NodeId, Snapshot, SnapshotMeta};
use bytes::Bytes;
use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use thiserror::Error;

pub const SNAPSHOT_MAGIC: [u8; 8] = *b"BALLOTSN";
pub const SNAPSHOT_FORMAT_VERSION: u32 = 1;
/// Magic, version, meta length, data length.
pub const SNAPSHOT_HEADER_BYTES: usize = 24;
pub const SNAPSHOT_CHECKSUM_BYTES: usize = 4;
/// Bound on the metadata (a membership of about eight million nodes): a larger length is damage.
pub const META_BYTES_MAX: usize = 64 * 1024 * 1024;

const SNAPSHOT_SUFFIX: &str = ".snap";
const TEMPORARY_SUFFIX: &str = ".snap.tmp";

#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error("snapshot store: {operation} {path}: {source}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "snapshot {file} is corrupt ({defect}); refusing it (list the snapshots kept to choose \
         another)"
    )]
    Corrupt {
        file: PathBuf,
        defect: SnapshotDefect,
    },
    #[error(
        "snapshot through {offered} is older than the newest kept, through {latest}; nothing was \
         written"
    )]
    Stale {
        offered: LogPosition,
        latest: LogPosition,
    },
    #[error("snapshot metadata of {meta_bytes} bytes exceeds the limit of {meta_bytes_max} bytes")]
    MetaTooLarge {
        meta_bytes: usize,
        meta_bytes_max: usize,
    },
    #[error("snapshot store retain = {retain} is invalid: at least 1 snapshot must be kept")]
    InvalidRetain { retain: usize },
    #[error(
        "snapshot directory holds {path}, whose name is not a snapshot's (<index>-<term>.snap)"
    )]
    UnexpectedFile { path: PathBuf },
}

/// What is wrong with a snapshot file.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SnapshotDefect {
    #[error("{file_bytes} bytes, shorter than a header and checksum")]
    TooShort { file_bytes: u64 },
    #[error("magic is not \"BALLOTSN\"")]
    BadMagic,
    #[error("format version {found} is not supported (this build reads version {supported})")]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error("meta length {meta_bytes} exceeds the limit of {meta_bytes_max} bytes")]
    MetaTooLarge {
        meta_bytes: usize,
        meta_bytes_max: usize,
    },
    #[error("file is {file_bytes} bytes, its header says {expected_bytes}")]
    LengthMismatch {
        file_bytes: u64,
        expected_bytes: u128,
    },
    #[error("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    ChecksumMismatch { stored: u32, computed: u32 },
    #[error("bad metadata: {reason}")]
    BadMeta { reason: String },
    #[error("metadata says through {in_meta}, the file name says {in_name}")]
    NameMismatch {
        in_meta: LogPosition,
        in_name: LogPosition,
    },
}

/// A snapshot file kept in the store, as listed without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub path: PathBuf,
    /// From the file name; verified against the contents by [`SnapshotStore::load`].
    pub last_included: LogPosition,
    pub file_bytes: u64,
}

/// The snapshots of one data directory (`<data-dir>/snap`).
#[derive(Debug)]
pub struct SnapshotStore {
    dir: PathBuf,
    retain: usize,
    /// One save at a time: the staleness check and the pruning of old files must not
    /// interleave with another save's (the server saves compaction markers on a thread while
    /// its loop may save an image received from a leader).
    saving: std::sync::Mutex<()>,
}

impl SnapshotStore {
    /// Opens (creating it if needed) the store in `dir`, keeping the newest `retain` snapshots.
    /// Deletes temporary files left by a save that did not finish.
    pub fn open(dir: impl AsRef<Path>, retain: usize) -> Result<SnapshotStore, SnapshotError> {
        if retain == 0 {
            return Err(SnapshotError::InvalidRetain { retain });
        }
        let dir = dir.as_ref().to_path_buf();
        create_dir_durably(&dir).map_err(io_error("create directory", &dir))?;
        for item in fs::read_dir(&dir).map_err(io_error("list", &dir))? {
            let path = item.map_err(io_error("list", &dir))?.path();
            if path.to_str().is_some_and(|p| p.ends_with(TEMPORARY_SUFFIX)) {
                fs::remove_file(&path).map_err(io_error("remove leftover", &path))?;
            }
        }
        // Also makes durable a rename that a save killed before its directory sync left visible
        // (in the page cache only): what `latest` returns from now on survives a power loss.
        sync_dir(&dir)?;
        Ok(SnapshotStore {
            dir,
            retain,
            saving: std::sync::Mutex::new(()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `snapshot` durably and atomically, then deletes the oldest snapshots beyond
    /// `retain`. Refuses (writing nothing) a snapshot older than the newest kept.
    pub fn save(&self, snapshot: &Snapshot) -> Result<PathBuf, SnapshotError> {
        // A panic while holding it left no state behind that the next save must not see.
        let _one_at_a_time = self
            .saving
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let offered = snapshot.meta.last_included;
        if let Some(latest) = self.list()?.pop() {
            if offered < latest.last_included {
                return Err(SnapshotError::Stale {
                    offered,
                    latest: latest.last_included,
                });
            }
        }
        let meta = encode_meta(&snapshot.meta);
        if meta.len() > META_BYTES_MAX {
            return Err(SnapshotError::MetaTooLarge {
                meta_bytes: meta.len(),
                meta_bytes_max: META_BYTES_MAX,
            });
        }
        let name = file_name(offered);
        let path = self.dir.join(&name);
        let temporary = self.dir.join(format!("{name}.tmp"));
        write_file(&temporary, &meta, &snapshot.data)?;
        fs::rename(&temporary, &path).map_err(io_error("rename", &temporary))?;
        sync_dir(&self.dir)?;
        self.prune()?;
        Ok(path)
    }

    /// The newest snapshot, verified, or `None` if there is none. A damaged newest snapshot is an
    /// error naming the file: never a silent fallback to an older one.
    pub fn latest(&self) -> Result<Option<Snapshot>, SnapshotError> {
        match self.list()?.pop() {
            None => Ok(None),
            Some(info) => self.load(&info.path).map(Some),
        }
    }

    /// Every snapshot kept, oldest first, from the file names (not verified).
    pub fn list(&self) -> Result<Vec<SnapshotInfo>, SnapshotError> {
        let mut infos = Vec::new();
        for item in fs::read_dir(&self.dir).map_err(io_error("list", &self.dir))? {
            let item = item.map_err(io_error("list", &self.dir))?;
            let path = item.path();
            let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if !file_name.ends_with(SNAPSHOT_SUFFIX) {
                continue;
            }
            let last_included = parse_file_name(file_name)
                .ok_or_else(|| SnapshotError::UnexpectedFile { path: path.clone() })?;
            let file_bytes = item.metadata().map_err(io_error("stat", &path))?.len();
            infos.push(SnapshotInfo {
                path,
                last_included,
                file_bytes,
            });
        }
        infos.sort_by_key(|info| info.last_included);
        Ok(infos)
    }

    /// Reads and verifies one snapshot file (length, checksum, magic, version, metadata, name).
    pub fn load(&self, path: &Path) -> Result<Snapshot, SnapshotError> {
        let bytes = fs::read(path).map_err(io_error("read", path))?;
        let corrupt = |defect| SnapshotError::Corrupt {
            file: path.to_path_buf(),
            defect,
        };
        let snapshot = decode(&bytes).map_err(corrupt)?;
        let in_name = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(parse_file_name);
        if let Some(in_name) = in_name {
            if in_name != snapshot.meta.last_included {
                return Err(corrupt(SnapshotDefect::NameMismatch {
                    in_meta: snapshot.meta.last_included,
                    in_name,
                }));
            }
        }
        Ok(snapshot)
    }

    fn prune(&self) -> Result<(), SnapshotError> {
        let infos = self.list()?;
        let excess = infos.len().saturating_sub(self.retain);
        for info in &infos[..excess] {
            fs::remove_file(&info.path).map_err(io_error("delete", &info.path))?;
        }
        if excess > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

/// The `snap/` directory is the server's snapshot store.
impl ballot_core::SnapshotStore for SnapshotStore {
    type Error = SnapshotError;

    fn save(&mut self, snapshot: &Snapshot) -> Result<(), SnapshotError> {
        SnapshotStore::save(self, snapshot).map(|_| ())
    }

    fn latest(&self) -> Result<Option<Snapshot>, SnapshotError> {
        SnapshotStore::latest(self)
    }
}

fn io_error<'a>(
    operation: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::Io {
        operation,
        path: path.to_path_buf(),
        source,
    }
}

fn sync_dir(dir: &Path) -> Result<(), SnapshotError> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(io_error("sync directory", dir))
}

fn file_name(position: LogPosition) -> String {
    format!(
        "{:020}-{:020}{SNAPSHOT_SUFFIX}",
        position.index, position.term
    )
}

fn parse_file_name(file_name: &str) -> Option<LogPosition> {
    let stem = file_name.strip_suffix(SNAPSHOT_SUFFIX)?;
    let (index, term) = stem.split_once('-')?;
    let digits = |text: &str| text.len() == 20 && text.bytes().all(|b| b.is_ascii_digit());
    if !digits(index) || !digits(term) {
        return None;
    }
    Some(LogPosition::new(index.parse().ok()?, term.parse().ok()?))
}

/// Header, meta, data and checksum to `path`, then `fsync`.
fn write_file(path: &Path, meta: &[u8], data: &[u8]) -> Result<(), SnapshotError> {
    let mut header = Vec::with_capacity(SNAPSHOT_HEADER_BYTES);
    header.extend_from_slice(&SNAPSHOT_MAGIC);
    header.extend_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
    header.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    header.extend_from_slice(&(data.len() as u64).to_le_bytes());
    let mut checksum = crc32c::crc32c(&header);
    checksum = crc32c::crc32c_append(checksum, meta);
    checksum = crc32c::crc32c_append(checksum, data);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io_error("create", path))?;
    file.write_all(&header)
        .and_then(|()| file.write_all(meta))
        .and_then(|()| file.write_all(data))
        .and_then(|()| file.write_all(&checksum.to_le_bytes()))
        .and_then(|()| file.sync_all())
        .map_err(io_error("write", path))
}

fn encode_meta(meta: &SnapshotMeta) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&meta.last_included.index.to_le_bytes());
    out.extend_from_slice(&meta.last_included.term.to_le_bytes());
    for set in [&meta.membership.voters, &meta.membership.learners] {
        out.extend_from_slice(&(set.len() as u32).to_le_bytes());
        for id in set {
            out.extend_from_slice(&id.to_le_bytes());
        }
    }
    out
}

fn decode(bytes: &[u8]) -> Result<Snapshot, SnapshotDefect> {
    let file_bytes = bytes.len() as u64;
    if bytes.len() < SNAPSHOT_HEADER_BYTES + SNAPSHOT_CHECKSUM_BYTES {
        return Err(SnapshotDefect::TooShort { file_bytes });
    }
    if bytes[0..8] != SNAPSHOT_MAGIC {
        return Err(SnapshotDefect::BadMagic);
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != SNAPSHOT_FORMAT_VERSION {
        return Err(SnapshotDefect::UnsupportedVersion {
            found: version,
            supported: SNAPSHOT_FORMAT_VERSION,
        });
    }
    let meta_bytes = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes")) as usize;
    let data_bytes = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    if meta_bytes > META_BYTES_MAX {
        return Err(SnapshotDefect::MetaTooLarge {
            meta_bytes,
            meta_bytes_max: META_BYTES_MAX,
        });
    }
    let expected_bytes = (SNAPSHOT_HEADER_BYTES + meta_bytes + SNAPSHOT_CHECKSUM_BYTES) as u128
        + u128::from(data_bytes);
    if expected_bytes != u128::from(file_bytes) {
        return Err(SnapshotDefect::LengthMismatch {
            file_bytes,
            expected_bytes,
        });
    }
    let (body, stored) = bytes.split_at(bytes.len() - SNAPSHOT_CHECKSUM_BYTES);
    let stored = u32::from_le_bytes(stored.try_into().expect("4 bytes"));
    let computed = crc32c::crc32c(body);
    if stored != computed {
        return Err(SnapshotDefect::ChecksumMismatch { stored, computed });
    }
    let meta_end = SNAPSHOT_HEADER_BYTES + meta_bytes;
    let meta = decode_meta(&body[SNAPSHOT_HEADER_BYTES..meta_end])
        .map_err(|reason| SnapshotDefect::BadMeta { reason })?;
    Ok(Snapshot {
        meta,
        data: Bytes::copy_from_slice(&body[meta_end..]),
    })
}

fn decode_meta(bytes: &[u8]) -> Result<SnapshotMeta, String> {
    let mut reader = MetaReader { bytes };
    let index = u64::from_le_bytes(reader.take()?);
    let term = u64::from_le_bytes(reader.take()?);
    let mut sets: [BTreeSet<NodeId>; 2] = Default::default();
    for set in &mut sets {
        let count = u32::from_le_bytes(reader.take()?);
        for _ in 0..count {
            set.insert(u64::from_le_bytes(reader.take()?));
        }
    }
    if !reader.bytes.is_empty() {
        return Err(format!("{} bytes after the learners", reader.bytes.len()));
    }
    let [voters, learners] = sets;
    Ok(SnapshotMeta {
        last_included: LogPosition::new(index, term),
        membership: Membership { voters, learners },
    })
}

struct MetaReader<'a> {
    bytes: &'a [u8],
}

impl MetaReader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        if self.bytes.len() < N {
            return Err(format!("{} bytes left, {N} needed", self.bytes.len()));
        }
        let (head, tail) = self.bytes.split_at(N);
        self.bytes = tail;
        Ok(head.try_into().expect("N bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(index: u64, term: u64, data: &'static [u8]) -> Snapshot {
        let mut membership = Membership::with_voters([1, 2, 3]);
        membership.learners.insert(7);
        Snapshot {
            meta: SnapshotMeta {
                last_included: LogPosition::new(index, term),
                membership,
            },
            data: Bytes::from_static(data),
        }
    }

    #[test]
    fn saved_snapshots_round_trip_and_only_the_newest_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path(), 2).unwrap();
        assert_eq!(store.latest().unwrap(), None);
        for index in [10, 20, 30] {
            store.save(&snapshot(index, 2, b"state")).unwrap();
        }
        let kept: Vec<u64> = store
            .list()
            .unwrap()
            .iter()
            .map(|info| info.last_included.index)
            .collect();
        assert_eq!(kept, vec![20, 30]);
        assert_eq!(store.latest().unwrap(), Some(snapshot(30, 2, b"state")));
    }

    #[test]
    fn an_older_snapshot_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path(), 3).unwrap();
        store.save(&snapshot(10, 2, b"new")).unwrap();
        let error = store.save(&snapshot(9, 2, b"old")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "snapshot through 9@t2 is older than the newest kept, through 10@t2; nothing was written"
        );
        assert_eq!(store.list().unwrap().len(), 1);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn layout_is_header_meta_data_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path(), 1).unwrap();
        let path = store.save(&snapshot(5, 1, b"abc")).unwrap();
        assert_eq!(
            path.file_name().unwrap(),
            "00000000000000000005-00000000000000000001.snap"
        );
        let bytes = fs::read(&path).unwrap();
        let meta_bytes = 8 + 8 + 4 + 3 * 8 + 4 + 8;
        assert_eq!(&bytes[0..8], b"BALLOTSN");
        assert_eq!(&bytes[12..16], &(meta_bytes as u32).to_le_bytes());
        assert_eq!(&bytes[16..24], &3u64.to_le_bytes());
        assert_eq!(bytes.len(), 24 + meta_bytes + 3 + 4);
        let (body, checksum) = bytes.split_at(bytes.len() - 4);
        assert_eq!(checksum, crc32c::crc32c(body).to_le_bytes());
    }

    #[test]
    fn retain_must_keep_at_least_one() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            SnapshotStore::open(dir.path(), 0),
            Err(SnapshotError::InvalidRetain { retain: 0 })
        ));
    }
}
