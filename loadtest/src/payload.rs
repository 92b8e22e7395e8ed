//! Request payloads: random tensors that fit a model's metadata (seeded), or
//! tensors from a KServe JSON request file; encoded once as an HTTP JSON body,
//! an HTTP binary-extension body, or a gRPC request with raw contents.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use bytes::{BufMut, Bytes, BytesMut};
use half::{bf16, f16};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::{Value, json};
use switchyard_proto::ModelInferRequest;
use switchyard_proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};

/// A tensor as model metadata describes it (-1 = any size).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TensorInfo {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
}

/// A concrete input: raw little-endian data (BYTES: u32 length + bytes per element).
#[derive(Debug, Clone, PartialEq)]
pub struct InputTensor {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
    pub raw: Bytes,
}

pub fn element_size(datatype: &str) -> Option<usize> {
    Some(match datatype {
        "BOOL" | "UINT8" | "INT8" => 1,
        "UINT16" | "INT16" | "FP16" | "BF16" => 2,
        "UINT32" | "INT32" | "FP32" => 4,
        "UINT64" | "INT64" | "FP64" => 8,
        _ => return None,
    })
}

/// The concrete shape for a batch: -1 in the first dim becomes `batch`;
/// other -1 dims need an override.
pub fn concrete_shape(
    info: &TensorInfo,
    batch: usize,
    overrides: &BTreeMap<String, Vec<i64>>,
) -> Result<Vec<i64>> {
    if let Some(shape) = overrides.get(&info.name) {
        return Ok(shape.clone());
    }
    info.shape
        .iter()
        .enumerate()
        .map(|(i, &d)| match d {
            -1 if i == 0 => Ok(batch as i64),
            -1 => bail!(
                "input `{}` has variable dimension {i} in {:?}; give its shape with --shape {}=...",
                info.name,
                info.shape,
                info.name
            ),
            d => Ok(d),
        })
        .collect()
}

/// Random inputs for every model input, reproducible from `seed`.
pub fn random_inputs(
    model: &ModelInfo,
    batch: usize,
    overrides: &BTreeMap<String, Vec<i64>>,
    seed: u64,
) -> Result<Vec<InputTensor>> {
    let mut rng = SmallRng::seed_from_u64(seed);
    model
        .inputs
        .iter()
        .map(|info| {
            let shape = concrete_shape(info, batch, overrides)?;
            let count: usize = shape.iter().map(|&d| d.max(0) as usize).product();
            let mut buf =
                BytesMut::with_capacity(count * element_size(&info.datatype).unwrap_or(12));
            for _ in 0..count {
                match info.datatype.as_str() {
                    "BOOL" => buf.put_u8(rng.random_range(0..=1)),
                    "UINT8" => buf.put_u8(rng.random_range(0..100)),
                    "INT8" => buf.put_i8(rng.random_range(-50..50)),
                    "UINT16" => buf.put_u16_le(rng.random_range(0..1000)),
                    "INT16" => buf.put_i16_le(rng.random_range(-500..500)),
                    "UINT32" => buf.put_u32_le(rng.random_range(0..1000)),
                    "INT32" => buf.put_i32_le(rng.random_range(-500..500)),
                    "UINT64" => buf.put_u64_le(rng.random_range(0..1000)),
                    "INT64" => buf.put_i64_le(rng.random_range(-500..500)),
                    "FP16" => buf.put_u16_le(f16::from_f32(rng.random_range(-1.0..1.0)).to_bits()),
                    "BF16" => buf.put_u16_le(bf16::from_f32(rng.random_range(-1.0..1.0)).to_bits()),
                    "FP32" => buf.put_f32_le(rng.random_range(-1.0..1.0)),
                    "FP64" => buf.put_f64_le(rng.random_range(-1.0..1.0)),
                    "BYTES" => {
                        let text: String = (0..8)
                            .map(|_| rng.random_range(b'a'..=b'z') as char)
                            .collect();
                        buf.put_u32_le(text.len() as u32);
                        buf.put_slice(text.as_bytes());
                    }
                    other => bail!(
                        "input `{}` has datatype {other}, which the load tester cannot generate",
                        info.name
                    ),
                }
            }
            Ok(InputTensor {
                name: info.name.clone(),
                datatype: info.datatype.clone(),
                shape,
                raw: buf.freeze(),
            })
        })
        .collect()
}

fn flatten<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|item| flatten(item, out)),
        other => out.push(other),
    }
}

