//! The identity file, `<data-dir>/identity`: whose data directory this is, which cluster it
//! belongs to, and the membership its replica started from.
//!
//! Written once, when a member first uses an empty data directory and before anything else is
//! written there (the WAL, the state machine), and never rewritten. Everything a restart needs to
//! know about itself comes from here, so the bootstrap flags (`--initial-cluster`,
//! `--initial-cluster-state`, `--initial-cluster-token`) are read only when the directory is
//! empty, as etcd reads them, and a whole cluster killed at once comes back from its disks alone.
//! The starting membership is the replica's compaction point at index 0
//! (`ballot_core::PersistedState::bootstrap`) until a real compaction point or an installed
//! snapshot, which carry the membership of their own index, supersedes it.
//!
//! ```text
//! file     magic "BALLOTID" | version u32 (1) | body length u32 | body | crc32c u32
//!          (the checksum covers every byte before it)
//! body     member id u64 | cluster id u64 | member name (len u32 | utf-8)
//!          | cluster token (len u32 | utf-8) | bootstrap Membership (core codec)
//!          | initial member count u32 | InitialMember * count
//! InitialMember  id u64 | name (len u32 | utf-8) | peer url count u32 | url (len u32 | utf-8) * n
//! ```
//!
//! It must never do: change after creation, or be written over an existing one (a directory
//! belongs to one member for its whole life; a new member gets an empty directory).

use crate::atomic_file::write_atomically;
use ballot_core::codec::{decode_membership, encode_membership, put_bytes, DecodeError, Decoder};
use ballot_core::{Membership, NodeId};
use bytes::BufMut;
use std::path::{Path, PathBuf};

/// The file's name inside the data directory.
pub const FILE_NAME: &str = "identity";
const MAGIC: &[u8; 8] = b"BALLOTID";
const VERSION: u32 = 1;
/// Magic, version and body length.
const HEADER_BYTES: usize = 16;
const CHECKSUM_BYTES: usize = 4;
/// Largest body accepted: a few hundred members with long URLs fit many times over.
const BODY_BYTES_MAX: usize = 1 << 20;
/// Most initial members decoded.
const INITIAL_MEMBERS_MAX: usize = 1024;
/// Most peer URLs per initial member decoded.
const URLS_PER_MEMBER_MAX: usize = 64;

/// A member named when the directory was created, with its peer URLs: where to reach peers
/// before the member registry has heard from them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialMember {
    pub id: NodeId,
    pub name: String,
    pub peer_urls: Vec<String>,
}

/// Who owns a data directory. See the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub member_id: NodeId,
    pub member_name: String,
    pub cluster_id: u64,
    pub cluster_token: String,
    /// The membership the replica started from: every initial voter for a member of a new
    /// cluster; empty for a member that joined a running one (the leader's log tells it).
    pub bootstrap: Membership,
    pub initial_members: Vec<InitialMember>,
}

/// Why the identity file cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file exists but is not an identity file this version can read: a damaged disk, or a
    /// file put there by hand. The directory is not used until an operator looks.
    #[error("{} is damaged or not a ballot identity file: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("{} already exists: a data directory's identity is written once", path.display())]
    AlreadyExists { path: PathBuf },
}

impl Identity {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(FILE_NAME)
    }

    /// The identity of the directory, or `None` if it has none yet (it is empty, or was written
    /// by a ballot older than this file).
    pub fn load(data_dir: &Path) -> Result<Option<Identity>, IdentityError> {
        let path = Self::path(data_dir);
        match std::fs::read(&path) {
            Ok(bytes) => decode(&bytes)
                .map(Some)
                .map_err(|reason| IdentityError::Corrupt { path, reason }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(IdentityError::Io { path, source }),
        }
    }

    /// Writes the identity of a directory that has none, durably (the file and its directory
    /// entry) before returning.
    pub fn create(&self, data_dir: &Path) -> Result<(), IdentityError> {
        let path = Self::path(data_dir);
        if path.exists() {
            return Err(IdentityError::AlreadyExists { path });
        }
        write_atomically(&path, &encode(self)).map_err(|source| IdentityError::Io { path, source })
    }
}

fn encode(identity: &Identity) -> Vec<u8> {
    let mut body = Vec::new();
    body.put_u64_le(identity.member_id);
    body.put_u64_le(identity.cluster_id);
    put_bytes(&mut body, identity.member_name.as_bytes());
    put_bytes(&mut body, identity.cluster_token.as_bytes());
    encode_membership(&mut body, &identity.bootstrap);
    body.put_u32_le(identity.initial_members.len() as u32);
    for member in &identity.initial_members {
        body.put_u64_le(member.id);
        put_bytes(&mut body, member.name.as_bytes());
        body.put_u32_le(member.peer_urls.len() as u32);
        for url in &member.peer_urls {
            put_bytes(&mut body, url.as_bytes());
        }
    }
    assert!(
        body.len() <= BODY_BYTES_MAX,
        "an identity of {} bytes could not be read back",
        body.len()
    );
    let mut file = Vec::with_capacity(HEADER_BYTES + body.len() + CHECKSUM_BYTES);
    file.put_slice(MAGIC);
    file.put_u32_le(VERSION);
    file.put_u32_le(body.len() as u32);
    file.put_slice(&body);
    file.put_u32_le(crc32c::crc32c(&file));
    file
}

