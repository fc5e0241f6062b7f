//! The flags of `ballot bench` and their validation into a [`Plan`]: every combination that
//! makes no sense is refused here, with the flag and the value named, before anything is sent.

use crate::cmd::client::connect::{normalize_endpoint, parse_duration};
use clap::{Args, ValueEnum};
use std::time::Duration;

/// Most concurrent clients (each is a task with its own 18 KiB histogram).
pub const CLIENTS_MAX: usize = 100_000;
const GROUPS_MAX: usize = 4096;
/// Most gRPC connections.
pub const CONNS_MAX: usize = 10_000;
/// Most watch streams in the `watch` workload.
pub const WATCHERS_MAX: usize = 100_000;
/// Largest value: etcd refuses requests over 1.5 MiB by default.
pub const VALUE_BYTES_MAX: usize = 1024 * 1024;
/// Keys are the prefix and a 10-digit index, so the key space has at most 10^10 keys.
pub const KEY_SPACE_MAX: u64 = 10_000_000_000;
/// Most runtime worker threads.
pub const THREADS_MAX: usize = 64;
/// The watch workload puts the send time in the first 8 bytes of each value.
pub const WATCH_VALUE_BYTES_MIN: usize = 8;
/// Run time when neither --duration nor --total is given.
pub const DURATION_DEFAULT: Duration = Duration::from_secs(10);
/// Read share of the `mixed` workload when --read-ratio is not given.
pub const READ_RATIO_DEFAULT: f64 = 0.9;
/// Watch streams of the `watch` workload when --watchers is not given.
pub const WATCHERS_DEFAULT: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Put a key of the key space (random, or in order with --sequential-keys).
    Put,
    /// Get one key of the key space (linearizable; --serializable for the local replica).
    Get,
    /// Compare-and-swap: get a key, then a txn that puts it only if its mod_revision is
    /// unchanged. One operation is both requests.
    Txn,
    /// Gets and puts, a --read-ratio share of them gets.
    Mixed,
    /// --watchers watch streams on the key space while the clients put; measures put-to-event
    /// delivery latency over every watcher.
    Watch,
    /// Take and release one lock named by --key-prefix (the Lock service's Lock, then Unlock),
    /// every client contending for it under a lease of its own. One operation is both requests.
    Lock,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Get => "get",
            Workload::Txn => "txn",
            Workload::Mixed => "mixed",
            Workload::Watch => "watch",
            Workload::Lock => "lock",
        }
    }

    /// Whether the workload reads keys that should exist (so the key space is written first).
    pub fn reads(self) -> bool {
        matches!(self, Workload::Get | Workload::Txn | Workload::Mixed)
    }
}

#[derive(Args, Debug)]
#[command(
    about = "Load generator over the etcd v3 gRPC API: runs unchanged against ballot and etcd",
    after_help = "Closed loop by default: each client sends its next request when the previous \
    one answers. With --rate the load is open loop: operation n is due at start + n / rate and a \
    free client takes the next due operation. Latency is then measured from the time the \
    operation was due whenever every client was still busy at that time (so a slow server is \
    not hidden by the generator waiting for it: no coordinated omission), and from the actual \
    send otherwise (so the 1 ms timer granularity is not charged to the server). At most \
    --clients operations are in flight.\n\n\
    get, txn and mixed first write every key of --key-space unless a count shows all are there \
    (not measured; --no-preload skips this).\n\n\
    Output: a progress line on stderr (rewritten each second on a terminal, otherwise one line \
    each 10 s), then ops/s, latency p50 / p90 / p99 / p99.9 / max, errors by kind and the \
    bench's own CPU time per operation; with --json one JSON object on stdout instead.\n\n\
    Examples:\n  \
    ballot bench put --endpoints 127.0.0.1:2379 --clients 64 --conns 4 --duration 10s\n  \
    ballot bench get --serializable --clients 16 --total 100000\n  \
    ballot bench put --clients 16 --rate 2000 --duration 30s --json\n  \
    ballot bench mixed --read-ratio 0.95 --clients 32\n  \
    ballot bench watch --watchers 100 --clients 4 --rate 500 --duration 10s"
)]
pub struct BenchArgs {
    /// What each operation does.
    #[arg(value_enum)]
    pub workload: Workload,
    /// gRPC endpoints, comma separated (host:port or http://host:port); connection i goes to
    /// endpoint i modulo their number.
    #[arg(
        long,
        env = "BALLOT_ENDPOINTS",
        default_value = "127.0.0.1:2379",
        value_delimiter = ','
    )]
    pub endpoints: Vec<String>,
    /// Concurrent clients (requests in flight at most).
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// gRPC connections (HTTP/2), shared round-robin by the clients and watchers.
    #[arg(long, default_value_t = 1)]
    pub conns: usize,
    /// Run for this long (e.g. 10s, 1m); the default when --total is not given is 10s.
    #[arg(long, value_parser = parse_duration, conflicts_with = "total")]
    pub duration: Option<Duration>,
    /// Run exactly this many operations (successful or not), then stop.
    #[arg(long)]
    pub total: Option<u64>,
    /// Number of distinct keys: <key-prefix> followed by a 10-digit index below this.
    #[arg(long, default_value_t = 10_000)]
    pub key_space: u64,
    /// Keys start with this (for `lock`, the lock's name).
    #[arg(long, default_value = "bench/")]
    pub key_prefix: String,
    /// Operation n uses key n modulo --key-space instead of a random key.
    #[arg(long)]
    pub sequential_keys: bool,
    /// Bytes per value written.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Offered load in operations per second over all clients (open loop); none: closed loop.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Reads served by the replica asked, without a quorum round (etcd's Range
    /// `serializable`); the default is linearizable.
    #[arg(long)]
    pub serializable: bool,
    /// mixed: the share of operations that are gets, 0 to 1 [default: 0.9].
    #[arg(long)]
    pub read_ratio: Option<f64>,
    /// watch: number of watch streams on the key space [default: 16].
    #[arg(long)]
    pub watchers: Option<usize>,
    /// Do not write the key space before get, txn or mixed (by default it is written unless
    /// every key is there).
    #[arg(long)]
    pub no_preload: bool,
    /// Worker threads of the bench's runtime (it shares the machine with the servers).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Spread the clients over groups 1 to N (created beforehand: `ballot group create --count
    /// N`), client i on group 1 + i mod N; each request names its group in `ballot-group`
    /// metadata. 0: group 0, the keyspace etcd clients see.
    #[arg(long, default_value_t = 0)]
    pub groups: u32,
    /// Time allowed to connect to an endpoint.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub dial_timeout: Duration,
    /// Time allowed for one request; a request without an answer by then counts as an error.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub command_timeout: Duration,
    /// Print one JSON object with every figure on stdout at the end instead of the text report.
    #[arg(long)]
    pub json: bool,
}

