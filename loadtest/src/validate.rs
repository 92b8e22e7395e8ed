//! Response checks: status, output names, shapes and sizes against what the
//! model's metadata promises, and optionally values against a reference.
//! Failures are returned as a small fixed set of error kinds.

use std::collections::BTreeMap;

use serde_json::Value;
use switchyard_proto::{InferTensorContents, ModelInferResponse};

use crate::payload::{TensorInfo, element_size, raw_to_json};

/// What a good response looks like.
#[derive(Debug, Clone, Default)]
pub struct Expectation {
    /// Outputs that must be present, with shapes (-1 = any size).
    pub outputs: Vec<TensorInfo>,
    /// Flat expected values per output, compared within `tolerance`.
    pub reference: Option<BTreeMap<String, Vec<f64>>>,
    pub tolerance: f64,
}

/// One output as a response carries it: raw bytes or JSON data.
pub struct Output<'a> {
    pub name: &'a str,
    pub datatype: &'a str,
    pub shape: Vec<i64>,
    pub data: OutputData<'a>,
}

pub enum OutputData<'a> {
    Raw(&'a [u8]),
    Json(&'a [Value]),
}

/// The values of typed gRPC contents, whichever field is filled.
fn typed_values(contents: Option<&InferTensorContents>) -> Vec<Value> {
    let Some(c) = contents else { return Vec::new() };
    let mut out: Vec<Value> = Vec::new();
    out.extend(c.bool_contents.iter().map(|&v| Value::from(v)));
    out.extend(c.int_contents.iter().map(|&v| Value::from(v)));
    out.extend(c.int64_contents.iter().map(|&v| Value::from(v)));
    out.extend(c.uint_contents.iter().map(|&v| Value::from(v)));
    out.extend(c.uint64_contents.iter().map(|&v| Value::from(v)));
    out.extend(c.fp32_contents.iter().map(|&v| Value::from(v)));
    out.extend(c.fp64_contents.iter().map(|&v| Value::from(v)));
    out.extend(
        c.bytes_contents
            .iter()
            .map(|v| Value::from(String::from_utf8_lossy(v))),
    );
    out
}

fn shape_fits(expected: &[i64], got: &[i64]) -> bool {
    expected.len() == got.len() && expected.iter().zip(got).all(|(&e, &g)| e < 0 || e == g)
}

impl Expectation {
    pub fn check(&self, outputs: &[Output<'_>]) -> Result<(), String> {
        for want in &self.outputs {
            let Some(got) = outputs.iter().find(|o| o.name == want.name) else {
                return Err("bad_response:missing_output".to_owned());
            };
            if got.datatype != want.datatype || !shape_fits(&want.shape, &got.shape) {
                return Err("bad_response:shape".to_owned());
            }
        }
        for got in outputs {
            let count: usize = got.shape.iter().map(|&d| d.max(0) as usize).product();
            let size_ok = match (&got.data, element_size(got.datatype)) {
                (OutputData::Raw(raw), Some(size)) => raw.len() == count * size,
                (OutputData::Raw(raw), None) => raw_to_json(got.datatype, raw)
                    .map(|v| v.len() == count)
                    .unwrap_or(false),
                (OutputData::Json(values), _) => values.len() == count,
            };
            if !size_ok {
                return Err("bad_response:size".to_owned());
            }
            let Some(expected) = self.reference.as_ref().and_then(|r| r.get(got.name)) else {
                continue;
            };
            let decoded;
            let values: &[Value] = match &got.data {
                OutputData::Json(values) => values,
                OutputData::Raw(raw) => {
                    decoded = raw_to_json(got.datatype, raw)
                        .map_err(|_| "bad_response:decode".to_owned())?;
                    &decoded
                }
            };
            if values.len() != expected.len() {
                return Err("bad_response:value".to_owned());
            }
            let all_close = values.iter().zip(expected).all(|(v, &e)| {
                let v = v
                    .as_f64()
                    .or_else(|| v.as_bool().map(f64::from))
                    .unwrap_or(f64::NAN);
                (v - e).abs() <= self.tolerance * (1.0 + e.abs())
            });
            if !all_close {
                return Err("bad_response:value".to_owned());
            }
        }
        Ok(())
    }

    /// Checks an HTTP response body (JSON, or binary extension when `header_len` is set).
    pub fn check_http(
        &self,
        status: u16,
        header_len: Option<usize>,
        body: &[u8],
    ) -> Result<(), String> {
        if status != 200 {
            return Err(format!("http_{status}"));
        }
        let json_part = match header_len {
            Some(len) if len <= body.len() => &body[..len],
            Some(_) => return Err("bad_response:decode".to_owned()),
            None => body,
        };
        let parsed: Value =
            serde_json::from_slice(json_part).map_err(|_| "bad_response:decode".to_owned())?;
        let Some(items) = parsed["outputs"].as_array() else {
            return Err("bad_response:decode".to_owned());
        };
        let mut offset = header_len.unwrap_or(0);
        let mut outputs = Vec::with_capacity(items.len());
        for item in items {
            let name = item["name"].as_str().unwrap_or_default();
            let datatype = item["datatype"].as_str().unwrap_or_default();
            let shape: Vec<i64> = item["shape"]
                .as_array()
                .map(|dims| dims.iter().filter_map(Value::as_i64).collect())
                .unwrap_or_default();
            let data = match item["parameters"]["binary_data_size"].as_u64() {
                Some(size) => {
                    let end = offset + size as usize;
                    let raw = body
                        .get(offset..end)
                        .ok_or_else(|| "bad_response:size".to_owned())?;
                    offset = end;
                    OutputData::Raw(raw)
                }
                None => OutputData::Json(
                    item["data"]
                        .as_array()
                        .map(Vec::as_slice)
                        .unwrap_or_default(),
                ),
            };
            outputs.push(Output {
                name,
                datatype,
                shape,
                data,
            });
        }
        self.check(&outputs)
    }

    /// Checks a gRPC response: raw contents, or typed `contents` as some servers send.
    pub fn check_grpc(&self, response: &ModelInferResponse) -> Result<(), String> {
        let typed: Vec<Vec<Value>> = if response.raw_output_contents.is_empty() {
            response
                .outputs
                .iter()
                .map(|o| typed_values(o.contents.as_ref()))
                .collect()
        } else {
            Vec::new()
        };
        let outputs: Vec<Output<'_>> = response
            .outputs
            .iter()
            .enumerate()
            .map(|(i, o)| Output {
                name: &o.name,
                datatype: &o.datatype,
                shape: o.shape.clone(),
                data: match typed.get(i) {
                    Some(values) => OutputData::Json(values),
                    None => OutputData::Raw(
                        response
                            .raw_output_contents
                            .get(i)
                            .map(|b| b.as_ref())
                            .unwrap_or_default(),
                    ),
                },
            })
            .collect();
        self.check(&outputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn expect_output(shape: Vec<i64>) -> Expectation {
        Expectation {
            outputs: vec![TensorInfo {
                name: "y".into(),
                datatype: "FP32".into(),
                shape,
            }],
            reference: None,
            tolerance: 1e-5,
        }
    }

    #[test]
    fn json_responses_are_checked() {
        let exp = expect_output(vec![-1, 2]);
        let ok = json!({"outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}]});
        assert_eq!(exp.check_http(200, None, ok.to_string().as_bytes()), Ok(()));
        let short =
            json!({"outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 2], "data": [1.0]}]});
        assert_eq!(
            exp.check_http(200, None, short.to_string().as_bytes()),
            Err("bad_response:size".into())
        );
        let wrong = json!({"outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]});
        assert_eq!(
            exp.check_http(200, None, wrong.to_string().as_bytes()),
            Err("bad_response:shape".into())
        );
        let missing = json!({"outputs": []});
        assert_eq!(
            exp.check_http(200, None, missing.to_string().as_bytes()),
            Err("bad_response:missing_output".into())
        );
        assert_eq!(exp.check_http(429, None, b"{}"), Err("http_429".into()));
        assert_eq!(
            exp.check_http(200, None, b"not json"),
            Err("bad_response:decode".into())
        );
    }

    #[test]
    fn binary_responses_and_reference_values() {
        let mut exp = expect_output(vec![-1, 2]);
        exp.reference = Some(BTreeMap::from([("y".to_owned(), vec![1.5, -2.0])]));
        let header = json!({"outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}}]}).to_string();
        let mut body = header.as_bytes().to_vec();
        body.extend_from_slice(&1.5f32.to_le_bytes());
        body.extend_from_slice(&(-2.0f32).to_le_bytes());
        assert_eq!(exp.check_http(200, Some(header.len()), &body), Ok(()));
        let mut off = body.clone();
        let n = off.len();
        off[n - 4..].copy_from_slice(&(-2.5f32).to_le_bytes());
        assert_eq!(
            exp.check_http(200, Some(header.len()), &off),
            Err("bad_response:value".into())
        );
        assert_eq!(
            exp.check_http(200, Some(header.len()), &body[..n - 1]),
            Err("bad_response:size".into())
        );
    }

    #[test]
    fn grpc_raw_outputs_are_checked() {
        use switchyard_proto::model_infer_response::InferOutputTensor;
        let exp = expect_output(vec![-1, 2]);
        let mut response = ModelInferResponse {
            outputs: vec![InferOutputTensor {
                name: "y".into(),
                datatype: "FP32".into(),
                shape: vec![3, 2],
                ..Default::default()
            }],
            raw_output_contents: vec![vec![0u8; 24].into()],
            ..Default::default()
        };
        assert_eq!(exp.check_grpc(&response), Ok(()));
        response.raw_output_contents[0] = vec![0u8; 20].into();
        assert_eq!(exp.check_grpc(&response), Err("bad_response:size".into()));
        // Typed contents (as KServe's Python server answers) are read too.
        response.raw_output_contents.clear();
        response.outputs[0].contents = Some(InferTensorContents {
            fp32_contents: vec![0.5; 6],
            ..Default::default()
        });
        assert_eq!(exp.check_grpc(&response), Ok(()));
        response.outputs[0].contents = Some(InferTensorContents {
            fp32_contents: vec![0.5; 5],
            ..Default::default()
        });
        assert_eq!(exp.check_grpc(&response), Err("bad_response:size".into()));
    }
}
