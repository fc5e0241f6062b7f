//! The repair seen from h2's side: client byte streams built frame by frame, read through
//! [`AuthorityRepair`] in every split, compared with the stream a client would have sent with
//! the repaired value; and a real h2 server reading a request that it refuses without it.

use super::*;
use std::collections::VecDeque;
use tokio::io::AsyncReadExt;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const URL: &str = "http://127.0.0.1:2379";
const REPAIRED: &str = "http-x-127.0.0.1:2379";

/// An HTTP/2 frame (RFC 7540 §4.1).
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const DATA: u8 = 0x0;
const SETTINGS: u8 = 0x4;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// An HPACK integer (RFC 7541 §5.1) with `high` in the bits above its prefix.
fn integer(high: u8, prefix_bits: u32, value: usize) -> Vec<u8> {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        return vec![high | value as u8];
    }
    let mut out = vec![high | max as u8];
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
    out
}

/// An HPACK string literal (§5.2).
fn string(text: &str, huffman: bool) -> Vec<u8> {
    if !huffman {
        let mut out = integer(0, 7, text.len());
        out.extend(text.as_bytes());
        return out;
    }
    let mut encoded = vec![0u8; huffman::encoded_len(text.as_bytes())];
    huffman::encode(text.as_bytes(), &mut encoded);
    let mut out = integer(0x80, 7, encoded.len());
    out.extend(encoded);
    out
}

/// How a literal field is represented (§6.2): its first octet's high bits and prefix.
#[derive(Clone, Copy)]
enum Literal {
    Indexing,
    WithoutIndexing,
    NeverIndexed,
}

impl Literal {
    fn high_and_prefix(self) -> (u8, u32) {
        match self {
            Literal::Indexing => (0x40, 6),
            Literal::WithoutIndexing => (0x00, 4),
            Literal::NeverIndexed => (0x10, 4),
        }
    }
}

fn indexed(index: usize) -> Vec<u8> {
    integer(0x80, 7, index)
}

fn literal_indexed_name(kind: Literal, name_index: usize, value: &str, huffman: bool) -> Vec<u8> {
    let (high, prefix) = kind.high_and_prefix();
    let mut out = integer(high, prefix, name_index);
    out.extend(string(value, huffman));
    out
}

fn literal_new_name(kind: Literal, name: &str, value: &str, huffman: bool) -> Vec<u8> {
    let (high, _) = kind.high_and_prefix();
    let mut out = vec![high];
    out.extend(string(name, huffman));
    out.extend(string(value, huffman));
    out
}

/// A gRPC request's header block, as grpc-go writes its first one, with `authority` as a
/// Huffman-coded or raw literal that is added to the dynamic table.
fn request_block(authority: &str, huffman: bool) -> Vec<u8> {
    let mut block = indexed(3); // :method POST
    block.extend(indexed(6)); // :scheme http
    block.extend(literal_indexed_name(
        Literal::Indexing,
        4,
        "/etcdserverpb.Maintenance/Status",
        huffman,
    ));
    block.extend(literal_indexed_name(
        Literal::Indexing,
        1,
        authority,
        huffman,
    ));
    block.extend(literal_new_name(
        Literal::Indexing,
        "content-type",
        "application/grpc",
        huffman,
    ));
    block.extend(literal_new_name(
        Literal::Indexing,
        "te",
        "trailers",
        huffman,
    ));
    block
}

/// Where the `:authority` value's octets start in [`request_block`].
fn authority_value_offset(huffman: bool) -> usize {
    let path = "/etcdserverpb.Maintenance/Status";
    let before = indexed(3).len()
        + indexed(6).len()
        + literal_indexed_name(Literal::Indexing, 4, path, huffman).len();
    before + 2 // the name index, then the value's length
}

/// A connection: preface, SETTINGS, the request's HEADERS and DATA, then a second request
/// that names the first one's authority by its dynamic table index.
fn connection(block: &[u8]) -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out.extend(frame(HEADERS, END_HEADERS, 1, block));
    out.extend(frame(DATA, END_STREAM, 1, &[0, 0, 0, 0, 0]));
    // :method, :scheme, then :path, :authority, content-type and te from the dynamic table.
    let second = [0x83, 0x86, 0xc1, 0xc0, 0xbf, 0xbe];
    out.extend(frame(HEADERS, END_HEADERS, 3, &second));
    out.extend(frame(DATA, END_STREAM, 3, &[0, 0, 0, 0, 0]));
    out
}

