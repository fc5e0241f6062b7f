//! The end-of-run report: one [`Report`] value, printed as text or, with `--json`, as one JSON
//! object (field names are part of the interface: `scripts/bench-vs-etcd.sh` reads them).

use super::args::{Plan, Workload};
use super::cpu::CpuTime;
use super::histogram::LatencyHistogram;
use super::stats::ClientStats;
use super::watch::WatcherStats;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

#[derive(Serialize, Debug)]
pub struct Report {
    pub workload: &'static str,
    pub endpoints: Vec<String>,
    pub clients: usize,
    pub conns: usize,
    /// Groups 1 to `groups` took the clients; 0: group 0.
    pub groups: u32,
    pub threads: usize,
    /// Offered operations per second (open loop); `null`: closed loop.
    pub rate: Option<f64>,
    pub serializable: bool,
    pub key_space: u64,
    pub value_size: usize,
    /// Keys written before the run (not measured).
    pub preloaded_keys: u64,
    /// From the first operation to the end of the last one.
    pub elapsed_seconds: f64,
    /// Successful operations.
    pub ops: u64,
    pub errors: u64,
    pub ops_per_second: f64,
    pub latency_ms: Latency,
    pub errors_by_kind: BTreeMap<String, u64>,
    /// mixed: how many operations were gets and puts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mixed: Option<Mixed>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub txn: Option<Swaps>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch: Option<WatchReport>,
    pub bench_cpu: BenchCpu,
}

#[derive(Serialize, Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    pub fn of(histogram: &LatencyHistogram) -> Latency {
        let ms = |duration: Duration| duration.as_nanos() as f64 / 1e6;
        Latency {
            p50: ms(histogram.quantile(0.5)),
            p90: ms(histogram.quantile(0.9)),
            p99: ms(histogram.quantile(0.99)),
            p99_9: ms(histogram.quantile(0.999)),
            max: ms(histogram.max()),
            mean: ms(histogram.mean()),
        }
    }
}

#[derive(Serialize, Debug)]
pub struct Mixed {
    pub gets: u64,
    pub puts: u64,
}

#[derive(Serialize, Debug)]
pub struct Swaps {
    pub swapped: u64,
    pub not_swapped: u64,
}

#[derive(Serialize, Debug)]
pub struct WatchReport {
    pub watchers: usize,
    /// Successful puts times watchers.
    pub events_expected: u64,
    pub events_received: u64,
    pub delivery_latency_ms: Latency,
    pub errors_by_kind: BTreeMap<String, u64>,
}

#[derive(Serialize, Debug)]
pub struct BenchCpu {
    pub user_seconds: f64,
    pub system_seconds: f64,
    /// User plus system time per operation, successful or not (a txn operation is two
    /// requests).
    pub per_op_us: f64,
}

/// Everything measured in one run, gathered for [`Report::new`].
pub struct Measured<'a> {
    pub plan: &'a Plan,
    pub preloaded_keys: u64,
    pub elapsed: Duration,
    pub stats: &'a ClientStats,
    pub watchers: Option<&'a WatcherStats>,
    pub cpu: CpuTime,
}

