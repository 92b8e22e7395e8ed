//! The signature clients see: a model's own (read from its file), narrowed
//! and checked against what its config declares.

use switchyard_runtimes::{DataType, Signature, TensorSpec};

use super::ModelConfig;

impl ModelConfig {
    /// The declared inputs and outputs as a signature (what TorchScript models serve).
    pub fn signature_declared(&self) -> Signature {
        Signature {
            inputs: self.inputs.clone(),
            outputs: self.outputs.clone(),
        }
    }

    /// Full shape of a declared tensor: `[-1] + dims` when the model batches.
    pub(super) fn full_shape(&self, dims: &[i64]) -> Vec<i64> {
        if self.max_batch_size > 0 {
            std::iter::once(-1).chain(dims.iter().copied()).collect()
        } else {
            dims.to_vec()
        }
    }

    /// The signature clients see: the model's own, narrowed by what the config
    /// declares. Fails when the two disagree.
    pub fn resolve_signature(&self, model: &Signature) -> Result<Signature, String> {
        let inputs = if self.inputs.is_empty() {
            model.inputs.clone()
        } else {
            for spec in &model.inputs {
                if !self
                    .inputs
                    .iter()
                    .any(|declared| declared.name == spec.name)
                {
                    return Err(format!(
                        "the model has input `{}`, which the config does not declare",
                        spec.name
                    ));
                }
            }
            reconcile("input", &self.inputs, &model.inputs)?
        };
        let outputs = if self.outputs.is_empty() {
            model.outputs.clone()
        } else {
            reconcile("output", &self.outputs, &model.outputs)?
        };
        if let Some(batching) = &self.dynamic_batching {
            for (name, pad) in &batching.padding.inputs {
                let spec = inputs.iter().find(|s| &s.name == name).ok_or_else(|| {
                    format!("padding names input `{name}`, which the model does not have")
                })?;
                if pad.dim >= spec.shape.len() || spec.shape[pad.dim] >= 0 {
                    return Err(format!(
                        "padding for input `{name}`: dim {} of shape {:?} is not a variable dimension",
                        pad.dim, spec.shape
                    ));
                }
                if spec.datatype == DataType::Bytes {
                    return Err(format!(
                        "padding for input `{name}`: BYTES inputs cannot be padded"
                    ));
                }
            }
            for (name, cut) in &batching.padding.outputs {
                let spec = outputs.iter().find(|s| &s.name == name).ok_or_else(|| {
                    format!("padding names output `{name}`, which the model does not have")
                })?;
                if cut.dim >= spec.shape.len() {
                    return Err(format!(
                        "padding for output `{name}`: dim {} is past its shape {:?}",
                        cut.dim, spec.shape
                    ));
                }
            }
        }
        if self.max_batch_size > 0 {
            for spec in inputs.iter().chain(&outputs) {
                if spec.shape.first().is_none_or(|&d| d >= 0) {
                    return Err(format!(
                        "max_batch_size {} needs a variable first dimension, but `{}` has shape {:?}",
                        self.max_batch_size, spec.name, spec.shape
                    ));
                }
            }
        }
        Ok(Signature { inputs, outputs })
    }
}

fn reconcile(
    kind: &str,
    declared: &[TensorSpec],
    actual: &[TensorSpec],
) -> Result<Vec<TensorSpec>, String> {
    declared
        .iter()
        .map(|want| {
            let have = actual
                .iter()
                .find(|spec| spec.name == want.name)
                .ok_or_else(|| {
                    let names: Vec<&str> = actual.iter().map(|s| s.name.as_str()).collect();
                    format!(
                        "config declares {kind} `{}`, but the model's {kind}s are {names:?}",
                        want.name
                    )
                })?;
            if have.datatype != want.datatype {
                return Err(format!(
                    "{kind} `{}`: config says {}, the model says {}",
                    want.name, want.datatype, have.datatype
                ));
            }
            let compatible = have.shape.len() == want.shape.len()
                && have
                    .shape
                    .iter()
                    .zip(&want.shape)
                    .all(|(&h, &w)| h < 0 || h == w);
            if !compatible {
                return Err(format!(
                    "{kind} `{}`: config shape {:?} does not fit the model's shape {:?}",
                    want.name, want.shape, have.shape
                ));
            }
            Ok(want.clone())
        })
        .collect()
}