/// A reader that returns `chunks` one per read (empty ones skipped), then the end.
struct Chunks(VecDeque<Vec<u8>>);

impl AsyncRead for Chunks {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.0.front().is_some_and(Vec::is_empty) {
            self.0.pop_front();
        }
        if let Some(mut chunk) = self.0.pop_front() {
            if chunk.len() > buf.remaining() {
                let rest = chunk.split_off(buf.remaining());
                self.0.push_front(rest);
            }
            buf.put_slice(&chunk);
        }
        Poll::Ready(Ok(()))
    }
}

fn read_through(chunks: Vec<Vec<u8>>, read_bytes: usize) -> Vec<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let mut stream = AuthorityRepair::new(Chunks(chunks.into()));
        let mut out = Vec::new();
        let mut buf = vec![0u8; read_bytes];
        loop {
            let read = stream.read(&mut buf).await.unwrap();
            if read == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..read]);
        }
    })
}

/// `input` read through the repair split at every octet boundary, in one-octet chunks, and
/// into small and large read buffers, always gives `expected`.
fn assert_repairs_to(input: &[u8], expected: &[u8]) {
    assert_eq!(input.len(), expected.len(), "the repair keeps the length");
    for split in 0..=input.len() {
        let chunks = vec![input[..split].to_vec(), input[split..].to_vec()];
        let out = read_through(chunks, 16 * 1024);
        assert!(
            out == expected,
            "split at {split}:\n{out:x?}\n{expected:x?}"
        );
    }
    let octets = input.iter().map(|&octet| vec![octet]).collect();
    assert_eq!(
        read_through(octets, 16 * 1024),
        expected,
        "one octet a read"
    );
    for read_bytes in [1, 3, 7, 64] {
        let chunks = input.chunks(5).map(<[u8]>::to_vec).collect();
        assert_eq!(
            read_through(chunks, read_bytes),
            expected,
            "reads of {read_bytes} octets"
        );
    }
}

#[test]
fn a_huffman_coded_url_authority_is_repaired_in_every_split() {
    let input = connection(&request_block(URL, true));
    let expected = connection(&request_block(REPAIRED, true));
    assert_ne!(input, expected);
    assert_repairs_to(&input, &expected);
}

#[test]
fn a_raw_url_authority_is_repaired_in_every_split() {
    let input = connection(&request_block(URL, false));
    let expected = connection(&request_block(REPAIRED, false));
    assert_repairs_to(&input, &expected);
}

#[test]
fn a_valid_authority_passes_byte_identical() {
    for huffman in [true, false] {
        let input = connection(&request_block("127.0.0.1:2379", huffman));
        assert_repairs_to(&input, &input);
    }
}

#[test]
fn padded_headers_with_priority_are_followed() {
    for (flags, huffman) in [(PADDED | PRIORITY, true), (PADDED, false), (PRIORITY, true)] {
        let payload = |block: &[u8]| {
            let mut payload = Vec::new();
            if flags & PADDED != 0 {
                payload.push(3);
            }
            if flags & PRIORITY != 0 {
                payload.extend([0x80, 0, 0, 0, 15]); // exclusive on stream 0, weight 16
            }
            payload.extend(block);
            if flags & PADDED != 0 {
                payload.extend([0, 0, 0]);
            }
            payload
        };
        // A second request after the first: the scanner is still in step.
        let build = |authority: &str| {
            let mut out = PREFACE.to_vec();
            let block = payload(&request_block(authority, huffman));
            out.extend(frame(HEADERS, END_HEADERS | flags, 1, &block));
            out.extend(frame(DATA, END_STREAM, 1, &[0; 5]));
            let block = payload(&request_block(authority, !huffman));
            out.extend(frame(HEADERS, END_HEADERS | flags, 3, &block));
            out
        };
        let input = build(URL);
        let expected = build(REPAIRED);
        assert_repairs_to(&input, &expected);
    }
}

