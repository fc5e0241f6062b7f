//! Builds Raft replicas for the simulator: the one place the tools layer names Raft.

use ballot_raft::{Break, Config, Raft};
use ballot_sim::NodeStart;

pub fn build(start: NodeStart, broken: Option<Break>) -> Result<Raft, String> {
    let mut config = Config::new(start.node_id, start.bootstrap_membership);
    config.rng_seed = start.rng_seed;
    config.broken = broken;
    // Small enough that long runs exercise compaction and InstallSnapshot.
    config.snapshot_threshold_entries = 200;
    config.snapshot_trailing_entries = 20;
    config.snapshot_chunk_bytes = 512;
    Raft::new(config, start.persisted)
}
