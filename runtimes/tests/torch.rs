//! The libtorch backend against the TorchScript samples (made by
//! `make torch-models`) and the lean libtorch (scripts/fetch-libtorch.sh).
//! Built only with `--features torch`; values against PyTorch itself are
//! checked in tests/python/torchscript.

#![cfg(feature = "torch")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is a failed test.

use std::path::PathBuf;

use bytes::Bytes;
use half::{bf16, f16};
use switchyard_runtimes::torch::{TorchDevice, TorchOptions, TorchRuntime, cuda_status};
use switchyard_runtimes::{DataType, Runtime, RuntimeError, Signature, Tensor, TensorSpec};

fn model(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../models/torch/{name}/1/model.pt"));
    assert!(
        path.exists(),
        "{} is missing: run `make torch-models` first",
        path.display()
    );
    path
}

fn spec(name: &str, datatype: DataType, dims: &[i64]) -> TensorSpec {
    TensorSpec::new(
        name,
        datatype,
        std::iter::once(-1).chain(dims.iter().copied()).collect(),
    )
}

fn typed_signature() -> Signature {
    Signature {
        inputs: vec![
            spec("ids", DataType::Int64, &[4]),
            spec("mask", DataType::Bool, &[4]),
            spec("half", DataType::Fp16, &[4]),
            spec("brain", DataType::Bf16, &[4]),
        ],
        outputs: vec![
            spec("ids_doubled", DataType::Int64, &[4]),
            spec("mask_inverted", DataType::Bool, &[4]),
            spec("half_scaled", DataType::Fp16, &[4]),
            spec("brain_doubled", DataType::Bf16, &[4]),
        ],
    }
}

fn typed_inputs() -> Vec<Tensor> {
    let ids: Vec<i64> = vec![1, -2, 1 << 40, 7];
    let half: Vec<f16> = [1.0f32, -3.0, 0.5, 8.0].map(f16::from_f32).to_vec();
    let brain: Vec<bf16> = [2.0f32, -0.25, 6.0, 1.5].map(bf16::from_f32).to_vec();
    vec![
        Tensor::from_slice("ids", DataType::Int64, vec![1, 4], &ids).unwrap(),
        Tensor::new(
            "mask",
            DataType::Bool,
            vec![1, 4],
            Bytes::from_static(&[1, 0, 0, 1]),
        )
        .unwrap(),
        Tensor::from_slice("half", DataType::Fp16, vec![1, 4], &half).unwrap(),
        Tensor::from_slice("brain", DataType::Bf16, vec![1, 4], &brain).unwrap(),
    ]
}

#[test]
fn every_datatype_goes_in_and_a_dict_comes_out_by_name() {
    let mut rt = TorchRuntime::load(
        &model("typed_torch"),
        &typed_signature(),
        &TorchOptions::default(),
    )
    .unwrap();
    // Inputs in another order than declared: they are matched by name.
    let mut inputs = typed_inputs();
    inputs.reverse();
    let outputs = rt.run(&inputs).unwrap();
    let names: Vec<&str> = outputs.iter().map(Tensor::name).collect();
    assert_eq!(
        names,
        [
            "ids_doubled",
            "mask_inverted",
            "half_scaled",
            "brain_doubled"
        ]
    );
    assert_eq!(
        outputs[0].as_slice::<i64>().to_vec(),
        vec![2, -4, 1 << 41, 14]
    );
    assert_eq!(outputs[1].data().as_ref(), &[0, 1, 1, 0]);
    assert_eq!(
        outputs[2].as_slice::<f16>().to_vec(),
        [0.5f32, -1.5, 0.25, 4.0].map(f16::from_f32).to_vec()
    );
    assert_eq!(
        outputs[3].as_slice::<bf16>().to_vec(),
        [4.0f32, -0.5, 12.0, 3.0].map(bf16::from_f32).to_vec()
    );
    assert!(outputs.iter().all(|t| t.shape() == [1, 4]));
}

/// The `mlp` weights as TorchScript; forward returns (logits, probabilities).
fn mlp_torch() -> TorchRuntime {
    let signature = Signature {
        inputs: vec![spec("input", DataType::Fp32, &[256])],
        outputs: vec![
            spec("output", DataType::Fp32, &[10]),
            spec("probabilities", DataType::Fp32, &[10]),
        ],
    };
    TorchRuntime::load(&model("mlp_torch"), &signature, &TorchOptions::default()).unwrap()
}

#[test]
fn tuple_outputs_are_named_by_position_and_rows_are_independent() {
    let mut rt = mlp_torch();
    let rows: Vec<f32> = (0..3 * 256)
        .map(|i| ((i % 97) as f32 - 48.0) / 50.0)
        .collect();
    let batch = Tensor::from_slice("input", DataType::Fp32, vec![3, 256], &rows).unwrap();
    let outputs = rt.run(std::slice::from_ref(&batch)).unwrap();
    assert_eq!(outputs[0].shape(), [3, 10]);
    let probabilities = outputs[1].as_slice::<f32>();
    for row in probabilities.chunks(10) {
        let sum: f32 = row.iter().sum();
        assert!((sum - 1.0).abs() < 1e-5, "softmax row sums to {sum}");
    }
    // The second row alone gives what it gave inside the batch.
    let single =
        Tensor::from_slice("input", DataType::Fp32, vec![1, 256], &rows[256..512]).unwrap();
    let alone = rt.run(&[single]).unwrap();
    let batched = &outputs[0].as_slice::<f32>()[10..20];
    for (a, b) in alone[0].as_slice::<f32>().iter().zip(batched) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
}

