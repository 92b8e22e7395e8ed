//! ONNX Runtime backend (the `ort` crate, library loaded at run time).
//!
//! Owns: finding and loading `libonnxruntime.so` once per process, turning an
//! ONNX session's inputs/outputs into a `Signature`, and moving `Tensor`
//! buffers in and out of ORT without per-element work (fixed-size inputs are
//! passed as zero-copy views when the buffer is aligned).

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bytes::Bytes;
use half::{bf16, f16};
use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor as OrtTensor, TensorElementType, TensorRef, ValueType};

use crate::{DataType, Runtime, RuntimeError, Signature, Tensor, TensorSpec};

static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();

/// Where to look for the ONNX Runtime library, first match wins: the explicit
/// path, `ORT_DYLIB_PATH`, `libonnxruntime.so` beside the executable, then the
/// system's library search path.
pub fn library_candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(path) = explicit {
        candidates.push(path.to_owned());
        return candidates;
    }
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH") {
        candidates.push(PathBuf::from(path));
        return candidates;
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_owned))
    {
        let beside = dir.join("libonnxruntime.so");
        if beside.exists() {
            candidates.push(beside);
        }
    }
    candidates.push(PathBuf::from("libonnxruntime.so"));
    candidates
}

/// Loads ONNX Runtime once for the process. Later calls return the same
/// environment, whatever path they name.
pub fn init(explicit: Option<&Path>) -> Result<&'static Environment, RuntimeError> {
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env);
    }
    let mut errors = Vec::new();
    for candidate in library_candidates(explicit) {
        let builder = match ort::init_from(&candidate) {
            Ok(builder) => builder,
            Err(err) => {
                errors.push(format!("{}: {err}", candidate.display()));
                continue;
            }
        };
        let env = builder
            .with_name("switchyard")
            .with_telemetry(false)
            .build()
            .map_err(|err| {
                RuntimeError::Load(format!("creating the ONNX Runtime environment: {err}"))
            })?;
        return Ok(ENVIRONMENT.get_or_init(|| env));
    }
    Err(RuntimeError::Load(format!(
        "could not load the ONNX Runtime library ({}); run scripts/fetch-onnxruntime.sh or set ORT_DYLIB_PATH",
        errors.join("; ")
    )))
}

/// Per-session ONNX Runtime settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnnxOptions {
    /// Threads inside one operator (0 lets ORT choose one per core).
    pub intra_op_threads: usize,
    /// Threads across independent operators.
    pub inter_op_threads: usize,
    /// Whether idle intra-op threads spin. Faster for tiny models, but burns a
    /// core the HTTP/gRPC threads may need.
    pub spinning: bool,
}

impl Default for OnnxOptions {
    fn default() -> Self {
        OnnxOptions {
            intra_op_threads: 1,
            inter_op_threads: 1,
            spinning: false,
        }
    }
}

/// One ONNX Runtime session: owned by one worker thread.
pub struct OnnxRuntime {
    session: Session,
    signature: Signature,
}

impl OnnxRuntime {
    pub fn load(path: &Path, options: &OnnxOptions) -> Result<Self, RuntimeError> {
        let env = init(None)?;
        let load_err =
            |err: &dyn std::fmt::Display| RuntimeError::Load(format!("{}: {err}", path.display()));
        // Each step returns the builder inside its error; keep only the message.
        let mut builder = Session::builder(env)
            .map_err(|e| load_err(&e))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| load_err(&e))?
            .with_intra_threads(options.intra_op_threads)
            .map_err(|e| load_err(&e))?
            .with_inter_threads(options.inter_op_threads)
            .map_err(|e| load_err(&e))?
            .with_intra_op_spinning(options.spinning)
            .map_err(|e| load_err(&e))?
            .with_inter_op_spinning(options.spinning)
            .map_err(|e| load_err(&e))?;
        let session = builder.commit_from_file(path).map_err(|e| load_err(&e))?;
        let signature = Signature {
            inputs: session
                .inputs()
                .iter()
                .map(|outlet| spec_of(outlet.name(), outlet.dtype(), path))
                .collect::<Result<_, _>>()?,
            outputs: session
                .outputs()
                .iter()
                .map(|outlet| spec_of(outlet.name(), outlet.dtype(), path))
                .collect::<Result<_, _>>()?,
        };
        Ok(OnnxRuntime { session, signature })
    }
}

