//! Warm-up: synthetic inputs at every batch size the model will see, run
//! through every instance before the version serves.

use std::panic::AssertUnwindSafe;

use switchyard_runtimes::{Runtime, Signature, Tensor};

use crate::config::model::ModelConfig;

/// Deterministic inputs that fit `signature` with `batch` rows (variable
/// non-batch dims get size 1). For warm-up and the runtime benchmark.
pub fn synthetic_inputs(signature: &Signature, batch: usize) -> Result<Vec<Tensor>, String> {
    use bytes::{BufMut, BytesMut};
    use switchyard_runtimes::DataType;
    signature
        .inputs
        .iter()
        .map(|spec| {
            let shape: Vec<i64> = spec
                .shape
                .iter()
                .enumerate()
                .map(|(i, &d)| {
                    if d < 0 && i == 0 {
                        batch as i64
                    } else {
                        d.max(1)
                    }
                })
                .collect();
            let count: usize = shape.iter().map(|&d| d as usize).product();
            let mut buf = BytesMut::new();
            for i in 0..count {
                // Values in [-1, 1); every type gets something legal.
                let x = ((i * 7919) % 2000) as f32 / 1000.0 - 1.0;
                match spec.datatype {
                    DataType::Fp32 => buf.put_f32_le(x),
                    DataType::Fp64 => buf.put_f64_le(f64::from(x)),
                    DataType::Fp16 => buf.put_u16_le(half::f16::from_f32(x).to_bits()),
                    DataType::Bf16 => buf.put_u16_le(half::bf16::from_f32(x).to_bits()),
                    DataType::Bytes => {
                        buf.put_u32_le(4);
                        buf.put_slice(b"text");
                    }
                    DataType::Bool => buf.put_u8((i % 2) as u8),
                    other => buf.put_bytes(0, other.element_size().unwrap_or(1)),
                }
            }
            Tensor::new(spec.name.clone(), spec.datatype, shape, buf.freeze())
                .map_err(|e| e.to_string())
        })
        .collect()
}

/// Runs every batch size the model will see through every instance, so the
/// first real requests do not pay for lazy initialisation, and a model that
/// loads but cannot run is refused before it serves.
pub(super) fn warm_up(
    runtimes: &mut [Box<dyn Runtime>],
    signature: &Signature,
    config: &ModelConfig,
) -> Result<(), String> {
    let sizes = crate::serve::batcher::batch_sizes_in_use(config);
    let batched = signature
        .inputs
        .iter()
        .all(|s| s.shape.first() == Some(&-1));
    for size in sizes {
        if size > 1 && !batched {
            break;
        }
        let inputs = synthetic_inputs(signature, size)?;
        for runtime in runtimes.iter_mut() {
            match std::panic::catch_unwind(AssertUnwindSafe(|| runtime.run(&inputs))) {
                Ok(Ok(_)) => {}
                Ok(Err(err)) => return Err(format!("warm-up at batch size {size} failed: {err}")),
                Err(_) => return Err(format!("warm-up at batch size {size} panicked")),
            }
        }
    }
    Ok(())
}
