//! Tensors as the v2 protocol's JSON `data` arrays, both ways: every
//! datatype, FP16/BF16 as numbers, BYTES as UTF-8 strings. Used where a
//! tensor leaves or enters as JSON outside the HTTP edge's own fast codec
//! (HTTP upstreams, CloudEvents capture).

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Value, json};

use crate::{DataType, Tensor};

/// A tensor's raw little-endian buffer as the flat JSON `data` array.
pub fn tensor_data(tensor: &Tensor) -> Result<Vec<Value>, String> {
    let data = tensor.data();
    let each = |width: usize| data.chunks_exact(width);
    let values = match tensor.datatype() {
        DataType::Bool => data.iter().map(|&b| json!(b != 0)).collect(),
        DataType::Uint8 => data.iter().map(|&b| json!(b)).collect(),
        DataType::Int8 => data.iter().map(|&b| json!(b as i8)).collect(),
        DataType::Uint16 => each(2)
            .map(|c| json!(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        DataType::Int16 => each(2)
            .map(|c| json!(i16::from_le_bytes([c[0], c[1]])))
            .collect(),
        DataType::Uint32 => each(4)
            .map(|c| json!(u32::from_le_bytes(c.try_into().unwrap_or_default())))
            .collect(),
        DataType::Int32 => each(4)
            .map(|c| json!(i32::from_le_bytes(c.try_into().unwrap_or_default())))
            .collect(),
        DataType::Uint64 => each(8)
            .map(|c| json!(u64::from_le_bytes(c.try_into().unwrap_or_default())))
            .collect(),
        DataType::Int64 => each(8)
            .map(|c| json!(i64::from_le_bytes(c.try_into().unwrap_or_default())))
            .collect(),
        DataType::Fp16 => each(2)
            .map(|c| json!(half::f16::from_le_bytes([c[0], c[1]]).to_f32()))
            .collect(),
        DataType::Bf16 => each(2)
            .map(|c| json!(half::bf16::from_le_bytes([c[0], c[1]]).to_f32()))
            .collect(),
        DataType::Fp32 => each(4)
            .map(|c| json!(f32::from_le_bytes(c.try_into().unwrap_or_default())))
            .collect(),
        DataType::Fp64 => each(8)
            .map(|c| json!(f64::from_le_bytes(c.try_into().unwrap_or_default())))
            .collect(),
        DataType::Bytes => {
            let mut values = Vec::new();
            let mut rest = &data[..];
            while rest.len() >= 4 {
                let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                let element = rest
                    .get(4..4 + len)
                    .ok_or("a BYTES element runs past its tensor")?;
                let text = std::str::from_utf8(element).map_err(|_| {
                    format!(
                        "input `{}` holds bytes that are not UTF-8, which JSON cannot carry; send it as binary data",
                        tensor.name()
                    )
                })?;
                values.push(json!(text));
                rest = &rest[4 + len..];
            }
            values
        }
    };
    Ok(values)
}

/// Flattens nested JSON arrays (some servers send `data` nested by shape).
fn flatten<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|item| flatten(item, out)),
        other => out.push(other),
    }
}

/// A JSON `data` array as the raw buffer of `datatype`.
pub fn data_from_json(datatype: DataType, data: &Value) -> Result<Bytes, String> {
    let mut values = Vec::new();
    flatten(data, &mut values);
    let mut buf = BytesMut::with_capacity(values.len() * datatype.element_size().unwrap_or(8));
    let number = |v: &Value| v.as_f64().ok_or_else(|| format!("{v} is not a number"));
    let integer = |v: &Value| {
        v.as_i64()
            .or_else(|| v.as_u64().map(|u| u as i64))
            .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
            .ok_or_else(|| format!("{v} is not an integer"))
    };
    for value in values {
        match datatype {
            DataType::Bool => buf.put_u8(u8::from(
                value
                    .as_bool()
                    .ok_or_else(|| format!("{value} is not a boolean"))?,
            )),
            DataType::Uint8 => buf.put_u8(integer(value)? as u8),
            DataType::Int8 => buf.put_i8(integer(value)? as i8),
            DataType::Uint16 => buf.put_u16_le(integer(value)? as u16),
            DataType::Int16 => buf.put_i16_le(integer(value)? as i16),
            DataType::Uint32 => buf.put_u32_le(integer(value)? as u32),
            DataType::Int32 => buf.put_i32_le(integer(value)? as i32),
            DataType::Uint64 => buf.put_u64_le(
                value
                    .as_u64()
                    .ok_or_else(|| format!("{value} is not a UINT64"))?,
            ),
            DataType::Int64 => buf.put_i64_le(integer(value)?),
            DataType::Fp16 => buf.put_slice(&half::f16::from_f64(number(value)?).to_le_bytes()),
            DataType::Bf16 => buf.put_slice(&half::bf16::from_f64(number(value)?).to_le_bytes()),
            DataType::Fp32 => buf.put_f32_le(number(value)? as f32),
            DataType::Fp64 => buf.put_f64_le(number(value)?),
            DataType::Bytes => {
                let text = value
                    .as_str()
                    .ok_or_else(|| format!("{value} is not a string"))?;
                buf.put_u32_le(text.len() as u32);
                buf.put_slice(text.as_bytes());
            }
        }
    }
    Ok(buf.freeze())
}
