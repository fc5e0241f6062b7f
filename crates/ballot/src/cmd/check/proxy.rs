//! Fault-injecting proxies for peer (Raft) traffic: one in front of every node's peer port, the
//! address the other members are told to dial. Owns the table of cut links; never touches a
//! process (that is the nemesis) and never looks inside a Raft message.
//!
//! The peer transport (`crates/server/src/transport.rs`) dials one connection per peer and only
//! sends on it: a hello (`"BALLOTP1" | token_len u16 | token | sender id u64`, little endian),
//! then frames (`len u32 | message`, or for a group other than 0 `len u32 | group u32 | message`
//! with the top bit of `len` set). The proxy of node `to` reads the hello to learn the sender,
//! passes it on to the node's real peer port, then forwards whole frames, dropping every frame
//! whose link `from -> to` is cut at the moment it passes. Dropping whole frames keeps the stream
//! well formed, so a cut costs no reconnection, and a heal takes effect at the next frame. Since
//! every link is one direction of one connection, one-way partitions fall out of the same table.
//!
//! Fault model: a cut link loses every message sent over it while it is cut (Raft tolerates
//! loss); messages are never reordered, duplicated or corrupted. A sender whose id is unknown
//! (not a member the tool started) is passed through untouched.

use ballot_server::transport::parse_length_word;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A node, by its position in the cluster plan (n1 is 0).
pub type NodeIndex = usize;

const HELLO_MAGIC: &[u8; 8] = b"BALLOTP1";
/// Largest frame passed on; the transport's own limit is the same.
const FRAME_BYTES_MAX: usize = 64 << 20;
/// Longest cluster token accepted in a hello.
const TOKEN_BYTES_MAX: usize = 4096;
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const BUFFER_BYTES: usize = 64 * 1024;

/// Which directed links are cut, and who is who. Shared by every proxy and the nemesis.
#[derive(Debug, Default)]
pub struct Links {
    /// `(from, to)`: frames from `from` to `to` are dropped.
    cut: Mutex<HashSet<(NodeIndex, NodeIndex)>>,
    /// Member id (from the hello) to node.
    members: Mutex<HashMap<u64, NodeIndex>>,
    pub frames_forwarded: AtomicU64,
    pub frames_dropped: AtomicU64,
}

impl Links {
    pub fn register_member(&self, member_id: u64, node: NodeIndex) {
        self.members
            .lock()
            .expect("members lock")
            .insert(member_id, node);
    }

    pub fn node_of(&self, member_id: u64) -> Option<NodeIndex> {
        self.members
            .lock()
            .expect("members lock")
            .get(&member_id)
            .copied()
    }

    /// Replaces the cut links with `cut`.
    pub fn set_cut(&self, cut: HashSet<(NodeIndex, NodeIndex)>) {
        *self.cut.lock().expect("cut lock") = cut;
    }

    pub fn heal(&self) {
        self.cut.lock().expect("cut lock").clear();
    }

    pub fn is_cut(&self, from: NodeIndex, to: NodeIndex) -> bool {
        self.cut.lock().expect("cut lock").contains(&(from, to))
    }
}

/// A running proxy; dropping it stops accepting (connections already open run until either
/// end closes).
pub struct Proxy {
    pub port: u16,
    accept: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Listens on a free loopback port and forwards to `node`'s real peer port `upstream_port`.
pub async fn start(
    node: NodeIndex,
    upstream_port: u16,
    links: Arc<Links>,
) -> std::io::Result<Proxy> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let accept = tokio::spawn(async move {
        loop {
            let Ok((downstream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let links = links.clone();
            tokio::spawn(async move {
                // An error only ends this connection; the sender reconnects by itself.
                let _ = relay(downstream, node, upstream_port, &links).await;
            });
        }
    });
    Ok(Proxy { port, accept })
}

async fn relay(
    downstream: TcpStream,
    to: NodeIndex,
    upstream_port: u16,
    links: &Links,
) -> std::io::Result<()> {
    let _ = downstream.set_nodelay(true);
    let upstream = tokio::time::timeout(
        UPSTREAM_CONNECT_TIMEOUT,
        TcpStream::connect(("127.0.0.1", upstream_port)),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "upstream connect"))??;
    let _ = upstream.set_nodelay(true);
    let mut reader = BufReader::with_capacity(BUFFER_BYTES, downstream);
    let mut writer = BufWriter::with_capacity(BUFFER_BYTES, upstream);
    let (hello, sender) = read_hello(&mut reader).await?;
    writer.write_all(&hello).await?;
    writer.flush().await?;
    let from = links.node_of(sender);
    let mut frame = Vec::new();
    loop {
        let word = match reader.read_u32_le().await {
            Ok(word) => word,
            Err(_) => return Ok(()), // the sender closed
        };
        // A group's frame (or a liveness frame) is relayed as whole as group 0's.
        let (len, _grouped) = parse_length_word(word);
        if len > FRAME_BYTES_MAX {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("frame of {len} bytes"),
            ));
        }
        frame.resize(len, 0);
        reader.read_exact(&mut frame).await?;
        if from.is_some_and(|from| links.is_cut(from, to)) {
            links.frames_dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            writer.write_all(&word.to_le_bytes()).await?;
            writer.write_all(&frame).await?;
            links.frames_forwarded.fetch_add(1, Ordering::Relaxed);
        }
        // Batch what the sender wrote together; flush once nothing more is waiting.
        if reader.buffer().is_empty() {
            writer.flush().await?;
        }
    }
}

