//! A loaded model version: its validated config and signature, and the worker
//! threads that own its runtime instances. Requests reach the workers through
//! one bounded queue; admission never waits (a full queue is `Overloaded`).
//! Dropping the last handle closes the queue; workers finish what is queued
//! and exit, which frees the runtime's memory.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use switchyard_runtimes::onnx::OnnxRuntime;
use switchyard_runtimes::{Runtime, RuntimeError, Signature, Tensor};
use tokio::sync::oneshot;
use tracing::{debug, error, info};

use crate::error::{ApiError, ErrorKind};
use crate::model_config::{ModelConfig, Platform};

/// File name of the model inside a version folder, per platform.
pub fn model_file_name(platform: Platform) -> &'static str {
    match platform {
        Platform::Onnx => "model.onnx",
    }
}

struct Job {
    inputs: Vec<Tensor>,
    reply: oneshot::Sender<Result<Vec<Tensor>, RuntimeError>>,
}

/// A served model version. Cheap to share (`Arc`); the runtime lives on its workers.
pub struct ModelVersion {
    pub name: String,
    pub version: u64,
    pub config: ModelConfig,
    pub signature: Signature,
    queue: Sender<Job>,
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
    /// Loads `instance_count` runtimes from `version_dir` and starts a worker
    /// thread for each. Blocking: call from a blocking context.
    pub fn load(
        name: &str,
        version: u64,
        version_dir: &Path,
        config: &ModelConfig,
    ) -> Result<Arc<Self>, String> {
        let started = Instant::now();
        let file = version_dir.join(model_file_name(config.platform));
        if !file.is_file() {
            return Err(format!("{} is missing", file.display()));
        }
        let mut runtimes: Vec<Box<dyn Runtime>> = Vec::with_capacity(config.instance_count);
        for _ in 0..config.instance_count {
            let runtime = match config.platform {
                Platform::Onnx => {
                    OnnxRuntime::load(&file, &config.onnx).map_err(|err| err.to_string())?
                }
            };
            runtimes.push(Box::new(runtime));
        }
        let model_signature = runtimes
            .first()
            .map(|rt| rt.signature().clone())
            .unwrap_or_default();
        let signature = config.resolve_signature(&model_signature)?;

        let (queue, receiver) = crossbeam_channel::bounded::<Job>(config.queue_capacity);
        for (index, runtime) in runtimes.into_iter().enumerate() {
            let receiver = receiver.clone();
            let thread_name = format!("sy-{name}-{version}-{index}");
            let label = format!("{name}:{version}#{index}");
            // Not joined: the thread ends by itself once every sender is dropped.
            std::thread::Builder::new()
                .name(thread_name)
                .spawn(move || worker(label, runtime, receiver))
                .map_err(|err| format!("starting a worker thread: {err}"))?;
        }
        info!(
            model = name,
            version,
            instances = config.instance_count,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "Model version loaded."
        );
        Ok(Arc::new(ModelVersion {
            name: name.to_owned(),
            version,
            config: config.clone(),
            signature,
            queue,
        }))
    }

    /// Runs one request. Refuses at once when the queue is full.
    pub async fn infer(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, ApiError> {
        let (reply, response) = oneshot::channel();
        match self.queue.try_send(Job { inputs, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(ApiError::new(
                    ErrorKind::Overloaded,
                    format!(
                        "model `{}` version {} is overloaded: its queue of {} requests is full; retry later",
                        self.name, self.version, self.config.queue_capacity
                    ),
                ));
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(ApiError::unavailable(format!(
                    "model `{}` version {} is shutting down",
                    self.name, self.version
                )));
            }
        }
        match response.await {
            Ok(result) => result.map_err(ApiError::from),
            Err(_) => Err(ApiError::internal(format!(
                "model `{}` version {}: the worker stopped before answering",
                self.name, self.version
            ))),
        }
    }

    /// Requests waiting for a worker.
    pub fn queue_depth(&self) -> usize {
        self.queue.len()
    }
}

fn worker(label: String, mut runtime: Box<dyn Runtime>, jobs: Receiver<Job>) {
    while let Ok(job) = jobs.recv() {
        if job.reply.is_closed() {
            // The caller went away (disconnect or cancelled call): skip the work.
            debug!(worker = %label, "Skipped a cancelled request.");
            continue;
        }
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| runtime.run(&job.inputs)))
            .unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_owned());
                error!(worker = %label, panic = %what, "Runtime panicked; the request failed, the worker goes on.");
                Err(RuntimeError::Execution(format!("the runtime panicked: {what}")))
            });
        // The caller may have gone meanwhile; nothing to do then.
        let _ = job.reply.send(result);
    }
    debug!(worker = %label, "Worker stopped.");
}
