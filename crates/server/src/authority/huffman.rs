//! HPACK's Huffman code (RFC 7541 §5.2, Appendix B): decoding a string literal's octets and
//! encoding them again. The code is canonical (within a length, codes ascend with the symbol;
//! a test checks it), so decoding needs only, per code length, the first code, how many codes
//! have that length, and the symbols in code order; all three are derived from the table at
//! compile time.

use super::huffman_table::CODES;

/// Longest code in the table (RFC 7541 Appendix B).
const CODE_BITS_MAX: usize = 30;
/// The end-of-string symbol, which may appear only as padding.
const EOS: u16 = 256;

/// Why a string literal's octets are not a valid Huffman encoding (RFC 7541 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HuffmanError {
    #[error("the EOS symbol inside a Huffman-coded string")]
    EndOfStringInside,
    #[error("Huffman padding longer than 7 bits or not the most significant bits of EOS")]
    BadPadding,
    #[error("a Huffman-coded string decodes to more octets than the {0} allowed")]
    TooLong(usize),
}

struct Decoding {
    /// First (smallest) code of each length.
    first_code: [u32; CODE_BITS_MAX + 1],
    /// Codes of each length.
    count: [u32; CODE_BITS_MAX + 1],
    /// Where each length's symbols start in `symbols`.
    first_index: [u16; CODE_BITS_MAX + 1],
    /// Symbols ordered by (length, code).
    symbols: [u16; 257],
}

const fn decoding() -> Decoding {
    let mut decoding = Decoding {
        first_code: [0; CODE_BITS_MAX + 1],
        count: [0; CODE_BITS_MAX + 1],
        first_index: [0; CODE_BITS_MAX + 1],
        symbols: [0; 257],
    };
    let mut next = 0;
    let mut length = 1;
    while length <= CODE_BITS_MAX {
        decoding.first_index[length] = next as u16;
        let mut symbol = 0;
        while symbol < CODES.len() {
            let (code, bits) = CODES[symbol];
            if bits as usize == length {
                if decoding.count[length] == 0 {
                    decoding.first_code[length] = code;
                }
                decoding.count[length] += 1;
                decoding.symbols[next] = symbol as u16;
                next += 1;
            }
            symbol += 1;
        }
        length += 1;
    }
    decoding
}

static DECODING: Decoding = decoding();

/// Decodes `encoded` into `out`, returning the decoded length.
pub fn decode(encoded: &[u8], out: &mut [u8]) -> Result<usize, HuffmanError> {
    let mut code: u32 = 0;
    let mut length = 0;
    let mut written = 0;
    for &byte in encoded {
        for shift in (0..8).rev() {
            code = code << 1 | u32::from(byte >> shift & 1);
            length += 1;
            // Canonical: a code of this length lies in [first, first + count); a shorter
            // prefix of a longer code lies above that range (wrapping_sub sends codes below it
            // far above).
            let offset = code.wrapping_sub(DECODING.first_code[length]);
            if offset < DECODING.count[length] {
                let symbol =
                    DECODING.symbols[DECODING.first_index[length] as usize + offset as usize];
                if symbol == EOS {
                    return Err(HuffmanError::EndOfStringInside);
                }
                let room = out.len();
                *out.get_mut(written).ok_or(HuffmanError::TooLong(room))? = symbol as u8;
                written += 1;
                code = 0;
                length = 0;
            }
            // The code is complete (a test checks it), so a 30-bit prefix always matched.
            debug_assert!(length < CODE_BITS_MAX);
        }
    }
    // What remains must be padding: at most 7 bits, all ones (a prefix of EOS).
    if length > 7 || code != (1 << length) - 1 {
        return Err(HuffmanError::BadPadding);
    }
    Ok(written)
}

/// Octets `input` takes Huffman-coded.
pub fn encoded_len(input: &[u8]) -> usize {
    let bits: usize = input
        .iter()
        .map(|&byte| CODES[byte as usize].1 as usize)
        .sum();
    bits.div_ceil(8)
}

