//! The bench's unary gRPC client: etcd's KV calls (Range, Put, Txn) on an HTTP/2 connection
//! driven by `h2` directly.
//!
//! The bench shares the machine's cores with the servers it measures, so what it spends per
//! request is taken from them. tonic's channel puts a tower buffer (an mpsc queue and a worker
//! task), hyper's client and tonic's streaming codec between a client and the connection: a
//! profile of 256-client puts put a quarter of the bench's CPU there. A unary call needs none of
//! it: one HEADERS and one DATA frame out, headers, one message and trailers back.
//!
//! What goes on the wire is ordinary gRPC (PROTOCOL-HTTP2.md): `content-type: application/grpc`,
//! `te: trailers`, a length-prefixed uncompressed message, and the status in `grpc-status` /
//! `grpc-message` (trailers, or headers of a trailers-only response). Watches still use tonic
//! ([`super::watch`]): they are streams, and few.

use ballot_server::coalesce::CoalescedStream;
use ballot_server::etcd::kv::GROUP_HEADER;
use ballot_server::etcd::serve::{encode_message, MESSAGE_PREFIX_BYTES};
use bytes::{Buf, Bytes, BytesMut};
use prost::Message;
use tonic::codegen::http::{self, header, HeaderMap, HeaderValue, Method, Request, Uri};
use tonic::{Code, Status};

/// Stream and connection receive windows: hyper's client defaults (2 MiB and 5 MiB), so a large
/// Range answer is not held to h2's 64 KiB default.
const STREAM_WINDOW_BYTES: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW_BYTES: u32 = 5 * 1024 * 1024;

/// Largest answer accepted (a Range of the whole key space at a large value size fits).
const RESPONSE_BYTES_MAX: usize = 256 * 1024 * 1024;

/// One HTTP/2 connection to an endpoint; clones share it (each call is one stream).
#[derive(Clone)]
pub struct Connection {
    send: h2::client::SendRequest<Bytes>,
    authority: http::uri::Authority,
    /// The `ballot-group` metadata of every call, when not group 0's.
    group: Option<HeaderValue>,
}

impl Connection {
    /// Dials `url` (`http://host:port`) with `TCP_NODELAY` and writes gathered until a flush
    /// ([`CoalescedStream`], as the server does), and starts the task that drives the connection.
    pub async fn dial(url: &str) -> Result<Connection, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("invalid endpoint {url:?}: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!(
                "invalid endpoint {url:?}: the bench speaks plaintext HTTP/2 only (http://host:port)"
            ));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("invalid endpoint {url:?}: no host:port"))?;
        let host = authority.host().trim_matches(['[', ']']).to_owned();
        let port = authority.port_u16().unwrap_or(80);
        let stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (send, connection) = h2::client::Builder::new()
            .enable_push(false)
            .initial_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
            .handshake::<_, Bytes>(CoalescedStream::new(stream))
            .await
            .map_err(|e| format!("HTTP/2 handshake failed: {e}"))?;
        tokio::spawn(async move {
            // Ends when every handle is dropped or the server goes away; the calls in flight
            // then fail with the connection's error, which is what the report counts.
            let _ = connection.await;
        });
        Ok(Connection {
            send,
            authority,
            group: None,
        })
    }

    /// The same connection, its calls addressed to `group` (a ballot group other than 0).
    pub fn in_group(mut self, group: u32) -> Connection {
        self.group = Some(HeaderValue::from(group));
        self
    }

    /// Calls the unary method `path` (`/etcdserverpb.KV/Put`) with `request`.
    pub async fn unary<Req: Message, Resp: Message + Default>(
        &mut self,
        path: &'static str,
        request: &Req,
    ) -> Result<Resp, Status> {
        let uri = Uri::builder()
            .scheme(http::uri::Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()
            .expect("a scheme, an authority and a static path make a URI");
        let mut head = Request::new(());
        *head.method_mut() = Method::POST;
        *head.uri_mut() = uri;
        let headers = head.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        if let Some(group) = &self.group {
            headers.insert(GROUP_HEADER, group.clone());
        }

        // Values are at most 1 MiB (`--value-size`): far below what a prefix can say.
        let frame = encode_message(request);

        let send = std::future::poll_fn(|cx| self.send.poll_ready(cx));
        send.await.map_err(status_of_h2)?;
        let (response, mut body) = self.send.send_request(head, false).map_err(status_of_h2)?;
        // Unreserved data waits in h2's buffer for window: a request larger than the server's
        // window goes out as the server grants it.
        body.send_data(frame, true).map_err(status_of_h2)?;

        let (parts, mut answer) = response.await.map_err(status_of_h2)?.into_parts();
        if parts.status != http::StatusCode::OK {
            return Err(Status::unknown(format!(
                "the server answered HTTP status {} instead of a gRPC response",
                parts.status
            )));
        }
        if let Some(status) = failed(&parts.headers) {
            return Err(status); // a trailers-only response: an error, no message
        }
        let message = read_message(&mut answer).await?;
        let trailers = answer
            .trailers()
            .await
            .map_err(status_of_h2)?
            .ok_or_else(|| Status::internal("the response ended without grpc-status trailers"))?;
        if let Some(status) = failed(&trailers) {
            return Err(status);
        }
        if trailers.get("grpc-status").is_none() {
            return Err(Status::internal(
                "the response trailers carry no grpc-status",
            ));
        }
        let message =
            message.ok_or_else(|| Status::internal("a successful response carried no message"))?;
        Resp::decode(message).map_err(|e| Status::internal(format!("undecodable response: {e}")))
    }
}

