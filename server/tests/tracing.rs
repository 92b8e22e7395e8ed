//! Traces: the real binary exports spans over OTLP/gRPC to a collector in this
//! test (the OTLP trace service from opentelemetry-proto, on 127.0.0.1:0). A
//! request carrying a W3C `traceparent` produces spans in that same trace:
//! infer → decode, queue, runtime, encode. With a remote model whose upstream
//! is a second Switchyard, the upstream's spans join the same trace too
//! (traceparent propagated over gRPC).

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is a failed test.

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::models_dir;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

/// (trace id, span name) of every span received.
type Received = Arc<Mutex<Vec<(Vec<u8>, String)>>>;

#[derive(Clone, Default)]
struct Collector {
    spans: Received,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push((span.trace_id, span.name));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_a_traced_request_reach_the_collector() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = TraceServiceServer::new(collector.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    // The upstream: a plain Switchyard serving the sample models.
    let (mut upstream, _, upstream_grpc) = start(&models_dir(), addr);
    // The gateway: a remote model `mlp-remote` forwarding to it.
    let repo = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(repo.path().join("mlp-remote")).unwrap();
    std::fs::write(
        repo.path().join("mlp-remote/config.yaml"),
        format!("platform: remote\nremote: {{upstreams: [\"{upstream_grpc}\"], model: mlp}}\n"),
    )
    .unwrap();
    std::fs::create_dir_all(repo.path().join("mlp/1")).unwrap();
    std::fs::copy(
        models_dir().join("mlp/1/model.onnx"),
        repo.path().join("mlp/1/model.onnx"),
    )
    .unwrap();
    // A pipeline: two steps of `mlp`, each its own span with the model's under it.
    std::fs::create_dir_all(repo.path().join("chain")).unwrap();
    std::fs::write(
        repo.path().join("chain/config.yaml"),
        "platform: pipeline\ninputs: [{name: x, datatype: FP32, dims: [1, 256]}]\n\
         outputs: [{name: y, datatype: FP32, dims: [1, 10], from: second.output}]\n\
         steps:\n  - {name: first, model: mlp, inputs: {input: x}}\n\
         \x20 - {name: second, model: mlp, inputs: {input: x}, when: {tensor: first.output, greater_than: -1.0e9}}\n",
    )
    .unwrap();
    let (mut child, http, _) = start(repo.path(), addr);

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let body = serde_json::json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 256], "data": vec![0.5; 256]}]})
        .to_string();
    let mut stream = std::net::TcpStream::connect(&http).unwrap();
    write!(
        stream,
        "POST /v2/models/mlp/infer HTTP/1.1\r\nHost: t\r\ntraceparent: 00-{trace_id}-00f067aa0ba902b7-01\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    // Through the remote model: the upstream's own `infer` span (gRPC) joins the trace.
    let remote_trace = "0af7651916cd43dd8448eb211c80319c";
    let mut stream = std::net::TcpStream::connect(&http).unwrap();
    write!(
        stream,
        "POST /v2/models/mlp-remote/infer HTTP/1.1\r\nHost: t\r\ntraceparent: 00-{remote_trace}-b7ad6b7169203331-01\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    let wanted: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace_id[i * 2..i * 2 + 2], 16).unwrap())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let names = loop {
        let names: Vec<String> = collector
            .spans
            .lock()
            .unwrap()
            .iter()
            .filter(|(id, _)| *id == wanted)
            .map(|(_, name)| name.clone())
            .collect();
        if ["infer", "decode", "queue", "runtime", "encode"]
            .iter()
            .all(|n| names.iter().any(|m| m == n))
        {
            break names;
        }
        assert!(
            Instant::now() < deadline,
            "spans in the trace so far: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(names.len() >= 5, "{names:?}");

    let remote: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&remote_trace[i * 2..i * 2 + 2], 16).unwrap())
        .collect();
    loop {
        // Gateway: infer (HTTP) + runtime; upstream: infer (gRPC) + runtime.
        let infers = collector
            .spans
            .lock()
            .unwrap()
            .iter()
            .filter(|(id, name)| *id == remote && name == "infer")
            .count();
        if infers >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "upstream spans did not join the trace ({infers} infer spans)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let pipeline_trace = "1af7651916cd43dd8448eb211c80319d";
    let pipeline_body = serde_json::json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 256], "data": vec![0.5; 256]}]})
        .to_string();
    let (status, answer) = http_call(
        &http,
        "POST",
        "/v2/models/chain/infer",
        &pipeline_body,
        &format!("traceparent: 00-{pipeline_trace}-b7ad6b7169203332-01\r\n"),
    );
    assert!(status.contains("200"), "{status} {answer}");
    let pipeline = trace_bytes(pipeline_trace);
    loop {
        let count = |wanted: &str| {
            collector
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|(id, name)| *id == pipeline && name == wanted)
                .count()
        };
        if count("pipeline_step") >= 2 && count("runtime") >= 2 && count("infer") >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pipeline spans: {} steps, {} runtime",
            count("pipeline_step"),
            count("runtime")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for process in [&mut child, &mut upstream] {
        Command::new("kill")
            .args(["-TERM", &process.id().to_string()])
            .status()
            .unwrap();
        assert!(process.wait().unwrap().success());
    }
}

