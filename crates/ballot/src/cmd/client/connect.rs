//! Endpoints, timeouts and failover: the flags every client subcommand shares, and the one place
//! that decides when a failed call may move on to the next endpoint.
//!
//! Rule: endpoints are tried in the order given. A call moves on when the endpoint cannot be
//! reached (connection refused, dial timeout), when the server says `etcdserver: no leader` or
//! `etcdserver: not leader` (nothing was proposed), or, for reads only (and the watch and
//! keep-alive streams), on any `Unavailable` answer or broken connection. A write that reached
//! a server is never sent a second time: whether it took effect is unknown, so we report it.

use super::output::OutputFormat;
use super::ClientError;
use clap::Args;
use std::future::Future;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

/// Flags shared by every client subcommand (accepted before or after a nested subcommand).
#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    /// gRPC endpoints, comma separated, tried in order until one answers (`http://` is
    /// assumed when no scheme is given)
    #[arg(
        long,
        env = "BALLOT_ENDPOINTS",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ',',
        global = true
    )]
    pub endpoints: Vec<String>,
    /// Time allowed to connect to one endpoint (e.g. 500ms, 2s, 1m)
    #[arg(long, env = "BALLOT_DIAL_TIMEOUT", default_value = "2s", value_parser = parse_duration, global = true)]
    pub dial_timeout: Duration,
    /// Time allowed for the request once connected (not for watch and keep-alive, which run
    /// until interrupted)
    #[arg(long, env = "BALLOT_COMMAND_TIMEOUT", default_value = "5s", value_parser = parse_duration, global = true)]
    pub command_timeout: Duration,
    /// Output format: simple (etcdctl's default lines), json (etcd's JSON field names), table
    #[arg(short = 'w', long, env = "BALLOT_WRITE_OUT", value_enum, default_value_t = OutputFormat::Simple, global = true)]
    pub write_out: OutputFormat,
    /// The group whose keys put, get, del and txn work on (`ballot group create` makes one,
    /// `ballot group list` shows them); 0 is the cluster's default keyspace, the one etcd
    /// clients see
    #[arg(long, env = "BALLOT_GROUP", default_value_t = 0, global = true)]
    pub group: u32,
}

/// Whether a call may be sent again to the next endpoint after it reached a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Reads and status: any `Unavailable` answer or broken connection moves on to the next
    /// endpoint.
    Read,
    /// Writes: only an endpoint that could not be reached, or a refusal before proposing
    /// (`etcdserver: no leader`, `etcdserver: not leader`).
    Write,
}

/// Why one attempt failed: the server's gRPC status, or something on our side (a file write).
#[derive(Debug)]
pub enum CallError {
    Status(tonic::Status),
    Local(ClientError),
}

impl From<tonic::Status> for CallError {
    fn from(status: tonic::Status) -> Self {
        CallError::Status(status)
    }
}

/// Go's `time.ParseDuration` for the forms people type: `500ms`, `2s`, `1.5s`, `1m30s`, `1h`.
/// A bare number is taken as seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(seconds) = text.parse::<f64>() {
        return seconds_to_duration(seconds, text);
    }
    let mut total_seconds = 0.0;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("invalid duration {text:?}: missing unit"))?;
        let number: f64 = rest[..number_len]
            .parse()
            .map_err(|_| format!("invalid duration {text:?}"))?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit_seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            unit => {
                return Err(format!(
                    "invalid duration {text:?}: unknown unit {unit:?} (use ms, s, m or h)"
                ))
            }
        };
        total_seconds += number * unit_seconds;
        rest = &rest[unit_len..];
    }
    seconds_to_duration(total_seconds, text)
}

