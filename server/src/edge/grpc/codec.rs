//! gRPC messages ↔ the transport-neutral request: typed `contents` (with
//! range checks) or `raw_input_contents` in, `raw_output_contents` out.

use bytes::{BufMut, Bytes, BytesMut};
use switchyard_proto::model_infer_request::InferInputTensor;
use switchyard_proto::model_infer_response::InferOutputTensor;
use switchyard_proto::*;
use switchyard_runtimes::{DataType, Parameter, Tensor};

use crate::error::ApiError;
use crate::serve::infer::{InferRequest, InferResponse, RequestedOutput};

pub fn version_arg(version: &str) -> Option<&str> {
    (!version.is_empty()).then_some(version)
}

/// The typed `contents` field that carries a datatype's values.
fn contents_field(datatype: DataType) -> Option<&'static str> {
    Some(match datatype {
        DataType::Bool => "bool_contents",
        DataType::Int8 | DataType::Int16 | DataType::Int32 => "int_contents",
        DataType::Int64 => "int64_contents",
        DataType::Uint8 | DataType::Uint16 | DataType::Uint32 => "uint_contents",
        DataType::Uint64 => "uint64_contents",
        DataType::Fp32 => "fp32_contents",
        DataType::Fp64 => "fp64_contents",
        DataType::Bytes => "bytes_contents",
        DataType::Fp16 | DataType::Bf16 => return None,
    })
}

/// The typed `contents` fields that hold values.
fn filled_fields(contents: &InferTensorContents) -> Vec<&'static str> {
    [
        ("bool_contents", contents.bool_contents.len()),
        ("int_contents", contents.int_contents.len()),
        ("int64_contents", contents.int64_contents.len()),
        ("uint_contents", contents.uint_contents.len()),
        ("uint64_contents", contents.uint64_contents.len()),
        ("fp32_contents", contents.fp32_contents.len()),
        ("fp64_contents", contents.fp64_contents.len()),
        ("bytes_contents", contents.bytes_contents.len()),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .map(|(field, _)| field)
    .collect()
}

/// Converts one input's typed `contents` into the tensor buffer layout.
fn contents_to_bytes(input: &InferInputTensor, datatype: DataType) -> Result<Bytes, ApiError> {
    let empty = InferTensorContents::default();
    let contents = input.contents.as_ref().unwrap_or(&empty);
    let name = &input.name;
    // Values in another type's field: name the mismatch, not a byte count.
    let filled = filled_fields(contents);
    let expected = contents_field(datatype);
    if let Some(other) = filled.iter().find(|f| Some(**f) != expected) {
        return Err(ApiError::invalid(match expected {
            Some(field) => format!(
                "input `{name}` is {datatype}, so its values go in `contents.{field}`; got `contents.{other}`"
            ),
            None => format!(
                "input `{name}` is {datatype}, which has no typed contents field; send it in raw_input_contents (got `contents.{other}`)"
            ),
        }));
    }
    let mut buf = BytesMut::new();
    let range = |value: i128| {
        ApiError::invalid(format!(
            "input `{name}`: {value} is out of range for {datatype}"
        ))
    };
    match datatype {
        DataType::Bool => contents
            .bool_contents
            .iter()
            .for_each(|&b| buf.put_u8(u8::from(b))),
        DataType::Int8 => {
            for &v in &contents.int_contents {
                buf.put_i8(i8::try_from(v).map_err(|_| range(v.into()))?);
            }
        }
        DataType::Int16 => {
            for &v in &contents.int_contents {
                buf.put_i16_le(i16::try_from(v).map_err(|_| range(v.into()))?);
            }
        }
        DataType::Int32 => contents
            .int_contents
            .iter()
            .for_each(|&v| buf.put_i32_le(v)),
        DataType::Int64 => contents
            .int64_contents
            .iter()
            .for_each(|&v| buf.put_i64_le(v)),
        DataType::Uint8 => {
            for &v in &contents.uint_contents {
                buf.put_u8(u8::try_from(v).map_err(|_| range(v.into()))?);
            }
        }
        DataType::Uint16 => {
            for &v in &contents.uint_contents {
                buf.put_u16_le(u16::try_from(v).map_err(|_| range(v.into()))?);
            }
        }
        DataType::Uint32 => contents
            .uint_contents
            .iter()
            .for_each(|&v| buf.put_u32_le(v)),
        DataType::Uint64 => contents
            .uint64_contents
            .iter()
            .for_each(|&v| buf.put_u64_le(v)),
        DataType::Fp32 => contents
            .fp32_contents
            .iter()
            .for_each(|&v| buf.put_f32_le(v)),
        DataType::Fp64 => contents
            .fp64_contents
            .iter()
            .for_each(|&v| buf.put_f64_le(v)),
        DataType::Bytes => {
            for element in &contents.bytes_contents {
                let len = u32::try_from(element.len()).map_err(|_| {
                    ApiError::invalid(format!("input `{name}`: an element is longer than 4 GiB"))
                })?;
                buf.put_u32_le(len);
                buf.put_slice(element);
            }
        }
        DataType::Fp16 | DataType::Bf16 => {
            return Err(ApiError::invalid(format!(
                "input `{name}`: {datatype} has no typed contents field; send it in raw_input_contents"
            )));
        }
    }
    Ok(buf.freeze())
}

