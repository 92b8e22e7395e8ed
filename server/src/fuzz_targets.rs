//! Entry points for fuzzing the parsers that read untrusted bytes: the HTTP
//! request decoder (JSON and binary extension), the gRPC request → tensor
//! conversion, and the config, route and pbtxt parsers. `fuzz/` (cargo-fuzz,
//! nightly) and the stable smoke test `server/tests/fuzz_smoke.rs` both call
//! these; each must return (with an error or not) for any input, never panic.

use std::collections::BTreeSet;

use bytes::Bytes;
use prost::Message;

use crate::config::model::{ConfigDefaults, ModelConfig, from_triton};
use switchyard_runtimes::onnx::OnnxOptions;

/// The first byte picks whether a binary-extension header length is sent.
pub fn http_request(data: &[u8]) {
    let (header, body) = match data.split_first() {
        Some((&selector, rest)) if selector % 2 == 1 && rest.len() >= 2 => {
            let len = u16::from_le_bytes([rest[0], rest[1]]) as usize;
            (Some(len), &rest[2..])
        }
        Some((_, rest)) => (None, rest),
        None => (None, data),
    };
    let _ =
        crate::edge::http::codec::decode_request("m", None, Bytes::copy_from_slice(body), header);
}

pub fn grpc_request(data: &[u8]) {
    if let Ok(request) = switchyard_proto::ModelInferRequest::decode(data) {
        let _ = crate::edge::grpc::decode_request(request);
    }
}

fn defaults() -> ConfigDefaults {
    ConfigDefaults {
        queue_capacity: 16,
        max_request_time: crate::config::model::DEFAULT_MAX_REQUEST_TIME,
        onnx: OnnxOptions::default(),
    }
}

pub fn model_config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = ModelConfig::parse(&text, &defaults());
    let _ = from_triton(&text, "m", &defaults());
}

pub fn routes(data: &[u8]) {
    let models: BTreeSet<String> = ["fraud", "fraud-v2", "shadowy"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let _ = crate::config::routes::parse(&String::from_utf8_lossy(data), &models);
}

pub fn pbtxt(data: &[u8]) {
    let _ = crate::config::pbtxt::parse(&String::from_utf8_lossy(data));
}

/// A fuzz target: takes any bytes, must not panic.
pub type Target = fn(&[u8]);

/// Every target by name, for the smoke test and `fuzz/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("http_request", http_request),
    ("grpc_request", grpc_request),
    ("model_config", model_config),
    ("routes", routes),
    ("pbtxt", pbtxt),
];
