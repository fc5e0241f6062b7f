//! Protocol messages between nodes over TCP: one outgoing connection per peer, a bounded queue per
//! peer, reconnection with exponential back-off.
//!
//! The sender (the replica loop's thread) writes a frame to the socket itself when nothing is
//! queued for that peer: waking the peer's writer task costs a futex wake and often an IPI,
//! tens of microseconds on a small VM, and a commit waits for two such messages (append,
//! acknowledgement). Whatever the socket does not take at once (all of a frame, or the rest of
//! one) joins the queue, and the writer task drains it, frames batched into one write per
//! wake-up. Frames never overtake each other: a direct write happens only while no queued
//! frame is unwritten, so the rest of a partly written frame is always first in the queue.
//!
//! The protocols tolerate lost messages, so the transport never blocks the node: when a peer's queue is
//! full (the peer is down or slow) new messages to it are dropped and counted. A queue is bounded
//! in messages and in bytes, so a stalled peer costs the node at most `queue_bytes_max` of memory
//! whatever its groups send it (the protocols then resend from their logs, or a snapshot). Incoming
//! connections are checked (the hello) and then either read by a task that puts their messages
//! in a channel ([`Transport::start`]) or handed, with their [`FrameReader`], to an owner that
//! reads them itself ([`Transport::start_handing_off`]: the node's replica thread). Either way a
//! reader that falls behind stops reading, and TCP pushes back on the sender.
//!
//! Wire format. A connection starts with a hello, then carries frames:
//!
//! ```text
//! hello        magic "BALLOTP1" | token_len u16 | cluster token | sender node id u64
//! frame        len u32 | protocol message (the engine's own versioned form, `WireMessage`)
//! group frame  (len | 1 << 31) u32 | group u32 | protocol message
//! liveness     (4 | 1 << 31) u32 | 0xFFFF_FFFF u32         (no message: "this node is up")
//! ```
//!
//! `len` counts the bytes after it. A frame is group 0's (the only group a node had before
//! groups existed); a group frame carries its group, flagged by the top bit of its length (a
//! frame is never near 2 GiB). Group 0's frames stay exactly as version 1 wrote them, so a
//! node of an older release (in a rolling upgrade) still exchanges them; an older node cannot
//! read a group frame (it takes the length for an oversized frame and drops the connection), so
//! groups other than 0 are used only once every member runs a release that reads them.
//!
//! A liveness frame is a group frame of the reserved group [`LIVENESS_GROUP`] with nothing
//! after the group: node liveness for hibernating groups (`node::liveness`). Like every group
//! frame it goes only to nodes of a release that reads it.
//!
//! Coalescing. Probes no client waits on (a leader's plain heartbeat, its answer) and liveness
//! frames are held ([`Transport::hold`]) instead of written, and the node loop sends what a
//! batch held with one socket write per peer ([`Transport::send_held`]): a node whose thousand
//! awake groups each heartbeat a peer in a tick writes to that peer once, not a thousand times.
//! The frames inside that write are the ones above, so a node of any release reads them.
//!
//! A hello with another cluster token (a node of another cluster dialling the wrong port) is
//! refused, so clusters cannot mix.

use ballot_core::{GroupId, NodeId, WireMessage};
use bytes::{BufMut, Bytes, BytesMut};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const HELLO_MAGIC: &[u8; 8] = b"BALLOTP1";
/// The group id a liveness frame carries; never a replicated group's (the catalog stops below).
pub const LIVENESS_GROUP: GroupId = GroupId::MAX;
/// Set in a frame's length word when a group id follows it.
const GROUP_FRAME_FLAG: u32 = 1 << 31;
const GROUP_BYTES: usize = 4;

/// What a frame's length word says: how many bytes follow it, and whether they begin with a
/// group id. Public for whatever relays frames whole (`ballot check`'s fault-injecting proxy).
pub fn parse_length_word(word: u32) -> (usize, bool) {
    (
        (word & !GROUP_FRAME_FLAG) as usize,
        word & GROUP_FRAME_FLAG != 0,
    )
}

