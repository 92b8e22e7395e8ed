//! Per-model configuration (`<repo>/<model>/config.yaml`): the raw file as
//! serde reads it, and the validated `ModelConfig` the rest of the server uses.
//! Also reconciles a declared signature with the one read from the model file.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use switchyard_runtimes::TensorSpec;
use switchyard_runtimes::onnx::OnnxOptions;
use switchyard_runtimes::torch::{TorchDevice, TorchOptions};

/// Upper bound on worker instances per model version; more only thrashes 2–16 cores.
const MAX_INSTANCES: usize = 64;

/// Which versions of a model are served. In YAML: `all`, `{latest: N}` or `{specific: [1, 3]}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawVersionPolicy")]
pub enum VersionPolicy {
    /// The N highest-numbered versions.
    Latest(usize),
    /// Every version present.
    All,
    /// Exactly these versions.
    Specific(Vec<u64>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawVersionPolicy {
    Named(String),
    Latest { latest: usize },
    Specific { specific: Vec<u64> },
}

impl TryFrom<RawVersionPolicy> for VersionPolicy {
    type Error = String;
    fn try_from(raw: RawVersionPolicy) -> Result<Self, String> {
        match raw {
            RawVersionPolicy::Named(name) if name == "all" => Ok(VersionPolicy::All),
            RawVersionPolicy::Named(name) => Err(format!(
                "version_policy `{name}` is unknown; expected `all`, `{{latest: N}}` or `{{specific: [..]}}`"
            )),
            RawVersionPolicy::Latest { latest } => Ok(VersionPolicy::Latest(latest)),
            RawVersionPolicy::Specific { specific } => Ok(VersionPolicy::Specific(specific)),
        }
    }
}

impl Default for VersionPolicy {
    fn default() -> Self {
        VersionPolicy::Latest(1)
    }
}

impl VersionPolicy {
    /// Picks the versions to serve from those present (ascending).
    pub fn select(&self, present: &[u64]) -> Vec<u64> {
        let mut sorted = present.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        match self {
            VersionPolicy::Latest(n) => sorted.split_off(sorted.len().saturating_sub(*n)),
            VersionPolicy::All => sorted,
            VersionPolicy::Specific(wanted) => {
                sorted.into_iter().filter(|v| wanted.contains(v)).collect()
            }
        }
    }
}

/// A model served by KServe v2 upstreams (platform `remote`).
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteConfig {
    pub upstreams: Vec<String>,
    pub protocol: switchyard_runtimes::remote::Protocol,
    /// HTTP upstreams: the binary tensor extension instead of JSON.
    pub binary_data: bool,
    pub tls: Option<switchyard_runtimes::remote::TlsFiles>,
    /// Sent with every upstream call; `${VAR}` in a value is read from the environment.
    pub headers: Vec<(String, String)>,
    pub sequence_idle_timeout: Duration,
    /// The model's name on the upstreams (default: the same name).
    pub model: Option<String>,
    pub version: Option<String>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub retries: u32,
    pub retry_budget: f64,
    pub eject_after: u32,
    pub probe_interval: Duration,
}

/// What happens to a request whose timeout passes while it waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeoutAction {
    /// Answer DEADLINE_EXCEEDED / HTTP 504.
    #[default]
    Reject,
    /// Answer as overloaded: RESOURCE_EXHAUSTED / HTTP 429 (clients retry elsewhere).
    Overloaded,
}

/// The per-version request queue.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuePolicy {
    /// Requests that may wait per priority level before new ones are refused.
    pub capacity: usize,
    /// Levels 1..=N; 1 is served first.
    pub priority_levels: u32,
    /// Level of requests that name none.
    pub default_priority: u32,
    /// Longest a request may wait and run; requests may only ask for less.
    pub default_timeout: Option<Duration>,
    pub timeout_action: TimeoutAction,
    /// The server's own bound on a request's time in the queue and the model,
    /// whatever its timeout: a request still unanswered then is failed and
    /// counted, so nothing can hold a queue place forever.
    pub max_request_time: Duration,
}

/// Pad an input along one non-batch dimension so requests of different
/// lengths can share a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct PadInput {
    pub dim: usize,
    pub value: f64,
}

