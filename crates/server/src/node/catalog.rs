//! The group catalog: which replicated groups beyond group 0 exist and on which nodes, replicated
//! through group 0's log so every node learns it, and kept in `<data-dir>/catalog` so a node
//! that restarts knows which groups it hosts before it hears from anyone (each in
//! `<data-dir>/groups/<id>/`). The keyspace work grows
//! this record into the catalog of keyspaces.
//!
//! Ids are never reused: `next_id` only grows, so a node that was down while a group was
//! removed and finds that group's directory on restart knows it is a leftover, and a message
//! for a removed group can never be taken for a new one's.
//!
//! Rewritten atomically (temporary file, fsync, rename, directory fsync) whenever it changes,
//! with the log index of the last command applied to it so a replay after a restart skips what
//! the file already reflects.
//!
//! ```text
//! file      magic "BALLOTGC" | format version u32 (1) | applied_index u64 | Catalog
//! Catalog   next_id u32 | count u32 | Group * count
//! Group     id u32 | replica count u32 | node id u64 * count
//! command   0 Create | requested id u32 (0: the next free one) | replica count u32 | node id u64 * n
//!           1 Remove | id u32
//! ```
//!
//! A snapshot's catalog part is a `Catalog`.

use ballot_core::codec::{DecodeError, Decoder};
use ballot_core::{GroupId, LogIndex, NodeId};
use ballot_storage::atomic_file::write_atomically;
use bytes::{BufMut, Bytes};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

const FILE_MAGIC: &[u8; 8] = b"BALLOTGC";
/// The catalog file's format version this build writes, and the newest it reads.
pub const FILE_FORMAT_VERSION: u32 = 1;
/// Most groups a catalog holds (and decodes).
pub const GROUPS_MAX: usize = 65_536;
/// Most replicas one group has.
pub const REPLICAS_MAX: usize = 64;

/// One group as the catalog records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    pub id: GroupId,
    /// The nodes that host a replica; all vote. The group starts with exactly these voters.
    pub replicas: Vec<NodeId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupCommand {
    /// Creates a group on `replicas`, with id `requested` if it is given (and free), else the
    /// next free id.
    Create {
        requested: Option<GroupId>,
        replicas: Vec<NodeId>,
    },
    Remove(GroupId),
}

/// Why a group command changed nothing. Decided when the command is applied, the same way on
/// every node, so every node's catalog stays the same.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error("group {0} already exists or existed (group ids are never reused)")]
    IdUsed(GroupId),
    #[error("group 0 is every cluster's default group: it cannot be created or removed")]
    GroupZero,
    #[error("no group {0}")]
    UnknownGroup(GroupId),
    #[error("group id {0} is reserved (node liveness frames carry it)")]
    Reserved(GroupId),
    #[error("a group needs between 1 and {REPLICAS_MAX} replicas on distinct nodes, got {0:?}")]
    BadReplicas(Vec<NodeId>),
    #[error("the catalog is full ({GROUPS_MAX} groups)")]
    Full,
    #[error(
        "{asked} replicas asked for, but the cluster has {voters} voting members: a group \
         needs between 1 and {voters} replicas, each on its own node"
    )]
    ReplicaCount { asked: usize, voters: usize },
    #[error("groups are created and removed through group 0, which holds the catalog")]
    NotTheCatalog,
}

/// What an applied command did, for whoever proposed it and for the node that hosts groups.
pub type Applied = Result<GroupRecord, CatalogError>;

#[derive(Debug)]
pub struct GroupCatalog {
    groups: BTreeMap<GroupId, GroupRecord>,
    /// The smallest id never used; ids below it are taken for good.
    next_id: GroupId,
    applied_index: LogIndex,
    /// `None` for a catalog that lives only in memory (another group's host, which has none).
    path: Option<PathBuf>,
    /// Every record, rebuilt on each change, for the status readers to share without a copy.
    view: Arc<Vec<GroupRecord>>,
}

