//! The seeded operation generator: KV, Txn (nested), Compact, Lease and Watch requests, valid
//! and invalid, over a small key space so that operations meet one another.
//!
//! Leases are named by *labels*, not ids: a lease the server numbered is `AUTO_LABEL_BASE + n`
//! for the n-th such grant, a lease granted with an explicit id is that id, and an id never
//! granted stands for itself. Each [`super::session::Session`] turns labels into its server's
//! ids in requests and back in answers.
//!
//! Deterministic: the sequence depends on the seed and on what etcd answered before (its
//! revisions, which grants and compactions succeeded), which are themselves deterministic.
//! Nothing here reads a clock.

use ballot_proto::etcdserverpb as pb;
use ballot_storage::mvcc::types::prefix_end;
use bytes::Bytes;
use pb::compare::{CompareTarget, TargetUnion};
use pb::request_op::Request;
use prost::Message;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::servers::{MAX_REQUEST_BYTES, MAX_TXN_OPS};

/// Labels of leases the server numbered: far from explicit and unknown ids.
pub const AUTO_LABEL_BASE: i64 = 7_000_000_000;
/// Ids the generator grants explicitly (few, so that "lease already exists" happens).
const EXPLICIT_IDS: std::ops::Range<i64> = 1_000_000..1_000_006;
/// Ids never granted.
const UNKNOWN_IDS: std::ops::Range<i64> = 2_000_000..2_000_004;
/// etcd's `MaxLeaseTTL`.
const LEASE_TTL_MAX: i64 = 9_000_000_000;
/// Requests whose encoded size is this close to `MAX_REQUEST_BYTES` are not sent: etcd measures
/// its internal raft request (the request plus a header of a dozen bytes), ballot the request.
const SIZE_GUARD_BYTES: usize = 256;

/// Twelve keys at most: etcd sorts ranges with Go's `sort.Sort`, which is stable (so ties keep
/// key order, as ballot's) only up to 12 elements. Prefixes and `0xff` bytes exercise range ends.
const KEYS: [&[u8]; 12] = [
    b"a",
    b"b",
    b"b/1",
    b"b/2",
    b"b/3",
    b"c",
    b"c/x",
    b"d",
    b"e\xff",
    b"e\xff\xff",
    b"f",
    b"\xff",
];
const MISSING_KEYS: [&[u8]; 3] = [b"0", b"b/0", b"zz"];
const PREFIXES: [&[u8]; 6] = [b"b/", b"b", b"c", b"e\xff", b"\xff", b"zz"];
const SHORT_VALUES: [&[u8]; 5] = [b"v0", b"v1", b"v2", b"v3", b""];

/// One step of the sequence. Lease ids in it are labels.
#[derive(Debug, Clone)]
pub enum Op {
    Range(pb::RangeRequest),
    Put(pb::PutRequest),
    DeleteRange(pb::DeleteRangeRequest),
    Txn(pb::TxnRequest),
    Compact(pb::CompactionRequest),
    LeaseGrant(pb::LeaseGrantRequest),
    /// A grant with a TTL at or below the minimum (so the minimum, 2 s with the default election
    /// timeout), revoked right after: left alone it would expire during the run, at a moment
    /// that differs between the servers.
    LeaseGrantShort(pb::LeaseGrantRequest),
    LeaseRevoke(pb::LeaseRevokeRequest),
    LeaseTimeToLive(pb::LeaseTimeToLiveRequest),
    LeaseLeases,
    LeaseKeepAlive(pb::LeaseKeepAliveRequest),
    WatchCreate {
        stream: usize,
        request: pb::WatchCreateRequest,
    },
    WatchCancel {
        stream: usize,
        watch_id: i64,
    },
    WatchProgress {
        stream: usize,
    },
}

