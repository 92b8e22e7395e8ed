//! KServe v2 REST bodies: JSON tensors (flat or nested `data`) and the binary
//! tensor data extension in both directions. Decodes straight into tensor
//! buffers (no per-element boxing) and encodes outputs the same way.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use half::{bf16, f16};
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use switchyard_runtimes::{DataType, Parameter, Tensor, element_count};

use crate::error::ApiError;
use crate::serve::infer::{InferRequest, InferResponse, RequestedOutput};

/// Header naming the length of the JSON part of a binary-extension body.
pub const HEADER_CONTENT_LENGTH: &str = "inference-header-content-length";

#[derive(Deserialize)]
struct JsonRequest<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    #[serde(borrow)]
    inputs: Vec<JsonInput<'a>>,
    #[serde(default)]
    outputs: Option<Vec<JsonRequestedOutput>>,
}

#[derive(Deserialize)]
struct JsonInput<'a> {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct JsonRequestedOutput {
    name: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

/// A decoded HTTP request: the neutral request plus how each output is wanted.
#[derive(Debug)]
pub struct HttpInferRequest {
    pub request: InferRequest,
    pub binary: BinaryPrefs,
}

/// Which outputs go back as binary data.
#[derive(Debug, Default)]
pub struct BinaryPrefs {
    /// Request-wide `binary_data_output`.
    pub default: bool,
    /// Per requested output, its own `binary_data` choice.
    pub outputs: Vec<(String, bool)>,
}

impl BinaryPrefs {
    fn wants_binary(&self, output: &str) -> bool {
        self.outputs
            .iter()
            .find(|(name, _)| name == output)
            .map_or(self.default, |(_, binary)| *binary)
    }
}

fn bool_param(
    params: &Option<Map<String, Value>>,
    key: &str,
    owner: &str,
) -> Result<Option<bool>, ApiError> {
    match params.as_ref().and_then(|p| p.get(key)) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(ApiError::invalid(format!(
            "{owner}: parameter `{key}` must be a boolean, got {other}"
        ))),
    }
}

fn int_param(params: &Option<Map<String, Value>>, key: &str) -> Result<Option<i128>, ApiError> {
    match params.as_ref().and_then(|p| p.get(key)) {
        None => Ok(None),
        Some(value) => value
            .as_i64()
            .map(i128::from)
            .or_else(|| value.as_u64().map(i128::from))
            .map(Some)
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "request parameter `{key}` must be an integer, got {value}"
                ))
            }),
    }
}

/// Request parameters, typed, sorted by name. Objects and arrays have no
/// place in the protocol's parameters and are refused.
fn typed_parameters(
    params: Option<Map<String, Value>>,
) -> Result<Vec<(String, Parameter)>, ApiError> {
    let mut typed = Vec::new();
    for (key, value) in params.into_iter().flatten() {
        let value = match value {
            Value::Bool(b) => Parameter::Bool(b),
            Value::String(s) => Parameter::Text(s),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Parameter::Int(i),
                None => match n.as_u64() {
                    Some(u) => Parameter::Text(u.to_string()),
                    None => Parameter::Double(n.as_f64().unwrap_or_default()),
                },
            },
            Value::Null => continue,
            other => {
                return Err(ApiError::invalid(format!(
                    "request parameter `{key}` must be a boolean, a number or a string, got {other}"
                )));
            }
        };
        typed.push((key, value));
    }
    typed.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(typed)
}