/// Reads a hello; returns its bytes (to pass on unchanged) and the sender's member id.
async fn read_hello(reader: &mut (impl AsyncRead + Unpin)) -> std::io::Result<(Vec<u8>, u64)> {
    let mut hello = vec![0u8; HELLO_MAGIC.len() + 2];
    reader.read_exact(&mut hello).await?;
    if &hello[..HELLO_MAGIC.len()] != HELLO_MAGIC {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a ballot peer hello",
        ));
    }
    let token_len = u16::from_le_bytes([hello[8], hello[9]]) as usize;
    if token_len > TOKEN_BYTES_MAX {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "cluster token too long",
        ));
    }
    let start = hello.len();
    hello.resize(start + token_len + 8, 0);
    reader.read_exact(&mut hello[start..]).await?;
    let id_bytes: [u8; 8] = hello[hello.len() - 8..].try_into().expect("8 bytes");
    Ok((hello, u64::from_le_bytes(id_bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(sender: u64) -> Vec<u8> {
        let mut bytes = HELLO_MAGIC.to_vec();
        bytes.extend_from_slice(&3u16.to_le_bytes());
        bytes.extend_from_slice(b"tok");
        bytes.extend_from_slice(&sender.to_le_bytes());
        bytes
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut bytes = (payload.len() as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(payload);
        bytes
    }

    /// A frame of a group other than 0: the top bit of the length word set, the group first.
    fn group_frame(group: u32, payload: &[u8]) -> Vec<u8> {
        let mut bytes = ((payload.len() as u32 + 4) | 1 << 31)
            .to_le_bytes()
            .to_vec();
        bytes.extend_from_slice(&group.to_le_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    #[tokio::test]
    async fn frames_on_a_cut_link_are_dropped_and_a_heal_lets_them_through() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream_port = upstream.local_addr().unwrap().port();
        let links = Arc::new(Links::default());
        links.register_member(41, 0);
        let proxy = start(1, upstream_port, links.clone()).await.unwrap();
        let mut sender = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
        let (mut received, _) = upstream.accept().await.unwrap();

        sender.write_all(&hello(41)).await.unwrap();
        sender.write_all(&frame(b"one")).await.unwrap();
        sender.write_all(&group_frame(7, b"two")).await.unwrap();
        let mut expected = hello(41);
        expected.extend(frame(b"one"));
        expected.extend(group_frame(7, b"two"));
        let mut got = vec![0u8; expected.len()];
        received.read_exact(&mut got).await.unwrap();
        assert_eq!(
            got, expected,
            "the hello, a frame and a group's frame pass unchanged"
        );

        links.set_cut([(0, 1)].into_iter().collect());
        sender.write_all(&frame(b"lost")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        links.heal();
        sender.write_all(&frame(b"three")).await.unwrap();
        let mut got = vec![0u8; frame(b"three").len()];
        received.read_exact(&mut got).await.unwrap();
        assert_eq!(got, frame(b"three"), "the frame sent while cut is gone");
        assert_eq!(links.frames_dropped.load(Ordering::Relaxed), 1);
        assert!(!links.is_cut(1, 0), "links are directed");
    }
}
