//! Serves the etcd v3 gRPC services on HTTP/2 with `h2` directly: connections, streams, gRPC
//! framing and statuses.
//!
//! A profile of 256-client puts had the gRPC server stack at 40% of the nodes' CPU, and about
//! 40% of that in the layers between h2 and the handlers: hyper's server glue, tonic's server
//! transport (its service stack per request, error recovery, connection info) and the axum
//! router. This module replaces those layers; h2, tonic's generated services and the handlers
//! stay as they are.
//!
//! - KV's unary methods (Range, Put, DeleteRange, Txn, Compact), the calls a load is made of,
//!   are served here (the writes inside the connection's own task, each Range in a task of its
//!   own when the runtime has several workers): the one request message is read and decoded,
//!   the handler called, and the answer
//!   written as HEADERS, one DATA frame and trailers (or, for an error, a trailers-only
//!   response: the status in the headers).
//! - Every other call (Watch and LeaseKeepAlive streams, Lease, Maintenance, Cluster, Auth) goes
//!   to tonic's generated services ([`tonic::service::Routes`]) with the h2 stream as its body,
//!   and their response body is written back under h2's flow control.
//!
//! Connections are read through [`crate::authority::AuthorityRepair`]: grpc-go sends a URL as
//! `:authority` for some of etcdctl's calls, which h2 would refuse.
//!
//! What the layers removed did and this keeps: `grpc-timeout` bounds a call until its answer
//! (Cancelled "Timeout expired", as tonic answers), a stream the client resets stops its call,
//! hyper's HTTP/2 settings (1 MiB windows, 200 concurrent streams per connection, 16 KiB header
//! lists, 400 KiB send buffer per stream), and on shutdown every connection is told to go away
//! (GOAWAY) and finishes the calls it has.

use super::kv::KvService;
use crate::authority::AuthorityRepair;
use crate::coalesce::CoalescedStream;
use ballot_proto::etcdserverpb::kv_server::Kv;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt};
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http_body::{Body as HttpBody, Frame};
use prost::Message;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tonic::codegen::http::{self, HeaderMap, HeaderValue};
use tonic::codegen::Service;
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

/// hyper's HTTP/2 server defaults, which the tonic server used.
const STREAM_WINDOW_BYTES: u32 = 1024 * 1024;
const CONNECTION_WINDOW_BYTES: u32 = 1024 * 1024;
const CONCURRENT_STREAMS_MAX: u32 = 200;
const HEADER_LIST_BYTES_MAX: u32 = 16 * 1024;
const SEND_BUFFER_BYTES_MAX: usize = 400 * 1024;

/// Pause after a failed accept (out of file descriptors, say) before the next.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// The 5-byte prefix of every gRPC message: a compressed flag and a big-endian length.
pub const MESSAGE_PREFIX_BYTES: usize = 5;

/// What a client connection is served with: the KV handler for the unary fast path, every
/// service for the rest. Cheap to clone (one per connection and call).
#[derive(Clone)]
pub struct Services {
    pub(super) kv: Arc<KvService>,
    pub(super) routes: tonic::service::Routes,
    /// Largest request message accepted (`max_request_bytes` plus gRPC room).
    pub(super) decoding_max: usize,
}

