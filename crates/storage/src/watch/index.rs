//! Which synced watchers a changed key reaches, found in time proportional to the matches.
//!
//! Watchers come in three shapes, each with its own structure:
//!
//! - a single key: a hash map from the key to its watchers (one lookup);
//! - a prefix (`range_end == prefix_end(key)`, which is what etcd clients send for `--prefix`):
//!   a hash map from the prefix to its watchers, probed only at the prefix lengths in use;
//! - any other range: an ordered map from the range start, scanned over the starts `<= key`.
//!
//! The third shape is the only one that is not O(matches); etcd clients almost never send it.

use super::{StreamId, WatchId};
use crate::mvcc::types::{prefix_end, KeyRange};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;

/// A watcher's address: the stream that owns it and its id there.
pub(crate) type WatcherKey = (StreamId, WatchId);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Key,
    Prefix,
    Range,
}

fn shape(range: &KeyRange) -> Shape {
    if range.range_end.is_empty() {
        Shape::Key
    } else if range.range_end == prefix_end(&range.key) {
        Shape::Prefix
    } else {
        Shape::Range
    }
}

#[derive(Debug, Default)]
pub(crate) struct SyncedIndex {
    keys: HashMap<Bytes, BTreeSet<WatcherKey>>,
    prefixes: HashMap<Bytes, BTreeSet<WatcherKey>>,
    /// How many distinct prefixes of each length are indexed, so a lookup probes only those.
    prefix_lengths: BTreeMap<usize, usize>,
    /// Range start -> (watcher -> range end).
    ranges: BTreeMap<Bytes, BTreeMap<WatcherKey, Bytes>>,
    len: usize,
}

impl SyncedIndex {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn insert(&mut self, watcher: WatcherKey, range: &KeyRange) {
        let inserted = match shape(range) {
            Shape::Key => self
                .keys
                .entry(range.key.clone())
                .or_default()
                .insert(watcher),
            Shape::Prefix => {
                let set = self.prefixes.entry(range.key.clone()).or_default();
                if set.is_empty() {
                    *self.prefix_lengths.entry(range.key.len()).or_default() += 1;
                }
                set.insert(watcher)
            }
            Shape::Range => self
                .ranges
                .entry(range.key.clone())
                .or_default()
                .insert(watcher, range.range_end.clone())
                .is_none(),
        };
        assert!(inserted, "watcher {watcher:?} was indexed twice");
        self.len += 1;
    }

    pub(crate) fn remove(&mut self, watcher: WatcherKey, range: &KeyRange) {
        let removed = match shape(range) {
            Shape::Key => remove_from(&mut self.keys, &range.key, watcher),
            Shape::Prefix => {
                let removed = remove_from(&mut self.prefixes, &range.key, watcher);
                if removed && !self.prefixes.contains_key(&range.key) {
                    let length = range.key.len();
                    let count = self
                        .prefix_lengths
                        .get_mut(&length)
                        .expect("prefix length counted");
                    *count -= 1;
                    if *count == 0 {
                        self.prefix_lengths.remove(&length);
                    }
                }
                removed
            }
            Shape::Range => {
                let entries = self.ranges.get_mut(&range.key);
                let removed = entries.is_some_and(|entries| entries.remove(&watcher).is_some());
                if self.ranges.get(&range.key).is_some_and(BTreeMap::is_empty) {
                    self.ranges.remove(&range.key);
                }
                removed
            }
        };
        assert!(
            removed,
            "watcher {watcher:?} was removed from the index without being in it"
        );
        self.len -= 1;
    }

    pub(crate) fn contains(&self, watcher: WatcherKey, range: &KeyRange) -> bool {
        match shape(range) {
            Shape::Key => self
                .keys
                .get(&range.key)
                .is_some_and(|set| set.contains(&watcher)),
            Shape::Prefix => self
                .prefixes
                .get(&range.key)
                .is_some_and(|set| set.contains(&watcher)),
            Shape::Range => self
                .ranges
                .get(&range.key)
                .is_some_and(|entries| entries.contains_key(&watcher)),
        }
    }

    /// Appends every indexed watcher whose range contains `key`.
    pub(crate) fn matches(&self, key: &[u8], out: &mut Vec<WatcherKey>) {
        if let Some(set) = self.keys.get(key) {
            out.extend(set.iter().copied());
        }
        for &length in self.prefix_lengths.keys() {
            if length > key.len() {
                break;
            }
            if let Some(set) = self.prefixes.get(&key[..length]) {
                out.extend(set.iter().copied());
            }
        }
        let starts = (Bound::Unbounded, Bound::Included(key));
        for entries in self
            .ranges
            .range::<[u8], _>(starts)
            .map(|(_, entries)| entries)
        {
            for (watcher, end) in entries {
                if &end[..] == b"\0" || key < &end[..] {
                    out.push(*watcher);
                }
            }
        }
    }
}

fn remove_from(
    map: &mut HashMap<Bytes, BTreeSet<WatcherKey>>,
    key: &Bytes,
    watcher: WatcherKey,
) -> bool {
    let Some(set) = map.get_mut(key) else {
        return false;
    };
    let removed = set.remove(&watcher);
    if set.is_empty() {
        map.remove(key);
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(index: &SyncedIndex, key: &str) -> Vec<WatcherKey> {
        let mut out = Vec::new();
        index.matches(key.as_bytes(), &mut out);
        out.sort();
        out
    }

    #[test]
    fn each_shape_matches_exactly_its_keys() {
        let mut index = SyncedIndex::default();
        let s = StreamId(1);
        let ranges = [
            KeyRange::single("a"),
            KeyRange::prefix("ab"),
            KeyRange::prefix(""),
            KeyRange::new("b", "d"),
            KeyRange::new("c", "\0"),
        ];
        for (id, range) in ranges.iter().enumerate() {
            index.insert((s, id as WatchId), range);
        }
        assert_eq!(matches(&index, "a"), vec![(s, 0), (s, 2)]);
        assert_eq!(matches(&index, "abc"), vec![(s, 1), (s, 2)]);
        assert_eq!(matches(&index, "b"), vec![(s, 2), (s, 3)]);
        assert_eq!(matches(&index, "c"), vec![(s, 2), (s, 3), (s, 4)]);
        assert_eq!(matches(&index, "d"), vec![(s, 2), (s, 4)]);
        for (id, range) in ranges.iter().enumerate() {
            assert!(index.contains((s, id as WatchId), range));
            index.remove((s, id as WatchId), range);
        }
        assert_eq!(index.len(), 0);
        assert!(matches(&index, "abc").is_empty());
        assert!(index.prefix_lengths.is_empty() && index.ranges.is_empty());
    }

    #[test]
    fn a_range_that_is_a_prefix_is_indexed_as_one() {
        assert_eq!(shape(&KeyRange::new("ab", "ac")), Shape::Prefix);
        assert_eq!(shape(&KeyRange::new(&b"\xff"[..], "\0")), Shape::Prefix);
        assert_eq!(shape(&KeyRange::new("ab", "ad")), Shape::Range);
        assert_eq!(shape(&KeyRange::new("\0", "\0")), Shape::Range);
    }
}