/// A block cut into fragments of `sizes`, sent as HEADERS and CONTINUATIONs.
fn in_fragments(block: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    let mut rest = block;
    for (i, &size) in sizes.iter().enumerate() {
        let size = if i + 1 == sizes.len() {
            rest.len()
        } else {
            size
        };
        let (fragment, tail) = rest.split_at(size);
        rest = tail;
        let kind = if i == 0 { HEADERS } else { CONTINUATION };
        let flags = if rest.is_empty() { END_HEADERS } else { 0 };
        out.extend(frame(kind, flags, 1, fragment));
    }
    out.extend(frame(DATA, END_STREAM, 1, &[0; 5]));
    out
}

#[test]
fn a_value_split_over_continuation_frames_is_repaired() {
    for huffman in [true, false] {
        let block = request_block(URL, huffman);
        let repaired = request_block(REPAIRED, huffman);
        let value_at = authority_value_offset(huffman);
        // Cut inside the value, then into one-octet fragments across it, up to the most
        // pieces a value may have.
        let mut sizes = vec![value_at + 3];
        sizes.extend([1; 6]);
        sizes.push(0);
        let input = in_fragments(&block, &sizes);
        let expected = in_fragments(&repaired, &sizes);
        assert_repairs_to(&input, &expected);
        // An empty CONTINUATION in the middle changes nothing.
        let sizes = [value_at + 1, 0, 4, 0];
        assert_repairs_to(
            &in_fragments(&block, &sizes),
            &in_fragments(&repaired, &sizes),
        );
    }
}

#[test]
fn a_value_split_over_too_many_frames_passes_unrepaired() {
    let block = request_block(URL, false);
    let value_at = authority_value_offset(false);
    let mut sizes = vec![value_at];
    sizes.extend([1; 12]);
    sizes.push(0);
    let input = in_fragments(&block, &sizes);
    assert_repairs_to(&input, &input);
    // Empty CONTINUATIONs count too: a client cannot make the repair hold back its bytes for
    // long by sending them without end.
    let mut sizes = vec![value_at + 2];
    sizes.extend([0; 20]);
    sizes.push(0);
    let input = in_fragments(&block, &sizes);
    assert_repairs_to(&input, &input);
}

#[test]
fn literal_names_and_every_literal_representation_are_followed() {
    for huffman in [true, false] {
        for kind in [
            Literal::Indexing,
            Literal::WithoutIndexing,
            Literal::NeverIndexed,
        ] {
            let block = |authority: &str| {
                let mut block = integer(0x20, 5, 4096); // a dynamic table size update first
                block.extend(indexed(3));
                block.extend(literal_new_name(kind, ":authority", authority, huffman));
                block.extend(literal_indexed_name(kind, 1, authority, huffman));
                // Not `:authority`: a name of the same length, and a value left alone.
                block.extend(literal_new_name(kind, ":authorit_", URL, huffman));
                block.extend(literal_indexed_name(kind, 4, URL, huffman));
                block
            };
            let input = in_fragments(&block(URL), &[7, 0]);
            let expected = in_fragments(&block(REPAIRED), &[7, 0]);
            assert_repairs_to(&input, &expected);
        }
    }
}

#[test]
fn long_values_and_long_integers_are_skipped_over() {
    let long = format!("http://{}:1", "a".repeat(300));
    let build = |authority: &str| {
        let mut block = literal_indexed_name(Literal::Indexing, 1, &long, false);
        block.extend(literal_indexed_name(Literal::Indexing, 1, authority, false));
        in_fragments(&block, &[block.len()])
    };
    // Too long to be held back: passes as it is; the next value is still repaired.
    assert_repairs_to(&build(URL), &build(REPAIRED));
}

