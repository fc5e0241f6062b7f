//! One process per data directory: an exclusive advisory lock (`flock`, through
//! `File::try_lock`) on `<data-dir>/LOCK`, held for as long as the [`DirLock`] lives.
//!
//! See `docs/design/storage.md`, "Directory lock". The kernel releases the lock when the process
//! dies, however it dies, so a crash never leaves a stale lock. The holder writes its process id
//! into the file for diagnosis only; the lock, not the file's contents, decides.
//!
//! Never does: wait for the lock (a second node on the same directory is a mistake to report at
//! once), or delete the lock file (a process that opened the old file would still hold a lock
//! nobody else can see).

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use thiserror::Error;

pub const LOCK_FILE_NAME: &str = "LOCK";

#[derive(Debug, Error)]
pub enum DirLockError {
    #[error(
        "data directory {dir} is already locked{}: one node per data directory",
        holder_pid.map(|pid| format!(" by process {pid}")).unwrap_or_default()
    )]
    Held {
        dir: PathBuf,
        /// The process id the holder wrote into the lock file, if readable.
        holder_pid: Option<u32>,
    },
    #[error("data directory lock: {operation} {path}: {source}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The data directory's lock; released on drop.
#[derive(Debug)]
pub struct DirLock {
    dir: PathBuf,
    /// Holding the open file holds the lock.
    _file: File,
}

impl DirLock {
    /// Locks `data_dir` (creating it if needed) or fails at once with [`DirLockError::Held`] if
    /// another process, or another `DirLock` in this process, holds it.
    pub fn acquire(data_dir: impl AsRef<Path>) -> Result<DirLock, DirLockError> {
        let dir = data_dir.as_ref().to_path_buf();
        let io_error = |operation, path: &Path| {
            let path = path.to_path_buf();
            move |source| DirLockError::Io {
                operation,
                path,
                source,
            }
        };
        create_dir_durably(&dir).map_err(io_error("create directory", &dir))?;
        let path = dir.join(LOCK_FILE_NAME);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error("open", &path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder_pid = fs::read_to_string(&path)
                    .ok()
                    .and_then(|text| text.trim().parse().ok());
                return Err(DirLockError::Held { dir, holder_pid });
            }
            Err(TryLockError::Error(source)) => return Err(io_error("lock", &path)(source)),
        }
        let pid = format!("{}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.write_all_at(pid.as_bytes(), 0))
            .map_err(io_error("write", &path))?;
        Ok(DirLock { dir, _file: file })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Creates `dir` and any missing parents so that they survive a crash: the parent of each
/// directory created is synced (assumption 5). Each is readable by its owner only (0700, as etcd
/// creates its data directories): a data directory holds every key and value. Shared by the
/// lock, the WAL, the snapshot store and `snapshot restore`.
pub fn create_dir_durably(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = dir
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    create_dir_durably(parent)?;
    use std::os::unix::fs::DirBuilderExt;
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(error),
        Ok(()) => File::open(parent)?.sync_all(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_in_the_same_process_fails_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("node-1");
        let first = DirLock::acquire(&data_dir).unwrap();
        let error = DirLock::acquire(&data_dir).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "data directory {} is already locked by process {}: one node per data directory",
                data_dir.display(),
                std::process::id()
            )
        );
        drop(first);
        DirLock::acquire(&data_dir).expect("released on drop");
    }
}
