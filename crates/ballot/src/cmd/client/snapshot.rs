//! Backups, with etcdctl's commands and flags:
//!
//! - `snapshot save FILE`: streams a point-in-time snapshot of one member's state machine into
//!   FILE (mode 0600, as etcdctl writes it). The stream goes to `FILE.part`, is synced, and is
//!   renamed to FILE only when complete, so FILE is never a partial snapshot.
//! - `snapshot status FILE`: checks every byte of FILE and prints its hash, revision, keys and
//!   size (the hash is what `endpoint hashkv` answers at that revision on a member holding it).
//! - `snapshot restore FILE`: builds a new cluster member's data directory from FILE (see
//!   `ballot_server::backup`). Neither of the last two talks to a server.

use super::connect::{CallError, ConnectArgs, Endpoints, Retry};
use super::output::{self, OutputFormat};
use super::ClientError;
use ballot_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use ballot_proto::etcdserverpb::SnapshotRequest;
use ballot_server::backup::{self, BackupError, RestoreConfig};
use ballot_server::config::parse_initial_cluster;
use clap::{Args, Subcommand};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    pub command: SnapshotCommand,
    #[command(flatten)]
    pub connection: ConnectArgs,
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Save a snapshot of the first endpoint that answers into FILE.
    #[command(
        after_help = "Example:\n  ballot snapshot save backup.db --endpoints http://127.0.0.1:2379\n  \
        # Snapshot saved at backup.db (24576 bytes from http://127.0.0.1:2379)"
    )]
    Save {
        /// Where to write the snapshot (replaced if it exists).
        file: PathBuf,
    },
    /// Check a saved snapshot and print its hash, revision, total keys and size.
    #[command(
        after_help = "Example:\n  ballot snapshot status backup.db -w table\n\n\
        Exit status 1 when the file is damaged, truncated or not a ballot snapshot."
    )]
    Status {
        /// The snapshot file.
        file: PathBuf,
    },
    /// Build a new member's data directory from a saved snapshot (etcd's restore flags). Run it
    /// once per member of the new cluster, with the same --initial-cluster and token, then start
    /// each member on its directory with `ballot server` (--initial-cluster-state new).
    #[command(after_help = "Example, for a new three-member cluster:\n  \
        ballot snapshot restore backup.db --name n1 --data-dir n1.ballot \\\n    \
        --initial-cluster n1=http://10.0.0.1:2380,n2=http://10.0.0.2:2380,n3=http://10.0.0.3:2380 \\\n    \
        --initial-cluster-token new-cluster --initial-advertise-peer-urls http://10.0.0.1:2380\n\n\
        Every key keeps its value, create and mod revisions and version; leases keep their TTLs.\n\
        The data directory must not exist or be empty; nothing is written unless the whole file is good.")]
    Restore {
        /// The snapshot file.
        file: PathBuf,
        /// This member's name.
        #[arg(long, default_value = "default")]
        name: String,
        /// The data directory to create [default: <name>.ballot].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Every member of the new cluster as name=peer-url, comma separated.
        #[arg(long, default_value = "default=http://localhost:2380")]
        initial_cluster: String,
        /// The new cluster's token (start its members with the same one).
        #[arg(long, default_value = "ballot-cluster")]
        initial_cluster_token: String,
        /// This member's peer URLs, comma separated (must match its --initial-cluster entry).
        #[arg(long, default_value = "http://localhost:2380")]
        initial_advertise_peer_urls: String,
        /// Do not compare the file's SHA-256 digest (every record's checksum is still checked).
        #[arg(long)]
        skip_hash_check: bool,
    },
}

#[derive(Serialize)]
struct SavedJson {
    #[serde(rename = "Path")]
    path: String,
    #[serde(rename = "Endpoint")]
    endpoint: String,
    #[serde(rename = "Bytes")]
    bytes: u64,
    #[serde(rename = "Version", skip_serializing_if = "String::is_empty")]
    version: String,
}