impl Report {
    pub fn new(measured: Measured<'_>) -> Report {
        let Measured {
            plan,
            preloaded_keys,
            elapsed,
            stats,
            watchers,
            cpu,
        } = measured;
        let ops = stats.ops();
        let attempts = ops + stats.errors;
        let elapsed_seconds = elapsed.as_secs_f64();
        Report {
            workload: plan.workload.name(),
            endpoints: plan.endpoints.clone(),
            clients: plan.clients,
            conns: plan.conns,
            groups: plan.groups,
            threads: plan.threads,
            rate: plan.rate,
            serializable: plan.serializable,
            key_space: plan.key_space,
            value_size: plan.value_bytes,
            preloaded_keys,
            elapsed_seconds,
            ops,
            errors: stats.errors,
            ops_per_second: if elapsed_seconds > 0.0 {
                ops as f64 / elapsed_seconds
            } else {
                0.0
            },
            latency_ms: Latency::of(&stats.latency),
            errors_by_kind: stats.errors_by_kind.clone(),
            mixed: (plan.workload == Workload::Mixed).then_some(Mixed {
                gets: stats.gets,
                puts: stats.puts,
            }),
            txn: (plan.workload == Workload::Txn).then_some(Swaps {
                swapped: stats.swapped,
                not_swapped: stats.not_swapped,
            }),
            watch: watchers.map(|watchers| WatchReport {
                watchers: plan.watchers,
                events_expected: ops * plan.watchers as u64,
                events_received: watchers.events,
                delivery_latency_ms: Latency::of(&watchers.delivery),
                errors_by_kind: watchers.errors_by_kind.clone(),
            }),
            bench_cpu: BenchCpu {
                user_seconds: cpu.user.as_secs_f64(),
                system_seconds: cpu.system.as_secs_f64(),
                per_op_us: if attempts == 0 {
                    0.0
                } else {
                    cpu.total().as_secs_f64() * 1e6 / attempts as f64
                },
            },
        }
    }

    pub fn json(&self) -> String {
        serde_json::to_string(self).expect("a report serializes")
    }

    /// The human-readable report.
    pub fn text(&self) -> String {
        let mut text = String::new();
        let load = match self.rate {
            Some(rate) => format!("open loop at {rate} ops/s offered"),
            None => "closed loop".to_string(),
        };
        let reads = if self.serializable {
            ", serializable reads"
        } else {
            ""
        };
        let groups = match self.groups {
            0 => String::new(),
            groups => format!(", {groups} groups"),
        };
        let _ = writeln!(
            text,
            "{}: {} ops in {:.2} s = {:.0} ops/s ({} clients, {} conns{groups}, {load}{reads}; {}-byte values, {} keys)",
            self.workload,
            self.ops,
            self.elapsed_seconds,
            self.ops_per_second,
            self.clients,
            self.conns,
            self.value_size,
            self.key_space
        );
        let _ = writeln!(text, "latency: {}", latency_line(&self.latency_ms));
        if let Some(mixed) = &self.mixed {
            let _ = writeln!(text, "mixed: {} gets, {} puts", mixed.gets, mixed.puts);
        }
        if let Some(swaps) = &self.txn {
            let _ = writeln!(
                text,
                "txn: {} swapped, {} not swapped (another client changed the key in between)",
                swaps.swapped, swaps.not_swapped
            );
        }
        if let Some(watch) = &self.watch {
            let _ = writeln!(
                text,
                "watch: {} watchers received {} of {} events; delivery latency: {}",
                watch.watchers,
                watch.events_received,
                watch.events_expected,
                latency_line(&watch.delivery_latency_ms)
            );
            write_errors(&mut text, "watch errors", &watch.errors_by_kind);
        }
        if self.errors == 0 {
            let _ = writeln!(text, "errors: none");
        } else {
            write_errors(
                &mut text,
                &format!("errors: {}", self.errors),
                &self.errors_by_kind,
            );
        }
        if self.preloaded_keys > 0 {
            let _ = writeln!(
                text,
                "preloaded {} keys before the run (not measured)",
                self.preloaded_keys
            );
        }
        let _ = writeln!(
            text,
            "bench CPU: {:.2} s user + {:.2} s system = {:.1} µs per operation",
            self.bench_cpu.user_seconds, self.bench_cpu.system_seconds, self.bench_cpu.per_op_us
        );
        text
    }
}

fn latency_line(latency: &Latency) -> String {
    format!(
        "p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms  (mean {:.3} ms)",
        latency.p50, latency.p90, latency.p99, latency.p99_9, latency.max, latency.mean
    )
}

fn write_errors(text: &mut String, title: &str, errors: &BTreeMap<String, u64>) {
    if errors.is_empty() {
        return;
    }
    let _ = writeln!(text, "{title}");
    let mut by_count: Vec<_> = errors.iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (kind, count) in by_count {
        let _ = writeln!(text, "  {count:>8}  {kind}");
    }
}
