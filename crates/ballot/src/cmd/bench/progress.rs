//! The progress line on stderr while a run goes on: on a terminal, one line rewritten each
//! second; otherwise (a log, CI) one line each 10 seconds, so logs stay short.

use super::stats::{Live, LiveSnapshot};
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TERMINAL_PERIOD: Duration = Duration::from_secs(1);
const LOG_PERIOD: Duration = Duration::from_secs(10);

pub struct Progress {
    task: tokio::task::JoinHandle<()>,
    terminal: bool,
}

impl Progress {
    /// Starts reporting `live` under the name `what`, counting time from `start`.
    pub fn start(what: String, live: Arc<Live>, start: Instant) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        let period = if terminal {
            TERMINAL_PERIOD
        } else {
            LOG_PERIOD
        };
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at((start + period).into(), period);
            let mut previous = LiveSnapshot::default();
            loop {
                ticks.tick().await;
                let now = live.snapshot();
                let text = line(&what, start.elapsed(), previous, now, period);
                previous = now;
                let mut stderr = std::io::stderr().lock();
                let _ = if terminal {
                    write!(stderr, "\r{text}\x1b[K")
                } else {
                    writeln!(stderr, "{text}")
                };
                let _ = stderr.flush();
            }
        });
        Progress { task, terminal }
    }

    /// Stops reporting and clears the line on a terminal.
    pub fn finish(self) {
        self.task.abort();
        if self.terminal {
            eprint!("\r\x1b[K");
        }
    }
}

/// `put  12s  123456 ops  10234 ops/s  mean 1.52 ms  errors 0`: the rate and mean latency over
/// the last period.
pub fn line(
    what: &str,
    elapsed: Duration,
    previous: LiveSnapshot,
    now: LiveSnapshot,
    period: Duration,
) -> String {
    let ops = now.ops - previous.ops;
    let rate = ops as f64 / period.as_secs_f64();
    let mean_ms = if ops == 0 {
        0.0
    } else {
        (now.latency_ns - previous.latency_ns) as f64 / ops as f64 / 1e6
    };
    format!(
        "{what}  {:.0}s  {} ops  {rate:.0} ops/s  mean {mean_ms:.2} ms  errors {}",
        elapsed.as_secs_f64(),
        now.ops,
        now.errors
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_shows_the_last_period_and_the_totals() {
        let previous = LiveSnapshot {
            ops: 1_000,
            errors: 1,
            latency_ns: 1_000_000_000,
        };
        let now = LiveSnapshot {
            ops: 3_000,
            errors: 2,
            latency_ns: 4_000_000_000,
        };
        let text = line(
            "put",
            Duration::from_secs(2),
            previous,
            now,
            Duration::from_secs(1),
        );
        assert_eq!(
            text,
            "put  2s  3000 ops  2000 ops/s  mean 1.50 ms  errors 2"
        );
    }
}
