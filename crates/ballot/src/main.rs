//! `ballot`: one binary for the whole system: the server, a local dev cluster, the etcd-style
//! clients, a narrated demo, the load generator (`bench`), the Jepsen-style check of a real
//! cluster (`check`) and the deterministic simulator (`sim`).

mod cmd;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "ballot",
    version,
    about = "ballot: a distributed key-value store and coordination service whose consensus protocols ship with their proof"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a protocol under the deterministic simulator: seeded faults, virtual time, and
    /// safety, liveness and linearizability checks.
    Sim(cmd::sim::SimArgs),
    /// A three-node cluster of real processes and a short narrated workload: writes, a
    /// compare-and-swap, a watch, a lease, a SIGKILL of the leader and recovery
    /// (`--simulated`: the same story in the deterministic simulator).
    Demo(cmd::demo::DemoArgs),
    /// Start a local cluster of `ballot server` processes on free loopback ports, to break on
    /// purpose: `kill n2`, `stop`, `start`, `restart`, `status` on stdin or a control port;
    /// Ctrl-C stops it.
    Dev(cmd::dev::DevArgs),
    /// Run one ballot node (etcd's flags; each also as a BALLOT_* variable or in --config-file).
    Server(cmd::server::ServerArgs),
    /// Load generator over the etcd v3 API (put, get, txn, mixed, watch): ops/s, latency
    /// percentiles, errors; runs unchanged against ballot and etcd.
    Bench(cmd::bench::BenchArgs),
    /// A Jepsen-style test of a real local cluster: faults injected through peer proxies and
    /// signals while clients work, then a linearizability check of the recorded history.
    Check(cmd::check::CheckArgs),
    #[command(flatten)]
    Client(cmd::client::ClientCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Sim(args) => cmd::sim::run(args),
        Command::Demo(args) => cmd::demo::run(args),
        Command::Server(args) => cmd::server::run(args),
        Command::Client(command) => cmd::client::run(command),
        Command::Dev(args) => cmd::dev::run(args),
        Command::Check(args) => cmd::check::run(args),
        Command::Bench(args) => cmd::bench::run(args),
    }
}
