//! `lease grant | revoke | keep-alive | timetolive | list`. Lease ids are read and printed in
//! hexadecimal (16 digits), as etcdctl does.

use super::connect::{
    may_try_next, status_text, CallError, ConnectArgs, Endpoints, Reconnect, Retry,
};
use super::kv::parse_lease_id;
use super::output::{self, OutputFormat};
use super::ClientError;
use ballot_proto::etcdserverpb::lease_client::LeaseClient;
use ballot_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest,
    LeaseRevokeRequest, LeaseTimeToLiveRequest,
};
use clap::{Args, Subcommand};
use std::time::Duration;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

#[derive(Args, Debug)]
pub struct LeaseArgs {
    #[command(subcommand)]
    pub command: LeaseCommand,
    #[command(flatten)]
    pub connection: ConnectArgs,
}

#[derive(Subcommand, Debug)]
pub enum LeaseCommand {
    /// Grant a lease that expires TTL seconds after its last keep-alive.
    #[command(after_help = "Example:\n  ballot lease grant 60\n  \
        # lease 32695410dcc0ca06 granted with TTL(60s)\n  \
        ballot put session/42 alive --lease 32695410dcc0ca06")]
    Grant {
        /// Time to live, in seconds.
        ttl: i64,
    },
    /// Revoke a lease: its keys are deleted.
    #[command(after_help = "Example:\n  ballot lease revoke 32695410dcc0ca06\n  \
        # lease 32695410dcc0ca06 revoked")]
    Revoke {
        /// The lease id, in hex.
        #[arg(value_parser = parse_lease_id)]
        id: i64,
    },
    /// Keep a lease alive until interrupted (Ctrl-C), printing each renewal.
    #[command(
        after_help = "Examples:\n  ballot lease keep-alive 32695410dcc0ca06\n  \
        # lease 32695410dcc0ca06 keepalived with TTL(60)\n  \
        ballot lease keep-alive 32695410dcc0ca06 --once"
    )]
    KeepAlive {
        /// The lease id, in hex.
        #[arg(value_parser = parse_lease_id)]
        id: i64,
        /// Renew once and exit (exit 1 if the lease is gone).
        #[arg(long)]
        once: bool,
    },
    /// Show a lease's granted and remaining TTL, and with --keys its keys.
    #[command(
        after_help = "Example:\n  ballot lease timetolive 2d8257079fa1bc0c --keys\n  \
        # lease 2d8257079fa1bc0c granted with TTL(500s), remaining(472s), attached keys([foo2 foo1])"
    )]
    Timetolive {
        /// The lease id, in hex.
        #[arg(value_parser = parse_lease_id)]
        id: i64,
        /// Also list the keys attached to the lease.
        #[arg(long)]
        keys: bool,
    },
    /// List the ids of all leases.
    #[command(
        after_help = "Example:\n  ballot lease list\n  # found 1 leases\n  # 32695410dcc0ca06"
    )]
    List,
}

