//! Backups: the file `snapshot save` writes, what `snapshot status` reports of it, and
//! `snapshot restore`, which builds a new member's data directory from it.
//!
//! The file is exactly what `Maintenance.Snapshot` streams: the store's snapshot (the MVCC state
//! at one applied index, `ballot_storage::mvcc` "State machine snapshots") framed to a multiple
//! of 512 bytes, then its SHA-256 digest:
//!
//! ```text
//! snapshot | zero bytes | snapshot length u64 (big-endian)      a multiple of 512 bytes
//! sha256 of everything above                                     32 bytes
//! ```
//!
//! (etcd clients check that a download is `512 * n + 32` bytes long, since bbolt files are whole
//! pages; the frame makes ballot's snapshot pass that check.)
//!
//! A restore works as etcd's does: the snapshot's keys, revisions and leases become the state of
//! a new cluster whose members are the `--initial-cluster` given, with a new cluster id. Each
//! new member's directory starts as if its log had been compacted at the snapshot's applied
//! index, with the new membership: every member restored from the same file agrees on that
//! point, and new entries follow it. The directory is built beside the target and renamed into
//! place only when complete and synced, so a failed or interrupted restore leaves nothing behind
//! that a server would start from.

use crate::config::{ClusterState, ConfigError, ServerConfig};
use ballot_core::{LogPosition, Snapshot, SnapshotMeta};
use ballot_storage::dir_lock::DirLock;
use ballot_storage::mvcc::{summarize_snapshot, MvccStore, SnapshotSummary};
use ballot_storage::snapshot_store::SnapshotStore;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Bytes at the end of the framed snapshot that hold its length.
pub const SNAPSHOT_LENGTH_BYTES: usize = 8;
/// etcd clients check that a downloaded snapshot is a whole number of these plus the digest.
pub const SNAPSHOT_ALIGN_BYTES: usize = 512;
const DIGEST_BYTES: usize = 32;
/// The term of the compaction point a restored member starts from: every member restored from
/// one file must agree on it, and any first term will do for a log that starts there.
const RESTORED_TERM: u64 = 1;
/// Records kept in a restored member's `snap/` (as the server keeps them).
const SNAPSHOTS_RETAINED: usize = 3;

/// Why a backup cannot be read or restored. Nothing is written in any of these cases.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not a complete ballot snapshot: truncated, damaged, or something else.
    #[error("{} is not a usable ballot snapshot: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("data-dir {} exists and is not empty; restore into a new directory", path.display())]
    DataDirExists { path: PathBuf },
    #[error("cannot build {}: {reason}", path.display())]
    Storage { path: PathBuf, reason: String },
}

/// The snapshot as sent, and its SHA-256 digest (sent last). See the module documentation.
pub fn snapshot_payload(snapshot: &[u8]) -> (Vec<u8>, [u8; 32]) {
    let framed_len = (snapshot.len() + SNAPSHOT_LENGTH_BYTES).div_ceil(SNAPSHOT_ALIGN_BYTES)
        * SNAPSHOT_ALIGN_BYTES;
    let mut body = Vec::with_capacity(framed_len);
    body.extend_from_slice(snapshot);
    body.resize(framed_len - SNAPSHOT_LENGTH_BYTES, 0);
    body.extend_from_slice(&(snapshot.len() as u64).to_be_bytes());
    let digest = Sha256::digest(&body).into();
    (body, digest)
}

/// The snapshot inside a downloaded payload (framed body and digest), after checking the
/// digest and the frame. The inverse of [`snapshot_payload`].
pub fn snapshot_from_payload(payload: &[u8]) -> Result<&[u8], String> {
    unframe(payload, true)
}