/// Tensors from a KServe v2 JSON request (`{"inputs": [{name, datatype, shape, data}]}`).
pub fn inputs_from_json(request: &Value) -> Result<Vec<InputTensor>> {
    let inputs = request["inputs"]
        .as_array()
        .context("the input file has no `inputs` array")?;
    inputs
        .iter()
        .map(|input| {
            let name = input["name"]
                .as_str()
                .context("an input has no name")?
                .to_owned();
            let datatype = input["datatype"]
                .as_str()
                .context("an input has no datatype")?
                .to_owned();
            let shape: Vec<i64> =
                serde_json::from_value(input["shape"].clone()).context("bad shape")?;
            let mut values = Vec::new();
            flatten(&input["data"], &mut values);
            let mut buf = BytesMut::new();
            for v in values {
                let bad = || anyhow::anyhow!("input `{name}`: {v} is not a {datatype} value");
                match datatype.as_str() {
                    "BOOL" => buf.put_u8(u8::from(v.as_bool().ok_or_else(bad)?)),
                    "UINT8" => buf.put_u8(
                        v.as_u64()
                            .and_then(|x| u8::try_from(x).ok())
                            .ok_or_else(bad)?,
                    ),
                    "INT8" => buf.put_i8(
                        v.as_i64()
                            .and_then(|x| i8::try_from(x).ok())
                            .ok_or_else(bad)?,
                    ),
                    "UINT16" => buf.put_u16_le(
                        v.as_u64()
                            .and_then(|x| u16::try_from(x).ok())
                            .ok_or_else(bad)?,
                    ),
                    "INT16" => buf.put_i16_le(
                        v.as_i64()
                            .and_then(|x| i16::try_from(x).ok())
                            .ok_or_else(bad)?,
                    ),
                    "UINT32" => buf.put_u32_le(
                        v.as_u64()
                            .and_then(|x| u32::try_from(x).ok())
                            .ok_or_else(bad)?,
                    ),
                    "INT32" => buf.put_i32_le(
                        v.as_i64()
                            .and_then(|x| i32::try_from(x).ok())
                            .ok_or_else(bad)?,
                    ),
                    "UINT64" => buf.put_u64_le(v.as_u64().ok_or_else(bad)?),
                    "INT64" => buf.put_i64_le(v.as_i64().ok_or_else(bad)?),
                    "FP16" => buf.put_u16_le(f16::from_f64(v.as_f64().ok_or_else(bad)?).to_bits()),
                    "BF16" => buf.put_u16_le(bf16::from_f64(v.as_f64().ok_or_else(bad)?).to_bits()),
                    "FP32" => buf.put_f32_le(v.as_f64().ok_or_else(bad)? as f32),
                    "FP64" => buf.put_f64_le(v.as_f64().ok_or_else(bad)?),
                    "BYTES" => {
                        let s = v.as_str().ok_or_else(bad)?;
                        buf.put_u32_le(s.len() as u32);
                        buf.put_slice(s.as_bytes());
                    }
                    other => bail!("input `{name}`: unknown datatype {other}"),
                }
            }
            Ok(InputTensor {
                name,
                datatype,
                shape,
                raw: buf.freeze(),
            })
        })
        .collect()
}

/// Decodes raw little-endian elements into JSON values.
pub fn raw_to_json(datatype: &str, raw: &[u8]) -> Result<Vec<Value>> {
    macro_rules! each {
        ($t:ty, $n:expr) => {
            raw.chunks_exact($n)
                .map(|c| json!(<$t>::from_le_bytes(c.try_into().unwrap_or_default())))
                .collect()
        };
    }
    Ok(match datatype {
        "BOOL" => raw.iter().map(|&b| json!(b != 0)).collect(),
        "UINT8" => raw.iter().map(|&b| json!(b)).collect(),
        "INT8" => raw.iter().map(|&b| json!(b as i8)).collect(),
        "UINT16" => each!(u16, 2),
        "INT16" => each!(i16, 2),
        "UINT32" => each!(u32, 4),
        "INT32" => each!(i32, 4),
        "UINT64" => each!(u64, 8),
        "INT64" => each!(i64, 8),
        "FP32" => each!(f32, 4),
        "FP64" => each!(f64, 8),
        "FP16" => raw
            .chunks_exact(2)
            .map(|c| json!(f16::from_le_bytes([c[0], c[1]]).to_f32()))
            .collect(),
        "BF16" => raw
            .chunks_exact(2)
            .map(|c| json!(bf16::from_le_bytes([c[0], c[1]]).to_f32()))
            .collect(),
        "BYTES" => {
            let mut out = Vec::new();
            let mut rest = raw;
            while let Some((len, tail)) = rest.split_first_chunk::<4>() {
                let len = u32::from_le_bytes(*len) as usize;
                let (element, tail) = tail
                    .split_at_checked(len)
                    .context("truncated BYTES element")?;
                out.push(json!(String::from_utf8_lossy(element)));
                rest = tail;
            }
            out
        }
        other => bail!("unknown datatype {other}"),
    })
}

