//! Who the members are beyond their ids: names and URLs, replicated through the log as etcd
//! publishes member attributes, so every node can list the members and find the leader's client
//! URLs. Raft's membership says who votes; this registry only describes them.
//!
//! It also holds the cluster id, replicated the same way: the first leader of a cluster records
//! the id its own identity file derived, so a member that joins later (whose own flags derive a
//! different one) reports the cluster's, as etcd members do.
//!
//! Kept in `<data-dir>/members`, rewritten atomically (temporary file, fsync, rename, directory
//! fsync) whenever it changes, with the log index of the last command applied to it so a replay
//! after a restart skips what the file already reflects.
//!
//! ```text
//! file      magic "BALLOTMR" | format version u32 (2) | applied_index u64 | Registry
//!           (version 1, before the file had a version: magic "BALLOTMB" | applied_index u64 |
//!           Registry; read, and rewritten as version 2 when the registry opens)
//! Registry  Members | [cluster id u64]     (absent in files written before it existed: unknown)
//! Members   count u32 | MemberInfo * count
//! MemberInfo id u64 | name (len u32 | utf-8) | peer_url_count u32 | url * n | client_url_count u32 | url * n
//! command   0 Publish MemberInfo | 1 Forget id u64 | 2 ClusterId id u64
//! ```
//!
//! A snapshot's registry part is a `Registry`.

use ballot_core::codec::{put_bytes, DecodeError, Decoder};
use ballot_core::{LogIndex, NodeId};
use ballot_storage::atomic_file::write_atomically;
use bytes::{BufMut, Bytes};
use std::collections::BTreeMap;
use std::path::PathBuf;

