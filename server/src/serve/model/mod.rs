//! A loaded model version: its validated config and signature, its batcher
//! (queue, priorities, deadlines, batch forming; see `batcher`), and the
//! worker threads that own its runtime instances. Runtimes never run on the
//! async reactor. Dropping the last handle closes the queue; workers finish
//! what was queued and exit, which frees the runtime's memory.
//!
//! `worker`: the worker loop and the failure breaker; `warmup`: synthetic
//! inputs and the warm-up run at every batch size in use.

mod warmup;
mod worker;

pub use warmup::synthetic_inputs;
use warmup::warm_up;
pub use worker::Breaker;
use worker::worker;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchyard_runtimes::onnx::OnnxRuntime;
use switchyard_runtimes::remote::{RemoteOptions, RemoteRuntime, UpstreamPool};
use switchyard_runtimes::{Runtime, RuntimeError, Signature, Tensor};
use tracing::info;

use crate::config::model::{ModelConfig, Platform};
use crate::error::ApiError;
use crate::metrics::{Metrics, ModelMetrics};
use crate::serve::batcher::{self, BatcherHandle, BatcherSettings, Submission};

/// How a remote model's load failure begins when its upstreams are not up
/// yet: the lifecycle retries it soon, and it never stops start-up.
pub const WAITING_FOR_UPSTREAM: &str = "waiting for the upstream: ";

/// Whether a load failure only means the upstream is not up yet.
pub fn is_waiting_for_upstream(reason: &str) -> bool {
    reason.starts_with(WAITING_FOR_UPSTREAM)
}

