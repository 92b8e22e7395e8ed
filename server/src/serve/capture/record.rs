//! One captured inference and its two written forms. JSON Lines (the file
//! sink): one object per line, tensors as `{name, datatype, shape, data}` with
//! `data` the tensor's raw little-endian bytes in base64 — exact for every
//! datatype (no float printed and read back), cheap to write, and one
//! `np.frombuffer(base64.b64decode(data), dtype).reshape(shape)` away from an
//! array (BYTES: 4-byte little-endian lengths, each followed by its bytes).
//! CloudEvents (KServe's logger): the v2 JSON request and response bodies,
//! tensors as `data` arrays, as KServe's logger posts them.

use std::time::{Duration, SystemTime};

use base64::Engine;
use serde_json::{Map, Value, json};
use switchyard_runtimes::{Parameter, Tensor};

/// A tensor as captured: its data may be withheld (redacted or over the size cap).
#[derive(Debug, Clone)]
pub struct CapturedTensor {
    pub tensor: Tensor,
    pub redacted: bool,
}

#[derive(Debug, Clone)]
pub struct Record {
    /// The request's id, or one Switchyard made.
    pub id: String,
    pub time: SystemTime,
    pub endpoint: Option<String>,
    pub variant: Option<String>,
    pub model: String,
    pub version: String,
    pub protocol: &'static str,
    pub latency: Duration,
    /// `success` or the error kind's label.
    pub outcome: &'static str,
    pub http_status: u16,
    pub grpc_code: &'static str,
    pub error: Option<String>,
    pub parameters: Vec<(String, Parameter)>,
    /// `None`: the policy keeps no request (or no response).
    pub inputs: Option<Vec<CapturedTensor>>,
    pub outputs: Option<Vec<CapturedTensor>>,
    /// Tensor data left out because the record was over `max_record_bytes`.
    pub truncated: bool,
}

fn parameter(value: &Parameter) -> Value {
    match value {
        Parameter::Bool(b) => json!(b),
        Parameter::Int(i) => json!(i),
        Parameter::Double(d) => json!(d),
        Parameter::Text(s) => json!(s),
    }
}

fn parameters(record: &Record) -> Value {
    Value::Object(
        record
            .parameters
            .iter()
            .map(|(key, value)| (key.clone(), parameter(value)))
            .collect::<Map<String, Value>>(),
    )
}

fn base64_tensor(captured: &CapturedTensor, truncated: bool) -> Value {
    let t = &captured.tensor;
    let mut object =
        json!({"name": t.name(), "datatype": t.datatype().as_str(), "shape": t.shape()});
    if captured.redacted {
        object["redacted"] = json!(true);
    } else if !truncated {
        object["data"] = json!(base64::engine::general_purpose::STANDARD.encode(t.data()));
    }
    object
}

impl Record {
    /// The JSON Lines form (one line, with its newline).
    pub fn to_json_line(&self) -> Vec<u8> {
        let tensors = |list: &Option<Vec<CapturedTensor>>| {
            list.as_ref().map(|list| {
                list.iter()
                    .map(|t| base64_tensor(t, self.truncated))
                    .collect::<Vec<_>>()
            })
        };
        let line = json!({
            "id": self.id,
            "time": humantime::format_rfc3339_micros(self.time).to_string(),
            "endpoint": self.endpoint,
            "variant": self.variant,
            "model": self.model,
            "version": self.version,
            "protocol": self.protocol,
            "latency_us": self.latency.as_micros() as u64,
            "outcome": self.outcome,
            "http_status": self.http_status,
            "grpc_code": self.grpc_code,
            "error": self.error,
            "parameters": parameters(self),
            "inputs": tensors(&self.inputs),
            "outputs": tensors(&self.outputs),
            "truncated": self.truncated,
        });
        let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }

    fn v2_tensors(&self, list: &[CapturedTensor]) -> Vec<Value> {
        list.iter()
            .map(|captured| {
                let t = &captured.tensor;
                let mut object =
                    json!({"name": t.name(), "datatype": t.datatype().as_str(), "shape": t.shape()});
                if captured.redacted {
                    object["parameters"] = json!({"redacted": true});
                } else if !self.truncated {
                    match switchyard_runtimes::json::tensor_data(t) {
                        Ok(data) => object["data"] = Value::Array(data),
                        // Bytes JSON cannot carry (not UTF-8): base64, flagged.
                        Err(_) => {
                            object["parameters"] = json!({"content_encoding": "base64"});
                            object["data"] = json!([base64::engine::general_purpose::STANDARD.encode(t.data())]);
                        }
                    }
                }
                object
            })
            .collect()
    }

    /// The v2 request body as KServe's logger sends it (`None` when not kept).
    pub fn request_body(&self) -> Option<Value> {
        let inputs = self.inputs.as_ref()?;
        Some(
            json!({"id": self.id, "parameters": parameters(self), "inputs": self.v2_tensors(inputs)}),
        )
    }

    /// The v2 response body, or the error (`None` when not kept).
    pub fn response_body(&self) -> Option<Value> {
        let outputs = self.outputs.as_ref()?;
        Some(match &self.error {
            Some(error) => json!({"id": self.id, "model_name": self.model, "error": error}),
            None => json!({
                "id": self.id,
                "model_name": self.model,
                "model_version": self.version,
                "outputs": self.v2_tensors(outputs),
            }),
        })
    }
}
