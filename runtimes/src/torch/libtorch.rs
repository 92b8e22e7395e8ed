//! The libtorch runtime (`tch`): TorchScript modules on CPU or CUDA.
//!
//! Owns: loading libtorch's CUDA part at start-up (it is not a linked
//! dependency, so one binary serves CPU-only and CUDA machines), loading a
//! module on its device in eval mode, turning input buffers into device tensors
//! (through a pinned staging buffer on CUDA), running `forward` without
//! autograd, and naming what it returns (a tensor, a tuple or list by position,
//! a dict by key).

use std::path::Path;
use std::sync::OnceLock;

use bytes::Bytes;
use tch::{CModule, Device, IValue, Kind, Tensor as TchTensor};

use super::{TorchDevice, TorchOptions, check_signature, positional_index};
use crate::{DataType, Runtime, RuntimeError, Signature, Tensor, TensorSpec};

/// Inputs start at this alignment in the staging buffer, so any element type
/// can view its part.
const STAGING_ALIGN: usize = 64;

/// A CUDA stream of libtorch's per-device pool, one per instance, made current
/// on the worker thread before each call, so instances on one GPU overlap
/// their copies and kernels instead of queueing on the default stream. The
/// C++ shim (`cuda_streams.cpp`) exists only when LIBTORCH has CUDA support.
#[cfg(switchyard_cuda_streams)]
#[allow(unsafe_code)]
mod stream {
    use std::ffi::c_void;

    unsafe extern "C" {
        fn switchyard_cuda_stream_from_pool(device: i32, stream: *mut *mut c_void) -> i32;
        fn switchyard_cuda_stream_make_current(stream: *mut c_void) -> i32;
        fn switchyard_cuda_stream_free(stream: *mut c_void);
    }

    pub struct CudaStream(*mut c_void);

    // SAFETY: the handle is this instance's own heap copy of a c10 CUDAStream
    // value (a device and a stream id); the instance moves between threads
    // whole, and CUDA streams may be used from any thread.
    unsafe impl Send for CudaStream {}

    impl CudaStream {
        pub const SUPPORTED: bool = true;

        pub fn from_pool(device: usize) -> Result<Self, String> {
            let device = i32::try_from(device).map_err(|_| format!("no device {device}"))?;
            let mut handle = std::ptr::null_mut();
            // SAFETY: `handle` is a valid out-pointer; the shim catches every C++ exception.
            let status = unsafe { switchyard_cuda_stream_from_pool(device, &mut handle) };
            if status != 0 || handle.is_null() {
                return Err(format!("no stream from cuda:{device}'s pool"));
            }
            Ok(CudaStream(handle))
        }

        pub fn make_current(&self) -> Result<(), String> {
            // SAFETY: the handle came from `from_pool` and is freed only on drop.
            match unsafe { switchyard_cuda_stream_make_current(self.0) } {
                0 => Ok(()),
                _ => Err("could not make the instance's CUDA stream current".to_owned()),
            }
        }
    }

    impl Drop for CudaStream {
        fn drop(&mut self) {
            // SAFETY: allocated by `from_pool`, freed once.
            unsafe { switchyard_cuda_stream_free(self.0) }
        }
    }
}

/// Without CUDA support in LIBTORCH at build time, instances use the default stream.
#[cfg(not(switchyard_cuda_streams))]
mod stream {
    pub struct CudaStream;

    impl CudaStream {
        pub const SUPPORTED: bool = false;

        pub fn from_pool(_device: usize) -> Result<Self, String> {
            Err("this build has no CUDA stream support (LIBTORCH had no CUDA libraries)".to_owned())
        }

        pub fn make_current(&self) -> Result<(), String> {
            Ok(())
        }
    }
}

use stream::CudaStream;

/// What loading libtorch's CUDA part found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CudaStatus {
    /// libtorch_cuda.so is loaded (CUDA kernels registered).
    pub cuda_part_loaded: bool,
    /// Why it is not, when it is not.
    pub cuda_part_error: Option<String>,
    /// A driver and at least one device are usable.
    pub cuda_available: bool,
    pub device_count: i64,
    pub cudnn_available: bool,
    /// Each CUDA instance runs on its own stream (else the default stream).
    pub stream_per_instance: bool,
    pub intra_op_threads: i32,
}