/// Serves `services` on `listener` until `shutdown` resolves; then stops accepting, tells every
/// connection to go away and waits for their open calls to finish (watch and keep-alive streams
/// do not: bound the wait at the caller).
pub async fn serve(
    listener: tokio::net::TcpListener,
    services: Services,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let (closing, closing_seen) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    connections.spawn(serve_connection(
                        stream,
                        services.clone(),
                        closing_seen.clone(),
                    ));
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot accept a client connection");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let _ = closing.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    services: Services,
    mut closing: tokio::sync::watch::Receiver<bool>,
) {
    let handshake = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .max_concurrent_streams(CONCURRENT_STREAMS_MAX)
        .max_header_list_size(HEADER_LIST_BYTES_MAX)
        .max_send_buffer_size(SEND_BUFFER_BYTES_MAX)
        .handshake::<_, Bytes>(AuthorityRepair::new(CoalescedStream::new(stream)));
    let mut connection = match handshake.await {
        Ok(connection) => connection,
        Err(error) => {
            tracing::debug!(%error, "HTTP/2 handshake with a client failed");
            return;
        }
    };
    // KV's writes run inside this task rather than in a task each: the replica loop's answer then
    // wakes one task, which writes it and flushes the connection in the same poll, instead of
    // waking a call task that then wakes this one; and no task is spawned per call. Their own
    // work is small (decode, check, encode), so one task holds many. Ranges read the store on
    // the task that serves them and may be large: with more than one worker thread each gets a
    // task of its own, so that an etcd client's one connection can read on every core and a
    // large read holds up no other answer. With one worker a task buys neither, and costs
    // (serializable gets at 64 clients 10% slower in an A/B run).
    let ranges_in_tasks_of_their_own =
        tokio::runtime::Handle::current().metrics().num_workers() > 1;
    let mut calls = FuturesUnordered::new();
    let mut closed = pin!(async move {
        let _ = closing.wait_for(|closing| *closing).await;
    });
    let mut going_away = false;
    loop {
        let accepted = poll_fn(|cx| {
            // Calls first: what they answer goes into h2's buffers, which polling the
            // connection below writes out.
            while let Poll::Ready(Some(())) = calls.poll_next_unpin(cx) {}
            if !going_away && closed.as_mut().poll(cx).is_ready() {
                going_away = true;
                connection.graceful_shutdown();
            }
            connection.poll_accept(cx)
        })
        .await;
        match accepted {
            Some(Ok((request, respond))) => match KvMethod::of_path(request.uri().path()) {
                Some(KvMethod::Range) if ranges_in_tasks_of_their_own => {
                    let services = services.clone();
                    tokio::spawn(async move {
                        serve_kv(&services, KvMethod::Range, request, respond).await
                    });
                }
                Some(method) => calls.push(serve_kv(&services, method, request, respond)),
                None => {
                    let timeout = grpc_timeout(request.headers());
                    let routes = services.routes.clone();
                    tokio::spawn(serve_routed(routes, request, respond, timeout));
                }
            },
            Some(Err(error)) => {
                tracing::debug!(%error, "client connection failed");
                return;
            }
            // Closed, or gone away with every call finished.
            None => return,
        }
    }
}

/// KV's unary methods, served without tonic's server.
#[derive(Debug, Clone, Copy)]
enum KvMethod {
    Range,
    Put,
    DeleteRange,
    Txn,
    Compact,
}

impl KvMethod {
    fn of_path(path: &str) -> Option<KvMethod> {
        Some(match path.strip_prefix("/etcdserverpb.KV/")? {
            "Range" => KvMethod::Range,
            "Put" => KvMethod::Put,
            "DeleteRange" => KvMethod::DeleteRange,
            "Txn" => KvMethod::Txn,
            "Compact" => KvMethod::Compact,
            _ => return None,
        })
    }
}

/// One KV unary call, answered on its stream.
async fn serve_kv(
    services: &Services,
    method: KvMethod,
    request: http::Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    let timeout = grpc_timeout(request.headers());
    let call = within(timeout, call_kv(services, method, request));
    let Some(answer) = unless_reset(&mut respond, call).await else {
        return; // the client reset the stream: nobody to answer
    };
    let _ = match answer {
        Ok((metadata, message)) => send_message(&mut respond, metadata, message),
        Err(status) => send_status(&mut respond, &status),
    };
}

