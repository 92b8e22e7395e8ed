//! What both edges say about a model, built once: its metadata (versions,
//! platform, signature), its readiness, and its configuration in Triton's
//! shape with the real backend and instance placement (`get_model_config`).

use serde_json::json;
use switchyard_runtimes::torch::TorchDevice;
use switchyard_runtimes::{DataType, TensorSpec};

use switchyard_proto as proto;

use crate::config::model::{ModelConfig, Platform, VersionPolicy};
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
    if version.is_none_or(str::is_empty)
        && let Some(served) = catalog.endpoint_model(model)
    {
        // An endpoint answers with what its variants take and give (the
        // heaviest ready one's), under its own name; it has no versions.
        let found = served?;
        return Ok(Metadata {
            name: model.to_owned(),
            versions: Vec::new(),
            platform: found.config.platform.as_str(),
            inputs: found.signature.inputs.clone(),
            outputs: found.signature.outputs.clone(),
        });
    }
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
    if version.is_none_or(str::is_empty)
        && let Some(served) = catalog.endpoint_model(model)
    {
        return Ok(served.is_ok());
    }
    match catalog.lookup(model, version) {
        Ok(_) => Ok(true),
        Err(err) if err.kind == ErrorKind::Unavailable => Ok(false),
        // Unloaded but still in the repository: not ready, as Triton answers.
        Err(err)
            if err.kind == ErrorKind::NotFound
                && catalog.known_models.iter().any(|known| known == model) =>
        {
            Ok(false)
        }
        Err(err) => Err(err),
    }
}

/// Triton's backend name for a platform.
fn backend(platform: Platform) -> &'static str {
    match platform {
        Platform::Onnx => "onnxruntime",
        Platform::Torch => "pytorch",
        Platform::Remote => "remote",
        Platform::Pipeline => "pipeline",
        Platform::Ensemble => "ensemble",
    }
}

/// Triton's type name of a datatype (`BYTES` is `TYPE_STRING` there).
fn triton_type(datatype: DataType) -> proto::DataType {
    let name = match datatype {
        DataType::Bytes => "TYPE_STRING".to_owned(),
        other => format!("TYPE_{}", other.as_str()),
    };
    proto::DataType::from_str_name(&name).unwrap_or(proto::DataType::TypeInvalid)
}

/// Triton's `instance_group`s: where the instances really run. TorchScript
/// instances are grouped by device (`KIND_GPU` with its `gpus`); a remote
/// model's instances are concurrent upstream calls, placed by the upstream
/// (`KIND_MODEL`).
fn instance_groups(config: &ModelConfig) -> Vec<proto::ModelInstanceGroup> {
    use proto::model_instance_group::Kind;
    let group = |count: usize, kind: Kind, gpus: Vec<i32>| proto::ModelInstanceGroup {
        name: String::new(),
        kind: kind as i32,
        count: i32::try_from(count).unwrap_or(i32::MAX),
        gpus,
    };
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
                    TorchDevice::Cpu => group(count, Kind::Cpu, Vec::new()),
                    TorchDevice::Cuda(gpu) => group(
                        count,
                        Kind::Gpu,
                        vec![i32::try_from(gpu).unwrap_or(i32::MAX)],
                    ),
                })
                .collect()
        }
        (Platform::Remote, _) => vec![group(config.instance_count, Kind::Model, Vec::new())],
        // Composed models run in their steps' instances (Triton lists none).
        (Platform::Pipeline | Platform::Ensemble, _) => Vec::new(),
        _ => vec![group(config.instance_count, Kind::Cpu, Vec::new())],
    }
}