/// As [`snapshot_from_payload`]; `check_digest: false` skips only the SHA-256 comparison (etcd's
/// `--skip-hash-check`): the snapshot's own checksum is still checked by whoever reads it.
fn unframe(payload: &[u8], check_digest: bool) -> Result<&[u8], String> {
    if payload.len() % SNAPSHOT_ALIGN_BYTES != DIGEST_BYTES
        || payload.len() < SNAPSHOT_ALIGN_BYTES + DIGEST_BYTES
    {
        return Err(format!(
            "{} bytes is not a whole number of {SNAPSHOT_ALIGN_BYTES}-byte blocks and a sha256 \
             digest (truncated, or not a snapshot saved from ballot)",
            payload.len()
        ));
    }
    let (body, digest) = payload.split_at(payload.len() - DIGEST_BYTES);
    if check_digest && Sha256::digest(body)[..] != digest[..] {
        return Err("sha256 digest mismatch (the file was damaged after it was saved)".into());
    }
    let (framed, length) = body.split_at(body.len() - SNAPSHOT_LENGTH_BYTES);
    let length = u64::from_be_bytes(length.try_into().expect("8 bytes"));
    match usize::try_from(length) {
        Ok(length) if length <= framed.len() => Ok(&framed[..length]),
        _ => Err(format!(
            "snapshot length {length} exceeds the {} bytes framed",
            framed.len()
        )),
    }
}

/// What `snapshot status` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupStatus {
    pub summary: SnapshotSummary,
    /// The file's size.
    pub total_bytes: u64,
}

/// Reads and checks the whole file (digest, frame, and every record, as a restore would).
pub fn status(path: &Path) -> Result<BackupStatus, BackupError> {
    let payload = read(path)?;
    let (_, summary) = check(path, &payload, true)?;
    Ok(BackupStatus {
        summary,
        total_bytes: payload.len() as u64,
    })
}

/// What `snapshot restore` is told: etcd's restore flags.
#[derive(Debug, Clone)]
pub struct RestoreConfig {
    pub name: String,
    pub data_dir: PathBuf,
    pub initial_cluster: Vec<(String, String)>,
    pub initial_cluster_token: String,
    pub initial_advertise_peer_urls: Vec<String>,
    pub skip_hash_check: bool,
}

/// What a restore built.
#[derive(Debug, Clone)]
pub struct Restored {
    pub summary: SnapshotSummary,
    pub member_id: u64,
    pub cluster_id: u64,
}

/// Builds `config.data_dir` for member `config.name` of a new cluster from the snapshot file.
pub fn restore(path: &Path, config: &RestoreConfig) -> Result<Restored, BackupError> {
    let server = ServerConfig {
        name: config.name.clone(),
        data_dir: config.data_dir.clone(),
        initial_cluster: config.initial_cluster.clone(),
        initial_cluster_state: ClusterState::New,
        initial_cluster_token: config.initial_cluster_token.clone(),
        initial_advertise_peer_urls: config.initial_advertise_peer_urls.clone(),
        ..ServerConfig::default()
    };
    server.validate_bootstrap()?;
    let target = &data_dir_path(&config.data_dir)?;
    if std::fs::read_dir(target).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(BackupError::DataDirExists {
            path: target.clone(),
        });
    }
    let payload = read(path)?;
    let (snapshot, summary) = check(path, &payload, !config.skip_hash_check)?;
    let building = building_path(target);
    let storage = |reason: String| BackupError::Storage {
        path: building.clone(),
        reason,
    };
    if building.exists() {
        // Left by a restore that was interrupted: never started from, safe to start over.
        std::fs::remove_dir_all(&building).map_err(|e| storage(e.to_string()))?;
    }
    let identity = server.bootstrap_identity();
    let built = (|| -> Result<(), String> {
        ballot_storage::dir_lock::create_dir_durably(&building).map_err(|e| e.to_string())?;
        let _lock = DirLock::acquire(&building).map_err(|e| e.to_string())?;
        identity.create(&building).map_err(|e| e.to_string())?;
        let store = MvccStore::open(building.join("state")).map_err(|e| e.to_string())?;
        store.restore(snapshot).map_err(|e| e.to_string())?;
        store.flush().map_err(|e| e.to_string())?;
        if summary.applied_index > 0 {
            // The log starts after the snapshot's index, with the new membership.
            let snapshots = SnapshotStore::open(building.join("snap"), SNAPSHOTS_RETAINED)
                .map_err(|e| e.to_string())?;
            let marker = Snapshot {
                meta: SnapshotMeta {
                    last_included: LogPosition::new(summary.applied_index, RESTORED_TERM),
                    membership: identity.bootstrap.clone(),
                },
                data: bytes::Bytes::new(),
            };
            snapshots.save(&marker).map_err(|e| e.to_string())?;
        }
        Ok(())
    })();
    if let Err(reason) = built {
        let _ = std::fs::remove_dir_all(&building);
        return Err(storage(reason));
    }
    // The target is empty or absent (checked above): an empty one makes way for the rename.
    let placed = (|| {
        if target.exists() {
            std::fs::remove_dir(target)?;
        }
        std::fs::rename(&building, target)
    })();
    if let Err(error) = placed {
        let _ = std::fs::remove_dir_all(&building);
        return Err(storage(error.to_string()));
    }
    ballot_storage::atomic_file::sync_parent(target).map_err(|e| storage(e.to_string()))?;
    Ok(Restored {
        summary,
        member_id: identity.member_id,
        cluster_id: identity.cluster_id,
    })
}

