//! The remote runtime: forwards requests to one or more KServe v2 upstreams
//! (gRPC in `grpc`, HTTP/REST in `http`), so Switchyard can sit in front of
//! Triton, MLServer or KServe as a sidecar or gateway and add batching,
//! routing and hot swaps.
//!
//! One `UpstreamPool` is shared by all instances of a model version:
//! - one connection pool per upstream, TLS (CA, client certificate) and the
//!   configured headers (an auth token) on every call;
//! - each request's own parameters and requested outputs are passed on, and
//!   its remaining deadline bounds the upstream call (`grpc-timeout`);
//! - load balancing by least in-flight requests between two random healthy
//!   upstreams (power of two choices), except that the requests of one
//!   sequence (`sequence_id`) stay on the upstream that took its first one;
//!   when that upstream dies the sequence fails clearly instead of moving to
//!   an upstream that never saw its state;
//! - retries only where safe (the upstream could not be reached or said
//!   UNAVAILABLE), on another upstream, within a retry budget over a sliding
//!   window (tower's `TpsBudget`), so retries cannot multiply an outage;
//! - passive health: an upstream is ejected after consecutive failures, and an
//!   active probe (model readiness every `probe_interval`) ejects or restores it.
//!
//! `Runtime::run` is blocking: the worker thread waits on the async call
//! through a tokio `Handle` (worker threads are not reactor threads).

mod grpc;
mod http;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tonic::codegen::http::{HeaderMap, HeaderName, HeaderValue};
use tower::retry::budget::{Budget, TpsBudget};

use crate::{Call, Health, Parameter, Runtime, RuntimeError, Sequence, Signature, Tensor};

/// How upstreams are called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    Grpc,
    Http,
}

/// TLS to upstreams, read from files at load.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TlsFiles {
    /// CA bundle the upstreams' certificates chain to (default: the system's roots).
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key, for upstreams that require one (mutual TLS).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// The name to check the upstream's certificate against (gRPC), when it differs from the host.
    pub server_name: Option<String>,
}

/// How to reach a model on its upstreams.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteOptions {
    /// `host:port` (or a URL) of each upstream's listener for `protocol`.
    pub upstreams: Vec<String>,
    /// The model's name on the upstream.
    pub model: String,
    /// The upstream version to call (`None`: the upstream's default).
    pub version: Option<String>,
    pub protocol: Protocol,
    /// HTTP only: send and ask for the binary tensor extension instead of JSON.
    pub binary_data: bool,
    /// `Some` turns TLS on (also on for `https://` upstreams).
    pub tls_files: Option<TlsFiles>,
    /// Sent with every call (e.g. `authorization: Bearer …`).
    pub headers: Vec<(String, String)>,
    /// Bound on one upstream call (a request's own shorter deadline wins).
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Extra attempts on another upstream for safe failures.
    pub retries: u32,
    /// Retries allowed as a fraction of recent requests (e.g. 0.2).
    pub retry_budget: f64,
    /// Consecutive failures that eject an upstream.
    pub eject_after: u32,
    /// How often upstreams are probed (ejected ones come back when they answer).
    pub probe_interval: Duration,
    /// A sequence unused this long is forgotten (its upstream may be chosen afresh).
    pub sequence_idle_timeout: Duration,
}

/// TLS material, read once.
#[derive(Debug, Clone, Default)]
struct TlsMaterial {
    ca_pem: Option<Vec<u8>>,
    identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    server_name: Option<String>,
}

impl TlsMaterial {
    fn read(files: &TlsFiles) -> Result<Self, String> {
        let read = |what: &str, path: &PathBuf| {
            std::fs::read(path).map_err(|e| format!("remote.tls.{what} {}: {e}", path.display()))
        };
        let identity_pem = match (&files.cert_file, &files.key_file) {
            (Some(cert), Some(key)) => Some((read("cert_file", cert)?, read("key_file", key)?)),
            (None, None) => None,
            _ => return Err("remote.tls needs both cert_file and key_file, or neither".to_owned()),
        };
        Ok(TlsMaterial {
            ca_pem: files
                .ca_file
                .as_ref()
                .map(|p| read("ca_file", p))
                .transpose()?,
            identity_pem,
            server_name: files.server_name.clone(),
        })
    }
}

