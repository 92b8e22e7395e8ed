//! The remote runtime: forwards batches to one or more KServe v2 upstreams
//! over gRPC, so Switchyard can sit in front of Triton, MLServer or KServe as
//! a sidecar or gateway and add batching, routing and hot swaps.
//!
//! One `UpstreamPool` is shared by all instances of a model version:
//! - one HTTP/2 channel per upstream (requests multiplex over it);
//! - load balancing by least in-flight requests between two random healthy
//!   upstreams (power of two choices);
//! - retries only where safe (the upstream answered UNAVAILABLE or could not
//!   be reached), on another upstream, within a retry budget;
//! - passive health: an upstream is ejected after consecutive failures, and an
//!   active probe (`ModelReady` every `probe_interval`) ejects or restores it,
//!   so a dead upstream gives a fast 503 and readiness false, and a restarted
//!   one is used again without restarting Switchyard.
//!
//! `Runtime::run` is blocking: the worker thread waits on the async call
//! through a tokio `Handle` (worker threads are not reactor threads).

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use switchyard_proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use switchyard_proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use switchyard_proto::{
    InferTensorContents, ModelInferRequest, ModelMetadataRequest, ModelReadyRequest,
};
use tokio::runtime::Handle;
use tonic::transport::{Channel, Endpoint};

use crate::{DataType, Health, Runtime, RuntimeError, Signature, Tensor, TensorSpec};

/// How to reach a model on its upstreams.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteOptions {
    /// `host:port` of each upstream's gRPC listener.
    pub upstreams: Vec<String>,
    /// The model's name on the upstream.
    pub model: String,
    /// The upstream version to call (`None`: the upstream's default).
    pub version: Option<String>,
    /// Bound on one upstream call.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Extra attempts on another upstream for safe failures.
    pub retries: u32,
    /// Retries allowed as a fraction of requests (e.g. 0.2), so retries cannot multiply an outage.
    pub retry_budget: f64,
    /// Consecutive failures that eject an upstream.
    pub eject_after: u32,
    /// How often upstreams are probed (ejected ones come back when they answer).
    pub probe_interval: Duration,
}

struct Upstream {
    addr: String,
    channel: Channel,
    in_flight: AtomicUsize,
    consecutive_failures: AtomicU32,
    ejected: Mutex<Option<String>>,
}

impl Upstream {
    fn is_ejected(&self) -> bool {
        self.ejected.lock().map(|e| e.is_some()).unwrap_or(true)
    }

    fn eject(&self, reason: String) {
        if let Ok(mut ejected) = self.ejected.lock() {
            if ejected.is_none() {
                tracing::warn!(upstream = %self.addr, %reason, "Upstream ejected.");
            }
            *ejected = Some(reason);
        }
    }

    fn restore(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        if let Ok(mut ejected) = self.ejected.lock()
            && ejected.take().is_some()
        {
            tracing::info!(upstream = %self.addr, "Upstream healthy again.");
        }
    }
}

pub struct UpstreamPool {
    upstreams: Vec<Upstream>,
    options: RemoteOptions,
    handle: Handle,
    requests: AtomicU64,
    retries: AtomicU64,
}

impl UpstreamPool {
    /// Connects lazily to every upstream and starts the health probe.
    pub fn new(options: RemoteOptions, handle: Handle) -> Result<Arc<Self>, RuntimeError> {
        if options.upstreams.is_empty() {
            return Err(RuntimeError::Load(
                "a remote model needs at least one upstream".to_owned(),
            ));
        }
        let upstreams = options
            .upstreams
            .iter()
            .map(|addr| {
                let uri = if addr.contains("://") {
                    addr.clone()
                } else {
                    format!("http://{addr}")
                };
                let channel = Endpoint::from_shared(uri)
                    .map_err(|e| RuntimeError::Load(format!("upstream `{addr}`: {e}")))?
                    .connect_timeout(options.connect_timeout)
                    .tcp_nodelay(true)
                    .connect_lazy();
                Ok(Upstream {
                    addr: addr.clone(),
                    channel,
                    in_flight: AtomicUsize::new(0),
                    consecutive_failures: AtomicU32::new(0),
                    ejected: Mutex::new(None),
                })
            })
            .collect::<Result<Vec<_>, RuntimeError>>()?;
        let pool = Arc::new(UpstreamPool {
            upstreams,
            options,
            handle: handle.clone(),
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        });
        // Not tracked: the probe ends by itself once the pool is dropped.
        handle.spawn(probe(Arc::downgrade(&pool)));
        Ok(pool)
    }

