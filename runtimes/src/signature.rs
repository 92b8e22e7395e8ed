//! A model's signature: the inputs it takes and the outputs it gives.

use serde::Serialize;

use crate::DataType;

/// One input or output of a model. `shape` is the full shape, batch dimension
/// included; -1 marks a dimension of any size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, datatype: DataType, shape: Vec<i64>) -> Self {
        TensorSpec {
            name: name.into(),
            datatype,
            shape,
        }
    }

    /// Whether a concrete shape fits this spec (same rank, fixed dims equal).
    pub fn accepts_shape(&self, shape: &[i64]) -> bool {
        self.shape.len() == shape.len()
            && self
                .shape
                .iter()
                .zip(shape)
                .all(|(&want, &got)| want < 0 || want == got)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Signature {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

impl Signature {
    pub fn input(&self, name: &str) -> Option<&TensorSpec> {
        self.inputs.iter().find(|spec| spec.name == name)
    }

    pub fn output(&self, name: &str) -> Option<&TensorSpec> {
        self.outputs.iter().find(|spec| spec.name == name)
    }
}
