//! What a run counts. Each client keeps its own [`ClientStats`] (no sharing on the hot path)
//! and they are merged when the run ends; [`Live`] holds the few shared counters the progress
//! line reads once a second.

use super::histogram::LatencyHistogram;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Distinct error kinds kept; any further kind is counted under [`OTHER_ERRORS`].
const ERROR_KINDS_MAX: usize = 32;
const OTHER_ERRORS: &str = "other errors (more than 32 kinds)";
/// Longest error message kept in a kind.
const ERROR_MESSAGE_CHARS_MAX: usize = 120;

/// What one successful operation was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Put,
    Get,
    /// A compare-and-swap: whether the compare held and the put was done.
    Swap {
        swapped: bool,
    },
    /// A lock taken and released.
    Lock,
}

#[derive(Default, Clone)]
pub struct ClientStats {
    pub latency: LatencyHistogram,
    pub puts: u64,
    pub gets: u64,
    pub swapped: u64,
    pub not_swapped: u64,
    pub locks: u64,
    pub errors: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
}

impl ClientStats {
    pub fn succeeded(&mut self, latency: Duration, outcome: Outcome) {
        self.latency.record(latency);
        match outcome {
            Outcome::Put => self.puts += 1,
            Outcome::Get => self.gets += 1,
            Outcome::Swap { swapped: true } => self.swapped += 1,
            Outcome::Swap { swapped: false } => self.not_swapped += 1,
            Outcome::Lock => self.locks += 1,
        }
    }

    pub fn failed(&mut self, kind: String) {
        self.add_errors(kind, 1);
    }

    fn add_errors(&mut self, kind: String, count: u64) {
        self.errors += count;
        let kind = if self.errors_by_kind.len() >= ERROR_KINDS_MAX
            && !self.errors_by_kind.contains_key(&kind)
        {
            OTHER_ERRORS.to_string()
        } else {
            kind
        };
        *self.errors_by_kind.entry(kind).or_default() += count;
    }

    pub fn ops(&self) -> u64 {
        self.latency.count()
    }

    pub fn merge(&mut self, other: &ClientStats) {
        self.latency.merge(&other.latency);
        self.puts += other.puts;
        self.gets += other.gets;
        self.swapped += other.swapped;
        self.not_swapped += other.not_swapped;
        self.locks += other.locks;
        for (kind, count) in &other.errors_by_kind {
            self.add_errors(kind.clone(), *count);
        }
    }
}

/// The kind of a failed request: its gRPC code and the server's message (etcd's messages are
/// stable texts like `etcdserver: request timed out`), or the cause of a broken connection.
pub fn error_kind(status: &tonic::Status) -> String {
    let mut message = status.message().to_string();
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        message = cause.to_string();
        source = cause.source();
    }
    let message: String = message.chars().take(ERROR_MESSAGE_CHARS_MAX).collect();
    if message.is_empty() {
        format!("{:?}", status.code())
    } else {
        format!("{:?}: {message}", status.code())
    }
}

/// The kind of a request that was not answered within --command-timeout.
pub fn timeout_kind(limit: Duration) -> String {
    format!("DeadlineExceeded: no answer within --command-timeout {limit:?}")
}

/// Counters shared by every client, read by the progress line.
#[derive(Default)]
pub struct Live {
    pub ops: AtomicU64,
    pub errors: AtomicU64,
    pub latency_ns: AtomicU64,
}

impl Live {
    pub fn succeeded(&self, latency: Duration) {
        self.ops.fetch_add(1, Ordering::Relaxed);
        self.latency_ns
            .fetch_add(latency.as_nanos() as u64, Ordering::Relaxed);
    }

    pub fn failed(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> LiveSnapshot {
        LiveSnapshot {
            ops: self.ops.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            latency_ns: self.latency_ns.load(Ordering::Relaxed),
        }
    }
}

#[derive(Clone, Copy, Default, Debug)]
pub struct LiveSnapshot {
    pub ops: u64,
    pub errors: u64,
    pub latency_ns: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_are_bounded_and_merge_by_name() {
        let mut stats = ClientStats::default();
        for i in 0..40 {
            stats.failed(format!("kind {i}"));
        }
        stats.failed("kind 3".into());
        assert_eq!(stats.errors, 41);
        assert_eq!(stats.errors_by_kind.len(), ERROR_KINDS_MAX + 1);
        assert_eq!(stats.errors_by_kind["kind 3"], 2);
        assert_eq!(stats.errors_by_kind[OTHER_ERRORS], 8);
        let mut merged = ClientStats::default();
        merged.merge(&stats);
        merged.merge(&stats);
        assert_eq!(merged.errors, 82);
        assert_eq!(merged.errors_by_kind["kind 3"], 4);
    }

    #[test]
    fn an_error_kind_names_the_code_and_the_message() {
        let status = tonic::Status::unavailable("etcdserver: no leader");
        assert_eq!(error_kind(&status), "Unavailable: etcdserver: no leader");
        assert_eq!(error_kind(&tonic::Status::internal("")), "Internal");
    }
}