/// What the transports need, with TLS already read.
pub(crate) struct Settings<'a> {
    options: &'a RemoteOptions,
    tls: Option<TlsMaterial>,
}

impl std::ops::Deref for Settings<'_> {
    type Target = RemoteOptions;
    fn deref(&self) -> &RemoteOptions {
        self.options
    }
}

/// An upstream's base URL: as given when it has a scheme, else https with
/// TLS configured and http without.
fn upstream_url(addr: &str, tls: bool) -> String {
    if addr.contains("://") {
        addr.trim_end_matches('/').to_owned()
    } else if tls {
        format!("https://{addr}")
    } else {
        format!("http://{addr}")
    }
}

/// One call to one upstream.
pub(crate) struct Outgoing<'a> {
    model: &'a str,
    version: Option<&'a str>,
    inputs: &'a [Tensor],
    outputs: &'a [String],
    parameters: &'a [(String, Parameter)],
    timeout: Duration,
    traceparent: Option<&'a str>,
}

/// How a call to one upstream failed.
pub(crate) enum Failure {
    /// It never ran there (no connection, UNAVAILABLE, 502–504): safe to try another upstream.
    Unreachable(String),
    /// No answer in time; it may have run, so it is not repeated.
    TimedOut,
    /// The upstream refused the request (bad input, unknown model).
    Invalid(String),
    Overloaded(String),
    Failed(String),
}

enum Transport {
    Grpc(grpc::GrpcUpstream),
    Http(http::HttpUpstream),
}

impl Transport {
    async fn infer(&self, call: &Outgoing<'_>) -> Result<Vec<Tensor>, Failure> {
        match self {
            Transport::Grpc(upstream) => upstream.infer(call).await,
            Transport::Http(upstream) => upstream.infer(call).await,
        }
    }

    async fn ready(
        &self,
        model: &str,
        version: Option<&str>,
        timeout: Duration,
    ) -> Result<bool, String> {
        match self {
            Transport::Grpc(upstream) => upstream.ready(model, version, timeout).await,
            Transport::Http(upstream) => upstream.ready(model, version, timeout).await,
        }
    }

    async fn metadata(
        &self,
        model: &str,
        version: Option<&str>,
        timeout: Duration,
    ) -> Result<Signature, String> {
        match self {
            Transport::Grpc(upstream) => upstream.metadata(model, version, timeout).await,
            Transport::Http(upstream) => upstream.metadata(model, version, timeout).await,
        }
    }
}

struct Upstream {
    addr: String,
    transport: Transport,
    in_flight: AtomicUsize,
    consecutive_failures: AtomicU32,
    ejected: Mutex<Option<String>>,
    /// Answered at least once: losing it then is news worth a warning.
    seen_healthy: std::sync::atomic::AtomicBool,
}

impl Upstream {
    fn is_ejected(&self) -> bool {
        self.ejected.lock().map(|e| e.is_some()).unwrap_or(true)
    }

    fn eject(&self, reason: String) {
        if let Ok(mut ejected) = self.ejected.lock() {
            if ejected.is_none() {
                if self.seen_healthy.load(Ordering::Relaxed) {
                    tracing::warn!(upstream = %self.addr, %reason, "Upstream ejected.");
                } else {
                    tracing::debug!(upstream = %self.addr, %reason, "Upstream not reachable yet.");
                }
            }
            *ejected = Some(reason);
        }
    }

    fn restore(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.seen_healthy.store(true, Ordering::Relaxed);
        if let Ok(mut ejected) = self.ejected.lock()
            && ejected.take().is_some()
        {
            tracing::info!(upstream = %self.addr, "Upstream healthy again.");
        }
    }
}