/// What etcd's answer to an operation says, for the next choices.
#[derive(Debug, Default)]
pub struct Feedback {
    /// The store's revision after the operation.
    pub revision: i64,
    /// The operation (a grant, a compaction, a revoke) succeeded; for a short grant, its grant.
    pub succeeded: bool,
    /// The lowest start revision of a watch etcd may not have caught up yet (see
    /// `Session::unsynced_floor`): a compaction above it would race etcd's catch-up.
    pub unsynced_floor: Option<i64>,
}

pub struct Generator {
    rng: ChaCha8Rng,
    /// Watch streams per server.
    streams: usize,
    revision: i64,
    compacted: i64,
    auto_grants: i64,
    live_leases: Vec<i64>,
    gone_leases: Vec<i64>,
    unsynced_floor: Option<i64>,
    /// The transaction being drawn deletes a range to the end of the key space: its puts then
    /// take no `ignore_value` or `ignore_lease`. etcd 3.4 lets such a transaction delete a key
    /// and then put it, and a put that ignores its value or lease then finds no key and stops
    /// etcd (a panic while applying), so there is nothing to compare.
    txn_deletes_to_end: bool,
}

impl Generator {
    pub fn new(seed: u64, streams: usize) -> Generator {
        Generator {
            rng: ChaCha8Rng::seed_from_u64(seed),
            streams,
            revision: 1,
            compacted: 0,
            auto_grants: 0,
            live_leases: Vec::new(),
            gone_leases: Vec::new(),
            unsynced_floor: None,
            txn_deletes_to_end: false,
        }
    }

    /// Learns from etcd's answer to `op`.
    pub fn observe(&mut self, op: &Op, feedback: &Feedback) {
        self.revision = feedback.revision;
        self.unsynced_floor = feedback.unsynced_floor;
        if !feedback.succeeded {
            return;
        }
        match op {
            Op::Compact(request) => self.compacted = self.compacted.max(request.revision),
            Op::LeaseGrant(request) | Op::LeaseGrantShort(request) => {
                let label = if request.id == 0 {
                    self.auto_grants += 1;
                    AUTO_LABEL_BASE + self.auto_grants - 1
                } else {
                    request.id
                };
                if matches!(op, Op::LeaseGrant(_)) {
                    self.live_leases.push(label);
                } else {
                    self.gone_leases.push(label);
                }
            }
            Op::LeaseRevoke(request) => {
                self.live_leases.retain(|label| *label != request.id);
                self.gone_leases.push(request.id);
            }
            _ => {}
        }
    }

    pub fn next_op(&mut self) -> Op {
        loop {
            let op = self.draw();
            if self.size_is_clear(&op) {
                return op;
            }
        }
    }

    fn size_is_clear(&self, op: &Op) -> bool {
        let bytes = match op {
            Op::Put(request) => request.encoded_len(),
            Op::Txn(request) => request.encoded_len(),
            _ => return true,
        };
        bytes.abs_diff(MAX_REQUEST_BYTES) > SIZE_GUARD_BYTES
    }