fn version_policy(policy: &VersionPolicy) -> proto::ModelVersionPolicy {
    use proto::model_version_policy::{All, Latest, PolicyChoice, Specific};
    let choice = match policy {
        VersionPolicy::Latest(n) => PolicyChoice::Latest(Latest {
            num_versions: u32::try_from(*n).unwrap_or(u32::MAX),
        }),
        VersionPolicy::All => PolicyChoice::All(All {}),
        VersionPolicy::Specific(versions) => PolicyChoice::Specific(Specific {
            versions: versions
                .iter()
                .map(|&v| i64::try_from(v).unwrap_or(i64::MAX))
                .collect(),
        }),
    };
    proto::ModelVersionPolicy {
        policy_choice: Some(choice),
    }
}

fn dynamic_batching(config: &ModelConfig) -> Option<proto::ModelDynamicBatching> {
    let batching = config.dynamic_batching.as_ref()?;
    let queue = &config.queue;
    Some(proto::ModelDynamicBatching {
        preferred_batch_size: batching
            .preferred_batch_sizes
            .iter()
            .map(|&p| i32::try_from(p).unwrap_or(i32::MAX))
            .collect(),
        max_queue_delay_microseconds: u64::try_from(batching.max_queue_delay.as_micros())
            .unwrap_or(u64::MAX),
        preserve_ordering: false,
        priority_levels: u64::from(queue.priority_levels),
        default_priority_level: u64::from(queue.default_priority),
        default_queue_policy: Some(proto::ModelQueuePolicy {
            // Both of our timeout actions refuse the request (504 or 429): Triton's REJECT.
            timeout_action: proto::model_queue_policy::TimeoutAction::Reject as i32,
            default_timeout_microseconds: queue
                .default_timeout
                .map_or(0, |t| u64::try_from(t.as_micros()).unwrap_or(u64::MAX)),
            allow_timeout_override: true,
            max_queue_size: u32::try_from(queue.capacity).unwrap_or(u32::MAX),
        }),
    })
}

/// The configuration in Triton's shape, the one answer both edges give
/// (`get_model_config` over gRPC as this message, over HTTP as `config_json`).
pub fn triton_config(model: &ModelVersion) -> proto::ModelConfig {
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
) -> proto::ModelConfig {
    let batching = config.max_batch_size > 0;
    let dims = |spec: &TensorSpec| -> Vec<i64> {
        if batching {
            spec.shape.iter().skip(1).copied().collect()
        } else {
            spec.shape.clone()
        }
    };
    proto::ModelConfig {
        name: name.to_owned(),
        platform: config.platform.as_str().to_owned(),
        backend: backend(config.platform).to_owned(),
        version_policy: Some(version_policy(&config.version_policy)),
        max_batch_size: i32::try_from(config.max_batch_size).unwrap_or(i32::MAX),
        input: inputs
            .iter()
            .map(|spec| proto::ModelInput {
                name: spec.name.clone(),
                data_type: triton_type(spec.datatype) as i32,
                dims: dims(spec),
            })
            .collect(),
        output: outputs
            .iter()
            .map(|spec| proto::ModelOutput {
                name: spec.name.clone(),
                data_type: triton_type(spec.datatype) as i32,
                dims: dims(spec),
            })
            .collect(),
        dynamic_batching: dynamic_batching(config),
        instance_group: instance_groups(config),
        ensemble_scheduling: config.pipeline.as_deref().map(ensembling),
    }
}

/// A pipeline's steps as Triton's `ensemble_scheduling`: each map's value is
/// the tensor as the config names it (`step.output`, or a pipeline input).
fn ensembling(spec: &crate::config::pipeline::PipelineSpec) -> proto::ModelEnsembling {
    use crate::config::pipeline::{StepTarget, TensorRef};
    let consumed: Vec<&TensorRef> = spec
        .steps
        .iter()
        .flat_map(|s| s.inputs.iter().map(|(_, r)| r))
        .chain(spec.outputs.iter().flat_map(|o| o.from.iter()))
        .collect();
    let step = spec
        .steps
        .iter()
        .enumerate()
        .map(|(index, step)| {
            let (model_name, model_version) = match &step.target {
                StepTarget::Model { name, version } => (
                    name.clone(),
                    version.map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX)),
                ),
                StepTarget::Endpoint(name) => (name.clone(), -1),
            };
            let mut output_map = std::collections::HashMap::new();
            for tensor in &consumed {
                if let TensorRef::Output { step: from, name } = tensor
                    && *from == index
                {
                    output_map.insert(name.clone(), spec.describe(tensor));
                }
            }
            proto::model_ensembling::Step {
                model_name,
                model_version,
                input_map: step
                    .inputs
                    .iter()
                    .map(|(input, tensor)| (input.clone(), spec.describe(tensor)))
                    .collect(),
                output_map,
            }
        })
        .collect();
    proto::ModelEnsembling { step }
}