/// Decodes a request body. `header_length` is the binary extension's
/// `Inference-Header-Content-Length`, when given.
pub fn decode_request(
    model: &str,
    version: Option<&str>,
    body: Bytes,
    header_length: Option<usize>,
) -> Result<HttpInferRequest, ApiError> {
    let json_len = match header_length {
        Some(len) if len > body.len() => {
            return Err(ApiError::invalid(format!(
                "Inference-Header-Content-Length is {len}, but the body has only {} bytes",
                body.len()
            )));
        }
        Some(len) => len,
        None => body.len(),
    };
    let parsed: JsonRequest<'_> = serde_json::from_slice(&body[..json_len])
        .map_err(|err| ApiError::invalid(format!("malformed JSON request body: {err}")))?;
    let binary_output_default =
        bool_param(&parsed.parameters, "binary_data_output", "request")?.unwrap_or(false);

    let mut offset = json_len;
    let mut inputs = Vec::with_capacity(parsed.inputs.len());
    for input in &parsed.inputs {
        let owner = format!("input `{}`", input.name);
        let datatype: DataType = input
            .datatype
            .parse()
            .map_err(|err| ApiError::invalid(format!("{owner}: {err}")))?;
        let binary_size = match input
            .parameters
            .as_ref()
            .and_then(|p| p.get("binary_data_size"))
        {
            None => None,
            Some(value) => Some(value.as_u64().ok_or_else(|| {
                ApiError::invalid(format!(
                    "{owner}: `binary_data_size` must be a non-negative integer, got {value}"
                ))
            })?),
        };
        let tensor = match (binary_size, input.data) {
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid(format!(
                    "{owner} has both `data` and a `binary_data_size` parameter; give one"
                )));
            }
            (Some(size), None) => {
                let size = usize::try_from(size).unwrap_or(usize::MAX);
                let end = offset.checked_add(size).filter(|&end| end <= body.len()).ok_or_else(|| {
                    ApiError::invalid(format!(
                        "{owner}: binary_data_size {size} runs past the end of the body ({} bytes of binary data left)",
                        body.len() - offset
                    ))
                })?;
                let data = body.slice(offset..end);
                offset = end;
                Tensor::new(input.name.clone(), datatype, input.shape.clone(), data)?
            }
            (None, Some(raw)) => decode_json_data(&input.name, datatype, &input.shape, raw)?,
            (None, None) => {
                return Err(ApiError::invalid(format!(
                    "{owner} has no `data` and no `binary_data_size` parameter"
                )));
            }
        };
        inputs.push(tensor);
    }
    if offset != body.len() {
        return Err(ApiError::invalid(format!(
            "the body has {} bytes of binary data that no input claims (check each input's binary_data_size)",
            body.len() - offset
        )));
    }

    let mut binary_outputs = Vec::new();
    let outputs = match parsed.outputs {
        None => None,
        Some(requested) => {
            let mut names = Vec::with_capacity(requested.len());
            for output in requested {
                let owner = format!("output `{}`", output.name);
                let classification = int_param(&output.parameters, "classification")?
                    .map(|k| crate::serve::infer::class_count(&output.name, k))
                    .transpose()?;
                if let Some(binary) = bool_param(&output.parameters, "binary_data", &owner)? {
                    binary_outputs.push((output.name.clone(), binary));
                }
                names.push(RequestedOutput {
                    name: output.name,
                    classification,
                });
            }
            Some(names)
        }
    };
    let (priority, timeout) = crate::serve::infer::queue_parameters(
        int_param(&parsed.parameters, "priority")?,
        int_param(&parsed.parameters, "timeout")?,
    )?;
    Ok(HttpInferRequest {
        request: InferRequest {
            model: model.to_owned(),
            version: version.map(str::to_owned),
            id: parsed.id,
            inputs,
            outputs,
            priority,
            timeout,
            headers: http::HeaderMap::new(),
            protocol: "http",
            parameters: typed_parameters(parsed.parameters)?,
        },
        binary: BinaryPrefs {
            default: binary_output_default,
            outputs: binary_outputs,
        },
    })
}

fn decode_json_data(
    name: &str,
    datatype: DataType,
    shape: &[i64],
    raw: &RawValue,
) -> Result<Tensor, ApiError> {
    let expected = element_count(name, shape)?;
    let capacity = datatype
        .element_size()
        .map_or(0, |size| size.saturating_mul(expected));
    let mut buf = BytesMut::with_capacity(capacity.min(64 << 20));
    // Plain numbers (nearly every request) are read by the fast scanner; anything
    // else, or anything it doubts, goes through serde for the exact error message.
    if let Some(count) = fast_numbers(raw.get(), datatype, &mut buf) {
        if count != expected {
            return Err(ApiError::invalid(format!(
                "input `{name}`: shape {shape:?} has {expected} elements, but `data` holds {count}"
            )));
        }
        return Ok(Tensor::new(name, datatype, shape.to_vec(), buf.freeze())?);
    }
    buf.clear();
    let mut count = 0usize;
    let mut deserializer = serde_json::Deserializer::from_str(raw.get());
    FlatData {
        datatype,
        out: &mut buf,
        count: &mut count,
    }
    .deserialize(&mut deserializer)
    .map_err(|err| ApiError::invalid(format!("input `{name}`: bad {datatype} data: {err}")))?;
    if count != expected {
        return Err(ApiError::invalid(format!(
            "input `{name}`: shape {shape:?} has {expected} elements, but `data` holds {count}"
        )));
    }
    Ok(Tensor::new(name, datatype, shape.to_vec(), buf.freeze())?)
}

