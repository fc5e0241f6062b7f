//! The change log's container: a double-ended queue kept in fixed-size chunks, so that growing
//! it never copies or reallocates what it already holds.
//!
//! The change log gains an element per key a write changes and loses them only when compaction
//! sweeps them, so without compaction it grows for as long as the store runs. A `VecDeque`
//! doubles: at every doubling the raft thread copies the whole log into fresh memory (about
//! 150 MB after three million puts), and the fresh pages are faulted in and zeroed first. A
//! profile of 256-client puts had that growth at 8% of the three nodes' CPU, and each copy
//! stalls the apply path for as long as it takes. Here a full chunk is never touched again by a
//! push; the chunk a sweep empties is kept to be the next one filled.
//!
//! The very first chunk grows as it fills instead (doubling up to `CHUNK_LEN`, about 190 KiB of
//! copies once in a store's life): a node hosts a store per group, and a group that takes a few
//! writes and goes quiet should not hold a whole chunk for them (it did: about 240 KiB of
//! resident memory per written group, benchmarks.md).
//!
//! Positions are as in a `VecDeque`: 0 is the oldest element. Every chunk but the first and the
//! last is full, which is what makes a position's chunk a division away.

use std::collections::VecDeque;

/// Elements per chunk: 4096 changes (48 bytes each) make 192 KiB.
pub(crate) const CHUNK_LEN: usize = 4096;

#[derive(Debug)]
pub(crate) struct Chunked<T> {
    /// Oldest first. The first chunk may have lost elements at its front (`pop_front`); the last
    /// may have room at its back; every other one holds exactly `CHUNK_LEN`.
    chunks: VecDeque<VecDeque<T>>,
    len: usize,
    /// An emptied chunk, kept for the next push that needs one.
    spare: Option<VecDeque<T>>,
}

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Chunked {
            chunks: VecDeque::new(),
            len: 0,
            spare: None,
        }
    }
}

impl<T> Chunked<T> {
    pub fn push_back(&mut self, item: T) {
        let full = self
            .chunks
            .back()
            .is_none_or(|last| last.len() == CHUNK_LEN);
        if full {
            let first = self.chunks.is_empty();
            let chunk = self.spare.take().unwrap_or_else(|| {
                if first {
                    VecDeque::new()
                } else {
                    VecDeque::with_capacity(CHUNK_LEN)
                }
            });
            self.chunks.push_back(chunk);
        }
        let last = self.chunks.back_mut().expect("a chunk with room exists");
        debug_assert!(last.len() < CHUNK_LEN, "a chunk never grows past CHUNK_LEN");
        last.push_back(item);
        self.len += 1;
    }

    pub fn pop_front(&mut self) -> Option<T> {
        let first = self.chunks.front_mut()?;
        let item = first.pop_front()?;
        if first.is_empty() {
            let emptied = self.chunks.pop_front();
            if self.spare.is_none() {
                self.spare = emptied;
            }
        }
        self.len -= 1;
        Some(item)
    }

    pub fn back(&self) -> Option<&T> {
        self.chunks.back()?.back()
    }

    pub fn get(&self, position: usize) -> Option<&T> {
        if position >= self.len {
            return None;
        }
        let (chunk, offset) = self.locate(position);
        self.chunks[chunk].get(offset)
    }

    /// The first position whose element fails `is_before` (the elements must be partitioned:
    /// all that pass come first), as `slice::partition_point`.
    pub fn partition_point(&self, mut is_before: impl FnMut(&T) -> bool) -> usize {
        let (mut low, mut high) = (0, self.len);
        while low < high {
            let middle = low + (high - low) / 2;
            if is_before(self.get(middle).expect("below len")) {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        low
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.iter_from(0)
    }

    /// The elements from `start` on, oldest first. Panics past the end, as `VecDeque::range`.
    pub fn iter_from(&self, start: usize) -> impl Iterator<Item = &T> + '_ {
        assert!(
            start <= self.len,
            "start {start} is past the end ({})",
            self.len
        );
        let (first_chunk, offset) = if start == self.len {
            (self.chunks.len(), 0)
        } else {
            self.locate(start)
        };
        self.chunks
            .range(first_chunk..)
            .enumerate()
            .flat_map(move |(n, chunk)| chunk.range(if n == 0 { offset } else { 0 }..))
    }

    /// The chunk and the offset in it of an element's position (below `len`).
    fn locate(&self, position: usize) -> (usize, usize) {
        let first_len = self.chunks.front().map_or(0, VecDeque::len);
        if position < first_len {
            return (0, position);
        }
        let past_first = position - first_len;
        (1 + past_first / CHUNK_LEN, past_first % CHUNK_LEN)
    }
}

impl<T> From<Vec<T>> for Chunked<T> {
    fn from(items: Vec<T>) -> Self {
        let mut chunked = Chunked::default();
        for item in items {
            chunked.push_back(item);
        }
        chunked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Push(u32),
        Pop(u16),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        // Pushes in bursts of up to three chunks and pops of up to two, so chunk boundaries,
        // an emptied first chunk and a reused spare all happen.
        let op = prop_oneof![
            (1..3 * CHUNK_LEN as u32).prop_map(Op::Push),
            (1..2 * CHUNK_LEN as u16).prop_map(Op::Pop),
        ];
        prop::collection::vec(op, 1..12)
    }