    fn draw(&mut self) -> Op {
        const WEIGHTS: [(u32, u8); 14] = [
            (18, 0), // range
            (18, 1), // put
            (7, 2),  // delete
            (16, 3), // txn
            (2, 4),  // compact
            (4, 5),  // grant
            (1, 6),  // short grant
            (2, 7),  // revoke
            (3, 8),  // time to live
            (2, 9),  // leases
            (2, 10), // keep-alive
            (9, 11), // watch create
            (4, 12), // watch cancel
            (2, 13), // progress
        ];
        let total: u32 = WEIGHTS.iter().map(|(w, _)| w).sum();
        let mut pick = self.rng.random_range(0..total);
        let kind = WEIGHTS
            .iter()
            .find(|(weight, _)| {
                if pick < *weight {
                    true
                } else {
                    pick -= weight;
                    false
                }
            })
            .map(|(_, kind)| *kind)
            .expect("the weights cover the draw");
        match kind {
            0 => Op::Range(self.range(true)),
            1 => Op::Put(self.put(None)),
            2 => Op::DeleteRange(self.delete(None)),
            3 => {
                let mut pool = self.key_pool();
                self.txn_deletes_to_end = false;
                Op::Txn(self.txn(1, MAX_TXN_OPS, &mut pool))
            }
            4 => Op::Compact(self.compact()),
            5 => Op::LeaseGrant(self.grant(false)),
            6 => Op::LeaseGrantShort(self.grant(true)),
            7 => Op::LeaseRevoke(pb::LeaseRevokeRequest {
                id: self.lease_ref(false),
            }),
            8 => Op::LeaseTimeToLive(pb::LeaseTimeToLiveRequest {
                id: self.lease_ref(false),
                keys: self.rng.random_bool(0.6),
            }),
            9 => Op::LeaseLeases,
            10 => Op::LeaseKeepAlive(pb::LeaseKeepAliveRequest {
                id: self.lease_ref(false),
            }),
            11 => Op::WatchCreate {
                stream: self.rng.random_range(0..self.streams),
                request: self.watch_create(),
            },
            12 => Op::WatchCancel {
                stream: self.rng.random_range(0..self.streams),
                watch_id: match self.rng.random_range(0..20) {
                    0 => 100,
                    1 => -1,
                    _ => self.rng.random_range(0..=6),
                },
            },
            _ => Op::WatchProgress {
                stream: self.rng.random_range(0..self.streams),
            },
        }
    }

    // ---- keys, ranges, values ----

    fn key(&mut self) -> Bytes {
        Bytes::from_static(KEYS[self.rng.random_range(0..KEYS.len())])
    }

    fn any_key(&mut self) -> Bytes {
        if self.rng.random_bool(0.2) {
            Bytes::from_static(MISSING_KEYS[self.rng.random_range(0..MISSING_KEYS.len())])
        } else {
            self.key()
        }
    }

    /// A key and range end in every form etcd knows (one key, prefix, from a key, a span, all
    /// keys), sometimes an empty key or a span that ends before it starts.
    fn key_range(&mut self) -> (Bytes, Bytes) {
        match self.rng.random_range(0..100) {
            0..40 => (self.key(), Bytes::new()),
            40..48 => (self.any_key(), Bytes::new()),
            48..63 => {
                let prefix = PREFIXES[self.rng.random_range(0..PREFIXES.len())];
                (Bytes::from_static(prefix), prefix_end(prefix))
            }
            63..71 => (Bytes::from_static(b"\0"), Bytes::from_static(b"\0")),
            71..79 => (self.any_key(), Bytes::from_static(b"\0")),
            79..95 => (self.any_key(), self.any_key()),
            95..98 => (Bytes::new(), Bytes::new()),
            _ => (Bytes::new(), self.any_key()),
        }
    }

    fn value(&mut self) -> Bytes {
        match self.rng.random_range(0..100) {
            0..70 => Bytes::from_static(SHORT_VALUES[self.rng.random_range(0..SHORT_VALUES.len())]),
            70..88 => {
                let len = self.rng.random_range(1..40);
                (0..len)
                    .map(|_| self.rng.random_range(b'a'..=b'z'))
                    .collect::<Vec<u8>>()
                    .into()
            }
            88..97 => vec![b'm'; self.rng.random_range(1000..2500)].into(),
            _ => vec![b'L'; MAX_REQUEST_BYTES + 1000].into(),
        }
    }

    /// A revision to read at: mostly now, else in the past, at or below the compaction, in the
    /// future, or negative.
    fn read_revision(&mut self) -> i64 {
        match self.rng.random_range(0..100) {
            0..65 => 0,
            65..80 => self.rng.random_range(self.compacted.max(1)..=self.revision),
            80..85 => self.compacted,
            85..90 if self.compacted > 1 => self.rng.random_range(1..self.compacted),
            85..95 => self.revision + self.rng.random_range(1..=3),
            _ => -self.rng.random_range(1..=3),
        }
    }