fn spec_of(name: &str, dtype: &ValueType, path: &Path) -> Result<TensorSpec, RuntimeError> {
    let ValueType::Tensor { ty, shape, .. } = dtype else {
        return Err(RuntimeError::Load(format!(
            "{}: `{name}` is a {dtype:?}, not a tensor; only tensor inputs and outputs can be served (for scikit-learn classifiers convert with zipmap disabled)",
            path.display()
        )));
    };
    let datatype = datatype_of(*ty).ok_or_else(|| {
        RuntimeError::Load(format!(
            "{}: `{name}` has element type {ty:?}, which the KServe v2 protocol cannot carry",
            path.display()
        ))
    })?;
    Ok(TensorSpec::new(name, datatype, shape.to_vec()))
}

fn datatype_of(ty: TensorElementType) -> Option<DataType> {
    Some(match ty {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::Uint8,
        TensorElementType::Uint16 => DataType::Uint16,
        TensorElementType::Uint32 => DataType::Uint32,
        TensorElementType::Uint64 => DataType::Uint64,
        TensorElementType::Int8 => DataType::Int8,
        TensorElementType::Int16 => DataType::Int16,
        TensorElementType::Int32 => DataType::Int32,
        TensorElementType::Int64 => DataType::Int64,
        TensorElementType::Float16 => DataType::Fp16,
        TensorElementType::Bfloat16 => DataType::Bf16,
        TensorElementType::Float32 => DataType::Fp32,
        TensorElementType::Float64 => DataType::Fp64,
        TensorElementType::String => DataType::Bytes,
        _ => return None,
    })
}