pub async fn run(args: SnapshotArgs) -> Result<(), ClientError> {
    let format = args.connection.write_out;
    let file = match args.command {
        SnapshotCommand::Save { file } => file,
        SnapshotCommand::Status { file } => return status(format, &file),
        SnapshotCommand::Restore {
            file,
            name,
            data_dir,
            initial_cluster,
            initial_cluster_token,
            initial_advertise_peer_urls,
            skip_hash_check,
        } => {
            let config = RestoreConfig {
                data_dir: data_dir.unwrap_or_else(|| PathBuf::from(format!("{name}.ballot"))),
                name,
                initial_cluster: parse_initial_cluster(&initial_cluster)
                    .map_err(|error| ClientError::Usage(error.to_string()))?,
                initial_cluster_token,
                initial_advertise_peer_urls: initial_advertise_peer_urls
                    .split(',')
                    .map(str::trim)
                    .filter(|url| !url.is_empty())
                    .map(String::from)
                    .collect(),
                skip_hash_check,
            };
            return restore(format, &file, &config);
        }
    };
    output::require(format, output::SIMPLE_JSON, "snapshot save")?;
    let endpoints = Endpoints::from_args(&args.connection)?;
    let part = part_path(&file);
    // A snapshot of a large store takes as long as it takes: no --command-timeout.
    let outcome = endpoints
        .call_with_timeout(Retry::Read, None, |channel| download(channel, part.clone()))
        .await;
    let (endpoint, (bytes, version)) = match outcome {
        Ok(saved) => saved,
        Err(error) => {
            let _ = std::fs::remove_file(&part);
            return Err(error);
        }
    };
    std::fs::rename(&part, &file).map_err(|e| {
        ClientError::Local(format!(
            "cannot rename {} to {}: {e}",
            part.display(),
            file.display()
        ))
    })?;
    let text = match format {
        OutputFormat::Json => {
            let mut line = serde_json::to_vec(&SavedJson {
                path: file.display().to_string(),
                endpoint,
                bytes,
                version,
            })
            .expect("plain struct");
            line.push(b'\n');
            line
        }
        _ => format!(
            "Snapshot saved at {} ({bytes} bytes from {endpoint})\n",
            file.display()
        )
        .into_bytes(),
    };
    output::write_stdout(&text)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusJson {
    hash: u32,
    revision: i64,
    total_key: u64,
    total_size: u64,
}

fn status(format: OutputFormat, file: &Path) -> Result<(), ClientError> {
    let status = backup::status(file).map_err(|error| ClientError::Local(error.to_string()))?;
    let summary = status.summary;
    let row = vec![
        format!("{:x}", summary.hash),
        summary.revision.to_string(),
        summary.keys.to_string(),
        output::human_bytes(status.total_bytes),
    ];
    let text = match format {
        // etcdctl's field names.
        OutputFormat::Json => {
            let mut line = serde_json::to_vec(&StatusJson {
                hash: summary.hash,
                revision: summary.revision,
                total_key: summary.keys,
                total_size: status.total_bytes,
            })
            .expect("plain struct");
            line.push(b'\n');
            line
        }
        OutputFormat::Table => {
            output::table(&["hash", "revision", "total keys", "total size"], &[row]).into_bytes()
        }
        OutputFormat::Simple => format!("{}\n", row.join(", ")).into_bytes(),
    };
    output::write_stdout(&text)
}

fn restore(format: OutputFormat, file: &Path, config: &RestoreConfig) -> Result<(), ClientError> {
    output::require(format, output::SIMPLE_JSON, "snapshot restore")?;
    let restored = backup::restore(file, config).map_err(|error| match error {
        BackupError::Config(_) | BackupError::DataDirExists { .. } => {
            ClientError::Usage(error.to_string())
        }
        other => ClientError::Local(other.to_string()),
    })?;
    let text = format!(
        "restored snapshot at revision {} ({} keys) into {} as member {} ({:x}) of cluster {:x}\n",
        restored.summary.revision,
        restored.summary.keys,
        config.data_dir.display(),
        config.name,
        restored.member_id,
        restored.cluster_id
    );
    output::write_stdout(text.as_bytes())
}

fn part_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".part");
    PathBuf::from(name)
}

/// Writes the stream into `part`; returns the byte count and the server's version.
async fn download(
    channel: tonic::transport::Channel,
    part: PathBuf,
) -> Result<(u64, String), CallError> {
    let local = |what: &str, e: std::io::Error| {
        CallError::Local(ClientError::Local(format!(
            "cannot {what} {}: {e}",
            part.display()
        )))
    };
    let mut stream = MaintenanceClient::new(channel)
        .snapshot(SnapshotRequest {})
        .await?
        .into_inner();
    // Only its owner may read a backup of every key (etcdctl writes 0600 too).
    let mut out = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&part)
            .map_err(|e| local("create", e))?
    };
    {
        use std::os::unix::fs::PermissionsExt;
        out.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| local("restrict the permissions of", e))?;
    }
    let mut bytes = 0u64;
    let mut version = String::new();
    let mut remaining = None;
    while let Some(chunk) = stream.message().await? {
        out.write_all(&chunk.blob).map_err(|e| local("write", e))?;
        bytes += chunk.blob.len() as u64;
        remaining = Some(chunk.remaining_bytes);
        if !chunk.version.is_empty() {
            version = chunk.version;
        }
    }
    match remaining {
        Some(0) => {}
        Some(left) => {
            return Err(CallError::Status(tonic::Status::unavailable(format!(
                "the snapshot stream ended with {left} bytes still to come"
            ))))
        }
        None => {
            return Err(CallError::Status(tonic::Status::unavailable(
                "the snapshot stream ended before any data",
            )))
        }
    }
    out.sync_all().map_err(|e| local("sync", e))?;
    Ok((bytes, version))
}