/// Reads numeric `data` (one number, or arrays of them nested any way) straight
/// into `out` in one scan: JSON's number grammar checked by hand, floats parsed
/// by `fast-float2` (correctly rounded, straight to `f32` for FP32), integers
/// range-checked. `None` for anything else (strings, booleans, a malformed or
/// out-of-range number, deep nesting): the caller's serde path then reads it and
/// says what is wrong.
fn fast_numbers(text: &str, datatype: DataType, out: &mut BytesMut) -> Option<usize> {
    if matches!(datatype, DataType::Bool | DataType::Bytes) {
        return None;
    }
    let bytes = text.as_bytes();
    let mut at = 0usize;
    let mut depth = 0usize;
    let mut count = 0usize;
    // What may come next: a value (after `[` or `,`), or `,`/`]` after a value.
    let mut want_value = true;
    let mut just_opened = false;
    loop {
        while at < bytes.len() && matches!(bytes[at], b' ' | b'\t' | b'\n' | b'\r') {
            at += 1;
        }
        if at == bytes.len() {
            return (depth == 0 && !want_value).then_some(count);
        }
        match bytes[at] {
            b'[' if want_value => {
                depth += 1;
                if depth > 32 {
                    return None;
                }
                at += 1;
                just_opened = true;
            }
            b']' if depth > 0 && (!want_value || just_opened) => {
                depth -= 1;
                at += 1;
                want_value = false;
                just_opened = false;
            }
            b',' if depth > 0 && !want_value => {
                at += 1;
                want_value = true;
                just_opened = false;
            }
            b'-' | b'0'..=b'9' if want_value => {
                let end = at + json_number_len(&bytes[at..])?;
                push_number(&text[at..end], datatype, out)?;
                count += 1;
                at = end;
                want_value = false;
                just_opened = false;
            }
            _ => return None,
        }
        if depth == 0 && !want_value {
            // One top-level value only: the rest must be blank.
            return bytes[at..]
                .iter()
                .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
                .then_some(count);
        }
    }
}