/// When the run stops.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stop {
    After(Duration),
    Total(u64),
}

/// Validated settings of one run.
#[derive(Clone, Debug)]
pub struct Plan {
    pub workload: Workload,
    pub endpoints: Vec<String>,
    pub clients: usize,
    pub conns: usize,
    pub stop: Stop,
    pub key_space: u64,
    pub key_prefix: Vec<u8>,
    pub sequential_keys: bool,
    pub value_bytes: usize,
    /// Operations per second over all clients; `None`: closed loop.
    pub rate: Option<f64>,
    pub serializable: bool,
    pub read_ratio: f64,
    pub watchers: usize,
    pub preload: bool,
    /// Groups 1 to `groups` take the clients; 0: group 0 alone.
    pub groups: u32,
    pub threads: usize,
    pub dial_timeout: Duration,
    pub command_timeout: Duration,
    pub json: bool,
}

impl Plan {
    pub fn from_args(args: &BenchArgs) -> Result<Plan, String> {
        let workload = args.workload;
        let endpoints: Vec<String> = args
            .endpoints
            .iter()
            .filter(|endpoint| !endpoint.trim().is_empty())
            .map(|endpoint| normalize_endpoint(endpoint))
            .collect();
        if endpoints.is_empty() {
            return Err("--endpoints is empty: give at least one, e.g. 127.0.0.1:2379".into());
        }
        within("--clients", args.clients, 1, CLIENTS_MAX)?;
        within("--conns", args.conns, 1, CONNS_MAX)?;
        within("--threads", args.threads, 1, THREADS_MAX)?;
        let stop = match (args.duration, args.total) {
            (Some(duration), _) if duration.is_zero() => {
                return Err("--duration must be longer than zero".into())
            }
            (Some(duration), _) => Stop::After(duration),
            (None, Some(0)) => return Err("--total must be at least 1".into()),
            (None, Some(total)) => Stop::Total(total),
            (None, None) => Stop::After(DURATION_DEFAULT),
        };
        if args.key_space == 0 || args.key_space > KEY_SPACE_MAX {
            return Err(format!(
                "--key-space must be between 1 and {KEY_SPACE_MAX}, got {}",
                args.key_space
            ));
        }
        if args.value_size > VALUE_BYTES_MAX {
            return Err(format!(
                "--value-size must be at most {VALUE_BYTES_MAX} bytes, got {}",
                args.value_size
            ));
        }
        if workload == Workload::Watch && args.value_size < WATCH_VALUE_BYTES_MIN {
            return Err(format!(
                "--value-size must be at least {WATCH_VALUE_BYTES_MIN} for watch (each value \
                 carries its send time), got {}",
                args.value_size
            ));
        }
        if let Some(rate) = args.rate {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(format!(
                    "--rate must be a positive number of operations per second, got {rate}"
                ));
            }
        }
        if args.serializable && !workload.reads() {
            return Err(format!(
                "--serializable applies to the reads of get, txn and mixed, not to {}",
                workload.name()
            ));
        }
        let read_ratio = match (workload, args.read_ratio) {
            (Workload::Mixed, None) => READ_RATIO_DEFAULT,
            (Workload::Mixed, Some(ratio)) if (0.0..=1.0).contains(&ratio) => ratio,
            (Workload::Mixed, Some(ratio)) => {
                return Err(format!("--read-ratio must be between 0 and 1, got {ratio}"))
            }
            (_, None) => 0.0,
            (other, Some(_)) => {
                return Err(format!(
                    "--read-ratio applies to mixed, not to {}",
                    other.name()
                ))
            }
        };
        let watchers = match (workload, args.watchers) {
            (Workload::Watch, None) => WATCHERS_DEFAULT,
            (Workload::Watch, Some(watchers)) => {
                within("--watchers", watchers, 1, WATCHERS_MAX)?;
                watchers
            }
            (_, None) => 0,
            (other, Some(_)) => {
                return Err(format!(
                    "--watchers applies to watch, not to {}",
                    other.name()
                ))
            }
        };
        within("--groups", args.groups as usize, 0, GROUPS_MAX)?;
        if args.groups > 0 && matches!(workload, Workload::Watch | Workload::Lock) {
            return Err(
                "--groups applies to put, get, txn and mixed: watches and locks are group 0's"
                    .into(),
            );
        }
        if args.dial_timeout.is_zero() || args.command_timeout.is_zero() {
            return Err("--dial-timeout and --command-timeout must be longer than zero".into());
        }
        Ok(Plan {
            workload,
            endpoints,
            clients: args.clients,
            conns: args.conns,
            stop,
            key_space: args.key_space,
            key_prefix: args.key_prefix.as_bytes().to_vec(),
            sequential_keys: args.sequential_keys,
            value_bytes: args.value_size,
            rate: args.rate,
            serializable: args.serializable,
            read_ratio,
            watchers,
            preload: workload.reads() && !args.no_preload,
            groups: args.groups,
            threads: args.threads,
            dial_timeout: args.dial_timeout,
            command_timeout: args.command_timeout,
            json: args.json,
        })
    }
}

