//! A loaded model version: its validated config and signature, its batcher
//! (queue, priorities, deadlines, batch forming; see `batcher`), and the
//! worker threads that own its runtime instances. Runtimes never run on the
//! async reactor. Dropping the last handle closes the queue; workers finish
//! what was queued and exit, which frees the runtime's memory.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchyard_runtimes::onnx::OnnxRuntime;
use switchyard_runtimes::remote::{RemoteOptions, RemoteRuntime, UpstreamPool};
use switchyard_runtimes::{Runtime, RuntimeError, Signature, Tensor};
use tokio::sync::mpsc;
use tracing::{error, info};

use crate::config::model::{ModelConfig, Platform};
use crate::error::ApiError;
use crate::metrics::{Metrics, ModelMetrics};
use crate::serve::batcher::{self, Batch, BatcherHandle, BatcherSettings, Submission};

/// File name of the model inside a version folder, per platform.
pub fn model_file_name(platform: Platform) -> &'static str {
    match platform {
        Platform::Onnx => "model.onnx",
        Platform::Torch => "model.pt",
        // Nothing on disk: the model lives on its upstreams.
        Platform::Remote => "",
    }
}

/// Loads a version's `instance_count` runtime instances, one per worker.
pub fn load_runtimes(
    name: &str,
    version_dir: &Path,
    config: &ModelConfig,
) -> Result<Vec<Box<dyn Runtime>>, String> {
    let mut runtimes: Vec<Box<dyn Runtime>> = Vec::with_capacity(config.instance_count);
    match (config.platform, &config.remote) {
        (Platform::Remote, Some(remote)) => {
            let options = RemoteOptions {
                upstreams: remote.upstreams.clone(),
                model: remote.model.clone().unwrap_or_else(|| name.to_owned()),
                version: remote.version.clone(),
                timeout: remote.timeout,
                connect_timeout: remote.connect_timeout,
                retries: remote.retries,
                retry_budget: remote.retry_budget,
                eject_after: remote.eject_after,
                probe_interval: remote.probe_interval,
            };
            let handle = tokio::runtime::Handle::try_current().map_err(|_| {
                "a remote model must be loaded inside the server's runtime".to_owned()
            })?;
            let pool = UpstreamPool::new(options, handle).map_err(|e| e.to_string())?;
            let first = RemoteRuntime::connect(pool).map_err(|e| e.to_string())?;
            for _ in 1..config.instance_count {
                runtimes.push(Box::new(first.instance()));
            }
            runtimes.push(Box::new(first));
        }
        (platform, _) => {
            let file = version_dir.join(model_file_name(platform));
            if !file.is_file() {
                return Err(format!("{} is missing", file.display()));
            }
            for index in 0..config.instance_count {
                let runtime: Box<dyn Runtime> = match (platform, &config.torch) {
                    (Platform::Torch, Some(torch)) => switchyard_runtimes::torch::load(
                        &file,
                        &config.signature_declared(),
                        &torch.instance(index),
                    )
                    .map_err(|err| err.to_string())?,
                    _ => Box::new(
                        OnnxRuntime::load(&file, &config.onnx).map_err(|err| err.to_string())?,
                    ),
                };
                runtimes.push(runtime);
            }
        }
    }
    Ok(runtimes)
}

/// Trips after repeated failed batches: the version then refuses requests
/// (503, readiness false) for a cool-down, and serves again after it; one more
/// failure trips it again at once, a success resets it.
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    consecutive: std::sync::atomic::AtomicU32,
    open_until: Mutex<Option<Instant>>,
}

impl Breaker {
    fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            threshold,
            cooldown,
            consecutive: std::sync::atomic::AtomicU32::new(0),
            open_until: Mutex::new(None),
        }
    }

    fn record(&self, ok: bool) {
        use std::sync::atomic::Ordering;
        if ok {
            self.consecutive.store(0, Ordering::Relaxed);
            return;
        }
        let failures = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= self.threshold
            && let Ok(mut open) = self.open_until.lock()
        {
            if open.is_none_or(|until| until <= Instant::now()) {
                tracing::warn!(failures, cooldown = ?self.cooldown, "Model version failing repeatedly; marked unhealthy.");
            }
            *open = Some(Instant::now() + self.cooldown);
        }
    }

    fn reason(&self) -> Option<String> {
        let open = self.open_until.lock().ok()?;
        open.filter(|until| *until > Instant::now()).map(|until| {
            format!(
                "{} batches failed in a row; unhealthy for another {:?}",
                self.consecutive.load(std::sync::atomic::Ordering::Relaxed),
                until.saturating_duration_since(Instant::now())
            )
        })
    }
}

