//! The ONNX backend against the real sample models (made by `make models`)
//! and the real ONNX Runtime library (fetched by scripts/fetch-onnxruntime.sh).

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is a failed test.

use std::path::PathBuf;

use half::f16;
use switchyard_runtimes::onnx::{OnnxOptions, OnnxRuntime};
use switchyard_runtimes::{DataType, Runtime, Tensor, TensorSpec};

fn model(name: &str) -> PathBuf {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../models/{name}/1/model.onnx"));
    assert!(
        path.exists(),
        "{} is missing: run `make models` first",
        path.display()
    );
    path
}

#[test]
fn signature_is_read_from_the_model() {
    let rt = OnnxRuntime::load(&model("iris"), &OnnxOptions::default()).unwrap();
    let sig = rt.signature();
    assert_eq!(
        sig.inputs,
        vec![TensorSpec::new("input", DataType::Fp32, vec![-1, 4])]
    );
    assert_eq!(
        sig.outputs,
        vec![
            TensorSpec::new("label", DataType::Int64, vec![-1]),
            TensorSpec::new("probabilities", DataType::Fp32, vec![-1, 3]),
        ]
    );
}

#[test]
fn typed_model_round_trips_every_datatype() {
    let mut rt = OnnxRuntime::load(&model("typed"), &OnnxOptions::default()).unwrap();
    let ids: Vec<i64> = (0..8).collect();
    let half: Vec<f16> = (0..8).map(|i| f16::from_f32(i as f32)).collect();
    let inputs = vec![
        Tensor::from_slice("ids", DataType::Int64, vec![2, 4], &ids).unwrap(),
        Tensor::from_slice(
            "mask",
            DataType::Bool,
            vec![2, 4],
            &[1u8, 0, 1, 0, 0, 0, 1, 1],
        )
        .unwrap(),
        Tensor::from_slice("half", DataType::Fp16, vec![2, 4], &half).unwrap(),
        Tensor::from_byte_strings("text", vec![2, 1], [&b"hello"[..], "wörld".as_bytes()]).unwrap(),
    ];
    let out = rt.run(&inputs).unwrap();
    let names: Vec<&str> = out.iter().map(Tensor::name).collect();
    assert_eq!(
        names,
        ["ids_doubled", "mask_inverted", "half_scaled", "text_copy"]
    );
    assert_eq!(
        out[0].as_slice::<i64>().as_ref(),
        &[0, 2, 4, 6, 8, 10, 12, 14]
    );
    assert_eq!(out[1].data().as_ref(), &[0, 1, 0, 1, 1, 1, 0, 0]);
    let scaled: Vec<f32> = out[2]
        .as_slice::<f16>()
        .iter()
        .map(|v| v.to_f32())
        .collect();
    assert_eq!(scaled, vec![0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]);
    let text: Vec<&[u8]> = out[3].byte_strings().collect();
    assert_eq!(text, vec![&b"hello"[..], "wörld".as_bytes()]);
    assert_eq!(out[3].shape(), &[2, 1]);
}

#[test]
fn runtime_errors_are_reported_not_panics() {
    let mut rt = OnnxRuntime::load(&model("mlp"), &OnnxOptions::default()).unwrap();
    // Wrong inner dim: ORT refuses it; we get an error value.
    let bad = Tensor::from_slice("input", DataType::Fp32, vec![1, 3], &[0f32; 3]).unwrap();
    assert!(rt.run(&[bad]).is_err());
    let ok = Tensor::from_slice("input", DataType::Fp32, vec![2, 256], &[0.5f32; 512]).unwrap();
    let out = rt.run(&[ok]).unwrap();
    assert_eq!(out[0].shape(), &[2, 10]);
}

#[test]
fn a_corrupt_model_file_is_a_load_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.onnx");
    std::fs::write(&path, b"not an onnx model").unwrap();
    let err = OnnxRuntime::load(&path, &OnnxOptions::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("model.onnx"), "{err}");
}
