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

fn parameters(record: &Record) -> Value {
    Value::Object(
        record
            .parameters
            .iter()
            .map(|(key, value)| (key.clone(), value.to_json()))
            .collect::<Map<String, Value>>(),
    )
}

/// Appends `value` as a JSON string: quotes, backslashes and control
/// characters escaped (RFC 8259), everything else as it is.
fn push_json_str(out: &mut String, value: &str) {
    use std::fmt::Write;
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn push_tensors(out: &mut String, list: &[CapturedTensor], truncated: bool) {
    use std::fmt::Write;
    out.push('[');
    for (index, captured) in list.iter().enumerate() {
        let t = &captured.tensor;
        if index > 0 {
            out.push(',');
        }
        out.push_str("{\"name\":");
        push_json_str(out, t.name());
        let _ = write!(
            out,
            ",\"datatype\":\"{}\",\"shape\":[",
            t.datatype().as_str()
        );
        for (i, dim) in t.shape().iter().enumerate() {
            let _ = write!(out, "{}{dim}", if i > 0 { "," } else { "" });
        }
        out.push(']');
        if captured.redacted {
            out.push_str(",\"redacted\":true");
        } else if !truncated {
            // Base64 needs no escaping: written straight into the line.
            out.push_str(",\"data\":\"");
            base64::engine::general_purpose::STANDARD.encode_string(t.data(), out);
            out.push('"');
        }
        out.push('}');
    }
    out.push(']');
}

impl Record {
    /// Appends the JSON Lines form (one line, with its newline) to `out`:
    /// written by hand so the tensors' base64 goes straight into the buffer
    /// (the sink reuses one buffer for every record).
    pub fn write_json_line(&self, out: &mut String) {
        use std::fmt::Write;
        let data: usize = [&self.inputs, &self.outputs]
            .into_iter()
            .flatten()
            .flatten()
            .map(|t| t.tensor.data().len())
            .sum();
        out.reserve(512 + data * 4 / 3);
        out.push_str("{\"id\":");
        push_json_str(out, &self.id);
        let _ = write!(
            out,
            ",\"time\":\"{}\"",
            humantime::format_rfc3339_micros(self.time)
        );
        for (key, value) in [("endpoint", &self.endpoint), ("variant", &self.variant)] {
            let _ = write!(out, ",\"{key}\":");
            match value {
                Some(text) => push_json_str(out, text),
                None => out.push_str("null"),
            }
        }
        out.push_str(",\"model\":");
        push_json_str(out, &self.model);
        out.push_str(",\"version\":");
        push_json_str(out, &self.version);
        let _ = write!(
            out,
            ",\"protocol\":\"{}\",\"latency_us\":{},\"outcome\":\"{}\",\"http_status\":{},\"grpc_code\":\"{}\",\"error\":",
            self.protocol,
            self.latency.as_micros(),
            self.outcome,
            self.http_status,
            self.grpc_code
        );
        match &self.error {
            Some(error) => push_json_str(out, error),
            None => out.push_str("null"),
        }
        out.push_str(",\"parameters\":");
        let parameters =
            serde_json::to_string(&parameters(self)).unwrap_or_else(|_| "{}".to_owned());
        out.push_str(&parameters);
        for (key, list) in [("inputs", &self.inputs), ("outputs", &self.outputs)] {
            let _ = write!(out, ",\"{key}\":");
            match list {
                Some(list) => push_tensors(out, list, self.truncated),
                None => out.push_str("null"),
            }
        }
        let _ = writeln!(out, ",\"truncated\":{}}}", self.truncated);
    }

    /// The JSON Lines form of one record.
    pub fn to_json_line(&self) -> Vec<u8> {
        let mut line = String::new();
        self.write_json_line(&mut line);
        line.into_bytes()
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

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_runtimes::DataType;

    #[test]
    fn a_line_is_one_json_object_with_exact_tensors_and_escaped_text() {
        let x =
            Tensor::from_slice("input", DataType::Fp32, vec![1, 3], &[0.1f32, -2.5, 3e-8]).unwrap();
        let record = Record {
            id: "id \"1\"\n".into(),
            time: SystemTime::UNIX_EPOCH,
            endpoint: Some("scoring".into()),
            variant: None,
            model: "mlp".into(),
            version: "2".into(),
            protocol: "grpc",
            latency: Duration::from_micros(1234),
            outcome: "invalid_argument",
            http_status: 400,
            grpc_code: "INVALID_ARGUMENT",
            error: Some("bad \\ input\t\u{1}é".into()),
            parameters: vec![("k".into(), Parameter::Int(3))],
            inputs: Some(vec![CapturedTensor {
                tensor: x.clone(),
                redacted: false,
            }]),
            outputs: Some(vec![CapturedTensor {
                tensor: x.clone(),
                redacted: true,
            }]),
            truncated: false,
        };
        let line = record.to_json_line();
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let parsed: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(parsed["id"], "id \"1\"\n");
        assert_eq!(parsed["error"], "bad \\ input\t\u{1}é");
        assert_eq!(parsed["time"], "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            (parsed["variant"].clone(), parsed["latency_us"].clone()),
            (Value::Null, json!(1234))
        );
        assert_eq!(parsed["parameters"], json!({"k": 3}));
        let data = base64::engine::general_purpose::STANDARD
            .decode(parsed["inputs"][0]["data"].as_str().unwrap())
            .unwrap();
        assert_eq!(&data[..], &x.data()[..]);
        assert_eq!(
            parsed["outputs"][0],
            json!({"name": "input", "datatype": "FP32", "shape": [1, 3], "redacted": true})
        );
    }
}
