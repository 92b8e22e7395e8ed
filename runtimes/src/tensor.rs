//! `Tensor`: a named, typed, shaped tensor held as one contiguous little-endian
//! buffer (no per-element boxing), and the checks that make one well formed.

use std::borrow::Cow;

use bytemuck::Pod;
use bytes::{BufMut, Bytes, BytesMut};

use crate::DataType;

/// A tensor whose buffer is known to match its datatype and shape.
///
/// Fixed-size types hold `element_count * element_size` little-endian bytes.
/// `BYTES` holds each element as a little-endian u32 length and the bytes (the
/// binary tensor extension's layout), so it too travels as one buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    name: String,
    datatype: DataType,
    shape: Vec<i64>,
    data: Bytes,
}

/// Why a buffer, shape or datatype does not make a tensor.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TensorError {
    #[error("tensor `{name}`: shape {shape:?} has a negative dimension")]
    NegativeDim { name: String, shape: Vec<i64> },
    #[error("tensor `{name}`: shape {shape:?} has too many elements")]
    TooLarge { name: String, shape: Vec<i64> },
    #[error(
        "tensor `{name}`: {datatype} shape {shape:?} needs {expected} bytes of data, got {actual}"
    )]
    SizeMismatch {
        name: String,
        datatype: DataType,
        shape: Vec<i64>,
        expected: usize,
        actual: usize,
    },
    #[error("tensor `{name}`: BOOL elements must be 0 or 1, found byte {value} at element {index}")]
    InvalidBool {
        name: String,
        index: usize,
        value: u8,
    },
    #[error(
        "tensor `{name}`: BYTES data is malformed at byte {offset}: each element must be a 4-byte little-endian length followed by that many bytes"
    )]
    MalformedBytes { name: String, offset: usize },
    #[error(
        "tensor `{name}`: shape {shape:?} has {expected} elements, but BYTES data holds {actual}"
    )]
    BytesCountMismatch {
        name: String,
        shape: Vec<i64>,
        expected: usize,
        actual: usize,
    },
}

/// Number of elements of `shape`, refusing negative dims and overflow.
pub fn element_count(name: &str, shape: &[i64]) -> Result<usize, TensorError> {
    shape.iter().try_fold(1usize, |acc, &dim| {
        let dim = usize::try_from(dim).map_err(|_| TensorError::NegativeDim {
            name: name.to_owned(),
            shape: shape.to_vec(),
        })?;
        acc.checked_mul(dim).ok_or_else(|| TensorError::TooLarge {
            name: name.to_owned(),
            shape: shape.to_vec(),
        })
    })
}

impl Tensor {
    /// Builds a tensor, checking that `data` is exactly what `datatype` and `shape` call for.
    pub fn new(
        name: impl Into<String>,
        datatype: DataType,
        shape: Vec<i64>,
        data: Bytes,
    ) -> Result<Self, TensorError> {
        let name = name.into();
        let count = element_count(&name, &shape)?;
        match datatype.element_size() {
            Some(size) => {
                let expected = count
                    .checked_mul(size)
                    .ok_or_else(|| TensorError::TooLarge {
                        name: name.clone(),
                        shape: shape.clone(),
                    })?;
                if data.len() != expected {
                    return Err(TensorError::SizeMismatch {
                        name,
                        datatype,
                        shape,
                        expected,
                        actual: data.len(),
                    });
                }
                if datatype == DataType::Bool
                    && let Some(index) = data.iter().position(|&b| b > 1)
                {
                    let value = data[index];
                    return Err(TensorError::InvalidBool { name, index, value });
                }
            }
            None => {
                let actual = count_bytes_elements(&name, &data)?;
                if actual != count {
                    return Err(TensorError::BytesCountMismatch {
                        name,
                        shape,
                        expected: count,
                        actual,
                    });
                }
            }
        }
        Ok(Tensor {
            name,
            datatype,
            shape,
            data,
        })
    }

    /// Builds a fixed-size tensor from typed elements (copied once into the buffer).
    pub fn from_slice<T: Pod>(
        name: impl Into<String>,
        datatype: DataType,
        shape: Vec<i64>,
        values: &[T],
    ) -> Result<Self, TensorError> {
        Self::new(
            name,
            datatype,
            shape,
            Bytes::copy_from_slice(bytemuck::cast_slice(values)),
        )
    }

    /// Builds a `BYTES` tensor from its elements.
    pub fn from_byte_strings<'a>(
        name: impl Into<String>,
        shape: Vec<i64>,
        elements: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Self, TensorError> {
        let mut buf = BytesMut::new();
        for element in elements {
            let len = u32::try_from(element.len()).map_err(|_| TensorError::TooLarge {
                name: String::new(),
                shape: shape.clone(),
            })?;
            buf.put_u32_le(len);
            buf.put_slice(element);
        }
        Self::new(name, DataType::Bytes, shape, buf.freeze())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn datatype(&self) -> DataType {
        self.datatype
    }

    pub fn shape(&self) -> &[i64] {
        &self.shape
    }

    /// The raw buffer: little-endian elements, or length-prefixed elements for `BYTES`.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    pub fn element_count(&self) -> usize {
        // Checked in `new`.
        self.shape.iter().map(|&d| d as usize).product()
    }

