//! Per-model configuration (`<repo>/<model>/config.yaml`): the raw file as
//! serde reads it, and the validated `ModelConfig` the rest of the server uses.
//! Also reconciles a declared signature with the one read from the model file.

use std::path::Path;

use serde::Deserialize;
use switchyard_runtimes::onnx::OnnxOptions;
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
    queue_capacity: Option<usize>,
    onnx: Option<RawOnnxConfig>,
}

/// Runtime platforms a model can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    Onnx,
}

impl Platform {
    /// The name reported in model metadata (Triton's spelling).
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Onnx => "onnxruntime_onnx",
        }
    }

    fn parse(name: &str) -> Result<Self, String> {
        match name {
            "onnxruntime_onnx" | "onnx" | "onnxruntime" => Ok(Platform::Onnx),
            other => Err(format!(
                "unknown platform `{other}`; expected `onnxruntime_onnx`"
            )),
        }
    }
}

/// Defaults for what a model's config leaves out; set by server flags.
#[derive(Debug, Clone)]
pub struct ConfigDefaults {
    pub queue_capacity: usize,
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
    /// Requests that may wait per model version before new ones are refused.
    pub queue_capacity: usize,
    pub onnx: OnnxOptions,
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
            queue_capacity: defaults.queue_capacity,
            onnx: defaults.onnx.clone(),
        }
    }

    /// Reads and validates `<model_dir>/config.yaml`, or derives one when absent.
    pub fn load(model_dir: &Path, defaults: &ConfigDefaults) -> Result<Self, String> {
        let path = model_dir.join("config.yaml");
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                Self::parse(&text, defaults).map_err(|err| format!("{}: {err}", path.display()))
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Self::derived(defaults)),
            Err(err) => Err(format!("{}: {err}", path.display())),
        }
    }

    pub fn parse(text: &str, defaults: &ConfigDefaults) -> Result<Self, String> {
        let raw: RawModelConfig = if text.trim().is_empty() {
            RawModelConfig::default()
        } else {
            serde_yaml_ng::from_str(text).map_err(|err| err.to_string())?
        };
        raw.validate(defaults)
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
        let instance_count = self.instance_count.unwrap_or(1);
        if !(1..=MAX_INSTANCES).contains(&instance_count) {
            return Err(format!(
                "instance_count must be between 1 and {MAX_INSTANCES}, got {instance_count}"
            ));
        }
        let queue_capacity = self.queue_capacity.unwrap_or(defaults.queue_capacity);
        if queue_capacity == 0 {
            return Err("queue_capacity must be at least 1".to_owned());
        }
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
        let mut config = ModelConfig {
            platform,
            max_batch_size: self.max_batch_size.unwrap_or(0),
            inputs: Vec::new(),
            outputs: Vec::new(),
            instance_count,
            version_policy,
            queue_capacity,
            onnx,
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
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> ConfigDefaults {
        ConfigDefaults {
            queue_capacity: 16,
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