fn within(flag: &str, value: usize, min: usize, max: usize) -> Result<(), String> {
    if value < min || value > max {
        return Err(format!(
            "{flag} must be between {min} and {max}, got {value}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn plan(words: &str) -> Result<Plan, String> {
        let cli = Cli::try_parse_from(std::iter::once("bench").chain(words.split_whitespace()))
            .map_err(|e| e.to_string())?;
        Plan::from_args(&cli.args)
    }

    #[test]
    fn defaults_are_ten_seconds_closed_loop_on_one_connection() {
        let put = plan("put --endpoints 127.0.0.1:2379").unwrap();
        assert_eq!(put.stop, Stop::After(Duration::from_secs(10)));
        assert_eq!((put.clients, put.conns, put.rate), (1, 1, None));
        assert_eq!(put.endpoints, ["http://127.0.0.1:2379"]);
        assert!(
            !put.preload,
            "put reads nothing, so nothing is written first"
        );
        assert!(plan("get").unwrap().preload);
        assert_eq!(plan("mixed").unwrap().read_ratio, READ_RATIO_DEFAULT);
        assert_eq!(plan("watch").unwrap().watchers, WATCHERS_DEFAULT);
    }

    #[test]
    fn nonsense_combinations_are_refused_with_the_flag_named() {
        for (words, expected) in [
            ("put --clients 0", "--clients must be between 1"),
            ("put --conns 0", "--conns must be between 1"),
            ("put --total 0", "--total must be at least 1"),
            ("put --duration 0s", "--duration must be longer than zero"),
            ("put --key-space 0", "--key-space must be between 1"),
            ("put --rate 0", "--rate must be a positive number"),
            ("put --rate=-5", "--rate must be a positive number"),
            ("put --serializable", "--serializable applies to the reads"),
            ("put --read-ratio 0.5", "--read-ratio applies to mixed"),
            (
                "mixed --read-ratio 1.5",
                "--read-ratio must be between 0 and 1",
            ),
            ("get --watchers 3", "--watchers applies to watch"),
            ("put --groups 5000", "--groups must be between 0 and 4096"),
            (
                "watch --groups 2",
                "--groups applies to put, get, txn and mixed",
            ),
            ("watch --value-size 4", "--value-size must be at least 8"),
            ("put --value-size 2000000", "--value-size must be at most"),
            ("put --endpoints ,", "--endpoints is empty"),
            ("put --total 5 --duration 1s", "cannot be used with"),
            ("delete", "invalid value 'delete'"),
        ] {
            let error = plan(words)
                .err()
                .unwrap_or_else(|| panic!("{words} accepted"));
            assert!(error.contains(expected), "{words}: {error}");
        }
    }
}
