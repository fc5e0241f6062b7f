//! The peer transport on loopback: delivery in order, batching, direct writes from a plain
//! thread with frames kept in order, frames of every group on one connection, a refused
//! foreign cluster,
//! reconnection after a peer restarts, and dropping (not blocking) when a peer is down.

use ballot_core::{Entry, EntryPayload, LogPosition};
use ballot_raft::{Message, MessageBody};
use ballot_server::transport::{Transport, TransportConfig};
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::timeout;

fn heartbeat(from: u64, to: u64, round: u64) -> Message {
    Message {
        from,
        to,
        term: 1,
        body: MessageBody::Heartbeat {
            leader_commit: 0,
            read_round: round,
        },
    }
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A message and the group its frame named.
type Grouped = (u32, Message);

async fn receive_grouped(inbound: &mut mpsc::Receiver<Grouped>) -> Grouped {
    timeout(Duration::from_secs(5), inbound.recv())
        .await
        .expect("a message within 5 s")
        .unwrap()
}

/// The next message, which must be group 0's.
async fn receive(inbound: &mut mpsc::Receiver<Grouped>) -> Message {
    let (group, message) = receive_grouped(inbound).await;
    assert_eq!(group, 0, "{message:?} came in a frame of group {group}");
    message
}

/// Sends heartbeats from n1 to n2 until one arrives (a connection may still be coming up, and
/// what is sent before it is may be lost); the one that arrived.
async fn send_until_one_arrives(
    one: &Transport,
    two_inbound: &mut mpsc::Receiver<Grouped>,
) -> Message {
    for round in 1..100 {
        one.send(&heartbeat(1, 2, round));
        if let Ok(Some((_, message))) =
            timeout(Duration::from_millis(100), two_inbound.recv()).await
        {
            return message;
        }
    }
    panic!("no connection within 10 s");
}

/// n1 connected to n2, with the first messages through and drained: n1, n2, and what n2
/// receives (room for `inbound_max` messages).
async fn connected_pair(
    inbound_max: usize,
) -> (
    std::sync::Arc<Transport>,
    std::sync::Arc<Transport>,
    mpsc::Receiver<Grouped>,
) {
    let (to_one, _one_inbound) = mpsc::channel::<Grouped>(16);
    let (to_two, mut two_inbound) = mpsc::channel::<Grouped>(inbound_max);
    let (one, _) = Transport::start(TransportConfig::new(1, "t"), any_port(), to_one)
        .await
        .unwrap();
    let (two, two_addr) = Transport::start(TransportConfig::new(2, "t"), any_port(), to_two)
        .await
        .unwrap();
    one.set_peer(2, two_addr);
    send_until_one_arrives(&one, &mut two_inbound).await;
    while let Ok(Some(_)) = timeout(Duration::from_millis(50), two_inbound.recv()).await {}
    (one, two, two_inbound)
}

/// A loopback address nothing listens on yet.
fn reserved_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

fn append(from: u64, to: u64, index: u64, payload_bytes: usize) -> Message {
    Message {
        from,
        to,
        term: 1,
        body: MessageBody::AppendEntries {
            prev_log: ballot_core::LogPosition::new(index - 1, 1),
            entries: vec![ballot_core::Entry {
                index,
                term: 1,
                payload: ballot_core::EntryPayload::Command(
                    vec![index as u8; payload_bytes].into(),
                ),
            }],
            leader_commit: 0,
        },
    }
}

#[tokio::test]
async fn messages_queued_while_connecting_arrive_in_order_and_are_batched() {
    let (to_one, mut one_inbound) = mpsc::channel::<Grouped>(10_000);
    let (to_two, mut two_inbound) = mpsc::channel::<Grouped>(10_000);
    let (one, one_addr) = Transport::start(TransportConfig::new(1, "t"), any_port(), to_one)
        .await
        .unwrap();
    // The peer is not up yet: everything queues, and the writer drains it once connected.
    let two_addr = reserved_port();
    one.set_peer(2, two_addr);
    for round in 1..=1000 {
        one.send(&heartbeat(1, 2, round));
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    let (two, _) = Transport::start(TransportConfig::new(2, "t"), two_addr, to_two)
        .await
        .unwrap();
    two.set_peer(1, one_addr);
    for round in 1..=1000 {
        assert_eq!(receive(&mut two_inbound).await, heartbeat(1, 2, round));
    }
    two.send(&heartbeat(2, 1, 7));
    assert_eq!(receive(&mut one_inbound).await, heartbeat(2, 1, 7));
    let writes = one.stats.socket_writes.load(Ordering::Relaxed);
    assert!(
        writes < 100,
        "1000 queued messages took {writes} socket writes: no batching"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_thread_writes_directly_and_frames_never_overtake_each_other() {
    let (one, _two, mut two_inbound) = connected_pair(100_000).await;
    let written_by_task_before = one.stats.socket_writes.load(Ordering::Relaxed)
        - one.stats.direct_writes.load(Ordering::Relaxed);
    // From a thread outside the runtime, as the raft loop sends: small frames go straight to
    // the socket; 8 MiB ones overfill it, so the rest of one is left to the writer task and
    // the frames after it queue behind it.
    let sender = one.clone();
    std::thread::spawn(move || {
        for index in 1..=400u64 {
            if index % 50 == 0 {
                sender.send(&append(1, 2, index, 8 << 20));
            } else {
                sender.send(&append(1, 2, index, 10));
            }
            if index % 10 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    })
    .join()
    .unwrap();
    for index in 1..=400u64 {
        let size = if index % 50 == 0 { 8 << 20 } else { 10 };
        assert_eq!(receive(&mut two_inbound).await, append(1, 2, index, size));
    }
    let direct = one.stats.direct_writes.load(Ordering::Relaxed);
    let by_task = one.stats.socket_writes.load(Ordering::Relaxed) - direct;
    assert!(direct > 0, "no frame was written directly");
    assert!(
        by_task > written_by_task_before,
        "the writer task never finished a frame, so the ordering rule went untested"
    );
    assert_eq!(one.stats.messages_dropped.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_node_of_another_cluster_is_refused() {
    let (to_one, mut one_inbound) = mpsc::channel::<Grouped>(16);
    let (to_two, _two_inbound) = mpsc::channel::<Grouped>(16);
    let (one, one_addr) =
        Transport::start(TransportConfig::new(1, "cluster-a"), any_port(), to_one)
            .await
            .unwrap();
    let (two, _) = Transport::start(TransportConfig::new(2, "cluster-b"), any_port(), to_two)
        .await
        .unwrap();
    two.set_peer(1, one_addr);
    two.send(&heartbeat(2, 1, 1));
    assert!(
        timeout(Duration::from_millis(300), one_inbound.recv())
            .await
            .is_err(),
        "foreign message delivered"
    );
    assert!(one.stats.hellos_refused.load(Ordering::Relaxed) >= 1);
}

#[tokio::test]
async fn a_restarted_peer_is_reconnected() {
    let (to_one, _one_inbound) = mpsc::channel::<Grouped>(16);
    let (one, _) = Transport::start(TransportConfig::new(1, "t"), any_port(), to_one)
        .await
        .unwrap();
    let (to_two, mut two_inbound) = mpsc::channel::<Grouped>(16);
    let (two, two_addr) = Transport::start(TransportConfig::new(2, "t"), any_port(), to_two)
        .await
        .unwrap();
    one.set_peer(2, two_addr);
    one.send(&heartbeat(1, 2, 1));
    assert_eq!(receive(&mut two_inbound).await, heartbeat(1, 2, 1));
    drop(two);
    drop(two_inbound);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (to_two, mut two_inbound) = mpsc::channel::<Grouped>(16);
    let (_two, _) = Transport::start(TransportConfig::new(2, "t"), two_addr, to_two)
        .await
        .unwrap();
    // Messages sent while the peer was away may be lost; keep sending until one gets through.
    let received = send_until_one_arrives(&one, &mut two_inbound).await;
    assert!(matches!(received.body, MessageBody::Heartbeat { .. }));
}

#[tokio::test]
async fn sending_to_a_dead_peer_drops_instead_of_blocking() {
    let (to_one, _one_inbound) = mpsc::channel::<Grouped>(16);
    let mut config = TransportConfig::new(1, "t");
    config.queue_messages_max = 8;
    let (one, _) = Transport::start(config, any_port(), to_one).await.unwrap();
    one.set_peer(2, "127.0.0.1:1".parse().unwrap()); // nothing listens there
    for round in 0..100 {
        one.send(&heartbeat(1, 2, round));
    }
    assert!(one.stats.messages_dropped.load(Ordering::Relaxed) >= 90);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_peer_holds_at_most_the_queue_byte_bound() {
    // A peer that accepts the connection and never reads (a stopped process): once the socket
    // buffers are full, frames queue up to the byte bound and the rest are dropped.
    let stalled = tokio::net::TcpListener::bind(any_port()).await.unwrap();
    let stalled_addr = stalled.local_addr().unwrap();
    let (accepted_tx, accepted_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (socket, _) = stalled.accept().await.unwrap();
        let _ = accepted_tx.send(());
        // Held open, never read.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(socket);
    });
    let (to_one, _one_inbound) = mpsc::channel::<Grouped>(16);
    let mut config = TransportConfig::new(1, "t");
    const BOUND: usize = 4 << 20;
    config.queue_bytes_max = BOUND;
    let (one, _) = Transport::start(config, any_port(), to_one).await.unwrap();
    one.set_peer(2, stalled_addr);
    timeout(Duration::from_secs(5), accepted_rx)
        .await
        .expect("connected within 5 s")
        .unwrap();
    let append = |index: u64| Message {
        from: 1,
        to: 2,
        term: 1,
        body: MessageBody::AppendEntries {
            prev_log: LogPosition::new(index - 1, 1),
            entries: vec![Entry {
                index,
                term: 1,
                payload: EntryPayload::Command(Bytes::from(vec![7u8; 256 << 10])),
            }],
            leader_commit: 0,
        },
    };
    // 400 frames of 256 KiB: 100 MiB, far more than loopback socket buffers and the bound hold.
    for index in 1..=400 {
        one.send(&append(index));
        assert!(
            one.stats.bytes_queued.load(Ordering::Relaxed) <= BOUND as u64,
            "queued bytes exceed the bound after frame {index}"
        );
    }
    let dropped = one.stats.messages_dropped.load(Ordering::Relaxed);
    let queued = one.stats.bytes_queued.load(Ordering::Relaxed);
    assert!(dropped >= 300, "only {dropped} of 400 frames dropped");
    assert!(
        queued > (BOUND / 2) as u64,
        "the queue fills towards its bound before dropping: {queued} bytes"
    );
    one.remove_peer(2);
    assert_eq!(
        one.stats.bytes_queued.load(Ordering::Relaxed),
        0,
        "a removed peer's queue is released"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handed_off_connection_yields_every_frame_in_order_to_its_reader() {
    // As the replica thread reads its peers: the connection is handed over after the hello and
    // its owner reads frames from the non-blocking socket. Frames of 1 byte to 3 MiB make the
    // reader keep partial frames, grow its buffer past 256 KiB and shrink it again.
    let (handoff, connections) = std::sync::mpsc::channel();
    let handoff = std::sync::Mutex::new(handoff);
    let (_two, two_addr) = Transport::start_handing_off(
        TransportConfig::new(2, "t"),
        any_port(),
        move |connection| {
            let _ = handoff.lock().unwrap().send(connection);
        },
    )
    .await
    .unwrap();
    let (to_one, _one_inbound) = mpsc::channel::<Grouped>(16);
    let (one, _) = Transport::start(TransportConfig::new(1, "t"), any_port(), to_one)
        .await
        .unwrap();
    one.set_peer(2, two_addr);
    let size = |index: u64| match index % 40 {
        0 => 3 << 20,
        13 => 300_000,
        _ => 1 + (index as usize * 37) % 5000,
    };
    let reader = std::thread::spawn(move || {
        let mut connection: ballot_server::transport::InboundConnection = connections
            .recv_timeout(Duration::from_secs(10))
            .expect("a connection");
        assert_eq!(connection.frames.sender(), 1);
        connection.stream.set_nonblocking(true).unwrap();
        let config = TransportConfig::new(2, "t");
        let stats = ballot_server::transport::TransportStats::default();
        let mut received = Vec::new();
        let started = std::time::Instant::now();
        let all_in = |received: &Vec<_>| {
            received.len() == 200 && stats.liveness_received.load(Ordering::Relaxed) == 20
        };
        while !all_in(&received) && started.elapsed() < Duration::from_secs(20) {
            let stream = &mut connection.stream;
            connection
                .frames
                .read_frames(
                    &config,
                    &stats,
                    |buffer| std::io::Read::read(stream, buffer),
                    |group, message: Message| received.push((group, message)),
                )
                .expect("the connection stays up");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            stats.liveness_received.load(Ordering::Relaxed),
            20,
            "every liveness frame is read, and none is taken for a message"
        );
        received
    });
    // Frames sent before the connection is up wait in the writer's queue (see the first test).
    // Frames of three groups, plain and flagged, large and small, cut anywhere by the reads.
    // Liveness frames (a group id and nothing else) between them.
    for index in 1..=200u64 {
        one.send_to_group((index % 3) as u32, &append(1, 2, index, size(index)));
        if index % 10 == 0 {
            one.hold_liveness(2);
            one.send_held();
        }
    }
    let received = reader.join().unwrap();
    for (group, message) in &received {
        let MessageBody::AppendEntries { entries, .. } = &message.body else {
            panic!("unexpected {message:?}")
        };
        assert_eq!(
            u64::from(*group),
            entries[0].index % 3,
            "frame {} keeps its group",
            entries[0].index
        );
    }
    let received: Vec<Message> = received.into_iter().map(|(_, message)| message).collect();
    let indexes: Vec<u64> = received
        .iter()
        .map(|message| match &message.body {
            MessageBody::AppendEntries { entries, .. } => entries[0].index,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(indexes, (1..=200).collect::<Vec<_>>());
    for message in &received {
        let MessageBody::AppendEntries { entries, .. } = &message.body else {
            unreachable!()
        };
        let index = entries[0].index;
        assert_eq!(
            *message,
            append(1, 2, index, size(index)),
            "frame {index} intact"
        );
    }
}

#[tokio::test]
async fn every_group_shares_one_connection_and_each_frame_keeps_its_group() {
    let (one, _two, mut two_inbound) = connected_pair(1000).await;
    let groups = [0, 1, 7, u32::MAX >> 1, u32::MAX];
    for (round, &group) in groups.iter().enumerate() {
        one.send_to_group(group, &heartbeat(1, 2, round as u64));
        one.send_to_group(group, &append(1, 2, 3, 100));
    }
    for (round, &group) in groups.iter().enumerate() {
        assert_eq!(
            receive_grouped(&mut two_inbound).await,
            (group, heartbeat(1, 2, round as u64))
        );
        assert_eq!(
            receive_grouped(&mut two_inbound).await,
            (group, append(1, 2, 3, 100))
        );
    }
    assert_eq!(
        one.stats.connects.load(Ordering::Relaxed),
        1,
        "one connection carries every group"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_probes_of_many_groups_leave_in_one_write_and_keep_their_groups() {
    let (one, _two, mut two_inbound) = connected_pair(10_000).await;
    let writes_before = one.stats.socket_writes.load(Ordering::Relaxed);
    let liveness_before = one.stats.liveness_sent.load(Ordering::Relaxed);
    let groups = 500u32;
    for group in 0..groups {
        one.hold(group, &heartbeat(1, 2, 0));
    }
    one.hold_liveness(2);
    assert_eq!(
        one.stats.socket_writes.load(Ordering::Relaxed),
        writes_before,
        "held frames wait for send_held"
    );
    one.send_held();
    for group in 0..groups {
        assert_eq!(
            receive_grouped(&mut two_inbound).await,
            (group, heartbeat(1, 2, 0))
        );
    }
    let writes = one.stats.socket_writes.load(Ordering::Relaxed) - writes_before;
    // One write, or two when the socket took only part of it and the writer task wrote the
    // rest; never one per frame.
    assert!(
        (1..=2).contains(&writes),
        "{groups} probes and a ping took {writes} writes"
    );
    assert_eq!(one.stats.coalesced_sends.load(Ordering::Relaxed), 1);
    assert_eq!(
        one.stats.frames_coalesced.load(Ordering::Relaxed),
        u64::from(groups) + 1
    );
    assert_eq!(
        one.stats.liveness_sent.load(Ordering::Relaxed) - liveness_before,
        1
    );
    // Nothing held: nothing sent.
    one.send_held();
    assert_eq!(one.stats.coalesced_sends.load(Ordering::Relaxed), 1);
}