/// Which upstream holds each live sequence.
struct Sequences {
    held: Mutex<HashMap<String, (usize, Instant)>>,
    idle_timeout: Duration,
}

/// Sequences remembered before idle ones are swept.
const SEQUENCE_SWEEP_AT: usize = 4096;

impl Sequences {
    fn get(&self, id: &str) -> Option<usize> {
        let mut held = self.held.lock().ok()?;
        let entry = held.get_mut(id)?;
        if entry.1.elapsed() > self.idle_timeout {
            held.remove(id);
            return None;
        }
        entry.1 = Instant::now();
        Some(entry.0)
    }

    fn hold(&self, id: &str, upstream: usize) {
        if let Ok(mut held) = self.held.lock() {
            if held.len() >= SEQUENCE_SWEEP_AT {
                let idle = self.idle_timeout;
                held.retain(|_, (_, used)| used.elapsed() <= idle);
            }
            held.insert(id.to_owned(), (upstream, Instant::now()));
        }
    }

    fn forget(&self, id: &str) {
        if let Ok(mut held) = self.held.lock() {
            held.remove(id);
        }
    }
}

pub struct UpstreamPool {
    upstreams: Vec<Upstream>,
    options: RemoteOptions,
    handle: Handle,
    budget: TpsBudget,
    sequences: Sequences,
}

