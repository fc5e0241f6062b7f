//! The tools layer of ballot as a library, so integration tests and benchmarks use exactly what
//! the binary uses.

pub mod dev_cluster;
pub mod logging;

/// The CPUs this process may run on (at least one): the default for anything sized per core.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

pub mod raft_replica {
    //! Builds Raft replicas for the simulator and the server: the one place the tools layer
    //! names Raft.

    use ballot_core::{ReplicaSettings, ReplicaStart};
    use ballot_raft::{Break, Config, Raft};

    /// A Raft replica as `ballot server` runs it: the node's settings (etcd's heartbeat and
    /// election flags, its snapshot count) mapped onto Raft's, everything else Raft's defaults.
    pub fn for_server(settings: &ReplicaSettings, start: ReplicaStart) -> Result<Raft, String> {
        Raft::start(settings, start)
    }

    /// A Raft replica as `ballot sim raft` runs it: default timeouts, a snapshot every 200
    /// entries (so runs exercise compaction and InstallSnapshot), an optional deliberate bug.
    pub fn build(start: ReplicaStart, broken: Option<Break>) -> Result<Raft, String> {
        let mut config = Config::new(start.node_id);
        config.rng_seed = start.rng_seed;
        config.broken = broken;
        config.snapshot_threshold_entries = 200;
        config.snapshot_trailing_entries = 20;
        config.snapshot_chunk_bytes = 512;
        // Every group but 0 hibernates, as on a server (node liveness runs with them).
        config.hibernate = start.group != 0;
        Raft::new(config, start.persisted)
    }
}
