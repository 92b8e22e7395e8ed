//! The `Runtime` trait every backend implements, and its error type.

use crate::{Signature, Tensor, TensorError};

/// A loaded model instance. Calls block; each instance is owned by one worker
/// thread, so `run` may take `&mut self` and never runs on an async reactor.
pub trait Runtime: Send {
    fn signature(&self) -> &Signature;

    /// Runs the model. `inputs` match the signature (names, types, shapes);
    /// the result holds every output of the signature, in its order.
    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError>;

    /// `run` within a caller's trace: `traceparent` is a W3C trace context
    /// header value that runtimes calling other services pass along.
    fn run_traced(
        &mut self,
        inputs: &[Tensor],
        traceparent: Option<&str>,
    ) -> Result<Vec<Tensor>, RuntimeError> {
        let _ = traceparent;
        self.run(inputs)
    }

    /// Runs a batch as the batcher formed it: for each signature input, in
    /// order, the requests' row blocks in request order. The default joins
    /// the blocks along dimension 0 (here, on the worker thread, not on the
    /// batcher's task) and calls `run_traced`; a runtime that can copy blocks
    /// straight to where they are used (a device's staging buffer) overrides
    /// it and saves that copy.
    fn run_blocks(
        &mut self,
        blocks: &[Vec<Tensor>],
        traceparent: Option<&str>,
    ) -> Result<Vec<Tensor>, RuntimeError> {
        let inputs = blocks
            .iter()
            .map(|parts| Tensor::concat_rows(parts))
            .collect::<Result<Vec<_>, _>>()?;
        self.run_traced(&inputs, traceparent)
    }

    /// Health shared by every instance, for runtimes that can become
    /// unreachable (remote upstreams); `None` = always healthy once loaded.
    fn health(&self) -> Option<std::sync::Arc<dyn Health>> {
        None
    }
}

/// Whether a runtime can serve right now, and if not, why.
pub trait Health: Send + Sync {
    fn is_healthy(&self) -> bool;
    fn reason(&self) -> String;
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The model file or library could not be loaded.
    #[error("{0}")]
    Load(String),
    /// The inputs were rejected by the runtime (bad values it alone can see).
    #[error("{0}")]
    InvalidInput(String),
    /// The runtime failed while running the model.
    #[error("{0}")]
    Execution(String),
    /// The runtime cannot be reached right now (a remote upstream is down).
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Tensor(#[from] TensorError),
}