    fn assert_same(chunked: &Chunked<u64>, model: &VecDeque<u64>) {
        assert_eq!(chunked.len, model.len());
        assert_eq!(chunked.back(), model.back());
        assert!(chunked.iter().eq(model.iter()));
        let probes = [
            0,
            1,
            CHUNK_LEN - 1,
            CHUNK_LEN,
            CHUNK_LEN + 1,
            model.len() / 2,
        ];
        for &position in probes
            .iter()
            .chain([model.len().saturating_sub(1), model.len()].iter())
        {
            assert_eq!(chunked.get(position), model.get(position), "at {position}");
            if position <= model.len() {
                assert!(
                    chunked.iter_from(position).eq(model.range(position..)),
                    "from {position}"
                );
            }
        }
        for threshold in [0, model.len() as u64 / 3, u64::MAX] {
            let cut = |value: &u64| {
                *value
                    < model
                        .front()
                        .copied()
                        .unwrap_or(0)
                        .saturating_add(threshold)
            };
            assert_eq!(
                chunked.partition_point(cut),
                model.iter().position(|v| !cut(v)).unwrap_or(model.len())
            );
        }
        assert!(
            chunked
                .chunks
                .iter()
                .skip(1)
                .take(chunked.chunks.len().saturating_sub(2))
                .all(|chunk| chunk.len() == CHUNK_LEN),
            "every chunk between the first and the last is full"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn behaves_as_a_vecdeque(ops in ops()) {
            let mut chunked = Chunked::default();
            let mut model = VecDeque::new();
            let mut next = 0u64;
            for op in ops {
                match op {
                    Op::Push(count) => {
                        for _ in 0..count {
                            chunked.push_back(next);
                            model.push_back(next);
                            next += 1;
                        }
                    }
                    Op::Pop(count) => {
                        for _ in 0..count {
                            prop_assert_eq!(chunked.pop_front(), model.pop_front());
                        }
                    }
                }
                assert_same(&chunked, &model);
            }
        }
    }

    #[test]
    fn a_small_log_holds_little_and_the_first_chunk_grows_to_exactly_a_chunk() {
        let mut chunked = Chunked::default();
        for item in 0..100u64 {
            chunked.push_back(item);
        }
        let capacity: usize = chunked.chunks.iter().map(VecDeque::capacity).sum();
        assert!(capacity < 256, "100 elements hold room for {capacity}");
        for item in 100..=CHUNK_LEN as u64 {
            chunked.push_back(item);
        }
        let capacities: Vec<usize> = chunked.chunks.iter().map(VecDeque::capacity).collect();
        assert_eq!(chunked.chunks.len(), 2);
        assert_eq!(
            capacities[0], CHUNK_LEN,
            "doubling stops at a chunk: {capacities:?}"
        );
        assert!(
            capacities[1] >= CHUNK_LEN,
            "later chunks are allocated whole"
        );
    }

    #[test]
    fn a_full_chunk_is_never_reallocated_and_an_emptied_one_is_reused() {
        let mut chunked = Chunked::default();
        for value in 0..2 * CHUNK_LEN as u64 {
            chunked.push_back(value);
        }
        let first_chunk = chunked.chunks[0].as_slices().0.as_ptr();
        for value in 0..CHUNK_LEN as u64 {
            chunked.push_back(value);
        }
        assert_eq!(chunked.chunks[0].as_slices().0.as_ptr(), first_chunk);
        for _ in 0..CHUNK_LEN {
            chunked.pop_front();
        }
        chunked.push_back(7);
        let newest = chunked.chunks.back().unwrap().as_slices().0.as_ptr();
        assert_eq!(
            newest, first_chunk,
            "the emptied chunk is the next one filled"
        );
        assert_eq!(chunked.len, 2 * CHUNK_LEN + 1);
    }

    #[test]
    fn from_a_vec_keeps_the_order() {
        let items: Vec<u64> = (0..CHUNK_LEN as u64 + 5).collect();
        let chunked = Chunked::from(items.clone());
        assert!(chunked.iter().eq(items.iter()));
        assert_eq!(chunked.chunks.len(), 2);
    }
}