/// Cut an output back along `dim` to the request's own length of an input's padded dim.
#[derive(Debug, Clone, PartialEq)]
pub struct CutOutput {
    pub dim: usize,
    pub length_of: String,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Padding {
    pub inputs: BTreeMap<String, PadInput>,
    pub outputs: BTreeMap<String, CutOutput>,
}

/// Merging requests into batches (models with `max_batch_size > 0`).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchingConfig {
    /// Longest the oldest request waits for others while every instance is busy.
    pub max_queue_delay: Duration,
    /// Batch sizes to cut at when more rows are waiting (ascending).
    pub preferred_batch_sizes: Vec<u32>,
    /// Send what is queued at once when an instance is idle (no delay at low load).
    pub dispatch_when_idle: bool,
    /// Pick the delay from measured compute times within this latency budget.
    pub adaptive_latency_budget: Option<Duration>,
    pub padding: Padding,
}

/// Runtime platforms a model can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    Onnx,
    /// TorchScript through libtorch (the `torch` cargo feature).
    Torch,
    /// Forwarded to KServe v2 upstreams.
    Remote,
    /// Steps of other models, from `config.yaml` (`steps:`).
    Pipeline,
    /// A Triton ensemble (`ensemble_scheduling` in `config.pbtxt`).
    Ensemble,
}

impl Platform {
    /// The name reported in model metadata (Triton's spelling).
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Onnx => "onnxruntime_onnx",
            Platform::Torch => "pytorch_libtorch",
            Platform::Remote => "remote",
            Platform::Pipeline => "pipeline",
            Platform::Ensemble => "ensemble",
        }
    }

    /// Composed of other models: no files, no runtime of its own.
    pub fn is_composed(self) -> bool {
        matches!(self, Platform::Pipeline | Platform::Ensemble)
    }

    /// Has no model file: one version, identified by its config.
    pub fn has_no_files(self) -> bool {
        self == Platform::Remote || self.is_composed()
    }

    fn parse(name: &str) -> Result<Self, String> {
        match name {
            "onnxruntime_onnx" | "onnx" | "onnxruntime" => Ok(Platform::Onnx),
            "pytorch_libtorch" | "pytorch" | "libtorch" | "torchscript" => Ok(Platform::Torch),
            "remote" => Ok(Platform::Remote),
            "pipeline" => Ok(Platform::Pipeline),
            "ensemble" => Ok(Platform::Ensemble),
            other => Err(format!(
                "unknown platform `{other}`; expected `onnxruntime_onnx`, `pytorch_libtorch`, `remote`, `pipeline` or `ensemble`"
            )),
        }
    }
}

/// How a TorchScript model's instances run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorchConfig {
    /// The device of each instance, in order (`instance_count` per device).
    pub instance_devices: Vec<TorchDevice>,
    /// Everything but the device, shared by the instances.
    pub options: TorchOptions,
}

impl TorchConfig {
    /// Options for instance `index`.
    pub fn instance(&self, index: usize) -> TorchOptions {
        TorchOptions {
            device: self
                .instance_devices
                .get(index)
                .copied()
                .unwrap_or(TorchDevice::Cpu),
            ..self.options.clone()
        }
    }
}

/// `--max-request-time`'s default: generous, since it only catches what no
/// timeout was set for.
pub const DEFAULT_MAX_REQUEST_TIME: Duration = Duration::from_secs(300);

/// Defaults for what a model's config leaves out; set by server flags.
#[derive(Debug, Clone)]
pub struct ConfigDefaults {
    pub queue_capacity: usize,
    pub max_request_time: Duration,
    pub onnx: OnnxOptions,
}