/// Reads the request's message, calls the KV handler and encodes its answer as one gRPC
/// message. Returns the answer's metadata (response headers) too.
async fn call_kv(
    services: &Services,
    method: KvMethod,
    request: http::Request<RecvStream>,
) -> Result<(MetadataMap, Bytes), Status> {
    let (parts, body) = request.into_parts();
    if let Some(encoding) = parts.headers.get("grpc-encoding") {
        if encoding.as_bytes() != b"identity" {
            return Err(Status::unimplemented(format!(
                "messages compressed with {encoding:?} are not supported; send them uncompressed"
            )));
        }
    }
    let message = read_message(body, services.decoding_max).await?;
    let metadata = MetadataMap::from_headers(parts.headers);
    let kv = &*services.kv;
    macro_rules! call {
        ($handler:ident, $request:ty) => {{
            let decoded = <$request>::decode(message)
                .map_err(|e| Status::internal(format!("undecodable request message: {e}")))?;
            let request = Request::from_parts(metadata, parts.extensions, decoded);
            let (metadata, answer, _) = Kv::$handler(kv, request).await?.into_parts();
            (metadata, encode_message(&answer))
        }};
    }
    use ballot_proto::etcdserverpb as pb;
    Ok(match method {
        KvMethod::Range => call!(range, pb::RangeRequest),
        KvMethod::Put => call!(put, pb::PutRequest),
        KvMethod::DeleteRange => call!(delete_range, pb::DeleteRangeRequest),
        KvMethod::Txn => call!(txn, pb::TxnRequest),
        KvMethod::Compact => call!(compact, pb::CompactionRequest),
    })
}

/// The one message of a unary request, its prefix checked; refused as soon as its prefix says
/// it is larger than `limit` (ResourceExhausted, as grpc-go answers), before it is read.
async fn read_message(mut body: RecvStream, limit: usize) -> Result<Bytes, Status> {
    // Most requests arrive in one DATA frame: `first` keeps it without a copy.
    let mut first: Option<Bytes> = None;
    let mut gathered = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(status_of_h2)?;
        let _ = body.flow_control().release_capacity(chunk.len());
        if first.is_none() && gathered.is_empty() {
            first = Some(chunk);
        } else {
            if let Some(earlier) = first.take() {
                gathered.extend_from_slice(&earlier);
            }
            gathered.extend_from_slice(&chunk);
        }
        let received = first.as_deref().unwrap_or(&gathered);
        if received.len() >= MESSAGE_PREFIX_BYTES
            && received.len() > MESSAGE_PREFIX_BYTES + message_len(received, limit)?
        {
            return Err(Status::internal("more than one message in a unary request"));
        }
    }
    let mut message = first.unwrap_or_else(|| gathered.freeze());
    if message.len() < MESSAGE_PREFIX_BYTES
        || message.len() != MESSAGE_PREFIX_BYTES + message_len(&message, limit)?
    {
        return Err(Status::internal("the request ended before its message did"));
    }
    message.advance(MESSAGE_PREFIX_BYTES);
    Ok(message)
}

/// The length a message's prefix gives, refused past `limit` or when compressed.
fn message_len(prefixed: &[u8], limit: usize) -> Result<usize, Status> {
    if prefixed[0] != 0 {
        return Err(Status::unimplemented(
            "compressed messages are not supported; send them uncompressed",
        ));
    }
    let len = u32::from_be_bytes(prefixed[1..5].try_into().expect("4 bytes")) as usize;
    if len > limit {
        return Err(Status::resource_exhausted(format!(
            "grpc: received message larger than max ({len} vs. {limit})"
        )));
    }
    Ok(len)
}

/// `message` as one gRPC message: the uncompressed prefix, then its encoding. Messages here are
/// far below the 4 GiB the prefix can say.
pub fn encode_message(message: &impl Message) -> Bytes {
    let len = message.encoded_len();
    let mut frame = BytesMut::with_capacity(MESSAGE_PREFIX_BYTES + len);
    frame.put_u8(0);
    frame.put_u32(u32::try_from(len).expect("an answer is smaller than 4 GiB"));
    message
        .encode(&mut frame)
        .expect("the buffer was sized for the message");
    frame.freeze()
}

/// An OK answer: headers (with the handler's metadata), the message, `grpc-status: 0`.
fn send_message(
    respond: &mut SendResponse<Bytes>,
    metadata: MetadataMap,
    message: Bytes,
) -> Result<(), h2::Error> {
    let mut response = http::Response::new(());
    *response.headers_mut() = metadata.into_headers();
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, grpc_content_type());
    let mut stream = respond.send_response(response, false)?;
    // Unreserved data waits in h2 for the client's window.
    stream.send_data(message, false)?;
    let mut trailers = HeaderMap::with_capacity(1);
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    stream.send_trailers(trailers)
}