static CUDA_PART: OnceLock<Result<(), String>> = OnceLock::new();
static THREADS: OnceLock<i32> = OnceLock::new();

/// Prepares libtorch for the process: loads its CUDA part when present (before
/// any other libtorch call) and sets the CPU thread count. The first call wins.
pub fn init(intra_op_threads: usize) {
    CUDA_PART.get_or_init(load_cuda_part);
    THREADS.get_or_init(|| {
        // Unset, libtorch starts a thread per core in every instance; on a shared
        // machine that slows everything many times over.
        let threads = i32::try_from(intra_op_threads.max(1)).unwrap_or(1);
        tch::set_num_threads(threads);
        threads
    });
}

pub fn cuda_status() -> CudaStatus {
    init(1);
    let cuda_part_error = CUDA_PART.get().and_then(|r| r.clone().err());
    CudaStatus {
        cuda_part_loaded: tch::utils::has_cudart(),
        cuda_part_error,
        cuda_available: tch::Cuda::is_available(),
        device_count: tch::Cuda::device_count(),
        cudnn_available: tch::Cuda::cudnn_is_available(),
        stream_per_instance: CudaStream::SUPPORTED,
        intra_op_threads: tch::get_num_threads(),
    }
}

/// `dlopen`s libtorch_cuda.so so that its static initialisers register the
/// CUDA backend. Linking it would do the same, but `--as-needed` drops it
/// silently and a CPU-only machine could not start the binary at all.
#[allow(unsafe_code)]
fn load_cuda_part() -> Result<(), String> {
    let name = c"libtorch_cuda.so";
    // SAFETY: a valid NUL-terminated name; the handle is never closed, so the
    // library stays loaded for the life of the process as libtorch expects.
    let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if !handle.is_null() {
        return Ok(());
    }
    // SAFETY: dlerror returns NULL or a NUL-terminated string valid until the
    // next dl* call on this thread; it is copied at once.
    let message = unsafe {
        let err = libc::dlerror();
        if err.is_null() {
            "unknown dlopen error".to_owned()
        } else {
            std::ffi::CStr::from_ptr(err).to_string_lossy().into_owned()
        }
    };
    tracing::info!(reason = %message, "libtorch's CUDA part is not loaded; TorchScript models can run on the CPU only.");
    Err(message)
}

fn kind_of(datatype: DataType) -> Option<Kind> {
    Some(match datatype {
        DataType::Bool => Kind::Bool,
        DataType::Uint8 => Kind::Uint8,
        DataType::Int8 => Kind::Int8,
        DataType::Int16 => Kind::Int16,
        DataType::Int32 => Kind::Int,
        DataType::Int64 => Kind::Int64,
        DataType::Fp16 => Kind::Half,
        DataType::Bf16 => Kind::BFloat16,
        DataType::Fp32 => Kind::Float,
        DataType::Fp64 => Kind::Double,
        DataType::Uint16 | DataType::Uint32 | DataType::Uint64 | DataType::Bytes => return None,
    })
}

fn is_float(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Half | Kind::BFloat16 | Kind::Float | Kind::Double
    )
}

/// One TorchScript module on one device: owned by one worker thread.
pub struct TorchRuntime {
    module: CModule,
    device: Device,
    signature: Signature,
    /// `forward` argument k is signature input `arguments[k]`.
    arguments: Vec<usize>,
    options: TorchOptions,
    /// Page-locked host buffer inputs are copied through on CUDA (grown on demand).
    staging: Option<TchTensor>,
    /// This instance's CUDA stream (`None` on the CPU, or without stream support).
    stream: Option<CudaStream>,
}

