use super::*;
use switchyard_runtimes::{DataType, Signature};

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

#[test]
fn pipelines_parse_and_refuse_what_has_no_meaning_for_them() {
    let text = r#"
platform: pipeline
max_batch_size: 8
inputs: [{name: raw, datatype: FP32, dims: [4]}]
outputs:
  - {name: scores, datatype: FP32, dims: [3], from: [deep.output, fast.output]}
steps:
  - {name: deep, model: big, version: 2, inputs: {input: raw}, when: {parameter: deep, equals: true}}
  - {name: fast, model: small, inputs: {input: raw}, when: {parameter: deep, not_equals: true}}
"#;
    let config = ModelConfig::parse(text, &defaults()).unwrap();
    assert_eq!(config.platform, Platform::Pipeline);
    assert!(!config.warmup);
    let spec = config.pipeline.as_ref().unwrap();
    assert_eq!(spec.steps.len(), 2);
    assert_eq!(spec.outputs[0].from.len(), 2);
    for (extra, field) in [
        (
            "dynamic_batching: {max_queue_delay_us: 10}\n",
            "dynamic_batching",
        ),
        ("instance_count: 2\n", "instance_count"),
    ] {
        let err = ModelConfig::parse(&format!("{text}{extra}"), &defaults()).unwrap_err();
        assert!(err.contains(field), "{err}");
    }
    let undeclared = "platform: pipeline\nsteps: [{name: a, model: m, inputs: {x: y}}]\n";
    assert!(
        ModelConfig::parse(undeclared, &defaults())
            .unwrap_err()
            .contains("declares its `inputs` and `outputs`")
    );
    let stray_from = "inputs: [{name: x, datatype: FP32, dims: [1]}]\noutputs: [{name: y, datatype: FP32, dims: [1], from: a.b}]\n";
    assert!(
        ModelConfig::parse(stray_from, &defaults())
            .unwrap_err()
            .contains("`from` is for the outputs of a pipeline")
    );
}

#[test]
fn triton_ensembles_map_their_steps() {
    let text = r#"
name: "ens"
platform: "ensemble"
max_batch_size: 8
input [ { name: "RAW" data_type: TYPE_FP32 dims: [ 256 ] } ]
output [ { name: "PROB" data_type: TYPE_FP32 dims: [ 10 ] } ]
ensemble_scheduling {
  step [
    {
      model_name: "pre"
      model_version: -1
      input_map { key: "raw" value: "RAW" }
      output_map { key: "normalized" value: "mid" }
    },
    {
      model_name: "mlp"
      model_version: 3
      input_map { key: "input" value: "mid" }
      output_map { key: "output" value: "PROB" }
    }
  ]
}
"#;
    let (config, warnings) = from_triton(text, "ens", &defaults()).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(config.platform, Platform::Ensemble);
    let spec = config.pipeline.as_ref().unwrap();
    assert_eq!(spec.steps[1].after, vec![0]);
    assert_eq!(
        spec.steps[1].target,
        crate::config::pipeline::StepTarget::Model {
            name: "mlp".into(),
            version: Some(3)
        }
    );
    assert_eq!(spec.describe(&spec.outputs[0].from[0]), "mlp.output");
    let broken = text.replace("value: \"mid\" }\n    }", "value: \"elsewhere\" }\n    }");
    let err = from_triton(&broken, "ens", &defaults()).unwrap_err();
    assert!(err.contains("never produced"), "{err}");
}