pub async fn run(args: LeaseArgs) -> Result<(), ClientError> {
    let format = args.connection.write_out;
    let endpoints = Endpoints::from_args(&args.connection)?;
    match args.command {
        LeaseCommand::Grant { ttl } => {
            output::require(format, output::SIMPLE_JSON, "lease grant")?;
            let request = LeaseGrantRequest { ttl, id: 0 };
            let (_, response) = endpoints
                .call(Retry::Write, |channel| async move {
                    Ok::<_, CallError>(
                        LeaseClient::new(channel)
                            .lease_grant(request)
                            .await?
                            .into_inner(),
                    )
                })
                .await?;
            output::write_stdout(&output::lease_grant(format, &response))
        }
        LeaseCommand::Revoke { id } => {
            output::require(format, output::SIMPLE_JSON, "lease revoke")?;
            let (_, response) = endpoints
                .call(Retry::Write, |channel| async move {
                    Ok::<_, CallError>(
                        LeaseClient::new(channel)
                            .lease_revoke(LeaseRevokeRequest { id })
                            .await?
                            .into_inner(),
                    )
                })
                .await?;
            output::write_stdout(&output::lease_revoke(format, id, &response))
        }
        LeaseCommand::Timetolive { id, keys } => {
            output::require(format, output::SIMPLE_JSON, "lease timetolive")?;
            let (_, response) = endpoints
                .call(Retry::Read, |channel| async move {
                    Ok::<_, CallError>(
                        LeaseClient::new(channel)
                            .lease_time_to_live(LeaseTimeToLiveRequest { id, keys })
                            .await?
                            .into_inner(),
                    )
                })
                .await?;
            output::write_stdout(&output::lease_time_to_live(format, &response, keys))
        }
        LeaseCommand::List => {
            output::require(format, output::ALL, "lease list")?;
            let (_, response) = endpoints
                .call(Retry::Read, |channel| async move {
                    Ok::<_, CallError>(
                        LeaseClient::new(channel)
                            .lease_leases(LeaseLeasesRequest {})
                            .await?
                            .into_inner(),
                    )
                })
                .await?;
            output::write_stdout(&output::lease_list(format, &response))
        }
        LeaseCommand::KeepAlive { id, once: true } => {
            output::require(format, output::SIMPLE_JSON, "lease keep-alive")?;
            let (endpoint, response) = endpoints
                .call(Retry::Read, |channel| keep_alive_once(channel, id))
                .await?;
            if response.ttl <= 0 {
                return Err(lease_not_found(endpoint));
            }
            output::write_stdout(&output::lease_keep_alive(format, &response))
        }
        LeaseCommand::KeepAlive { id, once: false } => {
            output::require(format, output::SIMPLE_JSON, "lease keep-alive")?;
            tokio::select! {
                outcome = keep_alive_forever(&endpoints, id, format) => outcome,
                _ = tokio::signal::ctrl_c() => Ok(()),
            }
        }
    }
}

fn lease_not_found(endpoint: String) -> ClientError {
    ClientError::Server {
        endpoint,
        status: tonic::Status::not_found("etcdserver: requested lease not found"),
    }
}

pub(super) async fn keep_alive_once(
    channel: tonic::transport::Channel,
    id: i64,
) -> Result<LeaseKeepAliveResponse, CallError> {
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    sender
        .send(LeaseKeepAliveRequest { id })
        .await
        .expect("the receiver is alive");
    let mut stream = LeaseClient::new(channel)
        .lease_keep_alive(ReceiverStream::new(receiver))
        .await?
        .into_inner();
    match stream.message().await? {
        Some(response) => Ok(response),
        None => Err(CallError::Status(tonic::Status::unavailable(
            "the server closed the keep-alive stream without answering",
        ))),
    }
}

/// Renews every third of the TTL (at least every 500 ms) until the lease is gone, moving to
/// the next endpoint when one goes away (see [`Reconnect`]).
async fn keep_alive_forever(
    endpoints: &Endpoints,
    id: i64,
    format: OutputFormat,
) -> Result<(), ClientError> {
    let mut reconnect = Reconnect::default();
    loop {
        let endpoint = reconnect.next_endpoint(endpoints);
        let reason = match endpoints.dial(&endpoint).await {
            Ok(channel) => {
                match keep_alive_stream(channel, &endpoint, id, format, &mut reconnect).await {
                    Ok(Some(reason)) => reason,
                    Ok(None) => return Ok(()),
                    Err(error) => return Err(error),
                }
            }
            Err(reason) => reason,
        };
        reconnect
            .failed(endpoints, endpoint, reason, "lease keep-alive")
            .await?;
    }
}

/// One keep-alive stream: `Ok(None)` when the lease is gone, `Ok(Some(reason))` when the
/// endpoint went away or refused to serve.
async fn keep_alive_stream(
    channel: tonic::transport::Channel,
    endpoint: &str,
    id: i64,
    format: OutputFormat,
    reconnect: &mut Reconnect,
) -> Result<Option<String>, ClientError> {
    let server_error = |status| ClientError::Server {
        endpoint: endpoint.to_string(),
        status,
    };
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    sender
        .send(LeaseKeepAliveRequest { id })
        .await
        .expect("the receiver is alive");
    let mut stream = match LeaseClient::new(channel)
        .lease_keep_alive(ReceiverStream::new(receiver))
        .await
    {
        Ok(response) => response.into_inner(),
        Err(status) if may_try_next(Retry::Read, &status) => return Ok(Some(status_text(&status))),
        Err(status) => return Err(server_error(status)),
    };
    loop {
        let response = match stream.message().await {
            Ok(Some(response)) => response,
            Ok(None) => return Ok(Some("the server closed the keep-alive stream".into())),
            Err(status) if may_try_next(Retry::Read, &status) => {
                return Ok(Some(status_text(&status)))
            }
            Err(status) => return Err(server_error(status)),
        };
        if response.ttl <= 0 {
            if format == OutputFormat::Simple {
                output::write_stdout(&output::lease_gone(id))?;
            }
            return Ok(None);
        }
        reconnect.established();
        output::write_stdout(&output::lease_keep_alive(format, &response))?;
        let interval_ms = (response.ttl as u64 * 1000 / 3).max(500);
        tokio::time::sleep(Duration::from_millis(interval_ms)).await;
        if sender.send(LeaseKeepAliveRequest { id }).await.is_err() {
            return Ok(Some("the keep-alive stream closed".into()));
        }
    }
}