impl TorchRuntime {
    /// Loads `path` for `signature` (TorchScript files carry no tensor types or
    /// shapes, so the model's config declares them).
    pub fn load(
        path: &Path,
        signature: &Signature,
        options: &TorchOptions,
    ) -> Result<Self, RuntimeError> {
        init(1);
        let fail = |message: String| RuntimeError::Load(format!("{}: {message}", path.display()));
        let arguments = check_signature(signature).map_err(fail)?;
        if let Some(cast) = options.cast_inputs
            && !kind_of(cast).is_some_and(is_float)
        {
            return Err(fail(format!(
                "cast_inputs must be a floating-point type, not {cast}"
            )));
        }
        let device = match options.device {
            TorchDevice::Cpu => {
                if options.autocast_fp16 {
                    return Err(fail(
                        "autocast_fp16 applies to CUDA devices; this model runs on the CPU"
                            .to_owned(),
                    ));
                }
                Device::Cpu
            }
            TorchDevice::Cuda(index) => {
                let status = cuda_status();
                if !status.cuda_available {
                    let why = status.cuda_part_error.unwrap_or_else(|| {
                        "libtorch's CUDA part is loaded but finds no usable driver or device"
                            .to_owned()
                    });
                    return Err(fail(format!(
                        "device cuda:{index} is not available ({why})"
                    )));
                }
                if index as i64 >= status.device_count {
                    return Err(fail(format!(
                        "device cuda:{index} does not exist; this machine has {} CUDA device(s)",
                        status.device_count
                    )));
                }
                Device::Cuda(index)
            }
        };
        let stream = match options.device {
            TorchDevice::Cuda(index) => match CudaStream::from_pool(index) {
                Ok(stream) => Some(stream),
                Err(reason) => {
                    tracing::warn!(%reason, "Using the default CUDA stream.");
                    None
                }
            },
            TorchDevice::Cpu => None,
        };
        if let Some(stream) = &stream {
            // Loading copies the weights on the current stream: this one.
            stream.make_current().map_err(fail)?;
        }
        let mut module = CModule::load_on_device(path, device).map_err(|err| {
            fail(format!(
                "not a loadable TorchScript module: {}{}",
                libtorch_message(&err),
                export_archive_hint(path)
            ))
        })?;
        module
            .f_set_eval()
            .map_err(|err| fail(libtorch_message(&err)))?;
        Ok(TorchRuntime {
            module,
            device,
            signature: signature.clone(),
            arguments,
            options: options.clone(),
            staging: None,
            stream,
        })
    }