/// A KServe JSON request body.
pub fn http_json_body(inputs: &[InputTensor], outputs: &[String]) -> Result<Bytes> {
    let inputs: Vec<Value> = inputs
        .iter()
        .map(|t| {
            Ok(json!({"name": t.name, "datatype": t.datatype, "shape": t.shape, "data": raw_to_json(&t.datatype, &t.raw)?}))
        })
        .collect::<Result<_>>()?;
    let mut body = json!({ "inputs": inputs });
    if !outputs.is_empty() {
        body["outputs"] = outputs.iter().map(|name| json!({"name": name})).collect();
    }
    Ok(Bytes::from(serde_json::to_vec(&body)?))
}

/// A binary-extension body (inputs and outputs binary) and its JSON header length.
pub fn http_binary_body(inputs: &[InputTensor], outputs: &[String]) -> Result<(Bytes, usize)> {
    let header_inputs: Vec<Value> = inputs
        .iter()
        .map(|t| json!({"name": t.name, "datatype": t.datatype, "shape": t.shape, "parameters": {"binary_data_size": t.raw.len()}}))
        .collect();
    let mut header = json!({ "inputs": header_inputs, "parameters": {"binary_data_output": true} });
    if !outputs.is_empty() {
        header["outputs"] = outputs
            .iter()
            .map(|name| json!({"name": name, "parameters": {"binary_data": true}}))
            .collect();
    }
    let header = serde_json::to_vec(&header)?;
    let mut body =
        BytesMut::with_capacity(header.len() + inputs.iter().map(|t| t.raw.len()).sum::<usize>());
    body.put_slice(&header);
    for t in inputs {
        body.put_slice(&t.raw);
    }
    Ok((body.freeze(), header.len()))
}

pub fn grpc_request(
    model: &str,
    version: Option<&str>,
    inputs: &[InputTensor],
    outputs: &[String],
) -> ModelInferRequest {
    ModelInferRequest {
        model_name: model.to_owned(),
        model_version: version.unwrap_or_default().to_owned(),
        inputs: inputs
            .iter()
            .map(|t| InferInputTensor {
                name: t.name.clone(),
                datatype: t.datatype.clone(),
                shape: t.shape.clone(),
                ..Default::default()
            })
            .collect(),
        outputs: outputs
            .iter()
            .map(|name| InferRequestedOutputTensor {
                name: name.clone(),
                ..Default::default()
            })
            .collect(),
        raw_input_contents: inputs.iter().map(|t| t.raw.clone()).collect(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mlp() -> ModelInfo {
        ModelInfo {
            name: "mlp".into(),
            inputs: vec![TensorInfo {
                name: "input".into(),
                datatype: "FP32".into(),
                shape: vec![-1, 4],
            }],
            outputs: vec![],
        }
    }

    #[test]
    fn random_inputs_are_seeded_and_sized() {
        let a = random_inputs(&mlp(), 3, &BTreeMap::new(), 1).unwrap();
        let b = random_inputs(&mlp(), 3, &BTreeMap::new(), 1).unwrap();
        let c = random_inputs(&mlp(), 3, &BTreeMap::new(), 2).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a[0].shape, vec![3, 4]);
        assert_eq!(a[0].raw.len(), 3 * 4 * 4);
    }

    #[test]
    fn variable_inner_dims_need_an_override() {
        let mut model = mlp();
        model.inputs[0].shape = vec![-1, -1];
        assert!(random_inputs(&model, 1, &BTreeMap::new(), 0).is_err());
        let overrides = BTreeMap::from([("input".to_owned(), vec![2, 5])]);
        assert_eq!(
            random_inputs(&model, 1, &overrides, 0).unwrap()[0].shape,
            vec![2, 5]
        );
    }

    #[test]
    fn json_file_inputs_round_trip_through_every_encoding() {
        let request = json!({"inputs": [
            {"name": "x", "datatype": "INT64", "shape": [2, 2], "data": [[1, 2], [3, -4]]},
            {"name": "s", "datatype": "BYTES", "shape": [1], "data": ["hé"]}
        ]});
        let inputs = inputs_from_json(&request).unwrap();
        assert_eq!(
            raw_to_json("INT64", &inputs[0].raw).unwrap(),
            vec![json!(1), json!(2), json!(3), json!(-4)]
        );
        let body: Value = serde_json::from_slice(&http_json_body(&inputs, &[]).unwrap()).unwrap();
        assert_eq!(body["inputs"][1]["data"], json!(["hé"]));
        let (binary, header_len) = http_binary_body(&inputs, &["y".into()]).unwrap();
        let header: Value = serde_json::from_slice(&binary[..header_len]).unwrap();
        assert_eq!(header["inputs"][0]["parameters"]["binary_data_size"], 32);
        assert_eq!(binary.len(), header_len + 32 + 4 + 3);
        let grpc = grpc_request("m", Some("2"), &inputs, &[]);
        assert_eq!(
            grpc.raw_input_contents[1].as_ref(),
            &[3, 0, 0, 0, b'h', 0xc3, 0xa9]
        );
        assert_eq!(grpc.model_version, "2");
    }
}
