//! Keys, values and the per-client random numbers: what each operation touches.
//!
//! A key is the prefix followed by a 10-digit index, so every key of the key space sorts in
//! index order and `[key(0), key(key_space))` is exactly the key space (for the preload count
//! and the watch range), whatever keys an earlier run with another key space left behind.

use bytes::{BufMut, Bytes, BytesMut};

/// Digits of the key index.
const INDEX_DIGITS: usize = 10;

/// SplitMix64: a tiny, fast generator; one per client, seeded by the client's index, so a run's
/// key sequence is reproducible. Not for anything but spreading load.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Clone, Debug)]
pub struct KeySpace {
    prefix: Vec<u8>,
    size: u64,
    sequential: bool,
}

impl KeySpace {
    /// What every key of the space starts with.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    pub fn new(prefix: Vec<u8>, size: u64, sequential: bool) -> Self {
        assert!(size >= 1, "the key space holds at least one key");
        KeySpace {
            prefix,
            size,
            sequential,
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The key of index `index` (below 10^10).
    pub fn key(&self, index: u64) -> Bytes {
        let mut key = BytesMut::with_capacity(self.prefix.len() + INDEX_DIGITS);
        key.put_slice(&self.prefix);
        let mut digits = [b'0'; INDEX_DIGITS];
        let mut rest = index;
        for digit in digits.iter_mut().rev() {
            *digit = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        assert_eq!(
            rest, 0,
            "key index {index} has more than {INDEX_DIGITS} digits"
        );
        key.put_slice(&digits);
        key.freeze()
    }

    /// The key operation `op_number` uses: in order with `sequential`, else random.
    pub fn key_for(&self, op_number: u64, rng: &mut SplitMix64) -> Bytes {
        let index = if self.sequential {
            op_number % self.size
        } else {
            rng.next_u64() % self.size
        };
        self.key(index)
    }

    /// `[start, end)` holding exactly the keys of the key space.
    pub fn range(&self) -> (Bytes, Bytes) {
        (self.key(0), self.key(self.size))
    }
}

/// A value of `bytes` printable bytes, made once and shared (cloning `Bytes` copies nothing).
pub fn value(bytes: usize) -> Bytes {
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..bytes)
        .map(|i| alphabet[i % alphabet.len()])
        .collect::<Vec<u8>>()
        .into()
}

/// A value of `bytes` bytes whose first 8 carry `sent_ns` (little endian), for the watch
/// workload's delivery latency.
pub fn stamped_value(template: &Bytes, sent_ns: u64) -> Bytes {
    let mut value = BytesMut::from(&template[..]);
    value[..8].copy_from_slice(&sent_ns.to_le_bytes());
    value.freeze()
}

/// The send time carried by a [`stamped_value`], if the value has one.
pub fn stamp_of(value: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(value.get(..8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_in_index_order_and_the_range_holds_exactly_the_key_space() {
        let keys = KeySpace::new(b"bench/".to_vec(), 1_000, true);
        assert_eq!(&keys.key(42)[..], b"bench/0000000042");
        assert!(keys.key(9) < keys.key(10));
        let (start, end) = keys.range();
        assert_eq!(start, keys.key(0));
        assert!(keys.key(999) < end && end <= keys.key(1_000));
        let mut rng = SplitMix64::new(0);
        assert_eq!(
            keys.key_for(1_005, &mut rng),
            keys.key(5),
            "sequential wraps"
        );
    }

    #[test]
    fn random_keys_stay_in_the_key_space_and_cover_it() {
        let keys = KeySpace::new(b"k".to_vec(), 10, false);
        let mut rng = SplitMix64::new(7);
        let mut seen = std::collections::BTreeSet::new();
        for op in 0..1_000 {
            seen.insert(keys.key_for(op, &mut rng));
        }
        assert_eq!(seen.len(), 10);
        assert!(seen.iter().all(|key| key < &keys.range().1));
    }

    #[test]
    fn stamped_values_keep_their_size_and_carry_the_time() {
        let template = value(16);
        let stamped = stamped_value(&template, 123_456_789);
        assert_eq!(stamped.len(), 16);
        assert_eq!(stamp_of(&stamped), Some(123_456_789));
        assert_eq!(&stamped[8..], &template[8..]);
        assert_eq!(stamp_of(b"short"), None);
    }
}
