//! The `Runtime` trait every backend implements, and its error type.

use crate::{Call, Signature, Tensor, TensorError};

/// A loaded model instance. Calls block; each instance is owned by one worker
/// thread, so `run` may take `&mut self` and never runs on an async reactor.
pub trait Runtime: Send {
    fn signature(&self) -> &Signature;

    /// Runs the model. `inputs` match the signature (names, types, shapes);
    /// the result holds every output of the signature, in its order.
    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError>;

    /// `run` with the call's context (trace, deadline, forwarded request);
    /// runtimes calling other services pass it along.
    fn run_call(&mut self, inputs: &[Tensor], call: &Call) -> Result<Vec<Tensor>, RuntimeError> {
        let _ = call;
        self.run(inputs)
    }

    /// Whether this runtime passes requests on (parameters, requested outputs,
    /// sequences): then the batcher keeps requests with different contexts
    /// apart and hands each call its context.
    fn forwards_requests(&self) -> bool {
        false
    }

    /// Runs a batch as the batcher formed it: for each signature input, in
    /// order, the requests' row blocks in request order. The default joins
    /// the blocks along dimension 0 (here, on the worker thread, not on the
    /// batcher's task) and calls `run_call`; a runtime that can copy blocks
    /// straight to where they are used (a device's staging buffer) overrides
    /// it and saves that copy.
    fn run_blocks(
        &mut self,
        blocks: &[Vec<Tensor>],
        call: &Call,
    ) -> Result<Vec<Tensor>, RuntimeError> {
        let inputs = blocks
            .iter()
            .map(|parts| Tensor::concat_rows(parts))
            .collect::<Result<Vec<_>, _>>()?;
        self.run_call(&inputs, call)
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