fn read(path: &Path) -> Result<Vec<u8>, BackupError> {
    std::fs::read(path).map_err(|source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The snapshot in `payload` and its summary, every byte checked.
fn check<'a>(
    path: &Path,
    payload: &'a [u8],
    check_digest: bool,
) -> Result<(&'a [u8], SnapshotSummary), BackupError> {
    let invalid = |reason: String| BackupError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let snapshot = unframe(payload, check_digest).map_err(invalid)?;
    let summary = summarize_snapshot(snapshot).map_err(|error| invalid(error.to_string()))?;
    Ok((snapshot, summary))
}

/// The data directory as an absolute path without `.` components or a trailing slash, so that
/// its parent and name are what they look like (`r1/` is `r1`, not a directory inside it).
fn data_dir_path(data_dir: &Path) -> Result<PathBuf, BackupError> {
    let absolute: PathBuf = std::path::absolute(data_dir)
        .map_err(|source| BackupError::Io {
            path: data_dir.to_path_buf(),
            source,
        })?
        .components()
        .collect();
    match absolute.file_name() {
        Some(name) if name != ".." => Ok(absolute),
        _ => Err(BackupError::Config(ConfigError {
            flag: "data-dir",
            reason: format!("{} names no directory to create", data_dir.display()),
        })),
    }
}

/// Where a restore builds the directory before renaming it into place: beside it, in the same
/// parent (so the rename is atomic).
fn building_path(target: &Path) -> PathBuf {
    let mut name = target
        .file_name()
        .expect("checked by data_dir_path")
        .to_owned();
    name.push(".restoring");
    target.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_passes_the_etcd_clients_size_check_and_round_trips() {
        for len in [0, 1, 503, 504, 505, 511, 512, 513, 70_000] {
            let snapshot: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let (body, digest) = snapshot_payload(&snapshot);
            let mut payload = body.clone();
            payload.extend_from_slice(&digest);
            assert_eq!(payload.len() % 512, 32, "len {len}");
            assert_eq!(snapshot_from_payload(&payload).unwrap(), &snapshot[..]);
            payload[0] ^= 1;
            assert!(snapshot_from_payload(&payload).is_err());
        }
    }

    #[test]
    fn a_payload_frames_and_unframes_and_damage_is_refused() {
        let snapshot = b"not really a snapshot, but framing does not care".to_vec();
        let (body, digest) = snapshot_payload(&snapshot);
        let mut payload = body.clone();
        payload.extend_from_slice(&digest);
        assert_eq!(payload.len() % SNAPSHOT_ALIGN_BYTES, DIGEST_BYTES);
        assert_eq!(snapshot_from_payload(&payload).unwrap(), &snapshot[..]);
        let mut damaged = payload.clone();
        damaged[3] ^= 1;
        assert!(snapshot_from_payload(&damaged)
            .unwrap_err()
            .contains("sha256"));
        assert_eq!(unframe(&damaged, false).unwrap()[3], snapshot[3] ^ 1);
        assert!(snapshot_from_payload(&payload[..payload.len() - 1])
            .unwrap_err()
            .contains("truncated"));
    }

    #[test]
    fn the_directory_is_built_beside_the_target_whatever_its_spelling() {
        let here = std::env::current_dir().unwrap();
        for spelled in ["r1", "r1/", "./r1", "r1/."] {
            let target = data_dir_path(Path::new(spelled)).unwrap();
            assert_eq!(target, here.join("r1"), "{spelled}");
            assert_eq!(
                building_path(&target),
                here.join("r1.restoring"),
                "{spelled}"
            );
        }
        assert!(data_dir_path(Path::new("/")).is_err());
    }
}