#[test]
fn malformed_input_passes_unchanged() {
    let valid = connection(&request_block(URL, true));
    // Not the preface.
    let mut bad_preface = valid.clone();
    bad_preface[3] = b'X';
    // Padding longer than the payload.
    let mut bad_padding = PREFACE.to_vec();
    let mut payload = vec![200];
    payload.extend(request_block(URL, false));
    bad_padding.extend(frame(HEADERS, END_HEADERS | PADDED, 1, &payload));
    // A block that stops in the middle of a field (h2 ends the connection: nothing after it
    // is followed).
    let mut cut_block = PREFACE.to_vec();
    let block = request_block("127.0.0.1:2379", false);
    cut_block.extend(frame(HEADERS, END_HEADERS, 1, &block[..block.len() - 3]));
    cut_block.extend(frame(HEADERS, END_HEADERS, 3, &request_block(URL, false)));
    // A DATA frame where a CONTINUATION must come.
    let mut interrupted = PREFACE.to_vec();
    interrupted.extend(frame(HEADERS, 0, 1, &[0x83]));
    interrupted.extend(frame(DATA, 0, 1, &[0; 5]));
    interrupted.extend(frame(HEADERS, END_HEADERS, 3, &request_block(URL, false)));
    // A Huffman string with padding longer than 7 bits where the authority should be.
    let mut bad_huffman = PREFACE.to_vec();
    let mut block = vec![0x41];
    let mut encoded = vec![0u8; huffman::encoded_len(URL.as_bytes())];
    huffman::encode(URL.as_bytes(), &mut encoded);
    encoded.push(0xff);
    block.extend(integer(0x80, 7, encoded.len()));
    block.extend(encoded);
    bad_huffman.extend(frame(HEADERS, END_HEADERS, 1, &block));
    // An integer longer than any header list.
    let mut huge_integer = PREFACE.to_vec();
    let mut block = vec![0x41, 0xff, 0xff, 0xff, 0xff, 0x7f];
    block.extend(request_block(URL, false));
    huge_integer.extend(frame(HEADERS, END_HEADERS, 1, &block));
    for (what, input) in [
        ("bad preface", bad_preface),
        ("bad padding", bad_padding),
        ("block ends inside a field", cut_block),
        ("DATA inside a block", interrupted),
        ("bad Huffman padding", bad_huffman),
        ("huge integer", huge_integer),
    ] {
        let out = read_through(vec![input.clone()], 16 * 1024);
        assert!(out == input, "{what}");
    }
}

