//! The binary encoding of [`Command`]: what goes into the Raft log. Hand-written, versioned,
//! compact; the grammar is in `docs/design/storage.md` ("Command encoding") and repeated here:
//!
//! ```text
//! command  = 0x01 (format) body
//! body     = 0x01 put | 0x02 delete_range | 0x03 txn | 0x04 compact revision
//!          | 0x05 lease_grant id ttl_seconds | 0x06 lease_revoke id
//!          | 0x07 lease_checkpoint count (id remaining_ttl_ms)*
//! put      = key value lease flags(u8: 1 prev_kv, 2 ignore_value, 4 ignore_lease)
//! delete_range = key range_end flags(u8: 1 prev_kv)
//! txn      = count compare* count op* count op*
//! compare  = key range_end target(u8: 1 version, 2 create, 3 mod, 4 value, 5 lease) operand
//!            result(u8: 1 equal, 2 greater, 3 less, 4 not_equal)
//! op       = 0x01 range_request | 0x02 put | 0x03 delete_range | 0x04 txn
//! range_request = key range_end limit revision sort_order(u8) sort_target(u8)
//!            flags(u8: 1 keys_only, 2 count_only) min_mod max_mod min_create max_create
//! ```
//!
//! Integers are LEB128 varints (signed ones zigzag-encoded); byte strings are `len varint | bytes`.
//! Decoding checks every length against the limits in [`super::limits`] before allocating, and
//! returns a [`CodecError`] on anything unexpected; it never panics.

use super::error::CodecError;
use super::limits::{
    COMMAND_BYTES_MAX, KEY_BYTES_MAX, LEASE_CHECKPOINTS_MAX, TXN_DEPTH_MAX, TXN_OPS_MAX,
    VALUE_BYTES_MAX,
};
use super::types::*;
use bytes::Bytes;

const FORMAT: u8 = 1;

const TAG_PUT: u8 = 1;
const TAG_DELETE_RANGE: u8 = 2;
const TAG_TXN: u8 = 3;
const TAG_COMPACT: u8 = 4;
const TAG_LEASE_GRANT: u8 = 5;
const TAG_LEASE_REVOKE: u8 = 6;
const TAG_LEASE_CHECKPOINT: u8 = 7;

const OP_RANGE: u8 = 1;
const OP_PUT: u8 = 2;
const OP_DELETE_RANGE: u8 = 3;
const OP_TXN: u8 = 4;

/// `Command::encode` / `Command::decode`.
pub trait CommandCodec: Sized {
    fn encode(&self) -> Bytes;
    fn decode(bytes: &[u8]) -> Result<Self, CodecError>;
}

impl CommandCodec for Command {
    fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(64);
        out.push(FORMAT);
        encode_command(self, &mut out);
        Bytes::from(out)
    }

    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        if bytes.len() > COMMAND_BYTES_MAX {
            return Err(over(
                "command",
                bytes.len(),
                "command_bytes_max",
                COMMAND_BYTES_MAX,
            ));
        }
        let mut reader = Reader { bytes, offset: 0 };
        let format = reader.u8()?;
        if format != FORMAT {
            return Err(CodecError::UnknownFormat(format));
        }
        let command = reader.command()?;
        if reader.offset != bytes.len() {
            return Err(CodecError::TrailingBytes {
                trailing: bytes.len() - reader.offset,
            });
        }
        Ok(command)
    }
}

fn over(what: &'static str, value: usize, limit: &'static str, max: usize) -> CodecError {
    CodecError::OverLimit {
        what,
        value: value as u64,
        limit,
        max: max as u64,
    }
}

// ---- encoding ----