fn seconds_to_duration(seconds: f64, text: &str) -> Result<Duration, String> {
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("invalid duration {text:?}"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// `127.0.0.1:2379` becomes `http://127.0.0.1:2379`; a URL with a scheme is kept as given.
pub fn normalize_endpoint(endpoint: &str) -> String {
    let endpoint = endpoint.trim().trim_end_matches('/');
    if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    }
}

/// The endpoints of one command invocation and its timeouts.
#[derive(Clone, Debug)]
pub struct Endpoints {
    pub list: Vec<String>,
    pub dial_timeout: Duration,
    pub command_timeout: Duration,
    /// The group key requests are for (`--group`).
    pub group: u32,
}

impl Endpoints {
    pub fn from_args(args: &ConnectArgs) -> Result<Self, ClientError> {
        let list: Vec<String> = args
            .endpoints
            .iter()
            .filter(|endpoint| !endpoint.trim().is_empty())
            .map(|endpoint| normalize_endpoint(endpoint))
            .collect();
        if list.is_empty() {
            return Err(ClientError::Usage(
                "--endpoints is empty: give at least one, e.g. http://127.0.0.1:2379".into(),
            ));
        }
        Ok(Endpoints {
            list,
            dial_timeout: args.dial_timeout,
            command_timeout: args.command_timeout,
            group: args.group,
        })
    }

    /// A key request for `--group`'s keyspace (group 0's carries nothing extra, as etcdctl's).
    pub fn key_request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if self.group != 0 {
            request.metadata_mut().insert(
                ballot_server::etcd::kv::GROUP_HEADER,
                tonic::metadata::MetadataValue::from(self.group),
            );
        }
        request
    }

    /// Connects to one endpoint within the dial timeout.
    pub async fn dial(&self, endpoint: &str) -> Result<Channel, String> {
        let target = Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| format!("invalid endpoint URL: {e}"))?
            .connect_timeout(self.dial_timeout);
        match tokio::time::timeout(self.dial_timeout, target.connect()).await {
            Ok(Ok(channel)) => Ok(channel),
            Ok(Err(error)) => Err(describe_transport_error(&error)),
            Err(_) => Err(format!(
                "no answer within --dial-timeout {:?}",
                self.dial_timeout
            )),
        }
    }

    /// Runs `op` against the first endpoint that answers, under the command timeout, and
    /// returns the endpoint that answered with the result.
    pub async fn call<T, F, Fut>(&self, retry: Retry, op: F) -> Result<(String, T), ClientError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, CallError>>,
    {
        self.call_with_timeout(retry, Some(self.command_timeout), op)
            .await
    }

    /// As [`Endpoints::call`], with an explicit time limit for the request (`None`: no limit).
    pub async fn call_with_timeout<T, F, Fut>(
        &self,
        retry: Retry,
        limit: Option<Duration>,
        mut op: F,
    ) -> Result<(String, T), ClientError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, CallError>>,
    {
        let mut failures = Vec::new();
        for endpoint in &self.list {
            let channel = match self.dial(endpoint).await {
                Ok(channel) => channel,
                Err(reason) => {
                    failures.push((endpoint.clone(), reason));
                    continue;
                }
            };
            let outcome = match limit {
                Some(limit) => match tokio::time::timeout(limit, op(channel)).await {
                    Ok(outcome) => outcome,
                    Err(_) => {
                        return Err(ClientError::Timeout {
                            endpoint: endpoint.clone(),
                            limit,
                        })
                    }
                },
                None => op(channel).await,
            };
            match outcome {
                Ok(value) => return Ok((endpoint.clone(), value)),
                Err(CallError::Local(error)) => return Err(error),
                Err(CallError::Status(status)) if may_try_next(retry, &status) => {
                    failures.push((endpoint.clone(), status_text(&status)));
                }
                Err(CallError::Status(status)) => {
                    return Err(ClientError::Server {
                        endpoint: endpoint.clone(),
                        status,
                    })
                }
            }
        }
        Err(ClientError::Unreachable(failures))
    }
}

/// For the streams that run until interrupted (watch, keep-alive): which endpoint to try next,
/// and when to give up. Before the stream was ever established, one full round of failures
/// ends the command (a wrong `--endpoints` fails fast). Once it ran, an election or a member
/// going away is transient: rounds repeat with a pause doubling from 100 ms to 2 s, each
/// reported on stderr, until an endpoint serves again or the user interrupts.
#[derive(Debug)]
pub struct Reconnect {
    next: usize,
    failures: Vec<(String, String)>,
    ever_established: bool,
    pause: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            next: 0,
            failures: Vec::new(),
            ever_established: false,
            pause: Self::PAUSE_MIN,
        }
    }
}

impl Reconnect {
    const PAUSE_MIN: Duration = Duration::from_millis(100);
    const PAUSE_MAX: Duration = Duration::from_secs(2);

    /// The endpoint to try now: the next one in order, round after round.
    pub fn next_endpoint(&mut self, endpoints: &Endpoints) -> String {
        let endpoint = endpoints.list[self.next % endpoints.list.len()].clone();
        self.next += 1;
        endpoint
    }

    /// The stream works: earlier failures no longer count.
    pub fn established(&mut self) {
        self.failures.clear();
        self.ever_established = true;
        self.pause = Self::PAUSE_MIN;
    }

    /// Records that `endpoint` failed. After a full round of failures: an error if the stream
    /// never ran, otherwise a pause before the next round.
    pub async fn failed(
        &mut self,
        endpoints: &Endpoints,
        endpoint: String,
        reason: String,
        what: &str,
    ) -> Result<(), ClientError> {
        self.failures.push((endpoint, reason));
        if self.failures.len() < endpoints.list.len() {
            return Ok(());
        }
        if !self.ever_established {
            return Err(ClientError::Unreachable(std::mem::take(&mut self.failures)));
        }
        let reasons: Vec<String> = self
            .failures
            .drain(..)
            .map(|(endpoint, reason)| format!("{endpoint}: {reason}"))
            .collect();
        eprintln!(
            "{what}: no endpoint serves ({}); retrying in {:?}",
            reasons.join("; "),
            self.pause
        );
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(Self::PAUSE_MAX);
        Ok(())
    }
}