/// File name of the model inside a version folder, per platform.
pub fn model_file_name(platform: Platform) -> &'static str {
    match platform {
        Platform::Onnx => "model.onnx",
        Platform::Torch => "model.pt",
        // Nothing on disk: the model lives on its upstreams, or in its steps.
        Platform::Remote | Platform::Pipeline | Platform::Ensemble => "",
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
                protocol: remote.protocol,
                binary_data: remote.binary_data,
                tls_files: remote.tls.clone(),
                headers: remote.headers.clone(),
                sequence_idle_timeout: remote.sequence_idle_timeout,
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
            let first = RemoteRuntime::connect(pool).map_err(|err| match err {
                RuntimeError::Unavailable(reason) => format!("{WAITING_FOR_UPSTREAM}{reason}"),
                other => other.to_string(),
            })?;
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

/// Labels for the classification extension: each output's `label_filename`
/// (which must exist), else the model folder's `labels.txt` for every output.
fn read_labels(
    version_dir: &Path,
    config: &ModelConfig,
    signature: &Signature,
) -> Result<std::collections::BTreeMap<String, Vec<String>>, String> {
    use crate::serve::classify::read_labels as read;
    let mut labels = std::collections::BTreeMap::new();
    if version_dir.as_os_str().is_empty() {
        // A remote model has no folder here; its upstream labels its classes.
        if let Some(output) = config.label_files.keys().next() {
            return Err(format!(
                "label_filename for `{output}`: a remote model has no model folder to read it from"
            ));
        }
        return Ok(labels);
    }
    let model_dir = version_dir.parent().unwrap_or(version_dir);
    for (output, file) in &config.label_files {
        if signature.output(output).is_none() {
            return Err(format!(
                "label_filename is given for `{output}`, which the model does not output"
            ));
        }
        labels.insert(output.clone(), read(&model_dir.join(file))?);
    }
    let shared = model_dir.join("labels.txt");
    if shared.is_file() {
        let shared = read(&shared)?;
        for spec in &signature.outputs {
            labels
                .entry(spec.name.clone())
                .or_insert_with(|| shared.clone());
        }
    }
    Ok(labels)
}

/// What runs a version's requests.
enum Engine {
    /// Its own runtimes, behind its queue and batcher.
    Batcher(BatcherHandle),
    /// Steps of other models (`serve::pipeline` runs them through their batchers).
    Pipeline(Arc<crate::serve::pipeline::Pipeline>),
}

/// A served model version. Cheap to share (`Arc`); the runtime lives on its workers.
pub struct ModelVersion {
    pub name: String,
    pub version: u64,
    pub config: ModelConfig,
    pub signature: Signature,
    engine: Engine,
    /// For runtimes that can become unreachable (remote upstreams).
    health: Option<Arc<dyn switchyard_runtimes::Health>>,
    breaker: Arc<Breaker>,
    /// The runtime passes requests on (remote): they carry their context to it.
    forwards_requests: bool,
    /// Class labels per output (the classification extension).
    labels: std::collections::BTreeMap<String, Vec<String>>,
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
        if let Some(spec) = &config.pipeline {
            return Ok(Self::composed(name, version, config, spec, metrics));
        }
        let started = Instant::now();
        let mut runtimes = load_runtimes(name, version_dir, config)?;
        let health = runtimes.first().and_then(|rt| rt.health());
        let forwards_requests = runtimes.first().is_some_and(|rt| rt.forwards_requests());
        let runtime_health = health.clone();
        let model_signature = runtimes
            .first()
            .map(|rt| rt.signature().clone())
            .unwrap_or_default();
        let signature = config.resolve_signature(&model_signature)?;
        if config.warmup {
            warm_up(&mut runtimes, &signature, config)?;
        }
        let labels = read_labels(version_dir, config, &signature)?;
        let model_metrics = metrics.for_model(name, version, config.max_batch_size as usize);
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
            engine: Engine::Batcher(batcher),
            health: runtime_health,
            breaker,
            forwards_requests,
            labels,
        }))
    }

    /// A pipeline or ensemble: its declared signature, no runtime of its own.
    fn composed(
        name: &str,
        version: u64,
        config: &ModelConfig,
        spec: &Arc<crate::config::pipeline::PipelineSpec>,
        metrics: &Metrics,
    ) -> Arc<Self> {
        let pipeline = crate::serve::pipeline::Pipeline::new(name, spec.clone(), config, metrics);
        info!(
            model = name,
            version,
            steps = spec.steps.len(),
            platform = config.platform.as_str(),
            "Pipeline loaded; its steps are checked against the catalog."
        );
        Arc::new(ModelVersion {
            name: name.to_owned(),
            version,
            config: config.clone(),
            signature: config.signature_declared(),
            engine: Engine::Pipeline(Arc::new(pipeline)),
            health: None,
            breaker: Arc::new(Breaker::new(
                config.unhealthy_after_failures,
                config.unhealthy_cooldown,
            )),
            forwards_requests: false,
            labels: std::collections::BTreeMap::new(),
        })
    }

    /// The pipeline this version runs, if it is one.
    pub fn pipeline(&self) -> Option<&Arc<crate::serve::pipeline::Pipeline>> {
        match &self.engine {
            Engine::Pipeline(pipeline) => Some(pipeline),
            Engine::Batcher(_) => None,
        }
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
        let settings = BatcherSettings::for_model(name, version, config, signature, runtimes.len());
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
        context: Option<Arc<switchyard_runtimes::RequestContext>>,
    ) -> Result<Vec<Tensor>, ApiError> {
        let batcher = match &self.engine {
            Engine::Batcher(batcher) => batcher,
            // Requests reach pipelines through `serve::infer`, which holds the catalog.
            Engine::Pipeline(_) => {
                return Err(ApiError::invalid(format!(
                    "`{}` is a pipeline: it runs as a request of its own, not as a shadow or a step of another pipeline",
                    self.name
                )));
            }
        };
        batcher
            .submit(Submission {
                inputs,
                priority,
                timeout,
                // Other runtimes ignore it, and it would only keep requests apart.
                context: context.filter(|_| self.forwards_requests),
            })
            .await
    }

    /// The class labels of an output, if it has any.
    pub fn labels(&self, output: &str) -> Option<&[String]> {
        self.labels.get(output).map(Vec::as_slice)
    }

    /// Whether requests reach the runtime with their parameters and requested outputs.
    pub fn forwards_requests(&self) -> bool {
        self.forwards_requests
    }

    /// Why the version cannot serve right now, if it cannot (a remote upstream
    /// is down, or its batches keep failing).
    pub fn unhealthy(&self) -> Option<String> {
        if let Engine::Pipeline(pipeline) = &self.engine {
            return pipeline.problem();
        }
        self.health
            .as_ref()
            .filter(|h| !h.is_healthy())
            .map(|h| h.reason())
            .or_else(|| self.breaker.reason())
    }

    /// Triton-shaped statistics of this version.
    pub fn stats(&self) -> &crate::metrics::VersionStats {
        match &self.engine {
            Engine::Batcher(batcher) => batcher.stats(),
            Engine::Pipeline(pipeline) => pipeline.stats(),
        }
    }

    /// Requests waiting for a worker (a pipeline's wait in its steps' queues).
    pub fn queue_depth(&self) -> usize {
        match &self.engine {
            Engine::Batcher(batcher) => batcher.queue_depth(),
            Engine::Pipeline(_) => 0,
        }
    }
}