/// A validated model configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub platform: Platform,
    /// Largest first dimension a request may have; 0 = the model does not batch
    /// along dimension 0 (shapes are taken as declared).
    pub max_batch_size: u32,
    /// Declared inputs/outputs (full shapes). Empty = take the model's own.
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// Output → its labels file in the model folder (classification); an
    /// output without one uses the folder's `labels.txt`, if any.
    pub label_files: BTreeMap<String, String>,
    pub instance_count: usize,
    pub version_policy: VersionPolicy,
    pub queue: QueuePolicy,
    /// `None`: every request runs alone.
    pub dynamic_batching: Option<BatchingConfig>,
    pub onnx: OnnxOptions,
    /// Set for platform `pytorch_libtorch`.
    pub torch: Option<TorchConfig>,
    /// Run synthetic inputs through every instance before serving.
    pub warmup: bool,
    /// Set for platform `remote`.
    pub remote: Option<RemoteConfig>,
    /// Set for platforms `pipeline` and `ensemble`.
    pub pipeline: Option<std::sync::Arc<crate::config::pipeline::PipelineSpec>>,
    /// Which requests are recorded (payload capture); `None` = none.
    pub capture: Option<std::sync::Arc<crate::config::capture::CapturePolicy>>,
    /// How a new version earns its traffic; `None` = it replaces the old one once warm.
    pub rollout: Option<std::sync::Arc<crate::config::rollout::RolloutPolicy>>,
    /// Failed batches in a row (runtime errors or panics) that mark the version unhealthy.
    pub unhealthy_after_failures: u32,
    /// How long an unhealthy version refuses requests before trying again.
    pub unhealthy_cooldown: Duration,
}

impl ModelConfig {
    /// The configuration a model gets with no config file.
    pub fn derived(defaults: &ConfigDefaults) -> Self {
        ModelConfig {
            platform: Platform::Onnx,
            max_batch_size: 0,
            inputs: Vec::new(),
            outputs: Vec::new(),
            label_files: BTreeMap::new(),
            instance_count: 1,
            version_policy: VersionPolicy::default(),
            queue: QueuePolicy {
                capacity: defaults.queue_capacity,
                priority_levels: 1,
                default_priority: 1,
                default_timeout: None,
                timeout_action: TimeoutAction::Reject,
                max_request_time: defaults.max_request_time,
            },
            dynamic_batching: None,
            onnx: defaults.onnx.clone(),
            torch: None,
            warmup: true,
            remote: None,
            pipeline: None,
            capture: None,
            rollout: None,
            unhealthy_after_failures: 5,
            unhealthy_cooldown: Duration::from_secs(10),
        }
    }

    /// Reads and validates `<model_dir>/config.yaml`, else Triton's
    /// `config.pbtxt`, else derives one. Returns warnings about fields that
    /// have no effect.
    pub fn load(
        model_dir: &Path,
        defaults: &ConfigDefaults,
    ) -> Result<(Self, Vec<String>), String> {
        let read = |name: &str| -> Result<Option<String>, String> {
            let path = model_dir.join(name);
            match crate::config::file::read_config_file(&path) {
                Ok(None) => Ok(None),
                Ok(Some(text)) => text
                    .map(Some)
                    .map_err(|e| format!("{}: {e}", path.display())),
                Err(err) => Err(format!("{}: {err}", path.display())),
            }
        };
        let model_name = model_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        match (read("config.yaml")?, read("config.pbtxt")?) {
            (Some(yaml), pbtxt) => {
                let config = Self::parse(&yaml, defaults)
                    .map_err(|err| format!("{}: {err}", model_dir.join("config.yaml").display()))?;
                let warnings = pbtxt
                    .map(|_| {
                        vec!["config.pbtxt is ignored because config.yaml is present".to_owned()]
                    })
                    .unwrap_or_default();
                Ok((config, warnings))
            }
            (None, Some(pbtxt)) => from_triton(&pbtxt, model_name, defaults)
                .map_err(|err| format!("{}: {err}", model_dir.join("config.pbtxt").display())),
            (None, None) => Ok((Self::derived(defaults), Vec::new())),
        }
    }

    pub fn parse(text: &str, defaults: &ConfigDefaults) -> Result<Self, String> {
        let raw: raw::RawModelConfig = if text.trim().is_empty() {
            raw::RawModelConfig::default()
        } else {
            crate::config::file::parse_yaml(text)?
        };
        raw.validate(defaults)
    }
}

mod raw;
mod signature;
mod triton;

pub use triton::from_triton;

#[cfg(test)]
mod tests;