/// A trailers-only answer: the status in the response headers, no body.
fn send_status(respond: &mut SendResponse<Bytes>, status: &Status) -> Result<(), h2::Error> {
    let mut response = http::Response::new(());
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, grpc_content_type());
    if status.add_header(response.headers_mut()).is_err() {
        // Metadata that makes no valid header: the code at least still reaches the client.
        let code = HeaderValue::from(status.code() as i32);
        response.headers_mut().insert("grpc-status", code);
    }
    respond.send_response(response, true).map(drop)
}

fn grpc_content_type() -> HeaderValue {
    HeaderValue::from_static("application/grpc")
}

/// Any other call: tonic's generated services, with the h2 stream as the request body.
async fn serve_routed(
    mut routes: tonic::service::Routes,
    request: http::Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    timeout: Option<Duration>,
) {
    let request = request.map(|stream| {
        tonic::body::Body::new(RequestBody {
            stream,
            data_done: false,
        })
    });
    let ready =
        poll_fn(|cx| Service::<http::Request<tonic::body::Body>>::poll_ready(&mut routes, cx));
    let Ok(()) = ready.await;
    let call = routes.call(request);
    let call = within(timeout, async move {
        let Ok(response) = call.await;
        Ok(response)
    });
    let Some(answer) = unless_reset(&mut respond, call).await else {
        return;
    };
    let response = match answer {
        Ok(response) => response,
        Err(status) => {
            let _ = send_status(&mut respond, &status);
            return;
        }
    };
    let (parts, body) = response.into_parts();
    let ends_here = body.is_end_stream();
    let Ok(stream) = respond.send_response(http::Response::from_parts(parts, ()), ends_here) else {
        return;
    };
    if !ends_here {
        send_body(body, stream).await;
    }
}

/// Writes a response body: each data chunk once the client's window has room, then trailers.
/// Stops (dropping the body, which ends a watch or keep-alive stream) when the client resets.
async fn send_body(mut body: tonic::body::Body, mut stream: SendStream<Bytes>) {
    loop {
        let frame = poll_fn(|cx| {
            if stream.poll_reset(cx).is_ready() {
                return Poll::Ready(None);
            }
            Pin::new(&mut body).poll_frame(cx).map(Some)
        })
        .await;
        let frame = match frame {
            None => return, // reset by the client
            Some(None) => {
                let _ = stream.send_data(Bytes::new(), true);
                return;
            }
            Some(Some(Err(status))) => {
                tracing::debug!(%status, "a response body failed");
                stream.send_reset(h2::Reason::INTERNAL_ERROR);
                return;
            }
            Some(Some(Ok(frame))) => frame,
        };
        let frame = match frame.into_data() {
            Ok(data) => {
                if !data.is_empty() && !window_open(&mut stream).await {
                    return;
                }
                let ends = body.is_end_stream();
                if stream.send_data(data, ends).is_err() || ends {
                    return;
                }
                continue;
            }
            Err(frame) => frame,
        };
        if let Ok(trailers) = frame.into_trailers() {
            stream.reserve_capacity(0);
            let _ = stream.send_trailers(trailers);
            return;
        }
    }
}

/// Waits until the stream may send at least a byte (as hyper does: a claim of one byte, which
/// h2 raises to the data actually queued), so a slow reader holds the body back instead of
/// letting it pile up in memory. False if the stream is gone.
async fn window_open(stream: &mut SendStream<Bytes>) -> bool {
    stream.reserve_capacity(1);
    while stream.capacity() == 0 {
        match poll_fn(|cx| stream.poll_capacity(cx)).await {
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return false,
        }
    }
    true
}

