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
//! image: `[applied index u64][count u64]` then `count` pairs `[key u64][value u64]` in key order.

use ballot_core::{LogIndex, StateMachine};
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

impl std::error::Error for DecodeError {}

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

/// The simulated nodes' state machine: a map from keys to values, and the index it has applied
/// through. It is the simulator's implementation of `ballot_core::StateMachine`, held to the
/// same conformance suite as the server's MVCC store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvStore {
    map: BTreeMap<Key, Value>,
    applied_index: LogIndex,
}

impl KvStore {
    pub fn get(&self, key: Key) -> Option<Value> {
        self.map.get(&key).copied()
    }

    /// Runs one command on the map (the applied index is the caller's: see
    /// [`StateMachine::apply`]).
    pub fn execute(&mut self, command: &Command) -> ApplyResult {
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

    /// The image: applied index, then the pairs.
    pub fn encode_image(&self) -> Bytes {
        let mut out = Vec::with_capacity(16 + 16 * self.map.len());
        out.extend_from_slice(&self.applied_index.to_le_bytes());
        out.extend_from_slice(&(self.map.len() as u64).to_le_bytes());
        for (key, value) in &self.map {
            out.extend_from_slice(&key.to_le_bytes());
            out.extend_from_slice(&value.to_le_bytes());
        }
        Bytes::from(out)
    }

    pub fn decode_image(bytes: &[u8]) -> Result<KvStore, DecodeError> {
        let mut reader = Reader { bytes };
        let applied_index = reader.u64()?;
        let count = reader.u64()?;
        let mut map = BTreeMap::new();
        for _ in 0..count {
            map.insert(reader.u64()?, reader.u64()?);
        }
        reader.finish()?;
        Ok(KvStore { map, applied_index })
    }
}

impl StateMachine for KvStore {
    type Command = Command;
    type Outcome = ApplyResult;
    type Error = DecodeError;

    fn apply(
        &mut self,
        commands: &[(LogIndex, Command)],
    ) -> Result<Vec<Option<ApplyResult>>, DecodeError> {
        Ok(commands
            .iter()
            .map(|(index, command)| {
                if *index <= self.applied_index {
                    return None;
                }
                self.applied_index = *index;
                Some(self.execute(command))
            })
            .collect())
    }

    fn mark_applied(&mut self, index: LogIndex) -> Result<(), DecodeError> {
        self.applied_index = self.applied_index.max(index);
        Ok(())
    }

    fn applied_index(&self) -> LogIndex {
        self.applied_index
    }

    fn image(&self) -> Result<Bytes, DecodeError> {
        Ok(self.encode_image())
    }

    fn restore(&mut self, image: &[u8]) -> Result<(), DecodeError> {
        *self = KvStore::decode_image(image)?;
        Ok(())
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
                kv.execute(command);
            }
            prop_assert_eq!(KvStore::decode_image(&kv.encode_image()).unwrap(), kv);
        }
    }

    struct Harness;

    impl ballot_core::conformance::StateMachineHarness for Harness {
        type Machine = KvStore;

        fn fresh(&mut self) -> KvStore {
            KvStore::default()
        }

        fn put(&self, key: u64, value: u64) -> Command {
            Command::Put {
                op_id: key ^ value,
                key,
                value,
            }
        }

        fn get(&self, machine: &KvStore, key: u64) -> Option<u64> {
            machine.get(key)
        }
    }

    #[test]
    fn the_simulated_map_keeps_every_rule_of_a_state_machine() {
        ballot_core::conformance::state_machine(&mut Harness);
    }

    #[test]
    fn cas_swaps_only_on_match() {
        let mut kv = KvStore::default();
        assert_eq!(
            kv.execute(&Command::Cas {
                op_id: 1,
                key: 0,
                expected: Some(5),
                new: 6
            }),
            ApplyResult::Cas { swapped: false }
        );
        assert_eq!(
            kv.execute(&Command::Cas {
                op_id: 2,
                key: 0,
                expected: None,
                new: 6
            }),
            ApplyResult::Cas { swapped: true }
        );
        assert_eq!(
            kv.execute(&Command::Put {
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
        assert!(KvStore::decode_image(&[0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }
}
