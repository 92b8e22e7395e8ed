//! The libtorch runtime's settings, available in every build so configs can
//! name it; the runtime itself (`libtorch`) needs the `torch` cargo feature.
//!
//! Owns: where a TorchScript model runs (`TorchDevice`), its per-model options,
//! how declared inputs map to `forward` arguments, and the clear error a build
//! without the feature gives.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use crate::{DataType, Runtime, RuntimeError, Signature};

#[cfg(feature = "torch")]
mod libtorch;
#[cfg(feature = "torch")]
pub use libtorch::{CudaStatus, TorchRuntime, cuda_status, init};

/// Where a TorchScript model's instance runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TorchDevice {
    Cpu,
    /// A CUDA device by index.
    Cuda(usize),
}

impl FromStr for TorchDevice {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "cpu" => Ok(TorchDevice::Cpu),
            "cuda" | "gpu" => Ok(TorchDevice::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|index| index.parse().ok())
                .map(TorchDevice::Cuda)
                .ok_or_else(|| {
                    format!("device `{other}` is unknown; expected `cpu`, `cuda` or `cuda:N`")
                }),
        }
    }
}

impl fmt::Display for TorchDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TorchDevice::Cpu => f.write_str("cpu"),
            TorchDevice::Cuda(index) => write!(f, "cuda:{index}"),
        }
    }
}

/// Settings of one TorchScript model instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorchOptions {
    pub device: TorchDevice,
    /// Run `forward` under CUDA automatic mixed precision (FP16); CUDA only.
    pub autocast_fp16: bool,
    /// Cast floating-point inputs to this type on the device before `forward`,
    /// so clients may send FP16 (half the bytes to move) to an FP32 model.
    pub cast_inputs: Option<DataType>,
    /// Copy inputs through a pinned host buffer (CUDA only): faster, asynchronous
    /// transfers at the cost of page-locked memory per instance.
    pub pinned_transfers: bool,
}

impl Default for TorchOptions {
    fn default() -> Self {
        TorchOptions {
            device: TorchDevice::Cpu,
            autocast_fp16: false,
            cast_inputs: None,
            pinned_transfers: true,
        }
    }
}

/// Datatypes a TorchScript tensor can carry over KServe v2. Unsigned 16–64 bit
/// integers have almost no operators in libtorch and BYTES is not a tensor.
pub fn supports(datatype: DataType) -> bool {
    !matches!(
        datatype,
        DataType::Uint16 | DataType::Uint32 | DataType::Uint64 | DataType::Bytes
    )
}

/// Checks a declared signature for a TorchScript model (which carries none of
/// its own) and returns the order its inputs are passed to `forward` in.
/// Configs are checked with it when read, instances again when loaded.
pub fn check_signature(signature: &Signature) -> Result<Vec<usize>, String> {
    if signature.inputs.is_empty() || signature.outputs.is_empty() {
        return Err("TorchScript models carry no tensor names, types or shapes; declare `inputs` and `outputs` in the model's config".to_owned());
    }
    if let Some(spec) = signature
        .inputs
        .iter()
        .chain(&signature.outputs)
        .find(|spec| !supports(spec.datatype))
    {
        return Err(format!(
            "`{}` is {}, which TorchScript tensors cannot carry here",
            spec.name, spec.datatype
        ));
    }
    argument_order(signature)
}

/// The order in which declared inputs are passed to `forward`: Triton's
/// `name__N` convention when every input follows it, else the declared order.
pub fn argument_order(signature: &Signature) -> Result<Vec<usize>, String> {
    let indices: Option<Vec<usize>> = signature
        .inputs
        .iter()
        .map(|spec| positional_index(&spec.name))
        .collect();
    let Some(indices) = indices else {
        return Ok((0..signature.inputs.len()).collect());
    };
    let mut order = vec![usize::MAX; indices.len()];
    for (input, &position) in indices.iter().enumerate() {
        match order.get_mut(position) {
            Some(slot) if *slot == usize::MAX => *slot = input,
            _ => {
                return Err(format!(
                    "inputs named `name__N` must number 0..{} once each; `{}` does not fit",
                    indices.len(),
                    signature.inputs[input].name
                ));
            }
        }
    }
    Ok(order)
}

/// `output__2` → 2: Triton's positional naming of TorchScript tensors.
pub fn positional_index(name: &str) -> Option<usize> {
    let (_, index) = name.rsplit_once("__")?;
    index.parse().ok()
}

/// Loads one TorchScript instance. Without the `torch` feature this says how to
/// get a build that can.
pub fn load(
    path: &Path,
    signature: &Signature,
    options: &TorchOptions,
) -> Result<Box<dyn Runtime>, RuntimeError> {
    #[cfg(feature = "torch")]
    {
        Ok(Box::new(TorchRuntime::load(path, signature, options)?))
    }
    #[cfg(not(feature = "torch"))]
    {
        let _ = (signature, options);
        Err(RuntimeError::Load(format!(
            "{}: this build has no libtorch runtime; build with `--features torch` (see README, \"TorchScript models\")",
            path.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TensorSpec;

    fn signature(names: &[&str]) -> Signature {
        Signature {
            inputs: names
                .iter()
                .map(|n| TensorSpec::new(*n, DataType::Fp32, vec![-1, 4]))
                .collect(),
            outputs: Vec::new(),
        }
    }

    #[test]
    fn devices_parse_and_print() {
        assert_eq!("cpu".parse(), Ok(TorchDevice::Cpu));
        assert_eq!("cuda".parse(), Ok(TorchDevice::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(TorchDevice::Cuda(3)));
        assert_eq!(TorchDevice::Cuda(3).to_string(), "cuda:3");
        let err = "tpu".parse::<TorchDevice>().unwrap_err();
        assert!(err.contains("expected `cpu`"), "{err}");
        assert!("cuda:x".parse::<TorchDevice>().is_err());
    }

    #[test]
    fn arguments_follow_declared_order_unless_numbered() {
        assert_eq!(argument_order(&signature(&["b", "a"])), Ok(vec![0, 1]));
        assert_eq!(
            argument_order(&signature(&["INPUT__1", "INPUT__0"])),
            Ok(vec![1, 0])
        );
        // One unnumbered name: declared order for all.
        assert_eq!(
            argument_order(&signature(&["INPUT__1", "mask"])),
            Ok(vec![0, 1])
        );
        let err = argument_order(&signature(&["x__0", "y__0"])).unwrap_err();
        assert!(err.contains("y__0"), "{err}");
        assert!(argument_order(&signature(&["x__0", "y__5"])).is_err());
    }

    #[test]
    fn unsupported_types_are_named() {
        assert!(supports(DataType::Fp16));
        assert!(supports(DataType::Bool));
        assert!(!supports(DataType::Bytes));
        assert!(!supports(DataType::Uint32));
    }

    #[cfg(not(feature = "torch"))]
    #[test]
    fn default_build_explains_how_to_get_torch() {
        let err = load(
            Path::new("m/1/model.pt"),
            &signature(&["x"]),
            &TorchOptions::default(),
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("--features torch"), "{err}");
    }
}
