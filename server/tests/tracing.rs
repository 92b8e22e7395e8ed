//! Traces: the real binary exports spans over OTLP/gRPC to a collector in this
//! test (the OTLP trace service from opentelemetry-proto, on 127.0.0.1:0). A
//! request carrying a W3C `traceparent` produces spans in that same trace:
//! infer → decode, queue, runtime, encode.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is a failed test.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
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

    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args([
            "--http-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .arg("--model-repository")
        .arg(models_dir())
        .args([
            "--log-format",
            "json",
            "--otlp-endpoint",
            &format!("http://{addr}"),
        ])
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let http = loop {
        let line = lines.next().expect("switchyard exited").unwrap();
        if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line)
            && event["message"] == "Listening."
        {
            break event["http"].as_str().unwrap().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});

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
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}
