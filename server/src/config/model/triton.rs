//! Triton's `config.pbtxt`, mapped onto the same raw config a `config.yaml`
//! gives: supported fields are taken (typed, range-checked), every other one
//! is reported once as a warning, never silently ignored.

use switchyard_runtimes::DataType;
use switchyard_runtimes::torch::TorchDevice;

use super::raw::*;
use super::*;

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
                let mut label_filename = None;
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
                        "label_filename" => label_filename = text_of(v),
                        other => warnings
                            .push(format!("{kind}.{other} is not supported and has no effect")),
                    }
                }
                Ok(RawTensorConfig {
                    name: name.ok_or_else(|| format!("config.pbtxt: an {kind} has no name"))?,
                    datatype: datatype
                        .ok_or_else(|| format!("config.pbtxt: an {kind} has no data_type"))?,
                    dims,
                    label_filename,
                    from: None,
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
            "ensemble_scheduling" => {
                let m = value
                    .as_message()
                    .ok_or("config.pbtxt: ensemble_scheduling must be a message")?;
                let mut steps = Vec::new();
                for step in m.all("step") {
                    steps.push(ensemble_step(step, &mut warnings)?);
                }
                raw.ensemble_steps = Some(steps);
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

/// One `ensemble_scheduling.step`: model, version, and its maps.
fn ensemble_step(
    value: &crate::config::pbtxt::Value,
    warnings: &mut Vec<String>,
) -> Result<crate::config::pipeline::EnsembleStep, String> {
    let m = value
        .as_message()
        .ok_or("config.pbtxt: ensemble_scheduling.step must be a message")?;
    let mut step = crate::config::pipeline::EnsembleStep {
        model_version: -1,
        ..Default::default()
    };
    // A map entry is `{ key: "..." value: "..." }`.
    let entry =
        |v: &crate::config::pbtxt::Value, field: &str| -> Result<(String, String), String> {
            let e = v
                .as_message()
                .ok_or_else(|| format!("config.pbtxt: ensemble step `{field}` must be a map"))?;
            let text = |name: &str| {
                e.first(name)
                    .and_then(|v| v.as_text())
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        format!("config.pbtxt: an ensemble step's `{field}` entry needs `{name}`")
                    })
            };
            Ok((text("key")?, text("value")?))
        };
    for (field, v) in &m.fields {
        match field.as_str() {
            "model_name" => step.model_name = v.as_text().unwrap_or_default().to_owned(),
            "model_version" => {
                step.model_version = v.as_i64().ok_or(
                    "config.pbtxt: ensemble step model_version must be an integer (-1 = latest)",
                )?
            }
            "input_map" => step.input_map.push(entry(v, "input_map")?),
            "output_map" => step.output_map.push(entry(v, "output_map")?),
            other => warnings.push(format!(
                "ensemble_scheduling.step.{other} is not supported and has no effect"
            )),
        }
    }
    Ok(step)
}