fn put_uvarint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_ivarint(out: &mut Vec<u8>, value: i64) {
    put_uvarint(out, ((value << 1) ^ (value >> 63)) as u64);
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_uvarint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_range(out: &mut Vec<u8>, range: &KeyRange) {
    put_bytes(out, &range.key);
    put_bytes(out, &range.range_end);
}

fn flags(bits: &[bool]) -> u8 {
    bits.iter()
        .enumerate()
        .fold(0, |acc, (i, &on)| acc | ((on as u8) << i))
}

fn encode_command(command: &Command, out: &mut Vec<u8>) {
    match command {
        Command::Put(put) => {
            out.push(TAG_PUT);
            encode_put(put, out);
        }
        Command::DeleteRange(delete) => {
            out.push(TAG_DELETE_RANGE);
            encode_delete(delete, out);
        }
        Command::Txn(txn) => {
            out.push(TAG_TXN);
            encode_txn(txn, out);
        }
        Command::Compact { revision } => {
            out.push(TAG_COMPACT);
            put_ivarint(out, *revision);
        }
        Command::LeaseGrant { id, ttl_seconds } => {
            out.push(TAG_LEASE_GRANT);
            put_ivarint(out, *id);
            put_ivarint(out, *ttl_seconds);
        }
        Command::LeaseRevoke { id } => {
            out.push(TAG_LEASE_REVOKE);
            put_ivarint(out, *id);
        }
        Command::LeaseCheckpoint { checkpoints } => {
            out.push(TAG_LEASE_CHECKPOINT);
            put_uvarint(out, checkpoints.len() as u64);
            for (id, remaining_ttl_ms) in checkpoints {
                put_ivarint(out, *id);
                put_ivarint(out, *remaining_ttl_ms);
            }
        }
    }
}

fn encode_put(put: &PutRequest, out: &mut Vec<u8>) {
    put_bytes(out, &put.key);
    put_bytes(out, &put.value);
    put_ivarint(out, put.lease);
    out.push(flags(&[put.prev_kv, put.ignore_value, put.ignore_lease]));
}

fn encode_delete(delete: &DeleteRangeRequest, out: &mut Vec<u8>) {
    put_range(out, &delete.range);
    out.push(flags(&[delete.prev_kv]));
}

fn encode_range_request(range: &RangeRequest, out: &mut Vec<u8>) {
    put_range(out, &range.range);
    put_ivarint(out, range.limit);
    put_ivarint(out, range.revision);
    out.push(match range.sort_order {
        SortOrder::None => 0,
        SortOrder::Ascend => 1,
        SortOrder::Descend => 2,
    });
    out.push(match range.sort_target {
        SortTarget::Key => 0,
        SortTarget::Version => 1,
        SortTarget::Create => 2,
        SortTarget::Mod => 3,
        SortTarget::Value => 4,
    });
    out.push(flags(&[range.keys_only, range.count_only]));
    for revision in [
        range.min_mod_revision,
        range.max_mod_revision,
        range.min_create_revision,
        range.max_create_revision,
    ] {
        put_ivarint(out, revision);
    }
}

fn encode_txn(txn: &TxnRequest, out: &mut Vec<u8>) {
    put_uvarint(out, txn.compare.len() as u64);
    for compare in &txn.compare {
        put_range(out, &compare.range);
        match &compare.target {
            CompareTarget::Version(v) => {
                out.push(1);
                put_ivarint(out, *v);
            }
            CompareTarget::CreateRevision(v) => {
                out.push(2);
                put_ivarint(out, *v);
            }
            CompareTarget::ModRevision(v) => {
                out.push(3);
                put_ivarint(out, *v);
            }
            CompareTarget::Value(v) => {
                out.push(4);
                put_bytes(out, v);
            }
            CompareTarget::Lease(v) => {
                out.push(5);
                put_ivarint(out, *v);
            }
        }
        out.push(match compare.result {
            CompareResult::Equal => 1,
            CompareResult::Greater => 2,
            CompareResult::Less => 3,
            CompareResult::NotEqual => 4,
        });
    }
    for ops in [&txn.success, &txn.failure] {
        put_uvarint(out, ops.len() as u64);
        for op in ops {
            match op {
                RequestOp::Range(range) => {
                    out.push(OP_RANGE);
                    encode_range_request(range, out);
                }
                RequestOp::Put(put) => {
                    out.push(OP_PUT);
                    encode_put(put, out);
                }
                RequestOp::DeleteRange(delete) => {
                    out.push(OP_DELETE_RANGE);
                    encode_delete(delete, out);
                }
                RequestOp::Txn(nested) => {
                    out.push(OP_TXN);
                    encode_txn(nested, out);
                }
            }
        }
    }
}

// ---- decoding ----

struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Result<&'a [u8], CodecError> {
        let remaining = self.bytes.len() - self.offset;
        if count > remaining {
            return Err(CodecError::Truncated {
                offset: self.offset,
                needed: count - remaining,
            });
        }
        let slice = &self.bytes[self.offset..self.offset + count];
        self.offset += count;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }

    fn uvarint(&mut self) -> Result<u64, CodecError> {
        let start = self.offset;
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            if shift == 63 && byte > 1 {
                return Err(CodecError::BadVarint { offset: start });
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(CodecError::BadVarint { offset: start })
    }

    fn ivarint(&mut self) -> Result<i64, CodecError> {
        let raw = self.uvarint()?;
        Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
    }

    fn bytes(
        &mut self,
        what: &'static str,
        limit: &'static str,
        max: usize,
    ) -> Result<Bytes, CodecError> {
        let len = self.uvarint()?;
        if len > max as u64 {
            return Err(CodecError::OverLimit {
                what,
                value: len,
                limit,
                max: max as u64,
            });
        }
        Ok(Bytes::copy_from_slice(self.take(len as usize)?))
    }

    fn key(&mut self) -> Result<Bytes, CodecError> {
        self.bytes("key", "key_bytes_max", KEY_BYTES_MAX)
    }

    fn range(&mut self) -> Result<KeyRange, CodecError> {
        Ok(KeyRange {
            key: self.key()?,
            range_end: self.key()?,
        })
    }

    fn count(
        &mut self,
        what: &'static str,
        limit: &'static str,
        max: usize,
    ) -> Result<usize, CodecError> {
        let count = self.uvarint()?;
        if count > max as u64 {
            return Err(CodecError::OverLimit {
                what,
                value: count,
                limit,
                max: max as u64,
            });
        }
        Ok(count as usize)
    }

    fn flags(&mut self, what: &'static str, known: u8) -> Result<[bool; 3], CodecError> {
        let offset = self.offset;
        let bits = self.u8()?;
        if bits & !known != 0 {
            return Err(CodecError::UnknownFlags { what, bits, offset });
        }
        Ok([bits & 1 != 0, bits & 2 != 0, bits & 4 != 0])
    }

    fn tag(&mut self) -> Result<(u8, usize), CodecError> {
        let offset = self.offset;
        Ok((self.u8()?, offset))
    }

    fn command(&mut self) -> Result<Command, CodecError> {
        let (tag, offset) = self.tag()?;
        Ok(match tag {
            TAG_PUT => Command::Put(self.put()?),
            TAG_DELETE_RANGE => Command::DeleteRange(self.delete()?),
            TAG_TXN => Command::Txn(self.txn(1)?),
            TAG_COMPACT => Command::Compact {
                revision: self.ivarint()?,
            },
            TAG_LEASE_GRANT => Command::LeaseGrant {
                id: self.ivarint()?,
                ttl_seconds: self.ivarint()?,
            },
            TAG_LEASE_REVOKE => Command::LeaseRevoke {
                id: self.ivarint()?,
            },
            TAG_LEASE_CHECKPOINT => {
                let count = self.count(
                    "lease checkpoints",
                    "lease_checkpoints_max",
                    LEASE_CHECKPOINTS_MAX,
                )?;
                let mut checkpoints = Vec::with_capacity(count);
                for _ in 0..count {
                    checkpoints.push((self.ivarint()?, self.ivarint()?));
                }
                Command::LeaseCheckpoint { checkpoints }
            }
            _ => {
                return Err(CodecError::UnknownTag {
                    what: "command",
                    tag,
                    offset,
                })
            }
        })
    }

    fn put(&mut self) -> Result<PutRequest, CodecError> {
        let key = self.key()?;
        let value = self.bytes("value", "value_bytes_max", VALUE_BYTES_MAX)?;
        let lease = self.ivarint()?;
        let [prev_kv, ignore_value, ignore_lease] = self.flags("put", 0b111)?;
        Ok(PutRequest {
            key,
            value,
            lease,
            prev_kv,
            ignore_value,
            ignore_lease,
        })
    }

    fn delete(&mut self) -> Result<DeleteRangeRequest, CodecError> {
        let range = self.range()?;
        let [prev_kv, ..] = self.flags("delete_range", 0b1)?;
        Ok(DeleteRangeRequest { range, prev_kv })
    }

    fn range_request(&mut self) -> Result<RangeRequest, CodecError> {
        let range = self.range()?;
        let limit = self.ivarint()?;
        let revision = self.ivarint()?;
        let (order, offset) = self.tag()?;
        let sort_order = match order {
            0 => SortOrder::None,
            1 => SortOrder::Ascend,
            2 => SortOrder::Descend,
            _ => {
                return Err(CodecError::UnknownTag {
                    what: "sort order",
                    tag: order,
                    offset,
                })
            }
        };
        let (target, offset) = self.tag()?;
        let sort_target = match target {
            0 => SortTarget::Key,
            1 => SortTarget::Version,
            2 => SortTarget::Create,
            3 => SortTarget::Mod,
            4 => SortTarget::Value,
            _ => {
                return Err(CodecError::UnknownTag {
                    what: "sort target",
                    tag: target,
                    offset,
                })
            }
        };
        let [keys_only, count_only, _] = self.flags("range", 0b11)?;
        Ok(RangeRequest {
            range,
            limit,
            revision,
            sort_order,
            sort_target,
            keys_only,
            count_only,
            min_mod_revision: self.ivarint()?,
            max_mod_revision: self.ivarint()?,
            min_create_revision: self.ivarint()?,
            max_create_revision: self.ivarint()?,
        })
    }

    fn txn(&mut self, depth: usize) -> Result<TxnRequest, CodecError> {
        if depth > TXN_DEPTH_MAX {
            return Err(over(
                "txn nesting depth",
                depth,
                "txn_depth_max",
                TXN_DEPTH_MAX,
            ));
        }
        let compares = self.count("compares", "txn_ops_max", TXN_OPS_MAX)?;
        let mut compare = Vec::with_capacity(compares);
        for _ in 0..compares {
            let range = self.range()?;
            let (target_tag, offset) = self.tag()?;
            let target = match target_tag {
                1 => CompareTarget::Version(self.ivarint()?),
                2 => CompareTarget::CreateRevision(self.ivarint()?),
                3 => CompareTarget::ModRevision(self.ivarint()?),
                4 => CompareTarget::Value(self.bytes(
                    "compare value",
                    "value_bytes_max",
                    VALUE_BYTES_MAX,
                )?),
                5 => CompareTarget::Lease(self.ivarint()?),
                _ => {
                    return Err(CodecError::UnknownTag {
                        what: "compare target",
                        tag: target_tag,
                        offset,
                    })
                }
            };
            let (result_tag, offset) = self.tag()?;
            let result = match result_tag {
                1 => CompareResult::Equal,
                2 => CompareResult::Greater,
                3 => CompareResult::Less,
                4 => CompareResult::NotEqual,
                _ => {
                    return Err(CodecError::UnknownTag {
                        what: "compare result",
                        tag: result_tag,
                        offset,
                    })
                }
            };
            compare.push(Compare {
                range,
                target,
                result,
            });
        }
        let success = self.ops(depth)?;
        let failure = self.ops(depth)?;
        Ok(TxnRequest {
            compare,
            success,
            failure,
        })
    }

    fn ops(&mut self, depth: usize) -> Result<Vec<RequestOp>, CodecError> {
        let count = self.count("txn ops", "txn_ops_max", TXN_OPS_MAX)?;
        let mut ops = Vec::with_capacity(count);
        for _ in 0..count {
            let (tag, offset) = self.tag()?;
            ops.push(match tag {
                OP_RANGE => RequestOp::Range(self.range_request()?),
                OP_PUT => RequestOp::Put(self.put()?),
                OP_DELETE_RANGE => RequestOp::DeleteRange(self.delete()?),
                OP_TXN => RequestOp::Txn(self.txn(depth + 1)?),
                _ => {
                    return Err(CodecError::UnknownTag {
                        what: "request op",
                        tag,
                        offset,
                    })
                }
            });
        }
        Ok(ops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_the_edges() {
        for value in [0i64, 1, -1, 63, -64, 64, i64::MAX, i64::MIN] {
            let command = Command::Compact { revision: value };
            assert_eq!(Command::decode(&command.encode()).unwrap(), command);
        }
        let mut reader = Reader {
            bytes: &[0xff; 11],
            offset: 0,
        };
        assert!(matches!(
            reader.uvarint(),
            Err(CodecError::BadVarint { .. })
        ));
    }

    #[test]
    fn garbage_is_an_error() {
        assert_eq!(
            Command::decode(&[]),
            Err(CodecError::Truncated {
                offset: 0,
                needed: 1
            })
        );
        assert_eq!(Command::decode(&[2, 1]), Err(CodecError::UnknownFormat(2)));
        assert!(matches!(
            Command::decode(&[1, 99]),
            Err(CodecError::UnknownTag { .. })
        ));
        let mut bytes = Command::LeaseRevoke { id: 5 }.encode().to_vec();
        bytes.push(0);
        assert_eq!(
            Command::decode(&bytes),
            Err(CodecError::TrailingBytes { trailing: 1 })
        );
        // A length beyond the limit is refused before anything is allocated.
        let mut huge = vec![1, TAG_PUT];
        put_uvarint(&mut huge, u64::MAX >> 1);
        assert!(matches!(
            Command::decode(&huge),
            Err(CodecError::OverLimit { .. })
        ));
    }
}