fn decode(bytes: &[u8]) -> Result<Identity, String> {
    if bytes.len() < HEADER_BYTES + CHECKSUM_BYTES {
        return Err(format!(
            "{} bytes is shorter than any identity file",
            bytes.len()
        ));
    }
    if &bytes[..8] != MAGIC {
        return Err("it does not start with BALLOTID".into());
    }
    let (covered, stored) = bytes.split_at(bytes.len() - CHECKSUM_BYTES);
    let stored = u32::from_le_bytes(stored.try_into().expect("4 bytes"));
    let computed = crc32c::crc32c(covered);
    if stored != computed {
        return Err(format!(
            "checksum mismatch (stored {stored:08x}, computed {computed:08x})"
        ));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(format!(
            "format version {version}; this ballot reads {VERSION}"
        ));
    }
    let body_len = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes")) as usize;
    if body_len > BODY_BYTES_MAX || HEADER_BYTES + body_len + CHECKSUM_BYTES != bytes.len() {
        return Err(format!(
            "body length {body_len} does not fit a file of {} bytes",
            bytes.len()
        ));
    }
    decode_body(&bytes[HEADER_BYTES..HEADER_BYTES + body_len]).map_err(|error| error.to_string())
}

fn decode_body(body: &[u8]) -> Result<Identity, DecodeError> {
    let mut input = Decoder::new(body);
    let member_id = input.u64("member id")?;
    let cluster_id = input.u64("cluster id")?;
    let member_name = string(&mut input, "member name")?;
    let cluster_token = string(&mut input, "cluster token")?;
    let bootstrap = decode_membership(&mut input)?;
    let count = input.u32("initial member count")? as usize;
    if count > INITIAL_MEMBERS_MAX {
        return Err(input.error(
            "initial member count",
            format!("{count} exceeds {INITIAL_MEMBERS_MAX}"),
        ));
    }
    let mut initial_members = Vec::with_capacity(count);
    for _ in 0..count {
        let id = input.u64("initial member id")?;
        let name = string(&mut input, "initial member name")?;
        let urls = input.u32("peer url count")? as usize;
        if urls > URLS_PER_MEMBER_MAX {
            return Err(input.error(
                "peer url count",
                format!("{urls} exceeds {URLS_PER_MEMBER_MAX}"),
            ));
        }
        let peer_urls = (0..urls)
            .map(|_| string(&mut input, "peer url"))
            .collect::<Result<_, _>>()?;
        initial_members.push(InitialMember {
            id,
            name,
            peer_urls,
        });
    }
    input.finish("identity")?;
    Ok(Identity {
        member_id,
        member_name,
        cluster_id,
        cluster_token,
        bootstrap,
        initial_members,
    })
}

fn string(input: &mut Decoder<'_>, what: &'static str) -> Result<String, DecodeError> {
    let bytes = input.bytes(what)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| input.error(what, "not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Identity {
        Identity {
            member_id: 0xabc,
            member_name: "n1".into(),
            cluster_id: 42,
            cluster_token: "token".into(),
            bootstrap: Membership::with_voters([0xabc, 0xdef]),
            initial_members: vec![
                InitialMember {
                    id: 0xabc,
                    name: "n1".into(),
                    peer_urls: vec!["http://127.0.0.1:2380".into()],
                },
                InitialMember {
                    id: 0xdef,
                    name: "n2".into(),
                    peer_urls: vec!["http://127.0.0.1:2381".into()],
                },
            ],
        }
    }

    #[test]
    fn an_identity_reads_back_as_written_and_is_written_once() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Identity::load(dir.path()).unwrap().is_none());
        sample().create(dir.path()).unwrap();
        assert_eq!(Identity::load(dir.path()).unwrap(), Some(sample()));
        let again = sample().create(dir.path()).unwrap_err();
        assert!(
            matches!(again, IdentityError::AlreadyExists { .. }),
            "{again}"
        );
    }

    #[test]
    fn every_flipped_bit_and_every_truncation_is_refused() {
        let file = encode(&sample());
        for byte in 0..file.len() {
            let mut damaged = file.clone();
            damaged[byte] ^= 0x10;
            assert!(
                decode(&damaged).is_err(),
                "a flip at byte {byte} went unnoticed"
            );
        }
        for len in 0..file.len() {
            assert!(
                decode(&file[..len]).is_err(),
                "a cut at {len} bytes went unnoticed"
            );
        }
    }

    #[test]
    fn a_damaged_file_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), b"BALLOTIDnot really").unwrap();
        let error = Identity::load(dir.path()).unwrap_err().to_string();
        assert!(
            error.contains("identity") && error.contains("damaged"),
            "{error}"
        );
    }
}