#[derive(Debug, Clone)]
pub struct TransportConfig {
    pub node_id: NodeId,
    /// Must be equal on every node of a cluster (etcd's `--initial-cluster-token`).
    pub cluster_token: String,
    /// Messages queued per peer before new ones are dropped.
    pub queue_messages_max: usize,
    /// Bytes queued per peer before new messages are dropped (one message is always let in when
    /// nothing is queued, however large, so the bound is this or one message).
    pub queue_bytes_max: usize,
    /// Largest frame accepted from a peer.
    pub frame_bytes_max: usize,
    /// Bytes gathered into one socket write.
    pub write_batch_bytes_max: usize,
    pub reconnect_backoff_min: Duration,
    pub reconnect_backoff_max: Duration,
}

impl TransportConfig {
    pub fn new(node_id: NodeId, cluster_token: impl Into<String>) -> Self {
        Self {
            node_id,
            cluster_token: cluster_token.into(),
            queue_messages_max: 4096,
            queue_bytes_max: 64 << 20,
            frame_bytes_max: 64 << 20,
            write_batch_bytes_max: 1 << 20,
            reconnect_backoff_min: Duration::from_millis(20),
            reconnect_backoff_max: Duration::from_secs(2),
        }
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct TransportStats {
    pub messages_sent: AtomicU64,
    pub messages_dropped: AtomicU64,
    pub messages_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub socket_writes: AtomicU64,
    /// Frames the sender wrote to the socket itself, whole (no writer task woken).
    pub direct_writes: AtomicU64,
    pub connects: AtomicU64,
    pub hellos_refused: AtomicU64,
    pub liveness_sent: AtomicU64,
    pub liveness_received: AtomicU64,
    /// Bytes waiting in every peer's queue now (a gauge).
    pub bytes_queued: AtomicU64,
    /// Held frames (probes and liveness) sent by [`Transport::send_held`], and the writes or
    /// queue slots they took: one per peer per batch.
    pub frames_coalesced: AtomicU64,
    pub coalesced_sends: AtomicU64,
}

/// Frames held for one peer until the batch ends.
#[derive(Default)]
struct Held {
    frames: BytesMut,
    count: u64,
    /// Of which liveness frames (counted as such when sent, not as messages).
    liveness: u64,
}

struct Peer {
    address: SocketAddr,
    queue: mpsc::Sender<Bytes>,
    writer: JoinHandle<()>,
    link: Arc<Mutex<Link>>,
}

/// What the sender and the peer's writer task share, under one lock.
#[derive(Default)]
struct Link {
    /// The writer task's connection once its hello is written; `None` while (re)connecting.
    stream: Option<Arc<TcpStream>>,
    /// Frames handed to the queue and not yet written (or dropped) by the writer task. A direct
    /// write is allowed only at zero, which keeps frames in order.
    unwritten: usize,
    /// The bytes of those frames.
    unwritten_bytes: usize,
}

/// The running transport. Dropping it stops its tasks.
pub struct Transport {
    config: Arc<TransportConfig>,
    peers: Mutex<HashMap<NodeId, Peer>>,
    listener: JoinHandle<()>,
    /// The runtime the transport was started on: peers may be added from outside it (the replica
    /// loop's thread applies `member add`).
    runtime: tokio::runtime::Handle,
    /// Frames held per peer until [`Transport::send_held`].
    held: Mutex<HashMap<NodeId, Held>>,
    pub stats: Arc<TransportStats>,
}

impl Transport {
    /// Listens on `listen` and delivers every valid incoming message to `inbound`. Returns the
    /// bound address (useful with port 0).
    pub async fn start<M: WireMessage>(
        config: TransportConfig,
        listen: SocketAddr,
        inbound: mpsc::Sender<(GroupId, M)>,
    ) -> std::io::Result<(Arc<Transport>, SocketAddr)> {
        let reader: ReaderTask = Arc::new(move |stream, frames, config, stats| {
            let inbound = inbound.clone();
            Box::pin(async move { read_loop(stream, frames, &config, &stats, &inbound).await })
        });
        Self::start_with(config, listen, Delivery::Messages(reader)).await
    }

    /// Like [`Transport::start`], but hands each accepted connection, past its hello, to
    /// `deliver`, whose owner reads the frames itself: the node's replica thread polls its peers'
    /// sockets, so a message is read by the thread that steps it, with no reader task to wake
    /// in between (two wake-ups less on every commit's critical path).
    pub async fn start_handing_off(
        config: TransportConfig,
        listen: SocketAddr,
        deliver: impl Fn(InboundConnection) + Send + Sync + 'static,
    ) -> std::io::Result<(Arc<Transport>, SocketAddr)> {
        Self::start_with(config, listen, Delivery::Connections(Arc::new(deliver))).await
    }

    async fn start_with(
        config: TransportConfig,
        listen: SocketAddr,
        delivery: Delivery,
    ) -> std::io::Result<(Arc<Transport>, SocketAddr)> {
        let listener = TcpListener::bind(listen).await?;
        let local = listener.local_addr()?;
        let config = Arc::new(config);
        let stats = Arc::new(TransportStats::default());
        let accept = tokio::spawn(accept_loop(
            listener,
            config.clone(),
            stats.clone(),
            delivery,
        ));
        let transport = Transport {
            config,
            peers: Mutex::new(HashMap::new()),
            listener: accept,
            held: Mutex::new(HashMap::new()),
            stats,
            runtime: tokio::runtime::Handle::current(),
        };
        Ok((Arc::new(transport), local))
    }

    /// What a reader of handed-off connections needs to parse their frames.
    pub fn config(&self) -> &Arc<TransportConfig> {
        &self.config
    }

    /// Adds or re-addresses a peer.
    pub fn set_peer(&self, id: NodeId, address: SocketAddr) {
        // The member registry repeats addresses (every publication of a member carries its
        // peer URLs): a connection to the same address is kept, with what is queued on it.
        if self
            .peers
            .lock()
            .expect("peer map lock")
            .get(&id)
            .is_some_and(|peer| peer.address == address)
        {
            return;
        }
        let (queue, receiver) = mpsc::channel(self.config.queue_messages_max);
        let link = Arc::new(Mutex::new(Link::default()));
        let writer = self.runtime.spawn(write_loop(
            id,
            address,
            self.config.clone(),
            self.stats.clone(),
            receiver,
            link.clone(),
        ));
        if let Some(old) = self.peers.lock().expect("peer map lock").insert(
            id,
            Peer {
                address,
                queue,
                writer,
                link,
            },
        ) {
            self.retire(old);
        }
    }

    pub fn remove_peer(&self, id: NodeId) {
        if let Some(old) = self.peers.lock().expect("peer map lock").remove(&id) {
            self.retire(old);
        }
    }

    /// Stops a peer's writer; what was queued for it is dropped with it.
    fn retire(&self, peer: Peer) {
        peer.writer.abort();
        let mut link = peer.link.lock().expect("peer link lock");
        let bytes = std::mem::take(&mut link.unwritten_bytes);
        self.stats
            .bytes_queued
            .fetch_sub(bytes as u64, Ordering::Relaxed);
    }

    /// Sends group 0's `message` to its addressee: [`Transport::send_to_group`].
    pub fn send<M: WireMessage>(&self, message: &M) {
        self.send_to_group(0, message);
    }

    /// Sends `message` of `group` to its addressee, writing it to the socket at once if nothing
    /// is queued there, else queueing it; never waits. Unknown peers and full queues drop it.
    pub fn send_to_group<M: WireMessage>(&self, group: GroupId, message: &M) {
        let mut frame = BytesMut::with_capacity(64);
        encode_frame(group, message, &mut frame);
        let frame = frame.freeze();
        let peers = self.peers.lock().expect("peer map lock");
        let sent = peers
            .get(&message.to())
            .is_some_and(|peer| self.write_or_queue(peer, frame));
        let counter = if sent {
            &self.stats.messages_sent
        } else {
            &self.stats.messages_dropped
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Holds `message` of `group` for its addressee until [`Transport::send_held`], which sends
    /// everything held for a peer in one write. For messages that may wait for the end of the
    /// batch: no client waits on them, and the protocols cope with their reordering.
    pub fn hold<M: WireMessage>(&self, group: GroupId, message: &M) {
        let mut held = self.held.lock().expect("held frames lock");
        let peer = held.entry(message.to()).or_default();
        encode_frame(group, message, &mut peer.frames);
        peer.count += 1;
    }

    /// Tells `peer` this node is up (a liveness frame), held like a probe until
    /// [`Transport::send_held`]; dropped like a message when the peer is unknown or its queue
    /// full.
    pub fn hold_liveness(&self, peer: NodeId) {
        let mut held = self.held.lock().expect("held frames lock");
        let peer = held.entry(peer).or_default();
        peer.frames
            .put_u32_le(GROUP_BYTES as u32 | GROUP_FRAME_FLAG);
        peer.frames.put_u32_le(LIVENESS_GROUP);
        peer.count += 1;
        peer.liveness += 1;
    }

    /// Sends what was held for each peer: one write (or one queue slot) per peer.
    pub fn send_held(&self) {
        let held = std::mem::take(&mut *self.held.lock().expect("held frames lock"));
        if held.is_empty() {
            return;
        }
        let peers = self.peers.lock().expect("peer map lock");
        for (to, frames) in held {
            let messages = frames.count - frames.liveness;
            let sent = peers
                .get(&to)
                .is_some_and(|peer| self.write_or_queue(peer, frames.frames.freeze()));
            if !sent {
                self.stats
                    .messages_dropped
                    .fetch_add(messages, Ordering::Relaxed);
                continue;
            }
            let stats = &self.stats;
            stats.messages_sent.fetch_add(messages, Ordering::Relaxed);
            stats
                .liveness_sent
                .fetch_add(frames.liveness, Ordering::Relaxed);
            stats
                .frames_coalesced
                .fetch_add(frames.count, Ordering::Relaxed);
            stats.coalesced_sends.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether `frame` was written or queued (false: the queue is full, in messages or bytes).
    fn write_or_queue(&self, peer: &Peer, frame: Bytes) -> bool {
        let mut link = peer.link.lock().expect("peer link lock");
        let rest = match &link.stream {
            Some(stream) if link.unwritten == 0 => match stream.try_write(&frame) {
                Ok(written) if written == frame.len() => {
                    self.stats.socket_writes.fetch_add(1, Ordering::Relaxed);
                    self.stats.direct_writes.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .bytes_sent
                        .fetch_add(written as u64, Ordering::Relaxed);
                    return true;
                }
                // The socket took part of it: the writer task finishes the frame.
                Ok(written) => {
                    self.stats.socket_writes.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .bytes_sent
                        .fetch_add(written as u64, Ordering::Relaxed);
                    frame.slice(written..)
                }
                // Full (or broken: the writer task finds out and reconnects).
                Err(_) => frame,
            },
            _ => frame,
        };
        // With nothing unwritten the queue is empty, so the rest of a partly written frame
        // fails to queue only if the writer task is gone, and its connection with it (the byte
        // bound never refuses it: it applies only behind frames already queued).
        let len = rest.len();
        if link.unwritten > 0 && link.unwritten_bytes + len > self.config.queue_bytes_max {
            return false;
        }
        let queued = peer.queue.try_send(rest).is_ok();
        if queued {
            link.unwritten += 1;
            link.unwritten_bytes += len;
            self.stats
                .bytes_queued
                .fetch_add(len as u64, Ordering::Relaxed);
        }
        queued
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.listener.abort();
        for (_, peer) in self.peers.lock().expect("peer map lock").drain() {
            peer.writer.abort();
        }
    }
}

/// Appends `message`'s frame (group 0's plain, any other group's flagged) to `out`.
fn encode_frame<M: WireMessage>(group: GroupId, message: &M, out: &mut BytesMut) {
    let start = out.len();
    out.put_u32_le(0);
    if group != 0 {
        out.put_u32_le(group);
    }
    message.encode(out);
    let len = (out.len() - start - 4) as u32;
    let word = if group == 0 {
        len
    } else {
        len | GROUP_FRAME_FLAG
    };
    out[start..start + 4].copy_from_slice(&word.to_le_bytes());
}

fn hello(config: &TransportConfig) -> Bytes {
    let mut hello = BytesMut::new();
    hello.put_slice(HELLO_MAGIC);
    hello.put_u16_le(config.cluster_token.len() as u16);
    hello.put_slice(config.cluster_token.as_bytes());
    hello.put_u64_le(config.node_id);
    hello.freeze()
}

async fn write_loop(
    peer: NodeId,
    address: SocketAddr,
    config: Arc<TransportConfig>,
    stats: Arc<TransportStats>,
    mut queue: mpsc::Receiver<Bytes>,
    link: Arc<Mutex<Link>>,
) {
    let hello = hello(&config);
    let mut backoff = config.reconnect_backoff_min;
    // Logged once per outage (not per retry): what an operator wants to see in the log.
    let mut unreachable_logged = false;
    let peer_id = format!("{peer:x}");
    loop {
        let mut stream = match TcpStream::connect(address).await {
            Ok(stream) => stream,
            Err(error) => {
                if !unreachable_logged {
                    tracing::warn!(peer = %peer_id, %address, %error, "cannot reach peer; retrying");
                    unreachable_logged = true;
                }
                tracing::debug!(peer = %peer_id, %address, %error, "peer connect failed; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(config.reconnect_backoff_max);
                continue;
            }
        };
        stats.connects.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        backoff = config.reconnect_backoff_min;
        if stream.write_all(&hello).await.is_err() {
            continue;
        }
        tracing::info!(peer = %peer_id, %address, "connected to peer");
        unreachable_logged = false;
        let stream = Arc::new(stream);
        link.lock().expect("peer link lock").stream = Some(stream.clone());
        let mut batch = BytesMut::with_capacity(64 * 1024);
        loop {
            let Some(first) = queue.recv().await else {
                return; // transport dropped
            };
            batch.clear();
            batch.put_slice(&first);
            let mut frames = 1;
            while batch.len() < config.write_batch_bytes_max {
                match queue.try_recv() {
                    Ok(frame) => {
                        batch.put_slice(&frame);
                        frames += 1;
                    }
                    Err(_) => break,
                }
            }
            let written = write_all_shared(&stream, &batch).await;
            let mut shared = link.lock().expect("peer link lock");
            shared.unwritten -= frames;
            // At most what is counted: a peer being replaced already took its bytes off.
            let done = batch.len().min(shared.unwritten_bytes);
            shared.unwritten_bytes -= done;
            stats.bytes_queued.fetch_sub(done as u64, Ordering::Relaxed);
            if let Err(error) = written {
                // Reconnect; the batch is lost, as the protocols allow. Direct writes stop until the
                // new connection's hello is out.
                shared.stream = None;
                tracing::warn!(peer = %peer_id, %address, %error, "lost the connection to peer; reconnecting");
                break;
            }
            drop(shared);
            stats.socket_writes.fetch_add(1, Ordering::Relaxed);
            stats
                .bytes_sent
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
    }
}

/// `write_all` on a stream the sender may also write to (never at the same time: see [`Link`]).
async fn write_all_shared(stream: &TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(written) => bytes = &bytes[written..],
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Reads one accepted connection's frames until it ends, delivering their messages: built by
/// [`Transport::start`] for its message type, so the accept loop needs none.
type ReaderTask = Arc<
    dyn Fn(
            TcpStream,
            FrameReader,
            Arc<TransportConfig>,
            Arc<TransportStats>,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>
        + Send
        + Sync,
>;

/// Where a transport puts what arrives.
#[derive(Clone)]
enum Delivery {
    /// A reader task per connection decodes frames and sends their messages on.
    Messages(ReaderTask),
    /// After the hello, the connection itself goes to its owner, who reads the frames.
    Connections(Arc<dyn Fn(InboundConnection) + Send + Sync>),
}

/// An accepted peer connection past its hello, handed to whoever reads its frames
/// ([`Transport::start_handing_off`]): a non-blocking socket and its frame parser.
pub struct InboundConnection {
    pub stream: std::net::TcpStream,
    pub frames: FrameReader,
}

async fn accept_loop(
    listener: TcpListener,
    config: Arc<TransportConfig>,
    stats: Arc<TransportStats>,
    delivery: Delivery,
) {
    loop {
        let Ok((stream, remote)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let config = config.clone();
        let stats = stats.clone();
        let delivery = delivery.clone();
        tokio::spawn(async move {
            let result = match read_hello(&stream, &config, &stats).await {
                Err(reason) => Err(reason),
                Ok(frames) => match delivery {
                    Delivery::Messages(reader) => {
                        reader(stream, frames, config.clone(), stats.clone()).await
                    }
                    Delivery::Connections(deliver) => match stream.into_std() {
                        Ok(stream) => {
                            deliver(InboundConnection { stream, frames });
                            Ok(())
                        }
                        Err(error) => Err(error.to_string()),
                    },
                },
            };
            if let Err(reason) = result {
                tracing::debug!(%remote, %reason, "peer connection closed");
            }
        });
    }
}

/// Reads and checks a connection's hello (unbuffered: what follows it is the frame reader's).
async fn read_hello(
    stream: &TcpStream,
    config: &TransportConfig,
    stats: &TransportStats,
) -> Result<FrameReader, String> {
    let mut magic = [0u8; 8];
    read_exact_shared(stream, &mut magic).await?;
    if &magic != HELLO_MAGIC {
        stats.hellos_refused.fetch_add(1, Ordering::Relaxed);
        return Err("not a ballot peer (bad magic)".into());
    }
    let mut token_len = [0u8; 2];
    read_exact_shared(stream, &mut token_len).await?;
    let mut token = vec![0u8; u16::from_le_bytes(token_len) as usize];
    read_exact_shared(stream, &mut token).await?;
    let mut sender = [0u8; 8];
    read_exact_shared(stream, &mut sender).await?;
    let sender = u64::from_le_bytes(sender);
    if token != config.cluster_token.as_bytes() {
        stats.hellos_refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(sender, "refused a peer with another cluster token");
        return Err(format!(
            "n{sender} belongs to another cluster (token mismatch)"
        ));
    }
    Ok(FrameReader::new(sender))
}

async fn read_exact_shared(stream: &TcpStream, mut into: &mut [u8]) -> Result<(), String> {
    while !into.is_empty() {
        stream.readable().await.map_err(|e| e.to_string())?;
        match stream.try_read(into) {
            Ok(0) => return Err("closed during the hello".into()),
            Ok(read) => into = &mut into[read..],
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(error) => return Err(error.to_string()),
        }
    }
    Ok(())
}

async fn read_loop<M: WireMessage>(
    stream: TcpStream,
    mut frames: FrameReader,
    config: &TransportConfig,
    stats: &TransportStats,
    inbound: &mpsc::Sender<(GroupId, M)>,
) -> Result<(), String> {
    let mut messages = Vec::new();
    loop {
        stream.readable().await.map_err(|e| e.to_string())?;
        let progress = frames.read_frames(
            config,
            stats,
            |buffer| stream.try_read(buffer),
            |group, message| messages.push((group, message)),
        );
        for message in messages.drain(..) {
            if inbound.send(message).await.is_err() {
                return Ok(()); // node stopped
            }
        }
        progress?;
    }
}

/// What [`FrameReader::read_frames`] left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadProgress {
    /// The socket has nothing more for now (wait until it is readable again).
    Drained,
    /// It stopped after `READ_BYTES_PER_CALL_MAX` bytes; the socket may have more (call again).
    More,
}

/// The frame buffer's size between large frames.
const FRAME_BUFFER_BYTES: usize = 256 * 1024;
/// Bytes one call of `read_frames` reads at most, so that one busy peer cannot hold its reader.
const READ_BYTES_PER_CALL_MAX: usize = 1 << 20;

/// The frames of one inbound connection: bytes read so far, cut into messages.
pub struct FrameReader {
    sender: NodeId,
    /// Bytes read and not yet parsed are `buffer[start..end]`; the rest is room to read into.
    buffer: Vec<u8>,
    start: usize,
    end: usize,
}

impl FrameReader {
    fn new(sender: NodeId) -> Self {
        FrameReader {
            sender,
            buffer: vec![0; FRAME_BUFFER_BYTES],
            start: 0,
            end: 0,
        }
    }

    /// The node on the other end (from its hello).
    pub fn sender(&self) -> NodeId {
        self.sender
    }

    /// Reads with `read` (a non-blocking socket read) until it would block or
    /// `READ_BYTES_PER_CALL_MAX` bytes came in, handing each whole frame's group and message to
    /// `deliver`. An error ends the connection: closed by the peer, or a frame that breaks the
    /// protocol (too large, undecodable, or not from the sender to this node).
    pub fn read_frames<M: WireMessage>(
        &mut self,
        config: &TransportConfig,
        stats: &TransportStats,
        mut read: impl FnMut(&mut [u8]) -> std::io::Result<usize>,
        mut deliver: impl FnMut(GroupId, M),
    ) -> Result<ReadProgress, String> {
        let mut read_bytes = 0;
        loop {
            self.make_room(config)?;
            match read(&mut self.buffer[self.end..]) {
                Ok(0) => return Err("closed by the peer".into()),
                Ok(count) => {
                    self.end += count;
                    read_bytes += count;
                }
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    return Ok(ReadProgress::Drained)
                }
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error.to_string()),
            }
            while let Some((group, message)) = self.next_frame(config, stats)? {
                stats.messages_received.fetch_add(1, Ordering::Relaxed);
                deliver(group, message);
            }
            if read_bytes >= READ_BYTES_PER_CALL_MAX {
                return Ok(ReadProgress::More);
            }
        }
    }

    /// The frame at `start`, once its length word is in: the length of what follows the word,
    /// and whether that begins with a group id.
    fn frame_header(&self, config: &TransportConfig) -> Result<Option<(usize, bool)>, String> {
        if self.end - self.start < 4 {
            return Ok(None);
        }
        let header: [u8; 4] = self.buffer[self.start..self.start + 4]
            .try_into()
            .expect("four bytes");
        let (len, grouped) = parse_length_word(u32::from_le_bytes(header));
        if len > config.frame_bytes_max {
            return Err(format!(
                "frame of {len} bytes from n{} exceeds {}",
                self.sender, config.frame_bytes_max
            ));
        }
        Ok(Some((len, grouped)))
    }

    fn next_frame<M: WireMessage>(
        &mut self,
        config: &TransportConfig,
        stats: &TransportStats,
    ) -> Result<Option<(GroupId, M)>, String> {
        self.skip_liveness_frames(config, stats)?;
        let Some((len, grouped)) = self.frame_header(config)? else {
            return Ok(None);
        };
        if self.end - self.start < 4 + len {
            return Ok(None);
        }
        let mut body = &self.buffer[self.start + 4..self.start + 4 + len];
        let group = if !grouped {
            0
        } else {
            if body.len() < GROUP_BYTES {
                return Err(format!(
                    "group frame of {len} bytes from n{} has no room for its group",
                    self.sender
                ));
            }
            let group = GroupId::from_le_bytes(body[..GROUP_BYTES].try_into().expect("4 bytes"));
            body = &body[GROUP_BYTES..];
            group
        };
        let message = M::decode(body).map_err(|e| format!("from n{}: {e}", self.sender))?;
        if message.from() != self.sender || message.to() != config.node_id {
            return Err(format!(
                "n{} sent a message {} -> {} on its connection",
                self.sender,
                message.from(),
                message.to()
            ));
        }
        self.consume(4 + len);
        Ok(Some((group, message)))
    }

    /// Steps over whole liveness frames at `start`: reading them was the point (the inbox notes
    /// when it last heard from a peer).
    fn skip_liveness_frames(
        &mut self,
        config: &TransportConfig,
        stats: &TransportStats,
    ) -> Result<(), String> {
        while let Some((GROUP_BYTES, true)) = self.frame_header(config)? {
            if self.end - self.start < 4 + GROUP_BYTES {
                return Ok(());
            }
            let group = &self.buffer[self.start + 4..self.start + 4 + GROUP_BYTES];
            if GroupId::from_le_bytes(group.try_into().expect("4 bytes")) != LIVENESS_GROUP {
                return Ok(());
            }
            stats.liveness_received.fetch_add(1, Ordering::Relaxed);
            self.consume(4 + GROUP_BYTES);
        }
        Ok(())
    }

    /// The frame of `bytes` at `start` is parsed.
    fn consume(&mut self, bytes: usize) {
        self.start += bytes;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Room after `end` for at least the rest of the frame being read (or its header): moves
    /// the unparsed bytes to the front, grows the buffer for a large frame, shrinks it back
    /// after one.
    fn make_room(&mut self, config: &TransportConfig) -> Result<(), String> {
        let needed = 4 + self.frame_header(config)?.map_or(0, |(len, _)| len);
        if self.start == self.end && self.buffer.len() > FRAME_BUFFER_BYTES {
            self.buffer = vec![0; FRAME_BUFFER_BYTES];
        }
        if self.start + needed > self.buffer.len() {
            self.buffer.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if needed > self.buffer.len() {
            self.buffer.resize(needed, 0);
        }
        Ok(())
    }
}
