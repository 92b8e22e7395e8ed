//! Switchyard's runtimes: tensors, model signatures, the blocking `Runtime`
//! trait, and its backends (ONNX Runtime in process; libtorch/TorchScript in
//! process with the `torch` feature; a remote KServe v2 upstream over a gRPC
//! client). Knows nothing of serving HTTP or gRPC, nor
//! of the batching and routing that the server puts in front.

pub mod call;
pub mod datatype;
pub mod json;
pub mod onnx;
pub mod remote;
pub mod runtime;
pub mod signature;
pub mod tensor;
pub mod torch;

pub use call::{Call, Parameter, RequestContext, Sequence};
pub use datatype::{DataType, UnknownDataType};
pub use runtime::{Health, Runtime, RuntimeError};
pub use signature::{Signature, TensorSpec};
pub use tensor::{Tensor, TensorError, element_count};
