//! The process's log output, with etcd's flags: `--log-level` (debug, info, warn, error; etcd's
//! panic and fatal are taken as error) and `--log-format` (text lines, or one JSON object per
//! line for log shippers), written to standard error.
//!
//! The level applies to ballot's own crates; the libraries underneath (h2, tonic, hyper) log at
//! warn at most, so `--log-level debug` shows what ballot does rather than every HTTP/2 frame.

use clap::ValueEnum;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
    /// etcd's name; logs errors, as `error` does.
    Panic,
    /// etcd's name; logs errors, as `error` does.
    Fatal,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines: time, level, message, then `field=value` pairs.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields` (`message` and the rest).
    Json,
}

impl LogLevel {
    fn filter(self) -> LevelFilter {
        match self {
            LogLevel::Debug => LevelFilter::DEBUG,
            LogLevel::Info => LevelFilter::INFO,
            LogLevel::Warn => LevelFilter::WARN,
            LogLevel::Error | LogLevel::Panic | LogLevel::Fatal => LevelFilter::ERROR,
        }
    }
}

/// ballot's crates, whose events `--log-level` governs.
const OWN_TARGETS: [&str; 6] = [
    "ballot",
    "ballot_server",
    "ballot_storage",
    "ballot_raft",
    "ballot_core",
    "ballot_sim",
];

/// Which events are written: ballot's at `level`, everyone else's at warn or above.
pub fn targets(level: LogLevel) -> Targets {
    let level = level.filter();
    OWN_TARGETS.iter().fold(
        Targets::new().with_default(level.min(LevelFilter::WARN)),
        |targets, target| targets.with_target(*target, level),
    )
}

/// Installs the process's logger (once; later calls change nothing).
pub fn init(level: LogLevel, format: LogFormat) {
    use std::io::IsTerminal;
    let filter = targets(level);
    let _ = match format {
        LogFormat::Text => tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_target(false),
            )
            .with(filter)
            .try_init(),
        LogFormat::Json => tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr)
                    .with_target(false)
                    .with_current_span(false),
            )
            .with(filter)
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_level_governs_ballots_events_and_libraries_stay_at_warn() {
        let debug = targets(LogLevel::Debug);
        assert!(debug.would_enable("ballot_server::node", &tracing::Level::DEBUG));
        assert!(!debug.would_enable("h2::codec", &tracing::Level::DEBUG));
        assert!(debug.would_enable("h2::codec", &tracing::Level::WARN));
        let error = targets(LogLevel::Fatal);
        assert!(!error.would_enable("ballot_server::node", &tracing::Level::WARN));
        assert!(error.would_enable("ballot_server::node", &tracing::Level::ERROR));
        assert!(!error.would_enable("h2", &tracing::Level::WARN));
        let info = targets(LogLevel::Info);
        assert!(info.would_enable("ballot_server::transport", &tracing::Level::INFO));
        assert!(!info.would_enable("ballot_server::transport", &tracing::Level::DEBUG));
    }
}