fn int_param(
    parameters: &std::collections::HashMap<String, InferParameter>,
    key: &str,
) -> Result<Option<i128>, ApiError> {
    use switchyard_proto::infer_parameter::ParameterChoice;
    match parameters
        .get(key)
        .and_then(|p| p.parameter_choice.as_ref())
    {
        None => Ok(None),
        Some(ParameterChoice::Int64Param(v)) => Ok(Some(i128::from(*v))),
        Some(ParameterChoice::Uint64Param(v)) => Ok(Some(i128::from(*v))),
        Some(other) => Err(ApiError::invalid(format!(
            "request parameter `{key}` must be an integer, got {other:?}"
        ))),
    }
}

/// Request parameters, typed, sorted by name (a map has no order; equal
/// parameter sets must compare equal for batching).
fn typed_parameters(
    parameters: std::collections::HashMap<String, InferParameter>,
) -> Result<Vec<(String, Parameter)>, ApiError> {
    use switchyard_proto::infer_parameter::ParameterChoice;
    let mut typed = parameters
        .into_iter()
        .filter_map(|(key, value)| {
            let value = match value.parameter_choice? {
                ParameterChoice::BoolParam(b) => Parameter::Bool(b),
                ParameterChoice::Int64Param(i) => Parameter::Int(i),
                ParameterChoice::Uint64Param(u) => match i64::try_from(u) {
                    Ok(i) => Parameter::Int(i),
                    Err(_) => Parameter::Text(u.to_string()),
                },
                ParameterChoice::DoubleParam(d) => Parameter::Double(d),
                ParameterChoice::StringParam(s) => Parameter::Text(s),
            };
            Some((key, value))
        })
        .collect::<Vec<_>>();
    typed.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(typed)
}

/// Decodes a gRPC request, enforcing the all-or-nothing rule for raw contents.
pub fn decode_request(request: ModelInferRequest) -> Result<InferRequest, ApiError> {
    let ModelInferRequest {
        model_name,
        model_version,
        id,
        inputs,
        outputs,
        raw_input_contents,
        parameters,
    } = request;
    let use_raw = !raw_input_contents.is_empty();
    if use_raw && raw_input_contents.len() != inputs.len() {
        return Err(ApiError::invalid(format!(
            "raw_input_contents has {} entries but the request has {} inputs; give one per input, in order",
            raw_input_contents.len(),
            inputs.len()
        )));
    }
    let mut tensors = Vec::with_capacity(inputs.len());
    for (index, input) in inputs.iter().enumerate() {
        let datatype: DataType = input
            .datatype
            .parse()
            .map_err(|err| ApiError::invalid(format!("input `{}`: {err}", input.name)))?;
        let data = if use_raw {
            if input.contents.is_some() {
                return Err(ApiError::invalid(format!(
                    "input `{}` has `contents` while raw_input_contents is used; use one form for all inputs",
                    input.name
                )));
            }
            raw_input_contents[index].clone()
        } else {
            contents_to_bytes(input, datatype)?
        };
        tensors.push(Tensor::new(
            input.name.clone(),
            datatype,
            input.shape.clone(),
            data,
        )?);
    }
    let outputs = if outputs.is_empty() {
        None
    } else {
        let mut requested = Vec::with_capacity(outputs.len());
        for output in outputs {
            let classification = int_param(&output.parameters, "classification")?
                .map(|k| crate::serve::infer::class_count(&output.name, k))
                .transpose()?;
            requested.push(RequestedOutput {
                name: output.name,
                classification,
            });
        }
        Some(requested)
    };
    let (priority, timeout) = crate::serve::infer::queue_parameters(
        int_param(&parameters, "priority")?,
        int_param(&parameters, "timeout")?,
    )?;
    Ok(InferRequest {
        model: model_name,
        version: version_arg(&model_version).map(str::to_owned),
        id: (!id.is_empty()).then_some(id),
        inputs: tensors,
        outputs,
        priority,
        timeout,
        headers: http::HeaderMap::new(),
        protocol: "grpc",
        parameters: typed_parameters(parameters)?,
    })
}

pub fn encode_response(response: InferResponse) -> ModelInferResponse {
    let mut outputs = Vec::with_capacity(response.outputs.len());
    let mut raw = Vec::with_capacity(response.outputs.len());
    for tensor in response.outputs {
        outputs.push(InferOutputTensor {
            name: tensor.name().to_owned(),
            datatype: tensor.datatype().as_str().to_owned(),
            shape: tensor.shape().to_vec(),
            ..Default::default()
        });
        raw.push(tensor.data().clone());
    }
    ModelInferResponse {
        model_name: response.model_name,
        model_version: response.model_version,
        id: response.id.unwrap_or_default(),
        outputs,
        raw_output_contents: raw,
        ..Default::default()
    }
}
