//! `config.yaml` as serde reads it (unknown fields are errors), and the
//! checks that turn it into the validated types of `model`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use switchyard_runtimes::DataType;
use switchyard_runtimes::onnx::OnnxOptions;
use switchyard_runtimes::torch::{TorchDevice, TorchOptions};

use super::*;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTensorConfig {
    pub(super) name: String,
    pub(super) datatype: DataType,
    /// Dims without the batch dimension when `max_batch_size > 0` (Triton's convention).
    pub(super) dims: Vec<i64>,
    /// Outputs: class labels, one per line, for the classification extension
    /// (a file in the model folder; Triton's field name).
    #[serde(default)]
    pub(super) label_filename: Option<String>,
    /// Pipeline outputs: the step output (or alternatives) it comes from.
    #[serde(default)]
    pub(super) from: Option<crate::config::pipeline::RawFrom>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOnnxConfig {
    pub(super) intra_op_threads: Option<usize>,
    pub(super) inter_op_threads: Option<usize>,
    pub(super) spinning: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTorchConfig {
    /// `cpu`, `cuda` or `cuda:N`; `devices` spreads instances over several.
    pub(super) device: Option<String>,
    pub(super) devices: Option<Vec<String>>,
    autocast_fp16: Option<bool>,
    pub(super) cast_inputs: Option<DataType>,
    pub(super) pinned_transfers: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQueueConfig {
    pub(super) capacity: Option<usize>,
    pub(super) priority_levels: Option<u32>,
    pub(super) default_priority: Option<u32>,
    pub(super) default_timeout_us: Option<u64>,
    pub(super) timeout_action: Option<TimeoutAction>,
    pub(super) max_request_time_us: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdaptive {
    pub(super) latency_budget_us: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPadInput {
    pub(super) dim: usize,
    #[serde(default)]
    pub(super) value: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCutOutput {
    pub(super) dim: usize,
    pub(super) length_of: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPadding {
    #[serde(default)]
    pub(super) inputs: BTreeMap<String, RawPadInput>,
    #[serde(default)]
    pub(super) outputs: BTreeMap<String, RawCutOutput>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBatching {
    pub(super) max_queue_delay_us: Option<u64>,
    #[serde(default)]
    pub(super) preferred_batch_sizes: Vec<u32>,
    pub(super) dispatch_when_idle: Option<bool>,
    pub(super) adaptive: Option<RawAdaptive>,
    pub(super) padding: Option<RawPadding>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRemote {
    pub(super) upstreams: Vec<String>,
    pub(super) model: Option<String>,
    pub(super) version: Option<String>,
    pub(super) protocol: Option<String>,
    pub(super) timeout_ms: Option<u64>,
    pub(super) connect_timeout_ms: Option<u64>,
    pub(super) retries: Option<u32>,
    pub(super) retry_budget_percent: Option<f64>,
    pub(super) eject_after_failures: Option<u32>,
    pub(super) probe_interval_ms: Option<u64>,
    pub(super) binary_data: Option<bool>,
    pub(super) tls: Option<RawRemoteTls>,
    #[serde(default)]
    pub(super) headers: std::collections::BTreeMap<String, String>,
    pub(super) sequence_idle_timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRemoteTls {
    pub(super) ca_file: Option<std::path::PathBuf>,
    pub(super) cert_file: Option<std::path::PathBuf>,
    pub(super) key_file: Option<std::path::PathBuf>,
    pub(super) server_name: Option<String>,
}

/// `config.yaml` exactly as written; see `ModelConfig` for meanings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModelConfig {
    pub(super) platform: Option<String>,
    pub(super) max_batch_size: Option<u32>,
    #[serde(default)]
    pub(super) inputs: Vec<RawTensorConfig>,
    #[serde(default)]
    pub(super) outputs: Vec<RawTensorConfig>,
    pub(super) instance_count: Option<usize>,
    pub(super) version_policy: Option<VersionPolicy>,
    pub(super) queue: Option<RawQueueConfig>,
    pub(super) dynamic_batching: Option<RawBatching>,
    pub(super) onnx: Option<RawOnnxConfig>,
    pub(super) torch: Option<RawTorchConfig>,
    pub(super) warmup: Option<bool>,
    pub(super) capture: Option<crate::config::capture::RawCapture>,
    pub(super) rollout: Option<crate::config::rollout::RawRollout>,
    pub(super) remote: Option<RawRemote>,
    pub(super) unhealthy_after_failures: Option<u32>,
    pub(super) unhealthy_cooldown_ms: Option<u64>,
    /// Platform `pipeline`: its steps.
    pub(super) steps: Option<Vec<crate::config::pipeline::RawStep>>,
    /// Platform `ensemble`: Triton's `ensemble_scheduling` steps (never from YAML).
    #[serde(skip)]
    pub(super) ensemble_steps: Option<Vec<crate::config::pipeline::EnsembleStep>>,
    /// One device per instance, from Triton's `instance_group` (never from YAML).
    #[serde(skip)]
    pub(super) instance_devices: Option<Vec<TorchDevice>>,
}

impl RawModelConfig {
    pub(super) fn validate(self, defaults: &ConfigDefaults) -> Result<ModelConfig, String> {
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
        // Steps batch in their own models; a pipeline has no queue or instances.
        let composed_only_fields = [
            (self.dynamic_batching.is_some(), "dynamic_batching"),
            (self.instance_count.is_some(), "instance_count"),
            (self.onnx.is_some(), "onnx"),
            (self.rollout.is_some(), "rollout"),
        ];
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
            label_files: BTreeMap::new(),
            instance_count,
            version_policy,
            queue,
            dynamic_batching,
            onnx,
            torch,
            warmup: self.warmup.unwrap_or(true),
            unhealthy_after_failures: self.unhealthy_after_failures.unwrap_or(5).max(1),
            unhealthy_cooldown: Duration::from_millis(self.unhealthy_cooldown_ms.unwrap_or(10_000)),
            capture: self
                .capture
                .map(|raw| raw.validate("config").map(std::sync::Arc::new))
                .transpose()?,
            rollout: self
                .rollout
                .map(|raw| raw.validate().map(std::sync::Arc::new))
                .transpose()?,
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
            pipeline: None,
        };
        if platform.is_composed() {
            for (given, field) in composed_only_fields {
                if given {
                    return Err(format!(
                        "`{field}` has no meaning for a {}: its steps run in their own models (set it there)",
                        platform.as_str()
                    ));
                }
            }
            config.warmup = false;
        }
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
                if let Some(file) = &tensor.label_filename {
                    if out == 0 {
                        return Err(format!(
                            "input `{}`: label_filename is for outputs",
                            tensor.name
                        ));
                    }
                    if file.contains('/') || file.contains('\\') || file.starts_with('.') {
                        return Err(format!(
                            "output `{}`: label_filename `{file}` must name a file in the model folder",
                            tensor.name
                        ));
                    }
                    config.label_files.insert(tensor.name.clone(), file.clone());
                }
                if tensor.from.is_some() && (out == 0 || platform != Platform::Pipeline) {
                    return Err(format!(
                        "{kind} `{}`: `from` is for the outputs of a pipeline",
                        tensor.name
                    ));
                }
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
        config.pipeline = pipeline_spec(
            platform,
            &config,
            self.steps,
            self.ensemble_steps,
            &self.outputs,
        )?
        .map(std::sync::Arc::new);
        Ok(config)
    }
}

/// The graph of a pipeline or ensemble; `None` for other platforms.
fn pipeline_spec(
    platform: Platform,
    config: &ModelConfig,
    steps: Option<Vec<crate::config::pipeline::RawStep>>,
    ensemble_steps: Option<Vec<crate::config::pipeline::EnsembleStep>>,
    raw_outputs: &[RawTensorConfig],
) -> Result<Option<crate::config::pipeline::PipelineSpec>, String> {
    {
        use crate::config::pipeline;
        if !platform.is_composed() {
            if steps.is_some() {
                return Err("`steps` needs `platform: pipeline`".to_owned());
            }
            return Ok(None);
        }
        if config.inputs.is_empty() || config.outputs.is_empty() {
            return Err(format!(
                "a {} declares its `inputs` and `outputs` (name, datatype, dims): they are its contract with clients",
                platform.as_str()
            ));
        }
        let input_names: Vec<String> = config.inputs.iter().map(|s| s.name.clone()).collect();
        let spec = match (platform, steps, ensemble_steps) {
            (Platform::Pipeline, Some(steps), _) => {
                let mut outputs = Vec::new();
                for tensor in raw_outputs {
                    let from = tensor.from.clone().ok_or_else(|| {
                        format!(
                            "output `{}` needs `from`: the step output it comes from (`<step>.<output>`)",
                            tensor.name
                        )
                    })?;
                    outputs.push((tensor.name.clone(), from.into_vec()));
                }
                pipeline::from_yaml(steps, &input_names, outputs)?
            }
            (Platform::Pipeline, None, _) => {
                return Err("platform pipeline needs `steps`".to_owned());
            }
            (_, _, Some(steps)) => {
                let outputs: Vec<String> = config.outputs.iter().map(|s| s.name.clone()).collect();
                pipeline::from_ensemble(steps, &input_names, &outputs)?
            }
            (_, _, None) => {
                return Err("platform ensemble needs `ensemble_scheduling` with steps".to_owned());
            }
        };
        Ok(Some(spec))
    }
}

impl RawTorchConfig {
    pub(super) fn validate(
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
    pub(super) fn validate(self) -> Result<RemoteConfig, String> {
        if self.upstreams.is_empty() {
            return Err("remote.upstreams must list at least one host:port".to_owned());
        }
        use switchyard_runtimes::remote::Protocol;
        let protocol = match self.protocol.as_deref() {
            None | Some("grpc") => Protocol::Grpc,
            Some("http") | Some("rest") => Protocol::Http,
            Some(other) => {
                return Err(format!(
                    "remote.protocol `{other}` is not supported; expected `grpc` or `http`"
                ));
            }
        };
        if self.binary_data.is_some() && protocol != Protocol::Http {
            return Err(
                "remote.binary_data is for `protocol: http`; gRPC always sends raw tensors"
                    .to_owned(),
            );
        }
        let tls = self.tls.map(|tls| switchyard_runtimes::remote::TlsFiles {
            ca_file: tls.ca_file,
            cert_file: tls.cert_file,
            key_file: tls.key_file,
            server_name: tls.server_name,
        });
        if let Some(tls) = &tls
            && tls.cert_file.is_some() != tls.key_file.is_some()
        {
            return Err("remote.tls needs both cert_file and key_file, or neither".to_owned());
        }
        let headers = self
            .headers
            .into_iter()
            .map(|(name, value)| Ok((name.clone(), expand_env(&name, &value)?)))
            .collect::<Result<Vec<_>, String>>()?;
        let budget = self.retry_budget_percent.unwrap_or(20.0);
        if !(0.0..=100.0).contains(&budget) {
            return Err("remote.retry_budget_percent must be 0–100".to_owned());
        }
        Ok(RemoteConfig {
            upstreams: self.upstreams,
            protocol,
            binary_data: self.binary_data.unwrap_or(false),
            tls,
            headers,
            sequence_idle_timeout: Duration::from_millis(
                self.sequence_idle_timeout_ms.unwrap_or(300_000).max(1),
            ),
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

/// `${VAR}` in a header value comes from the environment, so tokens stay out of config files.
fn expand_env(name: &str, value: &str) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("remote.headers.{name}: `${{` without a closing `}}`"))?;
        let var = &after[..end];
        let found = std::env::var(var).map_err(|_| {
            format!("remote.headers.{name}: environment variable `{var}` is not set")
        })?;
        out.push_str(&found);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

impl RawBatching {
    pub(super) fn validate(self, max_batch_size: u32) -> Result<BatchingConfig, String> {
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
