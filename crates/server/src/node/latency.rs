//! Latency histograms for `/metrics`: fixed microsecond buckets, cumulative on export as the
//! Prometheus text format wants. Owned by the raft loop (no atomics); published in `NodeStatus`.

/// Upper bounds (µs) of the WAL fsync latency buckets.
pub(crate) const FSYNC_BOUNDS_MICROS: &[u64] = &[
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 1_000_000,
];
/// Upper bounds (µs) of the peer round-trip buckets: loopback answers in tens of microseconds,
/// a WAN link in tens of milliseconds.
pub(crate) const ROUND_TRIP_BOUNDS_MICROS: &[u64] = &[
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 1_000_000,
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

#[cfg(test)]
mod tests {
    use super::*;

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
