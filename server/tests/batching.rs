//! Dynamic batching with the real `mlp` model and ONNX Runtime: many
//! concurrent clients, each with its own inputs, get exactly the result an
//! unbatched run gives, while batches of more than one request form.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is a failed test.

mod common;

use std::time::Duration;

use common::*;
use switchyard_proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use switchyard_proto::{ModelInferRequest, model_infer_request::InferInputTensor};
use switchyard_runtimes::onnx::{OnnxOptions, OnnxRuntime};
use switchyard_runtimes::{DataType, Runtime, Tensor};

fn repo_with_batching(config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let version = dir.path().join("mlp/1");
    std::fs::create_dir_all(&version).unwrap();
    std::os::unix::fs::symlink(
        models_dir()
            .join("mlp/1/model.onnx")
            .canonicalize()
            .unwrap(),
        version.join("model.onnx"),
    )
    .unwrap();
    std::fs::write(dir.path().join("mlp/config.yaml"), config).unwrap();
    dir
}

fn input(client: usize, rows: usize) -> Vec<f32> {
    (0..rows * 256)
        .map(|i| ((client * 7919 + i * 31) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_get_their_own_unbatched_results() {
    let repo = repo_with_batching(
        "max_batch_size: 64\ndynamic_batching: {max_queue_delay_us: 2000, dispatch_when_idle: false}\n",
    );
    let state = state_for(repo.path(), settings()).await;
    let mut server = TestServer::start(state, Duration::ZERO).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();

    let mut tasks = Vec::new();
    for client in 0..64usize {
        let channel = channel.clone();
        tasks.push(tokio::spawn(async move {
            let rows = client % 5 + 1;
            let data = input(client, rows);
            let request = ModelInferRequest {
                model_name: "mlp".into(),
                inputs: vec![InferInputTensor {
                    name: "input".into(),
                    datatype: "FP32".into(),
                    shape: vec![rows as i64, 256],
                    ..Default::default()
                }],
                raw_input_contents: vec![bytemuck::cast_slice::<f32, u8>(&data).to_vec().into()],
                ..Default::default()
            };
            let response = GrpcInferenceServiceClient::new(channel)
                .model_infer(request)
                .await
                .unwrap()
                .into_inner();
            (client, rows, response)
        }));
    }
    let mut runtime = OnnxRuntime::load(
        &models_dir().join("mlp/1/model.onnx"),
        &OnnxOptions::default(),
    )
    .unwrap();
    for task in tasks {
        let (client, rows, response) = task.await.unwrap();
        assert_eq!(response.outputs[0].shape, vec![rows as i64, 10]);
        let alone = runtime
            .run(&[Tensor::from_slice(
                "input",
                DataType::Fp32,
                vec![rows as i64, 256],
                &input(client, rows),
            )
            .unwrap()])
            .unwrap();
        let got: Vec<f32> = bytemuck::pod_collect_to_vec(&response.raw_output_contents[0]);
        let want = alone[0].as_slice::<f32>();
        // Row-exact: the answer is this client's rows, all of them, and no more.
        assert_eq!(
            got.len(),
            rows * 10,
            "client {client}: a truncated or padded answer"
        );
        assert_eq!(want.len(), rows * 10);
        for (g, w) in got.iter().zip(want.iter()) {
            assert!(
                (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                "client {client}: {g} vs {w}"
            );
        }
    }

    let (_, metrics) = http_request(server.metrics, "GET", "/metrics", b"").await;
    let text = String::from_utf8(metrics).unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
    };
    let batches = value(r#"switchyard_batch_size_count{model="mlp",version="1"}"#);
    let rows = value(r#"switchyard_batch_size_sum{model="mlp",version="1"}"#);
    assert_eq!(rows, (0..64).map(|c| (c % 5 + 1) as f64).sum::<f64>());
    // Requests merged: fewer runtime calls than requests (every client sends
    // one request, so 64 batches would mean no merging at all, whatever the rows).
    assert!(
        batches <= 32.0,
        "{batches} batches for 64 requests: batching did not merge"
    );
    assert!(
        text.contains("switchyard_queue_duration_seconds_count"),
        "{text}"
    );
    assert!(
        text.contains("switchyard_compute_duration_seconds_count"),
        "{text}"
    );
    server.trigger_shutdown();
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_request_over_max_batch_size_or_with_mismatched_rows_is_refused() {
    let repo = repo_with_batching("max_batch_size: 4\ndynamic_batching: {}\n");
    let state = state_for(repo.path(), settings()).await;
    let request = |rows: usize| switchyard::serve::infer::InferRequest {
        model: "mlp".into(),
        inputs: vec![
            Tensor::from_slice(
                "input",
                DataType::Fp32,
                vec![rows as i64, 256],
                &vec![0f32; rows * 256],
            )
            .unwrap(),
        ],
        ..Default::default()
    };
    let mut served = switchyard::serve::infer::Served {
        routed: None,
        model: None,
        started: std::time::Instant::now(),
    };
    let err = switchyard::serve::infer::infer(&state.edge.serving, request(5), &mut served)
        .await
        .unwrap_err();
    assert!(
        err.message.contains("takes at most 4 rows"),
        "{}",
        err.message
    );
    assert!(
        switchyard::serve::infer::infer(&state.edge.serving, request(4), &mut served)
            .await
            .is_ok()
    );
    // An empty batch is a batch: zero rows back, of the output's shape.
    let empty = switchyard::serve::infer::infer(&state.edge.serving, request(0), &mut served)
        .await
        .unwrap();
    assert_eq!(empty.outputs[0].shape(), &[0, 10]);
}
