//! The three wire protocols as `Target`s: HTTP JSON and HTTP binary (hyper,
//! HTTP/1.1 keep-alive or HTTP/2 prior knowledge) and gRPC (tonic, raw
//! contents, one or more multiplexed connections). Plus trivial endpoints to
//! measure the load tester's own ceiling.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use switchyard_proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use switchyard_proto::{ModelInferRequest, ServerLiveRequest};
use tonic::transport::{Channel, Endpoint};

use crate::drive::Target;
use crate::validate::Expectation;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn http_client(http2: bool, timeout: Duration) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(timeout));
    Client::builder(TokioExecutor::new())
        .http2_only(http2)
        .pool_max_idle_per_host(usize::MAX)
        .build(connector)
}

pub async fn grpc_channels(
    addr: &str,
    connections: usize,
    timeout: Duration,
) -> Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections.max(1) {
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect_timeout(timeout)
            .timeout(timeout)
            .connect()
            .await
            .with_context(|| format!("connecting to gRPC at {addr}"))?;
        channels.push(channel);
    }
    Ok(channels)
}

/// What one request sends, prepared once and cloned cheaply per request.
pub enum Wire {
    HttpInfer {
        client: HttpClient,
        uri: http::Uri,
        body: Bytes,
        header_len: Option<usize>,
    },
    HttpGet {
        client: HttpClient,
        uri: http::Uri,
    },
    GrpcInfer {
        channels: Vec<Channel>,
        request: ModelInferRequest,
    },
    GrpcLive {
        channels: Vec<Channel>,
    },
}

pub struct WireTarget {
    pub wire: Wire,
    pub expectation: Arc<Expectation>,
    pub timeout: Duration,
    next_channel: AtomicUsize,
}

impl WireTarget {
    pub fn new(wire: Wire, expectation: Expectation, timeout: Duration) -> Self {
        WireTarget {
            wire,
            expectation: Arc::new(expectation),
            timeout,
            next_channel: AtomicUsize::new(0),
        }
    }

    fn channel<'a>(&self, channels: &'a [Channel]) -> &'a Channel {
        let i = self.next_channel.fetch_add(1, Ordering::Relaxed) % channels.len().max(1);
        &channels[i]
    }

    async fn send_inner(&self) -> Result<(), String> {
        match &self.wire {
            Wire::HttpInfer {
                client,
                uri,
                body,
                header_len,
            } => {
                let mut request = Request::builder()
                    .method(Method::POST)
                    .uri(uri.clone())
                    .body(Full::new(body.clone()))
                    .map_err(|_| "transport".to_owned())?;
                let headers = request.headers_mut();
                match header_len {
                    Some(len) => {
                        headers.insert("inference-header-content-length", HeaderValue::from(*len));
                        headers.insert(
                            http::header::CONTENT_TYPE,
                            HeaderValue::from_static("application/octet-stream"),
                        );
                    }
                    None => {
                        headers.insert(
                            http::header::CONTENT_TYPE,
                            HeaderValue::from_static("application/json"),
                        );
                    }
                }
                let response = client
                    .request(request)
                    .await
                    .map_err(|_| "transport".to_owned())?;
                let status = response.status().as_u16();
                let header_len = response
                    .headers()
                    .get("inference-header-content-length")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok());
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|_| "transport".to_owned())?
                    .to_bytes();
                self.expectation.check_http(status, header_len, &body)
            }
            Wire::HttpGet { client, uri } => {
                let request = Request::builder()
                    .uri(uri.clone())
                    .body(Full::new(Bytes::new()))
                    .map_err(|_| "transport".to_owned())?;
                let response = client
                    .request(request)
                    .await
                    .map_err(|_| "transport".to_owned())?;
                let status = response.status().as_u16();
                let _ = response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|_| "transport".to_owned())?;
                if status == 200 {
                    Ok(())
                } else {
                    Err(format!("http_{status}"))
                }
            }
            Wire::GrpcInfer { channels, request } => {
                let mut client = GrpcInferenceServiceClient::new(self.channel(channels).clone())
                    .max_decoding_message_size(usize::MAX)
                    .max_encoding_message_size(usize::MAX);
                let response = client
                    .model_infer(request.clone())
                    .await
                    .map_err(|status| format!("grpc_{:?}", status.code()))?;
                self.expectation.check_grpc(response.get_ref())
            }
            Wire::GrpcLive { channels } => {
                let mut client = GrpcInferenceServiceClient::new(self.channel(channels).clone());
                client
                    .server_live(ServerLiveRequest {})
                    .await
                    .map_err(|status| format!("grpc_{:?}", status.code()))?;
                Ok(())
            }
        }
    }
}

impl Target for WireTarget {
    async fn send(&self) -> Result<(), String> {
        match tokio::time::timeout(self.timeout, self.send_inner()).await {
            Ok(result) => result,
            Err(_) => Err("timeout".to_owned()),
        }
    }
}
