//! A client that names the member by URL in `:authority`, as grpc-go does for etcdctl 3.4's
//! per-member calls given `http://` endpoints (`endpoint status`, `defrag`, every `--cluster`
//! form), gets its answers from the served etcd API: the first request with the value as a
//! Huffman-coded literal added to the HPACK table, the second naming that table entry. Without
//! the repair in front of h2, both streams were reset with PROTOCOL_ERROR.

mod etcd_support;

use ballot_proto::etcdserverpb as pb;
use ballot_server::authority::huffman;
use ballot_server::etcd::RequestLimits;
use etcd_support::Cluster;
use prost::Message;
use std::collections::HashMap;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// An HPACK string literal, Huffman-coded (RFC 7541 §5.2); every string here is shorter than
/// 127 octets coded, so its length fits the 7-bit prefix.
fn huffman_string(text: &str) -> Vec<u8> {
    let mut encoded = vec![0u8; huffman::encoded_len(text.as_bytes())];
    huffman::encode(text.as_bytes(), &mut encoded);
    assert!(encoded.len() < 127);
    let mut out = vec![0x80 | encoded.len() as u8];
    out.extend(encoded);
    out
}

/// The first request's header block, as grpc-go writes it: each field a literal added to the
/// dynamic table (name by static index, or a literal name).
fn first_block(authority: &str) -> Vec<u8> {
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
    block.push(0x44); // :path, with indexing
    block.extend(huffman_string("/etcdserverpb.Maintenance/Status"));
    block.push(0x41); // :authority, with indexing
    block.extend(huffman_string(authority));
    for (name, value) in [("content-type", "application/grpc"), ("te", "trailers")] {
        block.push(0x40);
        block.extend(huffman_string(name));
        block.extend(huffman_string(value));
    }
    block
}

/// The second request names every field from the tables: te is entry 62, content-type 63,
/// :authority 64, :path 65 (the newest entry has the lowest index).
const SECOND_BLOCK: [u8; 6] = [0x83, 0x86, 0xc1, 0xc0, 0xbf, 0xbe];

/// An empty gRPC message (StatusRequest has no fields): not compressed, length 0.
const EMPTY_MESSAGE: [u8; 5] = [0, 0, 0, 0, 0];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_url_authority_is_answered_like_any_other() {
    let cluster = Cluster::start(RequestLimits::default()).await;
    let member = 0;
    let url = &cluster.client_urls[member];
    let address = url.strip_prefix("http://").unwrap();
    let mut client = TcpStream::connect(address).await.unwrap();
    let mut sent = PREFACE.to_vec();
    sent.extend(frame(SETTINGS, 0, 0, &[]));
    sent.extend(frame(HEADERS, END_HEADERS, 1, &first_block(url)));
    sent.extend(frame(DATA, END_STREAM, 1, &EMPTY_MESSAGE));
    sent.extend(frame(HEADERS, END_HEADERS, 3, &SECOND_BLOCK));
    sent.extend(frame(DATA, END_STREAM, 3, &EMPTY_MESSAGE));
    client.write_all(&sent).await.unwrap();

    // Frames until both streams have their answer's message.
    let mut messages: HashMap<u32, Vec<u8>> = HashMap::new();
    let read_both = async {
        while [1, 3].iter().any(|stream| {
            messages
                .get(stream)
                .is_none_or(|data| data.len() < EMPTY_MESSAGE.len())
        }) {
            let mut header = [0u8; 9];
            client.read_exact(&mut header).await.unwrap();
            let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
            let mut payload = vec![0u8; length];
            client.read_exact(&mut payload).await.unwrap();
            match header[3] {
                RST_STREAM => panic!("stream {stream} reset: {payload:?}"),
                GOAWAY => panic!("the server went away: {payload:?}"),
                DATA => messages.entry(stream).or_default().extend(payload),
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read_both)
        .await
        .expect("both answers within 10 s");
    for stream in [1, 3] {
        let data = &messages[&stream];
        let length = u32::from_be_bytes(data[1..5].try_into().unwrap()) as usize;
        assert_eq!(data[0], 0, "not compressed");
        assert_eq!(
            data.len(),
            5 + length,
            "one whole message on stream {stream}"
        );
        let status = pb::StatusResponse::decode(&data[5..]).unwrap();
        assert_eq!(
            status.header.unwrap().member_id,
            cluster.ids[member],
            "stream {stream}"
        );
        assert!(status.raft_term > 0);
    }
}
