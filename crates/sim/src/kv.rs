//! The replicated state machine the simulated clients use: a map from `u64` keys to `u64` values,
//! written by `Put` and compare-and-swap commands that travel through the log as opaque bytes.
//!
//! It owns the command encoding and the snapshot encoding. It never reads a clock or draws
//! randomness: applying the same commands in the same order gives the same map and results on
//! every node (a `BTreeMap`, so snapshots are byte-identical too).
//!
//! Encoding (little-endian):
//! `Put`: `[1][op_id u64][key u64][value u64]`;
//! `Cas`: `[2][op_id u64][key u64][has_expected u8][expected u64][new u64]`;
//! snapshot: `[count u64]` then `count` pairs `[key u64][value u64]` in key order.

use bytes::Bytes;
use std::collections::BTreeMap;
use std::fmt;

pub type Key = u64;
pub type Value = u64;

const TAG_PUT: u8 = 1;
const TAG_CAS: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Put {
        op_id: u64,
        key: Key,
        value: Value,
    },
    Cas {
        op_id: u64,
        key: Key,
        expected: Option<Value>,
        new: Value,
    },
}

/// What applying a command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyResult {
    Written,
    Cas { swapped: bool },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn u8(&mut self) -> Result<u8, DecodeError> {
        let (&first, rest) = self
            .bytes
            .split_first()
            .ok_or_else(|| DecodeError("truncated".into()))?;
        self.bytes = rest;
        Ok(first)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        if self.bytes.len() < 8 {
            return Err(DecodeError("truncated".into()));
        }
        let (head, rest) = self.bytes.split_at(8);
        self.bytes = rest;
        Ok(u64::from_le_bytes(head.try_into().expect("8 bytes")))
    }

    fn finish(&self) -> Result<(), DecodeError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(DecodeError(format!("{} trailing bytes", self.bytes.len())))
        }
    }
}

impl Command {
    pub fn op_id(&self) -> u64 {
        match self {
            Command::Put { op_id, .. } | Command::Cas { op_id, .. } => *op_id,
        }
    }

    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(34);
        match *self {
            Command::Put { op_id, key, value } => {
                out.push(TAG_PUT);
                for word in [op_id, key, value] {
                    out.extend_from_slice(&word.to_le_bytes());
                }
            }
            Command::Cas {
                op_id,
                key,
                expected,
                new,
            } => {
                out.push(TAG_CAS);
                out.extend_from_slice(&op_id.to_le_bytes());
                out.extend_from_slice(&key.to_le_bytes());
                out.push(u8::from(expected.is_some()));
                out.extend_from_slice(&expected.unwrap_or(0).to_le_bytes());
                out.extend_from_slice(&new.to_le_bytes());
            }
        }
        Bytes::from(out)
    }

    pub fn decode(bytes: &[u8]) -> Result<Command, DecodeError> {
        let mut reader = Reader { bytes };
        let command = match reader.u8()? {
            TAG_PUT => Command::Put {
                op_id: reader.u64()?,
                key: reader.u64()?,
                value: reader.u64()?,
            },
            TAG_CAS => {
                let op_id = reader.u64()?;
                let key = reader.u64()?;
                let has_expected = reader.u8()?;
                let expected = reader.u64()?;
                let new = reader.u64()?;
                let expected = match has_expected {
                    0 => None,
                    1 => Some(expected),
                    other => return Err(DecodeError(format!("bad option flag {other}"))),
                };
                Command::Cas {
                    op_id,
                    key,
                    expected,
                    new,
                }
            }
            tag => return Err(DecodeError(format!("unknown command tag {tag}"))),
        };
        reader.finish()?;
        Ok(command)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvStore {
    map: BTreeMap<Key, Value>,
}

impl KvStore {
    pub fn get(&self, key: Key) -> Option<Value> {
        self.map.get(&key).copied()
    }

    pub fn apply(&mut self, command: &Command) -> ApplyResult {
        match *command {
            Command::Put { key, value, .. } => {
                self.map.insert(key, value);
                ApplyResult::Written
            }
            Command::Cas {
                key, expected, new, ..
            } => {
                let swapped = self.get(key) == expected;
                if swapped {
                    self.map.insert(key, new);
                }
                ApplyResult::Cas { swapped }
            }
        }
    }

    pub fn snapshot(&self) -> Bytes {
        let mut out = Vec::with_capacity(8 + 16 * self.map.len());
        out.extend_from_slice(&(self.map.len() as u64).to_le_bytes());
        for (key, value) in &self.map {
            out.extend_from_slice(&key.to_le_bytes());
            out.extend_from_slice(&value.to_le_bytes());
        }
        Bytes::from(out)
    }

    pub fn restore(bytes: &[u8]) -> Result<KvStore, DecodeError> {
        let mut reader = Reader { bytes };
        let count = reader.u64()?;
        let mut map = BTreeMap::new();
        for _ in 0..count {
            map.insert(reader.u64()?, reader.u64()?);
        }
        reader.finish()?;
        Ok(KvStore { map })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn command() -> impl Strategy<Value = Command> {
        prop_oneof![
            (any::<u64>(), any::<u64>(), any::<u64>())
                .prop_map(|(op_id, key, value)| Command::Put { op_id, key, value }),
            (
                any::<u64>(),
                any::<u64>(),
                any::<Option<u64>>(),
                any::<u64>()
            )
                .prop_map(|(op_id, key, expected, new)| {
                    Command::Cas {
                        op_id,
                        key,
                        expected,
                        new,
                    }
                }),
        ]
    }

    proptest! {
        #[test]
        fn commands_round_trip(command in command()) {
            prop_assert_eq!(Command::decode(&command.encode()).unwrap(), command);
        }

        #[test]
        fn snapshots_round_trip(commands in proptest::collection::vec(command(), 0..40)) {
            let mut kv = KvStore::default();
            for command in &commands {
                kv.apply(command);
            }
            prop_assert_eq!(KvStore::restore(&kv.snapshot()).unwrap(), kv);
        }
    }

    #[test]
    fn cas_swaps_only_on_match() {
        let mut kv = KvStore::default();
        assert_eq!(
            kv.apply(&Command::Cas {
                op_id: 1,
                key: 0,
                expected: Some(5),
                new: 6
            }),
            ApplyResult::Cas { swapped: false }
        );
        assert_eq!(
            kv.apply(&Command::Cas {
                op_id: 2,
                key: 0,
                expected: None,
                new: 6
            }),
            ApplyResult::Cas { swapped: true }
        );
        assert_eq!(
            kv.apply(&Command::Put {
                op_id: 3,
                key: 0,
                value: 9
            }),
            ApplyResult::Written
        );
        assert_eq!(kv.get(0), Some(9));
    }

    #[test]
    fn garbage_is_rejected() {
        assert!(Command::decode(&[]).is_err());
        assert!(Command::decode(&[9, 0, 0]).is_err());
        let mut bytes = Command::Put {
            op_id: 1,
            key: 2,
            value: 3,
        }
        .encode()
        .to_vec();
        bytes.push(0);
        assert!(Command::decode(&bytes).is_err());
        assert!(KvStore::restore(&[1, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }
}