    fn some_revision(&mut self) -> i64 {
        if self.rng.random_bool(0.7) {
            0
        } else {
            self.rng.random_range(0..=self.revision + 1)
        }
    }

    /// A lease label: live, revoked, unknown, or none (mostly, when `zero_allowed`; else seldom).
    fn lease_ref(&mut self, zero_allowed: bool) -> i64 {
        let roll = self.rng.random_range(0..100);
        if roll < if zero_allowed { 70 } else { 4 } {
            return 0;
        }
        if roll % 10 < 7 && !self.live_leases.is_empty() {
            return *self.live_leases.choose(&mut self.rng).expect("not empty");
        }
        if roll % 10 < 9 && !self.gone_leases.is_empty() {
            return *self.gone_leases.choose(&mut self.rng).expect("not empty");
        }
        self.rng.random_range(UNKNOWN_IDS)
    }

    /// The keys a transaction's writes are drawn from, shuffled: drawing without putting back
    /// keeps most transactions free of duplicate keys.
    fn key_pool(&mut self) -> Vec<Bytes> {
        let mut pool: Vec<Bytes> = KEYS.iter().map(|k| Bytes::from_static(k)).collect();
        pool.shuffle(&mut self.rng);
        pool
    }

    fn write_key(&mut self, pool: Option<&mut Vec<Bytes>>) -> Bytes {
        if self.rng.random_range(0..100) < 3 {
            return Bytes::new();
        }
        match pool {
            Some(pool) if self.rng.random_bool(0.9) => pool.pop().unwrap_or_else(|| self.key()),
            _ => self.key(),
        }
    }

    // ---- requests ----

    fn range(&mut self, top_level: bool) -> pb::RangeRequest {
        let (key, range_end) = self.key_range();
        let filter = |rng: &mut ChaCha8Rng, revision: i64| {
            if rng.random_bool(0.12) {
                rng.random_range(0..=revision + 1)
            } else {
                0
            }
        };
        pb::RangeRequest {
            key,
            range_end,
            limit: match self.rng.random_range(0..10) {
                0..6 => 0,
                6 => -1,
                _ => self.rng.random_range(1..=4),
            },
            revision: self.read_revision(),
            sort_order: if self.rng.random_bool(0.3) {
                self.rng.random_range(0..=2)
            } else {
                0
            },
            sort_target: if self.rng.random_bool(0.3) {
                self.rng.random_range(0..=4)
            } else {
                0
            },
            serializable: top_level && self.rng.random_bool(0.3),
            keys_only: self.rng.random_bool(0.15),
            count_only: self.rng.random_bool(0.1),
            min_mod_revision: filter(&mut self.rng, self.revision),
            max_mod_revision: filter(&mut self.rng, self.revision),
            min_create_revision: filter(&mut self.rng, self.revision),
            max_create_revision: filter(&mut self.rng, self.revision),
        }
    }

    fn put(&mut self, pool: Option<&mut Vec<Bytes>>) -> pb::PutRequest {
        let in_txn = pool.is_some();
        let key = self.write_key(pool);
        let ignoring_allowed = !(in_txn && self.txn_deletes_to_end);
        let ignore_value = self.rng.random_bool(0.08) && ignoring_allowed;
        let ignore_lease = self.rng.random_bool(0.08) && ignoring_allowed;
        pb::PutRequest {
            key,
            // Mostly no value with ignore_value (else "value is provided").
            value: if ignore_value && self.rng.random_bool(0.8) {
                Bytes::new()
            } else {
                self.value()
            },
            lease: if ignore_lease && self.rng.random_bool(0.8) {
                0
            } else {
                self.lease_ref(true)
            },
            prev_kv: self.rng.random_bool(0.35),
            ignore_value,
            ignore_lease,
        }
    }

