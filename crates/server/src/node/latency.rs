//! Latency histograms for `/metrics`: fixed microsecond buckets, cumulative on export as the
//! Prometheus text format wants. Owned by the replica loop (no atomics); published in `NodeStatus`.

/// Upper bounds (µs) of etcd's disk latency buckets (`etcd_disk_wal_fsync_duration_seconds`,
/// `etcd_disk_backend_commit_duration_seconds`): 1 ms doubling 14 times.
pub const ETCD_DISK_BOUNDS_MICROS: &[u64] = &[
    1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000, 256_000, 512_000, 1_024_000,
    2_048_000, 4_096_000, 8_192_000,
];
/// Upper bounds (µs) of etcd's peer round-trip buckets
/// (`etcd_network_peer_round_trip_time_seconds`): 100 µs doubling 16 times.
pub const ETCD_ROUND_TRIP_BOUNDS_MICROS: &[u64] = &[
    100, 200, 400, 800, 1_600, 3_200, 6_400, 12_800, 25_600, 51_200, 102_400, 204_800, 409_600,
    819_200, 1_638_400, 3_276_800,
];
/// Upper bounds (µs) of the disk latency buckets: finer ones below a millisecond (a fast disk
/// syncs in tens of microseconds), then etcd's, so etcd's series are exact subsets of ours.
pub(crate) const FSYNC_BOUNDS_MICROS: &[u64] = &[
    50, 100, 250, 500, 1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000, 256_000,
    512_000, 1_024_000, 2_048_000, 4_096_000, 8_192_000,
];
/// Upper bounds (µs) of the peer round-trip buckets: loopback answers in tens of microseconds,
/// a WAN link in tens of milliseconds; etcd's bounds are among them.
pub(crate) const ROUND_TRIP_BOUNDS_MICROS: &[u64] = &[
    25, 50, 100, 200, 400, 800, 1_600, 3_200, 6_400, 12_800, 25_600, 51_200, 102_400, 204_800,
    409_600, 819_200, 1_638_400, 3_276_800,
];

#[derive(Debug, Clone)]
pub(crate) struct LatencyHistogram {
    bounds_micros: &'static [u64],
    /// One count per bound plus the overflow bucket.
    counts: Vec<u64>,
    sum_micros: u64,
}

impl LatencyHistogram {
    pub(crate) fn new(bounds_micros: &'static [u64]) -> Self {
        debug_assert!(
            bounds_micros.windows(2).all(|w| w[0] < w[1]),
            "bucket bounds must increase"
        );
        Self {
            bounds_micros,
            counts: vec![0; bounds_micros.len() + 1],
            sum_micros: 0,
        }
    }

    pub(crate) fn observe(&mut self, micros: u64) {
        let bucket = self
            .bounds_micros
            .iter()
            .position(|&bound| micros <= bound)
            .unwrap_or(self.bounds_micros.len());
        self.counts[bucket] += 1;
        self.sum_micros += micros;
    }

    pub(crate) fn snapshot(&self) -> LatencySnapshot {
        let mut cumulative = 0;
        let buckets = self
            .bounds_micros
            .iter()
            .chain(std::iter::once(&u64::MAX))
            .zip(&self.counts)
            .map(|(&bound, &count)| {
                cumulative += count;
                (bound, cumulative)
            })
            .collect();
        LatencySnapshot {
            buckets,
            sum_micros: self.sum_micros,
            count: cumulative,
        }
    }
}

/// A histogram as exported: cumulative counts per upper bound (µs; `u64::MAX` is +Inf).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencySnapshot {
    pub buckets: Vec<(u64, u64)>,
    pub sum_micros: u64,
    pub count: u64,
}

impl LatencySnapshot {
    /// The same histogram with only the buckets at `bounds` (and +Inf). Cumulative counts make
    /// this exact for every bound the histogram has; `bounds` must be among its own.
    pub fn restricted_to(&self, bounds: &[u64]) -> LatencySnapshot {
        let buckets: Vec<(u64, u64)> = self
            .buckets
            .iter()
            .copied()
            .filter(|(bound, _)| *bound == u64::MAX || bounds.contains(bound))
            .collect();
        debug_assert_eq!(
            buckets.len(),
            bounds.len() + 1,
            "every bound asked for is one of the histogram's"
        );
        LatencySnapshot {
            buckets,
            sum_micros: self.sum_micros,
            count: self.count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcds_buckets_are_among_ours_and_restricting_keeps_their_counts() {
        for bound in ETCD_DISK_BOUNDS_MICROS {
            assert!(FSYNC_BOUNDS_MICROS.contains(bound), "{bound}");
        }
        for bound in ETCD_ROUND_TRIP_BOUNDS_MICROS {
            assert!(ROUND_TRIP_BOUNDS_MICROS.contains(bound), "{bound}");
        }
        let mut histogram = LatencyHistogram::new(FSYNC_BOUNDS_MICROS);
        for micros in [40, 900, 1_500, 3_000, 20_000_000] {
            histogram.observe(micros);
        }
        let etcd = histogram.snapshot().restricted_to(ETCD_DISK_BOUNDS_MICROS);
        assert_eq!(etcd.buckets.len(), ETCD_DISK_BOUNDS_MICROS.len() + 1);
        assert_eq!(
            etcd.buckets[0],
            (1_000, 2),
            "40 µs and 900 µs are within 1 ms"
        );
        assert_eq!(etcd.buckets[1], (2_000, 3));
        assert_eq!(etcd.buckets[2], (4_000, 4));
        assert_eq!(*etcd.buckets.last().unwrap(), (u64::MAX, 5));
    }

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let mut histogram = LatencyHistogram::new(&[10, 100]);
        for micros in [5, 10, 11, 100, 5_000] {
            histogram.observe(micros);
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.buckets, vec![(10, 2), (100, 4), (u64::MAX, 5)]);
        assert_eq!((snapshot.count, snapshot.sum_micros), (5, 5_126));
    }
}