/// The same configuration as Triton's HTTP answer writes it (enum names,
/// fields Triton prints; numbers as JSON numbers).
pub fn config_json(config: &proto::ModelConfig) -> serde_json::Value {
    let type_name = |t: i32| {
        proto::DataType::try_from(t)
            .map(|t| t.as_str_name())
            .unwrap_or("TYPE_INVALID")
    };
    let tensor = |name: &str, data_type: i32, dims: &[i64]| json!({"name": name, "data_type": type_name(data_type), "dims": dims});
    let groups: Vec<serde_json::Value> = config
        .instance_group
        .iter()
        .map(|g| {
            let kind = proto::model_instance_group::Kind::try_from(g.kind)
                .map(|k| k.as_str_name())
                .unwrap_or("KIND_AUTO");
            let mut group = json!({"count": g.count, "kind": kind});
            if !g.gpus.is_empty() {
                group["gpus"] = json!(g.gpus);
            }
            group
        })
        .collect();
    let mut out = json!({
        "name": config.name,
        "platform": config.platform,
        "backend": config.backend,
        "max_batch_size": config.max_batch_size,
        "input": config.input.iter().map(|t| tensor(&t.name, t.data_type, &t.dims)).collect::<Vec<_>>(),
        "output": config.output.iter().map(|t| tensor(&t.name, t.data_type, &t.dims)).collect::<Vec<_>>(),
        "instance_group": groups,
    });
    use proto::model_version_policy::PolicyChoice;
    if let Some(choice) = config
        .version_policy
        .as_ref()
        .and_then(|p| p.policy_choice.as_ref())
    {
        out["version_policy"] = match choice {
            PolicyChoice::Latest(l) => json!({"latest": {"num_versions": l.num_versions}}),
            PolicyChoice::All(_) => json!({"all": {}}),
            PolicyChoice::Specific(s) => json!({"specific": {"versions": s.versions}}),
        };
    }
    if let Some(b) = &config.dynamic_batching {
        let mut batching = json!({
            "preferred_batch_size": b.preferred_batch_size,
            "max_queue_delay_microseconds": b.max_queue_delay_microseconds,
            "priority_levels": b.priority_levels,
            "default_priority_level": b.default_priority_level,
        });
        if let Some(q) = &b.default_queue_policy {
            batching["default_queue_policy"] = json!({
                "timeout_action": "REJECT",
                "default_timeout_microseconds": q.default_timeout_microseconds,
                "allow_timeout_override": q.allow_timeout_override,
                "max_queue_size": q.max_queue_size,
            });
        }
        out["dynamic_batching"] = batching;
    }
    if let Some(ensembling) = &config.ensemble_scheduling {
        let steps: Vec<serde_json::Value> = ensembling
            .step
            .iter()
            .map(|s| {
                // Sorted, so the answer is the same every time.
                fn sorted(
                    m: &std::collections::HashMap<String, String>,
                ) -> std::collections::BTreeMap<&String, &String> {
                    m.iter().collect()
                }
                json!({
                    "model_name": s.model_name,
                    "model_version": s.model_version,
                    "input_map": sorted(&s.input_map),
                    "output_map": sorted(&s.output_map),
                })
            })
            .collect();
        out["ensemble_scheduling"] = json!({ "step": steps });
    }
    out
}