/// A real h2 server on loopback reads a grpc-go style request with a URL authority, then a
/// second that names it by its dynamic table index: without the repair it resets the first
/// stream (PROTOCOL_ERROR, what etcdctl printed); with it both arrive, repaired.
#[tokio::test]
async fn h2_accepts_both_requests_only_with_the_repair() {
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    for repair in [false, true] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let mut authorities = Vec::new();
            let mut connection = if repair {
                let stream: Box<dyn Io> = Box::new(AuthorityRepair::new(socket));
                h2::server::handshake(stream).await.unwrap()
            } else {
                let stream: Box<dyn Io> = Box::new(socket);
                h2::server::handshake(stream).await.unwrap()
            };
            while let Some(Ok((request, mut respond))) = connection.accept().await {
                authorities.push(request.uri().authority().unwrap().to_string());
                let response = tonic::codegen::http::Response::new(());
                respond.send_response(response, true).unwrap();
                if authorities.len() == 2 {
                    break;
                }
            }
            authorities
        });
        let mut client = TcpStream::connect(address).await.unwrap();
        client
            .write_all(&connection(&request_block(URL, true)))
            .await
            .unwrap();
        let mut from_server = Vec::new();
        if repair {
            let authorities = server.await.unwrap();
            assert_eq!(authorities, [REPAIRED, REPAIRED]);
        } else {
            // Frames until the server resets stream 1 (RST_STREAM, type 3, PROTOCOL_ERROR).
            let reset = [0, 0, 4, 3, 0, 0, 0, 0, 1, 0, 0, 0, 1];
            let deadline = std::time::Duration::from_secs(10);
            tokio::time::timeout(deadline, async {
                while !from_server.windows(reset.len()).any(|w| w == reset) {
                    let mut chunk = [0u8; 1024];
                    let read = client.read(&mut chunk).await.unwrap();
                    assert!(read > 0, "the server closed without resetting stream 1");
                    from_server.extend_from_slice(&chunk[..read]);
                }
            })
            .await
            .expect("stream 1 was reset");
            server.abort();
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A small deterministic generator (xorshift64*), so a failing seed reproduces.
struct Draws(u64);

impl Draws {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }

    fn chance(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

/// A random client stream: requests whose header blocks mix every representation, Huffman and
/// raw strings, URL-looking values in fields other than `:authority`, blocks cut into HEADERS
/// (padded or not) and CONTINUATIONs, DATA frames full of URL-looking octets, and other frames.
/// With `repaired`, the same stream as it must come out: only URL `:authority` values differ.
fn random_stream(seed: u64, repaired: bool) -> Vec<u8> {
    let mut draws = Draws(seed);
    let literal = |draws: &mut Draws| match draws.below(3) {
        0 => Literal::Indexing,
        1 => Literal::WithoutIndexing,
        _ => Literal::NeverIndexed,
    };
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    for request in 0..20u32 {
        let stream = 2 * request + 1;
        let mut block = Vec::new();
        if draws.below(4) == 0 {
            block.extend(integer(0x20, 5, draws.below(4097))); // a table size update
        }
        block.extend(indexed(3));
        block.extend(indexed(6));
        let kind = literal(&mut draws);
        let huffman = draws.chance();
        block.extend(literal_indexed_name(kind, 4, "/svc/http://x/Call", huffman));
        let port = 1000 + draws.below(60000);
        let url = draws.chance();
        let authority = match (url, repaired) {
            (true, false) => format!("http://127.0.0.1:{port}"),
            (true, true) => format!("http-x-127.0.0.1:{port}"),
            (false, _) => format!("127.0.0.1:{port}"),
        };
        let kind = literal(&mut draws);
        let huffman = draws.chance();
        if draws.chance() {
            block.extend(literal_indexed_name(kind, 1, &authority, huffman));
        } else {
            block.extend(literal_new_name(kind, ":authority", &authority, huffman));
        }
        if draws.chance() {
            block.extend(indexed(62));
        }
        let kind = literal(&mut draws);
        let huffman = draws.chance();
        block.extend(literal_new_name(
            kind,
            "x-url",
            "https://elsewhere:1/",
            huffman,
        ));
        // HEADERS, then up to four CONTINUATIONs: the value spans at most five frames.
        let mut cuts: Vec<usize> = (0..draws.below(5))
            .map(|_| draws.below(block.len()))
            .collect();
        cuts.sort_unstable();
        cuts.push(block.len());
        let mut start = 0;
        for (i, &cut) in cuts.iter().enumerate() {
            let fragment = &block[start..cut];
            start = cut;
            let end = if i + 1 == cuts.len() { END_HEADERS } else { 0 };
            if i > 0 {
                out.extend(frame(CONTINUATION, end, stream, fragment));
                continue;
            }
            let padding = if draws.chance() { draws.below(5) } else { 0 };
            let mut payload = Vec::new();
            let mut flags = end;
            if padding > 0 {
                flags |= PADDED;
                payload.push(padding as u8);
            }
            payload.extend(fragment);
            payload.extend(vec![0u8; padding]);
            out.extend(frame(HEADERS, flags, stream, &payload));
        }
        let mut data: Vec<u8> = (0..draws.below(300)).map(|_| draws.next() as u8).collect();
        let at = draws.below(data.len() + 1);
        data.splice(at..at, *b"\x41\x15http://127.0.0.1:2379");
        out.extend(frame(DATA, END_STREAM, stream, &data));
        if draws.chance() {
            out.extend(frame(0x6, 0, 0, b"http://x")); // PING
        }
    }
    out
}

#[test]
fn random_client_streams_change_only_url_authorities() {
    for seed in 1..=200u64 {
        let input = random_stream(seed, false);
        let expected = random_stream(seed, true);
        assert_eq!(input.len(), expected.len(), "seed {seed}");
        assert_ne!(input, expected, "seed {seed} has a URL authority to repair");
        let mut draws = Draws(seed ^ 0x9e37_79b9_7f4a_7c15);
        let mut chunks = Vec::new();
        let mut rest = &input[..];
        while !rest.is_empty() {
            let size = (1 + draws.below(64)).min(rest.len());
            chunks.push(rest[..size].to_vec());
            rest = &rest[size..];
        }
        let out = read_through(chunks, 1 + draws.below(8192));
        assert!(out == expected, "seed {seed}");
    }
}