/// A served model version. Cheap to share (`Arc`); the runtime lives on its workers.
pub struct ModelVersion {
    pub name: String,
    pub version: u64,
    pub config: ModelConfig,
    pub signature: Signature,
    batcher: BatcherHandle,
    /// For runtimes that can become unreachable (remote upstreams).
    health: Option<Arc<dyn switchyard_runtimes::Health>>,
    breaker: Arc<Breaker>,
}

impl std::fmt::Debug for ModelVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelVersion")
            .field("name", &self.name)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl ModelVersion {
    /// Loads `instance_count` runtimes from `version_dir`, starts a worker
    /// thread for each and the batcher. Blocking: call from a blocking context
    /// inside the tokio runtime (the batcher is a task).
    pub fn load(
        name: &str,
        version: u64,
        version_dir: &Path,
        config: &ModelConfig,
        metrics: &Metrics,
    ) -> Result<Arc<Self>, String> {
        let started = Instant::now();
        let mut runtimes = load_runtimes(name, version_dir, config)?;
        let health = runtimes.first().and_then(|rt| rt.health());
        let runtime_health = health.clone();
        let model_signature = runtimes
            .first()
            .map(|rt| rt.signature().clone())
            .unwrap_or_default();
        let signature = config.resolve_signature(&model_signature)?;
        if config.warmup {
            warm_up(&mut runtimes, &signature, config)?;
        }
        let model_metrics = metrics.for_model(name, version);
        let breaker = Arc::new(Breaker::new(
            config.unhealthy_after_failures,
            config.unhealthy_cooldown,
        ));
        let batcher = Self::start(
            name,
            version,
            config,
            &signature,
            runtimes,
            &model_metrics,
            &breaker,
        )?;
        info!(
            model = name,
            version,
            instances = config.instance_count,
            batching = config.dynamic_batching.is_some(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "Model version loaded."
        );
        Ok(Arc::new(ModelVersion {
            name: name.to_owned(),
            version,
            config: config.clone(),
            signature,
            batcher,
            health: runtime_health,
            breaker,
        }))
    }

    /// Starts the batcher and one worker thread per runtime instance.
    pub fn start(
        name: &str,
        version: u64,
        config: &ModelConfig,
        signature: &Signature,
        runtimes: Vec<Box<dyn Runtime>>,
        metrics: &ModelMetrics,
        breaker: &Arc<Breaker>,
    ) -> Result<BatcherHandle, String> {
        let input_names: Vec<String> = signature.inputs.iter().map(|s| s.name.clone()).collect();
        let cut_outputs = config
            .dynamic_batching
            .as_ref()
            .map(|b| {
                b.padding
                    .outputs
                    .iter()
                    .filter_map(|(output, cut)| {
                        // The length to keep is the request's own size of that input's padded dim.
                        let index = input_names.iter().position(|n| *n == cut.length_of)?;
                        Some((output.clone(), cut.dim, index))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let settings = BatcherSettings {
            model: name.to_owned(),
            version,
            queue: config.queue.clone(),
            batching: config.dynamic_batching.clone(),
            max_batch_size: (config.max_batch_size as usize).max(1),
            instances: runtimes.len(),
            input_names,
            cut_outputs,
        };
        let (handle, batches) = batcher::spawn(settings, metrics.clone());
        let batches = Arc::new(Mutex::new(batches));
        for (index, runtime) in runtimes.into_iter().enumerate() {
            let batches = batches.clone();
            let metrics = metrics.clone();
            let breaker = breaker.clone();
            let label = format!("{name}:{version}#{index}");
            // Not joined: the thread ends by itself once the batcher closes the channel.
            std::thread::Builder::new()
                .name(format!("sy-{name}-{version}-{index}"))
                .spawn(move || worker(label, runtime, batches, metrics, breaker))
                .map_err(|err| format!("starting a worker thread: {err}"))?;
        }
        Ok(handle)
    }

    /// Queues one request and waits for its outputs.
    pub async fn infer(
        &self,
        inputs: Vec<Tensor>,
        priority: Option<u32>,
        timeout: Option<Duration>,
    ) -> Result<Vec<Tensor>, ApiError> {
        self.batcher
            .submit(Submission {
                inputs,
                priority,
                timeout,
            })
            .await
    }

    /// Why the version cannot serve right now, if it cannot (a remote upstream
    /// is down, or its batches keep failing).
    pub fn unhealthy(&self) -> Option<String> {
        self.health
            .as_ref()
            .filter(|h| !h.is_healthy())
            .map(|h| h.reason())
            .or_else(|| self.breaker.reason())
    }

    /// Requests waiting for a worker.
    pub fn queue_depth(&self) -> usize {
        self.batcher.queue_depth()
    }
}

/// Deterministic inputs that fit `signature` with `batch` rows (variable
/// non-batch dims get size 1). For warm-up and the runtime benchmark.
pub fn synthetic_inputs(signature: &Signature, batch: usize) -> Result<Vec<Tensor>, String> {
    use bytes::{BufMut, BytesMut};
    use switchyard_runtimes::DataType;
    signature
        .inputs
        .iter()
        .map(|spec| {
            let shape: Vec<i64> = spec
                .shape
                .iter()
                .enumerate()
                .map(|(i, &d)| {
                    if d < 0 && i == 0 {
                        batch as i64
                    } else {
                        d.max(1)
                    }
                })
                .collect();
            let count: usize = shape.iter().map(|&d| d as usize).product();
            let mut buf = BytesMut::new();
            for i in 0..count {
                // Values in [-1, 1); every type gets something legal.
                let x = ((i * 7919) % 2000) as f32 / 1000.0 - 1.0;
                match spec.datatype {
                    DataType::Fp32 => buf.put_f32_le(x),
                    DataType::Fp64 => buf.put_f64_le(f64::from(x)),
                    DataType::Fp16 => buf.put_u16_le(half::f16::from_f32(x).to_bits()),
                    DataType::Bf16 => buf.put_u16_le(half::bf16::from_f32(x).to_bits()),
                    DataType::Bytes => {
                        buf.put_u32_le(4);
                        buf.put_slice(b"text");
                    }
                    DataType::Bool => buf.put_u8((i % 2) as u8),
                    other => buf.put_bytes(0, other.element_size().unwrap_or(1)),
                }
            }
            Tensor::new(spec.name.clone(), spec.datatype, shape, buf.freeze())
                .map_err(|e| e.to_string())
        })
        .collect()
}

/// Runs every batch size the model will see through every instance, so the
/// first real requests do not pay for lazy initialisation, and a model that
/// loads but cannot run is refused before it serves.
fn warm_up(
    runtimes: &mut [Box<dyn Runtime>],
    signature: &Signature,
    config: &ModelConfig,
) -> Result<(), String> {
    let mut sizes = vec![1usize];
    if config.max_batch_size > 0 {
        if let Some(batching) = &config.dynamic_batching {
            sizes.extend(batching.preferred_batch_sizes.iter().map(|&p| p as usize));
        }
        sizes.push(config.max_batch_size as usize);
    }
    sizes.sort_unstable();
    sizes.dedup();
    let batched = signature
        .inputs
        .iter()
        .all(|s| s.shape.first() == Some(&-1));
    for size in sizes {
        if size > 1 && !batched {
            break;
        }
        let inputs = synthetic_inputs(signature, size)?;
        for runtime in runtimes.iter_mut() {
            match std::panic::catch_unwind(AssertUnwindSafe(|| runtime.run(&inputs))) {
                Ok(Ok(_)) => {}
                Ok(Err(err)) => return Err(format!("warm-up at batch size {size} failed: {err}")),
                Err(_) => return Err(format!("warm-up at batch size {size} panicked")),
            }
        }
    }
    Ok(())
}

fn worker(
    label: String,
    mut runtime: Box<dyn Runtime>,
    batches: Arc<Mutex<mpsc::Receiver<Batch>>>,
    metrics: ModelMetrics,
    breaker: Arc<Breaker>,
) {
    loop {
        // One worker waits on the channel at a time; the others wait for the lock.
        let next = match batches.lock() {
            Ok(mut receiver) => receiver.blocking_recv(),
            Err(_) => None,
        };
        let Some(batch) = next else { break };
        // One runtime call serves every request in the batch: child of the
        // first request's span, linked to the others.
        let span = tracing::info_span!(parent: batch.spans.first().and_then(|s| s.id()), "runtime", worker = %label, rows = batch.rows(), requests = batch.len());
        for other in batch.spans.iter().skip(1) {
            span.follows_from(other);
        }
        let traceparent = crate::telemetry::traceparent(&span);
        let _entered = span.enter();
        let started = Instant::now();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| runtime.run_blocks(&batch.blocks, traceparent.as_deref()))).unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            error!(worker = %label, panic = %what, "Runtime panicked; the batch failed, the worker goes on.");
            Err(RuntimeError::Execution(format!("the runtime panicked: {what}")))
        });
        let took = started.elapsed();
        metrics.observe_compute(took);
        batch.record_compute(took);
        // A runtime that cannot take an empty tensor (ONNX Runtime and libtorch
        // mostly can) refuses that input: a 400, and no mark against the model.
        let result = match result {
            Err(RuntimeError::Execution(reason)) if batch.has_empty_input() => {
                Err(RuntimeError::InvalidInput(format!(
                    "the model cannot run zero-size inputs: {reason}"
                )))
            }
            other => other,
        };
        // Only faults of the model count, not bad input or an unreachable upstream.
        breaker.record(!matches!(result, Err(RuntimeError::Execution(_))));
        batch.complete(result.map_err(ApiError::from));
    }
    // The version is retired: free its session now and hand the memory back.
    drop(runtime);
    crate::memory::release_free_memory();
}