    /// Renames the tensor (the buffer is shared, not copied).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The elements as `T`, borrowed when the buffer is suitably aligned, else copied.
    /// `T` must have the datatype's element size; callers match on `datatype()` first.
    pub fn as_slice<T: Pod>(&self) -> Cow<'_, [T]> {
        match bytemuck::try_cast_slice(&self.data) {
            Ok(slice) => Cow::Borrowed(slice),
            Err(_) => Cow::Owned(bytemuck::pod_collect_to_vec(&self.data)),
        }
    }

    /// Iterates the elements of a `BYTES` tensor (empty for other types).
    pub fn byte_strings(&self) -> ByteStrings<'_> {
        ByteStrings {
            rest: if self.datatype == DataType::Bytes {
                &self.data
            } else {
                &[]
            },
        }
    }
}

impl Tensor {
    /// Rows along dimension 0 (1 for a scalar).
    pub fn rows(&self) -> usize {
        self.shape.first().map_or(1, |&d| d as usize)
    }

    /// Joins tensors along dimension 0. All parts must share name, datatype and
    /// the dimensions after the first.
    pub fn concat_rows(parts: &[Tensor]) -> Result<Tensor, TensorError> {
        let first = parts.first().ok_or_else(|| TensorError::TooLarge {
            name: String::new(),
            shape: Vec::new(),
        })?;
        if parts.len() == 1 {
            return Ok(first.clone());
        }
        let mut shape = first.shape.clone();
        if shape.is_empty() {
            return Err(TensorError::NegativeDim {
                name: first.name.clone(),
                shape,
            });
        }
        let mut rows = 0i64;
        let mut buf = BytesMut::with_capacity(parts.iter().map(|t| t.data.len()).sum());
        for part in parts {
            if part.datatype != first.datatype || part.shape.get(1..) != first.shape.get(1..) {
                return Err(TensorError::SizeMismatch {
                    name: first.name.clone(),
                    datatype: first.datatype,
                    shape: part.shape.clone(),
                    expected: first.data.len(),
                    actual: part.data.len(),
                });
            }
            rows += part.shape[0];
            buf.put_slice(&part.data);
        }
        shape[0] = rows;
        Ok(Tensor {
            name: first.name.clone(),
            datatype: first.datatype,
            shape,
            data: buf.freeze(),
        })
    }

    /// Cuts the tensor along dimension 0 into parts of `rows` rows each
    /// (which must add up to the first dimension). Fixed-size types share the
    /// buffer (no copy).
    pub fn split_rows(&self, rows: &[usize]) -> Result<Vec<Tensor>, TensorError> {
        let total: usize = rows.iter().sum();
        let mismatch = || TensorError::SizeMismatch {
            name: self.name.clone(),
            datatype: self.datatype,
            shape: self.shape.clone(),
            expected: total,
            actual: self.rows(),
        };
        if self.shape.is_empty() || self.rows() != total {
            return Err(mismatch());
        }
        let per_row: usize = self.shape[1..].iter().map(|&d| d as usize).product();
        // Byte offset where each row starts (fixed size: arithmetic; BYTES: walk).
        let row_starts: Vec<usize> = match self.datatype.element_size() {
            Some(size) => (0..=total).map(|r| r * per_row * size).collect(),
            None => {
                let mut starts = Vec::with_capacity(total + 1);
                let mut offset = 0;
                starts.push(0);
                let mut elements = self.byte_strings();
                for _ in 0..total {
                    for _ in 0..per_row {
                        let element = elements.next().ok_or_else(mismatch)?;
                        offset += 4 + element.len();
                    }
                    starts.push(offset);
                }
                starts
            }
        };
        let mut parts = Vec::with_capacity(rows.len());
        let mut row = 0;
        for &count in rows {
            let mut shape = self.shape.clone();
            shape[0] = count as i64;
            parts.push(Tensor {
                name: self.name.clone(),
                datatype: self.datatype,
                shape,
                data: self.data.slice(row_starts[row]..row_starts[row + count]),
            });
            row += count;
        }
        Ok(parts)
    }
}

/// Iterator over the elements of a `BYTES` buffer that `Tensor::new` has checked.
pub struct ByteStrings<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for ByteStrings<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let (len, tail) = self.rest.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        let (element, tail) = tail.split_at_checked(len)?;
        self.rest = tail;
        Some(element)
    }
}