/// The status in `headers` if it is not OK.
fn failed(headers: &HeaderMap) -> Option<Status> {
    match headers.get("grpc-status") {
        Some(code) if code.as_bytes() == b"0" => None,
        Some(_) => Status::from_header_map(headers),
        None => None,
    }
}

/// Reads the response's one message (or none), giving its window back as data arrives.
async fn read_message(answer: &mut h2::RecvStream) -> Result<Option<Bytes>, Status> {
    let mut first: Option<Bytes> = None;
    let mut gathered = BytesMut::new();
    while let Some(chunk) = answer.data().await {
        let chunk = chunk.map_err(status_of_h2)?;
        let _ = answer.flow_control().release_capacity(chunk.len());
        match first.take() {
            // Most answers arrive in one DATA frame: keep it without copying.
            None if gathered.is_empty() => first = Some(chunk),
            None => gathered.extend_from_slice(&chunk),
            Some(previous) => {
                gathered.extend_from_slice(&previous);
                gathered.extend_from_slice(&chunk);
            }
        }
        if first.as_ref().map_or(gathered.len(), Bytes::len) > RESPONSE_BYTES_MAX {
            return Err(Status::resource_exhausted(format!(
                "response larger than the bench accepts ({RESPONSE_BYTES_MAX} bytes)"
            )));
        }
    }
    let mut bytes = first.unwrap_or_else(|| gathered.freeze());
    if bytes.is_empty() {
        return Ok(None);
    }
    if bytes.len() < MESSAGE_PREFIX_BYTES {
        return Err(Status::internal(
            "a response message shorter than its prefix",
        ));
    }
    let compressed = bytes.get_u8();
    let len = bytes.get_u32() as usize;
    if compressed != 0 {
        return Err(Status::internal(
            "a compressed response, which the bench did not ask for",
        ));
    }
    if bytes.len() != len {
        return Err(Status::internal(format!(
            "a response message of {} bytes where its prefix says {len} (one message expected)",
            bytes.len()
        )));
    }
    Ok(Some(bytes))
}

/// A connection or stream error as the status a gRPC client reports for it (gRPC's
/// PROTOCOL-HTTP2.md mapping of RST_STREAM codes; I/O errors: the server is unreachable).
fn status_of_h2(error: h2::Error) -> Status {
    let code = match error.reason() {
        Some(h2::Reason::REFUSED_STREAM) => Code::Unavailable,
        Some(h2::Reason::CANCEL) => Code::Cancelled,
        Some(h2::Reason::ENHANCE_YOUR_CALM) => Code::ResourceExhausted,
        Some(h2::Reason::INADEQUATE_SECURITY) => Code::PermissionDenied,
        Some(_) => Code::Internal,
        None if error.is_io() || error.is_go_away() => Code::Unavailable,
        None => Code::Unknown,
    };
    Status::new(code, format!("HTTP/2: {error}"))
}

#[cfg(test)]
mod tests {
    //! The client against an in-process tonic server whose KV service answers from the request
    //! alone, so each wire case (one message, a message spread over many DATA frames, an error in
    //! a trailers-only response, an unknown method) is asked for directly.

    use super::*;
    use ballot_proto::etcdserverpb::kv_server::{Kv, KvServer};
    use ballot_proto::etcdserverpb::*;
    use ballot_proto::mvccpb::KeyValue;
    use tonic::{Request as GrpcRequest, Response as GrpcResponse};

    /// Put answers with the value's length as the revision and refuses a lease; Range answers
    /// `limit` keys of `limit` KiB values each.
    struct Echo;

