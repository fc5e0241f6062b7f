//! Follows the bytes a client sends on an HTTP/2 connection (RFC 7540 §3.5 preface, §4.1
//! frames, §6.2 HEADERS, §6.10 CONTINUATION) and the header fields in its header blocks (RFC
//! 7541 §6), and repairs in place each literal `:authority` value written as a URL. Sans-IO:
//! it is handed the bytes as they arrive and says which ones it must see more of before they
//! may be passed on (a value not yet complete).
//!
//! The repair keeps the value's length, decoded and encoded, so no frame changes length and
//! the HPACK dynamic table the client's encoder keeps stays the size h2's decoder computes (RFC
//! 7541 §4.1: an entry is name + value + 32 octets): a later request that names the entry by
//! index gets the repaired value from h2's own table. Nothing here keeps that table, so an
//! `:authority` whose *name* is given by a dynamic-table index is not seen (Go's and h2's
//! encoders name it by its static index, 1). Input that is not valid HTTP/2 is passed on
//! unchanged and no longer followed: h2 refuses it as it would have.

use super::huffman;

/// Longest encoded `:authority` value repaired; longer ones pass unchanged (a host name is at
/// most 253 octets).
pub const AUTHORITY_ENCODED_BYTES_MAX: usize = 256;
/// Its longest decoded form: the shortest Huffman code is 5 bits.
const AUTHORITY_DECODED_BYTES_MAX: usize = AUTHORITY_ENCODED_BYTES_MAX * 8 / 5 + 1;
/// Frames a value may span (HEADERS then CONTINUATIONs, empty ones too) and still be repaired:
/// what is held back from h2 while a value is incomplete is at most the value and these frames'
/// headers.
const VALUE_FRAMES_MAX: usize = 8;
/// Largest HPACK integer followed (RFC 7541 §5.1 lets an implementation set one); past it the
/// input is left to h2, whose header list limit is far below.
const HPACK_INTEGER_MAX: u32 = 1 << 24;

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_BYTES: usize = 9;
const PRIORITY_BYTES: u32 = 5;
const FRAME_HEADERS: u8 = 0x1;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

/// The static table's `:authority` (RFC 7541 Appendix A, index 1).
const AUTHORITY_STATIC_INDEX: u32 = 1;
const AUTHORITY_NAME: &[u8] = b":authority";
/// `:authority` Huffman-coded (checked against the encoder in a test).
const AUTHORITY_NAME_HUFFMAN: &[u8] = &[0xb8, 0x3b, 0x53, 0x39, 0xec, 0x32, 0x7d, 0x7f];
const NAME_BYTES_MAX: usize = AUTHORITY_NAME.len();

/// What a URL's `://` becomes: a legal reg-name whose Huffman codes have the same total length
/// (':' and 'x' are 7 bits, '/' and '-' 6), so a Huffman-coded value keeps its octet count.
const SEPARATOR: &[u8] = b"://";
const SEPARATOR_REPAIRED: &[u8] = b"-x-";

/// Where the scanner is in the client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Preface {
        matched: usize,
    },
    FrameHeader {
        header: [u8; FRAME_HEADER_BYTES],
        have: usize,
    },
    /// A padded HEADERS frame's pad length octet comes next.
    PadLength {
        payload: u32,
        flags: u8,
    },
    Skip {
        left: u32,
        then: AfterSkip,
    },
    Fragment(Fragment),
    /// Not HTTP/2 as this scanner knows it: everything passes unchanged.
    Passthrough,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterSkip {
    FrameHeader,
    Fragment(Fragment),
}

/// The header block fragment of a HEADERS or CONTINUATION frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fragment {
    left: u32,
    /// Padding octets after the fragment.
    padding: u32,
    ends_block: bool,
}