    fn delete(&mut self, pool: Option<&mut Vec<Bytes>>) -> pb::DeleteRangeRequest {
        let in_txn = pool.is_some();
        let (key, range_end) = if self.rng.random_bool(0.6) {
            (self.write_key(pool), Bytes::new())
        } else {
            self.key_range()
        };
        if in_txn && &range_end[..] == b"\0" {
            self.txn_deletes_to_end = true;
        }
        pb::DeleteRangeRequest {
            key,
            range_end,
            prev_kv: self.rng.random_bool(0.4),
        }
    }

    /// How many entries a list of a transaction level gets: mostly a few, sometimes one more
    /// than `budget` allows.
    fn op_count(&mut self, budget: usize) -> usize {
        if self.rng.random_range(0..40) == 0 {
            budget + 1
        } else {
            self.rng.random_range(0..=3).min(budget)
        }
    }

    fn txn(&mut self, depth: usize, budget: usize, pool: &mut Vec<Bytes>) -> pb::TxnRequest {
        let compares = self.op_count(budget);
        let successes = self.op_count(budget);
        let failures = self.op_count(budget);
        // etcd's rule: a nested transaction gets what its parent level left.
        let nested_budget = budget.saturating_sub(compares.max(successes).max(failures));
        pb::TxnRequest {
            compare: (0..compares).map(|_| self.compare()).collect(),
            success: (0..successes)
                .map(|_| self.request_op(depth, nested_budget, pool))
                .collect(),
            failure: (0..failures)
                .map(|_| self.request_op(depth, nested_budget, pool))
                .collect(),
        }
    }

    fn request_op(&mut self, depth: usize, budget: usize, pool: &mut Vec<Bytes>) -> pb::RequestOp {
        let roll = self.rng.random_range(0..100);
        if roll == 0 {
            return pb::RequestOp { request: None };
        }
        let request = match roll {
            0..30 => Request::RequestRange(self.range(false)),
            30..65 => Request::RequestPut(self.put(Some(pool))),
            65..85 => Request::RequestDeleteRange(self.delete(Some(pool))),
            _ if depth < 3 => Request::RequestTxn(self.txn(depth + 1, budget, pool)),
            _ => Request::RequestRange(self.range(false)),
        };
        pb::RequestOp {
            request: Some(request),
        }
    }

    fn compare(&mut self) -> pb::Compare {
        let (key, range_end) = match self.rng.random_range(0..100) {
            0..70 => (self.any_key(), Bytes::new()),
            70..97 => self.key_range(),
            _ => (Bytes::new(), Bytes::new()),
        };
        let target = self.rng.random_range(0..=4);
        let union = match target {
            0 => TargetUnion::Version(self.rng.random_range(0..=3)),
            1 => TargetUnion::CreateRevision(self.some_revision()),
            2 => TargetUnion::ModRevision(self.some_revision()),
            3 => TargetUnion::Value(Bytes::from_static(
                SHORT_VALUES[self.rng.random_range(0..SHORT_VALUES.len())],
            )),
            _ => TargetUnion::Lease(self.lease_ref(true)),
        };
        // Sometimes the union holds another kind than the target, or nothing: etcd then
        // compares with the target's zero value.
        let target_union = match self.rng.random_range(0..100) {
            0..4 => None,
            4..8 => Some(TargetUnion::Version(1)),
            _ => Some(union),
        };
        // Lease ids the servers pick differ (only their order of grant is shared), so whether a
        // key's lease is greater or less than another id is not comparable: equal or not only.
        let result = if target == 4 {
            [0, 3][self.rng.random_range(0..2)]
        } else {
            self.rng.random_range(0..=3)
        };
        pb::Compare {
            result,
            target,
            key,
            range_end,
            target_union,
        }
    }