/// A tensor's elements, typed, borrowed from its buffer when aligned.
enum Elements<'a> {
    Bool(&'a [bool]),
    U8(&'a [u8]),
    U16(Cow<'a, [u16]>),
    U32(Cow<'a, [u32]>),
    U64(Cow<'a, [u64]>),
    I8(Cow<'a, [i8]>),
    I16(Cow<'a, [i16]>),
    I32(Cow<'a, [i32]>),
    I64(Cow<'a, [i64]>),
    F16(Cow<'a, [f16]>),
    Bf16(Cow<'a, [bf16]>),
    F32(Cow<'a, [f32]>),
    F64(Cow<'a, [f64]>),
    // ORT copies strings into its own buffers anyway; owned keeps the lifetimes simple.
    Strings(Vec<String>),
}

impl<'a> Elements<'a> {
    fn of(tensor: &'a Tensor) -> Result<Self, RuntimeError> {
        Ok(match tensor.datatype() {
            DataType::Bool => Elements::Bool(
                bytemuck::checked::try_cast_slice(tensor.data()).map_err(|_| {
                    RuntimeError::InvalidInput(format!("input `{}`: BOOL elements must be 0 or 1", tensor.name()))
                })?,
            ),
            DataType::Uint8 => Elements::U8(tensor.data()),
            DataType::Uint16 => Elements::U16(tensor.as_slice()),
            DataType::Uint32 => Elements::U32(tensor.as_slice()),
            DataType::Uint64 => Elements::U64(tensor.as_slice()),
            DataType::Int8 => Elements::I8(tensor.as_slice()),
            DataType::Int16 => Elements::I16(tensor.as_slice()),
            DataType::Int32 => Elements::I32(tensor.as_slice()),
            DataType::Int64 => Elements::I64(tensor.as_slice()),
            DataType::Fp16 => Elements::F16(tensor.as_slice()),
            DataType::Bf16 => Elements::Bf16(tensor.as_slice()),
            DataType::Fp32 => Elements::F32(tensor.as_slice()),
            DataType::Fp64 => Elements::F64(tensor.as_slice()),
            DataType::Bytes => Elements::Strings(
                tensor
                    .byte_strings()
                    .enumerate()
                    .map(|(index, element)| {
                        let text = std::str::from_utf8(element).map_err(|_| {
                            RuntimeError::InvalidInput(format!(
                                "input `{}`: element {index} is not valid UTF-8, which ONNX string tensors require",
                                tensor.name()
                            ))
                        })?;
                        if text.contains('\0') {
                            return Err(RuntimeError::InvalidInput(format!(
                                "input `{}`: element {index} contains a NUL byte, which ONNX string tensors cannot hold",
                                tensor.name()
                            )));
                        }
                        Ok(text.to_owned())
                    })
                    .collect::<Result<_, _>>()?,
            ),
        })
    }

    fn to_ort(&self, shape: &[i64]) -> ort::Result<SessionInputValue<'_>> {
        let shape = shape.to_vec();
        Ok(match self {
            Elements::Bool(v) => TensorRef::from_array_view((shape, *v))?.into(),
            Elements::U8(v) => TensorRef::from_array_view((shape, *v))?.into(),
            Elements::U16(v) => TensorRef::from_array_view((shape, &v[..]))?.into(),
            Elements::U32(v) => TensorRef::from_array_view((shape, &v[..]))?.into(),
            Elements::U64(v) => TensorRef::from_array_view((shape, &v[..]))?.into(),
            Elements::I8(v) => TensorRef::from_array_view((shape, &v[..]))?.into(),
            Elements::I16(v) => TensorRef::from_array_view((shape, &v[..]))?.into(),
            Elements::I32(v) => TensorRef::from_array_view((shape, &v[..]))?.into(),
            Elements::I64(v) => TensorRef::from_array_view((shape, &v[..]))?.into(),
            Elements::F16(v) => TensorRef::from_array_view((shape, &v[..]))?.into(),
            Elements::Bf16(v) => TensorRef::from_array_view((shape, &v[..]))?.into(),
            Elements::F32(v) => TensorRef::from_array_view((shape, &v[..]))?.into(),
            Elements::F64(v) => TensorRef::from_array_view((shape, &v[..]))?.into(),
            Elements::Strings(v) => OrtTensor::from_string_array((shape, &v[..]))?.into(),
        })
    }
}

fn pod_bytes<T: bytemuck::Pod + ort::value::PrimitiveTensorElementType>(
    value: &DynValue,
) -> ort::Result<Bytes> {
    let (_, data) = value.try_extract_tensor::<T>()?;
    Ok(Bytes::copy_from_slice(bytemuck::cast_slice(data)))
}

fn output_tensor(spec: &TensorSpec, value: &DynValue) -> Result<Tensor, RuntimeError> {
    let fail =
        |err: ort::Error| RuntimeError::Execution(format!("reading output `{}`: {err}", spec.name));
    let shape = match value.dtype() {
        ValueType::Tensor { shape, .. } => shape.to_vec(),
        other => {
            return Err(RuntimeError::Execution(format!(
                "output `{}` is a {other:?}, not a tensor",
                spec.name
            )));
        }
    };
    let data = match spec.datatype {
        DataType::Bool => {
            let (_, data) = value.try_extract_tensor::<bool>().map_err(fail)?;
            Bytes::from(data.iter().map(|&b| u8::from(b)).collect::<Vec<u8>>())
        }
        DataType::Uint8 => pod_bytes::<u8>(value).map_err(fail)?,
        DataType::Uint16 => pod_bytes::<u16>(value).map_err(fail)?,
        DataType::Uint32 => pod_bytes::<u32>(value).map_err(fail)?,
        DataType::Uint64 => pod_bytes::<u64>(value).map_err(fail)?,
        DataType::Int8 => pod_bytes::<i8>(value).map_err(fail)?,
        DataType::Int16 => pod_bytes::<i16>(value).map_err(fail)?,
        DataType::Int32 => pod_bytes::<i32>(value).map_err(fail)?,
        DataType::Int64 => pod_bytes::<i64>(value).map_err(fail)?,
        DataType::Fp16 => pod_bytes::<f16>(value).map_err(fail)?,
        DataType::Bf16 => pod_bytes::<bf16>(value).map_err(fail)?,
        DataType::Fp32 => pod_bytes::<f32>(value).map_err(fail)?,
        DataType::Fp64 => pod_bytes::<f64>(value).map_err(fail)?,
        DataType::Bytes => {
            let (_, strings) = value.try_extract_strings().map_err(fail)?;
            return Ok(Tensor::from_byte_strings(
                spec.name.clone(),
                shape,
                strings.iter().map(|s| s.as_bytes()),
            )?);
        }
    };
    Ok(Tensor::new(spec.name.clone(), spec.datatype, shape, data)?)
}

impl Runtime for OnnxRuntime {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError> {
        let elements = inputs
            .iter()
            .map(Elements::of)
            .collect::<Result<Vec<_>, _>>()?;
        let values = inputs
            .iter()
            .zip(&elements)
            .map(|(tensor, elements)| {
                elements
                    .to_ort(tensor.shape())
                    .map(|value| (tensor.name(), value))
                    .map_err(|err| {
                        RuntimeError::InvalidInput(format!("input `{}`: {err}", tensor.name()))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = self
            .session
            .run(values)
            .map_err(|err| RuntimeError::Execution(err.to_string()))?;
        self.signature
            .outputs
            .iter()
            .map(|spec| {
                let value = outputs.get(&spec.name).ok_or_else(|| {
                    RuntimeError::Execution(format!("the model gave no output `{}`", spec.name))
                })?;
                output_tensor(spec, value)
            })
            .collect()
    }
}