/// Encodes `input` into `out`, which must hold [`encoded_len`] octets; returns that length.
pub fn encode(input: &[u8], out: &mut [u8]) -> usize {
    let mut bits: u64 = 0;
    let mut pending = 0;
    let mut written = 0;
    for &byte in input {
        let (code, length) = CODES[byte as usize];
        // Fewer than 8 bits are pending before a code of at most 30 joins them: the low 38 bits
        // hold everything not yet written.
        bits = bits << length | u64::from(code);
        pending += u32::from(length);
        while pending >= 8 {
            pending -= 8;
            out[written] = (bits >> pending) as u8;
            written += 1;
        }
    }
    if pending > 0 {
        // Padded with the most significant bits of EOS, which are all ones.
        out[written] = (bits << (8 - pending)) as u8 | 0xff >> pending;
        written += 1;
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect()
    }

    #[test]
    fn the_table_is_a_complete_canonical_prefix_code() {
        // Kraft's sum is exactly 1: every bit string is a code or a prefix of one.
        let kraft: u64 = CODES
            .iter()
            .map(|&(_, length)| 1u64 << (CODE_BITS_MAX - length as usize))
            .sum();
        assert_eq!(kraft, 1 << CODE_BITS_MAX);
        // Canonical: ordered by (length, symbol), each code is the previous plus one, shifted
        // left by the growth in length.
        let mut order: Vec<usize> = (0..CODES.len()).collect();
        order.sort_by_key(|&symbol| (CODES[symbol].1, symbol));
        let mut expected = 0u32;
        for pair in order.windows(2) {
            let (previous, next) = (CODES[pair[0]], CODES[pair[1]]);
            if pair[0] == order[0] {
                assert_eq!(previous.0, 0);
            }
            expected = (previous.0 + 1) << (next.1 - previous.1);
            assert_eq!(next.0, expected, "symbol {}", pair[1]);
        }
        assert_eq!(
            expected,
            (1 << CODE_BITS_MAX) - 1,
            "EOS is the last, all ones"
        );
        assert_eq!(CODES[EOS as usize], ((1 << 30) - 1, 30));
    }

    /// RFC 7541 Appendix C.4 and C.6: Huffman-coded strings and their octets.
    #[test]
    fn the_rfc_examples_decode_and_encode() {
        let examples = [
            ("www.example.com", "f1e3 c2e5 f23a 6ba0 ab90 f4ff"),
            ("no-cache", "a8eb 1064 9cbf"),
            ("custom-key", "25a8 49e9 5ba9 7d7f"),
            ("custom-value", "25a8 49e9 5bb8 e8b4 bf"),
            ("302", "6402"),
            ("private", "aec3 771a 4b"),
            (
                "Mon, 21 Oct 2013 20:13:21 GMT",
                "d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff",
            ),
            (
                "https://www.example.com",
                "9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3",
            ),
            (
                "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
                "94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 \
                 3160 65c0 03ed 4ee5 b106 3d50 07",
            ),
        ];
        for (text, octets) in examples {
            let encoded = hex(octets);
            let mut decoded = [0u8; 64];
            let length = decode(&encoded, &mut decoded).unwrap();
            assert_eq!(&decoded[..length], text.as_bytes());
            assert_eq!(encoded_len(text.as_bytes()), encoded.len(), "{text}");
            let mut again = [0u8; 64];
            let length = encode(text.as_bytes(), &mut again);
            assert_eq!(&again[..length], &encoded[..], "{text}");
        }
    }

    #[test]
    fn every_octet_round_trips() {
        let input: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
        let mut encoded = vec![0u8; encoded_len(&input)];
        assert_eq!(encode(&input, &mut encoded), encoded.len());
        let mut decoded = vec![0u8; input.len()];
        assert_eq!(decode(&encoded, &mut decoded), Ok(input.len()));
        assert_eq!(decoded, input);
    }

    #[test]
    fn bad_padding_inner_eos_and_short_buffers_are_refused() {
        // '0' is 00000 (5 bits): "0" pads with three ones, 0x07.
        let mut out = [0u8; 4];
        assert_eq!(decode(&[0x07], &mut out), Ok(1));
        assert_eq!(out[0], b'0');
        assert_eq!(decode(&[0x06], &mut out), Err(HuffmanError::BadPadding));
        // A whole byte of ones after a symbol is padding longer than 7 bits.
        assert_eq!(
            decode(&[0x07, 0xff], &mut out),
            Err(HuffmanError::BadPadding)
        );
        // EOS (30 ones) inside the string.
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xff], &mut out),
            Err(HuffmanError::EndOfStringInside)
        );
        let mut encoded = [0u8; 8];
        let length = encode(b"abcde", &mut encoded);
        assert_eq!(
            decode(&encoded[..length], &mut out),
            Err(HuffmanError::TooLong(4))
        );
        assert_eq!(decode(&[], &mut out), Ok(0));
    }
}