    fn compact(&mut self) -> pb::CompactionRequest {
        // Not above a watch etcd may still be catching up: whether it is canceled would depend
        // on when etcd's catch-up loop (every 100 ms) runs.
        let highest = self.revision.min(self.unsynced_floor.unwrap_or(i64::MAX));
        let lowest = self.compacted.max(1);
        let revision = match self.rng.random_range(0..100) {
            0..60 if lowest <= highest => self.rng.random_range(lowest..=highest),
            0..60 => self.compacted,
            60..70 => self.compacted,
            70..75 => self.compacted - 1,
            75..85 => self.revision + self.rng.random_range(1..=2),
            85..92 => 0,
            92..95 => -1,
            _ if highest >= lowest => highest,
            _ => self.compacted,
        };
        pb::CompactionRequest {
            revision,
            physical: self.rng.random_bool(0.5),
        }
    }

    fn grant(&mut self, short: bool) -> pb::LeaseGrantRequest {
        let ttl = if short {
            [0, 1, 2, -5][self.rng.random_range(0..4)]
        } else {
            match self.rng.random_range(0..100) {
                0..90 => [300, 600, 3600, 86_400][self.rng.random_range(0..4)],
                90..95 => LEASE_TTL_MAX,
                _ => LEASE_TTL_MAX + 1,
            }
        };
        let id = match self.rng.random_range(0..100) {
            0..25 => self.rng.random_range(EXPLICIT_IDS),
            25..28 => -self.rng.random_range(1..=3),
            _ => 0,
        };
        pb::LeaseGrantRequest { ttl, id }
    }

    fn watch_create(&mut self) -> pb::WatchCreateRequest {
        let (key, range_end) = self.key_range();
        let start_revision = match self.rng.random_range(0..100) {
            0..55 => 0,
            55..72 => self.rng.random_range(self.compacted.max(1)..=self.revision),
            72..77 => self.compacted,
            77..85 if self.compacted > 1 => self.rng.random_range(1..self.compacted),
            // Only once something is compacted: etcd then cancels it as compacted, while before
            // any compaction -1 is "from the next revision" only after its catch-up loop ran.
            95.. if self.compacted > 0 => -self.rng.random_range(1..=2),
            _ => self.revision + self.rng.random_range(1..=3),
        };
        let mut filters = Vec::new();
        if self.rng.random_bool(0.15) {
            filters.push(0);
        }
        if self.rng.random_bool(0.15) {
            filters.push(1);
        }
        pb::WatchCreateRequest {
            key,
            range_end,
            start_revision,
            // Never due in a run: etcd's interval is ten minutes.
            progress_notify: self.rng.random_bool(0.15),
            filters,
            prev_kv: self.rng.random_bool(0.3),
            watch_id: match self.rng.random_range(0..100) {
                0..70 => 0,
                70..97 => self.rng.random_range(1..=6),
                _ => -self.rng.random_range(1..=3),
            },
            fragment: self.rng.random_bool(0.15),
        }
    }
}

/// Every lease label in a request, for a session to map to its server's ids.
pub fn map_request_leases(op: &mut Op, map: &mut impl FnMut(i64) -> i64) {
    fn txn(request: &mut pb::TxnRequest, map: &mut impl FnMut(i64) -> i64) {
        for compare in &mut request.compare {
            if compare.target == CompareTarget::Lease as i32 {
                if let Some(TargetUnion::Lease(lease)) = &mut compare.target_union {
                    *lease = map(*lease);
                }
            }
        }
        for op in request.success.iter_mut().chain(&mut request.failure) {
            match &mut op.request {
                Some(Request::RequestPut(put)) => put.lease = map(put.lease),
                Some(Request::RequestTxn(nested)) => txn(nested, map),
                _ => {}
            }
        }
    }
    match op {
        Op::Put(put) => put.lease = map(put.lease),
        Op::Txn(request) => txn(request, map),
        Op::LeaseRevoke(request) => request.id = map(request.id),
        Op::LeaseTimeToLive(request) => request.id = map(request.id),
        Op::LeaseKeepAlive(request) => request.id = map(request.id),
        _ => {}
    }
}
