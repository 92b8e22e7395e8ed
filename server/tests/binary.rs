//! The real `switchyard` binary: start-up validation (bad config exits
//! non-zero with the reason, before binding), partial model failures, and a
//! clean exit on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is a failed test.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{models_dir, spawn_listening};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

fn command(repo: &std::path::Path) -> Command {
    common::switchyard_command(BIN, repo)
}

fn run_to_exit(cmd: &mut Command) -> (i32, String) {
    let out = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn http_get(addr: &str, path: &str) -> u16 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn http_post(addr: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

#[test]
fn missing_repository_exits_before_binding() {
    let (code, stderr) = run_to_exit(&mut command(std::path::Path::new("/nonexistent/models")));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("--model-repository /nonexistent/models is not a directory"),
        "{stderr}"
    );
    assert!(!stderr.contains("Listening."), "{stderr}");
}

#[test]
fn bad_flag_values_are_refused() {
    let (code, stderr) = run_to_exit(Command::new(BIN).args(["--http-addr", "not-an-address"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--http-addr"), "{stderr}");
    let (code, stderr) = run_to_exit(Command::new(BIN).args(["--drain-timeout", "soon"]));
    assert_eq!(code, 2, "{stderr}");
}

#[test]
fn missing_onnxruntime_library_is_reported() {
    let (code, stderr) = run_to_exit(
        command(&models_dir()).args(["--onnxruntime-library", "/nonexistent/libonnxruntime.so"]),
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("could not load the ONNX Runtime library"),
        "{stderr}"
    );
}

#[test]
fn without_onnxruntime_only_onnx_models_fail_and_say_why() {
    // No library named on the command line: start-up goes on, and each ONNX
    // model fails to load with the reason (here fatal: exit-on-error).
    let (code, stderr) =
        run_to_exit(command(&models_dir()).env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so"));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("models failed to load"), "{stderr}");
    assert!(
        stderr.contains("mlp: ") && stderr.contains("could not load the ONNX Runtime library"),
        "{stderr}"
    );
}

/// A repository with one good model and one corrupt one.
fn mixed_repository() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("iris/1");
    std::fs::create_dir_all(&good).unwrap();
    std::fs::copy(
        models_dir().join("iris/1/model.onnx"),
        good.join("model.onnx"),
    )
    .unwrap();
    let bad = dir.path().join("broken/1");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("model.onnx"), b"definitely not protobuf").unwrap();
    dir
}

#[test]
fn a_corrupt_model_fails_start_up_by_default() {
    let repo = mixed_repository();
    let (code, stderr) = run_to_exit(&mut command(repo.path()));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("broken"), "{stderr}");
    assert!(stderr.contains("--exit-on-error=false"), "{stderr}");
}

#[test]
fn with_exit_on_error_off_the_rest_serve_and_the_failure_is_indexed() {
    let repo = mixed_repository();
    let (mut child, listening) =
        spawn_listening(command(repo.path()).args(["--exit-on-error=false"]));
    let http = listening["http"].as_str().unwrap().to_owned();
    // Strict readiness: a model that cannot serve keeps the server unready.
    assert_eq!(http_get(&http, "/v2/health/ready"), 503);
    assert_eq!(http_get(&http, "/v2/health/live"), 200);
    assert_eq!(http_get(&http, "/v2/models/iris/ready"), 200);
    let (status, index) = http_post(&http, "/v2/repository/index", "");
    assert_eq!(status, 200);
    let index: serde_json::Value = serde_json::from_str(&index).unwrap();
    let broken = index
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["name"] == "broken")
        .unwrap();
    assert_eq!(broken["state"], "UNAVAILABLE");
    assert!(
        broken["reason"].as_str().unwrap().contains("model.onnx"),
        "{broken}"
    );
    let (status, body) = http_post(&http, "/v2/models/broken/infer", r#"{"inputs":[]}"#);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("not ready"), "{body}");

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn sigterm_exits_cleanly() {
    let (mut child, listening) = spawn_listening(&mut command(&models_dir()));
    let http = listening["http"].as_str().unwrap().to_owned();
    assert_eq!(http_get(&http, "/v2/health/ready"), 200);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let started = Instant::now();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
}