/// Whether a failed attempt may be repeated on the next endpoint (see the module comment).
pub fn may_try_next(retry: Retry, status: &tonic::Status) -> bool {
    if NOT_PROPOSED.contains(&status.message()) {
        return true;
    }
    retry == Retry::Read && (status.code() == Code::Unavailable || is_transport_failure(status))
}

/// A status made on our side from a broken connection (the server was killed mid-call: h2
/// reports a reset, often as `Internal` or `Unknown`), not one the server sent: tonic keeps the
/// transport error as the source.
pub fn is_transport_failure(status: &tonic::Status) -> bool {
    std::error::Error::source(status).is_some()
}

/// Refusals that mean the request was not proposed, so sending it elsewhere cannot apply it
/// twice: this member has no leader, or is not the leader and did not forward the request.
const NOT_PROPOSED: [&str; 2] = ["etcdserver: no leader", "etcdserver: not leader"];

/// The server's message as etcd clients print it (`etcdserver: ...`), or the gRPC code when the
/// server sent no message.
pub fn status_text(status: &tonic::Status) -> String {
    if status.message().is_empty() {
        format!("{:?}", status.code())
    } else {
        status.message().to_string()
    }
}

/// The innermost cause of a transport error ("Connection refused (os error 111)"), which is
/// what a user can act on; tonic's outer layers only say "transport error".
fn describe_transport_error(error: &tonic::transport::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text = cause.to_string();
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_go_writes_them() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("5x").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn endpoints_without_a_scheme_get_http() {
        assert_eq!(
            normalize_endpoint("127.0.0.1:2379"),
            "http://127.0.0.1:2379"
        );
        assert_eq!(normalize_endpoint("https://a:1/"), "https://a:1");
    }

    #[test]
    fn only_reads_and_unproposed_writes_move_on_to_the_next_endpoint() {
        let down = tonic::Status::unavailable("connection reset");
        let no_leader = tonic::Status::unavailable("etcdserver: no leader");
        let not_leader = tonic::Status::failed_precondition("etcdserver: not leader");
        let not_found = tonic::Status::not_found("etcdserver: requested lease not found");
        assert!(may_try_next(Retry::Read, &down));
        assert!(
            !may_try_next(Retry::Write, &down),
            "a write may have applied"
        );
        assert!(may_try_next(Retry::Write, &no_leader));
        assert!(may_try_next(Retry::Write, &not_leader));
        assert!(!may_try_next(Retry::Read, &not_found));
    }

    #[tokio::test]
    async fn streams_give_up_after_a_round_only_if_they_never_ran() {
        let endpoints = Endpoints {
            list: vec!["http://a".into(), "http://b".into()],
            dial_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_secs(1),
            group: 0,
        };
        let mut fresh = Reconnect::default();
        assert_eq!(fresh.next_endpoint(&endpoints), "http://a");
        assert!(fresh
            .failed(&endpoints, "http://a".into(), "refused".into(), "watch")
            .await
            .is_ok());
        assert_eq!(fresh.next_endpoint(&endpoints), "http://b");
        let error = fresh
            .failed(&endpoints, "http://b".into(), "refused".into(), "watch")
            .await
            .unwrap_err();
        assert!(error.to_string().contains("http://a: refused"), "{error}");

        let mut running = Reconnect::default();
        running.established();
        for endpoint in ["http://a", "http://b", "http://a", "http://b"] {
            assert_eq!(running.next_endpoint(&endpoints), endpoint);
            let outcome = running
                .failed(&endpoints, endpoint.into(), "no leader".into(), "watch")
                .await;
            assert!(outcome.is_ok(), "retries after a pause once established");
        }
        assert_eq!(
            running.pause,
            Duration::from_millis(400),
            "doubles each round"
        );
    }

    #[tokio::test]
    async fn a_down_endpoint_is_skipped_and_named_when_all_fail() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let endpoints = Endpoints {
            list: vec![format!("http://127.0.0.1:{port}")],
            dial_timeout: Duration::from_millis(500),
            command_timeout: Duration::from_secs(1),
            group: 0,
        };
        let error = endpoints
            .call(Retry::Read, |_channel| async { Ok::<_, CallError>(()) })
            .await
            .unwrap_err();
        let text = error.to_string();
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
        assert_eq!(error.exit_code(), 1);
    }
}
