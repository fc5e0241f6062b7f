//! A latency histogram with log-linear buckets (HDR style): 64 equal sub-buckets per power of
//! two, so every recorded value is known to within 1/64 (1.6 %) of itself, in a fixed 18 KiB
//! whatever the number of values. Recording is an index computation and one increment: each
//! client owns one and they are merged at the end, so the hot path shares nothing.
//!
//! Values are nanoseconds. Values at or above [`TRACKABLE_NS_MAX`] (about 18 minutes) are
//! counted in the last bucket; the exact maximum is kept separately.

use std::time::Duration;

/// log2 of the number of sub-buckets per power of two.
const SUB_BUCKET_BITS: u32 = 6;
const SUB_BUCKETS: u64 = 1 << SUB_BUCKET_BITS;
/// Values are tracked up to 2^40 ns (about 18 minutes).
const TRACKABLE_BITS: u32 = 40;
pub const TRACKABLE_NS_MAX: u64 = (1 << TRACKABLE_BITS) - 1;
/// One group of sub-buckets per power of two from 2^6 to 2^39, plus the linear first group.
const BUCKETS: usize = ((TRACKABLE_BITS - SUB_BUCKET_BITS + 1) as usize) << SUB_BUCKET_BITS;

#[derive(Clone)]
pub struct LatencyHistogram {
    counts: Box<[u64]>,
    count: u64,
    sum_ns: u128,
    min_ns: u64,
    max_ns: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            count: 0,
            sum_ns: 0,
            min_ns: u64::MAX,
            max_ns: 0,
        }
    }
}

/// The bucket of a value: values below 64 each have their own; above, the power of two picks
/// the group and the next 6 bits the sub-bucket.
fn bucket_index(ns: u64) -> usize {
    let ns = ns.min(TRACKABLE_NS_MAX);
    if ns < SUB_BUCKETS {
        return ns as usize;
    }
    let exponent = 63 - ns.leading_zeros();
    let shift = exponent - SUB_BUCKET_BITS;
    let sub_bucket = (ns >> shift) - SUB_BUCKETS;
    (((shift + 1) as usize) << SUB_BUCKET_BITS) + sub_bucket as usize
}

/// The largest value that falls in bucket `index`.
fn bucket_upper_ns(index: usize) -> u64 {
    let group = (index >> SUB_BUCKET_BITS) as u32;
    let sub_bucket = (index as u64) & (SUB_BUCKETS - 1);
    if group == 0 {
        return sub_bucket;
    }
    let shift = group - 1;
    ((SUB_BUCKETS + sub_bucket) << shift) + (1 << shift) - 1
}

impl LatencyHistogram {
    pub fn record(&mut self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.counts[bucket_index(ns)] += 1;
        self.count += 1;
        self.sum_ns += u128::from(ns);
        self.min_ns = self.min_ns.min(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.count += other.count;
        self.sum_ns += other.sum_ns;
        self.min_ns = self.min_ns.min(other.min_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.max_ns)
    }

    pub fn mean(&self) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos((self.sum_ns / u128::from(self.count)) as u64)
    }

    /// The upper bound of the bucket that holds the value of rank `quantile` (0 to 1), clamped
    /// to the exact minimum; the exact minimum and maximum for the first and last ranks; zero
    /// when empty.
    pub fn quantile(&self, quantile: f64) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        let rank = ((quantile.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        if rank == 1 {
            // The smallest value is known exactly.
            return Duration::from_nanos(self.min_ns);
        }
        let mut seen = 0;
        for (index, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen == self.count {
                // The last non-empty bucket holds the maximum, which is known exactly.
                return self.max();
            }
            if seen >= rank {
                let ns = bucket_upper_ns(index).clamp(self.min_ns, self.max_ns);
                return Duration::from_nanos(ns);
            }
        }
        self.max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_each_value_falls_in_its_own() {
        let mut previous_upper = None;
        for index in 0..BUCKETS {
            let upper = bucket_upper_ns(index);
            if let Some(previous) = previous_upper {
                assert_eq!(bucket_index(previous + 1), index, "no gap before {index}");
            }
            assert_eq!(bucket_index(upper), index, "upper bound of {index}");
            previous_upper = Some(upper);
        }
        assert_eq!(previous_upper, Some(TRACKABLE_NS_MAX));
    }

    #[test]
    fn a_bucket_is_never_wider_than_a_64th_of_its_values() {
        for ns in [64u64, 100, 1_000, 123_456, 9_999_999, 1 << 35] {
            let upper = bucket_upper_ns(bucket_index(ns));
            assert!(upper >= ns);
            assert!(
                (upper - ns) as f64 <= ns as f64 / 64.0,
                "{ns} ns reported as {upper}"
            );
        }
    }

    #[test]
    fn quantiles_of_a_uniform_spread_are_within_the_bucket_error() {
        let mut histogram = LatencyHistogram::default();
        for micros in 1..=100_000u64 {
            histogram.record(Duration::from_micros(micros));
        }
        for (quantile, expected_micros) in [(0.5, 50_000.0), (0.9, 90_000.0), (0.99, 99_000.0)] {
            let got = histogram.quantile(quantile).as_nanos() as f64 / 1_000.0;
            let error = (got - expected_micros).abs() / expected_micros;
            assert!(
                error < 0.016,
                "p{quantile}: {got} µs, expected {expected_micros}"
            );
        }
        assert_eq!(histogram.max(), Duration::from_micros(100_000));
        assert_eq!(histogram.quantile(1.0), Duration::from_micros(100_000));
        assert_eq!(histogram.count(), 100_000);
        assert_eq!(histogram.mean(), Duration::from_nanos(50_000_500));
    }

    #[test]
    fn one_slow_value_in_a_thousand_shows_at_p99_9_and_not_at_p99() {
        let mut histogram = LatencyHistogram::default();
        for _ in 0..999 {
            histogram.record(Duration::from_micros(300));
        }
        histogram.record(Duration::from_millis(40));
        assert!(histogram.quantile(0.99) <= Duration::from_micros(305));
        assert!(histogram.quantile(0.999) <= Duration::from_micros(305));
        assert_eq!(histogram.quantile(0.9991), Duration::from_millis(40));
        assert_eq!(histogram.max(), Duration::from_millis(40));
    }

    #[test]
    fn merged_histograms_count_both_and_empty_ones_report_zero() {
        let empty = LatencyHistogram::default();
        assert_eq!(empty.quantile(0.5), Duration::ZERO);
        assert_eq!(empty.mean(), Duration::ZERO);
        let mut fast = LatencyHistogram::default();
        let mut slow = LatencyHistogram::default();
        fast.record(Duration::from_micros(100));
        slow.record(Duration::from_millis(10));
        slow.record(Duration::from_secs(3_600)); // beyond the tracked range: counted, max exact
        fast.merge(&slow);
        fast.merge(&empty);
        assert_eq!(fast.count(), 3);
        assert_eq!(fast.quantile(0.0), Duration::from_micros(100));
        assert_eq!(fast.max(), Duration::from_secs(3_600));
        assert_eq!(fast.quantile(1.0), Duration::from_secs(3_600));
    }
}
