//! The classification extension (Triton's): an output requested with
//! `parameters.classification: k` comes back as a BYTES tensor of the top `k`
//! classes per row, each `"score:index"` or `"score:index:label"`, scores
//! descending (ties by lower index). When the model batches, each row of the
//! batch is classified over all its other elements (Triton's rule); when it
//! does not, classes run along the last dimension and every leading index is
//! a row (a `[C]` output is one row, as in Triton; a `[N, C]` output of a
//! model without a batching config gets `[N, k]`). Labels are one per
//! line, from the output's `label_filename` or the model folder's `labels.txt`.

use bytes::{BufMut, BytesMut};
use switchyard_runtimes::{DataType, Tensor, TensorSpec};

use crate::error::ApiError;

/// Refuses classification of outputs that hold no scores.
pub fn check(spec: &TensorSpec) -> Result<(), ApiError> {
    match spec.datatype {
        DataType::Bytes | DataType::Bool => Err(ApiError::invalid(format!(
            "output `{}` is {}: classification needs a numeric output",
            spec.name, spec.datatype
        ))),
        _ => Ok(()),
    }
}

/// Reads a tensor's elements as numbers, with how to print one (integers stay integers).
pub fn numbers(tensor: &Tensor) -> Result<(Vec<f64>, bool), ApiError> {
    let data = tensor.data();
    let each = |width: usize| data.chunks_exact(width);
    let arr = |c: &[u8]| -> [u8; 8] {
        let mut a = [0u8; 8];
        a[..c.len()].copy_from_slice(c);
        a
    };
    let values: Vec<f64> = match tensor.datatype() {
        DataType::Fp32 => each(4)
            .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        DataType::Fp64 => each(8).map(|c| f64::from_le_bytes(arr(c))).collect(),
        DataType::Fp16 => each(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        DataType::Bf16 => each(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        DataType::Int8 => data.iter().map(|&b| f64::from(b as i8)).collect(),
        DataType::Uint8 => data.iter().map(|&b| f64::from(b)).collect(),
        DataType::Int16 => each(2)
            .map(|c| f64::from(i16::from_le_bytes([c[0], c[1]])))
            .collect(),
        DataType::Uint16 => each(2)
            .map(|c| f64::from(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        DataType::Int32 => each(4)
            .map(|c| f64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        DataType::Uint32 => each(4)
            .map(|c| f64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        DataType::Int64 => each(8).map(|c| i64::from_le_bytes(arr(c)) as f64).collect(),
        DataType::Uint64 => each(8).map(|c| u64::from_le_bytes(arr(c)) as f64).collect(),
        DataType::Bytes | DataType::Bool => {
            return Err(ApiError::invalid(format!(
                "output `{}` is {}: classification needs a numeric output",
                tensor.name(),
                tensor.datatype()
            )));
        }
    };
    let integers = !matches!(
        tensor.datatype(),
        DataType::Fp32 | DataType::Fp64 | DataType::Fp16 | DataType::Bf16
    );
    Ok((values, integers))
}

/// The top `k` classes of each row of `tensor`.
pub fn classify(
    tensor: &Tensor,
    k: usize,
    labels: Option<&[String]>,
    batched: bool,
) -> Result<Tensor, ApiError> {
    let (values, integers) = numbers(tensor)?;
    let shape = tensor.shape();
    let leading: Vec<i64> = if batched {
        shape.first().copied().into_iter().collect()
    } else {
        shape[..shape.len().saturating_sub(1)].to_vec()
    };
    let rows = leading
        .iter()
        .map(|&d| d.max(0) as usize)
        .product::<usize>();
    let classes = values.len().checked_div(rows).unwrap_or(0);
    let k = k.min(classes);
    let mut data = BytesMut::new();
    let mut order: Vec<usize> = Vec::with_capacity(classes);
    for row in values.chunks(classes.max(1)).take(rows) {
        order.clear();
        order.extend(0..row.len());
        // Stable: equal scores keep the lower index first.
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        for &index in order.iter().take(k) {
            let score = if integers {
                format!("{}", row[index] as i64)
            } else {
                format!("{:.6}", row[index])
            };
            let text = match labels.and_then(|labels| labels.get(index)) {
                Some(label) => format!("{score}:{index}:{label}"),
                None => format!("{score}:{index}"),
            };
            data.put_u32_le(text.len() as u32);
            data.put_slice(text.as_bytes());
        }
    }
    let mut shape = leading;
    shape.push(k as i64);
    Tensor::new(
        tensor.name().to_owned(),
        DataType::Bytes,
        shape,
        data.freeze(),
    )
    .map_err(|err| ApiError::internal(format!("classification of `{}`: {err}", tensor.name())))
}

/// Reads a labels file: one label per line, trailing blank lines dropped.
pub fn read_labels(path: &std::path::Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut labels: Vec<String> = text
        .lines()
        .map(|l| l.trim_end_matches('\r').to_owned())
        .collect();
    while labels.last().is_some_and(|l| l.is_empty()) {
        labels.pop();
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(tensor: &Tensor) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = &tensor.data()[..];
        while rest.len() >= 4 {
            let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            out.push(String::from_utf8(rest[4..4 + len].to_vec()).unwrap());
            rest = &rest[4 + len..];
        }
        out
    }

    #[test]
    fn top_k_per_row_with_labels_and_ties_by_index() {
        let values: Vec<u8> = [0.1f32, 0.7, 0.2, 0.5, 0.5, 0.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let tensor = Tensor::new("p", DataType::Fp32, vec![2, 3], values.into()).unwrap();
        let labels = vec!["cat".to_owned(), "dog".to_owned()];
        let top = classify(&tensor, 2, Some(&labels), true).unwrap();
        assert_eq!(top.shape(), &[2, 2]);
        assert_eq!(
            strings(&top),
            [
                "0.700000:1:dog",
                "0.200000:2",
                "0.500000:0:cat",
                "0.500000:1:dog"
            ]
        );
        let all = classify(&tensor, 10, None, false).unwrap();
        assert_eq!(
            all.shape(),
            &[2, 3],
            "k is cut to the class count; unbatched: along the last dim"
        );
        let flat = Tensor::new("p", DataType::Fp32, vec![6], tensor.data().clone()).unwrap();
        let top = classify(&flat, 1, None, false).unwrap();
        assert_eq!(
            (top.shape(), strings(&top)),
            (&[1i64][..], vec!["0.700000:1".to_owned()])
        );
    }

    #[test]
    fn integers_print_as_integers_and_empty_batches_stay_empty() {
        let tensor = Tensor::new(
            "c",
            DataType::Int64,
            vec![1, 2],
            [3i64, 9]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<_>>()
                .into(),
        )
        .unwrap();
        assert_eq!(strings(&classify(&tensor, 1, None, true).unwrap()), ["9:1"]);
        let empty = Tensor::new("c", DataType::Fp32, vec![0, 4], bytes::Bytes::new()).unwrap();
        assert_eq!(classify(&empty, 2, None, true).unwrap().shape(), &[0, 0]);
    }
}