impl UpstreamPool {
    /// Connects lazily to every upstream and starts the health probe.
    pub fn new(options: RemoteOptions, handle: Handle) -> Result<Arc<Self>, RuntimeError> {
        if options.upstreams.is_empty() {
            return Err(RuntimeError::Load(
                "a remote model needs at least one upstream".to_owned(),
            ));
        }
        let tls = options
            .tls_files
            .as_ref()
            .map(TlsMaterial::read)
            .transpose()
            .map_err(RuntimeError::Load)?;
        let headers = header_map(&options.headers).map_err(RuntimeError::Load)?;
        let settings = Settings {
            options: &options,
            tls,
        };
        // Building clients (TLS roots, reqwest) needs the runtime entered.
        let _entered = handle.enter();
        let upstreams = options
            .upstreams
            .iter()
            .map(|addr| {
                let transport = match options.protocol {
                    Protocol::Grpc => {
                        Transport::Grpc(grpc::GrpcUpstream::new(addr, &settings, headers.clone())?)
                    }
                    Protocol::Http => {
                        Transport::Http(http::HttpUpstream::new(addr, &settings, headers.clone())?)
                    }
                };
                Ok(Upstream {
                    addr: addr.clone(),
                    transport,
                    in_flight: AtomicUsize::new(0),
                    consecutive_failures: AtomicU32::new(0),
                    ejected: Mutex::new(None),
                    seen_healthy: std::sync::atomic::AtomicBool::new(false),
                })
            })
            .collect::<Result<Vec<_>, String>>()
            .map_err(RuntimeError::Load)?;
        let percent = (options.retry_budget * 100.0).clamp(0.0, 1000.0) as f32;
        let pool = Arc::new(UpstreamPool {
            upstreams,
            // Ten seconds of history; a trickle of retries is always allowed.
            budget: TpsBudget::new(Duration::from_secs(10), 1, percent / 100.0),
            sequences: Sequences {
                held: Mutex::new(HashMap::new()),
                idle_timeout: options.sequence_idle_timeout,
            },
            options,
            handle: handle.clone(),
        });
        // Not tracked: the probe ends by itself once the pool is dropped.
        handle.spawn(probe(Arc::downgrade(&pool)));
        Ok(pool)
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
            match upstream
                .transport
                .metadata(
                    &self.options.model,
                    self.options.version.as_deref(),
                    self.options.timeout,
                )
                .await
            {
                Ok(signature) if signature.inputs.is_empty() || signature.outputs.is_empty() => {
                    return Err(RuntimeError::Load(format!(
                        "upstream `{}` lists no inputs or outputs for model `{}`; declare them in the model's config",
                        upstream.addr, self.options.model
                    )));
                }
                Ok(signature) => return Ok(signature),
                Err(err) => errors.push(format!("{}: {err}", upstream.addr)),
            }
        }
        // Not up yet (a sidecar's model server starts after us): worth retrying.
        Err(RuntimeError::Unavailable(format!(
            "no upstream gave metadata for model `{}` ({})",
            self.options.model,
            errors.join("; ")
        )))
    }

    /// The upstream a sequence's request must go to, if it is held.
    fn sequence_upstream(&self, sequence: &Sequence) -> Result<Option<usize>, RuntimeError> {
        if sequence.start {
            self.sequences.forget(&sequence.id);
            return Ok(None);
        }
        let Some(index) = self.sequences.get(&sequence.id) else {
            return Ok(None);
        };
        let upstream = &self.upstreams[index];
        if let Ok(ejected) = upstream.ejected.lock()
            && let Some(reason) = ejected.as_ref()
        {
            self.sequences.forget(&sequence.id);
            return Err(RuntimeError::Unavailable(format!(
                "sequence `{}` of model `{}` was on upstream `{}`, which is down ({reason}); its state \
                 went with it, so it is not moved: start the sequence again (sequence_start)",
                sequence.id, self.options.model, upstream.addr
            )));
        }
        Ok(Some(index))
    }

    async fn infer(
        &self,
        mut call: Outgoing<'_>,
        sequence: Option<&Sequence>,
        deadline: Option<Instant>,
    ) -> Result<Vec<Tensor>, RuntimeError> {
        self.budget.deposit();
        let held = match sequence {
            Some(sequence) => self.sequence_upstream(sequence)?,
            None => None,
        };
        let mut tried = Vec::new();
        loop {
            let index = match held {
                Some(index) => index,
                None => self.pick(&tried).ok_or_else(|| {
                    RuntimeError::Unavailable(format!(
                        "no healthy upstream for model `{}`: {}",
                        self.options.model,
                        self.unhealthy_reason()
                    ))
                })?,
            };
            tried.push(index);
            // The request's remaining time, when sooner than the model's bound.
            call.timeout = match deadline {
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(RuntimeError::Unavailable(format!(
                            "the request's deadline passed before it reached an upstream of model `{}`",
                            self.options.model
                        )));
                    }
                    left.min(self.options.timeout)
                }
                None => self.options.timeout,
            };
            if let Some(sequence) = sequence {
                self.sequences.hold(&sequence.id, index);
            }
            let upstream = &self.upstreams[index];
            upstream.in_flight.fetch_add(1, Ordering::Relaxed);
            let result = upstream.transport.infer(&call).await;
            upstream.in_flight.fetch_sub(1, Ordering::Relaxed);
            if let Some(sequence) = sequence.filter(|s| s.end) {
                self.sequences.forget(&sequence.id);
            }
            let failure = match result {
                Ok(outputs) => {
                    upstream.consecutive_failures.store(0, Ordering::Relaxed);
                    upstream.seen_healthy.store(true, Ordering::Relaxed);
                    return Ok(outputs);
                }
                Err(failure) => failure,
            };
            let addr = &upstream.addr;
            match failure {
                Failure::Unreachable(reason) => {
                    self.failure(index, &reason);
                    // A sequence never moves; anything else may try another upstream.
                    let may_retry = held.is_none()
                        && sequence.is_none_or(|s| s.start)
                        && tried.len() <= self.options.retries as usize
                        && self.pick(&tried).is_some()
                        && self.budget.withdraw();
                    if may_retry {
                        continue;
                    }
                    return Err(RuntimeError::Unavailable(format!(
                        "upstream `{addr}`: {reason}"
                    )));
                }
                Failure::TimedOut => {
                    self.failure(index, "timed out");
                    return Err(RuntimeError::Unavailable(format!(
                        "upstream `{addr}` did not answer within {:?}",
                        call.timeout
                    )));
                }
                Failure::Invalid(reason) => {
                    return Err(RuntimeError::InvalidInput(format!(
                        "upstream `{addr}`: {reason}"
                    )));
                }
                Failure::Overloaded(reason) => {
                    return Err(RuntimeError::Unavailable(format!(
                        "upstream `{addr}`: {reason} (overloaded)"
                    )));
                }
                Failure::Failed(reason) => {
                    return Err(RuntimeError::Execution(format!(
                        "upstream `{addr}`: {reason}"
                    )));
                }
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

/// Header names and values checked once, at load.
fn header_map(headers: &[(String, String)]) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
            .map_err(|_| format!("remote.headers: `{name}` is not a header name"))?;
        let mut value = HeaderValue::from_str(value)
            .map_err(|_| format!("remote.headers: the value of `{name}` is not a header value"))?;
        // Kept out of debug output and logs.
        value.set_sensitive(true);
        map.insert(name, value);
    }
    Ok(map)
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
        let probe_timeout = strong
            .options
            .connect_timeout
            .max(Duration::from_millis(200));
        for upstream in &strong.upstreams {
            match upstream
                .transport
                .ready(
                    &strong.options.model,
                    strong.options.version.as_deref(),
                    probe_timeout,
                )
                .await
            {
                Ok(true) => upstream.restore(),
                Ok(false) => upstream.eject("the upstream says the model is not ready".to_owned()),
                Err(reason) => upstream.eject(reason),
            }
        }
        drop(strong);
        tokio::time::sleep(interval).await;
    }
}