impl GroupCatalog {
    /// Loads the catalog from `path`, or starts an empty one if there is no file yet.
    pub fn open(path: PathBuf) -> Result<Self, String> {
        match std::fs::read(&path) {
            Ok(bytes) => {
                let (applied_index, (groups, next_id)) =
                    decode_file(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
                let view = Arc::new(groups.values().cloned().collect());
                Ok(Self {
                    groups,
                    next_id,
                    applied_index,
                    path: Some(path),
                    view,
                })
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Self {
                path: Some(path),
                ..Self::in_memory()
            }),
            Err(error) => Err(format!("{}: {error}", path.display())),
        }
    }

    /// An empty catalog with no file.
    pub fn in_memory() -> Self {
        Self {
            groups: BTreeMap::new(),
            next_id: 1,
            applied_index: 0,
            path: None,
            view: Arc::default(),
        }
    }

    /// Every record, shared.
    pub fn view(&self) -> Arc<Vec<GroupRecord>> {
        self.view.clone()
    }

    pub fn get(&self, id: GroupId) -> Option<&GroupRecord> {
        self.groups.get(&id)
    }

    pub fn all(&self) -> impl Iterator<Item = &GroupRecord> {
        self.groups.values()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// The groups `node` hosts a replica of.
    pub fn hosted_by(&self, node: NodeId) -> impl Iterator<Item = &GroupRecord> {
        self.groups
            .values()
            .filter(move |group| group.replicas.contains(&node))
    }

    /// `count` of `candidates` for a new group's replicas: those hosting the fewest replicas
    /// now, ties broken by id, so groups spread evenly over the nodes.
    pub fn place(&self, candidates: &[NodeId], count: usize) -> Vec<NodeId> {
        let mut load: Vec<(usize, NodeId)> = candidates
            .iter()
            .map(|&node| (self.hosted_by(node).count(), node))
            .collect();
        load.sort_unstable();
        let mut chosen: Vec<NodeId> = load.into_iter().take(count).map(|(_, n)| n).collect();
        chosen.sort_unstable();
        chosen
    }

    /// Applies a command from the log entry at `index`. `Ok(None)` when the file already
    /// reflects the entry (a replay after a restart); the inner result says what the command
    /// did. The outer error is a storage failure.
    pub fn apply(
        &mut self,
        index: LogIndex,
        command: &GroupCommand,
    ) -> Result<Option<Applied>, String> {
        if index <= self.applied_index {
            return Ok(None);
        }
        let applied = self.decide(command);
        self.applied_index = index;
        if applied.is_ok() {
            self.view = Arc::new(self.groups.values().cloned().collect());
        }
        self.persist()?;
        Ok(Some(applied))
    }

    fn decide(&mut self, command: &GroupCommand) -> Applied {
        match command {
            GroupCommand::Create {
                requested,
                replicas,
            } => {
                let mut distinct = replicas.clone();
                distinct.sort_unstable();
                distinct.dedup();
                if replicas.is_empty()
                    || replicas.len() > REPLICAS_MAX
                    || distinct.len() != replicas.len()
                {
                    return Err(CatalogError::BadReplicas(replicas.clone()));
                }
                if self.groups.len() >= GROUPS_MAX {
                    return Err(CatalogError::Full);
                }
                let id = match *requested {
                    Some(0) => return Err(CatalogError::GroupZero),
                    Some(GroupId::MAX) => return Err(CatalogError::Reserved(GroupId::MAX)),
                    Some(id) if id < self.next_id => return Err(CatalogError::IdUsed(id)),
                    Some(id) => id,
                    None => self.next_id,
                };
                let Some(next_id) = id.checked_add(1) else {
                    return Err(CatalogError::Full);
                };
                self.next_id = next_id;
                let record = GroupRecord {
                    id,
                    replicas: distinct,
                };
                self.groups.insert(id, record.clone());
                Ok(record)
            }
            GroupCommand::Remove(0) => Err(CatalogError::GroupZero),
            GroupCommand::Remove(id) => self
                .groups
                .remove(id)
                .ok_or(CatalogError::UnknownGroup(*id)),
        }
    }

    /// Restores from a snapshot taken at `index` unless the file is already at least that new.
    pub fn restore_if_behind(&mut self, data: &[u8], index: LogIndex) -> Result<(), String> {
        if self.applied_index >= index {
            return Ok(());
        }
        self.restore(data, index)
    }

    /// Replaces everything with a snapshot's catalog taken at `index`.
    pub fn restore(&mut self, data: &[u8], index: LogIndex) -> Result<(), String> {
        let (groups, next_id) = if data.is_empty() {
            // A snapshot from before catalogs (or of a cluster that never made a group).
            (BTreeMap::new(), 1)
        } else {
            let mut input = Decoder::new(data);
            let decoded = decode_catalog(&mut input).map_err(|e| e.to_string())?;
            input.finish("group catalog").map_err(|e| e.to_string())?;
            decoded
        };
        self.groups = groups;
        self.next_id = next_id;
        self.applied_index = index;
        self.view = Arc::new(self.groups.values().cloned().collect());
        self.persist()
    }

    /// The catalog's part of a snapshot: empty while no group was ever created, so such a
    /// snapshot is the one the release before catalogs wrote.
    pub fn snapshot(&self) -> Bytes {
        if self.groups.is_empty() && self.next_id == 1 {
            return Bytes::new();
        }
        let mut out = Vec::new();
        self.encode_catalog(&mut out);
        Bytes::from(out)
    }

    fn encode_catalog(&self, out: &mut Vec<u8>) {
        out.put_u32_le(self.next_id);
        out.put_u32_le(self.groups.len() as u32);
        for group in self.groups.values() {
            out.put_u32_le(group.id);
            encode_nodes(out, &group.replicas);
        }
    }

    fn persist(&self) -> Result<(), String> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let mut bytes = FILE_MAGIC.to_vec();
        bytes.put_u32_le(FILE_FORMAT_VERSION);
        bytes.put_u64_le(self.applied_index);
        self.encode_catalog(&mut bytes);
        write_atomically(path, &bytes).map_err(|e| format!("{}: {e}", path.display()))
    }
}

fn encode_nodes(out: &mut Vec<u8>, nodes: &[NodeId]) {
    out.put_u32_le(nodes.len() as u32);
    for node in nodes {
        out.put_u64_le(*node);
    }
}

fn decode_nodes(input: &mut Decoder<'_>) -> Result<Vec<NodeId>, DecodeError> {
    let count = input.u32("replica count")? as usize;
    if count > REPLICAS_MAX {
        return Err(input.error("replica count", format!("{count} exceeds {REPLICAS_MAX}")));
    }
    (0..count).map(|_| input.u64("replica node id")).collect()
}

type Catalog = (BTreeMap<GroupId, GroupRecord>, GroupId);

fn decode_catalog(input: &mut Decoder<'_>) -> Result<Catalog, DecodeError> {
    let next_id = input.u32("next group id")?;
    let count = input.u32("group count")? as usize;
    if count > GROUPS_MAX {
        return Err(input.error("group count", format!("{count} exceeds {GROUPS_MAX}")));
    }
    let mut groups = BTreeMap::new();
    for _ in 0..count {
        let id = input.u32("group id")?;
        if id == 0 || id >= next_id {
            return Err(input.error("group id", format!("{id} outside 1..{next_id}")));
        }
        let replicas = decode_nodes(input)?;
        groups.insert(id, GroupRecord { id, replicas });
    }
    Ok((groups, next_id))
}

fn decode_file(bytes: &[u8]) -> Result<(LogIndex, Catalog), DecodeError> {
    let Some(rest) = bytes.strip_prefix(FILE_MAGIC) else {
        return Err(Decoder::new(bytes).error("magic", "not a ballot group catalog"));
    };
    let mut input = Decoder::new(rest);
    let version = input.u32("format version")?;
    if version > FILE_FORMAT_VERSION {
        return Err(input.error(
            "format version",
            format!(
                "version {version}, written by a newer ballot; this one reads up to version \
                 {FILE_FORMAT_VERSION}"
            ),
        ));
    }
    let applied_index = input.u64("applied index")?;
    let catalog = decode_catalog(&mut input)?;
    input.finish("group catalog file")?;
    Ok((applied_index, catalog))
}

impl GroupCommand {
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            GroupCommand::Create {
                requested,
                replicas,
            } => {
                out.put_u8(0);
                out.put_u32_le(requested.unwrap_or(0));
                encode_nodes(out, replicas);
            }
            GroupCommand::Remove(id) => {
                out.put_u8(1);
                out.put_u32_le(*id);
            }
        }
    }

    pub fn decode(input: &mut Decoder<'_>) -> Result<GroupCommand, DecodeError> {
        match input.u8("group command")? {
            0 => {
                let requested = input.u32("requested group id")?;
                let replicas = decode_nodes(input)?;
                Ok(GroupCommand::Create {
                    requested: (requested != 0).then_some(requested),
                    replicas,
                })
            }
            1 => Ok(GroupCommand::Remove(input.u32("group id")?)),
            other => Err(input.error("group command", format!("unknown kind {other}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A catalog file in a directory that goes with the returned guard.
    fn scratch_file() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("groups");
        (dir, path)
    }

    fn create(requested: Option<GroupId>, replicas: &[NodeId]) -> GroupCommand {
        GroupCommand::Create {
            requested,
            replicas: replicas.to_vec(),
        }
    }

    #[test]
    fn creates_take_the_next_id_and_ids_are_never_reused() {
        let (_dir, path) = scratch_file();
        let mut catalog = GroupCatalog::open(path.clone()).unwrap();
        let first = catalog.apply(1, &create(None, &[3, 1, 2])).unwrap();
        assert_eq!(
            first,
            Some(Ok(GroupRecord {
                id: 1,
                replicas: vec![1, 2, 3]
            }))
        );
        assert_eq!(
            catalog.apply(2, &GroupCommand::Remove(1)).unwrap().unwrap(),
            Ok(GroupRecord {
                id: 1,
                replicas: vec![1, 2, 3]
            })
        );
        let second = catalog.apply(3, &create(None, &[1])).unwrap().unwrap();
        assert_eq!(second.unwrap().id, 2, "the removed group's id stays taken");
        assert_eq!(
            catalog.apply(4, &create(Some(1), &[1])).unwrap().unwrap(),
            Err(CatalogError::IdUsed(1))
        );
        assert_eq!(
            catalog.apply(5, &create(Some(10), &[2])).unwrap().unwrap(),
            Ok(GroupRecord {
                id: 10,
                replicas: vec![2]
            })
        );
        assert_eq!(
            catalog
                .apply(6, &create(None, &[2]))
                .unwrap()
                .unwrap()
                .unwrap()
                .id,
            11,
            "an explicit id moves the next free one past it"
        );
        let reopened = GroupCatalog::open(path).unwrap();
        assert_eq!(
            reopened.all().map(|g| g.id).collect::<Vec<_>>(),
            vec![2, 10, 11]
        );
        assert_eq!(reopened.next_id, 12);
        assert_eq!(reopened.applied_index, 6);
    }

    #[test]
    fn bad_commands_change_nothing_and_say_why() {
        let (_dir, path) = scratch_file();
        let mut catalog = GroupCatalog::open(path).unwrap();
        for (command, error) in [
            (create(None, &[]), CatalogError::BadReplicas(vec![])),
            (create(None, &[1, 1]), CatalogError::BadReplicas(vec![1, 1])),
            (create(Some(0), &[1]), CatalogError::GroupZero),
            (
                create(Some(GroupId::MAX), &[1]),
                CatalogError::Reserved(GroupId::MAX),
            ),
            (GroupCommand::Remove(0), CatalogError::GroupZero),
            (GroupCommand::Remove(4), CatalogError::UnknownGroup(4)),
        ] {
            assert_eq!(catalog.apply(9, &command).unwrap().unwrap(), Err(error));
            catalog.applied_index = 0;
        }
        assert!(catalog.is_empty());
        assert_eq!(catalog.next_id, 1);
        assert!(CatalogError::IdUsed(3)
            .to_string()
            .contains("group 3 already exists"));
    }

    #[test]
    fn replays_are_skipped_and_snapshots_restore() {
        let (_dir, path) = scratch_file();
        let mut catalog = GroupCatalog::open(path.clone()).unwrap();
        assert!(
            catalog.snapshot().is_empty(),
            "no group ever: no catalog part"
        );
        catalog.apply(5, &create(None, &[1, 2])).unwrap();
        assert_eq!(catalog.apply(5, &create(None, &[1])).unwrap(), None);
        assert_eq!(catalog.all().count(), 1);
        let image = catalog.snapshot();
        let (_other_dir, other_path) = scratch_file();
        let mut other = GroupCatalog::open(other_path).unwrap();
        other.restore_if_behind(&image, 5).unwrap();
        assert_eq!(other.get(1), catalog.get(1));
        assert_eq!(other.next_id, 2);
        other.restore_if_behind(&[], 4).unwrap();
        assert_eq!(other.all().count(), 1, "an older snapshot changes nothing");
        other.restore(&[], 6).unwrap();
        assert!(other.is_empty(), "an empty part is an empty catalog");
        std::fs::write(&path, b"garbage").unwrap();
        assert!(GroupCatalog::open(path)
            .unwrap_err()
            .contains("not a ballot group catalog"));
    }

    #[test]
    fn a_newer_version_is_refused_naming_both_versions() {
        let (_dir, path) = scratch_file();
        let mut newer = FILE_MAGIC.to_vec();
        newer.put_u32_le(FILE_FORMAT_VERSION + 1);
        newer.put_u64_le(1);
        std::fs::write(&path, &newer).unwrap();
        let error = GroupCatalog::open(path).unwrap_err();
        assert!(
            error.contains(&format!("version {}", FILE_FORMAT_VERSION + 1))
                && error.contains(&format!("up to version {FILE_FORMAT_VERSION}")),
            "{error}"
        );
    }

    #[test]
    fn placement_prefers_the_least_loaded_nodes() {
        let mut catalog = GroupCatalog::in_memory();
        catalog.apply(1, &create(None, &[1, 2])).unwrap();
        assert_eq!(catalog.place(&[1, 2, 3, 4], 2), vec![3, 4]);
        assert_eq!(catalog.place(&[1, 2, 3], 2), vec![1, 3], "ties by id");
    }

    #[test]
    fn commands_round_trip() {
        for command in [
            create(None, &[1, 2, 3]),
            create(Some(7), &[9]),
            GroupCommand::Remove(7),
        ] {
            let mut out = Vec::new();
            command.encode(&mut out);
            assert_eq!(
                GroupCommand::decode(&mut Decoder::new(&out)).unwrap(),
                command
            );
        }
    }
}
