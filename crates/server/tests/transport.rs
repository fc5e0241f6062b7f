//! The peer transport on loopback: delivery in order, batching, a refused foreign cluster,
//! reconnection after a peer restarts, and dropping (not blocking) when a peer is down.

use ballot_raft::{Message, MessageBody};
use ballot_server::transport::{Transport, TransportConfig};
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

async fn receive(inbound: &mut mpsc::Receiver<Message>) -> Message {
    timeout(Duration::from_secs(5), inbound.recv())
        .await
        .expect("a message within 5 s")
        .unwrap()
}

#[tokio::test]
async fn messages_arrive_in_order_and_are_batched() {
    let (to_one, mut one_inbound) = mpsc::channel(10_000);
    let (to_two, mut two_inbound) = mpsc::channel(10_000);
    let (one, one_addr) = Transport::start(TransportConfig::new(1, "t"), any_port(), to_one)
        .await
        .unwrap();
    let (two, two_addr) = Transport::start(TransportConfig::new(2, "t"), any_port(), to_two)
        .await
        .unwrap();
    one.set_peer(2, two_addr);
    two.set_peer(1, one_addr);
    for round in 1..=1000 {
        one.send(&heartbeat(1, 2, round));
    }
    for round in 1..=1000 {
        assert_eq!(receive(&mut two_inbound).await, heartbeat(1, 2, round));
    }
    two.send(&heartbeat(2, 1, 7));
    assert_eq!(receive(&mut one_inbound).await, heartbeat(2, 1, 7));
    let writes = one.stats.socket_writes.load(Ordering::Relaxed);
    assert!(
        writes < 1000,
        "1000 messages took {writes} socket writes: no batching"
    );
}

#[tokio::test]
async fn a_node_of_another_cluster_is_refused() {
    let (to_one, mut one_inbound) = mpsc::channel(16);
    let (to_two, _two_inbound) = mpsc::channel(16);
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
    let (to_one, _one_inbound) = mpsc::channel(16);
    let (one, _) = Transport::start(TransportConfig::new(1, "t"), any_port(), to_one)
        .await
        .unwrap();
    let (to_two, mut two_inbound) = mpsc::channel(16);
    let (two, two_addr) = Transport::start(TransportConfig::new(2, "t"), any_port(), to_two)
        .await
        .unwrap();
    one.set_peer(2, two_addr);
    one.send(&heartbeat(1, 2, 1));
    assert_eq!(receive(&mut two_inbound).await, heartbeat(1, 2, 1));
    drop(two);
    drop(two_inbound);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (to_two, mut two_inbound) = mpsc::channel(16);
    let (_two, _) = Transport::start(TransportConfig::new(2, "t"), two_addr, to_two)
        .await
        .unwrap();
    // Messages sent while the peer was away may be lost; keep sending until one gets through.
    let mut round = 2;
    let received = loop {
        one.send(&heartbeat(1, 2, round));
        if let Ok(Some(message)) = timeout(Duration::from_millis(100), two_inbound.recv()).await {
            break message;
        }
        round += 1;
        assert!(round < 100, "no reconnection within 10 s");
    };
    assert!(matches!(received.body, MessageBody::Heartbeat { .. }));
}

#[tokio::test]
async fn sending_to_a_dead_peer_drops_instead_of_blocking() {
    let (to_one, _one_inbound) = mpsc::channel(16);
    let mut config = TransportConfig::new(1, "t");
    config.queue_messages_max = 8;
    let (one, _) = Transport::start(config, any_port(), to_one).await.unwrap();
    one.set_peer(2, "127.0.0.1:1".parse().unwrap()); // nothing listens there
    for round in 0..100 {
        one.send(&heartbeat(1, 2, round));
    }
    assert!(one.stats.messages_dropped.load(Ordering::Relaxed) >= 90);
}