#[test]
fn a_dict_without_a_declared_key_is_an_error_naming_it() {
    let mut signature = typed_signature();
    signature.outputs[1].name = "nope".to_owned();
    let mut rt =
        TorchRuntime::load(&model("typed_torch"), &signature, &TorchOptions::default()).unwrap();
    let err = rt.run(&typed_inputs()).unwrap_err();
    assert!(matches!(err, RuntimeError::Execution(_)), "{err:?}");
    assert!(err.to_string().contains("without the key `nope`"), "{err}");
}

#[test]
fn forward_errors_are_short_and_the_instance_keeps_working() {
    let signature = Signature {
        inputs: vec![spec("INPUT__0", DataType::Fp32, &[4])],
        outputs: vec![spec("OUTPUT__0", DataType::Fp32, &[4])],
    };
    let mut rt =
        TorchRuntime::load(&model("guarded"), &signature, &TorchOptions::default()).unwrap();
    let bad = Tensor::from_slice(
        "INPUT__0",
        DataType::Fp32,
        vec![1, 4],
        &[1.0f32, 2e3, 0.0, 0.0],
    )
    .unwrap();
    let err = rt.run(&[bad]).unwrap_err().to_string();
    assert!(err.contains("inputs must be at most 1000"), "{err}");
    assert!(!err.contains("frame #"), "{err}");
    let good = Tensor::from_slice(
        "INPUT__0",
        DataType::Fp32,
        vec![1, 4],
        &[1.0f32, 2.0, 3.0, 4.0],
    )
    .unwrap();
    let out = rt.run(&[good]).unwrap();
    assert_eq!(out[0].as_slice::<f32>().to_vec(), vec![2.0, 4.0, 6.0, 8.0]);
}

#[test]
fn fp16_inputs_can_be_cast_for_an_fp32_model() {
    let signature = Signature {
        inputs: vec![spec("INPUT__0", DataType::Fp16, &[4])],
        outputs: vec![spec("OUTPUT__0", DataType::Fp32, &[4])],
    };
    let options = TorchOptions {
        cast_inputs: Some(DataType::Fp32),
        ..TorchOptions::default()
    };
    let mut rt = TorchRuntime::load(&model("guarded"), &signature, &options).unwrap();
    let x: Vec<f16> = [0.5f32, 1.0, 1.5, 2.0].map(f16::from_f32).to_vec();
    let out = rt
        .run(&[Tensor::from_slice("INPUT__0", DataType::Fp16, vec![1, 4], &x).unwrap()])
        .unwrap();
    assert_eq!(out[0].datatype(), DataType::Fp32);
    assert_eq!(out[0].as_slice::<f32>().to_vec(), vec![1.0, 2.0, 3.0, 4.0]);
}

#[test]
fn unusable_settings_fail_at_load_with_reasons() {
    let signature = Signature {
        inputs: vec![spec("INPUT__0", DataType::Fp32, &[4])],
        outputs: vec![spec("OUTPUT__0", DataType::Fp32, &[4])],
    };
    let load = |signature: &Signature, options: TorchOptions| {
        TorchRuntime::load(&model("guarded"), signature, &options)
            .err()
            .expect("load should fail")
            .to_string()
    };
    let autocast_on_cpu = load(
        &signature,
        TorchOptions {
            autocast_fp16: true,
            ..TorchOptions::default()
        },
    );
    assert!(
        autocast_on_cpu.contains("autocast_fp16 applies to CUDA"),
        "{autocast_on_cpu}"
    );
    if !cuda_status().cuda_available {
        let gpu = load(
            &signature,
            TorchOptions {
                device: TorchDevice::Cuda(0),
                ..TorchOptions::default()
            },
        );
        assert!(gpu.contains("cuda:0 is not available"), "{gpu}");
    }
    let mut bytes = signature.clone();
    bytes.inputs[0].datatype = DataType::Bytes;
    let err = load(&bytes, TorchOptions::default());
    assert!(err.contains("cannot carry"), "{err}");
    let undeclared = load(&Signature::default(), TorchOptions::default());
    assert!(
        undeclared.contains("declare `inputs` and `outputs`"),
        "{undeclared}"
    );
    let missing = TorchRuntime::load(
        std::path::Path::new("/nonexistent/model.pt"),
        &signature,
        &TorchOptions::default(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        missing.contains("not a loadable TorchScript module"),
        "{missing}"
    );
}

#[test]
fn the_process_uses_the_threads_it_was_given() {
    switchyard_runtimes::torch::init(1);
    assert_eq!(cuda_status().intra_op_threads, 1);
}

#[test]
fn row_blocks_run_as_one_batch_without_joining_first() {
    let mut rt = mlp_torch();
    let rows: Vec<f32> = (0..3 * 256)
        .map(|i| ((i % 89) as f32 - 44.0) / 40.0)
        .collect();
    let joined = Tensor::from_slice("input", DataType::Fp32, vec![3, 256], &rows).unwrap();
    let first = Tensor::from_slice("input", DataType::Fp32, vec![1, 256], &rows[..256]).unwrap();
    let rest = Tensor::from_slice("input", DataType::Fp32, vec![2, 256], &rows[256..]).unwrap();
    let whole = rt.run(&[joined]).unwrap();
    let blocks = rt
        .run_blocks(&[vec![first, rest.clone()]], &Default::default())
        .unwrap();
    assert_eq!(whole, blocks);
    let odd = Tensor::from_slice("input", DataType::Fp32, vec![2, 128], &rows[..256]).unwrap();
    let err = rt
        .run_blocks(&[vec![rest, odd]], &Default::default())
        .unwrap_err();
    assert!(err.to_string().contains("cannot be joined"), "{err}");
}
