//! Helpers shared by the integration tests: an in-process server on
//! 127.0.0.1:0 over the real sample models and the real ONNX Runtime.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::time::Duration;

use switchyard::app::{App, Parts, Settings, build};
use switchyard::config::model::ConfigDefaults;
use switchyard::control::source::local::LocalSource;
use switchyard::metrics::Metrics;
use switchyard::{Listeners, ServeOptions, serve};
use switchyard_runtimes::onnx::OnnxOptions;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub fn models_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models");
    assert!(
        dir.join("mlp/1/model.onnx").exists(),
        "sample models are missing: run `make models` first"
    );
    dir
}

pub fn settings() -> Settings {
    Settings {
        model_control: false,
        strict_readiness: true,
        ready_without_upstreams: false,
        max_request_bytes: 1 << 20,
        mlflow_webhook_secret: None,
        tokens: switchyard::edge::auth::Tokens::default(),
        max_tensor_elements: 1 << 28,
        max_bytes_element: 16 << 20,
        request_timeout: std::time::Duration::from_secs(60),
    }
}

pub fn telemetry_config() -> switchyard::telemetry::TelemetryConfig {
    switchyard::telemetry::TelemetryConfig {
        log: "info".into(),
        log_format: switchyard::telemetry::LogFormat::Text,
        otlp_endpoint: None,
        trace_sample_ratio: 1.0,
    }
}

pub fn defaults() -> ConfigDefaults {
    ConfigDefaults {
        queue_capacity: 64,
        max_request_time: switchyard::config::model::DEFAULT_MAX_REQUEST_TIME,
        onnx: OnnxOptions::default(),
    }
}

/// Builds the server over `repo` (the builder `main` uses) and loads every model in it.
pub async fn state_for(repo: &Path, settings: Settings) -> App {
    switchyard_runtimes::onnx::init(None).expect("ONNX Runtime (run scripts/fetch-onnxruntime.sh)");
    let app = build(
        Parts {
            sources: vec![Box::new(LocalSource::new(repo).unwrap())],
            defaults: defaults(),
            routes: None,
            settings,
            telemetry: switchyard::telemetry::Controls::detached(&telemetry_config()),
            capture: None,
            rollout_memory: None,
            fleet: None,
        },
        Metrics::new().unwrap(),
    );
    app.load_all().await.unwrap();
    app
}

pub struct TestServer {
    pub state: App,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<anyhow::Result<()>>,
}

impl TestServer {
    pub async fn start(state: App, drain_delay: Duration) -> Self {
        let bind = || TcpListener::bind("127.0.0.1:0");
        let listeners = Listeners {
            http: bind().await.unwrap(),
            grpc: bind().await.unwrap(),
            metrics: bind().await.unwrap(),
        };
        let (http, grpc, metrics) = (
            listeners.http.local_addr().unwrap(),
            listeners.grpc.local_addr().unwrap(),
            listeners.metrics.local_addr().unwrap(),
        );
        let (tx, rx) = oneshot::channel::<()>();
        let options = ServeOptions {
            grpc_max_message_bytes: 1 << 20,
            drain_delay,
            drain_timeout: Duration::from_secs(5),
            poll_interval: None,
            watch: Vec::new(),
            tls: None,
            connections: Default::default(),
        };
        let task = tokio::spawn(serve(state.clone(), listeners, options, async {
            let _ = rx.await;
        }));
        TestServer {
            state,
            http,
            grpc,
            metrics,
            shutdown: Some(tx),
            task,
        }
    }

    pub fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A minimal HTTP/1.1 exchange over a fresh connection: (status, body).
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete HTTP response");
    let status_line = String::from_utf8_lossy(&response[..split]).to_string();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    let mut body = response[split + 4..].to_vec();
    if status_line
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..line_end]).unwrap().trim(), 16)
                .unwrap();
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[line_end + 2..line_end + 2 + size]);
        data = &data[line_end + 2 + size + 2..];
    }
    out
}

/// Spawns the binary and waits for its JSON `Listening.` line (returned
/// parsed); stderr keeps being drained so the child never blocks on it.
pub fn spawn_listening(
    cmd: &mut std::process::Command,
) -> (std::process::Child, serde_json::Value) {
    use std::io::BufRead;
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufReader::new(stderr).lines();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line)
            && event["message"] == "Listening."
        {
            std::thread::spawn(move || for _ in lines {});
            return (child, event);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("switchyard did not report Listening.");
}

/// The binary on ephemeral loopback ports, JSON logs, serving `repo`.
pub fn switchyard_command(binary: &str, repo: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(binary);
    cmd.args([
        "--http-addr",
        "127.0.0.1:0",
        "--grpc-addr",
        "127.0.0.1:0",
        "--metrics-addr",
        "127.0.0.1:0",
    ])
    .arg("--model-repository")
    .arg(repo)
    .args(["--log-format", "json"]);
    cmd
}
