//! `snapshot save FILE`: streams a point-in-time snapshot of one member's state machine into
//! FILE. The stream goes to `FILE.part`, is synced, and is renamed to FILE only when complete,
//! so FILE is never a partial snapshot.

use super::connect::{CallError, ConnectArgs, Endpoints, Retry};
use super::output::{self, OutputFormat};
use super::ClientError;
use ballot_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use ballot_proto::etcdserverpb::SnapshotRequest;
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
    output::require(format, output::SIMPLE_JSON, "snapshot save")?;
    let endpoints = Endpoints::from_args(&args.connection)?;
    let SnapshotCommand::Save { file } = args.command;
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
    let mut out = std::fs::File::create(&part).map_err(|e| local("create", e))?;
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
