//! `ballot bench`: a load generator over the etcd v3 gRPC API, so the same command measures
//! ballot and etcd. Workloads put, get, txn (compare-and-swap), mixed and watch; closed loop,
//! or open loop at a fixed offered rate; a progress line while it runs; at the end ops/s,
//! latency percentiles, errors by kind and its own CPU time per operation.
//!
//! It shares the machine with the servers it measures, so it must stay cheap: by default one
//! current-thread runtime (`--threads N` > 1: a multi-thread runtime with N workers; on the
//! 2-core machine 2 threads gave no more throughput and cost more CPU per operation), one
//! histogram per client merged at the end, shared `Bytes` values. Measured there, release
//! build: about 10 to 25 µs of CPU per operation at 16 to 256 clients, 30 to 100 µs with one
//! client (each request then costs a sleep and a wake-up); most of it is tonic / h2 / syscalls.
//!
//! - [`args`]: flags and their validation into a plan.
//! - [`keys`]: keys, values, per-client random numbers.
//! - [`ops`]: one operation of each workload as etcd requests.
//! - [`grpc`]: the unary gRPC client the operations go through (h2, no tonic channel).
//! - [`driver`]: connections, client loops (closed / open), stop, preload.
//! - [`watch`]: the watchers of the watch workload.
//! - [`histogram`], [`stats`], [`cpu`]: what is counted.
//! - [`progress`], [`report`]: what is printed.
//!
//! Exit status: 0 when at least one operation succeeded, 1 when none did or no endpoint could
//! be reached, 2 on bad flags.

pub mod args;
pub mod cpu;
pub mod driver;
pub mod grpc;
pub mod histogram;
pub mod keys;
pub mod ops;
pub mod progress;
pub mod report;
pub mod stats;
pub mod watch;

pub use args::BenchArgs;

use args::{Plan, Workload};
use cpu::CpuTime;
use driver::Run;
use ops::Operations;
use progress::Progress;
use report::{Measured, Report};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tonic::transport::Channel;
use watch::WatcherStats;

pub fn run(args: BenchArgs) -> ExitCode {
    let plan = match Plan::from_args(&args) {
        Ok(plan) => plan,
        Err(message) => {
            eprintln!("Error: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = if plan.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(plan.threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("Error: cannot start the tokio runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(measure(&plan)) {
        Ok(report) => {
            if plan.json {
                println!("{}", report.json());
            } else {
                print!("{}", report.text());
            }
            if report.ops == 0 {
                eprintln!("Error: no operation succeeded");
                return ExitCode::from(1);
            }
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("Error: {message}");
            ExitCode::from(1)
        }
    }
}

/// Connects, preloads, runs the clients (and watchers) and gathers the report.
async fn measure(plan: &Plan) -> Result<Report, String> {
    let connections = driver::connect(plan).await?;
    let operations = Arc::new(Operations::new(plan, Instant::now()));
    let preloaded_keys = if plan.preload {
        driver::preload(plan, &operations, &connections).await?
    } else {
        0
    };
    let watchers = if plan.workload == Workload::Watch {
        let channels = driver::connect_channels(plan).await?;
        Some(open_watchers(plan, &operations, &channels).await?)
    } else {
        None
    };

    let cpu_before = CpuTime::of_this_process();
    let start = Instant::now();
    let run = Arc::new(Run::new(plan, Arc::clone(&operations), start));
    let interrupt = tokio::spawn({
        let run = Arc::clone(&run);
        async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                run.stop.store(true, Ordering::Relaxed);
            }
        }
    });
    let progress = Progress::start(
        plan.workload.name().to_string(),
        Arc::clone(&run.live),
        start,
    );
    let stats = driver::run_clients(plan, &run, &connections).await;
    let elapsed = start.elapsed();
    progress.finish();
    let watcher_stats = match watchers {
        Some((tasks, expected)) => {
            let _ = expected.send(Some(stats.ops()));
            Some(join_watchers(tasks).await)
        }
        None => None,
    };
    interrupt.abort();
    let cpu = CpuTime::of_this_process().since(cpu_before);
    Ok(Report::new(Measured {
        plan,
        preloaded_keys,
        elapsed,
        stats: &stats,
        watchers: watcher_stats.as_ref(),
        cpu,
    }))
}

type Watchers = (
    Vec<tokio::task::JoinHandle<WatcherStats>>,
    tokio::sync::watch::Sender<Option<u64>>,
);

/// Opens every watch (each confirmed created) and starts following them.
async fn open_watchers(
    plan: &Plan,
    operations: &Arc<Operations>,
    channels: &[Channel],
) -> Result<Watchers, String> {
    let (expected, receiver) = tokio::sync::watch::channel(None);
    let mut tasks = Vec::with_capacity(plan.watchers);
    for index in 0..plan.watchers {
        let channel = channels[index % channels.len()].clone();
        let open = watch::open(channel, &operations.keys, plan.command_timeout).await?;
        tasks.push(tokio::spawn(watch::follow(
            open,
            operations.epoch,
            receiver.clone(),
        )));
    }
    Ok((tasks, expected))
}

async fn join_watchers(tasks: Vec<tokio::task::JoinHandle<WatcherStats>>) -> WatcherStats {
    let mut merged = WatcherStats::default();
    for task in tasks {
        merged.merge(&task.await.expect("a watcher does not panic"));
    }
    merged
}
