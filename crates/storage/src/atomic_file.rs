//! Small files replaced whole: written to a temporary file beside the target, synced, renamed
//! over it, and the directory synced, so that after a crash the name refers to the old content or
//! the new, never to a mix (assumptions 1 and 5 of `docs/design/storage.md`).
//!
//! For files of a few kilobytes that change rarely (the identity file, the member registry); the
//! large, streamed files (snapshots, segments) write the same steps around their own writers.

use std::fs::File;
use std::io::Write;
use std::path::Path;

/// Replaces `path` with `bytes` atomically and durably. The temporary file is `path` with the
/// extension `tmp`; a crash can leave it behind, and the next write replaces it.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temporary = path.with_extension("tmp");
    let mut file = File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, path)?;
    sync_parent(path)
}

/// Makes a create, rename or delete of `path` durable by syncing its directory.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => File::open(".")?.sync_all(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_replaces_the_whole_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        write_atomically(&path, b"first, longer content").unwrap();
        write_atomically(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert!(!path.with_extension("tmp").exists());
    }
}