/// Where the scanner is in a header block (RFC 7541 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Start,
    /// An integer's continuation octets (§5.1).
    Integer {
        value: u32,
        shift: u32,
        then: AfterInteger,
    },
    /// A string literal's first octet: the Huffman flag and the length's prefix (§5.2).
    StringStart(Role),
    StringOctets {
        left: u32,
        role: Role,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterInteger {
    /// An indexed field or a table size update: the field is done.
    FieldDone,
    NameIndex,
    StringLength {
        role: Role,
        huffman: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A literal name (index 0).
    Name,
    Value {
        authority: bool,
    },
}

/// The follower of one connection's client bytes.
pub struct Scanner {
    stream: Stream,
    field: Field,
    /// A HEADERS frame without END_HEADERS was seen: CONTINUATIONs follow.
    in_block: bool,
    name: Name,
    value: Value,
}

/// A literal name as it arrives, kept only while it may be `:authority`.
struct Name {
    octets: [u8; NAME_BYTES_MAX],
    have: usize,
    candidate: bool,
    huffman: bool,
}

/// An `:authority` value as it arrives: its octets, and where they lie in the current window
/// (split by frame headers when it spans frames).
struct Value {
    collecting: bool,
    huffman: bool,
    octets: [u8; AUTHORITY_ENCODED_BYTES_MAX],
    have: usize,
    /// `(offset in the window, length)` of each run of the value's octets: one per frame.
    pieces: [(usize, usize); VALUE_FRAMES_MAX],
    piece_count: usize,
    /// Frames the value has spanned so far.
    frames: usize,
}

impl Default for Scanner {
    fn default() -> Self {
        Self::new()
    }
}

impl Scanner {
    pub fn new() -> Self {
        Scanner {
            stream: Stream::Preface { matched: 0 },
            field: Field::Start,
            in_block: false,
            name: Name {
                octets: [0; NAME_BYTES_MAX],
                have: 0,
                candidate: false,
                huffman: false,
            },
            value: Value {
                collecting: false,
                huffman: false,
                octets: [0; AUTHORITY_ENCODED_BYTES_MAX],
                have: 0,
                pieces: [(0, 0); VALUE_FRAMES_MAX],
                piece_count: 0,
                frames: 0,
            },
        }
    }

    /// Follows `window[from..]`, repairing values that end in it. Returns the offset from
    /// which the window must be held back (an `:authority` value begun but not finished), or
    /// `None` when all of it may go on. The next call continues where this one stopped, with
    /// the same window grown at its end, or shortened at its start (see [`Scanner::rebase`]).
    pub fn scan(&mut self, window: &mut [u8], from: usize) -> Option<usize> {
        let mut at = from;
        while at < window.len() {
            at = match self.stream {
                Stream::Passthrough => break,
                Stream::Preface { matched } => self.preface(window, at, matched),
                Stream::FrameHeader { header, have } => self.frame_header(window, at, header, have),
                Stream::PadLength { payload, flags } => {
                    self.pad_length(window[at], payload, flags);
                    at + 1
                }
                Stream::Skip { left, then } => {
                    let taken = left.min((window.len() - at) as u32);
                    self.stream = if taken == left {
                        self.after_skip(then)
                    } else {
                        Stream::Skip {
                            left: left - taken,
                            then,
                        }
                    };
                    at + taken as usize
                }
                Stream::Fragment(fragment) => self.fragment(window, at, fragment),
            };
        }
        if self.stream == Stream::Passthrough {
            self.value.collecting = false;
            return None;
        }
        self.value.held_from()
    }

    /// The first `removed` octets of the window were passed on: offsets shift down.
    pub fn rebase(&mut self, removed: usize) {
        for piece in &mut self.value.pieces[..self.value.piece_count] {
            assert!(
                piece.0 >= removed,
                "octets of a value were passed on unrepaired"
            );
            piece.0 -= removed;
        }
    }

    /// The connection ended: stop following it.
    pub fn give_up(&mut self) {
        self.stream = Stream::Passthrough;
        self.value.collecting = false;
    }

    fn preface(&mut self, window: &[u8], at: usize, matched: usize) -> usize {
        let taken = (PREFACE.len() - matched).min(window.len() - at);
        self.stream = if window[at..at + taken] != PREFACE[matched..matched + taken] {
            Stream::Passthrough
        } else if matched + taken == PREFACE.len() {
            Self::next_frame()
        } else {
            Stream::Preface {
                matched: matched + taken,
            }
        };
        at + taken
    }

    fn next_frame() -> Stream {
        Stream::FrameHeader {
            header: [0; FRAME_HEADER_BYTES],
            have: 0,
        }
    }

    fn frame_header(
        &mut self,
        window: &[u8],
        at: usize,
        mut header: [u8; FRAME_HEADER_BYTES],
        have: usize,
    ) -> usize {
        let taken = (FRAME_HEADER_BYTES - have).min(window.len() - at);
        header[have..have + taken].copy_from_slice(&window[at..at + taken]);
        self.stream = if have + taken < FRAME_HEADER_BYTES {
            Stream::FrameHeader {
                header,
                have: have + taken,
            }
        } else {
            self.frame(header)
        };
        at + taken
    }

    /// What follows a frame header (§4.1: length, type, flags, stream identifier).
    fn frame(&mut self, header: [u8; FRAME_HEADER_BYTES]) -> Stream {
        let length = u32::from_be_bytes([0, header[0], header[1], header[2]]);
        let (kind, flags) = (header[3], header[4]);
        let ends_block = flags & FLAG_END_HEADERS != 0;
        // §6.10: a block's CONTINUATIONs follow it with no other frame between.
        if self.in_block != (kind == FRAME_CONTINUATION) {
            return Stream::Passthrough;
        }
        match kind {
            FRAME_HEADERS => {
                self.in_block = !ends_block;
                if flags & FLAG_PADDED != 0 {
                    if length == 0 {
                        return Stream::Passthrough;
                    }
                    Stream::PadLength {
                        payload: length - 1,
                        flags,
                    }
                } else {
                    self.headers_payload(length, 0, flags)
                }
            }
            FRAME_CONTINUATION => {
                self.in_block = !ends_block;
                self.value.spans_another_frame();
                self.enter_fragment(Fragment {
                    left: length,
                    padding: 0,
                    ends_block,
                })
            }
            _ => self.skip_to_next_frame(length),
        }
    }

    fn pad_length(&mut self, padding: u8, payload: u32, flags: u8) {
        self.stream = self.headers_payload(payload, u32::from(padding), flags);
    }

    /// A HEADERS payload after its pad length: the priority fields if flagged, the fragment,
    /// the padding (§6.2).
    fn headers_payload(&mut self, payload: u32, padding: u32, flags: u8) -> Stream {
        let priority = if flags & FLAG_PRIORITY != 0 {
            PRIORITY_BYTES
        } else {
            0
        };
        let Some(fragment) = payload.checked_sub(priority + padding) else {
            // Padding longer than the payload: a connection error for h2 (§6.2).
            return Stream::Passthrough;
        };
        let fragment = Fragment {
            left: fragment,
            padding,
            ends_block: flags & FLAG_END_HEADERS != 0,
        };
        if priority > 0 {
            Stream::Skip {
                left: priority,
                then: AfterSkip::Fragment(fragment),
            }
        } else {
            self.enter_fragment(fragment)
        }
    }

    fn skip_to_next_frame(&mut self, length: u32) -> Stream {
        if length == 0 {
            Self::next_frame()
        } else {
            Stream::Skip {
                left: length,
                then: AfterSkip::FrameHeader,
            }
        }
    }

    fn after_skip(&mut self, then: AfterSkip) -> Stream {
        match then {
            AfterSkip::FrameHeader => Self::next_frame(),
            AfterSkip::Fragment(fragment) => self.enter_fragment(fragment),
        }
    }

    /// A fragment about to be read, or, when empty, what comes after it.
    fn enter_fragment(&mut self, fragment: Fragment) -> Stream {
        if fragment.left > 0 {
            return Stream::Fragment(fragment);
        }
        if fragment.ends_block && self.field != Field::Start {
            // The block ends inside a field: h2 refuses it (a COMPRESSION_ERROR).
            return Stream::Passthrough;
        }
        self.skip_to_next_frame(fragment.padding)
    }

    fn fragment(&mut self, window: &mut [u8], at: usize, fragment: Fragment) -> usize {
        let taken = fragment.left.min((window.len() - at) as u32);
        let end = at + taken as usize;
        if self.fields(window, at, end).is_err() {
            self.stream = Stream::Passthrough;
            return end;
        }
        self.stream = self.enter_fragment(Fragment {
            left: fragment.left - taken,
            ..fragment
        });
        end
    }

    /// Follows the header fields in `window[at..end]`, part of a block.
    fn fields(&mut self, window: &mut [u8], mut at: usize, end: usize) -> Result<(), Malformed> {
        while at < end {
            match self.field {
                Field::Start => {
                    let octet = window[at];
                    at += 1;
                    // §6: the representation is in the high bits, an integer's prefix below.
                    let (prefix_bits, then) = if octet & 0x80 != 0 {
                        (7, AfterInteger::FieldDone)
                    } else if octet & 0x40 != 0 {
                        (6, AfterInteger::NameIndex)
                    } else if octet & 0x20 != 0 {
                        (5, AfterInteger::FieldDone)
                    } else {
                        (4, AfterInteger::NameIndex)
                    };
                    self.integer_start(octet, prefix_bits, then);
                }
                Field::Integer { value, shift, then } => {
                    let octet = window[at];
                    at += 1;
                    // Past 21 bits of shift the octet alone would pass the maximum.
                    if shift > 21 {
                        return Err(Malformed);
                    }
                    let value = value + (u32::from(octet & 0x7f) << shift);
                    if value > HPACK_INTEGER_MAX {
                        return Err(Malformed);
                    }
                    if octet & 0x80 != 0 {
                        self.field = Field::Integer {
                            value,
                            shift: shift + 7,
                            then,
                        };
                    } else {
                        self.integer_done(value, then);
                    }
                }
                Field::StringStart(role) => {
                    let octet = window[at];
                    at += 1;
                    let huffman = octet & 0x80 != 0;
                    self.integer_start(octet, 7, AfterInteger::StringLength { role, huffman });
                }
                Field::StringOctets { left, role } => {
                    let taken = left.min((end - at) as u32);
                    let octets = at..at + taken as usize;
                    at = octets.end;
                    match role {
                        Role::Name => self.name.push(&window[octets]),
                        Role::Value { authority: true } => self.value.push(window, octets),
                        Role::Value { authority: false } => {}
                    }
                    if taken < left {
                        self.field = Field::StringOctets {
                            left: left - taken,
                            role,
                        };
                    } else {
                        self.string_done(role, window);
                    }
                }
            }
        }
        Ok(())
    }

    fn integer_start(&mut self, octet: u8, prefix_bits: u32, then: AfterInteger) {
        let mask = (1u8 << prefix_bits) - 1;
        let value = u32::from(octet & mask);
        if value < u32::from(mask) {
            self.integer_done(value, then);
        } else {
            self.field = Field::Integer {
                value,
                shift: 0,
                then,
            };
        }
    }

    fn integer_done(&mut self, value: u32, then: AfterInteger) {
        self.field = match then {
            AfterInteger::FieldDone => Field::Start,
            AfterInteger::NameIndex if value == 0 => Field::StringStart(Role::Name),
            AfterInteger::NameIndex => Field::StringStart(Role::Value {
                authority: value == AUTHORITY_STATIC_INDEX,
            }),
            AfterInteger::StringLength { role, huffman } => {
                match role {
                    Role::Name => self.name.begin(value, huffman),
                    Role::Value { authority: true } => self.value.begin(value, huffman),
                    Role::Value { authority: false } => {}
                }
                if value == 0 {
                    // The empty string: nothing to read, nothing to repair.
                    self.value.collecting = false;
                    self.after_string(role)
                } else {
                    Field::StringOctets { left: value, role }
                }
            }
        };
    }

    fn string_done(&mut self, role: Role, window: &mut [u8]) {
        if role == (Role::Value { authority: true }) {
            self.value.finish(window);
        }
        self.field = self.after_string(role);
    }

    fn after_string(&self, role: Role) -> Field {
        match role {
            Role::Name => Field::StringStart(Role::Value {
                authority: self.name.is_authority(),
            }),
            Role::Value { .. } => Field::Start,
        }
    }
}

/// Input h2 will refuse; the scanner stops following the connection.
struct Malformed;

impl Name {
    fn begin(&mut self, length: u32, huffman: bool) {
        let wanted = if huffman {
            AUTHORITY_NAME_HUFFMAN.len()
        } else {
            AUTHORITY_NAME.len()
        };
        self.candidate = length as usize == wanted;
        self.huffman = huffman;
        self.have = 0;
    }

    fn push(&mut self, octets: &[u8]) {
        if !self.candidate {
            return;
        }
        self.octets[self.have..self.have + octets.len()].copy_from_slice(octets);
        self.have += octets.len();
    }

    fn is_authority(&self) -> bool {
        let wanted = if self.huffman {
            AUTHORITY_NAME_HUFFMAN
        } else {
            AUTHORITY_NAME
        };
        // A Huffman string has one valid encoding (its padding is fixed), so octets compare.
        self.candidate && &self.octets[..self.have] == wanted
    }
}

impl Value {
    fn begin(&mut self, length: u32, huffman: bool) {
        self.collecting = length as usize <= AUTHORITY_ENCODED_BYTES_MAX;
        self.huffman = huffman;
        self.have = 0;
        self.piece_count = 0;
        self.frames = 1;
    }

    /// A CONTINUATION frame begins while the value may be incomplete.
    fn spans_another_frame(&mut self) {
        self.frames += 1;
        if self.frames > VALUE_FRAMES_MAX {
            // Split over too many frames to hold back: it passes unrepaired.
            self.collecting = false;
        }
    }

    fn push(&mut self, window: &[u8], octets: std::ops::Range<usize>) {
        if !self.collecting || octets.is_empty() {
            return;
        }
        let joins_last = self.piece_count > 0 && {
            let (start, length) = self.pieces[self.piece_count - 1];
            start + length == octets.start
        };
        if joins_last {
            self.pieces[self.piece_count - 1].1 += octets.len();
        } else {
            assert!(
                self.piece_count < self.frames,
                "a value has at most one run of octets per frame"
            );
            self.pieces[self.piece_count] = (octets.start, octets.len());
            self.piece_count += 1;
        }
        self.octets[self.have..self.have + octets.len()].copy_from_slice(&window[octets.clone()]);
        self.have += octets.len();
    }

    fn finish(&mut self, window: &mut [u8]) {
        if !self.collecting {
            return;
        }
        self.collecting = false;
        let octets = &mut self.octets[..self.have];
        if !repair(octets, self.huffman) {
            return;
        }
        let mut written = 0;
        for &(start, length) in &self.pieces[..self.piece_count] {
            window[start..start + length].copy_from_slice(&octets[written..written + length]);
            written += length;
        }
    }

    fn held_from(&self) -> Option<usize> {
        (self.collecting && self.piece_count > 0).then(|| self.pieces[0].0)
    }
}

/// Repairs an `:authority` value's octets in place; false if it is left as it is.
fn repair(encoded: &mut [u8], huffman: bool) -> bool {
    if !huffman {
        return repair_decoded(encoded);
    }
    let mut decoded = [0u8; AUTHORITY_DECODED_BYTES_MAX];
    let Ok(length) = huffman::decode(encoded, &mut decoded) else {
        return false; // h2 refuses it as a COMPRESSION_ERROR, as before
    };
    let decoded = &mut decoded[..length];
    if !repair_decoded(decoded) {
        return false;
    }
    assert_eq!(
        huffman::encoded_len(decoded),
        encoded.len(),
        "the repair keeps the Huffman-coded length"
    );
    huffman::encode(decoded, encoded);
    true
}

/// `scheme://host:port` (the form grpc-go sends for an `http://` target it dials as
/// `passthrough:///http://host:port`) becomes `scheme-x-host:port`, which `http::uri::Authority`
/// takes as a host name and port. Any other value is left to h2.
pub fn repair_decoded(value: &mut [u8]) -> bool {
    let Some(separator) = value
        .windows(SEPARATOR.len())
        .position(|window| window == SEPARATOR)
    else {
        return false;
    };
    // RFC 3986 §3.1: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
    let scheme = &value[..separator];
    let is_scheme = scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'));
    if !is_scheme {
        return false;
    }
    value[separator..separator + SEPARATOR.len()].copy_from_slice(SEPARATOR_REPAIRED);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_huffman_name_and_the_separator_keep_their_lengths() {
        let mut encoded = [0u8; 16];
        let length = huffman::encode(AUTHORITY_NAME, &mut encoded);
        assert_eq!(&encoded[..length], AUTHORITY_NAME_HUFFMAN);
        assert_eq!(
            huffman::encoded_len(b"http://a:1"),
            huffman::encoded_len(b"http-x-a:1")
        );
        assert_eq!(
            huffman::encoded_len(&SEPARATOR.repeat(8)),
            huffman::encoded_len(&SEPARATOR_REPAIRED.repeat(8)),
            "the same number of bits, not only of octets"
        );
    }

    #[test]
    fn urls_become_authorities_that_http_accepts_and_others_stay() {
        for (url, repaired) in [
            ("http://127.0.0.1:2379", "http-x-127.0.0.1:2379"),
            ("https://node-1.example:2379", "https-x-node-1.example:2379"),
            ("http://[::1]:2379", "http-x-[::1]:2379"),
            ("unix+grpc://a", "unix+grpc-x-a"),
        ] {
            assert!(
                tonic::codegen::http::uri::Authority::try_from(url).is_err(),
                "{url}"
            );
            let mut value = url.as_bytes().to_vec();
            assert!(repair_decoded(&mut value), "{url}");
            assert_eq!(value, repaired.as_bytes());
            let authority = tonic::codegen::http::uri::Authority::try_from(&value[..]).unwrap();
            assert_eq!(authority.as_str(), repaired);
        }
        for left in [
            "127.0.0.1:2379",
            "localhost",
            "://x",
            "1http://x:1",
            "ht tp://x",
        ] {
            let mut value = left.as_bytes().to_vec();
            assert!(!repair_decoded(&mut value), "{left}");
            assert_eq!(value, left.as_bytes());
        }
    }
}
