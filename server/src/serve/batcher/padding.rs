//! Padding and cutting along one dimension: requests of different lengths
//! share a batch padded to the longest, and outputs are cut back.

use bytes::{BufMut, BytesMut};
use switchyard_runtimes::{DataType, Tensor};

use crate::error::ApiError;

/// Resizes `tensor` along `dim` to `target` entries: keeps the first ones and,
/// when growing, fills the rest with `fill` (padding on the way in, cutting it
/// back off on the way out).
pub(super) fn resize_dim(
    tensor: &Tensor,
    dim: usize,
    target: i64,
    fill: f64,
) -> Result<Tensor, ApiError> {
    let shape = tensor.shape();
    if dim >= shape.len() || shape[dim] == target {
        return Ok(tensor.clone());
    }
    let size = tensor.datatype().element_size().ok_or_else(|| {
        ApiError::invalid(format!(
            "`{}`: BYTES tensors cannot be padded or cut",
            tensor.name()
        ))
    })?;
    let fill = pad_value_bytes(tensor.datatype(), fill);
    let outer: usize = shape[..dim].iter().map(|&d| d as usize).product();
    let inner: usize = shape[dim + 1..].iter().map(|&d| d as usize).product();
    let (have, target) = (shape[dim] as usize, target.max(0) as usize);
    let keep = have.min(target);
    let data = tensor.data();
    let mut buf = BytesMut::with_capacity(outer * target * inner * size);
    for o in 0..outer {
        let start = o * have * inner * size;
        buf.put_slice(&data[start..start + keep * inner * size]);
        for _ in 0..(target - keep) * inner {
            buf.put_slice(&fill[..size]);
        }
    }
    let mut new_shape = shape.to_vec();
    new_shape[dim] = target as i64;
    Ok(Tensor::new(
        tensor.name(),
        tensor.datatype(),
        new_shape,
        buf.freeze(),
    )?)
}

fn pad_value_bytes(datatype: DataType, value: f64) -> [u8; 8] {
    let mut out = [0u8; 8];
    let bytes: Vec<u8> = match datatype {
        DataType::Bool => vec![u8::from(value != 0.0)],
        DataType::Uint8 => vec![value as u8],
        DataType::Int8 => (value as i8).to_le_bytes().to_vec(),
        DataType::Uint16 => (value as u16).to_le_bytes().to_vec(),
        DataType::Int16 => (value as i16).to_le_bytes().to_vec(),
        DataType::Uint32 => (value as u32).to_le_bytes().to_vec(),
        DataType::Int32 => (value as i32).to_le_bytes().to_vec(),
        DataType::Uint64 => (value as u64).to_le_bytes().to_vec(),
        DataType::Int64 => (value as i64).to_le_bytes().to_vec(),
        DataType::Fp16 => half::f16::from_f64(value).to_le_bytes().to_vec(),
        DataType::Bf16 => half::bf16::from_f64(value).to_le_bytes().to_vec(),
        DataType::Fp32 => (value as f32).to_le_bytes().to_vec(),
        DataType::Fp64 => value.to_le_bytes().to_vec(),
        DataType::Bytes => Vec::new(),
    };
    out[..bytes.len()].copy_from_slice(&bytes);
    out
}