fn count_bytes_elements(name: &str, data: &[u8]) -> Result<usize, TensorError> {
    let mut offset = 0;
    let mut count = 0;
    while offset < data.len() {
        let malformed = || TensorError::MalformedBytes {
            name: name.to_owned(),
            offset,
        };
        let len_bytes = data
            .get(offset..offset + 4)
            .ok_or_else(malformed)?
            .try_into()
            .map_err(|_| malformed())?;
        let len = u32::from_le_bytes(len_bytes) as usize;
        let end = (offset + 4).checked_add(len).ok_or_else(malformed)?;
        if end > data.len() {
            return Err(malformed());
        }
        offset = end;
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_size_tensor_checks_length() {
        let ok = Tensor::from_slice("x", DataType::Fp32, vec![2, 2], &[1.0f32, 2.0, 3.0, 4.0]);
        assert!(ok.is_ok());
        let err = Tensor::from_slice("x", DataType::Fp32, vec![2, 3], &[1.0f32, 2.0, 3.0, 4.0])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "tensor `x`: FP32 shape [2, 3] needs 24 bytes of data, got 16"
        );
    }

    #[test]
    fn every_fixed_size_type_round_trips_through_the_buffer() {
        for dt in DataType::ALL {
            let Some(size) = dt.element_size() else {
                continue;
            };
            let data: Vec<u8> = (0..size * 6).map(|i| (i % 2) as u8).collect();
            let t = Tensor::new("t", dt, vec![2, 3], Bytes::from(data.clone())).unwrap();
            assert_eq!(t.data().as_ref(), data.as_slice(), "{dt}");
            assert_eq!(t.element_count(), 6);
        }
    }

    #[test]
    fn negative_and_overflowing_shapes_are_refused() {
        assert!(matches!(
            Tensor::new("x", DataType::Uint8, vec![-1], Bytes::new()),
            Err(TensorError::NegativeDim { .. })
        ));
        assert!(matches!(
            Tensor::new("x", DataType::Uint8, vec![i64::MAX, i64::MAX], Bytes::new()),
            Err(TensorError::TooLarge { .. })
        ));
    }

    #[test]
    fn bool_must_be_zero_or_one() {
        let err =
            Tensor::new("b", DataType::Bool, vec![3], Bytes::from_static(&[0, 1, 2])).unwrap_err();
        assert!(matches!(
            err,
            TensorError::InvalidBool {
                index: 2,
                value: 2,
                ..
            }
        ));
    }

    #[test]
    fn byte_strings_round_trip_and_count() {
        let t = Tensor::from_byte_strings("s", vec![3], [&b"ab"[..], b"", b"\xffz"]).unwrap();
        let items: Vec<&[u8]> = t.byte_strings().collect();
        assert_eq!(items, vec![&b"ab"[..], b"", b"\xffz"]);
        assert!(matches!(
            Tensor::from_byte_strings("s", vec![2], [&b"a"[..]]),
            Err(TensorError::BytesCountMismatch {
                expected: 2,
                actual: 1,
                ..
            })
        ));
        let truncated = Bytes::from_static(&[5, 0, 0, 0, b'a']);
        assert!(matches!(
            Tensor::new("s", DataType::Bytes, vec![1], truncated),
            Err(TensorError::MalformedBytes { offset: 0, .. })
        ));
    }

    #[test]
    fn concat_then_split_restores_the_parts() {
        let a = Tensor::from_slice("x", DataType::Int32, vec![1, 2], &[1i32, 2]).unwrap();
        let b = Tensor::from_slice("x", DataType::Int32, vec![2, 2], &[3i32, 4, 5, 6]).unwrap();
        let joined = Tensor::concat_rows(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(joined.shape(), &[3, 2]);
        assert_eq!(joined.as_slice::<i32>().as_ref(), &[1, 2, 3, 4, 5, 6]);
        assert_eq!(joined.split_rows(&[1, 2]).unwrap(), vec![a.clone(), b]);
        assert!(joined.split_rows(&[1, 1]).is_err());
        let c = Tensor::from_slice("x", DataType::Int32, vec![1, 3], &[1i32, 2, 3]).unwrap();
        assert!(Tensor::concat_rows(&[a, c]).is_err(), "inner dims differ");
    }

    #[test]
    fn byte_strings_split_by_rows() {
        let a = Tensor::from_byte_strings("s", vec![1, 2], [&b"a"[..], b"bb"]).unwrap();
        let b =
            Tensor::from_byte_strings("s", vec![2, 2], [&b""[..], b"ccc", b"d", b"ee"]).unwrap();
        let joined = Tensor::concat_rows(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(joined.split_rows(&[1, 2]).unwrap(), vec![a, b]);
    }

    #[test]
    fn misaligned_buffers_are_copied_not_rejected() {
        let raw = Bytes::from(vec![0u8; 17]).slice(1..);
        let t = Tensor::new("x", DataType::Fp32, vec![4], raw).unwrap();
        assert_eq!(t.as_slice::<f32>().as_ref(), &[0.0; 4]);
    }
}
