//! `ballot dev`: a local cluster of real `ballot server` processes (see `ballot::dev_cluster`)
//! for people who break things on purpose. Prints the endpoints and the etcdctl lines to use;
//! takes commands (`kill n2`, `stop`, `start`, `restart`, `status`, `help`, `quit`) on its
//! standard input and on a loopback control port; reports a node that dies while the others
//! keep serving, and with `--restart-dead` starts it again. Ctrl-C, SIGTERM or `quit` stop every
//! node (SIGTERM to each, so each syncs and exits cleanly); the servers also stop by themselves
//! if `ballot dev` is killed.
//!
//! Exit status: 0 after a clean stop; 1 when the cluster cannot start (a leftover server from
//! an earlier run is named), when a node exited with an error during the session, or when a
//! node did not stop cleanly.

mod command;
mod input;
mod supervisor;

use ballot::dev_cluster::RunningCluster;
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Number of nodes (1 to 7)
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Data directory: one subdirectory per node, reused by the next `ballot dev`
    #[arg(long, default_value = "ballot-data")]
    pub data_dir: PathBuf,
    /// Delete the data directory first and start an empty cluster
    #[arg(long)]
    pub fresh: bool,
    /// Start a node that dies (or is killed with `kill`) again by itself, after 1 s, doubling
    /// up to 30 s while it keeps dying within a minute of its start. `stop` keeps a node down.
    #[arg(long)]
    pub restart_dead: bool,
    /// Loopback port that takes the same commands as standard input, one per line (each
    /// answer ends with an empty line); 0 picks a free port, printed at start
    #[arg(long, default_value_t = 0)]
    pub control_port: u16,
}

pub fn run(args: DevArgs) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(error) => {
            eprintln!("error: cannot find the ballot binary: {error}");
            return ExitCode::from(1);
        }
    };
    // Started in the background of a shell (`ballot dev &`), a read of the terminal would stop
    // the whole process with SIGTTIN; ignored, the read fails instead and stdin counts as closed.
    // SAFETY: setting a signal's disposition to SIG_IGN runs no code of ours in a handler.
    unsafe {
        libc::signal(libc::SIGTTIN, libc::SIG_IGN);
    }
    let (events, received) = std::sync::mpsc::channel();
    // Bound before any server starts, so that a taken port costs nothing.
    let control = match input::listen_control(args.control_port, events.clone()) {
        Ok(address) => address,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(1);
        }
    };
    // Before the cluster starts: a Ctrl-C during a slow start is then answered once it is up
    // (a second one exits at once), and SIGTERM never kills ballot dev without its goodbye.
    input::watch_signals(events.clone());
    let cluster = match RunningCluster::start(&exe, args.nodes, &args.data_dir, args.fresh) {
        Ok(cluster) => cluster,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(1);
        }
    };
    print_endpoints(&cluster, control);
    input::read_stdin(events);
    supervisor::Supervisor::new(cluster, args.restart_dead, control).run(received)
}

fn print_endpoints(cluster: &RunningCluster, control: SocketAddr) {
    let dir = cluster.data_dir.display();
    println!(
        "ballot dev: {} nodes up, data in {dir}",
        cluster.plan.nodes.len()
    );
    for node in &cluster.plan.nodes {
        let pid = cluster.pid(&node.name).unwrap_or_default();
        println!(
            "  {:<3} pid {pid:<7} client http://127.0.0.1:{:<5}  peer http://127.0.0.1:{:<5}  metrics http://127.0.0.1:{}/metrics  log {dir}/{}/server.log",
            node.name, node.client_port, node.peer_port, node.metrics_port, node.name
        );
    }
    let endpoints = cluster.plan.client_urls().join(",");
    println!("\nTry it with etcdctl (Debian package etcd-client):");
    println!("  etcdctl --endpoints={endpoints} put greeting hello");
    println!("  etcdctl --endpoints={endpoints} get greeting");
    println!("  etcdctl --endpoints={endpoints} endpoint status --cluster -w table");
    println!("or with ballot's own client:");
    println!(
        "  ballot get greeting --endpoints={}",
        cluster.plan.client_urls().join(",")
    );
    println!(
        "\nBreak it: type `kill n2`, `stop n2`, `start n2`, `restart n2`, `status` or `help` here, or"
    );
    println!(
        "send them to the control port {control}: echo status | nc -N {} {}",
        control.ip(),
        control.port()
    );
    println!("Ctrl-C stops the cluster; `ballot dev` again restarts it with the same data.");
}
