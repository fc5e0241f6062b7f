//! Shared by the `mvcc_*` tests: temporary directories and small command builders.
#![allow(dead_code)]

use ballot_storage::mvcc::types::*;
use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A directory removed on drop (no tempfile dependency).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let unique = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("ballot-{name}-{}-{unique}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create a temporary directory");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn put(key: &str, value: &str) -> Command {
    Command::Put(PutRequest {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
        ..Default::default()
    })
}

pub fn put_with_lease(key: &str, value: &str, lease: LeaseId) -> Command {
    Command::Put(PutRequest {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
        lease,
        ..Default::default()
    })
}

pub fn delete(key: &str, range_end: &str) -> Command {
    Command::DeleteRange(DeleteRangeRequest {
        range: KeyRange::new(key.to_owned(), range_end.to_owned()),
        prev_kv: true,
    })
}

pub fn get(key: &str) -> RangeRequest {
    RangeRequest {
        range: KeyRange::single(key.to_owned()),
        ..Default::default()
    }
}

pub fn everything() -> KeyRange {
    KeyRange::new("\0", "\0")
}