/// One instance's view of a remote model.
pub struct RemoteRuntime {
    pool: Arc<UpstreamPool>,
    signature: Signature,
    all_outputs: Vec<String>,
}

impl RemoteRuntime {
    /// Reads the signature from the upstreams (blocking; call off the reactor).
    pub fn connect(pool: Arc<UpstreamPool>) -> Result<Self, RuntimeError> {
        let started = Instant::now();
        let signature = pool.handle.block_on(pool.signature())?;
        tracing::debug!(model = %pool.options.model, elapsed_ms = started.elapsed().as_millis() as u64, "Remote signature read.");
        let all_outputs = signature.outputs.iter().map(|o| o.name.clone()).collect();
        Ok(RemoteRuntime {
            pool,
            signature,
            all_outputs,
        })
    }

    /// Another instance sharing the same pool and signature.
    pub fn instance(&self) -> Self {
        RemoteRuntime {
            pool: self.pool.clone(),
            signature: self.signature.clone(),
            all_outputs: self.all_outputs.clone(),
        }
    }
}

impl Runtime for RemoteRuntime {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError> {
        self.run_call(inputs, &Call::default())
    }

    fn forwards_requests(&self) -> bool {
        true
    }

    fn run_call(&mut self, inputs: &[Tensor], call: &Call) -> Result<Vec<Tensor>, RuntimeError> {
        let context = call.request.as_deref();
        let outputs = context
            .and_then(|c| c.outputs.as_deref())
            .unwrap_or(&self.all_outputs);
        let outgoing = Outgoing {
            model: &self.pool.options.model,
            version: self.pool.options.version.as_deref(),
            inputs,
            outputs,
            parameters: context.map(|c| &c.parameters[..]).unwrap_or_default(),
            timeout: self.pool.options.timeout,
            traceparent: call.traceparent.as_deref(),
        };
        let sequence = context.and_then(|c| c.sequence.as_ref());
        self.pool
            .handle
            .block_on(self.pool.infer(outgoing, sequence, call.deadline))
    }

    fn health(&self) -> Option<Arc<dyn Health>> {
        Some(self.pool.clone())
    }
}