/// POSTs or GETs `path` on `http` with a JSON body; returns (status line, body).
fn http_call(http: &str, method: &str, path: &str, body: &str, headers: &str) -> (String, String) {
    let mut stream = std::net::TcpStream::connect(http).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: t\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

fn trace_bytes(hex: &str) -> Vec<u8> {
    (0..16)
        .map(|i| u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).unwrap())
        .collect()
}

/// The trace extension changes sampling in the running process: with
/// `trace_level` OFF even a caller's sampled trace produces no spans; back on,
/// spans flow again. Spans leave in order (100 ms batches), so once the second
/// request's spans arrive, the first one's would have too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_extension_turns_sampling_off_and_on_without_a_restart() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let (mut child, http, _) = start(&models_dir(), addr);
    let (status, body) = http_call(&http, "GET", "/v2/trace/setting", "", "");
    assert!(status.contains("200"), "{status} {body}");
    let settings: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(settings["trace_level"], serde_json::json!(["TIMESTAMPS"]));
    assert_eq!(settings["trace_rate"], "1");

    let (status, body) = http_call(
        &http,
        "POST",
        "/v2/trace/setting",
        r#"{"trace_level":["OFF"]}"#,
        "",
    );
    assert!(status.contains("200"), "{status} {body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["trace_level"],
        serde_json::json!(["OFF"])
    );
    let infer = serde_json::json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 256], "data": vec![0.5; 256]}]})
        .to_string();
    let silent = "11111111111111111111111111111111";
    let (status, _) = http_call(
        &http,
        "POST",
        "/v2/models/mlp/infer",
        &infer,
        &format!("traceparent: 00-{silent}-00f067aa0ba902b7-01\r\n"),
    );
    assert!(status.contains("200"), "{status}");

    let (status, body) = http_call(
        &http,
        "POST",
        "/v2/trace/setting",
        r#"{"trace_level":["TIMESTAMPS"],"trace_rate":"1"}"#,
        "",
    );
    assert!(status.contains("200"), "{status} {body}");
    let heard = "22222222222222222222222222222222";
    let (status, _) = http_call(
        &http,
        "POST",
        "/v2/models/mlp/infer",
        &infer,
        &format!("traceparent: 00-{heard}-00f067aa0ba902b7-01\r\n"),
    );
    assert!(status.contains("200"), "{status}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let count = |id: &[u8]| {
        collector
            .spans
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t == id)
            .count()
    };
    while count(&trace_bytes(heard)) < 3 {
        assert!(
            Instant::now() < deadline,
            "spans did not come back after tracing was turned on"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        count(&trace_bytes(silent)),
        0,
        "a request traced while tracing was off"
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}

/// Starts the binary exporting traces to `collector`; returns it with its HTTP and gRPC addresses.
fn start(
    repo: &std::path::Path,
    collector: std::net::SocketAddr,
) -> (std::process::Child, String, String) {
    let (child, listening) = common::spawn_listening(
        common::switchyard_command(env!("CARGO_BIN_EXE_switchyard"), repo)
            .args(["--otlp-endpoint", &format!("http://{collector}")])
            .env("OTEL_BSP_SCHEDULE_DELAY", "100"),
    );
    let address = |key: &str| listening[key].as_str().unwrap().to_owned();
    (child, address("http"), address("grpc"))
}