/// Keeps the lease alive; knows when it must be taken as lost.
pub(crate) struct Renewals {
    lease: i64,
    ttl: Duration,
    /// When the last renewal that succeeded was sent, plus the TTL: past it the lease may have
    /// expired on the cluster, whatever this process hears later.
    expires_by: Instant,
    /// How fast this process's clock runs against real time (1.0: true). Only `ballot check`
    /// sets another rate, to show what a worker whose clock runs slow does: it renews late and
    /// believes in its lease after the cluster has ended it.
    clock_rate: f64,
}

impl Renewals {
    /// A new lease of `ttl_seconds`, and its renewals.
    pub(crate) async fn grant(
        endpoints: &Endpoints,
        ttl_seconds: i64,
    ) -> Result<(i64, Renewals), ClientError> {
        let (_, granted) = endpoints
            .call(Retry::Write, |channel| async move {
                let grant = LeaseGrantRequest {
                    ttl: ttl_seconds,
                    id: 0,
                };
                Ok::<_, CallError>(
                    LeaseClient::new(channel)
                        .lease_grant(grant)
                        .await?
                        .into_inner(),
                )
            })
            .await?;
        let ttl = Duration::from_secs(granted.ttl.max(1) as u64);
        Ok((granted.id, Renewals::new(granted.id, ttl)))
    }

    fn new(lease: i64, ttl: Duration) -> Self {
        Self {
            lease,
            ttl,
            expires_by: Instant::now() + ttl,
            clock_rate: 1.0,
        }
    }

    /// The same renewals by a clock that runs at `rate` times real time.
    pub(crate) fn with_clock_rate(mut self, rate: f64) -> Self {
        assert!(rate > 0.0 && rate.is_finite(), "a clock rate is positive");
        self.clock_rate = rate;
        self.expires_by = Instant::now() + self.by_my_clock(self.ttl);
        self
    }

    /// The real time that passes while this process's clock measures `duration`.
    fn by_my_clock(&self, duration: Duration) -> Duration {
        duration.div_f64(self.clock_rate)
    }

    /// Renews every third of the TTL; returns why the lease is lost: the cluster said it is
    /// gone, or no renewal succeeded before the last one's TTL ran out.
    pub(crate) async fn until_lost(&mut self, endpoints: &Endpoints) -> String {
        let interval = self.by_my_clock((self.ttl / 3).max(Duration::from_millis(200)));
        let mut last_failure = String::from("no renewal was answered");
        loop {
            let sent = Instant::now();
            let lease = self.lease;
            let renewal = endpoints.call(Retry::Read, |channel| keep_alive_once(channel, lease));
            match tokio::time::timeout_at(self.expires_by, renewal).await {
                Err(_) => {
                    return format!("its TTL ran out since the last renewal ({last_failure})")
                }
                Ok(Ok((_, response))) if response.ttl <= 0 => {
                    return "the cluster says the lease is gone (expired or revoked)".into()
                }
                Ok(Ok(_)) => self.expires_by = sent + self.by_my_clock(self.ttl),
                Ok(Err(error)) => last_failure = error.to_string(),
            }
            let next = (Instant::now() + interval).min(self.expires_by);
            tokio::time::sleep_until(next).await;
            if Instant::now() >= self.expires_by {
                return format!("its TTL ran out since the last renewal ({last_failure})");
            }
        }
    }
}

/// Revokes `lease`, best effort: what it kept goes at once rather than when it expires.
pub(crate) async fn revoke_lease(endpoints: &Endpoints, lease: i64) {
    let _ = endpoints
        .call(Retry::Write, |channel| async move {
            let request = LeaseRevokeRequest { id: lease };
            Ok::<_, CallError>(LeaseClient::new(channel).lease_revoke(request).await?)
        })
        .await;
}