/// The statistics extension's answer: every loaded version of `model` (all
/// models when empty), or the one `version` names.
pub fn statistics(
    catalog: &Catalog,
    model: &str,
    version: Option<&str>,
) -> Result<Vec<proto::ModelStatistics>, ApiError> {
    let versions: Vec<std::sync::Arc<ModelVersion>> = if model.is_empty() {
        catalog
            .models
            .values()
            .flat_map(|entry| entry.versions.values().cloned())
            .collect()
    } else if let Some(version) = version {
        vec![catalog.lookup(model, Some(version))?]
    } else {
        let entry = catalog
            .models
            .get(model)
            .ok_or_else(|| ApiError::not_found(format!("unknown model `{model}`")))?;
        entry.versions.values().cloned().collect()
    };
    Ok(versions.iter().map(|v| version_statistics(v)).collect())
}

fn duration(pair: (u64, u64)) -> Option<proto::StatisticDuration> {
    Some(proto::StatisticDuration {
        count: pair.0,
        ns: pair.1,
    })
}

fn version_statistics(model: &ModelVersion) -> proto::ModelStatistics {
    use std::sync::atomic::Ordering;
    let stats = model.stats();
    let (computed, compute_ns) = stats.compute_infer.read();
    let zero = |count: u64| duration((count, 0));
    proto::ModelStatistics {
        name: model.name.clone(),
        version: model.version.to_string(),
        last_inference: stats.last_inference_ms.load(Ordering::Relaxed),
        inference_count: stats.inference_count.load(Ordering::Relaxed),
        execution_count: stats.execution_count.load(Ordering::Relaxed),
        inference_stats: Some(proto::InferStatistics {
            success: duration(stats.success.read()),
            fail: duration(stats.fail.read()),
            queue: duration(stats.queue.read()),
            // The runtime call joins inputs and copies outputs: all inside compute_infer.
            compute_input: zero(computed),
            compute_infer: duration((computed, compute_ns)),
            compute_output: zero(computed),
            cache_hit: duration((0, 0)),
            cache_miss: duration((0, 0)),
        }),
        batch_stats: stats
            .batches
            .iter()
            .enumerate()
            .filter(|(_, d)| d.read().0 > 0)
            .map(|(size, d)| {
                let (count, ns) = d.read();
                proto::InferBatchStatistics {
                    batch_size: size as u64,
                    compute_input: zero(count),
                    compute_infer: duration((count, ns)),
                    compute_output: zero(count),
                }
            })
            .collect(),
    }
}

/// The statistics as Triton's HTTP answer writes them.
pub fn statistics_json(stats: &[proto::ModelStatistics]) -> serde_json::Value {
    let pair = |d: &Option<proto::StatisticDuration>| {
        let d = d.unwrap_or_default();
        json!({"count": d.count, "ns": d.ns})
    };
    let models: Vec<serde_json::Value> = stats
        .iter()
        .map(|m| {
            let i = m.inference_stats.unwrap_or_default();
            json!({
                "name": m.name,
                "version": m.version,
                "last_inference": m.last_inference,
                "inference_count": m.inference_count,
                "execution_count": m.execution_count,
                "inference_stats": {
                    "success": pair(&i.success), "fail": pair(&i.fail), "queue": pair(&i.queue),
                    "compute_input": pair(&i.compute_input), "compute_infer": pair(&i.compute_infer),
                    "compute_output": pair(&i.compute_output), "cache_hit": pair(&i.cache_hit),
                    "cache_miss": pair(&i.cache_miss),
                },
                "batch_stats": m.batch_stats.iter().map(|b| json!({
                    "batch_size": b.batch_size,
                    "compute_input": pair(&b.compute_input),
                    "compute_infer": pair(&b.compute_infer),
                    "compute_output": pair(&b.compute_output),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({"model_stats": models})
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
        config_json(&config_of("m", &config, &config.inputs, &config.outputs))
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