    #[tonic::async_trait]
    impl Kv for Echo {
        async fn range(
            &self,
            request: GrpcRequest<RangeRequest>,
        ) -> Result<GrpcResponse<RangeResponse>, Status> {
            let count = request.get_ref().limit;
            let kvs = (0..count)
                .map(|i| KeyValue {
                    key: Bytes::from(format!("k{i}")),
                    value: Bytes::from(vec![i as u8; count as usize * 1024]),
                    ..Default::default()
                })
                .collect();
            Ok(GrpcResponse::new(RangeResponse {
                kvs,
                count,
                ..Default::default()
            }))
        }
        async fn put(
            &self,
            request: GrpcRequest<PutRequest>,
        ) -> Result<GrpcResponse<PutResponse>, Status> {
            let put = request.into_inner();
            if put.lease != 0 {
                return Err(Status::not_found("etcdserver: requested lease not found"));
            }
            Ok(GrpcResponse::new(PutResponse {
                header: Some(ResponseHeader {
                    revision: put.value.len() as i64,
                    ..Default::default()
                }),
                prev_kv: None,
            }))
        }
        async fn delete_range(
            &self,
            _: GrpcRequest<DeleteRangeRequest>,
        ) -> Result<GrpcResponse<DeleteRangeResponse>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
        async fn txn(
            &self,
            _: GrpcRequest<TxnRequest>,
        ) -> Result<GrpcResponse<TxnResponse>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
        async fn compact(
            &self,
            _: GrpcRequest<CompactionRequest>,
        ) -> Result<GrpcResponse<CompactionResponse>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
    }

    async fn serve_echo() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(KvServer::new(Echo).max_decoding_message_size(64 << 20))
                .serve_with_incoming(incoming),
        );
        format!("http://{address}")
    }

    #[tokio::test]
    async fn a_put_and_a_range_spread_over_many_frames_come_back_whole() {
        let mut connection = Connection::dial(&serve_echo().await).await.unwrap();
        // 1 MiB of value: larger than h2's 64 KiB default window, so the request waits for it.
        let put = PutRequest {
            key: Bytes::from_static(b"k"),
            value: Bytes::from(vec![7u8; 1 << 20]),
            ..Default::default()
        };
        let answer: PutResponse = connection
            .unary("/etcdserverpb.KV/Put", &put)
            .await
            .unwrap();
        assert_eq!(answer.header.unwrap().revision, 1 << 20);

        // 40 keys of 40 KiB: 1.6 MB of answer, over a hundred 16 KiB DATA frames.
        let range = RangeRequest {
            key: Bytes::from_static(b"k"),
            limit: 40,
            ..Default::default()
        };
        let answer: RangeResponse = connection
            .unary("/etcdserverpb.KV/Range", &range)
            .await
            .unwrap();
        assert_eq!(answer.kvs.len(), 40);
        for (i, kv) in answer.kvs.iter().enumerate() {
            assert_eq!(kv.key, format!("k{i}").as_bytes());
            assert!(kv.value.len() == 40 * 1024 && kv.value.iter().all(|&b| b == i as u8));
        }
        // A small answer after the large one, on the same connection.
        let range = RangeRequest { limit: 1, ..range };
        let answer: RangeResponse = connection
            .unary("/etcdserverpb.KV/Range", &range)
            .await
            .unwrap();
        assert_eq!(answer.kvs[0].value.len(), 1024);
    }

    #[tokio::test]
    async fn a_refused_call_and_an_unknown_method_carry_their_code_and_message() {
        let mut connection = Connection::dial(&serve_echo().await).await.unwrap();
        let put = PutRequest {
            key: Bytes::from_static(b"k"),
            lease: 42,
            ..Default::default()
        };
        let refused = connection
            .unary::<_, PutResponse>("/etcdserverpb.KV/Put", &put)
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::NotFound);
        assert_eq!(refused.message(), "etcdserver: requested lease not found");

        let unknown = connection
            .unary::<_, PutResponse>("/etcdserverpb.KV/Nothing", &put)
            .await
            .unwrap_err();
        assert_eq!(unknown.code(), Code::Unimplemented, "{unknown:?}");

        // The connection still serves after both.
        let put = PutRequest { lease: 0, ..put };
        let answer: PutResponse = connection
            .unary("/etcdserverpb.KV/Put", &put)
            .await
            .unwrap();
        assert_eq!(answer.header.unwrap().revision, 0);
    }

    #[tokio::test]
    async fn endpoints_that_are_not_plain_http_are_refused_by_name() {
        let error = Connection::dial("https://127.0.0.1:1").await.err().unwrap();
        assert!(error.contains("plaintext HTTP/2 only"), "{error}");
        let error = Connection::dial("http://127.0.0.1:1").await.err().unwrap();
        assert!(error.contains("refused"), "{error}");
    }
}