    fn client(&self, upstream: &Upstream) -> GrpcInferenceServiceClient<Channel> {
        GrpcInferenceServiceClient::new(upstream.channel.clone())
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX)
    }

    /// Two random healthy upstreams not yet tried; the less busy one wins.
    fn pick(&self, tried: &[usize]) -> Option<usize> {
        let healthy: Vec<usize> = (0..self.upstreams.len())
            .filter(|i| !tried.contains(i) && !self.upstreams[*i].is_ejected())
            .collect();
        match healthy.len() {
            0 => None,
            1 => Some(healthy[0]),
            n => {
                // Two distinct positions among the healthy ones.
                let first = rand::random_range(0..n);
                let mut second = rand::random_range(0..n - 1);
                if second >= first {
                    second += 1;
                }
                let (a, b) = (healthy[first], healthy[second]);
                let load = |i: usize| self.upstreams[i].in_flight.load(Ordering::Relaxed);
                Some(if load(b) < load(a) { b } else { a })
            }
        }
    }

    fn retry_allowed(&self) -> bool {
        let requests = self.requests.load(Ordering::Relaxed).max(10) as f64;
        let retries = self.retries.load(Ordering::Relaxed) as f64;
        if retries < requests * self.options.retry_budget {
            self.retries.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    fn failure(&self, index: usize, reason: &str) {
        let upstream = &self.upstreams[index];
        let failures = upstream
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        if failures >= self.options.eject_after {
            upstream.eject(format!("{failures} consecutive failures, last: {reason}"));
        }
    }

    /// Reads the model's signature from the first upstream that answers.
    pub async fn signature(&self) -> Result<Signature, RuntimeError> {
        let mut errors = Vec::new();
        for upstream in &self.upstreams {
            let request = ModelMetadataRequest {
                name: self.options.model.clone(),
                version: self.options.version.clone().unwrap_or_default(),
            };
            match tokio::time::timeout(
                self.options.timeout,
                self.client(upstream).model_metadata(request),
            )
            .await
            {
                Ok(Ok(meta)) => {
                    let meta = meta.into_inner();
                    let convert =
                        |t: &switchyard_proto::model_metadata_response::TensorMetadata| {
                            t.datatype
                                .parse::<DataType>()
                                .map(|dt| TensorSpec::new(t.name.clone(), dt, t.shape.clone()))
                                .map_err(|e| {
                                    RuntimeError::Load(format!("upstream `{}`: {e}", upstream.addr))
                                })
                        };
                    let inputs = meta
                        .inputs
                        .iter()
                        .map(convert)
                        .collect::<Result<Vec<_>, _>>()?;
                    let outputs = meta
                        .outputs
                        .iter()
                        .map(convert)
                        .collect::<Result<Vec<_>, _>>()?;
                    if inputs.is_empty() || outputs.is_empty() {
                        return Err(RuntimeError::Load(format!(
                            "upstream `{}` lists no inputs or outputs for model `{}`; declare them in the model's config",
                            upstream.addr, self.options.model
                        )));
                    }
                    return Ok(Signature { inputs, outputs });
                }
                Ok(Err(status)) => errors.push(format!("{}: {}", upstream.addr, status.message())),
                Err(_) => errors.push(format!("{}: timed out", upstream.addr)),
            }
        }
        Err(RuntimeError::Load(format!(
            "no upstream gave metadata for model `{}` ({})",
            self.options.model,
            errors.join("; ")
        )))
    }

    async fn infer(
        &self,
        request: ModelInferRequest,
        signature: &Signature,
        traceparent: Option<&str>,
    ) -> Result<Vec<Tensor>, RuntimeError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut tried = Vec::new();
        loop {
            let Some(index) = self.pick(&tried) else {
                return Err(RuntimeError::Unavailable(format!(
                    "no healthy upstream for model `{}`: {}",
                    self.options.model,
                    self.unhealthy_reason()
                )));
            };
            tried.push(index);
            let upstream = &self.upstreams[index];
            upstream.in_flight.fetch_add(1, Ordering::Relaxed);
            let mut call = tonic::Request::new(request.clone());
            call.set_timeout(self.options.timeout);
            if let Some(value) = traceparent.and_then(|t| t.parse().ok()) {
                call.metadata_mut().insert("traceparent", value);
            }
            let result = tokio::time::timeout(
                self.options.timeout,
                self.client(upstream).model_infer(call),
            )
            .await;
            upstream.in_flight.fetch_sub(1, Ordering::Relaxed);
            let status = match result {
                Ok(Ok(response)) => {
                    upstream.consecutive_failures.store(0, Ordering::Relaxed);
                    return decode_response(response.into_inner(), signature, &upstream.addr);
                }
                Ok(Err(status)) => status,
                Err(_) => {
                    self.failure(index, "timed out");
                    // It may have run: not safe to repeat.
                    return Err(RuntimeError::Unavailable(format!(
                        "upstream `{}` did not answer within {:?}",
                        upstream.addr, self.options.timeout
                    )));
                }
            };
            let message = format!("upstream `{}`: {}", upstream.addr, status.message());
            match status.code() {
                tonic::Code::Unavailable => {
                    self.failure(index, status.message());
                    if tried.len() <= self.options.retries as usize
                        && self.pick(&tried).is_some()
                        && self.retry_allowed()
                    {
                        continue;
                    }
                    return Err(RuntimeError::Unavailable(message));
                }
                tonic::Code::InvalidArgument | tonic::Code::NotFound => {
                    return Err(RuntimeError::InvalidInput(message));
                }
                tonic::Code::ResourceExhausted => {
                    return Err(RuntimeError::Unavailable(format!("{message} (overloaded)")));
                }
                _ => return Err(RuntimeError::Execution(message)),
            }
        }
    }

    fn unhealthy_reason(&self) -> String {
        self.upstreams
            .iter()
            .filter_map(|u| {
                u.ejected
                    .lock()
                    .ok()?
                    .clone()
                    .map(|r| format!("{}: {r}", u.addr))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl Health for UpstreamPool {
    fn is_healthy(&self) -> bool {
        self.upstreams.iter().any(|u| !u.is_ejected())
    }

    fn reason(&self) -> String {
        format!("no healthy upstream ({})", self.unhealthy_reason())
    }
}

/// Asks every upstream whether the model is ready, each `probe_interval`.
async fn probe(pool: Weak<UpstreamPool>) {
    loop {
        let Some(strong) = pool.upgrade() else { break };
        let interval = strong.options.probe_interval;
        for upstream in &strong.upstreams {
            let request = ModelReadyRequest {
                name: strong.options.model.clone(),
                version: strong.options.version.clone().unwrap_or_default(),
            };
            let probe_timeout = strong
                .options
                .connect_timeout
                .max(Duration::from_millis(200));
            match tokio::time::timeout(probe_timeout, strong.client(upstream).model_ready(request))
                .await
            {
                Ok(Ok(ready)) if ready.get_ref().ready => upstream.restore(),
                Ok(Ok(_)) => upstream.eject("the upstream says the model is not ready".to_owned()),
                Ok(Err(status)) => upstream.eject(status.message().to_owned()),
                Err(_) => upstream.eject("readiness probe timed out".to_owned()),
            }
        }
        drop(strong);
        tokio::time::sleep(interval).await;
    }
}

/// Typed gRPC contents (as some servers answer) as a raw little-endian buffer.
fn contents_to_raw(datatype: DataType, c: &InferTensorContents) -> Bytes {
    let mut buf = BytesMut::new();
    match datatype {
        DataType::Bool => c
            .bool_contents
            .iter()
            .for_each(|&b| buf.put_u8(u8::from(b))),
        DataType::Int8 => c.int_contents.iter().for_each(|&v| buf.put_i8(v as i8)),
        DataType::Int16 => c
            .int_contents
            .iter()
            .for_each(|&v| buf.put_i16_le(v as i16)),
        DataType::Int32 => c.int_contents.iter().for_each(|&v| buf.put_i32_le(v)),
        DataType::Int64 => c.int64_contents.iter().for_each(|&v| buf.put_i64_le(v)),
        DataType::Uint8 => c.uint_contents.iter().for_each(|&v| buf.put_u8(v as u8)),
        DataType::Uint16 => c
            .uint_contents
            .iter()
            .for_each(|&v| buf.put_u16_le(v as u16)),
        DataType::Uint32 => c.uint_contents.iter().for_each(|&v| buf.put_u32_le(v)),
        DataType::Uint64 => c.uint64_contents.iter().for_each(|&v| buf.put_u64_le(v)),
        DataType::Fp32 => c.fp32_contents.iter().for_each(|&v| buf.put_f32_le(v)),
        DataType::Fp64 => c.fp64_contents.iter().for_each(|&v| buf.put_f64_le(v)),
        DataType::Bytes => c.bytes_contents.iter().for_each(|v| {
            buf.put_u32_le(v.len() as u32);
            buf.put_slice(v);
        }),
        DataType::Fp16 | DataType::Bf16 => {}
    }
    buf.freeze()
}

fn decode_response(
    response: switchyard_proto::ModelInferResponse,
    signature: &Signature,
    addr: &str,
) -> Result<Vec<Tensor>, RuntimeError> {
    let raw = !response.raw_output_contents.is_empty();
    let mut outputs = Vec::with_capacity(signature.outputs.len());
    for spec in &signature.outputs {
        let index = response
            .outputs
            .iter()
            .position(|o| o.name == spec.name)
            .ok_or_else(|| {
                RuntimeError::Execution(format!(
                    "upstream `{addr}` returned no output `{}`",
                    spec.name
                ))
            })?;
        let output = &response.outputs[index];
        let datatype: DataType = output
            .datatype
            .parse()
            .map_err(|e| RuntimeError::Execution(format!("upstream `{addr}`: {e}")))?;
        let data = if raw {
            response
                .raw_output_contents
                .get(index)
                .cloned()
                .unwrap_or_default()
        } else {
            contents_to_raw(
                datatype,
                output
                    .contents
                    .as_ref()
                    .unwrap_or(&InferTensorContents::default()),
            )
        };
        let tensor = Tensor::new(spec.name.clone(), datatype, output.shape.clone(), data)
            .map_err(|e| RuntimeError::Execution(format!("upstream `{addr}`: {e}")))?;
        outputs.push(tensor);
    }
    Ok(outputs)
}

/// One instance's view of a remote model.
pub struct RemoteRuntime {
    pool: Arc<UpstreamPool>,
    signature: Signature,
}

impl RemoteRuntime {
    /// Reads the signature from the upstreams (blocking; call off the reactor).
    pub fn connect(pool: Arc<UpstreamPool>) -> Result<Self, RuntimeError> {
        let started = Instant::now();
        let signature = pool.handle.block_on(pool.signature())?;
        tracing::debug!(model = %pool.options.model, elapsed_ms = started.elapsed().as_millis() as u64, "Remote signature read.");
        Ok(RemoteRuntime { pool, signature })
    }

    /// Another instance sharing the same pool and signature.
    pub fn instance(&self) -> Self {
        RemoteRuntime {
            pool: self.pool.clone(),
            signature: self.signature.clone(),
        }
    }
}

impl Runtime for RemoteRuntime {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError> {
        self.run_traced(inputs, None)
    }

    fn run_traced(
        &mut self,
        inputs: &[Tensor],
        traceparent: Option<&str>,
    ) -> Result<Vec<Tensor>, RuntimeError> {
        let request = ModelInferRequest {
            model_name: self.pool.options.model.clone(),
            model_version: self.pool.options.version.clone().unwrap_or_default(),
            inputs: inputs
                .iter()
                .map(|t| InferInputTensor {
                    name: t.name().to_owned(),
                    datatype: t.datatype().as_str().to_owned(),
                    shape: t.shape().to_vec(),
                    ..Default::default()
                })
                .collect(),
            outputs: self
                .signature
                .outputs
                .iter()
                .map(|o| InferRequestedOutputTensor {
                    name: o.name.clone(),
                    ..Default::default()
                })
                .collect(),
            raw_input_contents: inputs.iter().map(|t| t.data().clone()).collect(),
            ..Default::default()
        };
        self.pool
            .handle
            .block_on(self.pool.infer(request, &self.signature, traceparent))
    }

    fn health(&self) -> Option<Arc<dyn Health>> {
        Some(self.pool.clone())
    }
}