/// A request's h2 stream as an HTTP body for tonic, giving the window back as data is read.
struct RequestBody {
    stream: RecvStream,
    data_done: bool,
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match ready!(self.stream.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.stream.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None => self.data_done = true,
            }
        }
        Poll::Ready(match ready!(self.stream.poll_trailers(cx)) {
            Ok(Some(trailers)) => Some(Ok(Frame::trailers(trailers))),
            Ok(None) => None,
            Err(error) => Some(Err(error)),
        })
    }

    fn is_end_stream(&self) -> bool {
        self.stream.is_end_stream()
    }
}

/// Runs `call` unless the client resets the stream first (`None`).
async fn unless_reset<T>(
    respond: &mut SendResponse<Bytes>,
    call: impl Future<Output = T>,
) -> Option<T> {
    let mut call = pin!(call);
    poll_fn(|cx| {
        if let Poll::Ready(answer) = call.as_mut().poll(cx) {
            return Poll::Ready(Some(answer));
        }
        if respond.poll_reset(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}

/// Bounds `call` by the client's `grpc-timeout`, answering as tonic does when it expires.
async fn within<T>(
    timeout: Option<Duration>,
    call: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    match timeout {
        None => call.await,
        Some(timeout) => tokio::time::timeout(timeout, call)
            .await
            .unwrap_or_else(|_| Err(Status::cancelled("Timeout expired"))),
    }
}

/// The `grpc-timeout` header (PROTOCOL-HTTP2.md: at most 8 digits and a unit), or `None` when
/// absent or malformed (tonic ignores a malformed one too).
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get("grpc-timeout")?.to_str().ok()?;
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value * 3600),
        "M" => Duration::from_secs(value * 60),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

fn status_of_h2(error: h2::Error) -> Status {
    Status::unavailable(format!("HTTP/2: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_every_unit_and_refuse_malformed_values() {
        let parse = |text: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert("grpc-timeout", HeaderValue::from_static(text));
            grpc_timeout(&headers)
        };
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse("4999m"), Some(Duration::from_millis(4999)));
        assert_eq!(parse("10u"), Some(Duration::from_micros(10)));
        assert_eq!(parse("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "S", "123456789S", "5s", "-5S", "5 S", "5"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
    }

    #[tokio::test]
    async fn a_call_past_its_grpc_timeout_is_cancelled_as_tonic_answers() {
        let late = within(
            Some(Duration::from_millis(5)),
            std::future::pending::<Result<(), Status>>(),
        )
        .await
        .unwrap_err();
        assert_eq!(late.code(), tonic::Code::Cancelled);
        assert_eq!(late.message(), "Timeout expired");
        let on_time = within(Some(Duration::from_secs(5)), async { Ok::<_, Status>(7) }).await;
        assert_eq!(on_time.unwrap(), 7);
        assert_eq!(within(None, async { Ok::<_, Status>(8) }).await.unwrap(), 8);
    }

    #[test]
    fn only_kv_unary_paths_take_the_fast_path() {
        assert!(matches!(
            KvMethod::of_path("/etcdserverpb.KV/Put"),
            Some(KvMethod::Put)
        ));
        assert!(matches!(
            KvMethod::of_path("/etcdserverpb.KV/Compact"),
            Some(KvMethod::Compact)
        ));
        for other in [
            "/etcdserverpb.Watch/Watch",
            "/etcdserverpb.KV/Nothing",
            "/etcdserverpb.KVX/Put",
            "/etcdserverpb.Lease/LeaseKeepAlive",
        ] {
            assert!(KvMethod::of_path(other).is_none(), "{other}");
        }
    }

    #[test]
    fn a_message_prefix_past_the_limit_is_resource_exhausted_and_compression_refused() {
        let mut prefix = vec![0u8];
        prefix.extend_from_slice(&1000u32.to_be_bytes());
        assert_eq!(message_len(&prefix, 1000).unwrap(), 1000);
        let refused = message_len(&prefix, 999).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("1000 vs. 999"), "{refused:?}");
        prefix[0] = 1;
        assert_eq!(
            message_len(&prefix, 1000).unwrap_err().code(),
            tonic::Code::Unimplemented
        );
    }
}