/// The length of the JSON number at the start of `bytes`:
/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`; `None` if it is not one.
fn json_number_len(bytes: &[u8]) -> Option<usize> {
    let digits = |from: usize| {
        bytes[from..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count()
    };
    let mut at = usize::from(bytes.first() == Some(&b'-'));
    match bytes.get(at)? {
        b'0' => at += 1,
        b'1'..=b'9' => at += digits(at),
        _ => return None,
    }
    if bytes.get(at) == Some(&b'.') {
        let fraction = digits(at + 1);
        if fraction == 0 {
            return None;
        }
        at += 1 + fraction;
    }
    if matches!(bytes.get(at), Some(b'e' | b'E')) {
        at += 1;
        if matches!(bytes.get(at), Some(b'+' | b'-')) {
            at += 1;
        }
        let exponent = digits(at);
        if exponent == 0 {
            return None;
        }
        at += exponent;
    }
    Some(at)
}

/// Appends one number in `datatype`'s little-endian layout (`None`: let serde say why not).
fn push_number(number: &str, datatype: DataType, out: &mut BytesMut) -> Option<()> {
    // serde_json reads `-0` as a float, which integer tensors refuse: so do we.
    let integral = !number.contains(['.', 'e', 'E']) && number != "-0";
    match datatype {
        DataType::Fp32 => out.put_f32_le(fast_float2::parse::<f32, _>(number).ok()?),
        DataType::Fp64 => out.put_f64_le(fast_float2::parse::<f64, _>(number).ok()?),
        DataType::Fp16 => out.put_u16_le(f16::from_f64(fast_float2::parse(number).ok()?).to_bits()),
        DataType::Bf16 => {
            out.put_u16_le(bf16::from_f64(fast_float2::parse(number).ok()?).to_bits())
        }
        _ if !integral => return None,
        DataType::Int8 => out.put_i8(number.parse().ok()?),
        DataType::Int16 => out.put_i16_le(number.parse().ok()?),
        DataType::Int32 => out.put_i32_le(number.parse().ok()?),
        DataType::Int64 => out.put_i64_le(number.parse().ok()?),
        DataType::Uint8 => out.put_u8(number.parse().ok()?),
        DataType::Uint16 => out.put_u16_le(number.parse().ok()?),
        DataType::Uint32 => out.put_u32_le(number.parse().ok()?),
        DataType::Uint64 => out.put_u64_le(number.parse().ok()?),
        DataType::Bool | DataType::Bytes => return None,
    }
    Some(())
}

/// Reads `data` (flat or nested arrays, or one scalar) straight into a buffer.
struct FlatData<'a> {
    datatype: DataType,
    out: &'a mut BytesMut,
    count: &'a mut usize,
}

impl<'de> DeserializeSeed<'de> for FlatData<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl FlatData<'_> {
    fn int<E: de::Error>(self, value: i128) -> Result<(), E> {
        let range_err = || E::custom(format!("{value} is out of range for {}", self.datatype));
        match self.datatype {
            DataType::Uint8 => self
                .out
                .put_u8(u8::try_from(value).map_err(|_| range_err())?),
            DataType::Uint16 => self
                .out
                .put_u16_le(u16::try_from(value).map_err(|_| range_err())?),
            DataType::Uint32 => self
                .out
                .put_u32_le(u32::try_from(value).map_err(|_| range_err())?),
            DataType::Uint64 => self
                .out
                .put_u64_le(u64::try_from(value).map_err(|_| range_err())?),
            DataType::Int8 => self
                .out
                .put_i8(i8::try_from(value).map_err(|_| range_err())?),
            DataType::Int16 => self
                .out
                .put_i16_le(i16::try_from(value).map_err(|_| range_err())?),
            DataType::Int32 => self
                .out
                .put_i32_le(i32::try_from(value).map_err(|_| range_err())?),
            DataType::Int64 => self
                .out
                .put_i64_le(i64::try_from(value).map_err(|_| range_err())?),
            // Integers are valid float literals.
            DataType::Fp16 | DataType::Bf16 | DataType::Fp32 | DataType::Fp64 => {
                return self.float(value as f64);
            }
            DataType::Bool | DataType::Bytes => {
                return Err(E::custom(format!(
                    "expected {}, got the number {value}",
                    expected_kind(self.datatype)
                )));
            }
        }
        *self.count += 1;
        Ok(())
    }

    fn float<E: de::Error>(self, value: f64) -> Result<(), E> {
        match self.datatype {
            DataType::Fp16 => self.out.put_u16_le(f16::from_f64(value).to_bits()),
            DataType::Bf16 => self.out.put_u16_le(bf16::from_f64(value).to_bits()),
            DataType::Fp32 => self.out.put_f32_le(value as f32),
            DataType::Fp64 => self.out.put_f64_le(value),
            _ => {
                return Err(E::custom(format!(
                    "expected {}, got the number {value}",
                    expected_kind(self.datatype)
                )));
            }
        }
        *self.count += 1;
        Ok(())
    }
}

fn expected_kind(datatype: DataType) -> &'static str {
    match datatype {
        DataType::Bool => "true or false",
        DataType::Bytes => "a string",
        DataType::Fp16 | DataType::Bf16 | DataType::Fp32 | DataType::Fp64 => "a number",
        _ => "an integer",
    }
}

impl<'de> Visitor<'de> for FlatData<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} or an array of them", expected_kind(self.datatype))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq
            .next_element_seed(FlatData {
                datatype: self.datatype,
                out: &mut *self.out,
                count: &mut *self.count,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<(), E> {
        if self.datatype != DataType::Bool {
            return Err(E::custom(format!(
                "expected {}, got {value}",
                expected_kind(self.datatype)
            )));
        }
        self.out.put_u8(u8::from(value));
        *self.count += 1;
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<(), E> {
        self.int(i128::from(value))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<(), E> {
        self.int(i128::from(value))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<(), E> {
        match self.datatype {
            DataType::Fp16 | DataType::Bf16 | DataType::Fp32 | DataType::Fp64 => self.float(value),
            _ => Err(E::custom(format!(
                "expected {}, got {value}",
                expected_kind(self.datatype)
            ))),
        }
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<(), E> {
        if self.datatype != DataType::Bytes {
            return Err(E::custom(format!(
                "expected {}, got the string {value:?}",
                expected_kind(self.datatype)
            )));
        }
        let len = u32::try_from(value.len())
            .map_err(|_| E::custom("string element longer than 4 GiB"))?;
        self.out.put_u32_le(len);
        self.out.put_slice(value.as_bytes());
        *self.count += 1;
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(format!(
            "expected {}, got null",
            expected_kind(self.datatype)
        )))
    }
}

/// Serializes a tensor's elements as one flat JSON array.
struct JsonData<'a>(&'a Tensor);

impl Serialize for JsonData<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let tensor = self.0;
        let mut seq = serializer.serialize_seq(Some(tensor.element_count()))?;
        macro_rules! each {
            ($t:ty) => {
                for v in tensor.as_slice::<$t>().iter() {
                    seq.serialize_element(v)?;
                }
            };
            ($t:ty, $map:expr) => {
                for v in tensor.as_slice::<$t>().iter() {
                    seq.serialize_element(&$map(*v))?;
                }
            };
        }
        match tensor.datatype() {
            DataType::Bool => {
                for &b in tensor.data().iter() {
                    seq.serialize_element(&(b != 0))?;
                }
            }
            DataType::Uint8 => each!(u8),
            DataType::Uint16 => each!(u16),
            DataType::Uint32 => each!(u32),
            DataType::Uint64 => each!(u64),
            DataType::Int8 => each!(i8),
            DataType::Int16 => each!(i16),
            DataType::Int32 => each!(i32),
            DataType::Int64 => each!(i64),
            DataType::Fp16 => each!(u16, |bits| f16::from_bits(bits).to_f32()),
            DataType::Bf16 => each!(u16, |bits| bf16::from_bits(bits).to_f32()),
            DataType::Fp32 => each!(f32),
            DataType::Fp64 => each!(f64),
            DataType::Bytes => {
                for element in tensor.byte_strings() {
                    let text = std::str::from_utf8(element).map_err(|_| {
                        serde::ser::Error::custom(format!(
                            "output `{}` holds bytes that are not UTF-8; request it with binary_data",
                            tensor.name()
                        ))
                    })?;
                    seq.serialize_element(text)?;
                }
            }
        }
        seq.end()
    }
}

#[derive(Serialize)]
struct JsonResponse<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<JsonOutput<'a>>,
}

#[derive(Serialize)]
struct JsonOutput<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [i64],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinaryParams>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<JsonData<'a>>,
}

#[derive(Serialize)]
struct BinaryParams {
    binary_data_size: usize,
}

/// An encoded response body; `json_length` is set when binary parts follow.
pub struct EncodedResponse {
    pub body: Bytes,
    pub json_length: Option<usize>,
}

pub fn encode_response(
    binary: &BinaryPrefs,
    response: &InferResponse,
) -> Result<EncodedResponse, ApiError> {
    let mut binary_parts = Vec::new();
    let outputs = response
        .outputs
        .iter()
        .map(|tensor| {
            let binary = binary.wants_binary(tensor.name());
            if binary {
                binary_parts.push(tensor.data().clone());
            }
            JsonOutput {
                name: tensor.name(),
                datatype: tensor.datatype().as_str(),
                shape: tensor.shape(),
                parameters: binary.then(|| BinaryParams {
                    binary_data_size: tensor.data().len(),
                }),
                data: (!binary).then_some(JsonData(tensor)),
            }
        })
        .collect();
    let json = JsonResponse {
        model_name: &response.model_name,
        model_version: &response.model_version,
        id: response.id.as_deref(),
        outputs,
    };
    let binary_len: usize = binary_parts.iter().map(Bytes::len).sum();
    let mut writer = BytesMut::with_capacity(256 + binary_len).writer();
    serde_json::to_writer(&mut writer, &json).map_err(|err| ApiError::invalid(err.to_string()))?;
    let mut buf = writer.into_inner();
    if binary_parts.is_empty() {
        return Ok(EncodedResponse {
            body: buf.freeze(),
            json_length: None,
        });
    }
    let json_length = buf.len();
    for part in binary_parts {
        buf.put_slice(&part);
    }
    Ok(EncodedResponse {
        body: buf.freeze(),
        json_length: Some(json_length),
    })
}

#[cfg(test)]
mod fast_numbers_tests {
    use super::*;
    use proptest::prelude::*;

    /// The serde path's answer: the buffer and count, or that it refuses.
    fn by_serde(text: &str, datatype: DataType) -> Option<(Vec<u8>, usize)> {
        let mut out = BytesMut::new();
        let mut count = 0;
        let mut de = serde_json::Deserializer::from_str(text);
        FlatData {
            datatype,
            out: &mut out,
            count: &mut count,
        }
        .deserialize(&mut de)
        .ok()?;
        de.end().ok()?;
        Some((out.to_vec(), count))
    }

    fn by_scanner(text: &str, datatype: DataType) -> Option<(Vec<u8>, usize)> {
        let mut out = BytesMut::new();
        fast_numbers(text, datatype, &mut out).map(|count| (out.to_vec(), count))
    }

    const NUMERIC: [DataType; 12] = [
        DataType::Fp32,
        DataType::Fp64,
        DataType::Fp16,
        DataType::Bf16,
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Uint8,
        DataType::Uint16,
        DataType::Uint32,
        DataType::Uint64,
    ];

    /// A number as clients print them: plain, with exponents, signed, integral.
    fn number() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<f32>()
                .prop_filter("finite", |x| x.is_finite())
                .prop_map(|x| format!("{x}")),
            any::<f64>()
                .prop_filter("finite", |x| x.is_finite())
                .prop_map(|x| format!("{x:e}")),
            any::<f64>()
                .prop_filter("finite", |x| x.is_finite())
                .prop_map(|x| format!("{x}")),
            any::<i64>().prop_map(|x| x.to_string()),
            (0u8..=255).prop_map(|x| x.to_string()),
            (-1000i32..1000, 0u32..40).prop_map(|(m, e)| format!("{m}.5E-{e}")),
        ]
    }

    /// Arrays as clients nest them, with stray whitespace.
    fn document() -> impl Strategy<Value = String> {
        let leaf = number().boxed();
        leaf.prop_recursive(3, 64, 8, |inner| {
            (prop::collection::vec(inner, 0..8), " {0,2}").prop_map(|(items, pad)| {
                format!("[{pad}{}{pad}]", items.join(&format!("{pad},{pad}")))
            })
        })
    }

    proptest! {
        #[test]
        fn the_scanner_reads_what_serde_reads(text in document(), pick in 0usize..12) {
            let datatype = NUMERIC[pick];
            match by_scanner(&text, datatype) {
                // Accepted: exactly serde's bytes (FP32 straight from the decimal
                // may round once where serde rounds twice; both are then within an ulp).
                Some(got) if datatype == DataType::Fp32 => {
                    let want = by_serde(&text, datatype);
                    prop_assert!(want.is_some(), "the scanner accepted what serde refuses: {}", text);
                    let want = want.unwrap();
                    prop_assert_eq!(got.1, want.1);
                    for (a, b) in got.0.chunks(4).zip(want.0.chunks(4)) {
                        let (a, b) = (f32::from_le_bytes(a.try_into().unwrap()), f32::from_le_bytes(b.try_into().unwrap()));
                        prop_assert!(a == b || (a.to_bits() as i64 - b.to_bits() as i64).abs() <= 1, "{} vs {} in {}", a, b, text);
                    }
                }
                Some(got) => prop_assert_eq!(Some(got), by_serde(&text, datatype), "{}", text),
                // Declined: serde decides (and words the error).
                None => {}
            }
        }

        #[test]
        fn the_scanner_never_accepts_what_serde_refuses(text in "[\\[\\], 0-9eE+.\\-]{0,24}", pick in 0usize..12) {
            let datatype = NUMERIC[pick];
            if let Some(got) = by_scanner(&text, datatype) {
                let want = by_serde(&text, datatype);
                prop_assert!(want.is_some(), "accepted {:?}, which serde refuses", text);
                if datatype != DataType::Fp32 {
                    prop_assert_eq!(Some(got), want);
                }
            }
        }
    }

    #[test]
    fn plain_requests_take_the_scanner() {
        assert_eq!(
            by_scanner("[[1, 2.5], [-3e2, 0]]", DataType::Fp32)
                .unwrap()
                .1,
            4
        );
        assert_eq!(by_scanner("[]", DataType::Int64).unwrap().1, 0);
        assert_eq!(by_scanner(" 7 ", DataType::Uint8).unwrap().1, 1);
        for declined in [
            "[1,]", "[01]", "[1.]", "[NaN]", "[true]", "[\"a\"]", "[300]", "", "[1] 2", "[[1]",
        ] {
            let datatype = if declined == "[300]" {
                DataType::Uint8
            } else {
                DataType::Fp32
            };
            assert!(by_scanner(declined, datatype).is_none(), "{declined}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(body: &str) -> Result<HttpInferRequest, ApiError> {
        decode_request("m", None, Bytes::from(body.to_owned()), None)
    }

    fn json_input(datatype: &str, shape: &str, data: &str) -> String {
        format!(
            r#"{{"inputs":[{{"name":"x","datatype":"{datatype}","shape":{shape},"data":{data}}}]}}"#
        )
    }

    #[test]
    fn every_datatype_decodes_from_json_and_encodes_back() {
        let cases = [
            ("BOOL", "[true,false,true]", "[true,false,true]"),
            ("UINT8", "[0,1,255]", "[0,1,255]"),
            ("UINT16", "[0,1,65535]", "[0,1,65535]"),
            ("UINT32", "[0,1,4294967295]", "[0,1,4294967295]"),
            (
                "UINT64",
                "[0,1,18446744073709551615]",
                "[0,1,18446744073709551615]",
            ),
            ("INT8", "[-128,0,127]", "[-128,0,127]"),
            ("INT16", "[-32768,0,32767]", "[-32768,0,32767]"),
            (
                "INT32",
                "[-2147483648,0,2147483647]",
                "[-2147483648,0,2147483647]",
            ),
            (
                "INT64",
                "[-9223372036854775808,0,9223372036854775807]",
                "[-9223372036854775808,0,9223372036854775807]",
            ),
            ("FP16", "[0.5,-2,65504]", "[0.5,-2.0,65504.0]"),
            ("BF16", "[0.5,-2,1]", "[0.5,-2.0,1.0]"),
            ("FP32", "[0.25,-1.5,3]", "[0.25,-1.5,3.0]"),
            ("FP64", "[0.1,-1e300,3]", "[0.1,-1e+300,3.0]"),
            ("BYTES", r#"["a","","ü"]"#, r#"["a","","ü"]"#),
        ];
        for (datatype, data, expected) in cases {
            let req = decode(&json_input(datatype, "[3]", data))
                .unwrap_or_else(|e| panic!("{datatype}: {e}"));
            let tensor = &req.request.inputs[0];
            assert_eq!(tensor.datatype().as_str(), datatype);
            let encoded = serde_json::to_string(&JsonData(tensor)).unwrap();
            assert_eq!(encoded, expected, "{datatype}");
        }
    }

    #[test]
    fn nested_data_is_flattened_row_major() {
        let req = decode(&json_input("INT32", "[2,2]", "[[1,2],[3,4]]")).unwrap();
        assert_eq!(
            req.request.inputs[0].as_slice::<i32>().as_ref(),
            &[1, 2, 3, 4]
        );
    }

    #[test]
    fn bad_json_inputs_get_clear_messages() {
        let cases = [
            ("{", "malformed JSON request body"),
            (r#"{"outputs":[]}"#, "missing field `inputs`"),
            (
                &json_input("FLOAT", "[1]", "[1]"),
                "unknown datatype `FLOAT`",
            ),
            (
                &json_input("UINT8", "[1]", "[256]"),
                "256 is out of range for UINT8",
            ),
            (&json_input("INT32", "[1]", "[1.5]"), "expected an integer"),
            (&json_input("FP32", "[1]", r#"["x"]"#), "expected a number"),
            (&json_input("BOOL", "[1]", "[1]"), "expected true or false"),
            (
                &json_input("FP32", "[2,2]", "[1,2,3]"),
                "shape [2, 2] has 4 elements, but `data` holds 3",
            ),
            (&json_input("FP32", "[-1]", "[1]"), "negative dimension"),
            (
                r#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1]}]}"#,
                "no `data`",
            ),
        ];
        for (body, expected) in cases {
            let err = decode(body).unwrap_err();
            assert!(err.message.contains(expected), "{body}: {}", err.message);
            assert_eq!(err.kind, crate::error::ErrorKind::InvalidArgument);
        }
    }

    #[test]
    fn binary_inputs_are_sliced_from_the_body() {
        let header = r#"{"inputs":[{"name":"a","datatype":"FP32","shape":[2],"parameters":{"binary_data_size":8}},{"name":"b","datatype":"BYTES","shape":[1],"parameters":{"binary_data_size":7}}],"parameters":{"binary_data_output":true}}"#;
        let mut body = header.as_bytes().to_vec();
        body.extend_from_slice(bytemuck::cast_slice(&[1.5f32, -2.0]));
        body.extend_from_slice(&[3, 0, 0, 0, b'a', b'b', b'c']);
        let req = decode_request("m", None, Bytes::from(body.clone()), Some(header.len())).unwrap();
        assert_eq!(
            req.request.inputs[0].as_slice::<f32>().as_ref(),
            &[1.5, -2.0]
        );
        assert_eq!(
            req.request.inputs[1].byte_strings().collect::<Vec<_>>(),
            vec![&b"abc"[..]]
        );
        assert!(req.binary.default);

        let short = decode_request(
            "m",
            None,
            Bytes::from(body[..body.len() - 1].to_vec()),
            Some(header.len()),
        );
        assert!(short.unwrap_err().message.contains("runs past the end"));
        let mut long = body.clone();
        long.push(0);
        let extra = decode_request("m", None, Bytes::from(long), Some(header.len()));
        assert!(extra.unwrap_err().message.contains("no input claims"));
        let beyond = decode_request("m", None, Bytes::from(body), Some(100_000));
        assert!(
            beyond
                .unwrap_err()
                .message
                .contains("Inference-Header-Content-Length")
        );
    }

    #[test]
    fn responses_mix_json_and_binary_outputs() {
        let body = r#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1]}],"outputs":[{"name":"a","parameters":{"binary_data":true}},{"name":"b"}]}"#;
        let req = decode(body).unwrap();
        let response = InferResponse {
            model_name: "m".into(),
            model_version: "1".into(),
            id: Some("req-1".into()),
            routed: None,
            outputs: vec![
                Tensor::from_slice("a", DataType::Fp32, vec![2], &[1.0f32, 2.0]).unwrap(),
                Tensor::from_slice("b", DataType::Int64, vec![1], &[7i64]).unwrap(),
            ],
        };
        let encoded = encode_response(&req.binary, &response).unwrap();
        let json_len = encoded.json_length.unwrap();
        let json: Value = serde_json::from_slice(&encoded.body[..json_len]).unwrap();
        assert_eq!(json["id"], "req-1");
        assert_eq!(json["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert!(json["outputs"][0].get("data").is_none());
        assert_eq!(json["outputs"][1]["data"], serde_json::json!([7]));
        assert_eq!(
            &encoded.body[json_len..],
            bytemuck::cast_slice::<f32, u8>(&[1.0, 2.0])
        );
    }
}