    /// Puts each input's row blocks (signature order) into one tensor on the
    /// device, in `forward`'s order: one copy from the request buffers into a
    /// host tensor (pinned and reused on CUDA), then a device copy when the
    /// device is a GPU.
    fn device_inputs(&mut self, blocks: &[Vec<Tensor>]) -> Result<Vec<IValue>, RuntimeError> {
        let layouts = self
            .arguments
            .iter()
            .map(|&index| InputLayout::of(&self.signature.inputs[index].name, &blocks[index]))
            .collect::<Result<Vec<_>, _>>()?;
        let staged = if self.device.is_cuda() && self.options.pinned_transfers {
            self.stage(&layouts)?
        } else {
            None
        };
        let tensors = match staged {
            Some(tensors) => tensors,
            None => layouts
                .iter()
                .map(|layout| {
                    let host =
                        TchTensor::f_empty(layout.shape.as_slice(), (layout.kind, Device::Cpu))
                            .map_err(|err| layout.error(&err))?;
                    layout.copy_into(&host, 0);
                    host.f_to_device(self.device)
                        .map_err(|err| layout.error(&err))
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        tensors
            .into_iter()
            .zip(&layouts)
            .map(|(tensor, layout)| {
                let tensor = match self.options.cast_inputs.and_then(kind_of) {
                    Some(cast) if is_float(layout.kind) && layout.kind != cast => {
                        tensor.f_to_kind(cast).map_err(|err| layout.error(&err))?
                    }
                    _ => tensor,
                };
                Ok(IValue::Tensor(tensor))
            })
            .collect()
    }

    /// Copies every input into one pinned buffer and starts asynchronous copies
    /// to the device. `None` when pinned memory cannot be had (then the caller
    /// copies the plain way). The buffer is reused by the next call only after
    /// this one has copied its outputs back, which waits for the device.
    fn stage(
        &mut self,
        layouts: &[InputLayout<'_>],
    ) -> Result<Option<Vec<TchTensor>>, RuntimeError> {
        let offsets: Vec<usize> = layouts
            .iter()
            .scan(0usize, |next, layout| {
                let offset = *next;
                *next = (offset + layout.bytes).next_multiple_of(STAGING_ALIGN);
                Some(offset)
            })
            .collect();
        let needed = offsets
            .last()
            .zip(layouts.last())
            .map_or(0, |(offset, layout)| offset + layout.bytes);
        let capacity = self.staging.as_ref().map_or(0, TchTensor::numel);
        if capacity < needed {
            // Grow by half again so slowly growing batches do not re-pin each time.
            let size = needed.max(capacity + capacity / 2) as i64;
            let pinned = TchTensor::f_empty([size], (Kind::Uint8, Device::Cpu))
                .and_then(|buffer| buffer.f_pin_memory(self.device));
            match pinned {
                Ok(buffer) => self.staging = Some(buffer),
                Err(err) => {
                    tracing::warn!(error = %libtorch_message(&err), "Pinned host memory unavailable; copying inputs without it.");
                    self.options.pinned_transfers = false;
                    self.staging = None;
                    return Ok(None);
                }
            }
        }
        let Some(staging) = &self.staging else {
            return Ok(None);
        };
        layouts
            .iter()
            .zip(&offsets)
            .map(|(layout, &offset)| {
                layout.copy_into(staging, offset);
                staging
                    .f_narrow(0, offset as i64, layout.bytes as i64)
                    .and_then(|bytes| bytes.f_view_dtype(layout.kind))
                    .and_then(|typed| typed.f_view(layout.shape.as_slice()))
                    .and_then(|host| host.f_to_device_(self.device, layout.kind, true, false))
                    .map_err(|err| layout.error(&err))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// Runs `forward` on a batch given as row blocks per signature input.
    fn forward_blocks(&mut self, blocks: &[Vec<Tensor>]) -> Result<Vec<Tensor>, RuntimeError> {
        if blocks.len() != self.signature.inputs.len() {
            return Err(RuntimeError::InvalidInput(format!(
                "{} inputs given, the model takes {}",
                blocks.len(),
                self.signature.inputs.len()
            )));
        }
        // Grad mode and the current stream are per thread; each call sets both,
        // so it does not matter which thread runs the instance.
        let _no_grad = tch::no_grad_guard();
        if let Some(stream) = &self.stream {
            stream.make_current().map_err(RuntimeError::Execution)?;
        }
        let arguments = self.device_inputs(blocks)?;
        let module = &self.module;
        let result = if self.options.autocast_fp16 {
            tch::autocast(true, || module.forward_is(&arguments))
        } else {
            module.forward_is(&arguments)
        }
        .map_err(|err| {
            RuntimeError::Execution(format!("forward failed: {}", libtorch_message(&err)))
        })?;
        self.named_outputs(result)?
            .into_iter()
            .zip(&self.signature.outputs)
            .map(|(tensor, spec)| host_tensor(spec, tensor))
            .collect()
    }

    /// Names what `forward` returned, in the signature's output order.
    fn named_outputs(&self, value: IValue) -> Result<Vec<TchTensor>, RuntimeError> {
        let outputs = &self.signature.outputs;
        let wrong = |what: &str| {
            RuntimeError::Execution(format!(
                "forward returned {what}, but the config declares {} output(s) {:?}",
                outputs.len(),
                outputs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>()
            ))
        };
        match value {
            IValue::Tensor(tensor) if outputs.len() == 1 => Ok(vec![tensor]),
            IValue::Tensor(_) => Err(wrong("one tensor")),
            IValue::Tuple(items) | IValue::GenericList(items) => {
                let count = items.len();
                let mut items: Vec<Option<IValue>> = items.into_iter().map(Some).collect();
                outputs
                    .iter()
                    .enumerate()
                    .map(|(position, spec)| {
                        let index = positional_index(&spec.name)
                            .filter(|_| outputs.iter().all(|s| positional_index(&s.name).is_some()))
                            .unwrap_or(position);
                        match items.get_mut(index).and_then(Option::take) {
                            Some(IValue::Tensor(tensor)) => Ok(tensor),
                            Some(other) => Err(RuntimeError::Execution(format!(
                                "output `{}`: forward returned a {} at position {index}, not a tensor",
                                spec.name,
                                ivalue_kind(&other)
                            ))),
                            None => Err(wrong(&format!("{count} value(s)"))),
                        }
                    })
                    .collect()
            }
            IValue::TensorList(tensors) => {
                if tensors.len() < outputs.len() {
                    return Err(wrong(&format!("{} tensor(s)", tensors.len())));
                }
                Ok(tensors.into_iter().take(outputs.len()).collect())
            }
            IValue::GenericDict(entries) => {
                let mut entries: Vec<(String, IValue)> = entries
                    .into_iter()
                    .filter_map(|(key, value)| match key {
                        IValue::String(key) => Some((key, value)),
                        _ => None,
                    })
                    .collect();
                outputs
                    .iter()
                    .map(|spec| {
                        let found = entries.iter().position(|(key, _)| *key == spec.name);
                        match found.map(|i| entries.swap_remove(i).1) {
                            Some(IValue::Tensor(tensor)) => Ok(tensor),
                            Some(other) => Err(RuntimeError::Execution(format!(
                                "output `{}`: forward returned a {} under that key, not a tensor",
                                spec.name,
                                ivalue_kind(&other)
                            ))),
                            None => Err(RuntimeError::Execution(format!(
                                "forward returned a dict without the key `{}`",
                                spec.name
                            ))),
                        }
                    })
                    .collect()
            }
            other => Err(wrong(&format!("a {}", ivalue_kind(&other)))),
        }
    }
}

/// `torch.export` archives (`.pt2`) are zip files too; say what they are
/// rather than leave a reader error. Their entries include `<name>/archive_format`.
fn export_archive_hint(path: &Path) -> &'static str {
    let marker = b"/archive_format";
    let is_export = std::fs::read(path)
        .is_ok_and(|bytes| bytes.windows(marker.len()).any(|window| window == marker));
    if is_export {
        " (this is a torch.export .pt2 archive, which tch cannot run: save the model with torch.jit.script or torch.jit.trace and torch.jit.save)"
    } else {
        ""
    }
}

/// One input of a batch: its row blocks and the tensor they make together.
struct InputLayout<'a> {
    name: String,
    blocks: &'a [Tensor],
    kind: Kind,
    shape: Vec<i64>,
    bytes: usize,
}

impl<'a> InputLayout<'a> {
    fn of(name: &str, blocks: &'a [Tensor]) -> Result<Self, RuntimeError> {
        let invalid = |what: String| RuntimeError::InvalidInput(format!("input `{name}`: {what}"));
        let first = blocks
            .first()
            .ok_or_else(|| invalid("no data".to_owned()))?;
        let kind = kind_of(first.datatype()).ok_or_else(|| {
            invalid(format!(
                "{} cannot be passed to a TorchScript model",
                first.datatype()
            ))
        })?;
        let mut shape = first.shape().to_vec();
        if blocks.len() > 1 {
            if shape.is_empty() {
                return Err(invalid("scalars cannot be batched".to_owned()));
            }
            shape[0] = 0;
            for block in blocks {
                if block.datatype() != first.datatype()
                    || block.shape().get(1..) != first.shape().get(1..)
                {
                    return Err(invalid(format!(
                        "blocks of shape {:?} and {:?} cannot be joined",
                        first.shape(),
                        block.shape()
                    )));
                }
                shape[0] += block.shape()[0];
            }
        }
        Ok(InputLayout {
            name: name.to_owned(),
            blocks,
            kind,
            shape,
            bytes: blocks.iter().map(|block| block.data().len()).sum(),
        })
    }

    /// Copies the blocks, one after the other, into `host` from byte `offset` on.
    fn copy_into(&self, host: &TchTensor, offset: usize) {
        let mut at = offset;
        for block in self.blocks {
            copy_bytes(host, at, block.data());
            at += block.data().len();
        }
    }

    fn error(&self, err: &tch::TchError) -> RuntimeError {
        RuntimeError::InvalidInput(format!("input `{}`: {}", self.name, libtorch_message(err)))
    }
}

/// Copies `data` into the CPU tensor `host` at byte `offset`.
#[allow(unsafe_code)]
fn copy_bytes(host: &TchTensor, offset: usize, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let capacity = host.numel() * host.kind().elt_size_in_bytes();
    assert!(
        offset + data.len() <= capacity && host.is_contiguous() && host.device() == Device::Cpu,
        "host tensor too small for its input"
    );
    // SAFETY: `host` is a contiguous CPU tensor of `capacity` bytes that this
    // runtime alone holds, freshly allocated or (the pinned buffer) no longer
    // read by a device copy (the previous call waited for its outputs); the
    // range was checked above and cannot overlap `data`, a request buffer.
    unsafe {
        let base = host.data_ptr().cast::<u8>();
        std::ptr::copy_nonoverlapping(data.as_ptr(), base.add(offset), data.len());
    }
}

fn ivalue_kind(value: &IValue) -> &'static str {
    match value {
        IValue::None => "None",
        IValue::Tensor(_) => "tensor",
        IValue::Double(_) => "float",
        IValue::Int(_) => "int",
        IValue::Bool(_) => "bool",
        IValue::Tuple(_) => "tuple",
        IValue::IntList(_) | IValue::DoubleList(_) | IValue::BoolList(_) => "list of numbers",
        IValue::String(_) | IValue::StringList(_) => "string",
        IValue::TensorList(_) | IValue::GenericList(_) => "list",
        IValue::GenericDict(_) => "dict",
        IValue::Object(_) => "object",
        IValue::Device(_) => "device",
        _ => "value",
    }
}

/// Copies a result back to host memory as the declared datatype.
fn host_tensor(spec: &TensorSpec, tensor: TchTensor) -> Result<Tensor, RuntimeError> {
    let fail = |err: tch::TchError| {
        RuntimeError::Execution(format!(
            "output `{}`: {}",
            spec.name,
            libtorch_message(&err)
        ))
    };
    let kind = kind_of(spec.datatype).ok_or_else(|| {
        RuntimeError::Execution(format!(
            "output `{}`: {} is not a TorchScript type",
            spec.name, spec.datatype
        ))
    })?;
    let actual = tensor.f_kind().map_err(fail)?;
    if actual != kind && !(is_float(actual) && is_float(kind)) {
        // Autocast may turn FP32 into FP16, which is converted back; a class
        // index turning into a float is a config mistake worth saying.
        return Err(RuntimeError::Execution(format!(
            "output `{}`: the model gives {actual:?}, the config declares {}",
            spec.name, spec.datatype
        )));
    }
    let host = tensor
        .f_to_device_(Device::Cpu, kind, false, false)
        .and_then(|t| t.f_contiguous())
        .map_err(fail)?;
    let shape = host.size();
    let numel = host.numel();
    let mut data = vec![0u8; numel * kind.elt_size_in_bytes()];
    host.f_copy_data_u8(&mut data, numel).map_err(fail)?;
    Ok(Tensor::new(
        spec.name.clone(),
        spec.datatype,
        shape,
        Bytes::from(data),
    )?)
}

impl Runtime for TorchRuntime {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError> {
        let blocks = self
            .signature
            .inputs
            .iter()
            .map(|spec| {
                inputs
                    .iter()
                    .find(|tensor| tensor.name() == spec.name)
                    .map(|tensor| vec![tensor.clone()])
                    .ok_or_else(|| {
                        RuntimeError::InvalidInput(format!("input `{}` is missing", spec.name))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.forward_blocks(&blocks)
    }

    /// Blocks go straight into the host tensor (the pinned buffer on CUDA):
    /// the batch is never joined first.
    fn run_blocks(
        &mut self,
        blocks: &[Vec<Tensor>],
        _call: &crate::Call,
    ) -> Result<Vec<Tensor>, RuntimeError> {
        self.forward_blocks(blocks)
    }
}

/// libtorch's messages carry a C++ backtrace and TorchScript's whole
/// traceback; what comes before the backtrace, first and last line, says what
/// went wrong and where.
fn libtorch_message(err: &tch::TchError) -> String {
    let text = err.to_string();
    let text = text
        .split("Exception raised from")
        .next()
        .unwrap_or_default();
    summarize(text.trim_start_matches("Internal torch error: "))
}

fn summarize(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    match lines.as_slice() {
        [] => String::new(),
        [only] => (*only).to_owned(),
        [first, .., last] if first == last => (*first).to_owned(),
        [first, .., last] => format!("{first} … {last}"),
    }
}
