//! Per-model configuration (`<repo>/<model>/config.yaml`): the raw file as
//! serde reads it, and the validated `ModelConfig` the rest of the server uses.
//! Also reconciles a declared signature with the one read from the model file.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use switchyard_runtimes::onnx::OnnxOptions;
use switchyard_runtimes::torch::{TorchDevice, TorchOptions};
use switchyard_runtimes::{DataType, Signature, TensorSpec};

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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTensorConfig {
    name: String,
    datatype: DataType,
    /// Dims without the batch dimension when `max_batch_size > 0` (Triton's convention).
    dims: Vec<i64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOnnxConfig {
    intra_op_threads: Option<usize>,
    inter_op_threads: Option<usize>,
    spinning: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTorchConfig {
    /// `cpu`, `cuda` or `cuda:N`; `devices` spreads instances over several.
    device: Option<String>,
    devices: Option<Vec<String>>,
    autocast_fp16: Option<bool>,
    cast_inputs: Option<DataType>,
    pinned_transfers: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueueConfig {
    capacity: Option<usize>,
    priority_levels: Option<u32>,
    default_priority: Option<u32>,
    default_timeout_us: Option<u64>,
    timeout_action: Option<TimeoutAction>,
    max_request_time_us: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdaptive {
    latency_budget_us: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPadInput {
    dim: usize,
    #[serde(default)]
    value: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCutOutput {
    dim: usize,
    length_of: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPadding {
    #[serde(default)]
    inputs: BTreeMap<String, RawPadInput>,
    #[serde(default)]
    outputs: BTreeMap<String, RawCutOutput>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBatching {
    max_queue_delay_us: Option<u64>,
    #[serde(default)]
    preferred_batch_sizes: Vec<u32>,
    dispatch_when_idle: Option<bool>,
    adaptive: Option<RawAdaptive>,
    padding: Option<RawPadding>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRemote {
    upstreams: Vec<String>,
    model: Option<String>,
    version: Option<String>,
    protocol: Option<String>,
    timeout_ms: Option<u64>,
    connect_timeout_ms: Option<u64>,
    retries: Option<u32>,
    retry_budget_percent: Option<f64>,
    eject_after_failures: Option<u32>,
    probe_interval_ms: Option<u64>,
}

/// A model served by KServe v2 upstreams (platform `remote`).
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteConfig {
    pub upstreams: Vec<String>,
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

/// `config.yaml` exactly as written; see `ModelConfig` for meanings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModelConfig {
    platform: Option<String>,
    max_batch_size: Option<u32>,
    #[serde(default)]
    inputs: Vec<RawTensorConfig>,
    #[serde(default)]
    outputs: Vec<RawTensorConfig>,
    instance_count: Option<usize>,
    version_policy: Option<VersionPolicy>,
    queue: Option<RawQueueConfig>,
    dynamic_batching: Option<RawBatching>,
    onnx: Option<RawOnnxConfig>,
    torch: Option<RawTorchConfig>,
    warmup: Option<bool>,
    remote: Option<RawRemote>,
    unhealthy_after_failures: Option<u32>,
    unhealthy_cooldown_ms: Option<u64>,
    /// One device per instance, from Triton's `instance_group` (never from YAML).
    #[serde(skip)]
    instance_devices: Option<Vec<TorchDevice>>,
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
}

impl Platform {
    /// The name reported in model metadata (Triton's spelling).
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Onnx => "onnxruntime_onnx",
            Platform::Torch => "pytorch_libtorch",
            Platform::Remote => "remote",
        }
    }

    fn parse(name: &str) -> Result<Self, String> {
        match name {
            "onnxruntime_onnx" | "onnx" | "onnxruntime" => Ok(Platform::Onnx),
            "pytorch_libtorch" | "pytorch" | "libtorch" | "torchscript" => Ok(Platform::Torch),
            "remote" => Ok(Platform::Remote),
            other => Err(format!(
                "unknown platform `{other}`; expected `onnxruntime_onnx`, `pytorch_libtorch` or `remote`"
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
        let raw: RawModelConfig = if text.trim().is_empty() {
            RawModelConfig::default()
        } else {
            crate::config::file::parse_yaml(text)?
        };
        raw.validate(defaults)
    }

    /// The declared inputs and outputs as a signature (what TorchScript models serve).
    pub fn signature_declared(&self) -> Signature {
        Signature {
            inputs: self.inputs.clone(),
            outputs: self.outputs.clone(),
        }
    }

    /// Full shape of a declared tensor: `[-1] + dims` when the model batches.
    fn full_shape(&self, dims: &[i64]) -> Vec<i64> {
        if self.max_batch_size > 0 {
            std::iter::once(-1).chain(dims.iter().copied()).collect()
        } else {
            dims.to_vec()
        }
    }

    /// The signature clients see: the model's own, narrowed by what the config
    /// declares. Fails when the two disagree.
    pub fn resolve_signature(&self, model: &Signature) -> Result<Signature, String> {
        let inputs = if self.inputs.is_empty() {
            model.inputs.clone()
        } else {
            for spec in &model.inputs {
                if !self
                    .inputs
                    .iter()
                    .any(|declared| declared.name == spec.name)
                {
                    return Err(format!(
                        "the model has input `{}`, which the config does not declare",
                        spec.name
                    ));
                }
            }
            reconcile("input", &self.inputs, &model.inputs)?
        };
        let outputs = if self.outputs.is_empty() {
            model.outputs.clone()
        } else {
            reconcile("output", &self.outputs, &model.outputs)?
        };
        if let Some(batching) = &self.dynamic_batching {
            for (name, pad) in &batching.padding.inputs {
                let spec = inputs.iter().find(|s| &s.name == name).ok_or_else(|| {
                    format!("padding names input `{name}`, which the model does not have")
                })?;
                if pad.dim >= spec.shape.len() || spec.shape[pad.dim] >= 0 {
                    return Err(format!(
                        "padding for input `{name}`: dim {} of shape {:?} is not a variable dimension",
                        pad.dim, spec.shape
                    ));
                }
                if spec.datatype == DataType::Bytes {
                    return Err(format!(
                        "padding for input `{name}`: BYTES inputs cannot be padded"
                    ));
                }
            }
            for (name, cut) in &batching.padding.outputs {
                let spec = outputs.iter().find(|s| &s.name == name).ok_or_else(|| {
                    format!("padding names output `{name}`, which the model does not have")
                })?;
                if cut.dim >= spec.shape.len() {
                    return Err(format!(
                        "padding for output `{name}`: dim {} is past its shape {:?}",
                        cut.dim, spec.shape
                    ));
                }
            }
        }
        if self.max_batch_size > 0 {
            for spec in inputs.iter().chain(&outputs) {
                if spec.shape.first().is_none_or(|&d| d >= 0) {
                    return Err(format!(
                        "max_batch_size {} needs a variable first dimension, but `{}` has shape {:?}",
                        self.max_batch_size, spec.name, spec.shape
                    ));
                }
            }
        }
        Ok(Signature { inputs, outputs })
    }
}

fn reconcile(
    kind: &str,
    declared: &[TensorSpec],
    actual: &[TensorSpec],
) -> Result<Vec<TensorSpec>, String> {
    declared
        .iter()
        .map(|want| {
            let have = actual
                .iter()
                .find(|spec| spec.name == want.name)
                .ok_or_else(|| {
                    let names: Vec<&str> = actual.iter().map(|s| s.name.as_str()).collect();
                    format!(
                        "config declares {kind} `{}`, but the model's {kind}s are {names:?}",
                        want.name
                    )
                })?;
            if have.datatype != want.datatype {
                return Err(format!(
                    "{kind} `{}`: config says {}, the model says {}",
                    want.name, want.datatype, have.datatype
                ));
            }
            let compatible = have.shape.len() == want.shape.len()
                && have
                    .shape
                    .iter()
                    .zip(&want.shape)
                    .all(|(&h, &w)| h < 0 || h == w);
            if !compatible {
                return Err(format!(
                    "{kind} `{}`: config shape {:?} does not fit the model's shape {:?}",
                    want.name, want.shape, have.shape
                ));
            }
            Ok(want.clone())
        })
        .collect()
}

impl RawModelConfig {
    fn validate(self, defaults: &ConfigDefaults) -> Result<ModelConfig, String> {
        let platform = match &self.platform {
            Some(name) => Platform::parse(name)?,
            None => Platform::Onnx,
        };
        // Remote instances are concurrent upstream calls, not CPU sessions.
        let instance_count = self
            .instance_count
            .unwrap_or(if platform == Platform::Remote { 16 } else { 1 });
        if !(1..=MAX_INSTANCES).contains(&instance_count) {
            return Err(format!(
                "instance_count must be between 1 and {MAX_INSTANCES}, got {instance_count}"
            ));
        }
        let raw_queue = self.queue.unwrap_or_default();
        let queue = QueuePolicy {
            capacity: raw_queue.capacity.unwrap_or(defaults.queue_capacity),
            priority_levels: raw_queue.priority_levels.unwrap_or(1),
            default_priority: raw_queue.default_priority.unwrap_or(1),
            default_timeout: raw_queue
                .default_timeout_us
                .filter(|&us| us > 0)
                .map(Duration::from_micros),
            timeout_action: raw_queue.timeout_action.unwrap_or_default(),
            max_request_time: raw_queue
                .max_request_time_us
                .map_or(defaults.max_request_time, Duration::from_micros),
        };
        if queue.max_request_time.is_zero() {
            return Err("queue.max_request_time_us must be positive".to_owned());
        }
        if queue.capacity == 0 {
            return Err("queue.capacity must be at least 1".to_owned());
        }
        if !(1..=16).contains(&queue.priority_levels) {
            return Err(format!(
                "queue.priority_levels must be 1 to 16, got {}",
                queue.priority_levels
            ));
        }
        if !(1..=queue.priority_levels).contains(&queue.default_priority) {
            return Err(format!(
                "queue.default_priority must be 1 to {} (priority_levels), got {}",
                queue.priority_levels, queue.default_priority
            ));
        }
        let max_batch_size = self.max_batch_size.unwrap_or(0);
        let dynamic_batching = match self.dynamic_batching {
            None => None,
            Some(_) if max_batch_size == 0 => {
                return Err("dynamic_batching needs max_batch_size > 0".to_owned());
            }
            Some(raw) => Some(raw.validate(max_batch_size)?),
        };
        let version_policy = self.version_policy.unwrap_or_default();
        if matches!(version_policy, VersionPolicy::Latest(0)) {
            return Err("version_policy latest must be at least 1".to_owned());
        }
        if matches!(&version_policy, VersionPolicy::Specific(v) if v.is_empty()) {
            return Err("version_policy specific must list at least one version".to_owned());
        }
        let onnx = match self.onnx {
            Some(raw) => OnnxOptions {
                intra_op_threads: raw
                    .intra_op_threads
                    .unwrap_or(defaults.onnx.intra_op_threads),
                inter_op_threads: raw
                    .inter_op_threads
                    .unwrap_or(defaults.onnx.inter_op_threads),
                spinning: raw.spinning.unwrap_or(defaults.onnx.spinning),
            },
            None => defaults.onnx.clone(),
        };
        let torch = match (platform, self.torch) {
            (Platform::Torch, raw) => Some(
                raw.unwrap_or_default()
                    .validate(instance_count, self.instance_devices)?,
            ),
            (_, Some(_)) => {
                return Err("a `torch:` section needs `platform: pytorch_libtorch`".to_owned());
            }
            (_, None) => None,
        };
        // Torch's instance_count is per device.
        let instance_count = torch
            .as_ref()
            .map_or(instance_count, |t| t.instance_devices.len());
        if !(1..=MAX_INSTANCES).contains(&instance_count) {
            return Err(format!(
                "{instance_count} instances in all; at most {MAX_INSTANCES} are allowed"
            ));
        }
        let mut config = ModelConfig {
            platform,
            max_batch_size,
            inputs: Vec::new(),
            outputs: Vec::new(),
            instance_count,
            version_policy,
            queue,
            dynamic_batching,
            onnx,
            torch,
            warmup: self.warmup.unwrap_or(true),
            unhealthy_after_failures: self.unhealthy_after_failures.unwrap_or(5).max(1),
            unhealthy_cooldown: Duration::from_millis(self.unhealthy_cooldown_ms.unwrap_or(10_000)),
            remote: match (platform, self.remote) {
                (Platform::Remote, Some(raw)) => Some(raw.validate()?),
                (Platform::Remote, None) => {
                    return Err(
                        "platform remote needs a `remote:` section with upstreams".to_owned()
                    );
                }
                (_, Some(_)) => {
                    return Err("a `remote:` section needs `platform: remote`".to_owned());
                }
                (_, None) => None,
            },
        };
        let mut seen = std::collections::HashSet::new();
        for (kind, raw, out) in [("input", &self.inputs, 0), ("output", &self.outputs, 1)] {
            for tensor in raw {
                if !seen.insert((out, tensor.name.clone())) {
                    return Err(format!("{kind} `{}` is declared twice", tensor.name));
                }
                if tensor.dims.iter().any(|&d| d < -1 || d == 0) {
                    return Err(format!(
                        "{kind} `{}`: dims {:?} must be positive or -1 (any size)",
                        tensor.name, tensor.dims
                    ));
                }
                let spec = TensorSpec::new(
                    tensor.name.clone(),
                    tensor.datatype,
                    config.full_shape(&tensor.dims),
                );
                if out == 0 {
                    config.inputs.push(spec);
                } else {
                    config.outputs.push(spec);
                }
            }
        }
        if platform == Platform::Torch {
            switchyard_runtimes::torch::check_signature(&config.signature_declared())?;
        }
        Ok(config)
    }
}

/// One `instance_group` of a Triton config.
struct InstanceGroup {
    count: usize,
    kind: String,
    gpus: Vec<usize>,
}

/// Reads Triton's `config.pbtxt`. Returns the config and one warning per
/// field Switchyard does not act on (never silently ignored).
pub fn from_triton(
    text: &str,
    model_name: &str,
    defaults: &ConfigDefaults,
) -> Result<(ModelConfig, Vec<String>), String> {
    use crate::config::pbtxt::{Message, Value};
    let root = crate::config::pbtxt::parse(text).map_err(|err| format!("config.pbtxt {err}"))?;
    let mut warnings = Vec::new();
    let mut raw = RawModelConfig::default();
    let text_of = |v: &Value| v.as_text().map(str::to_owned);
    let int_of = |v: &Value, field: &str| {
        v.as_i64().ok_or_else(|| {
            format!(
                "config.pbtxt: `{field}` must be a 64-bit integer, got `{}`",
                v.as_text().unwrap_or("a message")
            )
        })
    };
    // Triton's fields are typed (uint32, int64...): a value out of range is an
    // error there, so it is here too, never truncated.
    let uint_of = |v: &Value, field: &str, max: u64| -> Result<u64, String> {
        let n = int_of(v, field)?;
        u64::try_from(n)
            .ok()
            .filter(|&n| n <= max)
            .ok_or_else(|| format!("config.pbtxt: `{field}` must be between 0 and {max}, got {n}"))
    };
    let u32_of = |v: &Value, field: &str| uint_of(v, field, u64::from(u32::MAX)).map(|n| n as u32);
    let tensors = |kind: &str,
                   values: Vec<&Value>,
                   warnings: &mut Vec<String>|
     -> Result<Vec<RawTensorConfig>, String> {
        values
            .into_iter()
            .map(|value| {
                let m = value
                    .as_message()
                    .ok_or_else(|| format!("config.pbtxt: `{kind}` must be a message"))?;
                let mut name = None;
                let mut datatype = None;
                let mut dims = Vec::new();
                for (field, v) in &m.fields {
                    match field.as_str() {
                        "name" => name = text_of(v),
                        "data_type" => {
                            let t = v.as_text().unwrap_or_default();
                            datatype = Some(
                                t.parse::<DataType>()
                                    .map_err(|e| format!("config.pbtxt: {kind}: {e}"))?,
                            );
                        }
                        "dims" => dims.push(int_of(v, "dims")?),
                        other => warnings
                            .push(format!("{kind}.{other} is not supported and has no effect")),
                    }
                }
                Ok(RawTensorConfig {
                    name: name.ok_or_else(|| format!("config.pbtxt: an {kind} has no name"))?,
                    datatype: datatype
                        .ok_or_else(|| format!("config.pbtxt: an {kind} has no data_type"))?,
                    dims,
                })
            })
            .collect()
    };
    let mut instance_count: Option<usize> = None;
    let mut groups: Vec<InstanceGroup> = Vec::new();
    for (field, value) in &root.fields {
        match field.as_str() {
            "name" => {
                if value.as_text() != Some(model_name) {
                    warnings.push(format!(
                        "name {:?} differs from the folder name `{model_name}`; the folder name is used",
                        value.as_text().unwrap_or_default()
                    ));
                }
            }
            "platform" | "backend" => {
                let name = value.as_text().unwrap_or_default();
                let platform = match name {
                    "onnxruntime" => "onnxruntime_onnx",
                    // Triton's backend name for TorchScript.
                    "pytorch" => "pytorch_libtorch",
                    other => other,
                };
                Platform::parse(platform)?;
                raw.platform = Some(platform.to_owned());
            }
            "max_batch_size" => {
                raw.max_batch_size =
                    Some(u32::try_from(int_of(value, field)?).map_err(|_| {
                        "config.pbtxt: max_batch_size must not be negative".to_owned()
                    })?)
            }
            "input" => raw
                .inputs
                .extend(tensors("input", vec![value], &mut warnings)?),
            "output" => raw
                .outputs
                .extend(tensors("output", vec![value], &mut warnings)?),
            "instance_group" => {
                let m = value
                    .as_message()
                    .ok_or("config.pbtxt: instance_group must be a message")?;
                let mut group = InstanceGroup {
                    count: 1,
                    kind: "KIND_AUTO".to_owned(),
                    gpus: Vec::new(),
                };
                for (f, v) in &m.fields {
                    match f.as_str() {
                        "count" => group.count = u32_of(v, "instance_group.count")? as usize,
                        "kind" => group.kind = v.as_text().unwrap_or_default().to_owned(),
                        "gpus" => group.gpus.push(
                            usize::try_from(int_of(v, "instance_group.gpus")?).map_err(
                                |_| "config.pbtxt: instance_group.gpus must not be negative",
                            )?,
                        ),
                        "name" => {}
                        other => warnings.push(format!(
                            "instance_group.{other} is not supported and has no effect"
                        )),
                    }
                }
                instance_count = Some(instance_count.unwrap_or(0) + group.count);
                groups.push(group);
            }
            "version_policy" => {
                let m = value
                    .as_message()
                    .ok_or("config.pbtxt: version_policy must be a message")?;
                raw.version_policy = Some(
                    if let Some(latest) = m.first("latest").and_then(Value::as_message) {
                        VersionPolicy::Latest(match latest.first("num_versions") {
                            Some(v) => u32_of(v, "version_policy.latest.num_versions")? as usize,
                            None => 1,
                        })
                    } else if m.first("all").is_some() {
                        VersionPolicy::All
                    } else if let Some(specific) = m.first("specific").and_then(Value::as_message) {
                        VersionPolicy::Specific(
                            specific
                                .all("versions")
                                .map(|v| {
                                    uint_of(v, "version_policy.specific.versions", i64::MAX as u64)
                                })
                                .collect::<Result<_, _>>()?,
                        )
                    } else {
                        return Err(
                            "config.pbtxt: version_policy needs latest, all or specific".to_owned()
                        );
                    },
                );
            }
            "dynamic_batching" => {
                let m = value
                    .as_message()
                    .ok_or("config.pbtxt: dynamic_batching must be a message")?;
                let mut batching = RawBatching::default();
                let mut queue = RawQueueConfig::default();
                for (f, v) in &m.fields {
                    match f.as_str() {
                        "preferred_batch_size" => {
                            batching.preferred_batch_sizes.push(u32_of(v, f)?)
                        }
                        "max_queue_delay_microseconds" => {
                            batching.max_queue_delay_us = Some(uint_of(v, f, u64::MAX)?)
                        }
                        "priority_levels" => queue.priority_levels = Some(u32_of(v, f)?),
                        "default_priority_level" => queue.default_priority = Some(u32_of(v, f)?),
                        "default_queue_policy" => {
                            let policy: &Message = v
                                .as_message()
                                .ok_or("config.pbtxt: default_queue_policy must be a message")?;
                            for (pf, pv) in &policy.fields {
                                match pf.as_str() {
                                    "max_queue_size" => {
                                        // Triton: 0 = unbounded; ours stays bounded by the default.
                                        let size = uint_of(pv, pf, u64::from(u32::MAX))?;
                                        if size > 0 {
                                            queue.capacity = Some(size as usize);
                                        }
                                    }
                                    "default_timeout_microseconds" => queue.default_timeout_us = Some(uint_of(pv, pf, u64::MAX)?),
                                    "timeout_action" if pv.as_text() == Some("REJECT") => queue.timeout_action = Some(TimeoutAction::Reject),
                                    "timeout_action" => warnings.push("default_queue_policy.timeout_action DELAY is not supported; timed-out requests are rejected".to_owned()),
                                    "allow_timeout_override" => {}
                                    other => warnings.push(format!("default_queue_policy.{other} is not supported and has no effect")),
                                }
                            }
                        }
                        other => warnings.push(format!(
                            "dynamic_batching.{other} is not supported and has no effect"
                        )),
                    }
                }
                raw.dynamic_batching = Some(batching);
                raw.queue = Some(queue);
            }
            other => warnings.push(format!("{other} is not supported and has no effect")),
        }
    }
    raw.instance_count = instance_count;
    let torch = raw.platform.as_deref().map(Platform::parse) == Some(Ok(Platform::Torch));
    if torch && !groups.is_empty() {
        // Triton's rule: `count` instances on each listed GPU (all GPUs when none are listed).
        let mut devices = Vec::new();
        for group in &groups {
            let on: Vec<TorchDevice> = match group.kind.as_str() {
                "KIND_CPU" => vec![TorchDevice::Cpu],
                "KIND_GPU" if group.gpus.is_empty() => vec![TorchDevice::Cuda(0)],
                "KIND_GPU" => group.gpus.iter().map(|&g| TorchDevice::Cuda(g)).collect(),
                _ => vec![TorchDevice::Cpu],
            };
            if group.kind == "KIND_GPU" && group.gpus.is_empty() {
                warnings.push("instance_group KIND_GPU without gpus: instances go to cuda:0 (list `gpus` to use others)".to_owned());
            }
            for device in on {
                devices.extend(std::iter::repeat_n(device, group.count));
            }
        }
        raw.instance_devices = Some(devices);
    } else {
        for group in &groups {
            if !matches!(group.kind.as_str(), "KIND_CPU" | "KIND_AUTO") {
                warnings.push(format!(
                    "instance_group.kind {} is not supported for this platform; instances run on the CPU",
                    group.kind
                ));
            }
            if !group.gpus.is_empty() {
                warnings.push("instance_group.gpus has no effect for this platform".to_owned());
            }
        }
    }
    let config = raw.validate(defaults)?;
    Ok((config, warnings))
}

impl RawTorchConfig {
    fn validate(
        self,
        instance_count: usize,
        explicit: Option<Vec<TorchDevice>>,
    ) -> Result<TorchConfig, String> {
        let instance_devices = match (explicit, self.device, self.devices) {
            (Some(devices), _, _) => devices,
            (None, Some(_), Some(_)) => {
                return Err("torch: give `device` or `devices`, not both".to_owned());
            }
            (None, one, many) => {
                let names = many.or(one.map(|d| vec![d])).unwrap_or_default();
                let mut devices = names
                    .iter()
                    .map(|name| {
                        name.parse::<TorchDevice>()
                            .map_err(|e| format!("torch: {e}"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if devices.is_empty() {
                    devices.push(TorchDevice::Cpu);
                }
                devices
                    .into_iter()
                    .flat_map(|device| std::iter::repeat_n(device, instance_count))
                    .collect()
            }
        };
        let autocast_fp16 = self.autocast_fp16.unwrap_or(false);
        if autocast_fp16 && instance_devices.contains(&TorchDevice::Cpu) {
            return Err(
                "torch.autocast_fp16 applies to CUDA devices; this model has CPU instances"
                    .to_owned(),
            );
        }
        if let Some(cast) = self.cast_inputs
            && !matches!(
                cast,
                DataType::Fp16 | DataType::Bf16 | DataType::Fp32 | DataType::Fp64
            )
        {
            return Err(format!(
                "torch.cast_inputs must be FP16, BF16, FP32 or FP64, not {cast}"
            ));
        }
        Ok(TorchConfig {
            instance_devices,
            options: TorchOptions {
                device: TorchDevice::Cpu,
                autocast_fp16,
                cast_inputs: self.cast_inputs,
                pinned_transfers: self.pinned_transfers.unwrap_or(true),
            },
        })
    }
}

impl RawRemote {
    fn validate(self) -> Result<RemoteConfig, String> {
        if self.upstreams.is_empty() {
            return Err("remote.upstreams must list at least one host:port".to_owned());
        }
        if let Some(protocol) = self.protocol.as_deref()
            && protocol != "grpc"
        {
            return Err(format!(
                "remote.protocol `{protocol}` is not supported; upstreams are called over grpc"
            ));
        }
        let budget = self.retry_budget_percent.unwrap_or(20.0);
        if !(0.0..=100.0).contains(&budget) {
            return Err("remote.retry_budget_percent must be 0–100".to_owned());
        }
        Ok(RemoteConfig {
            upstreams: self.upstreams,
            model: self.model,
            version: self.version,
            timeout: Duration::from_millis(self.timeout_ms.unwrap_or(30_000).max(1)),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms.unwrap_or(1_000).max(1)),
            retries: self.retries.unwrap_or(1),
            retry_budget: budget / 100.0,
            eject_after: self.eject_after_failures.unwrap_or(3).max(1),
            probe_interval: Duration::from_millis(self.probe_interval_ms.unwrap_or(1_000).max(50)),
        })
    }
}

impl RawBatching {
    fn validate(self, max_batch_size: u32) -> Result<BatchingConfig, String> {
        let mut preferred = self.preferred_batch_sizes;
        preferred.sort_unstable();
        preferred.dedup();
        if let Some(&bad) = preferred.iter().find(|&&p| p == 0 || p > max_batch_size) {
            return Err(format!(
                "dynamic_batching.preferred_batch_sizes: {bad} is not between 1 and max_batch_size {max_batch_size}"
            ));
        }
        let padding = self.padding.unwrap_or_default();
        for (name, pad) in &padding.inputs {
            if pad.dim == 0 {
                return Err(format!(
                    "padding for input `{name}`: dim 0 is the batch dimension; pad a later one"
                ));
            }
        }
        for (name, cut) in &padding.outputs {
            if cut.dim == 0 {
                return Err(format!(
                    "padding for output `{name}`: dim 0 is the batch dimension"
                ));
            }
            if !padding.inputs.contains_key(&cut.length_of) {
                return Err(format!(
                    "padding for output `{name}`: length_of names `{}`, which is not a padded input",
                    cut.length_of
                ));
            }
        }
        Ok(BatchingConfig {
            max_queue_delay: Duration::from_micros(self.max_queue_delay_us.unwrap_or(100)),
            preferred_batch_sizes: preferred,
            dispatch_when_idle: self.dispatch_when_idle.unwrap_or(true),
            adaptive_latency_budget: match self.adaptive {
                Some(RawAdaptive {
                    latency_budget_us: 0,
                }) => {
                    return Err(
                        "dynamic_batching.adaptive.latency_budget_us must be positive".to_owned(),
                    );
                }
                Some(a) => Some(Duration::from_micros(a.latency_budget_us)),
                None => None,
            },
            padding: Padding {
                inputs: padding
                    .inputs
                    .into_iter()
                    .map(|(k, v)| {
                        (
                            k,
                            PadInput {
                                dim: v.dim,
                                value: v.value,
                            },
                        )
                    })
                    .collect(),
                outputs: padding
                    .outputs
                    .into_iter()
                    .map(|(k, v)| {
                        (
                            k,
                            CutOutput {
                                dim: v.dim,
                                length_of: v.length_of,
                            },
                        )
                    })
                    .collect(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> ConfigDefaults {
        ConfigDefaults {
            queue_capacity: 16,
            max_request_time: DEFAULT_MAX_REQUEST_TIME,
            onnx: OnnxOptions::default(),
        }
    }

    #[test]
    fn empty_file_gives_the_derived_config() {
        assert_eq!(
            ModelConfig::parse("", &defaults()).unwrap(),
            ModelConfig::derived(&defaults())
        );
    }

    #[test]
    fn full_config_parses() {
        let text = r#"
platform: onnxruntime_onnx
max_batch_size: 8
inputs: [{name: input, datatype: FP32, dims: [4]}]
outputs: [{name: probabilities, datatype: FP32, dims: [3]}]
instance_count: 2
version_policy: {latest: 2}
onnx: {intra_op_threads: 2}
"#;
        let config = ModelConfig::parse(text, &defaults()).unwrap();
        assert_eq!(config.max_batch_size, 8);
        assert_eq!(config.inputs[0].shape, vec![-1, 4]);
        assert_eq!(config.instance_count, 2);
        assert_eq!(config.version_policy, VersionPolicy::Latest(2));
        assert_eq!(config.onnx.intra_op_threads, 2);
        assert_eq!(config.onnx.inter_op_threads, 1);
        assert!(config.dynamic_batching.is_none());
    }

    #[test]
    fn batching_and_queue_sections_parse_and_validate() {
        let text = r#"
max_batch_size: 32
queue: {capacity: 8, priority_levels: 2, default_priority: 2, default_timeout_us: 5000, timeout_action: overloaded}
dynamic_batching:
  max_queue_delay_us: 250
  preferred_batch_sizes: [16, 8]
  adaptive: {latency_budget_us: 10000}
  padding:
    inputs: {ids: {dim: 1, value: 0}}
    outputs: {logits: {dim: 1, length_of: ids}}
"#;
        let config = ModelConfig::parse(text, &defaults()).unwrap();
        assert_eq!(config.queue.capacity, 8);
        assert_eq!(
            config.queue.default_timeout,
            Some(Duration::from_micros(5000))
        );
        assert_eq!(config.queue.timeout_action, TimeoutAction::Overloaded);
        let batching = config.dynamic_batching.unwrap();
        assert_eq!(batching.max_queue_delay, Duration::from_micros(250));
        assert_eq!(batching.preferred_batch_sizes, vec![8, 16]);
        assert!(batching.dispatch_when_idle);
        assert_eq!(batching.padding.inputs["ids"].dim, 1);

        for (bad, expected) in [
            ("dynamic_batching: {}", "needs max_batch_size > 0"),
            (
                "max_batch_size: 4\ndynamic_batching: {preferred_batch_sizes: [8]}",
                "preferred_batch_sizes",
            ),
            (
                "queue: {priority_levels: 2, default_priority: 3}",
                "default_priority",
            ),
            ("queue: {capacity: 0}", "queue.capacity"),
            (
                "max_batch_size: 4\ndynamic_batching: {padding: {outputs: {y: {dim: 1, length_of: x}}}}",
                "not a padded input",
            ),
        ] {
            let err = ModelConfig::parse(bad, &defaults()).unwrap_err();
            assert!(err.contains(expected), "{bad}: {err}");
        }
    }

    #[test]
    fn mistakes_are_named() {
        let err = ModelConfig::parse("max_batch_sise: 8", &defaults()).unwrap_err();
        assert!(err.contains("unknown field `max_batch_sise`"), "{err}");
        let err = ModelConfig::parse("instance_count: 0", &defaults()).unwrap_err();
        assert!(err.contains("instance_count"), "{err}");
        let err = ModelConfig::parse(
            "inputs: [{name: x, datatype: FLOAT, dims: [1]}]",
            &defaults(),
        )
        .unwrap_err();
        assert!(err.contains("unknown datatype `FLOAT`"), "{err}");
        let err = ModelConfig::parse("platform: tensorflow", &defaults()).unwrap_err();
        assert!(err.contains("unknown platform"), "{err}");
    }

    #[test]
    fn torch_models_declare_tensors_and_place_instances_per_device() {
        let yaml = r#"
platform: pytorch_libtorch
max_batch_size: 8
instance_count: 2
inputs: [{name: x, datatype: FP16, dims: [4]}]
outputs: [{name: y, datatype: FP32, dims: [4]}]
torch: {devices: ["cuda:0", "cuda:1"], autocast_fp16: true, cast_inputs: FP32, pinned_transfers: false}
"#;
        let config = ModelConfig::parse(yaml, &defaults()).unwrap();
        assert_eq!(config.platform, Platform::Torch);
        assert_eq!(config.instance_count, 4);
        let torch = config.torch.clone().unwrap();
        assert_eq!(
            torch.instance_devices,
            vec![
                TorchDevice::Cuda(0),
                TorchDevice::Cuda(0),
                TorchDevice::Cuda(1),
                TorchDevice::Cuda(1)
            ]
        );
        let third = torch.instance(2);
        assert_eq!(third.device, TorchDevice::Cuda(1));
        assert!(third.autocast_fp16 && !third.pinned_transfers);
        assert_eq!(third.cast_inputs, Some(DataType::Fp32));
        assert_eq!(config.signature_declared().inputs[0].shape, vec![-1, 4]);

        let cpu = ModelConfig::parse(
            "platform: pytorch\ninputs: [{name: x, datatype: FP32, dims: [4]}]\noutputs: [{name: y, datatype: FP32, dims: [4]}]",
            &defaults(),
        )
        .unwrap();
        assert_eq!(cpu.torch.unwrap().instance_devices, vec![TorchDevice::Cpu]);
        for (bad, why) in [
            (
                "platform: pytorch_libtorch",
                "declare `inputs` and `outputs`",
            ),
            (
                "platform: onnxruntime_onnx\ntorch: {device: cpu}",
                "needs `platform: pytorch_libtorch`",
            ),
            (
                "platform: pytorch_libtorch\ninputs: [{name: x, datatype: FP32, dims: [1]}]\noutputs: [{name: y, datatype: FP32, dims: [1]}]\ntorch: {autocast_fp16: true}",
                "applies to CUDA",
            ),
            (
                "platform: pytorch_libtorch\ninputs: [{name: x, datatype: FP32, dims: [1]}]\noutputs: [{name: y, datatype: FP32, dims: [1]}]\ntorch: {device: tpu}",
                "unknown",
            ),
            (
                "platform: pytorch_libtorch\ninputs: [{name: x, datatype: FP32, dims: [1]}]\noutputs: [{name: y, datatype: FP32, dims: [1]}]\ntorch: {cast_inputs: INT64}",
                "cast_inputs",
            ),
            (
                "platform: pytorch_libtorch\ninputs: [{name: x, datatype: BYTES, dims: [1]}]\noutputs: [{name: y, datatype: FP32, dims: [1]}]",
                "cannot carry",
            ),
            (
                "platform: pytorch_libtorch\ninputs: [{name: a__0, datatype: FP32, dims: [1]}, {name: b__0, datatype: FP32, dims: [1]}]\noutputs: [{name: y, datatype: FP32, dims: [1]}]",
                "b__0",
            ),
        ] {
            let err = ModelConfig::parse(bad, &defaults()).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn triton_gpu_groups_place_torch_instances_on_their_gpus() {
        let text = r#"
backend: "pytorch"
max_batch_size: 4
input [ { name: "INPUT__0" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 4 ] } ]
instance_group [ { count: 2 kind: KIND_GPU gpus: [ 0, 1 ] }, { count: 1 kind: KIND_CPU } ]
"#;
        let (config, warnings) = from_triton(text, "m", &defaults()).unwrap();
        assert_eq!(config.platform, Platform::Torch);
        assert_eq!(config.instance_count, 5);
        assert_eq!(
            config.torch.unwrap().instance_devices,
            vec![
                TorchDevice::Cuda(0),
                TorchDevice::Cuda(0),
                TorchDevice::Cuda(1),
                TorchDevice::Cuda(1),
                TorchDevice::Cpu
            ]
        );
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn triton_config_maps_supported_fields_and_warns_about_the_rest() {
        let text = r#"
name: "resnet"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "input" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "probabilities" data_type: TYPE_FP32 dims: [ 3 ] } ]
instance_group [ { count: 2 kind: KIND_GPU } ]
version_policy { latest { num_versions: 2 } }
dynamic_batching {
  preferred_batch_size: [ 4 ]
  max_queue_delay_microseconds: 300
  default_queue_policy { max_queue_size: 16 default_timeout_microseconds: 2000 }
}
optimization { execution_accelerators { } }
"#;
        let (config, warnings) = from_triton(text, "iris", &defaults()).unwrap();
        assert_eq!(config.max_batch_size, 8);
        assert_eq!(config.inputs[0].shape, vec![-1, 4]);
        assert_eq!(config.instance_count, 2);
        assert_eq!(config.version_policy, VersionPolicy::Latest(2));
        assert_eq!(config.queue.capacity, 16);
        assert_eq!(
            config.queue.default_timeout,
            Some(Duration::from_micros(2000))
        );
        let batching = config.dynamic_batching.unwrap();
        assert_eq!(batching.preferred_batch_sizes, vec![4]);
        assert_eq!(batching.max_queue_delay, Duration::from_micros(300));
        let all = warnings.join("\n");
        assert!(all.contains("name \"resnet\" differs"), "{all}");
        assert!(all.contains("KIND_GPU"), "{all}");
        assert!(all.contains("optimization is not supported"), "{all}");
        let err = from_triton("platform: \"tensorflow_savedmodel\"", "m", &defaults()).unwrap_err();
        assert!(err.contains("unknown platform"), "{err}");
    }

    #[test]
    fn version_policy_selects() {
        let present = [3, 1, 2, 10];
        assert_eq!(VersionPolicy::Latest(2).select(&present), vec![3, 10]);
        assert_eq!(VersionPolicy::All.select(&present), vec![1, 2, 3, 10]);
        assert_eq!(
            VersionPolicy::Specific(vec![2, 7]).select(&present),
            vec![2]
        );
        assert_eq!(
            ModelConfig::parse("version_policy: all", &defaults())
                .unwrap()
                .version_policy,
            VersionPolicy::All
        );
    }

    #[test]
    fn declared_signature_must_match_the_model() {
        let model = Signature {
            inputs: vec![TensorSpec::new("input", DataType::Fp32, vec![-1, 4])],
            outputs: vec![TensorSpec::new("out", DataType::Fp32, vec![-1, 3])],
        };
        let ok = ModelConfig::parse(
            "max_batch_size: 4\ninputs: [{name: input, datatype: FP32, dims: [4]}]",
            &defaults(),
        )
        .unwrap();
        assert_eq!(
            ok.resolve_signature(&model).unwrap().inputs[0].shape,
            vec![-1, 4]
        );
        let wrong_type = ModelConfig::parse(
            "inputs: [{name: input, datatype: FP64, dims: [-1, 4]}]",
            &defaults(),
        )
        .unwrap();
        assert!(
            wrong_type
                .resolve_signature(&model)
                .unwrap_err()
                .contains("FP64")
        );
        let wrong_dim = ModelConfig::parse(
            "max_batch_size: 4\ninputs: [{name: input, datatype: FP32, dims: [5]}]",
            &defaults(),
        )
        .unwrap();
        assert!(
            wrong_dim
                .resolve_signature(&model)
                .unwrap_err()
                .contains("does not fit")
        );
        let fixed = Signature {
            inputs: vec![TensorSpec::new("input", DataType::Fp32, vec![1, 4])],
            outputs: vec![],
        };
        let batching = ModelConfig::parse("max_batch_size: 8", &defaults()).unwrap();
        assert!(
            batching
                .resolve_signature(&fixed)
                .unwrap_err()
                .contains("variable first dimension")
        );
    }
}