const FILE_MAGIC: &[u8; 8] = b"BALLOTMR";
/// The registry file's format version this build writes, and the newest it reads.
pub const FILE_FORMAT_VERSION: u32 = 2;
/// The magic of version 1, which carried no version number.
const FILE_MAGIC_V1: &[u8; 8] = b"BALLOTMB";
/// Most members a registry decodes.
const MEMBERS_MAX: usize = 1024;
/// Most URLs per member a registry decodes.
const URLS_PER_MEMBER_MAX: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemberInfo {
    pub id: NodeId,
    /// Empty until the member has started and published itself.
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberCommand {
    /// Sets everything known about one member (a started member publishes itself; `member add`
    /// publishes a future member's peer URLs).
    Publish(MemberInfo),
    Forget(NodeId),
    /// Records the cluster id, if none is recorded yet (the first one stays).
    ClusterId(u64),
}

#[derive(Debug)]
pub struct MemberRegistry {
    members: BTreeMap<NodeId, MemberInfo>,
    /// 0 while none is recorded.
    cluster_id: u64,
    applied_index: LogIndex,
    path: PathBuf,
}

impl MemberRegistry {
    /// Loads the registry, or starts one from what the configuration says about the initial
    /// members (peer URLs only; names and client URLs arrive when they publish).
    pub fn open(
        path: PathBuf,
        initial: impl IntoIterator<Item = MemberInfo>,
    ) -> Result<Self, String> {
        match std::fs::read(&path) {
            Ok(bytes) => {
                let (version, applied_index, (members, cluster_id)) =
                    decode_file(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
                let registry = Self {
                    members,
                    cluster_id,
                    applied_index,
                    path,
                };
                if version < FILE_FORMAT_VERSION {
                    registry.persist()?;
                    tracing::info!(
                        path = %registry.path.display(),
                        from = version,
                        to = FILE_FORMAT_VERSION,
                        "upgraded the member registry file's format"
                    );
                }
                Ok(registry)
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let members = initial.into_iter().map(|m| (m.id, m)).collect();
                Ok(Self {
                    members,
                    cluster_id: 0,
                    applied_index: 0,
                    path,
                })
            }
            Err(error) => Err(format!("{}: {error}", path.display())),
        }
    }

    pub fn get(&self, id: NodeId) -> Option<&MemberInfo> {
        self.members.get(&id)
    }

    pub fn all(&self) -> impl Iterator<Item = &MemberInfo> {
        self.members.values()
    }

    /// The cluster id the log recorded, if it recorded one yet.
    pub fn cluster_id(&self) -> Option<u64> {
        (self.cluster_id != 0).then_some(self.cluster_id)
    }

    /// Applies a command from the log entry at `index` (skipped if the file already has it).
    pub fn apply(&mut self, index: LogIndex, command: &MemberCommand) -> Result<(), String> {
        if index <= self.applied_index {
            return Ok(());
        }
        match command {
            MemberCommand::Publish(info) => {
                self.members.insert(info.id, info.clone());
            }
            MemberCommand::Forget(id) => {
                self.members.remove(id);
            }
            MemberCommand::ClusterId(id) => {
                if self.cluster_id == 0 {
                    self.cluster_id = *id;
                }
            }
        }
        self.applied_index = index;
        self.persist()
    }

    /// Restores from a snapshot taken at `index` unless the file is already at least that new.
    pub fn restore_if_behind(&mut self, data: &[u8], index: LogIndex) -> Result<(), String> {
        if self.applied_index >= index {
            return Ok(());
        }
        self.restore(data, index)
    }

    /// The registry's part of a snapshot.
    pub fn snapshot(&self) -> Bytes {
        let mut out = Vec::new();
        self.encode_registry(&mut out);
        Bytes::from(out)
    }

    /// Replaces everything with a snapshot's registry taken at `index`.
    pub fn restore(&mut self, data: &[u8], index: LogIndex) -> Result<(), String> {
        let mut input = Decoder::new(data);
        let (members, cluster_id) = decode_registry(&mut input).map_err(|e| e.to_string())?;
        self.members = members;
        self.cluster_id = cluster_id;
        self.applied_index = index;
        self.persist()
    }

    fn encode_registry(&self, out: &mut Vec<u8>) {
        encode_members(out, &self.members);
        if self.cluster_id != 0 {
            out.put_u64_le(self.cluster_id);
        }
    }

    fn persist(&self) -> Result<(), String> {
        let mut bytes = FILE_MAGIC.to_vec();
        bytes.put_u32_le(FILE_FORMAT_VERSION);
        bytes.put_u64_le(self.applied_index);
        self.encode_registry(&mut bytes);
        write_atomically(&self.path, &bytes).map_err(|e| format!("{}: {e}", self.path.display()))
    }
}

fn encode_info(out: &mut Vec<u8>, info: &MemberInfo) {
    out.put_u64_le(info.id);
    put_bytes(out, info.name.as_bytes());
    for urls in [&info.peer_urls, &info.client_urls] {
        out.put_u32_le(urls.len() as u32);
        for url in urls {
            put_bytes(out, url.as_bytes());
        }
    }
}

fn decode_string(input: &mut Decoder<'_>, what: &'static str) -> Result<String, DecodeError> {
    let bytes = input.bytes(what)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| input.error(what, "not UTF-8"))
}

fn decode_info(input: &mut Decoder<'_>) -> Result<MemberInfo, DecodeError> {
    let id = input.u64("member id")?;
    let name = decode_string(input, "member name")?;
    let mut lists = [Vec::new(), Vec::new()];
    for list in lists.iter_mut() {
        let count = input.u32("url count")? as usize;
        if count > URLS_PER_MEMBER_MAX {
            return Err(input.error(
                "url count",
                format!("{count} exceeds {URLS_PER_MEMBER_MAX}"),
            ));
        }
        for _ in 0..count {
            list.push(decode_string(input, "url")?);
        }
    }
    let [peer_urls, client_urls] = lists;
    Ok(MemberInfo {
        id,
        name,
        peer_urls,
        client_urls,
    })
}

fn encode_members(out: &mut Vec<u8>, members: &BTreeMap<NodeId, MemberInfo>) {
    out.put_u32_le(members.len() as u32);
    for info in members.values() {
        encode_info(out, info);
    }
}

fn decode_members(input: &mut Decoder<'_>) -> Result<BTreeMap<NodeId, MemberInfo>, DecodeError> {
    let count = input.u32("member count")? as usize;
    if count > MEMBERS_MAX {
        return Err(input.error("member count", format!("{count} exceeds {MEMBERS_MAX}")));
    }
    (0..count)
        .map(|_| decode_info(input).map(|info| (info.id, info)))
        .collect()
}

/// Members and the cluster id (0 when absent), then nothing.
fn decode_registry(
    input: &mut Decoder<'_>,
) -> Result<(BTreeMap<NodeId, MemberInfo>, u64), DecodeError> {
    let members = decode_members(input)?;
    let cluster_id = if input.is_empty() {
        0
    } else {
        input.u64("cluster id")?
    };
    input.finish("member registry")?;
    Ok((members, cluster_id))
}

/// A registry file's format version, applied index and registry.
type RegistryFile = (u32, LogIndex, (BTreeMap<NodeId, MemberInfo>, u64));

fn decode_file(bytes: &[u8]) -> Result<RegistryFile, DecodeError> {
    let (version, mut input) = if let Some(rest) = bytes.strip_prefix(FILE_MAGIC) {
        let mut input = Decoder::new(rest);
        let version = input.u32("format version")?;
        if version > FILE_FORMAT_VERSION {
            return Err(input.error(
                "format version",
                format!(
                    "version {version}, written by a newer ballot; this one reads up to \
                     version {FILE_FORMAT_VERSION}"
                ),
            ));
        }
        (version, input)
    } else if let Some(rest) = bytes.strip_prefix(FILE_MAGIC_V1) {
        (1, Decoder::new(rest))
    } else {
        return Err(Decoder::new(bytes).error("magic", "not a ballot member registry"));
    };
    let applied_index = input.u64("applied index")?;
    Ok((version, applied_index, decode_registry(&mut input)?))
}

impl MemberCommand {
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            MemberCommand::Publish(info) => {
                out.put_u8(0);
                encode_info(out, info);
            }
            MemberCommand::Forget(id) => {
                out.put_u8(1);
                out.put_u64_le(*id);
            }
            MemberCommand::ClusterId(id) => {
                out.put_u8(2);
                out.put_u64_le(*id);
            }
        }
    }

    pub fn decode(input: &mut Decoder<'_>) -> Result<MemberCommand, DecodeError> {
        match input.u8("member command")? {
            0 => Ok(MemberCommand::Publish(decode_info(input)?)),
            1 => Ok(MemberCommand::Forget(input.u64("member id")?)),
            2 => Ok(MemberCommand::ClusterId(input.u64("cluster id")?)),
            other => Err(input.error("member command", format!("unknown kind {other}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: NodeId) -> MemberInfo {
        MemberInfo {
            id,
            name: format!("n{id}"),
            peer_urls: vec![format!("http://127.0.0.1:{}", 2380 + id)],
            client_urls: vec![format!("http://127.0.0.1:{}", 2379 + id)],
        }
    }

    /// A registry file in a directory that goes with the returned guard.
    fn scratch_file() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("members");
        (dir, path)
    }

    #[test]
    fn a_version_1_file_opens_and_is_rewritten_as_the_current_version() {
        let (_dir, path) = scratch_file();
        let mut registry = MemberRegistry::open(path.clone(), [info(1)]).unwrap();
        registry.apply(3, &MemberCommand::Publish(info(2))).unwrap();
        registry.apply(4, &MemberCommand::ClusterId(77)).unwrap();
        // The same registry as the release before versions wrote it.
        let mut v1 = FILE_MAGIC_V1.to_vec();
        v1.put_u64_le(4);
        registry.encode_registry(&mut v1);
        std::fs::write(&path, &v1).unwrap();

        let opened = MemberRegistry::open(path.clone(), []).unwrap();
        assert_eq!(opened.all().map(|m| m.id).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(opened.get(2), Some(&info(2)));
        assert_eq!(opened.cluster_id(), Some(77));
        assert_eq!(opened.applied_index, 4);
        let upgraded = std::fs::read(&path).unwrap();
        assert!(
            upgraded.starts_with(FILE_MAGIC),
            "rewritten in the current format"
        );
        assert_eq!(
            decode_file(&upgraded).unwrap(),
            (FILE_FORMAT_VERSION, 4, (opened.members.clone(), 77))
        );
    }

    #[test]
    fn a_newer_version_is_refused_naming_both_versions_and_left_untouched() {
        let (_dir, path) = scratch_file();
        let mut newer = FILE_MAGIC.to_vec();
        newer.put_u32_le(FILE_FORMAT_VERSION + 1);
        newer.put_u64_le(9);
        encode_members(&mut newer, &BTreeMap::new());
        std::fs::write(&path, &newer).unwrap();
        let error =
            MemberRegistry::open(path.clone(), [info(1)]).expect_err("a newer format is refused");
        assert!(
            error.contains(&format!("version {}", FILE_FORMAT_VERSION + 1))
                && error.contains(&format!("up to version {FILE_FORMAT_VERSION}")),
            "{error}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), newer, "nothing rewritten");
    }

    #[test]
    fn commands_persist_and_replays_are_skipped() {
        let (dir, path) = scratch_file();
        let mut registry = MemberRegistry::open(path.clone(), [info(1)]).unwrap();
        registry.apply(5, &MemberCommand::Publish(info(2))).unwrap();
        registry.apply(6, &MemberCommand::Forget(1)).unwrap();
        let mut reopened = MemberRegistry::open(path.clone(), []).unwrap();
        assert_eq!(reopened.all().map(|m| m.id).collect::<Vec<_>>(), vec![2]);
        reopened.apply(4, &MemberCommand::Publish(info(1))).unwrap();
        assert!(
            reopened.get(1).is_none(),
            "an entry the file already reflects is not applied again"
        );
        assert_eq!(reopened.cluster_id(), None);
        reopened.apply(7, &MemberCommand::ClusterId(42)).unwrap();
        reopened.apply(8, &MemberCommand::ClusterId(43)).unwrap();
        assert_eq!(
            reopened.cluster_id(),
            Some(42),
            "the first recorded id stays"
        );
        let snapshot = reopened.snapshot();
        let mut restored = MemberRegistry::open(dir.path().join("other"), []).unwrap();
        restored.restore(&snapshot, 8).unwrap();
        assert_eq!(restored.get(2), Some(&info(2)));
        assert_eq!(restored.cluster_id(), Some(42));
        assert_eq!(
            MemberRegistry::open(dir.path().join("other"), [])
                .unwrap()
                .cluster_id(),
            Some(42),
            "and it is in the file"
        );
        std::fs::write(&path, b"garbage").unwrap();
        assert!(MemberRegistry::open(path, [])
            .unwrap_err()
            .contains("not a ballot member registry"));
    }

    #[test]
    fn commands_round_trip() {
        for command in [
            MemberCommand::Publish(info(3)),
            MemberCommand::Forget(3),
            MemberCommand::ClusterId(7),
        ] {
            let mut out = Vec::new();
            command.encode(&mut out);
            assert_eq!(
                MemberCommand::decode(&mut Decoder::new(&out)).unwrap(),
                command
            );
        }
    }
}
