//! What both edges say about a model, built once: its metadata (versions,
//! platform, signature), its readiness, and its configuration in Triton's
//! shape with the real backend and instance placement (`get_model_config`).

use serde_json::json;
use switchyard_runtimes::torch::TorchDevice;
use switchyard_runtimes::{DataType, TensorSpec};

use crate::config::model::{ModelConfig, Platform};
use crate::error::{ApiError, ErrorKind};
use crate::serve::catalog::Catalog;
use crate::serve::model::ModelVersion;

/// A model's metadata, as either protocol reports it.
pub struct Metadata {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: &'static str,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

pub fn metadata(
    catalog: &Catalog,
    model: &str,
    version: Option<&str>,
) -> Result<Metadata, ApiError> {
    let found = catalog.lookup(model, version)?;
    let versions = catalog
        .models
        .get(model)
        .map(|entry| entry.versions.keys().map(u64::to_string).collect())
        .unwrap_or_default();
    Ok(Metadata {
        name: found.name.clone(),
        versions,
        platform: found.config.platform.as_str(),
        inputs: found.signature.inputs.clone(),
        outputs: found.signature.outputs.clone(),
    })
}

/// Whether the model (version) serves; a known model that cannot serve is
/// "not ready", not an error.
pub fn ready(catalog: &Catalog, model: &str, version: Option<&str>) -> Result<bool, ApiError> {
    match catalog.lookup(model, version) {
        Ok(_) => Ok(true),
        Err(err) if err.kind == ErrorKind::Unavailable => Ok(false),
        Err(err) => Err(err),
    }
}

/// Triton's backend name for a platform.
fn backend(platform: Platform) -> &'static str {
    match platform {
        Platform::Onnx => "onnxruntime",
        Platform::Torch => "pytorch",
        Platform::Remote => "remote",
    }
}

/// Triton's `instance_group`s: where the instances really run. TorchScript
/// instances are grouped by device (`KIND_GPU` with its `gpus`); a remote
/// model's instances are concurrent upstream calls, placed by the upstream
/// (`KIND_MODEL`).
fn instance_groups(config: &ModelConfig) -> Vec<serde_json::Value> {
    match (&config.platform, &config.torch) {
        (Platform::Torch, Some(torch)) => {
            let mut groups: Vec<(TorchDevice, usize)> = Vec::new();
            for device in &torch.instance_devices {
                match groups.last_mut() {
                    Some((last, count)) if last == device => *count += 1,
                    _ => groups.push((*device, 1)),
                }
            }
            groups
                .into_iter()
                .map(|(device, count)| match device {
                    TorchDevice::Cpu => json!({"count": count, "kind": "KIND_CPU"}),
                    TorchDevice::Cuda(gpu) => {
                        json!({"count": count, "kind": "KIND_GPU", "gpus": [gpu]})
                    }
                })
                .collect()
        }
        (Platform::Remote, _) => {
            vec![json!({"count": config.instance_count, "kind": "KIND_MODEL"})]
        }
        _ => vec![json!({"count": config.instance_count, "kind": "KIND_CPU"})],
    }
}

/// The configuration in Triton's JSON shape, so `get_model_config` works.
pub fn triton_config(model: &ModelVersion) -> serde_json::Value {
    config_of(
        &model.name,
        &model.config,
        &model.signature.inputs,
        &model.signature.outputs,
    )
}

fn config_of(
    name: &str,
    config: &ModelConfig,
    inputs: &[TensorSpec],
    outputs: &[TensorSpec],
) -> serde_json::Value {
    let batching = config.max_batch_size > 0;
    let dims = |spec: &TensorSpec| -> Vec<i64> {
        if batching {
            spec.shape.iter().skip(1).copied().collect()
        } else {
            spec.shape.clone()
        }
    };
    let tensors = |specs: &[TensorSpec]| -> Vec<serde_json::Value> {
        specs
            .iter()
            .map(|spec| {
                let dt = match spec.datatype {
                    DataType::Bytes => "TYPE_STRING".to_owned(),
                    other => format!("TYPE_{}", other.as_str()),
                };
                json!({"name": spec.name, "data_type": dt, "dims": dims(spec)})
            })
            .collect()
    };
    json!({
        "name": name,
        "platform": config.platform.as_str(),
        "backend": backend(config.platform),
        "max_batch_size": config.max_batch_size,
        "input": tensors(inputs),
        "output": tensors(outputs),
        "instance_group": instance_groups(config),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::{ConfigDefaults, DEFAULT_MAX_REQUEST_TIME};
    use switchyard_runtimes::onnx::OnnxOptions;

    fn defaults() -> ConfigDefaults {
        ConfigDefaults {
            queue_capacity: 16,
            max_request_time: DEFAULT_MAX_REQUEST_TIME,
            onnx: OnnxOptions::default(),
        }
    }

    fn config(yaml: &str) -> serde_json::Value {
        let config = ModelConfig::parse(yaml, &defaults()).unwrap();
        config_of("m", &config, &config.inputs, &config.outputs)
    }

    #[test]
    fn the_config_answer_names_the_real_backend_and_placement() {
        let onnx = config("instance_count: 2\n");
        assert_eq!(
            (onnx["platform"].as_str(), onnx["backend"].as_str()),
            (Some("onnxruntime_onnx"), Some("onnxruntime"))
        );
        assert_eq!(
            onnx["instance_group"],
            json!([{"count": 2, "kind": "KIND_CPU"}])
        );

        let torch = config(
            "platform: pytorch_libtorch\nmax_batch_size: 8\ninstance_count: 2\n\
             inputs: [{name: x, datatype: FP32, dims: [4]}]\noutputs: [{name: y, datatype: FP32, dims: [4]}]\n\
             torch: {devices: [cpu, cuda:1]}\n",
        );
        assert_eq!(torch["backend"], "pytorch");
        assert_eq!(
            torch["instance_group"],
            json!([{"count": 2, "kind": "KIND_CPU"}, {"count": 2, "kind": "KIND_GPU", "gpus": [1]}])
        );
        assert_eq!(
            torch["input"],
            json!([{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}])
        );

        let remote = config(
            "platform: remote\ninputs: [{name: x, datatype: FP32, dims: [-1, 4]}]\n\
             outputs: [{name: y, datatype: FP32, dims: [-1]}]\nremote: {upstreams: [127.0.0.1:9], model: m}\n",
        );
        assert_eq!(
            (remote["platform"].as_str(), remote["backend"].as_str()),
            (Some("remote"), Some("remote"))
        );
        assert_eq!(
            remote["instance_group"],
            json!([{"count": 16, "kind": "KIND_MODEL"}])
        );
    }
}
