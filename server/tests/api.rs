//! The REST router through `oneshot`, and both edges over real listeners on
//! port 0: inference, errors, health (including grpc.health.v1), metrics,
//! model control, and the drain sequence on shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is a failed test.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use switchyard_proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use switchyard_proto::{
    ModelInferRequest, RepositoryModelLoadRequest, model_infer_request::InferInputTensor,
};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tower::ServiceExt;

async fn call(
    state: &switchyard::App,
    method: &str,
    uri: &str,
    body: Value,
) -> (StatusCode, Value) {
    let body = if body.is_null() {
        Body::empty()
    } else {
        Body::from(body.to_string())
    };
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(body)
        .unwrap();
    let response = switchyard::edge::http::router(state.edge.clone())
        .oneshot(request)
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (status, json)
}

async fn channel(endpoint: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(endpoint.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn mlp_request(rows: usize) -> Value {
    json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [rows, 256], "data": vec![0.1f32; rows * 256]}]})
}

#[tokio::test]
async fn router_serves_inference_and_metadata() {
    let state = state_for(&models_dir(), settings()).await;
    let (status, body) = call(&state, "POST", "/v2/models/mlp/infer", mlp_request(2)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["model_name"], "mlp");
    assert_eq!(body["outputs"][0]["shape"], json!([2, 10]));
    assert_eq!(body["outputs"][0]["data"].as_array().unwrap().len(), 20);

    let (status, body) = call(&state, "GET", "/v2/models/iris", Value::Null).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["outputs"][0],
        json!({"name": "label", "datatype": "INT64", "shape": [-1]})
    );

    let (status, _) = call(&state, "GET", "/v2/health/ready", Value::Null).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn router_errors_are_json_with_the_right_status() {
    let state = state_for(&models_dir(), settings()).await;
    let cases = [
        (
            "/v2/models/none/infer",
            mlp_request(1),
            StatusCode::NOT_FOUND,
            "unknown model",
        ),
        (
            "/v2/models/mlp/versions/2/infer",
            mlp_request(1),
            StatusCode::NOT_FOUND,
            "no version 2",
        ),
        (
            "/v2/models/mlp/infer",
            json!({"inputs": [{"name": "input", "datatype": "INT32", "shape": [1, 256], "data": vec![1; 256]}]}),
            StatusCode::BAD_REQUEST,
            "expected datatype FP32, got INT32",
        ),
    ];
    for (uri, body, status, fragment) in cases {
        let (got, body) = call(&state, "POST", uri, body).await;
        assert_eq!(got, status, "{uri}: {body}");
        assert!(body["error"].as_str().unwrap().contains(fragment), "{body}");
    }
    // 1 MiB limit in these settings: 1100 rows of FP32[256] is over it.
    let (status, body) = call(&state, "POST", "/v2/models/mlp/infer", mlp_request(1100)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
}

#[tokio::test]
async fn model_control_loads_and_unloads_when_enabled() {
    let mut enabled = settings();
    enabled.model_control = true;
    let state = state_for(&models_dir(), enabled).await;
    let (status, _) = call(
        &state,
        "POST",
        "/v2/repository/models/iris/unload",
        Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = call(
        &state,
        "POST",
        "/v2/models/iris/infer",
        json!({"inputs": []}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (_, index) = call(&state, "POST", "/v2/repository/index", Value::Null).await;
    assert!(
        index
            .as_array()
            .unwrap()
            .iter()
            .any(|row| row["name"] == "iris" && row["state"] == "UNAVAILABLE")
    );
    // Not ready while a repository model is unloaded? No: strict readiness covers loaded models.
    let (status, _) = call(
        &state,
        "POST",
        "/v2/repository/models/iris/load",
        Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(&state, "GET", "/v2/models/iris/ready", Value::Null).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = call(
        &state,
        "POST",
        "/v2/repository/models/..%2Fetc/load",
        Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = call(
        &state,
        "POST",
        "/v2/repository/models/iris/load",
        json!({"parameters": {"config": "{}"}}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn grpc_inference_health_and_metrics_over_real_sockets() {
    let state = state_for(&models_dir(), settings()).await;
    let mut server = TestServer::start(state, Duration::ZERO).await;
    let endpoint = format!("http://{}", server.grpc);
    let mut client = GrpcInferenceServiceClient::new(channel(&endpoint).await);
    let request = ModelInferRequest {
        model_name: "mlp".into(),
        inputs: vec![InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![3, 256],
            ..Default::default()
        }],
        raw_input_contents: vec![vec![0u8; 3 * 256 * 4].into()],
        ..Default::default()
    };
    let response = client
        .model_infer(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.outputs[0].shape, vec![3, 10]);
    assert_eq!(response.raw_output_contents[0].len(), 3 * 10 * 4);
    // A zstd-compressed request (grpc-go and grpc-java clients can send one) is taken.
    let mut zstd = GrpcInferenceServiceClient::new(channel(&endpoint).await)
        .send_compressed(tonic::codec::CompressionEncoding::Zstd);
    let compressed = zstd.model_infer(request).await.unwrap().into_inner();
    assert_eq!(compressed.raw_output_contents, response.raw_output_contents);

    let err = client
        .repository_model_load(RepositoryModelLoadRequest {
            model_name: "mlp".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    let mut health = HealthClient::new(channel(&endpoint).await);
    for service in ["", "inference.GRPCInferenceService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }

    let (status, body) = http_request(server.metrics, "GET", "/metrics", b"").await;
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains(r#"switchyard_requests_total{model="mlp",outcome="success",protocol="grpc",version="1"} 2"#),
        "{text}"
    );
    assert!(text.contains("switchyard_model_ready"), "{text}");
    server.trigger_shutdown();
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_turns_readiness_false_before_closing_listeners() {
    let state = state_for(&models_dir(), settings()).await;
    let mut server = TestServer::start(state, Duration::from_millis(800)).await;
    let (status, _) = http_request(server.http, "GET", "/v2/health/ready", b"").await;
    assert_eq!(status, 200);

    server.trigger_shutdown();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Within the drain delay: not ready, still live, still serving inference.
    let (status, _) = http_request(server.http, "GET", "/v2/health/ready", b"").await;
    assert_eq!(status, 503);
    let (status, _) = http_request(server.http, "GET", "/v2/health/live", b"").await;
    assert_eq!(status, 200);
    let (status, body) = http_request(
        server.http,
        "POST",
        "/v2/models/mlp/infer",
        mlp_request(1).to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let mut health = HealthClient::new(channel(&format!("http://{}", server.grpc)).await);
    let status = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::NotServing as i32);

    tokio::time::timeout(Duration::from_secs(10), &mut server.task)
        .await
        .expect("serve returns after the drain")
        .unwrap()
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(server.http).await.is_err(),
        "listener closed"
    );
}
